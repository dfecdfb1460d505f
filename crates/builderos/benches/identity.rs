//! Identity benchmark (a bench binary printing figures, not a timed test):
//!
//! - token-authenticated `GET /v1/orgs/{org}/projects` at 32 concurrent connections:
//!   requests/s and p50/p99 latency;
//! - the same server's `GET /health` under the same load, and the ratio of the two;
//! - sign-in latency at the chosen argon2id parameters (m=19456 KiB, t=2, p=1).
//!
//! Run: `cargo bench -p builderos --bench identity` (set `BENCH_SECONDS` to change the
//! duration of each load phase; default 5).

use std::time::{Duration, Instant};

use builderos_test_support::{PASSWORD, TestApp};
use serde_json::json;

#[path = "support/load.rs"]
mod support;
use support::{CONNECTIONS, bearer, load, ms, phase_seconds, runtime};

fn main() {
    let seconds = phase_seconds();
    let duration = Duration::from_secs(seconds);
    runtime().block_on(async move {
        let app = TestApp::spawn().await;
        let owner = app.signup("bench@example.com").await;
        let org = app.create_org(&owner, "bench").await;
        for i in 0..10 {
            app.post_as(&format!("/v1/orgs/{org}/projects"), Some(&owner.access), json!({"slug": format!("project-{i}"), "name": format!("Project {i}")})).await;
        }
        let (_, token) = app
            .post_as(&format!("/v1/orgs/{org}/tokens"), Some(&owner.access), json!({"name": "bench", "permissions": ["read:projects"]}))
            .await;
        let token = token["token"].as_str().expect("token").to_owned();
        let projects_url = app.url(&format!("/v1/orgs/{org}/projects"));

        // Warm up both paths.
        load(projects_url.clone(), bearer(&token), Duration::from_millis(500)).await;
        load(app.url("/health"), Vec::new(), Duration::from_millis(500)).await;

        let health = load(app.url("/health"), Vec::new(), duration).await;
        let projects = load(projects_url, bearer(&token), duration).await;

        let mut signins = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            let (status, _) = app.post_as("/v1/auth/signin", None, json!({"email": "bench@example.com", "password": PASSWORD})).await;
            assert_eq!(status, 200);
            signins.push(t.elapsed());
        }
        signins.sort();

        // /health while 50 sign-ins hash at once: hashing runs on the blocking pool, so the
        // async workers keep answering.
        let mut storm = Vec::new();
        for _ in 0..50 {
            let client = app.client.clone();
            let url = app.url("/v1/auth/signin");
            storm.push(tokio::spawn(async move {
                client.post(url).json(&json!({"email": "bench@example.com", "password": PASSWORD})).send().await.map(|r| r.status().as_u16())
            }));
        }
        let mut during = Vec::new();
        let storm_started = Instant::now();
        while storm.iter().any(|t| !t.is_finished()) {
            let t = Instant::now();
            let ok = app.client.get(app.url("/health")).send().await.is_ok_and(|r| r.status().is_success());
            assert!(ok);
            during.push(t.elapsed());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let storm_took = storm_started.elapsed();
        for t in storm {
            assert_eq!(t.await.expect("task").expect("send"), 200);
        }
        during.sort();

        println!("identity benchmark ({CONNECTIONS} connections, {seconds} s per phase, 10 projects per list)");
        println!("{}", health.line("GET /health"));
        println!("{}", projects.line("GET /v1/orgs/{org}/projects (token)"));
        println!("  ratio projects/health             {:>8.1} %", 100.0 * projects.rps() / health.rps());
        println!("  sign-in (argon2id m=19456 t=2 p=1)  p50 {:>7.1} ms   p95 {:>7.1} ms   (20 sequential)",
            ms(signins[signins.len() / 2]), ms(signins[signins.len() * 95 / 100]));
        println!("  /health during 50 concurrent sign-ins ({:.1} s): max {:>7.2} ms over {} probes",
            storm_took.as_secs_f64(), ms(during.last().copied().unwrap_or_default()), during.len());
    });
}
