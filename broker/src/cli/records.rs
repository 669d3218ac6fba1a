//! `strata produce` and `strata consume`: lines in and out over the Kafka protocol.
//!
//! Produce reads stdin line by line, splits a key off with `--key-sep`, picks the partition
//! like Kafka's default partitioner (murmur2 of the key; keyless lines round-robin over the
//! partitions, one batch at a time) unless `--partition` names one, and sends record batches
//! (acks=all) to each partition's leader. Consume fetches from each partition's leader and
//! prints values (and keys with `--print-key`), one per line.

use super::CliError;
use bytes::Bytes;
use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::time::{Duration, Instant};
use strata_broker::export::decode_batch;
use strata_broker::kafka::client::{
    error_is_retriable, error_name, AdminClient, TopicLayout, OFFSET_EARLIEST, OFFSET_LATEST,
};
use strata_types::batch::{BatchError, Batches};

/// A record to produce: key and value.
type KeyValue = (Option<Bytes>, Option<Bytes>);

/// Records per produced batch, and bytes: a batch goes out at whichever comes first.
const PRODUCE_BATCH_RECORDS_MAX: usize = 1_000;
const PRODUCE_BATCH_BYTES_MAX: usize = 512 * 1024;
/// Bytes asked for per Fetch.
const FETCH_BYTES_MAX: i32 = 1024 * 1024;

/// One client per broker address, opened on first use.
struct Leaders {
    layout: TopicLayout,
    clients: HashMap<String, AdminClient>,
}

impl Leaders {
    async fn open(bootstrap: &str, topic: &str) -> Result<Self, CliError> {
        let mut first = AdminClient::connect(bootstrap).await?;
        let layout = first.topic_layout(topic).await?;
        let mut clients = HashMap::new();
        clients.insert(bootstrap.to_string(), first);
        Ok(Leaders { layout, clients })
    }

    fn partitions(&self) -> Vec<i32> {
        self.layout.partitions.iter().map(|(p, _)| *p).collect()
    }

    fn check_partition(&self, partition: i32) -> Result<(), CliError> {
        let n = self.layout.partitions.len();
        if self.layout.partitions.iter().any(|(p, _)| *p == partition) {
            Ok(())
        } else {
            Err(CliError::Usage(format!(
                "--partition {partition}: topic `{}` has partitions 0..{n}",
                self.layout.topic
            )))
        }
    }

    async fn client(&mut self, partition: i32) -> Result<&mut AdminClient, CliError> {
        let addr = self
            .layout
            .leader_addr(partition)
            .ok_or_else(|| {
                CliError::Remote(format!(
                    "partition {}/{partition} has no leader right now; retry",
                    self.layout.topic
                ))
            })?
            .to_string();
        if !self.clients.contains_key(&addr) {
            let c = AdminClient::connect(&addr).await?;
            self.clients.insert(addr.clone(), c);
        }
        Ok(self.clients.get_mut(&addr).expect("inserted above"))
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `strata produce TOPIC`: returns the number of records produced.
pub async fn produce(
    bootstrap: &str,
    topic: &str,
    key_sep: Option<&str>,
    partition: Option<i32>,
) -> Result<u64, CliError> {
    if key_sep == Some("") {
        return Err(CliError::Usage(
            "--key-sep must not be empty (example: --key-sep ':')".into(),
        ));
    }
    let mut leaders = Leaders::open(bootstrap, topic).await?;
    if let Some(p) = partition {
        leaders.check_partition(p)?;
    }
    let partitions = leaders.partitions();
    let progress = std::io::stderr().is_terminal() && !std::io::stdin().is_terminal();
    // Per partition: the records of its next batch and their bytes.
    let mut pending: HashMap<i32, (Vec<KeyValue>, usize)> = HashMap::new();
    let mut round_robin = 0usize;
    let mut produced = 0u64;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = lines
            .read_until(b'\n', &mut line)
            .map_err(|e| CliError::Remote(format!("reading stdin: {e}")))?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        let (key, value) = match key_sep {
            Some(sep) => match find(&line, sep.as_bytes()) {
                Some(at) => (
                    Some(Bytes::copy_from_slice(&line[..at])),
                    Bytes::copy_from_slice(&line[at + sep.len()..]),
                ),
                None => (None, Bytes::copy_from_slice(&line)),
            },
            None => (None, Bytes::copy_from_slice(&line)),
        };
        let target = match (partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => {
                partitions[strata_broker::mqtt::mapping::partition_for(k, partitions.len())]
            }
            (None, None) => partitions[round_robin % partitions.len()],
        };
        let size = key.as_ref().map_or(0, Bytes::len) + value.len();
        let slot = pending.entry(target).or_default();
        slot.0.push((key, Some(value)));
        slot.1 += size;
        if slot.0.len() >= PRODUCE_BATCH_RECORDS_MAX || slot.1 >= PRODUCE_BATCH_BYTES_MAX {
            let (records, _) = pending.remove(&target).unwrap_or_default();
            produced += send(&mut leaders, topic, target, &records).await?;
            round_robin += 1;
            if progress {
                eprint!("\rproduced {produced} records");
            }
        }
    }
    let mut rest: Vec<_> = pending.into_iter().collect();
    rest.sort_by_key(|(p, _)| *p);
    for (target, (records, _)) in rest {
        produced += send(&mut leaders, topic, target, &records).await?;
    }
    if progress {
        eprintln!();
    }
    Ok(produced)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn send(
    leaders: &mut Leaders,
    topic: &str,
    partition: i32,
    records: &[KeyValue],
) -> Result<u64, CliError> {
    if records.is_empty() {
        return Ok(0);
    }
    leaders
        .client(partition)
        .await?
        .produce(topic, partition, records, now_ms())
        .await?;
    Ok(records.len() as u64)
}

/// Where `consume` starts in each partition.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Beginning,
    End,
    Offset(i64),
}

pub struct ConsumeArgs<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub start: Start,
    pub count: Option<u64>,
    pub print_key: bool,
    pub key_sep: &'a str,
    pub timeout: Option<Duration>,
}

