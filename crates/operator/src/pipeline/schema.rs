//! The JSON value of a definition → a [`Definition`], one field at a time, so every refusal
//! carries the path of its field (and through [`Lines`], its line).
//!
//! Wrong JSON types, unknown and missing fields are `ERR_PIPELINE_SCHEMA`; a value of the right
//! type that is out of bounds or malformed gets its field's own code (`ERR_PIPELINE_RETRIES`,
//! `ERR_PIPELINE_TIMEOUT`, `ERR_PIPELINE_PROCESSOR`, `ERR_CRON_INVALID`, …).

use std::time::Duration;

use serde_json::{Map, Value};

use super::source::{Lines, child_index, child_key};
use super::{
    Definition, DefinitionError, Gate, MAX_ATTEMPTS, MAX_STEPS, MAX_TRIGGERS, OnFailure, Retries,
    Step, Trigger, codes, duration, graph, is_slug,
};
use crate::cron::{DEFAULT_TIMEZONE, Schedule};
use crate::processors::ProcessorRef;

/// The longest `description`, in characters.
const MAX_DESCRIPTION: usize = 4096;

const ROOT_FIELDS: &[&str] = &["description", "steps", "triggers"];
const STEP_FIELDS: &[&str] = &[
    "id",
    "role",
    "processor",
    "inputs",
    "depends_on",
    "retries",
    "timeout",
    "on_failure",
    "gate",
];
const RETRIES_FIELDS: &[&str] = &["max_attempts", "backoff_base", "backoff_cap", "jitter"];
const GATE_FIELDS: &[&str] = &["approval", "environment"];
const TRIGGER_FIELDS: &[&str] = &["cron", "timezone", "inputs"];

/// Builds errors that know their line.
pub(crate) struct Cx<'a> {
    pub(crate) lines: &'a Lines,
}

impl Cx<'_> {
    pub(crate) fn err(
        &self,
        code: &'static str,
        path: &str,
        message: impl Into<String>,
    ) -> DefinitionError {
        let at_path = (!path.is_empty()).then(|| path.to_owned());
        DefinitionError::new(code, message).at(self.lines.find(path), at_path)
    }

    fn schema(&self, path: &str, message: impl Into<String>) -> DefinitionError {
        self.err(codes::SCHEMA, path, message)
    }

    /// `value` as an object with no field outside `allowed`.
    fn object<'v>(
        &self,
        value: &'v Value,
        path: &str,
        what: &str,
        allowed: &[&str],
    ) -> Result<&'v Map<String, Value>, DefinitionError> {
        let Value::Object(map) = value else {
            return Err(self.schema(
                path,
                format!("{what} must be a mapping, not {}", kind(value)),
            ));
        };
        if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(self.schema(
                &child_key(path, unknown),
                format!(
                    "{what} has an unknown field `{unknown}` (known: {})",
                    allowed.join(", ")
                ),
            ));
        }
        Ok(map)
    }

    fn string<'v>(
        &self,
        value: &'v Value,
        path: &str,
        what: &str,
    ) -> Result<&'v str, DefinitionError> {
        value.as_str().ok_or_else(|| {
            self.schema(
                path,
                format!("{what} must be a string, not {}", kind(value)),
            )
        })
    }

    fn bool(&self, value: &Value, path: &str, what: &str) -> Result<bool, DefinitionError> {
        value.as_bool().ok_or_else(|| {
            self.schema(
                path,
                format!("{what} must be true or false, not {}", kind(value)),
            )
        })
    }

    fn inputs(
        &self,
        value: Option<&Value>,
        path: &str,
        what: &str,
    ) -> Result<Map<String, Value>, DefinitionError> {
        match value {
            None => Ok(Map::new()),
            Some(Value::Object(map)) => Ok(map.clone()),
            Some(other) => Err(self.schema(
                path,
                format!("{what} must be a mapping, not {}", kind(other)),
            )),
        }
    }
}

