//! The processor contract: one request shape, one envelope shape, canonical JSON on the wire.
//!
//! Both sides validate with the same code: a processor (for example [`super::serve`]) parses a
//! request with [`Request::parse`], and the operator parses what comes back with
//! [`Envelope::parse_for`]. Nothing in an envelope is trusted until `parse_for` accepted it for
//! the request that was sent: execution id, output paths under the write prefix, digests and
//! sizes that match the content.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

/// The stable `ERR_*` codes an invocation can end with besides a processor's own codes.
pub mod codes {
    /// A `real` mode request while `CI=true`: refused before any adapter work.
    pub const CI_SAFETY: &str = "ERR_CI_SAFETY";
    /// The step timeout elapsed before the processor answered.
    pub const TIMEOUT: &str = "ERR_TIMEOUT";
    /// The step's cancellation token fired.
    pub const CANCELLED: &str = "ERR_CANCELLED";
    /// Nothing healthy answers at the processor's base URL (after the health-check backoff).
    pub const ENDPOINT_MISSING: &str = "ERR_ENDPOINT_MISSING";
    /// The processor answered, but not with a valid envelope for this request.
    pub const ADAPTER_INVOCATION: &str = "ERR_ADAPTER_INVOCATION";
    /// An output or index path is not canonical, not under the write prefix, takes the
    /// reserved receipt path, or clashes with another path as file and directory.
    pub const OUTPUT_PATH: &str = "ERR_OUTPUT_PATH";
    /// Two outputs (or an output and the index) name the same path.
    pub const OUTPUT_DUPLICATE: &str = "ERR_OUTPUT_DUPLICATE";
    /// A builtin refused its inputs.
    pub const PROCESSOR_INPUTS: &str = "ERR_PROCESSOR_INPUTS";
    /// The `fail` builtin's default code.
    pub const STEP_FAILED: &str = "ERR_STEP_FAILED";
    /// The request itself is malformed (execution id, mode, inputs or write prefix).
    pub const REQUEST_INVALID: &str = "ERR_REQUEST_INVALID";
}

/// The file name, under the write prefix, reserved for the step's receipt: no output and no
/// index path may take it.
pub const RECEIPT_FILE: &str = "receipt.json";
/// Longest error message, in characters; longer ones are cut by [`Envelope::error`] and refused
/// by [`Envelope::parse_for`].
pub const MAX_MESSAGE_CHARS: usize = 1024;
/// Longest output path, write prefix or index path, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest single path segment, in bytes (what common file systems allow).
pub const MAX_SEGMENT_BYTES: usize = 255;
/// Most outputs one envelope may carry.
pub const MAX_OUTPUTS: usize = 10_000;
/// Longest execution id, error code, env fingerprint or image digest, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Whether a processor may reach the outside world. Exactly `mock` or `real`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deterministic, offline: what CI and tests run.
    Mock,
    /// Calls real models or services; refused when `CI=true`.
    Real,
}

impl Mode {
    /// The wire form: `mock` or `real`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Real => "real",
        }
    }

    /// Parses exactly `mock` or `real`.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "mock" => Some(Self::Mock),
            "real" => Some(Self::Real),
            _ => None,
        }
    }
}

/// What a step sends its processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// Identifies this one attempt; the envelope must echo it.
    pub execution_id: String,
    /// `mock` or `real`.
    pub mode: Mode,
    /// The step's inputs, a JSON object.
    pub inputs: Value,
    /// Where outputs may be written, e.g. `runs/<run>/<step>/<attempt>/`; ends in `/`.
    pub write_prefix: String,
}

/// One file a processor produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Full relative path, under the request's write prefix.
    pub path: String,
    /// Lowercase hex SHA-256 of the decoded content.
    pub sha256: String,
    /// Length of the decoded content in bytes.
    pub size: u64,
    /// The bytes, standard base64 with padding.
    pub content: String,
}

/// Token counts: the only trace of prompt or response text the platform keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usage {
    /// Tokens sent to a model.
    pub input_tokens: u64,
    /// Tokens received from a model.
    pub output_tokens: u64,
}

