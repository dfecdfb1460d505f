//! Sign-up, sign-in, refresh, sign-out and `/v1/me`.

use axum::extract::State;
use axum::http::StatusCode;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{self, Actor, Event, Outcome};
use crate::auth::password::{self, Verified};
use crate::auth::{Auth, Principal, RequestMeta, throttle};
use crate::domain::{Email, display_name};
use crate::permissions::Role;
use crate::sessions::{self, Refreshed, SessionTokens, UserView};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup))
        .routes(routes!(signin))
        .routes(routes!(refresh))
        .routes(routes!(signout))
        .routes(routes!(signout_all))
        .routes(routes!(me))
}

/// Sign-up body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignUp {
    /// Email address (case-insensitive, unique).
    pub email: String,
    /// 12 to 1024 bytes.
    pub password: String,
    /// How others see you.
    pub display_name: String,
}

/// Sign-in body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    /// Email address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Refresh body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token from the last sign-in or refresh.
    pub refresh_token: String,
}

const BAD_CREDENTIALS: &str = "invalid email or password";

/// Create an account with email and password; returns a session.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignUp,
    responses(
        (status = 201, description = "Account created and signed in", body = SessionTokens),
        (status = 400, description = "Malformed email, name or password", body = builderos_shared::http::ErrorEnvelope),
        (status = 409, description = "An account with this email exists", body = builderos_shared::http::ErrorEnvelope)))]
async fn signup(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<SignUp>,
) -> Result<(StatusCode, Json<SessionTokens>), ApiError> {
    let email = Email::parse("email", &body.email)?;
    let name = display_name("display_name", &body.display_name)?;
    password::check_policy(&body.password).map_err(ApiError::inputs)?;
    let hash = password::hash(body.password)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let user = Uuid::now_v7();
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    let inserted = sqlx::query(
        "INSERT INTO users (id, email, display_name, password_hash) VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING",
    )
    .bind(user)
    .bind(email.as_str())
    .bind(&name)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            "an account with this email already exists; sign in instead",
        ));
    }
    let ctx = meta.audit(
        Actor::User {
            id: user,
            name: email.as_str().to_owned(),
        },
        Some("password"),
    );
    audit::record(
        &mut tx,
        None,
        &ctx,
        Event::success("user.signup", "user", user),
    )
    .await?;
    let tokens = sessions::start(&state, &mut tx, user, "password").await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}

/// Sign in with email and password.
///
/// Unknown email and wrong password answer identically; repeated failures per account or per
/// client address answer 429 with `Retry-After`.
#[utoipa::path(post, path = "/v1/auth/signin", tag = "auth", request_body = SignIn,
    responses(
        (status = 200, description = "Signed in", body = SessionTokens),
        (status = 401, description = "Invalid email or password", body = builderos_shared::http::ErrorEnvelope),
        (status = 429, description = "Too many failed attempts", body = builderos_shared::http::ErrorEnvelope)))]
async fn signin(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<SignIn>,
) -> Result<Json<SessionTokens>, ApiError> {
    // A malformed email can't belong to an account: same answer as a wrong password.
    let Ok(email) = Email::parse("email", &body.email) else {
        return Err(ApiError::new(ErrorCode::Unauthenticated, BAD_CREDENTIALS));
    };
    let keys = throttle::keys(email.as_str(), meta.client_addr.as_deref());
    if let Some(wait) = throttle::retry_after(&state.pool, &keys).await? {
        return Err(ApiError::new(
            ErrorCode::RateLimited,
            "too many failed sign-in attempts; try again later",
        )
        .with_retry_after(wait));
    }
    if body.password.len() > password::MAX_LEN {
        return Err(ApiError::new(ErrorCode::Unauthenticated, BAD_CREDENTIALS));
    }
    let row: Option<(Uuid, Option<String>)> = sqlx::query_as(
        "SELECT id, password_hash FROM users WHERE email = $1 AND deleted_at IS NULL",
    )
    .bind(email.as_str())
    .fetch_optional(&state.pool)
    .await?;
    let (user, stored) = match row {
        Some((id, hash)) => (Some(id), hash),
        None => (None, None),
    };
    let verified = password::verify(body.password, stored)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    let (user, rehash) = match (user, verified) {
        (Some(user), Verified::Yes) => (user, None),
        (Some(user), Verified::YesRehashed(new)) => (user, Some(new)),
        _ => {
            let ctx = meta.audit(Actor::Anonymous, Some("password"));
            audit::record(
                &mut tx,
                None,
                &ctx,
                Event::success("user.signin", "user", email.as_str())
                    .outcome(Outcome::Failure)
                    .detail(serde_json::json!({"reason": "bad_credentials"})),
            )
            .await?;
            tx.commit().await?;
            throttle::record_failure(&state.pool, &keys).await?;
            return Err(ApiError::new(ErrorCode::Unauthenticated, BAD_CREDENTIALS));
        }
    };
    if let Some(new) = rehash {
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user)
            .bind(new)
            .execute(&mut *tx)
            .await?;
    }
    let ctx = meta.audit(
        Actor::User {
            id: user,
            name: email.as_str().to_owned(),
        },
        Some("password"),
    );
    audit::record(
        &mut tx,
        None,
        &ctx,
        Event::success("user.signin", "user", user),
    )
    .await?;
    let tokens = sessions::start(&state, &mut tx, user, "password").await?;
    tx.commit().await?;
    throttle::clear_account(&state.pool, email.as_str()).await?;
    Ok(Json(tokens))
}

