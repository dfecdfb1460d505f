//! A worker: claims jobs in batches, runs each step through its processor, writes outputs,
//! index and receipt to the artifact store, and records results in batches.
//!
//! One worker per `builderos operator` process; several processes share the queue safely
//! (claims lock rows with `SKIP LOCKED`, a step's completion counts once). Tasks:
//! - the claim loop (wakes on `builderos_jobs` notifications, polls as a fallback),
//! - one task per running step,
//! - the completer, which records finished attempts in batches,
//! - the heartbeat, which extends leases and stops steps of cancelled runs,
//! - the cron scheduler and the queue gauges.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::artifacts::ArtifactStore;
use crate::pipeline::{self, Definition, OnFailure, Step};
use crate::processors::Processors;
use crate::processors::contract::{Envelope, Mode, Request};
use crate::receipt::{Attempt, OutputIndex, Receipt};
use crate::store::{self, Claimed, StepContext};

/// Outputs up to this size (valid UTF-8) can be referenced by later steps' inputs.
pub const MAX_REFERENCEABLE_OUTPUT: usize = 16 * 1024;

/// Error codes after which a step is not retried: retrying cannot help.
const FINAL_CODES: &[&str] = &[
    "ERR_CANCELLED",
    "ERR_CI_SAFETY",
    "ERR_PROCESSOR_NOT_ALLOWED",
    "ERR_PIPELINE_INPUT_REF",
    "ERR_PROCESSOR_INPUTS",
];

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Steps this process runs at once (`BR_OS_OPERATOR_MAX_CONCURRENCY`).
    pub concurrency: u32,
    /// Most jobs claimed per round trip.
    pub batch: u32,
    /// Most results recorded per round trip.
    pub complete_batch: usize,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    /// An org's concurrency limit when it has not set one.
    pub default_org_limit: u32,
    /// How often an idle worker looks for jobs without a notification.
    pub poll: Duration,
    /// How long a graceful shutdown waits for running steps before returning them to the queue.
    pub shutdown_grace: Duration,
    /// Whether this process runs the cron scheduler.
    pub cron: bool,
    /// A step's timeout when its pipeline sets none.
    pub default_timeout: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 8,
            batch: 512,
            complete_batch: 256,
            lease: Duration::from_secs(15),
            default_org_limit: 16,
            poll: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            cron: true,
            default_timeout: Duration::from_secs(300),
        }
    }
}

/// A step attempt's result, waiting to be recorded.
struct Completion {
    job: i64,
    /// The result item for `operator_complete`, as JSON text.
    item: String,
    /// Whether the attempt stored artifacts (which must be synced before it is recorded).
    stored: bool,
    /// A dropped or no-op job: deleting its row is its record.
    noop: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A dropped or no-op job's completion: deleting the job is its record.
fn noop(job: i64, permit: Option<OwnedSemaphorePermit>) -> Completion {
    Completion {
        job,
        item: format!(r#"{{"job":{job},"noop":true}}"#),
        stored: false,
        noop: true,
        _permit: permit,
    }
}

#[derive(Debug)]
struct InFlight {
    run: Option<Uuid>,
    cancel: CancellationToken,
}

/// The worker of one operator process.
#[derive(Debug, Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: Uuid,
    pool: PgPool,
    config: WorkerConfig,
    processors: Processors,
    artifacts: Arc<dyn ArtifactStore>,
    slots: Arc<Semaphore>,
    inflight: Mutex<HashMap<i64, InFlight>>,
    snapshots: Mutex<HashMap<Uuid, Arc<Definition>>>,
    wake: Notify,
    check_cancel: Notify,
}

impl Worker {
    /// A worker over the operator's pool (see [`store::operator_pool`]).
    #[must_use]
    pub fn new(
        pool: PgPool,
        config: WorkerConfig,
        processors: Processors,
        artifacts: Arc<dyn ArtifactStore>,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency.max(1) as usize));
        Self {
            inner: Arc::new(Inner {
                id: Uuid::now_v7(),
                pool,
                config,
                processors,
                artifacts,
                slots,
                inflight: Mutex::new(HashMap::new()),
                snapshots: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                check_cancel: Notify::new(),
            }),
        }
    }

    /// This worker's id (the lease owner it writes).
    #[must_use]
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// Runs until `shutdown` fires, then stops claiming, waits up to the grace period for
    /// running steps, returns the rest to the queue and records what finished.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = self.inner;
        let (tx, rx) = mpsc::unbounded_channel::<Completion>();
        let stop_aux = CancellationToken::new();
        let completer = tokio::spawn(completer(inner.clone(), rx));
        let listener = tokio::spawn(listen(inner.clone(), stop_aux.clone()));
        let heartbeat = tokio::spawn(heartbeat(inner.clone(), stop_aux.clone()));
        let gauges = tokio::spawn(gauges(inner.clone(), stop_aux.clone()));
        let cron = inner
            .config
            .cron
            .then(|| tokio::spawn(crate::scheduler::run(inner.pool.clone(), stop_aux.clone())));
        tracing::info!(worker = %inner.id, concurrency = inner.config.concurrency, "operator worker started");

        // Two claim loops: while one's claim runs, the other's waits on the claim lock in the
        // database, so claims follow each other without a round trip between them.
        tokio::join!(
            claim_loop(&inner, &tx, &shutdown),
            claim_loop(&inner, &tx, &shutdown)
        );

        // Graceful shutdown: no more claims; give running steps the grace period.
        let deadline = Instant::now() + inner.config.shutdown_grace;
        while inflight_count(&inner) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<(i64, CancellationToken)> = lock(&inner.inflight)
            .iter()
            .map(|(id, f)| (*id, f.cancel.clone()))
            .collect();
        if !left.is_empty() {
            let ids: Vec<i64> = left.iter().map(|(id, _)| *id).collect();
            match store::release(&inner.pool, inner.id, &ids).await {
                Ok(n) => tracing::info!(released = n, "returned unfinished steps to the queue"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not return steps; their leases will expire")
                }
            }
            for (_, cancel) in left {
                cancel.cancel();
            }
        }
        drop(tx);
        let _ = completer.await;
        stop_aux.cancel();
        let _ = listener.await;
        let _ = heartbeat.await;
        let _ = gauges.await;
        if let Some(cron) = cron {
            let _ = cron.await;
        }
        tracing::info!(worker = %inner.id, "operator worker stopped");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn inflight_count(inner: &Inner) -> usize {
    lock(&inner.inflight).len()
}

