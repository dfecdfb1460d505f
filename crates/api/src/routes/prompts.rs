//! The shared prompt registry: prompts, versions, labels, fetch by reference, diffs.
//!
//! A `{prompt}` path segment is the prompt's id or its name; a name means the org-wide prompt
//! unless `?project=<id>` names a project (a project-scoped token always means its project).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, Transaction};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{OnConstraint, path_id};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::{Auth, OrgAccess};
use crate::cache::{CachedFetch, RefKey};
use crate::domain::{self, Slug};
use crate::permissions::Permission;
use crate::prompts::diff::SpecDiff;
use crate::prompts::{self, LATEST, NewVersion, PRODUCTION, Prompt, Version, VersionSummary, spec};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_prompts, create_prompt))
        .routes(routes!(get_prompt, update_prompt))
        .routes(routes!(list_versions, publish_version))
        .routes(routes!(get_version))
        .routes(routes!(list_labels))
        .routes(routes!(get_label, move_label, remove_label))
        .routes(routes!(label_history))
        .routes(routes!(fetch_reference))
        .routes(routes!(diff_versions))
}

/// Where a `{prompt}` name is looked up.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Where {
    /// The project whose prompt a name means (default: the org-wide prompt).
    pub project: Option<Uuid>,
}

/// A caller's access and an org-scoped transaction with the prompt found in it.
pub(crate) struct Opened {
    pub access: OrgAccess,
    pub tx: Transaction<'static, Postgres>,
    pub prompt: Prompt,
}

/// Authorizes `permission`, opens the org's transaction and finds `{prompt}`.
pub(crate) async fn open(
    state: &AppState,
    auth: &Auth,
    org: &str,
    prompt: &str,
    project: Option<Uuid>,
    permission: Permission,
) -> Result<Opened, ApiError> {
    let org = path_id(org, "org")?;
    let access = auth.authorize(state, org, permission).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let prompt = prompts::find(&mut tx, org, access.project_scope, prompt, project).await?;
    Ok(Opened { access, tx, prompt })
}

/// A prompt with its labels and versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptDetail {
    /// The prompt.
    #[serde(flatten)]
    pub prompt: Prompt,
    /// Label → version.
    pub labels: BTreeMap<String, String>,
    /// Versions, highest first.
    pub versions: Vec<VersionSummary>,
}

/// A prompt in a list, with its labels.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptListItem {
    /// The prompt.
    #[serde(flatten)]
    pub prompt: Prompt,
    /// Label → version.
    pub labels: BTreeMap<String, String>,
}

/// A page of prompts.
#[derive(Debug, Serialize, ToSchema)]
pub struct PromptPage {
    /// Prompts by name.
    pub items: Vec<PromptListItem>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Search parameters of `GET /v1/orgs/{org}/prompts`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Search {
    /// Part of the name.
    pub q: Option<String>,
    /// A tag the prompt has.
    pub tag: Option<String>,
    /// A label the prompt has (e.g. `production`).
    pub label: Option<String>,
    /// Only this project's prompts (`none`: only org-wide ones).
    pub project: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Body of `POST /v1/orgs/{org}/prompts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePrompt {
    /// Slug, unique in the org (or in the project).
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Tags for search (slugs).
    #[serde(default)]
    pub tags: Vec<String>,
    /// The project it belongs to (default: org-wide).
    pub project_id: Option<Uuid>,
}

/// Body of `PATCH …/prompts/{prompt}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePrompt {
    /// New description.
    pub description: Option<String>,
    /// New tags (replacing the old ones).
    pub tags: Option<Vec<String>>,
    /// New owner: a member's user id.
    pub owner_id: Option<Uuid>,
}

/// Body of `POST …/prompts/{prompt}/versions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishVersion {
    /// The semver, strictly greater than every earlier version.
    pub version: String,
    /// What changed (required).
    #[serde(default)]
    pub changelog: String,
    /// The spec, YAML (see docs/prompts.md).
    pub spec: String,
}

/// A newly published version.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    /// The version.
    #[serde(flatten)]
    pub version: VersionSummary,
    /// Declared variables the template never uses.
    pub unused_variables: Vec<String>,
}

