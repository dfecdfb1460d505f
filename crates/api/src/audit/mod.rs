//! The one audit writer. Every mutating operation calls [`record`] with the transaction that
//! makes the change, so the change and its event commit or roll back together.
//!
//! Events are hash-chained per org (org-less platform events — sign-up, sign-in — form their
//! own chain), `hash = SHA-256(canonical JSON of the event including prev_hash)`. The writer
//! puts the event in the journal with the change; [`sealer`] then gives it its place in the
//! chain — one sealer per chain at a time, so concurrent writers in one org still produce one
//! gapless sequence.

pub mod export;
pub mod query;
pub mod retention;
pub mod sealer;
pub mod store;
pub mod verify;

use std::borrow::Cow;
use std::sync::{Arc, LazyLock, OnceLock};

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{Arguments as _, Execute as _, PgConnection, Postgres};
use uuid::Uuid;

/// The chain id of platform events that belong to no org.
pub const PLATFORM_CHAIN: Uuid = Uuid::nil();
/// `prev_hash` of the first event of a chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Detail larger than this (canonical JSON bytes) is replaced by a truncation marker.
pub const MAX_DETAIL_BYTES: usize = 8 * 1024;

/// Keys whose values never reach an event, whatever the caller passes.
const REDACTED_KEYS: &[&str] = &[
    "password",
    "token",
    "secret",
    "refresh_token",
    "access_token",
    "authorization",
    "prompt",
    "response",
    "code",
    "code_verifier",
];

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A signed-in user.
    User {
        /// The user id.
        id: Uuid,
        /// Their email, as display name.
        name: String,
    },
    /// An API token.
    Token {
        /// The token id.
        id: Uuid,
        /// The token's name.
        name: String,
    },
    /// The platform itself (schedulers, retention).
    System,
    /// Nobody authenticated (failed sign-ins).
    Anonymous,
}

/// The request-level facts every event carries.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// Who acted.
    pub actor: Actor,
    /// How they authenticated: `password`, `magic_link`, `oauth:<provider>`, `api_token`, …
    pub auth_method: Option<String>,
    /// The request id.
    pub request_id: Option<String>,
    /// The client's address.
    pub client_addr: Option<String>,
    /// The client's user agent (truncated).
    pub user_agent: Option<String>,
}

impl AuditContext {
    /// A context for work the platform does on its own.
    #[must_use]
    pub fn system() -> Self {
        Self {
            actor: Actor::System,
            auth_method: None,
            request_id: None,
            client_addr: None,
            user_agent: None,
        }
    }