async fn claim_loop(
    inner: &Arc<Inner>,
    tx: &mpsc::UnboundedSender<Completion>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        // Wait for at least one free slot.
        let first = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = inner.slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let mut permits = vec![first];
        while permits.len() < inner.config.batch as usize {
            match inner.slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let want = u32::try_from(permits.len()).unwrap_or(u32::MAX);
        let claimed = store::claim(
            &inner.pool,
            inner.id,
            want,
            inner.config.lease,
            inner.config.default_org_limit,
        )
        .await;
        let (jobs, expired) = match claimed {
            Ok(r) => {
                backoff = Duration::from_millis(50);
                r
            }
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                drop(permits);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        if expired > 0 {
            metrics::counter!("builderos_operator_lease_expiries_total").increment(expired);
            tracing::warn!(expired, "took back jobs whose lease expired");
        }
        if jobs.is_empty() {
            drop(permits);
            if expired > 0 {
                // A call that takes leases back claims nothing: claim again at once.
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = inner.wake.notified() => {}
                () = tokio::time::sleep(inner.config.poll) => {}
            }
            continue;
        }
        if jobs.len() == permits.len() {
            // A full batch: there may be more, so the other loop looks too.
            inner.wake.notify_one();
        }
        permits.truncate(jobs.len());
        dispatch(inner, tx, jobs, permits).await;
    }
}

async fn dispatch(
    inner: &Arc<Inner>,
    tx: &mpsc::UnboundedSender<Completion>,
    jobs: Vec<Claimed>,
    mut permits: Vec<OwnedSemaphorePermit>,
) {
    let mut steps = Vec::new();
    for job in jobs {
        let permit = permits.pop();
        if job.kind == "noop" {
            metrics::counter!("builderos_operator_jobs_started_total", "org" => job.org_id.to_string()).increment(1);
            let _ = tx.send(noop(job.job_id, permit));
        } else {
            steps.push((job, permit));
        }
    }
    if steps.is_empty() {
        return;
    }
    let ids: Vec<i64> = steps.iter().map(|(j, _)| j.job_id).collect();
    // The claim is kept meanwhile: the leases protect the jobs while the database is away.
    let contexts = until_ok("marking steps started", || {
        store::started(&inner.pool, &ids)
    })
    .await;
    let mut by_job: HashMap<i64, StepContext> =
        contexts.into_iter().map(|c| (c.job_id, c)).collect();
    let missing: Vec<Uuid> = {
        let cache = lock(&inner.snapshots);
        let mut runs: Vec<Uuid> = by_job
            .values()
            .map(|c| c.run_id)
            .filter(|r| !cache.contains_key(r))
            .collect();
        runs.sort_unstable();
        runs.dedup();
        runs
    };
    if !missing.is_empty() {
        let rows = until_ok("loading run snapshots", || {
            store::snapshots(&inner.pool, &missing)
        })
        .await;
        let mut cache = lock(&inner.snapshots);
        if cache.len() > 10_000 {
            cache.clear();
        }
        for (run, snapshot) in rows {
            match serde_json::from_value::<Definition>(snapshot.0) {
                Ok(def) => {
                    cache.insert(run, Arc::new(def));
                }
                Err(e) => tracing::error!(run = %run, error = %e, "unreadable run snapshot"),
            }
        }
    }
    for (job, permit) in steps {
        let Some(ctx) = by_job.remove(&job.job_id) else {
            // The run is gone: drop the job.
            let _ = tx.send(noop(job.job_id, permit));
            continue;
        };
        let def = lock(&inner.snapshots).get(&ctx.run_id).cloned();
        let cancel = CancellationToken::new();
        lock(&inner.inflight).insert(
            job.job_id,
            InFlight {
                run: Some(ctx.run_id),
                cancel: cancel.clone(),
            },
        );
        let inner = inner.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let (item, stored) = match execute(&inner, &ctx, def.as_deref(), &cancel).await {
                Ok(item) => (item, true),
                Err(item) => (item, false),
            };
            metrics::histogram!("builderos_operator_step_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let _ = tx.send(Completion {
                job: ctx.job_id,
                item,
                stored,
                noop: false,
                _permit: permit,
            });
        });
    }
}

