//! OAuth2/OIDC sign-in end to end against a real OIDC server on loopback (the npm package
//! oauth2-mock-server): PKCE, state, nonce, ID token verification through the provider's
//! JWKS, and the account-linking rules.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use builderos_shared::config::Config;
use builderos_test_support::{TestApp, session_from};
use serde_json::{Value, json};

/// oauth2-mock-server on a free loopback port; claims of the next tokens come from a file.
struct Provider {
    child: Child,
    issuer: String,
    claims: tempfile::NamedTempFile,
}

impl Provider {
    fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/oidc");
        assert!(
            dir.join("node_modules/oauth2-mock-server").is_dir(),
            "the OIDC test server is not installed: cd tests/support/oidc && npm ci"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let claims = tempfile::NamedTempFile::new().expect("claims file");
        let mut child = Command::new("node")
            .arg(dir.join("server.mjs"))
            .arg(port.to_string())
            .arg(claims.path())
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node must be installed to run the OIDC test server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let issuer = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("OIDC server did not start: {line}"))
            .to_owned();
        Self {
            child,
            issuer,
            claims,
        }
    }

    fn next_token(&self, spec: &Value) {
        std::fs::write(self.claims.path(), spec.to_string()).expect("write claims");
    }

    fn config(&self) -> Config {
        let vars = [
            ("BR_OS_ENV", "test".to_owned()),
            ("BR_OS_OAUTH_PROVIDERS", "mock".to_owned()),
            ("BR_OS_OAUTH_MOCK_ISSUER", self.issuer.clone()),
            ("BR_OS_OAUTH_MOCK_CLIENT_ID", "builderos-test".to_owned()),
            ("BR_OS_OAUTH_MOCK_CLIENT_SECRET", "test-secret".to_owned()),
            (
                "BR_OS_OAUTH_MOCK_REDIRECT_URI",
                "http://127.0.0.1:9/v1/auth/oauth/mock/callback".to_owned(),
            ),
        ];
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .expect("config")
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            v.replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=")
        })
    })
}

/// Plays the browser: /start → the provider's /authorize → back with code and state.
async fn authorize(app: &TestApp) -> (String, String, String) {
    let client = no_redirects();
    let res = client
        .get(app.url("/v1/auth/oauth/mock/start"))
        .send()
        .await
        .expect("start");
    assert_eq!(res.status(), 302);
    let to_provider = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let res = client.get(&to_provider).send().await.expect("authorize");
    assert_eq!(res.status(), 302, "the provider should redirect back");
    let back = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    assert!(
        back.starts_with("http://127.0.0.1:9/v1/auth/oauth/mock/callback?"),
        "exact redirect URI: {back}"
    );
    (
        to_provider,
        query_param(&back, "code").expect("code"),
        query_param(&back, "state").expect("state"),
    )
}

async fn callback(app: &TestApp, code: &str, state: &str) -> (u16, Value) {
    app.call(
        reqwest::Method::GET,
        &format!("/v1/auth/oauth/mock/callback?code={code}&state={state}"),
        None,
        None,
    )
    .await
}

async fn sign_in(app: &TestApp, provider: &Provider, spec: Value) -> (u16, Value) {
    provider.next_token(&spec);
    let (_, code, state) = authorize(app).await;
    callback(app, &code, &state).await
}

