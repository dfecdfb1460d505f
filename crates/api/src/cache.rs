//! A per-replica read cache for the two lookups every agent request repeats: who an API token
//! is, and what a prompt reference resolves to. PostgreSQL stays the only source of truth.
//!
//! Correctness rests on three rules:
//!
//! - **Invalidation comes from the database.** Triggers on the tables an entry was read from
//!   (`api_tokens`, `memberships`, `users`, `prompts`, `prompt_labels`) send
//!   `NOTIFY builderos_cache, '<org id>'` (or `*`), delivered when the writing transaction
//!   commits, to every replica; each drops that org's entries. No code path can forget to
//!   invalidate.
//! - **No stale fill.** A miss records the generation before it reads the database and stores
//!   its result only if no invalidation arrived meanwhile, so a read that raced a write never
//!   outlives the write's notification.
//! - **Read your writes.** The audit writer, which every change to an org passes through
//!   inside its transaction, drops that org's entries on this replica at once (see
//!   [`changed`]), so a client's next request after a change never sees the old answer here.
//! - **No listener, no cache.** Until the listener is connected, and from the moment its
//!   connection is lost until it is back, every lookup goes to the database and the cache is
//!   emptied. Entries also expire after [`TTL`], a bound should a notification ever go missing.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use uuid::Uuid;

use crate::permissions::{Permission, Role};

/// The channel the invalidation triggers notify on.
pub const CHANNEL: &str = "builderos_cache";

/// How long an entry may be served without being read again from the database.
pub const TTL: Duration = Duration::from_secs(30);

/// Entries per map; a full map is emptied rather than grown.
const MAX_ENTRIES: usize = 10_000;

/// An API token as authentication found it.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// Token id.
    pub id: Uuid,
    /// Token name.
    pub name: String,
    /// Its org.
    pub org_id: Uuid,
    /// Its permissions.
    pub permissions: Vec<Permission>,
    /// Its project scope.
    pub project_id: Option<Uuid>,
    /// The user it acts for.
    pub user_id: Option<Uuid>,
    /// That user's role in the org when read.
    pub user_role: Option<Role>,
    /// When it expires.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A prompt reference as `GET …/prompt-refs/{ref}` answers it.
#[derive(Debug, Clone)]
pub struct CachedFetch {
    /// The response's ETag.
    pub etag: String,
    /// The JSON body.
    pub body: Bytes,
}

/// Which prompt reference: org, the caller's project scope, the `?project=` asked for, the
/// reference.
pub type RefKey = (Uuid, Option<Uuid>, Option<Uuid>, String);

struct Entry<V> {
    org: Uuid,
    at: Instant,
    value: V,
}

/// Entries by key, and each org's keys, so that dropping an org (which every change to it
/// does) touches that org's entries only, not the whole map.
struct Map<K, V>(RwLock<Entries<K, V>>);

struct Entries<K, V> {
    by_key: HashMap<K, Entry<V>>,
    by_org: HashMap<Uuid, HashSet<K>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Map<K, V> {
    fn new() -> Self {
        Self(RwLock::new(Entries {
            by_key: HashMap::new(),
            by_org: HashMap::new(),
        }))
    }

    fn get(&self, key: &K) -> Option<V> {
        let map = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.by_key
            .get(key)
            .filter(|e| e.at.elapsed() < TTL)
            .map(|e| e.value.clone())
    }

    /// Stores `value` if `fresh()` holds, checked under the lock an invalidation clears under
    /// (so a fill either lands before the clear or is refused).
    fn put(&self, key: K, org: Uuid, value: V, fresh: impl FnOnce() -> bool) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !fresh() {
            return;
        }
        if map.by_key.len() >= MAX_ENTRIES {
            map.by_key.clear();
            map.by_org.clear();
        }
        let entry = Entry {
            org,
            at: Instant::now(),
            value,
        };
        if let Some(old) = map.by_key.insert(key.clone(), entry)
            && old.org != org
            && let Some(keys) = map.by_org.get_mut(&old.org)
        {
            keys.remove(&key);
        }
        map.by_org.entry(org).or_default().insert(key);
    }

