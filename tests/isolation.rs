//! The tenant isolation matrix: every tenant endpoint, called as nobody, with dead
//! credentials, as a member of another org, and as each of the five roles — by session and
//! by API token. Another org's resources must answer exactly like missing ones (404).

use builderos_api::permissions::{Permission, Role};
use builderos_test_support::{Session, TestApp};
use reqwest::Method;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
enum Ep {
    GetOrg,
    RenameOrg,
    ListMembers,
    ChangeRole,
    RemoveMember,
    ListInvitations,
    CreateInvitation,
    RevokeInvitation,
    ListProjects,
    CreateProject,
    GetProject,
    RenameProject,
    DeleteProject,
    CreateEnvironment,
    UpdateEnvironment,
    ListTokens,
    CreateToken,
    RevokeToken,
    ListPipelines,
    CreatePipeline,
    GetPipeline,
    UpdatePipeline,
    ListPipelineVersions,
    StartRun,
    ListRuns,
    GetRun,
    CancelRun,
    RunTimeline,
    RunLogs,
    RunEvents,
    RunReceipts,
    RunArtifacts,
    ListAllowlist,
    AllowProcessor,
    DisallowProcessor,
    GetRunLimits,
    SetRunLimits,
}

const ALL: [Ep; 37] = [
    Ep::GetOrg,
    Ep::RenameOrg,
    Ep::ListMembers,
    Ep::ChangeRole,
    Ep::RemoveMember,
    Ep::ListInvitations,
    Ep::CreateInvitation,
    Ep::RevokeInvitation,
    Ep::ListProjects,
    Ep::CreateProject,
    Ep::GetProject,
    Ep::RenameProject,
    Ep::DeleteProject,
    Ep::CreateEnvironment,
    Ep::UpdateEnvironment,
    Ep::ListTokens,
    Ep::CreateToken,
    Ep::RevokeToken,
    Ep::ListPipelines,
    Ep::CreatePipeline,
    Ep::GetPipeline,
    Ep::UpdatePipeline,
    Ep::ListPipelineVersions,
    Ep::StartRun,
    Ep::ListRuns,
    Ep::GetRun,
    Ep::CancelRun,
    Ep::RunTimeline,
    Ep::RunLogs,
    Ep::RunEvents,
    Ep::RunReceipts,
    Ep::RunArtifacts,
    Ep::ListAllowlist,
    Ep::AllowProcessor,
    Ep::DisallowProcessor,
    Ep::GetRunLimits,
    Ep::SetRunLimits,
];

/// A one-step pipeline for the run endpoints.
const PIPELINE: &str = "steps:\n  - {id: a, role: builder, processor: \"builtin:echo\"}\n";

impl Ep {
    fn permission(self) -> Permission {
        match self {
            Ep::GetOrg => Permission::OrgRead,
            Ep::RenameOrg => Permission::OrgUpdate,
            Ep::ListMembers | Ep::ListInvitations => Permission::MembersRead,
            Ep::ChangeRole | Ep::RemoveMember | Ep::CreateInvitation | Ep::RevokeInvitation => {
                Permission::MembersManage
            }
            Ep::ListProjects | Ep::GetProject => Permission::ProjectsRead,
            Ep::CreateProject | Ep::RenameProject | Ep::DeleteProject => Permission::ProjectsWrite,
            Ep::CreateEnvironment | Ep::UpdateEnvironment => Permission::EnvironmentsWrite,
            Ep::ListTokens => Permission::TokensRead,
            Ep::CreateToken | Ep::RevokeToken => Permission::TokensManage,
            Ep::ListPipelines | Ep::GetPipeline | Ep::ListPipelineVersions => {
                Permission::PipelinesRead
            }
            Ep::CreatePipeline | Ep::UpdatePipeline => Permission::PipelinesWrite,
            Ep::StartRun | Ep::CancelRun => Permission::RunsWrite,
            Ep::ListRuns
            | Ep::GetRun
            | Ep::RunTimeline
            | Ep::RunLogs
            | Ep::RunEvents
            | Ep::RunReceipts
            | Ep::RunArtifacts => Permission::RunsRead,
            Ep::ListAllowlist | Ep::GetRunLimits => Permission::OrgRead,
            Ep::AllowProcessor | Ep::DisallowProcessor | Ep::SetRunLimits => {
                Permission::ProcessorsManage
            }
        }
    }

    fn success(self) -> u16 {
        match self {
            Ep::CreateInvitation
            | Ep::CreateProject
            | Ep::CreateEnvironment
            | Ep::CreateToken
            | Ep::CreatePipeline
            | Ep::StartRun
            | Ep::AllowProcessor => 201,
            Ep::RemoveMember
            | Ep::RevokeInvitation
            | Ep::DeleteProject
            | Ep::RevokeToken
            | Ep::DisallowProcessor => 204,
            _ => 200,
        }
    }
}