/// A label.
#[derive(Debug, Serialize, ToSchema)]
pub struct Label {
    /// Its name.
    pub name: String,
    /// The version it points at.
    pub version: String,
    /// When it last moved.
    pub updated_at: DateTime<Utc>,
}

/// Body of `PUT …/labels/{label}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveLabel {
    /// The version to point at.
    pub version: String,
    /// Moving `production` onto an eval regression needs a reason; it is recorded.
    pub override_reason: Option<String>,
}

/// A label after a move.
#[derive(Debug, Serialize, ToSchema)]
pub struct LabelMoved {
    /// The label.
    pub label: String,
    /// The version it pointed at before (null: new label).
    pub from: Option<String>,
    /// The version it points at now.
    pub to: String,
    /// Eval cases that regress from `from` to `to` (moved with an override).
    pub regressed_cases: Vec<String>,
}

/// One move of a label.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct LabelMove {
    /// The label.
    pub label: String,
    /// Version before (null: created).
    pub from_version: Option<String>,
    /// Version after (null: removed).
    pub to_version: Option<String>,
    /// `user`, `token` or `system`.
    pub actor_type: String,
    /// The actor's id.
    pub actor_id: Option<Uuid>,
    /// The actor's display name.
    pub actor_name: String,
    /// The reason given to override an eval regression.
    pub override_reason: Option<String>,
    /// When.
    pub moved_at: DateTime<Utc>,
}

/// Parameters of the label history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Only this label's moves.
    pub label: Option<String>,
    /// The project whose prompt a name means.
    pub project: Option<Uuid>,
    /// At most this many moves, newest first (1-1000, default 100).
    pub limit: Option<i64>,
}

/// A version fetched by reference.
#[derive(Debug, Serialize, ToSchema)]
pub struct Fetched {
    /// The prompt's id.
    pub prompt_id: Uuid,
    /// The prompt's name.
    pub prompt: String,
    /// The label it was fetched by (null: by version).
    pub label: Option<String>,
    /// The version.
    #[serde(flatten)]
    pub version: Version,
}

/// Parameters of the diff.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DiffParams {
    /// The older side: a version or a label.
    pub from: String,
    /// The newer side: a version or a label.
    pub to: String,
    /// The project whose prompt a name means.
    pub project: Option<Uuid>,
}

/// The difference between two versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionDiff {
    /// The older version.
    pub from: String,
    /// The newer version.
    pub to: String,
    /// Content hashes (from, to).
    pub content_hashes: (String, String),
    /// Template, variables and metadata changes.
    #[serde(flatten)]
    pub diff: SpecDiff,
}

fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    if tags.len() > 20 {
        return Err(ApiError::inputs("tags: at most 20"));
    }
    for t in tags {
        Slug::parse("tags", t)?;
    }
    Ok(())
}

fn check_description(d: &str) -> Result<(), ApiError> {
    if d.chars().count() > 2000 {
        return Err(ApiError::inputs("description: at most 2000 characters"));
    }
    Ok(())
}

