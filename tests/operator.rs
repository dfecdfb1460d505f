//! The operator engine against a real PostgreSQL: DAG execution with input references,
//! retries, `on_failure`, timeouts, CI safety, cancellation, per-org limits, cron ticks, a
//! SIGKILLed `builderos operator` process and a PostgreSQL restart under a running worker.
//!
//! Runs are started through the same store call the API uses; the HTTP API over them is tested
//! in tests/runs.rs.

use std::time::{Duration, Instant};

use builderos_operator::artifacts::{ArtifactStore, LocalStore};
use builderos_operator::pipeline::{self, Definition, Format};
use builderos_operator::processors::contract::Mode;
use builderos_operator::scheduler;
use builderos_operator::store::{self, NewRun, Trigger};
use builderos_operator::worker;
use builderos_shared::pg::{Cluster, ClusterOptions};
use builderos_test_support::{OperatorProcess, TestApp};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_builderos");

/// An org with a project, made straight in the database.
struct Tenant {
    org: Uuid,
    project: Uuid,
}

async fn tenant(admin: &PgPool, slug: &str) -> Tenant {
    let (org, project) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query("INSERT INTO orgs (id, slug, name) VALUES ($1, $2, $2)")
        .bind(org)
        .bind(slug)
        .execute(admin)
        .await
        .expect("org");
    sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES ($1, $2, 'p', 'p')")
        .bind(project)
        .bind(org)
        .execute(admin)
        .await
        .expect("project");
    Tenant { org, project }
}

async fn define(admin: &PgPool, t: &Tenant, name: &str, yaml: &str) -> (Uuid, Definition) {
    let def = pipeline::parse(yaml, Format::Yaml).expect("definition");
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO pipelines (id, org_id, project_id, name, latest_version) VALUES ($1, $2, $3, $4, 1)")
        .bind(id)
        .bind(t.org)
        .bind(t.project)
        .bind(name)
        .execute(admin)
        .await
        .expect("pipeline");
    sqlx::query("INSERT INTO pipeline_versions (pipeline_id, org_id, version, definition, source, format) VALUES ($1, $2, 1, $3, $4, 'yaml')")
        .bind(id)
        .bind(t.org)
        .bind(serde_json::to_value(&def).expect("json"))
        .bind(yaml)
        .execute(admin)
        .await
        .expect("version");
    (id, def)
}

async fn start(
    admin: &PgPool,
    t: &Tenant,
    pipeline: (Uuid, &Definition),
    inputs: Value,
    mode: Mode,
) -> Uuid {
    let inputs = inputs.as_object().cloned().unwrap_or_default();
    let mut tx = admin.begin().await.expect("tx");
    let started = store::start_run(
        &mut tx,
        &NewRun {
            org: t.org,
            project: t.project,
            pipeline: pipeline.0,
            version: 1,
            definition: pipeline.1,
            inputs: &inputs,
            mode,
            trigger: Trigger::Api,
            idempotency_key: None,
            created_by: None,
        },
    )
    .await
    .expect("start run");
    tx.commit().await.expect("commit");
    started.run
}

async fn state(admin: &PgPool, run: Uuid) -> String {
    sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
        .bind(run)
        .fetch_one(admin)
        .await
        .expect("state")
}