struct World {
    app: TestApp,
    owner: Session,
    org: String,
    project: String,
    environment: String,
    viewer: Session,
    /// A cancelled run, for the read endpoints (its event stream ends at once).
    run: String,
    n: std::sync::atomic::AtomicU32,
}

impl World {
    fn next(&self) -> u32 {
        self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    async fn invite(&self, email: &str, role: &str) -> Value {
        let (s, body) = self
            .app
            .post_as(
                &format!("/v1/orgs/{}/invitations", self.org),
                Some(&self.owner.access),
                json!({"email": email, "role": role}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        body
    }

    async fn member(&self, role: &str) -> Session {
        let email = format!("m{}@example.com", self.next());
        self.app.member(&self.owner, &self.org, &email, role).await
    }

    /// Starts a run of the `iso` pipeline as the owner; returns its id.
    async fn start_run(&self) -> String {
        let (s, body) = self
            .app
            .post_as(
                &format!(
                    "/v1/orgs/{}/projects/{}/pipelines/iso/runs",
                    self.org, self.project
                ),
                Some(&self.owner.access),
                json!({}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn token(&self, permissions: &[Permission]) -> String {
        let names: Vec<&str> = permissions.iter().map(|p| p.as_str()).collect();
        let (s, body) = self
            .app
            .post_as(
                &format!("/v1/orgs/{}/tokens", self.org),
                Some(&self.owner.access),
                json!({"name": format!("t{}", self.next()), "permissions": names}),
            )
            .await;
        assert_eq!(s, 201, "{body}");
        body["token"].as_str().expect("token").to_owned()
    }

    /// The request for `ep` in `org`, with fresh fixtures for destructive calls.
    async fn request(&self, ep: Ep, org: &str) -> (Method, String, Option<Value>) {
        let o = format!("/v1/orgs/{org}");
        let p = format!("{o}/projects/{}", self.project);
        let n = self.next();
        match ep {
            Ep::GetOrg => (Method::GET, o, None),
            Ep::RenameOrg => (Method::PATCH, o, Some(json!({"name": format!("Acme {n}")}))),
            Ep::ListMembers => (Method::GET, format!("{o}/members"), None),
            Ep::ChangeRole => (
                Method::PATCH,
                format!("{o}/members/{}", self.viewer.user_id),
                Some(json!({"role": "viewer"})),
            ),
            Ep::RemoveMember => {
                let victim = self.member("viewer").await;
                (
                    Method::DELETE,
                    format!("{o}/members/{}", victim.user_id),
                    None,
                )
            }
            Ep::ListInvitations => (Method::GET, format!("{o}/invitations"), None),
            Ep::CreateInvitation => (
                Method::POST,
                format!("{o}/invitations"),
                Some(json!({"email": format!("i{n}@example.com"), "role": "viewer"})),
            ),
            Ep::RevokeInvitation => {
                let inv = self.invite(&format!("r{n}@example.com"), "viewer").await;
                (
                    Method::DELETE,
                    format!("{o}/invitations/{}", inv["id"].as_str().expect("id")),
                    None,
                )
            }
            Ep::ListProjects => (Method::GET, format!("{o}/projects"), None),
            Ep::CreateProject => (
                Method::POST,
                format!("{o}/projects"),
                Some(json!({"slug": format!("p{n}"), "name": "P"})),
            ),
            Ep::GetProject => (Method::GET, p, None),
            Ep::RenameProject => (Method::PATCH, p, Some(json!({"name": format!("Web {n}")}))),
            Ep::DeleteProject => {
                let (s, body) = self
                    .app
                    .post_as(
                        &format!("/v1/orgs/{}/projects", self.org),
                        Some(&self.owner.access),
                        json!({"slug": format!("d{n}"), "name": "D"}),
                    )
                    .await;
                assert_eq!(s, 201, "{body}");
                (
                    Method::DELETE,
                    format!("{o}/projects/{}", body["id"].as_str().expect("id")),
                    None,
                )
            }
            Ep::CreateEnvironment => (
                Method::POST,
                format!("{p}/environments"),
                Some(json!({"name": format!("e{n}")})),
            ),
            Ep::UpdateEnvironment => (
                Method::PATCH,
                format!("{p}/environments/{}", self.environment),
                Some(json!({"required_approvals": 1})),
            ),
            Ep::ListPipelines => (Method::GET, format!("{p}/pipelines"), None),
            Ep::CreatePipeline => (
                Method::POST,
                format!("{p}/pipelines"),
                Some(json!({"name": format!("p{n}"), "source": PIPELINE})),
            ),
            Ep::GetPipeline => (Method::GET, format!("{p}/pipelines/iso"), None),
            Ep::UpdatePipeline => (
                Method::PUT,
                format!("{p}/pipelines/iso"),
                Some(json!({"source": PIPELINE})),
            ),
            Ep::ListPipelineVersions => (Method::GET, format!("{p}/pipelines/iso/versions"), None),
            Ep::StartRun => (
                Method::POST,
                format!("{p}/pipelines/iso/runs"),
                Some(json!({})),
            ),
            Ep::ListRuns => (Method::GET, format!("{o}/runs"), None),
            Ep::GetRun => (Method::GET, format!("{o}/runs/{}", self.run), None),
            Ep::CancelRun => {
                let run = self.start_run().await;
                (Method::POST, format!("{o}/runs/{run}/cancel"), None)
            }
            Ep::RunTimeline => (Method::GET, format!("{o}/runs/{}/timeline", self.run), None),
            Ep::RunLogs => (Method::GET, format!("{o}/runs/{}/logs", self.run), None),
            Ep::RunEvents => (Method::GET, format!("{o}/runs/{}/events", self.run), None),
            Ep::RunReceipts => (Method::GET, format!("{o}/runs/{}/receipts", self.run), None),
            Ep::RunArtifacts => (
                Method::GET,
                format!("{o}/runs/{}/artifacts", self.run),
                None,
            ),
            Ep::ListAllowlist => (Method::GET, format!("{o}/processor-allowlist"), None),
            Ep::AllowProcessor => (
                Method::POST,
                format!("{o}/processor-allowlist"),
                Some(json!({"processor": format!("http://127.0.0.1:{}", 10_000 + n)})),
            ),
            Ep::DisallowProcessor => {
                let origin = format!("http://127.0.0.1:{}", 30_000 + n);
                let (s, body) = self
                    .app
                    .post_as(
                        &format!("/v1/orgs/{}/processor-allowlist", self.org),
                        Some(&self.owner.access),
                        json!({"processor": origin}),
                    )
                    .await;
                assert_eq!(s, 201, "{body}");
                (
                    Method::DELETE,
                    format!("{o}/processor-allowlist?origin={origin}"),
                    None,
                )
            }
            Ep::GetRunLimits => (Method::GET, format!("{o}/run-limits"), None),
            Ep::SetRunLimits => (
                Method::PUT,
                format!("{o}/run-limits"),
                Some(json!({"max_concurrency": 8})),
            ),
            Ep::ListTokens => (Method::GET, format!("{o}/tokens"), None),
            Ep::CreateToken => (
                Method::POST,
                format!("{o}/tokens"),
                Some(json!({"name": format!("c{n}"), "permissions": ["read:org"]})),
            ),
            Ep::RevokeToken => {
                let (s, body) = self
                    .app
                    .post_as(
                        &format!("/v1/orgs/{}/tokens", self.org),
                        Some(&self.owner.access),
                        json!({"name": format!("v{n}"), "permissions": ["read:org"]}),
                    )
                    .await;
                assert_eq!(s, 201, "{body}");
                (
                    Method::DELETE,
                    format!("{o}/tokens/{}", body["id"].as_str().expect("id")),
                    None,
                )
            }
        }
    }

    /// Calls `ep`; the body is read as JSON when it is JSON (logs are text, events a stream).
    async fn call(&self, ep: Ep, org: &str, token: Option<&str>) -> (u16, Value) {
        let (method, path, body) = self.request(ep, org).await;
        let mut req = self.app.client.request(method.clone(), self.app.url(&path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_else(|e| panic!("body: {e}"));
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// Every tenant endpoint × {anonymous, dead credentials, other org, five roles by session,
/// five roles by API token}: the status is exactly what the permission matrix says, and a
/// foreign org's resources look exactly like missing ones.
#[tokio::test]
async fn isolation_matrix() {
    let app = TestApp::spawn().await;
    let owner = app.signup("owner@example.com").await;
    let org = app.create_org(&owner, "acme").await;
    let (_, project) = app
        .post_as(
            &format!("/v1/orgs/{org}/projects"),
            Some(&owner.access),
            json!({"slug": "web", "name": "Web"}),
        )
        .await;
    let project_id = project["id"].as_str().expect("id").to_owned();
    let environment = project["environments"][0]["id"]
        .as_str()
        .expect("env")
        .to_owned();
    let world = World {
        app,
        owner: owner.clone(),
        org: org.clone(),
        project: project_id,
        environment,
        viewer: owner.clone(),
        run: String::new(),
        n: 0.into(),
    };
    let viewer = world.member("viewer").await;
    let (s, body) = world
        .app
        .post_as(
            &format!("/v1/orgs/{org}/projects/{}/pipelines", world.project),
            Some(&owner.access),
            json!({"name": "iso", "source": PIPELINE}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let run = world.start_run().await;
    let (s, body) = world
        .app
        .call(
            Method::POST,
            &format!("/v1/orgs/{org}/runs/{run}/cancel"),
            Some(&owner.access),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let world = World {
        viewer,
        run,
        ..world
    };

    let outsider = world.app.signup("outsider@example.com").await;
    let outsider_org = world.app.create_org(&outsider, "elsewhere").await;
    let dead_session = world.app.signup("gone@example.com").await;
    world
        .app
        .call(
            Method::POST,
            "/v1/auth/signout",
            Some(&dead_session.access),
            None,
        )
        .await;
    let expired_token = world.token(&[Permission::OrgRead]).await;
    sqlx::query(
        "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE token_prefix = $1",
    )
    .bind(&expired_token[..12])
    .execute(&world.app.superuser_pool())
    .await
    .expect("expire");

    let mut principals: Vec<(String, String, Option<Role>)> = Vec::new();
    for role in Role::ALL {
        let session = if role == Role::Owner {
            world.owner.clone()
        } else {
            world.member(role.as_str()).await
        };
        principals.push((
            format!("{role:?} session"),
            session.access.clone(),
            Some(role),
        ));
        let token = world.token(&role.permissions()).await;
        principals.push((format!("{role:?} token"), token, Some(role)));
    }

    let mut checked = 0;
    for ep in ALL {
        let (status, body) = world.call(ep, &org, None).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some("ERR_UNAUTHENTICATED")),
            "{ep:?} anonymous"
        );
        assert_eq!(
            world.call(ep, &org, Some(&dead_session.access)).await.0,
            401,
            "{ep:?} signed-out session"
        );
        assert_eq!(
            world.call(ep, &org, Some(&expired_token)).await.0,
            401,
            "{ep:?} expired token"
        );

        // Another org's member: 404, with the same body as an org that doesn't exist.
        let (status, foreign) = world.call(ep, &org, Some(&outsider.access)).await;
        let missing = uuid::Uuid::new_v4().to_string();
        let (missing_status, missing_body) = world.call(ep, &missing, Some(&outsider.access)).await;
        assert_eq!(
            (status, missing_status),
            (404, 404),
            "{ep:?} from another org: {foreign}"
        );
        assert_eq!(
            foreign["error"], missing_body["error"],
            "{ep:?}: foreign and missing must look alike"
        );
        // The outsider's own org doesn't hold the victim's resources either.
        if matches!(
            ep,
            Ep::GetProject
                | Ep::RenameProject
                | Ep::CreateEnvironment
                | Ep::UpdateEnvironment
                | Ep::ChangeRole
                | Ep::GetPipeline
                | Ep::UpdatePipeline
                | Ep::StartRun
                | Ep::GetRun
                | Ep::CancelRun
                | Ep::RunEvents
                | Ep::RunArtifacts
        ) {
            let (status, _) = world.call(ep, &outsider_org, Some(&outsider.access)).await;
            assert_eq!(
                status, 404,
                "{ep:?}: an id from another org under one's own org"
            );
        }

        for (who, credential, role) in &principals {
            let allowed = role.is_some_and(|r| r.allows(ep.permission()));
            let (status, body) = world.call(ep, &org, Some(credential)).await;
            let expected = if allowed { ep.success() } else { 403 };
            assert_eq!(status, expected, "{ep:?} as {who}: {body}");
            checked += 1;
        }
    }
    eprintln!(
        "isolation matrix: {checked} role calls over {} endpoints checked",
        ALL.len()
    );

    // Deleting the org: only its Owner, and then it is gone for everyone.
    let admin = &principals
        .iter()
        .find(|(w, _, _)| w == "Admin session")
        .expect("admin")
        .1;
    assert_eq!(
        world
            .app
            .call(
                Method::DELETE,
                &format!("/v1/orgs/{org}"),
                Some(admin),
                None
            )
            .await
            .0,
        403
    );
    assert_eq!(
        world
            .app
            .call(
                Method::DELETE,
                &format!("/v1/orgs/{org}"),
                Some(&outsider.access),
                None
            )
            .await
            .0,
        404
    );
    assert_eq!(
        world
            .app
            .call(
                Method::DELETE,
                &format!("/v1/orgs/{org}"),
                Some(&world.owner.access),
                None
            )
            .await
            .0,
        204
    );
    assert_eq!(
        world
            .app
            .get_as(&format!("/v1/orgs/{org}"), &world.owner.access)
            .await
            .0,
        404
    );
}
