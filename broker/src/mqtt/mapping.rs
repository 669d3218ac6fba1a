//! MQTT ↔ Kafka: which Kafka topic and partition an MQTT publish is stored in, and the record
//! layout both directions agree on.
//!
//! Record layout (one MQTT message = one Kafka record, batch format v2, uncompressed):
//! - key: the MQTT topic name (UTF-8);
//! - value: the payload (an empty payload is an empty value, never null);
//! - headers: `mqtt.qos` (`"0"`, `"1"` or `"2"`), `mqtt.retain` (`"1"`, only when set), and each
//!   MQTT 5 user property as a header of the same name. Headers whose name starts with `mqtt.`
//!   are ours and are not turned back into user properties.
//!
//! A record produced over Kafka with a UTF-8 key that is a valid MQTT topic name is delivered
//! to matching subscribers; without `mqtt.qos` it is treated as QoS 1 (it is durable, like a
//! QoS 1 publish), and its UTF-8 headers become user properties.
//!
//! The partition is Kafka's default partitioner on the key (murmur2, positive, modulo the
//! partition count), so one MQTT topic stays in one partition — ordered — and lands where a
//! Kafka producer using the same key would put it.

use super::topic;
use super::Message;
use crate::config::MqttKafkaMapping;
use crate::records;
use bytes::{Bytes, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Record;

pub const HEADER_QOS: &str = "mqtt.qos";
pub const HEADER_RETAIN: &str = "mqtt.retain";
pub const HEADER_EXPIRY: &str = "mqtt.expiry";
pub const HEADER_RESPONSE_TOPIC: &str = "mqtt.response_topic";
pub const HEADER_CORRELATION: &str = "mqtt.correlation";
pub const HEADER_CONTENT_TYPE: &str = "mqtt.content_type";
pub const HEADER_UTF8: &str = "mqtt.utf8";
pub const HEADER_CLIENT: &str = "mqtt.client";
const RESERVED_PREFIX: &str = "mqtt.";

/// The validated `[[mqtt.kafka_mapping]]` rules and the default topic.
#[derive(Debug, Clone)]
pub struct Mapping {
    rules: Vec<MqttKafkaMapping>,
    default_topic: String,
}

impl Mapping {
    /// `rules` were checked by the config validation (filters valid, topics non-empty).
    pub fn new(rules: Vec<MqttKafkaMapping>, default_topic: String) -> Mapping {
        debug_assert!(rules
            .iter()
            .all(|r| topic::validate_filter(&r.filter).is_ok() && !r.kafka_topic.is_empty()));
        Mapping {
            rules,
            default_topic,
        }
    }

    /// The Kafka topic an MQTT topic name is stored in: the first rule whose filter matches,
    /// else the default topic.
    pub fn kafka_topic_for(&self, mqtt_topic: &str) -> &str {
        self.rules
            .iter()
            .find(|r| topic::matches(&r.filter, mqtt_topic))
            .map(|r| r.kafka_topic.as_str())
            .unwrap_or(&self.default_topic)
    }

    /// Every Kafka topic MQTT messages may live in (mapped ones and the default), deduplicated.
    pub fn kafka_topics(&self) -> Vec<String> {
        let mut v: Vec<String> = self.rules.iter().map(|r| r.kafka_topic.clone()).collect();
        v.push(self.default_topic.clone());
        v.sort();
        v.dedup();
        v
    }
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), the hash of its default partitioner.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions` (> 0), as Kafka's default partitioner picks it.
pub fn partition_for(key: &[u8], partitions: usize) -> usize {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions
}

/// One record batch (v2, uncompressed, no producer id) holding `msg`, timestamped `now_ms`.
pub fn encode_batch(msg: &Message, now_ms: i64) -> Result<BytesMut, String> {
    records::encode_batch(std::slice::from_ref(&record(msg, now_ms)))
}

/// The Kafka record `msg` is stored as (offset 0, no producer id), timestamped `now_ms`.
pub fn record(msg: &Message, now_ms: i64) -> Record {
    let mut headers = IndexMap::new();
    // User properties first, then ours, so ours win on a (misbehaving) name clash.
    for (k, v) in &msg.user_properties {
        headers.insert(
            StrBytes::from_string(k.clone()),
            Some(Bytes::copy_from_slice(v.as_bytes())),
        );
    }
    headers.insert(
        StrBytes::from_static_str(HEADER_QOS),
        Some(Bytes::from(msg.qos.to_string())),
    );
    if msg.retain {
        headers.insert(
            StrBytes::from_static_str(HEADER_RETAIN),
            Some(Bytes::from_static(b"1")),
        );
    }
    if let Some(secs) = msg.expiry_secs {
        headers.insert(
            StrBytes::from_static_str(HEADER_EXPIRY),
            Some(Bytes::from(secs.to_string())),
        );
    }
    let text = |v: &Option<String>| v.as_ref().map(|s| Bytes::copy_from_slice(s.as_bytes()));
    for (name, value) in [
        (HEADER_RESPONSE_TOPIC, text(&msg.response_topic)),
        (HEADER_CORRELATION, msg.correlation_data.clone()),
        (HEADER_CONTENT_TYPE, text(&msg.content_type)),
        (
            HEADER_UTF8,
            msg.payload_utf8
                .map(|u| Bytes::from_static(if u { b"1" } else { b"0" })),
        ),
        (HEADER_CLIENT, text(&msg.publisher)),
    ] {
        if let Some(v) = value {
            headers.insert(StrBytes::from_static_str(name), Some(v));
        }
    }
    records::plain_record(
        0,
        now_ms,
        Some(Bytes::copy_from_slice(msg.topic.as_bytes())),
        Some(msg.payload.clone()),
        headers,
    )
}

/// The MQTT message a stored record stands for, or `None` when its key is not a valid MQTT
/// topic name (such records are not for MQTT subscribers).
pub fn decode_record(record: &Record) -> Option<Message> {
    let key = record.key.as_ref()?;
    let topic = std::str::from_utf8(key).ok()?;
    topic::validate_name(topic).ok()?;
    let mut qos = 1u8;
    let mut retain = false;
    let mut expiry_secs = None;
    let mut user_properties = Vec::new();
    let mut msg = Message::default();
    let text = |v: &[u8]| std::str::from_utf8(v).ok().map(str::to_string);
    for (name, value) in &record.headers {
        let name: &str = name;
        let value = value.as_deref().unwrap_or_default();
        match name {
            HEADER_QOS => {
                qos = match value {
                    b"0" => 0,
                    b"2" => 2,
                    _ => 1,
                }
            }
            HEADER_RETAIN => retain = value == b"1",
            HEADER_RESPONSE_TOPIC => msg.response_topic = text(value),
            HEADER_CORRELATION => msg.correlation_data = Some(Bytes::copy_from_slice(value)),
            HEADER_CONTENT_TYPE => msg.content_type = text(value),
            HEADER_UTF8 => msg.payload_utf8 = Some(value == b"1"),
            HEADER_CLIENT => msg.publisher = text(value),
            HEADER_EXPIRY => {
                expiry_secs = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
            }
            _ if name.starts_with(RESERVED_PREFIX) => {}
            _ => {
                if let Ok(v) = std::str::from_utf8(value) {
                    user_properties.push((name.to_string(), v.to_string()));
                }
            }
        }
    }
    Some(Message {
        topic: topic.to_string(),
        payload: record.value.clone().unwrap_or_default(),
        qos,
        retain,
        user_properties,
        expiry_secs,
        expires_at_ms: expiry_secs.map(|s| record.timestamp.saturating_add(i64::from(s) * 1000)),
        ..msg
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(filter: &str, kafka_topic: &str) -> MqttKafkaMapping {
        MqttKafkaMapping {
            filter: filter.into(),
            kafka_topic: kafka_topic.into(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let m = Mapping::new(
            vec![
                rule("sensors/room1/#", "room1"),
                rule("sensors/#", "sensors"),
                rule("+/alerts", "alerts"),
            ],
            "mqtt-messages".into(),
        );
        let cases: &[(&str, &str)] = &[
            ("sensors/room1/temp", "room1"),
            ("sensors/room2/temp", "sensors"),
            ("sensors", "sensors"),
            ("house/alerts", "alerts"),
            ("house/alerts/x", "mqtt-messages"),
            ("$SYS/alerts", "mqtt-messages"),
            ("other", "mqtt-messages"),
        ];
        for (topic, want) in cases {
            assert_eq!(m.kafka_topic_for(topic), *want, "{topic}");
        }
        assert_eq!(
            m.kafka_topics(),
            vec!["alerts", "mqtt-messages", "room1", "sensors"]
        );
    }

    fn load(toml_text: &str) -> Result<crate::config::NodeConfig, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml_text).unwrap();
        crate::config::load(Some(&path), Vec::new(), &Default::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn config_mapping_is_validated_naming_the_key() {
        let ok = load(
            "[mqtt]\nlisten = \"127.0.0.1:1999\"\n\n[[mqtt.kafka_mapping]]\nfilter = \"sensors/#\"\nkafka_topic = \"sensors\"\n",
        )
        .unwrap();
        assert_eq!(ok.mqtt_listen.port(), 1999);
        assert_eq!(
            ok.file.mqtt.kafka_mapping,
            vec![rule("sensors/#", "sensors")]
        );
        assert_eq!(ok.file.mqtt.default_kafka_topic, "mqtt-messages");
        let cases: &[(&str, &str)] = &[
            (
                "[[mqtt.kafka_mapping]]\nfilter = \"a/#/b\"\nkafka_topic = \"t\"\n",
                "mqtt.kafka_mapping[0].filter",
            ),
            (
                "[[mqtt.kafka_mapping]]\nfilter = \"a/#\"\nkafka_topic = \"t\"\n[[mqtt.kafka_mapping]]\nfilter = \"b\"\nkafka_topic = \"\"\n",
                "mqtt.kafka_mapping[1].kafka_topic",
            ),
            ("[[mqtt.kafka_mapping]]\nfilter = \"a\"\n", "kafka_topic"),
            ("[mqtt]\npacket_bytes_max = 10\n", "mqtt.packet_bytes_max"),
            ("[mqtt]\nlisten = \"nope\"\n", "mqtt.listen"),
            ("[mqtt]\ndefault_kafka_topic = \"\"\n", "mqtt.default_kafka_topic"),
            (
                "[mqtt]\nsession_expiry_max_secs = 0\n",
                "mqtt.session_expiry_max_secs",
            ),
        ];
        for (text, key) in cases {
            let err = load(text).expect_err(text);
            assert!(err.contains(key), "{text:?}: `{err}` should name `{key}`");
        }
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Vectors from Kafka's own UtilsTest.
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
            (b"a-little-bit-longer-string", -1486304829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            (b"abc", 479470107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), *want, "{:?}", std::str::from_utf8(data));
        }
        for n in 1..8 {
            assert!(partition_for(b"sensors/a", n) < n);
        }
    }

    #[test]
    fn record_round_trip() {
        let cases = [
            Message {
                topic: "sensors/a".into(),
                payload: Bytes::from_static(b"21.5"),
                qos: 1,
                retain: false,
                user_properties: vec![("unit".into(), "C".into())],
                ..Default::default()
            },
            Message {
                topic: "a/b".into(),
                payload: Bytes::new(),
                qos: 0,
                retain: true,
                user_properties: vec![],
                expiry_secs: Some(60),
                // The store time (the record timestamp below) plus the interval.
                expires_at_ms: Some(1_700_000_060_000),
                response_topic: Some("reply/to".into()),
                correlation_data: Some(Bytes::from_static(b"\x00id")),
                content_type: Some("text/plain".into()),
                payload_utf8: Some(true),
                publisher: Some("client-7".into()),
            },
            Message {
                topic: "x".into(),
                payload: Bytes::from(vec![0u8; 1000]),
                qos: 2,
                retain: false,
                user_properties: vec![("a".into(), "1".into()), ("b".into(), "".into())],
                ..Default::default()
            },
        ];
        for msg in cases {
            let batch = encode_batch(&msg, 1_700_000_000_000).unwrap();
            let records = crate::records::decode_batch(&batch).unwrap();
            assert_eq!(records.len(), 1);
            assert_eq!(records[0].timestamp, 1_700_000_000_000);
            assert_eq!(decode_record(&records[0]).as_ref(), Some(&msg));
        }
    }

    #[test]
    fn kafka_records_without_mqtt_headers() {
        let mut headers = IndexMap::new();
        headers.insert(StrBytes::from_static_str("trace"), Some(Bytes::from("t1")));
        headers.insert(
            StrBytes::from_static_str("bin"),
            Some(Bytes::from_static(&[0xff, 0xfe])),
        );
        let mut record = records::plain_record(7, 0, Some(Bytes::from("sensors/k")), None, headers);
        let msg = decode_record(&record).unwrap();
        assert_eq!(msg.topic, "sensors/k");
        assert_eq!(msg.qos, 1);
        assert!(msg.payload.is_empty());
        assert_eq!(msg.user_properties, vec![("trace".into(), "t1".into())]);
        for bad_key in [None, Some(Bytes::from("a/+")), Some(Bytes::new())] {
            record.key = bad_key;
            assert!(decode_record(&record).is_none());
        }
    }
}
