//! The audit trail: one event per change, queries and pagination, streaming exports that
//! verify offline, tamper detection, concurrent writers, retention with anchors.

use std::process::Command;

use builderos_test_support::{Session, TestApp};
use reqwest::Method;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_builderos");

async fn events(
    app: &TestApp,
    org: &str,
) -> Vec<(i64, String, Option<String>, Option<String>, String)> {
    app.seal_audit().await;
    sqlx::query_as("SELECT seq, action, target_type, target_id, outcome FROM audit_events WHERE org_id = $1::uuid ORDER BY seq")
        .bind(org)
        .fetch_all(&app.superuser_pool())
        .await
        .expect("events")
}

/// `org`'s newest event, as the API lists it to `who` (reading the trail seals it first).
async fn newest_event(app: &TestApp, org: impl std::fmt::Display, who: &Session) -> Value {
    let (status, page) = app
        .get_as(&format!("/v1/orgs/{org}/audit/events?limit=1"), &who.access)
        .await;
    assert_eq!(status, 200, "{page}");
    page["events"][0].clone()
}

/// What verifying `org`'s chain through the API reports to `who`.
async fn verify_report(app: &TestApp, org: impl std::fmt::Display, who: &Session) -> Value {
    let (status, report) = app
        .get_as(&format!("/v1/orgs/{org}/audit/verify"), &who.access)
        .await;
    assert_eq!(status, 200, "{report}");
    report
}

