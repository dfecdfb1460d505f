//! The operator's SQL: starting and cancelling runs (called by the API inside its own
//! transaction, next to the audit event), and the queue's claim / start / complete / heartbeat
//! calls (called by workers on the operator's pool).
//!
//! The queue's hot paths are PL/pgSQL functions (`migrations/0008_operator.sql`) so that a batch
//! of claims or completions is one round trip.

use std::time::Duration;

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::pipeline::Definition;

/// How a run was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `POST /v1/orgs/{org}/projects/{project}/pipelines/{name}/runs`.
    Api,
    /// A cron trigger of the pipeline.
    Cron,
}

impl Trigger {
    /// The stored form.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cron => "cron",
        }
    }
}

/// What a new run needs.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The org it runs in.
    pub org: Uuid,
    /// The project the pipeline belongs to.
    pub project: Uuid,
    /// The pipeline.
    pub pipeline: Uuid,
    /// The pipeline version whose definition is snapshotted.
    pub version: i32,
    /// That version's definition.
    pub definition: &'a Definition,
    /// The run's inputs (`${run.inputs.*}`).
    pub inputs: &'a serde_json::Map<String, Value>,
    /// `mock` or `real`.
    pub mode: crate::processors::contract::Mode,
    /// How it was started.
    pub trigger: Trigger,
    /// A client-chosen key: a start retried with the same key returns the same run.
    pub idempotency_key: Option<&'a str>,
    /// Who started it (none for cron).
    pub created_by: Option<Uuid>,
}

/// A started (or, for a repeated idempotency key, found) run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The run.
    pub run: Uuid,
    /// False when the idempotency key named an existing run.
    pub created: bool,
}

/// Starts a run: the run with its definition snapshot, one row per step, and a queued job
/// for every step without dependencies. Runs inside the caller's transaction.
///
/// # Errors
/// Database errors.
pub async fn start_run(conn: &mut PgConnection, new: &NewRun<'_>) -> Result<Started, sqlx::Error> {
    if let Some(key) = new.idempotency_key
        && let Some(run) = find_idempotent(conn, new.org, new.pipeline, key).await?
    {
        return Ok(Started {
            run,
            created: false,
        });
    }
    let run = Uuid::now_v7();
    let snapshot =
        serde_json::to_value(new.definition).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let steps = &new.definition.steps;
    let inserted = sqlx::query(
        "INSERT INTO runs (id, org_id, project_id, pipeline_id, pipeline_version, snapshot, inputs, \
         state, mode, trigger, idempotency_key, created_by, steps_total) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9, $10, $11, $12) \
         ON CONFLICT (org_id, pipeline_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    )
    .bind(run)
    .bind(new.org)
    .bind(new.project)
    .bind(new.pipeline)
    .bind(new.version)
    .bind(&snapshot)
    .bind(Value::Object(new.inputs.clone()))
    .bind(new.mode.as_str())
    .bind(new.trigger.as_str())
    .bind(new.idempotency_key)
    .bind(new.created_by)
    .bind(i32::try_from(steps.len()).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        // A concurrent start with the same key won the race.
        let key = new.idempotency_key.unwrap_or_default();
        let run = find_idempotent(conn, new.org, new.pipeline, key)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Started {
            run,
            created: false,
        });
    }
    let ids: Vec<&str> = steps.iter().map(|s| s.id.as_str()).collect();
    let deps: Vec<i32> = steps
        .iter()
        .map(|s| i32::try_from(s.depends_on.len()).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO run_steps (run_id, org_id, step_id, status, pending_deps) \
         SELECT $1, $2, s.id, CASE WHEN s.deps = 0 THEN 'queued' ELSE 'pending' END, s.deps \
           FROM unnest($3::text[], $4::int[]) AS s(id, deps)",
    )
    .bind(run)
    .bind(new.org)
    .bind(&ids)
    .bind(&deps)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO jobs (org_id, kind, run_id, step_id) \
         SELECT $1, 'step', $2, s FROM unnest($3::text[]) s",
    )
    .bind(new.org)
    .bind(run)
    .bind(new.definition.roots())
    .execute(&mut *conn)
    .await?;
    event(
        conn,
        new.org,
        run,
        "run.queued",
        None,
        serde_json::json!({"trigger": new.trigger.as_str()}),
    )
    .await?;
    Ok(Started { run, created: true })
}