/// Exchange a refresh token for a new access token and refresh token.
///
/// Each refresh token works once. Presenting a spent one revokes its whole session.
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses(
        (status = 200, description = "New tokens", body = SessionTokens),
        (status = 401, description = "Invalid, expired or reused refresh token", body = builderos_shared::http::ErrorEnvelope)))]
async fn refresh(
    State(state): State<AppState>,
    meta: RequestMeta,
    Json(body): Json<RefreshBody>,
) -> Result<Json<SessionTokens>, ApiError> {
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    match sessions::refresh(&state, &mut tx, &body.refresh_token).await? {
        Refreshed::Tokens(tokens) => {
            tx.commit().await?;
            Ok(Json(tokens))
        }
        Refreshed::Reused { session, user } => {
            let ctx = meta.audit(Actor::Anonymous, Some("refresh_token"));
            audit::record(
                &mut tx,
                None,
                &ctx,
                Event::success("session.revoke", "session", session)
                    .outcome(Outcome::Success)
                    .detail(serde_json::json!({"reason": "refresh_token_reuse", "user_id": user})),
            )
            .await?;
            tx.commit().await?;
            Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "refresh token already used; the session has been revoked",
            ))
        }
        Refreshed::Invalid => Err(ApiError::new(
            ErrorCode::Unauthenticated,
            "invalid or expired refresh token",
        )),
    }
}

fn session_of(auth: &Auth) -> Result<(Uuid, Uuid), ApiError> {
    match &auth.principal {
        Principal::User { id, session_id, .. } => Ok((*id, *session_id)),
        Principal::Token { .. } => Err(ApiError::new(
            ErrorCode::Forbidden,
            "API tokens have no session; revoke the token instead",
        )),
    }
}

/// End the current session.
#[utoipa::path(post, path = "/v1/auth/signout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Signed out"), (status = 401, description = "Not signed in", body = builderos_shared::http::ErrorEnvelope)))]
async fn signout(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    let (_user, session) = session_of(&auth)?;
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    sessions::revoke(&mut tx, session, "signout").await?;
    audit::record(
        &mut tx,
        None,
        &auth.audit(),
        Event::success("session.revoke", "session", session),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// End every session of the signed-in user, on every device.
#[utoipa::path(post, path = "/v1/auth/signout-all", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "Every session ended"), (status = 401, description = "Not signed in", body = builderos_shared::http::ErrorEnvelope)))]
async fn signout_all(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    let (user, _session) = session_of(&auth)?;
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    let count = sessions::revoke_all(&mut tx, user, "signout_all").await?;
    audit::record(
        &mut tx,
        None,
        &auth.audit(),
        Event::success("session.revoke_all", "user", user)
            .detail(serde_json::json!({"sessions": count})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One org the user belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct MyOrg {
    /// Org id.
    pub id: Uuid,
    /// Org slug.
    pub slug: String,
    /// Org name.
    pub name: String,
    /// The user's role there.
    pub role: Role,
    /// The permissions that role holds.
    pub permissions: Vec<String>,
}

/// `GET /v1/me`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Me {
    /// The user.
    pub user: UserView,
    /// Their orgs and roles.
    pub orgs: Vec<MyOrg>,
}

/// The signed-in user with their orgs and roles.
#[utoipa::path(get, path = "/v1/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, description = "You", body = Me), (status = 401, description = "Not signed in", body = builderos_shared::http::ErrorEnvelope)))]
async fn me(State(state): State<AppState>, auth: Auth) -> Result<Json<Me>, ApiError> {
    let Some(user) = auth.user_id() else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "service-account tokens have no user",
        ));
    };
    let mut tx = db::begin(&state.pool, &Scope::user(user)).await?;
    let me = sessions::user_view(&mut tx, user).await?;
    let rows: Vec<(Uuid, String, String, String)> = sqlx::query_as(
        "SELECT o.id, o.slug, o.name, m.role FROM memberships m JOIN orgs o ON o.id = m.org_id \
         WHERE m.user_id = $1 ORDER BY o.slug",
    )
    .bind(user)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let orgs = rows
        .into_iter()
        .filter_map(|(id, slug, name, role)| {
            let role = Role::parse(&role)?;
            Some(MyOrg {
                id,
                slug,
                name,
                role,
                permissions: role
                    .permissions()
                    .iter()
                    .map(|p| p.as_str().to_owned())
                    .collect(),
            })
        })
        .collect();
    Ok(Json(Me { user: me, orgs }))
}
