//! Starting the operator's worker from the configuration: `builderos operator` and
//! `builderos dev` run one, tests and benchmarks start as many as they need.

use std::sync::Arc;

use builderos_shared::config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::artifacts::LocalStore;
use crate::processors::{ProcessorConfig, Processors};
use crate::store;
use crate::worker::{Worker, WorkerConfig};

/// A worker running in the background.
#[derive(Debug)]
pub struct Running {
    /// The worker's id (its lease owner).
    pub worker: Uuid,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops claiming, lets running steps finish within the grace period, returns the rest to
    /// the queue, and waits for all of it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// The token whose cancellation starts the graceful shutdown.
    #[must_use]
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The worker settings `config` implies.
#[must_use]
pub fn worker_config(config: &Config) -> WorkerConfig {
    WorkerConfig {
        concurrency: config.operator_max_concurrency,
        lease: config.operator_lease,
        default_timeout: config.operator_default_timeout,
        ..WorkerConfig::default()
    }
}

/// Starts a worker on its own operator pool over `db_url` (the app role's URL).
///
/// # Errors
/// When `db_url` is not a valid PostgreSQL URL.
pub fn spawn_worker(
    config: &Config,
    db_url: &str,
    worker_config: WorkerConfig,
) -> Result<Running, sqlx::Error> {
    let connections = (worker_config.concurrency / 4).clamp(4, 32);
    let pool = store::operator_pool(db_url, connections)?;
    let processors = Processors::new(ProcessorConfig {
        ci: config.ci,
        ..ProcessorConfig::default()
    });
    let artifacts = Arc::new(LocalStore::new(config.artifacts_dir.clone()));
    let worker = Worker::new(pool, worker_config, processors, artifacts);
    let shutdown = CancellationToken::new();
    let id = worker.id();
    let task = tokio::spawn(worker.run(shutdown.clone()));
    Ok(Running {
        worker: id,
        shutdown,
        task,
    })
}
