//! `strata-rdkafka`: the Rust `rdkafka` crate (librdkafka underneath) as a stock Kafka client,
//! driven by the e2e compatibility matrix (`tests/e2e/t63_rdkafka_test.py`).
//!
//! Every subcommand speaks JSON lines so the Python side checks the results byte for byte:
//! keys, values and header values travel as lowercase hex (`null` for a null key, value or
//! header value). Any librdkafka property is passed with `-X name=value`, as with kcat.
//!
//! ```text
//! strata-rdkafka -b HOST:PORT [-X k=v]... produce --topic T         # stdin: {"p","k","v","h"}
//! strata-rdkafka -b HOST:PORT [-X k=v]... consume --topic T         # every record up to the high watermark
//! strata-rdkafka -b HOST:PORT [-X k=v]... group --topic T --group G # a group member: events and records
//! strata-rdkafka -b HOST:PORT [-X k=v]... admin OP ...              # create/delete topics, partitions, configs
//! ```
//!
//! Exit status: 0 when everything asked for was done, 1 with a message on stderr otherwise.

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(name = "strata-rdkafka", about = "The rdkafka crate as a test client")]
struct Cli {
    /// bootstrap.servers
    #[arg(short = 'b', long)]
    bootstrap: String,
    /// Any librdkafka property, `name=value` (repeatable).
    #[arg(short = 'X', value_parser = parse_prop)]
    props: Vec<(String, String)>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Produce the records read from stdin, one JSON object per line:
    /// `{"p": partition|null, "k": hex|null, "v": hex|null, "h": [[name, hex|null], ...]}`.
    /// Prints `{"i", "p", "o"}` per delivered record (`{"i", "error"}` otherwise), in input order.
    Produce {
        #[arg(long)]
        topic: String,
        /// Seconds to wait for every delivery (librdkafka retries within `message.timeout.ms`).
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Read every partition of `topic` from the beginning up to its high watermark (as it was
    /// when the read started), printing `{"p", "o", "k", "v", "h", "ts"}` per record.
    Consume {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// A consumer-group member (subscribe): prints `{"event": "assign"|"revoke", "partitions"}`
    /// on every rebalance and `{"event": "record", "p", "o", "v"}` per record, committing each
    /// record's offset synchronously when `--commit`. Stops after `--max-records`, after
    /// `--run-secs`, or when stdin closes (the test's way to stop a member cleanly).
    Group {
        #[arg(long)]
        topic: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        commit: bool,
        #[arg(long)]
        max_records: Option<u64>,
        #[arg(long, default_value_t = 120)]
        run_secs: u64,
    },
    /// Admin operations; prints one JSON result.
    Admin {
        #[command(subcommand)]
        op: AdminOp,
    },
}

#[derive(Subcommand, Debug)]
enum AdminOp {
    CreateTopic {
        name: String,
        partitions: i32,
        /// `name=value` topic configs.
        #[arg(value_parser = parse_prop)]
        configs: Vec<(String, String)>,
    },
    DeleteTopic {
        name: String,
    },
    /// Grow a topic to `total` partitions.
    CreatePartitions {
        name: String,
        total: usize,
    },
    DescribeConfig {
        name: String,
    },
    AlterConfig {
        name: String,
        #[arg(value_parser = parse_prop, required = true)]
        configs: Vec<(String, String)>,
    },
    /// Topic names and partition counts from a metadata request.
    ListTopics,
}

fn parse_prop(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not name=value"))
}

fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn from_hex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("odd-length hex string");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| anyhow!("bad hex: {e}")))
        .collect()
}

fn opt_hex(v: &Value) -> Result<Option<Vec<u8>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => from_hex(s).map(Some),
        other => bail!("expected hex string or null, got {other}"),
    }
}

fn hex_or_null(b: Option<&[u8]>) -> Value {
    b.map_or(Value::Null, |b| Value::String(to_hex(b)))
}

fn headers_json<M: Message>(m: &M) -> Value {
    let Some(hs) = m.headers() else {
        return json!([]);
    };
    Value::Array(
        hs.iter()
            .map(|h| json!([h.key, hex_or_null(h.value)]))
            .collect(),
    )
}

fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    // A closed stdout (the test stopped reading) is not this tool's failure.
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn config(cli: &Cli) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cli.bootstrap);
    for (k, v) in &cli.props {
        c.set(k, v);
    }
    c
}