/// Where and how the processor ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// Identifies the processor's environment (code version, platform); opaque to the operator.
    pub env_fingerprint: String,
    /// The container image digest, when the processor runs from one; omitted otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Token counts.
    pub usage: Usage,
}

/// A processor's failure: a stable code and a short message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// `ERR_[A-Z0-9_]+`.
    pub code: String,
    /// Short and human readable; at most [`MAX_MESSAGE_CHARS`] characters.
    pub message: String,
}

/// What a processor answers, tagged by `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase", deny_unknown_fields)]
pub enum Envelope {
    /// The processor finished and produced `outputs`.
    Success {
        /// The request's execution id.
        execution_id: String,
        /// Files produced, sorted by path.
        outputs: Vec<Output>,
        /// Where the operator writes the outputs index, under the write prefix.
        index_path: String,
        /// Environment and usage.
        meta: Meta,
    },
    /// The processor (or the adapter carrying it) failed.
    Error {
        /// The request's execution id.
        execution_id: String,
        /// Code and message.
        error: ErrorBody,
        /// Environment and usage.
        meta: Meta,
    },
}

/// Why a request or an envelope was refused; `code` is one of [`codes`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ContractError {
    /// The stable code, e.g. [`codes::OUTPUT_PATH`].
    pub code: &'static str,
    /// What was wrong, short.
    pub message: String,
}

impl ContractError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: truncate(message.into()),
        }
    }

    fn adapter(message: impl Into<String>) -> Self {
        Self::new(codes::ADAPTER_INVOCATION, message)
    }

    /// This error as an error envelope for `execution_id`.
    #[must_use]
    pub fn into_envelope(self, execution_id: &str, meta: Meta) -> Envelope {
        Envelope::error(execution_id, self.code, self.message, meta)
    }
}

impl Request {
    /// Canonical JSON bytes: what goes on the wire.
    #[must_use]
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        builderos_canon::to_canonical_bytes(self)
            .expect("a request always serializes: every map key is a string")
    }

    /// Parses and validates a request as a processor receives it.
    ///
    /// # Errors
    /// [`codes::REQUEST_INVALID`] for bytes that are not a request (unknown fields included) or a
    /// request [`Request::validate`] refuses.
    pub fn parse(bytes: &[u8]) -> Result<Self, ContractError> {
        let request: Self = serde_json::from_slice(bytes).map_err(|e| {
            ContractError::new(codes::REQUEST_INVALID, format!("not a valid request: {e}"))
        })?;
        request.validate()?;
        Ok(request)
    }

    /// Checks what serde cannot: the execution id is 1 to [`MAX_ID_BYTES`] printable ASCII
    /// characters, inputs are an object, and the write prefix is a canonical relative directory
    /// path ending in `/` (already in Unicode NFC, so the wire form cannot change it).
    ///
    /// # Errors
    /// [`codes::REQUEST_INVALID`] naming the first problem.
    pub fn validate(&self) -> Result<(), ContractError> {
        let invalid = |m: String| ContractError::new(codes::REQUEST_INVALID, m);
        if !is_printable_ascii_id(&self.execution_id) {
            return Err(invalid(format!(
                "execution_id must be 1 to {MAX_ID_BYTES} printable ASCII characters"
            )));
        }
        if !self.inputs.is_object() {
            return Err(invalid("inputs must be a JSON object".into()));
        }
        check_prefix(&self.write_prefix).map_err(|reason| invalid(format!("write_prefix {reason}")))
    }
}

impl Envelope {
    /// An error envelope; the message is cut to [`MAX_MESSAGE_CHARS`] characters.
    #[must_use]
    pub fn error(
        execution_id: impl Into<String>,
        code: &str,
        message: impl Into<String>,
        meta: Meta,
    ) -> Self {
        Self::Error {
            execution_id: execution_id.into(),
            error: ErrorBody {
                code: code.to_owned(),
                message: truncate(message.into()),
            },
            meta,
        }
    }

