//! Pipelines and runs over HTTP against real PostgreSQL: definitions from templates, YAML and
//! JSON with every refusal code; versions; starting runs with idempotency keys and modes;
//! reading runs, timelines, logs, receipts and artifacts as a Viewer; cancelling; the event
//! stream; the processor allowlist and run limits; and what other orgs and roles may not do.

use std::time::Duration;

use builderos_operator::artifacts::{ArtifactStore, LocalStore};
use builderos_test_support::{Session, TestApp};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

/// Two steps, `b` after `a`, reading a run input.
const SIMPLE: &str = "description: Two steps
steps:
  - id: a
    role: builder
    processor: builtin:echo
    inputs: {x: \"${run.inputs.x}\"}
  - id: b
    role: reviewer
    processor: builtin:echo
    depends_on: [a]
";

/// One step served over HTTP, after a builtin one.
const REMOTE: &str = "steps:
  - id: plan
    role: planner
    processor: builtin:echo
  - id: build
    role: builder
    processor: http://127.0.0.1:9000/agents/build
    depends_on: [plan]
";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

struct World {
    app: TestApp,
    owner: Session,
    org: String,
    project: String,
}

impl World {
    async fn new() -> Self {
        let app = TestApp::spawn().await;
        let owner = app.signup("owner@example.com").await;
        let org = app.create_org(&owner, "acme").await;
        let (s, p) = app
            .post_as(
                &format!("/v1/orgs/{org}/projects"),
                Some(&owner.access),
                json!({"slug": "web", "name": "Web"}),
            )
            .await;
        assert_eq!(s, 201, "{p}");
        let project = p["id"].as_str().expect("id").to_owned();
        Self {
            app,
            owner,
            org,
            project,
        }
    }

    /// `/v1/orgs/{org}{rest}`.
    fn o(&self, rest: &str) -> String {
        format!("/v1/orgs/{}{rest}", self.org)
    }

    /// `/v1/orgs/{org}/projects/{project}{rest}`.
    fn p(&self, rest: &str) -> String {
        format!("/v1/orgs/{}/projects/{}{rest}", self.org, self.project)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        who: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.app.call(method, path, Some(who), body).await
    }

    async fn create(&self, who: &str, name: &str, source: &str) -> Value {
        let (s, body) = self
            .call(
                Method::POST,
                &self.p("/pipelines"),
                who,
                Some(json!({"name": name, "source": source})),
            )
            .await;
        assert_eq!(s, 201, "create {name}: {body}");
        body
    }

    async fn start(&self, who: &str, name: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::POST,
            &self.p(&format!("/pipelines/{name}/runs")),
            who,
            Some(body),
        )
        .await
    }

    /// A raw request, for bodies that aren't JSON and headers the helpers don't set.
    fn request(&self, method: Method, path: &str, who: &str) -> reqwest::RequestBuilder {
        self.app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(who)
    }

    /// The last audit event of the org: (action, outcome).
    async fn last_event(&self) -> (String, String) {
        self.app.seal_audit().await;
        sqlx::query_as(
            "SELECT action, outcome FROM audit_events WHERE org_id = $1::uuid ORDER BY seq DESC LIMIT 1",
        )
        .bind(&self.org)
        .fetch_one(&self.app.superuser_pool())
        .await
        .expect("event")
    }
}

