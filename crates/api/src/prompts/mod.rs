//! The shared prompt registry: prompts, immutable semver versions, labels, diffs, bundles and
//! eval suites.
//!
//! # Layout
//! - this file: the store — finding prompts, resolving `name@ref`, publishing, moving labels.
//!   Every function works inside the caller's org-scoped transaction, next to its audit event.
//! - [`spec`]: the YAML spec, its validation and content hash.
//! - [`diff`]: differences between versions.
//! - [`eval`]: eval expectations and verdicts.
//! - [`bundle`]: `promptpack.zip` export and import.

pub mod bundle;
pub mod diff;
pub mod eval;
pub mod spec;

use std::collections::BTreeMap;

use builderos_shared::error::ErrorCode;
use builderos_shared::http::ApiError;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Actor, AuditContext};
use spec::Spec;

/// The label the registry moves to every newly published version.
pub const LATEST: &str = "latest";
/// The label whose moves need `promote:prompts` and pass the eval-regression gate.
pub const PRODUCTION: &str = "production";

/// Size limits of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest spec (YAML bytes).
    pub max_spec_bytes: usize,
    /// Largest bundle accepted for import.
    pub max_bundle_bytes: usize,
}

/// A validated semver: `MAJOR.MINOR.PATCH` with an optional pre-release, no build metadata
/// (it does not order versions, so it could make two "different" versions equal).
///
/// # Errors
/// 400 `ERR_VERSION_INVALID`.
pub fn parse_version(raw: &str) -> Result<semver::Version, ApiError> {
    let v = semver::Version::parse(raw).map_err(|e| {
        ApiError::new(
            ErrorCode::VersionInvalid,
            format!(
                "version: `{}` is not a semver ({e})",
                raw.chars().take(64).collect::<String>()
            ),
        )
    })?;
    if !v.build.is_empty() || raw.len() > 64 {
        return Err(ApiError::new(
            ErrorCode::VersionInvalid,
            "version: build metadata (`+…`) is not allowed, and a version is at most 64 characters",
        ));
    }
    Ok(v)
}

/// A label name: a lowercase slug, 1-40 characters.
///
/// # Errors
/// 400 `ERR_LABEL_INVALID`.
pub fn parse_label(raw: &str) -> Result<&str, ApiError> {
    let ok = (1..=40).contains(&raw.len())
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(raw)
    } else {
        Err(ApiError::new(
            ErrorCode::LabelInvalid,
            format!(
                "label: `{}` is not a slug (1-40 characters of a-z, 0-9 and dashes)",
                raw.chars().take(64).collect::<String>()
            ),
        ))
    }
}

/// A prompt as stored.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct Prompt {
    /// Prompt id.
    pub id: Uuid,
    /// Org id.
    pub org_id: Uuid,
    /// The project it belongs to (null: org-wide).
    pub project_id: Option<Uuid>,
    /// Slug, unique in its org or project.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Tags for search.
    pub tags: Vec<String>,
    /// The user who owns it.
    pub owner_id: Option<Uuid>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change of its metadata, versions or labels.
    pub updated_at: DateTime<Utc>,
}

/// The columns of [`Prompt`], for `SELECT`s.
pub const PROMPT_COLUMNS: &str =
    "id, org_id, project_id, name, description, tags, owner_id, created_at, updated_at";

/// A published version without its spec.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct VersionSummary {
    /// Version id.
    pub id: Uuid,
    /// The semver.
    pub version: String,
    /// What changed.
    pub changelog: String,
    /// `sha256:<hex>` of the canonical spec.
    pub content_hash: String,
    /// The author's user id (null for tokens without a user and imports).
    pub author_id: Option<Uuid>,
    /// The author's display name.
    pub author_name: String,
    /// `published` here or `imported` from a bundle.
    pub source: String,
    /// Publication time.
    pub created_at: DateTime<Utc>,
}

const VERSION_SUMMARY_COLUMNS: &str =
    "id, version, changelog, content_hash, author_id, author_name, source, created_at";

