//! The cron scheduler: starts a run of a pipeline at each tick of its cron triggers.
//!
//! Every operator process runs it; a due trigger row is taken with `FOR UPDATE SKIP LOCKED`
//! and moved to its next tick in the same transaction that starts the run, so exactly one run
//! starts per tick however many operators are running. The run's idempotency key names the
//! tick as a second guard.
//!
//! Missed ticks (no operator running at the time) are not replayed: a trigger found overdue
//! fires once, for its most recent missed tick, and continues from now.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cron::Schedule;
use crate::pipeline::Definition;
use crate::processors::contract::Mode;
use crate::store::{self, NewRun, Trigger};

/// Most triggers handled per transaction.
const BATCH: i64 = 32;

/// Fires due triggers until `stop`; sleeps until the next due tick (at most a second).
pub async fn run(pool: PgPool, stop: CancellationToken) {
    loop {
        let fired = match tick(&pool, Utc::now()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cron scheduler pass failed");
                0
            }
        };
        if fired == BATCH as usize {
            continue;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[derive(sqlx::FromRow)]
struct Due {
    pipeline_id: Uuid,
    idx: i32,
    org_id: Uuid,
    project_id: Uuid,
    schedule: String,
    timezone: String,
    inputs: sqlx::types::Json<serde_json::Map<String, Value>>,
    next_at: DateTime<Utc>,
    version: i32,
    definition: sqlx::types::Json<Value>,
}

/// One pass: starts a run for every trigger due at `now`; returns how many fired.
///
/// # Errors
/// Database errors.
pub async fn tick(pool: &PgPool, now: DateTime<Utc>) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let due: Vec<Due> = sqlx::query_as(
        "SELECT t.pipeline_id, t.idx, t.org_id, p.project_id, t.schedule, t.timezone, t.inputs, t.next_at, \
                v.version, v.definition \
           FROM cron_triggers t \
           JOIN pipelines p ON p.id = t.pipeline_id \
           JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.latest_version \
          WHERE t.next_at <= $1 \
          ORDER BY t.next_at \
          LIMIT $2 \
          FOR UPDATE OF t SKIP LOCKED",
    )
    .bind(now)
    .bind(BATCH)
    .fetch_all(&mut *tx)
    .await?;
    let mut fired = 0;
    for d in &due {
        let next = Schedule::parse(&d.schedule, &d.timezone)
            .ok()
            .and_then(|s| s.next_after(now));
        let Some(next) = next else {
            tracing::warn!(pipeline = %d.pipeline_id, "cron trigger has no next tick; disabling it");
            sqlx::query("DELETE FROM cron_triggers WHERE pipeline_id = $1 AND idx = $2")
                .bind(d.pipeline_id)
                .bind(d.idx)
                .execute(&mut *tx)
                .await?;
            continue;
        };
        sqlx::query(
            "UPDATE cron_triggers SET next_at = $3, last_tick_at = $4 WHERE pipeline_id = $1 AND idx = $2",
        )
        .bind(d.pipeline_id)
        .bind(d.idx)
        .bind(next)
        .bind(d.next_at)
        .execute(&mut *tx)
        .await?;
        let definition: Definition = match serde_json::from_value(d.definition.0.clone()) {
            Ok(def) => def,
            Err(e) => {
                tracing::error!(pipeline = %d.pipeline_id, error = %e, "unreadable pipeline definition");
                continue;
            }
        };
        let key = format!("cron:{}:{}", d.idx, d.next_at.to_rfc3339());
        let started = store::start_run(
            &mut tx,
            &NewRun {
                org: d.org_id,
                project: d.project_id,
                pipeline: d.pipeline_id,
                version: d.version,
                definition: &definition,
                inputs: &d.inputs.0,
                mode: Mode::Mock,
                trigger: Trigger::Cron,
                idempotency_key: Some(&key),
                created_by: None,
            },
        )
        .await?;
        if started.created {
            fired += 1;
            metrics::counter!("builderos_operator_cron_runs_total", "org" => d.org_id.to_string())
                .increment(1);
            tracing::info!(org = %d.org_id, pipeline = %d.pipeline_id, run = %started.run, tick = %d.next_at, "cron trigger started a run");
        }
    }
    tx.commit().await?;
    Ok(fired)
}

/// Replaces a pipeline's cron triggers with those of `definition` (called when a version is
/// saved), each due at its next tick after `now`.
///
/// # Errors
/// Database errors.
pub async fn replace_triggers(
    conn: &mut sqlx::PgConnection,
    org: Uuid,
    pipeline: Uuid,
    definition: &Definition,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM cron_triggers WHERE pipeline_id = $1")
        .bind(pipeline)
        .execute(&mut *conn)
        .await?;
    for (idx, trigger) in definition.triggers.iter().enumerate() {
        let Some(next) = trigger.cron.next_after(now) else {
            continue;
        };
        sqlx::query(
            "INSERT INTO cron_triggers (pipeline_id, idx, org_id, schedule, timezone, inputs, next_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(pipeline)
        .bind(i32::try_from(idx).unwrap_or(i32::MAX))
        .bind(org)
        .bind(trigger.cron.expr())
        .bind(trigger.cron.timezone())
        .bind(Value::Object(trigger.inputs.clone()))
        .bind(next)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
