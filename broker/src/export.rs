//! `strata export parquet`: a topic's records over a time range, as Parquet files in any
//! object store.
//!
//! The exporter is a Kafka client of a running broker, like any stock consumer: it asks
//! Metadata for the partitions and their leaders, ListOffsets for the range, and Fetches each
//! partition from its leader. So it reads one node or a cluster alike, and never touches a
//! broker's WAL or objects directly.
//!
//! # Range
//!
//! Per partition the export covers the offsets `[start, stop)`, fixed before the first Fetch:
//!
//! - `start` = ListOffsets(`--from-time`): the first offset whose timestamp is at or after it
//!   (the log start when `--from-time` is absent; the high watermark when no record is that
//!   late, which makes the range empty);
//! - `stop` = ListOffsets(`--to-time`) likewise, or the high watermark at start when
//!   `--to-time` is absent or no record is that late.
//!
//! The range is by offset, as Kafka's offsets-for-times defines it: when timestamps are not
//! monotonic inside a partition, a record in the range may carry a timestamp outside
//! `[from, to)`, and one outside the range may carry a timestamp inside it. A partition with
//! nothing in its range writes no file.
//!
//! # Files
//!
//! `<topic>/partition=<p>/<first offset:020>-<last offset:020>.parquet` under the store URL's
//! root, both offsets inclusive. A file is closed after [`FileLimits::rows_max`] rows or
//! [`FileLimits::input_bytes_max`] bytes of input (keys, values and headers as produced, before
//! compression), whichever comes first, and written with one PUT of its finished bytes. A file
//! holds row groups of [`FileLimits::row_group_rows_max`] rows, zstd-compressed.
//!
//! # Schema
//!
//! The Arrow schema is [`schema`] (and is embedded in each file, so Arrow readers get the
//! exact types back):
//!
//! | column | type | |
//! | --- | --- | --- |
//! | `partition` | int32 | |
//! | `offset` | int64 | |
//! | `timestamp` | timestamp(ms, UTC) | the record's timestamp |
//! | `timestamp_type` | int8 | 0 = CreateTime, 1 = LogAppendTime |
//! | `key` | binary, nullable | |
//! | `value` | binary, nullable | |
//! | `headers` | list<struct<key: utf8, value: binary nullable>> | in record order, duplicates kept |
//!
//! # Record decoding
//!
//! Batches are decoded here rather than with `kafka-protocol`'s record decoder, because that
//! decoder keeps headers in a map and so merges a record's duplicate header keys, which Kafka
//! allows and an export must keep. Decompression uses the same codecs as `crate::records`
//! (`kafka-protocol`'s gzip, snappy and zstd; `lz4_flex` for Kafka's LZ4 frames). Each batch's
//! CRC is checked before its records are read.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, Int64Builder, Int8Builder, ListBuilder, StringBuilder,
    StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::{Buf, Bytes};
use kafka_protocol::compression::{Decompressor, Gzip, Snappy, Zstd};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use strata_tiering::{ObjectStore, TieringError};
use strata_types::batch::{self, BatchError, BatchHeader, Batches, Codec, BATCH_HEADER_BYTES};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::kafka::client::{
    error_is_retriable, error_name, AdminClient, ClientError, FetchedPartition, TopicLayout,
    ERROR_OFFSET_OUT_OF_RANGE, OFFSET_EARLIEST, OFFSET_LATEST,
};

// ---------------------------------------------------------------------------------------------
// Limits

/// A file is closed after this many rows…
pub const FILE_ROWS_MAX: usize = 1_000_000;
/// …or this many bytes of input (keys, values, headers), whichever comes first.
pub const FILE_INPUT_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Rows per Parquet row group.
pub const ROW_GROUP_ROWS_MAX: usize = 64 * 1024;
/// Rows converted to Arrow at a time (the writer then cuts row groups itself).
const ARROW_BATCH_ROWS_MAX: usize = 8 * 1024;
/// Bytes asked for per Fetch.
const FETCH_BYTES_MAX: i32 = 8 * 1024 * 1024;
/// Largest ask when a single batch is larger than `FETCH_BYTES_MAX` (below the client's
/// response limit).
const FETCH_BYTES_GROWN_MAX: i32 = 48 * 1024 * 1024;
/// Partitions exported at the same time (each has its own connection and open file).
const PARTITIONS_IN_FLIGHT_MAX: usize = 4;
/// Attempts at a request that failed in a way that may pass (leader moved, connection lost,
/// nothing returned yet), with a doubling backoff from `RETRY_DELAY_MS_MIN`.
const RETRY_ATTEMPTS_MAX: u32 = 8;
const RETRY_DELAY_MS_MIN: u64 = 100;
const RETRY_DELAY_MS_MAX: u64 = 5_000;
/// At most one progress line per this interval.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Partitions named on a progress line; the rest are summed up.
const PROGRESS_PARTITIONS_MAX: usize = 8;
/// Queued progress events.
const PROGRESS_EVENTS_MAX: usize = 1024;
/// zstd level of the Parquet pages: fast, and most of the ratio.
const ZSTD_LEVEL: i32 = 3;

/// When a partition's file is closed, and how it is cut into row groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLimits {
    pub rows_max: usize,
    pub input_bytes_max: usize,
    pub row_group_rows_max: usize,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            rows_max: FILE_ROWS_MAX,
            input_bytes_max: FILE_INPUT_BYTES_MAX,
            row_group_rows_max: ROW_GROUP_ROWS_MAX,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arguments

/// What to export, and where. Built by the CLI.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub topic: String,
    /// Milliseconds since the epoch; `None`: from the log start.
    pub from_ms: Option<i64>,
    /// Milliseconds since the epoch; `None`: up to the high watermark at start.
    pub to_ms: Option<i64>,
    /// An object-store URL (`strata_tiering::ObjectStore::from_url`).
    pub store_url: String,
    pub bootstrap: String,
    /// `None`: every partition.
    pub partitions: Option<Vec<i32>>,
    pub limits: FileLimits,
}

/// Parses a time argument: RFC 3339 (`2026-05-01T00:00:00Z`, `2026-05-01T02:00:00.5+02:00`)
/// or an integer number of milliseconds since the Unix epoch. Returns milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .map_err(|_| format!("`{s}`: milliseconds out of range"));
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!(
                "`{s}` is neither RFC 3339 (like 2026-05-01T00:00:00Z) nor milliseconds since \
                 the epoch: {e}"
            )
        })
}

