//! The audit trail for admins: query, export, verify, retention.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use builderos_shared::db::{self, Scope};
use builderos_shared::http::{ApiError, ErrorEnvelope, Json};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::path_id;
use crate::AppState;
use crate::audit::export;
use crate::audit::query::{self, Filter, MAX_LIMIT, Params};
use crate::audit::store;
use crate::audit::verify::Report;
use crate::audit::{self, Event, StoredEvent};
use crate::auth::Auth;
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(query_events))
        .routes(routes!(export_events))
        .routes(routes!(verify_chain))
        .routes(routes!(get_settings, update_settings))
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Newest first.
    pub events: Vec<StoredEvent>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query the audit trail, newest first. Filters combine; `q` takes the compact form
/// `actor:alice@example.com action:deploy.* target:run/<id> outcome:denied created:>=2026-01-01`.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/events", tag = "audit", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), Params),
    responses((status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A bad filter or query term", body = ErrorEnvelope),
        (status = 403, description = "Needs read:audit (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn query_events(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(params): Query<Params>,
) -> Result<Json<EventPage>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::AuditRead).await?;
    let filter = Filter::from_params(&params).map_err(ApiError::inputs)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::inputs(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    let before = params
        .cursor
        .as_deref()
        .map(|c| query::decode_cursor(org, c))
        .transpose()
        .map_err(ApiError::inputs)?;
    let mut events = store::page_desc(&state.pool, org, &filter, before, limit + 1).await?;
    let next_cursor = if i64::try_from(events.len()).unwrap_or(0) > limit {
        events.truncate(usize::try_from(limit).unwrap_or(0));
        events.last().map(|e| query::encode_cursor(org, e.seq))
    } else {
        None
    };
    Ok(Json(EventPage {
        events,
        next_cursor,
    }))
}

/// Export every event matching the filters as JSON Lines (default) or CSV, streamed page by
/// page (never buffered whole), carrying the chain fields so an export verifies offline
/// (`builderos audit verify --file`).
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/export", tag = "audit", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), Params),
    responses((status = 200, description = "The events, newest first", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "A bad filter or format", body = ErrorEnvelope),
        (status = 403, description = "Needs export:audit (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn export_events(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(params): Query<Params>,
) -> Result<Response, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::AuditExport).await?;
    let filter = Filter::from_params(&params).map_err(ApiError::inputs)?;
    let csv = match params.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(ApiError::inputs(format!(
                "format: `{other}` is not jsonl or csv"
            )));
        }
    };
    // Exporting is itself an audited act (it records what was asked for, not what was sent).
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("audit.export", "org", org).detail(serde_json::json!({"format": if csv { "csv" } else { "jsonl" }, "query": params.q, "action": params.action, "actor": params.actor})),
    )
    .await?;
    tx.commit().await?;

    let pool = state.pool.clone();
    let header = if csv { Some(export::CSV_HEADER) } else { None };
    let stream =
        futures_util::stream::unfold((Some(None::<i64>), header), move |(cursor, header)| {
            let pool = pool.clone();
            let filter = filter.clone();
            async move {
                if let Some(h) = header {
                    return Some((
                        Ok::<_, std::io::Error>(bytes::Bytes::from_static(h.as_bytes())),
                        (cursor, None),
                    ));
                }
                let before = cursor?;
                match store::page_desc(&pool, org, &filter, before, store::BATCH).await {
                    Ok(events) if events.is_empty() => None,
                    Ok(events) => {
                        let next = if i64::try_from(events.len()).unwrap_or(0) < store::BATCH {
                            None
                        } else {
                            events.last().map(|e| Some(e.seq))
                        };
                        let chunk = export::render(&events, csv);
                        Some((Ok(bytes::Bytes::from(chunk)), (next, None)))
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "audit export failed mid-stream");
                        Some((
                            Err(std::io::Error::other("export failed; see server logs")),
                            (None, None),
                        ))
                    }
                }
            }
        });
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    let filename = if csv { "audit.csv" } else { "audit.jsonl" };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Recompute the org's hash chain and report the first broken `seq` (altered, deleted or
/// reordered events).
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/verify", tag = "audit", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "The verification report (ok: false names the breaks)", body = Report),
        (status = 403, description = "Needs read:audit (Admin)", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn verify_chain(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<Report>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::AuditRead).await?;
    Ok(Json(store::verify_org(&state.pool, org).await?))
}

/// Audit settings of an org.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// Days to keep events (1-36500); `null` keeps them forever. Pruning (`builderos audit
    /// prune`) keeps the chain verifiable through an anchor.
    pub retention_days: Option<i32>,
}

/// Read the org's audit retention.
#[utoipa::path(get, path = "/v1/orgs/{org}/audit/settings", tag = "audit", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Settings", body = AuditSettings), (status = 403, description = "Needs read:audit", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn get_settings(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
) -> Result<Json<AuditSettings>, ApiError> {
    let org = path_id(&org, "org")?;
    auth.authorize(&state, org, Permission::AuditRead).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let retention_days: Option<i32> =
        sqlx::query_scalar("SELECT audit_retention_days FROM orgs WHERE id = $1")
            .bind(org)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(Json(AuditSettings { retention_days }))
}

/// Change the org's audit retention (Owner).
#[utoipa::path(put, path = "/v1/orgs/{org}/audit/settings", tag = "audit", request_body = AuditSettings, security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id")),
    responses((status = 200, description = "Updated", body = AuditSettings), (status = 400, description = "Out of range", body = ErrorEnvelope),
        (status = 403, description = "Needs update:org (Owner)", body = ErrorEnvelope), (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn update_settings(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Json(body): Json<AuditSettings>,
) -> Result<Json<AuditSettings>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::OrgUpdate).await?;
    if body
        .retention_days
        .is_some_and(|d| !(1..=36_500).contains(&d))
    {
        return Err(ApiError::inputs(
            "retention_days: must be between 1 and 36500, or null",
        ));
    }
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let old: Option<i32> =
        sqlx::query_scalar("SELECT audit_retention_days FROM orgs WHERE id = $1 FOR UPDATE")
            .bind(org)
            .fetch_one(&mut *tx)
            .await?;
    audit::record_with(
        sqlx::query("UPDATE orgs SET audit_retention_days = $2 WHERE id = $1")
            .bind(org)
            .bind(body.retention_days),
        Some(org),
        &access.audit,
        Event::success("audit.retention_change", "org", org)
            .detail(serde_json::json!({"from": old, "to": body.retention_days})),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(body))
}
