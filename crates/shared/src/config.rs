//! One typed configuration, read from `BR_OS_*` environment variables.
//!
//! Parsing fails fast with a message naming the bad variable; secrets (database URLs carry
//! passwords) are wrapped in [`Secret`] so that neither `Debug` nor the start-up log shows them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value whose `Debug` and `Display` never show its content.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is handed to the thing that needs it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A database URL with its password replaced by `***`, for logs.
#[must_use]
pub fn mask_db_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:***@{host}")
        }
        None => authority.to_owned(),
    };
    // Query strings may carry `password=`; drop them entirely.
    let path = tail.split('?').next().unwrap_or("");
    format!("{scheme}://{authority}{path}")
}

/// The deployment environment (`BR_OS_ENV`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// A developer's machine (the default).
    Local,
    /// A shared development deployment.
    Dev,
    /// Test runs.
    Test,
    /// Pre-production.
    Staging,
    /// Production.
    Production,
}

impl Environment {
    /// The value as written in `BR_OS_ENV`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Dev => "dev",
            Self::Test => "test",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

/// How log lines are written to stderr (`BR_OS_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines unless stderr is a terminal (the default).
    Auto,
    /// Always JSON lines.
    Json,
    /// Always human-readable.
    Pretty,
}

/// How a sign-in provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthKind {
    /// OpenID Connect: discovery, ID token verified against the provider's JWKS.
    Oidc,
    /// GitHub's OAuth2: no ID token; the verified primary email comes from its API.
    Github,
}

/// One configured sign-in provider (`BR_OS_OAUTH_<NAME>_*`).
#[derive(Debug, Clone)]
pub struct OAuthProvider {
    /// Lowercase name used in URLs (`/v1/auth/oauth/<name>/start`).
    pub name: String,
    /// `_KIND`: `oidc` (default; `github` for a provider named github).
    pub kind: OAuthKind,
    /// `_ISSUER`: the OIDC issuer (default `https://accounts.google.com` for `google`).
    pub issuer: Option<String>,
    /// `_CLIENT_ID`.
    pub client_id: String,
    /// `_CLIENT_SECRET` (optional for public clients; PKCE is always used).
    pub client_secret: Option<Secret>,
    /// `_REDIRECT_URI`: matched exactly by the provider (default
    /// `<BR_OS_PUBLIC_URL>/v1/auth/oauth/<name>/callback`).
    pub redirect_uri: String,
    /// `_AUTH_URL`, `_TOKEN_URL`, `_API_URL`: GitHub endpoints (defaults: github.com).
    pub auth_url: Option<String>,
    /// See `auth_url`.
    pub token_url: Option<String>,
    /// See `auth_url`.
    pub api_url: Option<String>,
}

fn parse_oauth(
    get: &impl Fn(&str) -> Option<String>,
    public_url: &str,
) -> Result<Vec<OAuthProvider>, ConfigError> {
    let Some(list) = get("BR_OS_OAUTH_PROVIDERS") else {
        return Ok(Vec::new());
    };
    let mut providers = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ConfigError::new(
                "BR_OS_OAUTH_PROVIDERS",
                format!("`{name}`: provider names are lowercase a-z, 0-9 and dashes"),
            ));
        }
        let prefix = format!(
            "BR_OS_OAUTH_{}_",
            name.to_ascii_uppercase().replace('-', "_")
        );
        let var = |suffix: &str| get(&format!("{prefix}{suffix}"));
        // Variable names are leaked as &'static str once per provider, at start-up only.
        let static_name = |suffix: &str| -> &'static str {
            Box::leak(format!("{prefix}{suffix}").into_boxed_str())
        };
        let kind = match var("KIND").as_deref() {
            None if name == "github" => OAuthKind::Github,
            None | Some("oidc") => OAuthKind::Oidc,
            Some("github") => OAuthKind::Github,
            Some(other) => {
                return Err(ConfigError::new(
                    static_name("KIND"),
                    format!("`{other}` is not oidc or github"),
                ));
            }
        };
        let issuer = var("ISSUER")
            .or_else(|| (name == "google").then(|| "https://accounts.google.com".to_owned()));
        if kind == OAuthKind::Oidc && issuer.is_none() {
            return Err(ConfigError::new(
                static_name("ISSUER"),
                "is required for an OIDC provider",
            ));
        }
        let client_id = var("CLIENT_ID")
            .ok_or_else(|| ConfigError::new(static_name("CLIENT_ID"), "is required"))?;
        let redirect_uri = var("REDIRECT_URI")
            .unwrap_or_else(|| format!("{public_url}/v1/auth/oauth/{name}/callback"));
        for (suffix, value) in [
            ("ISSUER", &issuer),
            ("REDIRECT_URI", &Some(redirect_uri.clone())),
            ("AUTH_URL", &var("AUTH_URL")),
            ("TOKEN_URL", &var("TOKEN_URL")),
            ("API_URL", &var("API_URL")),
        ] {
            if let Some(v) = value
                && !(v.starts_with("https://") || v.starts_with("http://"))
            {
                return Err(ConfigError::new(
                    static_name(suffix),
                    "must be an http(s) URL",
                ));
            }
        }
        providers.push(OAuthProvider {
            name: name.to_owned(),
            kind,
            issuer,
            client_id,
            client_secret: var("CLIENT_SECRET").map(Secret::new),
            redirect_uri,
            auth_url: var("AUTH_URL"),
            token_url: var("TOKEN_URL"),
            api_url: var("API_URL"),
        });
    }
    Ok(providers)
}