/// Waits (at most `limit`) until every run in `runs` has finished; returns their states.
async fn finished(admin: &PgPool, runs: &[Uuid], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    loop {
        let states: Vec<String> =
            sqlx::query_scalar("SELECT state FROM runs WHERE id = ANY($1) ORDER BY id")
                .bind(runs)
                .fetch_all(admin)
                .await
                .expect("states");
        if states
            .iter()
            .all(|s| !matches!(s.as_str(), "queued" | "running"))
        {
            return states;
        }
        assert!(Instant::now() < deadline, "runs still active: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn steps(admin: &PgPool, run: Uuid) -> Vec<(String, String, i32, Option<String>)> {
    sqlx::query_as("SELECT step_id, status, attempts, error_code FROM run_steps WHERE run_id = $1 ORDER BY step_id")
        .bind(run)
        .fetch_all(admin)
        .await
        .expect("steps")
}

const FAN: &str = r#"
steps:
  - id: plan
    role: planner
    processor: builtin:echo
    inputs: {plan: "fix ${run.inputs.ticket}"}
  - id: left
    role: builder
    processor: builtin:echo
    inputs: {got: "${steps.plan.outputs.plan}"}
    depends_on: [plan]
  - id: right
    role: builder
    processor: builtin:fanout
    inputs: {count: 3}
    depends_on: [plan]
  - id: join
    role: reviewer
    processor: builtin:echo
    inputs: {summary: "${steps.left.outputs.got} / ${steps.right.outputs.part-0002}"}
    depends_on: [left, right]
"#;

#[tokio::test]
async fn runs_a_dag_passing_outputs_and_writes_receipts_and_artifacts() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let (id, def) = define(&admin, &t, "fan", FAN).await;
    let op = app.start_operator();
    let run = start(
        &admin,
        &t,
        (id, &def),
        json!({"ticket": "BUG-7"}),
        Mode::Mock,
    )
    .await;
    assert_eq!(
        finished(&admin, &[run], Duration::from_secs(30)).await,
        ["succeeded"]
    );

    let s = steps(&admin, run).await;
    assert!(
        s.iter()
            .all(|(_, status, attempts, _)| status == "succeeded" && *attempts == 1),
        "{s:?}"
    );
    // The join step saw both branches' outputs, resolved in order.
    let join: Value =
        sqlx::query_scalar("SELECT outputs FROM run_steps WHERE run_id = $1 AND step_id = 'join'")
            .bind(run)
            .fetch_one(&admin)
            .await
            .expect("outputs");
    assert_eq!(join["summary"], "fix BUG-7 / part 2");

    // One receipt per attempt, with hashes and no input or output text.
    let receipts: Vec<Value> =
        sqlx::query_scalar("SELECT receipt FROM step_attempts WHERE run_id = $1 ORDER BY step_id")
            .bind(run)
            .fetch_all(&admin)
            .await
            .expect("receipts");
    assert_eq!(receipts.len(), 4);
    for r in &receipts {
        assert_eq!(r["mode"], "mock", "{r}");
        assert_eq!(r["inputs_hash"].as_str().map(str::len), Some(64), "{r}");
        assert!(
            !r.to_string().contains("BUG-7"),
            "receipts never carry input text: {r}"
        );
    }

    // Artifacts are in the store under the recorded hashes, receipt.json beside the outputs.
    let artifacts: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT path, sha256, size, location FROM artifacts WHERE run_id = $1 ORDER BY path",
    )
    .bind(run)
    .fetch_all(&admin)
    .await
    .expect("artifacts");
    let store = LocalStore::new(builderos_test_support::test_config().artifacts_dir);
    for (path, sha, size, location) in &artifacts {
        assert!(location.is_some(), "{path}: small blobs go to segments");
        let bytes = store
            .get(t.org, sha, location.as_deref())
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(bytes.len() as i64, *size, "{path}");
        assert_eq!(&builderos_canon::sha256_hex(&bytes), sha, "{path}");
    }
    assert!(
        artifacts
            .iter()
            .any(|(p, ..)| p == &format!("runs/{run}/join/1/receipt.json")),
        "{artifacts:?}"
    );
    assert!(
        artifacts
            .iter()
            .any(|(p, ..)| p == &format!("runs/{run}/right/1/part-0002")),
        "{artifacts:?}"
    );

    // The timeline tells the story in order.
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM run_events WHERE run_id = $1 ORDER BY id")
            .bind(run)
            .fetch_all(&admin)
            .await
            .expect("events");
    assert_eq!(kinds.first().map(String::as_str), Some("run.queued"));
    assert_eq!(kinds.last().map(String::as_str), Some("run.succeeded"));
    assert_eq!(kinds.iter().filter(|k| *k == "step.succeeded").count(), 4);
    // Deleting the org removes its runs and, with them, their attempts, artifacts and events.
    op.stop().await;
    sqlx::query("DELETE FROM orgs WHERE id = $1")
        .bind(t.org)
        .execute(&admin)
        .await
        .expect("delete org");
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM step_attempts WHERE run_id = $1), \
                (SELECT count(*) FROM artifacts WHERE run_id = $1), \
                (SELECT count(*) FROM run_events WHERE run_id = $1)",
    )
    .bind(run)
    .fetch_one(&admin)
    .await
    .expect("left");
    assert_eq!(left, (0, 0, 0));
}

#[tokio::test]
async fn retries_then_fails_or_continues_as_the_step_says() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let failing = r#"
steps:
  - id: flaky
    role: builder
    processor: builtin:fail
    inputs: {code: ERR_FLAKY, message: always}
    retries: {max_attempts: 3, backoff_base: 10ms, backoff_cap: 20ms}
  - id: after
    role: builder
    processor: builtin:echo
    inputs: {x: y}
    depends_on: [flaky]
  - id: reader
    role: builder
    processor: builtin:echo
    inputs: {x: "${steps.flaky.outputs.result}"}
    depends_on: [flaky]
    on_failure: continue
  - id: beside
    role: builder
    processor: builtin:sleep
    inputs: {ms: 1}
"#;
    let (fail_id, fail_def) = define(&admin, &t, "fails", failing).await;
    let continuing = failing.replace(
        "retries: {max_attempts: 3",
        "on_failure: continue\n    retries: {max_attempts: 2",
    );
    let (cont_id, cont_def) = define(&admin, &t, "continues", &continuing).await;
    let timeout = r"
steps:
  - {id: slow, role: builder, processor: 'builtin:sleep', inputs: {ms: 10000}, timeout: 100ms}
";
    let (slow_id, slow_def) = define(&admin, &t, "slow", timeout).await;

    let op = app.start_operator();
    let failed = start(&admin, &t, (fail_id, &fail_def), json!({}), Mode::Mock).await;
    let partial = start(&admin, &t, (cont_id, &cont_def), json!({}), Mode::Mock).await;
    let slow = start(&admin, &t, (slow_id, &slow_def), json!({}), Mode::Mock).await;
    finished(&admin, &[failed, partial, slow], Duration::from_secs(30)).await;

    assert_eq!(state(&admin, failed).await, "failed");
    let s = steps(&admin, failed).await;
    assert!(
        s.contains(&("flaky".into(), "failed".into(), 3, Some("ERR_FLAKY".into()))),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|(id, status, ..)| id == "after" && status == "cancelled"),
        "{s:?}"
    );
    let attempts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_attempts WHERE run_id = $1 AND step_id = 'flaky'",
    )
    .bind(failed)
    .fetch_one(&admin)
    .await
    .expect("attempts");
    assert_eq!(attempts, 3);

    assert_eq!(state(&admin, partial).await, "partial");
    let s = steps(&admin, partial).await;
    assert!(
        s.contains(&("flaky".into(), "failed".into(), 2, Some("ERR_FLAKY".into()))),
        "{s:?}"
    );
    // Dependents still run; one that needs the failed step's outputs can't resolve them.
    assert!(
        s.iter()
            .any(|(id, status, ..)| id == "after" && status == "succeeded"),
        "{s:?}"
    );
    assert!(
        s.contains(&(
            "reader".into(),
            "failed".into(),
            1,
            Some("ERR_PIPELINE_INPUT_REF".into())
        )),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|(id, status, ..)| id == "beside" && status == "succeeded"),
        "{s:?}"
    );

    assert_eq!(state(&admin, slow).await, "failed");
    assert_eq!(
        steps(&admin, slow).await[0].3.as_deref(),
        Some("ERR_TIMEOUT")
    );
    op.stop().await;
}