/// A present, non-null field (YAML writes an empty value as null: `inputs:` means none).
fn field<'v>(map: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    map.get(name).filter(|v| !v.is_null())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Validates a whole definition: schema, then the graph.
pub(crate) fn definition(value: &Value, lines: &Lines) -> Result<Definition, DefinitionError> {
    let cx = Cx { lines };
    let root = cx.object(value, "", "a pipeline definition", ROOT_FIELDS)?;
    let description = match field(root, "description") {
        None => None,
        Some(v) => {
            let text = cx.string(v, "description", "`description`")?;
            if text.chars().count() > MAX_DESCRIPTION {
                return Err(cx.schema(
                    "description",
                    format!("`description` is longer than {MAX_DESCRIPTION} characters"),
                ));
            }
            Some(text.to_owned())
        }
    };
    let Some(steps_value) = field(root, "steps") else {
        return Err(cx.schema(
            "steps",
            "a pipeline needs `steps`, a list of at least one step",
        ));
    };
    let Value::Array(items) = steps_value else {
        return Err(cx.schema(
            "steps",
            format!("`steps` must be a list, not {}", kind(steps_value)),
        ));
    };
    if items.is_empty() {
        return Err(cx.schema(
            "steps",
            "`steps` is empty: a pipeline needs at least one step",
        ));
    }
    if items.len() > MAX_STEPS {
        return Err(cx.schema(
            "steps",
            format!(
                "a pipeline has at most {MAX_STEPS} steps; this one has {}",
                items.len()
            ),
        ));
    }
    let steps = items
        .iter()
        .enumerate()
        .map(|(i, v)| step(&cx, v, i))
        .collect::<Result<Vec<_>, _>>()?;
    let triggers = match field(root, "triggers") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_TRIGGERS {
                return Err(cx.schema(
                    "triggers",
                    format!(
                        "a pipeline has at most {MAX_TRIGGERS} triggers; this one has {}",
                        items.len()
                    ),
                ));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| trigger(&cx, v, &child_index("triggers", i)))
                .collect::<Result<Vec<_>, _>>()?
        }
        Some(other) => {
            return Err(cx.schema(
                "triggers",
                format!("`triggers` must be a list, not {}", kind(other)),
            ));
        }
    };
    let definition = Definition {
        description,
        steps,
        triggers,
    };
    graph::check(&cx, &definition)?;
    Ok(definition)
}

fn step(cx: &Cx<'_>, value: &Value, index: usize) -> Result<Step, DefinitionError> {
    let path = child_index("steps", index);
    let map = cx.object(value, &path, &format!("steps[{index}]"), STEP_FIELDS)?;
    let at = |name: &str| child_key(&path, name);

    let Some(id_value) = field(map, "id") else {
        return Err(cx.schema(&at("id"), format!("steps[{index}] has no `id`")));
    };
    let id = cx.string(id_value, &at("id"), &format!("steps[{index}].id"))?;
    if !is_slug(id) {
        return Err(cx.schema(
            &at("id"),
            format!("step id `{id}` is not a slug: lowercase letters, digits, `_` and `-`, starting with a letter or digit, at most 63 characters"),
        ));
    }
    let label = format!("step `{id}`");

    let Some(role_value) = field(map, "role") else {
        return Err(cx.schema(&at("role"), format!("{label} has no `role`")));
    };
    let role = cx.string(role_value, &at("role"), &format!("{label}: `role`"))?;
    if !is_slug(role) {
        return Err(cx.schema(
            &at("role"),
            format!("{label}: role `{role}` is not a slug (e.g. `planner`, `builder`, `reviewer`)"),
        ));
    }

    let Some(processor_value) = field(map, "processor") else {
        return Err(cx.schema(&at("processor"), format!("{label} has no `processor`")));
    };
    let processor_text = cx.string(
        processor_value,
        &at("processor"),
        &format!("{label}: `processor`"),
    )?;
    let processor = ProcessorRef::parse(processor_text)
        .map_err(|e| cx.err(codes::PROCESSOR, &at("processor"), format!("{label}: {e}")))?;

    let inputs = cx.inputs(
        field(map, "inputs"),
        &at("inputs"),
        &format!("{label}: `inputs`"),
    )?;

    let depends_on = match field(map, "depends_on") {
        None => Vec::new(),
        Some(Value::Array(items)) => {
            let mut names: Vec<String> = Vec::with_capacity(items.len());
            for (k, item) in items.iter().enumerate() {
                let item_path = child_index(&at("depends_on"), k);
                let name = cx.string(
                    item,
                    &item_path,
                    &format!("{label}: each `depends_on` entry"),
                )?;
                if names.iter().any(|n| n == name) {
                    return Err(cx.schema(
                        &item_path,
                        format!("{label} lists `{name}` twice in `depends_on`"),
                    ));
                }
                names.push(name.to_owned());
            }
            names
        }
        Some(other) => {
            return Err(cx.schema(
                &at("depends_on"),
                format!(
                    "{label}: `depends_on` must be a list of step ids, not {}",
                    kind(other)
                ),
            ));
        }
    };

    let retries = match field(map, "retries") {
        None => Retries::default(),
        Some(v) => retries(cx, v, &at("retries"), &label)?,
    };

    let timeout = match field(map, "timeout") {
        None => None,
        Some(v) => Some({
            let text = cx.string(
                v,
                &at("timeout"),
                &format!("{label}: `timeout` (e.g. \"30s\")"),
            )?;
            duration::parse(text).map_err(|m| {
                cx.err(
                    codes::TIMEOUT,
                    &at("timeout"),
                    format!("{label}: timeout {m}"),
                )
            })?
        }),
    };

    let on_failure = match field(map, "on_failure") {
        None => OnFailure::default(),
        Some(v) => match cx.string(v, &at("on_failure"), &format!("{label}: `on_failure`"))? {
            "fail" => OnFailure::Fail,
            "continue" => OnFailure::Continue,
            other => {
                return Err(cx.schema(
                    &at("on_failure"),
                    format!("{label}: `on_failure` is `fail` or `continue`, not `{other}`"),
                ));
            }
        },
    };

    let gate = match field(map, "gate") {
        None => None,
        Some(v) => Some(gate(cx, v, &at("gate"), &label)?),
    };

    Ok(Step {
        id: id.to_owned(),
        role: role.to_owned(),
        processor,
        inputs,
        depends_on,
        retries,
        timeout,
        on_failure,
        gate,
    })
}

