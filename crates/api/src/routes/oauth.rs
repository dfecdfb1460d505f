//! OAuth2/OIDC sign-in: authorization code with PKCE (S256), `state` and `nonce`.

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use builderos_shared::config::{OAuthKind, OAuthProvider};
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json};
use chrono::{DateTime, Utc};
use oauth2::{CsrfToken, PkceCodeChallenge};
use serde::Deserialize;
use sqlx::PgConnection;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::audit::{self, Actor, Event, Outcome};
use crate::auth::{RequestMeta, secrets};
use crate::domain::Email;
use crate::oidc::OidcError;
use crate::sessions::{self, SessionTokens};

/// How long a started flow may take.
const FLOW_TTL_MINUTES: i32 = 10;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start))
        .routes(routes!(callback))
}

fn provider<'a>(state: &'a AppState, name: &str) -> Result<&'a OAuthProvider, ApiError> {
    state
        .oauth
        .provider(name)
        .ok_or_else(|| ApiError::not_found("sign-in provider"))
}

fn unavailable(e: &OidcError) -> ApiError {
    tracing::warn!(error = %e, "sign-in provider failed");
    ApiError::new(
        ErrorCode::Unavailable,
        "the sign-in provider is unavailable; try again later",
    )
}

/// Start signing in with a provider: redirects to it with PKCE (S256), `state` and `nonce`.
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "A configured provider name")),
    responses((status = 302, description = "Redirect to the provider"), (status = 404, description = "No such provider", body = ErrorEnvelope),
        (status = 503, description = "The provider is unreachable", body = ErrorEnvelope)))]
async fn start(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let provider = provider(&state, &name)?;
    let (authorize, _) = state
        .oauth
        .endpoints(provider)
        .await
        .map_err(|e| unavailable(&e))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let csrf = CsrfToken::new_random();
    let nonce = CsrfToken::new_random();
    let scope = match provider.kind {
        OAuthKind::Oidc => "openid email profile",
        OAuthKind::Github => "read:user user:email",
    };
    let url = oauth2::url::Url::parse_with_params(
        &authorize,
        &[
            ("response_type", "code"),
            ("client_id", provider.client_id.as_str()),
            ("redirect_uri", provider.redirect_uri.as_str()),
            ("scope", scope),
            ("state", csrf.secret().as_str()),
            ("nonce", nonce.secret().as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ],
    )
    .map_err(|e| ApiError::internal(&e))?;
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    sqlx::query(
        "INSERT INTO oauth_flows (state_hash, provider, pkce_verifier, nonce, redirect_uri, expires_at) \
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(mins => $6))",
    )
    .bind(secrets::hash(csrf.secret()))
    .bind(&provider.name)
    .bind(verifier.secret())
    .bind(nonce.secret())
    .bind(&provider.redirect_uri)
    .bind(FLOW_TTL_MINUTES)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM oauth_flows WHERE expires_at < now() - interval '1 day'")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, url.to_string()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response())
}

/// The provider's redirect back.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackParams {
    /// The authorization code.
    pub code: Option<String>,
    /// The state sent on start.
    pub state: Option<String>,
    /// An OAuth error from the provider.
    pub error: Option<String>,
}

/// A verified identity from a provider.
struct Identity {
    subject: String,
    email: Option<String>,
    verified: bool,
    name: Option<String>,
}

/// Finish signing in: checks `state`, redeems the code with the PKCE verifier, verifies the ID
/// token (signature through the provider's JWKS, issuer, audience, expiry, nonce), then signs
/// in the linked account, links an existing one only through a verified email, or creates one.
#[utoipa::path(get, path = "/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "A configured provider name"), CallbackParams),
    responses((status = 200, description = "Signed in", body = SessionTokens),
        (status = 401, description = "Bad state, code or ID token", body = ErrorEnvelope),
        (status = 403, description = "The email matches an account but isn't verified by the provider", body = ErrorEnvelope),
        (status = 404, description = "No such provider", body = ErrorEnvelope)))]