/// A published version with its spec.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Version {
    /// Everything but the spec.
    #[serde(flatten)]
    pub summary: VersionSummary,
    /// The spec as published (YAML).
    pub spec_yaml: String,
    /// The validated spec (what the content hash covers).
    pub spec: Spec,
}

type VersionRow = (
    Uuid,
    String,
    String,
    String,
    Option<Uuid>,
    String,
    String,
    DateTime<Utc>,
    String,
    sqlx::types::Json<Spec>,
);

fn version_from_row(row: VersionRow) -> Version {
    let (
        id,
        version,
        changelog,
        content_hash,
        author_id,
        author_name,
        source,
        created_at,
        spec_yaml,
        spec,
    ) = row;
    Version {
        summary: VersionSummary {
            id,
            version,
            changelog,
            content_hash,
            author_id,
            author_name,
            source,
            created_at,
        },
        spec_yaml,
        spec: spec.0,
    }
}

/// Finds a prompt by id, or by name in `project` (None: org-wide), as `scope` may see it: a
/// project-scoped token sees only its project's prompts. Missing and foreign look the same.
///
/// # Errors
/// 404 `ERR_NOT_FOUND`, database errors.
pub async fn find(
    conn: &mut PgConnection,
    org: Uuid,
    scope: Option<Uuid>,
    key: &str,
    project: Option<Uuid>,
) -> Result<Prompt, ApiError> {
    let prompt: Option<Prompt> = if let Ok(id) = Uuid::parse_str(key) {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROMPT_COLUMNS} FROM prompts WHERE org_id = $1 AND id = $2"
        )))
        .bind(org)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    } else {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {PROMPT_COLUMNS} FROM prompts WHERE org_id = $1 AND name = $2 \
             AND project_id IS NOT DISTINCT FROM $3"
        )))
        .bind(org)
        .bind(key)
        .bind(project.or(scope))
        .fetch_optional(&mut *conn)
        .await?
    };
    match prompt {
        Some(p) if scope.is_none_or(|s| p.project_id == Some(s)) => Ok(p),
        _ => Err(ApiError::not_found("prompt")),
    }
}

/// The same prompt, locked until the transaction ends (publishes and label moves serialise on it).
///
/// # Errors
/// Database errors.
pub async fn lock(conn: &mut PgConnection, prompt: &Prompt) -> Result<(), ApiError> {
    sqlx::query("SELECT 1 FROM prompts WHERE id = $1 FOR UPDATE")
        .bind(prompt.id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Every version of a prompt, newest (highest) first.
///
/// # Errors
/// Database errors.
pub async fn versions(
    conn: &mut PgConnection,
    prompt: Uuid,
) -> Result<Vec<VersionSummary>, ApiError> {
    let mut rows: Vec<VersionSummary> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VERSION_SUMMARY_COLUMNS} FROM prompt_versions WHERE prompt_id = $1"
    )))
    .bind(prompt)
    .fetch_all(&mut *conn)
    .await?;
    rows.sort_by_key(|r| std::cmp::Reverse(semver_key(&r.version)));
    Ok(rows)
}

fn semver_key(v: &str) -> Option<semver::Version> {
    semver::Version::parse(v).ok()
}

/// The labels of a prompt: label → version.
///
/// # Errors
/// Database errors.
pub async fn labels(
    conn: &mut PgConnection,
    prompt: Uuid,
) -> Result<BTreeMap<String, String>, ApiError> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT l.name, v.version FROM prompt_labels l JOIN prompt_versions v ON v.id = l.version_id \
         WHERE l.prompt_id = $1",
    )
    .bind(prompt)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Resolves a reference — a semver or a label — to a version of `prompt`.
