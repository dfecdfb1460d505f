//! Processors: the one contract every step calls through, and the adapters that carry it.
//!
//! A step names its processor with a [`ProcessorRef`]: `builtin:<name>` for the in-process
//! processors, or an `http://` / `https://` base URL for a processor served over HTTP
//! (`GET <base>/healthz`, then `POST <base>/run`).
//!
//! # Layout
//! - this file: [`ProcessorRef`], [`ProcessorConfig`], [`Processors`] (the one entry point that
//!   applies CI safety, timeout and cancellation around either adapter), [`processor_digest`];
//! - [`contract`]: request, envelope, their validation and the stable `ERR_*` codes;
//! - [`builtin`]: the in-process processors;
//! - [`http`]: the HTTP adapter (health checks, `/run`);
//! - [`serve`]: the reference HTTP processor serving one builtin.

pub mod builtin;
pub mod contract;
pub mod http;
pub mod serve;

pub use contract::{ContractError, Envelope, ErrorBody, Meta, Mode, Output, Request, Usage, codes};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The builtin processors' names.
pub const BUILTIN_NAMES: &[&str] = &["echo", "sleep", "fail", "fanout"];

/// Which processor a step calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProcessorRef {
    /// An in-process processor, one of [`BUILTIN_NAMES`].
    Builtin(String),
    /// A processor served over HTTP at this base URL (no trailing slash, no query or fragment).
    Http(String),
}

/// Why a processor reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProcessorRefError(pub String);

impl ProcessorRef {
    /// Parses `builtin:<name>` or an `http(s)://host[:port][/path]` base URL.
    ///
    /// # Errors
    /// An unknown builtin, another scheme, a URL with credentials, query or fragment, or no host.
    pub fn parse(s: &str) -> Result<Self, ProcessorRefError> {
        if let Some(name) = s.strip_prefix("builtin:") {
            return if BUILTIN_NAMES.contains(&name) {
                Ok(Self::Builtin(name.to_owned()))
            } else {
                Err(ProcessorRefError(format!(
                    "unknown builtin processor `{name}` (known: {})",
                    BUILTIN_NAMES.join(", ")
                )))
            };
        }
        let url = reqwest::Url::parse(s).map_err(|e| {
            ProcessorRefError(format!("`{s}` is not `builtin:<name>` or a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must use http or https"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` has no host"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must not carry credentials"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must not have a query or fragment"
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self::Http(base))
    }

    /// True for in-process processors (always allowed).
    #[must_use]
    pub fn is_builtin(&self) -> bool {
        matches!(self, Self::Builtin(_))
    }

    /// What an org's processor allowlist matches: the origin (`scheme://host:port`) of an HTTP
    /// processor; `None` for builtins.
    #[must_use]
    pub fn allowlist_key(&self) -> Option<String> {
        match self {
            Self::Builtin(_) => None,
            Self::Http(base) => reqwest::Url::parse(base)
                .ok()
                .map(|u| u.origin().ascii_serialization()),
        }
    }
}

impl fmt::Display for ProcessorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "builtin:{name}"),
            Self::Http(base) => f.write_str(base),
        }
    }
}

impl serde::Serialize for ProcessorRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ProcessorRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How [`Processors`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessorConfig {
    /// `CI=true`: a `real` mode request fails with `ERR_CI_SAFETY` before any adapter work.
    pub ci: bool,
    /// `GET /healthz` tries before an HTTP processor is `ERR_ENDPOINT_MISSING` (at least 1).
    pub health_attempts: u32,
    /// First backoff between health checks; doubles each retry.
    pub health_backoff_base: Duration,
    /// Longest backoff between health checks.
    pub health_backoff_cap: Duration,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            ci: false,
            health_attempts: 5,
            health_backoff_base: Duration::from_millis(50),
            health_backoff_cap: Duration::from_secs(1),
        }
    }
}

impl ProcessorConfig {
    /// The defaults, with `ci` from the `CI` environment variable (`true` or `1`, any case).
    #[must_use]
    pub fn from_env() -> Self {
        let ci = std::env::var("CI")
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "true" | "1"));
        Self {
            ci,
            ..Self::default()
        }
    }
}

/// Calls processors. Cheap to clone: one HTTP client and health cache shared by every clone.
#[derive(Debug, Clone)]
pub struct Processors {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProcessorConfig,
    http: http::HttpAdapter,
}

impl Processors {
    /// Processors configured by `config`.
    #[must_use]
    pub fn new(config: ProcessorConfig) -> Self {
        let http = http::HttpAdapter::new(&config);
        Self {
            inner: Arc::new(Inner { config, http }),
        }
    }

