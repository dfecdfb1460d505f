//! Reading a definition's text into a JSON value, with the line of every node when the text can
//! tell it.
//!
//! YAML is read once into a tree of [`Spanned`] nodes, which gives both the JSON value and each
//! node's line. JSON is read by `serde_json` (its own errors, and a duplicate-key check that
//! `serde_json::Value` alone would skip); because JSON is also YAML, the same text is then read by
//! the YAML parser only to learn lines, and when that fails the lines are simply unknown.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

use super::{DefinitionError, Format, codes};

/// The largest definition accepted, in bytes: a 200-step pipeline fits many times over.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;

/// Lines of the nodes of a parsed document, by path (`steps[2].retries.max_attempts`).
#[derive(Debug, Default)]
pub(crate) struct Lines(HashMap<String, usize>);

impl Lines {
    /// The line of `path`, else of its nearest enclosing node that has one.
    pub(crate) fn find(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(line) = self.0.get(path) {
                return Some(*line);
            }
            path = &path[..parent_end(path)?];
        }
    }

    fn record(&mut self, path: &str, line: u64) {
        // Line 0 is the parser's "unknown".
        if let Ok(line @ 1..) = usize::try_from(line) {
            self.0.entry(path.to_owned()).or_insert(line);
        }
    }
}

/// Where the last segment of `path` starts (`a.b[2]` → `a.b`), or `None` at the root.
fn parent_end(path: &str) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']')
        && let Some(open) = path.rfind('[')
    {
        return Some(open);
    }
    Some(path.rfind('.').unwrap_or(0))
}

/// `parent.key`, quoting keys that would not read back as one segment.
pub(crate) fn child_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let segment = if plain {
        key.to_owned()
    } else {
        format!("[{}]", Value::String(key.to_owned()))
    };
    match (parent.is_empty(), plain) {
        (true, true) => segment,
        (_, false) => format!("{parent}{segment}"),
        (false, true) => format!("{parent}.{segment}"),
    }
}

/// `parent[index]`.
pub(crate) fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// Reads `source` as `format` into a JSON value and the lines of its nodes.
///
/// # Errors
/// `ERR_PIPELINE_PARSE` when the text is too large, not YAML/JSON, or repeats a key.
pub(crate) fn read(source: &str, format: Format) -> Result<(Value, Lines), DefinitionError> {
    if source.len() > MAX_SOURCE_BYTES {
        return Err(DefinitionError::new(
            codes::PARSE,
            format!(
                "the definition is {} bytes; the limit is {MAX_SOURCE_BYTES}",
                source.len()
            ),
        ));
    }
    match format {
        Format::Yaml => {
            let node: Spanned<Node> =
                serde_saphyr::from_str_with_options(source, yaml_options()).map_err(yaml_error)?;
            let mut lines = Lines::default();
            let value = flatten(node, "", &mut lines);
            Ok((value, lines))
        }
        Format::Json => {
            let NoDuplicates(value) = serde_json::from_str(source).map_err(|e| {
                let line = (e.line() > 0).then_some(e.line());
                DefinitionError::new(codes::PARSE, format!("not valid JSON: {e}")).at(line, None)
            })?;
            let mut lines = Lines::default();
            if let Ok(node) =
                serde_saphyr::from_str_with_options::<Spanned<Node>>(source, yaml_options())
            {
                flatten(node, "", &mut lines);
            }
            Ok((value, lines))
        }
    }
}

/// YAML 1.2 core booleans only: `on`, `yes`, `y` and `no` stay strings, so an input or an
/// environment named `no` means what it says.
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

fn yaml_error(e: serde_saphyr::Error) -> DefinitionError {
    let line = e
        .location()
        .and_then(|l| usize::try_from(l.line()).ok())
        .filter(|l| *l > 0);
    let message = if matches!(
        e.without_snippet(),
        serde_saphyr::Error::MultipleDocuments { .. }
    ) {
        "a definition is one YAML document; this text has several".to_owned()
    } else {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or_default().trim();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        // The line is reported on its own; drop the parser's "line L column C: " prefix.
        let first = first
            .strip_prefix("line ")
            .and_then(|rest| rest.split_once(": "))
            .map_or(first, |(_, m)| m);
        format!("not valid YAML: {first}")
    };
    DefinitionError::new(codes::PARSE, message).at(line, None)
}

/// A YAML node with the positions of its children.
enum Node {
    Scalar(Value),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

fn flatten(node: Spanned<Node>, path: &str, lines: &mut Lines) -> Value {
    lines.record(path, node.referenced.line());
    match node.value {
        Node::Scalar(v) => v,
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, &child_index(path, i), lines))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let child = child_key(path, &key.value);
                // The key's line names the field even when its value starts on a later line.
                lines.record(&child, key.referenced.line());
                let v = flatten(value, &child, lines);
                map.insert(key.value, v);
            }
            Value::Object(map)
        }
    }
}

fn finite<E: de::Error>(v: f64) -> Result<Value, E> {
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| E::custom("numbers must be finite (no .nan or .inf)"))
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Scalar(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        finite(v).map(Node::Scalar)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Scalar(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Scalar(Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries: Vec<(Spanned<String>, Spanned<Node>)> = Vec::new();
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if !seen.insert(key.value.clone()) {
                return Err(de::Error::custom(format_args!(
                    "the key `{}` appears twice in one mapping",
                    key.value
                )));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

/// A JSON value read with a check `serde_json::Value` skips: no key twice in one object.
struct NoDuplicates(Value);

impl<'de> Deserialize<'de> for NoDuplicates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicatesVisitor)
    }
}

struct NoDuplicatesVisitor;

impl<'de> Visitor<'de> for NoDuplicatesVisitor {
    type Value = NoDuplicates;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NoDuplicates, E> {
        finite(v).map(NoDuplicates)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::String(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::String(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<NoDuplicates, E> {
        Ok(NoDuplicates(Value::Null))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicates, A::Error> {
        let mut items = Vec::new();
        while let Some(NoDuplicates(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(NoDuplicates(Value::Array(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicates, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key `{key}` appears twice in one object"
                )));
            }
            let NoDuplicates(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(NoDuplicates(Value::Object(out)))
    }
}
