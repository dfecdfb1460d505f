//! Audit trail benchmark (a bench binary printing figures):
//!
//! - 1,000,000 events in one org plus 1,000,000 spread over 100 other orgs (real hash chains);
//! - p50/p95 of five typical filtered queries through the same store code and row-level
//!   security as the API (by actor, by action prefix, by target, by time window, combined);
//! - export throughput (pages fetched and rendered as JSON Lines) in events/s;
//! - verify throughput (the whole 1M chain recomputed) in events/s;
//! - the overhead of the audit write on a mutating request, as requests/s with and without it
//!   (pairs of 1 s rounds — forty for the real `PATCH`, sixteen for the minimal route; the
//!   overhead is the median of the pairs' ratios, printed with its distribution-free 95 %
//!   confidence interval): a minimal update route in the big org, and the real
//!   `PATCH …/projects/{project}` against a copy of its handler minus the audit write; each
//!   over 16 connections in one org, 16 connections over 16 orgs, and one connection. The
//!   audit side pays for sealing too: a background sealer runs during its rounds, and the time
//!   to seal what is left in the journal when a round ends is added to that round's time.
//!
//! Run: `cargo bench -p builderos --bench audit` (`BENCH_EVENTS` changes the size of the big
//! org; the other orgs get as many events in total; `BENCH_ONLY=patch` measures only the real
//! `PATCH`'s overhead).

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::post;
use builderos_api::audit::query::{ActionMatch, Filter};
use builderos_api::audit::{self, AuditContext, ChainedFields, Event, GENESIS_HASH, store};
use builderos_shared::db::{self, Scope};
use builderos_test_support::{TestApp, TestDb, seal_journal};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

#[path = "support/cpu.rs"]
mod cpu;
use cpu::{cpu_secs, postgres_cpu_secs};

const ACTIONS: [&str; 12] = [
    "deploy.request",
    "deploy.approve",
    "deploy.deny",
    "run.start",
    "run.cancel",
    "project.create",
    "project.rename",
    "prompt.publish",
    "prompt.label_move",
    "token.create",
    "member.role_change",
    "pipeline.update",
];

#[derive(Default)]
struct Columns(
    Vec<Uuid>,
    Vec<i64>,
    Vec<DateTime<Utc>>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<String>,
    Vec<serde_json::Value>,
    Vec<String>,
    Vec<String>,
);

struct Chain {
    org: Uuid,
    seq: i64,
    prev: String,
}

/// Inserts `n` chained events for `chain.org`, spread over the year before `end`.
async fn insert(pool: &PgPool, chain: &mut Chain, n: i64, end: DateTime<Utc>, actors: i64) {
    const BATCH: i64 = 20_000;
    let start = end - chrono::Duration::days(365);
    let step = (end - start).num_microseconds().unwrap_or(1) / n.max(1);
    let mut done = 0;
    while done < n {
        let count = BATCH.min(n - done);
        let mut cols = Columns::default();
        for _ in 0..count {
            chain.seq += 1;
            let i = chain.seq;
            let at = start + chrono::Duration::microseconds(step * i);
            let actor = format!("user{}@example.com", i % actors);
            let action = ACTIONS[usize::try_from(i % 12).unwrap_or(0)];
            let target = format!("run-{}", i % 100_000);
            let outcome = if i % 50 == 0 { "denied" } else { "success" };
            let detail = serde_json::json!({"n": i});
            let id = Uuid::now_v7();
            let actor_id = format!("{:032x}", i % actors);
            let fields = ChainedFields {
                id,
                org_id: Some(chain.org),
                seq: i,
                occurred_at: audit::timestamp(at),
                actor_type: "user",
                actor_id: Some(&actor_id),
                actor_name: Some(&actor),
                auth_method: Some("password"),
                action,
                target_type: Some("run"),
                target_id: Some(&target),
                outcome,
                request_id: None,
                client_addr: Some("10.0.0.1"),
                user_agent: None,
                detail: &detail,
                prev_hash: &chain.prev,
            };
            let hash = fields.hash();
            cols.0.push(id);
            cols.1.push(i);
            cols.2.push(at);
            cols.3.push(actor_id.clone());
            cols.4.push(actor);
            cols.5.push(action.to_owned());
            cols.6.push(target);
            cols.7.push(outcome.to_owned());
            cols.8.push(chain.prev.clone());
            cols.9.push(hash.clone());
            cols.10.push(detail);
            cols.11.push("password".to_owned());
            cols.12.push("10.0.0.1".to_owned());
            chain.prev = hash;
        }
        sqlx::query(
            "INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, actor_id, actor_name, auth_method, action, \
             target_type, target_id, outcome, client_addr, detail, prev_hash, hash) \
             SELECT id, $1, seq, at, 'user', actor_id, actor, auth, action, 'run', target, outcome, addr, detail, prev, hash \
             FROM UNNEST($2::uuid[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                         $10::text[], $11::text[], $12::jsonb[], $13::text[], $14::text[]) \
               AS t(id, seq, at, actor_id, actor, action, target, outcome, prev, hash, detail, auth, addr)",
        )
        .bind(chain.org)
        .bind(&cols.0).bind(&cols.1).bind(&cols.2).bind(&cols.3).bind(&cols.4).bind(&cols.5).bind(&cols.6)
        .bind(&cols.7).bind(&cols.8).bind(&cols.9).bind(&cols.10).bind(&cols.11).bind(&cols.12)
        .execute(pool)
        .await
        .expect("insert batch");
        done += count;
    }
    sqlx::query("INSERT INTO audit_heads (chain_id, seq, hash) VALUES ($1, $2, $3) ON CONFLICT (chain_id) DO UPDATE SET seq = $2, hash = $3")
        .bind(chain.org)
        .bind(chain.seq)
        .bind(&chain.prev)
        .execute(pool)
        .await
        .expect("head");
}

