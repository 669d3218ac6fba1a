//! The API versions this broker answers, and nothing more (advertised in ApiVersions).
//!
//! The lower bounds are the oldest versions `kafka-protocol` decodes (Kafka 4's floor: Produce
//! v3 and Fetch v4 are the first with record-batch v2). The upper bounds stop where the next
//! version would change semantics we do not implement yet (Fetch v13 addresses topics by id
//! only; Produce v10+ carries leader-discovery fields; ListOffsets v8 adds tiered offsets).

use kafka_protocol::messages::ApiKey;

pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    // Idempotent producers only; a transactional id is refused (see `handlers::init_producer_id`).
    // v0-v5 is all the codec decodes (v6 adds two-phase commit).
    (ApiKey::InitProducerId, 0, 5),
    // Classic consumer groups (`kafka::group_handlers`). FindCoordinator stops before v5/v6
    // (transaction-abort errors, share groups); OffsetCommit v10 and OffsetFetch v10 address
    // topics by id only; v9 of both is the last the codec decodes as requests.
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    // Admin APIs (`kafka::admin_handlers`). The floors are the codec's (DescribeConfigs v0,
    // DescribeLogDirs v0 and OffsetForLeaderEpoch v0-v1 are not decoded); every client we test
    // (librdkafka 2.x, kafka-python 3, kafkajs 2.2, the Java client) negotiates within these.
    // The ceilings are the codec's too: each version up to them only adds fields we fill or
    // ignore (DescribeCluster v2 `include_fenced_brokers`: we have no fenced brokers).
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    // Security (`kafka::auth`): advertised whether or not SASL is on, as Kafka does.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    // ACLs (`kafka::acl_handlers`): v1 is the first with pattern types, v3 the codec's last.
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

pub fn range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_codec_support() {
        for (key, min, max) in SUPPORTED {
            let codec = key.valid_versions();
            assert!(
                codec.min <= *min && *max <= codec.max && min <= max,
                "{key:?} {min}..={max} outside the codec's {codec}"
            );
        }
    }
}