/// List and search prompts, by name.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), Search),
    responses((status = 200, description = "A page of prompts", body = PromptPage),
        (status = 400, description = "Bad parameter", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_prompts(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(search): Query<Search>,
) -> Result<Json<PromptPage>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::PromptsRead).await?;
    let limit = search.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::inputs("limit: must be 1-200"));
    }
    let project: Option<Option<Uuid>> = match search.project.as_deref() {
        None => None,
        Some("none") => Some(None),
        Some(p) => {
            Some(Some(Uuid::parse_str(p).map_err(|_| {
                ApiError::inputs("project: a project id or `none`")
            })?))
        }
    };
    let after: Option<(String, Uuid)> = match &search.cursor {
        None => None,
        Some(c) => {
            let key = domain::decode_cursor(org, c).map_err(ApiError::inputs)?;
            let (name, id) = key
                .rsplit_once('/')
                .and_then(|(n, i)| Some((n.to_owned(), Uuid::parse_str(i).ok()?)))
                .ok_or_else(|| ApiError::inputs(domain::BAD_CURSOR))?;
            Some((name, id))
        }
    };
    let label = search
        .label
        .as_deref()
        .map(prompts::parse_label)
        .transpose()?;
    let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
        "SELECT {} FROM prompts p WHERE p.org_id = ",
        prompts::PROMPT_COLUMNS
            .split(", ")
            .map(|c| format!("p.{c}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    qb.push_bind(org);
    if let Some(scope) = access.project_scope {
        qb.push(" AND p.project_id = ").push_bind(scope);
    }
    match project {
        Some(Some(p)) => {
            qb.push(" AND p.project_id = ").push_bind(p);
        }
        Some(None) => {
            qb.push(" AND p.project_id IS NULL");
        }
        None => {}
    }
    if let Some(q) = search.q.as_deref().filter(|q| !q.is_empty()) {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        qb.push(" AND p.name LIKE ")
            .push_bind(format!("%{escaped}%"));
    }
    if let Some(tag) = &search.tag {
        qb.push(" AND p.tags @> ARRAY[")
            .push_bind(tag.clone())
            .push("]::text[]");
    }
    if let Some(label) = label {
        qb.push(
            " AND EXISTS (SELECT 1 FROM prompt_labels l WHERE l.prompt_id = p.id AND l.name = ",
        )
        .push_bind(label.to_owned())
        .push(")");
    }
    if let Some((name, id)) = after {
        qb.push(" AND (p.name, p.id) > (")
            .push_bind(name)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(" ORDER BY p.name, p.id LIMIT ")
        .push_bind(limit + 1);
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let mut rows: Vec<Prompt> = qb.build_query_as().fetch_all(&mut *tx).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(50));
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id).collect();
    let label_rows: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT l.prompt_id, l.name, v.version FROM prompt_labels l \
         JOIN prompt_versions v ON v.id = l.version_id WHERE l.prompt_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let next_cursor = more
        .then(|| {
            rows.last()
                .map(|p| domain::encode_cursor(org, format!("{}/{}", p.name, p.id)))
        })
        .flatten();
    let items = rows
        .into_iter()
        .map(|prompt| PromptListItem {
            labels: label_rows
                .iter()
                .filter(|(id, _, _)| *id == prompt.id)
                .map(|(_, l, v)| (l.clone(), v.clone()))
                .collect(),
            prompt,
        })
        .collect();
    Ok(Json(PromptPage { items, next_cursor }))
}

/// Create a prompt (Builder and up); versions are published to it next.
#[utoipa::path(post, path = "/v1/orgs/{org}/prompts", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    request_body = CreatePrompt,
    responses((status = 201, description = "Created", body = Prompt),
        (status = 400, description = "Invalid input", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 409, description = "Name taken", body = ErrorEnvelope)))]
async fn create_prompt(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<CreatePrompt>,
) -> Result<(StatusCode, Json<Prompt>), ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::PromptsPublish)
        .await?;
    let name = Slug::parse("name", &body.name)?;
    check_description(&body.description)?;
    check_tags(&body.tags)?;
    let project = match (access.project_scope, body.project_id) {
        (Some(scope), Some(p)) if p != scope => {
            return Err(ApiError::inputs("project_id: no such project in this org"));
        }
        (Some(scope), _) => Some(scope),
        (None, p) => p,
    };
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    if let Some(project) = project {
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM projects WHERE id = $1 AND org_id = $2")
                .bind(project)
                .bind(org)
                .fetch_optional(&mut *tx)
                .await?;
        if exists.is_none() {
            return Err(ApiError::inputs("project_id: no such project in this org"));
        }
    }
    let prompt = insert_prompt(
        &mut tx,
        org,
        project,
        name.as_str(),
        &body.description,
        &body.tags,
        auth.user_id(),
    )
    .await?;
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("prompt.create", "prompt", prompt.id)
            .detail(serde_json::json!({"name": prompt.name, "project_id": project})),
    )
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(prompt)))
}

