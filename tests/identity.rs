//! Identity and tenancy: sign-up, sign-in, sessions, orgs, projects, members, invitations,
//! API tokens, row-level security — against the real app on real PostgreSQL.

use builderos_test_support::{PASSWORD, Session, TestApp, session_from};
use reqwest::Method;
use serde_json::{Value, json};

async fn invite_token(app: &TestApp, email: &str) -> String {
    let body: String = sqlx::query_scalar(
        "SELECT body FROM mail_outbox WHERE to_address = $1 ORDER BY created_at DESC LIMIT 1",
    )
    .bind(email)
    .fetch_one(&app.superuser_pool())
    .await
    .expect("an invitation mail was queued");
    body.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .find(|w| w.starts_with("bosi_"))
        .expect("token in mail")
        .to_owned()
}

async fn audit_actions(app: &TestApp, org: Option<&str>) -> Vec<(String, String)> {
    app.seal_audit().await;
    let rows: Vec<(String, String)> = match org {
        Some(org) => sqlx::query_as(
            "SELECT action, outcome FROM audit_events WHERE org_id = $1::uuid ORDER BY seq",
        )
        .bind(org)
        .fetch_all(&app.superuser_pool())
        .await
        .expect("audit"),
        None => sqlx::query_as(
            "SELECT action, outcome FROM audit_events WHERE org_id IS NULL ORDER BY seq",
        )
        .fetch_all(&app.superuser_pool())
        .await
        .expect("audit"),
    };
    rows
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// A new user signs up, sees themselves, and can't sign up twice with one email.
#[tokio::test]
async fn signup_and_me() {
    let app = TestApp::spawn().await;
    let alice = app.signup("Alice@Example.com").await;
    let (status, me) = app.get_as("/v1/me", &alice.access).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["email"], "alice@example.com");
    assert_eq!(me["orgs"], json!([]));

    let (status, body) = app
        .post_as(
            "/v1/auth/signup",
            None,
            json!({"email": "alice@example.com", "password": PASSWORD, "display_name": "A"}),
        )
        .await;
    assert_eq!((status, code(&body)), (409, "ERR_CONFLICT"));
    assert_eq!(
        audit_actions(&app, None).await,
        vec![("user.signup".into(), "success".into())]
    );
}

/// Malformed or overlong input is refused with ERR_INPUTS and writes nothing.
#[tokio::test]
async fn signup_rejects_bad_input() {
    let app = TestApp::spawn().await;
    for body in [
        json!({"email": "not-an-email", "password": PASSWORD, "display_name": "x"}),
        json!({"email": format!("{}@example.com", "a".repeat(300)), "password": PASSWORD, "display_name": "x"}),
        json!({"email": "a@example.com", "password": "short", "display_name": "x"}),
        json!({"email": "a@example.com", "password": "x".repeat(1025), "display_name": "x"}),
        json!({"email": "a@example.com", "password": PASSWORD, "display_name": ""}),
        json!({"email": "a@example.com", "password": PASSWORD, "display_name": "x".repeat(101)}),
        json!({"email": "a@example.com", "password": PASSWORD, "display_name": "x", "role": "owner"}),
        json!({"email": "a@example.com"}),
    ] {
        let (status, res) = app.post_as("/v1/auth/signup", None, body.clone()).await;
        assert_eq!((status, code(&res)), (400, "ERR_INPUTS"), "{body}: {res}");
    }
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&app.superuser_pool())
        .await
        .expect("count");
    assert_eq!(users, 0);
}

/// Unknown email and wrong password answer identically; the right password signs in.
#[tokio::test]
async fn signin_does_not_enumerate_users() {
    let app = TestApp::spawn().await;
    app.signup("bob@example.com").await;
    let (s1, wrong) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "bob@example.com", "password": "wrong password here"}),
        )
        .await;
    let (s2, unknown) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "nobody@example.com", "password": "wrong password here"}),
        )
        .await;
    assert_eq!((s1, s2), (401, 401));
    assert_eq!(wrong["error"], unknown["error"]);
    let (status, ok) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "BOB@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{ok}");
    assert_eq!(ok["token_type"], "Bearer");
    assert_eq!(ok["expires_in"], 900);
    let actions = audit_actions(&app, None).await;
    assert!(actions.contains(&("user.signin".into(), "failure".into())));
    assert!(actions.contains(&("user.signin".into(), "success".into())));
    // No password, hash or token in any event.
    app.seal_audit().await;
    let details: Vec<String> = sqlx::query_scalar("SELECT detail::text FROM audit_events")
        .fetch_all(&app.superuser_pool())
        .await
        .expect("details");
    for d in details {
        assert!(
            !d.contains(PASSWORD) && !d.contains("argon2") && !d.contains("bosr_"),
            "{d}"
        );
    }
}

