//! Operator benchmark (a bench binary printing figures; each figure is the median of
//! `BENCH_ROUNDS` rounds, default 3). Operators are real `builderos operator` child processes.
//!
//! - Queue throughput: no-op jobs claimed and completed through the real queue by 1 and by 2
//!   operator processes, and the ceiling PostgreSQL allows here: a batched
//!   `FOR UPDATE SKIP LOCKED` claim-and-complete loop in plain SQL on 2 connections, in
//!   batches as large as the operator's claims.
//!   Target ≥ 20,000 jobs/s and ≥ 50% of the ceiling.
//! - Pipeline throughput: 10,000 runs of a 5-step fan-out/fan-in pipeline of no-op steps, with
//!   receipts, artifacts and run bookkeeping; steps/s and the operator's peak memory.
//!   Target ≥ 5,000 steps/s; every run `succeeded`, every step recorded exactly once.
//! - Latency: enqueue-to-start of a step on an idle operator, p50 / p99: from the commit of
//!   the transaction that enqueued it (the database's clock just before it) to `started_at`.
//!   Target p50 ≤ 3 ms, p99 ≤ 20 ms.
//! - Fairness: org A has 100,000 queued jobs; org B enqueues one job every 100 ms; B's start
//!   delay p50 / p99. Target p99 ≤ 50 ms.
//!
//! Run: `cargo bench -p builderos --bench operator` (`BENCH_JOBS`, `BENCH_RUNS`, `BENCH_ROUNDS`
//! change the sizes; `BENCH_ONLY=queue,pipeline,latency` picks parts — latency and fairness run
//! together; `BENCH_CONCURRENCY` sets the pipeline operator's steps at once, default 512, and
//! `BENCH_QUEUE_CONCURRENCY` the queue operators', default 2048;
//! `BENCH_BUILDEROS_BIN` runs another build's `builderos` as the operator, to compare
//! two versions in one sitting).

use std::time::{Duration, Instant};

use builderos_operator::pipeline::{self, Definition, Format};
use builderos_operator::processors::contract::Mode;
use builderos_operator::store::{self, NewRun, Trigger};
use builderos_operator::worker::WorkerConfig;
use builderos_test_support::{OperatorProcess, TestDb};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{cpu_secs, postgres_cpu_secs};

const FAN: &str = r"
steps:
  - {id: a, role: planner, processor: 'builtin:sleep', inputs: {ms: 0}}
  - {id: b, role: builder, processor: 'builtin:sleep', inputs: {ms: 0}, depends_on: [a]}
  - {id: c, role: builder, processor: 'builtin:sleep', inputs: {ms: 0}, depends_on: [a]}
  - {id: d, role: builder, processor: 'builtin:sleep', inputs: {ms: 0}, depends_on: [a]}
  - {id: e, role: reviewer, processor: 'builtin:sleep', inputs: {ms: 0}, depends_on: [b, c, d]}
";

const ONE: &str = r"
steps:
  - {id: only, role: builder, processor: 'builtin:sleep', inputs: {ms: 0}}
