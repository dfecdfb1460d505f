//! The builtin processors: deterministic, offline, the same code in-process and behind
//! [`super::serve`].
//!
//! - `echo`: one output per input key (`<prefix><key>`), the string value as-is or the canonical
//!   JSON of any other value;
//! - `sleep`: waits `ms` milliseconds (0 to 3,600,000, default 0), then succeeds with no outputs;
//! - `fail`: answers an error envelope with `code` (default `ERR_STEP_FAILED`) and `message`;
//! - `fanout`: `count` (0 to 1000) outputs `<prefix>part-0000`, … holding `part N`.
//!
//! Inputs a builtin cannot use answer `ERR_PROCESSOR_INPUTS`. Timeouts and cancellation are the
//! adapter's job: it drops the future, which stops a `sleep` at once.

use super::contract::{self, Envelope, Meta, Output, Request, Usage, codes};
use serde_json::{Map, Value, json};
use std::time::Duration;

/// The file name, under the write prefix, every builtin gives as its index path.
pub const INDEX_FILE: &str = "index.json";
/// Longest `sleep`, in milliseconds (one hour).
pub const MAX_SLEEP_MS: u64 = 3_600_000;
/// Most outputs `fanout` produces.
pub const MAX_FANOUT: u64 = 1000;

const DEFAULT_FAIL_MESSAGE: &str = "failed as the step's inputs asked";

/// SHA-256 hex of the canonical JSON `{"arch","os","processor","version"}` for `processor`
/// (a [`super::ProcessorRef`]'s string form): the same on both sides of an HTTP hop on the same
/// machine, different across platforms and operator versions.
#[must_use]
pub fn fingerprint(processor: &str) -> String {
    let doc = json!({
        "arch": std::env::consts::ARCH,
        "os": std::env::consts::OS,
        "processor": processor,
        "version": env!("CARGO_PKG_VERSION"),
    });
    builderos_canon::sha256_hex(&builderos_canon::value_to_canonical_bytes(&doc))
}

/// The meta every envelope of builtin `name` carries: its fingerprint, no image, no tokens.
#[must_use]
pub fn meta(name: &str) -> Meta {
    Meta {
        env_fingerprint: fingerprint(&format!("builtin:{name}")),
        image_digest: None,
        usage: Usage::default(),
    }
}

/// The processor digest receipts record for builtin `name`: SHA-256 hex of the canonical JSON
/// `{"processor":"builtin:<name>","version":<operator version>}` (the code is the image).
#[must_use]
pub fn builtin_digest(name: &str) -> String {
    let doc = json!({
        "processor": format!("builtin:{name}"),
        "version": env!("CARGO_PKG_VERSION"),
    });
    builderos_canon::sha256_hex(&builderos_canon::value_to_canonical_bytes(&doc))
}

/// Runs builtin `name` on an already validated request.
pub async fn run(name: &str, request: &Request) -> Envelope {
    let meta = meta(name);
    let index_path = format!("{}{INDEX_FILE}", request.write_prefix);
    let outputs = match name {
        "echo" => echo(request, &index_path),
        "sleep" => sleep(request).await,
        "fanout" => fanout(request),
        "fail" => {
            return match fail(request) {
                Ok((code, message)) => Envelope::error(&request.execution_id, &code, message, meta),
                Err(message) => inputs_error(request, message, meta),
            };
        }
        _ => {
            return Envelope::error(
                &request.execution_id,
                codes::ADAPTER_INVOCATION,
                format!("unknown builtin processor `{name}`"),
                meta,
            );
        }
    };
    match outputs {
        Ok(outputs) => Envelope::Success {
            execution_id: request.execution_id.clone(),
            outputs,
            index_path,
            meta,
        },
        Err(message) => inputs_error(request, message, meta),
    }
}

fn inputs_error(request: &Request, message: String, meta: Meta) -> Envelope {
    Envelope::error(
        &request.execution_id,
        codes::PROCESSOR_INPUTS,
        message,
        meta,
    )
}