/// A configuration variable that is missing or malformed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {message}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it (never its value when it is a secret).
    pub message: String,
}

impl ConfigError {
    fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

/// The resolved configuration of every `builderos` command.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BR_OS_ENV`: local (default), dev, test, staging, production.
    pub env: Environment,
    /// `CI`: `true` on a CI machine. Steps in `real` mode then fail with `ERR_CI_SAFETY`
    /// before any processor is called.
    pub ci: bool,
    /// `BR_OS_DB_URL`: the app role's connection URL. Unset under `dev` means "embedded cluster".
    pub db_url: Option<Secret>,
    /// `BR_OS_MIGRATE_DB_URL`: the schema owner's URL for `migrate` (defaults to `BR_OS_DB_URL`).
    pub migrate_db_url: Option<Secret>,
    /// `BR_OS_DB_MAX_CONNECTIONS`: pool size per process (default 10).
    pub db_max_connections: u32,
    /// `BR_OS_HTTP_ADDR`: where the API listens (default 127.0.0.1:8080).
    pub http_addr: SocketAddr,
    /// `BR_OS_OPERATOR_ADDR`: where the operator's control server listens (default 127.0.0.1:8081).
    pub operator_addr: SocketAddr,
    /// `BR_OS_DATA_DIR`: the embedded cluster's home for `dev` (default `.builderos`).
    pub data_dir: PathBuf,
    /// `BR_OS_ARTIFACTS_DIR`: where run artifacts (step outputs, indexes, receipts) are kept
    /// by the local artifact store (default `<BR_OS_DATA_DIR>/artifacts`).
    pub artifacts_dir: PathBuf,
    /// `BR_OS_PG_BINDIR`: PostgreSQL server binaries to use instead of searching for them.
    pub pg_bindir: Option<PathBuf>,
    /// `BR_OS_VERSION`: the API's reported version (default: the crate version).
    pub version: String,
    /// `BR_OS_COMMIT`: the API's reported commit (default `UNKNOWN`).
    pub commit: String,
    /// `BR_OS_OPERATOR_VERSION`: the operator's reported version (default: `BR_OS_VERSION`).
    pub operator_version: String,
    /// `BR_OS_OPERATOR_COMMIT`: the operator's reported commit (default: `BR_OS_COMMIT`).
    pub operator_commit: String,
    /// `BR_OS_OPERATOR_MAX_CONCURRENCY`: steps one operator process runs at once (default 8).
    pub operator_max_concurrency: u32,
    /// `BR_OS_OPERATOR_LEASE_SECONDS`: how long a claimed step stays with an operator that
    /// stops sending heartbeats before another may take it over (default 15).
    pub operator_lease: Duration,
    /// `BR_OS_OPERATOR_DEFAULT_TIMEOUT_SECONDS`: a step's timeout when its pipeline sets none (default 300).
    pub operator_default_timeout: Duration,
    /// `BR_OS_BODY_LIMIT_BYTES`: the largest request body accepted (default 1 MiB).
    pub body_limit_bytes: usize,
    /// `BR_OS_PROMPT_MAX_SPEC_BYTES`: the largest prompt spec (YAML) accepted (default 64 KiB).
    pub prompt_max_spec_bytes: usize,
    /// `BR_OS_PROMPT_MAX_BUNDLE_BYTES`: the largest prompt bundle accepted for import
    /// (default 16 MiB).
    pub prompt_max_bundle_bytes: usize,
    /// `BR_OS_PUBLIC_URL`: the platform's external base URL, used in links sent by mail
    /// (default `http://<BR_OS_HTTP_ADDR>`).
    pub public_url: String,
    /// `BR_OS_JWT_PRIVATE_KEY`: Ed25519 PKCS#8 PEM signing access tokens. Required in
    /// production; elsewhere a per-process key is generated when unset.
    pub jwt_private_key: Option<Secret>,
    /// `BR_OS_JWT_PREVIOUS_PUBLIC_KEYS`: SPKI PEM public keys of rotated-out signing keys,
    /// concatenated; tokens they signed keep verifying until they expire.
    pub jwt_previous_public_keys: Vec<String>,
    /// `BR_OS_SMTP_URL`: the relay outgoing mail goes to (`smtp://host:port` plain,
    /// `smtp://user:pass@host:587?tls=required` STARTTLS, `smtps://user:pass@host:465` TLS).
    /// Unset outside production: mail is logged instead (links included, for development).
    pub smtp_url: Option<Secret>,
    /// `BR_OS_MAIL_FROM`: the sender of outgoing mail (default `BuilderOS <no-reply@localhost>`).
    pub mail_from: String,
    /// `BR_OS_OAUTH_PROVIDERS` and `BR_OS_OAUTH_<NAME>_*`: OAuth2/OIDC sign-in providers.
    pub oauth_providers: Vec<OAuthProvider>,
    /// `BR_OS_LOG`: a tracing filter (default `info`).
    pub log_filter: String,
    /// `BR_OS_LOG_FORMAT`: auto (default), json, pretty.
    pub log_format: LogFormat,
}

