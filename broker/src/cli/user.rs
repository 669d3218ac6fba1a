//! `strata user add|delete|list`: SCRAM users, over the Kafka protocol
//! (AlterUserScramCredentials / DescribeUserScramCredentials, like `kafka-configs`), or — for
//! the first user of a broker that requires SASL — over the node's loopback admin API
//! (`user add --via-admin`). Either way the salted password is computed here; the password
//! never leaves this process and is never read from argv unless `--password` is given (which
//! warns).

use super::{AdminHttp, CliError, Output};
use base64::Engine;
use std::io::{BufRead, IsTerminal, Write};
use strata_broker::kafka::client::{AdminClient, ClientError};
use strata_broker::kafka::scram;
use strata_meta::ScramMechanism;

#[derive(clap::Args, Debug, Clone)]
pub struct AddArgs {
    /// The user name.
    pub name: String,
    /// SCRAM-SHA-256 or SCRAM-SHA-512.
    #[arg(long, default_value = "SCRAM-SHA-512", value_parser = parse_mechanism)]
    pub mechanism: ScramMechanism,
    /// PBKDF2 iterations (4096..=16384).
    #[arg(long, default_value_t = 8192, value_parser = clap::value_parser!(u32).range(4096..=16384))]
    pub iterations: u32,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// The password on the command line (visible to other local users in the process list).
    #[arg(long)]
    pub password: Option<String>,
    /// Create the user through this node's admin HTTP API (loopback only) instead of the
    /// Kafka protocol: the way to create the first user when SASL is required.
    #[arg(long, value_name = "URL", value_parser = super::parse_admin_url)]
    pub via_admin: Option<String>,
}

/// `--mechanism`: a SCRAM mechanism name.
pub fn parse_mechanism(s: &str) -> Result<ScramMechanism, String> {
    ScramMechanism::from_name(s)
        .ok_or_else(|| format!("unknown mechanism `{s}`; expected SCRAM-SHA-256 or SCRAM-SHA-512"))
}

fn read_password(args: &AddArgs) -> Result<String, CliError> {
    let password = if let Some(p) = &args.password {
        eprintln!("strata: warning: --password puts the password in the process list; prefer --password-stdin");
        p.clone()
    } else if args.password_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::Usage(format!("cannot read the password from stdin: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        prompt_no_echo(&format!("Password for {}: ", args.name))?
    };
    if password.is_empty() {
        return Err(CliError::Usage("the password is empty".into()));
    }
    Ok(password)
}

/// Reads a line from the terminal with echo off (`stty -echo`), restoring echo after.
fn prompt_no_echo(prompt: &str) -> Result<String, CliError> {
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    if !stty("-echo") {
        return Err(CliError::Usage(
            "cannot turn terminal echo off; use --password-stdin".into(),
        ));
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    stty("echo");
    eprintln!();
    read.map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub async fn add(args: AddArgs, bootstrap: &str, output: Output) -> Result<(), CliError> {
    let password = read_password(&args)?;
    match &args.via_admin {
        Some(admin) => {
            use rand::Rng;
            let salt: [u8; 16] = rand::thread_rng().gen();
            let salted =
                scram::salted_password(args.mechanism, password.as_bytes(), &salt, args.iterations);
            let b64 = base64::engine::general_purpose::STANDARD;
            AdminHttp::new(admin)?
                .post(
                    "/v1/users",
                    &serde_json::json!({
                        "name": args.name,
                        "mechanism": args.mechanism.name(),
                        "iterations": args.iterations,
                        "salt": b64.encode(salt),
                        "salted_password": b64.encode(salted),
                    }),
                )
                .await?;
        }
        None => {
            AdminClient::connect(bootstrap)
                .await?
                .upsert_user(&args.name, args.mechanism, &password, args.iterations)
                .await?
        }
    }
    match output {
        Output::Table => println!("user {} ({})", args.name, args.mechanism.name()),
        Output::Json => super::print_json(&serde_json::json!({
            "user": args.name,
            "mechanism": args.mechanism.name(),
            "iterations": args.iterations,
        })),
    }
    Ok(())
}

/// Deletes the user's credential for `mechanism`, or all of them.
pub async fn delete(
    name: &str,
    mechanism: Option<ScramMechanism>,
    bootstrap: &str,
    output: Output,
) -> Result<(), CliError> {
    let mut client = AdminClient::connect(bootstrap).await?;
    let mechanisms = match mechanism {
        Some(m) => vec![m],
        None => {
            let users = client.describe_users().await?;
            let Some((_, creds)) = users.into_iter().find(|(u, _)| u == name) else {
                return Err(CliError::Usage(format!("no user `{name}`")));
            };
            creds
                .iter()
                .filter_map(|(m, _)| parse_mechanism(m).ok())
                .collect()
        }
    };
    for m in &mechanisms {
        client.delete_user(name, *m).await.map_err(|e| match e {
            ClientError::Kafka { code, .. } if code == "ResourceNotFound" => {
                CliError::Usage(format!("no {} credential for user `{name}`", m.name()))
            }
            other => other.into(),
        })?;
    }
    match output {
        Output::Table => println!("deleted user {name}"),
        Output::Json => super::print_json(&serde_json::json!({ "deleted": name })),
    }
    Ok(())
}

pub async fn list(bootstrap: &str, output: Output) -> Result<(), CliError> {
    let users = AdminClient::connect(bootstrap)
        .await?
        .describe_users()
        .await?;
    match output {
        Output::Table => {
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|(u, creds)| {
                    let mechs: Vec<String> = creds
                        .iter()
                        .map(|(m, i)| format!("{m} (iterations={i})"))
                        .collect();
                    vec![u.clone(), mechs.join(", ")]
                })
                .collect();
            super::print_table(&["USER", "MECHANISMS"], &[], &rows);
        }
        Output::Json => {
            let v: Vec<serde_json::Value> = users
                .iter()
                .map(|(u, creds)| {
                    serde_json::json!({
                        "user": u,
                        "credentials": creds.iter().map(|(m, i)| serde_json::json!({
                            "mechanism": m, "iterations": i
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            super::print_json(&v);
        }
    }
    Ok(())
}