    /// The same request, now attributed to `actor` (after a successful sign-in).
    #[must_use]
    pub fn as_actor(&self, actor: Actor, auth_method: &str) -> Self {
        Self {
            actor,
            auth_method: Some(auth_method.to_owned()),
            ..self.clone()
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused for lack of permission.
    Denied,
    /// It was attempted and failed (bad credentials, invalid input on a protected action).
    Failure,
}

impl Outcome {
    /// The stored form.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Denied => "denied",
            Outcome::Failure => "failure",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone)]
pub struct Event {
    /// Dotted action name from the catalogue in docs/audit.md.
    pub action: &'static str,
    /// The kind of thing acted on.
    pub target_type: Option<&'static str>,
    /// Its id.
    pub target_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Bounded, redacted detail.
    pub detail: Value,
}

impl Event {
    /// A successful `action` on `target_type`/`target_id`.
    pub fn success(
        action: &'static str,
        target_type: &'static str,
        target_id: impl ToString,
    ) -> Self {
        Self {
            action,
            target_type: Some(target_type),
            target_id: Some(target_id.to_string()),
            outcome: Outcome::Success,
            detail: Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the outcome.
    #[must_use]
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Sets the detail.
    #[must_use]
    pub fn detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The hashed form of an event: every stored field except `hash`.
#[derive(Debug, Serialize)]
pub struct ChainedFields<'a> {
    /// Event id.
    pub id: Uuid,
    /// Org (None for platform events).
    pub org_id: Option<Uuid>,
    /// Position in the chain.
    pub seq: i64,
    /// RFC 3339 with microseconds, UTC.
    pub occurred_at: String,
    /// `user`, `token`, `system`, `anonymous`.
    pub actor_type: &'a str,
    /// Actor id.
    pub actor_id: Option<&'a str>,
    /// Actor display name.
    pub actor_name: Option<&'a str>,
    /// How the actor authenticated.
    pub auth_method: Option<&'a str>,
    /// Action name.
    pub action: &'a str,
    /// Target type.
    pub target_type: Option<&'a str>,
    /// Target id.
    pub target_id: Option<&'a str>,
    /// Outcome.
    pub outcome: &'a str,
    /// Request id.
    pub request_id: Option<&'a str>,
    /// Client address.
    pub client_addr: Option<&'a str>,
    /// User agent.
    pub user_agent: Option<&'a str>,
    /// Detail.
    pub detail: &'a Value,
    /// The previous event's hash.
    pub prev_hash: &'a str,
}

impl ChainedFields<'_> {
    /// `SHA-256(canonical JSON)` of these fields.
    ///
    /// Written field by field in sorted key order — the same bytes as
    /// `builderos_canon::to_canonical_bytes(self)` (a test pins that), without building an
    /// intermediate JSON value, because verification hashes millions of events.
    #[must_use]
    pub fn hash(&self) -> String {
        let mut out = Vec::with_capacity(512);
        self.write_canonical(&mut out, self.prev_hash, self.seq);
        builderos_canon::sha256_hex(&out)
    }

    /// The canonical JSON split around the values of the two fields the database fills in
    /// under the chain's lock (`prev_hash`, then `seq`): the bytes before `prev_hash`'s value
    /// (ending in its opening quote), between it and `seq`'s value (from its closing quote),
    /// and after `seq`'s value. `before + prev_hash + between + seq + after` is exactly the
    /// canonical JSON whose SHA-256 is [`ChainedFields::hash`]; `self.prev_hash` and
    /// `self.seq` are ignored.
    #[must_use]
    pub fn canonical_split(&self) -> [Vec<u8>; 3] {
        let mut out = Vec::with_capacity(512);
        let [prev_at, seq_at] = self.write_canonical(&mut out, "", 0);
        // The blank `prev_hash` is written `""` and the blank `seq` as `0`.
        let after = out.split_off(seq_at + 1);
        out.truncate(seq_at);
        let between = out.split_off(prev_at + 1);
        [out, between, after]
    }

    /// Writes the canonical JSON with the given chain fields; returns where `prev_hash`'s
    /// value (its opening quote) and `seq`'s value start.
    fn write_canonical(&self, out: &mut Vec<u8>, prev_hash: &str, seq: i64) -> [usize; 2] {
        use builderos_canon::{write_canonical_str as text, write_canonical_value};
        fn opt(out: &mut Vec<u8>, v: Option<&str>) {
            match v {
                Some(s) => builderos_canon::write_canonical_str(s, out),
                None => out.extend_from_slice(b"null"),
            }
        }
        out.extend_from_slice(b"{\"action\":");
        text(self.action, out);
        out.extend_from_slice(b",\"actor_id\":");
        opt(out, self.actor_id);
        out.extend_from_slice(b",\"actor_name\":");
        opt(out, self.actor_name);
        out.extend_from_slice(b",\"actor_type\":");
        text(self.actor_type, out);
        out.extend_from_slice(b",\"auth_method\":");
        opt(out, self.auth_method);
        out.extend_from_slice(b",\"client_addr\":");
        opt(out, self.client_addr);
        out.extend_from_slice(b",\"detail\":");
        write_canonical_value(self.detail, out);
        out.extend_from_slice(b",\"id\":\"");
        out.extend_from_slice(
            self.id
                .hyphenated()
                .encode_lower(&mut Uuid::encode_buffer())
                .as_bytes(),
        );
        out.extend_from_slice(b"\",\"occurred_at\":");
        text(&self.occurred_at, out);
        out.extend_from_slice(b",\"org_id\":");
        match self.org_id {
            Some(org) => {
                out.push(b'"');
                out.extend_from_slice(
                    org.hyphenated()
                        .encode_lower(&mut Uuid::encode_buffer())
                        .as_bytes(),
                );
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"outcome\":");
        text(self.outcome, out);
        out.extend_from_slice(b",\"prev_hash\":");
        let prev_at = out.len();
        text(prev_hash, out);
        out.extend_from_slice(b",\"request_id\":");
        opt(out, self.request_id);
        out.extend_from_slice(b",\"seq\":");
        let seq_at = out.len();
        out.extend_from_slice(seq.to_string().as_bytes());
        out.extend_from_slice(b",\"target_id\":");
        opt(out, self.target_id);
        out.extend_from_slice(b",\"target_type\":");
        opt(out, self.target_type);
        out.extend_from_slice(b",\"user_agent\":");
        opt(out, self.user_agent);
        out.push(b'}');
        [prev_at, seq_at]
    }
}

/// An event as stored and exported: every chained field plus its hash. JSON Lines exports
/// are exactly this, one per line, so they can be verified offline.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredEvent {
    /// Event id.
    pub id: Uuid,
    /// Org (None for platform events).
    pub org_id: Option<Uuid>,
    /// Gapless position in the org's chain.
    pub seq: i64,
    /// RFC 3339, microseconds, UTC.
    pub occurred_at: String,
    /// `user`, `token`, `system` or `anonymous`.
    pub actor_type: String,
    /// Actor id.
    pub actor_id: Option<String>,
    /// Actor display name (a user's email, a token's name).
    pub actor_name: Option<String>,
    /// How the actor authenticated.
    pub auth_method: Option<String>,
    /// Dotted action name (see docs/audit.md).
    pub action: String,
    /// Target type.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: String,
    /// Request id.
    pub request_id: Option<String>,
    /// Client address.
    pub client_addr: Option<String>,
    /// User agent.
    pub user_agent: Option<String>,
    /// Bounded, redacted detail.
    pub detail: Value,
    /// The previous event's hash.
    pub prev_hash: String,
    /// SHA-256 of the canonical JSON of every field above.
    pub hash: String,
}

impl StoredEvent {
    /// The fields the hash covers.
    #[must_use]
    pub fn chained(&self) -> ChainedFields<'_> {
        ChainedFields {
            id: self.id,
            org_id: self.org_id,
            seq: self.seq,
            occurred_at: self.occurred_at.clone(),
            actor_type: &self.actor_type,
            actor_id: self.actor_id.as_deref(),
            actor_name: self.actor_name.as_deref(),
            auth_method: self.auth_method.as_deref(),
            action: &self.action,
            target_type: self.target_type.as_deref(),
            target_id: self.target_id.as_deref(),
            outcome: &self.outcome,
            request_id: self.request_id.as_deref(),
            client_addr: self.client_addr.as_deref(),
            user_agent: self.user_agent.as_deref(),
            detail: &self.detail,
            prev_hash: &self.prev_hash,
        }
    }