fn echo(request: &Request, index_path: &str) -> Result<Vec<Output>, String> {
    let inputs = object(request, None)?;
    let outputs = inputs
        .iter()
        .map(|(key, value)| {
            let bytes = match value {
                Value::String(s) => s.as_bytes().to_vec(),
                other => builderos_canon::value_to_canonical_bytes(other),
            };
            contract::output(format!("{}{key}", request.write_prefix), &bytes)
        })
        .collect();
    // The same path rules the operator applies, reported as bad inputs: a key is a path.
    contract::check_outputs(outputs, index_path, &request.write_prefix)
        .map(|(outputs, _)| outputs)
        .map_err(|e| {
            format!(
                "echo: an input key is not a usable output name: {}",
                e.message
            )
        })
}

async fn sleep(request: &Request) -> Result<Vec<Output>, String> {
    let inputs = object(request, Some(&["ms"]))?;
    let ms = integer(inputs, "ms", Some(0), MAX_SLEEP_MS)?;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Ok(Vec::new())
}

fn fanout(request: &Request) -> Result<Vec<Output>, String> {
    let inputs = object(request, Some(&["count"]))?;
    let count = integer(inputs, "count", None, MAX_FANOUT)?;
    Ok((0..count)
        .map(|n| {
            contract::output(
                format!("{}part-{n:04}", request.write_prefix),
                format!("part {n}").as_bytes(),
            )
        })
        .collect())
}

fn fail(request: &Request) -> Result<(String, String), String> {
    let inputs = object(request, Some(&["code", "message"]))?;
    let code = match inputs.get("code") {
        None => codes::STEP_FAILED.to_owned(),
        Some(Value::String(code)) if contract::is_error_code(code) => code.clone(),
        Some(_) => return Err("fail: `code` must be a string matching ERR_[A-Z0-9_]+".into()),
    };
    let message = match inputs.get("message") {
        None => DEFAULT_FAIL_MESSAGE.to_owned(),
        Some(Value::String(m)) if m.chars().count() <= contract::MAX_MESSAGE_CHARS => m.clone(),
        Some(_) => {
            return Err(format!(
                "fail: `message` must be a string of at most {} characters",
                contract::MAX_MESSAGE_CHARS
            ));
        }
    };
    Ok((code, message))
}

/// The inputs object; with `allowed`, refuses any other key.
fn object<'a>(
    request: &'a Request,
    allowed: Option<&[&str]>,
) -> Result<&'a Map<String, Value>, String> {
    let inputs = request
        .inputs
        .as_object()
        .ok_or_else(|| "inputs must be a JSON object".to_owned())?;
    if let Some(allowed) = allowed
        && let Some(key) = inputs.keys().find(|k| !allowed.contains(&k.as_str()))
    {
        return Err(format!(
            "unknown input `{key}` (expected: {})",
            allowed.join(", ")
        ));
    }
    Ok(inputs)
}

