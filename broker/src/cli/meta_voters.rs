//! `strata cluster meta [add ID@HOST:PORT | remove ID]`: the meta (raft) group's voters, over
//! the admin HTTP API of a meta member (`GET /v1/meta`, `POST /v1/meta/voters`,
//! `DELETE /v1/meta/voters/{id}`).

use super::{cell, print_json, print_table, AdminArg, AdminHttp, CliError, Output, OutputArg};
use serde_json::Value;
use std::time::Duration;

/// How long `add` waits for the admin API: the new node is added as a learner and waited for
/// (up to 30 s on the leader) before it becomes a voter.
const ADD_WAIT_MS: u64 = 120_000;

#[derive(clap::Args, Debug)]
pub struct MetaArgs {
    #[command(subcommand)]
    action: Option<MetaAction>,
    #[command(flatten)]
    admin: AdminArg,
    #[command(flatten)]
    output: OutputArg,
}

#[derive(clap::Subcommand, Debug)]
enum MetaAction {
    /// Add a meta voter: a node started with roles = ["meta"] whose id is not in its own
    /// meta.peers (it waits to be added). It becomes a learner, catches up, then votes.
    Add {
        /// The new node's id and meta listener, ID@HOST:PORT (for example 4@10.0.0.4:1228).
        #[arg(value_parser = parse_voter)]
        voter: (u64, String),
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Remove a meta voter: it is demoted (stops voting), then leaves the group. Stop the
    /// node afterwards; a node that also ran the broker role comes back as roles = ["broker"].
    Remove {
        /// The voter's node id.
        id: u64,
        #[command(flatten)]
        admin: AdminArg,
        #[command(flatten)]
        output: OutputArg,
    },
}

/// `ID@HOST:PORT`.
fn parse_voter(s: &str) -> Result<(u64, String), String> {
    let example = "expected ID@HOST:PORT, for example 4@10.0.0.4:1228";
    let (id, addr) = s
        .split_once('@')
        .ok_or_else(|| format!("`{s}`: {example}"))?;
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| format!("`{id}` is not a positive node id ({example})"))?;
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok_and(|p| p > 0)
    });
    if !valid {
        return Err(format!("`{addr}` is not HOST:PORT ({example})"));
    }
    Ok((id, addr.to_string()))
}

/// Runs `strata cluster meta …`.
pub async fn run(args: MetaArgs) -> Result<(), CliError> {
    match args.action {
        None => list(&args.admin.admin, args.output.output).await,
        Some(MetaAction::Add {
            voter: (id, address),
            admin,
            output,
        }) => add(&admin.admin, id, &address, output.output).await,
        Some(MetaAction::Remove { id, admin, output }) => {
            remove(&admin.admin, id, output.output).await
        }
    }
}

fn print_warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("strata: warning: {}", w.as_str().unwrap_or_default());
    }
}

fn ids(v: &Value) -> String {
    let list: Vec<String> = v.as_array().into_iter().flatten().map(cell).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// `strata cluster meta`: one row per member.
async fn list(admin: &str, output: Output) -> Result<(), CliError> {
    let m = AdminHttp::new(admin)?.get("/v1/meta").await?;
    if output == Output::Json {
        print_json(&m);
        return Ok(());
    }
    println!(
        "meta leader {}  term {}  membership at log index {}{}  (asked node {})",
        cell(&m["leader"]),
        cell(&m["term"]),
        cell(&m["membership_log_index"]),
        if m["joint"].as_bool() == Some(true) {
            "  CHANGE IN FLIGHT"
        } else {
            ""
        },
        cell(&m["node_id"]),
    );
    println!();
    let rows: Vec<Vec<String>> = m["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            vec![
                cell(&n["id"]),
                cell(&n["address"]),
                cell(&n["role"]),
                if n["leader"].as_bool() == Some(true) {
                    "*".into()
                } else {
                    String::new()
                },
                if n["broker"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
                match n["matched_log_index"].as_u64() {
                    Some(i) => i.to_string(),
                    None => "-".into(),
                },
            ]
        })
        .collect();
    print_table(
        &["ID", "ADDRESS", "ROLE", "LEADER", "BROKER", "LOG-INDEX"],
        &["LOG-INDEX"],
        &rows,
    );
    print_warnings(&m);
    Ok(())
}

/// `strata cluster meta add ID@HOST:PORT`.
async fn add(admin: &str, id: u64, address: &str, output: Output) -> Result<(), CliError> {
    let r = AdminHttp::with_timeout(admin, Duration::from_millis(ADD_WAIT_MS))?
        .post(
            "/v1/meta/voters",
            &serde_json::json!({ "node_id": id, "address": address }),
        )
        .await?;
    if output == Output::Json {
        print_json(&r);
        return Ok(());
    }
    if r["changed"].as_bool() == Some(false) {
        println!("node {id} already is a meta voter at {address}");
    } else {
        println!(
            "node {id} at {address} is a meta voter (voters: {})",
            ids(&r["voters"])
        );
    }
    print_warnings(&r);
    Ok(())
}

/// `strata cluster meta remove ID`.
async fn remove(admin: &str, id: u64, output: Output) -> Result<(), CliError> {
    let r = AdminHttp::with_timeout(admin, Duration::from_millis(ADD_WAIT_MS))?
        .delete(&format!("/v1/meta/voters/{id}"))
        .await?;
    if output == Output::Json {
        print_json(&r);
        return Ok(());
    }
    println!(
        "node {id} is no longer a meta member (voters: {}); stop it",
        ids(&r["voters"])
    );
    print_warnings(&r);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_voter;

    #[test]
    fn voter_specs_parse_or_say_why() {
        assert_eq!(
            parse_voter("4@127.0.0.1:1228"),
            Ok((4, "127.0.0.1:1228".into()))
        );
        assert_eq!(parse_voter("5@meta-5:1228"), Ok((5, "meta-5:1228".into())));
        for (bad, why) in [
            ("4", "expected ID@HOST:PORT"),
            ("0@a:1", "not a positive node id"),
            ("x@a:1", "not a positive node id"),
            ("4@a", "not HOST:PORT"),
            ("4@a:0", "not HOST:PORT"),
            ("4@http://a:1", "not HOST:PORT"),
        ] {
            let err = parse_voter(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
