//! Pipeline definitions of a project: create (from YAML, JSON or a shipped template), list,
//! read a version, save a new version; and the shipped templates.
//!
//! A definition is validated whole by `builderos_operator::pipeline::parse` before anything is
//! stored; its first problem answers 422 with the definition's own `ERR_PIPELINE_*` code and
//! `details: {line, path}`. Versions are immutable and numbered from 1; saving one replaces the
//! pipeline's cron triggers in the same transaction.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_operator::pipeline::{self, Definition, DefinitionError, Format, codes, templates};
use builderos_operator::scheduler;
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{OnConstraint, path_id};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::{Auth, OrgAccess};
use crate::domain::Slug;
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_templates))
        .routes(routes!(list_pipelines, create_pipeline))
        .routes(routes!(get_pipeline, update_pipeline))
        .routes(routes!(list_versions))
}

/// The largest definition source accepted, in bytes.
pub const MAX_SOURCE_BYTES: usize = 256 * 1024;

/// The text format of a definition's source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PipelineFormat {
    /// YAML (one document); the default.
    #[default]
    Yaml,
    /// JSON.
    Json,
}

impl PipelineFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Yaml => "yaml",
            Self::Json => "json",
        }
    }

    fn parser(self) -> Format {
        match self {
            Self::Yaml => Format::Yaml,
            Self::Json => Format::Json,
        }
    }
}

/// A shipped pipeline template.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineTemplate {
    /// Its name, for `{"template": …}` when creating a pipeline.
    pub name: String,
    /// What it does.
    pub description: String,
    /// The YAML definition.
    pub source: String,
}

/// Body of `POST …/projects/{project}/pipelines`: a name and either `source` (with `format`)
/// or `template`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePipeline {
    /// Slug, unique in the project.
    pub name: String,
    /// The definition (at most 256 KiB).
    pub source: Option<String>,
    /// The source's format (default `yaml`).
    pub format: Option<PipelineFormat>,
    /// A shipped template to start from instead of `source` (see `GET /v1/pipeline-templates`).
    pub template: Option<String>,
}

/// Body of `PUT …/pipelines/{name}`: the next version's definition.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePipeline {
    /// The definition (at most 256 KiB).
    pub source: String,
    /// The source's format (default `yaml`).
    pub format: Option<PipelineFormat>,
}

/// A pipeline in a list.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PipelineSummary {
    /// Pipeline id.
    pub id: Uuid,
    /// The project it belongs to.
    pub project_id: Uuid,
    /// Slug, unique in the project.
    pub name: String,
    /// The latest version's description.
    pub description: Option<String>,
    /// The latest version.
    pub latest_version: i32,
    /// Who created it (null: a service account).
    pub created_by: Option<Uuid>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its latest version was saved.
    pub updated_at: DateTime<Utc>,
}

/// One version of a pipeline, with its source and the validated definition.
#[derive(Debug, Serialize, ToSchema)]
pub struct PipelineDetail {
    /// Pipeline id.
    pub id: Uuid,
    /// The project it belongs to.
    pub project_id: Uuid,
    /// Slug, unique in the project.
    pub name: String,
    /// The pipeline's latest version.
    pub latest_version: i32,
    /// This version.
    pub version: i32,
    /// The source's format.
    pub format: PipelineFormat,
    /// The source as written.
    pub source: String,
    /// The validated definition as JSON, defaults included: what a run snapshots.
    pub definition: Value,
    /// Who saved this version (null: a service account).
    pub created_by: Option<Uuid>,
    /// When this version was saved.
    pub created_at: DateTime<Utc>,
}

/// A version in a pipeline's history.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct PipelineVersionSummary {
    /// The version.
    pub version: i32,
    /// The source's format.
    pub format: String,
    /// Who saved it.
    pub created_by: Option<Uuid>,
    /// When it was saved.
    pub created_at: DateTime<Utc>,
}