fn integer(
    inputs: &Map<String, Value>,
    key: &str,
    default: Option<u64>,
    max: u64,
) -> Result<u64, String> {
    match (inputs.get(key), default) {
        (None, Some(default)) => Ok(default),
        (None, None) => Err(format!("input `{key}` is required")),
        (Some(value), _) => value
            .as_u64()
            .filter(|n| *n <= max)
            .ok_or_else(|| format!("input `{key}` must be an integer from 0 to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFIX: &str = "runs/r/s/1/";

    fn request(inputs: Value) -> Request {
        Request {
            execution_id: "exec".into(),
            mode: Mode::Mock,
            inputs,
            write_prefix: PREFIX.into(),
        }
    }

    use super::super::contract::Mode;

    fn code(envelope: &Envelope) -> Option<&str> {
        envelope.error_code()
    }

    /// Echo writes strings as-is and anything else as canonical JSON, one output per key.
    #[tokio::test]
    async fn echo_outputs_one_file_per_key() {
        let envelope = run(
            "echo",
            &request(json!({"b": {"y": 1, "x": [true]}, "a": "plain\ntext"})),
        )
        .await;
        let Envelope::Success {
            outputs,
            index_path,
            meta: m,
            ..
        } = &envelope
        else {
            panic!("expected success: {envelope:?}");
        };
        assert_eq!(index_path, "runs/r/s/1/index.json");
        assert_eq!(m, &meta("echo"));
        assert_eq!(outputs.len(), 2);
        assert_eq!(outputs[0].path, "runs/r/s/1/a");
        assert_eq!(outputs[0].bytes().expect("b64"), b"plain\ntext");
        assert_eq!(outputs[1].path, "runs/r/s/1/b");
        assert_eq!(outputs[1].bytes().expect("b64"), br#"{"x":[true],"y":1}"#);
        assert_eq!(outputs[1].size, 18);
    }

    /// Keys that are not usable file names are bad inputs, not bad outputs.
    #[tokio::test]
    async fn echo_refuses_unusable_keys() {
        for inputs in [
            json!({"../x": "1"}),
            json!({"index.json": "1"}),
            json!({"receipt.json": "1"}),
            json!({"a": "1", "a/b": "2"}),
            json!({"": "1"}),
            json!({"a//b": "1"}),
        ] {
            let envelope = run("echo", &request(inputs.clone())).await;
            assert_eq!(code(&envelope), Some(codes::PROCESSOR_INPUTS), "{inputs}");
        }
    }

    /// Fanout numbers its parts with four digits.
    #[tokio::test]
    async fn fanout_parts() {
        let envelope = run("fanout", &request(json!({"count": 3}))).await;
        let outputs = envelope.outputs();
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[2].path, "runs/r/s/1/part-0002");
        assert_eq!(outputs[2].bytes().expect("b64"), b"part 2");
        assert!(
            run("fanout", &request(json!({"count": 0})))
                .await
                .outputs()
                .is_empty()
        );
        assert_eq!(
            run("fanout", &request(json!({"count": 1000})))
                .await
                .outputs()
                .len(),
            1000
        );
        for bad in [
            json!({}),
            json!({"count": 1001}),
            json!({"count": -1}),
            json!({"count": 1.5}),
            json!({"count": 1, "x": 1}),
        ] {
            assert_eq!(
                code(&run("fanout", &request(bad.clone())).await),
                Some(codes::PROCESSOR_INPUTS),
                "{bad}"
            );
        }
    }

    /// Fail answers the code and message it was given, or ERR_STEP_FAILED.
    #[tokio::test]
    async fn fail_codes() {
        let envelope = run("fail", &request(json!({}))).await;
        assert_eq!(code(&envelope), Some(codes::STEP_FAILED));
        let envelope = run(
            "fail",
            &request(json!({"code": "ERR_MINE", "message": "nope"})),
        )
        .await;
        let Envelope::Error { error, .. } = &envelope else {
            panic!("expected error");
        };
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("ERR_MINE", "nope")
        );
        for bad in [
            json!({"code": "mine"}),
            json!({"code": 1}),
            json!({"message": "m".repeat(1025)}),
            json!({"other": 1}),
        ] {
            assert_eq!(
                code(&run("fail", &request(bad.clone())).await),
                Some(codes::PROCESSOR_INPUTS),
                "{bad}"
            );
        }
    }

    /// Sleep checks `ms` and succeeds with no outputs.
    #[tokio::test]
    async fn sleep_inputs() {
        let envelope = run("sleep", &request(json!({"ms": 1}))).await;
        assert!(envelope.is_success() && envelope.outputs().is_empty());
        assert!(run("sleep", &request(json!({}))).await.is_success());
        for bad in [
            json!({"ms": 3_600_001}),
            json!({"ms": "1"}),
            json!({"seconds": 1}),
        ] {
            assert_eq!(
                code(&run("sleep", &request(bad.clone())).await),
                Some(codes::PROCESSOR_INPUTS),
                "{bad}"
            );
        }
        assert_eq!(
            code(&run("nope", &request(json!({}))).await),
            Some(codes::ADAPTER_INVOCATION)
        );
    }

    /// Fingerprints and digests are stable per builtin and differ between builtins.
    #[test]
    fn fingerprints_and_digests() {
        assert_eq!(meta("echo"), meta("echo"));
        assert_ne!(meta("echo").env_fingerprint, meta("fail").env_fingerprint);
        assert_eq!(builtin_digest("echo").len(), 64);
        assert_ne!(builtin_digest("echo"), builtin_digest("fail"));
        assert_ne!(builtin_digest("echo"), meta("echo").env_fingerprint);
    }
}
