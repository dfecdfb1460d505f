//! Projects and their environments.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_shared::db::{self, Scope};
use builderos_shared::http::{ApiError, ErrorEnvelope, Json};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{OnConstraint, path_id};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::{Auth, OrgAccess};
use crate::domain::{Slug, display_name};
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_projects, create_project))
        .routes(routes!(get_project, rename_project, delete_project))
        .routes(routes!(create_environment))
        .routes(routes!(update_environment))
}

/// The environments every new project starts with; `prod` is protected.
const DEFAULT_ENVIRONMENTS: [(&str, bool, i32); 3] =
    [("dev", false, 0), ("stage", false, 0), ("prod", true, 1)];

/// A project.
#[derive(Debug, Serialize, ToSchema)]
pub struct Project {
    /// Project id.
    pub id: Uuid,
    /// Org id.
    pub org_id: Uuid,
    /// Slug, unique in the org.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Creation time.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Its environments.
    pub environments: Vec<Environment>,
}

/// An environment of a project.
#[derive(Debug, Serialize, ToSchema)]
pub struct Environment {
    /// Environment id.
    pub id: Uuid,
    /// Name, unique in the project.
    pub name: String,
    /// Whether deploys to it need approval.
    pub protected: bool,
    /// Approvals a deploy needs.
    pub required_approvals: i32,
}

/// Body of `POST /v1/orgs/{org}/projects`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Slug, unique in the org.
    pub slug: String,
    /// Display name.
    pub name: String,
}

/// Body of `PATCH …/projects/{project}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenameProject {
    /// New display name.
    pub name: String,
}

/// Body of `POST …/environments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEnvironment {
    /// Name (slug), unique in the project.
    pub name: String,
    /// Whether deploys need approval (default false).
    #[serde(default)]
    pub protected: bool,
    /// Approvals needed (default 1 when protected, else 0).
    pub required_approvals: Option<i32>,
}

/// Body of `PATCH …/environments/{env}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironment {
    /// Whether deploys need approval.
    pub protected: Option<bool>,
    /// Approvals needed (0-10).
    pub required_approvals: Option<i32>,
}

type ProjectRow = (Uuid, Uuid, String, String, chrono::DateTime<chrono::Utc>);

async fn environments(
    conn: &mut PgConnection,
    project: Uuid,
) -> Result<Vec<Environment>, sqlx::Error> {
    let rows: Vec<(Uuid, String, bool, i32)> = sqlx::query_as(
        "SELECT id, name, protected, required_approvals FROM environments WHERE project_id = $1 ORDER BY created_at, id",
    )
    .bind(project)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, protected, required_approvals)| Environment {
            id,
            name,
            protected,
            required_approvals,
        })
        .collect())
}

async fn load_project(
    conn: &mut PgConnection,
    access: &OrgAccess,
    project: Uuid,
) -> Result<Project, ApiError> {
    if access.project_scope.is_some_and(|p| p != project) {
        return Err(ApiError::not_found("project"));
    }
    let row: Option<ProjectRow> = sqlx::query_as(
        "SELECT id, org_id, slug, name, created_at FROM projects WHERE id = $1 AND org_id = $2",
    )
    .bind(project)
    .bind(access.org_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (id, org_id, slug, name, created_at) = row.ok_or_else(|| ApiError::not_found("project"))?;
    Ok(Project {
        id,
        org_id,
        slug,
        name,
        created_at,
        environments: environments(conn, id).await?,
    })
}

/// List an org's projects (a project-scoped token sees only its project).
#[utoipa::path(get, path = "/v1/orgs/{org}/projects", tag = "projects", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Projects", body = Vec<Project>), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_projects(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Vec<Project>>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::ProjectsRead)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let rows: Vec<ProjectRow> = sqlx::query_as(
        "SELECT id, org_id, slug, name, created_at FROM projects WHERE org_id = $1 AND ($2::uuid IS NULL OR id = $2) ORDER BY slug",
    )
    .bind(org)
    .bind(access.project_scope)
    .fetch_all(&mut *tx)
    .await?;
    let env_rows: Vec<(Uuid, Uuid, String, bool, i32)> = sqlx::query_as(
        "SELECT project_id, id, name, protected, required_approvals FROM environments WHERE org_id = $1 ORDER BY created_at, id",
    )
    .bind(org)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut projects: Vec<Project> = rows
        .into_iter()
        .map(|(id, org_id, slug, name, created_at)| Project {
            id,
            org_id,
            slug,
            name,
            created_at,
            environments: Vec::new(),
        })
        .collect();
    for (project_id, id, name, protected, required_approvals) in env_rows {
        if let Some(p) = projects.iter_mut().find(|p| p.id == project_id) {
            p.environments.push(Environment {
                id,
                name,
                protected,
                required_approvals,
            });
        }
    }
    Ok(Json(projects))
}

