//! The one place internal conditions become Kafka error codes (a frozen table).

use crate::log::reader::ReadError;
use crate::log::sequencer::AppendError;
use kafka_protocol::ResponseError as E;
use strata_types::batch::BatchError;

pub const NONE: i16 = 0;

pub fn append(err: AppendError) -> i16 {
    match err {
        AppendError::WalFull | AppendError::Storage => E::KafkaStorageError.code(),
        AppendError::TooLarge => E::MessageTooLarge.code(),
        AppendError::ShuttingDown => E::NotLeaderOrFollower.code(),
    }
}

pub fn batch(err: &BatchError) -> i16 {
    match err {
        BatchError::UnsupportedMagic { .. } => E::UnsupportedForMessageFormat.code(),
        BatchError::Truncated { .. }
        | BatchError::BadLength { .. }
        | BatchError::CrcMismatch { .. } => E::CorruptMessage.code(),
        BatchError::BadCount { .. } => E::InvalidRecord.code(),
    }
}

pub fn read(err: &ReadError) -> i16 {
    match err {
        ReadError::OutOfRange { .. } => E::OffsetOutOfRange.code(),
        // A failing object store is an IO condition on this broker: the client retries.
        ReadError::Store(_) | ReadError::BadBlock { .. } => E::KafkaStorageError.code(),
    }
}

pub fn unknown_topic() -> i16 {
    E::UnknownTopicOrPartition.code()
}

pub fn unsupported_version() -> i16 {
    E::UnsupportedVersion.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_frozen() {
        let table: &[(i16, i16)] = &[
            (append(AppendError::WalFull), 56),
            (append(AppendError::Storage), 56),
            (append(AppendError::TooLarge), 10),
            (append(AppendError::ShuttingDown), 6),
            (batch(&BatchError::UnsupportedMagic { magic: 1 }), 43),
            (
                batch(&BatchError::CrcMismatch {
                    stored: 0,
                    computed: 1,
                }),
                2,
            ),
            (
                batch(&BatchError::BadCount {
                    records: 0,
                    last_offset_delta: 0,
                }),
                87,
            ),
            (read(&ReadError::OutOfRange { offset: 0 }), 1),
            (unknown_topic(), 3),
            (unsupported_version(), 35),
        ];
        for (i, (got, want)) in table.iter().enumerate() {
            assert_eq!(got, want, "row {i}");
        }
    }
}
