//! The processor contract over a real loopback HTTP hop: the same envelope bytes whichever
//! transport carried them, and every adapter failure with its stable code.

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use builderos_operator::processors::contract::{self, codes};
use builderos_operator::processors::{
    Envelope, Meta, Mode, ProcessorConfig, ProcessorRef, Processors, Request, Usage, serve,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const PREFIX: &str = "runs/run-1/step-a/1/";
const LONG: Duration = Duration::from_secs(30);

/// Serves `router` on 127.0.0.1:<ephemeral>; returns its base URL.
async fn spawn(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

fn request(mode: Mode, inputs: Value) -> Request {
    Request {
        execution_id: "exec-42".into(),
        mode,
        inputs,
        write_prefix: PREFIX.into(),
    }
}

/// Fast health-check backoff so failures are quick to observe.
fn processors(ci: bool) -> Processors {
    Processors::new(ProcessorConfig {
        ci,
        health_attempts: 3,
        health_backoff_base: Duration::from_millis(10),
        health_backoff_cap: Duration::from_millis(40),
    })
}

async fn invoke(p: &Processors, processor: &ProcessorRef, req: &Request) -> Envelope {
    p.invoke(processor, req, LONG, &CancellationToken::new())
        .await
}

/// A processor answering `body` with `status` on `/run`, counting every request it sees.
async fn canned(status: StatusCode, body: Vec<u8>) -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let (health_seen, run_seen) = (Arc::clone(&seen), Arc::clone(&seen));
    let router = Router::new()
        .route(
            "/healthz",
            get(move || async move {
                health_seen.fetch_add(1, Ordering::SeqCst);
                "{\"ok\":true}"
            }),
        )
        .route(
            "/run",
            post(move || async move {
                run_seen.fetch_add(1, Ordering::SeqCst);
                (status, body)
            }),
        );
    (spawn(router).await, seen)
}

fn meta() -> Meta {
    Meta {
        env_fingerprint: "remote".into(),
        image_digest: None,
        usage: Usage::default(),
    }
}

fn success_with(paths: &[&str]) -> Vec<u8> {
    Envelope::Success {
        execution_id: "exec-42".into(),
        outputs: paths
            .iter()
            .map(|p| contract::output((*p).to_owned(), b"x"))
            .collect(),
        index_path: format!("{PREFIX}index.json"),
        meta: meta(),
    }
    .to_canonical_bytes()
}

/// In-process and over HTTP, every builtin answers byte-identical canonical envelopes.
#[tokio::test]
async fn builtin_and_http_envelopes_are_byte_identical() {
    let p = processors(false);
    let cases: &[(&str, Value)] = &[
        (
            "echo",
            json!({"text": "hello\nworld", "obj": {"b": [1, 2.5, null], "a": true}, "e\u{301}": "cafe\u{301}", "dir/n": 7}),
        ),
        ("echo", json!({})),
        ("echo", json!({"../escape": "x"})),
        ("fanout", json!({"count": 12})),
        ("fanout", json!({"count": 5000})),
        ("fail", json!({})),
        (
            "fail",
            json!({"code": "ERR_CUSTOM_1", "message": "custom failure"}),
        ),
        ("fail", json!({"code": "bad"})),
        ("sleep", json!({"ms": 5})),
    ];
    let mut bases = std::collections::HashMap::new();
    for name in ["echo", "fanout", "fail", "sleep"] {
        bases.insert(name, spawn(serve::router(name).expect("router")).await);
    }
    for (name, inputs) in cases {
        let req = request(Mode::Mock, inputs.clone());
        let local = invoke(&p, &ProcessorRef::Builtin((*name).into()), &req).await;
        let remote = invoke(&p, &ProcessorRef::Http(bases[name].clone()), &req).await;
        assert_eq!(
            String::from_utf8_lossy(&local.to_canonical_bytes()),
            String::from_utf8_lossy(&remote.to_canonical_bytes()),
            "{name} {inputs}"
        );
        assert_eq!(local.execution_id(), "exec-42");
    }
    // The echo case really produced outputs, NFC-normalised like the wire form.
    let req = request(Mode::Mock, cases[0].1.clone());
    let local = invoke(&p, &ProcessorRef::Builtin("echo".into()), &req).await;
    let paths: Vec<_> = local.outputs().iter().map(|o| o.path.clone()).collect();
    assert_eq!(
        paths,
        [
            format!("{PREFIX}dir/n"),
            format!("{PREFIX}obj"),
            format!("{PREFIX}text"),
            format!("{PREFIX}\u{e9}"),
        ]
    );
    assert_eq!(
        local.outputs()[3].bytes().expect("b64"),
        "caf\u{e9}".as_bytes()
    );
}

/// The reference processor answers `/healthz` and refuses malformed requests with 400.
#[tokio::test]
async fn serve_health_and_bad_requests() {
    assert!(serve::router("nope").is_err());
    let base = spawn(serve::router("echo").expect("router")).await;
    builderos_shared::telemetry::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let health = client
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.expect("body"), r#"{"ok":true}"#);
    for body in [
        "not json",
        r#"{"execution_id":"e","mode":"MOCK","inputs":{},"write_prefix":"p/"}"#,
        r#"{"execution_id":"e","mode":"mock","inputs":{},"write_prefix":"../p/"}"#,
        r#"{"execution_id":"e","mode":"mock","inputs":{},"write_prefix":"p/","x":1}"#,
    ] {
        let response = client
            .post(format!("{base}/run"))
            .body(body)
            .send()
            .await
            .expect("run");
        assert_eq!(response.status(), 400, "{body}");
        let answer: Value = response.json().await.expect("json");
        assert_eq!(answer["error"]["code"], codes::REQUEST_INVALID, "{body}");
    }
}

/// Nothing listening: the bounded health checks give up with ERR_ENDPOINT_MISSING.
#[tokio::test]
async fn nothing_listening_is_endpoint_missing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let started = Instant::now();
    let envelope = invoke(
        &processors(false),
        &ProcessorRef::Http(base),
        &request(Mode::Mock, json!({})),
    )
    .await;
    assert_eq!(envelope.error_code(), Some(codes::ENDPOINT_MISSING));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A health endpoint that keeps failing is also ERR_ENDPOINT_MISSING, after every attempt.
#[tokio::test]
async fn unhealthy_is_endpoint_missing() {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let router = Router::new().route(
        "/healthz",
        get(move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        }),
    );
    let base = spawn(router).await;
    let envelope = invoke(
        &processors(false),
        &ProcessorRef::Http(base),
        &request(Mode::Mock, json!({})),
    )
    .await;
    assert_eq!(envelope.error_code(), Some(codes::ENDPOINT_MISSING));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// A processor slower than the step timeout answers ERR_TIMEOUT.
#[tokio::test]
async fn slow_server_is_timeout() {
    let router = Router::new()
        .route("/healthz", get(|| async { "{\"ok\":true}" }))
        .route(
            "/run",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let base = spawn(router).await;
    let started = Instant::now();
    let envelope = processors(false)
        .invoke(
            &ProcessorRef::Http(base),
            &request(Mode::Mock, json!({})),
            Duration::from_millis(300),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(envelope.error_code(), Some(codes::TIMEOUT));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Bodies that are not a valid envelope for the request get their stable codes.
#[tokio::test]
async fn invalid_answers_get_stable_codes() {
    let p = processors(false);
    let req = request(Mode::Mock, json!({}));
    let other_execution = Envelope::error("exec-other", "ERR_X", "m", meta()).to_canonical_bytes();
    let cases: Vec<(StatusCode, Vec<u8>, &str)> = vec![
        (
            StatusCode::OK,
            b"garbage".to_vec(),
            codes::ADAPTER_INVOCATION,
        ),
        (StatusCode::OK, b"{}".to_vec(), codes::ADAPTER_INVOCATION),
        (StatusCode::OK, other_execution, codes::ADAPTER_INVOCATION),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            Envelope::error("exec-42", "ERR_X", "m", meta()).to_canonical_bytes(),
            codes::ADAPTER_INVOCATION,
        ),
        (
            StatusCode::OK,
            success_with(&["runs/run-1/step-b/1/stolen"]),
            codes::OUTPUT_PATH,
        ),
        (
            StatusCode::OK,
            success_with(&["runs/run-1/step-a/1/../../step-b/1/x"]),
            codes::OUTPUT_PATH,
        ),
        (
            StatusCode::OK,
            success_with(&["runs/run-1/step-a/1/same", "runs/run-1/step-a/1/same"]),
            codes::OUTPUT_DUPLICATE,
        ),
    ];
    for (status, body, code) in cases {
        let shown = String::from_utf8_lossy(&body).into_owned();
        let (base, _) = canned(status, body).await;
        let envelope = invoke(&p, &ProcessorRef::Http(base), &req).await;
        assert_eq!(envelope.error_code(), Some(code), "{status} {shown}");
        assert!(envelope.meta().env_fingerprint.len() == 64, "adapter meta");
    }
    // A valid answer from the same kind of server passes through untouched.
    let (base, _) = canned(StatusCode::OK, success_with(&[&format!("{PREFIX}ok")])).await;
    let envelope = invoke(&p, &ProcessorRef::Http(base), &req).await;
    assert!(envelope.is_success());
    assert_eq!(envelope.meta(), &meta());
}

/// An answer over 64 MiB is refused without being read to the end.
#[tokio::test]
async fn oversize_answer_is_refused() {
    let body = vec![b' '; builderos_operator::processors::http::MAX_BODY_BYTES + 1];
    let (base, _) = canned(StatusCode::OK, body).await;
    let envelope = invoke(
        &processors(false),
        &ProcessorRef::Http(base),
        &request(Mode::Mock, json!({})),
    )
    .await;
    assert_eq!(envelope.error_code(), Some(codes::ADAPTER_INVOCATION));
}

/// CI=true with a real request: ERR_CI_SAFETY and the processor never sees a request.
#[tokio::test]
async fn ci_safety_sends_nothing() {
    let (base, seen) = canned(StatusCode::OK, success_with(&[])).await;
    let processor = ProcessorRef::Http(base);
    let envelope = invoke(
        &processors(true),
        &processor,
        &request(Mode::Real, json!({})),
    )
    .await;
    assert_eq!(envelope.error_code(), Some(codes::CI_SAFETY));
    let envelope = invoke(
        &processors(true),
        &ProcessorRef::Builtin("echo".into()),
        &request(Mode::Real, json!({})),
    )
    .await;
    assert_eq!(envelope.error_code(), Some(codes::CI_SAFETY));
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // Mock mode still runs under CI.
    let envelope = invoke(
        &processors(true),
        &processor,
        &request(Mode::Mock, json!({})),
    )
    .await;
    assert!(envelope.is_success(), "{envelope:?}");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}

/// A passed health check is reused: a burst of calls checks `/healthz` once.
#[tokio::test]
async fn health_is_cached_per_base() {
    let health = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&health);
    let router = serve::router("echo")
        .expect("router")
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                if req.uri().path() == "/healthz" {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                next.run(req)
            },
        ));
    let base = spawn(router).await;
    let p = processors(false);
    let processor = ProcessorRef::Http(base);
    let req = request(Mode::Mock, json!({"a": "b"}));
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let (p, processor, req) = (p.clone(), processor.clone(), req.clone());
            tokio::spawn(async move { invoke(&p, &processor, &req).await })
        })
        .collect();
    for call in burst {
        assert!(call.await.expect("join").is_success());
    }
    assert_eq!(health.load(Ordering::SeqCst), 1);
}

/// Cancelling during a remote (and a local) sleep answers ERR_CANCELLED within milliseconds.
#[tokio::test]
async fn cancel_during_sleep() {
    let base = spawn(serve::router("sleep").expect("router")).await;
    let p = processors(false);
    for processor in [
        ProcessorRef::Http(base),
        ProcessorRef::Builtin("sleep".into()),
    ] {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            trigger.cancel();
        });
        let started = Instant::now();
        let envelope = p
            .invoke(
                &processor,
                &request(Mode::Mock, json!({"ms": 60_000})),
                LONG,
                &cancel,
            )
            .await;
        assert_eq!(envelope.error_code(), Some(codes::CANCELLED), "{processor}");
        let elapsed = started.elapsed();
        assert!(
            elapsed < Duration::from_millis(1500),
            "{processor}: {elapsed:?}"
        );
    }
}
