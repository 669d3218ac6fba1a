//! One trace span per Kafka request (`telemetry.rs` exports it when OTLP is on).
//!
//! `server.rs` opens the span from the raw frame before dispatch and keeps it around the
//! response future, so it lasts from arrival to the response being ready. `handlers.rs` adds
//! the topics once the request is decoded and the error code when the response is encoded.
//! Every function returns at once when the span is disabled (no OTLP endpoint): nothing is
//! formatted or allocated then.
//!
//! Attributes: `otel.name` = the API's name (`Produce`, `Fetch`, …), `kafka.api_key`,
//! `kafka.api_version`, `kafka.client_id`, `kafka.topic_count`, `messaging.destination.name`
//! (the topics, comma-separated), `kafka.error_code` (the first non-zero one) and
//! `otel.status_code = ERROR` with it.

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use tracing::field::Empty;
use tracing::Span;

/// Topic names recorded per span at most; the count is always exact.
const TOPICS_RECORDED_MAX: usize = 16;

/// The span of the request in `frame` (API key, version, correlation id, client id, …).
pub fn request_span(frame: &[u8]) -> Span {
    let span = tracing::info_span!(
        target: crate::telemetry::TARGET,
        "kafka.request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "kafka",
        kafka.api_key = Empty,
        kafka.api_version = Empty,
        kafka.client_id = Empty,
        kafka.topic_count = Empty,
        messaging.destination.name = Empty,
        kafka.error_code = Empty,
    );
    if span.is_disabled() || frame.len() < 10 {
        return span;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    match ApiKey::try_from(key) {
        Ok(api) => span.record("otel.name", format!("{api:?}")),
        Err(_) => span.record("otel.name", format!("ApiKey{key}")),
    };
    span.record("kafka.api_key", key);
    span.record("kafka.api_version", version);
    // Every request header version carries the client id as a nullable (non-compact) string
    // right after the correlation id.
    let len = i16::from_be_bytes([frame[8], frame[9]]);
    if let Ok(len) = usize::try_from(len) {
        if let Some(id) = frame.get(10..10 + len) {
            span.record("kafka.client_id", String::from_utf8_lossy(id).as_ref());
        }
    }
    span
}

/// Records the topics of a decoded request on the current request span.
pub fn record_request(request: &RequestKind) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let names: Vec<&str> = match request {
        RequestKind::Produce(r) => r.topic_data.iter().map(|t| t.name.0.as_str()).collect(),
        RequestKind::Fetch(r) => r.topics.iter().map(|t| t.topic.0.as_str()).collect(),
        RequestKind::ListOffsets(r) => r.topics.iter().map(|t| t.name.0.as_str()).collect(),
        RequestKind::Metadata(r) => r
            .topics
            .iter()
            .flatten()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str()))
            .collect(),
        RequestKind::OffsetCommit(r) => r.topics.iter().map(|t| t.name.0.as_str()).collect(),
        RequestKind::CreateTopics(r) => r.topics.iter().map(|t| t.name.0.as_str()).collect(),
        _ => return,
    };
    // tracing-opentelemetry exports u64 as a string; i64 stays a number.
    span.record("kafka.topic_count", names.len() as i64);
    if !names.is_empty() {
        let shown = &names[..names.len().min(TOPICS_RECORDED_MAX)];
        span.record("messaging.destination.name", shown.join(",").as_str());
    }
}

/// Records the first non-zero error code of a response on the current request span.
pub fn record_response(body: &ResponseKind) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    let code = match body {
        ResponseKind::Produce(r) => first(
            r.responses
                .iter()
                .flat_map(|t| t.partition_responses.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Fetch(r) => first(
            std::iter::once(r.error_code).chain(
                r.responses
                    .iter()
                    .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
            ),
        ),
        ResponseKind::ListOffsets(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::Metadata(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::CreateTopics(r) => first(r.topics.iter().map(|t| t.error_code)),
        ResponseKind::OffsetCommit(r) => first(
            r.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(|p| p.error_code)),
        ),
        ResponseKind::ApiVersions(r) => first(std::iter::once(r.error_code)),
        ResponseKind::InitProducerId(r) => first(std::iter::once(r.error_code)),
        ResponseKind::FindCoordinator(r) => {
            first(std::iter::once(r.error_code).chain(r.coordinators.iter().map(|c| c.error_code)))
        }
        ResponseKind::JoinGroup(r) => first(std::iter::once(r.error_code)),
        ResponseKind::SyncGroup(r) => first(std::iter::once(r.error_code)),
        ResponseKind::Heartbeat(r) => first(std::iter::once(r.error_code)),
        ResponseKind::LeaveGroup(r) => first(std::iter::once(r.error_code)),
        _ => None,
    };
    if let Some(code) = code {
        span.record("kafka.error_code", code);
        span.record("otel.status_code", "ERROR");
    }
}

fn first(mut codes: impl Iterator<Item = i16>) -> Option<i16> {
    codes.find(|c| *c != 0)
}