/// Every mutating endpoint writes exactly one event with the expected action and target, in
/// the org's chain; denied attempts are recorded as `denied`.
#[tokio::test]
async fn every_change_writes_exactly_one_event() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    assert_eq!(
        events(&app, &org)
            .await
            .last()
            .map(|e| e.1.clone())
            .as_deref(),
        Some("org.create")
    );
    let viewer = app.member(&alice, &org, "vic@example.com", "viewer").await;
    let o = format!("/v1/orgs/{org}");

    let (_, p) = app
        .post_as(
            &format!("{o}/projects"),
            Some(&alice.access),
            json!({"slug": "web", "name": "Web"}),
        )
        .await;
    let pid = p["id"].as_str().expect("id").to_owned();
    let eid = p["environments"][0]["id"].as_str().expect("env").to_owned();
    let (_, tok) = app
        .post_as(
            &format!("{o}/tokens"),
            Some(&alice.access),
            json!({"name": "t", "permissions": ["read:org"]}),
        )
        .await;
    let tid = tok["id"].as_str().expect("id").to_owned();
    let (_, inv) = app
        .post_as(
            &format!("{o}/invitations"),
            Some(&alice.access),
            json!({"email": "x@example.com", "role": "viewer"}),
        )
        .await;
    let iid = inv["id"].as_str().expect("id").to_owned();
    let (_, q) = app
        .post_as(
            &format!("{o}/projects"),
            Some(&alice.access),
            json!({"slug": "ops", "name": "Ops"}),
        )
        .await;
    let qid = q["id"].as_str().expect("id").to_owned();
    let simple = "steps:\n  - {id: a, role: builder, processor: \"builtin:echo\"}\n";
    let (s, _) = app
        .post_as(
            &format!("{o}/projects/{qid}/pipelines"),
            Some(&alice.access),
            json!({"name": "pre", "source": simple}),
        )
        .await;
    assert_eq!(s, 201);
    let (_, run) = app
        .post_as(
            &format!("{o}/projects/{qid}/pipelines/pre/runs"),
            Some(&alice.access),
            json!({}),
        )
        .await;
    let rid = run["id"].as_str().expect("run").to_owned();

    // (method, path, body, expected action, expected target type, expected target id)
    type Step<'a> = (Method, String, Option<Value>, &'a str, &'a str, String);
    let steps: Vec<Step<'_>> = vec![
        (
            Method::PATCH,
            o.clone(),
            Some(json!({"name": "Acme Inc"})),
            "org.rename",
            "org",
            org.clone(),
        ),
        (
            Method::POST,
            format!("{o}/projects"),
            Some(json!({"slug": "api", "name": "API"})),
            "project.create",
            "project",
            String::new(),
        ),
        (
            Method::PATCH,
            format!("{o}/projects/{pid}"),
            Some(json!({"name": "Website"})),
            "project.rename",
            "project",
            pid.clone(),
        ),
        (
            Method::POST,
            format!("{o}/projects/{pid}/environments"),
            Some(json!({"name": "qa"})),
            "environment.create",
            "environment",
            String::new(),
        ),
        (
            Method::PATCH,
            format!("{o}/projects/{pid}/environments/{eid}"),
            Some(json!({"protected": true})),
            "environment.update",
            "environment",
            eid.clone(),
        ),
        (
            Method::POST,
            format!("{o}/tokens"),
            Some(json!({"name": "u", "permissions": ["read:org"]})),
            "token.create",
            "api_token",
            String::new(),
        ),
        (
            Method::DELETE,
            format!("{o}/tokens/{tid}"),
            None,
            "token.revoke",
            "api_token",
            tid.clone(),
        ),
        (
            Method::POST,
            format!("{o}/invitations"),
            Some(json!({"email": "y@example.com", "role": "builder"})),
            "invitation.create",
            "invitation",
            String::new(),
        ),
        (
            Method::DELETE,
            format!("{o}/invitations/{iid}"),
            None,
            "invitation.revoke",
            "invitation",
            iid.clone(),
        ),
        (
            Method::PATCH,
            format!("{o}/members/{}", viewer.user_id),
            Some(json!({"role": "builder"})),
            "member.role_change",
            "user",
            viewer.user_id.clone(),
        ),
        (
            Method::POST,
            format!("{o}/prompts"),
            Some(json!({"name": "greet", "description": "Greets"})),
            "prompt.create",
            "prompt",
            String::new(),
        ),
        (
            Method::PATCH,
            format!("{o}/prompts/greet"),
            Some(json!({"tags": ["hello"]})),
            "prompt.update",
            "prompt",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/prompts/greet/versions"),
            Some(
                json!({"version": "1.0.0", "changelog": "First", "spec": "template: 'Hello {{ who }}'\nvariables:\n  who: {type: string}\n"}),
            ),
            "prompt.version.publish",
            "prompt",
            String::new(),
        ),
        (
            Method::PUT,
            format!("{o}/prompts/greet/labels/production"),
            Some(json!({"version": "1.0.0"})),
            "prompt.label.move",
            "prompt",
            String::new(),
        ),
        (
            Method::PUT,
            format!("{o}/prompts/greet/labels/staging"),
            Some(json!({"version": "1.0.0"})),
            "prompt.label.move",
            "prompt",
            String::new(),
        ),
        (
            Method::DELETE,
            format!("{o}/prompts/greet/labels/staging"),
            None,
            "prompt.label.remove",
            "prompt",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/prompts/greet/eval-cases"),
            Some(
                json!({"name": "polite", "inputs": {"who": "Ann"}, "expect": [{"contains": "Hello"}]}),
            ),
            "prompt.eval_case.create",
            "prompt",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/prompts/greet/eval-runs"),
            Some(
                json!({"version": "1.0.0", "results": [{"case": "polite", "output": "Hello Ann"}]}),
            ),
            "prompt.eval.record",
            "prompt",
            String::new(),
        ),
        (
            Method::DELETE,
            format!("{o}/prompts/greet/eval-cases/polite"),
            None,
            "prompt.eval_case.delete",
            "prompt",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/projects/{qid}/pipelines"),
            Some(json!({"name": "flow", "source": simple})),
            "pipeline.create",
            "pipeline",
            String::new(),
        ),
        (
            Method::PUT,
            format!("{o}/projects/{qid}/pipelines/flow"),
            Some(json!({"source": simple})),
            "pipeline.update",
            "pipeline",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/projects/{qid}/pipelines/flow/runs"),
            Some(json!({"idempotency_key": "once"})),
            "run.start",
            "run",
            String::new(),
        ),
        (
            Method::POST,
            format!("{o}/runs/{rid}/cancel"),
            None,
            "run.cancel",
            "run",
            rid.clone(),
        ),
        (
            Method::POST,
            format!("{o}/processor-allowlist"),
            Some(json!({"processor": "http://127.0.0.1:9000/run"})),
            "processor.allow",
            "processor",
            "http://127.0.0.1:9000".to_owned(),
        ),
        (
            Method::DELETE,
            format!("{o}/processor-allowlist?origin=http://127.0.0.1:9000"),
            None,
            "processor.disallow",
            "processor",
            "http://127.0.0.1:9000".to_owned(),
        ),
        (
            Method::PUT,
            format!("{o}/run-limits"),
            Some(json!({"max_concurrency": 4})),
            "run_limits.update",
            "org",
            org.clone(),
        ),
        (
            Method::PUT,
            format!("{o}/audit/settings"),
            Some(json!({"retention_days": 365})),
            "audit.retention_change",
            "org",
            org.clone(),
        ),
        (
            Method::DELETE,
            format!("{o}/members/{}", viewer.user_id),
            None,
            "member.remove",
            "user",
            viewer.user_id.clone(),
        ),
        (
            Method::DELETE,
            format!("{o}/projects/{pid}"),
            None,
            "project.delete",
            "project",
            pid.clone(),
        ),
    ];
    for (method, path, body, action, target_type, target_id) in steps {
        let before = events(&app, &org).await.len();
        let (status, res) = app
            .call(method.clone(), &path, Some(&alice.access), body)
            .await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {res}"
        );
        let after = events(&app, &org).await;
        assert_eq!(
            after.len(),
            before + 1,
            "{method} {path} must write exactly one event"
        );
        let (_, a, t, id, outcome) = after.last().expect("event").clone();
        assert_eq!(
            (a.as_str(), t.as_deref(), outcome.as_str()),
            (action, Some(target_type), "success"),
            "{method} {path}"
        );
        if !target_id.is_empty() {
            assert_eq!(id.as_deref(), Some(target_id.as_str()), "{method} {path}");
        }
    }

    // A denied attempt is one `denied` event; nothing else changes.
    let bob = app.member(&alice, &org, "bob@example.com", "builder").await;
    let before = events(&app, &org).await.len();
    let (status, _) = app
        .post_as(
            &format!("{o}/tokens"),
            Some(&bob.access),
            json!({"name": "z", "permissions": ["read:org"]}),
        )
        .await;
    assert_eq!(status, 403);
    let after = events(&app, &org).await;
    assert_eq!(after.len(), before + 1);
    assert_eq!(
        (
            after.last().expect("e").1.as_str(),
            after.last().expect("e").4.as_str()
        ),
        ("access.denied", "denied")
    );

    // Starting a run again with its idempotency key changes nothing and records nothing.
    let before = events(&app, &org).await.len();
    let (status, _) = app
        .post_as(
            &format!("{o}/projects/{qid}/pipelines/flow/runs"),
            Some(&alice.access),
            json!({"idempotency_key": "once"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(events(&app, &org).await.len(), before);

    // A start refused for an HTTP processor the org hasn't allowed is one `denied` run.start.
    let remote = "steps:\n  - {id: a, role: builder, processor: \"http://127.0.0.1:9/run\"}\n";
    let (status, _) = app
        .post_as(
            &format!("{o}/projects/{qid}/pipelines"),
            Some(&bob.access),
            json!({"name": "remote", "source": remote}),
        )
        .await;
    assert_eq!(status, 201);
    let before = events(&app, &org).await.len();
    let (status, _) = app
        .post_as(
            &format!("{o}/projects/{qid}/pipelines/remote/runs"),
            Some(&bob.access),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let after = events(&app, &org).await;
    assert_eq!(after.len(), before + 1);
    let last = after.last().expect("e");
    assert_eq!(
        (last.1.as_str(), last.2.as_deref(), last.4.as_str()),
        ("run.start", Some("pipeline"), "denied")
    );

    // Platform events (sign-up, sign-in) form their own chain.
    app.seal_audit().await;
    let platform: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events WHERE org_id IS NULL ORDER BY seq")
            .fetch_all(&app.superuser_pool())
            .await
            .expect("platform");
    assert!(platform.iter().all(|a| a == "user.signup"), "{platform:?}");
    let seqs: Vec<i64> = events(&app, &org).await.iter().map(|e| e.0).collect();
    assert_eq!(
        seqs,
        (1..=i64::try_from(seqs.len()).expect("len")).collect::<Vec<_>>(),
        "gapless per-org seq"
    );
}

struct Trail {
    app: TestApp,
    admin: Session,
    viewer: Session,
    org: String,
}

async fn trail() -> Trail {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    for i in 0..5 {
        app.post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&alice.access),
            json!({"slug": format!("p{i}"), "name": format!("P{i}")}),
        )
        .await;
    }
    let viewer = app.member(&alice, &org, "vic@example.com", "viewer").await;
    // Two denied attempts by the viewer.
    for i in 0..2 {
        let (s, _) = app
            .post_as(
                &format!("/v1/orgs/{org}/projects"),
                Some(&viewer.access),
                json!({"slug": format!("v{i}"), "name": "V"}),
            )
            .await;
        assert_eq!(s, 403);
    }
    Trail {
        app,
        admin: alice,
        viewer,
        org,
    }
}

/// Admins query with the compact string and structured filters, newest first, paging with an
/// opaque cursor; Viewers get 403, other orgs 404, bad terms 400 naming the term.
#[tokio::test]
async fn query_filters_and_pagination() {
    let Trail {
        app,
        admin,
        viewer,
        org,
    } = trail().await;
    let base = format!("/v1/orgs/{org}/audit/events");
    let get = |q: &str| {
        let url = format!("{base}?{q}");
        let token = admin.access.clone();
        let app = &app;
        async move { app.get_as(&url, &token).await }
    };

    let (s, page) = get("q=action:project.*").await;
    assert_eq!(s, 200, "{page}");
    let actions: Vec<&str> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["action"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(actions, vec!["project.create"; 5]);
    let seqs: Vec<i64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_i64().unwrap_or(0))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );

    let q = "actor:vic@example.com%20outcome:denied%20created:%3E=2020-01-01";
    let (s, page) = get(&format!("q={q}")).await;
    assert_eq!(s, 200);
    assert_eq!(page["events"].as_array().expect("events").len(), 2);
    assert!(
        page["events"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e["action"] == "access.denied" && e["actor_name"] == "vic@example.com")
    );
    // An actor by name or by id: the same events, newest first, and page by page the same.
    let seqs_of = |page: &Value| -> Vec<i64> {
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["seq"].as_i64().unwrap_or(0))
            .collect()
    };
    let (_, by_name) = get("q=actor:vic@example.com").await;
    let vic_id = by_name["events"][0]["actor_id"]
        .as_str()
        .expect("vic's id")
        .to_owned();
    let (_, by_id) = get(&format!("actor={vic_id}")).await;
    let all = seqs_of(&by_name);
    assert!(
        all.len() >= 2 && all.windows(2).all(|w| w[0] > w[1]),
        "{all:?}"
    );
    assert_eq!(seqs_of(&by_id), all);
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("actor={vic_id}&limit=1&cursor={c}"),
            None => format!("actor={vic_id}&limit=1"),
        };
        let (_, page) = get(&q).await;
        paged.extend(seqs_of(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, all);

    let (_, page) = get("outcome=denied&action=access.denied").await;
    assert_eq!(page["events"].as_array().expect("events").len(), 2);
    let (_, page) = get("q=created:%3C2020-01-01").await;
    assert_eq!(page["events"], json!([]));
    let (_, page) = get(&format!("q=target:org/{org}")).await;
    assert!(
        page["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["target_type"] == "org")
    );

    // Paging through everything, two at a time, sees every event exactly once.
    app.seal_audit().await;
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE org_id = $1::uuid")
            .bind(&org)
            .fetch_one(&app.superuser_pool())
            .await
            .expect("count");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let (s, page) = get(&q).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(
            page["events"]
                .as_array()
                .expect("events")
                .iter()
                .map(|e| e["seq"].as_i64().unwrap_or(0)),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(i64::try_from(seen.len()).expect("len"), total);
    assert_eq!(seen, (1..=total).rev().collect::<Vec<_>>());

    // Errors.
    let (s, body) = get("q=action:x%20colour:blue").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("ERR_INPUTS"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("term 2"),
        "{body}"
    );
    assert_eq!(get("limit=1001").await.0, 400);
    assert_eq!(get("limit=0").await.0, 400);
    assert_eq!(get("cursor=garbage").await.0, 400);
    assert_eq!(app.get_as(&base, &viewer.access).await.0, 403);
    let outsider = app.signup("out@example.com").await;
    assert_eq!(app.get_as(&base, &outsider.access).await.0, 404);
    assert_eq!(
        app.get_as(&format!("/v1/orgs/{org}/audit/verify"), &viewer.access)
            .await
            .0,
        403
    );
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("BR_OS_DB_URL")
        .env("BR_OS_LOG", "warn")
        .env("BR_OS_LOG_FORMAT", "json");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run builderos");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Exports stream as JSON Lines and CSV with the chain fields; a JSONL export verifies offline
/// with the CLI, and a tampered one doesn't. The CLI queries through the API too (the server
/// runs on this test's runtime, so the blocking CLI call needs a second worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_offline_verification() {
    let Trail {
        app,
        admin,
        viewer,
        org,
    } = trail().await;
    let res = app
        .client
        .get(app.url(&format!("/v1/orgs/{org}/audit/export")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/x-ndjson");
    let jsonl = res.text().await.expect("body");
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(lines.len() >= 10);
    assert!(
        lines.iter().all(
            |l| l["hash"].as_str().is_some_and(|h| h.len() == 64) && l["prev_hash"].is_string()
        )
    );

    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("export.jsonl");
    std::fs::write(&file, &jsonl).expect("write");
    let (ok, out, err) = run(
        &[
            "audit",
            "verify",
            "--file",
            file.to_str().expect("path"),
            "--complete",
        ],
        &[],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("chain intact"), "{out}");

    // Tampering with one exported event is caught offline.
    let tampered = jsonl.replacen("\"outcome\":\"denied\"", "\"outcome\":\"success\"", 1);
    std::fs::write(&file, tampered).expect("write");
    let (ok, out, _) = run(
        &[
            "audit",
            "verify",
            "--file",
            file.to_str().expect("path"),
            "--json",
        ],
        &[],
    );
    assert!(!ok);
    let report: Value = serde_json::from_str(out.trim()).expect("json report");
    assert_eq!(report["ok"], false);
    assert_eq!(report["problems"][0]["kind"], "hash_mismatch");

    // A filtered export verifies with gaps tolerated.
    let res = app
        .client
        .get(app.url(&format!("/v1/orgs/{org}/audit/export?q=action:project.*")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .expect("send");
    std::fs::write(&file, res.text().await.expect("body")).expect("write");
    let (ok, out, err) = run(
        &["audit", "verify", "--file", file.to_str().expect("path")],
        &[],
    );
    assert!(ok, "{out}{err}");

    // CSV.
    let res = app
        .client
        .get(app.url(&format!("/v1/orgs/{org}/audit/export?format=csv")))
        .bearer_auth(&admin.access)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200);
    let csv = res.text().await.expect("body");
    assert!(csv.starts_with("id,org_id,seq,occurred_at,"));
    // Header, every event of the first export, and the two exports made since (each export is audited).
    assert_eq!(csv.lines().count(), 1 + lines.len() + 2);
    let (s, _) = app
        .get_as(
            &format!("/v1/orgs/{org}/audit/export?format=xml"),
            &admin.access,
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        app.get_as(&format!("/v1/orgs/{org}/audit/export"), &viewer.access)
            .await
            .0,
        403
    );

    // The CLI runs the same query through the API.
    let api = format!("http://{}", app.addr);
    let (ok, out, err) = run(
        &[
            "audit",
            "query",
            "--org",
            &org,
            "--json",
            "--all",
            "outcome:denied",
            "actor:vic@example.com",
        ],
        &[("BR_OS_API_URL", &api), ("BR_OS_API_TOKEN", &admin.access)],
    );
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().count(),
        3,
        "two project writes and one export, all denied: {out}"
    );
    let (ok, _, err) = run(
        &["audit", "query", "--org", &org, "colour:blue"],
        &[("BR_OS_API_URL", &api), ("BR_OS_API_TOKEN", &admin.access)],
    );
    assert!(!ok && err.contains("ERR_INPUTS"), "{err}");
}

/// Altering one event and deleting another (as the schema owner, which the app can't) is
/// detected by the API and the CLI, naming both seqs.
#[tokio::test]
async fn tampering_is_detected() {
    let Trail {
        app, admin, org, ..
    } = trail().await;
    let verify = format!("/v1/orgs/{org}/audit/verify");
    let (s, report) = app.get_as(&verify, &admin.access).await;
    assert_eq!(s, 200);
    assert_eq!(report["ok"], true, "{report}");

    let owner = sqlx::PgPool::connect(&app.db.owner_url)
        .await
        .expect("owner");
    sqlx::query("UPDATE audit_events SET detail = '{\"slug\":\"evil\"}' WHERE org_id = $1::uuid AND seq = 3").bind(&org).execute(&owner).await.expect("alter");
    sqlx::query("DELETE FROM audit_events WHERE org_id = $1::uuid AND seq = 5")
        .bind(&org)
        .execute(&owner)
        .await
        .expect("delete");

    let (s, report) = app.get_as(&verify, &admin.access).await;
    assert_eq!(s, 200);
    assert_eq!(report["ok"], false);
    assert_eq!(report["first_broken_seq"], 3);
    let problems = report["problems"].as_array().expect("problems");
    assert!(
        problems.contains(&json!({"seq": 3, "kind": "hash_mismatch"})),
        "{report}"
    );
    assert!(
        problems.contains(&json!({"seq": 5, "kind": "missing"})),
        "{report}"
    );

    let (ok, out, err) = run(
        &["audit", "verify", "--org", &org],
        &[("BR_OS_DB_URL", &app.db.app_url)],
    );
    assert!(!ok, "{out}{err}");
    assert!(
        out.contains("BROKEN at seq 3") && out.contains("seq 5: Missing"),
        "{out}"
    );
}

/// Concurrent writers in one org still produce one gapless, valid chain.
#[tokio::test]
async fn concurrent_writers_keep_one_chain() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let (client, url, token) = (
            app.client.clone(),
            app.url(&format!("/v1/orgs/{org}/projects")),
            alice.access.clone(),
        );
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(token)
                .json(&json!({"slug": format!("p{i}"), "name": "P"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("send"), 201);
    }
    let report = verify_report(&app, org, &alice).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checked"], 25);
}

/// An event waits outside the chain until its transaction commits, is appended at commit, and
/// disappears with a rollback; another org's chain can't be written through the pending table.
/// An event commits or rolls back with its change: it waits in the journal, where the app
/// can neither read, change nor remove it, until sealing gives it its place in the chain.
#[tokio::test]
async fn events_wait_in_the_journal_until_sealed() {
    use builderos_api::audit::{self, AuditContext, Event, sealer};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org: uuid::Uuid = app.create_org(&alice, "acme").await.parse().expect("uuid");
    let other: uuid::Uuid = app.create_org(&alice, "other").await.parse().expect("uuid");
    let pool = app.pool.clone();
    let su = app.superuser_pool();
    let count = |sql: &'static str| {
        let su = su.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(org)
                .fetch_one(&su)
                .await
                .expect("count")
        }
    };
    let chained = "SELECT count(*) FROM audit_events WHERE org_id = $1";
    let journaled = "SELECT count(*) FROM audit_journal WHERE chain_id = $1";
    app.seal_audit().await;
    let before = count(chained).await;

    let event = || Event::success("project.rename", "project", uuid::Uuid::now_v7());
    let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
    audit::record(&mut tx, Some(org), &AuditContext::system(), event())
        .await
        .expect("record");
    // Inside its transaction the event is not yet anywhere another transaction can see.
    assert_eq!((count(chained).await, count(journaled).await), (before, 0));
    tx.rollback().await.expect("rollback");
    app.seal_audit().await;
    assert_eq!((count(chained).await, count(journaled).await), (before, 0));

    let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
    for _ in 0..2 {
        audit::record(&mut tx, Some(org), &AuditContext::system(), event())
            .await
            .expect("record");
    }
    tx.commit().await.expect("commit");
    // Committed: journaled, or already sealed by the app's background sealer.
    assert_eq!(count(chained).await + count(journaled).await, before + 2);
    // The app's role can only add to the journal.
    for sql in [
        "SELECT count(*) FROM audit_journal",
        "UPDATE audit_journal SET action = 'x'",
        "DELETE FROM audit_journal",
        "UPDATE audit_heads SET seq = 0",
        "INSERT INTO audit_heads (chain_id, seq, hash) VALUES (gen_random_uuid(), 0, '')",
        "INSERT INTO audit_events (id, org_id, seq, occurred_at, actor_type, action, outcome, \
         prev_hash, hash) VALUES (gen_random_uuid(), app_org_id(), 1000, now(), 'system', 'x', \
         'success', '', '')",
    ] {
        let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
        let err = sqlx::query(sql)
            .execute(&mut *tx)
            .await
            .expect_err("the app can't touch waiting events, heads or the chain");
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
    // Reading the trail seals the org first: the events are there, in order, and verify.
    let (status, page) = app
        .get_as(
            &format!("/v1/orgs/{org}/audit/events?limit=2"),
            &alice.access,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["events"][0]["action"], "project.rename");
    assert_eq!(page["events"][0]["seq"], before + 2);
    assert_eq!(count(journaled).await, 0);
    let mut conn = pool.acquire().await.expect("conn");
    assert_eq!(
        sealer::seal(&mut *conn, Some(org)).await.expect("seal"),
        0,
        "nothing left"
    );

    // Scoped to one org, the app can't queue an event into another org's chain, nor an
    // org-less event into an org's chain.
    let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
    let err = audit::record(&mut tx, Some(other), &AuditContext::system(), event())
        .await
        .expect_err("another org's chain");
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    // Nor a row of its own making in another org's chain, nor in the platform's; in its own
    // chain it can (what sealing makes of such a row: `forged_journal_rows_never_reach_a_chain`).
    for (chain, allowed) in [(other, false), (uuid::Uuid::nil(), false), (org, true)] {
        let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
        let inserted = sqlx::query(
            "INSERT INTO audit_journal (chain_id, before_prev, before_seq, after_seq) \
             VALUES ($1, '', '', '')",
        )
        .bind(chain)
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => assert!(allowed, "a row in chain {chain}"),
            Err(err) => assert!(
                !allowed && err.to_string().contains("row-level security"),
                "{chain}: {err}"
            ),
        }
        drop(tx);
    }

    let report = verify_report(&app, org, &alice).await;
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["checked"], before + 2);
}

/// Sealing runs as the schema owner: a caller's temporary tables named like the audit tables
/// must not stand in for them (they would come first on an unqualified name).
#[tokio::test]
async fn sealing_ignores_the_callers_temporary_tables() {
    use builderos_api::audit::{self, AuditContext, Event, sealer, store};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org: uuid::Uuid = app.create_org(&alice, "acme").await.parse().expect("uuid");
    app.seal_audit().await;
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    let event = Event::success("project.rename", "project", uuid::Uuid::now_v7());
    audit::record(&mut tx, Some(org), &AuditContext::system(), event)
        .await
        .expect("record");
    tx.commit().await.expect("commit");

    let mut conn = app.pool.acquire().await.expect("conn").detach();
    sqlx::raw_sql(
        "CREATE TEMP TABLE audit_events (LIKE public.audit_events); \
         CREATE TEMP TABLE audit_heads (LIKE public.audit_heads)",
    )
    .execute(&mut conn)
    .await
    .expect("temporary tables");
    sealer::seal(&mut conn, Some(org)).await.expect("seal");
    let shadowed: i64 =
        sqlx::query_scalar("SELECT (SELECT count(*) FROM pg_temp.audit_events) + (SELECT count(*) FROM pg_temp.audit_heads)")
            .fetch_one(&mut conn)
            .await
            .expect("count");
    assert_eq!(
        shadowed, 0,
        "sealing wrote to the caller's temporary tables"
    );
    sqlx::Connection::close(conn).await.expect("close");

    app.seal_audit().await;
    let (last,): (String,) = sqlx::query_as(
        "SELECT action FROM audit_events WHERE org_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(org)
    .fetch_one(&app.superuser_pool())
    .await
    .expect("last");
    assert_eq!(last, "project.rename");
    let report = store::verify_org(&app.pool, org).await.expect("verify");
    assert!(report.ok, "{:?}", report.first_broken_seq);
}

/// A journaled event that can't be sealed (here: forged with the id of an event already in
/// the chain) stops its own chain, visibly, and no other: other orgs' events are still sealed
/// by the background sealer, and readers of the stuck org still get an answer.
#[tokio::test]
async fn an_unsealable_event_holds_back_only_its_chain() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let stuck = app.create_org(&alice, "stuck").await;
    let fine = app.create_org(&alice, "fine").await;
    app.seal_audit().await;
    let su = app.superuser_pool();
    sqlx::query(
        "INSERT INTO audit_journal (chain_id, before_prev, before_seq, after_seq) \
         SELECT e.org_id, \
                convert_to('{\"action\":\"forged\",\"actor_type\":\"system\",\"detail\":{},\"id\":\"' \
                           || e.id || '\",\"occurred_at\":\"2026-01-01T00:00:00Z\",\"org_id\":\"' \
                           || e.org_id || '\",\"outcome\":\"success\",\"prev_hash\":\"', 'UTF8'), \
                convert_to('\",\"seq\":', 'UTF8'), convert_to('}', 'UTF8') \
           FROM audit_events e WHERE e.org_id = $1::uuid AND e.seq = 1",
    )
    .bind(&stuck)
    .execute(&su)
    .await
    .expect("forge");
    // Another org's change is sealed in the background meanwhile.
    let (status, _) = app
        .post_as(
            &format!("/v1/orgs/{fine}/projects"),
            Some(&alice.access),
            json!({"slug": "web", "name": "Web"}),
        )
        .await;
    assert_eq!(status, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sealed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE org_id = $1::uuid AND action = 'project.create'",
        )
        .bind(&fine)
        .fetch_one(&su)
        .await
        .expect("count");
        if sealed == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the other org's event was never sealed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The stuck org's trail still answers (without the forged event), and the event waits.
    let (status, page) = app
        .get_as(&format!("/v1/orgs/{stuck}/audit/events"), &alice.access)
        .await;
    assert_eq!(status, 200, "{page}");
    assert!(
        page["events"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["action"] != "forged"))
    );
    let waiting: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_journal WHERE chain_id = $1::uuid")
            .bind(&stuck)
            .fetch_one(&su)
            .await
            .expect("count");
    assert_eq!(waiting, 1);
}

