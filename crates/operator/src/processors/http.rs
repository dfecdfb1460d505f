//! The HTTP adapter: `GET <base>/healthz` (bounded backoff with jitter, cached briefly), then
//! `POST <base>/run` with the request's canonical JSON; the answer is accepted only through
//! [`Envelope::parse_for`]. The adapter carries bytes and never re-interprets outputs.
//!
//! Timeouts and cancellation wrap the whole call in [`super::Processors::invoke`].

use super::ProcessorConfig;
use super::contract::{Envelope, Meta, Request, codes};
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// Largest `/run` answer the adapter reads (64 MiB); more is `ERR_ADAPTER_INVOCATION`.
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
/// How long a passed health check stays good: a burst of steps to one processor checks once.
pub const HEALTH_TTL: Duration = Duration::from_secs(5);
/// How long a failed health check answers for itself: steps queued behind a dead endpoint fail
/// fast instead of each waiting out the whole backoff in turn.
pub const HEALTH_FAILURE_TTL: Duration = Duration::from_secs(1);
/// Limit on one `GET /healthz`.
pub const HEALTH_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit on opening a connection to a processor.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the last health check of one base URL found.
#[derive(Debug, Default)]
enum Health {
    #[default]
    Unknown,
    Healthy {
        until: Instant,
    },
    Missing {
        until: Instant,
        message: String,
    },
}

/// One client for every HTTP processor, plus the health cache.
#[derive(Debug)]
pub(crate) struct HttpAdapter {
    /// Building can fail only on a broken TLS setup; then every HTTP call says so instead of
    /// the constructor panicking.
    client: Result<reqwest::Client, String>,
    /// One slot per base URL; its async lock makes concurrent first calls share one check.
    health: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Health>>>>,
    attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
}

impl HttpAdapter {
    pub(crate) fn new(config: &ProcessorConfig) -> Self {
        builderos_shared::telemetry::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(90))
            // The allowlist names an origin; a redirect could leave it.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("HTTP client unavailable: {e}"));
        Self {
            client,
            health: Mutex::new(HashMap::new()),
            attempts: config.health_attempts.max(1),
            backoff_base: config.health_backoff_base,
            backoff_cap: config.health_backoff_cap,
        }
    }

    /// Health check, `POST /run`, validation. Every failure is an error envelope.
    pub(crate) async fn invoke(&self, base: &str, request: &Request, meta: &Meta) -> Envelope {
        let fail = |code: &str, message: String| {
            Envelope::error(&request.execution_id, code, message, meta.clone())
        };
        let client = match &self.client {
            Ok(client) => client,
            Err(message) => return fail(codes::ADAPTER_INVOCATION, message.clone()),
        };
        if let Err(message) = self.ensure_healthy(client, base).await {
            return fail(codes::ENDPOINT_MISSING, message);
        }
        let sent = client
            .post(format!("{base}/run"))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json")
            .body(request.to_canonical_bytes())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                self.forget(base);
                return fail(
                    codes::ENDPOINT_MISSING,
                    format!("POST {base}/run: cannot connect: {e}"),
                );
            }
            Err(e) => return fail(codes::ADAPTER_INVOCATION, format!("POST {base}/run: {e}")),
        };
        let status = response.status();
        if !status.is_success() {
            return fail(
                codes::ADAPTER_INVOCATION,
                format!("POST {base}/run answered {status}"),
            );
        }
        let body = match read_limited(response).await {
            Ok(body) => body,
            Err(message) => {
                return fail(
                    codes::ADAPTER_INVOCATION,
                    format!("POST {base}/run: {message}"),
                );
            }
        };
        Envelope::parse_for(&body, request)
            .unwrap_or_else(|e| e.into_envelope(&request.execution_id, meta.clone()))
    }

    fn slot(&self, base: &str) -> Arc<tokio::sync::Mutex<Health>> {
        let mut map = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(base.to_owned()).or_default())
    }

    fn forget(&self, base: &str) {
        let mut map = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(base);
    }

    async fn ensure_healthy(&self, client: &reqwest::Client, base: &str) -> Result<(), String> {
        let slot = self.slot(base);
        let mut state = slot.lock().await;
        let now = Instant::now();
        match &*state {
            Health::Healthy { until } if *until > now => return Ok(()),
            Health::Missing { until, message } if *until > now => return Err(message.clone()),
            _ => {}
        }
        let result = self.check(client, base).await;
        *state = match &result {
            Ok(()) => Health::Healthy {
                until: Instant::now() + HEALTH_TTL,
            },
            Err(message) => Health::Missing {
                until: Instant::now() + HEALTH_FAILURE_TTL,
                message: message.clone(),
            },
        };
        result
    }

    async fn check(&self, client: &reqwest::Client, base: &str) -> Result<(), String> {
        let url = format!("{base}/healthz");
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                tokio::time::sleep(self.backoff(attempt - 1)).await;
            }
            match client
                .get(&url)
                .timeout(HEALTH_REQUEST_TIMEOUT)
                .send()
                .await
            {
                Ok(response) if response.status().is_success() => return Ok(()),
                Ok(response) => last = format!("GET /healthz answered {}", response.status()),
                Err(e) if e.is_connect() => last = format!("cannot connect: {e}"),
                Err(e) => last = format!("GET /healthz: {e}"),
            }
        }
        Err(format!(
            "no healthy processor at {base} after {} health checks ({last})",
            self.attempts
        ))
    }

    /// Exponential backoff capped at `backoff_cap`, with equal jitter: half the delay fixed,
    /// half random, so processors restarted together are not probed in lockstep.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .backoff_base
            .saturating_mul(2_u32.saturating_pow(retry))
            .min(self.backoff_cap);
        let half = exp / 2;
        let half_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        let jitter = match getrandom::u64() {
            Ok(r) if half_nanos > 0 => r % (half_nanos + 1),
            _ => 0,
        };
        half + Duration::from_nanos(jitter)
    }
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let too_big = || format!("answer is larger than {MAX_BODY_BYTES} bytes");
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
    {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(too_big());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff doubles from the base, stays under the cap, and keeps at least half its delay.
    #[test]
    fn backoff_is_bounded_with_jitter() {
        let adapter = HttpAdapter::new(&ProcessorConfig::default());
        for retry in 0..10 {
            let exp = (Duration::from_millis(50) * 2_u32.pow(retry)).min(Duration::from_secs(1));
            let delay = adapter.backoff(retry);
            assert!(delay >= exp / 2 && delay <= exp, "{retry}: {delay:?}");
        }
        assert!(adapter.backoff(u32::MAX) <= Duration::from_secs(1));
    }
}
