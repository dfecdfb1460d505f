//! References inside step inputs: `${run.inputs.<key>}` and `${steps.<id>.outputs.<name>}`.
//!
//! A string that is exactly one reference becomes the referenced value (a run input keeps its
//! JSON type; a step output is its text). A reference inside other text is interpolated as text
//! (a run input that is not a string is written as compact JSON). `$${` is a literal `${`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::source::{child_index, child_key};
use super::{DefinitionError, Step, codes, is_slug};

/// Longest run input key or output name a reference may name.
const MAX_NAME: usize = 128;

/// One piece of a string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    /// Literal text (escapes already undone).
    Text(String),
    /// `${run.inputs.<key>}`.
    RunInput(&'a str),
    /// `${steps.<id>.outputs.<name>}`.
    StepOutput { step: &'a str, name: &'a str },
}

/// Splits `text` into literal text and references.
///
/// # Errors
/// A message for an unclosed `${` or a `${…}` that is not a reference.
pub(crate) fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$${") {
            literal.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let Some(end) = after.find('}') else {
                return Err(format!(
                    "`{}` opens `${{` without a closing `}}` (write `$${{` for a literal `${{`)",
                    shorten(tail)
                ));
            };
            let piece = reference(&after[..end])?;
            if !literal.is_empty() {
                out.push(Piece::Text(std::mem::take(&mut literal)));
            }
            out.push(piece);
            rest = &after[end + 1..];
        } else {
            literal.push('$');
            rest = &tail[1..];
        }
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Piece::Text(literal));
    }
    Ok(out)
}

fn shorten(s: &str) -> String {
    let mut short: String = s.chars().take(40).collect();
    if short.len() < s.len() {
        short.push('…');
    }
    short
}

fn valid_name(name: &str, extra: &[char]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

fn reference(inner: &str) -> Result<Piece<'_>, String> {
    if let Some(key) = inner.strip_prefix("run.inputs.")
        && valid_name(key, &[])
    {
        return Ok(Piece::RunInput(key));
    }
    if let Some(rest) = inner.strip_prefix("steps.")
        && let Some((step, name)) = rest.split_once(".outputs.")
        && is_slug(step)
        && valid_name(name, &['.', '/'])
    {
        return Ok(Piece::StepOutput { step, name });
    }
    Err(format!(
        "`${{{}}}` is not a reference: write `${{run.inputs.<key>}}` or `${{steps.<id>.outputs.<name>}}` (or `$${{` for a literal `${{`)",
        shorten(inner)
    ))
}

/// Calls `visit(path, text)` for every string value under `inputs`, with its path below `base`.
pub(crate) fn for_each_string<'v, E>(
    inputs: &'v Map<String, Value>,
    base: &str,
    visit: &mut impl FnMut(&str, &'v str) -> Result<(), E>,
) -> Result<(), E> {
    fn walk<'v, E>(
        value: &'v Value,
        path: &str,
        visit: &mut impl FnMut(&str, &'v str) -> Result<(), E>,
    ) -> Result<(), E> {
        match value {
            Value::String(s) => visit(path, s),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| walk(v, &child_index(path, i), visit)),
            Value::Object(map) => map
                .iter()
                .try_for_each(|(k, v)| walk(v, &child_key(path, k), visit)),
            _ => Ok(()),
        }
    }
    inputs
        .iter()
        .try_for_each(|(k, v)| walk(v, &child_key(base, k), visit))
}

/// Step `step`'s inputs with every reference replaced; see [`super::resolve_inputs`].
pub(crate) fn resolve(
    step: &Step,
    run_inputs: &Map<String, Value>,
    outputs: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Value, DefinitionError> {
    let fail = |path: &str, message: String| {
        DefinitionError::new(
            codes::INPUT_REF,
            format!("step `{}`, {path}: {message}", step.id),
        )
        .at(None, Some(path.to_owned()))
    };
    let lookup = |path: &str, piece: &Piece<'_>| -> Result<Value, DefinitionError> {
        match piece {
            Piece::Text(t) => Ok(Value::String(t.clone())),
            Piece::RunInput(key) => run_inputs
                .get(*key)
                .cloned()
                .ok_or_else(|| fail(path, format!("the run has no input `{key}`"))),
            Piece::StepOutput { step: id, name } => outputs
                .get(*id)
                .and_then(|o| o.get(*name))
                .map(|text| Value::String(text.clone()))
                .ok_or_else(|| fail(path, format!("step `{id}` has no output `{name}`"))),
        }
    };
    fn resolve_value(
        value: &Value,
        path: &str,
        lookup: &impl Fn(&str, &Piece<'_>) -> Result<Value, DefinitionError>,
        fail: &impl Fn(&str, String) -> DefinitionError,
    ) -> Result<Value, DefinitionError> {
        Ok(match value {
            Value::String(s) => {
                let parts = pieces(s).map_err(|m| fail(path, m))?;
                match parts.as_slice() {
                    [] => Value::String(String::new()),
                    [one] => lookup(path, one)?,
                    many => {
                        let mut text = String::new();
                        for piece in many {
                            match lookup(path, piece)? {
                                Value::String(s) => text.push_str(&s),
                                other => text.push_str(&other.to_string()),
                            }
                        }
                        Value::String(text)
                    }
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| resolve_value(v, &child_index(path, i), lookup, fail))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            resolve_value(v, &child_key(path, k), lookup, fail)?,
                        ))
                    })
                    .collect::<Result<_, DefinitionError>>()?,
            ),
            other => other.clone(),
        })
    }
    let mut out = Map::new();
    for (key, value) in &step.inputs {
        let path = child_key("inputs", key);
        out.insert(key.clone(), resolve_value(value, &path, &lookup, &fail)?);
    }
    Ok(Value::Object(out))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Exact references, interpolation and escapes split as written.
    #[test]
    fn splits_text_and_references() {
        assert_eq!(
            pieces("${run.inputs.ticket}").unwrap(),
            vec![Piece::RunInput("ticket")]
        );
        assert_eq!(
            pieces("fix ${run.inputs.ticket} per ${steps.plan.outputs.plan.md}!").unwrap(),
            vec![
                Piece::Text("fix ".into()),
                Piece::RunInput("ticket"),
                Piece::Text(" per ".into()),
                Piece::StepOutput {
                    step: "plan",
                    name: "plan.md"
                },
                Piece::Text("!".into()),
            ]
        );
        assert_eq!(
            pieces("cost: $5, literal $${run.inputs.x}").unwrap(),
            vec![Piece::Text("cost: $5, literal ${run.inputs.x}".into())]
        );
        assert_eq!(pieces("").unwrap(), vec![]);
        assert_eq!(pieces("$$").unwrap(), vec![Piece::Text("$$".into())]);
    }

    /// Malformed references are refused with a message that shows them.
    #[test]
    fn refuses_malformed_references() {
        for bad in [
            "${run.inputs.}",
            "${run.inputs.a b}",
            "${steps.Plan.outputs.x}",
            "${steps.plan.output.x}",
            "${steps.plan.outputs.}",
            "${env.HOME}",
            "${}",
            "hello ${run.inputs.x",
        ] {
            let e = pieces(bad).expect_err(bad);
            assert!(e.contains("${"), "{bad}: {e}");
        }
    }
}