/// Retries a database call every 200 ms until it succeeds (while the jobs it is for are held
/// under their leases).
async fn until_ok<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                tracing::warn!(error = %e, "{what} failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Runs one step attempt and returns its result item for `operator_complete` (JSON text): `Ok`
/// for a success, which stored artifacts, `Err` for a failure, which stored none.
async fn execute(
    inner: &Inner,
    ctx: &StepContext,
    def: Option<&Definition>,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let org = ctx.org_id.to_string();
    metrics::counter!("builderos_operator_jobs_started_total", "org" => org.clone()).increment(1);
    let started_at = Utc::now();
    let execution_id = Uuid::now_v7().to_string();
    let write_prefix = format!("runs/{}/{}/{}/", ctx.run_id, ctx.step_id, ctx.attempt);
    let step = def.and_then(|d| d.step(&ctx.step_id));
    let (Some(def), Some(step)) = (def, step) else {
        return Err(failed_item(
            ctx,
            None,
            &execution_id,
            started_at,
            "ERR_INTERNAL",
            "the run's definition snapshot lacks this step",
            None,
        ));
    };
    if !matches!(ctx.state.as_str(), "queued" | "running") {
        return Err(failed_item(
            ctx,
            Some((def, step)),
            &execution_id,
            started_at,
            "ERR_CANCELLED",
            "the run is no longer active",
            None,
        ));
    }
    let mode = if ctx.mode == "real" {
        Mode::Real
    } else {
        Mode::Mock
    };
    let run_inputs = ctx.inputs.0.as_object().cloned().unwrap_or_default();
    let outputs: BTreeMap<String, BTreeMap<String, String>> =
        serde_json::from_value(ctx.outputs.0.clone()).unwrap_or_default();
    let inputs = match pipeline::resolve_inputs(step, &run_inputs, &outputs) {
        Ok(v) => v,
        Err(e) => {
            return Err(failed_item(
                ctx,
                Some((def, step)),
                &execution_id,
                started_at,
                e.code,
                &e.message,
                None,
            ));
        }
    };
    if let Some(origin) = step.processor.allowlist_key() {
        let allowed = loop {
            match store::is_allowed(&inner.pool, ctx.org_id, &origin).await {
                Ok(allowed) => break allowed,
                Err(e) if cancel.is_cancelled() => {
                    tracing::debug!(error = %e, "allowlist check abandoned: cancelled");
                    break false;
                }
                Err(e) => {
                    // The lease holds the job while the database is away.
                    tracing::warn!(error = %e, "checking the processor allowlist failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        if !allowed {
            let (code, message) = if cancel.is_cancelled() {
                ("ERR_CANCELLED", "the run is no longer active".to_owned())
            } else {
                (
                    "ERR_PROCESSOR_NOT_ALLOWED",
                    format!("the org has not allowed the processor {origin}"),
                )
            };
            return Err(failed_item(
                ctx,
                Some((def, step)),
                &execution_id,
                started_at,
                code,
                &message,
                None,
            ));
        }
    }
    let request = Request {
        execution_id: execution_id.clone(),
        mode,
        inputs: inputs.clone(),
        write_prefix: write_prefix.clone(),
    };
    let envelope = inner
        .processors
        .invoke(
            &step.processor,
            &request,
            step.timeout.unwrap_or(inner.config.default_timeout),
            cancel,
        )
        .await;
    let finished_at = Utc::now();
    let receipt = Receipt::from_envelope(
        &Attempt {
            run_id: ctx.run_id,
            step_id: &ctx.step_id,
            attempt: u32::try_from(ctx.attempt).unwrap_or(0),
            processor: &step.processor,
            request: &request,
            started_at,
            finished_at,
        },
        &envelope,
    );
    // Stored as receipt.json and recorded in the database: serialized once.
    let receipt_bytes: Arc<[u8]> = receipt.to_canonical_bytes().into();
    let org_id = ctx.org_id;
    match &envelope {
        Envelope::Success {
            outputs,
            index_path,
            ..
        } => {
            let store = inner.artifacts.clone();
            let receipt_file = receipt_bytes.clone();
            let files: OutputFiles = outputs
                .iter()
                .filter_map(|o| decode(&o.content).map(|b| (o.path.clone(), b)))
                .collect();
            let index_bytes = OutputIndex::from_envelope(&envelope).to_canonical_bytes();
            let index_path = index_path.clone();
            let receipt_path = format!("{write_prefix}receipt.json");
            // The store's quick writes (small blobs to a local segment) are done right here: a
            // hand-off to a blocking thread would cost more than the write.
            let size = files.iter().map(|(_, b)| b.len()).sum::<usize>()
                + index_bytes.len()
                + receipt_file.len();
            let write = move || {
                store_attempt_files(
                    store.as_ref(),
                    org_id,
                    files,
                    (&index_path, &index_bytes),
                    (&receipt_path, &receipt_file),
                )
            };
            let written = if inner.artifacts.puts_quickly(org_id, size as u64) {
                // (a panic here must not lose the step: it fails, as under spawn_blocking)
                Ok(
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(write)).unwrap_or_else(
                        |_| Err(std::io::Error::other("the artifact store panicked")),
                    ),
                )
            } else {
                tokio::task::spawn_blocking(write).await
            };
            let (stored, files) = match written {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    return Err(failed_item(
                        ctx,
                        Some((def, step)),
                        &execution_id,
                        started_at,
                        "ERR_ARTIFACT_STORE",
                        &format!("writing outputs failed: {e}"),
                        Some(&receipt_bytes),
                    ));
                }
                Err(e) => {
                    return Err(failed_item(
                        ctx,
                        Some((def, step)),
                        &execution_id,
                        started_at,
                        "ERR_INTERNAL",
                        &format!("the writer task failed: {e}"),
                        Some(&receipt_bytes),
                    ));
                }
            };
            let mut refs = serde_json::Map::new();
            for (path, bytes) in files {
                // (text without NUL, which PostgreSQL's jsonb can't hold)
                if bytes.len() <= MAX_REFERENCEABLE_OUTPUT
                    && !bytes.contains(&0)
                    && let (Some(name), Ok(text)) =
                        (path.strip_prefix(&write_prefix), String::from_utf8(bytes))
                {
                    refs.insert(name.to_owned(), Value::String(text));
                }
            }
            metrics::counter!("builderos_operator_jobs_succeeded_total", "org" => org).increment(1);
            tracing::info!(org = %ctx.org_id, run = %ctx.run_id, step = %ctx.step_id, attempt = ctx.attempt, status = "succeeded", "step finished");
            let item = json!({
                "job": ctx.job_id,
                "run": ctx.run_id,
                "org": ctx.org_id,
                "step": ctx.step_id,
                "attempt": ctx.attempt,
                "execution_id": execution_id,
                "status": "succeeded",
                "outputs": refs,
                "started_at": started_at,
                "finished_at": finished_at,
                "dependents": def.dependents(&ctx.step_id),
                "artifacts": stored,
                // (unused by a success; a stand-in failure needs it, see `stand_in_item`)
                "on_failure": on_failure_name(&step.on_failure),
            });
            Ok(with_receipt(&item, &receipt_bytes))
        }
        Envelope::Error { error, .. } => Err(failed_item(
            ctx,
            Some((def, step)),
            &execution_id,
            started_at,
            &error.code,
            &error.message,
            Some(&receipt_bytes),
        )),
    }
}

/// An attempt's output files: path and bytes.
type OutputFiles = Vec<(String, Vec<u8>)>;

/// Stores one attempt's files — its outputs, the index (written when there are outputs: it
/// duplicates the receipt's outputs list) and the receipt — and returns the `artifacts` items
/// for `operator_complete` with the outputs' bytes.
fn store_attempt_files(
    store: &dyn ArtifactStore,
    org: Uuid,
    files: OutputFiles,
    index: (&str, &[u8]),
    receipt: (&str, &[u8]),
) -> std::io::Result<(Vec<Value>, OutputFiles)> {
    // Logical paths: the receipt (and the index) beside the outputs.
    let mut all: Vec<(&str, &[u8])> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_slice()))
        .collect();
    if !files.is_empty() {
        all.push(index);
    }
    all.push(receipt);
    let blobs: Vec<&[u8]> = all.iter().map(|(_, b)| *b).collect();
    let stored: Vec<Value> = store
        .put_all(org, &blobs)?
        .into_iter()
        .zip(&all)
        .map(|(blob, (path, _))| {
            json!({"path": path, "sha256": blob.sha256, "size": blob.size,
                   "location": blob.location})
        })
        .collect();
    Ok((stored, files))
}

