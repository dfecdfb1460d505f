//! Retention: pruning events older than an org's retention period, keeping the chain
//! verifiable through an anchor (the last pruned event's seq and hash). Pruning runs as a
//! member of `builderos_maintenance` (the app role can't delete events) and is itself an
//! audited event.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{AuditContext, Event};

/// What pruning did in one org.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Pruned {
    /// The org.
    pub org_id: Uuid,
    /// Events deleted.
    pub pruned: u64,
    /// The new anchor seq (the last deleted event), if anything was deleted.
    pub anchor_seq: Option<i64>,
}

/// Prunes every org that has a retention period, as of `now`.
///
/// # Errors
/// Database errors (for example when the connection isn't a member of `builderos_maintenance`).
pub async fn prune_all(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<Pruned>, sqlx::Error> {
    let orgs: Vec<(Uuid, i32)> =
        sqlx::query_as("SELECT id, audit_retention_days FROM orgs WHERE audit_retention_days IS NOT NULL ORDER BY id")
            .fetch_all(pool)
            .await?;
    let mut out = Vec::new();
    for (org, days) in orgs {
        out.push(prune_org(pool, org, now - chrono::Duration::days(i64::from(days))).await?);
    }
    Ok(out)
}

/// Deletes `org`'s events that occurred before `cutoff` (always a prefix of the chain), moves
/// the anchor, and records `audit.prune`.
///
/// # Errors
/// Database errors.
pub async fn prune_org(
    pool: &PgPool,
    org: Uuid,
    cutoff: DateTime<Utc>,
) -> Result<Pruned, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('app.org_id', $1, true)")
        .bind(org.to_string())
        .execute(&mut *tx)
        .await?;
    // Everything committed so far joins the chain, whose head stays locked until pruning
    // commits: sealers of this org wait.
    super::sealer::seal(&mut *tx, Some(org)).await?;
    sqlx::query("SELECT seq FROM audit_heads WHERE chain_id = $1 FOR UPDATE")
        .bind(org)
        .fetch_optional(&mut *tx)
        .await?;
    let last: Option<(i64, String)> = sqlx::query_as(
        "SELECT seq, hash FROM audit_events WHERE org_id = $1 AND seq <= \
           (SELECT max(seq) FROM audit_events WHERE org_id = $1 AND occurred_at < $2) \
         ORDER BY seq DESC LIMIT 1",
    )
    .bind(org)
    .bind(cutoff)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((seq, hash)) = last else {
        tx.commit().await?;
        return Ok(Pruned {
            org_id: org,
            pruned: 0,
            anchor_seq: None,
        });
    };
    let deleted = sqlx::query("DELETE FROM audit_events WHERE org_id = $1 AND seq <= $2")
        .bind(org)
        .bind(seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query(
        "INSERT INTO audit_anchors (org_id, seq, hash, pruned) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (org_id) DO UPDATE SET seq = $2, hash = $3, pruned = audit_anchors.pruned + $4, updated_at = now()",
    )
    .bind(org)
    .bind(seq)
    .bind(&hash)
    .bind(i64::try_from(deleted).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    super::record(
        &mut tx,
        Some(org),
        &AuditContext::system(),
        Event::success("audit.prune", "org", org).detail(serde_json::json!({"pruned": deleted, "up_to_seq": seq, "cutoff": super::timestamp(cutoff)})),
    )
    .await?;
    tx.commit().await?;
    Ok(Pruned {
        org_id: org,
        pruned: deleted,
        anchor_seq: Some(seq),
    })
}