/// The journal holds an event as its canonical JSON, and sealing reads the stored fields from
/// it (migration 0020). A row the app's role could add to its own org's chain by hand is
/// sealed only when it is an event of that org: one claiming another org, or the platform,
/// or with fields `audit_events` refuses, or bytes that aren't an event at all, stops its own
/// chain and reaches no other. One that is sealed was hashed from its bytes as they are, so
/// verification finds it when it isn't the canonical JSON of what was stored.
#[tokio::test]
async fn forged_journal_rows_never_reach_a_chain() {
    use builderos_api::audit::sealer;
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let victim: uuid::Uuid = app
        .create_org(&alice, "victim")
        .await
        .parse()
        .expect("uuid");
    let su = app.superuser_pool();
    let events_of = |org: Option<uuid::Uuid>| {
        let su = su.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM audit_events WHERE org_id IS NOT DISTINCT FROM $1",
            )
            .bind(org)
            .fetch_one(&su)
            .await
            .expect("count")
        }
    };
    // Seals `org`'s chain (others are stuck on purpose); how many events that sealed.
    let seal = |org: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            let mut conn = pool.acquire().await.expect("conn");
            sealer::seal(&mut *conn, Some(org)).await.expect("seal")
        }
    };
    // An event's fields, as JSON object members, for `org`.
    let fields = |org: &str, actor_type: &str, outcome: &str| {
        format!(
            "\"action\":\"forged\",\"actor_type\":\"{actor_type}\",\"detail\":{{}},\"id\":\"{}\",\
             \"occurred_at\":\"2026-01-01T00:00:00Z\",\"org_id\":{org},\"outcome\":\"{outcome}\"",
            uuid::Uuid::now_v7()
        )
    };
    app.seal_audit().await;
    let platform_before = events_of(None).await;
    let victim_before = events_of(Some(victim)).await;
    for why in [
        "another org's event",
        "a platform event",
        "an unknown actor type",
        "an unknown outcome",
        "no action",
        "not JSON",
        "not UTF-8",
    ] {
        let org: uuid::Uuid = app
            .create_org(&alice, &format!("o{}", uuid::Uuid::now_v7().simple()))
            .await
            .parse()
            .expect("uuid");
        seal(org).await;
        let own = format!("\"{org}\"");
        let members = match why {
            "another org's event" => fields(&format!("\"{victim}\""), "system", "success"),
            "a platform event" => fields("null", "system", "success"),
            "an unknown actor type" => fields(&own, "robot", "success"),
            "an unknown outcome" => fields(&own, "system", "maybe"),
            "no action" => fields(&own, "system", "success").replace("\"action\":\"forged\",", ""),
            "not JSON" => "\"garbage".to_owned(),
            _ => String::new(),
        };
        let members = if why == "not UTF-8" {
            b"\"\xff\xfe\":1".to_vec()
        } else {
            members.into_bytes()
        };
        let before_prev = [b"{".as_slice(), &members, b",\"prev_hash\":\""].concat();
        let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
        sqlx::query(
            "INSERT INTO audit_journal (chain_id, before_prev, before_seq, after_seq) \
             VALUES ($1, $2, '\\x222c22736571223a', '\\x7d')",
        )
        .bind(org)
        .bind(before_prev)
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{why}: the app may add to its own chain: {e}"));
        tx.commit().await.expect("commit");
        let chained = events_of(Some(org)).await;
        assert_eq!(seal(org).await, 0, "{why}: sealed");
        let waiting: i64 =
            sqlx::query_scalar("SELECT count(*) FROM audit_journal WHERE chain_id = $1")
                .bind(org)
                .fetch_one(&su)
                .await
                .expect("count");
        assert_eq!(waiting, 1, "{why}: the row waits, holding back its chain");
        assert_eq!(events_of(Some(org)).await, chained, "{why}");
    }
    assert_eq!(events_of(Some(victim)).await, victim_before);
    assert_eq!(events_of(None).await, platform_before);
    let report = verify_report(&app, victim, &alice).await;
    assert_eq!(report["ok"], true, "{report}");

    // A well-formed event of the org's own, though not in canonical form (fields left out): it
    // is sealed, and verification names it.
    let org: uuid::Uuid = app.create_org(&alice, "own").await.parse().expect("uuid");
    seal(org).await;
    let members = fields(&format!("\"{org}\""), "system", "success");
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    sqlx::query(
        "INSERT INTO audit_journal (chain_id, before_prev, before_seq, after_seq) \
         VALUES ($1, convert_to('{' || $2 || ',\"prev_hash\":\"', 'UTF8'), \
                 convert_to('\",\"seq\":', 'UTF8'), convert_to('}', 'UTF8'))",
    )
    .bind(org)
    .bind(&members)
    .execute(&mut *tx)
    .await
    .expect("insert");
    tx.commit().await.expect("commit");
    seal(org).await;
    let (seq, action): (i64, String) = sqlx::query_as(
        "SELECT seq, action FROM audit_events WHERE org_id = $1 ORDER BY seq DESC LIMIT 1",
    )
    .bind(org)
    .fetch_one(&su)
    .await
    .expect("sealed");
    assert_eq!(action, "forged");
    let report = verify_report(&app, org, &alice).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["first_broken_seq"], seq, "{report}");
}

