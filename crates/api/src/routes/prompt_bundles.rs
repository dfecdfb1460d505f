//! Prompt bundles: export one prompt or all prompts of a project (or the org-wide ones) as
//! `promptpack.zip`; import a bundle into another org, all or nothing.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::path_id;
use super::prompts::{Opened, Where, author, insert_prompt, open};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::Auth;
use crate::permissions::Permission;
use crate::prompts::bundle::{self, BundledPrompt, BundledVersion, ExportPrompt};
use crate::prompts::{self, LATEST, NewVersion, PRODUCTION, Prompt};

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(export_prompt)).merge(
        // The bundle cap is enforced by the handler, not the general body limit.
        OpenApiRouter::new()
            .routes(routes!(export_bundle, import_bundle))
            .layer(DefaultBodyLimit::disable()),
    )
}

/// Which prompts a bundle covers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BundleScope {
    /// A project's prompts (default: the org-wide prompts).
    pub project: Option<Uuid>,
}

/// What an import did.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ImportReport {
    /// Prompts created by the import.
    pub created_prompts: Vec<String>,
    /// Versions added, as `name@version`.
    pub imported_versions: Vec<String>,
    /// Versions already present with the same content, as `name@version`.
    pub unchanged_versions: Vec<String>,
    /// Labels set, as `name:label@version`.
    pub labels_set: Vec<String>,
    /// Labels not applied, with the reason.
    pub labels_skipped: Vec<String>,
}

/// One refused version of an import.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportConflict {
    /// The prompt.
    pub prompt: String,
    /// The version.
    pub version: String,
    /// Why.
    pub reason: String,
}

async fn export_of(conn: &mut PgConnection, prompt: &Prompt) -> Result<ExportPrompt, ApiError> {
    let rows: Vec<(
        String,
        String,
        String,
        chrono::DateTime<chrono::Utc>,
        String,
        String,
    )> = sqlx::query_as(
        "SELECT version, changelog, author_name, created_at, content_hash, spec_yaml \
             FROM prompt_versions WHERE prompt_id = $1",
    )
    .bind(prompt.id)
    .fetch_all(&mut *conn)
    .await?;
    let mut specs: Vec<(semver::Version, BundledVersion, String)> = rows
        .into_iter()
        .filter_map(
            |(version, changelog, author, created_at, content_hash, yaml)| {
                Some((
                    semver::Version::parse(&version).ok()?,
                    BundledVersion {
                        version,
                        changelog,
                        author,
                        published_at: crate::audit::timestamp(created_at),
                        content_hash,
                        file: String::new(),
                        size: 0,
                        sha256: String::new(),
                    },
                    yaml,
                ))
            },
        )
        .collect();
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(ExportPrompt {
        meta: BundledPrompt {
            name: prompt.name.clone(),
            description: prompt.description.clone(),
            tags: prompt.tags.clone(),
            labels: prompts::labels(conn, prompt.id).await?,
            versions: Vec::new(),
        },
        specs: specs.into_iter().map(|(_, v, y)| (v, y)).collect(),
    })
}

fn zip_response(bytes: Vec<u8>, name: &str) -> Response {
    let mut response = Body::from(bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}.promptpack.zip\""))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// Export one prompt — all versions and labels — as `promptpack.zip`.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/bundle", tag = "prompt bundles", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    responses((status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn export_prompt(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
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
    let export = export_of(&mut tx, &prompt).await?;
    tx.commit().await?;
    Ok(zip_response(bundle::write(vec![export])?, &prompt.name))
}

/// Export every prompt of a project (or the org-wide prompts) as `promptpack.zip`.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompt-bundle", tag = "prompt bundles", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), BundleScope),
    responses((status = 200, description = "The bundle", content_type = "application/zip", body = Vec<u8>),
        (status = 404, description = "No such org or project", body = ErrorEnvelope)))]