fn retries(
    cx: &Cx<'_>,
    value: &Value,
    path: &str,
    label: &str,
) -> Result<Retries, DefinitionError> {
    let map = cx.object(value, path, &format!("{label}: `retries`"), RETRIES_FIELDS)?;
    let at = |name: &str| child_key(path, name);
    let mut retries = Retries::default();
    if let Some(v) = field(map, "max_attempts") {
        let p = at("max_attempts");
        let out_of_range = || {
            cx.err(
                codes::RETRIES,
                &p,
                format!("{label}: `max_attempts` must be between 1 and {MAX_ATTEMPTS}, not {v}"),
            )
        };
        retries.max_attempts = match v {
            Value::Number(n) if n.is_u64() => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| (1..=MAX_ATTEMPTS).contains(n))
                .ok_or_else(out_of_range)?,
            Value::Number(n) if n.is_i64() => return Err(out_of_range()),
            other => {
                return Err(cx.schema(
                    &p,
                    format!(
                        "{label}: `max_attempts` must be a whole number, not {}",
                        kind(other)
                    ),
                ));
            }
        };
    }
    let backoff = |name: &str| -> Result<Option<Duration>, DefinitionError> {
        let Some(v) = field(map, name) else {
            return Ok(None);
        };
        let p = at(name);
        let text = cx.string(v, &p, &format!("{label}: `{name}` (e.g. \"1s\")"))?;
        duration::parse(text)
            .map(Some)
            .map_err(|m| cx.err(codes::RETRIES, &p, format!("{label}: {name} {m}")))
    };
    if let Some(base) = backoff("backoff_base")? {
        retries.backoff_base = base;
    }
    if let Some(cap) = backoff("backoff_cap")? {
        retries.backoff_cap = cap;
    }
    if retries.backoff_cap < retries.backoff_base {
        let p = if map.contains_key("backoff_cap") {
            at("backoff_cap")
        } else {
            at("backoff_base")
        };
        return Err(cx.err(
            codes::RETRIES,
            &p,
            format!(
                "{label}: `backoff_cap` ({}) is shorter than `backoff_base` ({})",
                duration::format(retries.backoff_cap),
                duration::format(retries.backoff_base)
            ),
        ));
    }
    if let Some(v) = field(map, "jitter") {
        retries.jitter = cx.bool(v, &at("jitter"), &format!("{label}: `jitter`"))?;
    }
    Ok(retries)
}

fn gate(cx: &Cx<'_>, value: &Value, path: &str, label: &str) -> Result<Gate, DefinitionError> {
    let map = cx.object(value, path, &format!("{label}: `gate`"), GATE_FIELDS)?;
    let approval = match field(map, "approval") {
        None => false,
        Some(v) => cx.bool(
            v,
            &child_key(path, "approval"),
            &format!("{label}: `gate.approval`"),
        )?,
    };
    let environment = match field(map, "environment") {
        None => None,
        Some(v) => {
            let p = child_key(path, "environment");
            let env = cx.string(v, &p, &format!("{label}: `gate.environment`"))?;
            if !is_slug(env) {
                return Err(cx.schema(
                    &p,
                    format!(
                        "{label}: environment `{env}` is not a slug (e.g. `staging`, `production`)"
                    ),
                ));
            }
            Some(env.to_owned())
        }
    };
    Ok(Gate {
        approval,
        environment,
    })
}

pub(crate) fn trigger(cx: &Cx<'_>, value: &Value, path: &str) -> Result<Trigger, DefinitionError> {
    let map = cx.object(value, path, path, TRIGGER_FIELDS)?;
    let at = |name: &str| child_key(path, name);
    let Some(cron_value) = field(map, "cron") else {
        return Err(cx.schema(&at("cron"), format!("{path} has no `cron` expression")));
    };
    let expr = cx.string(cron_value, &at("cron"), &format!("{path}.cron"))?;
    let timezone = match field(map, "timezone") {
        None => DEFAULT_TIMEZONE,
        Some(v) => cx.string(v, &at("timezone"), &format!("{path}.timezone"))?,
    };
    let cron = Schedule::parse(expr, timezone).map_err(|e| {
        let p = if e.code == codes::TIMEZONE_INVALID {
            at("timezone")
        } else {
            at("cron")
        };
        cx.err(e.code, &p, format!("{path}: {}", e.message))
    })?;
    let inputs = cx.inputs(
        field(map, "inputs"),
        &at("inputs"),
        &format!("{path}.inputs"),
    )?;
    Ok(Trigger { cron, inputs })
}
