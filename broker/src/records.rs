//! Record-level reads of stored batches: the few places the broker looks inside a batch.
//!
//! The data path never decodes records — batches are stored and served verbatim. Only
//! ListOffsets by timestamp needs record timestamps, and only for the one batch that holds the
//! answer. Decompression uses the `kafka-protocol` codecs, except LZ4, which Kafka frames as
//! the LZ4 frame format and which we read with `lz4_flex`.

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::compression::{Decompressor, Gzip, Snappy, Zstd};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use std::io::Read;
use strata_types::batch::Batches;

/// A record as the broker's own writers make it (the MQTT → Kafka mapping, the internal
/// client, the Lambda's produce): no producer id or sequence, creation time `timestamp`,
/// `offset` relative to its batch.
pub fn plain_record(
    offset: i64,
    timestamp: i64,
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: IndexMap<StrBytes, Option<Bytes>>,
) -> Record {
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: -1,
        timestamp,
        key,
        value,
        headers,
    }
}

/// Encodes `records` as one uncompressed v2 record batch (two where an idempotent producer's
/// sequence wraps past `i32::MAX`).
///
/// kafka-protocol's encoder starts a new batch wherever `offset - sequence` changes. Records
/// without a producer id all carry sequence -1, which would make one batch per record; they
/// are given sequences that keep them in one batch whose base sequence is -1 (the only
/// sequence written).
pub fn encode_batch(records: &[Record]) -> Result<BytesMut, String> {
    let numbered: Vec<Record>;
    let records = match records {
        [first, _, ..] if records.iter().all(|r| r.producer_id < 0) => {
            numbered = records
                .iter()
                .map(|r| Record {
                    sequence: (r.offset - first.offset) as i32 - 1,
                    ..r.clone()
                })
                .collect();
            &numbered[..]
        }
        _ => records,
    };
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(buf)
}

/// Decompresses a batch's records section.
fn decompress(buf: &mut Bytes, codec: Compression) -> anyhow::Result<Bytes> {
    let take = |b: &mut Bytes| -> anyhow::Result<Bytes> { Ok(b.copy_to_bytes(b.remaining())) };
    match codec {
        Compression::None => take(buf),
        Compression::Gzip => <Gzip as Decompressor<Bytes>>::decompress(buf, take),
        Compression::Snappy => <Snappy as Decompressor<Bytes>>::decompress(buf, take),
        Compression::Zstd => <Zstd as Decompressor<Bytes>>::decompress(buf, take),
        Compression::Lz4 => {
            let mut out = Vec::new();
            lz4_flex::frame::FrameDecoder::new(&buf[..]).read_to_end(&mut out)?;
            buf.advance(buf.remaining());
            Ok(Bytes::from(out))
        }
    }
}

/// Decodes every record of one batch.
pub fn decode_batch(batch: &[u8]) -> anyhow::Result<Vec<Record>> {
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode_with_custom_compression(&mut buf, Some(decompress))?;
    Ok(set.records)
}

/// The first record (in offset order) with timestamp `>= ts` among concatenated batches, as
/// `(offset, timestamp)`.
pub fn first_at_or_after_time(data: &[u8], ts: i64) -> Option<(i64, i64)> {
    first_at_or_after_time_from(data, ts, i64::MIN)
}

/// [`first_at_or_after_time`] among the records at or after `min_offset` (the log start: a
/// batch may straddle it after DeleteRecords).
pub fn first_at_or_after_time_from(data: &[u8], ts: i64, min_offset: i64) -> Option<(i64, i64)> {
    for item in Batches::new(data) {
        let (header, pos) = item.ok()?;
        let last_offset = header.base_offset + i64::from(header.last_offset_delta);
        if header.max_timestamp < ts || last_offset < min_offset {
            continue;
        }
        if header.is_log_append_time() {
            return Some((header.base_offset.max(min_offset), header.max_timestamp));
        }
        match decode_batch(&data[pos..pos + header.size]) {
            Ok(records) => {
                let found = records
                    .iter()
                    .find(|r| r.timestamp >= ts && r.offset >= min_offset);
                if let Some(r) = found {
                    return Some((r.offset, r.timestamp));
                }
            }
            // Undecodable records: the batch header still bounds the answer.
            Err(_) => return Some((header.base_offset.max(min_offset), header.max_timestamp)),
        }
    }
    None
}

/// The largest timestamp among concatenated batches and the offset of the first record
/// carrying it, as `(timestamp, offset)`.
pub fn max_timestamp(data: &[u8]) -> Option<(i64, i64)> {
    let mut best: Option<(i64, i64, usize, usize)> = None;
    for item in Batches::new(data) {
        let (header, pos) = item.ok()?;
        if best.is_none_or(|(t, ..)| header.max_timestamp > t) {
            best = Some((header.max_timestamp, header.base_offset, pos, header.size));
        }
    }
    let (ts, base, pos, size) = best?;
    let offset = decode_batch(&data[pos..pos + size])
        .ok()
        .and_then(|records| records.iter().find(|r| r.timestamp == ts).map(|r| r.offset))
        .unwrap_or(base);
    Some((ts, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, timestamps: &[i64], compression: Compression) -> Vec<u8> {
        let records: Vec<Record> = timestamps
            .iter()
            .enumerate()
            .map(|(i, ts)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: -1,
                timestamp: *ts,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: IndexMap::new(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn plain_records_encode_as_one_batch_without_a_sequence() {
        use strata_types::batch::BatchHeader;
        let records: Vec<Record> = (0..3)
            .map(|i| {
                plain_record(
                    i,
                    1_700_000_000_000 + i,
                    None,
                    Some(Bytes::from(vec![b'v'; 10])),
                    IndexMap::new(),
                )
            })
            .collect();
        let buf = encode_batch(&records).unwrap();
        let h = BatchHeader::parse(&buf).unwrap();
        assert_eq!((h.size, h.records_count), (buf.len(), 3), "one batch");
        assert_eq!((h.producer_id, h.base_sequence), (-1, -1));
        assert_eq!(h.last_offset_delta, 2);
    }

    #[test]
    fn time_lookup_across_codecs() {
        for codec in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Zstd,
        ] {
            let mut data = batch(0, &[10, 20, 30], codec);
            data.extend(batch(3, &[40, 25, 50], codec));
            for (ts, want) in [
                (0, Some((0, 10))),
                (10, Some((0, 10))),
                (11, Some((1, 20))),
                (31, Some((3, 40))),
                (41, Some((5, 50))),
                (51, None),
            ] {
                assert_eq!(first_at_or_after_time(&data, ts), want, "{codec:?} ts={ts}");
            }
            assert_eq!(max_timestamp(&data), Some((50, 5)), "{codec:?}");
        }
    }

    #[test]
    fn time_lookup_from_a_log_start_inside_a_batch() {
        let mut data = batch(0, &[10, 20, 30], Compression::None);
        data.extend(batch(3, &[40, 25, 50], Compression::None));
        for (ts, min_offset, want) in [
            (0, 1, Some((1, 20))),
            (10, 2, Some((2, 30))),
            (21, 3, Some((3, 40))),
            (0, 4, Some((4, 25))),
            (26, 4, Some((5, 50))),
            (0, 6, None),
        ] {
            assert_eq!(
                first_at_or_after_time_from(&data, ts, min_offset),
                want,
                "ts={ts} from {min_offset}"
            );
        }
    }
}