";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pipeline operator's steps at once (`BR_OS_OPERATOR_MAX_CONCURRENCY`): 512 by default,
/// enough for full batches of 256 results to record while as many steps are claimed and run.
/// (At 256, batches were half as large and PostgreSQL's CPU per step 20-30 % higher.)
fn pipeline_concurrency() -> u32 {
    u32::try_from(env_num("BENCH_CONCURRENCY", 512)).expect("concurrency")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Operator {
    process: OperatorProcess,
}

impl Operator {
    fn start(db: &TestDb, concurrency: u32) -> Self {
        Self {
            process: OperatorProcess::spawn(
                // (another build's binary, for comparing two versions in one sitting)
                &std::env::var("BENCH_BUILDEROS_BIN")
                    .unwrap_or_else(|_| env!("CARGO_BIN_EXE_builderos").to_owned()),
                &db.app_url,
                &[("BR_OS_OPERATOR_MAX_CONCURRENCY", concurrency.to_string())],
            ),
        }
    }

    /// Peak resident memory (VmHWM) in MiB.
    fn peak_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    fn stop(mut self) {
        self.process
            .signal_and_wait(nix::sys::signal::Signal::SIGTERM);
    }
}

struct World {
    db: TestDb,
    admin: PgPool,
}

async fn org(admin: &PgPool, slug: &str, limit: i32) -> (Uuid, Uuid) {
    let org = Uuid::now_v7();
    let project = Uuid::now_v7();
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
    sqlx::query("INSERT INTO org_operator_settings (org_id, max_concurrency) VALUES ($1, $2)")
        .bind(org)
        .bind(limit)
        .execute(admin)
        .await
        .expect("limit");
    (org, project)
}

async fn pipeline(admin: &PgPool, org: Uuid, project: Uuid, name: &str, def: &Definition) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO pipelines (id, org_id, project_id, name, latest_version) VALUES ($1, $2, $3, $4, 1)")
        .bind(id)
        .bind(org)
        .bind(project)
        .bind(name)
        .execute(admin)
        .await
        .expect("pipeline");
    sqlx::query("INSERT INTO pipeline_versions (pipeline_id, org_id, version, definition, source, format) VALUES ($1, $2, 1, $3, '', 'json')")
        .bind(id)
        .bind(org)
        .bind(serde_json::to_value(def).expect("json"))
        .execute(admin)
        .await
        .expect("version");
    id
}

/// Starts `n` runs (committing every 500) and returns them with the database's clock just
/// before the last commit: the moment the last run's first job is enqueued (nothing can see
/// a job before its transaction commits).
async fn start_runs(
    admin: &PgPool,
    org: Uuid,
    project: Uuid,
    pipeline: Uuid,
    def: &Definition,
    n: usize,
) -> (Vec<Uuid>, chrono::DateTime<chrono::Utc>) {
    let inputs = serde_json::Map::new();
    let mut runs = Vec::with_capacity(n);
    let mut tx = admin.begin().await.expect("tx");
    for i in 0..n {
        let started = store::start_run(
            &mut tx,
            &NewRun {
                org,
                project,
                pipeline,
                version: 1,
                definition: def,
                inputs: &inputs,
                mode: Mode::Mock,
                trigger: Trigger::Api,
                idempotency_key: None,
                created_by: None,
            },
        )
        .await
        .expect("start run");
        runs.push(started.run);
        if i % 500 == 499 {
            tx.commit().await.expect("commit");
            tx = admin.begin().await.expect("tx");
        }
    }
    let at = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut *tx)
        .await
        .expect("clock");
    tx.commit().await.expect("commit");
    (runs, at)
}

/// Whether any job is left. Cheap because it runs every few milliseconds while the queue is
/// measured, on the CPU being measured: a `count(*)` over the table would take a core's worth.
/// It reads the highest id, through the primary key. The lowest would cost more as the run
/// goes on: claims take each org's oldest jobs first and the benchmark's ids run org by org,
/// so the low end of the index fills with the entries of deleted jobs, which every look would
/// walk over again until a vacuum (in one measurement that walk was a tenth of PostgreSQL's
/// CPU); the highest ids are the last org's newest jobs, taken last.
async fn jobs_left(admin: &PgPool) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT id FROM jobs ORDER BY id DESC LIMIT 1")
        .fetch_optional(admin)
        .await
        .expect("jobs left")
        .is_some()
}

async fn noop_jobs(admin: &PgPool, orgs: &[Uuid], n: u64) {
    for org in orgs {
        sqlx::query(
            "INSERT INTO jobs (org_id, kind) SELECT $1, 'noop' FROM generate_series(1, $2)",
        )
        .bind(org)
        .bind(i64::try_from(n / orgs.len() as u64).expect("n"))
        .execute(admin)
        .await
        .expect("noop jobs");
    }
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(admin)
        .await
        .expect("vacuum");
}

