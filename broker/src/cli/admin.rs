//! `strata cluster status`, `strata group list|describe|reset-offsets` and `strata mqtt
//! clients`, over the admin HTTP API, and the table forms of `strata topic list|describe`.

use super::{cell, print_json, print_table, AdminHttp, CliError, Output};
use serde_json::Value;
use strata_broker::kafka::client::TopicDescription;

fn ms_ago(now_ms: i64, then_ms: i64) -> String {
    let d = now_ms - then_ms;
    if d >= 0 {
        format!("{:.1}s ago", d as f64 / 1000.0)
    } else {
        format!("in {:.1}s", -d as f64 / 1000.0)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// `strata cluster status`.
pub async fn cluster_status(admin: &str, output: Output) -> Result<(), CliError> {
    let c = AdminHttp::new(admin)?.get("/v1/cluster").await?;
    if output == Output::Json {
        print_json(&c);
        return Ok(());
    }
    let roles: Vec<String> = c["roles"]
        .as_array()
        .map(|r| r.iter().map(cell).collect())
        .unwrap_or_default();
    println!(
        "cluster {}  node {}  version {}  roles {}  up {}  {}",
        cell(&c["cluster_id"]),
        cell(&c["node_id"]),
        cell(&c["version"]),
        roles.join(","),
        uptime(c["uptime_ms"].as_u64().unwrap_or(0)),
        if c["healthy"].as_bool() == Some(true) {
            "healthy"
        } else {
            "UNHEALTHY (WAL failed)"
        }
    );
    println!(
        "meta leader {}  topics {}  partitions {}  object store {}",
        cell(&c["meta"]["leader"]),
        cell(&c["topics"]),
        cell(&c["partitions"]),
        cell(&c["object_store"])
    );
    let w = &c["wal"];
    println!(
        "WAL {} bytes, {} not yet uploaded",
        cell(&w["bytes"]),
        cell(&w["unuploaded_bytes"])
    );
    println!();
    let now = now_ms();
    let leader = c["meta"]["leader"].as_u64();
    let rows: Vec<Vec<String>> = c["brokers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            vec![
                cell(&b["id"]),
                cell(&b["address"]),
                if b["alive"].as_bool() == Some(true) && b["draining"].as_bool() == Some(true) {
                    match b["moves_planned"].as_u64() {
                        Some(n) if n > 0 => format!("draining ({n} moving)"),
                        _ => "draining".into(),
                    }
                } else if b["alive"].as_bool() == Some(true) {
                    "alive".into()
                } else {
                    "expired".into()
                },
                if b["id"].as_u64() == leader && leader.is_some() {
                    "leader".into()
                } else if b["meta_voter"].as_bool() == Some(true) {
                    "voter".into()
                } else {
                    "-".into()
                },
                cell(&b["partitions_led"]),
                ms_ago(now, b["lease_expires_ms"].as_i64().unwrap_or(0)),
            ]
        })
        .collect();
    print_table(
        &[
            "BROKER",
            "ADDRESS",
            "STATE",
            "META",
            "PARTITIONS",
            "LEASE-EXPIRES",
        ],
        &["PARTITIONS"],
        &rows,
    );
    Ok(())
}

/// `strata mqtt clients`: the node's MQTT clients (connected, and offline persistent sessions).
pub async fn mqtt_clients(admin: &str, output: Output) -> Result<(), CliError> {
    let m = AdminHttp::new(admin)?.get("/v1/mqtt/clients").await?;
    if output == Output::Json {
        print_json(&m);
        return Ok(());
    }
    if m["enabled"].as_bool() != Some(true) {
        println!("MQTT is not running on node {}", cell(&m["node_id"]));
        return Ok(());
    }
    println!(
        "node {}  {} connections  {} sessions ({} offline)  {} in flight",
        cell(&m["node_id"]),
        cell(&m["connections"]),
        cell(&m["sessions"]),
        cell(&m["offline_sessions"]),
        cell(&m["inflight"])
    );
    let now = now_ms();
    let rows: Vec<Vec<String>> = m["clients"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let connected = c["connected"].as_bool() == Some(true);
            vec![
                cell(&c["client_id"]),
                if connected { "connected" } else { "offline" }.into(),
                cell(&c["username"]),
                cell(&c["protocol"]),
                cell(&c["transport"]),
                cell(&c["peer"]),
                c["connected_ms"]
                    .as_i64()
                    .map_or("-".into(), |t| ms_ago(now, t)),
                cell(&c["keep_alive_secs"]),
                cell(&c["subscriptions"]),
                cell(&c["inflight"]),
                if c["persistent"].as_bool() != Some(true) {
                    "-".into()
                } else if let Some(t) = c["expires_ms"].as_i64() {
                    ms_ago(now, t)
                } else if c["session_expiry_secs"].is_null() {
                    "never".into()
                } else {
                    format!("{}s after disconnect", cell(&c["session_expiry_secs"]))
                },
            ]
        })
        .collect();
    print_table(
        &[
            "CLIENT-ID",
            "STATE",
            "USER",
            "PROTOCOL",
            "TRANSPORT",
            "PEER",
            "CONNECTED",
            "KEEP-ALIVE",
            "SUBS",
            "INFLIGHT",
            "EXPIRES",
        ],
        &["KEEP-ALIVE", "SUBS", "INFLIGHT"],
        &rows,
    );
    Ok(())
}

