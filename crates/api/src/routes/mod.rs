//! One module per resource; each exposes its OpenAPI-aware `router()`.

mod audit;
mod auth;
mod invitations;
mod magic;
mod oauth;
mod orgs;
mod pipelines;
mod processors;
mod projects;
mod prompt_bundles;
mod prompt_evals;
mod prompts;
mod runs;
mod tokens;

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(auth::router())
        .merge(magic::router())
        .merge(oauth::router())
        .merge(orgs::router())
        .merge(audit::router())
        .merge(prompts::router())
        .merge(prompt_evals::router())
        .merge(prompt_bundles::router())
        .merge(pipelines::router())
        .merge(runs::router())
        .merge(processors::router())
}

use builderos_shared::error::ErrorCode;
use builderos_shared::http::ApiError;
use uuid::Uuid;

/// Parses an id from a path; anything that isn't one is simply not found.
pub(crate) fn path_id(raw: &str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::not_found(what))
}

/// Maps a unique-constraint violation of `constraint` to 409 with `message`; other errors as usual.
pub(crate) trait OnConstraint<T> {
    fn on_constraint(self, constraint: &str, message: &str) -> Result<T, ApiError>;
}

impl<T> OnConstraint<T> for Result<T, sqlx::Error> {
    fn on_constraint(self, constraint: &str, message: &str) -> Result<T, ApiError> {
        self.map_err(|e| match &e {
            sqlx::Error::Database(db) if db.constraint() == Some(constraint) => {
                ApiError::new(ErrorCode::Conflict, message)
            }
            _ => ApiError::from(e),
        })
    }
}
