//! What the api and operator crates both need, and nothing one crate alone uses.
//!
//! # Layout
//! - [`error`]: the `ErrorCode` list and its HTTP status mapping.
//! - [`config`]: the typed `BR_OS_*` configuration.
//! - [`telemetry`]: JSON logs to stderr, the Prometheus recorder, the panic hook.
//! - [`db`]: the app's pool, migrations, the readiness probe.
//! - [`pg`]: the embedded PostgreSQL cluster used by `builderos dev` and the tests.
//! - [`http`]: the error envelope, JSON extractor, request middleware, control endpoints.

pub mod config;
pub mod db;
pub mod error;
pub mod http;
pub mod pg;
pub mod telemetry;

pub use builderos_canon as canon;