/// The object key of a file holding `partition`'s offsets `first..=last`.
pub fn file_key(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("{topic}/partition={partition}/{first:020}-{last:020}.parquet")
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The arguments name something that does not exist or cannot be. Permanent (exit 2).
    #[error("{0}")]
    BadArgument(String),
    /// The broker cannot be reached or refused a request. Exit 1.
    #[error(transparent)]
    Broker(#[from] ClientError),
    /// The object store refused or failed a write. Exit 1.
    #[error(transparent)]
    Store(#[from] TieringError),
    /// A batch the broker returned cannot be read (bad CRC, bad framing, unknown codec).
    #[error("partition {partition}: the batch at offset {offset} cannot be read: {reason}")]
    BadBatch {
        partition: i32,
        offset: i64,
        reason: String,
    },
    /// Retention deleted records of the range while it was being exported.
    #[error(
        "partition {partition}: offset {offset} is gone (log start is now {log_start}); \
         retention ran during the export"
    )]
    RangeGone {
        partition: i32,
        offset: i64,
        log_start: i64,
    },
    /// A Kafka error on a partition that retries did not clear.
    #[error("partition {partition}: {what}: {code}")]
    Partition {
        partition: i32,
        what: String,
        code: String,
    },
    /// Metadata names no leader for the partition (retried while leadership moves).
    #[error("partition {partition} has no leader")]
    NoLeader { partition: i32 },
    /// Encoding a Parquet file failed (a bug, or out of memory).
    #[error("partition {partition}: writing Parquet: {reason}")]
    Encode { partition: i32, reason: String },
}

impl ExportError {
    /// The process exit code `main.rs` documents: 2 for arguments, 1 for the environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExportError::BadArgument(_)
            | ExportError::Broker(ClientError::UnknownTopic { .. })
            | ExportError::Store(TieringError::BadUrl { .. }) => 2,
            _ => 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Records

/// One record as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    pub offset: i64,
    pub timestamp_ms: i64,
    /// 0 = CreateTime, 1 = LogAppendTime.
    pub timestamp_type: i8,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In record order; a key may repeat.
    pub headers: Vec<(String, Option<Bytes>)>,
}

impl ExportRecord {
    /// Bytes of input this record stands for (what file rolling counts).
    pub fn input_bytes(&self) -> usize {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len());
        len(&self.key)
            + len(&self.value)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + len(v))
                .sum::<usize>()
    }
}

/// Why a batch's records cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
    #[error("cannot decompress ({codec:?}): {reason}")]
    Decompress { codec: Codec, reason: String },
    #[error("record {index}: {reason}")]
    Record { index: usize, reason: String },
    #[error("header says {expected} records, found {found}")]
    Count { expected: i32, found: usize },
}

/// The records section of a batch, decompressed.
fn records_section(batch: &[u8], header: &BatchHeader) -> Result<Bytes, DecodeError> {
    let body = &batch[BATCH_HEADER_BYTES..header.size];
    let codec = header.codec();
    let failed = |reason: String| DecodeError::Decompress { codec, reason };
    let take = |b: &mut Bytes| -> anyhow::Result<Bytes> { Ok(b.copy_to_bytes(b.remaining())) };
    let mut buf = Bytes::copy_from_slice(body);
    match codec {
        Codec::None => Ok(buf),
        Codec::Gzip => <Gzip as Decompressor<Bytes>>::decompress(&mut buf, take)
            .map_err(|e| failed(e.to_string())),
        Codec::Snappy => <Snappy as Decompressor<Bytes>>::decompress(&mut buf, take)
            .map_err(|e| failed(e.to_string())),
        Codec::Zstd => <Zstd as Decompressor<Bytes>>::decompress(&mut buf, take)
            .map_err(|e| failed(e.to_string())),
        Codec::Lz4 => {
            let mut out = Vec::new();
            lz4_flex::frame::FrameDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| failed(e.to_string()))?;
            Ok(Bytes::from(out))
        }
        Codec::Unknown(c) => Err(DecodeError::UnknownCodec(c)),
    }
}

/// A cursor over one record's bytes with Kafka's zig-zag varints.
struct Cursor<'a> {
    buf: &'a Bytes,
    pos: usize,
    end: usize,
}

impl Cursor<'_> {
    fn varlong(&mut self) -> Result<i64, String> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err("truncated varint".into());
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            raw |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    fn varint(&mut self) -> Result<i32, String> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| format!("varint {v} out of i32 range"))
    }

    fn i8(&mut self) -> Result<i8, String> {
        if self.pos >= self.end {
            return Err("truncated".into());
        }
        self.pos += 1;
        Ok(self.buf[self.pos - 1] as i8)
    }

    /// A length-prefixed byte string; length -1 is null.
    fn bytes(&mut self) -> Result<Option<Bytes>, String> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(format!("length {len}"))
            };
        }
        let len = len as usize;
        if self.end - self.pos < len {
            return Err(format!(
                "length {len} past the record's end ({} left)",
                self.end - self.pos
            ));
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(Some(out))
    }
}

/// Decodes every record of one complete batch (message format v2) after checking its CRC.
/// A control batch (transaction markers) yields no records.
pub fn decode_batch(batch: &[u8]) -> Result<(BatchHeader, Vec<ExportRecord>), DecodeError> {
    let header = BatchHeader::parse(batch)?;
    batch::verify_crc(batch, &header)?;
    if header.is_control() {
        return Ok((header, Vec::new()));
    }
    let section = records_section(batch, &header)?;
    let timestamp_type = i8::from(header.is_log_append_time());
    let mut records = Vec::with_capacity(header.records_count.max(0) as usize);
    let mut at = 0usize;
    while at < section.len() {
        let index = records.len();
        let bad = |reason: String| DecodeError::Record { index, reason };
        let mut c = Cursor {
            buf: &section,
            pos: at,
            end: section.len(),
        };
        let length = c.varint().map_err(bad)?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| c.pos.checked_add(l))
            .filter(|e| *e <= section.len())
            .ok_or_else(|| bad(format!("length {length} past the batch's end")))?;
        c.end = end;
        let _attributes = c.i8().map_err(bad)?;
        let timestamp_delta = c.varlong().map_err(bad)?;
        let offset_delta = c.varint().map_err(bad)?;
        let key = c.bytes().map_err(bad)?;
        let value = c.bytes().map_err(bad)?;
        let header_count = c.varint().map_err(bad)?;
        if header_count < 0 {
            return Err(bad(format!("{header_count} headers")));
        }
        let mut headers = Vec::with_capacity((header_count as usize).min(64));
        for _ in 0..header_count {
            let k = c
                .bytes()
                .map_err(bad)?
                .ok_or_else(|| bad("a null header key".into()))?;
            let v = c.bytes().map_err(bad)?;
            // Kafka header keys are strings; a non-UTF-8 one is kept readable rather than
            // failing the export.
            headers.push((String::from_utf8_lossy(&k).into_owned(), v));
        }
        if c.pos != end {
            return Err(bad(format!("{} bytes left over", end - c.pos)));
        }
        let timestamp_ms = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(timestamp_delta)
        };
        records.push(ExportRecord {
            offset: header.base_offset + i64::from(offset_delta),
            timestamp_ms,
            timestamp_type,
            key,
            value,
            headers,
        });
        at = end;
    }
    if records.len() != header.records_count.max(0) as usize {
        return Err(DecodeError::Count {
            expected: header.records_count,
            found: records.len(),
        });
    }
    Ok((header, records))
}

