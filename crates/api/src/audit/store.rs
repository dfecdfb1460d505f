//! Reading the trail: pages of events newest-first (queries, exports) or oldest-first
//! (verification), each page in its own short org-scoped transaction so that exports and
//! verification of millions of events never hold a transaction open or buffer the trail.
//! A read that starts at the newest event first seals the org's journaled events, so it sees
//! every event committed before it.

use builderos_shared::db::{self, Scope};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::query::{ActorBranch, Filter};
use super::verify::{ChainVerifier, Report};
use super::{EVENT_COLUMNS, StoredEvent};

/// Events of `org` matching `filter`, newest first, with `seq < before` when given (else
/// the org's journal is sealed first).
///
/// # Errors
/// Database errors.
pub async fn page_desc(
    pool: &PgPool,
    org: Uuid,
    filter: &Filter,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    if before.is_none() {
        super::sealer::seal(pool, Some(org)).await?;
    }
    let mut tx = db::begin(pool, &Scope::org(org)).await?;
    // One page of the events matching `filter` (its actor matched as `actor` says).
    let push_page = |qb: &mut QueryBuilder<Postgres>, actor: ActorBranch| {
        qb.push(format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events WHERE org_id = "
        ));
        qb.push_bind(org);
        filter.push_conditions(qb, actor);
        if let Some(before) = before {
            qb.push(" AND seq < ").push_bind(before);
        }
        qb.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
    };
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new("");
    if filter.actor.is_some() {
        // The actor by name or by id: a page of each, merged (Filter::push_conditions).
        qb.push(format!("SELECT {EVENT_COLUMNS} FROM (("));
        push_page(&mut qb, ActorBranch::Name);
        qb.push(") UNION ALL (");
        push_page(&mut qb, ActorBranch::IdNotName);
        qb.push(")) AS e ORDER BY seq DESC LIMIT ").push_bind(limit);
    } else {
        // No actor to match: either branch reads the same.
        push_page(&mut qb, ActorBranch::Name);
    }
    let events = qb
        .build_query_as::<StoredEvent>()
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(events)
}

/// Events of `org` with `seq > after`, oldest first.
///
/// # Errors
/// Database errors.
pub async fn page_asc(
    pool: &PgPool,
    org: Uuid,
    after: i64,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let mut tx = db::begin(pool, &Scope::org(org)).await?;
    let events = sqlx::query_as::<_, StoredEvent>(sqlx::AssertSqlSafe(format!(
        "SELECT {EVENT_COLUMNS} FROM audit_events WHERE org_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
    )))
    .bind(org)
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(events)
}

/// The retention anchor of `org`: the seq and hash of the last pruned event.
///
/// # Errors
/// Database errors.
pub async fn anchor(pool: &PgPool, org: Uuid) -> Result<Option<(i64, String)>, sqlx::Error> {
    let mut tx = db::begin(pool, &Scope::org(org)).await?;
    let anchor = sqlx::query_as("SELECT seq, hash FROM audit_anchors WHERE org_id = $1")
        .bind(org)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(anchor)
}

/// Events fetched per round trip when walking a whole chain.
pub const BATCH: i64 = 5000;

/// Recomputes `org`'s whole chain from its anchor (after sealing its journal).
///
/// # Errors
/// Database errors.
pub async fn verify_org(pool: &PgPool, org: Uuid) -> Result<Report, sqlx::Error> {
    super::sealer::seal(pool, Some(org)).await?;
    let mut verifier = ChainVerifier::complete(anchor(pool, org).await?);
    // Walk from the very start: events at or below the anchor that should have been pruned
    // show up as breaks too. The next page is fetched while this one is hashed.
    let fetch = |after: i64| {
        let pool = pool.clone();
        tokio::spawn(async move { page_asc(&pool, org, after, BATCH).await })
    };
    let mut next = Some(fetch(0));
    while let Some(pending) = next.take() {
        let events = pending
            .await
            .map_err(|e| sqlx::Error::Protocol(format!("page fetch task failed: {e}")))??;
        let Some(last) = events.last() else { break };
        let full = i64::try_from(events.len()).unwrap_or(0) == BATCH;
        if full {
            next = Some(fetch(last.seq));
        }
        events.iter().for_each(|e| verifier.push(e));
        if !full {
            break;
        }
    }
    Ok(verifier.finish())
}
