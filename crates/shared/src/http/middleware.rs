//! The request middleware: a validated or generated request id, one span per request, and
//! request metrics by route and status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::error::scope_request_id;

/// The header carrying the request id, in both directions.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Accepts a client's request id when it is short and plain; otherwise makes a new one, so
/// log lines can't be forged or flooded through it.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), ToOwned::to_owned)
}

pub(super) async fn observe(
    State(service): State<&'static str>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = request_id(&req);
    let header = HeaderValue::from_str(&id).ok();
    if let Some(value) = &header {
        req.headers_mut().insert(REQUEST_ID_HEADER, value.clone());
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().as_str().to_owned();
    let span =
        tracing::info_span!("request", request_id = %id, method = %method, route = %route, service);
    let started = Instant::now();
    let mut response = scope_request_id(id, next.run(req))
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let labels = [
        ("service", service.to_owned()),
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("builderos_http_requests_total", &labels).increment(1);
    metrics::histogram!("builderos_http_request_duration_seconds", &labels)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::error!(status, latency_ms, "request finished");
        } else {
            tracing::info!(status, latency_ms, "request finished");
        }
    });
    if let Some(value) = header {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