/// `strata cluster drain NODE [--undo] [--wait]`: sets the broker's draining flag; its
/// partitions then move to the other live brokers in the background. `--wait` follows the moves
/// (a progress line on stderr) until the broker leads nothing, and fails when they stall.
pub async fn cluster_drain(
    admin: &str,
    node: u64,
    undo: bool,
    wait: Option<std::time::Duration>,
    output: Output,
) -> Result<(), CliError> {
    let http = AdminHttp::new(admin)?;
    let r = http
        .post(
            &format!("/v1/cluster/nodes/{node}/drain"),
            &serde_json::json!({ "draining": !undo }),
        )
        .await?;
    let waited = match wait {
        Some(timeout) if !undo => Some(wait_drained(&http, node, timeout).await?),
        _ => None,
    };
    if output == Output::Json {
        let mut r = r;
        if let Some(w) = &waited {
            r["drained"] = serde_json::json!(true);
            r["partitions_moved"] = serde_json::json!(w.moved);
            r["wait_ms"] = serde_json::json!(w.elapsed.as_millis() as u64);
        }
        print_json(&r);
        return Ok(());
    }
    if undo {
        println!("broker {node} is no longer draining");
    } else if let Some(w) = waited {
        println!(
            "broker {node} is drained: {} partition(s) moved in {:.1} s",
            w.moved,
            w.elapsed.as_secs_f64()
        );
    } else {
        println!(
            "broker {node} is draining: {} partition move(s) planned",
            cell(&r["moves_planned"])
        );
    }
    Ok(())
}

/// Poll interval of `drain --wait`.
const DRAIN_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// `drain --wait` gives up when the broker still leads partitions and no move has been planned
/// for this long (no other live broker to take them).
const DRAIN_STUCK: std::time::Duration = std::time::Duration::from_secs(5);

struct Drained {
    moved: u64,
    elapsed: std::time::Duration,
}

/// One broker's row of `/v1/cluster`: (partitions it leads, moves planned away from it), or
/// `None` when it is no longer a live broker (its partitions failed over).
fn drain_row(cluster: &Value, node: u64) -> Option<(u64, u64)> {
    cluster["brokers"]
        .as_array()?
        .iter()
        .find(|b| b["id"].as_u64() == Some(node) && b["alive"].as_bool() == Some(true))
        .map(|b| {
            (
                b["partitions_led"].as_u64().unwrap_or(0),
                b["moves_planned"].as_u64().unwrap_or(0),
            )
        })
}

