//! Recomputing a chain: each event's hash must match its fields, its `prev_hash` must be the
//! previous event's hash, and `seq` must have no gaps (from the retention anchor, if any).
//!
//! Pure: the API endpoint, the CLI over the database and the CLI over an export file all feed
//! events into one [`ChainVerifier`].

use serde::Serialize;
use utoipa::ToSchema;

use super::{GENESIS_HASH, StoredEvent};

/// What is wrong at one position of a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// The event's fields don't hash to its `hash` (it was altered).
    HashMismatch,
    /// The event's `prev_hash` isn't the previous event's hash.
    BrokenLink,
    /// One or more events are missing before this one (deleted).
    Missing,
}

/// One problem, at one `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Problem {
    /// Where (for `missing`: the first missing seq).
    pub seq: i64,
    /// What.
    pub kind: ProblemKind,
}

/// The result of a verification.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Report {
    /// No problems found.
    pub ok: bool,
    /// Events checked.
    pub checked: u64,
    /// The first seq at which the chain is broken.
    pub first_broken_seq: Option<i64>,
    /// The problems found, in chain order (at most 1,000 listed).
    pub problems: Vec<Problem>,
    /// Gaps tolerated because the input is a filtered export (`complete = false`).
    pub gaps: u64,
}

const MAX_PROBLEMS: usize = 1000;

/// Feeds events in ascending `seq` order; reports every break.
#[derive(Debug)]
pub struct ChainVerifier {
    previous: Option<(i64, String)>,
    complete: bool,
    checked: u64,
    gaps: u64,
    problems: Vec<Problem>,
}

impl ChainVerifier {
    /// Verifies a complete chain that starts after `anchor` (the last pruned event), or at
    /// seq 1 with the genesis hash.
    #[must_use]
    pub fn complete(anchor: Option<(i64, String)>) -> Self {
        Self {
            previous: Some(anchor.unwrap_or((0, GENESIS_HASH.to_owned()))),
            complete: true,
            checked: 0,
            gaps: 0,
            problems: Vec::new(),
        }
    }

    /// Verifies a possibly filtered export: every hash is checked, links only between
    /// consecutive seqs, gaps are counted rather than reported.
    #[must_use]
    pub fn partial() -> Self {
        Self {
            previous: None,
            complete: false,
            checked: 0,
            gaps: 0,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, seq: i64, kind: ProblemKind) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { seq, kind });
        }
    }

    /// Checks the next event.
    pub fn push(&mut self, event: &StoredEvent) {
        self.checked += 1;
        if !event.hash_is_valid() {
            self.problem(event.seq, ProblemKind::HashMismatch);
        }
        if let Some((prev_seq, prev_hash)) = self.previous.take() {
            if event.seq == prev_seq + 1 {
                if event.prev_hash != prev_hash {
                    self.problem(event.seq, ProblemKind::BrokenLink);
                }
            } else if event.seq > prev_seq + 1 {
                if self.complete {
                    self.problem(prev_seq + 1, ProblemKind::Missing);
                } else {
                    self.gaps += 1;
                }
            } else {
                // Out of order or duplicated seq.
                self.problem(event.seq, ProblemKind::BrokenLink);
            }
        }
        self.previous = Some((event.seq, event.hash.clone()));
    }

    /// The report.
    #[must_use]
    pub fn finish(self) -> Report {
        let first_broken_seq = self.problems.iter().map(|p| p.seq).min();
        Report {
            ok: self.problems.is_empty(),
            checked: self.checked,
            first_broken_seq,
            problems: self.problems,
            gaps: self.gaps,
        }
    }
}

/// Verifies an export file as it is written — newest first — without holding it in memory:
/// every event's hash, and each link between consecutive seqs (`next.hash == this.prev_hash`).
/// With `complete`, gaps are breaks and the export must reach seq 1.
#[derive(Debug)]
pub struct DescendingVerifier {
    previous: Option<(i64, String)>,
    complete: bool,
    checked: u64,
    gaps: u64,
    problems: Vec<Problem>,
}

