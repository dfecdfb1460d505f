//! Canonical JSON and hashing: the one byte form for everything BuilderOS hashes or signs
//! (audit events, pack manifests, processor envelopes, receipts).
//!
//! Pure: no I/O, no database, no network, so every other crate (including the pure `packs`
//! crate) can depend on it.
//!
//! # The canonical form
//!
//! - objects: keys sorted by Unicode code point (byte order of their UTF-8), no duplicates;
//! - no insignificant whitespace: `,` and `:` only;
//! - strings: Unicode NFC, escaped as `serde_json` escapes them (`"`, `\`, control characters);
//! - numbers: integers as decimal without a sign on zero; other numbers as `serde_json`
//!   prints them (shortest round-trip form). Non-finite numbers cannot occur in JSON.
//!
//! [`to_canonical_bytes`] produces the form; [`is_canonical`] checks that given bytes are
//! exactly the canonical form of what they encode.

use std::borrow::Cow;
use std::io::Write as _;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// Why a value could not be put into canonical form.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CanonError {
    /// The value could not be represented as JSON at all.
    #[error("value is not representable as JSON: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// Serializes `value` into canonical JSON bytes.
///
/// # Errors
/// Fails only when `value` cannot be represented as JSON (for example a map with non-string keys).
pub fn to_canonical_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonError> {
    let value = serde_json::to_value(value)?;
    Ok(value_to_canonical_bytes(&value))
}

/// Canonical JSON bytes of an already parsed value.
#[must_use]
pub fn value_to_canonical_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_value(value, &mut out);
    out
}

/// Canonical JSON as a `String` (always valid UTF-8).
///
/// # Errors
/// As [`to_canonical_bytes`].
pub fn to_canonical_string<T: Serialize + ?Sized>(value: &T) -> Result<String, CanonError> {
    let bytes = to_canonical_bytes(value)?;
    // The writer only ever emits UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// True when `bytes` parse as JSON and are byte-for-byte the canonical form of that JSON.
/// Duplicate object keys make bytes non-canonical.
#[must_use]
pub fn is_canonical(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => value_to_canonical_bytes(&value) == bytes,
        Err(_) => false,
    }
}

/// SHA-256 of `bytes`, lowercase hex.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// SHA-256 of the canonical JSON of `value`, lowercase hex.
///
/// # Errors
/// As [`to_canonical_bytes`].
pub fn canonical_sha256_hex<T: Serialize + ?Sized>(value: &T) -> Result<String, CanonError> {
    Ok(sha256_hex(&to_canonical_bytes(value)?))
}

/// Appends the canonical form of a string (NFC, JSON-escaped, quoted) to `out`; for writers
/// that emit canonical JSON field by field instead of building a `Value`.
pub fn write_canonical_str(s: &str, out: &mut Vec<u8>) {
    write_string(s, out);
}

/// Appends the canonical form of `value` to `out`.
pub fn write_canonical_value(value: &Value, out: &mut Vec<u8>) {
    write_value(value, out);
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            // The map's own order is the canonical one when its keys are already NFC and
            // strictly increasing by bytes (a BTreeMap's order; checked, not assumed).
            let mut previous: Option<&str> = None;
            let in_order = map.keys().all(|k| {
                let ok = is_nfc(k) && previous.is_none_or(|p| p.as_bytes() < k.as_bytes());
                previous = Some(k);
                ok
            });
            if in_order {
                write_entries(map.iter().map(|(k, v)| (k.as_str(), v)), out);
            } else {
                // Keys are normalised before sorting so that two spellings of one key collide;
                // the sort is stable, so of those the first in the map's order is kept.
                let mut entries: Vec<(Cow<'_, str>, &Value)> =
                    map.iter().map(|(k, v)| (nfc(k), v)).collect();
                entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                entries.dedup_by(|later, earlier| later.0 == earlier.0);
                write_entries(entries.iter().map(|(k, v)| (k.as_ref(), *v)), out);
            }
            out.push(b'}');
        }
    }
}

