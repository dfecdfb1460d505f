//! The one list of stable error codes and their HTTP status.
//!
//! Every error the platform reports to a client or a CLI user carries one of these codes.
//! Codes are part of the public contract: add new ones, never rename or reuse old ones.

use serde::Serialize;
use utoipa::ToSchema;

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident => ($code:literal, $status:literal), )*) => {
        /// A stable, documented error code (`ERR_*`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* #[serde(rename = $code)] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in declaration order (rendered into docs/errors.md).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The wire form, e.g. `ERR_NOT_FOUND`.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code answers with.
            #[must_use]
            pub const fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// One line saying when the code is used.
            #[must_use]
            pub const fn description(self) -> &'static str {
                match self { $(ErrorCode::$variant => concat!($($doc),*),)* }
            }
        }
    };
}

error_codes! {
    /// The request is malformed: bad JSON, a missing or invalid field, a bad query term.
    Inputs => ("ERR_INPUTS", 400),
    /// No credentials, or credentials that are invalid, expired or revoked.
    Unauthenticated => ("ERR_UNAUTHENTICATED", 401),
    /// Authenticated, but the role or token lacks the permission the action needs.
    Forbidden => ("ERR_FORBIDDEN", 403),
    /// The resource does not exist, or belongs to another org (indistinguishable on purpose).
    NotFound => ("ERR_NOT_FOUND", 404),
    /// The route exists but not with this HTTP method.
    MethodNotAllowed => ("ERR_METHOD_NOT_ALLOWED", 405),
    /// The request conflicts with current state (a duplicate, a stale version).
    Conflict => ("ERR_CONFLICT", 409),
    /// The link, invitation or token was valid once but is expired, used or revoked.
    Expired => ("ERR_EXPIRED", 410),
    /// The request body exceeds the configured limit.
    PayloadTooLarge => ("ERR_PAYLOAD_TOO_LARGE", 413),
    /// The request body has a content type the endpoint does not accept.
    UnsupportedMediaType => ("ERR_UNSUPPORTED_MEDIA_TYPE", 415),
    /// Too many attempts; retry after the number of seconds in `Retry-After`.
    RateLimited => ("ERR_RATE_LIMITED", 429),
    /// A prompt version must be a semver (`MAJOR.MINOR.PATCH`, optionally `-pre`).
    VersionInvalid => ("ERR_VERSION_INVALID", 400),
    /// A published version must be strictly greater than every earlier version of the prompt.
    VersionNotGreater => ("ERR_VERSION_NOT_GREATER", 409),
    /// Publishing a version needs a non-empty changelog entry.
    ChangelogRequired => ("ERR_CHANGELOG_REQUIRED", 400),
    /// The prompt spec is not well-formed YAML (the message names the line and column).
    SpecYaml => ("ERR_SPEC_YAML", 422),
    /// The prompt spec is YAML but breaks the spec schema (the message names the line and field).
    SpecInvalid => ("ERR_SPEC_INVALID", 422),
    /// The template uses a variable the spec does not declare (the message names the line).
    SpecUndeclaredVariable => ("ERR_SPEC_UNDECLARED_VARIABLE", 422),
    /// The prompt spec exceeds the configured size cap.
    SpecTooLarge => ("ERR_SPEC_TOO_LARGE", 413),
    /// A label name must be a lowercase slug.
    LabelInvalid => ("ERR_LABEL_INVALID", 400),
    /// The label is managed by the registry (`latest`) and can't be moved or removed by hand.
    LabelReserved => ("ERR_LABEL_RESERVED", 409),
    /// The prompt has no such label (never a fallback to another version).
    LabelNotFound => ("ERR_LABEL_NOT_FOUND", 404),
    /// The prompt has no such version.
    VersionNotFound => ("ERR_VERSION_NOT_FOUND", 404),
    /// Moving `production` to this version would ship an eval regression; retry with an override and a reason.
    EvalRegression => ("ERR_EVAL_REGRESSION", 409),
    /// The bundle is not a valid prompt bundle (structure, paths, manifest).
    BundleInvalid => ("ERR_BUNDLE_INVALID", 422),
    /// A file or spec in the bundle does not match the hash its manifest records.
    BundleHashMismatch => ("ERR_BUNDLE_HASH_MISMATCH", 422),
    /// The bundle conflicts with prompts already in the org (same version, other content); nothing was imported.
    BundleConflict => ("ERR_BUNDLE_CONFLICT", 409),
    /// The pipeline definition is not YAML/JSON, or repeats a key (details: `line`, `path`).
    PipelineParse => ("ERR_PIPELINE_PARSE", 422),
    /// The pipeline definition breaks the schema: unknown or missing field, wrong type, bad slug, no steps or too many.
    PipelineSchema => ("ERR_PIPELINE_SCHEMA", 422),
    /// Two steps of the pipeline share an id.
    PipelineDuplicateStep => ("ERR_PIPELINE_DUPLICATE_STEP", 422),
    /// A step's `depends_on` names a step that doesn't exist, or the step itself.
    PipelineUnknownStep => ("ERR_PIPELINE_UNKNOWN_STEP", 422),
    /// The steps' `depends_on` form a cycle.
    PipelineCycle => ("ERR_PIPELINE_CYCLE", 422),
    /// A step's `retries` is out of bounds or malformed.
    PipelineRetries => ("ERR_PIPELINE_RETRIES", 422),
    /// A step's `timeout` is out of bounds or malformed.
    PipelineTimeout => ("ERR_PIPELINE_TIMEOUT", 422),
    /// A step's `processor` is not `builtin:<name>` or an acceptable http(s) URL.
    PipelineProcessor => ("ERR_PIPELINE_PROCESSOR", 422),
    /// A malformed `${…}` reference, or one to a step that is not an ancestor.
    PipelineInputRef => ("ERR_PIPELINE_INPUT_REF", 422),
    /// A cron trigger's expression is not 5 valid fields or an accepted nickname.
    CronInvalid => ("ERR_CRON_INVALID", 422),
    /// A cron trigger's time zone is not an IANA name.
    TimezoneInvalid => ("ERR_TIMEZONE_INVALID", 422),
    /// The pipeline calls HTTP processors the org has not allow-listed (details: `origins`).
    ProcessorNotAllowed => ("ERR_PROCESSOR_NOT_ALLOWED", 403),
    /// An unexpected failure inside the server; details are in the logs under the request id.
    Internal => ("ERR_INTERNAL", 500),
    /// A dependency (the database) is unreachable; retry later.
    Unavailable => ("ERR_UNAVAILABLE", 503),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Renders the code table as Markdown (the body of `docs/errors.md`).
#[must_use]
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         <!-- Generated from `ErrorCode` in crates/shared/src/error.rs by `builderos docs`; \
         a test fails when this file drifts. -->\n\n\
         Every error answers with one envelope:\n\n\
         ```json\n{\"error\": {\"code\": \"ERR_…\", \"message\": \"…\"}, \"request_id\": \"…\"}\n```\n\n\
         | code | HTTP status | when |\n| --- | --- | --- |\n",
    );
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            code.as_str(),
            code.http_status(),
            code.description().trim()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codes are unique, prefixed and serialize to their wire form.
    #[test]
    fn codes_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(code.as_str().starts_with("ERR_"), "{code}");
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(
                serde_json::to_value(code).expect("serialize"),
                serde_json::Value::String(code.as_str().to_owned())
            );
        }
    }

    /// The status mapping of the base codes is pinned.
    #[test]
    fn status_mapping() {
        let pinned: Vec<(&str, u16)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str(), c.http_status()))
            .collect();
        assert_eq!(
            pinned,
            vec![
                ("ERR_INPUTS", 400),
                ("ERR_UNAUTHENTICATED", 401),
                ("ERR_FORBIDDEN", 403),
                ("ERR_NOT_FOUND", 404),
                ("ERR_METHOD_NOT_ALLOWED", 405),
                ("ERR_CONFLICT", 409),
                ("ERR_EXPIRED", 410),
                ("ERR_PAYLOAD_TOO_LARGE", 413),
                ("ERR_UNSUPPORTED_MEDIA_TYPE", 415),
                ("ERR_RATE_LIMITED", 429),
                ("ERR_VERSION_INVALID", 400),
                ("ERR_VERSION_NOT_GREATER", 409),
                ("ERR_CHANGELOG_REQUIRED", 400),
                ("ERR_SPEC_YAML", 422),
                ("ERR_SPEC_INVALID", 422),
                ("ERR_SPEC_UNDECLARED_VARIABLE", 422),
                ("ERR_SPEC_TOO_LARGE", 413),
                ("ERR_LABEL_INVALID", 400),
                ("ERR_LABEL_RESERVED", 409),
                ("ERR_LABEL_NOT_FOUND", 404),
                ("ERR_VERSION_NOT_FOUND", 404),
                ("ERR_EVAL_REGRESSION", 409),
                ("ERR_BUNDLE_INVALID", 422),
                ("ERR_BUNDLE_HASH_MISMATCH", 422),
                ("ERR_BUNDLE_CONFLICT", 409),
                ("ERR_PIPELINE_PARSE", 422),
                ("ERR_PIPELINE_SCHEMA", 422),
                ("ERR_PIPELINE_DUPLICATE_STEP", 422),
                ("ERR_PIPELINE_UNKNOWN_STEP", 422),
                ("ERR_PIPELINE_CYCLE", 422),
                ("ERR_PIPELINE_RETRIES", 422),
                ("ERR_PIPELINE_TIMEOUT", 422),
                ("ERR_PIPELINE_PROCESSOR", 422),
                ("ERR_PIPELINE_INPUT_REF", 422),
                ("ERR_CRON_INVALID", 422),
                ("ERR_TIMEZONE_INVALID", 422),
                ("ERR_PROCESSOR_NOT_ALLOWED", 403),
                ("ERR_INTERNAL", 500),
                ("ERR_UNAVAILABLE", 503),
            ]
        );
    }
}