/// Create a project with `dev`, `stage` and `prod` (protected) environments.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects", tag = "projects", request_body = CreateProject, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 201, description = "Created", body = Project), (status = 400, description = "Bad slug or name", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope),
        (status = 409, description = "Slug taken", body = ErrorEnvelope)))]
async fn create_project(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<CreateProject>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::ProjectsWrite)
        .await?;
    let slug = Slug::parse("slug", &body.slug)?;
    let name = display_name("name", &body.name)?;
    let id = Uuid::now_v7();
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    audit::record_with(
        sqlx::query("INSERT INTO projects (id, org_id, slug, name) VALUES ($1, $2, $3, $4)")
            .bind(id)
            .bind(org)
            .bind(slug.as_str())
            .bind(&name),
        Some(org),
        &access.audit,
        Event::success("project.create", "project", id)
            .detail(serde_json::json!({"slug": slug.as_str(), "name": name})),
    )?
    .execute(&mut *tx)
    .await
    .on_constraint(
        "projects_org_slug_key",
        "a project with this slug already exists in the org",
    )?;
    for (env, protected, approvals) in DEFAULT_ENVIRONMENTS {
        sqlx::query("INSERT INTO environments (id, org_id, project_id, name, protected, required_approvals) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(Uuid::now_v7())
            .bind(org)
            .bind(id)
            .bind(env)
            .bind(protected)
            .bind(approvals)
            .execute(&mut *tx)
            .await?;
    }
    let project = load_project(&mut tx, &access, id).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(project)))
}

/// Get a project with its environments.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    responses((status = 200, description = "The project", body = Project), (status = 404, description = "No such project", body = ErrorEnvelope)))]
async fn get_project(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
) -> Result<Json<Project>, ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth
        .authorize(&state, org, Permission::ProjectsRead)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let project = load_project(&mut tx, &access, project).await?;
    tx.commit().await?;
    Ok(Json(project))
}

/// Rename a project.
#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", request_body = RenameProject, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    responses((status = 200, description = "Renamed", body = Project), (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such project", body = ErrorEnvelope)))]
async fn rename_project(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
    Json(body): Json<RenameProject>,
) -> Result<Json<Project>, ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth
        .authorize(&state, org, Permission::ProjectsWrite)
        .await?;
    let name = display_name("name", &body.name)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let old = load_project(&mut tx, &access, project).await?;
    audit::record_with(
        sqlx::query("UPDATE projects SET name = $2 WHERE id = $1")
            .bind(project)
            .bind(&name),
        Some(org),
        &access.audit,
        Event::success("project.rename", "project", project)
            .detail(serde_json::json!({"from": old.name, "to": name})),
    )?
    .execute(&mut *tx)
    .await?;
    let updated = load_project(&mut tx, &access, project).await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// Delete a project and its environments.
