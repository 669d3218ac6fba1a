//! The object-index entry.
//!
//! Object storage holds objects made of per-partition *blocks*: the verbatim Kafka record
//! batches of one partition for a contiguous offset range. A [`BlockLocation`] says where one
//! block lives. The metadata index (in `meta`) is a map partition → offset → `BlockLocation`,
//! and it is the only truth about what exists in object storage; the object footer repeats the
//! same entries so an object can be checked or re-indexed on its own.

use crate::names::TopicId;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockLocation {
    /// Object key, relative to the store root.
    pub key: String,
    pub topic: TopicId,
    pub partition: u32,
    /// First offset in the block.
    pub base_offset: i64,
    /// One past the last offset in the block (exclusive end).
    pub end_offset: i64,
    /// Byte position of the block inside the object.
    pub position: u64,
    /// Length of the block in bytes.
    pub len: u64,
    /// Largest record timestamp (ms since the epoch) in the block, `-1` when unknown.
    pub max_timestamp: i64,
    /// CRC32C of the block's bytes, checked by every cold read before the bytes are served
    /// (`0` in entries written before the field existed, which readers do not check).
    #[serde(default)]
    pub crc32c: u32,
    /// Bytes of the chunk index and trailer that follow the data when the block is a compacted
    /// *segment* (one partition's object, read chunk by chunk through that index); `0` for a
    /// block of a multi-partition upload object, which is read whole and checked by `crc32c`.
    #[serde(default)]
    pub index_len: u64,
    /// True for a block of the `direct` storage mode: its batches were stored with base
    /// offsets relative to the block (the first starts at 0), because metadata assigned the
    /// block's offsets only at commit. A reader adds `base_offset` to each batch's base offset
    /// after checking `crc32c` on the stored bytes (the batch CRC does not cover it).
    #[serde(default)]
    pub relative: bool,
}

impl BlockLocation {
    pub fn contains(&self, offset: i64) -> bool {
        self.base_offset <= offset && offset < self.end_offset
    }

    /// True for a compacted segment (see `index_len`).
    pub fn is_segment(&self) -> bool {
        self.index_len > 0
    }
}