/// Inserts a prompt; a taken name is 409.
pub(crate) async fn insert_prompt(
    conn: &mut sqlx::PgConnection,
    org: Uuid,
    project: Option<Uuid>,
    name: &str,
    description: &str,
    tags: &[String],
    owner: Option<Uuid>,
) -> Result<Prompt, ApiError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO prompts (id, org_id, project_id, name, description, tags, owner_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {}",
        prompts::PROMPT_COLUMNS
    )))
    .bind(Uuid::now_v7())
    .bind(org)
    .bind(project)
    .bind(name)
    .bind(description)
    .bind(tags)
    .bind(owner)
    .fetch_one(&mut *conn)
    .await
    .on_constraint(
        "prompts_org_project_name_key",
        "a prompt with this name already exists here",
    )
}

/// A prompt with its labels and versions.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    responses((status = 200, description = "The prompt", body = PromptDetail),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn get_prompt(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
) -> Result<Json<PromptDetail>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    let labels = prompts::labels(&mut tx, prompt.id).await?;
    let versions = prompts::versions(&mut tx, prompt.id).await?;
    tx.commit().await?;
    Ok(Json(PromptDetail {
        prompt,
        labels,
        versions,
    }))
}

/// Change a prompt's description, tags or owner (Builder and up).
#[utoipa::path(patch, path = "/v1/orgs/{org}/prompts/{prompt}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    request_body = UpdatePrompt,
    responses((status = 200, description = "Updated", body = Prompt),
        (status = 400, description = "Invalid input", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn update_prompt(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
    Json(body): Json<UpdatePrompt>,
) -> Result<Json<Prompt>, ApiError> {
    let Opened {
        access,
        mut tx,
        prompt,
    } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsPublish,
    )
    .await?;
    if let Some(d) = &body.description {
        check_description(d)?;
    }
    if let Some(t) = &body.tags {
        check_tags(t)?;
    }
    if let Some(owner) = body.owner_id {
        let member: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM memberships WHERE org_id = $1 AND user_id = $2",
        )
        .bind(prompt.org_id)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        if member.is_none() {
            return Err(ApiError::inputs("owner_id: not a member of this org"));
        }
    }
    let updated: Prompt = audit::record_with(
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE prompts SET description = coalesce($2, description), tags = coalesce($3, tags), \
             owner_id = coalesce($4, owner_id), updated_at = now() WHERE id = $1 RETURNING {}",
            prompts::PROMPT_COLUMNS
        )))
        .bind(prompt.id)
        .bind(&body.description)
        .bind(&body.tags)
        .bind(body.owner_id),
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.update", "prompt", prompt.id).detail(serde_json::json!({
            "description_changed": body.description.is_some(), "tags": body.tags, "owner_id": body.owner_id
        })),
    )?
    .try_map(audit::from_row)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(updated))
}

/// A prompt's versions, highest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/versions", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    responses((status = 200, description = "Versions", body = Vec<VersionSummary>),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn list_versions(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
) -> Result<Json<Vec<VersionSummary>>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    let versions = prompts::versions(&mut tx, prompt.id).await?;
    tx.commit().await?;
    Ok(Json(versions))
}

/// Publish a version (Builder and up): a semver strictly greater than every earlier one, a
/// changelog, and the YAML spec. `latest` moves to it.
#[utoipa::path(post, path = "/v1/orgs/{org}/prompts/{prompt}/versions", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    request_body = PublishVersion,
    responses((status = 201, description = "Published", body = Published),
        (status = 400, description = "Not a semver, no changelog", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt", body = ErrorEnvelope),
        (status = 409, description = "Version not greater", body = ErrorEnvelope),
        (status = 413, description = "Spec too large", body = ErrorEnvelope),
        (status = 422, description = "Invalid spec", body = ErrorEnvelope)))]