fn decode(content: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(content)
        .ok()
}

/// `item` (an object) as JSON text with `receipt`, canonical JSON bytes, as its `receipt`
/// field: spliced in as it is, not parsed and serialized again.
fn with_receipt(item: &Value, receipt: &[u8]) -> String {
    // (serializing a `Value` cannot fail; the receipt's bytes are JSON, so UTF-8)
    let mut text = serde_json::to_string(item).unwrap_or_else(|_| "{}".to_owned());
    let receipt = std::str::from_utf8(receipt).unwrap_or("null");
    if text.ends_with('}') {
        text.pop();
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str("\"receipt\":");
        text.push_str(receipt);
        text.push('}');
    }
    text
}

/// The receipt of an attempt whose processor didn't run or whose result couldn't be recorded.
fn minimal_receipt(execution_id: &str, code: &str) -> Vec<u8> {
    builderos_canon::value_to_canonical_bytes(
        &json!({"execution_id": execution_id, "status": "error", "error_code": code}),
    )
}

/// `on_failure` as `operator_complete` reads it.
fn on_failure_name(on_failure: &OnFailure) -> &'static str {
    match on_failure {
        OnFailure::Continue => "continue",
        OnFailure::Fail => "fail",
    }
}

/// A failed attempt's item: retried when attempts remain and the code allows it.
fn failed_item(
    ctx: &StepContext,
    def: Option<(&Definition, &Step)>,
    execution_id: &str,
    started_at: DateTime<Utc>,
    code: &str,
    message: &str,
    receipt: Option<&[u8]>,
) -> String {
    let attempt = u32::try_from(ctx.attempt).unwrap_or(1);
    let retry_in_ms = def.and_then(|(_, step)| {
        (attempt < step.retries.max_attempts && !FINAL_CODES.contains(&code)).then(|| {
            u64::try_from(step.retries.delay_before(attempt + 1).as_millis()).unwrap_or(u64::MAX)
        })
    });
    let status = if retry_in_ms.is_some() {
        "retrying"
    } else {
        "failed"
    };
    metrics::counter!("builderos_operator_jobs_failed_total", "org" => ctx.org_id.to_string())
        .increment(1);
    tracing::info!(org = %ctx.org_id, run = %ctx.run_id, step = %ctx.step_id, attempt = ctx.attempt, status, code, "step failed");
    // (PostgreSQL's jsonb can't hold NUL: one in a message would refuse the whole batch)
    let message: String = message
        .chars()
        .take(1024)
        .map(|c| if c == '\0' { '\u{fffd}' } else { c })
        .collect();
    let item = json!({
        "job": ctx.job_id,
        "run": ctx.run_id,
        "org": ctx.org_id,
        "step": ctx.step_id,
        "attempt": ctx.attempt,
        "execution_id": execution_id,
        "status": "failed",
        "error_code": code,
        "error_message": message,
        "started_at": started_at,
        "finished_at": Utc::now(),
        "retry_in_ms": retry_in_ms,
        "on_failure": def.map_or("fail", |(_, s)| on_failure_name(&s.on_failure)),
        "dependents": def.map(|(d, _)| d.dependents(&ctx.step_id)).unwrap_or_default(),
    });
    match receipt {
        Some(receipt) => with_receipt(&item, receipt),
        None => with_receipt(&item, &minimal_receipt(execution_id, code)),
    }
}

