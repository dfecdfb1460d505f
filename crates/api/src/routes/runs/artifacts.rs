//! A run's artifacts: the list the operator recorded, and their bytes.
//!
//! Only paths recorded for the run in `artifacts` are served: the store is never asked for a
//! path the run did not produce, so a path can't reach another run's (or org's) files.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use builderos_shared::http::{ApiError, ErrorEnvelope, Json};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use super::open_run;
use crate::AppState;
use crate::auth::Auth;
use crate::permissions::Permission;

/// The download route: `{*path}` spans slashes, which an OpenAPI path parameter can't say, so
/// the route is registered by hand and documented as `{path}`.
const DOWNLOAD_ROUTE: &str = "/v1/orgs/{org}/runs/{run}/artifacts/{*path}";

pub(super) fn router() -> OpenApiRouter<AppState> {
    let (_, documented, _): UtoipaMethodRouter<AppState> = routes!(download_artifact);
    let mut router = OpenApiRouter::new()
        .routes(routes!(list_artifacts))
        .route(DOWNLOAD_ROUTE, axum::routing::get(download_artifact));
    router
        .get_openapi_mut()
        .paths
        .paths
        .extend(documented.paths);
    router
}

/// A file a step produced.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct RunArtifact {
    /// Its path (download it at `…/artifacts/{path}`).
    pub path: String,
    /// The step that wrote it.
    pub step: String,
    /// The attempt that wrote it.
    pub attempt: i32,
    /// Lowercase hex SHA-256 of its bytes (also its ETag).
    pub sha256: String,
    /// Its size in bytes.
    pub size: i64,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}

/// A run's artifacts, by path.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/artifacts", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "Artifacts by path", body = Vec<RunArtifact>),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn list_artifacts(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<Vec<RunArtifact>>, ApiError> {
    let (mut tx, _, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let run = found.id;
    let rows: Vec<RunArtifact> = sqlx::query_as(
        "SELECT path, step_id AS step, attempt, sha256, size, created_at FROM artifacts \
         WHERE run_id = $1 ORDER BY path",
    )
    .bind(run)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

/// Download an artifact of the run (`application/octet-stream`, ETag = its SHA-256;
/// `If-None-Match` gets 304).
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/artifacts/{path}", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id"),
        ("path" = String, Path, description = "The artifact's path as listed (may contain `/`)")),
    responses((status = 200, description = "The bytes", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such run, or no such artifact of it", body = ErrorEnvelope)))]
async fn download_artifact(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run, path)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (mut tx, access, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let (org, run) = (access.org_id, found.id);
    let found: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT sha256, location FROM artifacts WHERE run_id = $1 AND path = $2")
            .bind(run)
            .bind(&path)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let (sha256, location) = found.ok_or_else(|| ApiError::not_found("artifact"))?;
    let etag = format!("\"{sha256}\"");
    let etag_value = HeaderValue::from_str(&etag).map_err(|e| ApiError::internal(&e))?;
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if cached {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag_value)]).into_response());
    }
    let store = state.artifacts.clone();
    let bytes = tokio::task::spawn_blocking(move || store.get(org, &sha256, location.as_deref()))
        .await
        .map_err(|e| ApiError::internal(&e))?
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                // Recorded but gone from the store (removed by hand, or a lost volume).
                tracing::warn!(%run, "a recorded artifact is missing from the store");
                ApiError::not_found("artifact")
            } else {
                // (damaged bytes are never served: the store checks them against the digest)
                ApiError::internal(&e)
            }
        })?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (header::ETAG, etag_value),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, max-age=0, must-revalidate"),
            ),
        ],
        bytes,
    )
        .into_response())
}
