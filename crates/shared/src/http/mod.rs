//! HTTP plumbing shared by the API and the operator's control server: the error envelope,
//! the JSON extractor, request ids, per-request spans and metrics, the control endpoints,
//! and serving with graceful shutdown.
//!
//! It lives here rather than in the api crate because both servers must answer with the same
//! envelope and the same control shapes; domain routes stay in their own crates.

mod control;
mod error;
mod extract;
mod middleware;

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;

pub use control::{ControlState, HealthBody, ReadyBody, ReadyChecks, VersionBody};
pub use error::{ApiError, ErrorDetail, ErrorEnvelope, current_request_id};
pub use extract::{Json, Query};
pub use middleware::REQUEST_ID_HEADER;

/// Control endpoints (`/health`, `/ready`, `/version`, `/metrics`) as an OpenAPI-aware router.
pub use control::routes as control_routes;

/// Applies what every BuilderOS server needs around its routes: 404/405 in the error
/// envelope, the body limit, panic recovery, request ids, spans and metrics.
pub fn finish(router: Router, service: &'static str, body_limit: usize) -> Router {
    // Install the recorder before the first request records anything.
    crate::telemetry::metrics_handle();
    router
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            service,
            middleware::observe,
        ))
}

/// Serves `router` on `listener` until `shutdown` completes, then drains in-flight requests.
///
/// # Errors
/// The I/O error that stopped the server.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
