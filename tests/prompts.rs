//! The shared prompt registry, end to end over HTTP against real PostgreSQL: publishing
//! semver versions with changelogs, labels and rollback, fetch by reference with ETags, diffs,
//! bundles between orgs, eval suites and the production gate — and every way to get it wrong.

use std::io::{Read, Write};

use builderos_api::permissions::{Permission, Role};
use builderos_test_support::{Session, TestApp};
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use serde_json::{Value, json};

const V1: &str = "template: |
  Summarise {{ document }} in {{ words }} words.
variables:
  document: {type: string, description: The text to summarise}
  words: {type: integer, default: 100}
model: {name: fast-model, temperature: 0.2}
output: {format: text, max_chars: 2000}
";

const V2: &str = "template: |
  Summarise {{ document }} in at most {{ words }} words.
  Use a {{ tone }} tone.
variables:
  document: {type: string, description: The text to summarise}
  words: {type: integer, default: 80}
  tone: {type: string, default: neutral}
model: {name: fast-model, temperature: 0.4}
output: {format: text, max_chars: 2000}
";

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

struct Org {
    app: TestApp,
    owner: Session,
    id: String,
}

impl Org {
    async fn new() -> Self {
        let app = TestApp::spawn().await;
        let owner = app.signup("owner@example.com").await;
        let id = app.create_org(&owner, "acme").await;
        Self { app, owner, id }
    }

    fn path(&self, rest: &str) -> String {
        format!("/v1/orgs/{}{rest}", self.id)
    }

    async fn call(
        &self,
        method: Method,
        rest: &str,
        who: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.app
            .call(method, &self.path(rest), Some(who), body)
            .await
    }