/// Repeated failures for one account are throttled with 429 and Retry-After.
#[tokio::test]
async fn signin_is_throttled_per_account() {
    let app = TestApp::spawn().await;
    app.signup("carol@example.com").await;
    for _ in 0..5 {
        let (status, _) = app
            .post_as(
                "/v1/auth/signin",
                None,
                json!({"email": "carol@example.com", "password": "not the password"}),
            )
            .await;
        assert_eq!(status, 401);
    }
    let res = app
        .client
        .post(app.url("/v1/auth/signin"))
        .json(&json!({"email": "carol@example.com", "password": PASSWORD}))
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 429);
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(retry > 0 && retry <= 900);
    assert_eq!(
        code(&res.json::<Value>().await.expect("json")),
        "ERR_RATE_LIMITED"
    );
}

/// Refresh tokens rotate; reusing a spent one revokes the whole session.
#[tokio::test]
async fn refresh_rotation_and_reuse_detection() {
    let app = TestApp::spawn().await;
    let dave = app.signup("dave@example.com").await;
    let (status, next) = app
        .post_as(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": dave.refresh}),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    let next = session_from("dave@example.com", &next);
    assert_ne!(next.refresh, dave.refresh);
    assert_eq!(app.get_as("/v1/me", &next.access).await.0, 200);

    // Replaying the spent token: refused, and the family is revoked.
    let (status, body) = app
        .post_as(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": dave.refresh}),
        )
        .await;
    assert_eq!((status, code(&body)), (401, "ERR_UNAUTHENTICATED"));
    let (status, _) = app
        .post_as(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": next.refresh}),
        )
        .await;
    assert_eq!(
        status, 401,
        "the newest token of a compromised family must die too"
    );
    assert_eq!(app.get_as("/v1/me", &next.access).await.0, 401);

    // Tampered and forged refresh tokens.
    let mut tampered = next.refresh.clone();
    tampered.pop();
    tampered.push('x');
    assert_eq!(
        app.post_as("/v1/auth/refresh", None, json!({"refresh_token": tampered}))
            .await
            .0,
        401
    );
    assert_eq!(
        app.post_as(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": "bosr_nope"})
        )
        .await
        .0,
        401
    );
}

/// Sign-out ends the session; sign-out-everywhere ends all of them.
#[tokio::test]
async fn signout_and_signout_everywhere() {
    let app = TestApp::spawn().await;
    let erin = app.signup("erin@example.com").await;
    let (_, other) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "erin@example.com", "password": PASSWORD}),
        )
        .await;
    let other = session_from("erin@example.com", &other);
    assert_eq!(
        app.call(Method::POST, "/v1/auth/signout", Some(&erin.access), None)
            .await
            .0,
        204
    );
    assert_eq!(app.get_as("/v1/me", &erin.access).await.0, 401);
    assert_eq!(
        app.post_as(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": erin.refresh})
        )
        .await
        .0,
        401
    );
    assert_eq!(app.get_as("/v1/me", &other.access).await.0, 200);

    let (_, third) = app
        .post_as(
            "/v1/auth/signin",
            None,
            json!({"email": "erin@example.com", "password": PASSWORD}),
        )
        .await;
    let third = session_from("erin@example.com", &third);
    assert_eq!(
        app.call(
            Method::POST,
            "/v1/auth/signout-all",
            Some(&third.access),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(app.get_as("/v1/me", &other.access).await.0, 401);
    assert_eq!(app.get_as("/v1/me", &third.access).await.0, 401);
}

/// Garbage, `alg: none` and malformed Authorization headers are 401 in the envelope.
#[tokio::test]
async fn forged_credentials_are_401() {
    let app = TestApp::spawn().await;
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiIwMTkyIn0.";
    for token in [
        "garbage",
        none,
        "bos_0000000000000000000000000000000000000000",
        "bos_short",
    ] {
        let (status, body) = app.get_as("/v1/me", token).await;
        assert_eq!(
            (status, code(&body)),
            (401, "ERR_UNAUTHENTICATED"),
            "{token}"
        );
    }
    let res = app
        .client
        .get(app.url("/v1/me"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 401);
    assert_eq!(app.call(Method::GET, "/v1/me", None, None).await.0, 401);
}

/// An org's creator is its Owner; projects come with dev/stage/prod; another org's project is
/// a 404 indistinguishable from a missing one.
#[tokio::test]
async fn orgs_projects_and_isolation() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let mallory = app.signup("mallory@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let evil = app.create_org(&mallory, "evil").await;

    let (status, me) = app.get_as("/v1/me", &alice.access).await;
    assert_eq!(status, 200);
    assert_eq!(me["orgs"][0]["role"], "owner");
    assert_eq!(me["orgs"][0]["slug"], "acme");

    let (status, project) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&alice.access),
            json!({"slug": "web", "name": "Web"}),
        )
        .await;
    assert_eq!(status, 201, "{project}");
    let envs: Vec<(&str, bool)> = project["environments"]
        .as_array()
        .expect("envs")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or(""),
                e["protected"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(envs, vec![("dev", false), ("stage", false), ("prod", true)]);
    let pid = project["id"].as_str().expect("id");

    let (status, dup) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&alice.access),
            json!({"slug": "web", "name": "Web"}),
        )
        .await;
    assert_eq!((status, code(&dup)), (409, "ERR_CONFLICT"));
    let (status, bad) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&alice.access),
            json!({"slug": "Bad Slug", "name": "x"}),
        )
        .await;
    assert_eq!((status, code(&bad)), (400, "ERR_INPUTS"));

    // Another org's project and org: the same 404 as something that does not exist.
    let (s_foreign, foreign) = app
        .get_as(&format!("/v1/orgs/{org}/projects/{pid}"), &mallory.access)
        .await;
    let missing_org = uuid::Uuid::new_v4();
    let (s_missing, missing) = app
        .get_as(
            &format!("/v1/orgs/{missing_org}/projects/{pid}"),
            &mallory.access,
        )
        .await;
    assert_eq!((s_foreign, s_missing), (404, 404));
    assert_eq!(foreign["error"], missing["error"]);
    let (status, _) = app
        .get_as(&format!("/v1/orgs/{evil}/projects/{pid}"), &mallory.access)
        .await;
    assert_eq!(status, 404, "a project id under the wrong org is not found");
    let (status, _) = app
        .get_as(
            &format!("/v1/orgs/{org}/projects/not-a-uuid"),
            &alice.access,
        )
        .await;
    assert_eq!(status, 404);

    // Environments: add one, change protection.
    let (status, env) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects/{pid}/environments"),
            Some(&alice.access),
            json!({"name": "qa", "protected": true, "required_approvals": 2}),
        )
        .await;
    assert_eq!(status, 201, "{env}");
    let eid = env["id"].as_str().expect("id");
    let (status, env) = app
        .call(
            Method::PATCH,
            &format!("/v1/orgs/{org}/projects/{pid}/environments/{eid}"),
            Some(&alice.access),
            Some(json!({"required_approvals": 3})),
        )
        .await;
    assert_eq!((status, env["required_approvals"].as_i64()), (200, Some(3)));
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/v1/orgs/{org}/projects/{pid}/environments/{eid}"),
            Some(&alice.access),
            Some(json!({"required_approvals": 11})),
        )
        .await;
    assert_eq!(status, 400);

    let actions: Vec<String> = audit_actions(&app, Some(&org))
        .await
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        actions,
        vec![
            "org.create",
            "project.create",
            "environment.create",
            "environment.update"
        ]
    );
}