    /// Whether `hash` is the hash of the other fields.
    #[must_use]
    pub fn hash_is_valid(&self) -> bool {
        self.chained().hash() == self.hash
    }
}

/// The columns of [`StoredEvent`], in order, for `SELECT`s.
pub const EVENT_COLUMNS: &str = "id, org_id, seq, occurred_at, actor_type, actor_id, actor_name, auth_method, action, \
     target_type, target_id, outcome, request_id, client_addr, user_agent, detail, prev_hash, hash";

/// Reads a row selected as [`EVENT_COLUMNS`] lists them, by position: verification and export
/// decode millions of rows, and a lookup by name for each of eighteen columns costs a tenth of
/// the throughput (measured: 218–250k rows/s by name, 231–259k by position, in alternation).
/// Debug builds check the names.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for StoredEvent {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::{Column as _, Row as _};
        debug_assert!(
            row.columns()
                .iter()
                .map(|c| c.name())
                .eq(EVENT_COLUMNS.split(',').map(str::trim)),
            "a StoredEvent row must select EVENT_COLUMNS"
        );
        let at: DateTime<Utc> = row.try_get(3)?;
        Ok(Self {
            id: row.try_get(0)?,
            org_id: row.try_get(1)?,
            seq: row.try_get(2)?,
            occurred_at: timestamp(at),
            actor_type: row.try_get(4)?,
            actor_id: row.try_get(5)?,
            actor_name: row.try_get(6)?,
            auth_method: row.try_get(7)?,
            action: row.try_get(8)?,
            target_type: row.try_get(9)?,
            target_id: row.try_get(10)?,
            outcome: row.try_get(11)?,
            request_id: row.try_get(12)?,
            client_addr: row.try_get(13)?,
            user_agent: row.try_get(14)?,
            detail: row.try_get(15)?,
            prev_hash: row.try_get(16)?,
            hash: row.try_get(17)?,
        })
    }
}