/// One input line of `produce`.
struct Input {
    partition: Option<i32>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

fn parse_input(line: &str) -> Result<Input> {
    let v: Value = serde_json::from_str(line).context("input line is not JSON")?;
    let partition = match &v["p"] {
        Value::Null => None,
        p => Some(
            p.as_i64()
                .and_then(|p| i32::try_from(p).ok())
                .ok_or_else(|| anyhow!("bad partition {p}"))?,
        ),
    };
    let mut headers = Vec::new();
    if let Some(hs) = v["h"].as_array() {
        for h in hs {
            let name = h[0]
                .as_str()
                .ok_or_else(|| anyhow!("header name must be a string"))?;
            headers.push((name.to_string(), opt_hex(&h[1])?));
        }
    }
    Ok(Input {
        partition,
        key: opt_hex(&v["k"])?,
        value: opt_hex(&v["v"])?,
        headers,
    })
}

async fn produce(cli: &Cli, topic: &str, timeout: Duration) -> Result<()> {
    let producer: FutureProducer<Ctx> = config(cli)
        .create_with_context(Ctx)
        .context("creating the producer")?;
    let mut pending = Vec::new();
    // Records are sent as they are read, so a test can keep feeding input while it kills and
    // restarts the broker (the idempotent-producer scenario).
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let input = parse_input(&line).with_context(|| format!("input line {}", i + 1))?;
        let mut headers = OwnedHeaders::new_with_capacity(input.headers.len());
        for (name, value) in &input.headers {
            headers = headers.insert(Header {
                key: name,
                value: value.as_deref(),
            });
        }
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = &input.key {
            rec = rec.key(k.as_slice());
        }
        if let Some(v) = &input.value {
            rec = rec.payload(v.as_slice());
        }
        if let Some(p) = input.partition {
            rec = rec.partition(p);
        }
        let fut = producer
            .send_result(rec)
            .map_err(|(e, _)| anyhow!("enqueue record {i}: {e}"))?;
        pending.push((i, fut));
    }
    let deadline = Instant::now() + timeout;
    let mut failed = 0usize;
    for (i, fut) in pending {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, fut).await {
            Ok(Ok(Ok(d))) => emit(json!({"i": i, "p": d.partition, "o": d.offset})),
            Ok(Ok(Err((e, _)))) => {
                failed += 1;
                emit(json!({"i": i, "error": e.to_string()}));
            }
            Ok(Err(_)) => {
                failed += 1;
                emit(json!({"i": i, "error": "delivery report lost (producer dropped)"}));
            }
            Err(_) => {
                failed += 1;
                emit(json!({"i": i, "error": "timed out waiting for the delivery report"}));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} records not delivered");
    }
    Ok(())
}

fn consume(cli: &Cli, topic: &str, timeout: Duration) -> Result<()> {
    let consumer: BaseConsumer<Ctx> = config(cli)
        .set("group.id", "strata-rdkafka-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create_with_context(Ctx)
        .context("creating the consumer")?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .context("metadata")?;
    let t = md
        .topics()
        .first()
        .ok_or_else(|| anyhow!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        bail!("topic {topic}: {e:?}");
    }
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::BTreeMap::new();
    for p in t.partitions() {
        let (_, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .with_context(|| format!("watermarks of {topic}/{}", p.id()))?;
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
        ends.insert(p.id(), high);
    }
    consumer.assign(&tpl).context("assign")?;
    let deadline = Instant::now() + timeout;
    let mut next: std::collections::BTreeMap<i32, i64> = ends.keys().map(|&p| (p, 0)).collect();
    while next.iter().any(|(p, o)| *o < ends[p]) {
        if Instant::now() >= deadline {
            bail!("timed out: read up to {next:?}, high watermarks {ends:?}");
        }
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.context("consume")?;
        if m.offset() >= ends[&m.partition()] {
            continue;
        }
        emit(json!({
            "p": m.partition(), "o": m.offset(),
            "k": hex_or_null(m.key()), "v": hex_or_null(m.payload()),
            "h": headers_json(&m),
            "ts": m.timestamp().to_millis(),
        }));
        next.insert(m.partition(), m.offset() + 1);
    }
    Ok(())
}

/// Reports the errors librdkafka raises outside any request (an authentication refusal,
/// for one) on stderr, where the tests look for them.
struct Ctx;

impl ConsumerContext for Ctx {}

impl ClientContext for Ctx {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        eprintln!("strata-rdkafka: client error: {error}: {reason}");
    }
}

/// Prints the group's rebalance events as they happen.
struct Events;

impl ClientContext for Events {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        Ctx.error(error, reason);
    }
}

impl ConsumerContext for Events {
    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let parts = |tpl: &TopicPartitionList| -> Vec<i32> {
            tpl.elements().iter().map(|e| e.partition()).collect()
        };
        match rebalance {
            Rebalance::Assign(tpl) => emit(json!({"event": "assign", "partitions": parts(tpl)})),
            Rebalance::Revoke(tpl) => emit(json!({"event": "revoke", "partitions": parts(tpl)})),
            Rebalance::Error(e) => emit(json!({"event": "error", "error": e.to_string()})),
        }
    }
}