/// Pipelines are made from a template, from YAML and from JSON; versions are immutable and
/// numbered; saving a version replaces the cron triggers; names are slugs, unique per project.
#[tokio::test]
async fn pipelines_from_templates_yaml_and_json_with_versions() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();

    let (s, templates) = w.app.get_as("/v1/pipeline-templates", owner).await;
    assert_eq!(s, 200, "{templates}");
    let names: Vec<&str> = templates
        .as_array()
        .expect("list")
        .iter()
        .map(|t| t["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(names, ["feature", "hotfix", "data"]);
    assert_eq!(w.app.get("/v1/pipeline-templates").await.status(), 401);

    let (s, feature) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            owner,
            Some(json!({"name": "feature", "template": "feature"})),
        )
        .await;
    assert_eq!(s, 201, "{feature}");
    assert_eq!(
        (
            &feature["version"],
            &feature["latest_version"],
            &feature["format"]
        ),
        (&json!(1), &json!(1), &json!("yaml"))
    );
    assert_eq!(feature["source"], templates[0]["source"]);
    assert_eq!(
        feature["definition"]["steps"].as_array().map(Vec::len),
        Some(6)
    );

    let simple = w.create(owner, "simple", SIMPLE).await;
    assert_eq!(simple["definition"]["steps"][1]["depends_on"], json!(["a"]));
    // The definition carries the defaults, as a run will snapshot it.
    assert_eq!(
        simple["definition"]["steps"][0]["retries"]["max_attempts"],
        json!(1)
    );
    let source = json!({"steps": [{"id": "only", "role": "r", "processor": "builtin:echo"}]});
    let (s, from_json) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            owner,
            Some(json!({"name": "json-one", "source": source.to_string(), "format": "json"})),
        )
        .await;
    assert_eq!(
        (s, &from_json["format"]),
        (201, &json!("json")),
        "{from_json}"
    );

    // The data template runs nightly: its cron trigger is registered.
    let (s, data) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            owner,
            Some(json!({"name": "nightly", "template": "data"})),
        )
        .await;
    assert_eq!(s, 201, "{data}");
    let triggers = |id: Value| {
        let pool = w.app.superuser_pool();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM cron_triggers WHERE pipeline_id = $1::uuid",
            )
            .bind(id.as_str().expect("id").to_owned())
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    assert_eq!(triggers(data["id"].clone()).await, 1);

    for (body, status, want) in [
        (
            json!({"name": "simple", "source": SIMPLE}),
            409,
            "ERR_CONFLICT",
        ),
        (
            json!({"name": "Not A Slug", "source": SIMPLE}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"name": "x1", "source": SIMPLE, "template": "feature"}),
            400,
            "ERR_INPUTS",
        ),
        (json!({"name": "x1"}), 400, "ERR_INPUTS"),
        (
            json!({"name": "x1", "template": "moonshot"}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"name": "x1", "source": SIMPLE, "format": "toml"}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"name": "x1", "source": SIMPLE, "colour": "blue"}),
            400,
            "ERR_INPUTS",
        ),
        (json!({"source": SIMPLE}), 400, "ERR_INPUTS"),
        (json!({"name": 7, "source": SIMPLE}), 400, "ERR_INPUTS"),
    ] {
        let (s, res) = w
            .call(Method::POST, &w.p("/pipelines"), owner, Some(body.clone()))
            .await;
        assert_eq!((s, code(&res)), (status, want), "{body}: {res}");
    }
    let res = w
        .request(Method::POST, &w.p("/pipelines"), owner)
        .header(CONTENT_TYPE, "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400);

    let (s, list) = w.app.get_as(&w.p("/pipelines"), owner).await;
    assert_eq!(s, 200, "{list}");
    let listed: Vec<(&str, &str)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or(""),
                p["description"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(listed[0].0, "feature");
    assert!(listed.contains(&("simple", "Two steps")), "{listed:?}");
    assert_eq!(listed.len(), 4);

    // A new version with a trigger, then one without: the triggers follow the latest version.
    let with_cron =
        format!("{SIMPLE}triggers:\n  - cron: \"0 3 * * *\"\n    inputs: {{x: nightly}}\n");
    let (s, v2) = w
        .call(
            Method::PUT,
            &w.p("/pipelines/simple"),
            owner,
            Some(json!({"source": with_cron})),
        )
        .await;
    assert_eq!(
        (s, &v2["version"], &v2["latest_version"]),
        (200, &json!(2), &json!(2)),
        "{v2}"
    );
    assert_eq!(triggers(simple["id"].clone()).await, 1);
    let (s, v3) = w
        .call(
            Method::PUT,
            &w.p("/pipelines/simple"),
            owner,
            Some(json!({"source": SIMPLE, "format": "yaml"})),
        )
        .await;
    assert_eq!((s, &v3["version"]), (200, &json!(3)), "{v3}");
    assert_eq!(triggers(simple["id"].clone()).await, 0);

    let (s, v1) = w
        .app
        .get_as(&w.p("/pipelines/simple?version=1"), owner)
        .await;
    assert_eq!(
        (
            s,
            &v1["version"],
            &v1["latest_version"],
            v1["source"].as_str()
        ),
        (200, &json!(1), &json!(3), Some(SIMPLE))
    );
    let (s, latest) = w.app.get_as(&w.p("/pipelines/simple"), owner).await;
    assert_eq!((s, &latest["version"]), (200, &json!(3)));
    assert_eq!(
        w.app
            .get_as(&w.p("/pipelines/simple?version=9"), owner)
            .await
            .0,
        404
    );
    let (s, versions) = w
        .app
        .get_as(&w.p("/pipelines/simple/versions"), owner)
        .await;
    let numbers: Vec<i64> = versions
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_i64().unwrap_or(0))
        .collect();
    assert_eq!((s, numbers), (200, vec![3, 2, 1]));

    for (method, path, body) in [
        (Method::GET, w.p("/pipelines/ghost"), None),
        (Method::GET, w.p("/pipelines/ghost/versions"), None),
        (
            Method::PUT,
            w.p("/pipelines/ghost"),
            Some(json!({"source": SIMPLE})),
        ),
        (
            Method::GET,
            format!(
                "/v1/orgs/{}/projects/{}/pipelines",
                w.org,
                uuid::Uuid::new_v4()
            ),
            None,
        ),
    ] {
        let (s, res) = w.call(method.clone(), &path, owner, body).await;
        assert_eq!((s, code(&res)), (404, "ERR_NOT_FOUND"), "{method} {path}");
    }
}

/// Every definition error answers 422 with the definition's own code and its line and path,
/// on create and on update; an oversize source is 413.
#[tokio::test]
async fn definition_errors_carry_their_code_line_and_path() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    let a = "  - id: a\n    role: builder\n    processor: builtin:echo\n";
    let cases: Vec<(String, &str, &str, Option<&str>)> = vec![
        ("steps: [\n".into(), "yaml", "ERR_PIPELINE_PARSE", None),
        ("{\"steps\": ".into(), "json", "ERR_PIPELINE_PARSE", None),
        (format!("steps:\n{a}    retry: 3\n"), "yaml", "ERR_PIPELINE_SCHEMA", Some("steps[0].retry")),
        (format!("steps:\n{a}{a}"), "yaml", "ERR_PIPELINE_DUPLICATE_STEP", Some("steps[1].id")),
        (
            format!("steps:\n{a}    depends_on: [ghost]\n"),
            "yaml",
            "ERR_PIPELINE_UNKNOWN_STEP",
            Some("steps[0].depends_on[0]"),
        ),
        (
            "steps:\n  - {id: a, role: r, processor: \"builtin:echo\", depends_on: [b]}\n  - {id: b, role: r, processor: \"builtin:echo\", depends_on: [a]}\n".into(),
            "yaml",
            "ERR_PIPELINE_CYCLE",
            None,
        ),
        (
            format!("steps:\n{a}    retries: {{max_attempts: 11}}\n"),
            "yaml",
            "ERR_PIPELINE_RETRIES",
            Some("steps[0].retries.max_attempts"),
        ),
        (format!("steps:\n{a}    timeout: 25h\n"), "yaml", "ERR_PIPELINE_TIMEOUT", Some("steps[0].timeout")),
        (
            "steps:\n  - id: a\n    role: r\n    processor: ftp://x\n".into(),
            "yaml",
            "ERR_PIPELINE_PROCESSOR",
            Some("steps[0].processor"),
        ),
        (
            format!("steps:\n{a}  - id: b\n    role: r\n    processor: builtin:echo\n    inputs: {{x: \"${{steps.a.outputs.y}}\"}}\n"),
            "yaml",
            "ERR_PIPELINE_INPUT_REF",
            Some("steps[1].inputs.x"),
        ),
        (
            format!("steps:\n{a}triggers:\n  - cron: \"0 0 * * * *\"\n"),
            "yaml",
            "ERR_CRON_INVALID",
            Some("triggers[0].cron"),
        ),
        (
            format!("steps:\n{a}triggers:\n  - cron: \"0 3 * * *\"\n    timezone: Mars/Base\n"),
            "yaml",
            "ERR_TIMEZONE_INVALID",
            Some("triggers[0].timezone"),
        ),
    ];
    for (i, (source, format, want, path)) in cases.iter().enumerate() {
        let (s, res) = w
            .call(
                Method::POST,
                &w.p("/pipelines"),
                owner,
                Some(json!({"name": format!("bad-{i}"), "source": source, "format": format})),
            )
            .await;
        assert_eq!((s, code(&res)), (422, *want), "{source}: {res}");
        let details = &res["error"]["details"];
        assert!(details.get("line").is_some(), "{want}: {res}");
        if let Some(path) = path {
            assert_eq!(details["path"].as_str(), Some(*path), "{want}: {res}");
        }
    }
    // Line numbers point into the source.
    let (_, res) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            owner,
            Some(json!({"name": "lined", "source": format!("steps:\n{a}    timeout: 25h\n")})),
        )
        .await;
    assert_eq!(res["error"]["details"]["line"], json!(5), "{res}");

    // The same checks guard new versions; the stored version is untouched.
    w.create(owner, "good", SIMPLE).await;
    let (s, res) = w
        .call(
            Method::PUT,
            &w.p("/pipelines/good"),
            owner,
            Some(json!({"source": format!("steps:\n{a}{a}")})),
        )
        .await;
    assert_eq!(
        (s, code(&res)),
        (422, "ERR_PIPELINE_DUPLICATE_STEP"),
        "{res}"
    );
    let (_, good) = w.app.get_as(&w.p("/pipelines/good"), owner).await;
    assert_eq!(good["version"], json!(1));

    let big = format!("{SIMPLE}#{}\n", "x".repeat(256 * 1024));
    let (s, res) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            owner,
            Some(json!({"name": "big", "source": big})),
        )
        .await;
    assert_eq!((s, code(&res)), (413, "ERR_PAYLOAD_TOO_LARGE"), "{res}");
}