/// The canonical timestamp form used in the hash.
#[must_use]
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Whether `key` names a secret: one of [`REDACTED_KEYS`], or ends in `_` and one of them, in
/// any ASCII case.
fn is_redacted(key: &str) -> bool {
    let key = key.as_bytes();
    REDACTED_KEYS.iter().any(|r| {
        let r = r.as_bytes();
        key.len() >= r.len()
            && key[key.len() - r.len()..].eq_ignore_ascii_case(r)
            && (key.len() == r.len() || key[key.len() - r.len() - 1] == b'_')
    })
}

/// Redacts secret-looking keys and caps the size of `detail`.
#[must_use]
pub fn sanitize(detail: Value) -> Value {
    fn redact(v: Value) -> Value {
        match v {
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| {
                        if is_redacted(&k) {
                            (without_nul(k), Value::String("[redacted]".to_owned()))
                        } else {
                            (without_nul(k), redact(v))
                        }
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
            Value::String(s) => Value::String(without_nul(s)),
            other => other,
        }
    }
    let detail = redact(detail);
    let size = builderos_canon::value_to_canonical_bytes(&detail).len();
    if size > MAX_DETAIL_BYTES {
        serde_json::json!({"truncated": true, "original_bytes": size})
    } else {
        detail
    }
}

/// The journal's columns, in the order [`Journaled::bind`] adds their values.
const JOURNAL_COLUMNS: &str = "chain_id, before_prev, before_seq, after_seq";
/// How many values [`Journaled::bind`] adds.
const JOURNAL_VALUES: usize = 4;

/// Records `event` in the caller's transaction, for `org`'s chain (the platform chain when
/// `org` is None): it commits or rolls back with the change. It joins the chain — gets its
/// `seq` and hash — when it is sealed after the commit ([`sealer`]), so it is not in
/// `audit_events` when read back inside the transaction; every read of the trail seals first.
///
/// A change made by one statement whose event is known before it runs should use
/// [`record_with`] instead: the same event, without a statement of its own.
///
/// # Errors
/// Database errors; the transaction then rolls back with the change.
pub async fn record(
    conn: &mut PgConnection,
    org: Option<Uuid>,
    ctx: &AuditContext,
    event: Event,
) -> Result<(), sqlx::Error> {
    let mut args = PgArguments::default();
    Journaled::new(org, ctx, event)
        .bind(&mut args)
        .map_err(sqlx::Error::Encode)?;
    /// The journal insert on its own, built once.
    static INSERT: LazyLock<Arc<str>> = LazyLock::new(|| {
        format!(
            "INSERT INTO audit_journal ({JOURNAL_COLUMNS}) VALUES ({})",
            placeholders(1)
        )
        .into()
    });
    sqlx::query_with(sqlx::AssertSqlSafe(Arc::clone(&INSERT)), args)
        .execute(&mut *conn)
        .await?;
    sealer::wanted();
    Ok(())
}

/// `change` — one `INSERT`, `UPDATE` or `DELETE`, with its binds — with `event` recorded by
/// the same statement: the journal insert of [`record`] rides along as a data-modifying `WITH`
/// in front of it. The caller runs what this returns in the change's transaction, as it would
/// have run `change` (its rows, `RETURNING` and rows affected are the change's), and the two
/// commit or roll back together; a change that fails takes its event with it, and so does a
/// transaction the caller drops because of what the change found. A statement of its own
/// would cost a round trip to the database, about as much as the insert itself
/// (docs/audit.md, "Cost").
///
/// # Errors
/// [`sqlx::Error::Encode`] when `change`'s binds failed to encode.
pub fn record_with<'q>(
    mut change: Query<'q, Postgres, PgArguments>,
    org: Option<Uuid>,
    ctx: &AuditContext,
    event: Event,
) -> Result<Query<'q, Postgres, PgArguments>, sqlx::Error> {
    let mut args = change
        .take_arguments()
        .map_err(sqlx::Error::Encode)?
        .unwrap_or_default();
    let first = args.len() + 1;
    Journaled::new(org, ctx, event)
        .bind(&mut args)
        .map_err(sqlx::Error::Encode)?;
    let journal = journal_cte(first);
    let sql = change.sql();
    let sql = sql.as_str().trim_start();
    // A change with a WITH of its own keeps it, after the journal's.
    let sql = match leading_with(sql) {
        Some((with, rest)) => format!("{with} {journal}, {rest}"),
        None => format!("WITH {journal} {sql}"),
    };
    sealer::wanted();
    Ok(sqlx::query_with(sqlx::AssertSqlSafe(sql), args))
}

