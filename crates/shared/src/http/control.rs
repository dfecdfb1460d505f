//! `GET /health`, `/ready`, `/version` and `/metrics`, with the shapes of SPEC.md §6.

use std::time::Duration;

use axum::extract::{FromRef, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long `/ready` waits for its database round-trip.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// What the control endpoints report about the process.
#[derive(Debug, Clone)]
pub struct ControlState {
    /// `builderos-api` or `builderos-operator`.
    pub service: &'static str,
    /// Reported version.
    pub version: String,
    /// Reported commit.
    pub commit: String,
    /// Reported environment.
    pub env: String,
    /// The pool `/ready` checks and `/metrics` reports on.
    pub pool: PgPool,
}

/// `GET /health`: the process is alive.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthBody {
    /// Always `true`.
    pub ok: bool,
    /// The service answering.
    pub service: String,
    /// The server's clock, RFC 3339.
    pub timestamp: String,
}

/// `GET /ready`: the process can serve traffic.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyBody {
    /// `true` when every check passed.
    pub ready: bool,
    /// The service answering.
    pub service: String,
    /// Each check's result.
    pub checks: ReadyChecks,
}

/// The individual readiness checks.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReadyChecks {
    /// The configuration parsed (always true once the process runs).
    pub config: bool,
    /// A database round-trip succeeded within one second.
    pub database: bool,
}

/// `GET /version`: what is running.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VersionBody {
    /// The service answering.
    pub service: String,
    /// Its version.
    pub version: String,
    /// Its commit (`UNKNOWN` when not set).
    pub commit: String,
    /// Its environment (`local` when not set).
    pub env: String,
}

/// The control routes, for any router state that can hand out a [`ControlState`].
pub fn routes<S>() -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
    ControlState: FromRef<S>,
{
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(version))
        .routes(routes!(metrics))
}

/// Liveness: answers while the process lives, without touching the database.
#[utoipa::path(get, path = "/health", tag = "control",
    responses((status = 200, description = "The process is alive", body = HealthBody)))]
async fn health(State(control): State<ControlState>) -> axum::Json<HealthBody> {
    axum::Json(HealthBody {
        ok: true,
        service: control.service.to_owned(),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

/// Readiness: a database round-trip with a one-second timeout.
#[utoipa::path(get, path = "/ready", tag = "control",
    responses(
        (status = 200, description = "Ready to serve", body = ReadyBody),
        (status = 503, description = "A check failed", body = ReadyBody)))]
async fn ready(State(control): State<ControlState>) -> Response {
    let database = crate::db::ping(&control.pool, READY_TIMEOUT).await;
    let body = ReadyBody {
        ready: database,
        service: control.service.to_owned(),
        checks: ReadyChecks {
            config: true,
            database,
        },
    };
    let status = if database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

/// Version, commit and environment of the running process.
#[utoipa::path(get, path = "/version", tag = "control",
    responses((status = 200, description = "What is running", body = VersionBody)))]
async fn version(State(control): State<ControlState>) -> axum::Json<VersionBody> {
    axum::Json(VersionBody {
        service: control.service.to_owned(),
        version: control.version.clone(),
        commit: control.commit.clone(),
        env: control.env.clone(),
    })
}

/// Prometheus metrics: request counts and latencies by route and status, pool gauges.
#[utoipa::path(get, path = "/metrics", tag = "control",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics(State(control): State<ControlState>) -> Response {
    let pool = &control.pool;
    let size = f64::from(pool.size());
    #[allow(clippy::cast_precision_loss)]
    let idle = pool.num_idle() as f64;
    let max = f64::from(pool.options().get_max_connections());
    let service = control.service;
    metrics::gauge!("builderos_db_pool_connections", "service" => service, "state" => "idle")
        .set(idle);
    metrics::gauge!("builderos_db_pool_connections", "service" => service, "state" => "in_use")
        .set((size - idle).max(0.0));
    metrics::gauge!("builderos_db_pool_max_connections", "service" => service).set(max);
    let body = crate::telemetry::metrics_handle().render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