async fn find_idempotent(
    conn: &mut PgConnection,
    org: Uuid,
    pipeline: Uuid,
    key: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM runs WHERE org_id = $1 AND pipeline_id = $2 AND idempotency_key = $3",
    )
    .bind(org)
    .bind(pipeline)
    .bind(key)
    .fetch_optional(conn)
    .await
}

/// Appends to a run's timeline.
///
/// # Errors
/// Database errors.
pub async fn event(
    conn: &mut PgConnection,
    org: Uuid,
    run: Uuid,
    kind: &str,
    step: Option<&str>,
    data: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO run_events (org_id, run_id, kind, step_id, data) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(org)
    .bind(run)
    .bind(kind)
    .bind(step)
    .bind(data)
    .execute(conn)
    .await?;
    Ok(())
}

/// The outcome of a cancel request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled {
    /// The run was active and is now `cancelled`; running steps notice within a second.
    Now,
    /// The run had already finished in this state; nothing changed.
    AlreadyFinished(String),
}

/// Cancels an active run: the run becomes `cancelled`, its queued jobs go, its pending and
/// queued steps become `cancelled`. Workers running its steps see the state and stop them.
///
/// # Errors
/// `RowNotFound` when the run does not exist (in the transaction's org); database errors.
pub async fn cancel_run(
    conn: &mut PgConnection,
    run: Uuid,
    by: Option<Uuid>,
) -> Result<Cancelled, sqlx::Error> {
    let (org, state): (Uuid, String) =
        sqlx::query_as("SELECT org_id, state FROM runs WHERE id = $1 FOR UPDATE")
            .bind(run)
            .fetch_one(&mut *conn)
            .await?;
    if !matches!(state.as_str(), "queued" | "running" | "waiting_approval") {
        return Ok(Cancelled::AlreadyFinished(state));
    }
    sqlx::query(
        "UPDATE runs SET state = 'cancelled', finished_at = now(), cancelled_by = $2 WHERE id = $1",
    )
    .bind(run)
    .bind(by)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE run_steps SET status = 'cancelled', finished_at = now() \
         WHERE run_id = $1 AND status IN ('pending', 'queued')",
    )
    .bind(run)
    .execute(&mut *conn)
    .await?;
    sqlx::query("DELETE FROM jobs WHERE run_id = $1 AND state = 'queued'")
        .bind(run)
        .execute(&mut *conn)
        .await?;
    sqlx::query("SELECT pg_notify('builderos_cancel', $1)")
        .bind(run.to_string())
        .execute(&mut *conn)
        .await?;
    event(conn, org, run, "run.cancelled", None, serde_json::json!({})).await?;
    Ok(Cancelled::Now)
}

/// The HTTP processors of `definition` that `org`'s allowlist does not admit, as their
/// allowlist keys (origins), sorted and deduplicated.
///
/// # Errors
/// Database errors.
pub async fn not_allowed(
    conn: &mut PgConnection,
    org: Uuid,
    definition: &Definition,
) -> Result<Vec<String>, sqlx::Error> {
    let mut origins: Vec<String> = definition
        .steps
        .iter()
        .filter_map(|s| s.processor.allowlist_key())
        .collect();
    origins.sort();
    origins.dedup();
    if origins.is_empty() {
        return Ok(origins);
    }
    sqlx::query_scalar(
        "SELECT o FROM unnest($2::text[]) o \
         WHERE NOT EXISTS (SELECT 1 FROM processor_allowlist a WHERE a.org_id = $1 AND a.origin = o) \
         ORDER BY o",
    )
    .bind(org)
    .bind(&origins)
    .fetch_all(conn)
    .await
}

