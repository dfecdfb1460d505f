//! Orgs and their members.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{OnConstraint, path_id};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::Auth;
use crate::domain::{Slug, display_name};
use crate::permissions::{Permission, Role};
use builderos_shared::http::ErrorEnvelope;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org))
        .routes(routes!(get_org, rename_org, delete_org))
        .routes(routes!(list_members))
        .routes(routes!(change_role, remove_member))
        .merge(super::invitations::router())
        .merge(super::projects::router())
        .merge(super::tokens::router())
}

/// An org.
#[derive(Debug, Serialize, ToSchema)]
pub struct Org {
    /// Org id.
    pub id: Uuid,
    /// Unique slug.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Body of `POST /v1/orgs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// Unique slug (a-z, 0-9, dashes).
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// Body of `PATCH /v1/orgs/{org}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameOrg {
    /// New display name.
    pub name: String,
}

/// Create an org; the caller becomes its Owner.
#[utoipa::path(post, path = "/v1/orgs", tag = "orgs", request_body = CreateOrg, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Org),
        (status = 400, description = "Bad slug or name", body = ErrorEnvelope),
        (status = 403, description = "API tokens can't create orgs", body = ErrorEnvelope),
        (status = 409, description = "Slug taken", body = ErrorEnvelope)))]
async fn create_org(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateOrg>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    let Some(user) = auth
        .user_id()
        .filter(|_| matches!(auth.principal, crate::auth::Principal::User { .. }))
    else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "only signed-in users can create orgs",
        ));
    };
    let slug = Slug::parse("slug", &body.slug)?;
    let name = display_name("name", &body.name)?;
    let id = Uuid::now_v7();
    let mut tx = db::begin(
        &state.pool,
        &Scope {
            org: Some(id),
            user: Some(user),
            token_hash: None,
        },
    )
    .await?;
    let created_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO orgs (id, slug, name) VALUES ($1, $2, $3) RETURNING created_at",
    )
    .bind(id)
    .bind(slug.as_str())
    .bind(&name)
    .fetch_one(&mut *tx)
    .await
    .on_constraint("orgs_slug_key", "an org with this slug already exists")?;
    audit::record_with(
        sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, 'owner')")
            .bind(id)
            .bind(user),
        Some(id),
        &auth.audit(),
        Event::success("org.create", "org", id)
            .detail(serde_json::json!({"slug": slug.as_str(), "name": name})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Org {
            id,
            slug: slug.as_str().to_owned(),
            name,
            created_at,
        }),
    ))
}

async fn load_org(state: &AppState, org: Uuid) -> Result<Org, ApiError> {
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let row: Option<(Uuid, String, String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT id, slug, name, created_at FROM orgs WHERE id = $1")
            .bind(org)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    let (id, slug, name, created_at) = row.ok_or_else(|| ApiError::not_found("org"))?;
    Ok(Org {
        id,
        slug,
        name,
        created_at,
    })
}

/// Get an org.
#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "The org", body = Org), (status = 404, description = "No such org (or not yours)", body = ErrorEnvelope)))]
async fn get_org(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Org>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::OrgRead).await?;
    Ok(Json(load_org(&state, org).await?))
}

/// Rename an org (Owner).
#[utoipa::path(patch, path = "/v1/orgs/{org}", tag = "orgs", request_body = RenameOrg, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Renamed", body = Org), (status = 403, description = "Not an Owner", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn rename_org(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<RenameOrg>,
) -> Result<Json<Org>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::OrgUpdate).await?;
    let name = display_name("name", &body.name)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let old: String = sqlx::query_scalar("SELECT name FROM orgs WHERE id = $1 FOR UPDATE")
        .bind(org)
        .fetch_one(&mut *tx)
        .await?;
    audit::record_with(
        sqlx::query("UPDATE orgs SET name = $2 WHERE id = $1")
            .bind(org)
            .bind(&name),
        Some(org),
        &access.audit,
        Event::success("org.rename", "org", org)
            .detail(serde_json::json!({"from": old, "to": name})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(load_org(&state, org).await?))
}

/// Delete an org and everything it owns (Owner). Its audit trail is kept.
#[utoipa::path(delete, path = "/v1/orgs/{org}", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 204, description = "Deleted"), (status = 403, description = "Not an Owner", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn delete_org(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::OrgDelete).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    audit::record_with(
        sqlx::query("DELETE FROM orgs WHERE id = $1").bind(org),
        Some(org),
        &access.audit,
        Event::success("org.delete", "org", org),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A member of an org.
#[derive(Debug, Serialize, ToSchema)]
pub struct Member {
    /// User id.
    pub user_id: Uuid,
    /// Email.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Role.
    pub role: Role,
    /// Member since.
    pub joined_at: chrono::DateTime<chrono::Utc>,
}