async fn export_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(scope): Query<BundleScope>,
) -> Result<Response, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::PromptsRead).await?;
    let project = project_of(&access, scope.project)?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    check_project(&mut tx, org, project).await?;
    let list: Vec<Prompt> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {} FROM prompts WHERE org_id = $1 AND project_id IS NOT DISTINCT FROM $2 ORDER BY name",
        prompts::PROMPT_COLUMNS
    )))
    .bind(org)
    .bind(project)
    .fetch_all(&mut *tx)
    .await?;
    let mut exports = Vec::with_capacity(list.len());
    for p in &list {
        exports.push(export_of(&mut tx, p).await?);
    }
    tx.commit().await?;
    let name = project.map_or_else(|| "org".to_owned(), |p| p.to_string());
    Ok(zip_response(bundle::write(exports)?, &name))
}

fn project_of(
    access: &crate::auth::OrgAccess,
    asked: Option<Uuid>,
) -> Result<Option<Uuid>, ApiError> {
    match (access.project_scope, asked) {
        (Some(scope), Some(p)) if p != scope => Err(ApiError::not_found("project")),
        (Some(scope), _) => Ok(Some(scope)),
        (None, p) => Ok(p),
    }
}

async fn check_project(
    conn: &mut PgConnection,
    org: Uuid,
    project: Option<Uuid>,
) -> Result<(), ApiError> {
    if let Some(project) = project {
        let exists: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM projects WHERE id = $1 AND org_id = $2")
                .bind(project)
                .bind(org)
                .fetch_optional(&mut *conn)
                .await?;
        if exists.is_none() {
            return Err(ApiError::not_found("project"));
        }
    }
    Ok(())
}

/// Import a `promptpack.zip` (body `application/zip`, up to the configured bundle cap) into
/// the org-wide prompts or a project's (Builder and up). All or nothing: the archive, every
/// hash and every spec are checked first; a version that exists with other content, or that
/// is lower than the prompt's highest version, is a conflict and nothing is imported (409
/// `ERR_BUNDLE_CONFLICT` with the conflicts in `details`). Identical versions are skipped.
/// Labels are applied to prompts the import creates; `production` only when the caller may
/// promote.
#[utoipa::path(post, path = "/v1/orgs/{org}/prompt-bundle", tag = "prompt bundles", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), BundleScope),
    request_body(content = Vec<u8>, content_type = "application/zip", description = "A promptpack.zip"),
    responses((status = 200, description = "Imported", body = ImportReport),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 409, description = "Conflicts; nothing imported", body = ErrorEnvelope),
        (status = 413, description = "Bundle too large", body = ErrorEnvelope),
        (status = 415, description = "Not application/zip", body = ErrorEnvelope),
        (status = 422, description = "Invalid bundle or hash mismatch", body = ErrorEnvelope)))]
