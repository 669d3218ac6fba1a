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
    let s = node.store.metrics().snapshot();
    use std::fmt::Write as _;
    let _ = writeln!(out, "# TYPE strata_object_store_requests_total counter");
    for (op, n) in [
        ("put", s.put_requests),
        ("get", s.get_requests),
        ("delete", s.delete_requests),
    ] {
        let _ = writeln!(out, "strata_object_store_requests_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE strata_object_store_bytes_total counter");
    for (op, n) in [("put", s.put_bytes), ("get", s.get_bytes)] {
        let _ = writeln!(out, "strata_object_store_bytes_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE strata_object_store_errors_total counter");
    for (op, n) in [
        ("put", s.put_errors),
        ("get", s.get_errors),
        ("delete", s.delete_errors),
    ] {
        let _ = writeln!(out, "strata_object_store_errors_total{{op=\"{op}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE strata_object_store_retries_total counter");
    let _ = writeln!(out, "strata_object_store_retries_total {}", s.retries);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
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
}

async fn topics(State(node): State<Arc<Node>>) -> Json<Vec<TopicView>> {
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
                    PartitionView {
                        partition: p.key.partition,
                        log_start_offset: o.log_start_offset,
                        high_watermark: o.high_watermark,
                        uploaded_offset: o.uploaded_offset,
                    }
                })
                .collect(),
        })
        .collect();
    Json(views)
}