/// An admin invites a reviewer; the invitee accepts with the mailed token (once); wrong
/// address, replay, revocation and expiry are refused.
#[tokio::test]
async fn invitations() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let (status, inv) = app
        .post_as(
            &format!("/v1/orgs/{org}/invitations"),
            Some(&alice.access),
            json!({"email": "Rita@Example.com", "role": "reviewer"}),
        )
        .await;
    assert_eq!(status, 201, "{inv}");
    assert_eq!(inv["status"], "pending");
    assert!(
        !inv.to_string().contains("bosi_"),
        "the secret travels only by mail"
    );
    let token = invite_token(&app, "rita@example.com").await;

    let eve = app.signup("eve@example.com").await;
    let (status, body) = app
        .post_as(
            "/v1/invitations/accept",
            Some(&eve.access),
            json!({"token": token}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (403, "ERR_FORBIDDEN"),
        "only the invited address may accept"
    );

    let rita = app.signup("rita@example.com").await;
    let (status, body) = app
        .post_as(
            "/v1/invitations/accept",
            Some(&rita.access),
            json!({"token": token}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, me) = app.get_as("/v1/me", &rita.access).await;
    assert_eq!(me["orgs"][0]["role"], "reviewer");
    assert_eq!(me["user"]["email_verified"], true);
    let (status, body) = app
        .post_as(
            "/v1/invitations/accept",
            Some(&rita.access),
            json!({"token": token}),
        )
        .await;
    assert_eq!((status, code(&body)), (410, "ERR_EXPIRED"), "single use");

    // Revoked and expired invitations.
    let (_, inv2) = app
        .post_as(
            &format!("/v1/orgs/{org}/invitations"),
            Some(&alice.access),
            json!({"email": "sam@example.com", "role": "viewer"}),
        )
        .await;
    let t2 = invite_token(&app, "sam@example.com").await;
    let id2 = inv2["id"].as_str().expect("id");
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("/v1/orgs/{org}/invitations/{id2}"),
            Some(&alice.access),
            None
        )
        .await
        .0,
        204
    );
    let sam = app.signup("sam@example.com").await;
    let (status, _) = app
        .post_as(
            "/v1/invitations/accept",
            Some(&sam.access),
            json!({"token": t2}),
        )
        .await;
    assert_eq!(status, 410);
    app.post_as(
        &format!("/v1/orgs/{org}/invitations"),
        Some(&alice.access),
        json!({"email": "sam@example.com", "role": "viewer"}),
    )
    .await;
    let t3 = invite_token(&app, "sam@example.com").await;
    sqlx::query("UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE email = 'sam@example.com'")
        .execute(&app.superuser_pool())
        .await
        .expect("expire");
    assert_eq!(
        app.post_as(
            "/v1/invitations/accept",
            Some(&sam.access),
            json!({"token": t3})
        )
        .await
        .0,
        410
    );
    assert_eq!(
        app.post_as(
            "/v1/invitations/accept",
            Some(&sam.access),
            json!({"token": "bosi_forged"})
        )
        .await
        .0,
        404
    );

    // Bad role and bad email.
    let (status, _) = app
        .post_as(
            &format!("/v1/orgs/{org}/invitations"),
            Some(&alice.access),
            json!({"email": "x@example.com", "role": "superuser"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = app
        .post_as(
            &format!("/v1/orgs/{org}/invitations"),
            Some(&alice.access),
            json!({"email": "nope", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 400);
}

async fn add_member(app: &TestApp, owner: &Session, org: &str, email: &str, role: &str) -> Session {
    let (status, body) = app
        .post_as(
            &format!("/v1/orgs/{org}/invitations"),
            Some(&owner.access),
            json!({"email": email, "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = invite_token(app, email).await;
    let user = app.signup(email).await;
    let (status, body) = app
        .post_as(
            "/v1/invitations/accept",
            Some(&user.access),
            json!({"token": token}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    user
}

/// Role changes: Admins manage below Owner, only Owners touch Owners, the last Owner stays.
#[tokio::test]
async fn roles_and_the_last_owner() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let adam = add_member(&app, &alice, &org, "adam@example.com", "admin").await;
    let vic = add_member(&app, &alice, &org, "vic@example.com", "viewer").await;
    let members = format!("/v1/orgs/{org}/members");

    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", vic.user_id),
            Some(&adam.access),
            Some(json!({"role": "builder"})),
        )
        .await;
    assert_eq!((status, body["role"].as_str()), (200, Some("builder")));
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", vic.user_id),
            Some(&adam.access),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(status, 403, "an Admin can't make Owners");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", alice.user_id),
            Some(&adam.access),
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(status, 403, "an Admin can't demote an Owner");
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", alice.user_id),
            Some(&alice.access),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (409, "ERR_CONFLICT"),
        "the last Owner can't be demoted"
    );
    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("{members}/{}", alice.user_id),
            Some(&alice.access),
            None,
        )
        .await;
    assert_eq!(status, 409, "the last Owner can't be removed");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", vic.user_id),
            Some(&vic.access),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 403, "a Builder can't change roles");
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", vic.user_id),
            Some(&alice.access),
            Some(json!({"role": "god"})),
        )
        .await;
    assert_eq!(status, 400);

    // With a second Owner, the first may step down.
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", adam.user_id),
            Some(&alice.access),
            Some(json!({"role": "owner"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("{members}/{}", alice.user_id),
            Some(&alice.access),
            Some(json!({"role": "admin"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("{members}/{}", vic.user_id),
            Some(&adam.access),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(
        app.get_as(&format!("/v1/orgs/{org}"), &vic.access).await.0,
        404,
        "a removed member sees nothing"
    );

    let events: Vec<(String, String)> = audit_actions(&app, Some(&org)).await;
    assert!(events.contains(&("member.role_change".into(), "success".into())));
    assert!(events.contains(&("access.denied".into(), "denied".into())));
    assert!(events.contains(&("member.remove".into(), "success".into())));
}

/// API tokens: shown once, scoped, never above the creator, revocation immediate, expiry honoured.
#[tokio::test]
async fn api_tokens() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let other = app.create_org(&alice, "other").await;
    let tokens = format!("/v1/orgs/{org}/tokens");
    let projects = format!("/v1/orgs/{org}/projects");

    let (status, created) = app
        .post_as(
            &tokens,
            Some(&alice.access),
            json!({"name": "ci reader", "permissions": ["read:projects"], "expires_in_days": 30}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let reader = created["token"].as_str().expect("secret").to_owned();
    assert!(reader.starts_with("bos_") && reader.len() == 42);
    let (status, list) = app.get_as(&tokens, &alice.access).await;
    assert_eq!(status, 200);
    assert!(
        !list.to_string().contains(&reader[12..]),
        "lists never show secrets"
    );

    assert_eq!(app.get_as(&projects, &reader).await.0, 200);
    let (status, body) = app
        .post_as(&projects, Some(&reader), json!({"slug": "x1", "name": "x"}))
        .await;
    assert_eq!((status, code(&body)), (403, "ERR_FORBIDDEN"));
    assert_eq!(
        app.get_as(&format!("/v1/orgs/{other}/projects"), &reader)
            .await
            .0,
        404,
        "scoped to one org"
    );
    let last_used: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT last_used_at FROM api_tokens WHERE name = 'ci reader'")
            .fetch_one(&app.superuser_pool())
            .await
            .expect("row");
    assert!(last_used.is_some());

    // Never more than the creator: a Builder can't mint an admin token.
    let bob = add_member(&app, &alice, &org, "bob@example.com", "builder").await;
    let (status, _) = app
        .post_as(
            &tokens,
            Some(&bob.access),
            json!({"name": "x", "permissions": ["read:projects"]}),
        )
        .await;
    assert_eq!(status, 403, "a Builder can't manage tokens at all");
    let (status, body) = app
        .post_as(
            &tokens,
            Some(&alice.access),
            json!({"name": "x", "permissions": ["launch:missiles"]}),
        )
        .await;
    assert_eq!((status, code(&body)), (400, "ERR_INPUTS"));
    let (status, _) = app
        .post_as(
            &tokens,
            Some(&alice.access),
            json!({"name": "x", "permissions": ["read:projects"], "expires_in_days": 0}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, admin_tok) = app.post_as(&tokens, Some(&alice.access), json!({"name": "deployer", "permissions": ["manage:tokens", "read:projects"], "service_account": true})).await;
    assert_eq!(status, 201);
    let admin_tok = admin_tok["token"].as_str().expect("secret").to_owned();
    let (status, _) = app
        .post_as(
            &tokens,
            Some(&admin_tok),
            json!({"name": "y", "permissions": ["write:projects"]}),
        )
        .await;
    assert_eq!(status, 403, "a token can't grant what it doesn't hold");

    // Revocation is effective on the next request.
    let id = created["id"].as_str().expect("id");
    assert_eq!(
        app.call(
            Method::DELETE,
            &format!("{tokens}/{id}"),
            Some(&alice.access),
            None
        )
        .await
        .0,
        204
    );
    assert_eq!(app.get_as(&projects, &reader).await.0, 401);

    // Expired tokens and tokens of deleted users stop working.
    let (_, t) = app
        .post_as(
            &tokens,
            Some(&alice.access),
            json!({"name": "short", "permissions": ["read:projects"]}),
        )
        .await;
    let short = t["token"].as_str().expect("secret").to_owned();
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE name = 'short'",
    )
    .execute(&app.superuser_pool())
    .await
    .expect("expire");
    assert_eq!(app.get_as(&projects, &short).await.0, 401);
    let (_, t) = app
        .post_as(
            &tokens,
            Some(&alice.access),
            json!({"name": "alice's", "permissions": ["read:projects"]}),
        )
        .await;
    let alices = t["token"].as_str().expect("secret").to_owned();
    assert_eq!(app.get_as(&projects, &alices).await.0, 200);
    sqlx::query("UPDATE users SET deleted_at = now() WHERE email = 'alice@example.com'")
        .execute(&app.superuser_pool())
        .await
        .expect("delete");
    // A change made straight in the database reaches the read cache through its notification.
    app.eventually(&projects, &alices, |s, _| s == 401).await;
    assert_eq!(
        app.get_as(&projects, &admin_tok).await.0,
        200,
        "service accounts belong to the org"
    );
}

/// Row-level security: through the app's role, a transaction with no org set sees no tenant
/// rows and can't insert any, even with no WHERE clause; with another org set it sees only that org.
#[tokio::test]
async fn row_level_security_blocks_unscoped_queries() {
    let app = TestApp::spawn().await;
    let alice = app.signup("alice@example.com").await;
    let org = app.create_org(&alice, "acme").await;
    let other = app.create_org(&alice, "other").await;
    app.post_as(
        &format!("/v1/orgs/{org}/projects"),
        Some(&alice.access),
        json!({"slug": "web", "name": "Web"}),
    )
    .await;
    let pool = app.pool.clone();

    let mut tx = builderos_shared::db::begin(&pool, &builderos_shared::db::Scope::default())
        .await
        .expect("tx");
    for table in [
        "orgs",
        "projects",
        "environments",
        "memberships",
        "invitations",
        "api_tokens",
        "audit_events",
    ] {
        let n: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await
                .expect("count");
        assert_eq!(n, 0, "{table} leaked rows to an unscoped transaction");
    }
    let err = sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES (gen_random_uuid(), $1::uuid, 'sneaky', 'x')")
        .bind(&org)
        .execute(&mut *tx)
        .await
        .expect_err("insert without scope");
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);

    let mut tx = builderos_shared::db::begin(
        &pool,
        &builderos_shared::db::Scope::org(other.parse().expect("uuid")),
    )
    .await
    .expect("tx");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM projects")
        .fetch_one(&mut *tx)
        .await
        .expect("count");
    assert_eq!(n, 0, "another org's scope sees none of acme's projects");
    let err = sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES (gen_random_uuid(), $1::uuid, 'sneaky', 'x')")
        .bind(&org)
        .execute(&mut *tx)
        .await
        .expect_err("cross-org insert");
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    let mut tx = builderos_shared::db::begin(
        &pool,
        &builderos_shared::db::Scope::org(org.parse().expect("uuid")),
    )
    .await
    .expect("tx");
    let err = sqlx::query("UPDATE audit_events SET action = 'x'")
        .execute(&mut *tx)
        .await
        .expect_err("audit is append-only");
    assert!(err.to_string().contains("permission denied"), "{err}");
}