/// A round of load on one side of an overhead comparison: requests/s (the time to seal what
/// the journal holds when the round ends counts in it), and CPU per request of PostgreSQL and
/// of this process (the API, its sealer and the load generator).
#[derive(Clone, Copy)]
struct Round {
    rps: f64,
    postgres_us: f64,
    client_us: f64,
}

/// Pairs of rounds in an overhead comparison (the real `PATCH`'s, which the target is about;
/// the minimal route's), and the length of each round. The machine's speed drifts by tens of
/// percent over seconds, so the two sides run in many short pairs, in alternating order, and
/// the overhead is the median of the pairs' own ratios, printed with its 95 % confidence
/// interval.
const PAIRS: usize = 40;
const MINIMAL_PAIRS: usize = 16;
const ROUND: Duration = Duration::from_millis(1000);

/// Runs `load` (which returns how many requests it made) as one round; `pools` are the app's
/// and a superuser's, for [`drain`].
async fn round(pools: &(PgPool, PgPool), load: impl Future<Output = u64>) -> Round {
    let (pg_before, me_before) = (postgres_cpu_secs(), cpu_secs("self").unwrap_or(0.0));
    let started = Instant::now();
    let requests = load.await;
    let elapsed = started.elapsed() + drain(&pools.0, &pools.1).await;
    let n = requests.max(1) as f64;
    Round {
        rps: requests as f64 / elapsed.as_secs_f64(),
        postgres_us: (postgres_cpu_secs() - pg_before) * 1e6 / n,
        client_us: (cpu_secs("self").unwrap_or(0.0) - me_before) * 1e6 / n,
    }
}

/// The distribution-free 95 % confidence interval of the median of `sorted` (n values): the
/// k-th smallest and k-th largest value, for the largest k with P(Binomial(n, 1/2) < k) <=
/// 2.5 %, so that the median lies outside with at most 5 % probability whatever the
/// distribution.
fn median_interval(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    let half_n = 0.5f64.powi(i32::try_from(n).expect("pairs"));
    let (mut below, mut choose, mut k) = (0.0, 1.0, 0);
    // below = P(B < k + 1) as k grows; choose = C(n, k).
    while k < n / 2 {
        below += choose * half_n;
        if below > 0.025 {
            break;
        }
        choose = choose * (n - k) as f64 / (k + 1) as f64;
        k += 1;
    }
    let k = k.max(1);
    (sorted[k - 1], sorted[n - k])
}