async fn import_bundle(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(scope): Query<BundleScope>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth
        .authorize(&state, org, Permission::PromptsPublish)
        .await?;
    let zip_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.split(';').next().unwrap_or_default().trim();
            v.eq_ignore_ascii_case("application/zip")
                || v.eq_ignore_ascii_case("application/octet-stream")
        });
    if !zip_type {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "send the bundle with content type application/zip",
        ));
    }
    let cap = state.prompt_limits.max_bundle_bytes;
    let bytes = axum::body::to_bytes(body, cap).await.map_err(|_| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the bundle exceeds the {cap}-byte limit"),
        )
    })?;
    let max_spec = state.prompt_limits.max_spec_bytes;
    let read = tokio::task::spawn_blocking(move || bundle::read(&bytes, max_spec))
        .await
        .map_err(|e| ApiError::internal(&e))??;
    let project = project_of(&access, scope.project)?;
    let may_promote = auth.may(&state, org, Permission::PromptsPromote).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    check_project(&mut tx, org, project).await?;
    let mut report = ImportReport::default();
    let mut conflicts = Vec::new();
    let who = author(&access);
    for item in read {
        let name = item.meta.name.clone();
        let existing = match prompts::find(&mut tx, org, project, &name, project).await {
            Ok(p) => Some(p),
            Err(e) if e.code == ErrorCode::NotFound => None,
            Err(e) => return Err(e),
        };
        let (prompt, created) = match existing {
            Some(p) => (p, false),
            None => {
                let p = insert_prompt(
                    &mut tx,
                    org,
                    project,
                    &name,
                    &item.meta.description,
                    &item.meta.tags,
                    access_user(&who),
                )
                .await?;
                report.created_prompts.push(name.clone());
                (p, true)
            }
        };
        prompts::lock(&mut tx, &prompt).await?;
        let present: BTreeMap<String, String> = prompts::versions(&mut tx, prompt.id)
            .await?
            .into_iter()
            .map(|v| (v.version, v.content_hash))
            .collect();
        let mut highest = present
            .keys()
            .filter_map(|v| semver::Version::parse(v).ok())
            .max();
        for ((version, yaml, spec), meta) in item.versions.iter().zip(sorted_meta(&item.meta)) {
            let key = version.to_string();
            if let Some(hash) = present.get(&key) {
                if *hash == spec.content_hash() {
                    report.unchanged_versions.push(format!("{name}@{key}"));
                } else {
                    conflicts.push(ImportConflict {
                        prompt: name.clone(),
                        version: key,
                        reason: "this version exists here with different content".to_owned(),
                    });
                }
                continue;
            }
            if highest.as_ref().is_some_and(|h| version <= h) {
                conflicts.push(ImportConflict {
                    prompt: name.clone(),
                    version: key,
                    reason: format!(
                        "lower than {}, the highest version here; versions only go up",
                        highest
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                });
                continue;
            }
            if !conflicts.is_empty() {
                // Keep checking for more conflicts, but don't write once one is known.
                highest = Some(version.clone());
                continue;
            }
            prompts::publish(
                &mut tx,
                &prompt,
                NewVersion {
                    version: version.clone(),
                    changelog: &meta.changelog,
                    spec_yaml: yaml,
                    spec,
                    author: (None, meta.author.clone()),
                    source: "imported",
                },
                &access.audit,
            )
            .await?;
            highest = Some(version.clone());
            report.imported_versions.push(format!("{name}@{key}"));
        }
        for (label, target) in &item.meta.labels {
            if label == LATEST {
                continue;
            }
            if !created {
                report.labels_skipped.push(format!(
                    "{name}:{label}@{target} (the prompt already existed here)"
                ));
                continue;
            }
            if label == PRODUCTION && !may_promote {
                report
                    .labels_skipped
                    .push(format!("{name}:{label}@{target} (needs promote:prompts)"));
                continue;
            }
            if !conflicts.is_empty() {
                continue;
            }
            let to = prompts::resolve(&mut tx, &prompt, target).await?;
            prompts::set_label(&mut tx, &prompt, label, &to.summary, &access.audit, None).await?;
            report.labels_set.push(format!("{name}:{label}@{target}"));
        }
    }
    if !conflicts.is_empty() {
        // Dropping the transaction rolls back whatever was written.
        return Err(ApiError::new(
            ErrorCode::BundleConflict,
            format!(
                "{} version(s) conflict with prompts already here; nothing was imported",
                conflicts.len()
            ),
        )
        .with_details(serde_json::json!({ "conflicts": conflicts })));
    }
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("prompt.bundle.import", "org", org).detail(serde_json::json!({
            "project_id": project,
            "created_prompts": report.created_prompts,
            "imported_versions": report.imported_versions.len(),
            "unchanged_versions": report.unchanged_versions.len(),
            "labels_set": report.labels_set,
        })),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(report))
}

fn access_user(who: &(Option<Uuid>, String)) -> Option<Uuid> {
    who.0
}

/// The manifest's versions in ascending semver order (matching `ReadPrompt::versions`).
fn sorted_meta(meta: &BundledPrompt) -> Vec<&BundledVersion> {
    let mut v: Vec<&BundledVersion> = meta.versions.iter().collect();
    v.sort_by_key(|b| semver::Version::parse(&b.version).ok());
    v
}
