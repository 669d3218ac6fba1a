//! The one place internal conditions become Kafka error codes (a frozen table).

use crate::groups::GroupError;
use crate::log::producer::SequenceError;
use crate::log::reader::ReadError;
use crate::log::sequencer::AppendError;
use crate::producer_ids::ProducerIdError;
use crate::topic_configs::ConfigError;
use kafka_protocol::ResponseError as E;
use strata_meta::Rejection;
use strata_types::batch::BatchError;

pub const NONE: i16 = 0;

/// The partition is led by another broker (or is failing over): clients refresh metadata and
/// retry there.
pub fn not_leader() -> i16 {
    E::NotLeaderOrFollower.code()
}

pub fn append(err: AppendError) -> i16 {
    match err {
        AppendError::WalFull | AppendError::Storage | AppendError::ObjectStore => {
            E::KafkaStorageError.code()
        }
        AppendError::TooLarge => E::MessageTooLarge.code(),
        AppendError::ShuttingDown | AppendError::Fenced => E::NotLeaderOrFollower.code(),
        AppendError::Sequence(e) => sequence(&e),
    }
}

/// An idempotent batch refused by the sequencer. The codes are Kafka's, so clients run their
/// own recovery: on a gap they resend in order (or bump the epoch, KIP-360); an old epoch tells
/// a zombie it was replaced.
pub fn sequence(err: &SequenceError) -> i16 {
    match err {
        SequenceError::StaleEpoch { .. } => E::InvalidProducerEpoch.code(),
        SequenceError::OutOfOrder { .. } | SequenceError::NewEpochNotAtZero { .. } => {
            E::OutOfOrderSequenceNumber.code()
        }
        // Not retriable: resending the same mixed request can only be refused again.
        SequenceError::PartialDuplicate => E::InvalidRecord.code(),
    }
}

/// A batch with a producer id but a negative epoch or base sequence (Kafka refuses it the
/// same way).
pub fn invalid_producer_batch() -> i16 {
    E::InvalidRecord.code()
}

/// A transactional id (InitProducerId) or a transactional batch (Produce): transactions are
/// not implemented. TRANSACTIONAL_ID_AUTHORIZATION_FAILED is fatal, not retriable, in the Java
/// client, librdkafka and kafka-python alike, so a transactional producer stops with a clear
/// error at `init_transactions()` instead of retrying forever, as it would on
/// COORDINATOR_NOT_AVAILABLE.
pub fn transactions_unsupported() -> i16 {
    E::TransactionalIdAuthorizationFailed.code()
}

