//! The team-mode HTTP API.
//!
//! Handlers are thin: extract (auth, org, input) → check permission → call the domain → map to
//! a response. Each resource has its own module exposing an OpenAPI-aware router; they are
//! merged here, in one place, where the OpenAPI document is assembled too.
//!
//! # Layout
//! - this file: [`AppState`], [`router`], [`app`], [`openapi`].

use axum::Router;
use axum::extract::FromRef;
use builderos_shared::config::Config;
use builderos_shared::http::{self, ControlState};
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_scalar::Servable as _;

/// The service name the API reports in control endpoints, logs and metrics.
pub const SERVICE: &str = "builderos-api";

/// Everything a handler may need; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The app role's pool (row-level security applies).
    pub pool: PgPool,
    /// What the control endpoints report.
    pub control: ControlState,
}

impl AppState {
    /// State for the API over `pool`, reporting the identity in `config`.
    #[must_use]
    pub fn new(config: &Config, pool: PgPool) -> Self {
        Self {
            control: ControlState {
                service: SERVICE,
                version: config.version.clone(),
                commit: config.commit.clone(),
                env: config.env.as_str().to_owned(),
                pool: pool.clone(),
            },
            pool,
        }
    }
}

impl FromRef<AppState> for ControlState {
    fn from_ref(state: &AppState) -> Self {
        state.control.clone()
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "BuilderOS team platform API",
        description = "Multi-tenant API for teams sharing agent pipeline runs, approvals, prompts, audit and signed packs. \
                       Every error answers with `{\"error\":{\"code\":\"ERR_…\",\"message\":\"…\"},\"request_id\":\"…\"}`.",
        license(name = "Apache-2.0")
    ),
    components(schemas(http::ErrorEnvelope, http::ErrorDetail)),
    tags((name = "control", description = "Liveness, readiness, version and metrics"))
)]
struct ApiDoc;

fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi()).merge(http::control_routes())
}

/// The OpenAPI document of every route (written to `openapi/openapi.json` by `builderos openapi`).
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi_router().split_for_parts().1
}

/// The OpenAPI document as committed in `openapi/openapi.json`: pretty JSON, trailing newline.
#[must_use]
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// The API's routes with their state, without the outer middleware (see [`app`]).
pub fn router(state: AppState) -> Router {
    let (routes, doc) = openapi_router().split_for_parts();
    let doc_json = doc.clone();
    routes
        .route(
            "/openapi.json",
            axum::routing::get(move || std::future::ready(axum::Json(doc_json.clone()))),
        )
        .merge(utoipa_scalar::Scalar::with_url("/docs", doc))
        .with_state(state)
}

/// The complete API: routes plus envelope fallbacks, body limit, panic recovery, request ids,
/// spans and metrics.
pub fn app(state: AppState, body_limit: usize) -> Router {
    http::finish(router(state), SERVICE, body_limit)
}