/// Which version of a pipeline to read.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct VersionParam {
    /// A version number (default: the latest).
    pub version: Option<i32>,
}

/// A pipeline row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct PipelineRow {
    pub id: Uuid,
    pub project_id: Uuid,
    pub name: String,
    pub latest_version: i32,
}

/// Maps a refused definition to its 422, carrying the line and path of the problem.
pub(crate) fn definition_error(e: DefinitionError) -> ApiError {
    let code = match e.code {
        codes::PARSE => ErrorCode::PipelineParse,
        codes::SCHEMA => ErrorCode::PipelineSchema,
        codes::DUPLICATE_STEP => ErrorCode::PipelineDuplicateStep,
        codes::UNKNOWN_STEP => ErrorCode::PipelineUnknownStep,
        codes::CYCLE => ErrorCode::PipelineCycle,
        codes::RETRIES => ErrorCode::PipelineRetries,
        codes::TIMEOUT => ErrorCode::PipelineTimeout,
        codes::PROCESSOR => ErrorCode::PipelineProcessor,
        codes::INPUT_REF => ErrorCode::PipelineInputRef,
        codes::CRON_INVALID => ErrorCode::CronInvalid,
        codes::TIMEZONE_INVALID => ErrorCode::TimezoneInvalid,
        // A code the operator added without a counterpart here: still the caller's definition.
        other => {
            tracing::warn!(code = other, "unmapped pipeline definition error code");
            ErrorCode::PipelineSchema
        }
    };
    let message = match (e.line, &e.path) {
        (Some(line), Some(path)) => format!("line {line}, {path}: {}", e.message),
        (Some(line), None) => format!("line {line}: {}", e.message),
        (None, Some(path)) => format!("{path}: {}", e.message),
        (None, None) => e.message.clone(),
    };
    ApiError::new(code, message).with_details(serde_json::json!({"line": e.line, "path": e.path}))
}

/// Checks the size of `source` and parses it.
fn parse_source(source: &str, format: PipelineFormat) -> Result<Definition, ApiError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "source: the definition is {} bytes; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    pipeline::parse(source, format.parser()).map_err(definition_error)
}

/// 404 unless `project` is a project of the caller's org that the caller may see.
pub(crate) async fn check_project(
    conn: &mut PgConnection,
    access: &OrgAccess,
    project: Uuid,
) -> Result<(), ApiError> {
    if access.project_scope.is_some_and(|p| p != project) {
        return Err(ApiError::not_found("project"));
    }
    let found: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM projects WHERE id = $1 AND org_id = $2")
            .bind(project)
            .bind(access.org_id)
            .fetch_optional(&mut *conn)
            .await?;
    found
        .map(|_| ())
        .ok_or_else(|| ApiError::not_found("project"))
}

/// The pipeline `name` of `project`, locked for the transaction when `lock` (saving a version).
pub(crate) async fn find(
    conn: &mut PgConnection,
    org: Uuid,
    project: Uuid,
    name: &str,
    lock: bool,
) -> Result<PipelineRow, ApiError> {
    let sql = if lock {
        "SELECT id, project_id, name, latest_version FROM pipelines \
         WHERE org_id = $1 AND project_id = $2 AND name = $3 FOR UPDATE"
    } else {
        "SELECT id, project_id, name, latest_version FROM pipelines \
         WHERE org_id = $1 AND project_id = $2 AND name = $3"
    };
    let row: Option<PipelineRow> = sqlx::query_as(sql)
        .bind(org)
        .bind(project)
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| ApiError::not_found("pipeline"))
}

/// Authorizes `permission`, opens the org's transaction and checks the project.
async fn open(
    state: &AppState,
    auth: &Auth,
    org: &str,
    project: &str,
    permission: Permission,
) -> Result<(OrgAccess, sqlx::Transaction<'static, sqlx::Postgres>, Uuid), ApiError> {
    let org = path_id(org, "org")?;
    let project = path_id(project, "project")?;
    let access = auth.authorize(state, org, permission).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    check_project(&mut tx, &access, project).await?;
    Ok((access, tx, project))
}

