//! The admin HTTP listener (default 127.0.0.1:8080): `/health`, `/metrics` (Prometheus text),
//! the JSON admin API under `/v1` ([`api`]), its OpenAPI 3.1 document (`/v1/openapi.json`, the
//! static file `openapi.json` next to this module), and the web dashboard at `/` with its
//! assets under `/ui/` ([`ui`]). A node without the broker role (a WAL replica, a meta voter)
//! serves only `/health` and `/metrics` ([`serve_without_broker`]).
//!
//! Errors of the JSON API are `{"error": "<kind>", "message": "…"}` (plus `"field"` when one
//! field of the request is at fault): 400 for bad input, 404 for an unknown topic, group or
//! route, 409 for a conflict (exists, a group with live members, not this node's to change),
//! 503 when metadata cannot be written. A unit test keeps the router and the OpenAPI document
//! in step: every `.route(…)` below is in the document and the document lists nothing else.

mod api;
pub mod grpc;
mod meta_voters;
mod ui;

use crate::metrics::Metrics;
use crate::node::Node;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use strata_tiering::ObjectStore;
use strata_wal::net::ReplicaServerHandle;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The OpenAPI 3.1 document describing every route of [`router`].
const OPENAPI_JSON: &str = include_str!("openapi.json");

/// When this process started serving admin requests (for `uptime_ms`).
static STARTED: OnceLock<Instant> = OnceLock::new();

pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    serve_app(router(node), listener, shutdown).await;
}

/// What a node without the broker role reports: its WAL replica server and, on a meta voter,
/// the metadata backup's counters and its object store's requests.
pub struct SupportNode {
    pub replica: Option<ReplicaServerHandle>,
    pub meta_backup: Option<(Arc<Metrics>, ObjectStore)>,
}

