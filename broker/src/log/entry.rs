//! The WAL entry: what the broker writes to its WAL for one append to one partition.
//!
//! The WAL itself treats payloads as opaque bytes; this module is the one place that knows
//! their layout. Version 1, big-endian:
//!
//! ```text
//!  0  version        u8    = 1
//!  1  topic id       [u8; 16]
//! 17  partition      u32
//! 21  base_offset    i64   first offset of the first batch
//! 29  end_offset     i64   one past the last offset of the last batch
//! 37  max_timestamp  i64
//! 45  batches …            Kafka record batches, base offsets already assigned
//! ```

use bytes::Bytes;
use strata_types::{PartitionKey, TopicId};

pub const ENTRY_VERSION: u8 = 1;
pub const ENTRY_HEADER_BYTES: usize = 45;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    pub partition: PartitionKey,
    pub base_offset: i64,
    pub end_offset: i64,
    pub max_timestamp: i64,
    pub batches: Bytes,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("WAL entry is {len} bytes, shorter than its {ENTRY_HEADER_BYTES}-byte header")]
    Truncated { len: usize },
    #[error("WAL entry has unknown version {version}")]
    UnknownVersion { version: u8 },
    #[error("WAL entry offsets are inconsistent: base {base}, end {end}")]
    BadRange { base: i64, end: i64 },
}

impl WalEntry {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(ENTRY_HEADER_BYTES + self.batches.len());
        out.push(ENTRY_VERSION);
        out.extend_from_slice(self.partition.topic.as_bytes());
        out.extend_from_slice(&self.partition.partition.to_be_bytes());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&self.end_offset.to_be_bytes());
        out.extend_from_slice(&self.max_timestamp.to_be_bytes());
        out.extend_from_slice(&self.batches);
    }

    pub fn decode(payload: Bytes) -> Result<Self, EntryError> {
        if payload.len() < ENTRY_HEADER_BYTES {
            return Err(EntryError::Truncated { len: payload.len() });
        }
        let p = &payload[..];
        if p[0] != ENTRY_VERSION {
            return Err(EntryError::UnknownVersion { version: p[0] });
        }
        let topic = TopicId::from_bytes(p[1..17].try_into().expect("16 bytes"));
        let partition = u32::from_be_bytes(p[17..21].try_into().expect("4 bytes"));
        let base_offset = i64::from_be_bytes(p[21..29].try_into().expect("8 bytes"));
        let end_offset = i64::from_be_bytes(p[29..37].try_into().expect("8 bytes"));
        let max_timestamp = i64::from_be_bytes(p[37..45].try_into().expect("8 bytes"));
        if base_offset < 0 || end_offset <= base_offset {
            return Err(EntryError::BadRange {
                base: base_offset,
                end: end_offset,
            });
        }
        Ok(Self {
            partition: PartitionKey { topic, partition },
            base_offset,
            end_offset,
            max_timestamp,
            batches: payload.slice(ENTRY_HEADER_BYTES..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let e = WalEntry {
            partition: PartitionKey {
                topic: TopicId::random(),
                partition: 3,
            },
            base_offset: 10,
            end_offset: 15,
            max_timestamp: 99,
            batches: Bytes::from_static(b"batches"),
        };
        let mut buf = Vec::new();
        e.encode_into(&mut buf);
        assert_eq!(WalEntry::decode(Bytes::from(buf.clone())).unwrap(), e);
        assert_eq!(
            WalEntry::decode(Bytes::from(buf[..10].to_vec())),
            Err(EntryError::Truncated { len: 10 })
        );
        let mut v2 = buf.clone();
        v2[0] = 9;
        assert_eq!(
            WalEntry::decode(Bytes::from(v2)),
            Err(EntryError::UnknownVersion { version: 9 })
        );
        let mut bad = buf;
        bad[29..37].copy_from_slice(&5i64.to_be_bytes());
        assert!(matches!(
            WalEntry::decode(Bytes::from(bad)),
            Err(EntryError::BadRange { .. })
        ));
    }
}