/// What a new version is made of.
struct NewVersion<'a> {
    version: i32,
    definition: &'a Definition,
    source: &'a str,
    format: PipelineFormat,
    created_by: Option<Uuid>,
}

/// Stores a version and makes the pipeline's cron triggers those of its definition.
async fn save_version(
    conn: &mut PgConnection,
    org: Uuid,
    pipeline: Uuid,
    new: &NewVersion<'_>,
) -> Result<(), ApiError> {
    let definition = serde_json::to_value(new.definition).map_err(|e| ApiError::internal(&e))?;
    sqlx::query(
        "INSERT INTO pipeline_versions (pipeline_id, org_id, version, definition, source, format, created_by) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(pipeline)
    .bind(org)
    .bind(new.version)
    .bind(definition)
    .bind(new.source)
    .bind(new.format.as_str())
    .bind(new.created_by)
    .execute(&mut *conn)
    .await?;
    scheduler::replace_triggers(conn, org, pipeline, new.definition, Utc::now()).await?;
    Ok(())
}

/// Version `version` (default: the latest) of `pipeline`.
async fn load_version(
    conn: &mut PgConnection,
    pipeline: &PipelineRow,
    version: Option<i32>,
) -> Result<PipelineDetail, ApiError> {
    type Row = (i32, Value, String, String, Option<Uuid>, DateTime<Utc>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT version, definition, source, format, created_by, created_at FROM pipeline_versions \
         WHERE pipeline_id = $1 AND version = $2",
    )
    .bind(pipeline.id)
    .bind(version.unwrap_or(pipeline.latest_version))
    .fetch_optional(&mut *conn)
    .await?;
    let (version, definition, source, format, created_by, created_at) =
        row.ok_or_else(|| ApiError::not_found("pipeline version"))?;
    Ok(PipelineDetail {
        id: pipeline.id,
        project_id: pipeline.project_id,
        name: pipeline.name.clone(),
        latest_version: pipeline.latest_version,
        version,
        format: if format == "json" {
            PipelineFormat::Json
        } else {
            PipelineFormat::Yaml
        },
        source,
        definition,
        created_by,
        created_at,
    })
}

/// The latest version of `pipeline` with its definition, for starting a run.
///
/// # Errors
/// 500 when the stored definition no longer validates (it was validated when saved).
pub(crate) async fn latest_definition(
    conn: &mut PgConnection,
    pipeline: &PipelineRow,
) -> Result<Definition, ApiError> {
    let stored: Value = sqlx::query_scalar(
        "SELECT definition FROM pipeline_versions WHERE pipeline_id = $1 AND version = $2",
    )
    .bind(pipeline.id)
    .bind(pipeline.latest_version)
    .fetch_one(&mut *conn)
    .await?;
    serde_json::from_value(stored).map_err(|e| ApiError::internal(&e))
}

/// The shipped pipeline templates (feature, hotfix, data).
#[utoipa::path(get, path = "/v1/pipeline-templates", tag = "pipelines", security(("bearer" = [])),
    responses((status = 200, description = "The templates", body = Vec<PipelineTemplate>),
        (status = 401, description = "Not signed in", body = ErrorEnvelope)))]
async fn list_templates(_auth: Auth) -> Json<Vec<PipelineTemplate>> {
    // No org, no permission: the templates ship with the binary and belong to no tenant;
    // any authenticated caller may read them.
    Json(
        templates::all()
            .iter()
            .map(|t| PipelineTemplate {
                name: t.name.to_owned(),
                description: t.description.to_owned(),
                source: t.source.to_owned(),
            })
            .collect(),
    )
}

/// A project's pipelines, by name.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/pipelines", tag = "pipelines", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    responses((status = 200, description = "Pipelines", body = Vec<PipelineSummary>),
        (status = 404, description = "No such project", body = ErrorEnvelope)))]
