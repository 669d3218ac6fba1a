//! `POST /v1/topics/{topic}/records`: one request, one object, one `CommitDirect`.
//!
//! Body: `{"records":[{"key"?, "value", "headers"?: {name: value}, "partition"?,
//! "timestamp"?}], "encoding"?: "utf8" | "base64"}`. `encoding` applies to keys, values and
//! header values (default `utf8`); a `null` value is a tombstone. A record without `partition`
//! goes to Kafka's default partition for its key ([`crate::partitioner`]), or round robin
//! without a key; a record without `timestamp` gets the time the request was handled.
//!
//! The records of each partition become one Kafka v2 record batch (uncompressed, producer id
//! -1) whose base offset is 0: the batch is stored *relative to its block*, exactly as the
//! broker's `DirectWriter` stores them, and metadata assigns the block's offsets when it
//! applies the commit. The answer gives each record's offset, in request order.
//!
//! *Idempotence.* A client that may retry (a timeout, a 503 whose commit may still have
//! applied) asks for a producer id once (`POST /v1/producers`, [`init_producer`]) and sends
//! `"producer": {"id", "epoch", "sequences": {"<partition>": first_sequence}}` with every
//! produce: for each partition the request writes, the sequence number of its first record
//! there (Kafka's per-partition sequences: the previous request's first sequence plus its
//! record count, from 0, wrapping past `i32::MAX`). The batches carry them, and metadata checks
//! them when it applies the commit with the same rules as the WAL topics' sequencer
//! (`strata_types::sequence`): a retry of a committed request is answered with the ORIGINAL
//! offsets and not written again (`"duplicate": true`), a gap or an old epoch is refused with
//! 409 and nothing is written. The answer gives each partition's next sequence.

use crate::http::{not_direct, ApiError};
use crate::{now_ms, App};
use base64::Engine;
use bytes::Bytes;
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;
use strata_broker::log::direct::{commit_outcome_until, direct_blocks, is_direct, put_until};
use strata_broker::log::uploader::object_key;
use strata_broker::records::{encode_batch, plain_record};
use strata_meta::{Command, CommandResult, DirectProducerBatch, DirectSkip};
use strata_tiering::ObjectBuilder;
use strata_types::sequence::add_seq;

/// Longest a produce waits for its PUT and commit (less when the invocation ends sooner).
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time kept back from the invocation's deadline to answer.
const ANSWER_MARGIN: Duration = Duration::from_millis(1000);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProduceBody {
    records: Vec<InRecord>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    producer: Option<ProducerFields>,
}

/// The idempotence fields of a produce (see the module docs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProducerFields {
    id: i64,
    #[serde(default)]
    epoch: i16,
    /// Partition (as a JSON object key) → sequence of the request's first record there.
    sequences: BTreeMap<String, i32>,
}

impl ProducerFields {
    /// The first sequence of each partition in `partitions` (the ones the request writes);
    /// every one must be named, and no other.
    fn first_sequences(
        &self,
        partitions: impl Iterator<Item = u32> + Clone,
    ) -> Result<BTreeMap<u32, i32>, ApiError> {
        if self.id < 0 || self.epoch < 0 {
            return Err(ApiError::BadRequest(format!(
                "producer.id {} and producer.epoch {} must not be negative (ask POST /v1/producers for an id)",
                self.id, self.epoch
            )));
        }
        let mut firsts = BTreeMap::new();
        for (name, &seq) in &self.sequences {
            let p: u32 = name.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "producer.sequences key `{name}` is not a partition number"
                ))
            })?;
            if seq < 0 {
                return Err(ApiError::BadRequest(format!(
                    "producer.sequences[\"{p}\"] = {seq} is negative"
                )));
            }
            firsts.insert(p, seq);
        }
        let written: Vec<u32> = partitions.collect();
        let missing: Vec<u32> = written
            .iter()
            .copied()
            .filter(|p| !firsts.contains_key(p))
            .collect();
        let extra: Vec<u32> = firsts
            .keys()
            .copied()
            .filter(|p| !written.contains(p))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(ApiError::BadRequest(format!(
                "producer.sequences must name exactly the partitions the request writes \
                 ({written:?}): missing {missing:?}, not written {extra:?}"
            )));
        }
        Ok(firsts)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InRecord {
    #[serde(default)]
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    partition: Option<i64>,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Utf8,
    Base64,
}