/// A fresh app and org with a pipeline of one `builtin:echo` step.
async fn one_echo_step() -> (TestApp, PgPool, Tenant, (Uuid, Definition)) {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let pipeline = define(
        &admin,
        &t,
        "one",
        "steps:\n  - {id: a, role: builder, processor: 'builtin:echo', inputs: {x: y}}\n",
    )
    .await;
    (app, admin, t, pipeline)
}

#[tokio::test]
async fn real_mode_on_ci_fails_before_any_processor_work() {
    let (app, admin, t, (id, def)) = one_echo_step().await;
    let op = app.start_operator_with(|config, _| config.ci = true);
    let real = start(&admin, &t, (id, &def), json!({}), Mode::Real).await;
    let mock = start(&admin, &t, (id, &def), json!({}), Mode::Mock).await;
    finished(&admin, &[real, mock], Duration::from_secs(30)).await;
    assert_eq!(state(&admin, real).await, "failed");
    assert_eq!(
        steps(&admin, real).await[0].3.as_deref(),
        Some("ERR_CI_SAFETY")
    );
    let outputs: i64 = sqlx::query_scalar("SELECT count(*) FROM artifacts WHERE run_id = $1")
        .bind(real)
        .fetch_one(&admin)
        .await
        .expect("artifacts");
    assert_eq!(outputs, 0, "nothing was produced");
    assert_eq!(state(&admin, mock).await, "succeeded");
    op.stop().await;
}