/// Records finished attempts in batches; keeps a batch and retries while the database is away.
/// A batch the database refuses for its data is recorded one by one ([`record_one_by_one`]).
async fn completer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let max = inner.config.complete_batch.max(1);
    let mut batch: Vec<Completion> = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        // The outputs and receipts the batch records reach the disk first, all together.
        if batch.iter().any(|c| c.stored) {
            let store = inner.artifacts.clone();
            let synced = tokio::task::spawn_blocking(move || store.sync())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
            if let Err(e) = synced {
                // Not tried again (a failed flush may have lost the bytes, and the next one
                // would not say so): the batch's successes become failures of their steps.
                tracing::error!(error = %e, batch = batch.len(), "making artifacts durable failed; the batch's successful steps are recorded as failed");
                for c in batch.iter_mut().filter(|c| c.stored) {
                    if let Some(failure) = stand_in_item(
                        &c.item,
                        "ERR_ARTIFACT_STORE",
                        "the step's artifacts could not be made durable",
                    ) {
                        c.item = failure;
                        c.stored = false;
                    }
                }
            }
        }
        if batch.iter().all(|c| c.noop) {
            // Nothing to record but the deletions: one statement, no JSON to read (what
            // operator_complete does with such a batch, without its bookkeeping for steps).
            let ids: Vec<i64> = batch.iter().map(|c| c.job).collect();
            until_ok("deleting finished no-op jobs", || {
                store::delete_jobs(&inner.pool, &ids)
            })
            .await;
        } else {
            let mut items =
                String::with_capacity(batch.iter().map(|c| c.item.len() + 1).sum::<usize>() + 2);
            items.push('[');
            for (i, c) in batch.iter().enumerate() {
                if i > 0 {
                    items.push(',');
                }
                items.push_str(&c.item);
            }
            items.push(']');
            if let Err(e) = complete_retrying(&inner.pool, inner.id, &items).await {
                let results: Vec<(i64, &str)> =
                    batch.iter().map(|c| (c.job, c.item.as_str())).collect();
                tracing::error!(sqlstate = %sqlstate(&e), batch = batch.len(), "the database refused a batch of results; recording them one by one");
                record_one_by_one(&inner.pool, inner.id, &results).await;
            }
        }
        {
            let mut inflight = lock(&inner.inflight);
            for c in &batch {
                inflight.remove(&c.job);
            }
        }
        // Dropping the completions frees their slots; successors were enqueued by the call.
        batch.clear();
        inner.wake.notify_one();
    }
}