async fn list_pipelines(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
) -> Result<Json<Vec<PipelineSummary>>, ApiError> {
    let (_, mut tx, project) =
        open(&state, &auth, &org, &project, Permission::PipelinesRead).await?;
    let rows: Vec<PipelineSummary> = sqlx::query_as(
        "SELECT p.id, p.project_id, p.name, v.definition->>'description' AS description, p.latest_version, \
                p.created_by, p.created_at, p.updated_at \
           FROM pipelines p JOIN pipeline_versions v ON v.pipeline_id = p.id AND v.version = p.latest_version \
          WHERE p.project_id = $1 ORDER BY p.name",
    )
    .bind(project)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

/// Create a pipeline (Builder and up) from `source` or a shipped `template`; it starts at
/// version 1.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/pipelines", tag = "pipelines", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id")),
    request_body = CreatePipeline,
    responses((status = 201, description = "Created, at version 1", body = PipelineDetail),
        (status = 400, description = "Bad name, unknown template, or source and template both or neither", body = ErrorEnvelope),
        (status = 403, description = "Needs write:pipelines (Builder)", body = ErrorEnvelope),
        (status = 404, description = "No such project", body = ErrorEnvelope),
        (status = 409, description = "Name taken in the project", body = ErrorEnvelope),
        (status = 413, description = "Source over 256 KiB", body = ErrorEnvelope),
        (status = 422, description = "Invalid definition (`ERR_PIPELINE_*`, `ERR_CRON_INVALID`, `ERR_TIMEZONE_INVALID`; details: line, path)", body = ErrorEnvelope)))]
async fn create_pipeline(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project)): Path<(String, String)>,
    Json(body): Json<CreatePipeline>,
) -> Result<(StatusCode, Json<PipelineDetail>), ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth
        .authorize(&state, org, Permission::PipelinesWrite)
        .await?;
    let name = Slug::parse("name", &body.name)?;
    let (source, format) = match (&body.source, &body.template) {
        (Some(source), None) => (source.clone(), body.format.unwrap_or_default()),
        (None, Some(template)) if body.format.is_none() => {
            let t = templates::get(template).ok_or_else(|| {
                let known: Vec<&str> = templates::all().iter().map(|t| t.name).collect();
                ApiError::inputs(format!(
                    "template: no template `{template}` (known: {})",
                    known.join(", ")
                ))
            })?;
            (t.source.to_owned(), PipelineFormat::Yaml)
        }
        (None, Some(_)) => {
            return Err(ApiError::inputs(
                "format: a template is always YAML; omit format",
            ));
        }
        _ => {
            return Err(ApiError::inputs(
                "give exactly one of `source` and `template`",
            ));
        }
    };
    let definition = parse_source(&source, format)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    check_project(&mut tx, &access, project).await?;
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO pipelines (id, org_id, project_id, name, latest_version, created_by) \
         VALUES ($1, $2, $3, $4, 1, $5)",
    )
    .bind(id)
    .bind(org)
    .bind(project)
    .bind(name.as_str())
    .bind(auth.user_id())
    .execute(&mut *tx)
    .await
    .on_constraint(
        "pipelines_project_name_key",
        "a pipeline with this name already exists in the project",
    )?;
    save_version(
        &mut tx,
        org,
        id,
        &NewVersion {
            version: 1,
            definition: &definition,
            source: &source,
            format,
            created_by: auth.user_id(),
        },
    )
    .await?;
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("pipeline.create", "pipeline", id).detail(serde_json::json!({
            "name": name.as_str(), "project_id": project, "version": 1, "format": format.as_str(),
            "template": body.template, "steps": definition.steps.len(), "triggers": definition.triggers.len(),
        })),
    )
    .await?;
    let row = PipelineRow {
        id,
        project_id: project,
        name: name.as_str().to_owned(),
        latest_version: 1,
    };
    let detail = load_version(&mut tx, &row, None).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(detail)))
}