/// An object's entries, already canonical keys in canonical order, without the braces.
fn write_entries<'a>(entries: impl Iterator<Item = (&'a str, &'a Value)>, out: &mut Vec<u8>) {
    for (i, (key, item)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_escaped(key, out);
        out.push(b':');
        write_value(item, out);
    }
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    if let Some(i) = n.as_i64() {
        let _ = write!(out, "{i}");
    } else if let Some(u) = n.as_u64() {
        let _ = write!(out, "{u}");
    } else if let Some(f) = n.as_f64() {
        if f == 0.0 {
            out.push(b'0');
        } else if f.fract() == 0.0 && f.abs() < 1e15 {
            // Integral floats print as integers, so `1.0` and `1` hash alike.
            #[allow(clippy::cast_possible_truncation)]
            let _ = write!(out, "{}", f as i64);
        } else {
            out.extend_from_slice(n.to_string().as_bytes());
        }
    }
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    write_escaped(&nfc(s), out);
}

fn write_escaped(s: &str, out: &mut Vec<u8>) {
    // serde_json's string escaping is the minimal JSON escaping; reuse it. (Writing a `str`
    // into a `Vec` cannot fail.)
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

fn is_nfc(s: &str) -> bool {
    s.is_ascii() || is_nfc_quick(s.chars()) == IsNormalized::Yes
}

fn nfc(s: &str) -> Cow<'_, str> {
    if is_nfc(s) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(s.nfc().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Keys are sorted, whitespace is gone and nested values are canonical too.
    #[test]
    fn sorts_keys_and_strips_whitespace() {
        let v = json!({"b": 1, "a": {"d": [true, null], "c": "x"}});
        assert_eq!(
            to_canonical_string(&v).expect("canonical"),
            r#"{"a":{"c":"x","d":[true,null]},"b":1}"#
        );
    }

    /// Keys are normalised too, then sorted by bytes: a decomposed key sorts as its NFC form
    /// (after "f", not between "e" and "f"), and two spellings of one key are one key.
    #[test]
    fn keys_are_nfc_and_sorted_after_normalising() {
        let v = json!({"e\u{301}x": 1, "f": 2, "a": 3});
        assert_eq!(
            to_canonical_string(&v).expect("canonical"),
            "{\"a\":3,\"f\":2,\"\u{e9}x\":1}"
        );
        // ("e\u{301}" sorts first in the map: its value is kept)
        let twice = json!({"e\u{301}": 1, "\u{e9}": 2});
        assert_eq!(
            to_canonical_string(&twice).expect("canonical"),
            "{\"\u{e9}\":1}"
        );
    }

    /// Strings are NFC-normalised, so two spellings of "é" hash alike.
    #[test]
    fn strings_are_nfc() {
        let decomposed = json!({"name": "e\u{301}"});
        let composed = json!({"name": "\u{e9}"});
        assert_eq!(
            canonical_sha256_hex(&decomposed).expect("hash"),
            canonical_sha256_hex(&composed).expect("hash")
        );
    }

    /// Pretty-printed or reordered bytes are not canonical; the canonical form is.
    #[test]
    fn detects_non_canonical_bytes() {
        assert!(is_canonical(br#"{"a":1,"b":[1,2]}"#));
        assert!(!is_canonical(br#"{"b":[1,2],"a":1}"#));
        assert!(!is_canonical(b"{\"a\": 1}"));
        assert!(!is_canonical(br#"{"a":1,"a":1}"#));
        assert!(!is_canonical(b"not json"));
        assert!(!is_canonical("{\"n\":\"e\u{301}\"}".as_bytes()));
    }

    /// Integral floats print as integers; others keep their shortest form.
    #[test]
    fn numbers() {
        assert_eq!(
            to_canonical_string(&json!([1.0, -0.0, 2.5, -3])).expect("c"),
            "[1,0,2.5,-3]"
        );
    }

    /// Control characters and quotes are escaped, other characters are kept as UTF-8.
    #[test]
    fn escaping() {
        assert_eq!(
            to_canonical_string(&json!("a\"\n\u{1}ü")).expect("c"),
            "\"a\\\"\\n\\u0001ü\""
        );
    }
}
