//! Authentication (who is calling) and authorization (may they do this, in this org).
//!
//! Handlers take [`Auth`] (required credentials) or [`MaybeAuth`] (optional, but a *bad*
//! credential is still an error), and name the permission they need in one line:
//!
//! ```text
//! let access = auth.authorize(&state, org_id, Permission::ProjectsWrite).await?;
//! ```
//!
//! # Layout
//! - [`secrets`]: the recognisable secret format and hashing.
//! - [`password`]: argon2id hashing on the blocking pool.
//! - [`jwt`]: access tokens.
//! - [`throttle`]: sign-in throttling in PostgreSQL.

pub mod jwt;
pub mod password;
pub mod secrets;
pub mod throttle;

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, current_request_id};
use uuid::Uuid;

use crate::AppState;
use crate::audit::{self, Actor, AuditContext, Event, Outcome};
use crate::cache::CachedToken;
use crate::permissions::{Permission, Role};

/// Facts about the request itself, for audit events and throttling.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The request id.
    pub request_id: String,
    /// The client's address (the TCP peer).
    pub client_addr: Option<String>,
    /// The user agent.
    pub user_agent: Option<String>,
}

impl RequestMeta {
    fn from_parts(parts: &Parts) -> Self {
        Self {
            request_id: current_request_id(),
            client_addr: parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
            user_agent: parts
                .headers
                .get(axum::http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.chars().take(256).collect()),
        }
    }

    /// An audit context for `actor`.
    #[must_use]
    pub fn audit(&self, actor: Actor, auth_method: Option<&str>) -> AuditContext {
        AuditContext {
            actor,
            auth_method: auth_method.map(ToOwned::to_owned),
            request_id: Some(self.request_id.clone()),
            client_addr: self.client_addr.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A user with a session (access JWT).
    User {
        /// User id.
        id: Uuid,
        /// Email.
        email: String,
        /// Session id.
        session_id: Uuid,
        /// How the session was started.
        method: String,
    },
    /// An API token scoped to one org.
    Token {
        /// Token id.
        id: Uuid,
        /// Token name.
        name: String,
        /// The org it is scoped to.
        org_id: Uuid,
        /// Its permissions.
        permissions: Vec<Permission>,
        /// Its project, when scoped to one.
        project_id: Option<Uuid>,
        /// The user it acts for (None: a service account of the org).
        user_id: Option<Uuid>,
        /// That user's current role in the org (a token never exceeds it).
        user_role: Option<Role>,
    },
}

/// An authenticated request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// Who.
    pub principal: Principal,
    /// Request facts.
    pub meta: RequestMeta,
}

/// Optional authentication: no credentials is `None`; bad credentials are still 401.
#[derive(Debug, Clone)]
pub struct MaybeAuth(pub Option<Auth>);

/// What [`Auth::authorize`] grants: the org, the caller's role in it (users), and the audit
/// context to record changes with.
#[derive(Debug, Clone)]
pub struct OrgAccess {
    /// The org.
    pub org_id: Uuid,
    /// The caller's role (None for service-account tokens).
    pub role: Option<Role>,
    /// The token's project scope, when the caller is a project-scoped token.
    pub project_scope: Option<Uuid>,
    /// For recording events.
    pub audit: AuditContext,
}

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthenticated, message)
}

impl Auth {
    /// The acting user, if the caller is one (or a token acting for one).
    #[must_use]
    pub fn user_id(&self) -> Option<Uuid> {
        match &self.principal {
            Principal::User { id, .. } => Some(*id),
            Principal::Token { user_id, .. } => *user_id,
        }
    }

    /// The audit context of this caller.
    #[must_use]
    pub fn audit(&self) -> AuditContext {
        match &self.principal {
            Principal::User {
                id, email, method, ..
            } => self.meta.audit(
                Actor::User {
                    id: *id,
                    name: email.clone(),
                },
                Some(method),
            ),
            Principal::Token { id, name, .. } => self.meta.audit(
                Actor::Token {
                    id: *id,
                    name: name.clone(),
                },
                Some("api_token"),
            ),
        }
    }

