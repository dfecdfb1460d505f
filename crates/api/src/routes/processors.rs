//! Org-wide operator settings: which HTTP processors the org's pipelines may call (deny by
//! default; builtins need no entry), and how many of its steps run at once.
//!
//! Both are org-wide, so a project-scoped token may read them but never change them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_operator::processors::ProcessorRef;
use builderos_operator::worker::WorkerConfig;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{OnConstraint, path_id};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::{Auth, OrgAccess};
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_allowed, allow_processor, disallow_processor))
        .routes(routes!(get_run_limits, set_run_limits))
}

/// The most steps an org may run at once, at most.
pub const MAX_CONCURRENCY: i32 = 10_000;

/// An allowed HTTP processor origin.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct AllowedProcessor {
    /// `scheme://host:port`: every processor URL with this origin is allowed.
    pub origin: String,
    /// Who allowed it.
    pub created_by: Option<Uuid>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST …/processor-allowlist`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowProcessor {
    /// A processor URL (`http://127.0.0.1:9000`, `https://agents.example.com/plan`); its origin
    /// is what gets allowed.
    pub processor: String,
}

/// Which origin to remove.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OriginParam {
    /// The origin (or any processor URL with that origin).
    pub origin: String,
}

/// The org's run concurrency limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunLimits {
    /// Steps of the org's runs that may run at once, across all operators.
    pub max_concurrency: i32,
    /// True when the org has set no limit and the platform default applies.
    pub default: bool,
}

/// Body of `PUT …/run-limits`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRunLimits {
    /// 1-10000.
    pub max_concurrency: i32,
}

/// Org-wide settings aren't a project's to change.
fn org_wide(access: &OrgAccess) -> Result<(), ApiError> {
    if access.project_scope.is_some() {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a project-scoped token can't change org-wide settings",
        ));
    }
    Ok(())
}

/// The allowlist key of an HTTP processor URL.
fn origin_of(field: &str, raw: &str) -> Result<String, ApiError> {
    match ProcessorRef::parse(raw.trim()) {
        Ok(p) if p.is_builtin() => Err(ApiError::inputs(format!(
            "{field}: builtin processors are always allowed; only HTTP processors are listed"
        ))),
        Ok(p) => p
            .allowlist_key()
            .ok_or_else(|| ApiError::inputs(format!("{field}: not an http(s) processor URL"))),
        Err(e) => Err(ApiError::inputs(format!("{field}: {e}"))),
    }
}

/// The HTTP processor origins the org's pipelines may call.
#[utoipa::path(get, path = "/v1/orgs/{org}/processor-allowlist", tag = "processors", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Allowed origins", body = Vec<AllowedProcessor>),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_allowed(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Vec<AllowedProcessor>>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::OrgRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let rows: Vec<AllowedProcessor> = sqlx::query_as(
        "SELECT origin, created_by, created_at FROM processor_allowlist WHERE org_id = $1 ORDER BY origin",
    )
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

/// Allow an HTTP processor's origin (Admin and up).
#[utoipa::path(post, path = "/v1/orgs/{org}/processor-allowlist", tag = "processors", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    request_body = AllowProcessor,
    responses((status = 201, description = "Allowed", body = AllowedProcessor),
        (status = 400, description = "Not an http(s) processor URL, or a builtin", body = ErrorEnvelope),
        (status = 403, description = "Needs manage:processors (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope),
        (status = 409, description = "Already allowed", body = ErrorEnvelope)))]
async fn allow_processor(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<AllowProcessor>,
) -> Result<(StatusCode, Json<AllowedProcessor>), ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::ProcessorsManage)
        .await?;
    org_wide(&access)?;
    let origin = origin_of("processor", &body.processor)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let row: AllowedProcessor = audit::record_with(
        sqlx::query(
            "INSERT INTO processor_allowlist (org_id, origin, created_by) VALUES ($1, $2, $3) \
             RETURNING origin, created_by, created_at",
        )
        .bind(org)
        .bind(&origin)
        .bind(auth.user_id()),
        Some(org),
        &access.audit,
        Event::success("processor.allow", "processor", &origin)
            .detail(serde_json::json!({"origin": origin})),
    )?
    .try_map(audit::from_row)
    .fetch_one(&mut *tx)
    .await
    .on_constraint("processor_allowlist_pkey", "this origin is already allowed")?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row)))
}