async fn callback(
    State(state): State<AppState>,
    meta: RequestMeta,
    Path(name): Path<String>,
    Query(params): Query<CallbackParams>,
) -> Result<Json<SessionTokens>, ApiError> {
    let provider = provider(&state, &name)?.clone();
    let method = format!("oauth:{}", provider.name);
    let fail = |reason: &str| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            format!("sign-in with {} failed: {reason}", provider.name),
        )
    };
    if let Some(error) = params.error.as_deref() {
        record_failure(&state, &meta, &method, "provider_error").await?;
        return Err(fail(&format!(
            "the provider answered `{}`",
            error.chars().take(64).collect::<String>()
        )));
    }
    let (Some(code), Some(csrf)) = (params.code.as_deref(), params.state.as_deref()) else {
        return Err(fail("missing code or state"));
    };
    // The state is single use: claim it before talking to the provider.
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    type FlowRow = (String, String, String, DateTime<Utc>, Option<DateTime<Utc>>);
    let flow: Option<FlowRow> = sqlx::query_as(
        "SELECT provider, pkce_verifier, nonce, expires_at, used_at FROM oauth_flows WHERE state_hash = $1 FOR UPDATE",
    )
    .bind(secrets::hash(csrf))
    .fetch_optional(&mut *tx)
    .await?;
    let Some((flow_provider, verifier, nonce, expires_at, used_at)) = flow else {
        drop(tx);
        record_failure(&state, &meta, &method, "unknown_state").await?;
        return Err(fail("unknown state"));
    };
    if flow_provider != provider.name || used_at.is_some() || expires_at <= Utc::now() {
        drop(tx);
        record_failure(&state, &meta, &method, "stale_state").await?;
        return Err(fail(
            "the sign-in attempt was already used or has expired; start again",
        ));
    }
    sqlx::query("UPDATE oauth_flows SET used_at = now() WHERE state_hash = $1")
        .bind(secrets::hash(csrf))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    let identity = match identify(&state, &provider, code, &verifier, &nonce).await {
        Ok(identity) => identity,
        Err(OidcError::Provider(e)) => {
            tracing::warn!(provider = %provider.name, error = %e, "code exchange failed");
            record_failure(&state, &meta, &method, "exchange_failed").await?;
            return Err(fail("the provider did not accept the code"));
        }
        Err(OidcError::Token(e)) => {
            tracing::warn!(provider = %provider.name, error = %e, "ID token rejected");
            record_failure(&state, &meta, &method, "id_token_rejected").await?;
            return Err(fail("the ID token did not verify"));
        }
    };

    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    let user = resolve_user(&mut tx, &provider, &identity, &meta, &method).await?;
    let Some(user) = user else {
        drop(tx);
        record_failure(
            &state,
            &meta,
            &method,
            "unverified_email_for_existing_account",
        )
        .await?;
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "an account with this email exists, but the provider has not verified the email; sign in another way and link from there",
        ));
    };
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE id = $1")
        .bind(user)
        .fetch_one(&mut *tx)
        .await?;
    audit::record(
        &mut tx,
        None,
        &meta.audit(
            Actor::User {
                id: user,
                name: email,
            },
            Some(&method),
        ),
        Event::success("user.signin", "user", user),
    )
    .await?;
    let tokens = sessions::start(&state, &mut tx, user, &method).await?;
    tx.commit().await?;
    Ok(Json(tokens))
}