impl Encoding {
    fn decode(self, what: &str, i: usize, s: &str) -> Result<Bytes, ApiError> {
        match self {
            Encoding::Utf8 => Ok(Bytes::copy_from_slice(s.as_bytes())),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| {
                    ApiError::BadRequest(format!("records[{i}].{what} is not base64: {e}"))
                }),
        }
    }
}

/// Handles one produce request (the body already checked against the size limit).
pub async fn produce(
    app: &App,
    topic: &str,
    body: &[u8],
    deadline_ms: u64,
) -> Result<Value, ApiError> {
    let body: ProduceBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("malformed produce body: {e}")))?;
    let encoding = match body.encoding.as_deref() {
        None | Some("utf8") => Encoding::Utf8,
        Some("base64") => Encoding::Base64,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "encoding `{other}` is not `utf8` or `base64`"
            )))
        }
    };
    if body.records.is_empty() {
        return Err(ApiError::BadRequest("`records` is empty".into()));
    }
    let state = app.meta_state().await?;
    let meta = state
        .topic(topic)
        .ok_or_else(|| ApiError::NotFound(format!("topic `{topic}` does not exist")))?;
    if !is_direct(&meta.configs) {
        return Err(not_direct(topic));
    }
    let (topic_id, partitions) = (meta.id, meta.partitions);
    drop(state);

    // Per partition, in request order: (request index, record).
    let now = now_ms();
    let mut parts: BTreeMap<u32, Vec<(usize, Record)>> = BTreeMap::new();
    for (i, r) in body.records.into_iter().enumerate() {
        let key = r.key.map(|k| encoding.decode("key", i, &k)).transpose()?;
        let value = r
            .value
            .map(|v| encoding.decode("value", i, &v))
            .transpose()?;
        let mut headers = IndexMap::new();
        for (name, v) in r.headers {
            let v = encoding.decode("headers", i, &v)?;
            headers.insert(StrBytes::from_string(name), Some(v));
        }
        let partition = match (r.partition, &key) {
            (Some(p), _) => {
                if p < 0 || p >= i64::from(partitions) {
                    return Err(ApiError::BadRequest(format!(
                        "records[{i}].partition {p} is out of range: topic `{topic}` has \
                         {partitions} partitions"
                    )));
                }
                p as u32
            }
            (None, Some(k)) => crate::partitioner::for_key(k, partitions),
            (None, None) => {
                (app.next_partition.fetch_add(1, Ordering::Relaxed) % u64::from(partitions)) as u32
            }
        };
        let timestamp = r.timestamp.unwrap_or(now);
        if timestamp < 0 {
            return Err(ApiError::BadRequest(format!(
                "records[{i}].timestamp {timestamp} is negative"
            )));
        }
        let in_part = parts.entry(partition).or_default();
        // Offsets relative to the block: metadata adds the block's base offset at commit.
        let record = plain_record(in_part.len() as i64, timestamp, key, value, headers);
        in_part.push((i, record));
    }

    let firsts = match &body.producer {
        Some(p) => Some(p.first_sequences(parts.keys().copied())?),
        None => None,
    };
    if let (Some(p), Some(firsts)) = (&body.producer, &firsts) {
        for (partition, records) in parts.iter_mut() {
            let first = firsts[partition];
            for (n, (_, r)) in records.iter_mut().enumerate() {
                r.producer_id = p.id;
                r.producer_epoch = p.epoch;
                r.sequence = add_seq(first, n as i32);
            }
        }
    }

    let key = object_key(app.config.node_id);
    let mut builder = ObjectBuilder::new(key.clone());
    let mut total = 0usize;
    for (&partition, records) in &parts {
        let only: Vec<Record> = records.iter().map(|(_, r)| r.clone()).collect();
        let buf = encode_batch(&only)
            .map_err(|e| ApiError::BadRequest(format!("records cannot be encoded: {e}")))?;
        let max_ts = only.iter().map(|r| r.timestamp).max().unwrap_or(-1);
        builder.add_block(
            topic_id,
            partition,
            0,
            only.len() as i64,
            max_ts,
            &[buf.freeze()],
        );
        total += only.len();
    }
    let (object, blocks) = builder.finish();
    debug_assert_eq!(blocks.len(), parts.len());
    let size = object.len() as u64;
    let deadline = deadline_after(deadline_ms);

    put_until(&app.store, &app.metrics, &key, object, deadline)
        .await
        .map_err(|e| ApiError::Unavailable(format!("object store PUT of `{key}` failed: {e}")))?;
    let write = |cmd| app.meta.write(cmd);
    let mut direct = direct_blocks(&blocks);
    if let (Some(p), Some(firsts)) = (&body.producer, &firsts) {
        for (block, (partition, records)) in direct.iter_mut().zip(&parts) {
            let first = firsts[partition];
            block.producer_batches = vec![DirectProducerBatch {
                producer_id: p.id,
                epoch: p.epoch,
                first_seq: first,
                last_seq: add_seq(first, records.len() as i32 - 1),
                offset_delta: 0,
            }];
        }
    }
    let committed = commit_outcome_until(write, &key, size, direct, deadline)
        .await
        .map_err(|e| {
            ApiError::Unavailable(format!(
                "metadata did not commit `{key}` (the records are not visible; retry): {e}"
            ))
        })?;
    let mut duplicate = false;
    for (_, skip) in &committed.skipped {
        match skip {
            DirectSkip::Duplicate => duplicate = true,
            DirectSkip::Sequence(e) => {
                return Err(ApiError::Conflict(format!(
                    "the produce was refused and nothing was written: {e}"
                )))
            }
            DirectSkip::RefusedEarlier { .. } => {
                return Err(ApiError::Unavailable(
                    "an earlier attempt of this commit was refused; retry the request".into(),
                ))
            }
        }
    }
    let base_offsets = committed.base_offsets;

    let mut offsets = vec![Value::Null; total];
    for ((&partition, records), base) in parts.iter().zip(&base_offsets) {
        for (i, r) in records {
            offsets[*i] = json!({ "partition": partition, "offset": base + r.offset });
        }
    }
    tracing::debug!(
        key,
        records = total,
        partitions = parts.len(),
        duplicate,
        "produced"
    );
    let mut answer = json!({ "offsets": offsets });
    if let Some(firsts) = &firsts {
        let next: serde_json::Map<String, Value> = parts
            .iter()
            .map(|(p, records)| {
                let next = add_seq(firsts[p], records.len() as i32);
                (p.to_string(), json!(next))
            })
            .collect();
        answer["duplicate"] = json!(duplicate);
        answer["next_sequences"] = Value::Object(next);
    }
    Ok(answer)
}