// ---------------------------------------------------------------------------------------------
// Arrow

/// The Arrow schema of every exported file (see the module docs).
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("timestamp_type", DataType::Int8, false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new(
            "headers",
            DataType::List(Arc::new(header_item_field())),
            false,
        ),
    ]))
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn header_item_field() -> Field {
    Field::new("item", DataType::Struct(header_fields()), false)
}

/// Rows of one partition on their way to an Arrow `RecordBatch`.
struct Rows {
    partition: i32,
    offset: Int64Builder,
    timestamp: TimestampMillisecondBuilder,
    timestamp_type: Int8Builder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    len: usize,
}

impl Rows {
    fn new(partition: i32) -> Self {
        let headers = StructBuilder::new(
            header_fields(),
            vec![
                Box::new(StringBuilder::new()),
                Box::new(BinaryBuilder::new()),
            ],
        );
        Self {
            partition,
            offset: Int64Builder::new(),
            timestamp: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            timestamp_type: Int8Builder::new(),
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            headers: ListBuilder::new(headers).with_field(Arc::new(header_item_field())),
            len: 0,
        }
    }

    fn push(&mut self, r: &ExportRecord) {
        self.offset.append_value(r.offset);
        self.timestamp.append_value(r.timestamp_ms);
        self.timestamp_type.append_value(r.timestamp_type);
        self.key.append_option(r.key.as_deref());
        self.value.append_option(r.value.as_deref());
        let items = self.headers.values();
        for (k, v) in &r.headers {
            items
                .field_builder::<StringBuilder>(0)
                .expect("field 0 is a StringBuilder (Rows::new)")
                .append_value(k);
            items
                .field_builder::<BinaryBuilder>(1)
                .expect("field 1 is a BinaryBuilder (Rows::new)")
                .append_option(v.as_deref());
            items.append(true);
        }
        self.headers.append(true);
        self.len += 1;
    }

    /// The rows so far as one batch; empties the builders.
    fn finish(&mut self) -> Result<RecordBatch, arrow_schema::ArrowError> {
        let mut partition = Int32Builder::with_capacity(self.len);
        partition.append_value_n(self.partition, self.len);
        self.len = 0;
        let columns: Vec<ArrayRef> = vec![
            Arc::new(partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.timestamp_type.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.headers.finish()),
        ];
        RecordBatch::try_new(schema(), columns)
    }
}

// ---------------------------------------------------------------------------------------------
// Files

/// A finished Parquet file, ready for one PUT.
#[derive(Debug)]
pub struct FinishedFile {
    pub key: String,
    pub body: Bytes,
    pub rows: usize,
    pub first_offset: i64,
    pub last_offset: i64,
}

struct OpenFile {
    writer: ArrowWriter<Vec<u8>>,
    first_offset: i64,
    last_offset: i64,
    rows: usize,
    input_bytes: usize,
}

/// One partition's file sequence: takes records in offset order, hands back finished files.
/// Sans-IO: the caller writes the files.
pub struct PartitionFiles {
    topic: String,
    partition: i32,
    limits: FileLimits,
    props: WriterProperties,
    rows: Rows,
    file: Option<OpenFile>,
}

