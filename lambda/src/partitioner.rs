//! The partition of a record produced without an explicit `partition`.
//!
//! A keyed record goes where the Java client's default partitioner (and librdkafka's
//! `murmur2_random`) sends it: `toPositive(murmur2(key)) % partitions`, so a key lands on the
//! same partition whichever way it was produced. Records without a key go round robin.

use strata_broker::mqtt::mapping::partition_for;

/// The partition for `key` among `partitions` (> 0), as Kafka's default partitioner picks it.
/// The broker's MQTT → Kafka mapping uses the same function for its keys.
pub fn for_key(key: &[u8], partitions: u32) -> u32 {
    partition_for(key, partitions as usize) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_broker::mqtt::mapping::murmur2;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn matches_kafka() {
        let cases: &[(&str, i32)] = &[
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (input, want) in cases {
            assert_eq!(murmur2(input.as_bytes()), *want, "{input}");
        }
        assert!(for_key(b"foobar", 3) < 3);
        assert_eq!(for_key(b"abc", 1), 0);
    }
}
