//! Pipeline definitions: YAML or JSON in, a validated [`Definition`] out.
//!
//! A definition is a DAG of [`Step`]s (each naming an agent role, a processor, inputs and what
//! it depends on) plus optional cron [`Trigger`]s. [`parse`] checks everything that can be
//! checked without running anything — the schema, the graph (unknown steps, cycles), retry and
//! timeout bounds, processor references, input references, cron expressions and time zones —
//! and reports the first problem as a [`DefinitionError`] with a stable `ERR_*` code, the path of
//! the offending field and, when the text tells it, its line.
//!
//! The JSON a [`Definition`] serializes to is the form a user would write, defaults included, and
//! parses back to an equal definition: it is what each run stores as its snapshot.
//!
//! # Layout
//! - this file: the types, [`parse`], [`resolve_inputs`], the error.
//! - `source`: text → JSON value plus the line of every node.
//! - `schema`: JSON value → [`Definition`], field by field.
//! - `graph`: duplicate and unknown steps, cycles, input references against ancestors.
//! - `refs`: the `${…}` reference syntax and its resolution.
//! - [`duration`]: `500ms` / `30s` / `5m` / `1h`.
//! - [`templates`]: the shipped templates.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use crate::cron::Schedule;
use crate::processors::ProcessorRef;

pub mod duration;
mod graph;
mod refs;
mod schema;
mod source;
pub mod templates;
#[cfg(test)]
mod tests;

pub use source::MAX_SOURCE_BYTES;

/// The most steps one definition may have.
pub const MAX_STEPS: usize = 200;
/// The most cron triggers one definition may have.
pub const MAX_TRIGGERS: usize = 20;
/// The most attempts a step may make (the first one included).
pub const MAX_ATTEMPTS: u32 = 10;

/// The stable error codes of [`DefinitionError`] (and of [`crate::cron::CronError`]).
pub mod codes {
    /// The text is not YAML/JSON (or is too large, or repeats a key).
    pub const PARSE: &str = "ERR_PIPELINE_PARSE";
    /// Valid YAML/JSON but not a definition: unknown or missing field, wrong type, bad slug,
    /// no steps or too many.
    pub const SCHEMA: &str = "ERR_PIPELINE_SCHEMA";
    /// Two steps share an id.
    pub const DUPLICATE_STEP: &str = "ERR_PIPELINE_DUPLICATE_STEP";
    /// `depends_on` names a step that doesn't exist, or the step itself.
    pub const UNKNOWN_STEP: &str = "ERR_PIPELINE_UNKNOWN_STEP";
    /// `depends_on` forms a cycle.
    pub const CYCLE: &str = "ERR_PIPELINE_CYCLE";
    /// A `retries` value out of bounds or malformed.
    pub const RETRIES: &str = "ERR_PIPELINE_RETRIES";
    /// A `timeout` out of bounds or malformed.
    pub const TIMEOUT: &str = "ERR_PIPELINE_TIMEOUT";
    /// A `processor` that is not `builtin:<name>` or an acceptable URL.
    pub const PROCESSOR: &str = "ERR_PIPELINE_PROCESSOR";
    /// A malformed `${…}` reference, one to a step that is not an ancestor, or (when resolving)
    /// a run input or output that is missing.
    pub const INPUT_REF: &str = "ERR_PIPELINE_INPUT_REF";
    /// A cron expression that is not 5 valid fields or an accepted nickname.
    pub const CRON_INVALID: &str = "ERR_CRON_INVALID";
    /// A time zone that is not an IANA name.
    pub const TIMEZONE_INVALID: &str = "ERR_TIMEZONE_INVALID";
}

/// The text format of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML (one document).
    Yaml,
    /// JSON.
    Json,
}

/// A validated pipeline definition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    /// What the pipeline is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The steps, in source order (at least one, at most [`MAX_STEPS`]).
    pub steps: Vec<Step>,
    /// Cron triggers (may be empty: runs can always be started by hand or through the API).
    pub triggers: Vec<Trigger>,
}

/// One step of a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Unique within the definition; a slug: `[a-z0-9][a-z0-9_-]{0,62}`.
    pub id: String,
    /// The agent role that performs it (`planner`, `builder`, `reviewer`, …); a slug.
    pub role: String,
    /// The processor it calls.
    pub processor: ProcessorRef,
    /// What the processor gets, after [`resolve_inputs`] replaces references.
    pub inputs: Map<String, Value>,
    /// Steps that must finish before this one starts.
    pub depends_on: Vec<String>,
    /// How often, and how far apart, it is attempted.
    pub retries: Retries,
    /// How long one attempt may take; when not given, the operator's default
    /// (`BR_OS_OPERATOR_DEFAULT_TIMEOUT_SECONDS`, 5 minutes unless configured).
    #[serde(
        serialize_with = "duration::serialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// What a failure (after the last attempt) does to the run.
    pub on_failure: OnFailure,
    /// Held for approval before it runs (the approvals work gives this its behaviour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// A step's attempts and the backoff between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Retries {
    /// Attempts in all, the first included: `1..=10`, default 1 (no retry).
    pub max_attempts: u32,
    /// The delay before the first retry, doubled for each later one; default 1s.
    #[serde(serialize_with = "duration::serialize")]
    pub backoff_base: Duration,
    /// The longest delay; at least `backoff_base`; default 60s.
    #[serde(serialize_with = "duration::serialize")]
    pub backoff_cap: Duration,
    /// Spread each delay uniformly over `[delay/2, delay]`, so steps that failed together don't
    /// retry together; default true.
    pub jitter: bool,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            jitter: true,
        }
    }
}