    /// The configuration in use.
    #[must_use]
    pub fn config(&self) -> &ProcessorConfig {
        &self.inner.config
    }

    /// Runs `request` on `processor`. Never fails: every failure is an error envelope with a
    /// stable code.
    ///
    /// In order: `ERR_CI_SAFETY` (CI and `real` mode; nothing else happens),
    /// `ERR_REQUEST_INVALID`, then the adapter under `timeout` (`ERR_TIMEOUT`) and `cancel`
    /// (`ERR_CANCELLED`, noticed as soon as the token fires: the adapter's future is dropped).
    /// Builtins go through the same wire form and validation as HTTP processors, so both give
    /// byte-identical envelopes.
    pub async fn invoke(
        &self,
        processor: &ProcessorRef,
        request: &Request,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Envelope {
        let meta = adapter_meta(processor);
        let envelope = self
            .invoke_checked(processor, request, timeout, cancel, &meta)
            .await;
        let adapter = if processor.is_builtin() {
            "builtin"
        } else {
            "http"
        };
        let status = if envelope.is_success() {
            "success"
        } else {
            "error"
        };
        metrics::counter!("builderos_processor_invocations_total", "adapter" => adapter, "status" => status)
            .increment(1);
        envelope
    }

    async fn invoke_checked(
        &self,
        processor: &ProcessorRef,
        request: &Request,
        timeout: Duration,
        cancel: &CancellationToken,
        meta: &Meta,
    ) -> Envelope {
        let fail = |code: &str, message: &str| {
            Envelope::error(&request.execution_id, code, message, meta.clone())
        };
        if self.inner.config.ci && request.mode == Mode::Real {
            return fail(
                codes::CI_SAFETY,
                "real mode is refused while CI=true; run in mock mode",
            );
        }
        if let Err(e) = request.validate() {
            return e.into_envelope(&request.execution_id, meta.clone());
        }
        if cancel.is_cancelled() {
            return fail(
                codes::CANCELLED,
                "cancelled before the processor was called",
            );
        }
        let work = async {
            match processor {
                ProcessorRef::Builtin(name) => invoke_builtin(name, request, meta).await,
                ProcessorRef::Http(base) => self.inner.http.invoke(base, request, meta).await,
            }
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => fail(codes::CANCELLED, "cancelled while the processor ran"),
            result = tokio::time::timeout(timeout, work) => result.unwrap_or_else(|_| {
                fail(
                    codes::TIMEOUT,
                    &format!("no answer within the step timeout of {} ms", timeout.as_millis()),
                )
            }),
        }
    }
}

/// A builtin, carried through the wire form exactly as the HTTP adapter and [`serve`] carry it:
/// canonical request bytes parsed back, canonical envelope bytes validated for the request.
async fn invoke_builtin(name: &str, request: &Request, meta: &Meta) -> Envelope {
    let wire = match Request::parse(&request.to_canonical_bytes()) {
        Ok(wire) => wire,
        Err(e) => return e.into_envelope(&request.execution_id, meta.clone()),
    };
    let envelope = builtin::run(name, &wire).await;
    Envelope::parse_for(&envelope.to_canonical_bytes(), request)
        .unwrap_or_else(|e| e.into_envelope(&request.execution_id, meta.clone()))
}

/// The meta of envelopes the adapter itself writes (CI safety, timeout, transport errors): for
/// a builtin exactly its own meta, for an HTTP processor the same fingerprint recipe over its
/// base URL (the operator cannot know the remote environment).
fn adapter_meta(processor: &ProcessorRef) -> Meta {
    match processor {
        ProcessorRef::Builtin(name) => builtin::meta(name),
        ProcessorRef::Http(_) => Meta {
            env_fingerprint: builtin::fingerprint(&processor.to_string()),
            image_digest: None,
            usage: Usage::default(),
        },
    }
}

/// The processor digest a receipt records: for a builtin [`builtin::builtin_digest`]; for an
/// HTTP processor the envelope's `meta.image_digest` when it reports one, else the SHA-256 hex
/// of its base URL.
#[must_use]
pub fn processor_digest(processor: &ProcessorRef, envelope: &Envelope) -> String {
    match processor {
        ProcessorRef::Builtin(name) => builtin::builtin_digest(name),
        ProcessorRef::Http(base) => envelope
            .meta()
            .image_digest
            .clone()
            .unwrap_or_else(|| builderos_canon::sha256_hex(base.as_bytes())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Instant;

    fn request(mode: Mode, inputs: serde_json::Value) -> Request {
        Request {
            execution_id: "exec".into(),
            mode,
            inputs,
            write_prefix: "runs/r/s/1/".into(),
        }
    }

    fn builtin(name: &str) -> ProcessorRef {
        ProcessorRef::Builtin(name.into())
    }

    const LONG: Duration = Duration::from_secs(60);

    /// With CI=true a real request fails before anything runs; mock requests still run.
    #[tokio::test]
    async fn ci_safety_comes_first() {
        let processors = Processors::new(ProcessorConfig {
            ci: true,
            ..ProcessorConfig::default()
        });
        let cancel = CancellationToken::new();
        let real = request(Mode::Real, json!({"ms": 10_000}));
        let started = Instant::now();
        let envelope = processors
            .invoke(&builtin("sleep"), &real, LONG, &cancel)
            .await;
        assert_eq!(envelope.error_code(), Some(codes::CI_SAFETY));
        assert!(started.elapsed() < Duration::from_secs(1));
        // Even a malformed real request is refused for CI safety first.
        let mut bad = real.clone();
        bad.write_prefix = "../".into();
        let envelope = processors
            .invoke(&builtin("sleep"), &bad, LONG, &cancel)
            .await;
        assert_eq!(envelope.error_code(), Some(codes::CI_SAFETY));
        let mock = request(Mode::Mock, json!({"a": "b"}));
        assert!(
            processors
                .invoke(&builtin("echo"), &mock, LONG, &cancel)
                .await
                .is_success()
        );
    }

    /// Cancelling a running sleep answers ERR_CANCELLED within milliseconds.
    #[tokio::test]
    async fn cancel_stops_sleep() {
        let processors = Processors::new(ProcessorConfig::default());
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let req = request(Mode::Mock, json!({"ms": 60_000}));
        let envelope = processors
            .invoke(&builtin("sleep"), &req, LONG, &cancel)
            .await;
        assert_eq!(envelope.error_code(), Some(codes::CANCELLED));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        let again = processors
            .invoke(&builtin("echo"), &req, LONG, &cancel)
            .await;
        assert_eq!(again.error_code(), Some(codes::CANCELLED));
    }

    /// A builtin that outlives the step timeout answers ERR_TIMEOUT.
    #[tokio::test]
    async fn timeout_stops_sleep() {
        let processors = Processors::new(ProcessorConfig::default());
        let req = request(Mode::Mock, json!({"ms": 60_000}));
        let envelope = processors
            .invoke(
                &builtin("sleep"),
                &req,
                Duration::from_millis(30),
                &CancellationToken::new(),
            )
            .await;
        assert_eq!(envelope.error_code(), Some(codes::TIMEOUT));
        assert_eq!(envelope.meta(), &builtin::meta("sleep"));
    }

    /// A malformed request never reaches the adapter.
    #[tokio::test]
    async fn invalid_request() {
        let processors = Processors::new(ProcessorConfig::default());
        let mut req = request(Mode::Mock, json!({}));
        req.write_prefix = "no-slash".into();
        let envelope = processors
            .invoke(&builtin("echo"), &req, LONG, &CancellationToken::new())
            .await;
        assert_eq!(envelope.error_code(), Some(codes::REQUEST_INVALID));
    }

    /// Digests: builtins by name and version; HTTP by image digest, else by base URL.
    #[test]
    fn digests() {
        let meta = builtin::meta("echo");
        let plain = Envelope::error("e", "ERR_X", "m", meta.clone());
        assert_eq!(
            processor_digest(&builtin("echo"), &plain),
            builtin::builtin_digest("echo")
        );
        let http = ProcessorRef::Http("http://h:1".into());
        assert_eq!(
            processor_digest(&http, &plain),
            builderos_canon::sha256_hex(b"http://h:1")
        );
        let imaged = Envelope::error(
            "e",
            "ERR_X",
            "m",
            Meta {
                image_digest: Some("sha256:abc".into()),
                ..meta
            },
        );
        assert_eq!(processor_digest(&http, &imaged), "sha256:abc");
    }

    #[test]
    fn parses_builtins_and_urls() {
        assert_eq!(
            ProcessorRef::parse("builtin:echo"),
            Ok(ProcessorRef::Builtin("echo".into()))
        );
        assert!(ProcessorRef::parse("builtin:nope").is_err());
        let http = ProcessorRef::parse("http://127.0.0.1:8080/").expect("url");
        assert_eq!(http.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            http.allowlist_key().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in ["ftp://x", "http://u:p@h", "http://h/?q=1", "echo", ""] {
            assert!(ProcessorRef::parse(bad).is_err(), "{bad}");
        }
    }
}