///
/// # Errors
/// 404 `ERR_VERSION_NOT_FOUND` or `ERR_LABEL_NOT_FOUND` (never a fallback), 400 for a
/// reference that is neither, database errors.
pub async fn resolve(
    conn: &mut PgConnection,
    prompt: &Prompt,
    reference: &str,
) -> Result<Version, ApiError> {
    const COLUMNS: &str = "v.id, v.version, v.changelog, v.content_hash, v.author_id, v.author_name, \
                           v.source, v.created_at, v.spec_yaml, v.spec";
    if reference.starts_with(|c: char| c.is_ascii_digit()) && reference.contains('.') {
        let version = parse_version(reference)?;
        let row: Option<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM prompt_versions v WHERE v.prompt_id = $1 AND v.version = $2"
        )))
        .bind(prompt.id)
        .bind(version.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        return row.map(version_from_row).ok_or_else(|| {
            ApiError::new(
                ErrorCode::VersionNotFound,
                format!("prompt `{}` has no version {version}", prompt.name),
            )
        });
    }
    let label = parse_label(reference)?;
    let row: Option<VersionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM prompt_labels l JOIN prompt_versions v ON v.id = l.version_id \
         WHERE l.prompt_id = $1 AND l.name = $2"
    )))
    .bind(prompt.id)
    .bind(label)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(version_from_row).ok_or_else(|| {
        ApiError::new(
            ErrorCode::LabelNotFound,
            format!("prompt `{}` has no label `{label}`", prompt.name),
        )
    })
}

/// What a new version carries.
#[derive(Debug)]
pub struct NewVersion<'a> {
    /// The semver.
    pub version: semver::Version,
    /// What changed (non-empty).
    pub changelog: &'a str,
    /// The YAML as given.
    pub spec_yaml: &'a str,
    /// The validated spec.
    pub spec: &'a Spec,
    /// The author: id and display name.
    pub author: (Option<Uuid>, String),
    /// `published` or `imported`.
    pub source: &'static str,
}

/// The actor's columns for label history: type, id, display name.
#[must_use]
pub fn actor_columns(ctx: &AuditContext) -> (&'static str, Option<Uuid>, String) {
    match &ctx.actor {
        Actor::User { id, name } => ("user", Some(*id), name.clone()),
        Actor::Token { id, name } => ("token", Some(*id), name.clone()),
        Actor::System => ("system", None, "system".to_owned()),
        Actor::Anonymous => ("anonymous", None, "anonymous".to_owned()),
    }
}

/// Publishes a version of a locked prompt: strictly greater than every earlier version;
/// `latest` moves to it. Returns the new version's summary.
///
/// # Errors
/// 409 `ERR_VERSION_NOT_GREATER`, 400 `ERR_CHANGELOG_REQUIRED`, database errors.
pub async fn publish(
    conn: &mut PgConnection,
    prompt: &Prompt,
    new: NewVersion<'_>,
    ctx: &AuditContext,
) -> Result<VersionSummary, ApiError> {
    if new.changelog.trim().is_empty() {
        return Err(ApiError::new(
            ErrorCode::ChangelogRequired,
            "changelog: say what changed in this version",
        ));
    }
    let highest: Option<semver::Version> = versions(conn, prompt.id)
        .await?
        .first()
        .and_then(|v| semver_key(&v.version));
    if let Some(highest) = highest
        && new.version <= highest
    {
        return Err(ApiError::new(
            ErrorCode::VersionNotGreater,
            format!(
                "version {} is not greater than {highest}, the highest version of `{}`",
                new.version, prompt.name
            ),
        ));
    }
    let summary: VersionSummary = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO prompt_versions (id, org_id, prompt_id, version, changelog, spec_yaml, spec, \
         content_hash, author_id, author_name, source) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11) \
         RETURNING {VERSION_SUMMARY_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(prompt.org_id)
    .bind(prompt.id)
    .bind(new.version.to_string())
    .bind(new.changelog.trim())
    .bind(new.spec_yaml)
    .bind(sqlx::types::Json(new.spec))
    .bind(new.spec.content_hash())
    .bind(new.author.0)
    .bind(&new.author.1)
    .bind(new.source)
    .fetch_one(&mut *conn)
    .await?;
    set_label(conn, prompt, LATEST, &summary, ctx, None).await?;
    Ok(summary)
}

