//! Magic-link sign-in: a single-use link by mail, valid for 15 minutes.

use axum::extract::State;
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

use crate::AppState;
use crate::audit::{self, Actor, Event, Outcome};
use crate::auth::secrets::{self, Kind};
use crate::auth::{RequestMeta, throttle};
use crate::domain::Email;
use crate::mail;
use crate::sessions::{self, SessionTokens};

/// How long a magic link stays valid.
pub const MAGIC_LINK_TTL_MINUTES: i64 = 15;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request_link))
        .routes(routes!(verify_link))
}

/// Body of `POST /v1/auth/magic-link`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MagicLinkRequest {
    /// Where to send the link.
    pub email: String,
}

/// The answer to a link request: the same whether or not an account exists.
#[derive(Debug, Serialize, ToSchema)]
pub struct MagicLinkSent {
    /// Always `sent`.
    pub status: &'static str,
    /// What happens next.
    pub message: &'static str,
}

/// Body of `POST /v1/auth/magic-link/verify`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MagicLinkVerify {
    /// The token from the mailed link.
    pub token: String,
}

/// Mail a sign-in link. The answer is the same whether or not an account exists; an unknown
/// address gets an account when the link is used (the link proves the address).
#[utoipa::path(post, path = "/v1/auth/magic-link", tag = "auth", request_body = MagicLinkRequest,
    responses(
        (status = 202, description = "A link is on its way if the address can receive mail", body = MagicLinkSent),
        (status = 400, description = "Not an email address", body = ErrorEnvelope),
        (status = 429, description = "Too many links requested", body = ErrorEnvelope)))]
async fn request_link(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<MagicLinkRequest>,
) -> Result<(StatusCode, Json<MagicLinkSent>), ApiError> {
    let email = Email::parse("email", &body.email)?;
    // Requests count against the address and the client like failed sign-ins do: a link per
    // request is cheap to ask for and costs a mail to send.
    let keys = vec![
        format!("account:magic:{}", email.as_str()),
        format!(
            "addr:magic:{}",
            meta.client_addr.as_deref().unwrap_or("unknown")
        ),
    ];
    if let Some(wait) = throttle::retry_after(&state.pool, &keys).await? {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many sign-in links requested; try again later",
        )
        .with_retry_after(wait));
    }
    throttle::record_failure(&state.pool, &keys).await?;
    let secret = secrets::generate(Kind::MagicLink).map_err(|e| ApiError::internal(&e))?;
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    sqlx::query("INSERT INTO magic_links (token_hash, email, expires_at) VALUES ($1, $2, now() + make_interval(mins => $3))")
        .bind(secret.hash())
        .bind(email.as_str())
        .bind(i32::try_from(MAGIC_LINK_TTL_MINUTES).unwrap_or(15))
        .execute(&mut *tx)
        .await?;
    let link = format!("{}/auth/magic?token={}", state.public_url, secret.expose());
    mail::enqueue(
        &mut tx,
        email.as_str(),
        "Your BuilderOS sign-in link",
        &format!(
            "Sign in to BuilderOS within {MAGIC_LINK_TTL_MINUTES} minutes: {link}\n\n\
             Or with the API: POST /v1/auth/magic-link/verify {{\"token\": \"{token}\"}}\n\n\
             The link works once. If you didn't ask for it, ignore this mail.\n",
            token = secret.expose(),
        ),
    )
    .await?;
    audit::record(
        &mut tx,
        None,
        &meta.audit(Actor::Anonymous, Some("magic_link")),
        Event {
            action: "auth.magic_link_request",
            target_type: None,
            target_id: None,
            outcome: Outcome::Success,
            detail: serde_json::json!({"email": email.as_str()}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(MagicLinkSent {
            status: "sent",
            message: "if the address can receive mail, a sign-in link is on its way; it works once, for 15 minutes",
        }),
    ))
}

/// Sign in with a magic link's token (single use). Creates the account on first use.
#[utoipa::path(post, path = "/v1/auth/magic-link/verify", tag = "auth", request_body = MagicLinkVerify,
    responses(
        (status = 200, description = "Signed in", body = SessionTokens),
        (status = 401, description = "Not a valid link", body = ErrorEnvelope),
        (status = 410, description = "Used or expired", body = ErrorEnvelope)))]
async fn verify_link(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<MagicLinkVerify>,
) -> Result<Json<SessionTokens>, ApiError> {
    let invalid = || ApiError::new(ErrorCode::Unauthenticated, "invalid sign-in link");
    if !secrets::well_formed(&body.token, Kind::MagicLink) {
        return Err(invalid());
    }
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    let row: Option<(String, DateTime<Utc>, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT email, expires_at, used_at FROM magic_links WHERE token_hash = $1 FOR UPDATE",
    )
    .bind(secrets::hash(&body.token))
    .fetch_optional(&mut *tx)
    .await?;
    let (email, expires_at, used_at) = row.ok_or_else(invalid)?;
    if used_at.is_some() || expires_at <= Utc::now() {
        return Err(ApiError::new(
            ErrorCode::Expired,
            "this sign-in link was already used or has expired; ask for a new one",
        ));
    }
    sqlx::query("UPDATE magic_links SET used_at = now() WHERE token_hash = $1")
        .bind(secrets::hash(&body.token))
        .execute(&mut *tx)
        .await?;
    let existing: Option<(Uuid, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT id, deleted_at FROM users WHERE email = $1")
            .bind(&email)
            .fetch_optional(&mut *tx)
            .await?;
    let user = match existing {
        Some((_, Some(_))) => return Err(invalid()),
        Some((id, None)) => {
            sqlx::query("UPDATE users SET email_verified = true WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            id
        }
        None => {
            let id = Uuid::now_v7();
            let name = email.split('@').next().unwrap_or("user").to_owned();
            sqlx::query("INSERT INTO users (id, email, email_verified, display_name) VALUES ($1, $2, true, $3)")
                .bind(id)
                .bind(&email)
                .bind(&name)
                .execute(&mut *tx)
                .await?;
            let ctx = meta.audit(
                Actor::User {
                    id,
                    name: email.clone(),
                },
                Some("magic_link"),
            );
            audit::record(
                &mut tx,
                None,
                &ctx,
                Event::success("user.signup", "user", id),
            )
            .await?;
            id
        }
    };
    let ctx = meta.audit(
        Actor::User {
            id: user,
            name: email.clone(),
        },
        Some("magic_link"),
    );
    audit::record(
        &mut tx,
        None,
        &ctx,
        Event::success("user.signin", "user", user),
    )
    .await?;
    let tokens = sessions::start(&state, &mut tx, user, "magic_link").await?;
    tx.commit().await?;
    Ok(Json(tokens))
}
