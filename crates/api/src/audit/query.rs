//! Audit queries: structured filters, the compact query string, keyset pagination.
//!
//! The compact form is whitespace-separated `key:value` terms, e.g.
//! `actor:alice@example.com action:deploy.* target:run/<id> outcome:denied created:>=2026-01-01 created:<2026-02-01`.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

/// How `action` is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionMatch {
    /// Exactly this action.
    Exact(String),
    /// Every action starting with this (from `deploy.*`: `deploy.`).
    Prefix(String),
}

/// Which events of the filter's actor a branch of a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorBranch {
    /// Those whose actor is named so (a user's email, a token's name).
    Name,
    /// Those whose actor has that id, and isn't named so (the other branch has them).
    IdNotName,
}

/// The filters of one query; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Actor id or display name (a user's email, a token's name).
    pub actor: Option<String>,
    /// Action.
    pub action: Option<ActionMatch>,
    /// Target type.
    pub target_type: Option<String>,
    /// Target id.
    pub target_id: Option<String>,
    /// Outcome.
    pub outcome: Option<String>,
    /// Inclusive lower bound.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound.
    pub to: Option<DateTime<Utc>>,
}

/// The most events one page may hold.
pub const MAX_LIMIT: i64 = 1000;

fn parse_action(value: &str) -> ActionMatch {
    match value.strip_suffix('*') {
        Some(prefix) => ActionMatch::Prefix(prefix.to_owned()),
        None => ActionMatch::Exact(value.to_owned()),
    }
}

/// Parses an instant: RFC 3339, or a date (`2026-01-01` = its start, UTC).
///
/// # Errors
/// A message saying what was expected.
pub fn parse_instant(raw: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(raw) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("`{raw}` is not a date (YYYY-MM-DD) or an RFC 3339 time"))
}

fn check_outcome(raw: &str) -> Result<String, String> {
    match raw {
        "success" | "denied" | "failure" => Ok(raw.to_owned()),
        _ => Err(format!(
            "outcome `{raw}` is not one of success, denied, failure"
        )),
    }
}

impl Filter {
    /// Adds the terms of a compact query string.
    ///
    /// # Errors
    /// A message naming the bad term by position and text.
    pub fn parse_query(mut self, q: &str) -> Result<Self, String> {
        for (i, term) in q.split_whitespace().enumerate() {
            let at = |msg: String| format!("query term {} `{term}`: {msg}", i + 1);
            let (key, value) = term
                .split_once(':')
                .ok_or_else(|| at("expected key:value".into()))?;
            if value.is_empty() {
                return Err(at("empty value".into()));
            }
            match key {
                "actor" => self.actor = Some(value.to_owned()),
                "action" => self.action = Some(parse_action(value)),
                "target" => match value.split_once('/') {
                    Some((t, id)) if !t.is_empty() && !id.is_empty() => {
                        self.target_type = Some(t.to_owned());
                        self.target_id = Some(id.to_owned());
                    }
                    Some(_) => return Err(at("expected target:type or target:type/id".into())),
                    None => self.target_type = Some(value.to_owned()),
                },
                "outcome" => self.outcome = Some(check_outcome(value).map_err(at)?),
                "created" => {
                    let (op, rest) = [">=", "<=", ">", "<", "="]
                        .iter()
                        .find_map(|op| value.strip_prefix(op).map(|r| (*op, r)))
                        .unwrap_or(("", value));
                    let instant = parse_instant(rest).map_err(at)?;
                    match op {
                        ">=" => self.from = Some(instant),
                        ">" => self.from = Some(instant + chrono::Duration::microseconds(1)),
                        "<" => self.to = Some(instant),
                        "<=" => self.to = Some(instant + chrono::Duration::microseconds(1)),
                        _ => {
                            // A bare date means that whole day.
                            self.from = Some(instant);
                            self.to = Some(instant + chrono::Duration::days(1));
                        }
                    }
                }
                other => {
                    return Err(at(format!(
                        "unknown key `{other}` (expected actor, action, target, outcome, created)"
                    )));
                }
            }
        }
        Ok(self)
    }

    /// Fills in the structured query parameters.
    ///
    /// # Errors
    /// A message naming the bad parameter.
    pub fn from_params(p: &Params) -> Result<Self, String> {
        let mut f = Self {
            actor: p.actor.clone(),
            action: p.action.as_deref().map(parse_action),
            target_type: p.target_type.clone(),
            target_id: p.target_id.clone(),
            outcome: p
                .outcome
                .as_deref()
                .map(check_outcome)
                .transpose()
                .map_err(|e| format!("outcome: {e}"))?,
            from: p
                .from
                .as_deref()
                .map(parse_instant)
                .transpose()
                .map_err(|e| format!("from: {e}"))?,
            to: p
                .to
                .as_deref()
                .map(parse_instant)
                .transpose()
                .map_err(|e| format!("to: {e}"))?,
        };
        if let Some(q) = &p.q {
            f = f.parse_query(q)?;
        }
        if f.target_id.is_some() && f.target_type.is_none() {
            return Err("target_id: needs target_type too".into());
        }
        Ok(f)
    }