/// A pipeline's latest version (or `?version=N`), with its source and definition.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/pipelines/{name}", tag = "pipelines", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id"),
        ("name" = String, Path, description = "Pipeline name"), VersionParam),
    responses((status = 200, description = "The version", body = PipelineDetail),
        (status = 404, description = "No such project, pipeline or version", body = ErrorEnvelope)))]
async fn get_pipeline(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project, name)): Path<(String, String, String)>,
    Query(at): Query<VersionParam>,
) -> Result<Json<PipelineDetail>, ApiError> {
    let (access, mut tx, project) =
        open(&state, &auth, &org, &project, Permission::PipelinesRead).await?;
    let pipeline = find(&mut tx, access.org_id, project, &name, false).await?;
    let detail = load_version(&mut tx, &pipeline, at.version).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// Save a new version of a pipeline (Builder and up): the version after the latest. Its cron
/// triggers replace the pipeline's.
#[utoipa::path(put, path = "/v1/orgs/{org}/projects/{project}/pipelines/{name}", tag = "pipelines", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id"),
        ("name" = String, Path, description = "Pipeline name")),
    request_body = UpdatePipeline,
    responses((status = 200, description = "The new version", body = PipelineDetail),
        (status = 403, description = "Needs write:pipelines (Builder)", body = ErrorEnvelope),
        (status = 404, description = "No such project or pipeline", body = ErrorEnvelope),
        (status = 413, description = "Source over 256 KiB", body = ErrorEnvelope),
        (status = 422, description = "Invalid definition (details: line, path)", body = ErrorEnvelope)))]
async fn update_pipeline(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project, name)): Path<(String, String, String)>,
    Json(body): Json<UpdatePipeline>,
) -> Result<Json<PipelineDetail>, ApiError> {
    let (access, mut tx, project) =
        open(&state, &auth, &org, &project, Permission::PipelinesWrite).await?;
    let format = body.format.unwrap_or_default();
    let definition = parse_source(&body.source, format)?;
    let mut pipeline = find(&mut tx, access.org_id, project, &name, true).await?;
    let version = pipeline.latest_version + 1;
    save_version(
        &mut tx,
        access.org_id,
        pipeline.id,
        &NewVersion {
            version,
            definition: &definition,
            source: &body.source,
            format,
            created_by: auth.user_id(),
        },
    )
    .await?;
    audit::record_with(
        sqlx::query("UPDATE pipelines SET latest_version = $2, updated_at = now() WHERE id = $1")
        .bind(pipeline.id)
        .bind(version),
        Some(access.org_id),
        &access.audit,
        Event::success("pipeline.update", "pipeline", pipeline.id).detail(serde_json::json!({
            "name": pipeline.name, "project_id": project, "from": pipeline.latest_version, "to": version,
            "format": format.as_str(), "steps": definition.steps.len(), "triggers": definition.triggers.len(),
        })),
    )?
    .execute(&mut *tx)
    .await?;
    pipeline.latest_version = version;
    let detail = load_version(&mut tx, &pipeline, None).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// A pipeline's versions, newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/projects/{project}/pipelines/{name}/versions", tag = "pipelines", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id"),
        ("name" = String, Path, description = "Pipeline name")),
    responses((status = 200, description = "Versions, newest first", body = Vec<PipelineVersionSummary>),
        (status = 404, description = "No such project or pipeline", body = ErrorEnvelope)))]
async fn list_versions(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project, name)): Path<(String, String, String)>,
) -> Result<Json<Vec<PipelineVersionSummary>>, ApiError> {
    let (access, mut tx, project) =
        open(&state, &auth, &org, &project, Permission::PipelinesRead).await?;
    let pipeline = find(&mut tx, access.org_id, project, &name, false).await?;
    let versions: Vec<PipelineVersionSummary> = sqlx::query_as(
        "SELECT version, format, created_by, created_at FROM pipeline_versions \
         WHERE pipeline_id = $1 ORDER BY version DESC",
    )
    .bind(pipeline.id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(versions))
}
