//! Runs: start one from a pipeline's latest version, list and read them with their steps,
//! cancel, and follow what happened (timeline, logs, event stream, receipts, artifacts).
//!
//! Runs are shared with the whole org: every member reads them (`read:runs`); a
//! project-scoped token sees only its project's runs, and everything else is 404, like a run
//! that doesn't exist. The SQL that changes a run (start, cancel) is the operator's
//! (`builderos_operator::store`), called inside the request's transaction next to its audit
//! event.
//!
//! # Layout
//! - this file: start, list, get, cancel, timeline, logs, receipts; loading a run.
//! - `events`: the server-sent event stream of a run's timeline.
//! - `artifacts`: listing and downloading a run's artifacts.

mod artifacts;
mod events;

use std::fmt::Write as _;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use builderos_operator::processors::contract::Mode;
use builderos_operator::store::{self, Cancelled, NewRun, Trigger};
use builderos_shared::db::{self, Scope};
use builderos_shared::error::ErrorCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, Postgres};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::path_id;
use super::pipelines;
use crate::AppState;
use crate::audit::{self, Event, Outcome};
use crate::auth::{Auth, OrgAccess};
use crate::domain;
use crate::permissions::Permission;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(start_run))
        .routes(routes!(list_runs))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(timeline))
        .routes(routes!(logs))
        .routes(routes!(receipts))
        .merge(events::router())
        .merge(artifacts::router())
}

/// Every state a run can be in.
pub const STATES: [&str; 7] = [
    "queued",
    "running",
    "waiting_approval",
    "succeeded",
    "failed",
    "partial",
    "cancelled",
];

/// The states a run ends in.
pub const FINAL_STATES: [&str; 4] = ["succeeded", "failed", "partial", "cancelled"];

/// The longest idempotency key, in characters.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The largest run inputs accepted, in bytes of JSON.
pub const MAX_INPUTS_BYTES: usize = 64 * 1024;

/// `mock` (deterministic, offline) or `real`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// Deterministic and offline; the default.
    #[default]
    Mock,
    /// Calls real models or services (refused by the operator when `CI=true`).
    Real,
}

/// Body of `POST …/pipelines/{name}/runs`; an empty body starts a mock run without inputs.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartRun {
    /// The run's inputs (`${run.inputs.*}`), a JSON object of at most 64 KiB.
    pub inputs: Option<Map<String, Value>>,
    /// `mock` (default) or `real`.
    pub mode: Option<RunMode>,
    /// A key of your choosing (at most 200 characters; also accepted as the `Idempotency-Key`
    /// header): starting the pipeline again with the same key returns the same run (200).
    pub idempotency_key: Option<String>,
}

/// A run, without its snapshot, inputs and steps.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct Run {
    /// Run id.
    pub id: Uuid,
    /// The project of its pipeline.
    pub project_id: Uuid,
    /// The pipeline.
    pub pipeline_id: Uuid,
    /// The pipeline's name.
    pub pipeline: String,
    /// The pipeline version it runs (snapshotted at start).
    pub pipeline_version: i32,
    /// `queued`, `running`, `waiting_approval`, `succeeded`, `failed`, `partial` or `cancelled`.
    pub state: String,
    /// `mock` or `real`.
    pub mode: String,
    /// `api` or `cron`.
    pub trigger: String,
    /// Who started it (null: cron or a service account).
    pub created_by: Option<Uuid>,
    /// Who cancelled it.
    pub cancelled_by: Option<Uuid>,
    /// Steps in all.
    pub steps_total: i32,
    /// Steps finished (succeeded, failed or skipped).
    pub steps_done: i32,
    /// Steps failed.
    pub steps_failed: i32,
    /// When it was started.
    pub created_at: DateTime<Utc>,
    /// When its first step started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it reached a final state.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A run with its definition snapshot, inputs and steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    #[serde(flatten)]
    pub run: Run,
    /// The idempotency key it was started with.
    pub idempotency_key: Option<String>,
    /// The pipeline definition as it was when the run started.
    pub snapshot: Value,
    /// The run's inputs.
    pub inputs: Value,
    /// Its steps, in definition order.
    pub steps: Vec<RunStep>,
}