/// First sign-in creates a verified account; the next one maps to it; the redirect carries
/// PKCE S256, state and nonce.
#[tokio::test]
async fn oidc_sign_in_creates_and_reuses_the_account() {
    let provider = Provider::start();
    let app = TestApp::spawn_with_config(provider.config()).await;

    provider.next_token(
        &json!({"claims": {"email": "Olive@Example.com", "email_verified": true, "name": "Olive"}}),
    );
    let (to_provider, code, state) = authorize(&app).await;
    assert_eq!(
        query_param(&to_provider, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_param(&to_provider, "code_challenge").is_some_and(|c| c.len() >= 43));
    assert!(query_param(&to_provider, "nonce").is_some());
    assert_eq!(
        query_param(&to_provider, "state").as_deref(),
        Some(state.as_str())
    );
    let (status, body) = callback(&app, &code, &state).await;
    assert_eq!(status, 200, "{body}");
    let first = session_from("olive@example.com", &body);
    let (_, me) = app.get_as("/v1/me", &first.access).await;
    assert_eq!(me["user"]["email"], "olive@example.com");
    assert_eq!(me["user"]["email_verified"], true);
    assert_eq!(me["user"]["display_name"], "Olive");

    // The same state can't be used twice.
    let (status, body) = callback(&app, &code, &state).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("ERR_UNAUTHENTICATED"))
    );

    let (status, body) = sign_in(
        &app,
        &provider,
        json!({"claims": {"email": "olive@example.com", "email_verified": true}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["user"]["id"],
        first.user_id.as_str(),
        "the linked identity maps to the same account"
    );

    app.seal_audit().await;
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events WHERE org_id IS NULL ORDER BY seq")
            .fetch_all(&app.superuser_pool())
            .await
            .expect("audit");
    assert_eq!(
        &actions[..3],
        ["user.signup", "user.identity_link", "user.signin"]
    );
}

/// An existing account is linked only through an email the provider verified.
#[tokio::test]
async fn linking_needs_a_verified_email() {
    let provider = Provider::start();
    let app = TestApp::spawn_with_config(provider.config()).await;
    let pat = app.signup("pat@example.com").await;

    let (status, body) = sign_in(&app, &provider, json!({"claims": {"sub": "pat-unverified", "email": "pat@example.com", "email_verified": false}})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("ERR_FORBIDDEN")),
        "{body}"
    );
    let links: i64 = sqlx::query_scalar("SELECT count(*) FROM user_identities")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("count");
    assert_eq!(links, 0);

    let (status, body) = sign_in(&app, &provider, json!({"claims": {"sub": "pat-verified", "email": "pat@example.com", "email_verified": true}})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], pat.user_id.as_str());

    let (status, _) = sign_in(
        &app,
        &provider,
        json!({"claims": {"sub": "nobody", "email": "new@example.com", "email_verified": false}}),
    )
    .await;
    assert_eq!(status, 403, "no account from an unverified email");
}

/// Tokens with the wrong nonce, audience or issuer, expired ones, a forged state, a changed
/// PKCE verifier and provider errors are all refused.
#[tokio::test]
async fn bad_id_tokens_and_states_are_refused() {
    let provider = Provider::start();
    let app = TestApp::spawn_with_config(provider.config()).await;
    let ok = json!({"email": "eve@example.com", "email_verified": true});
    let cases = [
        (
            "wrong nonce",
            json!({"claims": {"nonce": "attacker-nonce"}}),
        ),
        (
            "wrong audience",
            json!({"claims": {"aud": "another-client"}}),
        ),
        (
            "wrong issuer",
            json!({"claims": {"iss": "http://evil.example"}}),
        ),
        ("expired", json!({"exp_offset": -3600})),
        ("no nonce", json!({"delete": ["nonce"]})),
    ];
    for (name, mut spec) in cases {
        let claims = spec["claims"].as_object().cloned().unwrap_or_default();
        let mut merged = ok.as_object().cloned().unwrap_or_default();
        merged.extend(claims);
        spec["claims"] = Value::Object(merged);
        let (status, body) = sign_in(&app, &provider, spec).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("ERR_UNAUTHENTICATED")),
            "{name}: {body}"
        );
    }

    provider.next_token(&json!({"claims": ok}));
    let (_, code, _) = authorize(&app).await;
    assert_eq!(callback(&app, &code, "forged-state").await.0, 401);

    // A verifier that doesn't match the challenge is refused by the provider.
    let (_, code, state) = authorize(&app).await;
    sqlx::query("UPDATE oauth_flows SET pkce_verifier = repeat('x', 64) WHERE used_at IS NULL")
        .execute(&app.superuser_pool())
        .await
        .expect("tamper");
    assert_eq!(callback(&app, &code, &state).await.0, 401);

    let (status, _) = app
        .call(
            reqwest::Method::GET,
            "/v1/auth/oauth/mock/callback?error=access_denied&state=x",
            None,
            None,
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            "/v1/auth/oauth/nope/start",
            None,
            None,
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("ERR_NOT_FOUND"))
    );

    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("count");
    assert_eq!(users, 0, "no refused attempt created an account");
    app.seal_audit().await;
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE action = 'user.signin' AND outcome = 'failure'",
    )
    .fetch_one(&app.superuser_pool())
    .await
    .expect("count");
    assert!(failures >= 8, "failures are audited: {failures}");
}

