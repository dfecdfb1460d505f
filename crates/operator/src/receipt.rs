//! Receipts: what every step attempt writes beside its outputs, and the outputs index.
//!
//! A receipt names what ran (processor, digest, environment), on what (the inputs' hash, never
//! their values), what came out (paths, digests, sizes, never contents), token counts, timing
//! and mode. Prompt and response text is never stored here. Both documents are canonical JSON
//! so they hash and sign the same everywhere.

use crate::processors::{Envelope, Mode, ProcessorRef, Request, Usage, processor_digest};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::processors::contract::RECEIPT_FILE;

/// Where the receipt of the attempt writing under `write_prefix` goes: `<prefix>receipt.json`,
/// a path the contract keeps free of outputs.
#[must_use]
pub fn receipt_path(write_prefix: &str) -> String {
    format!("{write_prefix}{RECEIPT_FILE}")
}

/// Domain separation for [`inputs_hash`]: a different schema can never hash alike.
pub const INPUTS_SCHEMA_ID: &str = "builderos.step-inputs/v1";

/// SHA-256 hex over the schema id bytes, one `0x00`, then the canonical JSON of `inputs`.
#[must_use]
pub fn inputs_hash(inputs: &Value) -> String {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(INPUTS_SCHEMA_ID.as_bytes());
    bytes.push(0);
    builderos_canon::write_canonical_value(inputs, &mut bytes);
    builderos_canon::sha256_hex(&bytes)
}

/// One output as indexes and receipts list it: no content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputIndexEntry {
    /// Full relative path, under the attempt's write prefix.
    pub path: String,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// How the attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// A success envelope.
    Success,
    /// An error envelope (from the processor or its adapter).
    Error,
}

/// The attempt a receipt describes, as the executor knows it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The run.
    pub run_id: Uuid,
    /// The step's id in the pipeline.
    pub step_id: &'a str,
    /// 1 for the first try.
    pub attempt: u32,
    /// The processor called.
    pub processor: &'a ProcessorRef,
    /// What was sent (for the inputs hash and mode; the values themselves are not kept).
    pub request: &'a Request,
    /// When the processor was called.
    pub started_at: DateTime<Utc>,
    /// When the envelope came back.
    pub finished_at: DateTime<Utc>,
}

/// What one step attempt did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The request's execution id.
    pub execution_id: String,
    /// The run.
    pub run_id: Uuid,
    /// The step's id in the pipeline.
    pub step_id: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// The processor reference (`builtin:<name>` or base URL).
    pub processor: String,
    /// See [`processor_digest`].
    pub processor_digest: String,
    /// The envelope's `meta.env_fingerprint`.
    pub env_fingerprint: String,
    /// [`inputs_hash`] of the request's inputs.
    pub inputs_hash: String,
    /// The outputs, sorted by path; empty for an error.
    pub outputs: Vec<OutputIndexEntry>,
    /// Token counts.
    pub usage: Usage,
    /// `success` or `error`.
    pub status: ReceiptStatus,
    /// The error code, for an error; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// When the processor was called.
    pub started_at: DateTime<Utc>,
    /// When the envelope came back.
    pub finished_at: DateTime<Utc>,
    /// `finished_at - started_at` in milliseconds (0 if the clock went backwards).
    pub duration_ms: u64,
    /// `mock` or `real`.
    pub mode: Mode,
}

impl Receipt {
    /// The receipt for `attempt` ending with `envelope`.
    #[must_use]
    pub fn from_envelope(attempt: &Attempt<'_>, envelope: &Envelope) -> Self {
        let duration_ms = u64::try_from(
            (attempt.finished_at - attempt.started_at)
                .num_milliseconds()
                .max(0),
        )
        .unwrap_or(0);
        let meta = envelope.meta();
        Self {
            execution_id: envelope.execution_id().to_owned(),
            run_id: attempt.run_id,
            step_id: attempt.step_id.to_owned(),
            attempt: attempt.attempt,
            processor: attempt.processor.to_string(),
            processor_digest: processor_digest(attempt.processor, envelope),
            env_fingerprint: meta.env_fingerprint.clone(),
            inputs_hash: inputs_hash(&attempt.request.inputs),
            outputs: index_entries(envelope),
            usage: meta.usage,
            status: if envelope.is_success() {
                ReceiptStatus::Success
            } else {
                ReceiptStatus::Error
            },
            error_code: envelope.error_code().map(str::to_owned),
            started_at: attempt.started_at,
            finished_at: attempt.finished_at,
            duration_ms,
            mode: attempt.request.mode,
        }
    }

    /// Canonical JSON bytes: what is stored and hashed.
    #[must_use]
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        builderos_canon::to_canonical_bytes(self)
            .expect("a receipt always serializes: every map key is a string")
    }
}

/// The document the executor writes at a success envelope's `index_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputIndex {
    /// The request's execution id.
    pub execution_id: String,
    /// The outputs, sorted by path.
    pub outputs: Vec<OutputIndexEntry>,
}

