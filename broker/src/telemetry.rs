//! Logs and traces: the process's one `tracing` subscriber, and OTLP trace export behind
//! `telemetry.otlp_endpoint` (`--otlp-endpoint`).
//!
//! The subscriber is a registry with two layers, each with its own filter:
//! - the stderr log (`log.format` text or json), filtered by `STRATA_LOG` (default
//!   `info,openraft=warn`, plus `strata::trace=off`, so request spans never reach the log);
//! - when an endpoint is set, `tracing-opentelemetry` feeding an SDK tracer provider whose
//!   batch span processor runs on the tokio runtime and exports OTLP/HTTP protobuf through
//!   reqwest. This layer sees only spans with target [`TARGET`].
//!
//! Spans worth exporting are made at request boundaries only, with the target [`TARGET`]:
//! one per Kafka request (`kafka/server.rs`, named after the API through `otel.name`), per
//! MQTT publish ingested, per WAL group append and per object upload. With no endpoint no
//! layer is interested in [`TARGET`], so `info_span!(target: TARGET, …)` is a disabled span
//! (one cached callsite check, no allocation), and fields are recorded afterwards only when
//! the span is enabled (`Span::is_disabled`). Numbers are recorded as `i64`:
//! tracing-opentelemetry exports a `u64` field as a string.
//!
//! Export failures never stop the broker: spans of a failed batch are dropped and one warning
//! is logged per failing stretch (and a line when the collector answers again). On shutdown
//! [`Telemetry::shutdown`] flushes what is queued, bounded by [`EXPORT_TIMEOUT`].

use crate::config::{LogFormat, TelemetrySection};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The target of every span meant for export.
pub const TARGET: &str = "strata::trace";

/// Longest one export (and so the final flush) may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The validated `telemetry.*` keys, present only when an endpoint is set.
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpConfig {
    /// The full traces URL (`…/v1/traces`).
    pub traces_url: String,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl OtlpConfig {
    /// `None` when export is off. Errors name the key.
    pub fn from_section(
        t: &TelemetrySection,
    ) -> Result<Option<OtlpConfig>, (&'static str, String)> {
        let ratio = t.trace_sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err((
                "telemetry.trace_sample_ratio",
                format!("must be a number in 0..=1 (got {ratio})"),
            ));
        }
        if t.otlp_service_name.trim().is_empty() {
            return Err(("telemetry.otlp_service_name", "must not be empty".into()));
        }
        let Some(endpoint) = t.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(endpoint).map_err(|e| {
            (
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not a URL ({e})"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err((
                "telemetry.otlp_endpoint",
                format!("`{endpoint}` is not an http:// or https:// URL with a host"),
            ));
        }
        let base = endpoint.trim_end_matches('/');
        let traces_url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        Ok(Some(OtlpConfig {
            traces_url,
            service_name: t.otlp_service_name.clone(),
            sample_ratio: ratio,
        }))
    }
}

/// The span of one WAL group commit (`log/sink.rs`): the local fdatasync, or the wait for
/// the write quorum's acknowledgements of a replicated stream. `lsn` is asked only when the
/// span is enabled.
pub fn wal_sync_span(quorum: bool, lsn: impl FnOnce() -> u64) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "wal.sync",
        otel.name = if quorum { "wal.quorum_ack" } else { "wal.fsync" },
        wal.lsn = tracing::field::Empty,
    );
    if !span.is_disabled() {
        span.record("wal.lsn", i64::try_from(lsn()).unwrap_or(i64::MAX));
    }
    span
}

/// The span of one object upload (`log/uploader.rs`), attempts and retries included.
pub fn upload_span(key: &str, bytes: usize) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "object.put",
        object.key = tracing::field::Empty,
        object.bytes = bytes as i64,
    );
    if !span.is_disabled() {
        span.record("object.key", key);
    }
    span
}

/// The span of one MQTT publish handed to the log (`mqtt/ingest.rs`): mapping, encoding and
/// queueing (or forwarding to the partition's leader); it ends when the append is queued.
pub fn mqtt_publish_span(topic: &str, payload_bytes: usize) -> tracing::Span {
    let span = tracing::info_span!(
        target: TARGET,
        "mqtt.publish",
        otel.kind = "server",
        mqtt.topic = tracing::field::Empty,
        mqtt.payload_bytes = payload_bytes as i64,
    );
    if !span.is_disabled() {
        span.record("mqtt.topic", topic);
    }
    span
}