/// A step of a run.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunStep {
    /// The step id.
    pub id: String,
    /// Its agent role.
    pub role: Option<String>,
    /// The processor it calls.
    pub processor: Option<String>,
    /// `pending`, `queued`, `running`, `succeeded`, `failed`, `skipped` or `cancelled`.
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
    /// When its first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failure's stable code.
    pub error_code: Option<String>,
    /// The last failure's short message.
    pub error_message: Option<String>,
}

/// A page of runs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    /// The runs.
    pub items: Vec<Run>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Filters of `GET /v1/orgs/{org}/runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only this project's runs.
    pub project: Option<Uuid>,
    /// Only runs of pipelines with this name.
    pub pipeline: Option<String>,
    /// Only runs in this state.
    pub state: Option<String>,
    /// Page size, 1-200 (default 50).
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One entry of a run's timeline.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct RunEvent {
    /// Increasing id (the event stream's `id:`).
    pub id: i64,
    /// What happened: `run.queued`, `step.started`, `step.succeeded`, `step.retrying`, …
    pub kind: String,
    /// The step, for step events.
    pub step: Option<String>,
    /// The attempt, for step events.
    pub attempt: Option<i32>,
    /// When.
    pub at: DateTime<Utc>,
    /// Small structured detail (error codes, delays); never input or output text.
    pub data: Value,
}

/// Paging of a timeline.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TimelineParams {
    /// Only events after this event id.
    pub after: Option<i64>,
    /// At most this many events, 1-5000 (default 1000).
    pub limit: Option<i64>,
}

/// One finished attempt of a step, with its receipt.
#[derive(Debug, Serialize, ToSchema, sqlx::FromRow)]
pub struct StepReceipt {
    /// The step.
    pub step: String,
    /// The attempt.
    pub attempt: i32,
    /// The attempt's execution id.
    pub execution_id: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// The failure's stable code.
    pub error_code: Option<String>,
    /// The failure's short message.
    pub error_message: Option<String>,
    /// The receipt: execution id, processor ref and digest, env fingerprint, inputs hash,
    /// outputs index, usage (token counts), timestamps, duration, mode.
    pub receipt: Value,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: DateTime<Utc>,
}

const RUN_COLUMNS: &str = "r.id, r.project_id, r.pipeline_id, p.name AS pipeline, r.pipeline_version, \
    r.state, r.mode, r.trigger, r.created_by, r.cancelled_by, r.steps_total, r.steps_done, \
    r.steps_failed, r.created_at, r.started_at, r.finished_at";

/// The run `run` of the caller's org (and project, for a project-scoped token), or 404.
/// The common start of an endpoint on one run: ids parsed, `permission` checked, a
/// transaction in the org, and the run found — 404 when it is missing, another org's, or
/// outside a project-scoped token's project.
pub(crate) async fn open_run(
    state: &AppState,
    auth: &Auth,
    org: &str,
    run: &str,
    permission: Permission,
) -> Result<(sqlx::Transaction<'static, sqlx::Postgres>, OrgAccess, Run), ApiError> {
    let org = path_id(org, "org")?;
    let run = path_id(run, "run")?;
    let access = auth.authorize(state, org, permission).await?;
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let found = find_run(&mut tx, &access, run).await?;
    Ok((tx, access, found))
}

pub(crate) async fn find_run(
    conn: &mut PgConnection,
    access: &OrgAccess,
    run: Uuid,
) -> Result<Run, ApiError> {
    let found: Option<Run> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN pipelines p ON p.id = r.pipeline_id \
         WHERE r.id = $1 AND r.org_id = $2 AND ($3::uuid IS NULL OR r.project_id = $3)"
    )))
    .bind(run)
    .bind(access.org_id)
    .bind(access.project_scope)
    .fetch_optional(&mut *conn)
    .await?;
    found.ok_or_else(|| ApiError::not_found("run"))
}

/// The run with its snapshot, inputs and steps.
async fn load_run(
    conn: &mut PgConnection,
    access: &OrgAccess,
    run: Uuid,
) -> Result<RunDetail, ApiError> {
    let run = find_run(conn, access, run).await?;
    let (idempotency_key, snapshot, inputs): (Option<String>, Value, Value) =
        sqlx::query_as("SELECT idempotency_key, snapshot, inputs FROM runs WHERE id = $1")
            .bind(run.id)
            .fetch_one(&mut *conn)
            .await?;
    type StepRow = (
        String,
        String,
        i32,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<StepRow> = sqlx::query_as(
        "SELECT step_id, status, attempts, started_at, finished_at, error_code, error_message \
         FROM run_steps WHERE run_id = $1",
    )
    .bind(run.id)
    .fetch_all(&mut *conn)
    .await?;
    let declared: &[Value] = snapshot["steps"].as_array().map_or(&[], Vec::as_slice);
    let position = |id: &str| declared.iter().position(|s| s["id"] == id);
    let mut steps: Vec<RunStep> = rows
        .into_iter()
        .map(
            |(id, status, attempts, started_at, finished_at, error_code, error_message)| {
                let spec = position(&id).map(|i| &declared[i]);
                let text =
                    |field: &str| spec.and_then(|s| s[field].as_str()).map(ToOwned::to_owned);
                RunStep {
                    role: text("role"),
                    processor: text("processor"),
                    id,
                    status,
                    attempts,
                    started_at,
                    finished_at,
                    error_code,
                    error_message,
                }
            },
        )
        .collect();
    steps.sort_by_key(|s| position(&s.id).unwrap_or(usize::MAX));
    Ok(RunDetail {
        run,
        idempotency_key,
        snapshot,
        inputs,
        steps,
    })
}

/// Reads the optional JSON body of a start.
fn start_body(headers: &HeaderMap, body: &Bytes) -> Result<StartRun, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(StartRun::default());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("application/json")
                || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !json {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "expected a request body with content type application/json",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            ApiError::inputs(e.inner().to_string())
        } else {
            ApiError::inputs(format!("{path}: {}", e.inner()))
        }
    })
}

/// The idempotency key from the body or the `Idempotency-Key` header (they must agree).
fn idempotency_key(headers: &HeaderMap, body: Option<String>) -> Result<Option<String>, ApiError> {
    let header = headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(ToOwned::to_owned)
                .map_err(|_| ApiError::inputs("Idempotency-Key: must be visible ASCII"))
        })
        .transpose()?;
    let key = match (header, body) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::inputs(
                "idempotency_key: the body and the Idempotency-Key header disagree",
            ));
        }
        (h, b) => b.or(h),
    };
    if let Some(k) = &key
        && (k.is_empty()
            || k.chars().count() > MAX_IDEMPOTENCY_KEY
            || k.chars().any(char::is_control))
    {
        return Err(ApiError::inputs(format!(
            "idempotency_key: must be 1-{MAX_IDEMPOTENCY_KEY} characters without control characters"
        )));
    }
    Ok(key)
}

/// Start a run of a pipeline's latest version (Builder and up). With an idempotency key used
/// before for this pipeline, answers 200 with that run instead of starting another. A pipeline
/// calling HTTP processors the org has not allow-listed is refused (403
/// `ERR_PROCESSOR_NOT_ALLOWED`, details: the origins) and the refusal is audited.
#[utoipa::path(post, path = "/v1/orgs/{org}/projects/{project}/pipelines/{name}/runs", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("project" = Uuid, Path, description = "Project id"),
        ("name" = String, Path, description = "Pipeline name"),
        ("Idempotency-Key" = Option<String>, Header, description = "Same as the body's `idempotency_key`")),
    request_body = StartRun,
    responses((status = 201, description = "Started", body = RunDetail),
        (status = 200, description = "The run this idempotency key started before", body = RunDetail),
        (status = 400, description = "Bad inputs, mode or idempotency key", body = ErrorEnvelope),
        (status = 403, description = "Needs write:runs (Builder), or `ERR_PROCESSOR_NOT_ALLOWED`", body = ErrorEnvelope),
        (status = 404, description = "No such project or pipeline", body = ErrorEnvelope),
        (status = 413, description = "Inputs over 64 KiB", body = ErrorEnvelope)))]
async fn start_run(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, project, name)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<RunDetail>), ApiError> {
    let org = path_id(&org, "org")?;
    let project = path_id(&project, "project")?;
    let access = auth.authorize(&state, org, Permission::RunsWrite).await?;
    let body = start_body(&headers, &body)?;
    let key = idempotency_key(&headers, body.idempotency_key)?;
    let mode = body.mode.unwrap_or_default();
    let inputs = body.inputs.unwrap_or_default();
    let size = serde_json::to_vec(&inputs).map_or(0, |v| v.len());
    if size > MAX_INPUTS_BYTES {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("inputs: {size} bytes of JSON; the limit is {MAX_INPUTS_BYTES}"),
        ));
    }
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    pipelines::check_project(&mut tx, &access, project).await?;
    let pipeline = pipelines::find(&mut tx, org, project, &name, false).await?;
    if let Some(key) = &key {
        let earlier: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE org_id = $1 AND pipeline_id = $2 AND idempotency_key = $3",
        )
        .bind(org)
        .bind(pipeline.id)
        .bind(key)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(run) = earlier {
            // A retried start: nothing changes, so nothing is audited.
            let detail = load_run(&mut tx, &access, run).await?;
            tx.commit().await?;
            return Ok((StatusCode::OK, Json(detail)));
        }
    }
    let definition = pipelines::latest_definition(&mut tx, &pipeline).await?;
    let refused = store::not_allowed(&mut tx, org, &definition).await?;
    if !refused.is_empty() {
        audit::record(
            &mut tx,
            Some(org),
            &access.audit,
            Event::success("run.start", "pipeline", pipeline.id)
                .outcome(Outcome::Denied)
                .detail(serde_json::json!({
                    "pipeline": pipeline.name, "version": pipeline.latest_version,
                    "reason": "processor_not_allowed", "origins": refused,
                })),
        )
        .await?;
        tx.commit().await?;
        return Err(ApiError::new(
            ErrorCode::ProcessorNotAllowed,
            format!(
                "the pipeline calls HTTP processors this org has not allowed: {}; an Admin adds them to the processor allowlist",
                refused.join(", ")
            ),
        )
        .with_details(serde_json::json!({"origins": refused})));
    }
    let started = store::start_run(
        &mut tx,
        &NewRun {
            org,
            project,
            pipeline: pipeline.id,
            version: pipeline.latest_version,
            definition: &definition,
            inputs: &inputs,
            mode: match mode {
                RunMode::Mock => Mode::Mock,
                RunMode::Real => Mode::Real,
            },
            trigger: Trigger::Api,
            idempotency_key: key.as_deref(),
            created_by: auth.user_id(),
        },
    )
    .await?;
    if started.created {
        audit::record(
            &mut tx,
            Some(org),
            &access.audit,
            Event::success("run.start", "run", started.run).detail(serde_json::json!({
                "pipeline": pipeline.name, "pipeline_id": pipeline.id, "project_id": project,
                "version": pipeline.latest_version, "mode": mode, "idempotency_key": key.is_some(),
            })),
        )
        .await?;
    }
    let detail = load_run(&mut tx, &access, started.run).await?;
    tx.commit().await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(detail)))
}

/// The org's runs, newest first (a project-scoped token: its project's).
#[utoipa::path(get, path = "/v1/orgs/{org}/runs", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), RunFilter),
    responses((status = 200, description = "A page of runs", body = RunPage),
        (status = 400, description = "Bad filter, limit or cursor", body = ErrorEnvelope),
        (status = 404, description = "No such org", body = ErrorEnvelope)))]
async fn list_runs(
    State(state): State<AppState>,
    auth: Auth,
    Path(org): Path<String>,
    Query(filter): Query<RunFilter>,
) -> Result<Json<RunPage>, ApiError> {
    let org = path_id(&org, "org")?;
    let access = auth.authorize(&state, org, Permission::RunsRead).await?;
    let limit = filter.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::inputs("limit: must be 1-200"));
    }
    if let Some(s) = &filter.state
        && !STATES.contains(&s.as_str())
    {
        return Err(ApiError::inputs(format!(
            "state: must be one of {}",
            STATES.join(", ")
        )));
    }
    let before = filter
        .cursor
        .as_deref()
        .map(|c| decode_run_cursor(org, c))
        .transpose()?;
    let mut qb = sqlx::QueryBuilder::<Postgres>::new(format!(
        "SELECT {RUN_COLUMNS} FROM runs r JOIN pipelines p ON p.id = r.pipeline_id WHERE r.org_id = "
    ));
    qb.push_bind(org);
    if let Some(scope) = access.project_scope {
        qb.push(" AND r.project_id = ").push_bind(scope);
    }
    if let Some(project) = filter.project {
        qb.push(" AND r.project_id = ").push_bind(project);
    }
    if let Some(name) = &filter.pipeline {
        qb.push(" AND p.name = ").push_bind(name.clone());
    }
    if let Some(s) = &filter.state {
        qb.push(" AND r.state = ").push_bind(s.clone());
    }
    if let Some((at, id)) = before {
        qb.push(" AND (r.created_at, r.id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(id)
            .push(")");
    }
    qb.push(" ORDER BY r.created_at DESC, r.id DESC LIMIT ")
        .push_bind(limit + 1);
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    let mut items: Vec<Run> = qb.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(usize::try_from(limit).unwrap_or(50));
        items.last().map(|r| {
            domain::encode_cursor(
                org,
                format!(
                    "{}/{}",
                    r.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    r.id
                ),
            )
        })
    } else {
        None
    };
    Ok(Json(RunPage { items, next_cursor }))
}

fn decode_run_cursor(org: Uuid, cursor: &str) -> Result<(DateTime<Utc>, Uuid), ApiError> {
    let key = domain::decode_cursor(org, cursor).map_err(ApiError::inputs)?;
    key.rsplit_once('/')
        .and_then(|(at, id)| {
            Some((
                DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
                Uuid::parse_str(id).ok()?,
            ))
        })
        .ok_or_else(|| ApiError::inputs(domain::BAD_CURSOR))
}

/// A run with its snapshot, inputs and steps.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "The run", body = RunDetail),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn get_run(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<RunDetail>, ApiError> {
    let (mut tx, access, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let run = found.id;
    let detail = load_run(&mut tx, &access, run).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// Cancel an active run (Builder and up): queued steps never start, running ones are stopped.
/// A run that already finished is 409 naming its state.
#[utoipa::path(post, path = "/v1/orgs/{org}/runs/{run}/cancel", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "Cancelled", body = RunDetail),
        (status = 403, description = "Needs write:runs (Builder)", body = ErrorEnvelope),
        (status = 404, description = "No such run", body = ErrorEnvelope),
        (status = 409, description = "The run already finished (details: state)", body = ErrorEnvelope)))]
async fn cancel_run(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<RunDetail>, ApiError> {
    let (mut tx, access, found) =
        open_run(&state, &auth, &org, &run, Permission::RunsWrite).await?;
    let (org, run) = (access.org_id, found.id);
    let before = found;
    match store::cancel_run(&mut tx, run, auth.user_id()).await? {
        Cancelled::Now => {}
        Cancelled::AlreadyFinished(state) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!("the run already finished: it is {state}"),
            )
            .with_details(serde_json::json!({"state": state})));
        }
    }
    audit::record(
        &mut tx,
        Some(org),
        &access.audit,
        Event::success("run.cancel", "run", run).detail(serde_json::json!({
            "pipeline": before.pipeline, "version": before.pipeline_version, "from": before.state,
        })),
    )
    .await?;
    let detail = load_run(&mut tx, &access, run).await?;
    tx.commit().await?;
    Ok(Json(detail))
}

/// Up to `limit` events of `run` after event `after`, in order.
pub(crate) async fn events_after(
    conn: &mut PgConnection,
    run: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<RunEvent>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, kind, step_id AS step, attempt, at, data FROM run_events \
         WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
    )
    .bind(run)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// A run's timeline: its events in order.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/timeline", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id"), TimelineParams),
    responses((status = 200, description = "Events in order", body = Vec<RunEvent>),
        (status = 400, description = "Bad limit", body = ErrorEnvelope),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn timeline(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
    Query(params): Query<TimelineParams>,
) -> Result<Json<Vec<RunEvent>>, ApiError> {
    let org = path_id(&org, "org")?;
    let run = path_id(&run, "run")?;
    let access = auth.authorize(&state, org, Permission::RunsRead).await?;
    let limit = params.limit.unwrap_or(1000);
    if !(1..=5000).contains(&limit) {
        return Err(ApiError::inputs("limit: must be 1-5000"));
    }
    let mut tx = db::begin(&state.pool, &Scope::org(org)).await?;
    find_run(&mut tx, &access, run).await?;
    let events = events_after(&mut tx, run, params.after.unwrap_or(0), limit).await?;
    tx.commit().await?;
    Ok(Json(events))
}

/// Keys of event data that are never printed in logs, whatever wrote them.
const UNPRINTED: &[&str] = &["inputs", "outputs", "prompt", "response", "content", "text"];

/// One log line: `<rfc3339> <kind> step=<id> attempt=<n> <key>=<value>…` (step and attempt only
/// for step events; scalar data values only).
fn log_line(out: &mut String, e: &RunEvent) {
    let _ = write!(
        out,
        "{} {}",
        e.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        e.kind
    );
    if let Some(step) = &e.step {
        let _ = write!(out, " step={step}");
    }
    if let Some(attempt) = e.attempt {
        let _ = write!(out, " attempt={attempt}");
    }
    if let Some(data) = e.data.as_object() {
        for (k, v) in data {
            if UNPRINTED.contains(&k.as_str()) {
                continue;
            }
            match v {
                Value::String(s) => {
                    let _ = write!(out, " {k}={}", s.escape_debug());
                }
                Value::Number(_) | Value::Bool(_) => {
                    let _ = write!(out, " {k}={v}");
                }
                // Nulls say nothing; nested values may carry text a log must not hold.
                Value::Null | Value::Array(_) | Value::Object(_) => {}
            }
        }
    }
    out.push('\n');
}

/// A run's log: one line per timeline event, as plain text. Never holds input or output text.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/logs", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "`<rfc3339> <kind> step=<id> attempt=<n> <key>=<value>…` per line", body = String, content_type = "text/plain"),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn logs(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let (mut tx, _, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let run = found.id;
    let mut out = String::new();
    let mut after = 0;
    loop {
        let batch = events_after(&mut tx, run, after, 1000).await?;
        for e in &batch {
            log_line(&mut out, e);
        }
        match batch.last() {
            Some(last) if batch.len() == 1000 => after = last.id,
            _ => break,
        }
    }
    tx.commit().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        out,
    )
        .into_response())
}

/// A run's finished step attempts with their receipts.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/receipts", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id")),
    responses((status = 200, description = "Attempts in the order they finished", body = Vec<StepReceipt>),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn receipts(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
) -> Result<Json<Vec<StepReceipt>>, ApiError> {
    let (mut tx, _, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let run = found.id;
    let rows: Vec<StepReceipt> = sqlx::query_as(
        "SELECT step_id AS step, attempt, execution_id, status, error_code, error_message, receipt, \
                started_at, finished_at \
           FROM step_attempts WHERE run_id = $1 ORDER BY finished_at, step_id, attempt",
    )
    .bind(run)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log lines name the step and attempt, print scalar data, and never print text fields.
    #[test]
    fn log_lines_hold_no_text() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut out = String::new();
        log_line(
            &mut out,
            &RunEvent {
                id: 7,
                kind: "step.retrying".into(),
                step: Some("build".into()),
                attempt: Some(2),
                at,
                data: serde_json::json!({"error_code": "ERR_TIMEOUT", "retry_in_ms": 1500,
                    "outputs": "secret text", "inputs": {"a": 1}, "nested": {"x": "y"}}),
            },
        );
        log_line(
            &mut out,
            &RunEvent {
                id: 8,
                kind: "run.cancelled".into(),
                step: None,
                attempt: None,
                at,
                data: serde_json::json!({}),
            },
        );
        assert_eq!(
            out,
            "2026-01-02T03:04:05.678Z step.retrying step=build attempt=2 error_code=ERR_TIMEOUT retry_in_ms=1500\n\
             2026-01-02T03:04:05.678Z run.cancelled\n"
        );
    }
}