    fn drop_org(&self, org: Option<Uuid>) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match org {
            Some(org) => {
                if let Some(keys) = map.by_org.remove(&org) {
                    for key in keys {
                        map.by_key.remove(&key);
                    }
                }
            }
            None => {
                map.by_key.clear();
                map.by_org.clear();
            }
        }
    }
}

/// The cache (one per API replica).
pub struct Cache {
    live: AtomicBool,
    generation: AtomicU64,
    tokens: Map<String, CachedToken>,
    refs: Map<RefKey, CachedFetch>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Every cache of this process, for [`changed`].
static CACHES: std::sync::Mutex<Vec<Weak<Cache>>> = std::sync::Mutex::new(Vec::new());

/// Drops `org`'s entries from every cache of this process (called by the audit writer inside
/// the changing transaction; the commit's notification repeats it after commit, so a read
/// that raced in between is dropped too).
pub fn changed(org: Uuid) {
    let caches = CACHES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for cache in caches.iter().filter_map(Weak::upgrade) {
        cache.invalidate(Some(org));
    }
}

/// A miss's permission to fill: the generation it started reading at.
#[derive(Debug, Clone, Copy)]
pub struct Ticket(Option<u64>);

impl Cache {
    /// An empty cache that serves nothing until [`Cache::listen`] connects.
    #[must_use]
    pub fn new() -> Arc<Self> {
        let cache = Arc::new(Self {
            live: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            tokens: Map::new(),
            refs: Map::new(),
        });
        let mut caches = CACHES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        caches.retain(|c| c.strong_count() > 0);
        caches.push(Arc::downgrade(&cache));
        cache
    }

    /// Call before reading the database on a miss; pass to the `put_*` afterwards.
    #[must_use]
    pub fn ticket(&self) -> Ticket {
        let generation = self.generation.load(Ordering::Acquire);
        Ticket(self.live.load(Ordering::Acquire).then_some(generation))
    }

    fn fresh(&self, ticket: Ticket) -> bool {
        self.live.load(Ordering::Acquire)
            && ticket.0 == Some(self.generation.load(Ordering::Acquire))
    }

    fn lookup<K: Eq + Hash + Clone, V: Clone>(
        &self,
        map: &Map<K, V>,
        key: &K,
        kind: &'static str,
    ) -> Option<V> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let found = map.get(key);
        let result = if found.is_some() { "hit" } else { "miss" };
        metrics::counter!("builderos_cache_lookups_total", "cache" => kind, "result" => result)
            .increment(1);
        found
    }

    /// The token with this hash, if cached.
    #[must_use]
    pub fn token(&self, hash: &str) -> Option<CachedToken> {
        self.lookup(&self.tokens, &hash.to_owned(), "api_token")
    }

    /// Caches a token read under `ticket`.
    pub fn put_token(&self, ticket: Ticket, hash: String, token: CachedToken) {
        let org = token.org_id;
        self.tokens.put(hash, org, token, || self.fresh(ticket));
    }

    /// The answer for a prompt reference, if cached.
    #[must_use]
    pub fn prompt_ref(&self, key: &RefKey) -> Option<CachedFetch> {
        self.lookup(&self.refs, key, "prompt_ref")
    }

    /// Caches a prompt reference's answer read under `ticket`.
    pub fn put_prompt_ref(&self, ticket: Ticket, key: RefKey, fetch: CachedFetch) {
        let org = key.0;
        self.refs.put(key, org, fetch, || self.fresh(ticket));
    }