#[tokio::test]
async fn cancel_stops_running_steps_and_queued_ones_never_start() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let (id, def) = define(
        &admin,
        &t,
        "long",
        "steps:\n  - {id: a, role: builder, processor: 'builtin:sleep', inputs: {ms: 60000}}\n  - {id: b, role: builder, processor: 'builtin:echo', inputs: {x: y}, depends_on: [a]}\n",
    )
    .await;
    let op = app.start_operator();
    let run = start(&admin, &t, (id, &def), json!({}), Mode::Mock).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while steps(&admin, run).await[0].1 != "running" {
        assert!(Instant::now() < deadline, "the step never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tx = admin.begin().await.expect("tx");
    assert_eq!(
        store::cancel_run(&mut tx, run, None).await.expect("cancel"),
        store::Cancelled::Now
    );
    tx.commit().await.expect("commit");
    let cancelled_at = Instant::now();
    // The running step stops (long before its 60 s sleep) and records ERR_CANCELLED.
    loop {
        let code: Option<String> = sqlx::query_scalar(
            "SELECT error_code FROM step_attempts WHERE run_id = $1 AND step_id = 'a'",
        )
        .bind(run)
        .fetch_optional(&admin)
        .await
        .expect("attempt")
        .flatten();
        if let Some(code) = code {
            assert_eq!(code, "ERR_CANCELLED");
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(20),
            "the running step ignored the cancel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "running step stopped {:?} after the cancel",
        cancelled_at.elapsed()
    );
    assert_eq!(state(&admin, run).await, "cancelled");
    let s = steps(&admin, run).await;
    assert_eq!(s[1].1, "cancelled", "{s:?}");
    let attempts_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM step_attempts WHERE run_id = $1 AND step_id = 'b'",
    )
    .bind(run)
    .fetch_one(&admin)
    .await
    .expect("b");
    assert_eq!(attempts_b, 0);
    let mut tx = admin.begin().await.expect("tx");
    assert_eq!(
        store::cancel_run(&mut tx, run, None).await.expect("cancel"),
        store::Cancelled::AlreadyFinished("cancelled".into())
    );
    op.stop().await;
}

#[tokio::test]
async fn an_orgs_limit_holds_and_another_org_is_not_held_up() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let busy = tenant(&admin, "busy").await;
    let other = tenant(&admin, "other").await;
    sqlx::query("INSERT INTO org_operator_settings (org_id, max_concurrency) VALUES ($1, 2)")
        .bind(busy.org)
        .execute(&admin)
        .await
        .expect("limit");
    let yaml =
        "steps:\n  - {id: a, role: builder, processor: 'builtin:sleep', inputs: {ms: 150}}\n";
    let (bid, bdef) = define(&admin, &busy, "p", yaml).await;
    let (oid, odef) = define(&admin, &other, "p", yaml).await;
    let mut runs = Vec::new();
    for _ in 0..8 {
        runs.push(start(&admin, &busy, (bid, &bdef), json!({}), Mode::Mock).await);
    }
    let op = app.start_operator_with(|_, w| w.concurrency = 16);
    let mine = start(&admin, &other, (oid, &odef), json!({}), Mode::Mock).await;
    runs.push(mine);
    finished(&admin, &runs, Duration::from_secs(30)).await;
    // Never more than 2 of the busy org's steps at once: check every attempt's interval.
    let spans: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT started_at, finished_at FROM step_attempts WHERE org_id = $1")
            .bind(busy.org)
            .fetch_all(&admin)
            .await
            .expect("spans");
    assert_eq!(spans.len(), 8);
    for (s, _) in &spans {
        let overlapping = spans.iter().filter(|(a, b)| a <= s && s < b).count();
        assert!(
            overlapping <= 2,
            "{overlapping} of the busy org's steps ran at once"
        );
    }
    // The other org's step started before the busy org's backlog was through.
    let other_start: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM step_attempts WHERE run_id = $1")
            .bind(mine)
            .fetch_one(&admin)
            .await
            .expect("start");
    let last_busy = spans.iter().map(|(s, _)| *s).max().expect("spans");
    assert!(
        other_start < last_busy,
        "the other org waited for the busy org's backlog"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_cron_tick_starts_exactly_one_run_across_schedulers() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let yaml = "steps:\n  - {id: a, role: builder, processor: 'builtin:echo', inputs: {x: '${run.inputs.x}'}}\ntriggers:\n  - {cron: '*/5 * * * *', timezone: Europe/Paris, inputs: {x: nightly}}\n";
    let (id, def) = define(&admin, &t, "cron", yaml).await;
    let now = chrono::Utc::now();
    let mut conn = admin.acquire().await.expect("conn");
    scheduler::replace_triggers(&mut conn, t.org, id, &def, now)
        .await
        .expect("triggers");
    drop(conn);
    let next: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_at FROM cron_triggers WHERE pipeline_id = $1")
            .bind(id)
            .fetch_one(&admin)
            .await
            .expect("next");
    assert!(
        next > now && next <= now + chrono::Duration::minutes(5),
        "{next}"
    );

    // Four operators' schedulers see the tick at once (and one sees it twice, late).
    let pools: Vec<PgPool> = (0..4)
        .map(|_| store::operator_pool(&app.db.app_url, 2).expect("pool"))
        .collect();
    let ticks = pools
        .iter()
        .map(|p| scheduler::tick(p, next + chrono::Duration::seconds(1)));
    let fired: usize = futures_util::future::join_all(ticks)
        .await
        .into_iter()
        .map(|r| r.expect("tick"))
        .sum();
    let again = scheduler::tick(&pools[0], next + chrono::Duration::seconds(2))
        .await
        .expect("tick");
    assert_eq!((fired, again), (1, 0));
    let runs: Vec<(String, Value)> =
        sqlx::query_as("SELECT trigger, inputs FROM runs WHERE pipeline_id = $1")
            .bind(id)
            .fetch_all(&admin)
            .await
            .expect("runs");
    assert_eq!(runs, [("cron".to_owned(), json!({"x": "nightly"}))]);

    // Missed ticks are not replayed: an hour of downtime gives one catch-up run.
    let fired = scheduler::tick(&pools[0], next + chrono::Duration::hours(1))
        .await
        .expect("tick");
    assert_eq!(fired, 1);
    let after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT next_at FROM cron_triggers WHERE pipeline_id = $1")
            .bind(id)
            .fetch_one(&admin)
            .await
            .expect("next");
    assert!(
        after > next + chrono::Duration::hours(1),
        "continues from now: {after}"
    );
}

/// Two runs of the pipeline `yaml` in a fresh org, and an operator pool to drive them by hand.
async fn two_runs(yaml: &str) -> (TestApp, PgPool, [Uuid; 2], PgPool) {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let (id, def) = define(&admin, &t, "by-hand", yaml).await;
    let runs = [
        start(&admin, &t, (id, &def), json!({}), Mode::Mock).await,
        start(&admin, &t, (id, &def), json!({}), Mode::Mock).await,
    ];
    let pool = store::operator_pool(&app.db.app_url, 4).expect("pool");
    (app, admin, runs, pool)
}

/// Claims every ready job for `worker` and marks their steps started, in run order.
async fn claim_started(pool: &PgPool, worker: Uuid) -> Vec<store::StepContext> {
    let (claimed, _) = store::claim(pool, worker, 16, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|c| c.job_id).collect();
    let mut contexts = store::started(pool, &ids).await.expect("started");
    contexts.sort_by_key(|c| (c.run_id, c.step_id.clone()));
    contexts
}

/// A success of `c` (no outputs, no artifacts) as a worker sends it to `operator_complete`.
fn success(c: &store::StepContext, dependents: &[&str], started_at: Value) -> Value {
    json!({
        "job": c.job_id, "run": c.run_id, "org": c.org_id, "step": c.step_id,
        "attempt": c.attempt, "execution_id": Uuid::now_v7().to_string(),
        "status": "succeeded", "outputs": {}, "receipt": {}, "artifacts": [],
        "started_at": started_at, "finished_at": chrono::Utc::now(),
        "dependents": dependents, "on_failure": "fail",
    })
}

/// An artifact store whose flushes fail: what it stored may be lost.
#[derive(Debug)]
struct FailingSync(LocalStore);

impl ArtifactStore for FailingSync {
    fn put(&self, org: Uuid, bytes: &[u8]) -> std::io::Result<builderos_operator::artifacts::Blob> {
        self.0.put(org, bytes)
    }
    fn get(&self, org: Uuid, sha256: &str, location: Option<&str>) -> std::io::Result<Vec<u8>> {
        self.0.get(org, sha256, location)
    }
    fn sync(&self) -> std::io::Result<()> {
        Err(std::io::Error::other("EIO (simulated)"))
    }
}

/// When the artifacts of a batch can't be made durable, its successful steps are recorded as
/// failures with ERR_ARTIFACT_STORE (never as successes naming bytes that may be lost), and
/// their runs go on per `on_failure`.
#[tokio::test]
async fn steps_whose_artifacts_cannot_be_made_durable_fail() {
    let (app, admin, t, (id, def)) = one_echo_step().await;
    let run = start(&admin, &t, (id, &def), json!({}), Mode::Mock).await;
    let pool = store::operator_pool(&app.db.app_url, 4).expect("pool");
    let store = FailingSync(LocalStore::new(
        builderos_test_support::test_config().artifacts_dir,
    ));
    let config = worker::WorkerConfig {
        poll: Duration::from_millis(100),
        ..worker::WorkerConfig::default()
    };
    let w = worker::Worker::new(
        pool,
        config,
        builderos_operator::processors::Processors::new(
            builderos_operator::processors::ProcessorConfig::default(),
        ),
        std::sync::Arc::new(store),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(w.run(shutdown.clone()));
    assert_eq!(
        finished(&admin, &[run], Duration::from_secs(30)).await,
        ["failed"]
    );
    assert_eq!(
        steps(&admin, run).await,
        vec![(
            "a".to_owned(),
            "failed".to_owned(),
            1,
            Some("ERR_ARTIFACT_STORE".to_owned())
        )]
    );
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM artifacts WHERE run_id = $1")
        .bind(run)
        .fetch_one(&admin)
        .await
        .expect("artifacts");
    assert_eq!(recorded, 0, "no artifact recorded");
    shutdown.cancel();
    task.await.expect("worker");
    assert_counts_match(&admin, "after a failed sync").await;
}

/// A heartbeat extends the leases its worker holds, not another worker's; a job whose row
/// another transaction holds (its completion, say) is skipped without waiting, and the next
/// beat extends it.
#[tokio::test]
async fn heartbeats_extend_held_leases_and_never_wait() {
    let (_app, admin, _runs, pool) =
        two_runs("steps:\n  - {id: a, role: builder, processor: 'builtin:echo', inputs: {x: y}}\n")
            .await;
    let worker = Uuid::now_v7();
    let contexts = claim_started(&pool, worker).await;
    let jobs: Vec<i64> = contexts.iter().map(|c| c.job_id).collect();
    assert_eq!(jobs.len(), 2);
    let lease_left = |job: i64| {
        let admin = admin.clone();
        async move {
            sqlx::query_scalar::<_, f64>(
                "SELECT extract(epoch FROM lease_until - now())::float8 FROM jobs WHERE id = $1",
            )
            .bind(job)
            .fetch_one(&admin)
            .await
            .expect("lease")
        }
    };
    assert!(lease_left(jobs[0]).await < 31.0);

    // Another transaction holds the first job's row.
    let mut holder = admin.begin().await.expect("begin");
    sqlx::query("SELECT id FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(jobs[0])
        .execute(&mut *holder)
        .await
        .expect("lock");
    let beat = tokio::time::timeout(
        Duration::from_secs(10),
        store::heartbeat(&pool, worker, &jobs, Duration::from_secs(600)),
    )
    .await
    .expect("the beat does not wait for the held row")
    .expect("heartbeat");
    assert_eq!(beat, vec![jobs[1]]);
    assert!(lease_left(jobs[1]).await > 500.0);
    assert!(lease_left(jobs[0]).await < 31.0, "skipped, unchanged");
    holder.rollback().await.expect("rollback");

    // The next beat gets it; another worker's beat extends nothing.
    let mut beat = store::heartbeat(&pool, worker, &jobs, Duration::from_secs(600))
        .await
        .expect("heartbeat");
    beat.sort_unstable();
    let mut expected = jobs.clone();
    expected.sort_unstable();
    assert_eq!(beat, expected);
    assert!(lease_left(jobs[0]).await > 500.0);
    let other = store::heartbeat(&pool, Uuid::now_v7(), &jobs, Duration::from_secs(3600))
        .await
        .expect("heartbeat");
    assert!(other.is_empty(), "{other:?}");
    assert!(lease_left(jobs[0]).await < 601.0);
}

/// Two workers race to record the same attempts (one ran them after the other's lease
/// expired): in one batch or split across batches, each attempt counts once, its dependents
/// are released once and the run finishes once.
#[tokio::test]
async fn racing_completions_of_one_attempt_count_once() {
    let (_app, admin, runs, pool) = two_runs(
        "steps:\n  - {id: a, role: builder, processor: 'builtin:echo', inputs: {x: y}}\n  - {id: b, role: builder, processor: 'builtin:echo', inputs: {x: y}}\n  - {id: c, role: builder, processor: 'builtin:echo', inputs: {x: y}, depends_on: [a, b]}\n",
    )
    .await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let item = |c: &store::StepContext| {
        let dependents: &[&str] = if c.step_id == "c" { &[] } else { &["c"] };
        success(c, dependents, json!(chrono::Utc::now()))
    };
    // Both runs' first steps (a and b), claimed once and "run" by two workers.
    let contexts = claim_started(&pool, first).await;
    assert_eq!(contexts.len(), 4);
    let mine: Vec<Value> = contexts.iter().map(item).collect();
    let theirs: Vec<Value> = contexts.iter().map(item).collect();
    // The other worker records one attempt first; then both send everything at once.
    let one = store::complete(&pool, second, &json!([theirs[0]]).to_string())
        .await
        .expect("complete");
    let (mine, rest) = (
        Value::Array(mine).to_string(),
        Value::Array(theirs[1..].to_vec()).to_string(),
    );
    let (a, b) = tokio::join!(
        store::complete(&pool, first, &mine),
        store::complete(&pool, second, &rest),
    );
    assert_eq!(one + a.expect("complete") + b.expect("complete"), 4);
    let again = store::complete(&pool, first, &mine)
        .await
        .expect("complete");
    assert_eq!(again, 0, "nothing left to record");

    // Each run's c was released exactly once; record it and the runs finish once.
    let contexts = claim_started(&pool, first).await;
    assert_eq!(contexts.len(), 2, "one job per run for c: {contexts:?}");
    let items = Value::Array(contexts.iter().map(item).collect()).to_string();
    let (a, b) = tokio::join!(
        store::complete(&pool, first, &items),
        store::complete(&pool, second, &items),
    );
    assert_eq!(a.expect("complete") + b.expect("complete"), 2);
    for run in runs {
        assert_eq!(state(&admin, run).await, "succeeded");
        let (attempts, done, finished): (i64, i32, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM step_attempts WHERE run_id = $1), \
                    (SELECT steps_done FROM runs WHERE id = $1), \
                    (SELECT count(*) FROM run_events WHERE run_id = $1 AND kind = 'run.succeeded')",
        )
        .bind(run)
        .fetch_one(&admin)
        .await
        .expect("counts");
        assert_eq!((attempts, done, finished), (3, 3, 1));
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&admin)
        .await
        .expect("jobs");
    assert_eq!(left, 0);
}

/// A result the database refuses for its data (here a timestamp it can't read) must not hold
/// back the rest of its batch, nor stall the worker: the batch is recorded one by one, and the
/// refused result is replaced by a failure of its step with ERR_INTERNAL, which follows the
/// step's `on_failure` like any failure.
#[tokio::test]
async fn a_refused_result_fails_its_step_and_holds_back_no_other() {
    let (_app, admin, runs, pool) = two_runs(
        "steps:\n  - {id: a, role: builder, processor: 'builtin:echo', inputs: {x: y}, on_failure: continue}\n  - {id: b, role: builder, processor: 'builtin:echo', inputs: {x: y}, depends_on: [a]}\n",
    )
    .await;
    let worker = Uuid::now_v7();
    let contexts = claim_started(&pool, worker).await;
    let mut started_runs: Vec<Uuid> = contexts.iter().map(|c| c.run_id).collect();
    let mut all = runs.to_vec();
    started_runs.sort();
    all.sort();
    assert_eq!(started_runs, all, "both runs' first steps");
    let (good_run, bad_run) = (contexts[0].run_id, contexts[1].run_id);
    let item =
        |c: &store::StepContext, dependents: &[&str], on_failure: &str, started_at: Value| {
            let mut item = success(c, dependents, started_at);
            item["on_failure"] = json!(on_failure);
            item.to_string()
        };
    let good = item(&contexts[0], &["b"], "continue", json!(chrono::Utc::now()));
    let bad = item(
        &contexts[1],
        &["b"],
        "continue",
        json!("the day after tomorrow"),
    );
    let refused = store::complete(&pool, worker, &format!("[{good},{bad}]"))
        .await
        .expect_err("the batch is refused");
    assert!(
        matches!(&refused, sqlx::Error::Database(db) if db.code().as_deref() == Some("22007")),
        "{refused}"
    );

    let results = [
        (contexts[0].job_id, good.as_str()),
        (contexts[1].job_id, bad.as_str()),
    ];
    let refused_jobs = worker::record_one_by_one(&pool, worker, &results).await;
    assert_eq!(refused_jobs, vec![contexts[1].job_id]);
    // The good result went on as usual: its run's next step is queued.
    assert_eq!(
        steps(&admin, good_run).await,
        vec![
            ("a".to_owned(), "succeeded".to_owned(), 1, None),
            ("b".to_owned(), "queued".to_owned(), 0, None)
        ]
    );
    // The refused one failed its step (finally: it would be refused again); a's `on_failure:
    // continue` lets the run go on.
    assert_eq!(state(&admin, bad_run).await, "running");
    assert_eq!(
        steps(&admin, bad_run).await,
        vec![
            (
                "a".to_owned(),
                "failed".to_owned(),
                1,
                Some("ERR_INTERNAL".to_owned())
            ),
            ("b".to_owned(), "queued".to_owned(), 0, None)
        ]
    );
    let message: String =
        sqlx::query_scalar("SELECT error_message FROM step_attempts WHERE run_id = $1")
            .bind(bad_run)
            .fetch_one(&admin)
            .await
            .expect("attempt");
    assert!(message.contains("22007"), "{message}");
    let ids: Vec<i64> = contexts.iter().map(|c| c.job_id).collect();
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(&ids)
        .fetch_all(&admin)
        .await
        .expect("jobs");
    assert!(left.is_empty(), "both jobs are done: {left:?}");
    assert_counts_match(&admin, "after a refused result").await;

    // Both b's: the bad run's gets a refused result too, and b's `on_failure: fail` fails the
    // run. The good run's gets a result that doesn't even name its step: the failure that
    // stands in for it is built from the job's row, and fails the step and the run.
    let contexts = claim_started(&pool, worker).await;
    assert_eq!(contexts.len(), 2, "both runs' b");
    let (good_b, bad_b) = if contexts[0].run_id == good_run {
        (&contexts[0], &contexts[1])
    } else {
        (&contexts[1], &contexts[0])
    };
    let bad = item(bad_b, &[], "fail", json!("never"));
    let nameless =
        json!({"job": good_b.job_id, "run": "not a run", "status": "failed"}).to_string();
    let refused_jobs = worker::record_one_by_one(
        &pool,
        worker,
        &[
            (bad_b.job_id, bad.as_str()),
            (good_b.job_id, nameless.as_str()),
        ],
    )
    .await;
    assert_eq!(refused_jobs, vec![bad_b.job_id, good_b.job_id]);
    for run in [bad_run, good_run] {
        assert_eq!(state(&admin, run).await, "failed");
        assert_eq!(
            steps(&admin, run).await[1],
            (
                "b".to_owned(),
                "failed".to_owned(),
                1,
                Some("ERR_INTERNAL".to_owned())
            )
        );
    }
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = ANY($1)")
        .bind(vec![good_b.job_id, bad_b.job_id])
        .fetch_all(&admin)
        .await
        .expect("jobs");
    assert!(left.is_empty(), "both jobs are done: {left:?}");
    assert_counts_match(&admin, "after a nameless result").await;
}

fn operator_process(app: &TestApp, lease_seconds: u32) -> OperatorProcess {
    OperatorProcess::spawn(
        BIN,
        &app.db.app_url,
        &[
            ("BR_OS_OPERATOR_LEASE_SECONDS", lease_seconds.to_string()),
            ("BR_OS_OPERATOR_MAX_CONCURRENCY", "16".to_owned()),
        ],
    )
}

#[tokio::test]
async fn a_killed_operator_loses_nothing_and_records_each_step_once() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let t = tenant(&admin, "acme").await;
    let (id, def) = define(
        &admin,
        &t,
        "chain",
        "steps:\n  - {id: a, role: builder, processor: 'builtin:sleep', inputs: {ms: 300}}\n  - {id: b, role: builder, processor: 'builtin:sleep', inputs: {ms: 300}, depends_on: [a]}\n  - {id: c, role: builder, processor: 'builtin:echo', inputs: {x: y}, depends_on: [b]}\n",
    )
    .await;
    sqlx::query("INSERT INTO org_operator_settings (org_id, max_concurrency) VALUES ($1, 100)")
        .bind(t.org)
        .execute(&admin)
        .await
        .expect("limit");
    let mut runs = Vec::new();
    for _ in 0..20 {
        runs.push(start(&admin, &t, (id, &def), json!({}), Mode::Mock).await);
    }
    let mut first = operator_process(&app, 1);
    // Kill it in the middle: some steps recorded, some running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (done, running): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM step_attempts), (SELECT count(*) FROM jobs WHERE state = 'running')",
        )
        .fetch_one(&admin)
        .await
        .expect("progress");
        if done >= 5 && running > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first operator made no progress"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.signal_and_wait(nix::sys::signal::Signal::SIGKILL);
    let orphaned: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(&admin)
        .await
        .expect("orphans");
    assert!(orphaned > 0, "the kill left no step mid-flight");

    let second = operator_process(&app, 1);
    let states = finished(&admin, &runs, Duration::from_secs(60)).await;
    drop(second);
    assert!(states.iter().all(|s| s == "succeeded"), "{states:?}");
    let (attempts, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (run_id, step_id)) FROM step_attempts WHERE run_id = ANY($1)",
    )
    .bind(&runs)
    .fetch_one(&admin)
    .await
    .expect("attempts");
    assert_eq!(
        (attempts, distinct),
        (60, 60),
        "every step recorded exactly once"
    );
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT worker) FROM step_attempts WHERE run_id = ANY($1)",
    )
    .bind(&runs)
    .fetch_one(&admin)
    .await
    .expect("workers");
    assert_eq!(workers, 2, "both operators did part of the work");
}