/// GitHub-style OAuth2 (no ID token): the code is redeemed with the PKCE verifier and the
/// primary verified email comes from the API; tested against a GitHub-shaped server on loopback.
#[tokio::test]
async fn github_sign_in() {
    use axum::extract::Query;
    use axum::response::Redirect;
    use axum::routing::{get, post};
    use std::collections::HashMap;

    async fn authorize(Query(q): Query<HashMap<String, String>>) -> Redirect {
        let state = q.get("state").cloned().unwrap_or_default();
        let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
        assert_eq!(
            q.get("code_challenge_method").map(String::as_str),
            Some("S256")
        );
        Redirect::to(&format!("{redirect}?code=gh-code&state={state}"))
    }
    async fn token(body: String) -> axum::Json<Value> {
        let f: HashMap<String, String> = body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let ok = f.get("code").map(String::as_str) == Some("gh-code")
            && f.get("client_secret").map(String::as_str) == Some("gh-secret")
            && f.get("code_verifier").is_some_and(|v| v.len() >= 43);
        axum::Json(if ok {
            json!({"access_token": "gh-access", "token_type": "bearer"})
        } else {
            json!({"error": "bad_verification_code"})
        })
    }
    let stub = axum::Router::new()
        .route("/login/oauth/authorize", get(authorize))
        .route("/login/oauth/access_token", post(token))
        .route(
            "/user",
            get(|| async { axum::Json(json!({"id": 4242, "login": "octo", "name": "Octo Cat"})) }),
        )
        .route(
            "/user/emails",
            get(|| async {
                axum::Json(json!([
                    {"email": "old@example.com", "primary": false, "verified": true},
                    {"email": "octo@example.com", "primary": true, "verified": true}
                ]))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, stub).await });

    let vars = [
        ("BR_OS_ENV", "test".to_owned()),
        ("BR_OS_OAUTH_PROVIDERS", "github".to_owned()),
        ("BR_OS_OAUTH_GITHUB_CLIENT_ID", "gh-client".to_owned()),
        ("BR_OS_OAUTH_GITHUB_CLIENT_SECRET", "gh-secret".to_owned()),
        (
            "BR_OS_OAUTH_GITHUB_REDIRECT_URI",
            "http://127.0.0.1:9/cb".to_owned(),
        ),
        (
            "BR_OS_OAUTH_GITHUB_AUTH_URL",
            format!("{base}/login/oauth/authorize"),
        ),
        (
            "BR_OS_OAUTH_GITHUB_TOKEN_URL",
            format!("{base}/login/oauth/access_token"),
        ),
        ("BR_OS_OAUTH_GITHUB_API_URL", base.clone()),
    ];
    let config =
        Config::from_lookup(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone()))
            .expect("config");
    let app = TestApp::spawn_with_config(config).await;
    let client = no_redirects();
    let res = client
        .get(app.url("/v1/auth/oauth/github/start"))
        .send()
        .await
        .expect("start");
    let to_github = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let res = client.get(&to_github).send().await.expect("authorize");
    let back = res.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let state = query_param(&back, "state").expect("state");
    let (status, body) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/auth/oauth/github/callback?code=gh-code&state={state}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["email"], "octo@example.com");
    assert_eq!(body["user"]["display_name"], "Octo Cat");
}
