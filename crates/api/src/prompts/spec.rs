//! The prompt spec: YAML in, a validated [`Spec`] and its content hash out.
//!
//! ```yaml
//! template: |
//!   Summarise {{ document }} in at most {{ words }} words.
//! variables:
//!   document: {type: string, description: The text to summarise}
//!   words: {type: integer, default: 100}
//! model: {name: claude-sonnet, temperature: 0.2, max_tokens: 1024}
//! output: {format: text, max_chars: 2000, must_not_contain: ["As an AI"]}
//! ```
//!
//! Parsing happens in two passes so each failure gets its own code: the YAML itself
//! (`ERR_SPEC_YAML`: syntax, duplicate keys, several documents, alias bombs), then the schema
//! (`ERR_SPEC_INVALID`: unknown fields, wrong types, bad values) and the template
//! (`ERR_SPEC_UNDECLARED_VARIABLE`). Every message names the line, and the field when it is
//! known. The content hash is the SHA-256 of the canonical JSON of the validated spec, so
//! formatting and comments don't change it.

use std::collections::BTreeMap;

use builderos_shared::error::ErrorCode;
use builderos_shared::http::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::Spanned;
use utoipa::ToSchema;

/// Longest variable name.
const MAX_NAME: usize = 64;

/// A validated spec: what is stored (as JSON), hashed and diffed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Spec {
    /// The template; `{{ name }}` placeholders name declared variables.
    pub template: String,
    /// Declared variables by name.
    pub variables: BTreeMap<String, Variable>,
    /// Hints for the model that runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelHints>,
    /// What the output must look like.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Output>,
}

/// The type of a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum VarType {
    /// Text.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// A list of values.
    List,
    /// A mapping of values.
    Object,
}

impl VarType {
    fn accepts(self, v: &Value) -> bool {
        match self {
            VarType::String => v.is_string(),
            VarType::Integer => v.is_i64() || v.is_u64(),
            VarType::Number => v.is_number(),
            VarType::Boolean => v.is_boolean(),
            VarType::List => v.is_array(),
            VarType::Object => v.is_object(),
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            VarType::String => "string",
            VarType::Integer => "integer",
            VarType::Number => "number",
            VarType::Boolean => "boolean",
            VarType::List => "list",
            VarType::Object => "object",
        }
    }
}

/// A declared variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Variable {
    /// Its type.
    #[serde(rename = "type")]
    pub kind: VarType,
    /// Whether a caller must supply it (false when it has a default).
    pub required: bool,
    /// The value used when none is supplied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Model hints; all optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelHints {
    /// A model name or family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Sampling temperature, 0 to 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Output token cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
}

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// Plain text.
    Text,
    /// Markdown.
    Markdown,
    /// A JSON document (optionally matching `schema`).
    Json,
}

/// Invariants every output must hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// The format.
    pub format: OutputFormat,
    /// A JSON Schema the output must match (format `json` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    /// The longest output, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_chars: Option<u32>,
    /// Strings every output contains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_contain: Vec<String>,
    /// Strings no output contains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_not_contain: Vec<String>,
}

// The YAML document as written, with positions where later checks need them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    template: Spanned<String>,
    #[serde(default)]
    variables: BTreeMap<String, Spanned<VarDoc>>,
    #[serde(default)]
    model: Option<Spanned<ModelHints>>,
    #[serde(default)]
    output: Option<Spanned<Output>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VarDoc {
    #[serde(rename = "type")]
    kind: VarType,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

// The same shape without positions, for naming the field of a schema error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PlainDoc {
    template: String,
    #[serde(default)]
    variables: BTreeMap<String, PlainVar>,
    #[serde(default)]
    model: Option<ModelHints>,
    #[serde(default)]
    output: Option<Output>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct PlainVar {
    #[serde(rename = "type")]
    kind: VarType,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    default: Option<Value>,
    #[serde(default)]
    description: Option<String>,
}

fn invalid(line: u64, field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::SpecInvalid,
        format!("spec line {line}, field `{field}`: {message}"),
    )
}