#[tokio::test]
async fn a_worker_rides_out_a_postgres_restart() {
    builderos_shared::telemetry::install_crypto_provider();
    let root = tempfile::tempdir().expect("root");
    let options = ClusterOptions::throwaway(root.path());
    let cluster = Cluster::start(options.clone()).await.expect("cluster");
    let port = cluster.port();
    builderos_shared::db::migrate(&cluster.owner_url(builderos_shared::pg::DATABASE))
        .await
        .expect("migrate");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&cluster.superuser_url(builderos_shared::pg::DATABASE))
        .expect("admin");
    let t = tenant(&admin, "acme").await;
    let (id, def) = define(
        &admin,
        &t,
        "chain",
        "steps:\n  - {id: a, role: builder, processor: 'builtin:sleep', inputs: {ms: 400}}\n  - {id: b, role: builder, processor: 'builtin:sleep', inputs: {ms: 400}, depends_on: [a]}\n",
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(start(&admin, &t, (id, &def), json!({}), Mode::Mock).await);
    }
    let mut config = builderos_test_support::test_config();
    config.operator_max_concurrency = 8;
    let mut worker = builderos_operator::runner::worker_config(&config);
    worker.lease = Duration::from_secs(3);
    worker.poll = Duration::from_millis(200);
    let op = builderos_operator::runner::spawn_worker(
        &config,
        &cluster.app_url(builderos_shared::pg::DATABASE),
        worker,
    )
    .expect("worker");
    // Restart PostgreSQL while steps are running.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
            .fetch_one(&admin)
            .await
            .expect("running");
        if running > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.close().await;
    cluster.stop();
    let mut again = options;
    again.port = Some(port);
    let cluster = Cluster::start(again).await.expect("restart");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_lazy(&cluster.superuser_url(builderos_shared::pg::DATABASE))
        .expect("admin");
    let states = finished(&admin, &runs, Duration::from_secs(60)).await;
    let errors: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT step_id, error_code, error_message FROM step_attempts WHERE status = 'failed'",
    )
    .fetch_all(&admin)
    .await
    .expect("errors");
    assert!(
        states.iter().all(|s| s == "succeeded"),
        "{states:?} {errors:?}"
    );
    let (attempts, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT (run_id, step_id)) FROM step_attempts")
            .fetch_one(&admin)
            .await
            .expect("attempts");
    assert_eq!((attempts, distinct), (12, 12));
    op.stop().await;
    admin.close().await;
    cluster.stop();
}

