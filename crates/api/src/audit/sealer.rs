//! Sealing: giving journaled events their place in their chain (migrations 0012 and 0020).
//!
//! [`super::record`] puts an event in `audit_journal` in the transaction of its change, as its
//! canonical JSON. `audit_seal` (SQL) moves journaled events into `audit_events`, their fields
//! read from that JSON, each with the next `seq` of its chain and its hash chained to the one
//! before, one transaction per batch and one sealer per chain at a time.
//!
//! Every API replica runs a background [`Sealer`]: woken by its own writes, it waits
//! [`BATCH_WINDOW`] so that concurrent requests' events share a batch (and their commits land),
//! then seals until the journal is empty; every [`POLL`] it also seals what it wasn't woken
//! for (a commit that landed after the window, the CLI's pruning, a replica that stopped).
//! Readers don't depend on it: every read of the trail seals the org it reads first
//! ([`seal`]).

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

/// How long a woken sealer waits before sealing, so that one batch carries many requests'
/// events and the transaction that woke it has committed.
pub const BATCH_WINDOW: Duration = Duration::from_millis(100);

/// How often a sealer looks for events it wasn't woken for.
pub const POLL: Duration = Duration::from_secs(1);

/// The sealers of this process, woken by [`wanted`].
static SEALERS: Mutex<Vec<Weak<Notify>>> = Mutex::new(Vec::new());

/// Tells this process's sealers that an event was journaled (called by [`super::record`]).
pub fn wanted() {
    let sealers = SEALERS.lock().unwrap_or_else(PoisonError::into_inner);
    for wake in sealers.iter().filter_map(Weak::upgrade) {
        wake.notify_one();
    }
}

/// Seals every journaled event of `org`'s chain (the platform chain when None), waiting for
/// a sealer that holds it. Readers call it first, so that they see every event committed
/// before; on its own (autocommit) so that the chain's lock is held only while sealing, or
/// inside a transaction that means to keep the chain still (pruning).
///
/// # Errors
/// Database errors.
pub async fn seal<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    org: Option<Uuid>,
) -> Result<u64, sqlx::Error> {
    let n: i32 = sqlx::query_scalar("SELECT audit_seal($1)")
        .bind(org.unwrap_or(super::PLATFORM_CHAIN))
        .fetch_one(executor)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Seals what the journal holds in every chain no other sealer holds at the moment, in one
/// transaction; returns how many events it sealed.
///
/// # Errors
/// Database errors.
pub async fn seal_all<'c>(executor: impl sqlx::PgExecutor<'c>) -> Result<u64, sqlx::Error> {
    let n: i32 = sqlx::query_scalar("SELECT audit_seal(NULL)")
        .fetch_one(executor)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A background sealer; it stops when the last clone of this handle is dropped.
#[derive(Debug, Clone)]
pub struct Sealer {
    /// Held only to keep the task going: it holds a `Weak`.
    _wake: Arc<Notify>,
}

impl Sealer {
    /// Starts sealing `pool`'s journal in the background (nothing outside a Tokio runtime).
    #[must_use]
    pub fn spawn(pool: PgPool) -> Self {
        let wake = Arc::new(Notify::new());
        {
            let mut sealers = SEALERS.lock().unwrap_or_else(PoisonError::into_inner);
            sealers.retain(|w| w.strong_count() > 0);
            sealers.push(Arc::downgrade(&wake));
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(run(pool, Arc::downgrade(&wake)));
        }
        Self { _wake: wake }
    }
}

async fn run(pool: PgPool, wake: Weak<Notify>) {
    loop {
        let Some(notify) = wake.upgrade() else { return };
        // Woken or not, look at least every POLL.
        let _ = tokio::time::timeout(POLL, notify.notified()).await;
        drop(notify);
        loop {
            tokio::time::sleep(BATCH_WINDOW).await;
            if pool.is_closed() || wake.strong_count() == 0 {
                return;
            }
            match seal_all(&pool).await {
                Ok(0) => break,
                Ok(n) => {
                    metrics::counter!("builderos_audit_sealed_events_total").increment(n);
                }
                Err(e) => {
                    if matches!(e, sqlx::Error::PoolClosed) {
                        return;
                    }
                    tracing::warn!(error = %e, "audit sealer failed; retrying in a second");
                    tokio::time::sleep(POLL).await;
                    break;
                }
            }
        }
    }
}