impl Config {
    /// Reads the configuration from the process environment.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable that is malformed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first variable that is malformed.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let env = match get("BR_OS_ENV").as_deref() {
            None | Some("local") => Environment::Local,
            Some("dev") => Environment::Dev,
            Some("test") => Environment::Test,
            Some("staging") => Environment::Staging,
            Some("production") => Environment::Production,
            Some(other) => {
                return Err(ConfigError::new(
                    "BR_OS_ENV",
                    format!("`{other}` is not one of local, dev, test, staging, production"),
                ));
            }
        };
        let db_url = get("BR_OS_DB_URL").map(Secret::new);
        if let Some(url) = &db_url {
            check_db_url("BR_OS_DB_URL", url)?;
        }
        let migrate_db_url = get("BR_OS_MIGRATE_DB_URL").map(Secret::new);
        if let Some(url) = &migrate_db_url {
            check_db_url("BR_OS_MIGRATE_DB_URL", url)?;
        }
        let version = get("BR_OS_VERSION").unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned());
        let commit = get("BR_OS_COMMIT").unwrap_or_else(|| "UNKNOWN".to_owned());
        let log_format = match get("BR_OS_LOG_FORMAT").as_deref() {
            None | Some("auto") => LogFormat::Auto,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::new(
                    "BR_OS_LOG_FORMAT",
                    format!("`{other}` is not one of auto, json, pretty"),
                ));
            }
        };
        let http_addr = parse_addr(&get, "BR_OS_HTTP_ADDR", "127.0.0.1:8080")?;
        let public_url = get("BR_OS_PUBLIC_URL").unwrap_or_else(|| format!("http://{http_addr}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(ConfigError::new(
                "BR_OS_PUBLIC_URL",
                "must start with http:// or https://",
            ));
        }
        let jwt_private_key =
            get("BR_OS_JWT_PRIVATE_KEY").map(|k| Secret::new(k.replace("\\n", "\n")));
        if env == Environment::Production && jwt_private_key.is_none() {
            return Err(ConfigError::new(
                "BR_OS_JWT_PRIVATE_KEY",
                "is required in production (an Ed25519 PKCS#8 PEM key shared by every API replica)",
            ));
        }
        let jwt_previous_public_keys = get("BR_OS_JWT_PREVIOUS_PUBLIC_KEYS")
            .map(|all| split_pems(&all.replace("\\n", "\n")))
            .unwrap_or_default();
        let smtp_url = get("BR_OS_SMTP_URL").map(Secret::new);
        if let Some(url) = &smtp_url
            && !(url.expose().starts_with("smtp://") || url.expose().starts_with("smtps://"))
        {
            return Err(ConfigError::new(
                "BR_OS_SMTP_URL",
                "must be an smtp:// or smtps:// URL",
            ));
        }
        if env == Environment::Production && smtp_url.is_none() {
            return Err(ConfigError::new(
                "BR_OS_SMTP_URL",
                "is required in production (magic links and invitations are sent by mail)",
            ));
        }
        let public_url = public_url.trim_end_matches('/').to_owned();
        let oauth_providers = parse_oauth(&get, &public_url)?;
        Ok(Self {
            env,
            ci: get("CI").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
            oauth_providers,
            smtp_url,
            mail_from: get("BR_OS_MAIL_FROM")
                .unwrap_or_else(|| "BuilderOS <no-reply@localhost>".to_owned()),
            public_url,
            jwt_private_key,
            jwt_previous_public_keys,
            db_url,
            migrate_db_url,
            db_max_connections: parse_num(&get, "BR_OS_DB_MAX_CONNECTIONS", 10, 1, 1000)?,
            http_addr,
            operator_addr: parse_addr(&get, "BR_OS_OPERATOR_ADDR", "127.0.0.1:8081")?,
            artifacts_dir: get("BR_OS_ARTIFACTS_DIR").map_or_else(
                || {
                    get("BR_OS_DATA_DIR")
                        .map_or_else(|| PathBuf::from(".builderos"), PathBuf::from)
                        .join("artifacts")
                },
                PathBuf::from,
            ),
            data_dir: get("BR_OS_DATA_DIR")
                .map_or_else(|| PathBuf::from(".builderos"), PathBuf::from),
            pg_bindir: get("BR_OS_PG_BINDIR").map(PathBuf::from),
            operator_version: get("BR_OS_OPERATOR_VERSION").unwrap_or_else(|| version.clone()),
            operator_commit: get("BR_OS_OPERATOR_COMMIT").unwrap_or_else(|| commit.clone()),
            version,
            commit,
            operator_max_concurrency: parse_num(
                &get,
                "BR_OS_OPERATOR_MAX_CONCURRENCY",
                8,
                1,
                10_000,
            )?,
            operator_lease: Duration::from_secs(
                parse_num(&get, "BR_OS_OPERATOR_LEASE_SECONDS", 15, 1, 3600)?.into(),
            ),
            operator_default_timeout: Duration::from_secs(
                parse_num(
                    &get,
                    "BR_OS_OPERATOR_DEFAULT_TIMEOUT_SECONDS",
                    300,
                    1,
                    7 * 24 * 3600,
                )?
                .into(),
            ),
            body_limit_bytes: usize::try_from(parse_num(
                &get,
                "BR_OS_BODY_LIMIT_BYTES",
                1024 * 1024,
                1024,
                u32::MAX,
            )?)
            .unwrap_or(usize::MAX),
            prompt_max_spec_bytes: usize::try_from(parse_num(
                &get,
                "BR_OS_PROMPT_MAX_SPEC_BYTES",
                64 * 1024,
                1024,
                16 * 1024 * 1024,
            )?)
            .unwrap_or(usize::MAX),
            prompt_max_bundle_bytes: usize::try_from(parse_num(
                &get,
                "BR_OS_PROMPT_MAX_BUNDLE_BYTES",
                16 * 1024 * 1024,
                1024,
                1024 * 1024 * 1024,
            )?)
            .unwrap_or(usize::MAX),
            log_filter: get("BR_OS_LOG").unwrap_or_else(|| "info".to_owned()),
            log_format,
        })
    }

    /// The app database URL, required by `serve`, `operator` and `migrate`.
    ///
    /// # Errors
    /// A [`ConfigError`] on `BR_OS_DB_URL` when it is unset.
    pub fn require_db_url(&self) -> Result<&Secret, ConfigError> {
        self.db_url.as_ref().ok_or_else(|| {
            ConfigError::new(
                "BR_OS_DB_URL",
                "is required (e.g. postgres://builderos_api:PASSWORD@db:5432/builderos); \
                 `builderos dev` runs without it on an embedded database",
            )
        })
    }

    /// The URL `migrate` connects with: `BR_OS_MIGRATE_DB_URL`, else `BR_OS_DB_URL`.
    ///
    /// # Errors
    /// A [`ConfigError`] when neither is set.
    pub fn require_migrate_db_url(&self) -> Result<&Secret, ConfigError> {
        match &self.migrate_db_url {
            Some(url) => Ok(url),
            None => self.require_db_url(),
        }
    }

    /// Logs the resolved configuration once, secrets masked.
    pub fn log_resolved(&self, command: &str) {
        tracing::info!(
            command,
            env = self.env.as_str(),
            ci = self.ci,
            db_url = self.db_url.as_ref().map(|u| mask_db_url(u.expose())).as_deref().unwrap_or("(embedded)"),
            migrate_db_url = self.migrate_db_url.as_ref().map(|u| mask_db_url(u.expose())).as_deref().unwrap_or("(BR_OS_DB_URL)"),
            db_max_connections = self.db_max_connections,
            http_addr = %self.http_addr,
            operator_addr = %self.operator_addr,
            data_dir = %self.data_dir.display(),
            artifacts_dir = %self.artifacts_dir.display(),
            version = %self.version,
            commit = %self.commit,
            operator_version = %self.operator_version,
            operator_commit = %self.operator_commit,
            operator_max_concurrency = self.operator_max_concurrency,
            operator_lease_seconds = self.operator_lease.as_secs(),
            operator_default_timeout_seconds = self.operator_default_timeout.as_secs(),
            body_limit_bytes = self.body_limit_bytes,
            public_url = %self.public_url,
            jwt_private_key = if self.jwt_private_key.is_some() { "***" } else { "(generated per process)" },
            jwt_previous_public_keys = self.jwt_previous_public_keys.len(),
            smtp_url = self.smtp_url.as_ref().map(|u| mask_db_url(u.expose())).as_deref().unwrap_or("(none: mail is logged)"),
            mail_from = %self.mail_from,
            oauth_providers = ?self.oauth_providers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            "configuration resolved"
        );
    }
}