/// Whether the database refused a call for what it carries — SQLSTATE classes 22 (data
/// exception), 23 (integrity constraint violation) and 54 (program limit exceeded, e.g. a value
/// too large for an index), or a value that could not even be encoded: sending the same batch
/// again can't succeed. (None of them comes from a race here: every insert of
/// `operator_complete` that two workers could both make is `ON CONFLICT DO NOTHING`.)
fn refused(error: &sqlx::Error) -> bool {
    if matches!(error, sqlx::Error::Encode(_)) {
        return true;
    }
    let code = sqlstate(error);
    ["22", "23", "54"]
        .iter()
        .any(|class| code.starts_with(class))
}

/// The SQLSTATE of a database error (empty for other errors).
fn sqlstate(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()).unwrap_or_default(),
        _ => String::new(),
    }
}

/// Records a batch of results (a JSON array as text), retrying with backoff until it is
/// recorded (how many results it recorded: the others had been before) or refused for what it
/// carries (see [`refused`]), which it returns.
async fn complete_retrying(pool: &PgPool, worker: Uuid, items: &str) -> Result<u64, sqlx::Error> {
    let mut backoff = Duration::from_millis(50);
    loop {
        match store::complete(pool, worker, items).await {
            Ok(n) => return Ok(n),
            Err(e) if refused(&e) => return Err(e),
            Err(e) => {
                // (a database error by its code: its message might quote what was sent)
                match &e {
                    sqlx::Error::Database(_) => {
                        tracing::warn!(sqlstate = %sqlstate(&e), "recording results failed; retrying");
                    }
                    _ => tracing::warn!(error = %e, "recording results failed; retrying"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Records `results` (job, item) one by one after the database refused them as a batch, so
/// that one result it can't take holds back none of the others. A result refused on its own
/// is recorded as a failure of its step with `ERR_INTERNAL` (final: it would be refused again),
/// built from the result's identity — or, when the result doesn't name its step or even that
/// failure is refused, from the job's own row (its step then fails the run). Only when that
/// fails too is the job left to its lease, to run again when it expires.
/// Returns the jobs whose own results were refused.
///
/// (The completer calls it; public for the tests, which hand it results the database refuses.)
pub async fn record_one_by_one(pool: &PgPool, worker: Uuid, results: &[(i64, &str)]) -> Vec<i64> {
    let mut refused_jobs = Vec::new();
    for (job, item) in results {
        let Err(e) = complete_retrying(pool, worker, &format!("[{item}]")).await else {
            continue;
        };
        refused_jobs.push(*job);
        // (the code, not the message: a message may quote the refused data, such as outputs)
        let code = sqlstate(&e);
        let message = format!("the step's result could not be recorded (SQLSTATE {code})");
        let mut recorded = None;
        if let Some(failure) = stand_in_item(item, "ERR_INTERNAL", &message) {
            recorded = complete_retrying(pool, worker, &format!("[{failure}]"))
                .await
                .ok();
        }
        if recorded.is_none()
            && let Some(failure) = job_failure(pool, worker, *job, &message).await
        {
            recorded = complete_retrying(pool, worker, &format!("[{failure}]"))
                .await
                .ok();
        }
        match recorded {
            Some(0) => {
                tracing::warn!(job, sqlstate = %code, "the database refused a step's result; the attempt had been recorded already (by another worker)");
            }
            Some(_) => {
                tracing::error!(job, sqlstate = %code, "the database refused a step's result; recorded the step as failed with ERR_INTERNAL");
            }
            None => {
                tracing::error!(job, sqlstate = %code, "the database refused a step's result and its failure; the step runs again when its lease expires");
            }
        }
    }
    refused_jobs
}

/// A final failure of the attempt `item` (a result) names, with `code` and `message`: the
/// item's identity (job, run, org, step, attempt, execution id) and what its step's failure
/// needs (`on_failure`, dependents), nothing else of it. None when the item doesn't even
/// name its step.
fn stand_in_item(item: &str, code: &str, message: &str) -> Option<String> {
    let item: Value = serde_json::from_str(item).ok()?;
    let execution_id = Uuid::parse_str(item.get("execution_id")?.as_str()?).ok()?;
    let on_failure = match item.get("on_failure").and_then(Value::as_str) {
        Some("continue") => "continue",
        _ => "fail",
    };
    let dependents: Vec<&str> = item
        .get("dependents")
        .and_then(Value::as_array)
        .map(|d| d.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    Some(stand_in_failure(
        json!({
            "job": item.get("job")?.as_i64()?,
            "run": Uuid::parse_str(item.get("run")?.as_str()?).ok()?,
            "org": Uuid::parse_str(item.get("org")?.as_str()?).ok()?,
            // (no NUL can be in a step id or a dependent's: both come from PostgreSQL text
            // and jsonb)
            "step": item.get("step")?.as_str()?,
            "attempt": item.get("attempt")?.as_i64()?,
            "execution_id": execution_id.to_string(),
            "on_failure": on_failure,
            "dependents": dependents,
        }),
        code,
        message,
    ))
}

/// The stand-in failure (`ERR_INTERNAL`, `message`) for `job` built from its row, when its
/// result can't provide one: the step fails (`on_failure: fail`: its own setting isn't known
/// here), and so does its run.
/// None when the job is gone, no longer this worker's or not a step's, or the database can't
/// be read.
async fn job_failure(pool: &PgPool, worker: Uuid, job: i64, message: &str) -> Option<String> {
    let row: Option<(Uuid, Uuid, String, i32)> = sqlx::query_as(
        "SELECT run_id, org_id, step_id, attempt FROM jobs \
          WHERE id = $1 AND lease_owner = $2 AND kind = 'step' AND run_id IS NOT NULL \
            AND step_id IS NOT NULL",
    )
    .bind(job)
    .bind(worker)
    .fetch_optional(pool)
    .await
    .ok()?;
    let (run, org, step, attempt) = row?;
    Some(stand_in_failure(
        json!({
            "job": job, "run": run, "org": org, "step": step, "attempt": attempt,
            "execution_id": Uuid::now_v7().to_string(),
            "on_failure": "fail", "dependents": [],
        }),
        "ERR_INTERNAL",
        message,
    ))
}

/// `failure` — the identity of an attempt (job, run, org, step, attempt, execution id,
/// on_failure, dependents) — made the item of a final failure with `code` and `message`.
fn stand_in_failure(mut failure: Value, code: &str, message: &str) -> String {
    let now = json!(Utc::now());
    if let Some(fields) = failure.as_object_mut() {
        fields.insert("status".into(), json!("failed"));
        fields.insert("error_code".into(), json!(code));
        fields.insert("error_message".into(), json!(message));
        fields.insert("started_at".into(), now.clone());
        fields.insert("finished_at".into(), now);
    }
    let execution_id = failure
        .get("execution_id")
        .and_then(Value::as_str)
        .unwrap_or_default();
    with_receipt(&failure, &minimal_receipt(execution_id, code))
}

/// Listens for new jobs and cancellations; reconnects after the database comes back.
async fn listen(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&inner.pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "job listener can't connect; polling meanwhile");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener
            .listen_all(["builderos_jobs", "builderos_cancel"])
            .await
        {
            tracing::debug!(error = %e, "LISTEN failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        inner.wake.notify_one();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) => {
                        if n.channel() == "builderos_cancel" {
                            inner.check_cancel.notify_one();
                        } else {
                            inner.wake.notify_one();
                        }
                    }
                    Ok(None) => {
                        // Connection lost and re-established by sqlx: anything may have arrived.
                        inner.wake.notify_one();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "job listener lost its connection");
                        break;
                    }
                },
            }
        }
    }
}

/// Extends leases a third of the way through them and stops steps of runs that are no
/// longer active (checked every 250 ms, at once on a cancel notification).
async fn heartbeat(inner: Arc<Inner>, stop: CancellationToken) {
    let beat = inner.config.lease / 3;
    let mut last_beat = Instant::now();
    // Jobs the last full beat skipped (another transaction held their rows): beaten once more
    // at the next tick instead of a third of a lease later.
    let mut skipped: Vec<i64> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
            () = inner.check_cancel.notified() => {}
        }
        let (jobs, runs): (Vec<i64>, Vec<Uuid>) = {
            let inflight = lock(&inner.inflight);
            let jobs = inflight.keys().copied().collect();
            let mut runs: Vec<Uuid> = inflight.values().filter_map(|f| f.run).collect();
            runs.sort_unstable();
            runs.dedup();
            (jobs, runs)
        };
        if jobs.is_empty() {
            continue;
        }
        if !runs.is_empty()
            && let Ok(gone) = store::inactive_runs(&inner.pool, &runs).await
            && !gone.is_empty()
        {
            for f in lock(&inner.inflight).values() {
                if f.run.is_some_and(|r| gone.contains(&r)) {
                    f.cancel.cancel();
                }
            }
        }
        let due = last_beat.elapsed() >= beat;
        if due || !skipped.is_empty() {
            let beaten = if due {
                jobs
            } else {
                let running: std::collections::HashSet<i64> = jobs.into_iter().collect();
                std::mem::take(&mut skipped)
                    .into_iter()
                    .filter(|j| running.contains(j))
                    .collect()
            };
            match store::heartbeat(&inner.pool, inner.id, &beaten, inner.config.lease).await {
                Ok(extended) if due => {
                    last_beat = Instant::now();
                    let extended: std::collections::HashSet<i64> = extended.into_iter().collect();
                    skipped = beaten
                        .into_iter()
                        .filter(|j| !extended.contains(j))
                        .collect();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }
}

/// Publishes queue depth, running jobs and oldest-job age per org every few seconds.
async fn gauges(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        if let Ok(rows) = store::depth(&inner.pool).await {
            for (org, queued, running, age) in rows {
                let org = org.to_string();
                #[allow(clippy::cast_precision_loss)]
                {
                    metrics::gauge!("builderos_operator_queue_depth", "org" => org.clone())
                        .set(queued as f64);
                    metrics::gauge!("builderos_operator_running_jobs", "org" => org.clone())
                        .set(running as f64);
                }
                metrics::gauge!("builderos_operator_oldest_job_age_seconds", "org" => org).set(age);
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NUL in a processor's error message (which PostgreSQL's jsonb refuses, and with it the
    /// whole batch) is replaced; the rest of the message stays.
    #[test]
    fn failed_items_hold_no_nul() {
        let ctx = StepContext {
            job_id: 1,
            run_id: Uuid::now_v7(),
            step_id: "a".to_owned(),
            attempt: 1,
            org_id: Uuid::now_v7(),
            state: "running".to_owned(),
            mode: "mock".to_owned(),
            inputs: sqlx::types::Json(json!({})),
            outputs: sqlx::types::Json(json!({})),
        };
        let item = failed_item(&ctx, None, "e-1", Utc::now(), "ERR_X", "bad\0byte", None);
        assert!(!item.contains("\\u0000"), "{item}");
        let parsed: Value = serde_json::from_str(&item).expect("valid JSON");
        assert_eq!(parsed["error_message"], "bad\u{fffd}byte");
        assert_eq!(parsed["receipt"]["error_code"], "ERR_X");
    }

    /// The receipt's bytes become the item's `receipt` field as they are; the result is one
    /// valid JSON object with every other field intact, and a batch of items is a JSON array.
    #[test]
    fn receipts_are_spliced_into_items() {
        let receipt = builderos_canon::value_to_canonical_bytes(
            &json!({"execution_id": "e-1", "usage": {"input_tokens": 3}, "z": "caf\u{e9} \"q\""}),
        );
        for item in [
            json!({"job": 7, "status": "succeeded", "outputs": {"a.txt": "hi"}, "artifacts": []}),
            json!({"job": 8, "status": "failed", "error_message": "}\"{", "retry_in_ms": null}),
        ] {
            let text = with_receipt(&item, &receipt);
            let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
            let mut expected = item.clone();
            expected["receipt"] = serde_json::from_slice(&receipt).expect("receipt");
            assert_eq!(parsed, expected, "{text}");
        }
        let batch = format!(
            "[{},{}]",
            noop(1, None).item,
            with_receipt(&json!({"job": 2}), &receipt)
        );
        let parsed: Value = serde_json::from_str(&batch).expect("valid JSON");
        assert_eq!(parsed[0], json!({"job": 1, "noop": true}));
        assert_eq!(parsed[1]["receipt"]["execution_id"], "e-1");
    }
}
