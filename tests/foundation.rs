//! Foundation acceptance: control endpoints, the error contract, request ids, metrics, the
//! database roles, and the generated documents — against the real app on real PostgreSQL.

use axum::Router;
use axum::routing::{get, post};
use builderos_shared::http::{ApiError, Json};
use builderos_test_support::{TestApp, TestDb, json};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Echo {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    count: u32,
}

/// Routes that exist only in this test, to exercise the middleware and the extractor.
fn probe_routes(pool: sqlx::PgPool) -> Router {
    Router::new()
        .route("/test/echo", post(|Json(_body): Json<Echo>| async { "ok" }))
        .route("/test/panic", get(panicking_handler))
        .route(
            "/test/db",
            get(move || {
                let pool = pool.clone();
                async move {
                    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&pool).await?;
                    Ok::<_, ApiError>(one.to_string())
                }
            }),
        )
}

async fn panicking_handler() -> &'static str {
    let detail: Option<&str> = std::hint::black_box(None);
    detail.expect("boom: secret stack detail")
}

async fn app() -> TestApp {
    let db = TestDb::new().await;
    let pool = db.app_pool();
    spawn_with_pool(db, pool).await
}

async fn spawn_with_pool(db: TestDb, pool: sqlx::PgPool) -> TestApp {
    let config = builderos_test_support::test_config();
    let probe = probe_routes(pool.clone());
    TestApp::spawn_router(db, pool.clone(), move |limit| {
        let state = builderos_api::AppState::new(&config, pool).expect("app state");
        builderos_shared::http::finish(
            builderos_api::router(state).merge(probe),
            builderos_api::SERVICE,
            limit,
        )
    })
    .await
}

fn assert_envelope(body: &serde_json::Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "body: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
    assert!(
        body["request_id"].as_str().is_some_and(|r| !r.is_empty()),
        "body: {body}"
    );
}

/// `/health`, `/ready` and `/version` answer with the documented shapes.
#[tokio::test]
async fn control_endpoints_have_documented_shapes() {
    let app = app().await;

    let res = app.get("/health").await;
    assert_eq!(res.status(), 200);
    let body = json(res).await;
    assert_eq!(body["ok"], true);
    assert_eq!(body["service"], "builderos-api");
    let ts = body["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339 timestamp");

    let res = app.get("/ready").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        json(res).await,
        serde_json::json!({"ready": true, "service": "builderos-api", "checks": {"config": true, "database": true}})
    );

    let res = app.get("/version").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        json(res).await,
        serde_json::json!({"service": "builderos-api", "version": env!("CARGO_PKG_VERSION"), "commit": "UNKNOWN", "env": "test"})
    );
}

/// Unknown routes are 404 and wrong methods 405, both in the envelope.
#[tokio::test]
async fn unknown_route_and_method_use_the_envelope() {
    let app = app().await;
    let res = app.get("/no/such/route").await;
    assert_eq!(res.status(), 404);
    assert_envelope(&json(res).await, "ERR_NOT_FOUND");

    let res = app
        .client
        .delete(app.url("/health"))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 405);
    assert_envelope(&json(res).await, "ERR_METHOD_NOT_ALLOWED");
}

/// Malformed JSON is 400 naming the position; a missing or mistyped field is 400 naming it.
#[tokio::test]
async fn malformed_json_is_400_with_details() {
    let app = app().await;
    let post = |body: &'static str| {
        app.client
            .post(app.url("/test/echo"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let res = post("{\"name\": \"x\",").await.expect("send");
    assert_eq!(res.status(), 400);
    let body = json(res).await;
    assert_envelope(&body, "ERR_INPUTS");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("line 1"),
        "{body}"
    );

    let res = post("{\"name\": \"x\"}").await.expect("send");
    assert_eq!(res.status(), 400);
    let body = json(res).await;
    assert_envelope(&body, "ERR_INPUTS");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("count"),
        "{body}"
    );

    let res = post("{\"name\": \"x\", \"count\": \"many\"}")
        .await
        .expect("send");
    assert_eq!(res.status(), 400);
    let body = json(res).await;
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("count"),
        "{body}"
    );

    let res = post("{\"name\": \"x\", \"count\": 2}").await.expect("send");
    assert_eq!(res.status(), 200);
}

/// A body without a JSON content type is 415.
#[tokio::test]
async fn wrong_content_type_is_415() {
    let app = app().await;
    let res = app
        .client
        .post(app.url("/test/echo"))
        .header("content-type", "text/plain")
        .body("{\"name\":\"x\",\"count\":1}")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 415);
    assert_envelope(&json(res).await, "ERR_UNSUPPORTED_MEDIA_TYPE");
}

/// A body over the configured limit is 413, with or without a Content-Length.
#[tokio::test]
async fn oversized_body_is_413() {
    let app = app().await;
    let limit = builderos_test_support::test_config().body_limit_bytes;
    let big = format!("{{\"name\":\"{}\",\"count\":1}}", "x".repeat(limit + 10));
    let res = app
        .client
        .post(app.url("/test/echo"))
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 413);
    assert_envelope(&json(res).await, "ERR_PAYLOAD_TOO_LARGE");

    // Chunked: no Content-Length, the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big
        .as_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let stream = futures_util::stream::iter(chunks);
    let res = app
        .client
        .post(app.url("/test/echo"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 413);
    assert_envelope(&json(res).await, "ERR_PAYLOAD_TOO_LARGE");
}