/// One queue measurement: jobs/s, and CPU per job of PostgreSQL and of the claiming side (the
/// bench's own loops for the ceiling, the operator processes for the real queue).
struct QueueRound {
    rate: f64,
    postgres_us: f64,
    client_us: f64,
}

/// The ceiling: a plain-SQL batched claim-and-complete loop on `connections` connections, in
/// batches as large as the operator's claims.
async fn ceiling(world: &World, orgs: &[Uuid], n: u64, connections: usize) -> QueueRound {
    noop_jobs(&world.admin, orgs, n).await;
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(connections).expect("n"))
        .connect(&world.db.superuser_url)
        .await
        .expect("pool");
    let (pg_before, me_before) = (postgres_cpu_secs(), cpu_secs("self").unwrap_or(0.0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "UPDATE jobs SET state = 'running', lease_until = now() + interval '30 s' \
                     WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' ORDER BY org_id, run_at, id \
                                  LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id",
                )
                .bind(i64::from(WorkerConfig::default().batch))
                .fetch_all(&pool)
                .await
                .expect("claim");
                if ids.is_empty() {
                    break;
                }
                sqlx::query("DELETE FROM jobs WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&pool)
                    .await
                    .expect("complete");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let round = QueueRound {
        rate,
        postgres_us: (postgres_cpu_secs() - pg_before) * 1e6 / n as f64,
        client_us: (cpu_secs("self").unwrap_or(0.0) - me_before) * 1e6 / n as f64,
    };
    pool.close().await;
    round
}

/// No-op jobs through the real queue with `operators` operator processes.
async fn queue(world: &World, orgs: &[Uuid], n: u64, operators: usize) -> QueueRound {
    noop_jobs(&world.admin, orgs, n).await;
    let pg_before = postgres_cpu_secs();
    let started = Instant::now();
    let ops: Vec<Operator> = (0..operators)
        .map(|_| {
            Operator::start(
                &world.db,
                // No-op jobs hold nothing but a slot. With 1,024 the two claims a worker keeps
                // going were held back by free slots (~330 jobs each, of up to 512).
                u32::try_from(env_num("BENCH_QUEUE_CONCURRENCY", 2048)).expect("concurrency"),
            )
        })
        .collect();
    while jobs_left(&world.admin).await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let pg_cpu = postgres_cpu_secs() - pg_before;
    let op_cpu: f64 = ops
        .iter()
        .map(|op| cpu_secs(&op.process.pid().to_string()).unwrap_or(0.0))
        .sum();
    for op in ops {
        op.stop();
    }
    profile(&world.admin).await;
    QueueRound {
        rate,
        postgres_us: pg_cpu * 1e6 / n as f64,
        client_us: op_cpu * 1e6 / n as f64,
    }
}

/// With `BENCH_PROFILE` set: where PostgreSQL spent its time since the last call (functions,
/// and how the tables were read: a sequential scan on the hot path is a bad plan).
async fn profile(admin: &PgPool) {
    if std::env::var("BENCH_PROFILE").is_err() {
        return;
    }
    let rows: Vec<(String, i64, f64, f64)> = sqlx::query_as(
        "SELECT funcname::text, calls, total_time, self_time FROM pg_stat_user_functions ORDER BY total_time DESC",
    )
    .fetch_all(admin)
    .await
    .expect("function stats");
    for (name, calls, total, own) in rows {
        println!("    {name:<20} calls {calls:>7}  total {total:>9.1} ms  self {own:>9.1} ms");
    }
    let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, seq_scan, seq_tup_read, coalesce(idx_scan, 0), n_tup_upd, n_tup_hot_upd \
           FROM pg_stat_user_tables \
          WHERE relname IN ('runs', 'run_steps', 'jobs', 'step_attempts', 'artifacts', 'run_events') ORDER BY relname",
    )
    .fetch_all(admin)
    .await
    .expect("table stats");
    for (name, seq, seq_rows, idx, upd, hot) in rows {
        println!(
            "    {name:<20} seq scans {seq:>7} ({seq_rows:>10} rows)  index scans {idx:>9}  updates {upd:>8} ({hot:>8} HOT)"
        );
    }
    sqlx::query("SELECT pg_stat_reset()")
        .execute(admin)
        .await
        .expect("reset");
}