/// The first line of a parser message, without the parser's own position suffix.
fn first_line(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn position(e: &serde_saphyr::Error) -> String {
    e.location()
        .filter(|l| l.line() > 0)
        .map(|l| format!("spec line {}, column {}", l.line(), l.column()))
        .unwrap_or_else(|| "spec".to_owned())
}

/// Parses and validates a YAML spec no longer than `max_bytes`.
///
/// # Errors
/// `ERR_SPEC_TOO_LARGE`, `ERR_SPEC_YAML`, `ERR_SPEC_INVALID`, `ERR_SPEC_UNDECLARED_VARIABLE`.
pub fn parse(yaml: &str, max_bytes: usize) -> Result<Spec, ApiError> {
    if yaml.len() > max_bytes {
        return Err(ApiError::new(
            ErrorCode::SpecTooLarge,
            format!("the spec is {} bytes; the limit is {max_bytes}", yaml.len()),
        ));
    }
    // Pass 1: is it YAML at all (one document, no duplicate keys, within the parser's budget)?
    let generic: Value = serde_saphyr::from_str(yaml).map_err(|e| {
        ApiError::new(
            ErrorCode::SpecYaml,
            format!("{}: {}", position(&e), first_line(&e)),
        )
    })?;
    if !generic.is_object() {
        return Err(invalid(
            1,
            "(root)",
            "the spec must be a mapping with a `template`",
        ));
    }
    // Pass 2: the schema, with the line from the parser and the field path from serde.
    let doc: Doc = serde_saphyr::from_str(yaml).map_err(|e| {
        let field = serde_path_to_error::deserialize::<_, PlainDoc>(&generic)
            .err()
            .map(|pe| (pe.path().to_string(), pe.inner().to_string()));
        let (path, message) = field.unwrap_or_else(|| (".".to_owned(), first_line(&e)));
        ApiError::new(
            ErrorCode::SpecInvalid,
            format!("{}, field `{path}`: {message}", position(&e)),
        )
    })?;
    validate(yaml, doc)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_NAME
}

fn validate(yaml: &str, doc: Doc) -> Result<Spec, ApiError> {
    let template_line = doc.template.referenced.line();
    if doc.template.value.trim().is_empty() {
        return Err(invalid(template_line, "template", "must not be empty"));
    }
    let mut variables = BTreeMap::new();
    for (name, var) in doc.variables {
        let line = var.referenced.line();
        let field = format!("variables.{name}");
        if !valid_name(&name) {
            return Err(invalid(
                line,
                &field,
                "a variable name is letters, digits and `_`, not starting with a digit, at most 64 characters",
            ));
        }
        let VarDoc {
            kind,
            required,
            default,
            description,
        } = var.value;
        if let Some(d) = &default
            && !kind.accepts(d)
        {
            return Err(invalid(
                line,
                &format!("{field}.default"),
                format!("the default is not of type `{}`", kind.as_str()),
            ));
        }
        if required == Some(true) && default.is_some() {
            return Err(invalid(
                line,
                &format!("{field}.required"),
                "a required variable can't have a default",
            ));
        }
        variables.insert(
            name,
            Variable {
                kind,
                required: required.unwrap_or(default.is_none()),
                default,
                description,
            },
        );
    }
    let model = doc.model.map(|m| (m.referenced.line(), m.value));
    if let Some((line, m)) = &model {
        if m.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
            return Err(invalid(
                *line,
                "model.temperature",
                "must be between 0 and 2",
            ));
        }
        if m.top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(invalid(*line, "model.top_p", "must be between 0 and 1"));
        }
        if m.max_tokens == Some(0) {
            return Err(invalid(*line, "model.max_tokens", "must be positive"));
        }
    }
    let output = doc.output.map(|o| (o.referenced.line(), o.value));
    if let Some((line, o)) = &output {
        if let Some(schema) = &o.schema {
            if o.format != OutputFormat::Json {
                return Err(invalid(
                    *line,
                    "output.schema",
                    "a schema needs `format: json`",
                ));
            }
            jsonschema::validator_for(schema).map_err(|e| {
                invalid(
                    *line,
                    "output.schema",
                    format!("not a valid JSON Schema: {e}"),
                )
            })?;
        }
        if o.max_chars == Some(0) {
            return Err(invalid(*line, "output.max_chars", "must be positive"));
        }
    }
    let first_content_line = block_start(yaml, template_line);
    for (offset, name) in placeholders(&doc.template.value)
        .map_err(|(offset, m)| invalid(first_content_line + offset, "template", m))?
    {
        if !variables.contains_key(name) {
            return Err(ApiError::new(
                ErrorCode::SpecUndeclaredVariable,
                format!(
                    "spec line {}, field `template`: `{{{{ {name} }}}}` uses a variable that `variables` does not declare",
                    first_content_line + offset
                ),
            ));
        }
    }
    Ok(Spec {
        template: doc.template.value,
        variables,
        model: model.map(|(_, m)| m),
        output: output.map(|(_, o)| o),
    })
}

