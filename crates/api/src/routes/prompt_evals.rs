//! Eval suites of a prompt: cases, recorded results per version, and the comparison that shows
//! which cases regressed between two versions.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use builderos_shared::http::{ApiError, ErrorEnvelope, Json, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::OnConstraint;
use super::prompts::{Opened, Where, open};
use crate::AppState;
use crate::audit::{self, Event};
use crate::auth::Auth;
use crate::domain::Slug;
use crate::permissions::Permission;
use crate::prompts::eval::{self, Expectation};
use crate::prompts::{self, actor_columns};

/// Most results in one recorded run.
const MAX_RESULTS: usize = 1000;
/// Largest output judged.
const MAX_OUTPUT_BYTES: usize = 256 * 1024;

pub(crate) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cases, create_case))
        .routes(routes!(delete_case))
        .routes(routes!(list_runs, record_run))
        .routes(routes!(compare))
}

/// An eval case.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalCase {
    /// Case id.
    pub id: Uuid,
    /// Name (slug), unique per prompt.
    pub name: String,
    /// Inputs: variable name → value.
    pub inputs: BTreeMap<String, Value>,
    /// What every output must satisfy.
    pub expect: Vec<Expectation>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Body of `POST …/eval-cases`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCase {
    /// Name (slug), unique per prompt.
    pub name: String,
    /// Inputs: variable name → value.
    #[serde(default)]
    pub inputs: BTreeMap<String, Value>,
    /// Expectations, e.g. `[{"contains": "Ada"}, {"regex": "^Hello"}, {"golden": "…"}]`.
    pub expect: Vec<Expectation>,
}

/// One output to judge.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaseOutput {
    /// The case's name.
    pub case: String,
    /// What the model produced for the case's inputs (judged, never stored).
    pub output: String,
}

/// Body of `POST …/eval-runs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordRun {
    /// The version (or label) the outputs came from.
    pub version: String,
    /// Who produced them, e.g. `ci` or `pipeline:<run id>` (default `ci`).
    pub source: Option<String>,
    /// The outputs, one per case.
    pub results: Vec<CaseOutput>,
}

/// The verdict for one case.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CaseVerdict {
    /// The case's name.
    pub case: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed.
    pub failures: Vec<String>,
}

/// A recorded run.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvalRun {
    /// Run id.
    pub id: Uuid,
    /// The version judged.
    pub version: String,
    /// Its source.
    pub source: String,
    /// Who recorded it.
    pub actor_name: String,
    /// Passed cases.
    pub passed: i32,
    /// Failed cases.
    pub failed: i32,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Verdicts (on the response to recording; omitted in lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Vec<CaseVerdict>>,
}

/// Parameters of the run list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunParams {
    /// Only runs of this version (or label).
    pub version: Option<String>,
    /// The project whose prompt a name means.
    pub project: Option<Uuid>,
}

/// Parameters of the comparison.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CompareParams {
    /// The baseline: a version or a label.
    pub base: String,
    /// The candidate: a version or a label.
    pub head: String,
    /// The project whose prompt a name means.
    pub project: Option<Uuid>,
}

/// A case's latest verdict on a version: `pass`, `fail` or `not_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Its latest recorded result passed.
    Pass,
    /// Its latest recorded result failed.
    Fail,
    /// No result recorded for this version.
    NotRun,
}

/// One case in a comparison.
#[derive(Debug, Serialize, ToSchema)]
pub struct CaseComparison {
    /// The case.
    pub case: String,
    /// On the baseline.
    pub base: Status,
    /// On the candidate.
    pub head: Status,
    /// Passed on the baseline, fails on the candidate.
    pub regressed: bool,
    /// Failed on the baseline, passes on the candidate.
    pub fixed: bool,
}

/// Which cases regressed between two versions.
#[derive(Debug, Serialize, ToSchema)]
pub struct Comparison {
    /// The baseline version.
    pub base: String,
    /// The candidate version.
    pub head: String,
    /// Every case.
    pub cases: Vec<CaseComparison>,
    /// The names of regressed cases.
    pub regressed: Vec<String>,
}

/// id, version, source, actor, passed, failed, created.
type RunRow = (Uuid, String, String, String, i32, i32, DateTime<Utc>);