/// `org_job_counts` against the jobs it counts, org by org.
async fn assert_counts_match(admin: &PgPool, when: &str) {
    let wrong: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT coalesce(c.org_id, j.org_id), coalesce(c.running, 0)::bigint, coalesce(j.n, 0) \
           FROM org_job_counts c \
           FULL JOIN (SELECT org_id, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY org_id) j \
             ON j.org_id = c.org_id \
          WHERE coalesce(c.running, 0) <> coalesce(j.n, 0)",
    )
    .fetch_all(admin)
    .await
    .expect("counts");
    assert!(
        wrong.is_empty(),
        "{when}: (org, counted, running) {wrong:?}"
    );
}

#[tokio::test]
async fn claims_share_slots_out_and_running_counts_follow_every_change() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let (a, b, c) = (
        tenant(&admin, "a").await.org,
        tenant(&admin, "b").await.org,
        tenant(&admin, "c").await.org,
    );
    sqlx::query("INSERT INTO org_operator_settings (org_id, max_concurrency) VALUES ($1, 5)")
        .bind(b)
        .execute(&admin)
        .await
        .expect("limit");
    for (org, n) in [(a, 1), (b, 30), (c, 30)] {
        sqlx::query(
            "INSERT INTO jobs (org_id, kind) SELECT $1, 'noop' FROM generate_series(1, $2)",
        )
        .bind(org)
        .bind(n)
        .execute(&admin)
        .await
        .expect("jobs");
    }
    let pool = store::operator_pool(&app.db.app_url, 4).expect("pool");
    let worker = Uuid::now_v7();
    let per_org = |claimed: &[store::Claimed]| {
        [a, b, c].map(|org| claimed.iter().filter(|j| j.org_id == org).count())
    };

    // Equal shares of 20, within limits: a has one job and b five slots, so what they can't
    // take goes to c (a second pass), up to c's default limit of 16.
    let (claimed, expired) = store::claim(&pool, worker, 20, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    assert_eq!(expired, 0);
    assert_eq!(per_org(&claimed), [1, 5, 14]);
    assert_counts_match(&admin, "after a claim").await;
    // b is at its limit, c has two slots left.
    let (more, _) = store::claim(&pool, worker, 20, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    assert_eq!(per_org(&more), [0, 0, 2]);
    assert_counts_match(&admin, "after a claim at the limits").await;

    // Completions free slots; releases return jobs.
    let done: Vec<Value> = claimed[..10]
        .iter()
        .map(|j| json!({"job": j.job_id, "noop": true}))
        .collect();
    assert_eq!(
        store::complete(&pool, worker, &json!(done).to_string())
            .await
            .expect("complete"),
        10
    );
    assert_eq!(
        store::complete(&pool, worker, &json!(done).to_string())
            .await
            .expect("again"),
        0
    );
    assert_counts_match(&admin, "after completions").await;
    let back: Vec<i64> = claimed[10..].iter().map(|j| j.job_id).collect();
    assert_eq!(
        store::release(&pool, worker, &back).await.expect("release"),
        10
    );
    assert_counts_match(&admin, "after a release").await;

    // An expired lease: the call that takes it back claims nothing; the next one claims.
    let (short, _) = store::claim(&pool, worker, 3, Duration::from_millis(1), 16)
        .await
        .expect("claim");
    assert_eq!(short.len(), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (none, expired) = store::claim(&pool, worker, 3, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    assert!(none.is_empty());
    assert!(expired >= 3, "{expired}");
    assert_counts_match(&admin, "after leases expired").await;
    let (again, _) = store::claim(&pool, worker, 3, Duration::from_secs(30), 16)
        .await
        .expect("claim");
    assert_eq!(again.len(), 3);
    assert_counts_match(&admin, "after claiming them again").await;

    // Any other change to running jobs is counted too.
    sqlx::query("DELETE FROM jobs WHERE id = $1")
        .bind(again[0].job_id)
        .execute(&admin)
        .await
        .expect("delete");
    assert_counts_match(&admin, "after a delete").await;
    sqlx::query("TRUNCATE jobs")
        .execute(&admin)
        .await
        .expect("truncate");
    assert_counts_match(&admin, "after a truncate").await;

    // Claims side by side never take more than an org's limit between them.
    sqlx::query("INSERT INTO jobs (org_id, kind) SELECT $1, 'noop' FROM generate_series(1, 50)")
        .bind(b)
        .execute(&admin)
        .await
        .expect("jobs");
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                store::claim(&pool, Uuid::now_v7(), 3, Duration::from_secs(30), 16)
                    .await
                    .expect("claim")
                    .0
                    .len()
            })
        })
        .collect();
    let mut total = 0;
    for r in racers {
        total += r.await.expect("racer");
    }
    assert_eq!(total, 5, "b's limit is 5");
    assert_counts_match(&admin, "after racing claims").await;

    // Writers side by side on orgs that have no count yet (a row is made by the first writer
    // that runs jobs of its org; the others add to it, whenever they look).
    let mut fresh = Vec::new();
    for i in 0..40 {
        fresh.push(tenant(&admin, &format!("fresh{i}")).await.org);
    }
    sqlx::query("INSERT INTO jobs (org_id, kind) SELECT o, 'noop' FROM unnest($1::uuid[]) o, generate_series(1, 10)")
        .bind(&fresh)
        .execute(&admin)
        .await
        .expect("jobs");
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (admin, fresh) = (admin.clone(), fresh.clone());
            tokio::spawn(async move {
                for _ in 0..10 {
                    sqlx::query(
                        "UPDATE jobs SET state = 'running' WHERE id IN (SELECT id FROM jobs \
                         WHERE org_id = ANY ($1) AND state = 'queued' ORDER BY id LIMIT 10 \
                         FOR UPDATE SKIP LOCKED)",
                    )
                    .bind(&fresh)
                    .execute(&admin)
                    .await
                    .expect("claim");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    assert_counts_match(&admin, "after racing first writers").await;
}

#[tokio::test]
async fn a_worker_completes_noop_jobs_by_deleting_them() {
    let app = TestApp::spawn().await;
    let admin = app.superuser_pool();
    let (a, b) = (tenant(&admin, "a").await, tenant(&admin, "b").await);
    sqlx::query("INSERT INTO jobs (org_id, kind) SELECT o, 'noop' FROM unnest($1::uuid[]) o, generate_series(1, 300)")
        .bind(vec![a.org, b.org])
        .execute(&admin)
        .await
        .expect("jobs");
    // A step of a real run beside them: its batches carry both kinds.
    let (id, def) = define(
        &admin,
        &a,
        "p",
        "steps:\n  - {id: s, role: builder, processor: 'builtin:echo', inputs: {}}\n",
    )
    .await;
    let run = start(&admin, &a, (id, &def), json!({}), Mode::Mock).await;
    let op = app.start_operator_with(|_, w| w.concurrency = 64);
    assert_eq!(
        finished(&admin, &[run], Duration::from_secs(30)).await,
        ["succeeded"]
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
            .fetch_one(&admin)
            .await
            .expect("jobs left");
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} jobs left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_counts_match(&admin, "after the worker").await;
    let running: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(running), 0)::bigint FROM org_job_counts")
            .fetch_one(&admin)
            .await
            .expect("counts");
    assert_eq!(running, 0);
    op.stop().await;
}
