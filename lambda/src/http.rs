//! The HTTP API (JSON over a function URL / API Gateway HTTP API):
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/v1/topics` | `{"topics":[{"name","partitions","storage_mode"}]}` |
//! | POST | `/v1/producers` | `{"producer_id", "producer_epoch"}` for idempotent produces |
//! | POST | `/v1/topics/{topic}/records` | produce ([`crate::produce`]), `direct` topics only |
//! | GET | `/v1/topics/{topic}/partitions/{p}/records` | fetch ([`crate::fetch`]) |
//!
//! Every answer is JSON; an error is `{"error": "<message>"}` with its status. The status of
//! each condition is decided in one place, [`ApiError`].

use crate::App;
use lambda_http::aws_lambda_events::apigw::ApiGatewayV2httpResponse;
use lambda_http::aws_lambda_events::encodings::Body;
use lambda_http::http::{HeaderMap, HeaderValue, Method};
use serde_json::{json, Value};
use strata_broker::log::direct::{is_direct, STORAGE_MODE_KEY};

/// Largest request body: Lambda's own limit for a synchronous invocation payload.
pub const REQUEST_BYTES_MAX: usize = 6 * 1024 * 1024;

/// A request the API refuses, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body of {bytes} bytes is over the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("{0}")]
    OutOfRange(String),
    /// Metadata or the object store failed; retry later.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The one mapping from conditions to HTTP statuses.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::Conflict(_) => 409,
            ApiError::TooLarge { .. } => 413,
            ApiError::OutOfRange(_) => 416,
            ApiError::Unavailable(_) => 503,
        }
    }
}

/// A JSON response for an API Gateway v2 / function URL invocation.
pub fn respond(status: u16, body: &Value) -> ApiGatewayV2httpResponse {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let mut response = ApiGatewayV2httpResponse::default();
    response.status_code = i64::from(status);
    response.headers = headers;
    response.body = Some(Body::Text(body.to_string()));
    response.is_base64_encoded = false;
    response
}

/// Routes one request and answers it; never fails (errors become statuses).
pub async fn route(
    app: &App,
    request: lambda_http::Request,
    deadline_ms: u64,
) -> ApiGatewayV2httpResponse {
    match dispatch(app, request, deadline_ms).await {
        Ok(body) => respond(200, &body),
        Err(err) => {
            if err.status() >= 500 {
                tracing::warn!(%err, "request failed");
            }
            respond(err.status(), &json!({ "error": err.to_string() }))
        }
    }
}

async fn dispatch(
    app: &App,
    request: lambda_http::Request,
    deadline_ms: u64,
) -> Result<Value, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let segments: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            percent_decode(s)
                .ok_or_else(|| ApiError::BadRequest(format!("bad percent-encoding in `{s}`")))
        })
        .collect::<Result<_, _>>()?;
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let method = parts.method;
    match segs.as_slice() {
        ["v1", "topics"] => {
            allow(&method, Method::GET)?;
            list_topics(app).await
        }
        ["v1", "producers"] => {
            allow(&method, Method::POST)?;
            crate::produce::init_producer(app).await
        }
        ["v1", "topics", topic, "records"] => {
            allow(&method, Method::POST)?;
            let bytes: &[u8] = match &body {
                Body::Empty => &[],
                Body::Text(t) => t.as_bytes(),
                Body::Binary(b) => b,
                _ => &[],
            };
            if bytes.len() > REQUEST_BYTES_MAX {
                return Err(ApiError::TooLarge {
                    bytes: bytes.len(),
                    max: REQUEST_BYTES_MAX,
                });
            }
            crate::produce::produce(app, topic, bytes, deadline_ms).await
        }
        ["v1", "topics", topic, "partitions", partition, "records"] => {
            allow(&method, Method::GET)?;
            let partition: u32 = partition.parse().map_err(|_| {
                ApiError::BadRequest(format!("partition `{partition}` is not a number"))
            })?;
            let params = crate::fetch::FetchParams::parse(&query)?;
            crate::fetch::fetch(app, topic, partition, params).await
        }
        _ => Err(ApiError::NotFound(format!(
            "no route for {method} {path}; see docs/lambda.md"
        ))),
    }
}

fn allow(method: &Method, want: Method) -> Result<(), ApiError> {
    if *method == want {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(format!(
            "{method} is not allowed here; use {want}"
        )))
    }
}

async fn list_topics(app: &App) -> Result<Value, ApiError> {
    let state = app.meta_state().await?;
    let topics: Vec<Value> = state
        .topics()
        .map(|t| {
            json!({
                "name": t.name.to_string(),
                "partitions": t.partitions,
                "storage_mode": if is_direct(&t.configs) { "direct" } else { "wal" },
            })
        })
        .collect();
    Ok(json!({ "topics": topics }))
}

/// The refusal for a produce to a topic that is not `direct`.
pub fn not_direct(topic: &str) -> ApiError {
    ApiError::Conflict(format!(
        "topic `{topic}` is not in direct mode: the Lambda function writes only to topics \
         created with {STORAGE_MODE_KEY}=direct (produce to a WAL topic through a broker)"
    ))
}

/// Decodes `%XX` escapes in a path segment; `None` when malformed or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl App {
    /// The metadata state, or 503 naming why it could not be read.
    pub async fn meta_state(&self) -> Result<std::sync::Arc<strata_meta::MetaState>, ApiError> {
        self.meta
            .state()
            .await
            .map_err(|e| ApiError::Unavailable(format!("metadata unavailable: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_decoding() {
        let cases = [
            (ApiError::BadRequest(String::new()), 400),
            (ApiError::NotFound(String::new()), 404),
            (ApiError::Conflict(String::new()), 409),
            (ApiError::TooLarge { bytes: 1, max: 0 }, 413),
            (ApiError::Unavailable(String::new()), 503),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err:?}");
        }
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert!(not_direct("t")
            .to_string()
            .contains("strata.storage.mode=direct"));
    }
}
