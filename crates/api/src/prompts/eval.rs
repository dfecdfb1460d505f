//! Eval cases and the verdicts of outputs against them.
//!
//! A case has inputs and expectations; CI (or a pipeline step) posts the output it got for
//! each case against a version, and the server decides pass or fail here, so every client is
//! judged by the same rules. Outputs are not stored: only verdicts and failure reasons, which
//! quote the expectation, never the output.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::spec::{OutputFormat, Spec};

/// Longest pattern or expected string.
const MAX_EXPECTATION: usize = 4096;
/// Most expectations per case.
pub const MAX_EXPECTATIONS: usize = 32;

/// One expectation about an output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Expectation {
    /// The output contains this text.
    Contains(String),
    /// The output does not contain this text.
    NotContains(String),
    /// The output matches this regular expression (Rust `regex` syntax).
    Regex(String),
    /// The output is JSON matching this JSON Schema.
    JsonSchema(Value),
    /// The output equals this text exactly (after trimming surrounding whitespace).
    Golden(String),
}

/// What is wrong with an expectation, for `ERR_INPUTS`.
///
/// # Errors
/// A message naming the expectation.
pub fn check(expect: &[Expectation]) -> Result<(), String> {
    if expect.is_empty() {
        return Err("a case needs at least one expectation".to_owned());
    }
    if expect.len() > MAX_EXPECTATIONS {
        return Err(format!(
            "a case has at most {MAX_EXPECTATIONS} expectations"
        ));
    }
    for (i, e) in expect.iter().enumerate() {
        match e {
            Expectation::Contains(s)
            | Expectation::NotContains(s)
            | Expectation::Golden(s)
            | Expectation::Regex(s)
                if s.is_empty() || s.len() > MAX_EXPECTATION =>
            {
                return Err(format!("expect[{i}]: must be 1 to {MAX_EXPECTATION} bytes"));
            }
            Expectation::Regex(p) => {
                regex::RegexBuilder::new(p)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| format!("expect[{i}]: not a valid regex: {e}"))?;
            }
            Expectation::JsonSchema(schema) => {
                jsonschema::validator_for(schema)
                    .map_err(|e| format!("expect[{i}]: not a valid JSON Schema: {e}"))?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Why `output` fails `expect` and the spec's own output invariants; empty when it passes.
#[must_use]
pub fn judge(output: &str, expect: &[Expectation], spec: &Spec) -> Vec<String> {
    let mut failures = Vec::new();
    let json = || serde_json::from_str::<Value>(output.trim());
    for e in expect {
        match e {
            Expectation::Contains(s) if !output.contains(s.as_str()) => {
                failures.push(format!("does not contain {s:?}"));
            }
            Expectation::NotContains(s) if output.contains(s.as_str()) => {
                failures.push(format!("contains {s:?}"));
            }
            Expectation::Regex(p) => {
                match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                    Ok(re) if re.is_match(output) => {}
                    Ok(_) => failures.push(format!("does not match /{p}/")),
                    Err(_) => failures.push(format!("the pattern /{p}/ is invalid")),
                }
            }
            Expectation::JsonSchema(schema) => failures.extend(schema_failure(output, schema)),
            Expectation::Golden(g) if output.trim() != g.trim() => {
                failures.push("differs from the golden output".to_owned());
            }
            _ => {}
        }
    }
    if let Some(o) = &spec.output {
        if let Some(max) = o.max_chars
            && output.chars().count() > max as usize
        {
            failures.push(format!("is longer than the spec's max_chars {max}"));
        }
        for s in &o.must_contain {
            if !output.contains(s.as_str()) {
                failures.push(format!("does not contain the spec's must_contain {s:?}"));
            }
        }
        for s in &o.must_not_contain {
            if output.contains(s.as_str()) {
                failures.push(format!("contains the spec's must_not_contain {s:?}"));
            }
        }
        if o.format == OutputFormat::Json {
            match (&o.schema, json()) {
                (_, Err(_)) => {
                    failures.push("is not the JSON the spec's format asks for".to_owned())
                }
                (Some(schema), Ok(_)) => failures.extend(
                    schema_failure(output, schema).map(|f| format!("spec output.schema: {f}")),
                ),
                (None, Ok(_)) => {}
            }
        }
    }
    failures
}

fn schema_failure(output: &str, schema: &Value) -> Option<String> {
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return Some("the JSON Schema is invalid".to_owned());
    };
    match serde_json::from_str::<Value>(output.trim()) {
        Err(_) => Some("is not JSON".to_owned()),
        Ok(v) => validator
            .iter_errors(&v)
            .next()
            .map(|e| format!("does not match the JSON Schema at `{}`", e.instance_path())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn spec(yaml: &str) -> Spec {
        super::super::spec::parse(yaml, 1 << 16).unwrap()
    }

    #[test]
    fn verdicts() {
        let s = spec("template: hi\n");
        let expect = vec![
            Expectation::Contains("Ada".into()),
            Expectation::NotContains("sorry".into()),
            Expectation::Regex("^Hello".into()),
        ];
        assert!(judge("Hello Ada", &expect, &s).is_empty());
        assert_eq!(judge("Hi, sorry", &expect, &s).len(), 3);
        let schema =
            Expectation::JsonSchema(serde_json::json!({"type": "object", "required": ["a"]}));
        assert!(judge("{\"a\": 1}", std::slice::from_ref(&schema), &s).is_empty());
        assert_eq!(
            judge("{\"b\": 1}", std::slice::from_ref(&schema), &s).len(),
            1
        );
        assert_eq!(judge("nope", &[schema], &s), vec!["is not JSON".to_owned()]);
        assert!(judge(" gold \n", &[Expectation::Golden("gold".into())], &s).is_empty());
    }

    #[test]
    fn spec_output_invariants_apply_too() {
        let s =
            spec("template: hi\noutput: {format: json, max_chars: 20, schema: {type: object}}\n");
        assert!(judge("{}", &[Expectation::Contains("{".into())], &s).is_empty());
        assert_eq!(
            judge("[]", &[Expectation::Contains("[".into())], &s).len(),
            1
        );
        assert!(
            !judge(
                "{\"long\": \"xxxxxxxxxxxxxxxxxxxx\"}",
                &[Expectation::Contains("{".into())],
                &s
            )
            .is_empty()
        );
    }

    #[test]
    fn bad_expectations_are_refused() {
        assert!(check(&[]).is_err());
        assert!(check(&[Expectation::Regex("(".into())]).is_err());
        assert!(check(&[Expectation::JsonSchema(serde_json::json!({"type": 3}))]).is_err());
        assert!(check(&[Expectation::Contains(String::new())]).is_err());
        assert!(check(&[Expectation::Contains("x".into())]).is_ok());
    }
}