    /// Checks that the caller may do `permission` in `org`.
    ///
    /// A caller with no standing in `org` gets 404 (another org's resources look missing); a
    /// member or token lacking the permission gets 403, and the denial is audited.
    ///
    /// # Errors
    /// 404 `ERR_NOT_FOUND`, 403 `ERR_FORBIDDEN`, or a database error.
    pub async fn authorize(
        &self,
        state: &AppState,
        org: Uuid,
        permission: Permission,
    ) -> Result<OrgAccess, ApiError> {
        let (role, granted, project_scope) = self.grant(state, org, permission).await?;
        let audit = self.audit();
        if !granted {
            let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
            audit::record(
                &mut tx,
                Some(org),
                &audit,
                Event::success("access.denied", "org", org)
                    .outcome(Outcome::Denied)
                    .detail(serde_json::json!({"permission": permission.as_str()})),
            )
            .await?;
            tx.commit().await?;
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("this action needs the `{}` permission", permission.as_str()),
            ));
        }
        Ok(OrgAccess {
            org_id: org,
            role,
            project_scope,
            audit,
        })
    }

    /// Whether the caller may do `permission` in `org`, without recording a denial (for
    /// deciding what an allowed action includes, e.g. which labels an import sets).
    ///
    /// # Errors
    /// 404 `ERR_NOT_FOUND` when the caller has no standing in `org`, database errors.
    pub async fn may(
        &self,
        state: &AppState,
        org: Uuid,
        permission: Permission,
    ) -> Result<bool, ApiError> {
        Ok(self.grant(state, org, permission).await?.1)
    }

    async fn grant(
        &self,
        state: &AppState,
        org: Uuid,
        permission: Permission,
    ) -> Result<(Option<Role>, bool, Option<Uuid>), ApiError> {
        Ok(match &self.principal {
            Principal::User { id, .. } => {
                let role = member_role(state, org, *id)
                    .await?
                    .ok_or_else(|| ApiError::not_found("org"))?;
                (Some(role), role.allows(permission), None)
            }
            Principal::Token {
                org_id,
                permissions,
                user_role,
                project_id,
                ..
            } => {
                if *org_id != org {
                    return Err(ApiError::not_found("org"));
                }
                // A user's token never exceeds the user's current role.
                let granted = permissions.contains(&permission)
                    && user_role.is_none_or(|r| r.allows(permission));
                (*user_role, granted, *project_id)
            }
        })
    }
}

/// The role of `user` in `org`, if they are a member.
///
/// # Errors
/// Database errors.
pub async fn member_role(
    state: &AppState,
    org: Uuid,
    user: Uuid,
) -> Result<Option<Role>, ApiError> {
    let mut tx = db::begin(&state.pool, &Scope::user(user)).await?;
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org)
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(role.as_deref().and_then(Role::parse))
}

fn bearer(parts: &Parts) -> Result<Option<&str>, ApiError> {
    let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(unauthenticated("expected `Authorization: Bearer <token>`")),
    }
}