impl PartitionFiles {
    pub fn new(topic: &str, partition: i32, limits: FileLimits) -> Self {
        assert!(limits.rows_max > 0 && limits.input_bytes_max > 0 && limits.row_group_rows_max > 0);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(ZSTD_LEVEL).expect("a valid zstd level"),
            ))
            .set_max_row_group_row_count(Some(limits.row_group_rows_max))
            .set_created_by(format!("strata export {}", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            topic: topic.to_string(),
            partition,
            limits,
            props,
            rows: Rows::new(partition),
            file: None,
        }
    }

    fn encode_error(&self, e: impl std::fmt::Display) -> ExportError {
        ExportError::Encode {
            partition: self.partition,
            reason: e.to_string(),
        }
    }

    /// Adds a record (offsets strictly increasing); returns the file it closed, if it filled
    /// one.
    pub fn push(&mut self, r: &ExportRecord) -> Result<Option<FinishedFile>, ExportError> {
        let file = match &mut self.file {
            Some(f) => {
                debug_assert!(r.offset > f.last_offset, "offsets go up");
                f
            }
            None => {
                let writer = ArrowWriter::try_new(Vec::new(), schema(), Some(self.props.clone()))
                    .map_err(|e| self.encode_error(e))?;
                self.file.insert(OpenFile {
                    writer,
                    first_offset: r.offset,
                    last_offset: r.offset,
                    rows: 0,
                    input_bytes: 0,
                })
            }
        };
        file.last_offset = r.offset;
        file.rows += 1;
        file.input_bytes += r.input_bytes();
        let full =
            file.rows >= self.limits.rows_max || file.input_bytes >= self.limits.input_bytes_max;
        self.rows.push(r);
        if full {
            return self.finish();
        }
        if self.rows.len >= ARROW_BATCH_ROWS_MAX {
            self.write_rows()?;
        }
        Ok(None)
    }

    fn write_rows(&mut self) -> Result<(), ExportError> {
        if self.rows.len == 0 {
            return Ok(());
        }
        let batch = self.rows.finish().map_err(|e| self.encode_error(e))?;
        let Some(file) = &mut self.file else {
            unreachable!("rows are only buffered into an open file");
        };
        file.writer.write(&batch).map_err(|e| ExportError::Encode {
            partition: self.partition,
            reason: e.to_string(),
        })
    }

    /// Closes the open file, if any, and returns it.
    pub fn finish(&mut self) -> Result<Option<FinishedFile>, ExportError> {
        self.write_rows()?;
        let Some(file) = self.file.take() else {
            return Ok(None);
        };
        let body = file.writer.into_inner().map_err(|e| self.encode_error(e))?;
        Ok(Some(FinishedFile {
            key: file_key(
                &self.topic,
                self.partition,
                file.first_offset,
                file.last_offset,
            ),
            body: Bytes::from(body),
            rows: file.rows,
            first_offset: file.first_offset,
            last_offset: file.last_offset,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Progress

/// What a partition task reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The export range of a partition, before its first Fetch.
    Planned {
        partition: i32,
        start: i64,
        stop: i64,
    },
    /// Records read up to (not including) `next`.
    Read {
        partition: i32,
        next: i64,
        records: u64,
        bytes: u64,
    },
    /// A file was written.
    Wrote {
        partition: i32,
        rows: u64,
    },
    Done {
        partition: i32,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionProgress {
    next: i64,
    stop: i64,
    done: bool,
}

/// Totals for the progress lines and the summary.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: u64,
    pub bytes: u64,
    pub files: u64,
    partitions: BTreeMap<i32, PartitionProgress>,
}

impl Progress {
    pub fn apply(&mut self, e: &Event) {
        match *e {
            Event::Planned {
                partition,
                start,
                stop,
            } => {
                self.partitions.insert(
                    partition,
                    PartitionProgress {
                        next: start,
                        stop,
                        done: start >= stop,
                    },
                );
            }
            Event::Read {
                partition,
                next,
                records,
                bytes,
            } => {
                self.records += records;
                self.bytes += bytes;
                if let Some(p) = self.partitions.get_mut(&partition) {
                    p.next = next;
                }
            }
            Event::Wrote { .. } => self.files += 1,
            Event::Done { partition } => {
                if let Some(p) = self.partitions.get_mut(&partition) {
                    p.done = true;
                }
            }
        }
    }

    /// One progress line: totals, then `p<partition>=<next>/<stop>` for up to
    /// `PROGRESS_PARTITIONS_MAX` partitions still running.
    pub fn line(&self) -> String {
        let done = self.partitions.values().filter(|p| p.done).count();
        let mut line = format!(
            "export: {} records, {}, {} files; partitions {}/{} done",
            self.records,
            human_bytes(self.bytes),
            self.files,
            done,
            self.partitions.len()
        );
        let running: Vec<_> = self.partitions.iter().filter(|(_, p)| !p.done).collect();
        for (id, p) in running.iter().take(PROGRESS_PARTITIONS_MAX) {
            line.push_str(&format!(" p{id}={}/{}", p.next, p.stop));
        }
        if running.len() > PROGRESS_PARTITIONS_MAX {
            line.push_str(&format!(
                " (+{} more)",
                running.len() - PROGRESS_PARTITIONS_MAX
            ));
        }
        line
    }
}

fn human_bytes(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if b < 1024 * 1024 {
        format!("{b} B")
    } else {
        format!("{:.1} MiB", b as f64 / MIB)
    }
}

/// Owns the progress state; prints at most one line per `PROGRESS_INTERVAL` to stderr while
/// something changed. Returns the totals when every sender is gone.
async fn report(mut events: mpsc::Receiver<Event>) -> Progress {
    let mut progress = Progress::default();
    let mut dirty = false;
    let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Some(e) => {
                    progress.apply(&e);
                    dirty = true;
                }
                None => return progress,
            },
            _ = tick.tick() => {
                if dirty {
                    eprintln!("{}", progress.line());
                    dirty = false;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

/// What an export did.
#[derive(Debug)]
pub struct Summary {
    pub records: u64,
    pub bytes: u64,
    pub files: u64,
    pub partitions: usize,
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "export: done: {} records, {} in {} files from {} partitions in {:.1} s",
            self.records,
            human_bytes(self.bytes),
            self.files,
            self.partitions,
            self.elapsed.as_secs_f64()
        )
    }
}

/// One partition's range and where to read it.
#[derive(Debug, Clone)]
struct Plan {
    partition: i32,
    start: i64,
    stop: i64,
}

struct Ctx {
    request: ExportRequest,
    store: ObjectStore,
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis((RETRY_DELAY_MS_MIN << failures.min(16)).min(RETRY_DELAY_MS_MAX))
}

/// A failed step, and whether trying again (with fresh metadata and connections) may help.
enum Failure {
    Retry(ExportError),
    Fatal(ExportError),
}

impl From<ExportError> for Failure {
    fn from(e: ExportError) -> Self {
        let transient = match &e {
            // A lost or refused connection: the broker may be restarting or the leader moving.
            ExportError::Broker(c) => matches!(
                c,
                ClientError::Connect { .. } | ClientError::Io { .. } | ClientError::Timeout { .. }
            ),
            ExportError::NoLeader { .. } => true,
            _ => false,
        };
        if transient {
            Failure::Retry(e)
        } else {
            Failure::Fatal(e)
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        ExportError::from(e).into()
    }
}

/// A Kafka error on a partition: retry the ones Kafka calls retriable.
fn partition_failure(partition: i32, what: String, code: i16) -> Failure {
    let e = ExportError::Partition {
        partition,
        what,
        code: error_name(code),
    };
    if error_is_retriable(code) {
        Failure::Retry(e)
    } else {
        Failure::Fatal(e)
    }
}

/// Runs an export: plans every partition's range, then exports up to
/// `PARTITIONS_IN_FLIGHT_MAX` partitions at a time. Progress goes to stderr, each written
/// object key to stdout.
pub async fn run(request: ExportRequest) -> Result<Summary, ExportError> {
    let started = Instant::now();
    if let (Some(from), Some(to)) = (request.from_ms, request.to_ms) {
        if from > to {
            return Err(ExportError::BadArgument(format!(
                "--from-time ({from} ms) is after --to-time ({to} ms)"
            )));
        }
    }
    let store = ObjectStore::from_url(&request.store_url)?;
    let mut bootstrap = AdminClient::connect(&request.bootstrap).await?;
    let layout = bootstrap.topic_layout(&request.topic).await?;
    let partitions = select_partitions(&layout, request.partitions.as_deref())?;
    let plans = plan(&mut bootstrap, &request, &partitions).await?;
    drop(bootstrap);

    let (events, receiver) = mpsc::channel(PROGRESS_EVENTS_MAX);
    let reporter = tokio::spawn(report(receiver));
    for p in &plans {
        let _ = events
            .send(Event::Planned {
                partition: p.partition,
                start: p.start,
                stop: p.stop,
            })
            .await;
    }
    let ctx = Arc::new(Ctx { request, store });
    let count = plans.len();
    let mut queue = plans.into_iter().filter(|p| p.start < p.stop);
    let mut tasks = JoinSet::new();
    let mut result = Ok(());
    loop {
        while tasks.len() < PARTITIONS_IN_FLIGHT_MAX {
            let Some(plan) = queue.next() else { break };
            tasks.spawn(export_partition(ctx.clone(), plan, events.clone()));
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                result = Err(e);
                break;
            }
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(events);
    let progress = reporter.await.unwrap_or_default();
    result?;
    Ok(Summary {
        records: progress.records,
        bytes: progress.bytes,
        files: progress.files,
        partitions: count,
        elapsed: started.elapsed(),
    })
}

/// The partitions to export: all, or the named ones (each must exist).
fn select_partitions(
    layout: &TopicLayout,
    wanted: Option<&[i32]>,
) -> Result<Vec<i32>, ExportError> {
    let all: Vec<i32> = layout.partitions.iter().map(|(p, _)| *p).collect();
    let Some(wanted) = wanted else {
        return Ok(all);
    };
    let mut out = Vec::new();
    for p in wanted {
        if !all.contains(p) {
            return Err(ExportError::BadArgument(format!(
                "topic `{}` has no partition {p} (it has {} partitions)",
                layout.topic,
                all.len()
            )));
        }
        if !out.contains(p) {
            out.push(*p);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Fixes every partition's `[start, stop)`, asking each partition's leader. Retries the
/// whole plan (with fresh metadata) while leaders move.
async fn plan(
    bootstrap: &mut AdminClient,
    request: &ExportRequest,
    partitions: &[i32],
) -> Result<Vec<Plan>, ExportError> {
    let mut failures = 0;
    loop {
        match plan_once(bootstrap, request, partitions).await {
            Ok(plans) => return Ok(plans),
            Err(Failure::Retry(_)) if failures + 1 < RETRY_ATTEMPTS_MAX => {
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
            }
            Err(Failure::Retry(e) | Failure::Fatal(e)) => return Err(e),
        }
    }
}

async fn plan_once(
    bootstrap: &mut AdminClient,
    request: &ExportRequest,
    partitions: &[i32],
) -> Result<Vec<Plan>, Failure> {
    let layout = bootstrap.topic_layout(&request.topic).await?;
    // One connection and up to three requests per leader.
    let mut by_leader: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for &partition in partitions {
        let addr = layout
            .leader_addr(partition)
            .ok_or(ExportError::NoLeader { partition })?;
        by_leader
            .entry(addr.to_string())
            .or_default()
            .push(partition);
    }
    let mut plans = Vec::new();
    for (addr, parts) in by_leader {
        let mut own = None;
        let client = if addr == bootstrap.addr() {
            &mut *bootstrap
        } else {
            own.insert(AdminClient::connect(&addr).await?)
        };
        let ask = |ts: i64| parts.iter().map(|p| (*p, ts)).collect::<Vec<_>>();
        let end = list(client, &request.topic, &ask(OFFSET_LATEST)).await?;
        let from = request.from_ms.unwrap_or(OFFSET_EARLIEST);
        let start = list(client, &request.topic, &ask(from)).await?;
        let stop = match request.to_ms {
            Some(ts) => list(client, &request.topic, &ask(ts)).await?,
            None => end.clone(),
        };
        for (i, &partition) in parts.iter().enumerate() {
            plans.push(Plan::new(partition, start[i], stop[i], end[i]));
        }
    }
    plans.sort_by_key(|p| p.partition);
    Ok(plans)
}

impl Plan {
    /// A partition's range from its ListOffsets answers, where -1 means "no record at or
    /// after that time" and so the end (`high_watermark`).
    fn new(partition: i32, start: i64, stop: i64, high_watermark: i64) -> Plan {
        let or_end = |o: i64| if o < 0 { high_watermark } else { o };
        let start = or_end(start);
        Plan {
            partition,
            start,
            stop: or_end(stop).max(start),
        }
    }
}

/// One ListOffsets request; the offsets in query order.
async fn list(
    client: &mut AdminClient,
    topic: &str,
    queries: &[(i32, i64)],
) -> Result<Vec<i64>, Failure> {
    let answers = client.list_offsets(topic, queries).await?;
    let mut out = Vec::with_capacity(answers.len());
    for a in answers {
        if a.error_code != 0 {
            return Err(partition_failure(
                a.partition,
                "ListOffsets".into(),
                a.error_code,
            ));
        }
        out.push(a.offset);
    }
    Ok(out)
}

/// Connects to `partition`'s current leader, asking the bootstrap broker for metadata.
async fn connect_leader(ctx: &Ctx, partition: i32) -> Result<AdminClient, ExportError> {
    let mut bootstrap = AdminClient::connect(&ctx.request.bootstrap).await?;
    let layout = bootstrap.topic_layout(&ctx.request.topic).await?;
    match layout.leader_addr(partition) {
        Some(addr) if addr == bootstrap.addr() => Ok(bootstrap),
        Some(addr) => Ok(AdminClient::connect(addr).await?),
        None => Err(ExportError::NoLeader { partition }),
    }
}

/// One Fetch from the partition's leader, connecting first when `client` is `None`.
async fn fetch_once(
    ctx: &Ctx,
    client: &mut Option<AdminClient>,
    partition: i32,
    offset: i64,
    bytes_max: i32,
) -> Result<FetchedPartition, Failure> {
    let c = match client {
        Some(c) => c,
        None => client.insert(connect_leader(ctx, partition).await?),
    };
    let fetched = c
        .fetch(&ctx.request.topic, partition, offset, bytes_max)
        .await?;
    match fetched.error_code {
        0 => Ok(fetched),
        ERROR_OFFSET_OUT_OF_RANGE => Err(Failure::Fatal(ExportError::RangeGone {
            partition,
            offset,
            log_start: fetched.log_start_offset,
        })),
        _ => Err(partition_failure(
            partition,
            format!("Fetch at offset {offset}"),
            fetched.error_code,
        )),
    }
}

/// Exports one partition's `[start, stop)`.
async fn export_partition(
    ctx: Arc<Ctx>,
    plan: Plan,
    events: mpsc::Sender<Event>,
) -> Result<(), ExportError> {
    let Plan {
        partition,
        start,
        stop,
    } = plan;
    let mut files = PartitionFiles::new(&ctx.request.topic, partition, ctx.request.limits);
    let mut client = None;
    let mut next = start;
    let mut failures = 0u32;
    let mut fetch_bytes = FETCH_BYTES_MAX;
    while next < stop {
        if failures > 0 {
            tokio::time::sleep(backoff(failures - 1)).await;
        }
        let failure = match fetch_once(&ctx, &mut client, partition, next, fetch_bytes).await {
            Ok(fetched) => {
                let taken = take_records(&fetched.records, partition, next, stop, &mut files)?;
                for file in taken.files {
                    put(&ctx, partition, file, &events).await?;
                }
                if taken.next > next {
                    failures = 0;
                    next = taken.next;
                    let _ = events
                        .send(Event::Read {
                            partition,
                            next,
                            records: taken.records,
                            bytes: taken.bytes,
                        })
                        .await;
                    continue;
                }
                // Nothing usable: the first batch was cut by the byte limit (ask for more),
                // or the leader has not got the data yet (a new leader catching up).
                if fetched.records.len() >= fetch_bytes as usize {
                    fetch_bytes = fetch_bytes.saturating_mul(2).min(FETCH_BYTES_GROWN_MAX);
                }
                Failure::Retry(ExportError::Partition {
                    partition,
                    what: format!(
                        "Fetch at offset {next} (high watermark {})",
                        fetched.high_watermark
                    ),
                    code: "no records returned".into(),
                })
            }
            Err(failure) => failure,
        };
        match failure {
            Failure::Retry(e) => {
                client = None;
                failures += 1;
                if failures >= RETRY_ATTEMPTS_MAX {
                    return Err(e);
                }
            }
            Failure::Fatal(e) => return Err(e),
        }
    }
    if let Some(file) = files.finish()? {
        put(&ctx, partition, file, &events).await?;
    }
    let _ = events.send(Event::Done { partition }).await;
    Ok(())
}

/// What one Fetch answer gave.
#[derive(Debug)]
struct Taken {
    /// Files that filled up.
    files: Vec<FinishedFile>,
    records: u64,
    /// Input bytes (see [`ExportRecord::input_bytes`]).
    bytes: u64,
    /// The offset to fetch next.
    next: i64,
}

/// Feeds the records of a Fetch answer that fall in `[next, stop)` to `files`. The answer may
/// start before `next` (inside a batch) and end with a batch cut short by the byte limit.
fn take_records(
    data: &[u8],
    partition: i32,
    next: i64,
    stop: i64,
    files: &mut PartitionFiles,
) -> Result<Taken, ExportError> {
    let mut taken = Taken {
        files: Vec::new(),
        records: 0,
        bytes: 0,
        next,
    };
    for item in Batches::new(data) {
        let (header, pos) = match item {
            Ok(h) => h,
            // The byte limit cut the last batch: fetch it again from its start.
            Err(BatchError::Truncated { .. }) => break,
            Err(e) => {
                return Err(ExportError::BadBatch {
                    partition,
                    offset: taken.next,
                    reason: e.to_string(),
                })
            }
        };
        if header.last_offset() < taken.next {
            continue;
        }
        if header.base_offset >= stop {
            break;
        }
        let (_, records) =
            decode_batch(&data[pos..pos + header.size]).map_err(|e| ExportError::BadBatch {
                partition,
                offset: header.base_offset,
                reason: e.to_string(),
            })?;
        for r in records
            .iter()
            .filter(|r| r.offset >= taken.next && r.offset < stop)
        {
            taken.records += 1;
            taken.bytes += r.input_bytes() as u64;
            if let Some(file) = files.push(r)? {
                taken.files.push(file);
            }
        }
        taken.next = (header.last_offset() + 1).min(stop);
        if taken.next >= stop {
            break;
        }
    }
    Ok(taken)
}

async fn put(
    ctx: &Ctx,
    partition: i32,
    file: FinishedFile,
    events: &mpsc::Sender<Event>,
) -> Result<(), ExportError> {
    ctx.store.put(&file.key, file.body).await?;
    // stdout: the written keys, one per line, for scripts.
    println!("{}", file.key);
    let _ = events
        .send(Event::Wrote {
            partition,
            rows: file.rows as u64,
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, Int8Type, TimestampMillisecondType};
    use arrow_array::Array;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression as Codec2, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use std::io::Write;

    #[test]
    fn time_arguments() {
        fn check(input: &str, expected: Result<i64, &str>) {
            let got = parse_time(input);
            match expected {
                Ok(ms) => assert_eq!(got, Ok(ms), "{input:?}"),
                Err(part) => {
                    let err = got.expect_err(input);
                    assert!(err.contains(part), "{input:?}: {err}");
                }
            }
        }
        check("0", Ok(0));
        check("1777593600000", Ok(1_777_593_600_000));
        check(" 1777593600000 ", Ok(1_777_593_600_000));
        check("2026-05-01T00:00:00Z", Ok(1_777_593_600_000));
        check("2026-05-01t00:00:00z", Ok(1_777_593_600_000));
        check("2026-05-01T00:00:00.123Z", Ok(1_777_593_600_123));
        check("2026-05-01T02:00:00.5+02:00", Ok(1_777_593_600_500));
        check("2026-04-30T19:00:00-05:00", Ok(1_777_593_600_000));
        check("1969-12-31T23:59:59Z", Ok(-1000));
        check("", Err("neither RFC 3339"));
        check("yesterday", Err("neither RFC 3339"));
        check("2026-05-01", Err("neither RFC 3339"));
        check("2026-05-01T00:00:00", Err("neither RFC 3339"));
        check("-5", Err("neither RFC 3339"));
        check("1.5", Err("neither RFC 3339"));
        check("99999999999999999999", Err("out of range"));
    }

    #[test]
    fn file_names_sort_by_offset() {
        for (topic, p, first, last, expected) in [
            (
                "orders",
                0,
                0,
                999_999,
                "orders/partition=0/00000000000000000000-00000000000000999999.parquet",
            ),
            (
                "a.b-c_d",
                17,
                123,
                i64::MAX,
                "a.b-c_d/partition=17/00000000000000000123-09223372036854775807.parquet",
            ),
        ] {
            assert_eq!(file_key(topic, p, first, last), expected);
        }
        let a = file_key("t", 1, 9, 10);
        let b = file_key("t", 1, 11, 100);
        assert!(a < b, "zero padding keeps lexical order = offset order");
    }

    #[test]
    fn ranges_from_list_offsets_answers() {
        // (start answer, stop answer, high watermark) -> [start, stop)
        for (start, stop, hw, want) in [
            (0, 10, 20, (0, 10)),
            (5, -1, 20, (5, 20)), // no record at or after --to-time: up to the end
            (-1, -1, 20, (20, 20)), // nothing at or after --from-time: empty
            (-1, 7, 20, (20, 20)),
            (12, 8, 20, (12, 12)), // never negative
            (0, 0, 0, (0, 0)),
        ] {
            let p = Plan::new(3, start, stop, hw);
            assert_eq!((p.partition, p.start, p.stop), (3, want.0, want.1));
        }
    }

    fn record(offset: i64, ts: i64, key: Option<&str>, value: Option<&[u8]>) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h1"),
            Some(Bytes::from_static(b"x")),
        );
        headers.insert(StrBytes::from_static_str("nul"), None);
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // kafka-protocol's encoder starts a new batch where offset - sequence changes.
            sequence: offset as i32,
            timestamp: ts,
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(Bytes::copy_from_slice),
            headers,
        }
    }

    /// A batch in Kafka's encoding, as a producer would send it.
    fn encode(records: &[Record], codec: Codec2) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: codec,
        };
        if codec == Codec2::Lz4 {
            // The workspace's kafka-protocol has no LZ4 codec; Kafka's LZ4 is the frame format.
            let lz4 = |src: &mut BytesMut, dst: &mut BytesMut, _: Codec2| {
                let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::new());
                enc.write_all(src)?;
                dst.put_slice(&enc.finish()?);
                Ok(())
            };
            RecordBatchEncoder::encode_with_custom_compression(
                &mut buf,
                records,
                &options,
                Some(lz4),
            )
            .unwrap();
        } else {
            RecordBatchEncoder::encode(&mut buf, records, &options).unwrap();
        }
        buf.to_vec()
    }

    fn sample(base: i64) -> Vec<Record> {
        vec![
            record(base, 1_000, Some("k0"), Some(b"v0")),
            record(base + 1, 1_001, None, Some(b"")),
            record(base + 2, 999, Some(""), None),
            record(base + 3, 5_000, Some("k3"), Some(&[0u8, 255, 7])),
        ]
    }

    fn expected(records: &[Record]) -> Vec<ExportRecord> {
        records
            .iter()
            .map(|r| ExportRecord {
                offset: r.offset,
                timestamp_ms: r.timestamp,
                timestamp_type: 0,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn decodes_every_codec() {
        for codec in [
            Codec2::None,
            Codec2::Gzip,
            Codec2::Snappy,
            Codec2::Lz4,
            Codec2::Zstd,
        ] {
            let records = sample(40);
            let (header, got) = decode_batch(&encode(&records, codec)).unwrap();
            assert_eq!(header.base_offset, 40, "{codec:?}");
            assert_eq!(got, expected(&records), "{codec:?}");
        }
    }

    #[test]
    fn keeps_duplicate_header_keys() {
        // kafka-protocol's encoder takes headers as a map, so build the record by hand.
        fn varint(out: &mut Vec<u8>, v: i64) {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                out.push((z as u8) | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        }
        let mut body = Vec::new();
        body.push(0); // attributes
        varint(&mut body, 0); // timestamp delta
        varint(&mut body, 0); // offset delta
        varint(&mut body, -1); // null key
        varint(&mut body, 1);
        body.push(b'v');
        varint(&mut body, 3);
        for (k, v) in [("a", Some("1")), ("a", None), ("b", Some("2"))] {
            varint(&mut body, k.len() as i64);
            body.extend_from_slice(k.as_bytes());
            match v {
                Some(v) => {
                    varint(&mut body, v.len() as i64);
                    body.extend_from_slice(v.as_bytes());
                }
                None => varint(&mut body, -1),
            }
        }
        let mut records = Vec::new();
        varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
        // Reuse a real batch's header and patch its records section, length and CRC.
        let mut batch = encode(&[record(7, 123, None, Some(b"v"))], Codec2::None);
        batch.truncate(BATCH_HEADER_BYTES);
        batch.extend_from_slice(&records);
        let length = (batch.len() - 12) as i32;
        batch[8..12].copy_from_slice(&length.to_be_bytes());
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());

        let (_, got) = decode_batch(&batch).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].headers,
            vec![
                ("a".to_string(), Some(Bytes::from_static(b"1"))),
                ("a".to_string(), None),
                ("b".to_string(), Some(Bytes::from_static(b"2"))),
            ]
        );
        assert_eq!((got[0].offset, got[0].timestamp_ms), (7, 123));

        // A flipped bit anywhere after the CRC field is caught before any record is read.
        let mut bad = batch.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            decode_batch(&bad),
            Err(DecodeError::Batch(BatchError::CrcMismatch { .. }))
        ));
    }

    fn read_parquet(body: &Bytes) -> Vec<RecordBatch> {
        let reader = ParquetRecordBatchReaderBuilder::try_new(body.clone())
            .unwrap()
            .build()
            .unwrap();
        reader.map(|b| b.unwrap()).collect()
    }

    fn rows(batches: &[RecordBatch]) -> Vec<ExportRecord> {
        let mut out = Vec::new();
        for b in batches {
            assert_eq!(b.schema(), schema(), "the file carries the Arrow schema");
            let offsets = b.column(1).as_primitive::<Int64Type>();
            let ts = b.column(2).as_primitive::<TimestampMillisecondType>();
            let tt = b.column(3).as_primitive::<Int8Type>();
            let keys = b.column(4).as_binary::<i32>();
            let values = b.column(5).as_binary::<i32>();
            let headers = b.column(6).as_list::<i32>();
            for i in 0..b.num_rows() {
                let hs = headers.value(i);
                let hs = hs.as_struct();
                let hk = hs.column(0).as_string::<i32>();
                let hv = hs.column(1).as_binary::<i32>();
                out.push(ExportRecord {
                    offset: offsets.value(i),
                    timestamp_ms: ts.value(i),
                    timestamp_type: tt.value(i),
                    key: keys
                        .is_valid(i)
                        .then(|| Bytes::copy_from_slice(keys.value(i))),
                    value: values
                        .is_valid(i)
                        .then(|| Bytes::copy_from_slice(values.value(i))),
                    headers: (0..hs.len())
                        .map(|j| {
                            (
                                hk.value(j).to_string(),
                                hv.is_valid(j).then(|| Bytes::copy_from_slice(hv.value(j))),
                            )
                        })
                        .collect(),
                });
            }
        }
        out
    }

    #[test]
    fn files_roll_on_rows_and_round_trip() {
        let limits = FileLimits {
            rows_max: 3,
            input_bytes_max: usize::MAX,
            row_group_rows_max: 2,
        };
        let mut files = PartitionFiles::new("t", 5, limits);
        let all: Vec<ExportRecord> = (0..7)
            .flat_map(|i| expected(&sample(100 + 4 * i)))
            .collect();
        let mut done = Vec::new();
        for r in &all {
            done.extend(files.push(r).unwrap());
        }
        done.extend(files.finish().unwrap());
        assert!(files.finish().unwrap().is_none(), "finish twice is nothing");
        // 28 records, 3 per file.
        assert_eq!(done.len(), 10);
        let mut back = Vec::new();
        for (i, f) in done.iter().enumerate() {
            let first = 100 + 3 * i as i64;
            let last = (first + 2).min(127);
            assert_eq!((f.first_offset, f.last_offset), (first, last));
            assert_eq!(f.key, file_key("t", 5, first, last));
            assert_eq!(f.rows as i64, last - first + 1);
            let meta = ParquetRecordBatchReaderBuilder::try_new(f.body.clone())
                .unwrap()
                .metadata()
                .clone();
            assert!(meta.row_groups().iter().all(|g| g.num_rows() <= 2));
            let batches = read_parquet(&f.body);
            for b in &batches {
                let p = b.column(0).as_primitive::<Int32Type>();
                assert!(p.iter().all(|v| v == Some(5)));
            }
            back.extend(rows(&batches));
        }
        assert_eq!(back, all);
    }

    #[test]
    fn files_roll_on_input_bytes() {
        let limits = FileLimits {
            rows_max: usize::MAX,
            input_bytes_max: 10,
            row_group_rows_max: 64,
        };
        let r = |offset: i64, value: usize| ExportRecord {
            offset,
            timestamp_ms: 0,
            timestamp_type: 1,
            key: None,
            value: Some(Bytes::from(vec![b'x'; value])),
            headers: vec![("hk".into(), None)],
        };
        let mut files = PartitionFiles::new("t", 0, limits);
        let mut cut = Vec::new();
        for (offset, size) in [(0, 3), (1, 3), (2, 3), (3, 20), (4, 1)] {
            if let Some(f) = files.push(&r(offset, size)).unwrap() {
                cut.push((f.first_offset, f.last_offset));
            }
        }
        // 5 bytes per record up to offset 2 (3 + "hk"): the second one reaches 10.
        assert_eq!(cut, vec![(0, 1), (2, 3)]);
        let last = files.finish().unwrap().unwrap();
        assert_eq!((last.first_offset, last.last_offset), (4, 4));
        assert_eq!(rows(&read_parquet(&last.body)), vec![r(4, 1)]);
    }

    #[test]
    fn fetch_answers_are_cut_to_the_range() {
        let mut data = encode(&sample(0), Codec2::Zstd);
        data.extend(encode(&sample(4), Codec2::Gzip));
        data.extend(encode(&sample(8), Codec2::None));
        let whole = data.len();
        let third = encode(&sample(8), Codec2::None).len();
        let limits = FileLimits::default();
        let check = |data: &[u8], next: i64, stop: i64, want: &[i64], want_next: i64| {
            let mut files = PartitionFiles::new("t", 0, limits);
            let taken = take_records(data, 0, next, stop, &mut files).unwrap();
            assert!(taken.files.is_empty());
            assert_eq!(taken.next, want_next, "next={next} stop={stop}");
            assert_eq!(taken.records, want.len() as u64);
            let got = match files.finish().unwrap() {
                Some(f) => rows(&read_parquet(&f.body))
                    .iter()
                    .map(|r| r.offset)
                    .collect(),
                None => Vec::new(),
            };
            assert_eq!(got, want, "next={next} stop={stop}");
        };
        check(&data, 0, 12, &(0..12).collect::<Vec<_>>(), 12);
        // Starts inside the first batch, stops inside the third.
        check(&data, 2, 9, &[2, 3, 4, 5, 6, 7, 8], 9);
        // Batches wholly before `next` are skipped.
        check(&data, 6, 100, &[6, 7, 8, 9, 10, 11], 12);
        // The last batch cut short by the byte limit: fetch again from its start.
        check(&data[..whole - third / 2], 1, 12, &[1, 2, 3, 4, 5, 6, 7], 8);
        // Only a cut batch: nothing taken.
        check(&data[..10], 0, 12, &[], 0);
    }

    #[test]
    fn a_corrupt_batch_names_partition_and_offset() {
        let mut data = encode(&sample(4), Codec2::Snappy);
        let at = data.len() - 3;
        data[at] ^= 0x40;
        let mut files = PartitionFiles::new("t", 9, FileLimits::default());
        let err = take_records(&data, 9, 4, 8, &mut files).unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::BadBatch {
                    partition: 9,
                    offset: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn progress_lines() {
        let mut p = Progress::default();
        for e in [
            Event::Planned {
                partition: 0,
                start: 10,
                stop: 20,
            },
            Event::Planned {
                partition: 1,
                start: 5,
                stop: 5,
            },
            Event::Planned {
                partition: 2,
                start: 0,
                stop: 3_000_000,
            },
            Event::Read {
                partition: 2,
                next: 2_000_000,
                records: 2_000_000,
                bytes: 3 * 1024 * 1024,
            },
            Event::Read {
                partition: 0,
                next: 20,
                records: 10,
                bytes: 100,
            },
            Event::Wrote {
                partition: 0,
                rows: 10,
            },
            Event::Done { partition: 0 },
        ] {
            p.apply(&e);
        }
        assert_eq!(
            p.line(),
            "export: 2000010 records, 3.0 MiB, 1 files; partitions 2/3 done p2=2000000/3000000"
        );
    }

    #[test]
    fn exit_codes() {
        for (e, code) in [
            (ExportError::BadArgument("x".into()), 2),
            (
                ExportError::Broker(ClientError::UnknownTopic {
                    addr: "a".into(),
                    topic: "t".into(),
                }),
                2,
            ),
            (
                ExportError::Broker(ClientError::Timeout { addr: "a".into() }),
                1,
            ),
            (ExportError::NoLeader { partition: 1 }, 1),
        ] {
            assert_eq!(e.exit_code(), code, "{e}");
        }
        let bad_url = ObjectStore::from_url("nope://x").unwrap_err();
        assert_eq!(ExportError::Store(bad_url).exit_code(), 2);
    }
}