#[derive(sqlx::FromRow)]
struct Tally {
    runs: i64,
    succeeded: i64,
    attempts: i64,
    distinct_steps: i64,
}

/// A pipeline round's figures.
struct PipelineRound {
    rate: f64,
    peak_mib: f64,
    /// CPU per step, in µs: the operator process, and PostgreSQL's processes.
    operator_us: f64,
    postgres_us: f64,
    tally: Tally,
}

async fn pipelines(
    world: &World,
    org: Uuid,
    project: Uuid,
    pipeline_id: Uuid,
    def: &Definition,
    runs: usize,
) -> PipelineRound {
    sqlx::query("TRUNCATE step_attempts, artifacts, run_events, run_steps, runs CASCADE")
        .execute(&world.admin)
        .await
        .expect("truncate");
    start_runs(&world.admin, org, project, pipeline_id, def, runs).await;
    sqlx::query("VACUUM ANALYZE")
        .execute(&world.admin)
        .await
        .expect("vacuum");
    let steps = runs * def.steps.len();
    let pg_before = postgres_cpu_secs();
    let started = Instant::now();
    let concurrency = pipeline_concurrency();
    let op = Operator::start(&world.db, concurrency);
    let mut peak = 0.0_f64;
    loop {
        // (through the index of active runs: a count over all runs would be a scan)
        let active: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE state IN ('queued', 'running'))",
        )
        .fetch_one(&world.admin)
        .await
        .expect("active");
        peak = peak.max(op.peak_mib());
        if !active {
            break;
        }
        // (polled seldom: the poll competes with the operator for the same two cores)
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = steps as f64 / started.elapsed().as_secs_f64();
    let pg_cpu = postgres_cpu_secs() - pg_before;
    let op_cpu = cpu_secs(&op.process.pid().to_string()).unwrap_or(0.0);
    peak = peak.max(op.peak_mib());
    op.stop();
    profile(&world.admin).await;
    let tally: Tally = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs) AS runs, \
                (SELECT count(*) FROM runs WHERE state = 'succeeded') AS succeeded, \
                (SELECT count(*) FROM step_attempts) AS attempts, \
                (SELECT count(DISTINCT (run_id, step_id)) FROM step_attempts WHERE status = 'succeeded') AS distinct_steps",
    )
    .fetch_one(&world.admin)
    .await
    .expect("tally");
    PipelineRound {
        rate,
        peak_mib: peak,
        operator_us: op_cpu * 1e6 / steps as f64,
        postgres_us: pg_cpu * 1e6 / steps as f64,
        tally,
    }
}

/// Start delays (ms) of single-step runs of `org`, one every `gap`, `n` of them.
async fn delays(
    world: &World,
    org: Uuid,
    project: Uuid,
    pipeline_id: Uuid,
    def: &Definition,
    n: usize,
    gap: Duration,
) -> Vec<f64> {
    let (mut runs, mut enqueued) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let t = Instant::now();
        let (run, at) = start_runs(&world.admin, org, project, pipeline_id, def, 1).await;
        runs.extend(run);
        enqueued.push(at);
        let left = gap.saturating_sub(t.elapsed());
        tokio::time::sleep(left).await;
    }
    // Wait until every run has started.
    loop {
        let pending: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM run_steps WHERE run_id = ANY($1) AND started_at IS NULL",
        )
        .bind(&runs)
        .fetch_one(&world.admin)
        .await
        .expect("pending");
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut d: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM s.started_at - u.at)::float8 * 1000 \
           FROM unnest($1::uuid[], $2::timestamptz[]) AS u(run, at) \
           JOIN run_steps s ON s.run_id = u.run",
    )
    .bind(&runs)
    .bind(&enqueued)
    .fetch_all(&world.admin)
    .await
    .expect("delays");
    d.sort_by(f64::total_cmp);
    d
}