/// Reads a row of a change run through [`record_with`] as `T`, for
/// `.try_map(audit::from_row::<T>)` where the change was a `query_as`.
///
/// # Errors
/// When the row doesn't decode as `T`.
pub fn from_row<T: for<'r> sqlx::FromRow<'r, PgRow>>(row: PgRow) -> Result<T, sqlx::Error> {
    T::from_row(&row)
}

/// `audit_event AS (INSERT INTO audit_journal (…) VALUES ($first, …))`, the `WITH` item
/// [`record_with`] puts in front of a change whose own values are `$1` to `$first - 1`; built
/// once for each `first` a change can have (every change of the platform has far fewer values).
fn journal_cte(first: usize) -> Cow<'static, str> {
    const BUILT_UP_TO: usize = 64;
    static BUILT: [OnceLock<String>; BUILT_UP_TO] = [const { OnceLock::new() }; BUILT_UP_TO];
    let build = || {
        format!(
            "audit_event AS (INSERT INTO audit_journal ({JOURNAL_COLUMNS}) VALUES ({}))",
            placeholders(first)
        )
    };
    match BUILT.get(first) {
        Some(cell) => Cow::Borrowed(cell.get_or_init(build)),
        None => Cow::Owned(build()),
    }
}

/// `$first, …` for the journal's values.
fn placeholders(first: usize) -> String {
    (first..first + JOURNAL_VALUES)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A statement's leading `WITH` (or `WITH RECURSIVE`) and what follows it.
fn leading_with(sql: &str) -> Option<(&str, &str)> {
    /// What follows `word` and the whitespace after it, when `s` starts with them.
    fn keyword<'s>(s: &'s str, word: &str) -> Option<&'s str> {
        let (head, rest) = (s.get(..word.len())?, &s[word.len()..]);
        let boundary = rest.starts_with(char::is_whitespace);
        (head.eq_ignore_ascii_case(word) && boundary).then(|| rest.trim_start())
    }
    let rest = keyword(sql, "WITH")?;
    match keyword(rest, "RECURSIVE") {
        Some(after) => Some((&sql[..sql.len() - after.len()], after)),
        None => Some((&sql[..sql.len() - rest.len()], rest)),
    }
}

/// An event as the journal takes it: its chain, and its canonical JSON split around the chain
/// fields the sealer fills in. Sealing reads the event's columns from that JSON (migration
/// 0020), so the fields stored are exactly the fields hashed.
struct Journaled {
    chain: Uuid,
    split: [Vec<u8>; 3],
}

impl Journaled {
    fn new(org: Option<Uuid>, ctx: &AuditContext, event: Event) -> Self {
        fn text(s: Option<&str>, max: usize) -> Option<Cow<'_, str>> {
            s.map(|s| storable(s, max))
        }
        if let (Some(org), Outcome::Success) = (org, event.outcome) {
            // Every change to an org passes here: this replica's cached reads of the org go
            // now, so its next request reads what this transaction wrote (other replicas hear
            // of the commit through the cache triggers).
            crate::cache::changed(org);
        }
        let (actor_type, actor_id, actor_name) = match &ctx.actor {
            Actor::User { id, name } => ("user", Some(id.to_string()), Some(name.as_str())),
            Actor::Token { id, name } => ("token", Some(id.to_string()), Some(name.as_str())),
            Actor::System => ("system", None, Some("system")),
            Actor::Anonymous => ("anonymous", None, None),
        };
        let detail = sanitize(event.detail);
        let actor_name = text(actor_name, usize::MAX);
        let auth_method = text(ctx.auth_method.as_deref(), usize::MAX);
        let target_id = text(event.target_id.as_deref(), usize::MAX);
        let request_id = text(ctx.request_id.as_deref(), 128);
        let client_addr = text(ctx.client_addr.as_deref(), usize::MAX);
        let user_agent = text(ctx.user_agent.as_deref(), 256);
        let split = ChainedFields {
            id: Uuid::now_v7(),
            org_id: org,
            // Filled in by the database under the chain's lock.
            seq: 0,
            occurred_at: timestamp(Utc::now().trunc_subsecs(6)),
            actor_type,
            actor_id: actor_id.as_deref(),
            actor_name: actor_name.as_deref(),
            auth_method: auth_method.as_deref(),
            action: event.action,
            target_type: event.target_type,
            target_id: target_id.as_deref(),
            outcome: event.outcome.as_str(),
            request_id: request_id.as_deref(),
            client_addr: client_addr.as_deref(),
            user_agent: user_agent.as_deref(),
            detail: &detail,
            prev_hash: "",
        }
        .canonical_split();
        Self {
            chain: org.unwrap_or(PLATFORM_CHAIN),
            split,
        }
    }

    /// Adds the values of [`JOURNAL_COLUMNS`] to `args`, in order.
    fn bind(self, args: &mut PgArguments) -> Result<(), sqlx::error::BoxDynError> {
        let [before_prev, before_seq, after_seq] = self.split;
        args.add(self.chain)?;
        args.add(before_prev)?;
        args.add(before_seq)?;
        args.add(after_seq)?;
        Ok(())
    }
}