/// The running exporter, if any; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs the global subscriber. With `otlp` set this must run inside a tokio runtime
/// context (`Runtime::enter`): the batch processor's task is spawned here. An exporter that
/// cannot be built is logged and left out; the broker serves without it.
pub fn init(format: LogFormat, otlp: Option<&OtlpConfig>) -> Telemetry {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,openraft=warn,{TARGET}=off"))
    });
    use std::io::IsTerminal;
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let log = match format {
        LogFormat::Text => log
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed(),
        // One JSON object per line: timestamp, level, message and the event's fields at the
        // top level (what log shippers index), no ANSI colours.
        LogFormat::Json => log
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_ansi(false)
            .with_filter(filter)
            .boxed(),
    };
    let (provider, build_error) = match otlp.map(build_provider).transpose() {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let traces = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("strata"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(TARGET, tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry().with(log).with(traces).init();
    if let Some(otlp) = otlp {
        match build_error {
            Some(err) => tracing::warn!(%err, "OTLP trace export is off: no exporter"),
            None => tracing::info!(
                url = %otlp.traces_url,
                service = %otlp.service_name,
                ratio = otlp.sample_ratio,
                "exporting traces over OTLP/HTTP"
            ),
        }
    }
    Telemetry { provider }
}

fn build_provider(otlp: &OtlpConfig) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(otlp.traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let exporter = WarnOnFailure {
        inner: exporter,
        url: otlp.traces_url.clone(),
        failing: AtomicBool::new(false),
    };
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            otlp.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(otlp.service_name.clone())
                .build(),
        )
        .build())
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. Call it outside the runtime's
    /// tasks (after `block_on` returned) while the runtime is still alive: the final export
    /// runs on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(err) = provider.shutdown() {
                tracing::warn!(%err, "OTLP trace export: final flush failed");
            }
        }
    }
}

/// The OTLP exporter, logging a warning when exports start failing and a line when they
/// succeed again (the SDK itself logs nothing: its internal logs are compiled out).
#[derive(Debug)]
struct WarnOnFailure {
    inner: opentelemetry_otlp::SpanExporter,
    url: String,
    failing: AtomicBool,
}

impl SpanExporter for WarnOnFailure {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        match &result {
            Err(err) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(url = %self.url, %err, spans, "OTLP trace export failed; spans are dropped until the collector answers");
                }
            }
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(url = %self.url, "OTLP trace export works again");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(endpoint: Option<&str>, ratio: f64, expected: Result<Option<&str>, &str>) {
        let section = TelemetrySection {
            otlp_endpoint: endpoint.map(str::to_string),
            trace_sample_ratio: ratio,
            ..TelemetrySection::default()
        };
        let got = OtlpConfig::from_section(&section);
        match (got, expected) {
            (Ok(got), Ok(url)) => {
                assert_eq!(got.map(|c| c.traces_url).as_deref(), url, "{endpoint:?}")
            }
            (Err((key, _)), Err(want)) => assert_eq!(key, want, "{endpoint:?} {ratio}"),
            (got, want) => panic!("{endpoint:?} {ratio}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn endpoints_and_ratios() {
        check(None, 1.0, Ok(None));
        check(Some(""), 1.0, Ok(None));
        check(
            Some("http://127.0.0.1:4318"),
            1.0,
            Ok(Some("http://127.0.0.1:4318/v1/traces")),
        );
        check(
            Some("http://collector:4318/"),
            0.0,
            Ok(Some("http://collector:4318/v1/traces")),
        );
        check(
            Some("https://c.example/v1/traces"),
            0.5,
            Ok(Some("https://c.example/v1/traces")),
        );
        check(Some("collector:4318"), 1.0, Err("telemetry.otlp_endpoint"));
        check(Some("ftp://c:21"), 1.0, Err("telemetry.otlp_endpoint"));
        check(None, 1.5, Err("telemetry.trace_sample_ratio"));
        check(None, -0.1, Err("telemetry.trace_sample_ratio"));
        check(None, f64::NAN, Err("telemetry.trace_sample_ratio"));
    }
}