/// A run starts queued with its snapshot and steps; an idempotency key (body or header) gives
/// back the same run with 200; modes and bodies are checked; runs list newest first with
/// filters and a cursor.
#[tokio::test]
async fn starting_runs_idempotency_and_listing() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    let pipeline = w.create(owner, "simple", SIMPLE).await;

    // An empty body starts a mock run without inputs.
    let res = w
        .request(Method::POST, &w.p("/pipelines/simple/runs"), owner)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 201);
    let first: Value = res.json().await.expect("json");
    assert_eq!(
        (
            &first["state"],
            &first["mode"],
            &first["trigger"],
            &first["pipeline"],
            &first["pipeline_version"]
        ),
        (
            &json!("queued"),
            &json!("mock"),
            &json!("api"),
            &json!("simple"),
            &json!(1)
        ),
        "{first}"
    );
    assert_eq!(first["snapshot"], pipeline["definition"]);
    assert_eq!(
        (&first["steps_total"], &first["inputs"]),
        (&json!(2), &json!({}))
    );
    let steps: Vec<(&str, &str, &str)> = first["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or(""),
                s["status"].as_str().unwrap_or(""),
                s["role"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("a", "queued", "builder"), ("b", "pending", "reviewer")]
    );
    assert_eq!(first["created_by"].as_str(), Some(w.owner.user_id.as_str()));

    let (s, keyed) = w
        .start(
            owner,
            "simple",
            json!({"inputs": {"x": "1"}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(s, 201, "{keyed}");
    let res = w
        .request(Method::POST, &w.p("/pipelines/simple/runs"), owner)
        .header("Idempotency-Key", "k1")
        .json(&json!({}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 200, "the same key gives back the same run");
    let again: Value = res.json().await.expect("json");
    assert_eq!(
        (&again["id"], &again["inputs"]),
        (&keyed["id"], &json!({"x": "1"}))
    );
    let res = w
        .request(Method::POST, &w.p("/pipelines/simple/runs"), owner)
        .header("Idempotency-Key", "k1")
        .json(&json!({"idempotency_key": "k2"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 400, "body and header disagree");

    let (s, real) = w.start(owner, "simple", json!({"mode": "real"})).await;
    assert_eq!((s, &real["mode"]), (201, &json!("real")), "{real}");
    for body in [
        json!({"mode": "fast"}),
        json!({"mode": 1}),
        json!({"inputs": [1, 2]}),
        json!({"inputs": {}, "extra": true}),
        json!({"idempotency_key": ""}),
        json!({"idempotency_key": "k".repeat(201)}),
    ] {
        let (s, res) = w.start(owner, "simple", body.clone()).await;
        assert_eq!((s, code(&res)), (400, "ERR_INPUTS"), "{body}: {res}");
    }
    let (s, res) = w
        .start(
            owner,
            "simple",
            json!({"inputs": {"big": "x".repeat(65 * 1024)}}),
        )
        .await;
    assert_eq!((s, code(&res)), (413, "ERR_PAYLOAD_TOO_LARGE"), "{res}");
    let res = w
        .request(Method::POST, &w.p("/pipelines/simple/runs"), owner)
        .header(CONTENT_TYPE, "text/plain")
        .body("mode=real")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 415);
    assert_eq!(w.start(owner, "ghost", json!({})).await.0, 404);

    // A new version: new runs snapshot it, earlier runs keep theirs.
    let (s, _) = w
        .call(
            Method::PUT,
            &w.p("/pipelines/simple"),
            owner,
            Some(json!({"source": SIMPLE.replace("Two steps", "Two steps, v2")})),
        )
        .await;
    assert_eq!(s, 200);
    let (_, v2) = w.start(owner, "simple", json!({})).await;
    assert_eq!(v2["pipeline_version"], json!(2));
    assert_eq!(v2["snapshot"]["description"], json!("Two steps, v2"));
    let (_, old) = w
        .app
        .get_as(
            &w.o(&format!("/runs/{}", first["id"].as_str().expect("id"))),
            owner,
        )
        .await;
    assert_eq!(
        (&old["pipeline_version"], &old["snapshot"]["description"]),
        (&json!(1), &json!("Two steps"))
    );

    let other = w.create(owner, "other", SIMPLE).await;
    w.start(owner, "other", json!({})).await;
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|r| r["id"].as_str().unwrap_or("").to_owned())
            .collect()
    };
    let (s, all) = w.app.get_as(&w.o("/runs"), owner).await;
    assert_eq!(s, 200, "{all}");
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 5);
    assert_eq!(
        all_ids[4],
        first["id"].as_str().expect("id"),
        "newest first"
    );
    assert_eq!(all["next_cursor"], Value::Null);
    let (_, simple_runs) = w.app.get_as(&w.o("/runs?pipeline=simple"), owner).await;
    assert_eq!(ids(&simple_runs).len(), 4);
    let (_, project_runs) = w
        .app
        .get_as(
            &w.o(&format!("/runs?project={}&pipeline=other", w.project)),
            owner,
        )
        .await;
    assert_eq!(project_runs["items"][0]["pipeline_id"], other["id"]);
    let (_, queued) = w.app.get_as(&w.o("/runs?state=queued"), owner).await;
    assert_eq!(ids(&queued).len(), 5);
    let (_, none) = w.app.get_as(&w.o("/runs?state=succeeded"), owner).await;
    assert!(ids(&none).is_empty());
    let (_, elsewhere) = w
        .app
        .get_as(
            &w.o(&format!("/runs?project={}", uuid::Uuid::new_v4())),
            owner,
        )
        .await;
    assert!(ids(&elsewhere).is_empty());

    // Paging one at a time walks the same runs in the same order.
    let mut walked = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map_or(String::new(), |c| format!("&cursor={c}"));
        let (s, page) = w
            .app
            .get_as(&w.o(&format!("/runs?limit=2{q}")), owner)
            .await;
        assert_eq!(s, 200, "{page}");
        walked.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(walked, all_ids);
    for q in [
        "limit=0",
        "limit=201",
        "state=done",
        "cursor=nonsense",
        "project=nope",
    ] {
        let (s, res) = w.app.get_as(&w.o(&format!("/runs?{q}")), owner).await;
        assert_eq!((s, code(&res)), (400, "ERR_INPUTS"), "{q}: {res}");
    }
}

/// A Viewer reads runs, steps, timeline, logs, receipts and artifacts — but can't create,
/// edit, start or cancel. Logs never hold input or output text; artifacts download with their
/// SHA-256 as ETag, and only paths recorded for the run are served.
#[tokio::test]
async fn viewers_read_everything_and_change_nothing() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    let viewer = w
        .app
        .member(&w.owner, &w.org, "vic@example.com", "viewer")
        .await;
    let vic = viewer.access.as_str();
    w.create(owner, "simple", SIMPLE).await;
    let (_, run) = w
        .start(owner, "simple", json!({"inputs": {"x": "the input text"}}))
        .await;
    let run_id = run["id"].as_str().expect("id").to_owned();

    // What an operator would have recorded for step `a`.
    let path = format!("runs/{run_id}/a/1/report.txt");
    // The app's store: test apps keep artifacts beside the test cluster.
    let stored = LocalStore::new(builderos_test_support::test_config().artifacts_dir)
        .put(w.org.parse().expect("org id"), b"hello artifact")
        .expect("put");
    let su = w.app.superuser_pool();
    sqlx::query(
        "INSERT INTO step_attempts (run_id, org_id, step_id, attempt, execution_id, worker, status, receipt, started_at, finished_at) \
         VALUES ($1::uuid, $2::uuid, 'a', 1, 'exec-1', gen_random_uuid(), 'succeeded', $3, now(), now())",
    )
    .bind(&run_id)
    .bind(&w.org)
    .bind(json!({"execution_id": "exec-1", "usage": {"input_tokens": 3, "output_tokens": 5}}))
    .execute(&su)
    .await
    .expect("attempt");
    sqlx::query(
        "INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size, location) VALUES ($1::uuid, $2::uuid, $3, 'a', 1, $4, $5, $6)",
    )
    .bind(&run_id)
    .bind(&w.org)
    .bind(&path)
    .bind(&stored.sha256)
    .bind(i64::try_from(stored.size).expect("size"))
    .bind(&stored.location)
    .execute(&su)
    .await
    .expect("artifact");
    sqlx::query(
        "INSERT INTO run_events (org_id, run_id, kind, step_id, attempt, data) VALUES \
         ($1::uuid, $2::uuid, 'step.started', 'a', 1, '{}'), \
         ($1::uuid, $2::uuid, 'step.retrying', 'a', 1, '{\"error_code\": \"ERR_TIMEOUT\", \"retry_in_ms\": 1500, \"outputs\": \"the output text\"}')",
    )
    .bind(&w.org)
    .bind(&run_id)
    .execute(&su)
    .await
    .expect("events");

    let r = |rest: &str| w.o(&format!("/runs/{run_id}{rest}"));
    let (s, list) = w.app.get_as(&w.o("/runs"), vic).await;
    assert_eq!((s, &list["items"][0]["id"]), (200, &run["id"]), "{list}");
    let (s, got) = w.app.get_as(&r(""), vic).await;
    assert_eq!((s, &got["steps"][0]["id"]), (200, &json!("a")));
    let (s, pipelines) = w.app.get_as(&w.p("/pipelines"), vic).await;
    assert_eq!((s, pipelines.as_array().map(Vec::len)), (200, Some(1)));

    let (s, timeline) = w.app.get_as(&r("/timeline"), vic).await;
    let kinds: Vec<&str> = timeline
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        (s, kinds),
        (200, vec!["run.queued", "step.started", "step.retrying"])
    );
    let after = timeline[0]["id"].as_i64().expect("id");
    let (_, rest) = w
        .app
        .get_as(&r(&format!("/timeline?after={after}&limit=1")), vic)
        .await;
    assert_eq!(rest.as_array().map(Vec::len), Some(1));
    assert_eq!(rest[0]["kind"], json!("step.started"));

    let res = w
        .request(Method::GET, &r("/logs"), vic)
        .send()
        .await
        .expect("logs");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap_or("")
            .starts_with("text/plain"),
        "{:?}",
        res.headers()
    );
    let logs = res.text().await.expect("text");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 3, "{logs}");
    assert!(lines[0].ends_with(" run.queued trigger=api"), "{logs}");
    assert!(
        lines[2]
            .ends_with(" step.retrying step=a attempt=1 error_code=ERR_TIMEOUT retry_in_ms=1500"),
        "{logs}"
    );
    assert!(
        !logs.contains("the output text") && !logs.contains("the input text"),
        "{logs}"
    );

    let (s, receipts) = w.app.get_as(&r("/receipts"), vic).await;
    assert_eq!(
        (
            s,
            &receipts[0]["step"],
            &receipts[0]["receipt"]["usage"]["output_tokens"]
        ),
        (200, &json!("a"), &json!(5)),
        "{receipts}"
    );
    let (s, artifacts) = w.app.get_as(&r("/artifacts"), vic).await;
    assert_eq!(
        (
            s,
            &artifacts[0]["path"],
            &artifacts[0]["sha256"],
            &artifacts[0]["size"]
        ),
        (200, &json!(path), &json!(stored.sha256), &json!(14)),
        "{artifacts}"
    );
    let res = w
        .request(Method::GET, &r(&format!("/artifacts/{path}")), vic)
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);
    let etag = res.headers()[ETAG].to_str().expect("etag").to_owned();
    assert_eq!(etag, format!("\"{}\"", stored.sha256));
    assert_eq!(res.headers()[CONTENT_TYPE], "application/octet-stream");
    assert_eq!(
        res.bytes().await.expect("bytes").as_ref(),
        b"hello artifact"
    );
    let res = w
        .request(Method::GET, &r(&format!("/artifacts/{path}")), vic)
        .header(IF_NONE_MATCH, &etag)
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 304);
    // A large artifact is a file of its own in the store (no location); one whose recorded
    // location names nothing is gone from the store: both as a download shows them.
    let large = vec![b'l'; (1 << 20) + 1];
    let stored_large = LocalStore::new(builderos_test_support::test_config().artifacts_dir)
        .put(w.org.parse().expect("org id"), &large)
        .expect("put");
    assert_eq!(stored_large.location, None);
    sqlx::query(
        "INSERT INTO artifacts (run_id, org_id, path, step_id, attempt, sha256, size, location) VALUES \
         ($1::uuid, $2::uuid, $3, 'a', 1, $4, $5, NULL), \
         ($1::uuid, $2::uuid, $6, 'a', 1, $7, 14, 'segment/00000000-0000-7000-8000-000000000000/0')",
    )
    .bind(&run_id)
    .bind(&w.org)
    .bind(format!("runs/{run_id}/a/1/large.bin"))
    .bind(&stored_large.sha256)
    .bind(i64::try_from(stored_large.size).expect("size"))
    .bind(format!("runs/{run_id}/a/1/gone.txt"))
    .bind(&stored.sha256)
    .execute(&su)
    .await
    .expect("artifacts");
    let res = w
        .request(
            Method::GET,
            &r(&format!("/artifacts/runs/{run_id}/a/1/large.bin")),
            vic,
        )
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), &large[..]);
    for missing in [
        format!("runs/{run_id}/a/1/gone.txt"),
        format!("runs/{run_id}/a/1/other.txt"),
        "..%2F..%2Fetc%2Fpasswd".to_owned(),
    ] {
        let (s, res) = w
            .app
            .get_as(&r(&format!("/artifacts/{missing}")), vic)
            .await;
        assert_eq!((s, code(&res)), (404, "ERR_NOT_FOUND"), "{missing}");
    }

    // Nothing a Viewer may change.
    for (method, path, body) in [
        (
            Method::POST,
            w.p("/pipelines"),
            Some(json!({"name": "mine", "source": SIMPLE})),
        ),
        (
            Method::PUT,
            w.p("/pipelines/simple"),
            Some(json!({"source": SIMPLE})),
        ),
        (Method::POST, w.p("/pipelines/simple/runs"), Some(json!({}))),
        (Method::POST, r("/cancel"), None),
    ] {
        let (s, res) = w.call(method.clone(), &path, vic, body).await;
        assert_eq!(
            (s, code(&res)),
            (403, "ERR_FORBIDDEN"),
            "{method} {path}: {res}"
        );
        assert_eq!(
            w.last_event().await,
            ("access.denied".into(), "denied".into())
        );
    }
}