type CaseRow = (
    Uuid,
    String,
    sqlx::types::Json<BTreeMap<String, Value>>,
    sqlx::types::Json<Vec<Expectation>>,
    DateTime<Utc>,
);

async fn cases(conn: &mut PgConnection, prompt: Uuid) -> Result<Vec<EvalCase>, ApiError> {
    let rows: Vec<CaseRow> = sqlx::query_as(
        "SELECT id, name, inputs, expect, created_at FROM prompt_eval_cases WHERE prompt_id = $1 ORDER BY name",
    )
    .bind(prompt)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, name, inputs, expect, created_at)| EvalCase {
            id,
            name,
            inputs: inputs.0,
            expect: expect.0,
            created_at,
        })
        .collect())
}

/// A prompt's eval cases.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/eval-cases", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    responses((status = 200, description = "Cases", body = Vec<EvalCase>),
        (status = 404, description = "No such prompt", body = ErrorEnvelope)))]
async fn list_cases(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
) -> Result<Json<Vec<EvalCase>>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        at.project,
        Permission::PromptsRead,
    )
    .await?;
    let cases = cases(&mut tx, prompt.id).await?;
    tx.commit().await?;
    Ok(Json(cases))
}

/// Add an eval case (Builder and up).
#[utoipa::path(post, path = "/v1/orgs/{org}/prompts/{prompt}/eval-cases", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    request_body = CreateCase,
    responses((status = 201, description = "Created", body = EvalCase),
        (status = 400, description = "Invalid case", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt", body = ErrorEnvelope),
        (status = 409, description = "Name taken", body = ErrorEnvelope)))]
async fn create_case(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
    Json(body): Json<CreateCase>,
) -> Result<(StatusCode, Json<EvalCase>), ApiError> {
    let name = Slug::parse("name", &body.name)?;
    eval::check(&body.expect).map_err(ApiError::inputs)?;
    if body.inputs.len() > 100 {
        return Err(ApiError::inputs("inputs: at most 100 variables"));
    }
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
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO prompt_eval_cases (id, org_id, prompt_id, name, inputs, expect) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at",
    )
    .bind(id)
    .bind(prompt.org_id)
    .bind(prompt.id)
    .bind(name.as_str())
    .bind(sqlx::types::Json(&body.inputs))
    .bind(sqlx::types::Json(&body.expect))
    .fetch_one(&mut *tx)
    .await
    .on_constraint(
        "prompt_eval_cases_prompt_name_key",
        "this prompt already has a case with this name",
    )?;
    audit::record(
        &mut tx,
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.eval_case.create", "prompt", prompt.id)
            .detail(serde_json::json!({"name": prompt.name, "case": name.as_str(), "case_id": id})),
    )
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(EvalCase {
            id,
            name: name.as_str().to_owned(),
            inputs: body.inputs,
            expect: body.expect,
            created_at,
        }),
    ))
}

/// Remove an eval case and its results (Builder and up).
#[utoipa::path(delete, path = "/v1/orgs/{org}/prompts/{prompt}/eval-cases/{case}", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"),
        ("case" = String, Path, description = "Case name"), Where),
    responses((status = 204, description = "Removed"),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt or case", body = ErrorEnvelope)))]
async fn delete_case(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt, case)): Path<(String, String, String)>,
    Query(at): Query<Where>,
) -> Result<StatusCode, ApiError> {
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
    let id: Option<Uuid> = sqlx::query_scalar(
        "DELETE FROM prompt_eval_cases WHERE prompt_id = $1 AND name = $2 RETURNING id",
    )
    .bind(prompt.id)
    .bind(&case)
    .fetch_optional(&mut *tx)
    .await?;
    let id = id.ok_or_else(|| ApiError::not_found("eval case"))?;
    audit::record(
        &mut tx,
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.eval_case.delete", "prompt", prompt.id)
            .detail(serde_json::json!({"name": prompt.name, "case": case, "case_id": id})),
    )
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Record a run: the outputs a version produced for the cases, judged here (Builder and up,
/// e.g. CI with an API token). Outputs are judged and discarded, never stored.
#[utoipa::path(post, path = "/v1/orgs/{org}/prompts/{prompt}/eval-runs", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), Where),
    request_body = RecordRun,
    responses((status = 201, description = "Recorded, with verdicts", body = EvalRun),
        (status = 400, description = "Unknown case, duplicate or oversized output", body = ErrorEnvelope),
        (status = 403, description = "Not allowed", body = ErrorEnvelope),
        (status = 404, description = "No such prompt or version", body = ErrorEnvelope)))]
