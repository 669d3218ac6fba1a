//! The admin HTTP listener: `/health`, `/metrics` (Prometheus text), `/v1/topics`.

use crate::node::Node;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub async fn serve(node: Arc<Node>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/topics", get(topics))
        .with_state(node);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(%err, "admin listener failed");
    }
}

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    if node.is_healthy() {
        (StatusCode::OK, Json(serde_json::json!({"status": "ok"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "failed", "reason": "the WAL failed; writes are refused"}),
            ),
        )
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    node.metrics.render(&mut out);
    render_store_metrics(&mut out, &node.store.metrics().snapshot());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The object-store counters (`strata_tiering::StoreMetrics`). `requests_total` counts what
/// goes over the wire by operation, first attempts only: a multipart upload is one
/// `multipart_initiate` (S3, GCS), its `multipart_part`s, one `multipart_complete` (and a
/// `multipart_abort` if it failed), never a `put`; attempts the retry layer repeated are in
/// `retries_total`. A benchmark computes requests per GiB ingested as
/// `requests_total{op=…} / (strata_produce_bytes_total / 2^30)`.
fn render_store_metrics(out: &mut String, s: &strata_tiering::StoreMetricsSnapshot) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP strata_object_store_requests_total Object-store requests sent, by operation (first attempts)."
    );
    let _ = writeln!(out, "# TYPE strata_object_store_requests_total counter");
    for (op, n) in [
        ("put", s.single_put_requests()),
        ("multipart_initiate", s.multipart_initiate_requests),
        ("multipart_part", s.multipart_part_requests),
        ("multipart_complete", s.multipart_complete_requests),
        ("multipart_abort", s.multipart_abort_requests),
        ("get", s.get_requests),
        ("list", s.list_requests),
        ("delete", s.delete_requests),
    ] {
        let _ = writeln!(out, "strata_object_store_requests_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP strata_object_store_objects_written_total Objects written (PUT calls, single or multipart)."
    );
    let _ = writeln!(
        out,
        "# TYPE strata_object_store_objects_written_total counter"
    );
    let _ = writeln!(
        out,
        "strata_object_store_objects_written_total {}",
        s.put_requests
    );
    let _ = writeln!(
        out,
        "# TYPE strata_object_store_multipart_uploads_total counter"
    );
    let _ = writeln!(
        out,
        "strata_object_store_multipart_uploads_total {}",
        s.multipart_uploads
    );
    let _ = writeln!(out, "# TYPE strata_object_store_bytes_total counter");
    for (op, n) in [("put", s.put_bytes), ("get", s.get_bytes)] {
        let _ = writeln!(out, "strata_object_store_bytes_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP strata_object_store_errors_total Object-store calls that failed after retries."
    );
    let _ = writeln!(out, "# TYPE strata_object_store_errors_total counter");
    for (op, n) in [
        ("put", s.put_errors),
        ("get", s.get_errors),
        ("list", s.list_errors),
        ("delete", s.delete_errors),
    ] {
        let _ = writeln!(out, "strata_object_store_errors_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# TYPE strata_object_store_duration_seconds_total counter"
    );
    for (op, us) in [
        ("put", s.put_duration_us),
        ("get", s.get_duration_us),
        ("list", s.list_duration_us),
    ] {
        let secs = us as f64 / 1e6;
        let _ = writeln!(
            out,
            "strata_object_store_duration_seconds_total{{op=\"{op}\"}} {secs}"
        );
    }
    let _ = writeln!(out, "# TYPE strata_object_store_retries_total counter");
    let _ = writeln!(out, "strata_object_store_retries_total {}", s.retries);
}

#[derive(Serialize)]
struct TopicView {
    name: String,
    id: String,
    partitions: Vec<PartitionView>,
}

#[derive(Serialize)]
struct PartitionView {
    partition: u32,
    log_start_offset: i64,
    high_watermark: i64,
    uploaded_offset: i64,
    /// Index blocks in object storage, and how many of them are compacted segments.
    blocks: usize,
    segments: usize,
}

async fn topics(State(node): State<Arc<Node>>) -> Json<Vec<TopicView>> {
    let state = node.meta.read();
    let views = node
        .registry
        .topics()
        .iter()
        .map(|t| TopicView {
            name: t.name.to_string(),
            id: t.id.to_string(),
            partitions: t
                .partitions
                .iter()
                .map(|p| {
                    let o = p.offsets();
                    let (blocks, segments) = state
                        .blocks(p.key.topic, p.key.partition)
                        .fold((0, 0), |(b, s), block| {
                            (b + 1, s + usize::from(block.is_segment()))
                        });
                    PartitionView {
                        partition: p.key.partition,
                        log_start_offset: o.log_start_offset,
                        high_watermark: o.high_watermark,
                        uploaded_offset: o.uploaded_offset,
                        blocks,
                        segments,
                    }
                })
                .collect(),
        })
        .collect();
    Json(views)
}