/// Reads an event stream until it ends (or 10 s pass): the (id, event, data) of each event.
async fn read_stream(res: reqwest::Response) -> Vec<(Option<i64>, String, Value)> {
    let text = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the stream ends once the run has ended")
        .expect("text");
    parse_events(&text)
}

fn parse_events(text: &str) -> Vec<(Option<i64>, String, Value)> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("event:")))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_owned())
            };
            (
                field("id:").and_then(|v| v.parse().ok()),
                field("event:").unwrap_or_default(),
                field("data:")
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// Cancelling stops a run (every step not finished is cancelled) and is audited; a second
/// cancel is 409 naming the state. The event stream replays the timeline, honours
/// Last-Event-ID, follows new events live and ends with `end` once the run has ended.
#[tokio::test]
async fn cancel_and_event_stream() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    w.create(owner, "simple", SIMPLE).await;
    let (_, run) = w.start(owner, "simple", json!({})).await;
    let id = run["id"].as_str().expect("id").to_owned();

    // Follow it live: the stream is open (and has sent run.queued) before the cancel.
    let mut res = w
        .request(Method::GET, &w.o(&format!("/runs/{id}/events")), owner)
        .send()
        .await
        .expect("stream");
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap_or("")
            .starts_with("text/event-stream"),
        "{:?}",
        res.headers()
    );
    let mut seen = String::new();
    while !seen.contains("run.queued") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), res.chunk())
            .await
            .expect("first event")
            .expect("chunk")
            .expect("open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }

    let (s, cancelled) = w
        .call(
            Method::POST,
            &w.o(&format!("/runs/{id}/cancel")),
            owner,
            None,
        )
        .await;
    assert_eq!(
        (s, &cancelled["state"]),
        (200, &json!("cancelled")),
        "{cancelled}"
    );
    assert_eq!(
        cancelled["cancelled_by"].as_str(),
        Some(w.owner.user_id.as_str())
    );
    assert!(cancelled["finished_at"].is_string());
    assert!(
        cancelled["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["status"] == "cancelled"),
        "{cancelled}"
    );
    assert_eq!(
        w.last_event().await,
        ("run.cancel".into(), "success".into())
    );
    let (s, again) = w
        .call(
            Method::POST,
            &w.o(&format!("/runs/{id}/cancel")),
            owner,
            None,
        )
        .await;
    assert_eq!(
        (s, code(&again), &again["error"]["details"]["state"]),
        (409, "ERR_CONFLICT", &json!("cancelled")),
        "{again}"
    );

    let rest = tokio::time::timeout(Duration::from_secs(10), res.text())
        .await
        .expect("the live stream ends after the cancel")
        .expect("text");
    let live = parse_events(&format!("{seen}{rest}"));
    let kinds: Vec<&str> = live.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds, ["run.queued", "run.cancelled", "end"]);
    assert_eq!(live[2].2, json!({"state": "cancelled"}));
    assert_eq!(live[1].2["kind"], json!("run.cancelled"));

    // A finished run's stream replays and ends; Last-Event-ID skips what was seen.
    let res = w
        .request(Method::GET, &w.o(&format!("/runs/{id}/events")), owner)
        .send()
        .await
        .expect("stream");
    let replay = read_stream(res).await;
    assert_eq!(
        replay
            .iter()
            .map(|(_, k, _)| k.as_str())
            .collect::<Vec<_>>(),
        kinds
    );
    assert_eq!(replay[0].0, live[0].0);
    let res = w
        .request(Method::GET, &w.o(&format!("/runs/{id}/events")), owner)
        .header("Last-Event-ID", live[0].0.expect("id").to_string())
        .send()
        .await
        .expect("stream");
    let resumed = read_stream(res).await;
    assert_eq!(
        resumed
            .iter()
            .map(|(_, k, _)| k.as_str())
            .collect::<Vec<_>>(),
        ["run.cancelled", "end"]
    );
}