impl OutputIndex {
    /// The index of `envelope`'s outputs (empty for an error).
    #[must_use]
    pub fn from_envelope(envelope: &Envelope) -> Self {
        Self {
            execution_id: envelope.execution_id().to_owned(),
            outputs: index_entries(envelope),
        }
    }

    /// Canonical JSON bytes.
    #[must_use]
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        builderos_canon::to_canonical_bytes(self)
            .expect("an index always serializes: every map key is a string")
    }
}

fn index_entries(envelope: &Envelope) -> Vec<OutputIndexEntry> {
    envelope
        .outputs()
        .iter()
        .map(|o| OutputIndexEntry {
            path: o.path.clone(),
            sha256: o.sha256.clone(),
            size: o.size,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::contract::{self, Meta};
    use serde_json::json;

    fn request(inputs: Value) -> Request {
        Request {
            execution_id: "exec-1".into(),
            mode: Mode::Mock,
            inputs,
            write_prefix: "runs/r/s/1/".into(),
        }
    }

    fn meta() -> Meta {
        Meta {
            env_fingerprint: "fp".into(),
            image_digest: None,
            usage: Usage {
                input_tokens: 12,
                output_tokens: 34,
            },
        }
    }

    /// The inputs hash is pinned: changing it breaks every stored receipt's meaning.
    #[test]
    fn inputs_hash_is_stable_and_order_independent() {
        let a = inputs_hash(&json!({"b": 1, "a": "x"}));
        let b = inputs_hash(&json!({"a": "x", "b": 1}));
        assert_eq!(a, b);
        let mut expected = b"builderos.step-inputs/v1\0".to_vec();
        expected.extend_from_slice(br#"{"a":"x","b":1}"#);
        assert_eq!(a, builderos_canon::sha256_hex(&expected));
        assert_eq!(
            inputs_hash(&json!({})),
            "375e984c9b4b4f3a7ac26f76484fb77a8811ad174c436dd35bf6ebabd01ab027"
        );
        assert_ne!(a, inputs_hash(&json!({"a": "x", "b": 2})));
    }

    /// A receipt lists digests and token counts, never input values or output contents.
    #[test]
    fn receipt_never_contains_text() {
        let secret_input = "the prompt text";
        let secret_output = "the model answer";
        let req = request(json!({"prompt": secret_input}));
        let envelope = Envelope::Success {
            execution_id: "exec-1".into(),
            outputs: vec![contract::output(
                "runs/r/s/1/answer".into(),
                secret_output.as_bytes(),
            )],
            index_path: "runs/r/s/1/index.json".into(),
            meta: meta(),
        };
        let processor = ProcessorRef::Http("http://127.0.0.1:9".into());
        let started = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let attempt = Attempt {
            run_id: Uuid::nil(),
            step_id: "build",
            attempt: 1,
            processor: &processor,
            request: &req,
            started_at: started,
            finished_at: started + chrono::Duration::milliseconds(1500),
        };
        let receipt = Receipt::from_envelope(&attempt, &envelope);
        let bytes = receipt.to_canonical_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(!text.contains(secret_input) && !text.contains(secret_output));
        assert!(!text.contains(&envelope.outputs()[0].content));
        assert_eq!(receipt.duration_ms, 1500);
        assert_eq!(receipt.usage.output_tokens, 34);
        assert_eq!(receipt.status, ReceiptStatus::Success);
        assert_eq!(
            receipt.processor_digest,
            builderos_canon::sha256_hex(b"http://127.0.0.1:9")
        );
        assert!(builderos_canon::is_canonical(&bytes));
        let back: Receipt = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(back, receipt);
        assert!(!text.contains("error_code"));
    }

    /// An error receipt carries the code and no outputs.
    #[test]
    fn error_receipt_has_code() {
        let req = request(json!({}));
        let envelope = Envelope::error("exec-1", "ERR_TIMEOUT", "late", meta());
        let processor = ProcessorRef::Builtin("sleep".into());
        let now = Utc::now();
        let attempt = Attempt {
            run_id: Uuid::nil(),
            step_id: "s",
            attempt: 2,
            processor: &processor,
            request: &req,
            started_at: now,
            finished_at: now - chrono::Duration::seconds(1),
        };
        let receipt = Receipt::from_envelope(&attempt, &envelope);
        assert_eq!(receipt.status, ReceiptStatus::Error);
        assert_eq!(receipt.error_code.as_deref(), Some("ERR_TIMEOUT"));
        assert_eq!(receipt.duration_ms, 0);
        assert!(receipt.outputs.is_empty());
        assert_eq!(
            receipt.processor_digest,
            crate::processors::builtin::builtin_digest("sleep")
        );
        let index = OutputIndex::from_envelope(&envelope);
        assert!(index.outputs.is_empty());
    }
}