/// [`storable`], of any length, for detail's keys and strings.
fn without_nul(s: String) -> String {
    match storable(&s, usize::MAX) {
        Cow::Borrowed(_) => s,
        Cow::Owned(cleaned) => cleaned,
    }
}

/// `s` as an event field: at most `max` characters, and no NUL (PostgreSQL's text and jsonb
/// can't hold one, and sealing must be able to store every event); borrowed when it already is.
fn storable(s: &str, max: usize) -> Cow<'_, str> {
    // Never more characters than bytes.
    let end = if s.len() <= max {
        s.len()
    } else {
        s.char_indices().nth(max).map_or(s.len(), |(at, _)| at)
    };
    let s = &s[..end];
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written hash input is exactly the generic canonical JSON of the fields.
    #[test]
    fn hash_matches_generic_canonical_form() {
        let detail =
            serde_json::json!({"z": [1, 2.5, null], "caf\u{e9}": "e\u{301}", "q": "a\"b\n"});
        for (org, actor_id, agent) in [
            (Some(Uuid::now_v7()), Some("u1"), None),
            (None, None, Some("Mozilla/5.0 \u{1f600}")),
        ] {
            let f = ChainedFields {
                id: Uuid::now_v7(),
                org_id: org,
                seq: 42,
                occurred_at: timestamp(Utc::now()),
                actor_type: "user",
                actor_id,
                actor_name: Some("Zo\u{eb} <z@example.com>"),
                auth_method: Some("password"),
                action: "project.create",
                target_type: Some("project"),
                target_id: None,
                outcome: "success",
                request_id: Some("r-1"),
                client_addr: None,
                user_agent: agent,
                detail: &detail,
                prev_hash: GENESIS_HASH,
            };
            assert_eq!(
                f.hash(),
                builderos_canon::canonical_sha256_hex(&f).expect("canonical")
            );
        }
    }

    /// The split the database fills in is the canonical JSON with the chain fields cut out,
    /// so `before + prev_hash + between + seq + after` hashes to `hash()`.
    #[test]
    fn canonical_split_rejoins_to_the_hashed_bytes() {
        let detail = serde_json::json!({"seq": 3, "prev_hash": "x\"y", "n\u{e9}": ["\u{1f600}"]});
        for (seq, prev) in [
            (1, GENESIS_HASH),
            (9_007_199_254_740_993, &"ab".repeat(32)[..]),
        ] {
            let f = ChainedFields {
                id: Uuid::now_v7(),
                org_id: Some(Uuid::now_v7()),
                seq,
                occurred_at: timestamp(Utc::now()),
                actor_type: "token",
                actor_id: Some("t-1"),
                actor_name: Some("deploy bot \"prod\""),
                auth_method: None,
                action: "deploy.request",
                target_type: Some("run"),
                target_id: Some("42"),
                outcome: "denied",
                request_id: None,
                client_addr: Some("127.0.0.1"),
                user_agent: Some("curl/8"),
                detail: &detail,
                prev_hash: prev,
            };
            let [before, between, after] = f.canonical_split();
            let joined = [
                &before[..],
                prev.as_bytes(),
                &between[..],
                seq.to_string().as_bytes(),
                &after[..],
            ]
            .concat();
            assert_eq!(builderos_canon::sha256_hex(&joined), f.hash());
            assert!(
                before.ends_with(b"\"prev_hash\":\""),
                "{}",
                String::from_utf8_lossy(&before)
            );
            assert!(between.starts_with(b"\",\"request_id\":"));
            assert!(after.starts_with(b",\"target_id\":"));
        }
    }

    /// A change's own `WITH` is found, whatever its case and spacing; nothing else is.
    #[test]
    fn leading_with_splits_a_changes_own_with() {
        assert_eq!(
            leading_with("WITH a AS (SELECT 1) UPDATE t SET x = 1"),
            Some(("WITH ", "a AS (SELECT 1) UPDATE t SET x = 1"))
        );
        assert_eq!(
            leading_with("with\n  recursive r AS (SELECT 1) DELETE FROM t"),
            Some(("with\n  recursive ", "r AS (SELECT 1) DELETE FROM t"))
        );
        assert_eq!(
            leading_with("WITH recursive_name AS (SELECT 1) DELETE FROM t"),
            Some(("WITH ", "recursive_name AS (SELECT 1) DELETE FROM t"))
        );
        for sql in [
            "UPDATE t SET x = 1",
            "WITHOUT",
            "WITH",
            "INSERT INTO with_t VALUES (1)",
            "é",
        ] {
            assert_eq!(leading_with(sql), None, "{sql}");
        }
        assert_eq!(placeholders(3).split(',').count(), JOURNAL_VALUES);
        assert_eq!(placeholders(3), "$3,$4,$5,$6");
        assert_eq!(JOURNAL_COLUMNS.split(',').count(), JOURNAL_VALUES);
    }

    /// Secret-looking keys are redacted at any depth; oversized detail is replaced.
    #[test]
    fn sanitize_redacts_and_caps() {
        let d = sanitize(
            serde_json::json!({"email": "a@b.c", "password": "hunter2", "nested": {"refresh_token": "x", "api_token": "y"}}),
        );
        assert_eq!(d["email"], "a@b.c");
        assert_eq!(d["password"], "[redacted]");
        assert_eq!(d["nested"]["refresh_token"], "[redacted]");
        assert_eq!(d["nested"]["api_token"], "[redacted]");
        let big = sanitize(serde_json::json!({"blob": "x".repeat(MAX_DETAIL_BYTES)}));
        assert_eq!(big["truncated"], true);
    }

    /// Event fields are cut to their length in characters and never hold a NUL; detail's keys
    /// and strings at any depth neither.
    #[test]
    fn stored_text_has_no_nul_and_keeps_its_length() {
        assert!(matches!(storable("curl/8", 256), Cow::Borrowed("curl/8")));
        assert_eq!(storable("a\0b", 10), "a\u{fffd}b");
        assert_eq!(storable("d\u{e9}j\u{e0}", 3), "d\u{e9}j");
        assert_eq!(storable("\u{1f600}\0x", 2), "\u{1f600}\u{fffd}");
        assert_eq!(storable("abc", 0), "");
        let d = sanitize(serde_json::json!({"k\u{0}": ["v\u{0}", {"\u{0}": "\u{0}"}]}));
        assert_eq!(
            d,
            serde_json::json!({"k\u{fffd}": ["v\u{fffd}", {"\u{fffd}": "\u{fffd}"}]})
        );
    }

    /// A key is redacted when it is a secret's name or ends in `_` and one, in any ASCII case.
    #[test]
    fn redacted_keys_match_by_name_or_suffix() {
        for key in [
            "password",
            "Password",
            "new_PASSWORD",
            "x_token",
            "código_secret",
            "code",
        ] {
            assert!(is_redacted(key), "{key}");
        }
        for key in [
            "passwords",
            "xpassword",
            "tokens",
            "_",
            "",
            "códe",
            "encode",
        ] {
            assert!(!is_redacted(key), "{key}");
        }
    }

    /// The journal's `WITH` item is the same whether it was built before or is built now.
    #[test]
    fn journal_cte_numbers_values_after_the_change() {
        for first in [1, 3, 63, 64, 200] {
            let cte = journal_cte(first);
            assert_eq!(cte, journal_cte(first));
            assert!(cte.starts_with(
                "audit_event AS (INSERT INTO audit_journal (chain_id, before_prev, before_seq, after_seq) VALUES"
            ));
            let last = first + JOURNAL_VALUES - 1;
            assert!(
                cte.contains(&format!("VALUES (${first},"))
                    && cte.ends_with(&format!(",${last}))"))
            );
        }
    }
}
