//! Processors: the one contract every step calls through, and the adapters that carry it.
//!
//! A step names its processor with a [`ProcessorRef`]: `builtin:<name>` for the in-process
//! processors, or an `http://` / `https://` base URL for a processor served over HTTP
//! (`GET <base>/healthz`, then `POST <base>/run`).

use std::fmt;

/// The builtin processors' names.
pub const BUILTIN_NAMES: &[&str] = &["echo", "sleep", "fail", "fanout"];

/// Which processor a step calls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProcessorRef {
    /// An in-process processor, one of [`BUILTIN_NAMES`].
    Builtin(String),
    /// A processor served over HTTP at this base URL (no trailing slash, no query or fragment).
    Http(String),
}

/// Why a processor reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProcessorRefError(pub String);

impl ProcessorRef {
    /// Parses `builtin:<name>` or an `http(s)://host[:port][/path]` base URL.
    ///
    /// # Errors
    /// An unknown builtin, another scheme, a URL with credentials, query or fragment, or no host.
    pub fn parse(s: &str) -> Result<Self, ProcessorRefError> {
        if let Some(name) = s.strip_prefix("builtin:") {
            return if BUILTIN_NAMES.contains(&name) {
                Ok(Self::Builtin(name.to_owned()))
            } else {
                Err(ProcessorRefError(format!(
                    "unknown builtin processor `{name}` (known: {})",
                    BUILTIN_NAMES.join(", ")
                )))
            };
        }
        let url = reqwest::Url::parse(s).map_err(|e| {
            ProcessorRefError(format!("`{s}` is not `builtin:<name>` or a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must use http or https"
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` has no host"
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must not carry credentials"
            )));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ProcessorRefError(format!(
                "processor URL `{s}` must not have a query or fragment"
            )));
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        Ok(Self::Http(base))
    }

    /// True for in-process processors (always allowed).
    #[must_use]
    pub fn is_builtin(&self) -> bool {
        matches!(self, Self::Builtin(_))
    }

    /// What an org's processor allowlist matches: the origin (`scheme://host:port`) of an HTTP
    /// processor; `None` for builtins.
    #[must_use]
    pub fn allowlist_key(&self) -> Option<String> {
        match self {
            Self::Builtin(_) => None,
            Self::Http(base) => reqwest::Url::parse(base)
                .ok()
                .map(|u| u.origin().ascii_serialization()),
        }
    }
}

impl fmt::Display for ProcessorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "builtin:{name}"),
            Self::Http(base) => f.write_str(base),
        }
    }
}

impl serde::Serialize for ProcessorRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ProcessorRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_builtins_and_urls() {
        assert_eq!(
            ProcessorRef::parse("builtin:echo"),
            Ok(ProcessorRef::Builtin("echo".into()))
        );
        assert!(ProcessorRef::parse("builtin:nope").is_err());
        let http = ProcessorRef::parse("http://127.0.0.1:8080/").expect("url");
        assert_eq!(http.to_string(), "http://127.0.0.1:8080");
        assert_eq!(
            http.allowlist_key().as_deref(),
            Some("http://127.0.0.1:8080")
        );
        for bad in ["ftp://x", "http://u:p@h", "http://h/?q=1", "echo", ""] {
            assert!(ProcessorRef::parse(bad).is_err(), "{bad}");
        }
    }
}