async fn publish_version(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
    Json(body): Json<PublishVersion>,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    // Input first: a bad request costs no lock.
    let version = prompts::parse_version(&body.version)?;
    if body.changelog.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::ChangelogRequired,
            "changelog: say what changed in this version",
        ));
    }
    let spec = spec::parse(&body.spec, state.prompt_limits.max_spec_bytes)?;
    let Opened {
        access,
        mut tx,
        prompt,
    } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsPublish,
    )
    .await?;
    prompts::lock(&mut tx, &prompt).await?;
    let summary = prompts::publish(
        &mut tx,
        &prompt,
        NewVersion {
            version,
            changelog: &body.changelog,
            spec_yaml: &body.spec,
            spec: &spec,
            author: author(&access),
            source: "published",
        },
        &access.audit,
    )
    .await?;
    audit::record(
        &mut tx,
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.version.publish", "prompt", prompt.id).detail(serde_json::json!({
            "name": prompt.name, "version": summary.version, "content_hash": summary.content_hash
        })),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(Published {
            version: summary,
            unused_variables: spec.unused_variables(),
        }),
    ))
}

/// The author of what `access` publishes: the user (or the token's user) and a display name.
pub(crate) fn author(access: &OrgAccess) -> (Option<Uuid>, String) {
    let (kind, id, name) = prompts::actor_columns(&access.audit);
    (if kind == "user" { id } else { None }, name)
}

/// A fetched version as a response: its JSON and an ETag from the content hash and version.
fn cacheable(fetched: &Fetched) -> Result<CachedFetch, ApiError> {
    let summary = &fetched.version.summary;
    Ok(CachedFetch {
        etag: format!(
            "\"{}-{}\"",
            summary.content_hash.trim_start_matches("sha256:"),
            summary.version
        ),
        body: serde_json::to_vec(fetched)
            .map_err(|e| ApiError::internal(&e))?
            .into(),
    })
}

/// The response for a fetched version, 304 when the client already has it.
fn version_response(headers: &HeaderMap, fetched: &CachedFetch) -> Response {
    let etag = fetched.etag.as_str();
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            fetched.body.clone(),
        )
            .into_response()
    };
    if let Ok(value) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    // Labels move: clients may keep a copy but must revalidate.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

/// One version with its spec. Carries an ETag; `If-None-Match` gets 304.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/versions/{version}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"),
        ("version" = String, Path, description = "A semver"), Where),
    responses((status = 200, description = "The version", body = Fetched),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such prompt or version", body = ErrorEnvelope)))]
async fn get_version(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt, version)): Path<(String, String, String)>,
    Query(at): Query<Where>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    prompts::parse_version(&version)?;
    let v = prompts::resolve(&mut tx, &prompt, &version).await?;
    tx.commit().await?;
    let fetched = cacheable(&Fetched {
        prompt_id: prompt.id,
        prompt: prompt.name,
        label: None,
        version: v,
    })?;
    Ok(version_response(&headers, &fetched))
}

/// A prompt's labels.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/labels", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    responses((status = 200, description = "Labels", body = Vec<Label>),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn list_labels(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
) -> Result<Json<Vec<Label>>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT l.name, v.version, l.updated_at FROM prompt_labels l \
         JOIN prompt_versions v ON v.id = l.version_id WHERE l.prompt_id = $1 ORDER BY l.name",
    )
    .bind(prompt.id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .map(|(name, version, updated_at)| Label {
                name,
                version,
                updated_at,
            })
            .collect(),
    ))
}

/// The version a label points at, with its spec. An unknown label is 404
/// `ERR_LABEL_NOT_FOUND`, never a fallback. Carries an ETag; `If-None-Match` gets 304.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/labels/{label}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"),
        ("label" = String, Path, description = "Label"), Where),
    responses((status = 200, description = "The version", body = Fetched),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such prompt or label", body = ErrorEnvelope)))]
async fn get_label(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt, label)): Path<(String, String, String)>,
    Query(at): Query<Where>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let label = prompts::parse_label(&label)?.to_owned();
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    let v = prompts::resolve(&mut tx, &prompt, &label).await?;
    tx.commit().await?;
    let fetched = cacheable(&Fetched {
        prompt_id: prompt.id,
        prompt: prompt.name,
        label: Some(label),
        version: v,
    })?;
    Ok(version_response(&headers, &fetched))
}