    /// Appends `AND …` conditions for this filter, with the actor matched as `actor`
    /// says. A page of one actor's events is read as two branches (by name, then by id), each
    /// an ordered walk of its own index that stops after a page, rather than as one `OR`,
    /// which PostgreSQL answers by fetching every event of the actor and sorting them.
    pub fn push_conditions(&self, qb: &mut QueryBuilder<Postgres>, actor: ActorBranch) {
        if let Some(name) = &self.actor {
            match actor {
                ActorBranch::Name => {
                    qb.push(" AND actor_name = ").push_bind(name.clone());
                }
                ActorBranch::IdNotName => {
                    qb.push(" AND actor_id = ")
                        .push_bind(name.clone())
                        .push(" AND actor_name IS DISTINCT FROM ")
                        .push_bind(name.clone());
                }
            }
        }
        match &self.action {
            Some(ActionMatch::Exact(a)) => {
                qb.push(" AND action = ").push_bind(a.clone());
            }
            Some(ActionMatch::Prefix(p)) => {
                // LIKE with the prefix's own wildcards escaped; served by the text_pattern_ops index.
                let escaped = p
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                qb.push(" AND action LIKE ")
                    .push_bind(format!("{escaped}%"));
            }
            None => {}
        }
        if let Some(t) = &self.target_type {
            qb.push(" AND target_type = ").push_bind(t.clone());
        }
        if let Some(id) = &self.target_id {
            qb.push(" AND target_id = ").push_bind(id.clone());
        }
        if let Some(o) = &self.outcome {
            qb.push(" AND outcome = ").push_bind(o.clone());
        }
        if let Some(from) = self.from {
            qb.push(" AND occurred_at >= ").push_bind(from);
        }
        if let Some(to) = self.to {
            qb.push(" AND occurred_at < ").push_bind(to);
        }
    }
}

/// Query-string parameters of the query and export endpoints.
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Params {
    /// Compact query, e.g. `actor:alice@example.com action:deploy.* outcome:denied created:>=2026-01-01`.
    pub q: Option<String>,
    /// Actor id or display name.
    pub actor: Option<String>,
    /// Action; a trailing `*` matches a prefix (`deploy.*`).
    pub action: Option<String>,
    /// Target type.
    pub target_type: Option<String>,
    /// Target id (with target_type).
    pub target_id: Option<String>,
    /// `success`, `denied` or `failure`.
    pub outcome: Option<String>,
    /// Inclusive lower time bound (RFC 3339 or YYYY-MM-DD).
    pub from: Option<String>,
    /// Exclusive upper time bound.
    pub to: Option<String>,
    /// Opaque cursor from the previous page.
    pub cursor: Option<String>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<i64>,
    /// Export format: `jsonl` (default) or `csv`.
    pub format: Option<String>,
}

/// An opaque cursor: the seq to continue below, bound to the org it came from.
#[must_use]
pub fn encode_cursor(org: Uuid, seq: i64) -> String {
    crate::domain::encode_cursor(org, seq)
}

/// Reads a cursor made by [`encode_cursor`] for `org`.
///
/// # Errors
/// A message when the cursor is malformed or belongs to another org.
pub fn decode_cursor(org: Uuid, cursor: &str) -> Result<i64, String> {
    crate::domain::decode_cursor(org, cursor)?
        .parse()
        .map_err(|_| crate::domain::BAD_CURSOR.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from the docs parses into the expected filter.
    #[test]
    fn compact_query() {
        let f = Filter::default()
            .parse_query("actor:alice@example.com action:deploy.* target:run/42 outcome:denied created:>=2026-01-01 created:<2026-02-01")
            .expect("parses");
        assert_eq!(f.actor.as_deref(), Some("alice@example.com"));
        assert_eq!(f.action, Some(ActionMatch::Prefix("deploy.".into())));
        assert_eq!(
            (f.target_type.as_deref(), f.target_id.as_deref()),
            (Some("run"), Some("42"))
        );
        assert_eq!(f.outcome.as_deref(), Some("denied"));
        assert_eq!(
            f.from.map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:00:00+00:00".into())
        );
        assert_eq!(
            f.to.map(|t| t.to_rfc3339()),
            Some("2026-02-01T00:00:00+00:00".into())
        );
    }

    /// Errors point at the bad term.
    #[test]
    fn errors_point_at_the_term() {
        let e = Filter::default()
            .parse_query("action:x colour:blue")
            .expect_err("bad key");
        assert!(e.contains("term 2") && e.contains("colour"), "{e}");
        let e = Filter::default()
            .parse_query("created:>=yesterday")
            .expect_err("bad date");
        assert!(e.contains("term 1") && e.contains("yesterday"), "{e}");
        let e = Filter::default()
            .parse_query("outcome:maybe")
            .expect_err("bad outcome");
        assert!(e.contains("maybe"), "{e}");
        assert!(Filter::default().parse_query("justaword").is_err());
        assert!(Filter::default().parse_query("target:/x").is_err());
    }

    /// Cursors round-trip and are bound to their org.
    #[test]
    fn cursors() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let c = encode_cursor(a, 42);
        assert_eq!(decode_cursor(a, &c), Ok(42));
        assert!(decode_cursor(b, &c).is_err());
        assert!(decode_cursor(a, "!!").is_err());
    }
}