    /// True for `status: success`.
    #[must_use]
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Success { .. })
    }

    /// The execution id the envelope answers.
    #[must_use]
    pub fn execution_id(&self) -> &str {
        match self {
            Self::Success { execution_id, .. } | Self::Error { execution_id, .. } => execution_id,
        }
    }

    /// Environment and usage.
    #[must_use]
    pub fn meta(&self) -> &Meta {
        match self {
            Self::Success { meta, .. } | Self::Error { meta, .. } => meta,
        }
    }

    /// The outputs; empty for an error.
    #[must_use]
    pub fn outputs(&self) -> &[Output] {
        match self {
            Self::Success { outputs, .. } => outputs,
            Self::Error { .. } => &[],
        }
    }

    /// The error code, for an error envelope.
    #[must_use]
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Success { .. } => None,
            Self::Error { error, .. } => Some(&error.code),
        }
    }

    /// Canonical JSON bytes: what a processor sends and what receipts hash.
    #[must_use]
    pub fn to_canonical_bytes(&self) -> Vec<u8> {
        builderos_canon::to_canonical_bytes(self)
            .expect("an envelope always serializes: every map key is a string")
    }

    /// Parses and validates bytes a processor answered for `request`.
    ///
    /// Returns the envelope with output paths in canonical (NFC) form, sorted by path.
    ///
    /// # Errors
    /// - [`codes::OUTPUT_PATH`]: an output or the index path is not a canonical relative path
    ///   (no `..` or `.` segment, no `//`, no backslash, NUL or control character, not
    ///   absolute), is not under the write prefix, is `<prefix>receipt.json` ([`RECEIPT_FILE`]),
    ///   or is also a directory of another path;
    /// - [`codes::OUTPUT_DUPLICATE`]: two outputs, or an output and the index path, are equal
    ///   after canonicalisation;
    /// - [`codes::ADAPTER_INVOCATION`]: anything else (not JSON, unknown or missing fields, another
    ///   execution id, content that is not standard base64 or does not match its `sha256` and
    ///   `size`, an error code outside `ERR_[A-Z0-9_]+`, an over-long message).
    pub fn parse_for(bytes: &[u8], request: &Request) -> Result<Self, ContractError> {
        let envelope: Self = serde_json::from_slice(bytes)
            .map_err(|e| ContractError::adapter(format!("not a valid envelope: {e}")))?;
        if envelope.execution_id() != request.execution_id {
            return Err(ContractError::adapter(
                "envelope answers another execution_id",
            ));
        }
        check_meta(envelope.meta())?;
        match envelope {
            Self::Error {
                execution_id,
                error,
                meta,
            } => {
                if !is_error_code(&error.code) {
                    return Err(ContractError::adapter(
                        "error code must match ERR_[A-Z0-9_]+ (at most 256 bytes)",
                    ));
                }
                if error.message.chars().count() > MAX_MESSAGE_CHARS {
                    return Err(ContractError::adapter(format!(
                        "error message is longer than {MAX_MESSAGE_CHARS} characters"
                    )));
                }
                Ok(Self::Error {
                    execution_id,
                    error,
                    meta,
                })
            }
            Self::Success {
                execution_id,
                outputs,
                index_path,
                meta,
            } => {
                let (outputs, index_path) =
                    check_outputs(outputs, &index_path, &request.write_prefix)?;
                Ok(Self::Success {
                    execution_id,
                    outputs,
                    index_path,
                    meta,
                })
            }
        }
    }
}

/// The canonical form of a relative file path: checked, then in Unicode NFC (the form canonical
/// JSON gives every string, so a path means the same before and after the wire).
///
/// # Errors
/// Why the path is refused: empty, too long, absolute, a backslash, NUL or control character,
/// an empty (`//`, trailing `/`), `.` or `..` segment, or a segment over [`MAX_SEGMENT_BYTES`].
pub fn canonical_path(path: &str) -> Result<String, &'static str> {
    if path.is_empty() {
        return Err("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return Err("is longer than 1024 bytes");
    }
    if path.starts_with('/') {
        return Err("is absolute");
    }
    if path.contains('\\') {
        return Err("contains a backslash");
    }
    if path.contains('\0') {
        return Err("contains NUL");
    }
    if path.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err("has an empty segment (`//` or a trailing `/`)"),
            "." => return Err("has a `.` segment"),
            ".." => return Err("has a `..` segment"),
            s if s.len() > MAX_SEGMENT_BYTES => {
                return Err("has a segment longer than 255 bytes");
            }
            _ => {}
        }
    }
    Ok(nfc(path))
}

