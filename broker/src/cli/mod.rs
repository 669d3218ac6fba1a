//! The admin and client commands of the `strata` binary: output formats, the admin HTTP
//! client, and the commands built on them ([`admin`]: `cluster`, `group`; [`records`]:
//! `produce`, `consume`; topic tables).
//!
//! Cluster and group commands talk to a node's admin HTTP API (`--admin URL`, env
//! `STRATA_ADMIN`); topic, produce and consume commands speak the Kafka protocol
//! (`--bootstrap`). Exit codes follow `main.rs`: 1 when the node refuses or cannot be reached,
//! 2 for a bad argument.

pub mod acl;
pub mod admin;
pub mod bench_mqtt;
pub mod meta;
pub mod meta_voters;
pub mod records;
pub mod user;

use std::fmt;
use std::process::ExitCode;

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON on stdout (the admin API's document, or the command's result).
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct OutputArg {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AdminArg {
    /// A node's admin HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "STRATA_ADMIN", value_parser = parse_admin_url)]
    pub admin: String,
}

/// `--admin`: an `http://host:port` URL (a trailing slash is dropped).
pub fn parse_admin_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{s}` is not an http:// URL (example: http://127.0.0.1:8080)"))?;
    if rest.trim_end_matches('/').is_empty() {
        return Err(format!(
            "`{s}` names no host (example: http://127.0.0.1:8080)"
        ));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Why a CLI command failed, with its exit code.
#[derive(Debug)]
pub enum CliError {
    /// The node refused or could not be reached: exit 1.
    Remote(String),
    /// A bad argument found after parsing (a partition out of range, …): exit 2.
    Usage(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Remote(m) | CliError::Usage(m) => f.write_str(m),
        }
    }
}

impl From<strata_broker::kafka::client::ClientError> for CliError {
    fn from(e: strata_broker::kafka::client::ClientError) -> Self {
        CliError::Remote(e.to_string())
    }
}

impl CliError {
    pub fn exit(&self) -> ExitCode {
        eprintln!("strata: error: {self}");
        ExitCode::from(match self {
            CliError::Remote(_) => 1,
            CliError::Usage(_) => 2,
        })
    }
}

/// A client of one node's admin HTTP API.
pub struct AdminHttp {
    base: String,
    http: reqwest::Client,
}

impl AdminHttp {
    pub fn new(base: &str) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::Remote(format!("cannot build an HTTP client: {e}")))?;
        Ok(AdminHttp {
            base: base.to_string(),
            http,
        })
    }

    /// A client whose requests wait up to `timeout` (30 s for [`AdminHttp::new`]).
    pub fn with_timeout(base: &str, timeout: std::time::Duration) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| CliError::Remote(format!("cannot build an HTTP client: {e}")))?;
        Ok(AdminHttp {
            base: base.to_string(),
            http,
        })
    }

    pub async fn delete(&self, path: &str) -> Result<serde_json::Value, CliError> {
        self.send(self.http.delete(format!("{}{path}", self.base)), path)
            .await
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, CliError> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string());
        self.send(request, path).await
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<serde_json::Value, CliError> {
        let url = format!("{}{path}", self.base);
        let response = request.send().await.map_err(|e| {
            let why = if e.is_connect() {
                "connection refused or unreachable (is a node serving its admin API there? \
                 set --admin or STRATA_ADMIN)"
                    .to_string()
            } else if e.is_timeout() {
                "no answer in time".to_string()
            } else {
                e.to_string()
            };
            CliError::Remote(format!(
                "cannot reach the admin API at {}: {why}",
                self.base
            ))
        })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::Remote(format!("{url}: reading the answer failed: {e}")))?;
        let body: serde_json::Value = serde_json::from_str(&text).map_err(|_| {
            CliError::Remote(format!(
                "{url} answered HTTP {status} with something that is not JSON (is {} a StrataMQ admin API?)",
                self.base
            ))
        })?;
        if status.is_success() {
            return Ok(body);
        }
        let message = body["message"].as_str().unwrap_or("no message");
        let kind = body["error"].as_str().unwrap_or("error");
        Err(CliError::Remote(format!(
            "{message} ({kind}, HTTP {})",
            status.as_u16()
        )))
    }
}

/// Prints rows under a header, columns padded to their widest cell; columns named in
/// `right` (numbers) are right-aligned.
pub fn print_table(header: &[&str], right: &[&str], rows: &[Vec<String>]) {
    print!("{}", render_table(header, right, rows));
}

pub fn render_table(header: &[&str], right: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.contains(&header[i]) {
                l.push_str(&" ".repeat(pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                if i + 1 < cells.len() {
                    l.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// Pretty JSON on stdout.
pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A JSON value as a table cell: strings bare, null as `-`.
pub fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_and_align() {
        let rows = vec![
            vec!["orders".to_string(), "3".to_string()],
            vec!["a".to_string(), "120".to_string()],
        ];
        assert_eq!(
            render_table(&["TOPIC", "MESSAGES"], &["MESSAGES"], &rows),
            "TOPIC   MESSAGES\norders         3\na            120\n"
        );
    }

    #[test]
    fn admin_urls_are_checked() {
        assert_eq!(
            parse_admin_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(parse_admin_url("127.0.0.1:8080")
            .unwrap_err()
            .contains("not an http:// URL"));
        assert!(parse_admin_url("http://").is_err());
    }
}