async fn record_failure(
    state: &AppState,
    meta: &RequestMeta,
    method: &str,
    reason: &str,
) -> Result<(), ApiError> {
    let mut tx = db::begin(&state.pool, &Scope::default()).await?;
    audit::record(
        &mut tx,
        None,
        &meta.audit(Actor::Anonymous, Some(method)),
        Event {
            action: "user.signin",
            target_type: None,
            target_id: None,
            outcome: Outcome::Failure,
            detail: serde_json::json!({"reason": reason}),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn identify(
    state: &AppState,
    provider: &OAuthProvider,
    code: &str,
    verifier: &str,
    nonce: &str,
) -> Result<Identity, OidcError> {
    let tokens = state.oauth.exchange(provider, code, verifier).await?;
    match provider.kind {
        OAuthKind::Oidc => {
            let id_token = tokens
                .id_token
                .ok_or_else(|| OidcError::Token("no id_token in the token response".into()))?;
            let claims = state
                .oauth
                .verify_id_token(provider, &id_token, nonce)
                .await?;
            Ok(Identity {
                verified: claims.verified(),
                subject: claims.sub,
                email: claims.email,
                name: claims.name,
            })
        }
        OAuthKind::Github => {
            let access = tokens
                .access_token
                .ok_or_else(|| OidcError::Provider("no access_token".into()))?;
            let api = provider
                .api_url
                .clone()
                .unwrap_or_else(|| "https://api.github.com".to_owned());
            #[derive(Deserialize)]
            struct GhUser {
                id: i64,
                name: Option<String>,
                login: String,
            }
            #[derive(Deserialize)]
            struct GhEmail {
                email: String,
                primary: bool,
                verified: bool,
            }
            let get = |path: &str| {
                state
                    .oauth
                    .http()
                    .get(format!("{}{path}", api.trim_end_matches('/')))
                    .bearer_auth(&access)
                    .header(reqwest::header::ACCEPT, "application/vnd.github+json")
                    .send()
            };
            let user: GhUser = get("/user")
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| OidcError::Provider(format!("/user: {e}")))?
                .json()
                .await
                .map_err(|e| OidcError::Provider(format!("/user: {e}")))?;
            let emails: Vec<GhEmail> = get("/user/emails")
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| OidcError::Provider(format!("/user/emails: {e}")))?
                .json()
                .await
                .map_err(|e| OidcError::Provider(format!("/user/emails: {e}")))?;
            let primary = emails.into_iter().find(|e| e.primary);
            Ok(Identity {
                subject: user.id.to_string(),
                verified: primary.as_ref().is_some_and(|e| e.verified),
                email: primary.map(|e| e.email),
                name: user.name.or(Some(user.login)),
            })
        }
    }
}

/// The account for `identity`: the linked one; else an existing account with the same email
/// only if the provider verified it (`None` when it didn't); else a new account.
async fn resolve_user(
    conn: &mut PgConnection,
    provider: &OAuthProvider,
    identity: &Identity,
    meta: &RequestMeta,
    method: &str,
) -> Result<Option<Uuid>, ApiError> {
    let linked: Option<Uuid> = sqlx::query_scalar(
        "SELECT i.user_id FROM user_identities i JOIN users u ON u.id = i.user_id WHERE i.provider = $1 AND i.subject = $2 AND u.deleted_at IS NULL",
    )
    .bind(&provider.name)
    .bind(&identity.subject)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(user) = linked {
        return Ok(Some(user));
    }
    let email = identity
        .email
        .as_deref()
        .map(|e| Email::parse("email", e))
        .transpose()
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the provider returned an unusable email address",
            )
        })?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the provider did not share an email address",
            )
        })?;
    let existing: Option<(Uuid, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT id, deleted_at FROM users WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(&mut *conn)
            .await?;
    let user = match existing {
        Some((_, Some(_))) => {
            return Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "this account has been deleted",
            ));
        }
        Some((_, None)) if !identity.verified => return Ok(None),
        Some((id, None)) => {
            sqlx::query("UPDATE users SET email_verified = true WHERE id = $1")
                .bind(id)
                .execute(&mut *conn)
                .await?;
            id
        }
        None if !identity.verified => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the provider has not verified this email address",
            ));
        }
        None => {
            let id = Uuid::now_v7();
            let name = identity
                .name
                .clone()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| {
                    email
                        .as_str()
                        .split('@')
                        .next()
                        .unwrap_or("user")
                        .to_owned()
                });
            let name: String = name.chars().filter(|c| !c.is_control()).take(100).collect();
            sqlx::query("INSERT INTO users (id, email, email_verified, display_name) VALUES ($1, $2, true, $3)")
                .bind(id)
                .bind(email.as_str())
                .bind(&name)
                .execute(&mut *conn)
                .await?;
            let ctx = meta.audit(
                Actor::User {
                    id,
                    name: email.as_str().to_owned(),
                },
                Some(method),
            );
            audit::record(
                &mut *conn,
                None,
                &ctx,
                Event::success("user.signup", "user", id),
            )
            .await?;
            id
        }
    };
    sqlx::query(
        "INSERT INTO user_identities (provider, subject, user_id, email) VALUES ($1, $2, $3, $4)",
    )
    .bind(&provider.name)
    .bind(&identity.subject)
    .bind(user)
    .bind(email.as_str())
    .execute(&mut *conn)
    .await?;
    let ctx = meta.audit(
        Actor::User {
            id: user,
            name: email.as_str().to_owned(),
        },
        Some(method),
    );
    audit::record(
        &mut *conn,
        None,
        &ctx,
        Event::success("user.identity_link", "user", user)
            .detail(serde_json::json!({"provider": provider.name})),
    )
    .await?;
    Ok(Some(user))
}
