//! Logging and metrics set-up, once per process.
//!
//! Logs are JSON lines on stderr (human format when stderr is a terminal, unless
//! `BR_OS_LOG_FORMAT` says otherwise). Metrics go to one process-wide Prometheus recorder,
//! rendered by `GET /metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Safe to call more than once (later calls are no-ops),
/// so tests and `dev` (which runs several services in one process) can all call it.
pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .try_init()
    } else {
        builder.try_init()
    };
    // An already installed subscriber (tests) is fine.
    drop(result);
}

/// Latency buckets in seconds, from sub-millisecond health checks to slow requests.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use.
///
/// When another recorder is already installed (only possible in unusual embeddings), the
/// handle still renders, but shows only what was recorded through it.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        handle
    })
}

/// Routes panics through tracing, so a panicking handler leaves one structured log line
/// (with the request id of its span) instead of raw text on stderr.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        tracing::error!(panic = %message, location = location.as_deref().unwrap_or("unknown"), "panic");
    }));
}

/// Installs the process-wide TLS crypto provider (ring, the one sqlx's TLS already uses), which
/// outgoing HTTPS clients need. Idempotent; call it before building an HTTP client.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
