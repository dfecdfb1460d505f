//! Sessions: one per sign-in, with an access JWT and a rotating refresh token.
//!
//! Refresh tokens are opaque (`bosr_…`), stored hashed, and single-use: each refresh spends the
//! presented token and issues a new one in the same session. Presenting a spent token again
//! means it leaked, so the whole session (every token descended from that sign-in) is revoked.

use chrono::{Duration, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::auth::secrets::{self, Kind};
use builderos_shared::http::ApiError;

/// How long a refresh token lives.
pub const REFRESH_TTL_DAYS: i64 = 30;

/// A signed-in user's view of themselves.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct UserView {
    /// User id.
    pub id: Uuid,
    /// Email (lower-cased).
    pub email: String,
    /// Whether the email address has been proven (magic link, invitation, or a provider that verified it).
    pub email_verified: bool,
    /// Display name.
    pub display_name: String,
}

/// What every successful sign-in and refresh returns.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SessionTokens {
    /// The access JWT: send as `Authorization: Bearer …`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// The refresh token: single use, rotated on every refresh.
    pub refresh_token: String,
    /// The user.
    pub user: UserView,
}

/// Loads a user's view.
///
/// # Errors
/// Database errors; 404 when the user is gone.
pub async fn user_view(conn: &mut PgConnection, user: Uuid) -> Result<UserView, ApiError> {
    let row: Option<(Uuid, String, bool, String)> = sqlx::query_as(
        "SELECT id, email, email_verified, display_name FROM users WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(user)
    .fetch_optional(&mut *conn)
    .await?;
    let (id, email, email_verified, display_name) =
        row.ok_or_else(|| ApiError::not_found("user"))?;
    Ok(UserView {
        id,
        email,
        email_verified,
        display_name,
    })
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(&e)
}

/// Starts a session for `user` inside the caller's transaction (which also records the
/// sign-in event) and returns its tokens.
///
/// # Errors
/// Database or signing errors.
pub async fn start(
    state: &AppState,
    conn: &mut PgConnection,
    user: Uuid,
    auth_method: &str,
) -> Result<SessionTokens, ApiError> {
    let session = Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, user_id, auth_method) VALUES ($1, $2, $3)")
        .bind(session)
        .bind(user)
        .bind(auth_method)
        .execute(&mut *conn)
        .await?;
    issue(state, conn, user, session).await
}

async fn issue(
    state: &AppState,
    conn: &mut PgConnection,
    user: Uuid,
    session: Uuid,
) -> Result<SessionTokens, ApiError> {
    let refresh = secrets::generate(Kind::Refresh).map_err(internal)?;
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(refresh.hash())
    .bind(session)
    .bind(Utc::now() + Duration::days(REFRESH_TTL_DAYS))
    .execute(&mut *conn)
    .await?;
    let (access_token, expires_in) = state.keys.issue(user, session).map_err(internal)?;
    Ok(SessionTokens {
        access_token,
        token_type: "Bearer",
        expires_in,
        refresh_token: refresh.expose().to_owned(),
        user: user_view(conn, user).await?,
    })
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Refreshed {
    /// New tokens.
    Tokens(SessionTokens),
    /// The token was unknown, expired, or its session had ended.
    Invalid,
    /// The token had already been spent: the session is now revoked.
    Reused {
        /// The session that was revoked.
        session: Uuid,
        /// Its user.
        user: Uuid,
    },
}

/// Spends `token` and issues the next pair, inside the caller's transaction.
///
/// # Errors
/// Database or signing errors.
pub async fn refresh(
    state: &AppState,
    conn: &mut PgConnection,
    token: &str,
) -> Result<Refreshed, ApiError> {
    if !secrets::well_formed(token, Kind::Refresh) {
        return Ok(Refreshed::Invalid);
    }
    type RefreshRow = (
        Uuid,
        Uuid,
        chrono::DateTime<Utc>,
        Option<chrono::DateTime<Utc>>,
        Option<chrono::DateTime<Utc>>,
    );
    let row: Option<RefreshRow> = sqlx::query_as(
        "SELECT r.session_id, s.user_id, r.expires_at, r.used_at, s.revoked_at \
             FROM refresh_tokens r JOIN sessions s ON s.id = r.session_id \
             WHERE r.token_hash = $1 FOR UPDATE OF r, s",
    )
    .bind(secrets::hash(token))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((session, user, expires_at, used_at, revoked_at)) = row else {
        return Ok(Refreshed::Invalid);
    };
    if used_at.is_some() {
        revoke(conn, session, "refresh_token_reuse").await?;
        return Ok(Refreshed::Reused { session, user });
    }
    if revoked_at.is_some() || expires_at <= Utc::now() {
        return Ok(Refreshed::Invalid);
    }
    let deleted: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT deleted_at FROM users WHERE id = $1")
            .bind(user)
            .fetch_one(&mut *conn)
            .await?;
    if deleted.is_some() {
        return Ok(Refreshed::Invalid);
    }
    sqlx::query("UPDATE refresh_tokens SET used_at = now() WHERE token_hash = $1")
        .bind(secrets::hash(token))
        .execute(&mut *conn)
        .await?;
    Ok(Refreshed::Tokens(issue(state, conn, user, session).await?))
}

/// Revokes one session (its access and refresh tokens stop working on the next request).
///
/// # Errors
/// Database errors.
pub async fn revoke(
    conn: &mut PgConnection,
    session: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(session)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Revokes every session of `user`; returns how many were active.
///
/// # Errors
/// Database errors.
pub async fn revoke_all(
    conn: &mut PgConnection,
    user: Uuid,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE sessions SET revoked_at = now(), revoked_reason = $2 WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user)
        .bind(reason)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected())
}
