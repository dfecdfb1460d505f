//! A run's timeline as server-sent events: the events so far, then new ones as they are
//! written, until the run has ended.
//!
//! The stream polls `run_events` (every 200 ms while nothing is new) instead of listening for
//! notifications: a poll is one indexed query, holds no connection between polls, and cannot
//! miss an event written while the stream was reconnecting. Each event's `id:` is its timeline
//! id, so a client that reconnects with `Last-Event-ID` continues where it stopped.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use builderos_shared::db::{self, Scope};
use builderos_shared::http::{ApiError, ErrorEnvelope};
use futures_util::Stream;
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::{FINAL_STATES, events_after, open_run};
use crate::AppState;
use crate::auth::Auth;
use crate::permissions::Permission;

pub(super) fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(run_events))
}

/// How long the stream waits before looking for new events again.
const POLL: Duration = Duration::from_millis(200);
/// Events read per query.
const BATCH: i64 = 500;

/// Where a stream is.
struct Cursor {
    pool: PgPool,
    org: Uuid,
    run: Uuid,
    /// The last event id sent.
    last: i64,
    /// Events read but not yet sent.
    pending: std::vec::IntoIter<Event>,
    /// Set once the final `end` event is sent.
    done: bool,
    /// Whether the next read may wait first (the previous one found nothing new).
    idle: bool,
}

/// The events after `cursor.last` and, when there are none, the run's state if it has ended.
async fn poll(cursor: &mut Cursor) -> Result<(Vec<Event>, Option<String>), sqlx::Error> {
    let mut tx = db::begin(&cursor.pool, &Scope::org(cursor.org)).await?;
    // The state first: an ended run's last events were committed with (or before) its state,
    // so reading events after seeing a final state cannot miss them.
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
        .bind(cursor.run)
        .fetch_optional(&mut *tx)
        .await?;
    let events = events_after(&mut tx, cursor.run, cursor.last, BATCH).await?;
    tx.commit().await?;
    let mut out = Vec::with_capacity(events.len());
    for e in &events {
        cursor.last = e.id;
        let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".to_owned());
        out.push(
            Event::default()
                .id(e.id.to_string())
                .event(&e.kind)
                .data(data),
        );
    }
    // A run deleted with its org ends the stream like an ended run.
    let ended = match state {
        Some(s) if FINAL_STATES.contains(&s.as_str()) => Some(s),
        Some(_) => None,
        None => Some("deleted".to_owned()),
    };
    Ok((out, if events.is_empty() { ended } else { None }))
}

fn stream(cursor: Cursor) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.pending.next() {
                return Some((Ok(event), cursor));
            }
            if cursor.done {
                return None;
            }
            if cursor.idle {
                tokio::time::sleep(POLL).await;
            }
            match poll(&mut cursor).await {
                Ok((events, ended)) => {
                    cursor.idle = events.is_empty();
                    cursor.pending = events.into_iter();
                    if let Some(state) = ended {
                        cursor.done = true;
                        let end = Event::default()
                            .event("end")
                            .data(serde_json::json!({"state": state}).to_string());
                        return Some((Ok(end), cursor));
                    }
                }
                Err(e) => {
                    // The client reconnects with Last-Event-ID and continues from there.
                    tracing::warn!(error = %e, run = %cursor.run, "run event stream ends on a database error");
                    return None;
                }
            }
        }
    })
}

/// Follow a run as server-sent events: every timeline event so far (after `Last-Event-ID`),
/// then new ones as they happen; `id:` is the event id, `event:` its kind, `data:` the event
/// as JSON. Once the run has ended and every event is sent, a last `event: end` with
/// `{"state": …}` closes the stream.
#[utoipa::path(get, path = "/v1/orgs/{org}/runs/{run}/events", tag = "runs", security(("bearer" = [])),
    params(("org" = Uuid, Path, description = "Org id"), ("run" = Uuid, Path, description = "Run id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Continue after this event id")),
    responses((status = 200, description = "An event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such run", body = ErrorEnvelope)))]
async fn run_events(
    State(state): State<AppState>,
    auth: Auth,
    Path((org, run)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (tx, access, found) = open_run(&state, &auth, &org, &run, Permission::RunsRead).await?;
    let (org, run) = (access.org_id, found.id);
    tx.commit().await?;
    // A Last-Event-ID this server did not send is ignored, as the SSE specification expects.
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .filter(|id| *id >= 0)
        .unwrap_or(0);
    let cursor = Cursor {
        pool: state.pool.clone(),
        org,
        run,
        last,
        pending: Vec::new().into_iter(),
        done: false,
        idle: false,
    };
    Ok(Sse::new(stream(cursor)).keep_alive(KeepAlive::default()))
}