/// Fetch by reference: `name@1.4.0`, `name@production`, or `name` (= `name@latest`). The hot
/// path agents use. Carries an ETag; `If-None-Match` gets 304.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompt-refs/{reference}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("reference" = String, Path, description = "`name@version`, `name@label` or `name`"), Where),
    responses((status = 200, description = "The version", body = Fetched),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Malformed reference", body = ErrorEnvelope),
        (status = 404, description = "No such prompt, version or label", body = ErrorEnvelope)))]
async fn fetch_reference(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, reference)): Path<(String, String)>,
    Query(at): Query<Where>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (name, at_ref) = reference.split_once('@').unwrap_or((&reference, LATEST));
    let is_label = !(at_ref.starts_with(|c: char| c.is_ascii_digit()) && at_ref.contains('.'));
    if is_label {
        prompts::parse_label(at_ref)?;
    } else {
        prompts::parse_version(at_ref)?;
    }
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::PromptsRead).await?;
    // The hot path: answered from this replica's cache when it can be (see crate::cache).
    let key: RefKey = (org, access.project_scope, at.project, reference.clone());
    if let Some(hit) = state.cache.prompt_ref(&key) {
        return Ok(version_response(&headers, &hit));
    }
    let ticket = state.cache.ticket();
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let prompt = prompts::find(&mut tx, org, access.project_scope, name, at.project).await?;
    let v = prompts::resolve(&mut tx, &prompt, at_ref).await?;
    tx.commit().await?;
    let fetched = cacheable(&Fetched {
        prompt_id: prompt.id,
        prompt: prompt.name,
        label: is_label.then(|| at_ref.to_owned()),
        version: v,
    })?;
    let response = version_response(&headers, &fetched);
    state.cache.put_prompt_ref(ticket, key, fetched);
    Ok(response)
}

/// Move a label to a version (creating it if new). `production` needs `promote:prompts`
/// (Admin) and passes the eval gate: a version whose eval cases regress against the current
/// production version needs `override_reason`. `latest` moves only by publishing. Every move is
/// audited with its from/to versions; moving back is the rollback.
#[utoipa::path(put, path = "/v1/orgs/{org}/prompts/{prompt}/labels/{label}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"),
        ("label" = String, Path, description = "Label"), Where),
    request_body = MoveLabel,
    responses((status = 200, description = "Moved", body = LabelMoved),
        (status = 400, description = "Bad label or version", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt or version", body = ErrorEnvelope),
        (status = 409, description = "Reserved label, or an eval regression without override", body = ErrorEnvelope)))]
async fn move_label(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt, label)): Path<(String, String, String)>,
    Query(at): Query<Where>,
    Json(body): Json<MoveLabel>,
) -> Result<Json<LabelMoved>, ApiError> {
    let label = prompts::parse_label(&label)?.to_owned();
    reserved(&label)?;
    let version = prompts::parse_version(&body.version)?;
    let reason = body
        .override_reason
        .as_deref()
        .map(str::trim)
        .filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > 500) {
        return Err(ApiError::inputs("override_reason: at most 500 characters"));
    }
    let permission = if label == PRODUCTION {
        Permission::PromptsPromote
    } else {
        Permission::PromptsPublish
    };
    let Opened {
        access,
        mut tx,
        prompt,
    } = open(&state, &auth, &org, &prompt, at.project, permission).await?;
    prompts::lock(&mut tx, &prompt).await?;
    let to = prompts::resolve(&mut tx, &prompt, &version.to_string()).await?;
    let mut regressed = Vec::new();
    if label == PRODUCTION
        && let Ok(current) = prompts::resolve(&mut tx, &prompt, PRODUCTION).await
    {
        regressed =
            super::prompt_evals::regressions(&mut tx, prompt.id, current.summary.id, to.summary.id)
                .await?;
        if !regressed.is_empty() && reason.is_none() {
            return Err(ApiError::new(
                ErrorCode::EvalRegression,
                format!(
                    "{} eval case(s) pass on {} and fail on {}: {}; give an override_reason to move production anyway",
                    regressed.len(),
                    current.summary.version,
                    to.summary.version,
                    regressed.join(", ")
                ),
            )
            .with_details(serde_json::json!({"regressed_cases": regressed})));
        }
    }
    let override_reason = (!regressed.is_empty()).then_some(reason).flatten();
    let from = prompts::set_label(
        &mut tx,
        &prompt,
        &label,
        &to.summary,
        &access.audit,
        override_reason,
    )
    .await?;
    audit::record(
        &mut tx,
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.label.move", "prompt", prompt.id).detail(serde_json::json!({
            "name": prompt.name, "label": label, "from": from, "to": to.summary.version,
            "override": override_reason.is_some(), "override_reason": override_reason,
            "regressed_cases": regressed,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(LabelMoved {
        label,
        from,
        to: to.summary.version,
        regressed_cases: regressed,
    }))
}