/// Checks a write prefix: a canonical relative directory path, already in NFC, ending in `/`.
///
/// # Errors
/// Why the prefix is refused.
pub fn check_prefix(prefix: &str) -> Result<(), &'static str> {
    let Some(dir) = prefix.strip_suffix('/') else {
        return Err("must end in `/`");
    };
    if canonical_path(dir)? != dir {
        return Err("must be in Unicode NFC");
    }
    Ok(())
}

/// True for `ERR_[A-Z0-9_]+` of at most [`MAX_ID_BYTES`] bytes.
#[must_use]
pub fn is_error_code(code: &str) -> bool {
    code.len() <= MAX_ID_BYTES
        && code.strip_prefix("ERR_").is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
}

fn is_printable_ascii_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_opaque_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_ID_BYTES && !s.chars().any(char::is_control)
}

fn check_meta(meta: &Meta) -> Result<(), ContractError> {
    if !is_opaque_label(&meta.env_fingerprint) {
        return Err(ContractError::adapter(
            "meta.env_fingerprint must be 1 to 256 bytes without control characters",
        ));
    }
    if meta
        .image_digest
        .as_deref()
        .is_some_and(|d| !is_opaque_label(d))
    {
        return Err(ContractError::adapter(
            "meta.image_digest must be 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// Path under `prefix`, canonical, naming a file below it.
fn path_under(path: &str, prefix: &str, what: &str) -> Result<String, ContractError> {
    let canonical = canonical_path(path)
        .map_err(|reason| ContractError::new(codes::OUTPUT_PATH, format!("{what} {reason}")))?;
    if !canonical.starts_with(prefix) || canonical.len() == prefix.len() {
        return Err(ContractError::new(
            codes::OUTPUT_PATH,
            format!("{what} is not under the write prefix"),
        ));
    }
    Ok(canonical)
}

/// Checks and canonicalises output and index paths, then output contents; sorts by path.
pub(crate) fn check_outputs(
    mut outputs: Vec<Output>,
    index_path: &str,
    prefix: &str,
) -> Result<(Vec<Output>, String), ContractError> {
    if outputs.len() > MAX_OUTPUTS {
        return Err(ContractError::adapter(format!(
            "more than {MAX_OUTPUTS} outputs"
        )));
    }
    for output in &mut outputs {
        output.path = path_under(&output.path, prefix, "output path")?;
    }
    let index_path = path_under(index_path, prefix, "index_path")?;
    // The executor writes the receipt there after the outputs; a processor must not pre-empt it.
    let receipt = format!("{prefix}{RECEIPT_FILE}");
    if index_path == receipt || outputs.iter().any(|o| o.path == receipt) {
        return Err(ContractError::new(
            codes::OUTPUT_PATH,
            format!("`{RECEIPT_FILE}` under the write prefix is reserved for the receipt"),
        ));
    }

    let mut seen: HashSet<&str> = HashSet::with_capacity(outputs.len() + 1);
    for output in &outputs {
        if !seen.insert(&output.path) {
            return Err(ContractError::new(
                codes::OUTPUT_DUPLICATE,
                "two outputs have the same path",
            ));
        }
    }
    if !seen.insert(&index_path) {
        return Err(ContractError::new(
            codes::OUTPUT_DUPLICATE,
            "an output has the index path",
        ));
    }
    seen.insert(&receipt);
    // A path that is also another path's directory cannot be stored as a file.
    for path in &seen {
        for (i, _) in path.match_indices('/') {
            if seen.contains(&path[..i]) {
                return Err(ContractError::new(
                    codes::OUTPUT_PATH,
                    "a path is also the directory of another path",
                ));
            }
        }
    }

    for output in &outputs {
        let bytes = BASE64
            .decode(&output.content)
            .map_err(|_| ContractError::adapter("output content is not standard base64"))?;
        if u64::try_from(bytes.len()).ok() != Some(output.size) {
            return Err(ContractError::adapter(
                "output size does not match its content",
            ));
        }
        if builderos_canon::sha256_hex(&bytes) != output.sha256 {
            return Err(ContractError::adapter(
                "output sha256 does not match its content",
            ));
        }
    }
    outputs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((outputs, index_path))
}

/// `s` in Unicode NFC, through the canonical JSON writer (the one normaliser the wire uses).
fn nfc(s: &str) -> String {
    let bytes = builderos_canon::value_to_canonical_bytes(&Value::String(s.to_owned()));
    serde_json::from_slice(&bytes).unwrap_or_else(|_| s.to_owned())
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
    }
    message
}

/// An output for `path` holding `bytes`, with its digest, size and base64 content.
#[must_use]
pub fn output(path: String, bytes: &[u8]) -> Output {
    Output {
        path,
        sha256: builderos_canon::sha256_hex(bytes),
        size: bytes.len() as u64,
        content: BASE64.encode(bytes),
    }
}

impl Output {
    /// The decoded bytes.
    ///
    /// # Errors
    /// The content is not standard base64 (never for an envelope [`Envelope::parse_for`]
    /// accepted).
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        BASE64.decode(&self.content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PREFIX: &str = "runs/r1/s1/1/";

    fn request() -> Request {
        Request {
            execution_id: "exec-1".into(),
            mode: Mode::Mock,
            inputs: json!({"a": 1}),
            write_prefix: PREFIX.into(),
        }
    }

    fn meta() -> Value {
        json!({"env_fingerprint": "fp", "usage": {"input_tokens": 0, "output_tokens": 0}})
    }

    fn out(path: &str, bytes: &[u8]) -> Value {
        serde_json::to_value(output(path.into(), bytes)).expect("value")
    }

    fn success(outputs: Vec<Value>) -> Value {
        json!({
            "status": "success",
            "execution_id": "exec-1",
            "outputs": outputs,
            "index_path": format!("{PREFIX}index.json"),
            "meta": meta(),
        })
    }

    fn code_of(body: &Value) -> &'static str {
        let bytes = serde_json::to_vec(body).expect("bytes");
        Envelope::parse_for(&bytes, &request())
            .expect_err("refused")
            .code
    }

    /// Mode is exactly `mock` or `real`.
    #[test]
    fn mode_is_exactly_mock_or_real() {
        assert_eq!(
            serde_json::from_str::<Mode>(r#""mock""#).ok(),
            Some(Mode::Mock)
        );
        assert_eq!(
            serde_json::from_str::<Mode>(r#""real""#).ok(),
            Some(Mode::Real)
        );
        for bad in [r#""Mock""#, r#""REAL""#, r#""""#, "null", "1"] {
            assert!(serde_json::from_str::<Mode>(bad).is_err(), "{bad}");
        }
    }

    /// Processors refuse malformed requests with `ERR_REQUEST_INVALID`.
    #[test]
    fn request_validation() {
        let good = request();
        let bytes = good.to_canonical_bytes();
        assert!(builderos_canon::is_canonical(&bytes));
        assert_eq!(Request::parse(&bytes), Ok(good.clone()));

        let mut extra = serde_json::to_value(&good).expect("value");
        extra["extra"] = json!(1);
        let mut bad_mode = serde_json::to_value(&good).expect("value");
        bad_mode["mode"] = json!("Mock");
        let mut bodies = vec![extra, bad_mode];
        for prefix in [
            "runs",
            "/runs/",
            "runs//x/",
            "runs/../x/",
            "runs/./x/",
            "/",
            "",
            "a\\b/",
            "e\u{301}/",
        ] {
            bodies.push(
                json!({"execution_id": "e", "mode": "mock", "inputs": {}, "write_prefix": prefix}),
            );
        }
        for id in ["", "has space", "é"] {
            bodies.push(
                json!({"execution_id": id, "mode": "mock", "inputs": {}, "write_prefix": "p/"}),
            );
        }
        bodies
            .push(json!({"execution_id": "e", "mode": "mock", "inputs": [], "write_prefix": "p/"}));
        for body in bodies {
            let bytes = serde_json::to_vec(&body).expect("bytes");
            let err = Request::parse(&bytes).expect_err(&body.to_string());
            assert_eq!(err.code, codes::REQUEST_INVALID, "{body}");
        }
        assert_eq!(
            Request::parse(b"{").expect_err("json").code,
            codes::REQUEST_INVALID
        );
    }

    /// An envelope survives canonical bytes → parse_for unchanged, and `image_digest` is omitted
    /// when absent.
    #[test]
    fn canonical_round_trip() {
        let envelope = Envelope::Success {
            execution_id: "exec-1".into(),
            outputs: vec![output(format!("{PREFIX}a"), b"\x00\xffbytes")],
            index_path: format!("{PREFIX}index.json"),
            meta: Meta {
                env_fingerprint: "fp".into(),
                image_digest: None,
                usage: Usage::default(),
            },
        };
        let bytes = envelope.to_canonical_bytes();
        assert!(builderos_canon::is_canonical(&bytes));
        assert!(!String::from_utf8_lossy(&bytes).contains("image_digest"));
        assert!(String::from_utf8_lossy(&bytes).starts_with(r#"{"execution_id":"exec-1""#));
        let back = Envelope::parse_for(&bytes, &request()).expect("valid");
        assert_eq!(back, envelope);
        assert_eq!(back.to_canonical_bytes(), bytes);
        assert_eq!(back.outputs()[0].bytes().expect("b64"), b"\x00\xffbytes");

        let error = Envelope::error("exec-1", "ERR_X", "m".repeat(5000), envelope.meta().clone());
        let ErrorBody { message, .. } = match &error {
            Envelope::Error { error, .. } => error.clone(),
            Envelope::Success { .. } => unreachable!(),
        };
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS);
        let bytes = error.to_canonical_bytes();
        assert_eq!(Envelope::parse_for(&bytes, &request()), Ok(error));
    }

    /// Outputs come back sorted by path and NFC-normalised.
    #[test]
    fn outputs_are_sorted_and_normalised() {
        let body = success(vec![
            out(&format!("{PREFIX}b"), b"2"),
            out(&format!("{PREFIX}e\u{301}"), b"3"),
            out(&format!("{PREFIX}a"), b"1"),
        ]);
        let bytes = serde_json::to_vec(&body).expect("bytes");
        let envelope = Envelope::parse_for(&bytes, &request()).expect("valid");
        let paths: Vec<_> = envelope.outputs().iter().map(|o| o.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                format!("{PREFIX}a"),
                format!("{PREFIX}b"),
                format!("{PREFIX}\u{e9}")
            ]
        );
    }

    /// Every path rule answers `ERR_OUTPUT_PATH`.
    #[test]
    fn bad_output_paths() {
        for path in [
            format!("{PREFIX}../x"),
            format!("{PREFIX}a/../../x"),
            format!("{PREFIX}./x"),
            format!("{PREFIX}a//x"),
            format!("{PREFIX}a\\x"),
            format!("{PREFIX}a\0x"),
            format!("{PREFIX}a\nx"),
            format!("{PREFIX}dir/"),
            format!("/{PREFIX}x"),
            PREFIX.to_owned(),
            "runs/r1/s1/2/x".to_owned(),
            "runs/r1/s1/1x".to_owned(),
            "x".to_owned(),
            format!("{PREFIX}{}", "a".repeat(300)),
        ] {
            let body = success(vec![out(&path, b"x")]);
            assert_eq!(code_of(&body), codes::OUTPUT_PATH, "{path:?}");
        }
        let mut body = success(vec![]);
        body["index_path"] = json!("elsewhere/index.json");
        assert_eq!(code_of(&body), codes::OUTPUT_PATH);
        body["index_path"] = json!(format!("{PREFIX}receipt.json"));
        assert_eq!(code_of(&body), codes::OUTPUT_PATH);
        for reserved in ["receipt.json", "receipt.json/x"] {
            let body = success(vec![out(&format!("{PREFIX}{reserved}"), b"x")]);
            assert_eq!(code_of(&body), codes::OUTPUT_PATH, "{reserved}");
        }
        let clash = success(vec![
            out(&format!("{PREFIX}a"), b"1"),
            out(&format!("{PREFIX}a/b"), b"2"),
        ]);
        assert_eq!(code_of(&clash), codes::OUTPUT_PATH);
    }

    /// Equal paths (also after NFC, also against the index) answer `ERR_OUTPUT_DUPLICATE`.
    #[test]
    fn duplicate_outputs() {
        let same = success(vec![
            out(&format!("{PREFIX}a"), b"1"),
            out(&format!("{PREFIX}a"), b"2"),
        ]);
        assert_eq!(code_of(&same), codes::OUTPUT_DUPLICATE);
        let nfc = success(vec![
            out(&format!("{PREFIX}\u{e9}"), b"1"),
            out(&format!("{PREFIX}e\u{301}"), b"2"),
        ]);
        assert_eq!(code_of(&nfc), codes::OUTPUT_DUPLICATE);
        let index = success(vec![out(&format!("{PREFIX}index.json"), b"1")]);
        assert_eq!(code_of(&index), codes::OUTPUT_DUPLICATE);
    }

    /// Anything else malformed answers `ERR_ADAPTER_INVOCATION`.
    #[test]
    fn malformed_envelopes() {
        let good = || success(vec![out(&format!("{PREFIX}a"), b"hello")]);
        let mut cases = vec![json!("garbage"), json!({}), json!({"status": "pending"})];
        let mut c = good();
        c["extra"] = json!(true);
        cases.push(c);
        let mut c = good();
        c["execution_id"] = json!("exec-2");
        cases.push(c);
        let mut c = good();
        c["outputs"][0]["sha256"] = json!("00");
        cases.push(c);
        let mut c = good();
        c["outputs"][0]["size"] = json!(4);
        cases.push(c);
        let mut c = good();
        c["outputs"][0]["content"] = json!("aGVsbG8");
        cases.push(c);
        let mut c = good();
        c["outputs"][0]["unknown"] = json!(1);
        cases.push(c);
        let mut c = good();
        c["meta"]["env_fingerprint"] = json!("");
        cases.push(c);
        let mut c = good();
        c["meta"]["usage"]["input_tokens"] = json!(-1);
        cases.push(c);
        let mut c = good();
        c["meta"]["image_digest"] = json!("");
        cases.push(c);
        let err = |code: &str, message: String| json!({"status": "error", "execution_id": "exec-1", "error": {"code": code, "message": message}, "meta": meta()});
        cases.push(err("ERR_lower", "m".into()));
        cases.push(err("ERR_", "m".into()));
        cases.push(err("FAIL", "m".into()));
        cases.push(err("ERR_X", "m".repeat(MAX_MESSAGE_CHARS + 1)));
        let mut c = err("ERR_X", "m".into());
        c["outputs"] = json!([]);
        cases.push(c);
        for body in cases {
            assert_eq!(code_of(&body), codes::ADAPTER_INVOCATION, "{body}");
        }
        assert_eq!(
            Envelope::parse_for(b"\xff\xfe", &request())
                .expect_err("bytes")
                .code,
            codes::ADAPTER_INVOCATION
        );
        let ok = err("ERR_OWN_CODE_2", "m".repeat(MAX_MESSAGE_CHARS));
        let bytes = serde_json::to_vec(&ok).expect("bytes");
        let envelope = Envelope::parse_for(&bytes, &request()).expect("valid");
        assert_eq!(envelope.error_code(), Some("ERR_OWN_CODE_2"));
    }

    proptest::proptest! {
        /// Whatever `canonical_path` accepts is relative, has no empty, `.` or `..` segment and
        /// no backslash or NUL.
        #[test]
        fn accepted_paths_are_safe(path in "[a-z./\\\\\u{0}é]{0,12}") {
            if let Ok(canonical) = canonical_path(&path) {
                proptest::prop_assert!(!canonical.starts_with('/'));
                proptest::prop_assert!(!canonical.contains('\\') && !canonical.contains('\0'));
                for segment in canonical.split('/') {
                    proptest::prop_assert!(!matches!(segment, "" | "." | ".."));
                }
            }
        }

        /// Any bytes survive an output's base64 and digest checks.
        #[test]
        fn any_content_round_trips(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let body = success(vec![out(&format!("{PREFIX}blob"), &bytes)]);
            let envelope = Envelope::parse_for(&serde_json::to_vec(&body).expect("bytes"), &request());
            let envelope = envelope.expect("valid");
            proptest::prop_assert_eq!(envelope.outputs()[0].bytes().expect("b64"), bytes);
        }
    }
}