async fn record_run(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(at): Query<Where>,
    Json(body): Json<RecordRun>,
) -> Result<(StatusCode, Json<EvalRun>), ApiError> {
    if body.results.is_empty() || body.results.len() > MAX_RESULTS {
        return Err(ApiError::inputs(format!(
            "results: 1 to {MAX_RESULTS} outputs"
        )));
    }
    if body
        .results
        .iter()
        .any(|r| r.output.len() > MAX_OUTPUT_BYTES)
    {
        return Err(ApiError::inputs(format!(
            "results: an output is at most {MAX_OUTPUT_BYTES} bytes"
        )));
    }
    let source = body.source.clone().unwrap_or_else(|| "ci".to_owned());
    if source.is_empty() || source.len() > 100 {
        return Err(ApiError::inputs("source: 1-100 characters"));
    }
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
    let version = prompts::resolve(&mut tx, &prompt, &body.version).await?;
    let cases = cases(&mut tx, prompt.id).await?;
    let mut verdicts = Vec::with_capacity(body.results.len());
    let mut case_ids = Vec::with_capacity(body.results.len());
    for r in &body.results {
        let case = cases.iter().find(|c| c.name == r.case).ok_or_else(|| {
            ApiError::inputs(format!(
                "results: `{}` is not a case of this prompt",
                r.case
            ))
        })?;
        if case_ids.contains(&case.id) {
            return Err(ApiError::inputs(format!(
                "results: `{}` appears twice",
                r.case
            )));
        }
        case_ids.push(case.id);
        let failures = eval::judge(&r.output, &case.expect, &version.spec);
        verdicts.push(CaseVerdict {
            case: case.name.clone(),
            passed: failures.is_empty(),
            failures,
        });
    }
    let passed = i32::try_from(verdicts.iter().filter(|v| v.passed).count()).unwrap_or(i32::MAX);
    let failed = i32::try_from(verdicts.len()).unwrap_or(i32::MAX) - passed;
    let (_, _, actor_name) = actor_columns(&access.audit);
    let id = Uuid::now_v7();
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO prompt_eval_runs (id, org_id, prompt_id, version_id, source, actor_name, passed, failed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING created_at",
    )
    .bind(id)
    .bind(prompt.org_id)
    .bind(prompt.id)
    .bind(version.summary.id)
    .bind(&source)
    .bind(&actor_name)
    .bind(passed)
    .bind(failed)
    .fetch_one(&mut *tx)
    .await?;
    let passes: Vec<bool> = verdicts.iter().map(|v| v.passed).collect();
    let failures: Vec<sqlx::types::Json<&Vec<String>>> = verdicts
        .iter()
        .map(|v| sqlx::types::Json(&v.failures))
        .collect();
    audit::record_with(
        sqlx::query(
            "INSERT INTO prompt_eval_results (run_id, case_id, org_id, passed, failures) \
         SELECT $1, c, $2, p, f FROM unnest($3::uuid[], $4::bool[], $5::jsonb[]) AS t(c, p, f)",
        )
        .bind(id)
        .bind(prompt.org_id)
        .bind(&case_ids)
        .bind(&passes)
        .bind(&failures),
        Some(prompt.org_id),
        &access.audit,
        Event::success("prompt.eval.record", "prompt", prompt.id).detail(serde_json::json!({
            "name": prompt.name, "version": version.summary.version, "run_id": id,
            "source": source, "passed": passed, "failed": failed
        })),
    )?
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(EvalRun {
            id,
            version: version.summary.version,
            source,
            actor_name,
            passed,
            failed,
            created_at,
            verdicts: Some(verdicts),
        }),
    ))
}

/// Recorded runs, newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/eval-runs", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), RunParams),
    responses((status = 200, description = "Runs", body = Vec<EvalRun>),
        (status = 404, description = "No such prompt or version", body = ErrorEnvelope)))]