/// Whatever text an event carries, sealing can store it and the stored event verifies: NULs
/// (which PostgreSQL's text and jsonb can't hold) become U+FFFD, in the fields and in detail's
/// keys and strings, and overlong request ids and user agents are cut to 128 and 256 characters.
#[tokio::test]
async fn events_with_any_text_are_sealed_and_verify() {
    use builderos_api::audit::{self, Actor, AuditContext, Event};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org: uuid::Uuid = app.create_org(&alice, "acme").await.parse().expect("uuid");
    let ctx = AuditContext {
        actor: Actor::Token {
            id: uuid::Uuid::now_v7(),
            name: "bot\0\u{1f600} \"q\" \\ \n".to_owned(),
        },
        auth_method: Some("api_token\0".to_owned()),
        request_id: Some("r\u{e9}".repeat(100)),
        client_addr: Some("::1".to_owned()),
        user_agent: Some("\u{e9}\0".repeat(200)),
    };
    let event = Event::success("project.rename", "project", "p\0\u{7f}\u{1}")
        .detail(json!({"k\u{0}": ["v\u{0}", {"\u{2028}": 1.5e300}], "n": -0.0}));
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    audit::record(&mut tx, Some(org), &ctx, event)
        .await
        .expect("record");
    tx.commit().await.expect("commit");
    app.seal_audit().await;
    let e = &newest_event(&app, org, &alice).await;
    assert_eq!(e["actor_name"], "bot\u{fffd}\u{1f600} \"q\" \\ \n");
    assert_eq!(e["auth_method"], "api_token\u{fffd}");
    assert_eq!(e["target_id"], "p\u{fffd}\u{7f}\u{1}");
    assert_eq!(e["request_id"], "r\u{e9}".repeat(64));
    assert_eq!(e["user_agent"], "\u{e9}\u{fffd}".repeat(128));
    assert_eq!(e["detail"]["k\u{fffd}"][0], "v\u{fffd}");
    let report = verify_report(&app, org, &alice).await;
    assert_eq!(report["ok"], true, "{report}");
}