/// The line of the template's first text line: the line after a block indicator (`|`, `>`),
/// else the value's own line.
fn block_start(yaml: &str, line: u64) -> u64 {
    let text = usize::try_from(line.saturating_sub(1))
        .ok()
        .and_then(|i| yaml.lines().nth(i))
        .unwrap_or_default();
    let after_key = text.split_once(':').map_or(text, |(_, v)| v).trim_start();
    if after_key.starts_with('|') || after_key.starts_with('>') {
        line + 1
    } else {
        line
    }
}

/// The `{{ name }}` placeholders of `template` with the line offset each is on.
///
/// # Errors
/// `(line offset, message)` for an unclosed or malformed placeholder.
pub fn placeholders(template: &str) -> Result<Vec<(u64, &str)>, (u64, String)> {
    let mut found = Vec::new();
    let mut rest = template;
    let mut line = 0u64;
    while let Some(start) = rest.find("{{") {
        line += rest[..start].matches('\n').count() as u64;
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err((line, "a `{{` is never closed by `}}`".to_owned()));
        };
        let inner = &after[..end];
        let name = inner.trim();
        if !valid_name(name) {
            return Err((
                line,
                format!(
                    "`{{{{{}}}}}` is not a placeholder: write `{{{{ name }}}}` with a declared variable name",
                    inner.chars().take(40).collect::<String>()
                ),
            ));
        }
        found.push((line, name));
        line += inner.matches('\n').count() as u64;
        rest = &after[end + 2..];
    }
    Ok(found)
}

