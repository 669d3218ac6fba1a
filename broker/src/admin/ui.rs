//! The web dashboard: one HTML page, one script and one style sheet, embedded in the binary
//! (`include_str!`, no build chain). The page polls the JSON API (`/v1/cluster`, `/v1/topics`,
//! `/v1/groups`, `/v1/storage`, `/v1/mqtt/clients`) and computes rates in the browser from two
//! polls. Two views chosen by the URL's hash: the overview, and MQTT clients (`#mqtt`). Every piece
//! of text it inserts into the DOM goes through `textContent` (see `ui/app.js`).

use super::ApiError;
use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// The assets under `/ui/`: name, content type, body.
const ASSETS: &[(&str, &str, &str)] = &[
    ("app.js", "text/javascript; charset=utf-8", APP_JS),
    ("style.css", "text/css; charset=utf-8", STYLE_CSS),
];

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the dashboard.
pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /ui/{file}`: a static asset of the dashboard.
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| ApiError::not_found("not_found", format!("no dashboard asset `{file}`")))
}
