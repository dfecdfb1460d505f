//! Invitations by email: single use, expiring, revocable; accepted by the invited address.

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
use crate::domain::Email;
use crate::mail;
use crate::permissions::{Permission, Role};

/// How long an invitation stays valid.
pub const INVITATION_TTL_DAYS: i32 = 7;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_invitations, create_invitation))
        .routes(routes!(revoke_invitation))
        .routes(routes!(accept_invitation))
}

/// Body of `POST /v1/orgs/{org}/invitations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Who to invite.
    pub email: String,
    /// The role they get on accepting.
    pub role: Role,
}

/// An invitation (its secret only ever travels by mail).
#[derive(Debug, Serialize, ToSchema)]
pub struct Invitation {
    /// Invitation id.
    pub id: Uuid,
    /// Org id.
    pub org_id: Uuid,
    /// Invited address.
    pub email: String,
    /// Role on accepting.
    pub role: Role,
    /// `pending`, `accepted`, `revoked` or `expired`.
    pub status: &'static str,
    /// Who invited.
    pub invited_by: Uuid,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST /v1/invitations/accept`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInvitation {
    /// The secret from the invitation mail.
    pub token: String,
}

type InvitationRow = (
    Uuid,
    Uuid,
    String,
    String,
    Uuid,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

const COLUMNS: &str =
    "id, org_id, email, role, invited_by, expires_at, accepted_at, revoked_at, created_at";

fn view(
    (id, org_id, email, role, invited_by, expires_at, accepted_at, revoked_at, created_at): InvitationRow,
) -> Option<Invitation> {
    let status = if accepted_at.is_some() {
        "accepted"
    } else if revoked_at.is_some() {
        "revoked"
    } else if expires_at <= Utc::now() {
        "expired"
    } else {
        "pending"
    };
    Some(Invitation {
        id,
        org_id,
        email,
        role: Role::parse(&role)?,
        status,
        invited_by,
        expires_at,
        created_at,
    })
}

/// Invite someone by email. Inviting an Owner needs an Owner.
#[utoipa::path(post, path = "/v1/orgs/{org}/invitations", tag = "orgs", request_body = CreateInvitation, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 201, description = "Invitation mailed", body = Invitation), (status = 400, description = "Bad email or role", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn create_invitation(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<CreateInvitation>,
) -> Result<(StatusCode, Json<Invitation>), ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::MembersManage)
        .await?;
    if body.role == Role::Owner {
        auth.authorize(&state, org, Permission::OwnersManage)
            .await?;
    }
    let email = Email::parse("email", &body.email)?;
    let Some(inviter) = auth.user_id() else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "invitations are sent by users, not service accounts",
        ));
    };
    let secret = secrets::generate(Kind::Invitation).map_err(|e| ApiError::internal(&e))?;
    let id = Uuid::now_v7();
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let org_name: String = sqlx::query_scalar("SELECT name FROM orgs WHERE id = $1")
        .bind(org)
        .fetch_one(&mut *tx)
        .await?;
    let row: InvitationRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO invitations (id, org_id, email, role, token_hash, invited_by, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(days => $7)) RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(org)
    .bind(email.as_str())
    .bind(body.role.as_str())
    .bind(secret.hash())
    .bind(inviter)
    .bind(INVITATION_TTL_DAYS)
    .fetch_one(&mut *tx)
    .await?;
    let link = format!(
        "{}/invitations/accept?token={}",
        state.public_url,
        secret.expose()
    );
    mail::enqueue(
        &mut tx,
        email.as_str(),
        &format!("You're invited to {org_name} on BuilderOS"),
        &format!(
            "You have been invited to join {org_name} on BuilderOS as {role}.\n\n\
             Accept within {INVITATION_TTL_DAYS} days: {link}\n\n\
             Or accept with the API: POST /v1/invitations/accept {{\"token\": \"{token}\"}}\n",
            role = body.role.as_str(),
            token = secret.expose(),
        ),
    )
    .await?;
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("invitation.create", "invitation", id)
            .detail(serde_json::json!({"email": email.as_str(), "role": body.role.as_str()})),
    )
    .await?;
    tx.commit().await?;
    let invitation = view(row).ok_or_else(|| ApiError::internal(&"stored role is unknown"))?;
    Ok((StatusCode::CREATED, Json(invitation)))
}

/// List an org's invitations.
#[utoipa::path(get, path = "/v1/orgs/{org}/invitations", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Invitations", body = Vec<Invitation>), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_invitations(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Vec<Invitation>>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::MembersRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let rows: Vec<InvitationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invitations WHERE org_id = $1 ORDER BY created_at DESC"
    )))
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows.into_iter().filter_map(view).collect()))
}

/// Revoke a pending invitation.
#[utoipa::path(delete, path = "/v1/orgs/{org}/invitations/{invitation}", tag = "orgs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("invitation" = Uuid, Path, description = "Invitation id")),
    responses((status = 204, description = "Revoked"), (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such invitation", body = ErrorEnvelope), (status = 409, description = "Already accepted", body = ErrorEnvelope)))]
async fn revoke_invitation(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, invitation)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let invitation = path_id(&invitation, "invitation")?;
    let access = auth
        .authorize(&state, org, Permission::MembersManage)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let accepted: Option<Option<DateTime<Utc>>> = sqlx::query_scalar(
        "SELECT accepted_at FROM invitations WHERE id = $1 AND org_id = $2 FOR UPDATE",
    )
    .bind(invitation)
    .bind(org)
    .fetch_optional(&mut *tx)
    .await?;
    match accepted {
        None => return Err(ApiError::not_found("invitation")),
        Some(Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                "the invitation was already accepted",
            ));
        }
        Some(None) => {}
    }
    audit::record_with(
        sqlx::query(
            "UPDATE invitations SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1",
        )
        .bind(invitation),
        Some(org),
        &access.audit,
        Event::success("invitation.revoke", "invitation", invitation),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Accept an invitation as the signed-in user whose email it was sent to.
#[utoipa::path(post, path = "/v1/invitations/accept", tag = "orgs", request_body = AcceptInvitation, security(("bearer" = [])),
    responses((status = 200, description = "Joined", body = Invitation), (status = 403, description = "Sent to another address", body = ErrorEnvelope),
        (status = 404, description = "Unknown invitation", body = ErrorEnvelope), (status = 409, description = "Already a member", body = ErrorEnvelope),
        (status = 410, description = "Used, revoked or expired", body = ErrorEnvelope)))]
async fn accept_invitation(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<AcceptInvitation>,
) -> Result<Json<Invitation>, ApiError> {
    let Principal::User {
        id: user,
        email: user_email,
        ..
    } = &auth.principal
    else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "invitations are accepted by signed-in users",
        ));
    };
    if !secrets::well_formed(&body.token, Kind::Invitation) {
        return Err(ApiError::not_found("invitation"));
    }
    let hash = secrets::hash(&body.token);
    let mut tx = db::begin(&state.pool, &Scope::token(&hash)).await?;
    let row: Option<InvitationRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM invitations WHERE token_hash = $1 FOR UPDATE"
    )))
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let row = row.ok_or_else(|| ApiError::not_found("invitation"))?;
    let (id, org, email, role, _, expires_at, accepted_at, revoked_at, _) = row.clone();
    if accepted_at.is_some() || revoked_at.is_some() || expires_at <= Utc::now() {
        return Err(ApiError::new(
            ErrorCode::Expired,
            "this invitation was already used, revoked or has expired",
        ));
    }
    if !email.eq_ignore_ascii_case(user_email) {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this invitation was sent to another email address",
        ));
    }
    // From here on the transaction acts inside the invitation's org.
    sqlx::query("SELECT set_config('app.org_id', $1, true)")
        .bind(org.to_string())
        .execute(&mut *tx)
        .await?;
    let joined = sqlx::query("INSERT INTO memberships (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(org)
        .bind(user)
        .bind(&role)
        .execute(&mut *tx)
        .await?;
    if joined.rows_affected() == 0 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "you are already a member of this org",
        ));
    }
    sqlx::query("UPDATE invitations SET accepted_at = now(), accepted_by = $2 WHERE id = $1")
        .bind(id)
        .bind(user)
        .execute(&mut *tx)
        .await?;
    // The invitation reached this address: it is verified now.
    audit::record_with(
        sqlx::query("UPDATE users SET email_verified = true WHERE id = $1").bind(user),
        Some(org),
        &auth.audit(),
        Event::success("invitation.accept", "invitation", id)
            .detail(serde_json::json!({"role": role, "user_id": user})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut accepted = view(row).ok_or_else(|| ApiError::internal(&"stored role is unknown"))?;
    accepted.status = "accepted";
    Ok(Json(accepted))
}