/// HTTP processors are denied by default: starting such a pipeline is 403 with the origins,
/// audited as denied, until an Admin allows the origin. Builders can't touch the allowlist or
/// the run limit (403, audited); project-scoped tokens can't change org-wide settings and see
/// only their project.
#[tokio::test]
async fn processor_allowlist_run_limits_and_roles() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    let admin = w
        .app
        .member(&w.owner, &w.org, "ada@example.com", "admin")
        .await;
    let builder = w
        .app
        .member(&w.owner, &w.org, "bob@example.com", "builder")
        .await;
    let bob = builder.access.as_str();
    w.create(bob, "remote", REMOTE).await;

    let (s, res) = w.start(bob, "remote", json!({})).await;
    assert_eq!((s, code(&res)), (403, "ERR_PROCESSOR_NOT_ALLOWED"), "{res}");
    assert_eq!(
        res["error"]["details"]["origins"],
        json!(["http://127.0.0.1:9000"])
    );
    assert_eq!(w.last_event().await, ("run.start".into(), "denied".into()));

    for (method, path, body) in [
        (
            Method::POST,
            w.o("/processor-allowlist"),
            Some(json!({"processor": "http://127.0.0.1:9000"})),
        ),
        (
            Method::DELETE,
            w.o("/processor-allowlist?origin=http://127.0.0.1:9000"),
            None,
        ),
        (
            Method::PUT,
            w.o("/run-limits"),
            Some(json!({"max_concurrency": 4})),
        ),
    ] {
        let (s, res) = w.call(method.clone(), &path, bob, body).await;
        assert_eq!((s, code(&res)), (403, "ERR_FORBIDDEN"), "{method} {path}");
        assert_eq!(
            w.last_event().await,
            ("access.denied".into(), "denied".into())
        );
    }
    let (s, list) = w.app.get_as(&w.o("/processor-allowlist"), bob).await;
    assert_eq!((s, list), (200, json!([])));
    let (s, limits) = w.app.get_as(&w.o("/run-limits"), bob).await;
    assert_eq!(
        (s, limits),
        (200, json!({"max_concurrency": 16, "default": true}))
    );

    let ada = admin.access.as_str();
    let allowlist = w.o("/processor-allowlist");
    let allow = |processor: &str| {
        w.call(
            Method::POST,
            &allowlist,
            ada,
            Some(json!({"processor": processor})),
        )
    };
    let (s, entry) = allow("http://127.0.0.1:9000/agents/build").await;
    assert_eq!(
        (s, &entry["origin"]),
        (201, &json!("http://127.0.0.1:9000")),
        "{entry}"
    );
    assert_eq!(entry["created_by"].as_str(), Some(admin.user_id.as_str()));
    assert_eq!(
        w.last_event().await,
        ("processor.allow".into(), "success".into())
    );
    assert_eq!(
        code(&allow("http://127.0.0.1:9000").await.1),
        "ERR_CONFLICT"
    );
    for bad in ["builtin:echo", "ftp://files.example.com", "not a url"] {
        let (s, res) = allow(bad).await;
        assert_eq!((s, code(&res)), (400, "ERR_INPUTS"), "{bad}: {res}");
    }
    let (s, started) = w.start(bob, "remote", json!({})).await;
    assert_eq!(s, 201, "{started}");

    let (s, _) = w
        .call(
            Method::DELETE,
            &w.o("/processor-allowlist?origin=http://127.0.0.1:9000/"),
            ada,
            None,
        )
        .await;
    assert_eq!(s, 204);
    assert_eq!(
        w.last_event().await,
        ("processor.disallow".into(), "success".into())
    );
    let (s, res) = w
        .call(
            Method::DELETE,
            &w.o("/processor-allowlist?origin=http://127.0.0.1:9000"),
            ada,
            None,
        )
        .await;
    assert_eq!((s, code(&res)), (404, "ERR_NOT_FOUND"));
    assert_eq!(w.start(bob, "remote", json!({})).await.0, 403);

    let (s, set) = w
        .call(
            Method::PUT,
            &w.o("/run-limits"),
            ada,
            Some(json!({"max_concurrency": 5})),
        )
        .await;
    assert_eq!(
        (s, set),
        (200, json!({"max_concurrency": 5, "default": false}))
    );
    assert_eq!(
        w.last_event().await,
        ("run_limits.update".into(), "success".into())
    );
    let (_, limits) = w.app.get_as(&w.o("/run-limits"), bob).await;
    assert_eq!(limits["max_concurrency"], json!(5));
    for n in [0, 10_001] {
        let (s, res) = w
            .call(
                Method::PUT,
                &w.o("/run-limits"),
                ada,
                Some(json!({"max_concurrency": n})),
            )
            .await;
        assert_eq!((s, code(&res)), (400, "ERR_INPUTS"), "{n}");
    }

    // A project-scoped token stays in its project and can't change org-wide settings.
    let (s, other) = w
        .call(
            Method::POST,
            &w.o("/projects"),
            owner,
            Some(json!({"slug": "api", "name": "API"})),
        )
        .await;
    assert_eq!(s, 201);
    let other_project = other["id"].as_str().expect("id").to_owned();
    let (s, elsewhere) = w
        .call(
            Method::POST,
            &format!("/v1/orgs/{}/projects/{other_project}/pipelines", w.org),
            owner,
            Some(json!({"name": "elsewhere", "source": SIMPLE})),
        )
        .await;
    assert_eq!(s, 201, "{elsewhere}");
    let (_, foreign_run) = w
        .call(
            Method::POST,
            &format!(
                "/v1/orgs/{}/projects/{other_project}/pipelines/elsewhere/runs",
                w.org
            ),
            owner,
            Some(json!({})),
        )
        .await;
    let (s, token) = w
        .call(
            Method::POST,
            &w.o("/tokens"),
            owner,
            Some(json!({"name": "ci", "project_id": w.project,
                "permissions": ["read:pipelines", "write:pipelines", "read:runs", "write:runs", "manage:processors", "read:org"]})),
        )
        .await;
    assert_eq!(s, 201, "{token}");
    let ci = token["token"].as_str().expect("token");
    let (s, runs) = w.app.get_as(&w.o("/runs"), ci).await;
    assert_eq!(s, 200);
    assert!(
        runs["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|r| r["project_id"] == json!(w.project)),
        "{runs}"
    );
    assert_eq!(runs["items"].as_array().map(Vec::len), Some(1));
    let foreign = foreign_run["id"].as_str().expect("id");
    for path in [
        format!("/v1/orgs/{}/projects/{other_project}/pipelines", w.org),
        format!(
            "/v1/orgs/{}/projects/{other_project}/pipelines/elsewhere",
            w.org
        ),
        w.o(&format!("/runs/{foreign}")),
        w.o(&format!("/runs/{foreign}/timeline")),
    ] {
        let (s, res) = w.app.get_as(&path, ci).await;
        assert_eq!((s, code(&res)), (404, "ERR_NOT_FOUND"), "{path}");
    }
    let (s, res) = w
        .call(
            Method::POST,
            &w.o(&format!("/runs/{foreign}/cancel")),
            ci,
            None,
        )
        .await;
    assert_eq!((s, code(&res)), (404, "ERR_NOT_FOUND"));
    let (s, res) = w
        .call(
            Method::PUT,
            &w.o("/run-limits"),
            ci,
            Some(json!({"max_concurrency": 3})),
        )
        .await;
    assert_eq!((s, code(&res)), (403, "ERR_FORBIDDEN"), "{res}");
    assert_eq!(w.start(ci, "remote", json!({})).await.0, 403);
}