/// A panicking handler answers 500 without leaking the panic, and the server keeps serving.
#[tokio::test]
async fn panic_is_500_and_server_survives() {
    let app = app().await;
    let res = app.get("/test/panic").await;
    assert_eq!(res.status(), 500);
    let text = res.text().await.expect("body");
    assert!(
        !text.contains("boom") && !text.contains("secret"),
        "leaked: {text}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_envelope(&body, "ERR_INTERNAL");
    assert_eq!(app.get("/health").await.status(), 200);
}

/// With the database unreachable, `/ready` is 503 with the failing check, `/health` stays 200,
/// and a database-backed request is 503 `ERR_UNAVAILABLE`.
#[tokio::test]
async fn unreachable_database_is_503() {
    let db = TestDb::new().await;
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("postgres://nobody:x@127.0.0.1:{port}/none?sslmode=disable");
    let pool = builderos_shared::db::connect_lazy(&url, 2).expect("lazy pool");
    let app = spawn_with_pool(db, pool).await;

    let res = app.get("/ready").await;
    assert_eq!(res.status(), 503);
    assert_eq!(
        json(res).await,
        serde_json::json!({"ready": false, "service": "builderos-api", "checks": {"config": true, "database": false}})
    );
    assert_eq!(app.get("/health").await.status(), 200);

    let res = app.get("/test/db").await;
    assert_eq!(res.status(), 503);
    assert_envelope(&json(res).await, "ERR_UNAVAILABLE");
}

/// A valid client request id is echoed in the header and the error body; a hostile one is replaced.
#[tokio::test]
async fn request_ids_are_validated_and_echoed() {
    let app = app().await;
    let res = app
        .client
        .get(app.url("/nope"))
        .header("x-request-id", "client-id.42")
        .send()
        .await
        .expect("send");
    assert_eq!(res.headers()["x-request-id"], "client-id.42");
    assert_eq!(json(res).await["request_id"], "client-id.42");

    let hostile = "x\" injected=\"1";
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", hostile)
        .send()
        .await
        .expect("send");
    let id = res.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_ne!(id, hostile);
    uuid::Uuid::parse_str(&id).expect("generated ids are UUIDs");

    let res = app.get("/health").await;
    assert!(res.headers().contains_key("x-request-id"));
}

/// `/metrics` exposes request counts and latency histograms by route and status, and pool gauges.
#[tokio::test]
async fn metrics_by_route_and_status() {
    let app = app().await;
    app.get("/version").await;
    app.get("/nope").await;
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .expect("ct")
            .starts_with("text/plain")
    );
    let text = res.text().await.expect("body");
    assert!(text.contains(r#"builderos_http_requests_total{service="builderos-api",method="GET",route="/version",status="200"}"#), "{text}");
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(
        text.contains("builderos_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains("builderos_db_pool_connections"), "{text}");
}

/// The app's role is neither superuser nor BYPASSRLS nor the owner of any table.
#[tokio::test]
async fn app_role_is_unprivileged() {
    let db = TestDb::new().await;
    let pool = db.app_pool();
    let (user, superuser, bypass): (String, bool, bool) = sqlx::query_as(
        "SELECT current_user::text, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&pool)
    .await
    .expect("role");
    assert_eq!(user, "builderos_api");
    assert!(!superuser && !bypass);
    let owned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) = current_user",
    )
    .fetch_one(&pool)
    .await
    .expect("owned");
    assert_eq!(owned, 0);
    // And it can't create tables in the schema.
    let err = sqlx::query("CREATE TABLE sneaky (id int)")
        .execute(&pool)
        .await
        .expect_err("denied");
    assert!(err.to_string().contains("permission denied"), "{err}");
}

/// The committed OpenAPI document is exactly what the code generates; it is also served.
#[tokio::test]
async fn openapi_matches_code_and_is_served() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../openapi/openapi.json"
    ))
    .expect("openapi/openapi.json exists");
    assert!(
        committed == builderos_api::openapi_json(),
        "openapi/openapi.json is out of date: run `cargo run -p builderos -- openapi` and commit it"
    );
    let app = app().await;
    let served = json(app.get("/openapi.json").await).await;
    let committed: serde_json::Value = serde_json::from_str(&committed).expect("json");
    assert_eq!(served, committed);
    for path in ["/health", "/ready", "/version", "/metrics"] {
        assert!(
            committed["paths"][path]["get"].is_object(),
            "{path} undocumented"
        );
    }
    let res = app.get("/docs").await;
    assert_eq!(res.status(), 200);
    assert!(res.text().await.expect("html").contains("<html"));
}

/// Each test gets its own database: what one writes, another doesn't see.
#[tokio::test]
async fn databases_are_isolated_per_test() {
    let a = TestDb::new().await;
    let b = TestDb::new().await;
    assert_ne!(a.name, b.name);
    let owner_a = sqlx::PgPool::connect(&a.owner_url).await.expect("connect");
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&owner_a)
        .await
        .expect("create");
    let owner_b = sqlx::PgPool::connect(&b.owner_url).await.expect("connect");
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&owner_b)
        .await
        .expect("query");
    assert!(found.is_none());
}
