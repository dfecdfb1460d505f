//! API tokens for machines: scoped to one org, a permission set and optionally a project;
//! expiring; shown once; stored as a hash.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::path_id;
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::secrets::{self, Kind};
use crate::auth::{Auth, Principal};
use crate::domain::display_name;
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(revoke_token))
}

/// The longest a token may live.
const MAX_EXPIRY_DAYS: i64 = 366;

/// Body of `POST /v1/orgs/{org}/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// A name to recognise it by.
    pub name: String,
    /// Permissions (`verb:resource`), each of which the creator must hold.
    pub permissions: Vec<String>,
    /// Restrict the token to one project.
    pub project_id: Option<Uuid>,
    /// Days until it expires (1-366; default 90).
    pub expires_in_days: Option<i64>,
    /// Owned by the org rather than by the creating user (survives the user leaving).
    #[serde(default)]
    pub service_account: bool,
}

/// A token as listed (never its secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenInfo {
    /// Token id.
    pub id: Uuid,
    /// Name.
    pub name: String,
    /// The first characters of the secret, to recognise it.
    pub prefix: String,
    /// Permissions.
    pub permissions: Vec<String>,
    /// Project scope.
    pub project_id: Option<Uuid>,
    /// The user it acts for (None: service account).
    pub created_by: Option<Uuid>,
    /// Whether it belongs to the org rather than a user.
    pub service_account: bool,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// A newly created token: the only time its secret is shown.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    /// The secret; store it now, it can't be shown again.
    pub token: String,
    /// Its listing.
    #[serde(flatten)]
    pub info: TokenInfo,
}

type TokenRow = (
    Uuid,
    String,
    String,
    Vec<String>,
    Option<Uuid>,
    Option<Uuid>,
    bool,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

fn info(
    (
        id,
        name,
        prefix,
        permissions,
        project_id,
        created_by,
        service_account,
        expires_at,
        last_used_at,
        revoked_at,
        created_at,
    ): TokenRow,
) -> TokenInfo {
    TokenInfo {
        id,
        name,
        prefix,
        permissions,
        project_id,
        created_by,
        service_account,
        expires_at,
        last_used_at,
        revoked_at,
        created_at,
    }
}

const COLUMNS: &str = "id, name, token_prefix, permissions, project_id, created_by, service_account, expires_at, last_used_at, revoked_at, created_at";

/// Create an API token. Its permissions can't exceed the creator's own.
#[utoipa::path(post, path = "/v1/orgs/{org}/tokens", tag = "tokens", request_body = CreateToken, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 201, description = "Created; the secret is shown once", body = CreatedToken),
        (status = 400, description = "Unknown permission, bad expiry or project", body = ErrorEnvelope),
        (status = 403, description = "Not allowed, or asking for more than the creator holds", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn create_token(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::TokensManage)
        .await?;
    let name = display_name("name", &body.name)?;
    if body.permissions.is_empty() {
        return Err(ApiError::inputs(
            "permissions: at least one permission is required",
        ));
    }
    let mut permissions = Vec::new();
    for p in &body.permissions {
        let p = Permission::parse(p)
            .ok_or_else(|| ApiError::inputs(format!("permissions: unknown permission `{p}`")))?;
        if !permissions.contains(&p) {
            permissions.push(p);
        }
    }
    permissions.sort();
    // Never more than the creator holds: a user's role, or a token's own permissions.
    let held: Vec<Permission> = match (&auth.principal, access.role) {
        (Principal::Token { permissions, .. }, role) => permissions
            .iter()
            .copied()
            .filter(|p| role.is_none_or(|r| r.allows(*p)))
            .collect(),
        (Principal::User { .. }, Some(role)) => role.permissions(),
        (Principal::User { .. }, None) => Vec::new(),
    };
    if let Some(extra) = permissions.iter().find(|p| !held.contains(p)) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("you can't grant `{}`, which you don't hold", extra.as_str()),
        ));
    }
    if access.project_scope.is_some() && body.project_id != access.project_scope {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "a project-scoped token can only create tokens for its project",
        ));
    }
    let days = body.expires_in_days.unwrap_or(90);
    if !(1..=MAX_EXPIRY_DAYS).contains(&days) {
        return Err(ApiError::inputs(format!(
            "expires_in_days: must be between 1 and {MAX_EXPIRY_DAYS}"
        )));
    }
    let created_by = if body.service_account {
        None
    } else {
        auth.user_id()
    };
    let secret = secrets::generate(Kind::ApiToken).map_err(|e| ApiError::internal(&e))?;
    let id = Uuid::now_v7();
    let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    if let Some(project) = body.project_id {
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM projects WHERE id = $1 AND org_id = $2")
                .bind(project)
                .bind(org)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(ApiError::inputs("project_id: no such project in this org"));
        }
    }
    let row: TokenRow = audit::record_with(sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_tokens (id, org_id, name, token_hash, token_prefix, permissions, project_id, created_by, service_account, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, now() + make_interval(days => $10)) RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(org)
    .bind(&name)
    .bind(secret.hash())
    .bind(secret.display_prefix())
    .bind(&names)
    .bind(body.project_id)
    .bind(created_by)
    .bind(body.service_account)
    .bind(i32::try_from(days).unwrap_or(90)),
        Some(org),
        &access.audit,
        Event::success("token.create", "api_token", id).detail(serde_json::json!({
            "name": name, "permissions": names, "project_id": body.project_id, "service_account": body.service_account, "expires_in_days": days
        })),
    )?
    .try_map(audit::from_row)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret.expose().to_owned(),
            info: info(row),
        }),
    ))
}

/// List an org's API tokens (secrets are never shown again).
#[utoipa::path(get, path = "/v1/orgs/{org}/tokens", tag = "tokens", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Tokens", body = Vec<TokenInfo>), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_tokens(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::TokensRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE org_id = $1 ORDER BY created_at DESC"
    )))
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows.into_iter().map(info).collect()))
}

/// Revoke an API token; it stops working on the next request.
#[utoipa::path(delete, path = "/v1/orgs/{org}/tokens/{token}", tag = "tokens", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("token" = Uuid, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"), (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such token", body = ErrorEnvelope)))]
async fn revoke_token(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, token)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let token = path_id(&token, "token")?;
    let access = auth
        .authorize(&state, org, Permission::TokensManage)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let done = audit::record_with(
        sqlx::query("UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 AND org_id = $2")
            .bind(token)
            .bind(org),
        Some(org),
        &access.audit,
        Event::success("token.revoke", "api_token", token),
    )?
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        // Dropping the transaction drops the event with it.
        return Err(ApiError::not_found("token"));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