/// `POST /v1/producers`: a producer id never handed out before (one metadata write), epoch 0.
pub async fn init_producer(app: &App) -> Result<Value, ApiError> {
    match app
        .meta
        .write(Command::AllocateProducerIds { count: 1 })
        .await
    {
        Ok(CommandResult::ProducerIdsAllocated { first }) => {
            Ok(json!({ "producer_id": first, "producer_epoch": 0 }))
        }
        Ok(other) => Err(ApiError::Unavailable(format!(
            "metadata did not allocate a producer id: {other:?}"
        ))),
        Err(e) => Err(ApiError::Unavailable(format!(
            "metadata did not allocate a producer id: {e}"
        ))),
    }
}

/// The deadline for the PUT and the commit: [`PRODUCE_TIMEOUT`] from now, or earlier to leave
/// [`ANSWER_MARGIN`] before the invocation's own deadline (at least one second).
fn deadline_after(invocation_deadline_ms: u64) -> tokio::time::Instant {
    let now = now_ms().max(0) as u64;
    let left = Duration::from_millis(invocation_deadline_ms.saturating_sub(now));
    let budget = left
        .saturating_sub(ANSWER_MARGIN)
        .clamp(Duration::from_secs(1), PRODUCE_TIMEOUT);
    tokio::time::Instant::now() + budget
}