async fn authenticate(parts: &Parts, state: &AppState, token: &str) -> Result<Auth, ApiError> {
    let meta = RequestMeta::from_parts(parts);
    if token.starts_with(secrets::Kind::ApiToken.prefix()) {
        return authenticate_api_token(state, token, meta).await;
    }
    let claims = state
        .keys
        .verify(token)
        .ok_or_else(|| unauthenticated("invalid or expired access token"))?;
    type SessionRow = (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        String,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let row: Option<SessionRow> =
        sqlx::query_as(
            "SELECT u.email, u.deleted_at, s.auth_method, s.revoked_at FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.user_id = $2",
        )
        .bind(claims.sid)
        .bind(claims.sub)
        .fetch_optional(&state.pool)
        .await?;
    match row {
        Some((email, None, method, None)) => Ok(Auth {
            principal: Principal::User {
                id: claims.sub,
                email,
                session_id: claims.sid,
                method,
            },
            meta,
        }),
        _ => Err(unauthenticated("the session has ended; sign in again")),
    }
}

type TokenRow = (
    Uuid,
    String,
    Uuid,
    Vec<String>,
    Option<Uuid>,
    Option<Uuid>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
    Option<chrono::DateTime<chrono::Utc>>,
);

async fn authenticate_api_token(
    state: &AppState,
    token: &str,
    meta: RequestMeta,
) -> Result<Auth, ApiError> {
    if !secrets::well_formed(token, secrets::Kind::ApiToken) {
        return Err(unauthenticated("invalid API token"));
    }
    let hash = secrets::hash(token);
    if let Some(t) = state.cache.token(&hash) {
        if t.expires_at.is_some_and(|e| e <= chrono::Utc::now()) {
            return Err(unauthenticated("the API token is revoked or expired"));
        }
        return Ok(Auth {
            principal: Principal::Token {
                id: t.id,
                name: t.name,
                org_id: t.org_id,
                permissions: t.permissions,
                project_id: t.project_id,
                user_id: t.user_id,
                user_role: t.user_role,
            },
            meta,
        });
    }
    let ticket = state.cache.ticket();
    let mut tx = db::begin(&state.pool, &Scope::token(&hash)).await?;
    let row: Option<TokenRow> = sqlx::query_as(
        "SELECT id, name, org_id, permissions, project_id, created_by, expires_at, revoked_at, last_used_at \
         FROM api_tokens WHERE token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((
        id,
        name,
        org_id,
        permissions,
        project_id,
        user_id,
        expires_at,
        revoked_at,
        last_used_at,
    )) = row
    else {
        return Err(unauthenticated("invalid API token"));
    };
    let now = chrono::Utc::now();
    if revoked_at.is_some() || expires_at.is_some_and(|e| e <= now) {
        return Err(unauthenticated("the API token is revoked or expired"));
    }
    if let Some(user) = user_id {
        let deleted: Option<Option<chrono::DateTime<chrono::Utc>>> =
            sqlx::query_scalar("SELECT deleted_at FROM users WHERE id = $1")
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
        if !matches!(deleted, Some(None)) {
            return Err(unauthenticated("the API token's user no longer exists"));
        }
    }
    // Last-used is kept to the minute: a write per request would make tokens the hot spot.
    if last_used_at.is_none_or(|t| now - t > chrono::Duration::seconds(60)) {
        let mut org_tx = tx;
        sqlx::query("SELECT set_config('app.org_id', $1, true)")
            .bind(org_id.to_string())
            .execute(&mut *org_tx)
            .await?;
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(id)
            .execute(&mut *org_tx)
            .await?;
        org_tx.commit().await?;
    } else {
        tx.commit().await?;
    }
    let user_role =
        match user_id {
            Some(user) => Some(member_role(state, org_id, user).await?.ok_or_else(|| {
                unauthenticated("the token's user is no longer a member of its org")
            })?),
            None => None,
        };
    let permissions: Vec<Permission> = permissions
        .iter()
        .filter_map(|p| Permission::parse(p))
        .collect();
    state.cache.put_token(
        ticket,
        hash,
        CachedToken {
            id,
            name: name.clone(),
            org_id,
            permissions: permissions.clone(),
            project_id,
            user_id,
            user_role,
            expires_at,
        },
    );
    Ok(Auth {
        principal: Principal::Token {
            id,
            name,
            org_id,
            permissions,
            project_id,
            user_id,
            user_role,
        },
        meta,
    })
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match bearer(parts)? {
            Some(token) => authenticate(parts, state, token).await,
            None => Err(unauthenticated("sign in or send an API token")),
        }
    }
}

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        match bearer(parts)? {
            Some(token) => Ok(Self(Some(authenticate(parts, state, token).await?))),
            None => Ok(Self(None)),
        }
    }
}