    /// Drops an org's entries (`None`: everything) and voids fills in flight. The generation
    /// moves before the maps are cleared, under their locks.
    pub fn invalidate(&self, org: Option<Uuid>) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.tokens.drop_org(org);
        self.refs.drop_org(org);
    }

    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Release);
        self.invalidate(None);
    }

    /// Starts the listener that keeps the cache honest, on its own connection from `pool`.
    /// The cache serves only while it is connected; it ends when the pool closes or the cache
    /// is dropped.
    pub fn listen(self: &Arc<Self>, pool: PgPool) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache: Weak<Self> = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                if pool.is_closed() || cache.strong_count() == 0 {
                    return;
                }
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cache listener cannot connect; serving uncached");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "cache listener cannot LISTEN; serving uncached");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                match cache.upgrade() {
                    Some(c) => c.set_live(true),
                    None => return,
                }
                loop {
                    let next = listener.try_recv().await;
                    let Some(c) = cache.upgrade() else { return };
                    match next {
                        Ok(Some(n)) => c.invalidate(Uuid::parse_str(n.payload()).ok()),
                        Ok(None) => {
                            tracing::warn!("cache listener lost its connection; serving uncached");
                            c.set_live(false);
                            break;
                        }
                        Err(e) => {
                            c.set_live(false);
                            if matches!(e, sqlx::Error::PoolClosed) {
                                return;
                            }
                            tracing::warn!(error = %e, "cache listener failed; serving uncached");
                            break;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetch(etag: &str) -> CachedFetch {
        CachedFetch {
            etag: etag.to_owned(),
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn dropping_an_org_drops_exactly_its_entries() {
        let map: Map<String, u32> = Map::new();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        for i in 0..100 {
            map.put(format!("a{i}"), a, i, || true);
            map.put(format!("b{i}"), b, i, || true);
        }
        // A key stored again under another org belongs to that org only.
        map.put("a0".to_owned(), b, 7, || true);
        // Stored twice under the same org: still one entry.
        map.put("b1".to_owned(), b, 8, || true);
        map.drop_org(Some(a));
        assert_eq!(map.get(&"a1".to_owned()), None);
        assert_eq!(map.get(&"a0".to_owned()), Some(7));
        assert_eq!(map.get(&"b1".to_owned()), Some(8));
        {
            let entries = map.0.read().expect("lock");
            assert_eq!(entries.by_key.len(), 101);
            assert!(!entries.by_org.contains_key(&a));
            assert_eq!(entries.by_org.get(&b).map(HashSet::len), Some(101));
        }
        map.drop_org(Some(b));
        assert_eq!(map.get(&"a0".to_owned()), None);
        let entries = map.0.read().expect("lock");
        assert!(entries.by_key.is_empty() && entries.by_org.is_empty());
    }

    #[test]
    fn serves_only_while_live_and_drops_stale_fills() {
        let cache = Cache::new();
        let org = Uuid::now_v7();
        let key: RefKey = (org, None, None, "p@production".to_owned());
        // Not live: nothing is stored or served.
        cache.put_prompt_ref(cache.ticket(), key.clone(), fetch("a"));
        assert!(cache.prompt_ref(&key).is_none());
        cache.set_live(true);
        cache.put_prompt_ref(cache.ticket(), key.clone(), fetch("a"));
        assert_eq!(cache.prompt_ref(&key).map(|f| f.etag).as_deref(), Some("a"));
        // A fill that started before an invalidation is discarded.
        let ticket = cache.ticket();
        cache.invalidate(Some(org));
        assert!(cache.prompt_ref(&key).is_none());
        cache.put_prompt_ref(ticket, key.clone(), fetch("stale"));
        assert!(cache.prompt_ref(&key).is_none());
        // Other orgs' entries survive an org's invalidation.
        let other: RefKey = (Uuid::now_v7(), None, None, "p".to_owned());
        cache.put_prompt_ref(cache.ticket(), other.clone(), fetch("b"));
        cache.invalidate(Some(org));
        assert!(cache.prompt_ref(&other).is_some());
        cache.invalidate(None);
        assert!(cache.prompt_ref(&other).is_none());
        // Losing the listener empties the cache and stops serving.
        cache.put_prompt_ref(cache.ticket(), other.clone(), fetch("c"));
        cache.set_live(false);
        assert!(cache.prompt_ref(&other).is_none());
    }
}