/// `strata consume TOPIC`: prints records until `--count` (or forever); returns how many.
pub async fn consume(args: ConsumeArgs<'_>) -> Result<u64, CliError> {
    let mut leaders = Leaders::open(args.bootstrap, args.topic).await?;
    let partitions = match args.partition {
        Some(p) => {
            leaders.check_partition(p)?;
            vec![p]
        }
        None => leaders.partitions(),
    };
    let mut next: Vec<(i32, i64)> = Vec::with_capacity(partitions.len());
    for &p in &partitions {
        let offset = match args.start {
            Start::Offset(n) => n,
            Start::Beginning | Start::End => {
                let ts = if matches!(args.start, Start::Beginning) {
                    OFFSET_EARLIEST
                } else {
                    OFFSET_LATEST
                };
                let listed = leaders
                    .client(p)
                    .await?
                    .list_offsets(args.topic, &[(p, ts)])
                    .await?;
                let l = listed[0];
                if l.error_code != 0 {
                    return Err(CliError::Remote(format!(
                        "list offsets of {}/{p}: {}",
                        args.topic,
                        error_name(l.error_code)
                    )));
                }
                l.offset
            }
        };
        next.push((p, offset));
    }
    let progress =
        args.count.is_some() && std::io::stderr().is_terminal() && !std::io::stdout().is_terminal();
    let started = Instant::now();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let done = |printed: u64| args.count.is_some_and(|c| printed >= c);
    while !done(printed) {
        if let Some(t) = args.timeout {
            if started.elapsed() >= t {
                let _ = out.flush();
                return Err(CliError::Remote(format!(
                    "timed out after {} ms with {printed} of {} records",
                    t.as_millis(),
                    args.count.map_or("?".into(), |c| c.to_string())
                )));
            }
        }
        for (p, offset) in next.iter_mut() {
            if done(printed) {
                break;
            }
            let fetched = leaders
                .client(*p)
                .await?
                .fetch(args.topic, *p, *offset, FETCH_BYTES_MAX)
                .await?;
            if fetched.error_code != 0 {
                if error_is_retriable(fetched.error_code) {
                    continue;
                }
                return Err(CliError::Remote(format!(
                    "fetch {}/{p} at offset {offset}: {}",
                    args.topic,
                    error_name(fetched.error_code)
                )));
            }
            for item in Batches::new(&fetched.records[..]) {
                let (header, pos) = match item {
                    Ok(h) => h,
                    Err(BatchError::Truncated { .. }) => break,
                    Err(e) => {
                        return Err(CliError::Remote(format!(
                            "bad batch in {}/{p} at offset {offset}: {e}",
                            args.topic
                        )))
                    }
                };
                if header.last_offset() < *offset {
                    continue;
                }
                let (_, records) =
                    decode_batch(&fetched.records[pos..pos + header.size]).map_err(|e| {
                        CliError::Remote(format!(
                            "bad batch in {}/{p} at offset {}: {e}",
                            args.topic, header.base_offset
                        ))
                    })?;
                let from = *offset;
                for r in records.iter().filter(|r| r.offset >= from) {
                    if done(printed) {
                        break;
                    }
                    let mut line = Vec::new();
                    if args.print_key {
                        line.extend_from_slice(r.key.as_deref().unwrap_or_default());
                        line.extend_from_slice(args.key_sep.as_bytes());
                    }
                    line.extend_from_slice(r.value.as_deref().unwrap_or_default());
                    line.push(b'\n');
                    out.write_all(&line)
                        .map_err(|e| CliError::Remote(format!("writing stdout: {e}")))?;
                    printed += 1;
                    *offset = r.offset + 1;
                }
                *offset = (*offset).max(header.last_offset() + 1);
            }
            if progress {
                eprint!("\rconsumed {printed}/{}", args.count.unwrap_or_default());
            }
        }
        out.flush()
            .map_err(|e| CliError::Remote(format!("writing stdout: {e}")))?;
    }
    if progress {
        eprintln!();
    }
    Ok(printed)
}