/// A run of another org answers exactly like a run that doesn't exist, on every run endpoint,
/// even under the caller's own org.
#[tokio::test]
async fn another_orgs_runs_look_missing() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    w.create(owner, "simple", SIMPLE).await;
    let (_, run) = w.start(owner, "simple", json!({})).await;
    let id = run["id"].as_str().expect("id");
    let outsider = w.app.signup("eve@example.com").await;
    let eve_org = w.app.create_org(&outsider, "elsewhere").await;
    let missing = uuid::Uuid::new_v4().to_string();
    for (method, rest) in [
        (Method::GET, ""),
        (Method::POST, "/cancel"),
        (Method::GET, "/timeline"),
        (Method::GET, "/logs"),
        (Method::GET, "/events"),
        (Method::GET, "/receipts"),
        (Method::GET, "/artifacts"),
        (Method::GET, "/artifacts/runs/x/a/1/f.txt"),
    ] {
        let mut bodies = Vec::new();
        for (org, run) in [(&eve_org, id), (&eve_org, missing.as_str()), (&w.org, id)] {
            let path = format!("/v1/orgs/{org}/runs/{run}{rest}");
            let (s, body) = w.call(method.clone(), &path, &outsider.access, None).await;
            assert_eq!((s, code(&body)), (404, "ERR_NOT_FOUND"), "{method} {path}");
            bodies.push(body["error"].clone());
        }
        assert_eq!(
            bodies[0], bodies[1],
            "{method} {rest}: foreign and missing alike"
        );
    }
    let (s, _) = w
        .call(
            Method::GET,
            &format!("/v1/orgs/{eve_org}/projects/{}/pipelines/simple", w.project),
            &outsider.access,
            None,
        )
        .await;
    assert_eq!(s, 404);
}