/// The admin listener of a node without the broker role: `/health` and `/metrics` only.
pub async fn serve_without_broker(
    node: Arc<SupportNode>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/health", get(support_health))
        .route("/metrics", get(support_metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node);
    serve_app(app, listener, shutdown).await;
}

async fn serve_app(app: Router, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    STARTED.get_or_init(Instant::now);
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

/// Every route of the admin listener. Keep one `.route(` per path: the OpenAPI test reads
/// this function's source.
fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/cluster", get(api::cluster))
        .route("/v1/cluster/nodes/{id}/drain", post(api::drain_node))
        .route("/v1/meta", get(meta_voters::meta))
        .route("/v1/meta/voters", post(meta_voters::add_voter))
        .route("/v1/meta/voters/{id}", delete(meta_voters::remove_voter))
        .route("/v1/topics", get(api::topics).post(api::create_topic))
        .route(
            "/v1/topics/{name}",
            get(api::describe_topic)
                .patch(api::alter_topic)
                .delete(api::delete_topic),
        )
        .route("/v1/groups", get(api::groups))
        .route("/v1/groups/{id}", get(api::describe_group))
        .route("/v1/groups/{id}/reset-offsets", post(api::reset_offsets))
        .route("/v1/storage", get(api::storage))
        .route("/v1/wal", get(api::wal))
        .route("/v1/users", get(api::users).post(api::upsert_user))
        .route("/v1/users/{name}", delete(api::delete_user))
        .route(
            "/v1/acls",
            get(api::list_acls)
                .post(api::create_acl)
                .delete(api::delete_acls),
        )
        .route("/v1/mqtt/clients", get(api::mqtt_clients))
        .route("/", get(ui::index))
        .route("/ui/{file}", get(ui::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(node)
}

/// Time since the admin listener started, in ms.
pub(crate) fn uptime_ms() -> u64 {
    STARTED.get().map_or(0, |t| t.elapsed().as_millis() as u64)
}

/// An error of the JSON API: its status, a stable kind, a sentence, and the field at fault.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            field: None,
        }
    }

    /// 400 naming the request field at fault.
    pub(crate) fn bad_field(field: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_request",
            message: message.into(),
            field: Some(field),
        }
    }

    pub(crate) fn not_found(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, kind, message)
    }

    pub(crate) fn conflict(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, kind, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"error": self.kind, "message": self.message});
        if let Some(field) = self.field {
            body["field"] = serde_json::Value::from(field);
        }
        (self.status, Json(body)).into_response()
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found("not_found", format!("no route {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}

async fn health(State(node): State<Arc<Node>>) -> impl IntoResponse {
    health_of(node.is_healthy(), node.replica.as_ref())
}

async fn support_health(State(node): State<Arc<SupportNode>>) -> impl IntoResponse {
    health_of(true, node.replica.as_ref())
}

/// 200 `{"status":"ok"}`, or 503 `{"status":"failed","reason":…}` when the broker's WAL writer
/// failed (writes are refused) or a stream of this node's WAL replica stopped because its
/// store failed (a full disk, an IO error): that stream takes no more writes here until the
/// process restarts, and its owners replace this replica meanwhile.
fn health_of(
    broker_ok: bool,
    replica: Option<&ReplicaServerHandle>,
) -> (StatusCode, Json<serde_json::Value>) {
    let failed = replica.map(ReplicaServerHandle::failed_streams);
    let reason = if !broker_ok {
        "the WAL failed; writes are refused".to_string()
    } else if let Some(streams) = failed.as_ref().filter(|f| !f.is_empty()) {
        let list: Vec<String> = streams.iter().map(u64::to_string).collect();
        format!(
            "WAL replica stream(s) {} stopped: their store failed (see the log); this replica \
             takes no writes for them until it restarts",
            list.join(", ")
        )
    } else {
        return (StatusCode::OK, Json(serde_json::json!({"status": "ok"})));
    };
    let mut body = serde_json::json!({"status": "failed", "reason": reason});
    if let Some(streams) = failed {
        body["failed_wal_streams"] = serde_json::json!(streams);
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    node.metrics.render(&mut out);
    render_store_metrics(&mut out, &node.store.metrics().snapshot());
    node_metrics_response(out, node.replica.as_ref())
}

/// What every node's `/metrics` ends with, whatever its roles: its WAL replica's series (when
/// it serves the `wal` role) and the process's.
fn node_metrics_response(
    mut out: String,
    replica: Option<&ReplicaServerHandle>,
) -> impl IntoResponse {
    if let Some(replica) = replica {
        crate::metrics::render_replica(&mut out, replica);
    }
    crate::process_metrics::render(&mut out);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

async fn support_metrics(State(node): State<Arc<SupportNode>>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    if let Some((metrics, store)) = &node.meta_backup {
        metrics.meta_backup.render(&mut out);
        render_store_metrics(&mut out, &store.metrics().snapshot());
    }
    node_metrics_response(out, node.replica.as_ref())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// `(METHOD, path)` of every `.route(…)` in `router`'s source.
    fn router_routes() -> BTreeSet<(String, String)> {
        let src = include_str!("mod.rs");
        let body = &src[src.find("fn router(").expect("router fn")..];
        let body = &body[..body.find("\n}\n").expect("end of router fn")];
        let mut out = BTreeSet::new();
        for call in body.split(".route(").skip(1) {
            // The call's text up to its closing parenthesis.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("balanced .route(");
            let call = &call[..end];
            let path = call.split('"').nth(1).expect("a path literal");
            for method in ["get", "post", "put", "delete", "patch"] {
                let found = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0
                        || !call.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && call.as_bytes()[i - 1] != b'_'
                });
                if found {
                    out.insert((method.to_uppercase(), path.to_string()));
                }
            }
        }
        out
    }

    fn document_routes() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).expect("valid JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                    assert!(
                        op["responses"].is_object(),
                        "{method} {path} has no responses"
                    );
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn openapi_document_lists_exactly_the_routes() {
        let routes = router_routes();
        assert!(
            routes.len() >= 14,
            "the source scan found too few routes: {routes:?}"
        );
        let documented = document_routes();
        let missing: Vec<_> = routes.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            missing.is_empty(),
            "routes missing from openapi.json: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "openapi.json documents routes the router lacks: {extra:?}"
        );
    }

    #[test]
    fn openapi_references_resolve() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).expect("valid JSON");
        let text = super::OPENAPI_JSON;
        for piece in text.split("\"$ref\": \"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').expect("closing quote")];
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "$ref to missing schema {name}"
            );
        }
    }
}