/// Points `label` of a locked prompt at `to`, records the move in the label history, and
/// returns the version it pointed at before (None: a new label).
///
/// # Errors
/// Database errors.
pub async fn set_label(
    conn: &mut PgConnection,
    prompt: &Prompt,
    label: &str,
    to: &VersionSummary,
    ctx: &AuditContext,
    override_reason: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let from: Option<String> = sqlx::query_scalar(
        "SELECT v.version FROM prompt_labels l JOIN prompt_versions v ON v.id = l.version_id \
         WHERE l.prompt_id = $1 AND l.name = $2",
    )
    .bind(prompt.id)
    .bind(label)
    .fetch_optional(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO prompt_labels (prompt_id, name, org_id, version_id) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (prompt_id, name) DO UPDATE SET version_id = EXCLUDED.version_id, updated_at = now()",
    )
    .bind(prompt.id)
    .bind(label)
    .bind(prompt.org_id)
    .bind(to.id)
    .execute(&mut *conn)
    .await?;
    record_move(
        conn,
        prompt,
        label,
        from.as_deref(),
        Some(&to.version),
        ctx,
        override_reason,
    )
    .await?;
    Ok(from)
}

/// Removes a label of a locked prompt; returns the version it pointed at.
///
/// # Errors
/// 404 `ERR_LABEL_NOT_FOUND`, database errors.
pub async fn remove_label(
    conn: &mut PgConnection,
    prompt: &Prompt,
    label: &str,
    ctx: &AuditContext,
) -> Result<String, ApiError> {
    let from: Option<String> = sqlx::query_scalar(
        "DELETE FROM prompt_labels l USING prompt_versions v \
         WHERE l.prompt_id = $1 AND l.name = $2 AND v.id = l.version_id RETURNING v.version",
    )
    .bind(prompt.id)
    .bind(label)
    .fetch_optional(&mut *conn)
    .await?;
    let from = from.ok_or_else(|| {
        ApiError::new(
            ErrorCode::LabelNotFound,
            format!("prompt `{}` has no label `{label}`", prompt.name),
        )
    })?;
    record_move(conn, prompt, label, Some(&from), None, ctx, None).await?;
    Ok(from)
}

async fn record_move(
    conn: &mut PgConnection,
    prompt: &Prompt,
    label: &str,
    from: Option<&str>,
    to: Option<&str>,
    ctx: &AuditContext,
    override_reason: Option<&str>,
) -> Result<(), ApiError> {
    let (actor_type, actor_id, actor_name) = actor_columns(ctx);
    sqlx::query(
        "WITH moved AS (INSERT INTO prompt_label_moves (id, org_id, prompt_id, label, from_version, \
         to_version, actor_type, actor_id, actor_name, override_reason) \
         VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)) \
         UPDATE prompts SET updated_at = now() WHERE id = $3",
    )
    .bind(Uuid::now_v7())
    .bind(prompt.org_id)
    .bind(prompt.id)
    .bind(label)
    .bind(from)
    .bind(to)
    .bind(actor_type)
    .bind(actor_id)
    .bind(actor_name)
    .bind(override_reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_labels() {
        assert!(parse_version("1.2.3").is_ok());
        assert!(parse_version("1.2.3-rc.1").is_ok());
        for bad in ["1.2", "v1.2.3", "1.2.3+build", "01.2.3", ""] {
            let e = parse_version(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::VersionInvalid, "{bad}");
        }
        assert!(parse_label("production").is_ok());
        assert!(parse_label("canary-2").is_ok());
        for bad in ["Prod", "a b", "-x", "x-", "", "a.b", &"x".repeat(41)] {
            let e = parse_label(bad).expect_err(bad);
            assert_eq!(e.code, ErrorCode::LabelInvalid, "{bad}");
        }
    }
}
