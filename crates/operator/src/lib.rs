//! The operator: runs pipeline steps for every tenant against PostgreSQL, and exposes its own
//! control server (`/health`, `/ready`, `/version`, `/metrics`).
//!
//! The queue, executor and processors arrive with the operator issue; today the crate is its
//! control surface, which `builderos operator` serves on `BR_OS_OPERATOR_ADDR` and
//! `builderos dev` mounts under `/operator` on the API's port.
//!
//! # Layout
//! - this file: [`OperatorState`], [`router`], [`app`].

pub mod artifacts;
pub mod cron;
pub mod pipeline;
pub mod processors;
pub mod receipt;
pub mod runner;
pub mod scheduler;
pub mod store;
pub mod worker;

use axum::Router;
use builderos_shared::config::Config;
use builderos_shared::http::{self, ControlState};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;

/// The service name the operator reports in control endpoints, logs and metrics.
pub const SERVICE: &str = "builderos-operator";

/// The operator's control state.
#[derive(Debug, Clone)]
pub struct OperatorState {
    /// What the control endpoints report.
    pub control: ControlState,
}

impl OperatorState {
    /// State over `pool`, reporting the operator identity in `config`.
    #[must_use]
    pub fn new(config: &Config, pool: PgPool) -> Self {
        Self {
            control: ControlState {
                service: SERVICE,
                version: config.operator_version.clone(),
                commit: config.operator_commit.clone(),
                env: config.env.as_str().to_owned(),
                pool,
            },
        }
    }
}

impl axum::extract::FromRef<OperatorState> for ControlState {
    fn from_ref(state: &OperatorState) -> Self {
        state.control.clone()
    }
}

/// The operator's control routes with their state, without the outer middleware.
pub fn router(state: OperatorState) -> Router {
    let routes: OpenApiRouter<OperatorState> = OpenApiRouter::new().merge(http::control_routes());
    routes.split_for_parts().0.with_state(state)
}

/// The operator's complete control server.
pub fn app(state: OperatorState, body_limit: usize) -> Router {
    http::finish(router(state), SERVICE, body_limit)
}