// The queue ----------------------------------------------------------------------------------

/// The operator's own pool: every connection starts with `app.operator = on`, which the
/// row-level-security policies of the operator's tables admit across orgs.
///
/// # Errors
/// When `url` is not a valid PostgreSQL URL.
pub fn operator_pool(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let options = options
        .application_name("builderos-operator")
        .options([("app.operator", "on")]);
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

/// A claimed job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    /// The job.
    pub job_id: i64,
    /// Its org.
    pub org_id: Uuid,
    /// `step` or `noop`.
    pub kind: String,
    /// The run (step jobs).
    pub run_id: Option<Uuid>,
    /// The step (step jobs).
    pub step_id: Option<String>,
    /// The attempt this job is.
    pub attempt: i32,
    /// When it was enqueued.
    pub enqueued_at: chrono::DateTime<chrono::Utc>,
}

/// One row of `operator_claim`: a claimed job, or (all job fields null) only the count of
/// leases taken back.
#[derive(sqlx::FromRow)]
struct ClaimRow {
    job_id: Option<i64>,
    org_id: Option<Uuid>,
    kind: Option<String>,
    run_id: Option<Uuid>,
    step_id: Option<String>,
    attempt: Option<i32>,
    enqueued_at: Option<chrono::DateTime<chrono::Utc>>,
    expired: i32,
}

/// Takes back expired leases (and then claims nothing), or else claims up to `max` ready jobs
/// fairly across orgs.
/// Returns the jobs and how many expired leases were taken back.
///
/// # Errors
/// Database errors.
pub async fn claim(
    pool: &PgPool,
    worker: Uuid,
    max: u32,
    lease: Duration,
    default_org_limit: u32,
) -> Result<(Vec<Claimed>, u64), sqlx::Error> {
    let rows: Vec<ClaimRow> = sqlx::query_as("SELECT * FROM operator_claim($1, $2, $3, $4)")
        .bind(worker)
        .bind(i32::try_from(max).unwrap_or(i32::MAX))
        .bind(i32::try_from(lease.as_millis()).unwrap_or(i32::MAX))
        .bind(i32::try_from(default_org_limit).unwrap_or(i32::MAX))
        .fetch_all(pool)
        .await?;
    let expired = rows
        .first()
        .map_or(0, |r| u64::try_from(r.expired).unwrap_or(0));
    let jobs = rows
        .into_iter()
        .filter_map(|r| {
            Some(Claimed {
                job_id: r.job_id?,
                org_id: r.org_id?,
                kind: r.kind?,
                run_id: r.run_id,
                step_id: r.step_id,
                attempt: r.attempt?,
                enqueued_at: r.enqueued_at?,
            })
        })
        .collect();
    Ok((jobs, expired))
}

/// What a worker needs to execute a claimed step job.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StepContext {
    /// The job.
    pub job_id: i64,
    /// The run.
    pub run_id: Uuid,
    /// The step.
    pub step_id: String,
    /// The attempt.
    pub attempt: i32,
    /// The org.
    pub org_id: Uuid,
    /// The run's state now (a cancelled run's job is completed as cancelled, not run).
    pub state: String,
    /// `mock` or `real`.
    pub mode: String,
    /// The run's inputs.
    pub inputs: sqlx::types::Json<Value>,
    /// Referenceable outputs of the run's finished steps: `{step: {name: text}}`.
    pub outputs: sqlx::types::Json<Value>,
}

/// Marks claimed step jobs as started and returns what executing them needs.
///
/// # Errors
/// Database errors.
pub async fn started(pool: &PgPool, jobs: &[i64]) -> Result<Vec<StepContext>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM operator_started($1)")
        .bind(jobs)
        .fetch_all(pool)
        .await
}

