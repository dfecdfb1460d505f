//! OAuth2/OIDC providers: discovery and JWKS (cached per process, refreshed on an unknown
//! `kid`), the code exchange, and ID token verification.
//!
//! The ID token's signature is checked against the provider's JWKS with the algorithm the
//! key declares — asymmetric algorithms only (`none` and HMAC can't be forced through the
//! token's header) — and `iss` (exact), `aud` (our client id), `exp` and `nonce` are checked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use builderos_shared::config::{OAuthKind, OAuthProvider};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::RwLock;

/// Why a sign-in with a provider failed; logged, and answered as 401.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider couldn't be reached or answered nonsense.
    #[error("provider unavailable: {0}")]
    Provider(String),
    /// The ID token failed verification.
    #[error("ID token rejected: {0}")]
    Token(String),
}

/// What discovery tells us.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    /// Must equal the configured issuer.
    pub issuer: String,
    /// Where the browser goes.
    pub authorization_endpoint: String,
    /// Where codes are redeemed.
    pub token_endpoint: String,
    /// The signing keys.
    pub jwks_uri: String,
}

#[derive(Debug)]
struct Cached {
    metadata: Metadata,
    jwks: JwkSet,
}

/// The verified claims we use.
#[derive(Debug, Clone, Deserialize)]
pub struct IdClaims {
    /// The provider's stable user id.
    pub sub: String,
    /// Email, if shared.
    pub email: Option<String>,
    /// Whether the provider verified that email.
    #[serde(default)]
    pub email_verified: Option<serde_json::Value>,
    /// Display name.
    pub name: Option<String>,
    /// Must equal the nonce we sent.
    pub nonce: Option<String>,
}

impl IdClaims {
    /// `email_verified` as a boolean (some providers send the string "true").
    #[must_use]
    pub fn verified(&self) -> bool {
        matches!(&self.email_verified, Some(serde_json::Value::Bool(true)))
            || matches!(&self.email_verified, Some(serde_json::Value::String(s)) if s == "true")
    }
}

/// The token endpoint's answer.
#[derive(Debug, Deserialize)]
pub struct TokenResponse {
    /// For GitHub's API.
    pub access_token: Option<String>,
    /// For OIDC.
    pub id_token: Option<String>,
    /// An OAuth error code.
    pub error: Option<String>,
}

/// The configured providers and their cached metadata.
pub struct OAuth {
    providers: HashMap<String, OAuthProvider>,
    http: reqwest::Client,
    cache: RwLock<HashMap<String, Arc<Cached>>>,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

const ALLOWED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl OAuth {
    /// The providers of `config`.
    ///
    /// # Errors
    /// When the HTTP client can't be built.
    pub fn new(providers: &[OAuthProvider]) -> Result<Self, OidcError> {
        builderos_shared::telemetry::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("builderos")
            .build()
            .map_err(|e| OidcError::Provider(e.to_string()))?;
        Ok(Self {
            providers: providers
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
            http,
            cache: RwLock::new(HashMap::new()),
        })
    }

    /// A configured provider.
    #[must_use]
    pub fn provider(&self, name: &str) -> Option<&OAuthProvider> {
        self.providers.get(name)
    }

    /// The HTTP client (GitHub's API calls).
    #[must_use]
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn load(&self, provider: &OAuthProvider) -> Result<Arc<Cached>, OidcError> {
        let issuer = provider
            .issuer
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let metadata: Metadata = self
            .http
            .get(format!("{issuer}/.well-known/openid-configuration"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OidcError::Provider(format!("discovery: {e}")))?
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("discovery document: {e}")))?;
        if metadata.issuer.trim_end_matches('/') != issuer {
            return Err(OidcError::Provider(format!(
                "discovery names issuer {} instead of {issuer}",
                metadata.issuer
            )));
        }
        let jwks: JwkSet = self
            .http
            .get(&metadata.jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OidcError::Provider(format!("JWKS: {e}")))?
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("JWKS document: {e}")))?;
        let cached = Arc::new(Cached { metadata, jwks });
        self.cache
            .write()
            .await
            .insert(provider.name.clone(), Arc::clone(&cached));
        Ok(cached)
    }

    async fn cached(&self, provider: &OAuthProvider) -> Result<Arc<Cached>, OidcError> {
        if let Some(c) = self.cache.read().await.get(&provider.name) {
            return Ok(Arc::clone(c));
        }
        self.load(provider).await
    }

    /// The authorization and token endpoints of `provider`.
    ///
    /// # Errors
    /// Discovery failures.
    pub async fn endpoints(&self, provider: &OAuthProvider) -> Result<(String, String), OidcError> {
        match provider.kind {
            OAuthKind::Github => Ok((
                provider
                    .auth_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/authorize".to_owned()),
                provider
                    .token_url
                    .clone()
                    .unwrap_or_else(|| "https://github.com/login/oauth/access_token".to_owned()),
            )),
            OAuthKind::Oidc => {
                let c = self.cached(provider).await?;
                Ok((
                    c.metadata.authorization_endpoint.clone(),
                    c.metadata.token_endpoint.clone(),
                ))
            }
        }
    }

    /// Redeems `code` (with the PKCE verifier) at the token endpoint.
    ///
    /// # Errors
    /// Transport errors, or the provider's OAuth error.
    pub async fn exchange(
        &self,
        provider: &OAuthProvider,
        code: &str,
        verifier: &str,
    ) -> Result<TokenResponse, OidcError> {
        let (_, token_endpoint) = self.endpoints(provider).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", provider.redirect_uri.as_str()),
            ("code_verifier", verifier),
            ("client_id", provider.client_id.as_str()),
        ];
        if let Some(secret) = &provider.client_secret {
            form.push(("client_secret", secret.expose()));
        }
        let response: TokenResponse = self
            .http
            .post(token_endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Provider(format!("token endpoint: {e}")))?
            .json()
            .await
            .map_err(|e| OidcError::Provider(format!("token response: {e}")))?;
        if let Some(error) = &response.error {
            return Err(OidcError::Provider(format!(
                "token endpoint refused the code: {error}"
            )));
        }
        Ok(response)
    }

    /// Verifies an ID token from `provider` for the `nonce` we sent.
    ///
    /// # Errors
    /// [`OidcError::Token`] naming what failed.
    pub async fn verify_id_token(
        &self,
        provider: &OAuthProvider,
        token: &str,
        nonce: &str,
    ) -> Result<IdClaims, OidcError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| OidcError::Token(format!("header: {e}")))?;
        if !ALLOWED.contains(&header.alg) {
            return Err(OidcError::Token(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .clone()
            .ok_or_else(|| OidcError::Token("no kid".into()))?;
        let mut cached = self.cached(provider).await?;
        if cached.jwks.find(&kid).is_none() {
            // Keys rotate: refetch once.
            cached = self.load(provider).await?;
        }
        let jwk = cached
            .jwks
            .find(&kid)
            .ok_or_else(|| OidcError::Token(format!("unknown key {kid}")))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Token(format!("key: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[
            provider.issuer.as_deref().unwrap_or_default(),
            cached.metadata.issuer.as_str(),
        ]);
        validation.set_audience(&[provider.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|e| OidcError::Token(e.to_string()))?
            .claims;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(OidcError::Token("nonce does not match".into()));
        }
        Ok(claims)
    }
}