/// InitProducerId could not get an id from metadata.
pub fn producer_id(err: &ProducerIdError) -> i16 {
    match err {
        // What Kafka answers while its producer-id block is being fetched: retriable in every
        // client, and not a coordinator error (which would send the client looking for one).
        ProducerIdError::Unavailable { .. } => E::CoordinatorLoadInProgress.code(),
        ProducerIdError::Refused { .. } => E::UnknownServerError.code(),
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

/// A consumer-group condition (`groups::core`). Retriable ones (COORDINATOR_NOT_AVAILABLE,
/// NOT_COORDINATOR, REBALANCE_IN_PROGRESS) make clients find the coordinator or join again;
/// UNKNOWN_MEMBER_ID and ILLEGAL_GENERATION make them rejoin from scratch.
pub fn group(err: GroupError) -> i16 {
    match err {
        GroupError::UnknownMemberId => E::UnknownMemberId.code(),
        GroupError::IllegalGeneration => E::IllegalGeneration.code(),
        GroupError::RebalanceInProgress => E::RebalanceInProgress.code(),
        GroupError::MemberIdRequired => E::MemberIdRequired.code(),
        GroupError::InconsistentGroupProtocol => E::InconsistentGroupProtocol.code(),
        GroupError::FencedInstanceId => E::FencedInstanceId.code(),
        GroupError::CoordinatorNotAvailable => E::CoordinatorNotAvailable.code(),
        GroupError::NotCoordinator => E::NotCoordinator.code(),
        GroupError::InvalidSessionTimeout => E::InvalidSessionTimeout.code(),
        GroupError::InvalidGroupId => E::InvalidGroupId.code(),
        GroupError::GroupMaxSizeReached => E::GroupMaxSizeReached.code(),
        GroupError::NonEmptyGroup => E::NonEmptyGroup.code(),
        GroupError::GroupIdNotFound => E::GroupIdNotFound.code(),
        GroupError::GroupSubscribedToTopic => E::GroupSubscribedToTopic.code(),
    }
}

/// A topic config change or creation refused (`topic_configs`).
pub fn config(err: &ConfigError) -> i16 {
    match err {
        ConfigError::UnknownTopic { .. } => unknown_topic(),
        ConfigError::UnknownKey { .. }
        | ConfigError::ReadOnly { .. }
        | ConfigError::InvalidValue { .. }
        | ConfigError::Duplicate { .. }
        | ConfigError::NotAList { .. }
        | ConfigError::Refused(_) => E::InvalidConfig.code(),
        ConfigError::Unavailable(_) => E::RequestTimedOut.code(),
    }
}

/// A metadata command refused by the state machine, as the admin APIs answer it.
pub fn rejection(r: &Rejection) -> i16 {
    match r {
        Rejection::TopicExists { .. } => E::TopicAlreadyExists.code(),
        Rejection::UnknownTopic { .. }
        | Rejection::UnknownTopicId { .. }
        | Rejection::UnknownPartition { .. } => unknown_topic(),
        Rejection::InvalidPartitions { .. } | Rejection::PartitionsNotIncreased { .. } => {
            E::InvalidPartitions.code()
        }
        Rejection::InvalidOffset { .. } => E::OffsetOutOfRange.code(),
        Rejection::TooManyConfigs { .. } | Rejection::ConfigTooLong { .. } => {
            E::InvalidConfig.code()
        }
        _ => E::InvalidRequest.code(),
    }
}

/// OffsetCommit metadata over `offset.metadata.max.bytes`.
pub fn offset_metadata_too_large() -> i16 {
    E::OffsetMetadataTooLarge.code()
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
            (
                append(AppendError::Sequence(SequenceError::OutOfOrder {
                    producer_id: 1,
                    expected: 5,
                    got: 7,
                })),
                45,
            ),
            (
                sequence(&SequenceError::NewEpochNotAtZero {
                    producer_id: 1,
                    epoch: 2,
                    got: 3,
                }),
                45,
            ),
            (
                sequence(&SequenceError::StaleEpoch {
                    producer_id: 1,
                    epoch: 1,
                    current: 2,
                }),
                47,
            ),
            (sequence(&SequenceError::PartialDuplicate), 87),
            (invalid_producer_batch(), 87),
            (transactions_unsupported(), 53),
            (
                producer_id(&ProducerIdError::Unavailable {
                    reason: String::new(),
                }),
                14,
            ),
            (
                producer_id(&ProducerIdError::Refused {
                    reason: String::new(),
                }),
                -1,
            ),
        ];
        for (i, (got, want)) in table.iter().enumerate() {
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn admin_codes_are_frozen() {
        let name = strata_types::TopicName::new("t").unwrap();
        let table: &[(i16, i16)] = &[
            (
                config(&ConfigError::UnknownKey {
                    key: "k".into(),
                    known: String::new(),
                }),
                40,
            ),
            (
                config(&ConfigError::ReadOnly {
                    key: "k".into(),
                    hint: String::new(),
                }),
                40,
            ),
            (config(&ConfigError::UnknownTopic { name: "t".into() }), 3),
            (config(&ConfigError::Unavailable(String::new())), 7),
            (
                rejection(&Rejection::PartitionsNotIncreased {
                    name: name.clone(),
                    current: 2,
                    partitions: 1,
                }),
                37,
            ),
            (rejection(&Rejection::UnknownTopic { name }), 3),
            (
                rejection(&Rejection::InvalidOffset {
                    topic: strata_types::TopicId::from_bytes([1; 16]),
                    partition: 0,
                    offset: -5,
                }),
                1,
            ),
        ];
        for (i, (got, want)) in table.iter().enumerate() {
            assert_eq!(got, want, "row {i}");
        }
    }

    #[test]
    fn group_codes_are_frozen() {
        use GroupError as G;
        let table: &[(G, i16)] = &[
            (G::UnknownMemberId, 25),
            (G::IllegalGeneration, 22),
            (G::RebalanceInProgress, 27),
            (G::MemberIdRequired, 79),
            (G::InconsistentGroupProtocol, 23),
            (G::FencedInstanceId, 82),
            (G::CoordinatorNotAvailable, 15),
            (G::NotCoordinator, 16),
            (G::InvalidSessionTimeout, 26),
            (G::InvalidGroupId, 24),
            (G::GroupMaxSizeReached, 81),
            (G::NonEmptyGroup, 68),
            (G::GroupIdNotFound, 69),
            (G::GroupSubscribedToTopic, 86),
        ];
        for (err, want) in table {
            assert_eq!(group(*err), *want, "{err:?}");
        }
        assert_eq!(offset_metadata_too_large(), 12);
    }
}