/// The definition snapshots of `runs`.
///
/// # Errors
/// Database errors.
pub async fn snapshots(
    pool: &PgPool,
    runs: &[Uuid],
) -> Result<Vec<(Uuid, sqlx::types::Json<Value>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, snapshot FROM runs WHERE id = ANY($1)")
        .bind(runs)
        .fetch_all(pool)
        .await
}

/// Deletes finished jobs that need no other record (no-op jobs, and jobs dropped because their
/// run is gone): `operator_complete` does the same with the `noop` items of a batch. Returns
/// how many rows it deleted (a job deleted before counts once).
///
/// # Errors
/// Database errors.
pub async fn delete_jobs(pool: &PgPool, jobs: &[i64]) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
        .bind(jobs)
        .execute(pool)
        .await?
        .rows_affected())
}

/// Records a batch of attempt results (a JSON array as text, see `operator_complete`) in one
/// transaction; returns how many were recorded (the rest had been recorded already).
///
/// # Errors
/// Database errors, among them invalid JSON.
pub async fn complete(pool: &PgPool, worker: Uuid, items: &str) -> Result<u64, sqlx::Error> {
    let n: i32 = sqlx::query_scalar("SELECT operator_complete($1, $2::jsonb)")
        .bind(worker)
        .bind(items)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Extends the leases `worker` holds on `jobs`; returns the jobs whose leases it extended.
///
/// A job whose row another transaction holds is skipped, never waited for: it is being
/// completed (the worker's own completer deletes its finished jobs' rows while their leases
/// are still beaten), or the worker beats it again at its next tick. Waiting would hold up that transaction, and
/// two batches locking their rows in different orders deadlocked.
///
/// # Errors
/// Database errors.
pub async fn heartbeat(
    pool: &PgPool,
    worker: Uuid,
    jobs: &[i64],
    lease: Duration,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE jobs SET lease_until = now() + make_interval(secs => $3::float8) \
         WHERE id = ANY (ARRAY(SELECT j.id FROM jobs j \
                                WHERE j.id = ANY($2) AND j.lease_owner = $1 AND j.state = 'running' \
                                FOR UPDATE SKIP LOCKED)) \
           AND lease_owner = $1 AND state = 'running' RETURNING id",
    )
    .bind(worker)
    .bind(jobs)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Returns the leases `worker` holds on `jobs` to the queue (graceful shutdown).
///
/// # Errors
/// Database errors.
pub async fn release(pool: &PgPool, worker: Uuid, jobs: &[i64]) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL \
         WHERE id = ANY($2) AND lease_owner = $1 AND state = 'running'",
    )
    .bind(worker)
    .bind(jobs)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Which of `runs` are no longer active (cancelled or finished).
///
/// # Errors
/// Database errors.
pub async fn inactive_runs(pool: &PgPool, runs: &[Uuid]) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM runs WHERE id = ANY($1) AND state NOT IN ('queued', 'running', 'waiting_approval')",
    )
    .bind(runs)
    .fetch_all(pool)
    .await
}

/// True when `org` allows the HTTP processor with this allowlist key.
///
/// # Errors
/// Database errors.
pub async fn is_allowed(pool: &PgPool, org: Uuid, origin: &str) -> Result<bool, sqlx::Error> {
    let found: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM processor_allowlist WHERE org_id = $1 AND origin = $2")
            .bind(org)
            .bind(origin)
            .fetch_optional(pool)
            .await?;
    Ok(found.is_some())
}

/// Queue depth and oldest ready job's age per org (for metrics).
///
/// # Errors
/// Database errors.
pub async fn depth(pool: &PgPool) -> Result<Vec<(Uuid, i64, i64, f64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'), \
                coalesce(extract(epoch FROM now() - min(enqueued_at) FILTER (WHERE state = 'queued')), 0)::float8 \
           FROM jobs GROUP BY org_id",
    )
    .fetch_all(pool)
    .await
}