    /// An API token with `role`'s permissions, made by the owner.
    async fn token(&self, name: &str, role: Role) -> String {
        let names: Vec<&str> = role.permissions().iter().map(|p| p.as_str()).collect();
        let (s, body) = self
            .call(
                Method::POST,
                "/tokens",
                &self.owner.access,
                Some(json!({"name": name, "permissions": names})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    async fn create(&self, who: &str, name: &str) -> Value {
        let (s, body) = self
            .call(
                Method::POST,
                "/prompts",
                who,
                Some(json!({"name": name, "description": "Summaries", "tags": ["summaries", "docs"]})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        body
    }

    async fn publish(&self, who: &str, prompt: &str, version: &str, spec: &str) -> (u16, Value) {
        self.call(
            Method::POST,
            &format!("/prompts/{prompt}/versions"),
            who,
            Some(json!({"version": version, "changelog": format!("Release {version}"), "spec": spec})),
        )
        .await
    }

    async fn move_label(&self, who: &str, prompt: &str, label: &str, body: Value) -> (u16, Value) {
        self.call(
            Method::PUT,
            &format!("/prompts/{prompt}/labels/{label}"),
            who,
            Some(body),
        )
        .await
    }

    async fn export(&self, who: &str, rest: &str) -> Vec<u8> {
        let res = self
            .app
            .client
            .get(self.app.url(&self.path(rest)))
            .bearer_auth(who)
            .send()
            .await
            .expect("export");
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/zip")
        );
        res.bytes().await.expect("bytes").to_vec()
    }
}

async fn import_as(app: &TestApp, org: &str, who: &str, bytes: Vec<u8>, ty: &str) -> (u16, Value) {
    let res = app
        .client
        .post(app.url(&format!("/v1/orgs/{org}/prompt-bundle")))
        .bearer_auth(who)
        .header(CONTENT_TYPE, ty)
        .body(bytes)
        .send()
        .await
        .expect("import");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

/// The entries of a zip, in order.
fn unzip(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("zip");
    (0..archive.len())
        .map(|i| {
            let mut f = archive.by_index(i).expect("entry");
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("read");
            (f.name().expect("entry name").to_string(), data)
        })
        .collect()
}

fn rezip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in entries {
        out.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .expect("start");
        out.write_all(data).expect("write");
    }
    out.finish().expect("finish").into_inner()
}

fn manifest(entries: &[(String, Vec<u8>)]) -> Value {
    let (_, m) = entries
        .iter()
        .find(|(n, _)| n == "promptpack.json")
        .expect("manifest");
    serde_json::from_slice(m).expect("manifest json")
}

fn with_manifest(entries: &[(String, Vec<u8>)], m: &Value) -> Vec<(String, Vec<u8>)> {
    entries
        .iter()
        .map(|(n, d)| {
            if n == "promptpack.json" {
                (n.clone(), serde_json::to_vec(m).expect("json"))
            } else {
                (n.clone(), d.clone())
            }
        })
        .collect()
}

/// The acceptance, as a new team would walk it: a Builder publishes 1.0.0 and 1.1.0;
/// 1.0.1 is refused; an Admin moves production to 1.1.0 and back (rollback), both moves in the
/// audit trail; a Builder's token can't move production; diff, export/import into a second
/// org; an eval regression is reported and gates production unless overridden.
#[tokio::test]
async fn publish_promote_rollback_diff_bundle_and_evals() {
    let acme = Org::new().await;
    let builder = acme
        .app
        .member(&acme.owner, &acme.id, "bea@example.com", "builder")
        .await;
    let admin = acme
        .app
        .member(&acme.owner, &acme.id, "ada@example.com", "admin")
        .await;
    let viewer = acme
        .app
        .member(&acme.owner, &acme.id, "vic@example.com", "viewer")
        .await;
    let builder_token = acme.token("ci-builder", Role::Builder).await;
    let admin_token = acme.token("ci-admin", Role::Admin).await;

    let created = acme.create(&builder.access, "summarise").await;
    assert_eq!(created["name"], "summarise");
    assert_eq!(created["owner_id"], builder.user_id.as_str());

    // Versions: strictly increasing semver, each with a changelog, immutable, hashed.
    let (s, v1) = acme
        .publish(&builder.access, "summarise", "1.0.0", V1)
        .await;
    assert_eq!(s, 201, "{v1}");
    assert!(
        v1["content_hash"]
            .as_str()
            .expect("hash")
            .starts_with("sha256:")
    );
    assert_eq!(v1["author_name"], "bea@example.com");
    let (s, v2) = acme
        .publish(&builder.access, "summarise", "1.1.0", V2)
        .await;
    assert_eq!(s, 201, "{v2}");
    assert_ne!(v1["content_hash"], v2["content_hash"]);
    for lower in ["1.0.1", "1.1.0", "0.9.0", "1.1.0-rc.1"] {
        let (s, body) = acme.publish(&builder.access, "summarise", lower, V1).await;
        assert_eq!(
            (s, code(&body)),
            (409, "ERR_VERSION_NOT_GREATER"),
            "{lower}: {body}"
        );
    }
    // A viewer reads but doesn't publish.
    let (s, body) = acme.publish(&viewer.access, "summarise", "2.0.0", V1).await;
    assert_eq!((s, code(&body)), (403, "ERR_FORBIDDEN"));
    let (s, detail) = acme
        .call(Method::GET, "/prompts/summarise", &viewer.access, None)
        .await;
    assert_eq!(s, 200, "{detail}");
    assert_eq!(detail["labels"], json!({"latest": "1.1.0"}));
    let versions: Vec<&str> = detail["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| v["version"].as_str().expect("v"))
        .collect();
    assert_eq!(versions, ["1.1.0", "1.0.0"]);
    assert_eq!(detail["versions"][1]["changelog"], "Release 1.0.0");

    // Production: not with a Builder's session or token (and the denial is audited).
    for who in [&builder.access, &builder_token] {
        let (s, body) = acme
            .move_label(who, "summarise", "production", json!({"version": "1.1.0"}))
            .await;
        assert_eq!((s, code(&body)), (403, "ERR_FORBIDDEN"), "{body}");
    }
    // Staging is a Builder's to move.
    let (s, body) = acme
        .move_label(
            &builder_token,
            "summarise",
            "staging",
            json!({"version": "1.1.0"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    // An Admin promotes 1.1.0, then rolls back to 1.0.0.
    let (s, body) = acme
        .move_label(
            &admin.access,
            "summarise",
            "production",
            json!({"version": "1.1.0"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["from"].clone(), body["to"].clone()),
        (Value::Null, json!("1.1.0"))
    );

    // Fetch by label carries an ETag; a client that has it gets 304 until the label moves.
    let url = acme
        .app
        .url(&acme.path("/prompt-refs/summarise@production"));
    let res = acme
        .app
        .client
        .get(&url)
        .bearer_auth(&builder_token)
        .send()
        .await
        .expect("fetch");
    assert_eq!(res.status(), 200);
    let etag = res.headers().get(ETAG).expect("etag").clone();
    let fetched: Value = res.json().await.expect("json");
    assert_eq!(fetched["version"], "1.1.0");
    assert_eq!(fetched["label"], "production");
    assert_eq!(fetched["spec_yaml"], V2);
    assert_eq!(fetched["spec"]["variables"]["tone"]["default"], "neutral");
    let again = acme
        .app
        .client
        .get(&url)
        .bearer_auth(&builder_token)
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .expect("fetch");
    assert_eq!(again.status(), 304);

    let (s, body) = acme
        .move_label(
            &admin.access,
            "summarise",
            "production",
            json!({"version": "1.0.0"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        (body["from"].clone(), body["to"].clone()),
        (json!("1.1.0"), json!("1.0.0"))
    );
    let after = acme
        .app
        .client
        .get(&url)
        .bearer_auth(&builder_token)
        .header(IF_NONE_MATCH, etag.clone())
        .send()
        .await
        .expect("fetch");
    assert_eq!(
        after.status(),
        200,
        "the label moved: the cached copy is stale"
    );
    assert_ne!(after.headers().get(ETAG), Some(&etag));
    assert_eq!(
        after.json::<Value>().await.expect("json")["version"],
        "1.0.0"
    );

    // By version, by `latest`, by bare name; an unknown label or version is its own 404.
    for (reference, version) in [
        ("summarise@1.0.0", "1.0.0"),
        ("summarise@latest", "1.1.0"),
        ("summarise", "1.1.0"),
        ("summarise@staging", "1.1.0"),
    ] {
        let (s, body) = acme
            .call(
                Method::GET,
                &format!("/prompt-refs/{reference}"),
                &viewer.access,
                None,
            )
            .await;
        assert_eq!(
            (s, body["version"].as_str()),
            (200, Some(version)),
            "{reference}: {body}"
        );
    }
    for (reference, status, expected) in [
        ("summarise@canary", 404, "ERR_LABEL_NOT_FOUND"),
        ("summarise@9.9.9", 404, "ERR_VERSION_NOT_FOUND"),
        ("nothing@production", 404, "ERR_NOT_FOUND"),
        ("summarise@1.0", 400, "ERR_VERSION_INVALID"),
        ("summarise@Not_A_Label", 400, "ERR_LABEL_INVALID"),
    ] {
        let (s, body) = acme
            .call(
                Method::GET,
                &format!("/prompt-refs/{reference}"),
                &viewer.access,
                None,
            )
            .await;
        assert_eq!((s, code(&body)), (status, expected), "{reference}: {body}");
    }

    // The audit trail shows both production moves with from/to.
    let (s, page) = acme
        .call(
            Method::GET,
            "/audit/events?q=action:prompt.label.move",
            &acme.owner.access,
            None,
        )
        .await;
    assert_eq!(s, 200, "{page}");
    let moves: Vec<(String, Value, Value, String)> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["detail"]["label"] == "production")
        .map(|e| {
            (
                e["actor_name"].as_str().expect("actor").to_owned(),
                e["detail"]["from"].clone(),
                e["detail"]["to"].clone(),
                e["target_id"].as_str().expect("target").to_owned(),
            )
        })
        .collect();
    let pid = created["id"].as_str().expect("id");
    assert_eq!(
        moves,
        [
            (
                "ada@example.com".to_owned(),
                json!("1.1.0"),
                json!("1.0.0"),
                pid.to_owned()
            ),
            (
                "ada@example.com".to_owned(),
                Value::Null,
                json!("1.1.0"),
                pid.to_owned()
            ),
        ]
    );
    let (_, denied) = acme
        .call(
            Method::GET,
            "/audit/events?q=action:access.denied",
            &acme.owner.access,
            None,
        )
        .await;
    assert!(
        denied["events"].as_array().expect("events").len() >= 2,
        "denied production moves are audited: {denied}"
    );

    // Diff: a unified template diff and structured variable/metadata changes.
    let (s, diff) = acme
        .call(
            Method::GET,
            "/prompts/summarise/diff?from=1.0.0&to=production",
            &viewer.access,
            None,
        )
        .await;
    assert_eq!(s, 200, "{diff}");
    assert_eq!(
        (diff["from"].as_str(), diff["to"].as_str()),
        (Some("1.0.0"), Some("1.0.0"))
    );
    let (_, diff) = acme
        .call(
            Method::GET,
            "/prompts/summarise/diff?from=1.0.0&to=1.1.0",
            &viewer.access,
            None,
        )
        .await;
    let template = diff["template"].as_str().expect("template diff");
    assert!(template.contains("--- summarise@1.0.0"), "{template}");
    assert!(template.contains("+++ summarise@1.1.0"), "{template}");
    assert!(
        template.contains("-Summarise {{ document }} in {{ words }} words."),
        "{template}"
    );
    assert!(template.contains("+Use a {{ tone }} tone."), "{template}");
    assert_eq!(diff["variables"]["added"], json!(["tone"]));
    let metadata = diff["metadata"].as_array().expect("metadata");
    assert!(
        metadata.iter().any(|c| c["path"] == "model.temperature"
            && c["from"] == json!(0.2)
            && c["to"] == json!(0.4)),
        "{metadata:?}"
    );

    // Evals: cases, results from CI with a token, a comparison that names the regression.
    for (name, expect) in [
        ("mentions-revenue", json!([{"contains": "revenue"}])),
        (
            "no-apology",
            json!([{"not_contains": "sorry"}, {"regex": "^[A-Z]"}]),
        ),
    ] {
        let (s, body) = acme
            .call(
                Method::POST,
                "/prompts/summarise/eval-cases",
                &builder.access,
                Some(json!({"name": name, "inputs": {"document": "Q3 report"}, "expect": expect})),
            )
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, run) = acme
        .call(
            Method::POST,
            "/prompts/summarise/eval-runs",
            &builder_token,
            Some(json!({"version": "1.0.0", "source": "ci", "results": [
                {"case": "mentions-revenue", "output": "Quarterly revenue rose 4%."},
                {"case": "no-apology", "output": "Revenue rose."}]})),
        )
        .await;
    assert_eq!(
        (s, run["passed"].as_i64(), run["failed"].as_i64()),
        (201, Some(2), Some(0)),
        "{run}"
    );
    let (s, run) = acme
        .call(
            Method::POST,
            "/prompts/summarise/eval-runs",
            &builder_token,
            Some(json!({"version": "1.1.0", "results": [
                {"case": "mentions-revenue", "output": "Quarterly revenue rose 4%."},
                {"case": "no-apology", "output": "sorry, revenue rose."}]})),
        )
        .await;
    assert_eq!((s, run["failed"].as_i64()), (201, Some(1)), "{run}");
    let failing = run["verdicts"]
        .as_array()
        .expect("verdicts")
        .iter()
        .find(|v| v["case"] == "no-apology")
        .expect("verdict");
    assert_eq!(failing["passed"], false);
    assert_eq!(
        failing["failures"].as_array().expect("failures").len(),
        2,
        "{failing}"
    );
    let (s, cmp) = acme
        .call(
            Method::GET,
            "/prompts/summarise/eval-compare?base=1.0.0&head=latest",
            &viewer.access,
            None,
        )
        .await;
    assert_eq!(s, 200, "{cmp}");
    assert_eq!(cmp["regressed"], json!(["no-apology"]));

    // Promoting the regressing version needs an explicit, audited override.
    let (s, body) = acme
        .move_label(
            &admin_token,
            "summarise",
            "production",
            json!({"version": "1.1.0"}),
        )
        .await;
    assert_eq!((s, code(&body)), (409, "ERR_EVAL_REGRESSION"), "{body}");
    assert_eq!(
        body["error"]["details"]["regressed_cases"],
        json!(["no-apology"])
    );
    let (s, body) = acme
        .move_label(
            &admin_token,
            "summarise",
            "production",
            json!({"version": "1.1.0", "override_reason": "Tone change accepted by legal"}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["regressed_cases"], json!(["no-apology"]));
    let (_, history) = acme
        .call(
            Method::GET,
            "/prompts/summarise/label-history?label=production",
            &viewer.access,
            None,
        )
        .await;
    let history: Vec<(Value, Value, Value, Value)> = history
        .as_array()
        .expect("history")
        .iter()
        .map(|m| {
            (
                m["from_version"].clone(),
                m["to_version"].clone(),
                m["actor_name"].clone(),
                m["override_reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [
            (
                json!("1.0.0"),
                json!("1.1.0"),
                json!("ci-admin"),
                json!("Tone change accepted by legal")
            ),
            (
                json!("1.1.0"),
                json!("1.0.0"),
                json!("ada@example.com"),
                Value::Null
            ),
            (
                Value::Null,
                json!("1.1.0"),
                json!("ada@example.com"),
                Value::Null
            ),
        ]
    );
    let (_, page) = acme
        .call(
            Method::GET,
            "/audit/events?q=action:prompt.label.move",
            &acme.owner.access,
            None,
        )
        .await;
    let last = &page["events"][0];
    assert_eq!(last["detail"]["override"], true, "{last}");
    assert_eq!(last["actor_type"], "token");

    // Export the prompt; import it into a second org: same versions, hashes and labels.
    let bundle = acme
        .export(&viewer.access, "/prompts/summarise/bundle")
        .await;
    let again = acme
        .export(&viewer.access, "/prompts/summarise/bundle")
        .await;
    assert_eq!(bundle, again, "exports are deterministic");
    let beta_owner = acme.app.signup("bo@example.com").await;
    let beta = acme.app.create_org(&beta_owner, "beta").await;
    let (s, report) = import_as(
        &acme.app,
        &beta,
        &beta_owner.access,
        bundle.clone(),
        "application/zip",
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["created_prompts"], json!(["summarise"]));
    assert_eq!(
        report["imported_versions"],
        json!(["summarise@1.0.0", "summarise@1.1.0"])
    );
    let (s, fetched) = acme
        .app
        .get_as(
            &format!("/v1/orgs/{beta}/prompt-refs/summarise@production"),
            &beta_owner.access,
        )
        .await;
    assert_eq!(s, 200, "{fetched}");
    assert_eq!(fetched["content_hash"], v2["content_hash"]);
    assert_eq!(fetched["changelog"], "Release 1.1.0");
    assert_eq!(fetched["author_name"], "bea@example.com");
    let (_, staging) = acme
        .app
        .get_as(
            &format!("/v1/orgs/{beta}/prompt-refs/summarise@staging"),
            &beta_owner.access,
        )
        .await;
    assert_eq!(staging["version"], "1.1.0");
    // Importing again changes nothing and is no conflict.
    let (s, report) = import_as(
        &acme.app,
        &beta,
        &beta_owner.access,
        bundle,
        "application/zip",
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["imported_versions"], json!([]));
    assert_eq!(
        report["unchanged_versions"].as_array().map(Vec::len),
        Some(2)
    );
    let (_, page) = acme
        .app
        .get_as(
            &format!("/v1/orgs/{beta}/audit/events?q=action:prompt.bundle.import"),
            &beta_owner.access,
        )
        .await;
    assert_eq!(page["events"].as_array().map(Vec::len), Some(2), "{page}");

    // Search and list: by name, tag and label, paginated.
    for i in 0..4 {
        acme.create(&builder.access, &format!("extra-{i}")).await;
    }
    let (_, page) = acme
        .call(Method::GET, "/prompts?limit=2", &viewer.access, None)
        .await;
    let mut names: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    let cursor = page["next_cursor"].as_str().expect("cursor").to_owned();
    let (_, page) = acme
        .call(
            Method::GET,
            &format!("/prompts?limit=10&cursor={cursor}"),
            &viewer.access,
            None,
        )
        .await;
    names.extend(
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["name"].as_str().expect("name").to_owned()),
    );
    assert!(page["next_cursor"].is_null());
    assert_eq!(
        names,
        ["extra-0", "extra-1", "extra-2", "extra-3", "summarise"]
    );
    for (query, expected) in [
        ("q=summ", vec!["summarise"]),
        ("label=production", vec!["summarise"]),
        (
            "tag=docs",
            vec!["extra-0", "extra-1", "extra-2", "extra-3", "summarise"],
        ),
        ("tag=nothing", vec![]),
        ("q=extra-3", vec!["extra-3"]),
        ("q=%25", vec![]),
    ] {
        let (s, page) = acme
            .call(
                Method::GET,
                &format!("/prompts?{query}"),
                &viewer.access,
                None,
            )
            .await;
        assert_eq!(s, 200, "{query}: {page}");
        let got: Vec<&str> = page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|p| p["name"].as_str().expect("name"))
            .collect();
        assert_eq!(got, expected, "{query}");
    }
    let (_, page) = acme
        .call(Method::GET, "/prompts?q=summ", &viewer.access, None)
        .await;
    assert_eq!(page["items"][0]["labels"]["production"], "1.1.0");
}

/// Every bad input gets its own code and status, and nothing is written.
#[tokio::test]
async fn bad_input_is_refused_and_writes_nothing() {
    let acme = Org::new().await;
    let owner = acme.owner.access.clone();
    acme.create(&owner, "greet").await;
    let (s, _) = acme
        .publish(
            &owner,
            "greet",
            "1.0.0",
            "template: Hello {{ who }}\nvariables:\n  who: {type: string}\n",
        )
        .await;
    assert_eq!(s, 201);

    let publish = |version: &str, changelog: &str, spec: &str| json!({"version": version, "changelog": changelog, "spec": spec});
    let good = "template: Hi {{ who }}\nvariables:\n  who: {type: string}\n";
    let oversized = format!(
        "template: Hi {{{{ who }}}}\nvariables:\n  who: {{type: string, description: \"{}\"}}\n",
        "x".repeat(70 * 1024)
    );
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "not semver",
            publish("1.1", "c", good),
            400,
            "ERR_VERSION_INVALID",
            "1.1",
        ),
        (
            "v prefix",
            publish("v1.1.0", "c", good),
            400,
            "ERR_VERSION_INVALID",
            "v1.1.0",
        ),
        (
            "build metadata",
            publish("1.1.0+build.5", "c", good),
            400,
            "ERR_VERSION_INVALID",
            "build",
        ),
        (
            "equal",
            publish("1.0.0", "c", good),
            409,
            "ERR_VERSION_NOT_GREATER",
            "1.0.0",
        ),
        (
            "no changelog",
            publish("1.1.0", "  ", good),
            400,
            "ERR_CHANGELOG_REQUIRED",
            "changelog",
        ),
        (
            "missing changelog",
            json!({"version": "1.1.0", "spec": good}),
            400,
            "ERR_CHANGELOG_REQUIRED",
            "changelog",
        ),
        (
            "malformed yaml",
            publish("1.1.0", "c", "template: hi\nvariables:\n  who: [unclosed\n"),
            422,
            "ERR_SPEC_YAML",
            "line",
        ),
        (
            "wrong type",
            publish(
                "1.1.0",
                "c",
                "template: hi\nvariables:\n  who:\n    type: int\n",
            ),
            422,
            "ERR_SPEC_INVALID",
            "line 4",
        ),
        (
            "unknown field",
            publish("1.1.0", "c", "template: hi\ncolour: red\n"),
            422,
            "ERR_SPEC_INVALID",
            "colour",
        ),
        (
            "undeclared variable",
            publish(
                "1.1.0",
                "c",
                "variables:\n  who: {type: string}\ntemplate: |\n  Hi {{ who }}\n  from {{ sender }}\n",
            ),
            422,
            "ERR_SPEC_UNDECLARED_VARIABLE",
            "line 5",
        ),
        (
            "oversized spec",
            publish("1.1.0", "c", &oversized),
            413,
            "ERR_SPEC_TOO_LARGE",
            "bytes",
        ),
        (
            "malformed body",
            json!({"version": "1.1.0", "changelog": "c"}),
            400,
            "ERR_INPUTS",
            "spec",
        ),
        (
            "unexpected field",
            json!({"version": "1.1.0", "changelog": "c", "spec": good, "force": true}),
            400,
            "ERR_INPUTS",
            "force",
        ),
    ];
    for (what, body, status, expected, mentions) in cases {
        let (s, res) = acme
            .call(Method::POST, "/prompts/greet/versions", &owner, Some(body))
            .await;
        assert_eq!((s, code(&res)), (status, expected), "{what}: {res}");
        let message = res["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(mentions),
            "{what}: `{message}` should mention `{mentions}`"
        );
    }
    let (_, versions) = acme
        .call(Method::GET, "/prompts/greet/versions", &owner, None)
        .await;
    assert_eq!(
        versions.as_array().map(Vec::len),
        Some(1),
        "nothing was published: {versions}"
    );

    // Prompts: names are slugs, unique per org and project.
    for (body, status, expected) in [
        (json!({"name": "Greet Me"}), 400, "ERR_INPUTS"),
        (json!({"name": "greet"}), 409, "ERR_CONFLICT"),
        (
            json!({"name": "ok", "tags": ["Not A Tag"]}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"name": "ok", "project_id": uuid::Uuid::new_v4()}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"name": "ok", "description": "d".repeat(2001)}),
            400,
            "ERR_INPUTS",
        ),
    ] {
        let (s, res) = acme
            .call(Method::POST, "/prompts", &owner, Some(body.clone()))
            .await;
        assert_eq!((s, code(&res)), (status, expected), "{body}: {res}");
    }

    // Labels: slugs, `latest` is the registry's, versions must exist.
    for (label, body, status, expected) in [
        (
            "Not_A_Slug",
            json!({"version": "1.0.0"}),
            400,
            "ERR_LABEL_INVALID",
        ),
        (
            "latest",
            json!({"version": "1.0.0"}),
            409,
            "ERR_LABEL_RESERVED",
        ),
        (
            "staging",
            json!({"version": "2.0.0"}),
            404,
            "ERR_VERSION_NOT_FOUND",
        ),
        (
            "staging",
            json!({"version": "two"}),
            400,
            "ERR_VERSION_INVALID",
        ),
        ("staging", json!({"to": "1.0.0"}), 400, "ERR_INPUTS"),
    ] {
        let (s, res) = acme.move_label(&owner, "greet", label, body).await;
        assert_eq!((s, code(&res)), (status, expected), "{label}: {res}");
    }
    for (label, status, expected) in [
        ("latest", 409, "ERR_LABEL_RESERVED"),
        ("canary", 404, "ERR_LABEL_NOT_FOUND"),
    ] {
        let (s, res) = acme
            .call(
                Method::DELETE,
                &format!("/prompts/greet/labels/{label}"),
                &owner,
                None,
            )
            .await;
        assert_eq!((s, code(&res)), (status, expected), "{label}: {res}");
    }
    let (_, history) = acme
        .call(Method::GET, "/prompts/greet/label-history", &owner, None)
        .await;
    let labels: Vec<&str> = history
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["label"].as_str().expect("label"))
        .collect();
    assert_eq!(labels, ["latest"], "only the publish moved a label");

    // Eval cases and runs.
    for (body, expected) in [
        (
            json!({"name": "c", "inputs": {}, "expect": []}),
            "ERR_INPUTS",
        ),
        (
            json!({"name": "c", "inputs": {}, "expect": [{"regex": "(unclosed"}]}),
            "ERR_INPUTS",
        ),
        (
            json!({"name": "c", "inputs": {}, "expect": [{"json_schema": {"type": 12}}]}),
            "ERR_INPUTS",
        ),
        (
            json!({"name": "c", "inputs": {}, "expect": [{"smells_like": "x"}]}),
            "ERR_INPUTS",
        ),
    ] {
        let (s, res) = acme
            .call(
                Method::POST,
                "/prompts/greet/eval-cases",
                &owner,
                Some(body.clone()),
            )
            .await;
        assert_eq!((s, code(&res)), (400, expected), "{body}: {res}");
    }
    let (s, _) = acme
        .call(
            Method::POST,
            "/prompts/greet/eval-cases",
            &owner,
            Some(json!({"name": "polite", "inputs": {"who": "Ann"}, "expect": [{"golden": "Hello Ann"}]})),
        )
        .await;
    assert_eq!(s, 201);
    for (body, status, expected) in [
        (
            json!({"version": "1.0.0", "results": [{"case": "rude", "output": "x"}]}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"version": "1.0.0", "results": []}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"version": "1.0.0", "results": [{"case": "polite", "output": "a"}, {"case": "polite", "output": "b"}]}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"version": "1.0.0", "results": [{"case": "polite", "output": "x".repeat(300 * 1024)}]}),
            400,
            "ERR_INPUTS",
        ),
        (
            json!({"version": "3.0.0", "results": [{"case": "polite", "output": "x"}]}),
            404,
            "ERR_VERSION_NOT_FOUND",
        ),
    ] {
        let (s, res) = acme
            .call(Method::POST, "/prompts/greet/eval-runs", &owner, Some(body))
            .await;
        assert_eq!((s, code(&res)), (status, expected), "{res}");
    }
    let (_, runs) = acme
        .call(Method::GET, "/prompts/greet/eval-runs", &owner, None)
        .await;
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");

    // Queries.
    for (query, expected) in [
        ("/prompts?limit=0", "ERR_INPUTS"),
        ("/prompts?limit=ten", "ERR_INPUTS"),
        ("/prompts?cursor=garbage", "ERR_INPUTS"),
        ("/prompts?label=NOPE!", "ERR_LABEL_INVALID"),
        ("/prompts/greet/diff?from=1.0.0", "ERR_INPUTS"),
    ] {
        let (s, res) = acme.call(Method::GET, query, &owner, None).await;
        assert_eq!((s / 100, code(&res)), (4, expected), "{query}: {res}");
    }
}

/// Hostile and broken bundles are refused with their codes; a conflicting import writes nothing.
#[tokio::test]
async fn bundles_are_checked_before_anything_is_imported() {
    let acme = Org::new().await;
    let owner = acme.owner.access.clone();
    acme.create(&owner, "summarise").await;
    acme.publish(&owner, "summarise", "1.0.0", V1).await;
    acme.publish(&owner, "summarise", "1.1.0", V2).await;
    acme.create(&owner, "greet").await;
    acme.publish(
        &owner,
        "greet",
        "0.1.0",
        "template: Hello {{ who }}\nvariables:\n  who: {type: string}\n",
    )
    .await;
    let (s, _) = acme
        .move_label(&owner, "greet", "production", json!({"version": "0.1.0"}))
        .await;
    assert_eq!(s, 200);
    let bundle = acme.export(&owner, "/prompt-bundle").await;
    let entries = unzip(&bundle);
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "promptpack.json",
            "prompts/greet/0.1.0.yaml",
            "prompts/summarise/1.0.0.yaml",
            "prompts/summarise/1.1.0.yaml"
        ]
    );

    let target_owner = acme.app.signup("t@example.com").await;
    let target = acme.app.create_org(&target_owner, "target").await;
    let t = target_owner.access.clone();

    // Tampered content, tampered manifest hash, path tricks, extra and missing files.
    let mut tampered = entries.clone();
    tampered[2].1 = V1.replace("Summarise", "Exfiltrate").into_bytes();
    let mut bad_hash = manifest(&entries);
    bad_hash["prompts"][1]["versions"][0]["content_hash"] =
        json!(format!("sha256:{}", "0".repeat(64)));
    let mut traversal = manifest(&entries);
    traversal["prompts"][0]["versions"][0]["file"] = json!("../../etc/passwd");
    let mut evil_name = manifest(&entries);
    evil_name["prompts"][0]["name"] = json!("../greet");
    let mut dangling_label = manifest(&entries);
    dangling_label["prompts"][0]["labels"]["production"] = json!("9.0.0");
    let mut with_dotdot = entries.clone();
    with_dotdot.push(("../escape.yaml".to_owned(), b"template: x\n".to_vec()));
    let mut with_absolute = entries.clone();
    with_absolute.push(("/etc/cron.d/x".to_owned(), b"x".to_vec()));
    let mut with_extra = entries.clone();
    with_extra.push(("prompts/greet/notes.txt".to_owned(), b"hi".to_vec()));
    let without_file: Vec<_> = entries
        .iter()
        .filter(|(n, _)| n != "prompts/greet/0.1.0.yaml")
        .cloned()
        .collect();
    let without_manifest: Vec<_> = entries[1..].to_vec();
    let hostile: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "tampered file",
            rezip(&tampered),
            422,
            "ERR_BUNDLE_HASH_MISMATCH",
        ),
        (
            "wrong content hash",
            rezip(&with_manifest(&entries, &bad_hash)),
            422,
            "ERR_BUNDLE_HASH_MISMATCH",
        ),
        (
            "manifest path traversal",
            rezip(&with_manifest(&entries, &traversal)),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "prompt name traversal",
            rezip(&with_manifest(&entries, &evil_name)),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "dangling label",
            rezip(&with_manifest(&entries, &dangling_label)),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "dot-dot entry",
            rezip(&with_dotdot),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "absolute entry",
            rezip(&with_absolute),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "unlisted file",
            rezip(&with_extra),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "missing file",
            rezip(&without_file),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "no manifest",
            rezip(&without_manifest),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "not a zip",
            b"PK\x03\x04 definitely not a zip".to_vec(),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "truncated",
            bundle[..bundle.len() / 2].to_vec(),
            422,
            "ERR_BUNDLE_INVALID",
        ),
        (
            "oversized",
            vec![0_u8; 17 * 1024 * 1024],
            413,
            "ERR_PAYLOAD_TOO_LARGE",
        ),
    ];
    for (what, bytes, status, expected) in hostile {
        let (s, res) = import_as(&acme.app, &target, &t, bytes, "application/zip").await;
        assert_eq!((s, code(&res)), (status, expected), "{what}: {res}");
    }
    let (s, res) = import_as(&acme.app, &target, &t, bundle.clone(), "application/json").await;
    assert_eq!(
        (s, code(&res)),
        (415, "ERR_UNSUPPORTED_MEDIA_TYPE"),
        "{res}"
    );
    let (_, list) = acme
        .app
        .get_as(&format!("/v1/orgs/{target}/prompts"), &t)
        .await;
    assert_eq!(list["items"], json!([]), "nothing imported: {list}");

    // A conflict in the second prompt leaves the first unimported too; the report names it.
    let (s, _) = acme
        .app
        .post_as(
            &format!("/v1/orgs/{target}/prompts"),
            Some(&t),
            json!({"name": "summarise"}),
        )
        .await;
    assert_eq!(s, 201);
    let (s, res) = acme
        .app
        .post_as(
            &format!("/v1/orgs/{target}/prompts/summarise/versions"),
            Some(&t),
            json!({"version": "1.0.0", "changelog": "ours", "spec": V2}),
        )
        .await;
    assert_eq!(s, 201, "{res}");
    let (s, res) = import_as(&acme.app, &target, &t, bundle.clone(), "application/zip").await;
    assert_eq!((s, code(&res)), (409, "ERR_BUNDLE_CONFLICT"), "{res}");
    let conflicts = &res["error"]["details"]["conflicts"];
    assert_eq!(conflicts[0]["prompt"], "summarise");
    assert_eq!(conflicts[0]["version"], "1.0.0");
    assert_eq!(conflicts.as_array().map(Vec::len), Some(1), "{conflicts}");
    let (s, _) = acme
        .app
        .get_as(&format!("/v1/orgs/{target}/prompts/greet"), &t)
        .await;
    assert_eq!(s, 404, "greet was not half-imported");
    let (_, versions) = acme
        .app
        .get_as(&format!("/v1/orgs/{target}/prompts/summarise/versions"), &t)
        .await;
    assert_eq!(versions.as_array().map(Vec::len), Some(1));

    // A Builder imports, but can't set production through a bundle.
    let clean_owner = acme.app.signup("c@example.com").await;
    let clean = acme.app.create_org(&clean_owner, "clean").await;
    let builder = acme
        .app
        .member(&clean_owner, &clean, "b@example.com", "builder")
        .await;
    let (s, report) = import_as(
        &acme.app,
        &clean,
        &builder.access,
        bundle,
        "application/zip",
    )
    .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["labels_set"], json!([]));
    assert_eq!(
        report["labels_skipped"],
        json!(["greet:production@0.1.0 (needs promote:prompts)"])
    );
    let (s, res) = acme
        .app
        .get_as(
            &format!("/v1/orgs/{clean}/prompt-refs/greet@production"),
            &builder.access,
        )
        .await;
    assert_eq!((s, code(&res)), (404, "ERR_LABEL_NOT_FOUND"));
}

