//! The error envelope every server answers with.

use std::any::Any;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ErrorCode;

tokio::task_local! {
    /// The id of the request being served; set by the request middleware.
    static REQUEST_ID: String;
}

/// The current request's id, or an empty string outside a request.
#[must_use]
pub fn current_request_id() -> String {
    REQUEST_ID.try_with(Clone::clone).unwrap_or_default()
}

pub(super) async fn scope_request_id<F: Future>(id: String, future: F) -> F::Output {
    REQUEST_ID.scope(id, future).await
}

/// `{"error": {...}, "request_id": "..."}`: the body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// What went wrong.
    pub error: ErrorDetail,
    /// The request's id, also in the `x-request-id` header and on every log line.
    pub request_id: String,
}

/// The code and a human message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable `ERR_*` code (see docs/errors.md).
    #[schema(example = "ERR_NOT_FOUND")]
    pub code: String,
    /// A short explanation for humans; never a stack trace or a secret.
    pub message: String,
    /// Structured detail some errors carry (e.g. the conflicts of a refused import).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// An error a handler returns; renders as the envelope with the code's status.
#[derive(Debug)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// The message shown to the client.
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limiting).
    pub retry_after: Option<u64>,
    /// Structured detail for the client.
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    /// 400 `ERR_INPUTS`.
    pub fn inputs(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Inputs, message)
    }

    /// 404 `ERR_NOT_FOUND`, worded identically for missing and foreign resources.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// 503 `ERR_UNAVAILABLE`.
    pub fn unavailable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "the database is unavailable; retry later",
        )
    }

    /// 500 `ERR_INTERNAL`. The cause is logged with the request id and never returned.
    pub fn internal(cause: &(dyn std::fmt::Display + '_)) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            ErrorCode::Internal,
            "internal error; the request id identifies it in the logs",
        )
    }

    /// Adds structured detail to the error body.
    #[must_use]
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header.
    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&error) {
            tracing::warn!(error = %error, "database unavailable");
            Self::unavailable()
        } else {
            Self::internal(&error)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorEnvelope {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
                details: self.details,
            },
            request_id: current_request_id(),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

pub(super) async fn not_found_fallback() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

pub(super) async fn method_not_allowed_fallback() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this route",
    )
}

/// Turns a caught panic into a plain 500 envelope; the panic itself is logged by the hook
/// installed in `telemetry`, never sent to the client.
pub(super) fn panic_response(_payload: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::new(
        ErrorCode::Internal,
        "internal error; the request id identifies it in the logs",
    )
    .into_response()
}