#[utoipa::path(delete, path = "/v1/orgs/{org}/projects/{project}", tag = "projects", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    responses((status = 204, description = "Deleted"), (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such project", body = ErrorEnvelope)))]
async fn delete_project(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth
        .authorize(&state, org, Permission::ProjectsWrite)
        .await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let old = load_project(&mut tx, &access, project).await?;
    audit::record_with(
        sqlx::query("DELETE FROM projects WHERE id = $1").bind(project),
        Some(org),
        &access.audit,
        Event::success("project.delete", "project", project)
            .detail(serde_json::json!({"slug": old.slug})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn check_approvals(n: i32) -> Result<i32, ApiError> {
    if (0..=10).contains(&n) {
        Ok(n)
    } else {
        Err(ApiError::inputs(
            "required_approvals: must be between 0 and 10",
        ))
    }
}

/// Add an environment to a project.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/environments", tag = "projects", request_body = CreateEnvironment, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    responses((status = 201, description = "Created", body = Environment), (status = 400, description = "Bad name", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such project", body = ErrorEnvelope),
        (status = 409, description = "Name taken", body = ErrorEnvelope)))]
async fn create_environment(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
    Json(body): Json<CreateEnvironment>,
) -> Result<(StatusCode, Json<Environment>), ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth
        .authorize(&state, org, Permission::EnvironmentsWrite)
        .await?;
    let name = Slug::parse("name", &body.name)?;
    let approvals = check_approvals(body.required_approvals.unwrap_or(i32::from(body.protected)))?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    load_project(&mut tx, &access, project).await?;
    let id = Uuid::now_v7();
    audit::record_with(
        sqlx::query("INSERT INTO environments (id, org_id, project_id, name, protected, required_approvals) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(id)
            .bind(org)
            .bind(project)
            .bind(name.as_str())
            .bind(body.protected)
            .bind(approvals),
        Some(org),
        &access.audit,
        Event::success("environment.create", "environment", id)
            .detail(serde_json::json!({"project_id": project, "name": name.as_str(), "protected": body.protected, "required_approvals": approvals})),
    )?
    .execute(&mut *tx)
    .await
    .on_constraint("environments_project_name_key", "an environment with this name already exists in the project")?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Environment {
            id,
            name: name.as_str().to_owned(),
            protected: body.protected,
            required_approvals: approvals,
        }),
    ))
}

/// Change an environment's protection rules.
#[utoipa::path(patch, path = "/v1/orgs/{org}/projects/{project}/environments/{env}", tag = "projects", request_body = UpdateEnvironment, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id"), ("env" = Uuid, Path, description = "Environment id")),
    responses((status = 200, description = "Updated", body = Environment), (status = 403, description = "Not allowed", body = ErrorEnvelope), (status = 404, description = "No such environment", body = ErrorEnvelope)))]
async fn update_environment(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project, env)): Path<(String, String, String)>,
    Json(body): Json<UpdateEnvironment>,
) -> Result<Json<Environment>, ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let env = path_id(&env, "environment")?;
    let access = auth
        .authorize(&state, org, Permission::EnvironmentsWrite)
        .await?;
    if let Some(n) = body.required_approvals {
        check_approvals(n)?;
    }
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    load_project(&mut tx, &access, project).await?;
    let old: Option<(String, bool, i32)> = sqlx::query_as(
        "SELECT name, protected, required_approvals FROM environments WHERE id = $1 AND project_id = $2 FOR UPDATE",
    )
    .bind(env)
    .bind(project)
    .fetch_optional(&mut *tx)
    .await?;
    let (name, old_protected, old_approvals) =
        old.ok_or_else(|| ApiError::not_found("environment"))?;
    let protected = body.protected.unwrap_or(old_protected);
    let approvals = body.required_approvals.unwrap_or(old_approvals);
    audit::record_with(
        sqlx::query(
            "UPDATE environments SET protected = $2, required_approvals = $3 WHERE id = $1",
        )
        .bind(env)
        .bind(protected)
        .bind(approvals),
        Some(org),
        &access.audit,
        Event::success("environment.update", "environment", env).detail(serde_json::json!({
            "from": {"protected": old_protected, "required_approvals": old_approvals},
            "to": {"protected": protected, "required_approvals": approvals}
        })),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(Environment {
        id: env,
        name,
        protected,
        required_approvals: approvals,
    }))
}