/// Every prompt endpoint: another org's prompt is a 404 that looks like a missing one; roles
/// and token permissions gate writes; project-scoped prompts keep to their project.
#[tokio::test]
async fn tenants_roles_and_projects() {
    let acme = Org::new().await;
    let owner = acme.owner.access.clone();
    let created = acme.create(&owner, "greet").await;
    let pid = created["id"].as_str().expect("id").to_owned();
    acme.publish(
        &owner,
        "greet",
        "1.0.0",
        "template: Hello {{ who }}\nvariables:\n  who: {type: string}\n",
    )
    .await;
    acme.call(
        Method::POST,
        "/prompts/greet/eval-cases",
        &owner,
        Some(json!({"name": "polite", "inputs": {}, "expect": [{"contains": "Hello"}]})),
    )
    .await;
    let outsider = acme.app.signup("eve@example.com").await;
    let eve_org = acme.app.create_org(&outsider, "eve").await;

    let spec = "template: Hi {{ who }}\nvariables:\n  who: {type: string}\n";
    // (method, path under the org, body, permission, success status)
    let endpoints: Vec<(Method, String, Option<Value>, Permission, u16)> = vec![
        (
            Method::GET,
            "/prompts".into(),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::PATCH,
            format!("/prompts/{pid}"),
            Some(json!({"description": "d"})),
            Permission::PromptsPublish,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/versions"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/versions/1.0.0"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/labels"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/labels/latest"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::PUT,
            format!("/prompts/{pid}/labels/staging"),
            Some(json!({"version": "1.0.0"})),
            Permission::PromptsPublish,
            200,
        ),
        (
            Method::PUT,
            format!("/prompts/{pid}/labels/production"),
            Some(json!({"version": "1.0.0"})),
            Permission::PromptsPromote,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/label-history"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            "/prompt-refs/greet@latest".into(),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/diff?from=1.0.0&to=latest"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/eval-cases"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/eval-runs"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::POST,
            format!("/prompts/{pid}/eval-runs"),
            Some(json!({"version": "1.0.0", "results": [{"case": "polite", "output": "Hello"}]})),
            Permission::PromptsPublish,
            201,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/eval-compare?base=1.0.0&head=1.0.0"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            format!("/prompts/{pid}/bundle"),
            None,
            Permission::PromptsRead,
            200,
        ),
        (
            Method::GET,
            "/prompt-bundle".into(),
            None,
            Permission::PromptsRead,
            200,
        ),
    ];
    let mut tokens = Vec::new();
    let mut sessions = Vec::new();
    for role in Role::ALL {
        tokens.push((
            role,
            acme.token(&format!("t-{}", role.as_str()), role).await,
        ));
        if role != Role::Owner {
            let s = acme
                .app
                .member(
                    &acme.owner,
                    &acme.id,
                    &format!("{}@example.com", role.as_str()),
                    role.as_str(),
                )
                .await;
            sessions.push((role, s.access));
        }
    }
    let mut n = 0;
    for (method, rest, body, permission, success) in &endpoints {
        let raw = |org: &str, token: &str| {
            let req = acme
                .app
                .client
                .request(
                    method.clone(),
                    acme.app.url(&format!("/v1/orgs/{org}{rest}")),
                )
                .bearer_auth(token.to_owned());
            match body {
                Some(b) => req.json(b),
                None => req,
            }
        };
        // Another org's member: 404, the same body as a missing org.
        let foreign = raw(&acme.id, &outsider.access).send().await.expect("send");
        let missing = raw(&uuid::Uuid::new_v4().to_string(), &outsider.access)
            .send()
            .await
            .expect("send");
        assert_eq!(
            (foreign.status().as_u16(), missing.status().as_u16()),
            (404, 404),
            "{method} {rest}"
        );
        let (f, m): (Value, Value) = (
            foreign.json().await.expect("json"),
            missing.json().await.expect("json"),
        );
        assert_eq!(f["error"]["code"], m["error"]["code"], "{method} {rest}");
        // The prompt's id under the outsider's own org is a 404 as well.
        if rest.contains(&pid) || rest.starts_with("/prompt-refs") {
            let res = raw(&eve_org, &outsider.access).send().await.expect("send");
            assert_eq!(res.status(), 404, "{method} {rest} under another org");
        }
        for (role, credential) in tokens.iter().chain(sessions.iter()) {
            let res = raw(&acme.id, credential).send().await.expect("send");
            let expected = if role.allows(*permission) {
                *success
            } else {
                403
            };
            assert_eq!(
                res.status().as_u16(),
                expected,
                "{method} {rest} as {role:?}"
            );
            n += 1;
        }
    }
    eprintln!(
        "prompt isolation: {n} role calls over {} endpoints",
        endpoints.len()
    );

    // Writes that create or delete, and the import: wrong role 403, other org 404.
    let viewer = &sessions
        .iter()
        .find(|(r, _)| *r == Role::Viewer)
        .expect("viewer")
        .1;
    for (method, rest, body) in [
        (
            Method::POST,
            "/prompts".to_owned(),
            json!({"name": "probe"}),
        ),
        (
            Method::POST,
            format!("/prompts/{pid}/versions"),
            json!({"version": "2.0.0", "changelog": "c", "spec": spec}),
        ),
        (
            Method::POST,
            format!("/prompts/{pid}/eval-cases"),
            json!({"name": "probe", "inputs": {}, "expect": [{"contains": "x"}]}),
        ),
    ] {
        let (s, _) = acme
            .call(method.clone(), &rest, viewer, Some(body.clone()))
            .await;
        assert_eq!(s, 403, "{method} {rest} as viewer");
        let (s, _) = acme
            .call(method.clone(), &rest, &outsider.access, Some(body))
            .await;
        assert_eq!(s, 404, "{method} {rest} from another org");
    }
    for (method, rest) in [
        (Method::DELETE, format!("/prompts/{pid}/labels/staging")),
        (Method::DELETE, format!("/prompts/{pid}/eval-cases/polite")),
    ] {
        let (s, _) = acme.call(method.clone(), &rest, viewer, None).await;
        assert_eq!(s, 403, "{method} {rest} as viewer");
        let (s, _) = acme
            .call(method.clone(), &rest, &outsider.access, None)
            .await;
        assert_eq!(s, 404, "{method} {rest} from another org");
        let (s, res) = acme.call(method.clone(), &rest, &owner, None).await;
        assert_eq!(s, 204, "{method} {rest}: {res}");
    }
    let bundle = acme.export(&owner, "/prompt-bundle").await;
    let (s, _) = import_as(
        &acme.app,
        &acme.id,
        viewer,
        bundle.clone(),
        "application/zip",
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = import_as(
        &acme.app,
        &acme.id,
        &outsider.access,
        bundle,
        "application/zip",
    )
    .await;
    assert_eq!(s, 404);

    // Project prompts: the same name in a project and org-wide are two prompts; a
    // project-scoped token sees only its project's.
    let (_, project) = acme
        .call(
            Method::POST,
            "/projects",
            &owner,
            Some(json!({"slug": "web", "name": "Web"})),
        )
        .await;
    let project_id = project["id"].as_str().expect("project").to_owned();
    let (s, scoped) = acme
        .call(
            Method::POST,
            "/prompts",
            &owner,
            Some(json!({"name": "greet", "project_id": project_id})),
        )
        .await;
    assert_eq!(s, 201, "{scoped}");
    let (s, _) = acme
        .call(
            Method::POST,
            &format!("/prompts/greet/versions?project={project_id}"),
            &owner,
            Some(json!({"version": "5.0.0", "changelog": "web's own", "spec": spec})),
        )
        .await;
    assert_eq!(s, 201);
    let (_, org_wide) = acme
        .call(Method::GET, "/prompt-refs/greet", &owner, None)
        .await;
    assert_eq!(org_wide["version"], "1.0.0");
    let (_, in_project) = acme
        .call(
            Method::GET,
            &format!("/prompt-refs/greet?project={project_id}"),
            &owner,
            None,
        )
        .await;
    assert_eq!(in_project["version"], "5.0.0");
    let (s, body) = acme
        .call(
            Method::POST,
            "/tokens",
            &owner,
            Some(json!({"name": "web-agent", "permissions": ["read:prompts"], "project_id": project_id})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let agent = body["token"].as_str().expect("token").to_owned();
    let (_, seen) = acme
        .call(Method::GET, "/prompt-refs/greet", &agent, None)
        .await;
    assert_eq!(
        seen["version"], "5.0.0",
        "a project token means its project: {seen}"
    );
    let (s, _) = acme
        .call(Method::GET, &format!("/prompts/{pid}"), &agent, None)
        .await;
    assert_eq!(s, 404, "the org-wide prompt is outside the token's project");
    let (_, list) = acme.call(Method::GET, "/prompts", &agent, None).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
}

/// Replicas cache token lookups and prompt references; a write through one replica reaches
/// the others' caches through PostgreSQL (the invalidation triggers), well before the cache's
/// 30-second expiry, and a replica always reads its own writes.
#[tokio::test]
async fn replicas_hear_of_each_others_writes() {
    let acme = Org::new().await;
    let owner = acme.owner.access.clone();
    let other = acme.app.replica().await;
    acme.create(&owner, "greet").await;
    for (version, word) in [("1.0.0", "Hello"), ("1.1.0", "Howdy")] {
        let spec = format!("template: {word} {{{{ who }}}}\nvariables:\n  who: {{type: string}}\n");
        let (s, body) = acme.publish(&owner, "greet", version, &spec).await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, _) = acme
        .move_label(&owner, "greet", "production", json!({"version": "1.0.0"}))
        .await;
    assert_eq!(s, 200);
    let token = acme.token("agent", Role::Viewer).await;
    let path = acme.path("/prompt-refs/greet@production");
    // Both replicas answer (and cache) 1.0.0.
    for app in [&acme.app, &other] {
        for _ in 0..3 {
            let (s, body) = app.get_as(&path, &token).await;
            assert_eq!((s, body["version"].as_str()), (200, Some("1.0.0")));
        }
    }

    // A move through one replica: that replica answers the new version at once, the other
    // as soon as the notification arrives.
    let (s, _) = acme
        .move_label(&owner, "greet", "production", json!({"version": "1.1.0"}))
        .await;
    assert_eq!(s, 200);
    let (_, body) = acme.app.get_as(&path, &token).await;
    assert_eq!(body["version"], "1.1.0", "a replica reads its own writes");
    other
        .eventually(&path, &token, |s, b| s == 200 && b["version"] == "1.1.0")
        .await;

    // Revoking the token through one replica shuts it out of both.
    let (_, tokens) = acme.call(Method::GET, "/tokens", &owner, None).await;
    let id = tokens
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "agent"))
        .and_then(|t| t["id"].as_str())
        .expect("token id")
        .to_owned();
    let (s, _) = acme
        .call(Method::DELETE, &format!("/tokens/{id}"), &owner, None)
        .await;
    assert_eq!(s, 204);
    let (s, _) = acme.app.get_as(&path, &token).await;
    assert_eq!(s, 401, "revoked on this replica at once");
    other.eventually(&path, &token, |s, _| s == 401).await;

    // A member's token loses what the member loses.
    let admin = acme
        .app
        .member(&acme.owner, &acme.id, "ada@example.com", "admin")
        .await;
    let (s, body) = acme
        .call(
            Method::POST,
            "/tokens",
            &admin.access,
            Some(json!({"name": "ada-ci", "permissions": ["read:prompts"]})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let ada = body["token"].as_str().expect("token").to_owned();
    for app in [&acme.app, &other] {
        let (s, _) = app.get_as(&path, &ada).await;
        assert_eq!(s, 200);
    }
    let (s, _) = acme
        .call(
            Method::DELETE,
            &format!("/members/{}", admin.user_id),
            &owner,
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = acme.app.get_as(&path, &ada).await;
    assert_eq!(s, 401);
    other.eventually(&path, &ada, |s, _| s == 401).await;
}