fn main() {
    let rounds = env_num("BENCH_ROUNDS", 3).max(1);
    let jobs = env_num("BENCH_JOBS", 200_000);
    let runs = usize::try_from(env_num("BENCH_RUNS", 10_000)).expect("runs");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        builderos_shared::telemetry::install_crypto_provider();
        let db = TestDb::new().await;
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db.superuser_url)
            .await
            .expect("admin pool");
        if std::env::var("BENCH_PROFILE").is_ok() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER DATABASE {} SET track_functions = 'pl'", db.name)))
                .execute(&admin)
                .await
                .expect("track_functions");
        }
        let world = World {
            db,
            admin,
        };
        let mut orgs = Vec::new();
        for i in 0..10 {
            orgs.push(org(&world.admin, &format!("q{i}"), 10_000).await.0);
        }
        let fan = pipeline::parse(FAN, Format::Yaml).expect("fan pipeline");
        let one = pipeline::parse(ONE, Format::Yaml).expect("one-step pipeline");
        let (porg, pproj) = org(&world.admin, "pipelines", 10_000).await;
        let fan_id = pipeline(&world.admin, porg, pproj, "fan", &fan).await;
        let (aorg, aproj) = org(&world.admin, "org-a", 16).await;
        let (borg, bproj) = org(&world.admin, "org-b", 16).await;
        let _ = aproj;
        let one_b = pipeline(&world.admin, borg, bproj, "one", &one).await;
        let one_p = pipeline(&world.admin, porg, pproj, "one", &one).await;

        println!("operator benchmark ({rounds} rounds, medians; 2-core machine, PostgreSQL on the same machine)");
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let wanted = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);

        if wanted("queue") {
        let (mut ceil, mut q1, mut q2) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            ceil.push(ceiling(&world, &orgs, jobs, 2).await);
            q1.push(queue(&world, &orgs, jobs, 1).await);
            q2.push(queue(&world, &orgs, jobs, 2).await);
        }
        // Medians of each figure (CPU per job as well: the machine is shared and noisy).
        let med = |v: &[QueueRound], f: fn(&QueueRound) -> f64| median(v.iter().map(f).collect());
        let (ceil_rate, q1_rate, q2_rate) = (med(&ceil, |r| r.rate), med(&q1, |r| r.rate), med(&q2, |r| r.rate));
        // Each round measures its ceiling and its queues back to back, so each round's ratio
        // compares them on one state of the machine; the figure is the median of those.
        let ratios = |q: &[QueueRound]| -> (f64, String) {
            let each: Vec<f64> = q.iter().zip(&ceil).map(|(q, c)| 100.0 * q.rate / c.rate).collect();
            let list = each.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
            (median(each), list)
        };
        let ((r1, l1), (r2, l2)) = (ratios(&q1), ratios(&q2));
        println!("queue throughput ({jobs} no-op jobs over 10 orgs; CPU per job: PostgreSQL + the claiming side;");
        println!("  % of ceiling: the median of each round's ratio to its own ceiling, the rounds' in brackets)");
        println!(
            "  PostgreSQL ceiling (plain SQL, SKIP LOCKED batches of {}, 2 connections) {ceil_rate:>9.0} jobs/s   CPU {:.1} + {:.1} µs",
            WorkerConfig::default().batch,
            med(&ceil, |r| r.postgres_us),
            med(&ceil, |r| r.client_us)
        );
        println!(
            "  real queue, 1 operator process   {q1_rate:>9.0} jobs/s  ({r1:>3.0}% of ceiling [{l1}]; target >= 20000 jobs/s and >= 50%)   CPU {:.1} + {:.1} µs",
            med(&q1, |r| r.postgres_us),
            med(&q1, |r| r.client_us)
        );
        println!(
            "  real queue, 2 operator processes {q2_rate:>9.0} jobs/s  ({r2:>3.0}% of ceiling [{l2}])   CPU {:.1} + {:.1} µs",
            med(&q2, |r| r.postgres_us),
            med(&q2, |r| r.client_us)
        );
        }

        if wanted("pipeline") {
        let (mut rates, mut peaks, mut op_us, mut pg_us) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut all_ok = true;
        for _ in 0..rounds {
            let round = pipelines(&world, porg, pproj, fan_id, &fan, runs).await;
            let t = round.tally;
            let ok = t.runs == runs as i64 && t.succeeded == t.runs && t.attempts == t.runs * 5 && t.distinct_steps == t.runs * 5;
            all_ok &= ok;
            rates.push(round.rate);
            peaks.push(round.peak_mib);
            op_us.push(round.operator_us);
            pg_us.push(round.postgres_us);
            if !ok {
                println!("  !! runs {} succeeded {} attempts {} distinct steps {}", t.runs, t.succeeded, t.attempts, t.distinct_steps);
            }
        }
        println!(
            "pipeline throughput ({runs} runs x 5 steps, fan-out/fan-in, receipts and artifacts written; operator concurrency {})",
            pipeline_concurrency()
        );
        println!(
            "  {:>9.0} steps/s (target >= 5000)   operator peak RSS {:.1} MiB   every run succeeded, every step once: {}",
            median(rates),
            median(peaks),
            if all_ok { "yes" } else { "NO" }
        );
        // CPU time is steadier than throughput on a shared 2-core machine: 5,000 steps/s
        // leaves 400 µs of CPU per step for both together.
        println!(
            "  CPU per step: operator {:.0} µs, PostgreSQL {:.0} µs (5000 steps/s on 2 cores allows 400 µs in all)",
            median(op_us),
            median(pg_us)
        );
        }

        if !(wanted("latency") || wanted("fairness")) {
            return;
        }
        // Latency on an idle operator, an idle database and idle disks: the pipeline part's
        // bulk changes are vacuumed and written back first, or autovacuum and the kernel's
        // writeback of 150,000 files would be measured along with the queue.
        sqlx::query("VACUUM ANALYZE")
            .execute(&world.admin)
            .await
            .expect("vacuum");
        tokio::task::spawn_blocking(nix::unistd::sync).await.expect("sync");
        let op = Operator::start(&world.db, 64);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        for _ in 0..rounds {
            let d = delays(&world, porg, pproj, one_p, &one, 200, Duration::from_millis(10)).await;
            p50s.push(percentile(&d, 0.50));
            p99s.push(percentile(&d, 0.99));
        }
        println!("latency (idle operator, enqueue to start, 200 runs per round)");
        println!("  p50 {:>6.2} ms (target <= 3)   p99 {:>6.2} ms (target <= 20)", median(p50s), median(p99s));

        // Fairness: A's backlog, B's trickle.
        let mut p50s = Vec::new();
        let mut p99s = Vec::new();
        let mut backlog = Vec::new();
        for _ in 0..rounds {
            // (the queued ones: the operator completes the ones it runs, and deleting those
            // too would race its own deletes)
            sqlx::query("DELETE FROM jobs WHERE state = 'queued'").execute(&world.admin).await.expect("clear");
            noop_jobs(&world.admin, &[aorg], 100_000).await;
            let d = delays(&world, borg, bproj, one_b, &one, 30, Duration::from_millis(100)).await;
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE org_id = $1")
                .bind(aorg)
                .fetch_one(&world.admin)
                .await
                .expect("left");
            backlog.push(left as f64);
            p50s.push(percentile(&d, 0.50));
            p99s.push(percentile(&d, 0.99));
        }
        op.stop();
        println!("fairness (org A: 100,000 queued jobs, limit 16; org B: one job every 100 ms, 30 per round)");
        println!(
            "  B's start delay p50 {:>6.2} ms   p99 {:>6.2} ms (target <= 50)   A's jobs still queued at the end: {:.0}",
            median(p50s),
            median(p99s),
            median(backlog)
        );
    });
}
