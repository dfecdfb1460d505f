//! Differences between two versions: a unified diff of the template and structured changes of
//! the variables and the rest of the spec.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use similar::{Algorithm, TextDiff};
use utoipa::ToSchema;

use super::spec::Spec;

/// A changed field: a dotted path and its old and new values (absent: `null`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FieldChange {
    /// Dotted path, e.g. `model.temperature` or `variables.words.default`.
    pub path: String,
    /// The value in the older version (null when added).
    pub from: Option<Value>,
    /// The value in the newer version (null when removed).
    pub to: Option<Value>,
}

/// How the variables changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct VariableChanges {
    /// Declared only in the newer version.
    pub added: Vec<String>,
    /// Declared only in the older version.
    pub removed: Vec<String>,
    /// Declared in both with a different type, default, requiredness or description.
    pub changed: Vec<FieldChange>,
}

/// The difference between two specs.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct SpecDiff {
    /// A unified diff of the template (empty when it is unchanged).
    pub template: String,
    /// Variable changes.
    pub variables: VariableChanges,
    /// Changes of the model hints and output invariants.
    pub metadata: Vec<FieldChange>,
}

/// Diffs `old` (labelled `old_name`) against `new`.
#[must_use]
pub fn diff(old: &Spec, new: &Spec, old_name: &str, new_name: &str) -> SpecDiff {
    let template = if old.template == new.template {
        String::new()
    } else {
        TextDiff::configure()
            .algorithm(Algorithm::Myers)
            .timeout(Duration::from_millis(500))
            .diff_lines(old.template.as_str(), new.template.as_str())
            .unified_diff()
            .context_radius(3)
            .header(old_name, new_name)
            .to_string()
    };
    let mut variables = VariableChanges::default();
    for (name, var) in &new.variables {
        match old.variables.get(name) {
            None => variables.added.push(name.clone()),
            Some(before) => changes(
                &format!("variables.{name}"),
                &to_value(before),
                &to_value(var),
                &mut variables.changed,
            ),
        }
    }
    variables.removed = old
        .variables
        .keys()
        .filter(|k| !new.variables.contains_key(*k))
        .cloned()
        .collect();
    let mut metadata = Vec::new();
    changes(
        "model",
        &to_value(&old.model),
        &to_value(&new.model),
        &mut metadata,
    );
    changes(
        "output",
        &to_value(&old.output),
        &to_value(&new.output),
        &mut metadata,
    );
    SpecDiff {
        template,
        variables,
        metadata,
    }
}

fn to_value(v: &impl Serialize) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Appends the leaf-level differences between `a` and `b` under `path`.
fn changes(path: &str, a: &Value, b: &Value, out: &mut Vec<FieldChange>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                changes(&format!("{path}.{k}"), va, vb, out);
            }
        }
        _ if a == b => {}
        _ => out.push(FieldChange {
            path: path.to_owned(),
            from: (!a.is_null()).then(|| a.clone()),
            to: (!b.is_null()).then(|| b.clone()),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn template_variables_and_metadata() {
        let a = super::super::spec::parse(
            "template: |\n  Hello {{ name }}.\n  Bye.\nvariables:\n  name: {type: string}\n  old: {type: integer, default: 1}\nmodel: {temperature: 0.2}\n",
            1 << 16,
        )
        .unwrap();
        let b = super::super::spec::parse(
            "template: |\n  Hello {{ name }}!\n  Bye.\nvariables:\n  name: {type: string, description: who}\n  new: {type: boolean, default: true}\nmodel: {temperature: 0.5, max_tokens: 10}\n",
            1 << 16,
        )
        .unwrap();
        let d = diff(&a, &b, "p@1.0.0", "p@1.1.0");
        assert!(d.template.contains("--- p@1.0.0"), "{}", d.template);
        assert!(d.template.contains("-Hello {{ name }}."), "{}", d.template);
        assert!(d.template.contains("+Hello {{ name }}!"), "{}", d.template);
        assert_eq!(d.variables.added, vec!["new"]);
        assert_eq!(d.variables.removed, vec!["old"]);
        assert_eq!(d.variables.changed[0].path, "variables.name.description");
        let paths: Vec<&str> = d.metadata.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, vec!["model.max_tokens", "model.temperature"]);
        assert!(diff(&a, &a, "x", "y").template.is_empty());
    }
}