/// End to end with an operator: a run started over HTTP is followed on its event stream to
/// `succeeded`; its steps, timeline, receipts and artifacts are then all there, the artifacts
/// download with matching hashes, and the logs hold none of the input text.
#[tokio::test]
async fn a_run_end_to_end_with_an_operator() {
    let w = World::new().await;
    let owner = w.owner.access.as_str();
    w.create(owner, "simple", SIMPLE).await;
    let operator = w.app.start_operator();
    let (s, run) = w
        .start(owner, "simple", json!({"inputs": {"x": "a secret input"}}))
        .await;
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    let r = |rest: &str| w.o(&format!("/runs/{id}{rest}"));

    let res = w
        .request(Method::GET, &r("/events"), owner)
        .send()
        .await
        .expect("stream");
    let events = read_stream(res).await;
    operator.stop().await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"run.queued"), "{kinds:?}");
    assert_eq!(
        &kinds[kinds.len() - 2..],
        ["run.succeeded", "end"],
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "step.succeeded").count(),
        2,
        "{kinds:?}"
    );
    let ids: Vec<i64> = events.iter().filter_map(|(id, _, _)| *id).collect();
    assert!(ids.windows(2).all(|p| p[0] < p[1]), "{ids:?}");

    let (_, done) = w.app.get_as(&r(""), owner).await;
    assert_eq!(
        (&done["state"], &done["steps_done"], &done["steps_failed"]),
        (&json!("succeeded"), &json!(2), &json!(0)),
        "{done}"
    );
    assert!(
        done["steps"]
            .as_array()
            .expect("steps")
            .iter()
            .all(|s| s["status"] == "succeeded" && s["attempts"] == 1),
        "{done}"
    );
    let (_, receipts) = w.app.get_as(&r("/receipts"), owner).await;
    assert_eq!(receipts.as_array().map(Vec::len), Some(2), "{receipts}");
    assert!(receipts[0]["receipt"].is_object(), "{receipts}");
    let (_, artifacts) = w.app.get_as(&r("/artifacts"), owner).await;
    let artifacts = artifacts.as_array().expect("artifacts").clone();
    assert!(!artifacts.is_empty());
    for a in &artifacts {
        let path = a["path"].as_str().expect("path");
        let res = w
            .request(Method::GET, &r(&format!("/artifacts/{path}")), owner)
            .send()
            .await
            .expect("download");
        assert_eq!(res.status(), 200, "{path}");
        let bytes = res.bytes().await.expect("bytes");
        assert_eq!(
            builderos_canon::sha256_hex(&bytes),
            a["sha256"].as_str().expect("sha"),
            "{path}"
        );
    }
    let logs = w
        .request(Method::GET, &r("/logs"), owner)
        .send()
        .await
        .expect("logs")
        .text()
        .await
        .expect("text");
    assert!(logs.contains("run.succeeded"), "{logs}");
    assert!(!logs.contains("a secret input"), "{logs}");
}