/// Runs `pairs` pairs of rounds, `side(false)` without the audit write and `side(true)` with
/// it, and prints the comparison as `name`, followed by `goal` (the target, or why none).
async fn compare(
    name: &str,
    goal: &str,
    pairs_wanted: usize,
    mut side: impl AsyncFnMut(bool) -> Round,
) {
    let mut pairs = Vec::new();
    for i in 0..pairs_wanted {
        // Alternated, so that a drift over the pair weighs on both sides alike.
        let (without, with) = if i % 2 == 0 {
            let without = side(false).await;
            (without, side(true).await)
        } else {
            let with = side(true).await;
            (side(false).await, with)
        };
        pairs.push((without, with));
    }
    let mut overheads: Vec<f64> = pairs
        .iter()
        .map(|(without, with)| 100.0 * (1.0 - with.rps / without.rps))
        .collect();
    let listed = overheads
        .iter()
        .map(|o| format!("{o:.0}"))
        .collect::<Vec<_>>()
        .join(", ");
    overheads.sort_by(f64::total_cmp);
    let median = overheads[overheads.len() / 2 - 1].midpoint(overheads[overheads.len() / 2]);
    let mean = |f: fn(&Round) -> f64, with: bool| {
        pairs
            .iter()
            .map(|p| f(if with { &p.1 } else { &p.0 }))
            .sum::<f64>()
            / pairs.len() as f64
    };
    let (low, high) = median_interval(&overheads);
    println!(
        "    {name:<38} without {:>6.0} req/s, with {:>6.0} req/s: overhead {median:>5.1} % (95 % CI {low:.1} to {high:.1} %)   ({goal})",
        mean(|r| r.rps, false),
        mean(|r| r.rps, true),
    );
    println!(
        "    {:<38} pairs: [{listed}] %; CPU per request: without {:.0} + {:.0} µs, with {:.0} + {:.0} µs (PostgreSQL + this process)",
        "",
        mean(|r| r.postgres_us, false),
        mean(|r| r.client_us, false),
        mean(|r| r.postgres_us, true),
        mean(|r| r.client_us, true),
    );
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn update(
    pool: &PgPool,
    org: Uuid,
    project: Uuid,
    with_audit: bool,
) -> Result<(), sqlx::Error> {
    let mut tx = db::begin(pool, &Scope::org(org)).await?;
    let change = sqlx::query("UPDATE projects SET name = name || '' WHERE id = $1").bind(project);
    let change = if with_audit {
        audit::record_with(
            change,
            Some(org),
            &AuditContext::system(),
            Event::success("project.rename", "project", project),
        )?
    } else {
        change
    };
    change.execute(&mut *tx).await?;
    tx.commit().await
}

/// Sends `request(client, url)` over one connection per url, each again as soon as the one
/// before succeeded, for `duration`; how many requests that made.
async fn load_until(
    app: &TestApp,
    urls: Vec<String>,
    duration: Duration,
    request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder + Clone + Send + 'static,
) -> u64 {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for url in urls {
        let (client, request) = (app.client.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let res = request(&client, &url).send().await;
                assert!(res.is_ok_and(|r| r.status().is_success()), "{url} failed");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    total
}

/// Posts to `{path}/{org}/{project}` over one connection per target for `duration`; how many
/// requests that made.
async fn post_until(
    app: &TestApp,
    path: &str,
    targets: &[(Uuid, Uuid)],
    duration: Duration,
) -> u64 {
    let urls = targets
        .iter()
        .map(|(org, project)| app.url(&format!("{path}/{org}/{project}")))
        .collect();
    load_until(app, urls, duration, |client, url| client.post(url)).await
}

/// Seals what the journal still holds ([`seal_journal`]); how long that took.
async fn drain(pool: &PgPool, superuser: &PgPool) -> Duration {
    let t = Instant::now();
    seal_journal(pool, superuser).await;
    t.elapsed()
}

fn main() {
    let big: i64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "patch") {
            real_endpoint_overhead().await;
            return;
        }
        let db = TestDb::new().await;
        let superuser = PgPool::connect(&db.superuser_url).await.expect("superuser");
        let app_pool = db.app_pool();
        let end = Utc::now();

        let t = Instant::now();
        let org = Uuid::now_v7();
        let mut chain = Chain { org, seq: 0, prev: GENESIS_HASH.to_owned() };
        insert(&superuser, &mut chain, big, end, 1000).await;
        for _ in 0..100 {
            let mut other = Chain { org: Uuid::now_v7(), seq: 0, prev: GENESIS_HASH.to_owned() };
            insert(&superuser, &mut other, big / 100, end, 50).await;
        }
        sqlx::query("ANALYZE audit_events").execute(&superuser).await.expect("analyze");
        println!("audit benchmark: {big} events in one org + {big} over 100 orgs (generated and hashed in {:.0} s)", t.elapsed().as_secs_f64());

        // Five typical filtered queries, first page of 100, newest first.
        type MakeFilter = Box<dyn Fn(i64) -> Filter>;
        let queries: Vec<(&str, MakeFilter)> = vec![
            ("by actor", Box::new(|i| Filter { actor: Some(format!("user{}@example.com", i % 1000)), ..Filter::default() })),
            ("by action prefix", Box::new(|i| Filter { action: Some(ActionMatch::Prefix(if i % 2 == 0 { "deploy.".into() } else { "prompt.".into() })), ..Filter::default() })),
            ("by target", Box::new(|i| Filter { target_type: Some("run".into()), target_id: Some(format!("run-{}", (i * 7919) % 100_000)), ..Filter::default() })),
            ("by time window (1 day)", Box::new(move |i| {
                let from = end - chrono::Duration::days(1 + i % 300);
                Filter { from: Some(from), to: Some(from + chrono::Duration::days(1)), ..Filter::default() }
            })),
            ("combined", Box::new(move |i| {
                let from = end - chrono::Duration::days(30 + i % 200);
                Filter {
                    actor: Some(format!("user{}@example.com", (i * 50) % 1000)),
                    action: Some(ActionMatch::Prefix("deploy.".into())),
                    outcome: Some("denied".into()),
                    from: Some(from),
                    to: Some(from + chrono::Duration::days(90)),
                    ..Filter::default()
                }
            })),
        ];
        println!("  filtered queries (page of 100, through RLS; 40 runs each)    p50 ms    p95 ms   (target p95 <= 50 ms)");
        for (name, make) in &queries {
            let mut samples = Vec::new();
            for i in 0..40 {
                let filter = make(i);
                let t = Instant::now();
                let page = store::page_desc(&app_pool, org, &filter, None, 100).await.expect("query");
                samples.push(t.elapsed());
                assert!(page.len() <= 100);
            }
            println!("    {name:<24} {:>35.2} {:>9.2}", percentile(&mut samples, 0.5), percentile(&mut samples, 0.95));
        }

        // Export: every event of the big org, page by page, rendered as JSON Lines.
        let t = Instant::now();
        let mut before = None;
        let (mut exported, mut bytes) = (0u64, 0usize);
        loop {
            let page = store::page_desc(&app_pool, org, &Filter::default(), before, store::BATCH).await.expect("page");
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            bytes += audit::export::render(&page, false).len();
            exported += page.len() as u64;
        }
        let export_rate = exported as f64 / t.elapsed().as_secs_f64();
        println!("  export (JSON Lines)  {exported} events, {:.0} MB in {:.1} s: {:>9.0} events/s   (target >= 100,000)", bytes as f64 / 1e6, t.elapsed().as_secs_f64(), export_rate);

        let t = Instant::now();
        let report = store::verify_org(&app_pool, org).await.expect("verify");
        assert!(report.ok, "the generated chain must verify: {:?}", report.first_broken_seq);
        let verify_rate = report.checked as f64 / t.elapsed().as_secs_f64();
        println!("  verify               {} events in {:.1} s: {:>9.0} events/s   (target >= 200,000)", report.checked, t.elapsed().as_secs_f64(), verify_rate);

        // Audit write overhead on a mutating request: the same update with and without the
        // audit write, (a) 16 connections in the big org (every write serialises on its chain
        // head), (b) 16 connections over 16 orgs (independent chains), (c) one connection.
        sqlx::query("INSERT INTO orgs (id, slug, name) VALUES ($1, 'bench', 'Bench')").bind(org).execute(&superuser).await.expect("org");
        let mut same_org = Vec::new();
        let mut many_orgs = Vec::new();
        for i in 0..16 {
            let id = Uuid::now_v7();
            sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES ($1, $2, $3, 'P')").bind(id).bind(org).bind(format!("p{i}")).execute(&superuser).await.expect("project");
            same_org.push((org, id));
            let other = Uuid::now_v7();
            sqlx::query("INSERT INTO orgs (id, slug, name) VALUES ($1, $2, 'O')").bind(other).bind(format!("o{i}")).execute(&superuser).await.expect("org");
            let pid = Uuid::now_v7();
            sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES ($1, $2, 'p', 'P')").bind(pid).bind(other).execute(&superuser).await.expect("project");
            many_orgs.push((other, pid));
        }
        let pool = app_pool.clone();
        // What the API's state runs: the audit side's events are sealed as they come.
        let sealer = audit::sealer::Sealer::spawn(app_pool.clone());
        let app = TestApp::spawn_router(db.clone(), app_pool.clone(), move |limit| {
            let routes = Router::new()
                .route("/with/{org}/{project}", post(|State(pool): State<PgPool>, Path((o, p)): Path<(Uuid, Uuid)>| async move { update(&pool, o, p, true).await.map_err(|e| e.to_string()) }))
                .route("/without/{org}/{project}", post(|State(pool): State<PgPool>, Path((o, p)): Path<(Uuid, Uuid)>| async move { update(&pool, o, p, false).await.map_err(|e| e.to_string()) }))
                .with_state(pool);
            builderos_shared::http::finish(routes, "bench", limit)
        })
        .await;
        post_until(&app, "/without", &same_org, Duration::from_secs(1)).await;
        println!("  audit write overhead on a minimal bench route, supplementary (the same update with and without audit::record_with; median of {MINIMAL_PAIRS} pairs of {:.1} s rounds):", ROUND.as_secs_f64());
        let pools = (app.pool.clone(), superuser.clone());
        for (name, targets) in [("16 connections, one org (one chain)", &same_org), ("16 connections, 16 orgs", &many_orgs), ("1 connection", &same_org[..1].to_vec())] {
            compare(name, "supplementary, no target: a bench-only route of one statement", MINIMAL_PAIRS, async |audited| {
                let path = if audited { "/with" } else { "/without" };
                round(&pools, post_until(&app, path, targets, ROUND)).await
            })
            .await;
        }
        drop((app, sealer, pools, app_pool));
        superuser.close().await;
        // The real endpoint is measured on a database of its own; the two million events'
        // database goes first, so its autovacuum and checkpoint don't run into those rounds.
        db.drop_database().await;
        real_endpoint_overhead().await;
    });
}