fn split_pems(all: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in all.lines() {
        current.push_str(line.trim());
        current.push('\n');
        if line.trim().starts_with("-----END") {
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

fn check_db_url(var: &'static str, url: &Secret) -> Result<(), ConfigError> {
    let value = url.expose();
    if value.starts_with("postgres://") || value.starts_with("postgresql://") {
        Ok(())
    } else {
        Err(ConfigError::new(
            var,
            "must be a postgres:// or postgresql:// URL",
        ))
    }
}

fn parse_addr(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: &str,
) -> Result<SocketAddr, ConfigError> {
    let raw = get(var).unwrap_or_else(|| default.to_owned());
    raw.parse()
        .map_err(|_| ConfigError::new(var, format!("`{raw}` is not an ip:port address")))
}

fn parse_num(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.trim().parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(ConfigError::new(
            var,
            format!("`{raw}` is not a whole number between {min} and {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// With nothing set, every value has its documented default.
    #[test]
    fn defaults() {
        let c = config(&[]).expect("defaults parse");
        assert_eq!(c.env, Environment::Local);
        assert_eq!(c.http_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(c.operator_addr.to_string(), "127.0.0.1:8081");
        assert_eq!(c.commit, "UNKNOWN");
        assert_eq!(c.operator_commit, "UNKNOWN");
        assert_eq!(c.operator_max_concurrency, 8);
        assert_eq!(c.operator_default_timeout, Duration::from_secs(300));
        assert_eq!(c.data_dir, PathBuf::from(".builderos"));
        assert!(c.db_url.is_none());
    }

    /// A malformed variable is named in the error, and secrets are not echoed.
    #[test]
    fn errors_name_the_variable() {
        let e = config(&[("BR_OS_HTTP_ADDR", "nonsense")]).expect_err("bad addr");
        assert_eq!(e.var, "BR_OS_HTTP_ADDR");
        let e = config(&[("BR_OS_OPERATOR_MAX_CONCURRENCY", "0")]).expect_err("zero");
        assert_eq!(e.var, "BR_OS_OPERATOR_MAX_CONCURRENCY");
        let e = config(&[("BR_OS_ENV", "prod")]).expect_err("bad env");
        assert_eq!(e.var, "BR_OS_ENV");
        let e = config(&[("BR_OS_DB_URL", "mysql://u:hunter2@h/db")]).expect_err("bad url");
        assert_eq!(e.var, "BR_OS_DB_URL");
        assert!(!e.to_string().contains("hunter2"));
    }

    /// Operator version and commit fall back to the API's.
    #[test]
    fn operator_identity_falls_back() {
        let c = config(&[("BR_OS_VERSION", "1.2.3"), ("BR_OS_COMMIT", "abc")]).expect("parse");
        assert_eq!(c.operator_version, "1.2.3");
        assert_eq!(c.operator_commit, "abc");
        let c = config(&[
            ("BR_OS_OPERATOR_VERSION", "9"),
            ("BR_OS_OPERATOR_COMMIT", "def"),
        ])
        .expect("parse");
        assert_eq!(c.operator_version, "9");
        assert_eq!(c.operator_commit, "def");
    }

    /// OAuth providers parse with defaults and fail naming the variable.
    #[test]
    fn oauth_providers() {
        let c = config(&[
            ("BR_OS_OAUTH_PROVIDERS", "google, github, corp-sso"),
            ("BR_OS_OAUTH_GOOGLE_CLIENT_ID", "g"),
            ("BR_OS_OAUTH_GITHUB_CLIENT_ID", "h"),
            ("BR_OS_OAUTH_CORP_SSO_CLIENT_ID", "c"),
            ("BR_OS_OAUTH_CORP_SSO_ISSUER", "https://sso.example.com"),
            ("BR_OS_OAUTH_CORP_SSO_CLIENT_SECRET", "s3cret"),
        ])
        .expect("parse");
        let names: Vec<(&str, OAuthKind)> = c
            .oauth_providers
            .iter()
            .map(|p| (p.name.as_str(), p.kind))
            .collect();
        assert_eq!(
            names,
            vec![
                ("google", OAuthKind::Oidc),
                ("github", OAuthKind::Github),
                ("corp-sso", OAuthKind::Oidc)
            ]
        );
        assert_eq!(
            c.oauth_providers[0].issuer.as_deref(),
            Some("https://accounts.google.com")
        );
        assert_eq!(
            c.oauth_providers[2].redirect_uri,
            "http://127.0.0.1:8080/v1/auth/oauth/corp-sso/callback"
        );
        assert!(!format!("{c:?}").contains("s3cret"));
        let e = config(&[
            ("BR_OS_OAUTH_PROVIDERS", "corp"),
            ("BR_OS_OAUTH_CORP_CLIENT_ID", "c"),
        ])
        .expect_err("issuer");
        assert_eq!(e.var, "BR_OS_OAUTH_CORP_ISSUER");
        let e = config(&[("BR_OS_OAUTH_PROVIDERS", "Corp")]).expect_err("name");
        assert_eq!(e.var, "BR_OS_OAUTH_PROVIDERS");
    }

    /// Passwords never reach the log form of a URL, nor `Debug`.
    #[test]
    fn masking() {
        assert_eq!(
            mask_db_url("postgres://app:hunter2@db:5432/builderos?sslmode=require&password=x"),
            "postgres://app:***@db:5432/builderos"
        );
        let c = config(&[("BR_OS_DB_URL", "postgres://app:hunter2@db/x")]).expect("parse");
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