/// During a rolling deploy, builds from before migration 0020 still insert every field as a
/// column next to the canonical JSON; sealing takes the event from the JSON as it does for
/// this build's rows, and the chain verifies.
#[tokio::test]
async fn journal_rows_of_older_builds_are_still_sealed() {
    use builderos_api::audit::{ChainedFields, timestamp};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org: uuid::Uuid = app.create_org(&alice, "acme").await.parse().expect("uuid");
    let id = uuid::Uuid::now_v7();
    let at = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(1_780_000_000_123_456)
        .expect("time");
    let detail = json!({"from": "Web", "to": "Site"});
    let [before_prev, before_seq, after_seq] = ChainedFields {
        id,
        org_id: Some(org),
        seq: 0,
        occurred_at: timestamp(at),
        actor_type: "system",
        actor_id: None,
        actor_name: Some("system"),
        auth_method: None,
        action: "project.rename",
        target_type: Some("project"),
        target_id: Some("p-1"),
        outcome: "success",
        request_id: Some("req-1"),
        client_addr: None,
        user_agent: None,
        detail: &detail,
        prev_hash: "",
    }
    .canonical_split();
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    sqlx::query(
        "INSERT INTO audit_journal (chain_id, id, org_id, occurred_at, actor_type, actor_id, \
         actor_name, auth_method, action, target_type, target_id, outcome, request_id, \
         client_addr, user_agent, detail, before_prev, before_seq, after_seq) \
         VALUES ($1, $2, $1, $3, 'system', NULL, 'system', NULL, 'project.rename', 'project', \
                 'p-1', 'success', 'req-1', NULL, NULL, $4, $5, $6, $7)",
    )
    .bind(org)
    .bind(id)
    .bind(at)
    .bind(&detail)
    .bind(before_prev)
    .bind(before_seq)
    .bind(after_seq)
    .execute(&mut *tx)
    .await
    .expect("an older build's insert");
    tx.commit().await.expect("commit");
    app.seal_audit().await;
    let e = &newest_event(&app, org, &alice).await;
    assert_eq!(e["id"], id.to_string());
    assert_eq!(e["occurred_at"], timestamp(at));
    assert_eq!(e["detail"], detail);
    assert_eq!(e["request_id"], "req-1");
    let report = verify_report(&app, org, &alice).await;
    assert_eq!(report["ok"], true, "{report}");
}