/// The real `PATCH /v1/orgs/{org}/projects/{project}` (authenticated, authorized, audited)
/// against a copy of its handler minus the audit write: the same extractors, validation,
/// statements and response.
async fn real_endpoint_overhead() {
    use builderos_api::AppState;
    use builderos_api::auth::Auth;
    use builderos_api::domain::display_name;
    use builderos_api::permissions::Permission;
    use builderos_shared::http::{ApiError, Json};
    use chrono::DateTime;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RenameProject {
        name: String,
    }
    #[derive(serde::Serialize)]
    struct Environment {
        id: Uuid,
        name: String,
        protected: bool,
        required_approvals: i32,
    }
    #[derive(serde::Serialize)]
    struct Project {
        id: Uuid,
        org_id: Uuid,
        slug: String,
        name: String,
        created_at: DateTime<Utc>,
        environments: Vec<Environment>,
    }
    async fn load_project(
        conn: &mut sqlx::PgConnection,
        org: Uuid,
        project: Uuid,
    ) -> Result<Project, ApiError> {
        let row: Option<(Uuid, Uuid, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, org_id, slug, name, created_at FROM projects WHERE id = $1 AND org_id = $2",
        )
        .bind(project)
        .bind(org)
        .fetch_optional(&mut *conn)
        .await?;
        let (id, org_id, slug, name, created_at) =
            row.ok_or_else(|| ApiError::not_found("project"))?;
        let rows: Vec<(Uuid, String, bool, i32)> = sqlx::query_as(
            "SELECT id, name, protected, required_approvals FROM environments WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project)
        .fetch_all(&mut *conn)
        .await?;
        Ok(Project {
            id,
            org_id,
            slug,
            name,
            created_at,
            environments: rows
                .into_iter()
                .map(|(id, name, protected, required_approvals)| Environment {
                    id,
                    name,
                    protected,
                    required_approvals,
                })
                .collect(),
        })
    }
    async fn rename_without_audit(
        State(state): State<AppState>,
        auth: Auth,
        Path((org, project)): Path<(String, String)>,
        Json(body): Json<RenameProject>,
    ) -> Result<Json<Project>, ApiError> {
        let org = Uuid::parse_str(&org).map_err(|_| ApiError::not_found("org"))?;
        let project = Uuid::parse_str(&project).map_err(|_| ApiError::not_found("project"))?;
        auth.authorize(&state, org, Permission::ProjectsWrite)
            .await?;
        let name = display_name("name", &body.name)?;
        let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
        let _old = load_project(&mut tx, org, project).await?;
        sqlx::query("UPDATE projects SET name = $2 WHERE id = $1")
            .bind(project)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        let updated = load_project(&mut tx, org, project).await?;
        tx.commit().await?;
        Ok(Json(updated))
    }

    let db = TestDb::new().await;
    let pool = db.app_pool();
    let config = builderos_test_support::test_config();
    let app = TestApp::spawn_router(db, pool.clone(), move |limit| {
        let state = AppState::new(&config, pool).expect("state");
        let bench = Router::new()
            .route(
                "/bench/orgs/{org}/projects/{project}",
                axum::routing::patch(rename_without_audit),
            )
            .with_state(state.clone());
        builderos_shared::http::finish(builderos_api::router(state).merge(bench), "bench", limit)
    })
    .await;
    let owner = app.signup("bench@example.com").await;
    let one_org = app.create_org(&owner, "one").await;
    let mut same_org = Vec::new();
    let mut many_orgs = Vec::new();
    for i in 0..16 {
        let (_, p) = app
            .post_as(
                &format!("/v1/orgs/{one_org}/projects"),
                Some(&owner.access),
                serde_json::json!({"slug": format!("p{i}"), "name": "P"}),
            )
            .await;
        same_org.push((
            one_org.clone(),
            p["id"]
                .as_str()
                .unwrap_or_else(|| panic!("project: {p}"))
                .to_owned(),
        ));
        let org = app.create_org(&owner, &format!("org{i}")).await;
        let (_, p) = app
            .post_as(
                &format!("/v1/orgs/{org}/projects"),
                Some(&owner.access),
                serde_json::json!({"slug": "pp", "name": "P"}),
            )
            .await;
        many_orgs.push((org, p["id"].as_str().expect("id").to_owned()));
    }
    /// Renames through `{prefix}/orgs/{org}/projects/{project}` over one connection per target
    /// for `duration`; how many requests that made.
    async fn patch_until(
        app: &TestApp,
        prefix: &str,
        token: &str,
        targets: &[(String, String)],
        duration: Duration,
    ) -> u64 {
        let urls = targets
            .iter()
            .map(|(org, project)| app.url(&format!("{prefix}/orgs/{org}/projects/{project}")))
            .collect();
        let token = token.to_owned();
        load_until(app, urls, duration, move |client, url| {
            client
                .patch(url)
                .bearer_auth(&token)
                .json(&serde_json::json!({"name": "Renamed"}))
        })
        .await
    }
    patch_until(
        &app,
        "/bench",
        &owner.access,
        &same_org,
        Duration::from_secs(1),
    )
    .await;
    println!(
        "  audit write overhead on the real PATCH /v1/orgs/{{org}}/projects/{{project}} (session auth, RLS, 2 reads + update; median of {PAIRS} pairs of {:.1} s rounds):",
        ROUND.as_secs_f64()
    );
    let one = same_org[..1].to_vec();
    let pools = (app.pool.clone(), app.superuser_pool());
    for (name, targets) in [
        ("16 connections, one org (one chain)", &same_org),
        ("16 connections, 16 orgs", &many_orgs),
        ("1 connection", &one),
    ] {
        let token = &owner.access;
        compare(name, "target <= 15 %", PAIRS, async |audited| {
            let prefix = if audited { "/v1" } else { "/bench" };
            round(&pools, patch_until(&app, prefix, token, targets, ROUND)).await
        })
        .await;
    }
}
