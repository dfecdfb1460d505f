//! The reference HTTP processor: one builtin behind `GET /healthz` and `POST /run`.
//!
//! It validates requests with the same [`Request::parse`] the contract defines and answers the
//! canonical envelope bytes, so an HTTP round trip through it gives the byte-identical envelope
//! the in-process builtin gives. Also the template for writing a processor of your own.

use super::contract::{Request, codes};
use super::http::MAX_BODY_BYTES;
use super::{BUILTIN_NAMES, ProcessorRefError, builtin};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::sync::Arc;

/// The routes serving builtin `builtin` (one of [`BUILTIN_NAMES`]).
///
/// # Errors
/// An unknown builtin name.
pub fn router(builtin: &str) -> Result<Router, ProcessorRefError> {
    if !BUILTIN_NAMES.contains(&builtin) {
        return Err(ProcessorRefError(format!(
            "unknown builtin processor `{builtin}` (known: {})",
            BUILTIN_NAMES.join(", ")
        )));
    }
    let name: Arc<str> = Arc::from(builtin);
    Ok(Router::new()
        .route("/healthz", get(healthz))
        .route("/run", post(run))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(name))
}

/// Liveness: `{"ok":true}`.
async fn healthz() -> Response {
    json_bytes(StatusCode::OK, br#"{"ok":true}"#.to_vec())
}

/// Runs the builtin; a malformed request answers 400 `{"error":{"code","message"}}`.
async fn run(State(name): State<Arc<str>>, body: Bytes) -> Response {
    match Request::parse(&body) {
        Ok(request) => {
            let envelope = builtin::run(&name, &request).await;
            json_bytes(StatusCode::OK, envelope.to_canonical_bytes())
        }
        Err(e) => {
            debug_assert_eq!(e.code, codes::REQUEST_INVALID);
            let doc = json!({"error": {"code": e.code, "message": e.message}});
            json_bytes(
                StatusCode::BAD_REQUEST,
                builderos_canon::value_to_canonical_bytes(&doc),
            )
        }
    }
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