impl DescendingVerifier {
    /// A verifier; `complete` for unfiltered exports.
    #[must_use]
    pub fn new(complete: bool) -> Self {
        Self {
            previous: None,
            complete,
            checked: 0,
            gaps: 0,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, seq: i64, kind: ProblemKind) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { seq, kind });
        }
    }

    /// Checks the next (older) event.
    pub fn push(&mut self, event: &StoredEvent) {
        self.checked += 1;
        if !event.hash_is_valid() {
            self.problem(event.seq, ProblemKind::HashMismatch);
        }
        if let Some((newer_seq, newer_prev_hash)) = self.previous.take() {
            if event.seq == newer_seq - 1 {
                if event.hash != newer_prev_hash {
                    self.problem(newer_seq, ProblemKind::BrokenLink);
                }
            } else if event.seq < newer_seq - 1 {
                if self.complete {
                    self.problem(event.seq + 1, ProblemKind::Missing);
                } else {
                    self.gaps += 1;
                }
            } else {
                self.problem(event.seq, ProblemKind::BrokenLink);
            }
        }
        self.previous = Some((event.seq, event.prev_hash.clone()));
    }

    /// The report.
    #[must_use]
    pub fn finish(mut self) -> Report {
        if self.complete
            && let Some((oldest, prev_hash)) = self.previous.take()
            && oldest == 1
            && prev_hash != GENESIS_HASH
        {
            self.problem(1, ProblemKind::BrokenLink);
        }
        self.problems.sort_by_key(|p| p.seq);
        let first_broken_seq = self.problems.first().map(|p| p.seq);
        Report {
            ok: self.problems.is_empty(),
            checked: self.checked,
            first_broken_seq,
            problems: self.problems,
            gaps: self.gaps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain(n: i64) -> Vec<StoredEvent> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let mut e = StoredEvent {
                    id: uuid::Uuid::now_v7(),
                    org_id: None,
                    seq,
                    occurred_at: "2026-01-01T00:00:00.000000Z".into(),
                    actor_type: "system".into(),
                    actor_id: None,
                    actor_name: Some("system".into()),
                    auth_method: None,
                    action: "test.event".into(),
                    target_type: None,
                    target_id: None,
                    outcome: "success".into(),
                    request_id: None,
                    client_addr: None,
                    user_agent: None,
                    detail: json!({"n": seq}),
                    prev_hash: prev.clone(),
                    hash: String::new(),
                };
                e.hash = e.chained().hash();
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    /// An intact chain verifies.
    #[test]
    fn intact() {
        let mut v = ChainVerifier::complete(None);
        chain(5).iter().for_each(|e| v.push(e));
        let r = v.finish();
        assert!(r.ok && r.checked == 5 && r.first_broken_seq.is_none());
    }

    /// An altered event and a deleted one are both named.
    #[test]
    fn altered_and_deleted() {
        let mut events = chain(6);
        events[1].detail = json!({"n": 999});
        events.remove(3);
        let mut v = ChainVerifier::complete(None);
        events.iter().for_each(|e| v.push(e));
        let r = v.finish();
        assert!(!r.ok);
        assert_eq!(r.first_broken_seq, Some(2));
        assert!(r.problems.contains(&Problem {
            seq: 2,
            kind: ProblemKind::HashMismatch
        }));
        assert!(r.problems.contains(&Problem {
            seq: 4,
            kind: ProblemKind::Missing
        }));
    }

    /// A filtered export tolerates gaps but not edits.
    #[test]
    fn partial_exports() {
        let events = chain(6);
        let mut v = ChainVerifier::partial();
        [&events[0], &events[2], &events[3]]
            .iter()
            .for_each(|e| v.push(e));
        let r = v.finish();
        assert!(r.ok && r.gaps == 1);
        let mut forged = events[4].clone();
        forged.action = "forged".into();
        let mut v = ChainVerifier::partial();
        v.push(&forged);
        assert!(!v.finish().ok);
    }

    /// Exports are read newest first; the descending verifier finds the same breaks.
    #[test]
    fn descending_exports() {
        let events = chain(6);
        let mut v = DescendingVerifier::new(true);
        events.iter().rev().for_each(|e| v.push(e));
        assert!(v.finish().ok);
        let mut tampered = events.clone();
        tampered[2].outcome = "denied".into();
        tampered.remove(4);
        let mut v = DescendingVerifier::new(true);
        tampered.iter().rev().for_each(|e| v.push(e));
        let r = v.finish();
        assert_eq!(r.first_broken_seq, Some(3));
        assert!(r.problems.contains(&Problem {
            seq: 5,
            kind: ProblemKind::Missing
        }));
        let mut v = DescendingVerifier::new(false);
        events
            .iter()
            .rev()
            .filter(|e| e.seq != 4)
            .for_each(|e| v.push(e));
        let r = v.finish();
        assert!(r.ok && r.gaps == 1);
    }

    /// A pruned chain verifies from its anchor.
    #[test]
    fn from_anchor() {
        let events = chain(6);
        let anchor = (events[2].seq, events[2].hash.clone());
        let mut v = ChainVerifier::complete(Some(anchor));
        events[3..].iter().for_each(|e| v.push(e));
        assert!(v.finish().ok);
        let mut v = ChainVerifier::complete(None);
        events[3..].iter().for_each(|e| v.push(e));
        assert_eq!(v.finish().first_broken_seq, Some(1));
    }
}