impl Spec {
    /// The canonical JSON bytes (what the content hash covers).
    #[must_use]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        // Serializing these types can't fail: every map key is a string.
        serde_json::to_value(self)
            .map(|v| builderos_canon::value_to_canonical_bytes(&v))
            .unwrap_or_default()
    }

    /// `sha256:<hex>` of the canonical JSON.
    #[must_use]
    pub fn content_hash(&self) -> String {
        format!(
            "sha256:{}",
            builderos_canon::sha256_hex(&self.canonical_bytes())
        )
    }

    /// Variables that are declared but never used by the template.
    #[must_use]
    pub fn unused_variables(&self) -> Vec<String> {
        let used: Vec<&str> = placeholders(&self.template)
            .map(|p| p.into_iter().map(|(_, n)| n).collect())
            .unwrap_or_default();
        self.variables
            .keys()
            .filter(|k| !used.contains(&k.as_str()))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const MAX: usize = 64 * 1024;

    fn err(yaml: &str) -> (ErrorCode, String) {
        let e = parse(yaml, MAX).expect_err("should fail");
        (e.code, e.message)
    }

    #[test]
    fn a_full_spec_parses_and_hashes_stably() {
        let yaml = "template: |\n  Summarise {{ document }} in {{words}} words.\nvariables:\n  document: {type: string}\n  words: {type: integer, default: 100}\nmodel: {name: m, temperature: 0.2}\noutput: {format: text, max_chars: 50}\n";
        let spec = parse(yaml, MAX).unwrap();
        assert!(spec.variables["document"].required);
        assert!(!spec.variables["words"].required);
        // Formatting and comments don't change the hash.
        let other = "# a comment\ntemplate: \"Summarise {{ document }} in {{words}} words.\\n\"\nvariables:\n  words:\n    type: integer\n    default: 100\n  document:\n    type: string\nmodel:\n  temperature: 0.2\n  name: m\noutput:\n  max_chars: 50\n  format: text\n";
        assert_eq!(
            parse(other, MAX).unwrap().content_hash(),
            spec.content_hash()
        );
        assert!(spec.content_hash().starts_with("sha256:"));
    }

    #[test]
    fn malformed_yaml_names_the_line() {
        let (code, msg) = err("template: hi\nvariables:\n  a: [unclosed\n");
        assert_eq!(code, ErrorCode::SpecYaml, "{msg}");
        assert!(msg.contains("line"), "{msg}");
        let (code, msg) = err("template: a\ntemplate: b\n");
        assert_eq!(code, ErrorCode::SpecYaml, "{msg}");
    }

    #[test]
    fn schema_errors_name_line_and_field() {
        let (code, msg) = err("template: hi\nvariables:\n  n:\n    type: int\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
        assert!(msg.contains("line 4"), "{msg}");
        assert!(msg.contains("variables.n.type"), "{msg}");
        let (code, msg) = err("template: hi\ncolour: red\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
        assert!(msg.contains("colour"), "{msg}");
        let (code, msg) = err("template: hi\nvariables:\n  n: {type: integer, default: ten}\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
        assert!(
            msg.contains("line 3") && msg.contains("variables.n.default"),
            "{msg}"
        );
        let (code, _) = err("- just\n- a list\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
        let (code, msg) = err("template: hi\noutput: {format: text, schema: {type: object}}\n");
        assert_eq!(code, ErrorCode::SpecInvalid, "{msg}");
        let (code, msg) = err("template: hi\noutput: {format: json, schema: {type: 12}}\n");
        assert_eq!(code, ErrorCode::SpecInvalid, "{msg}");
        let (code, _) = err("template: hi\nmodel: {temperature: 7}\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
    }

    #[test]
    fn undeclared_variables_point_at_the_template_line() {
        let (code, msg) =
            err("variables:\n  a: {type: string}\ntemplate: |\n  {{ a }}\n  second {{ b }}\n");
        assert_eq!(code, ErrorCode::SpecUndeclaredVariable);
        assert!(msg.contains("line 5"), "{msg}");
        assert!(msg.contains("`b`") || msg.contains("{{ b }}"), "{msg}");
        let (code, msg) = err("template: \"{{ a \"\n");
        assert_eq!(code, ErrorCode::SpecInvalid, "{msg}");
        let (code, _) = err("template: \"{{ 9x }}\"\n");
        assert_eq!(code, ErrorCode::SpecInvalid);
    }

    #[test]
    fn oversized_specs_are_refused_before_parsing() {
        let big = format!("template: \"{}\"\n", "x".repeat(2000));
        let e = parse(&big, 1024).expect_err("too large");
        assert_eq!(e.code, ErrorCode::SpecTooLarge);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut yaml = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_owned()
            } else {
                format!("l{}", i - 1)
            };
            yaml.push_str(&format!(
                "l{i}: &l{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        yaml.push_str("template: hi\n");
        let e = parse(&yaml, MAX).expect_err("bomb");
        assert!(
            matches!(e.code, ErrorCode::SpecYaml | ErrorCode::SpecInvalid),
            "{:?}",
            e.code
        );
    }
}