fn reserved(label: &str) -> Result<(), ApiError> {
    if label == LATEST {
        return Err(ApiError::new(
            ErrorCode::LabelReserved,
            "`latest` always points at the highest version; it moves when a version is published",
        ));
    }
    Ok(())
}

/// Remove a label (`production` needs `promote:prompts`; `latest` can't be removed).
#[utoipa::path(delete, path = "/v1/orgs/{org}/prompts/{prompt}/labels/{label}", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"),
        ("label" = String, Path, description = "Label"), Where),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt or label", body = ErrorEnvelope),
        (status = 409, description = "Reserved label", body = ErrorEnvelope)))]
async fn remove_label(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt, label)): Path<(String, String, String)>,
    Query(at): Query<Where>,
) -> Result<StatusCode, ApiError> {
    let label = prompts::parse_label(&label)?.to_owned();
    reserved(&label)?;
    let permission = if label == PRODUCTION {
        Permission::PromptsPromote
    } else {
        Permission::PromptsPublish
    };
    let Opened {
        access,
        mut tx,
        prompt,
    } = open(&state, &auth, &org, &prompt, at.project, permission).await?;
    prompts::lock(&mut tx, &prompt).await?;
    let from = prompts::remove_label(&mut tx, &prompt, &label, &access.audit).await?;
    audit::record(
        &mut tx,
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.label.remove", "prompt", prompt.id).detail(serde_json::json!({
            "name": prompt.name, "label": label, "from": from
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who moved which label from which version to which, and when; newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/label-history", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), HistoryParams),
    responses((status = 200, description = "Moves, newest first", body = Vec<LabelMove>),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn label_history(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(params): Query<HistoryParams>,
) -> Result<Json<Vec<LabelMove>>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::inputs("limit: must be 1-1000"));
    }
    let label = params
        .label
        .as_deref()
        .map(prompts::parse_label)
        .transpose()?;
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        params.project,
        Permission::PromptsRead,
    )
    .await?;
    let moves: Vec<LabelMove> = sqlx::query_as(
        "SELECT label, from_version, to_version, actor_type, actor_id, actor_name, override_reason, moved_at \
         FROM prompt_label_moves WHERE prompt_id = $1 AND ($2::text IS NULL OR label = $2) \
         ORDER BY moved_at DESC, id DESC LIMIT $3",
    )
    .bind(prompt.id)
    .bind(label)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(moves))
}

/// Diff two versions (each a version or a label): a unified diff of the template and the
/// structured changes of variables and metadata.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/diff", tag = "prompts", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), DiffParams),
    responses((status = 200, description = "The diff", body = VersionDiff),
        (status = 400, description = "Bad reference", body = ErrorEnvelope),
        (status = 404, description = "No such prompt, version or label", body = ErrorEnvelope)))]
async fn diff_versions(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(params): Query<DiffParams>,
) -> Result<Json<VersionDiff>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        params.project,
        Permission::PromptsRead,
    )
    .await?;
    let from = prompts::resolve(&mut tx, &prompt, &params.from).await?;
    let to = prompts::resolve(&mut tx, &prompt, &params.to).await?;
    tx.commit().await?;
    let diff = prompts::diff::diff(
        &from.spec,
        &to.spec,
        &format!("{}@{}", prompt.name, from.summary.version),
        &format!("{}@{}", prompt.name, to.summary.version),
    );
    Ok(Json(VersionDiff {
        from: from.summary.version,
        to: to.summary.version,
        content_hashes: (from.summary.content_hash, to.summary.content_hash),
        diff,
    }))
}