async fn wait_drained(
    http: &AdminHttp,
    node: u64,
    timeout: std::time::Duration,
) -> Result<Drained, CliError> {
    use strata_broker::progress::{Progress, Unit};
    let start = std::time::Instant::now();
    let first = http.get("/v1/cluster").await?;
    let initial = drain_row(&first, node).map_or(0, |(led, _)| led);
    let progress = Progress::start(
        format!("drain broker {node}"),
        Unit::Count("partitions moved"),
        Some(initial),
    );
    let mut unplanned_since: Option<std::time::Instant> = None;
    loop {
        let c = http.get("/v1/cluster").await?;
        let (led, planned) = drain_row(&c, node).unwrap_or((0, 0));
        progress.set(initial.saturating_sub(led));
        if led == 0 {
            progress.finish();
            return Ok(Drained {
                moved: initial,
                elapsed: start.elapsed(),
            });
        }
        if planned == 0 {
            let since = *unplanned_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= DRAIN_STUCK {
                return Err(CliError::Remote(format!(
                    "broker {node} still leads {led} partition(s) and no move is planned for \
                     them (is another broker alive and not draining? see `strata cluster status`)"
                )));
            }
        } else {
            unplanned_since = None;
        }
        if start.elapsed() >= timeout {
            return Err(CliError::Remote(format!(
                "broker {node} still leads {led} partition(s) after {} s ({planned} move(s) under \
                 way); it keeps draining: follow it with `strata cluster status`",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// `strata group list`.
pub async fn group_list(admin: &str, output: Output) -> Result<(), CliError> {
    let groups = AdminHttp::new(admin)?.get("/v1/groups").await?;
    if output == Output::Json {
        print_json(&groups);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = groups
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            vec![
                cell(&g["group_id"]),
                cell(&g["state"]),
                match g["protocol_type"].as_str() {
                    Some("") | None => "-".into(),
                    Some(p) => p.into(),
                },
                cell(&g["partitions"]),
                cell(&g["lag"]),
            ]
        })
        .collect();
    print_table(
        &["GROUP", "STATE", "PROTOCOL", "PARTITIONS", "LAG"],
        &["PARTITIONS", "LAG"],
        &rows,
    );
    Ok(())
}

fn path_segment(s: &str) -> String {
    // Percent-encode everything but unreserved characters (group ids may hold anything).
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `strata group describe GROUP`.
pub async fn group_describe(admin: &str, group: &str, output: Output) -> Result<(), CliError> {
    let g = AdminHttp::new(admin)?
        .get(&format!("/v1/groups/{}", path_segment(group)))
        .await?;
    if output == Output::Json {
        print_json(&g);
        return Ok(());
    }
    println!(
        "group {}  state {}  protocol {}/{}  generation {}  coordinator {}  lag {}",
        cell(&g["group_id"]),
        cell(&g["state"]),
        cell(&g["protocol_type"]),
        cell(&g["protocol_name"]),
        cell(&g["generation_id"]),
        cell(&g["coordinator"]),
        cell(&g["lag"]),
    );
    println!();
    let members: Vec<Vec<String>> = g["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let assignment: Vec<String> = m["assignment"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    let parts: Vec<String> = a["partitions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(cell)
                        .collect();
                    format!("{}:{}", cell(&a["topic"]), parts.join(","))
                })
                .collect();
            vec![
                cell(&m["member_id"]),
                cell(&m["client_id"]),
                cell(&m["client_host"]),
                if assignment.is_empty() {
                    "-".into()
                } else {
                    assignment.join(" ")
                },
            ]
        })
        .collect();
    if members.is_empty() {
        println!("no live members");
    } else {
        print_table(
            &["MEMBER", "CLIENT-ID", "HOST", "ASSIGNMENT"],
            &[],
            &members,
        );
    }
    println!();
    let offsets: Vec<Vec<String>> = g["offsets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                cell(&o["topic"]),
                cell(&o["partition"]),
                cell(&o["committed_offset"]),
                cell(&o["high_watermark"]),
                cell(&o["lag"]),
            ]
        })
        .collect();
    if offsets.is_empty() {
        println!("no committed offsets");
    } else {
        print_table(
            &["TOPIC", "PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
            &["PARTITION", "COMMITTED", "HIGH-WATERMARK", "LAG"],
            &offsets,
        );
    }
    Ok(())
}

/// Where `group reset-offsets` moves the group (one of its `--to-…` flags).
pub enum ResetTarget {
    Earliest,
    Latest,
    Offset(i64),
    Timestamp(i64),
}

/// `strata group reset-offsets GROUP --topic T …`.
pub async fn group_reset(
    admin: &str,
    group: &str,
    topic: &str,
    partitions: Option<Vec<u32>>,
    to: ResetTarget,
    dry_run: bool,
    output: Output,
) -> Result<(), CliError> {
    let to = match to {
        ResetTarget::Earliest => Value::from("earliest"),
        ResetTarget::Latest => Value::from("latest"),
        ResetTarget::Offset(n) => serde_json::json!({ "offset": n }),
        ResetTarget::Timestamp(ms) => serde_json::json!({ "timestamp": ms }),
    };
    let mut body = serde_json::json!({"topic": topic, "to": to, "dry_run": dry_run});
    if let Some(p) = partitions {
        body["partitions"] = serde_json::json!(p);
    }
    let r = AdminHttp::new(admin)?
        .post(
            &format!("/v1/groups/{}/reset-offsets", path_segment(group)),
            &body,
        )
        .await?;
    if output == Output::Json {
        print_json(&r);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                topic.to_string(),
                cell(&p["partition"]),
                cell(&p["previous_offset"]),
                cell(&p["new_offset"]),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITION", "PREVIOUS", "NEW"],
        &["PARTITION", "PREVIOUS", "NEW"],
        &rows,
    );
    if dry_run {
        println!("dry run: nothing was written");
    }
    Ok(())
}

/// `strata topic list` as a table.
pub fn topic_list_table(topics: &[TopicDescription]) {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .map(|t| {
            let messages: i64 = t
                .partitions
                .iter()
                .map(|p| (p.high_watermark - p.log_start_offset).max(0))
                .sum();
            vec![
                t.name.clone(),
                t.partitions.len().to_string(),
                messages.to_string(),
            ]
        })
        .collect();
    print_table(
        &["TOPIC", "PARTITIONS", "MESSAGES"],
        &["PARTITIONS", "MESSAGES"],
        &rows,
    );
}

/// `strata topic describe` as a table.
pub fn topic_describe_table(topics: &[TopicDescription]) {
    let rows: Vec<Vec<String>> = topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                vec![
                    t.name.clone(),
                    p.partition.to_string(),
                    if p.leader < 0 {
                        "none".into()
                    } else {
                        p.leader.to_string()
                    },
                    p.log_start_offset.to_string(),
                    p.high_watermark.to_string(),
                    (p.high_watermark - p.log_start_offset).max(0).to_string(),
                ]
            })
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "LEADER",
            "LOG-START",
            "HIGH-WATERMARK",
            "MESSAGES",
        ],
        &["PARTITION", "LOG-START", "HIGH-WATERMARK", "MESSAGES"],
        &rows,
    );
}