impl Retries {
    /// The delay before attempt `next_attempt` (2 = the first retry):
    /// `min(cap, base × 2^(next_attempt − 2))`, or with jitter a uniformly random value in
    /// `[delay/2, delay]`. Zero before the first attempt.
    #[must_use]
    pub fn delay_before(&self, next_attempt: u32) -> Duration {
        let Some(doublings) = next_attempt.checked_sub(2) else {
            return Duration::ZERO;
        };
        let delay = 2u32
            .checked_pow(doublings)
            .and_then(|factor| self.backoff_base.checked_mul(factor))
            .map_or(self.backoff_cap, |d| d.min(self.backoff_cap));
        if !self.jitter {
            return delay;
        }
        let half = delay / 2;
        let spread = u64::try_from((delay - half).as_nanos()).unwrap_or(u64::MAX);
        // Without entropy the delay stays unjittered rather than failing the retry.
        let Ok(random) = getrandom::u64() else {
            return delay;
        };
        let offset = spread.checked_add(1).map_or(random, |n| random % n);
        half + Duration::from_nanos(offset)
    }
}

/// What a step's final failure does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The run fails (steps not yet started are skipped).
    #[default]
    Fail,
    /// The run goes on without this step's outputs, and ends `partial`.
    Continue,
}

/// A gate before a step: reserved for the approvals work, which gives it behaviour; today only
/// its shape is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    /// The step waits for an approval.
    pub approval: bool,
    /// The environment the step deploys to (a slug), whose protection rules apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// A cron trigger: start a run with `inputs` at every tick of `cron`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trigger {
    /// When, written as the `cron` and `timezone` fields of the trigger.
    #[serde(flatten)]
    pub cron: Schedule,
    /// The run inputs of the runs it starts.
    pub inputs: Map<String, Value>,
}

/// Why a definition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}{message}", where_(.line, .path))]
pub struct DefinitionError {
    /// A stable code from [`codes`].
    pub code: &'static str,
    /// What is wrong, naming the step where one is involved.
    pub message: String,
    /// The line in the source (1-based), when known.
    pub line: Option<usize>,
    /// The field, e.g. `steps[2].retries.max_attempts` (for [`resolve_inputs`] errors, relative to
    /// the step: `inputs.title`).
    pub path: Option<String>,
}

fn where_(line: &Option<usize>, path: &Option<String>) -> String {
    match (line, path) {
        (Some(l), Some(p)) => format!("line {l}, {p}: "),
        (Some(l), None) => format!("line {l}: "),
        (None, Some(p)) => format!("{p}: "),
        (None, None) => String::new(),
    }
}

impl DefinitionError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            line: None,
            path: None,
        }
    }

    pub(crate) fn at(mut self, line: Option<usize>, path: Option<String>) -> Self {
        self.line = line;
        self.path = path;
        self
    }
}

/// Parses and validates a definition.
///
/// # Errors
/// The first problem found, with one of the [`codes`].
pub fn parse(source: &str, format: Format) -> Result<Definition, DefinitionError> {
    let (value, lines) = source::read(source, format)?;
    schema::definition(&value, &lines)
}

/// Step `step`'s inputs with every `${run.inputs.<key>}` and `${steps.<id>.outputs.<name>}`
/// replaced: from `run_inputs`, and from `outputs` (step id → output name → text).
///
/// # Errors
/// `ERR_PIPELINE_INPUT_REF` naming the missing run input or output, or a malformed reference.
pub fn resolve_inputs(
    step: &Step,
    run_inputs: &Map<String, Value>,
    outputs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Value, DefinitionError> {
    refs::resolve(step, run_inputs, outputs)
}

impl Definition {
    /// The step with this id.
    #[must_use]
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The steps that list `id` in their `depends_on`, in source order.
    #[must_use]
    pub fn dependents(&self, id: &str) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.depends_on.iter().any(|d| d == id))
            .map(|s| s.id.as_str())
            .collect()
    }

    /// The steps that depend on nothing (where a run starts), in source order.
    #[must_use]
    pub fn roots(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.depends_on.is_empty())
            .map(|s| s.id.as_str())
            .collect()
    }
}

/// Deserializing validates exactly as [`parse`] does (a stored snapshot is checked again when
/// read back), so a `Definition` only ever exists valid.
impl<'de> Deserialize<'de> for Definition {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        schema::definition(&value, &source::Lines::default()).map_err(serde::de::Error::custom)
    }
}

/// Whether `s` is a slug: `[a-z0-9][a-z0-9_-]{0,62}`.
#[must_use]
pub fn is_slug(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && s.len() <= 63
}