/// The issue's acceptance, as a new team would do it: a Builder defines a pipeline from the
/// `feature` template and starts it; a Viewer of the org sees the run, its steps, receipts and
/// artifacts. A step served by an HTTP processor on loopback is refused until an Admin allows
/// the processor, then runs.
#[tokio::test]
async fn acceptance_template_run_shared_with_viewers_and_an_allowed_http_processor() {
    let w = World::new().await;
    let builder = w
        .app
        .member(&w.owner, &w.org, "bea@example.com", "builder")
        .await;
    let viewer = w
        .app
        .member(&w.owner, &w.org, "vic@example.com", "viewer")
        .await;
    let admin = w
        .app
        .member(&w.owner, &w.org, "ada@example.com", "admin")
        .await;
    let operator = w.app.start_operator();

    let (s, body) = w
        .call(
            Method::POST,
            &w.p("/pipelines"),
            &builder.access,
            Some(json!({"name": "feature", "template": "feature"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, run) = w
        .start(
            &builder.access,
            "feature",
            json!({"inputs": {"ticket": "BOS-42", "summary": "dark mode"}}),
        )
        .await;
    assert_eq!(s, 201, "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    let path = w.o(&format!("/runs/{id}"));
    w.app
        .eventually(&path, &viewer.access, |s, b| {
            s == 200 && !matches!(b["state"].as_str(), Some("queued" | "running"))
        })
        .await;
    let (_, done) = w.app.get_as(&path, &viewer.access).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let steps = done["steps"].as_array().expect("steps");
    assert!(steps.len() >= 5, "{done}");
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{done}");
    let (s, receipts) = w
        .app
        .get_as(&format!("{path}/receipts"), &viewer.access)
        .await;
    assert_eq!(s, 200);
    assert_eq!(receipts.as_array().map(Vec::len), Some(steps.len()));
    let (s, artifacts) = w
        .app
        .get_as(&format!("{path}/artifacts"), &viewer.access)
        .await;
    assert_eq!(s, 200);
    let first = artifacts[0]["path"].as_str().expect("artifact path");
    let res = w
        .request(
            Method::GET,
            &format!("{path}/artifacts/{first}"),
            &viewer.access,
        )
        .send()
        .await
        .expect("download");
    assert_eq!(res.status(), 200);

    // An HTTP processor on loopback: the reference processor serving `echo`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let router = builderos_operator::processors::serve::router("echo").expect("router");
    tokio::spawn(async move { axum::serve(listener, router).await });
    let remote = format!(
        "steps:\n  - {{id: plan, role: planner, processor: 'builtin:echo', inputs: {{goal: '${{run.inputs.goal}}'}}}}\n  - {{id: build, role: builder, processor: '{url}', inputs: {{plan: '${{steps.plan.outputs.goal}}'}}, depends_on: [plan]}}\n"
    );
    w.create(&builder.access, "remote", &remote).await;
    let (s, refused) = w
        .start(
            &builder.access,
            "remote",
            json!({"inputs": {"goal": "ship"}}),
        )
        .await;
    assert_eq!(
        (s, code(&refused)),
        (403, "ERR_PROCESSOR_NOT_ALLOWED"),
        "{refused}"
    );
    let (s, body) = w
        .call(
            Method::POST,
            &w.o("/processor-allowlist"),
            &admin.access,
            Some(json!({"processor": url})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, run) = w
        .start(
            &builder.access,
            "remote",
            json!({"inputs": {"goal": "ship"}}),
        )
        .await;
    assert_eq!(s, 201, "{run}");
    let path = w.o(&format!("/runs/{}", run["id"].as_str().expect("id")));
    w.app
        .eventually(&path, &viewer.access, |s, b| {
            s == 200 && !matches!(b["state"].as_str(), Some("queued" | "running"))
        })
        .await;
    let (_, done) = w.app.get_as(&path, &viewer.access).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, receipts) = w
        .app
        .get_as(&format!("{path}/receipts"), &viewer.access)
        .await;
    let build = receipts
        .as_array()
        .expect("receipts")
        .iter()
        .find(|r| r["step"] == "build")
        .expect("build receipt");
    assert_eq!(build["receipt"]["processor"], url.as_str(), "{build}");
    operator.stop().await;
}