async fn group(
    cli: &Cli,
    topic: &str,
    group: &str,
    commit: bool,
    max_records: Option<u64>,
    run: Duration,
) -> Result<()> {
    let consumer: StreamConsumer<Events> = config(cli)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Events)
        .context("creating the group consumer")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    // stdin closing is the stop signal; read it on a blocking thread.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin()
            .read_line(&mut sink)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            sink.clear();
        }
        let _ = stop_tx.send(());
    });
    let deadline = tokio::time::Instant::now() + run;
    let mut count = 0u64;
    loop {
        if max_records.is_some_and(|m| count >= m) {
            break;
        }
        let m = tokio::select! {
            m = consumer.recv() => m.context("consume")?,
            _ = &mut stop_rx => break,
            _ = tokio::time::sleep_until(deadline) => break,
        };
        emit(json!({
            "event": "record", "p": m.partition(), "o": m.offset(),
            "v": hex_or_null(m.payload()),
        }));
        if commit {
            consumer
                .commit_message(&m, CommitMode::Sync)
                .with_context(|| format!("commit {}/{}", m.partition(), m.offset()))?;
        }
        count += 1;
    }
    // A clean leave: the group rebalances at once instead of waiting for the session timeout.
    consumer.unsubscribe();
    emit(json!({"event": "stopped", "records": count}));
    Ok(())
}

async fn admin(cli: &Cli, op: &AdminOp) -> Result<Value> {
    let client: AdminClient<Ctx> = config(cli)
        .create_with_context(Ctx)
        .context("creating the admin client")?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let one =
        |mut rs: Vec<Result<String, (String, rdkafka::types::RDKafkaErrorCode)>>| match rs.pop() {
            Some(Ok(name)) => Ok(json!({"ok": name})),
            Some(Err((name, code))) => Ok(json!({"error": format!("{code:?}"), "name": name})),
            None => Err(anyhow!("no result")),
        };
    match op {
        AdminOp::CreateTopic {
            name,
            partitions,
            configs,
        } => {
            let mut t = NewTopic::new(name, *partitions, TopicReplication::Fixed(1));
            for (k, v) in configs {
                t = t.set(k, v);
            }
            one(client.create_topics([&t], &opts).await?)
        }
        AdminOp::DeleteTopic { name } => one(client.delete_topics(&[name], &opts).await?),
        AdminOp::CreatePartitions { name, total } => {
            let p = NewPartitions::new(name, *total);
            one(client.create_partitions([&p], &opts).await?)
        }
        AdminOp::DescribeConfig { name } => {
            let rs = client
                .describe_configs([&ResourceSpecifier::Topic(name)], &opts)
                .await?;
            let r = rs.into_iter().next().ok_or_else(|| anyhow!("no result"))?;
            match r {
                Ok(res) => Ok(json!({"configs": res
                    .entries
                    .iter()
                    .map(|e| (e.name.clone(), json!({"value": e.value, "default": e.is_default})))
                    .collect::<serde_json::Map<_, _>>()})),
                Err(e) => Ok(json!({"error": e.to_string()})),
            }
        }
        AdminOp::AlterConfig { name, configs } => {
            let mut a = AlterConfig::new(ResourceSpecifier::Topic(name));
            for (k, v) in configs {
                a = a.set(k, v);
            }
            let rs = client.alter_configs([&a], &opts).await?;
            match rs.into_iter().next() {
                Some(Ok(_)) => Ok(json!({"ok": name})),
                Some(Err((_, code))) => Ok(json!({"error": format!("{code:?}")})),
                None => Err(anyhow!("no result")),
            }
        }
        AdminOp::ListTopics => {
            let md = client
                .inner()
                .fetch_metadata(None, Duration::from_secs(30))?;
            Ok(json!({"topics": md
                .topics()
                .iter()
                .map(|t| (t.name().to_string(), json!(t.partitions().len())))
                .collect::<serde_json::Map<_, _>>()}))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let result = match &cli.cmd {
        Cmd::Produce {
            topic,
            timeout_secs,
        } => produce(&cli, topic, Duration::from_secs(*timeout_secs)).await,
        Cmd::Consume {
            topic,
            timeout_secs,
        } => consume(&cli, topic, Duration::from_secs(*timeout_secs)),
        Cmd::Group {
            topic,
            group: g,
            commit,
            max_records,
            run_secs,
        } => {
            group(
                &cli,
                topic,
                g,
                *commit,
                *max_records,
                Duration::from_secs(*run_secs),
            )
            .await
        }
        Cmd::Admin { op } => admin(&cli, op).await.map(emit),
    };
    if let Err(e) = result {
        eprintln!("strata-rdkafka: error: {e:#}");
        std::process::exit(1);
    }
}
