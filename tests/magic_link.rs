//! Magic-link sign-in end to end: the outbox, the mailer speaking SMTP to a real SMTP server
//! on loopback (aiosmtpd), single use, expiry, throttling and retries.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use builderos_api::mailer::Mailer;
use builderos_test_support::{PASSWORD, TestApp, session_from};
use serde_json::json;

/// aiosmtpd on a free loopback port, writing each message to a directory.
struct SmtpSink {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SmtpSink {
    fn start() -> Self {
        let probe = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .output();
        assert!(
            probe.as_ref().is_ok_and(|o| o.status.success()),
            "the SMTP sink needs Python's aiosmtpd: python3 -m pip install aiosmtpd"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("tmp");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP sink");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        assert_eq!(line.trim(), "ready", "SMTP sink did not start");
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, oldest first, quoted-printable soft breaks and `=3D` undone.
    fn messages(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .expect("message")
                    .replace("=\r\n", "")
                    .replace("=\n", "")
                    .replace("=3D", "=")
            })
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn token_in(message: &str) -> String {
    message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("bosm_"))
        .unwrap_or_else(|| panic!("no token in {message}"))
        .to_owned()
}

/// A link requested for a new address arrives over SMTP; using it creates and signs in a
/// verified account; it works once; the answer never reveals whether an account exists.
#[tokio::test]
async fn magic_link_over_smtp() {
    let app = TestApp::spawn().await;
    let sink = SmtpSink::start();
    let mailer =
        Mailer::new(Some(&sink.url()), "BuilderOS <no-reply@builderos.test>").expect("mailer");
    app.signup("known@example.com").await;

    let (s_new, new) = app
        .post_as(
            "/v1/auth/magic-link",
            None,
            json!({"email": "New@Example.com"}),
        )
        .await;
    let (s_known, known) = app
        .post_as(
            "/v1/auth/magic-link",
            None,
            json!({"email": "known@example.com"}),
        )
        .await;
    assert_eq!((s_new, s_known), (202, 202));
    assert_eq!(new, known, "no account enumeration");

    assert_eq!(mailer.drain_once(&app.pool).await.expect("drain"), 2);
    assert_eq!(
        mailer.drain_once(&app.pool).await.expect("drain"),
        0,
        "each message is sent once"
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 2);
    let to_new = messages
        .iter()
        .find(|m| m.contains("To: new@example.com"))
        .expect("mail to new@");
    assert!(to_new.contains("Subject: Your BuilderOS sign-in link"));
    assert!(to_new.contains("/auth/magic?token=bosm_"));
    let token = token_in(to_new);

    let (status, body) = app
        .post_as("/v1/auth/magic-link/verify", None, json!({"token": token}))
        .await;
    assert_eq!(status, 200, "{body}");
    let session = session_from("new@example.com", &body);
    let (_, me) = app.get_as("/v1/me", &session.access).await;
    assert_eq!(me["user"]["email"], "new@example.com");
    assert_eq!(me["user"]["email_verified"], true);

    let (status, body) = app
        .post_as("/v1/auth/magic-link/verify", None, json!({"token": token}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("ERR_EXPIRED")),
        "single use"
    );

    // The known account signs in as itself.
    let to_known = messages
        .iter()
        .find(|m| m.contains("To: known@example.com"))
        .expect("mail to known@");
    let (status, body) = app
        .post_as(
            "/v1/auth/magic-link/verify",
            None,
            json!({"token": token_in(to_known)}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, me) = app
        .get_as("/v1/me", body["access_token"].as_str().expect("token"))
        .await;
    assert_eq!(me["user"]["email"], "known@example.com");
    let (status, _) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "known@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "the password still works");

    // Secrets never reach the audit trail.
    app.seal_audit().await;
    let details: Vec<String> = sqlx::query_scalar("SELECT detail::text FROM audit_events")
        .fetch_all(&app.superuser_pool())
        .await
        .expect("audit");
    assert!(details.iter().all(|d| !d.contains("bosm_")), "{details:?}");
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM audit_events WHERE org_id IS NULL ORDER BY seq")
            .fetch_all(&app.superuser_pool())
            .await
            .expect("audit");
    assert!(
        actions.contains(&"auth.magic_link_request".to_owned())
            && actions.contains(&"user.signin".to_owned())
    );
}

/// Expired, forged and malformed links are refused with their own codes.
#[tokio::test]
async fn bad_links_are_refused() {
    let app = TestApp::spawn().await;
    app.post_as(
        "/v1/auth/magic-link",
        None,
        json!({"email": "late@example.com"}),
    )
    .await;
    let body: String = sqlx::query_scalar("SELECT body FROM mail_outbox")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("mail");
    let token = token_in(&body);
    sqlx::query("UPDATE magic_links SET expires_at = now() - interval '1 second'")
        .execute(&app.superuser_pool())
        .await
        .expect("expire");
    let (status, body) = app
        .post_as("/v1/auth/magic-link/verify", None, json!({"token": token}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (410, Some("ERR_EXPIRED"))
    );

    let mut forged = token.clone();
    forged.replace_range(10..11, if &token[10..11] == "a" { "b" } else { "a" });
    for bad in [forged.as_str(), "bosm_short", "not-a-token", ""] {
        let (status, body) = app
            .post_as("/v1/auth/magic-link/verify", None, json!({"token": bad}))
            .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("ERR_UNAUTHENTICATED")),
            "{bad}"
        );
    }
    let (status, _) = app
        .post_as(
            "/v1/auth/magic-link",
            None,
            json!({"email": "not an email"}),
        )
        .await;
    assert_eq!(status, 400);
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("count");
    assert_eq!(users, 0, "no account from a refused link");
}

/// Requests are throttled per address with 429 and Retry-After.
#[tokio::test]
async fn link_requests_are_throttled() {
    let app = TestApp::spawn().await;
    for _ in 0..5 {
        assert_eq!(
            app.post_as(
                "/v1/auth/magic-link",
                None,
                json!({"email": "spam@example.com"})
            )
            .await
            .0,
            202
        );
    }
    let res = app
        .client
        .post(app.url("/v1/auth/magic-link"))
        .json(&json!({"email": "spam@example.com"}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"));
}

/// A relay that is down: the message stays queued with its error and a later attempt time,
/// and goes out once the relay answers.
#[tokio::test]
async fn failed_sends_are_retried() {
    let app = TestApp::spawn().await;
    app.post_as(
        "/v1/auth/magic-link",
        None,
        json!({"email": "retry@example.com"}),
    )
    .await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let down = Mailer::new(
        Some(&format!("smtp://127.0.0.1:{closed}")),
        "BuilderOS <no-reply@builderos.test>",
    )
    .expect("mailer");
    assert_eq!(down.drain_once(&app.pool).await.expect("drain"), 0);
    let (attempts, error, later): (i32, Option<String>, bool) =
        sqlx::query_as("SELECT attempts, last_error, next_attempt_at > now() FROM mail_outbox")
            .fetch_one(&app.superuser_pool())
            .await
            .expect("row");
    assert_eq!(attempts, 1);
    assert!(error.is_some_and(|e| !e.contains("bosm_")));
    assert!(later, "backoff schedules the retry later");

    let sink = SmtpSink::start();
    let up = Mailer::new(Some(&sink.url()), "BuilderOS <no-reply@builderos.test>").expect("mailer");
    assert_eq!(
        up.drain_once(&app.pool).await.expect("drain"),
        0,
        "not before its retry time"
    );
    sqlx::query("UPDATE mail_outbox SET next_attempt_at = now()")
        .execute(&app.superuser_pool())
        .await
        .expect("due");
    assert_eq!(up.drain_once(&app.pool).await.expect("drain"), 1);
    assert_eq!(sink.messages().len(), 1);
    let sent: bool = sqlx::query_scalar("SELECT sent_at IS NOT NULL FROM mail_outbox")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("row");
    assert!(sent);
}