/// With no reader asking, the background sealer seals what was committed by itself.
#[tokio::test]
async fn the_background_sealer_seals_committed_events() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let su = app.superuser_pool();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (journaled, chained): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM audit_journal), \
                    (SELECT count(*) FROM audit_events WHERE org_id = $1::uuid)",
        )
        .bind(&org)
        .fetch_one(&su)
        .await
        .expect("count");
        if journaled == 0 && chained > 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still {journaled} events in the journal, {chained} sealed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A chain's first events, committed concurrently and sealed by several sealers at once
/// (background ones that skip held chains, and readers' that wait for them): one chain, no
/// gap, no fork.
#[tokio::test]
async fn concurrent_writers_and_sealers_make_one_chain() {
    use builderos_api::audit::{self, AuditContext, Event, sealer, store};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    // An org made directly in the database has no events yet, so no head.
    let org = uuid::Uuid::now_v7();
    sqlx::query("INSERT INTO orgs (id, slug, name) VALUES ($1, 'fresh', 'Fresh')")
        .bind(org)
        .execute(&app.superuser_pool())
        .await
        .expect("org");
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    // Fewer than the pool's 10 connections: every task holds one at the barrier.
    for i in 0..8 {
        let (pool, barrier) = (app.pool.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            if i < 5 {
                let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
                for _ in 0..3 {
                    let event = Event::success("project.rename", "project", uuid::Uuid::now_v7());
                    audit::record(&mut tx, Some(org), &AuditContext::system(), event)
                        .await
                        .expect("record");
                }
                barrier.wait().await;
                tx.commit().await.expect("commit");
            } else if i == 5 {
                // A reader's seal holds the chain until its transaction ends.
                let mut tx = db::begin(&pool, &Scope::org(org)).await.expect("begin");
                barrier.wait().await;
                for _ in 0..5 {
                    sealer::seal(&mut *tx, Some(org)).await.expect("seal");
                    tokio::task::yield_now().await;
                }
                tx.commit().await.expect("commit");
            } else {
                barrier.wait().await;
                for _ in 0..5 {
                    sealer::seal_all(&pool).await.expect("seal all");
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let report = store::verify_org(&app.pool, org).await.expect("verify");
    assert!(report.ok, "{:?}", report.first_broken_seq);
    assert_eq!(report.checked, 15);
    let (seq, prev): (i64, Option<String>) =
        sqlx::query_as("SELECT seq, prev_hash FROM audit_heads WHERE chain_id = $1")
            .bind(org)
            .fetch_one(&app.superuser_pool())
            .await
            .expect("head");
    let before_last: String =
        sqlx::query_scalar("SELECT hash FROM audit_events WHERE org_id = $1 AND seq = 14")
            .bind(org)
            .fetch_one(&app.superuser_pool())
            .await
            .expect("event 14");
    assert_eq!((seq, prev), (15, Some(before_last)));
}

/// `record_with` puts the event in the statement that makes the change: the change keeps its
/// own `WITH`, `RETURNING` rows and rows affected; a change that fails takes its event with it;
/// what it records seals into a chain that verifies like any other.
#[tokio::test]
async fn an_event_rides_in_the_statement_of_its_change() {
    use builderos_api::audit::query::Filter;
    use builderos_api::audit::{self, AuditContext, Event, store};
    use builderos_shared::db::{self, Scope};
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org: uuid::Uuid = app.create_org(&alice, "acme").await.parse().expect("uuid");
    let (_, p) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&alice.access),
            serde_json::json!({"slug": "web", "name": "Web"}),
        )
        .await;
    let project: uuid::Uuid = p["id"].as_str().expect("id").parse().expect("uuid");
    let event = |name: &str| {
        Event::success("project.rename", "project", project).detail(serde_json::json!({"to": name}))
    };
    let ctx = AuditContext::system();
    let rename = |name: &'static str, id: uuid::Uuid| {
        audit::record_with(
            sqlx::query("UPDATE projects SET name = $1 WHERE id = $2")
                .bind(name)
                .bind(id),
            Some(org),
            &ctx,
            event(name),
        )
        .expect("statement")
    };
    let events_of = |action: &str| {
        let filter = Filter {
            action: Some(audit::query::ActionMatch::Exact(action.to_owned())),
            ..Filter::default()
        };
        let pool = app.pool.clone();
        async move {
            store::page_desc(&pool, org, &filter, None, 10)
                .await
                .expect("events")
        }
    };

    // A change with a WITH of its own, returning rows.
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    let renamed: Vec<(String,)> = audit::record_with(
        sqlx::query(
            "WITH n AS (SELECT $1::text AS name) \
             UPDATE projects SET name = (SELECT name FROM n) WHERE id = $2 RETURNING name",
        )
        .bind("Renamed")
        .bind(project),
        Some(org),
        &ctx,
        event("Renamed"),
    )
    .expect("statement")
    .try_map(audit::from_row)
    .fetch_all(&mut *tx)
    .await
    .expect("change");
    assert_eq!(renamed, vec![("Renamed".to_owned(),)]);
    // Rows affected are the change's, not the journal's.
    let done = rename("Again", uuid::Uuid::now_v7())
        .execute(&mut *tx)
        .await
        .expect("change");
    assert_eq!(done.rows_affected(), 0);
    tx.rollback().await.expect("rollback");

    // Committed: the change and its event. A failing change: neither.
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    rename("Kept", project)
        .execute(&mut *tx)
        .await
        .expect("change");
    tx.commit().await.expect("commit");
    let mut tx = db::begin(&app.pool, &Scope::org(org)).await.expect("begin");
    let err = audit::record_with(
        sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES ($1, $2, 'web', 'Dup')")
            .bind(uuid::Uuid::now_v7())
            .bind(org),
        Some(org),
        &ctx,
        event("Dup"),
    )
    .expect("statement")
    .execute(&mut *tx)
    .await
    .expect_err("the slug is taken");
    assert!(
        err.as_database_error()
            .is_some_and(|e| e.constraint() == Some("projects_org_slug_key")),
        "{err}"
    );
    drop(tx);

    let events = events_of("project.rename").await;
    let details: Vec<_> = events.iter().map(|e| e.detail.clone()).collect();
    assert_eq!(details, vec![serde_json::json!({"to": "Kept"})]);
    assert_eq!(events[0].actor_type, "system");
    let name: String = sqlx::query_scalar("SELECT name FROM projects WHERE id = $1")
        .bind(project)
        .fetch_one(&app.superuser_pool())
        .await
        .expect("project");
    assert_eq!(name, "Kept");
    let report = store::verify_org(&app.pool, org).await.expect("verify");
    assert!(report.ok, "{:?}", report.first_broken_seq);

    // A handler that finds nothing to change after its statement ran drops the transaction,
    // and the event with it: revoking a token that isn't there records nothing.
    let (status, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/orgs/{org}/tokens/{}", uuid::Uuid::now_v7()),
            Some(&alice.access),
            None,
        )
        .await;
    assert_eq!(status, 404);
    let events = events_of("token.revoke").await;
    assert!(events.is_empty(), "{events:?}");
}

/// Retention prunes a prefix of the chain, records an anchor so the rest still verifies, and
/// the pruning itself is an audited event. Only Owners change retention.
#[tokio::test]
async fn retention_prunes_with_an_anchor() {
    let Trail {
        app,
        admin,
        viewer,
        org,
    } = trail().await;
    let settings = format!("/v1/orgs/{org}/audit/settings");
    let (s, _) = app
        .call(
            Method::PUT,
            &settings,
            Some(&viewer.access),
            Some(json!({"retention_days": 1})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = app
        .call(
            Method::PUT,
            &settings,
            Some(&admin.access),
            Some(json!({"retention_days": 0})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, body) = app
        .call(
            Method::PUT,
            &settings,
            Some(&admin.access),
            Some(json!({"retention_days": 30})),
        )
        .await;
    assert_eq!((s, body["retention_days"].as_i64()), (200, Some(30)));

    // The first four events happened long ago.
    app.seal_audit().await;
    let superuser = app.superuser_pool();
    sqlx::query("UPDATE audit_events SET occurred_at = now() - interval '90 days' WHERE org_id = $1::uuid AND seq <= 4").bind(&org).execute(&superuser).await.expect("age");
    let before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE org_id = $1::uuid")
            .bind(&org)
            .fetch_one(&superuser)
            .await
            .expect("count");

    let (ok, out, err) = run(
        &["audit", "prune", "--json"],
        &[("BR_OS_MIGRATE_DB_URL", &app.db.owner_url)],
    );
    assert!(ok, "{out}{err}");
    let pruned: Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(pruned[0]["pruned"], 4, "{pruned}");
    assert_eq!(pruned[0]["anchor_seq"], 4);

    app.seal_audit().await;
    let after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE org_id = $1::uuid")
            .bind(&org)
            .fetch_one(&superuser)
            .await
            .expect("count");
    assert_eq!(after, before - 4 + 1, "four pruned, one audit.prune added");
    let (_, report) = app
        .get_as(&format!("/v1/orgs/{org}/audit/verify"), &admin.access)
        .await;
    assert_eq!(
        report["ok"], true,
        "the rest verifies from the anchor: {report}"
    );
    let (_, page) = app
        .get_as(
            &format!("/v1/orgs/{org}/audit/events?q=action:audit.prune"),
            &admin.access,
        )
        .await;
    assert_eq!(page["events"][0]["actor_type"], "system");
    assert_eq!(page["events"][0]["detail"]["pruned"], 4);

    // The app's own role can never delete events.
    let err = sqlx::query("DELETE FROM audit_events")
        .execute(&app.pool)
        .await
        .expect_err("app can't delete");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// Every action the code records is in docs/audit.md's catalogue.
#[test]
fn every_action_is_catalogued() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/audit.md"))
        .expect("docs/audit.md");
    let mut missing = Vec::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../api/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read");
            for chunk in text.split("Event::success(").skip(1) {
                let Some(action) = chunk
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|s| s.split('"').next())
                else {
                    continue;
                };
                if !doc.contains(&format!("`{action}`")) && !doc.contains(&format!("/ `{action}`"))
                {
                    missing.push(format!("{action} ({})", path.display()));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "actions missing from docs/audit.md: {missing:?}"
    );
}