/// Remove an origin from the allowlist (Admin and up). Runs already started keep calling it;
/// new starts are refused.
#[utoipa::path(delete, path = "/v1/orgs/{org}/processor-allowlist", tag = "processors", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), OriginParam),
    responses((status = 204, description = "Removed"),
        (status = 400, description = "Not an http(s) origin", body = ErrorEnvelope),
        (status = 403, description = "Needs manage:processors (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org, or the origin isn't allowed", body = ErrorEnvelope)))]
async fn disallow_processor(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(param): Query<OriginParam>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::ProcessorsManage)
        .await?;
    org_wide(&access)?;
    let origin = origin_of("origin", &param.origin)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let removed = audit::record_with(
        sqlx::query("DELETE FROM processor_allowlist WHERE org_id = $1 AND origin = $2")
            .bind(org)
            .bind(&origin),
        Some(org),
        &access.audit,
        Event::success("processor.disallow", "processor", &origin)
            .detail(serde_json::json!({"origin": origin})),
    )?
    .execute(&mut *tx)
    .await?;
    if removed.rows_affected() == 0 {
        // Dropping the transaction drops the event with it.
        return Err(ApiError::not_found("allowlist entry"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The org's run concurrency limit (the platform default when it has set none).
#[utoipa::path(get, path = "/v1/orgs/{org}/run-limits", tag = "processors", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "The effective limit", body = RunLimits),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn get_run_limits(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<RunLimits>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::OrgRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let set: Option<i32> =
        sqlx::query_scalar("SELECT max_concurrency FROM org_operator_settings WHERE org_id = $1")
            .bind(org)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Json(limits(set)))
}

fn limits(set: Option<i32>) -> RunLimits {
    match set {
        Some(max_concurrency) => RunLimits {
            max_concurrency,
            default: false,
        },
        None => RunLimits {
            // The operator applies the same default (`WorkerConfig::default_org_limit`).
            max_concurrency: i32::try_from(WorkerConfig::default().default_org_limit)
                .unwrap_or(MAX_CONCURRENCY),
            default: true,
        },
    }
}

/// Set the org's run concurrency limit (Admin and up): how many of its steps run at once.
#[utoipa::path(put, path = "/v1/orgs/{org}/run-limits", tag = "processors", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    request_body = SetRunLimits,
    responses((status = 200, description = "The new limit", body = RunLimits),
        (status = 400, description = "Out of 1-10000", body = ErrorEnvelope),
        (status = 403, description = "Needs manage:processors (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn set_run_limits(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<SetRunLimits>,
) -> Result<Json<RunLimits>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::ProcessorsManage)
        .await?;
    org_wide(&access)?;
    if !(1..=MAX_CONCURRENCY).contains(&body.max_concurrency) {
        return Err(ApiError::inputs(format!(
            "max_concurrency: must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let before: Option<i32> = sqlx::query_scalar(
        "SELECT max_concurrency FROM org_operator_settings WHERE org_id = $1 FOR UPDATE",
    )
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    audit::record_with(
        sqlx::query(
        "INSERT INTO org_operator_settings (org_id, max_concurrency) VALUES ($1, $2) \
         ON CONFLICT (org_id) DO UPDATE SET max_concurrency = EXCLUDED.max_concurrency, updated_at = now()",
    )
    .bind(org)
    .bind(body.max_concurrency),
        Some(org),
        &access.audit,
        Event::success("run_limits.update", "org", org).detail(serde_json::json!({
            "from": limits(before).max_concurrency, "to": body.max_concurrency,
        })),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(limits(Some(body.max_concurrency))))
}