async fn list_runs(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(params): Query<RunParams>,
) -> Result<Json<Vec<EvalRun>>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        params.project,
        Permission::PromptsRead,
    )
    .await?;
    let version = match &params.version {
        Some(v) => Some(prompts::resolve(&mut tx, &prompt, v).await?.summary.id),
        None => None,
    };
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT r.id, v.version, r.source, r.actor_name, r.passed, r.failed, r.created_at \
         FROM prompt_eval_runs r JOIN prompt_versions v ON v.id = r.version_id \
         WHERE r.prompt_id = $1 AND ($2::uuid IS NULL OR r.version_id = $2) \
         ORDER BY r.created_at DESC, r.id DESC LIMIT 200",
    )
    .bind(prompt.id)
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(
        rows.into_iter()
            .map(
                |(id, version, source, actor_name, passed, failed, created_at)| EvalRun {
                    id,
                    version,
                    source,
                    actor_name,
                    passed,
                    failed,
                    created_at,
                    verdicts: None,
                },
            )
            .collect(),
    ))
}

/// The latest verdict of each case on a version.
async fn latest_verdicts(
    conn: &mut PgConnection,
    version: Uuid,
) -> Result<BTreeMap<Uuid, bool>, ApiError> {
    let rows: Vec<(Uuid, bool)> = sqlx::query_as(
        "SELECT DISTINCT ON (r.case_id) r.case_id, r.passed FROM prompt_eval_results r \
         JOIN prompt_eval_runs run ON run.id = r.run_id WHERE run.version_id = $1 \
         ORDER BY r.case_id, run.created_at DESC, run.id DESC",
    )
    .bind(version)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows.into_iter().collect())
}

async fn comparison(
    conn: &mut PgConnection,
    prompt: Uuid,
    base: Uuid,
    head: Uuid,
) -> Result<Vec<CaseComparison>, ApiError> {
    let cases = cases(conn, prompt).await?;
    let base = latest_verdicts(conn, base).await?;
    let head = latest_verdicts(conn, head).await?;
    let status = |m: &BTreeMap<Uuid, bool>, id: &Uuid| match m.get(id) {
        Some(true) => Status::Pass,
        Some(false) => Status::Fail,
        None => Status::NotRun,
    };
    Ok(cases
        .iter()
        .map(|c| {
            let (b, h) = (status(&base, &c.id), status(&head, &c.id));
            CaseComparison {
                case: c.name.clone(),
                base: b,
                head: h,
                regressed: b == Status::Pass && h == Status::Fail,
                fixed: b == Status::Fail && h == Status::Pass,
            }
        })
        .collect())
}

/// The cases that pass on `base` and fail on `head` (the production gate).
pub(crate) async fn regressions(
    conn: &mut PgConnection,
    prompt: Uuid,
    base: Uuid,
    head: Uuid,
) -> Result<Vec<String>, ApiError> {
    Ok(comparison(conn, prompt, base, head)
        .await?
        .into_iter()
        .filter(|c| c.regressed)
        .map(|c| c.case)
        .collect())
}

/// Compare two versions' latest verdicts case by case: which regressed, which were fixed.
#[utoipa::path(get, path = "/v1/orgs/{org}/prompts/{prompt}/eval-compare", tag = "prompt evals", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("prompt" = String, Path, description = "Prompt id or name"), CompareParams),
    responses((status = 200, description = "The comparison", body = Comparison),
        (status = 404, description = "No such prompt, version or label", body = ErrorEnvelope)))]
async fn compare(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, prompt)): Path<(String, String)>,
    Query(params): Query<CompareParams>,
) -> Result<Json<Comparison>, ApiError> {
    let Opened { mut tx, prompt, .. } = open(
        &state,
        &auth,
        &org,
        &prompt,
        params.project,
        Permission::PromptsRead,
    )
    .await?;
    let base = prompts::resolve(&mut tx, &prompt, &params.base).await?;
    let head = prompts::resolve(&mut tx, &prompt, &params.head).await?;
    let cases = comparison(&mut tx, prompt.id, base.summary.id, head.summary.id).await?;
    tx.commit().await?;
    Ok(Json(Comparison {
        base: base.summary.version,
        head: head.summary.version,
        regressed: cases
            .iter()
            .filter(|c| c.regressed)
            .map(|c| c.case.clone())
            .collect(),
        cases,
    }))
}