/// List an org's members and their roles.
#[utoipa::path(get, path = "/v1/orgs/{org}/members", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Members", body = Vec<Member>), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_members(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Vec<Member>>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::MembersRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let rows: Vec<(Uuid, String, String, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT u.id, u.email, u.display_name, m.role, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id \
         WHERE m.org_id = $1 ORDER BY m.created_at, u.email",
    )
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .filter_map(|(user_id, email, display_name, role, joined_at)| {
                Some(Member {
                    user_id,
                    email,
                    display_name,
                    role: Role::parse(&role)?,
                    joined_at,
                })
            })
            .collect(),
    ))
}

/// Body of a role change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    /// The new role.
    pub role: Role,
}

async fn current_role(
    tx: &mut sqlx::PgConnection,
    org: Uuid,
    user: Uuid,
) -> Result<Role, ApiError> {
    let role: Option<String> = sqlx::query_scalar(
        "SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2 FOR UPDATE",
    )
    .bind(org)
    .bind(user)
    .fetch_optional(&mut *tx)
    .await?;
    role.as_deref()
        .and_then(Role::parse)
        .ok_or_else(|| ApiError::not_found("member"))
}

/// Fails when `user` is the org's last Owner. Owners rows are locked so two concurrent
/// demotions can't both pass.
async fn ensure_not_last_owner(
    tx: &mut sqlx::PgConnection,
    org: Uuid,
    user: Uuid,
) -> Result<(), ApiError> {
    let owners: Vec<Uuid> = sqlx::query_scalar(
        "SELECT user_id FROM memberships WHERE org_id = $1 AND role = 'owner' FOR UPDATE",
    )
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    if owners == [user] {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "the last Owner can't be removed or demoted; make someone else Owner first",
        ));
    }
    Ok(())
}

/// Change a member's role. Admins manage roles below Owner; granting, changing or removing
/// Owner needs an Owner. The last Owner can't be demoted.
#[utoipa::path(patch, path = "/v1/orgs/{org}/members/{user}", tag = "orgs", request_body = ChangeRole, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("user" = Uuid, Path, description = "User id")),
    responses((status = 200, description = "Changed", body = Member), (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such org or member", body = ErrorEnvelope), (status = 409, description = "Last Owner", body = ErrorEnvelope)))]
async fn change_role(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, user)): Path<(String, String)>,
    Json(body): Json<ChangeRole>,
) -> Result<Json<Member>, ApiError> {
    let org = path_id(&org, "org")?;
    let user = path_id(&user, "member")?;
    let access = auth
        .authorize(&state, org, Permission::MembersManage)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let from = current_role(&mut tx, org, user).await?;
    if from == Role::Owner || body.role == Role::Owner {
        drop(tx);
        auth.authorize(&state, org, Permission::OwnersManage)
            .await?;
        tx = db::begin(&state.pool, &Scope::org(org)).await?;
        current_role(&mut tx, org, user).await?;
    }
    if from == Role::Owner && body.role != Role::Owner {
        ensure_not_last_owner(&mut tx, org, user).await?;
    }
    audit::record_with(
        sqlx::query("UPDATE memberships SET role = $3 WHERE org_id = $1 AND user_id = $2")
            .bind(org)
            .bind(user)
            .bind(body.role.as_str()),
        Some(org),
        &access.audit,
        Event::success("member.role_change", "user", user)
            .detail(serde_json::json!({"from": from.as_str(), "to": body.role.as_str()})),
    )?
    .execute(&mut *tx)
    .await?;
    let (email, display_name, joined_at): (String, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT u.email, u.display_name, m.created_at FROM memberships m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id = $2",
    )
    .bind(org)
    .bind(user)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(Member {
        user_id: user,
        email,
        display_name,
        role: body.role,
        joined_at,
    }))
}

/// Remove a member. Removing an Owner needs an Owner; the last Owner can't be removed.
#[utoipa::path(delete, path = "/v1/orgs/{org}/members/{user}", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("user" = Uuid, Path, description = "User id")),
    responses((status = 204, description = "Removed"), (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such org or member", body = ErrorEnvelope), (status = 409, description = "Last Owner", body = ErrorEnvelope)))]
async fn remove_member(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, user)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let user = path_id(&user, "member")?;
    let access = auth
        .authorize(&state, org, Permission::MembersManage)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let role = current_role(&mut tx, org, user).await?;
    if role == Role::Owner {
        drop(tx);
        auth.authorize(&state, org, Permission::OwnersManage)
            .await?;
        tx = db::begin(&state.pool, &Scope::org(org)).await?;
        current_role(&mut tx, org, user).await?;
        ensure_not_last_owner(&mut tx, org, user).await?;
    }
    audit::record_with(
        sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org)
            .bind(user),
        Some(org),
        &access.audit,
        Event::success("member.remove", "user", user)
            .detail(serde_json::json!({"role": role.as_str()})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
