//! The team-mode HTTP API.
//!
//! Handlers are thin: extract (auth, org, input) → check permission → call the domain → map to
//! a response. Each resource has its own module exposing an OpenAPI-aware router; they are
//! merged here, in one place, where the OpenAPI document is assembled too.
//!
//! # Layout
//! - this file: [`AppState`], [`router`], [`app`], [`openapi`].
//! - [`permissions`]: the permission matrix (`verb:resource` × roles).
//! - [`auth`]: extractors, authorization, secrets, passwords, JWTs, throttling.
//! - [`sessions`]: sign-in sessions and refresh-token rotation.
//! - [`audit`]: the one audit writer.
//! - [`domain`]: validated values (emails, slugs, names), pagination cursors.
//! - [`prompts`]: the shared prompt registry (specs, versions, labels, diffs, bundles, evals).
//! - `routes/`: one module per resource, each with its `router()`.

pub mod audit;
pub mod auth;
pub mod cache;
pub mod domain;
pub mod mail;
pub mod mailer;
pub mod oidc;
pub mod permissions;
pub mod prompts;
mod routes;
pub mod sessions;

use std::sync::Arc;

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
    /// Access-token keys.
    pub keys: Arc<auth::jwt::Keys>,
    /// The platform's external base URL (for links in mail).
    pub public_url: Arc<str>,
    /// OAuth2/OIDC sign-in providers.
    pub oauth: Arc<oidc::OAuth>,
    /// Size caps of the prompt registry.
    pub prompt_limits: prompts::Limits,
    /// This replica's read cache of tokens and prompt references.
    pub cache: Arc<cache::Cache>,
    /// Where the operator keeps run artifacts (read by the artifact downloads).
    pub artifacts: Arc<dyn builderos_operator::artifacts::ArtifactStore>,
    /// This replica's audit sealer (stops with the last clone of the state).
    pub sealer: audit::sealer::Sealer,
}

/// The JWT issuer every access token names.
pub const ISSUER: &str = "builderos";

impl AppState {
    /// State for the API over `pool`, configured by `config`.
    ///
    /// # Errors
    /// When the configured JWT key can't be loaded.
    pub fn new(config: &Config, pool: PgPool) -> Result<Self, auth::jwt::KeyError> {
        let oauth = oidc::OAuth::new(&config.oauth_providers)
            .map_err(|e| auth::jwt::KeyError::new(e.to_string()))?;
        let keys = match &config.jwt_private_key {
            Some(pem) => {
                auth::jwt::Keys::from_pem(ISSUER, pem.expose(), &config.jwt_previous_public_keys)?
            }
            None => auth::jwt::Keys::ephemeral(ISSUER)?,
        };
        let cache = cache::Cache::new();
        cache.listen(pool.clone());
        Ok(Self {
            cache,
            sealer: audit::sealer::Sealer::spawn(pool.clone()),
            control: ControlState {
                service: SERVICE,
                version: config.version.clone(),
                commit: config.commit.clone(),
                env: config.env.as_str().to_owned(),
                pool: pool.clone(),
            },
            pool,
            keys: Arc::new(keys),
            public_url: Arc::from(config.public_url.as_str()),
            oauth: Arc::new(oauth),
            prompt_limits: prompts::Limits {
                max_spec_bytes: config.prompt_max_spec_bytes,
                max_bundle_bytes: config.prompt_max_bundle_bytes,
            },
            artifacts: Arc::new(builderos_operator::artifacts::LocalStore::new(
                config.artifacts_dir.clone(),
            )),
        })
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
    modifiers(&BearerAuth),
    tags(
        (name = "control", description = "Liveness, readiness, version and metrics"),
        (name = "auth", description = "Sign-up, sign-in, sessions"),
        (name = "orgs", description = "Orgs, members, invitations"),
        (name = "projects", description = "Projects and their environments"),
        (name = "tokens", description = "API tokens for machines"),
        (name = "audit", description = "The audit trail: query, export, verify, retention"),
        (name = "prompts", description = "The shared prompt registry: prompts, versions, labels, fetch, diff"),
        (name = "prompt evals", description = "Eval cases, recorded results and regressions between versions"),
        (name = "prompt bundles", description = "promptpack.zip export and import"),
        (name = "pipelines", description = "Pipeline definitions of a project, their versions, and the shipped templates"),
        (name = "runs", description = "Runs: start, list, status, cancel, timeline, logs, event stream, receipts, artifacts"),
        (name = "processors", description = "The org's HTTP processor allowlist and run concurrency limit"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access JWT from sign-in, or an API token (`bos_…`)",
                    ))
                    .build(),
            ),
        );
    }
}

fn openapi_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(http::control_routes())
        .merge(routes::router())
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
