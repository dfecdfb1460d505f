//! Prompt registry benchmark (a bench binary printing figures, not a timed test): fetch by
//! label — the hot path agents use — with an API token at 32 concurrent connections, against
//! `GET /health` on the same server, and the ratio of the two. Also the same fetch revalidated
//! with `If-None-Match` (304), fetch by exact version, and fetch by label while labels keep
//! moving in the same org (each move empties the org's cached entries).
//!
//! Run: `cargo bench -p builderos --bench prompts` (`BENCH_SECONDS` sets each phase's
//! duration; default 5). Target: fetch by label ≥ 50% of `/health`.

use std::time::Duration;

use builderos_test_support::TestApp;
use serde_json::json;

#[path = "support/load.rs"]
mod support;
use support::{CONNECTIONS, bearer, load, phase_seconds, runtime};

/// A realistic spec: a page-long template with a handful of variables.
fn spec(minor: usize) -> String {
    let mut template = String::new();
    for i in 0..40 {
        template.push_str(&format!(
            "  Step {i}: read {{{{ document }}}} and keep to {{{{ words }}}} words (rev {minor}).\n"
        ));
    }
    format!(
        "template: |\n{template}variables:\n  document: {{type: string, description: The text}}\n  words: {{type: integer, default: 100}}\n  tone: {{type: string, default: neutral}}\nmodel: {{name: fast-model, temperature: 0.2, max_tokens: 800}}\noutput: {{format: markdown, max_chars: 4000, must_not_contain: [\"As an AI\"]}}\n"
    )
}

fn main() {
    let seconds = phase_seconds();
    let duration = Duration::from_secs(seconds);
    runtime().block_on(async move {
        let app = TestApp::spawn().await;
        let owner = app.signup("bench@example.com").await;
        let org = app.create_org(&owner, "bench").await;
        let o = format!("/v1/orgs/{org}");
        // 50 prompts of 5 versions each, `production` on the third.
        for p in 0..50 {
            let name = format!("prompt-{p:02}");
            let (s, body) = app.post_as(&format!("{o}/prompts"), Some(&owner.access), json!({"name": name, "tags": ["bench"]})).await;
            assert_eq!(s, 201, "{body}");
            for minor in 0..5 {
                let (s, body) = app
                    .post_as(&format!("{o}/prompts/{name}/versions"), Some(&owner.access),
                        json!({"version": format!("1.{minor}.0"), "changelog": "bench", "spec": spec(minor)}))
                    .await;
                assert_eq!(s, 201, "{body}");
            }
            let (s, body) = app
                .call(reqwest::Method::PUT, &format!("{o}/prompts/{name}/labels/production"), Some(&owner.access), Some(json!({"version": "1.2.0"})))
                .await;
            assert_eq!(s, 200, "{body}");
        }
        let (_, token) = app
            .post_as(&format!("{o}/tokens"), Some(&owner.access), json!({"name": "agent", "permissions": ["read:prompts"]}))
            .await;
        let token = token["token"].as_str().expect("token").to_owned();
        let by_label = app.url(&format!("{o}/prompt-refs/prompt-25@production"));
        let by_version = app.url(&format!("{o}/prompt-refs/prompt-25@1.2.0"));
        let first = app.client.get(&by_label).bearer_auth(&token).send().await.expect("fetch");
        assert_eq!(first.status(), 200);
        let etag = first.headers().get("etag").and_then(|v| v.to_str().ok()).expect("etag").to_owned();
        let size = first.bytes().await.expect("body").len();
        let mut revalidate = bearer(&token);
        revalidate.push(("if-none-match", etag));

        // Warm up both paths.
        load(by_label.clone(), bearer(&token), Duration::from_millis(500)).await;
        load(app.url("/health"), Vec::new(), Duration::from_millis(500)).await;

        let health = load(app.url("/health"), Vec::new(), duration).await;
        let label = load(by_label.clone(), bearer(&token), duration).await;
        let version = load(by_version, bearer(&token), duration).await;
        let not_modified = load(by_label.clone(), revalidate, duration).await;
        // Churn: another prompt's `staging` label moves every 50 ms in the same org; each move
        // drops the org's cached entries, so the hot reference is read again from PostgreSQL.
        let mover = {
            let (client, url, access) = (app.client.clone(), app.url(&format!("{o}/prompts/prompt-00/labels/staging")), owner.access.clone());
            let deadline = std::time::Instant::now() + duration;
            tokio::spawn(async move {
                let mut moves = 0_u32;
                while std::time::Instant::now() < deadline {
                    let version = if moves.is_multiple_of(2) { "1.1.0" } else { "1.2.0" };
                    let res = client.put(&url).bearer_auth(&access).json(&json!({"version": version})).send().await.expect("move");
                    assert_eq!(res.status(), 200);
                    moves += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                moves
            })
        };
        let churn = load(by_label, bearer(&token), duration).await;
        let moves = mover.await.expect("mover");

        println!("prompt registry benchmark ({CONNECTIONS} connections, {seconds} s per phase, 50 prompts x 5 versions, {size}-byte response)");
        println!("{}", health.line("GET /health"));
        println!("{}", label.line("GET prompt-refs/{name}@production (token)"));
        println!("{}", version.line("GET prompt-refs/{name}@1.2.0 (token)"));
        println!("{}", not_modified.line("  same, If-None-Match -> 304 (token)"));
        println!("{}", churn.line(&format!("  by label, {moves} label moves in the org meanwhile")));
        println!("  ratio fetch-by-label/health                    {:>8.1} %   (target >= 50 %)", 100.0 * label.rps() / health.rps());
        println!("  ratio 304-revalidation/health                  {:>8.1} %", 100.0 * not_modified.rps() / health.rps());
        println!("  ratio by-label-under-churn/health              {:>8.1} %", 100.0 * churn.rps() / health.rps());
    });
}
