//! The manifest (`pack.json`): what the pack is, what it asks for, and every file with its
//! size and SHA-256. Stored as canonical JSON; the signature covers exactly those bytes.

use serde::{Deserialize, Serialize};

use crate::error::PackError;
use crate::limits::Limits;
use crate::paths;

/// The format version this crate writes and reads.
pub const FORMAT: u32 = 1;

/// What a pack contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Desk templates: template files plus declared variables.
    Desk,
    /// Agents: roles with prompt specs and policies.
    Agent,
    /// Pipeline definitions.
    Pipeline,
}

/// The manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: u32,
    /// The kind.
    pub kind: Kind,
    /// Lowercase slug.
    pub name: String,
    /// Semver.
    pub version: String,
    /// The publisher's id (a slug).
    pub publisher: String,
    /// What it is for.
    pub description: String,
    /// What it asks to be allowed.
    pub permissions: Permissions,
    /// The kind's entry points (see [`DeskEntry`], [`AgentEntry`], [`PipelineEntry`]).
    pub entry: serde_json::Value,
    /// Every content file, sorted by path.
    pub files: Vec<FileEntry>,
}

/// Requested permissions; installing a pack means approving these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Tools the pack's agents may call.
    pub tools: Vec<String>,
    /// Network domains they may reach.
    pub network: Vec<String>,
    /// Secret names they may read.
    pub secrets: Vec<String>,
}

/// One content file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative path inside the archive.
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// A declared template variable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    /// Identifier.
    pub name: String,
    /// `string`, `number`, `boolean`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Whether installing requires a value.
    #[serde(default)]
    pub required: bool,
}

/// Entry points of a desk pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeskEntry {
    /// Template files.
    pub templates: Vec<String>,
    /// Variables the templates use.
    pub variables: Vec<Variable>,
}

/// One agent role of an agent pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Role name.
    pub role: String,
    /// Its prompt spec file.
    pub prompt: String,
}

/// Path rules for an agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathPolicy {
    /// Globs it may touch.
    pub allow: Vec<String>,
    /// Globs it may never touch.
    pub deny: Vec<String>,
}

/// Policies of an agent pack.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policies {
    /// Tool allowlist.
    pub tools: Vec<String>,
    /// Path allow/deny.
    pub paths: PathPolicy,
    /// Network allowlist.
    pub network: Vec<String>,
}

/// Entry points of an agent pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentEntry {
    /// Agent roles.
    pub agents: Vec<Agent>,
    /// Their policies.
    pub policies: Policies,
}

/// Entry points of a pipeline pack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineEntry {
    /// Pipeline definition files.
    pub pipelines: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> PackError {
    PackError::ManifestInvalid(msg.into())
}

/// A lowercase slug: `a-z`, `0-9` and inner `-`, 1–64 characters (names and publishers).
#[must_use]
pub fn is_slug(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_domain(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Manifest {
    /// Parses manifest bytes, which must be canonical JSON.
    ///
    /// # Errors
    /// `ERR_PACK_NON_CANONICAL_MANIFEST` or `ERR_PACK_MANIFEST_INVALID`.
    pub fn parse(bytes: &[u8]) -> Result<Self, PackError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| invalid(format!("pack.json: {e}")))?;
        // Every key of the bytes is a field (unknown and duplicate fields were refused just
        // now) and every field is written back, so the bytes are canonical exactly when they
        // are the manifest's canonical form.
        if manifest.canonical_bytes() != bytes {
            return Err(PackError::NonCanonicalManifest(
                "pack.json must be canonical JSON (sorted keys, no whitespace, NFC strings)".into(),
            ));
        }
        Ok(manifest)
    }

    /// The canonical bytes of this manifest (what `pack.json` holds and the signature covers).
    ///
    /// # Errors
    /// Never in practice; serialization of these types can't fail.
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>, PackError> {
        Ok(self.canonical_bytes())
    }

    /// The canonical JSON of the manifest, written field by field (keys in code-point order)
    /// rather than through a `serde_json::Value`: a manifest lists thousands of files.
    fn canonical_bytes(&self) -> Vec<u8> {
        // Plain ASCII (paths, digests, slugs) is already NFC and needs no escaping; anything
        // else goes through the canon crate.
        fn write_str(s: &str, out: &mut Vec<u8>) {
            if s.bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                out.push(b'"');
                out.extend_from_slice(s.as_bytes());
                out.push(b'"');
            } else {
                builderos_canon::write_canonical_str(s, out);
            }
        }
        fn strings(items: &[String], out: &mut Vec<u8>) {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(item, out);
            }
            out.push(b']');
        }
        let str = write_str;
        let mut out = Vec::with_capacity(512 + self.files.len() * 128);
        out.extend_from_slice(b"{\"description\":");
        str(&self.description, &mut out);
        out.extend_from_slice(b",\"entry\":");
        builderos_canon::write_canonical_value(&self.entry, &mut out);
        out.extend_from_slice(b",\"files\":[");
        for (i, file) in self.files.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"path\":");
            str(&file.path, &mut out);
            out.extend_from_slice(b",\"sha256\":");
            str(&file.sha256, &mut out);
            out.extend_from_slice(b",\"size\":");
            out.extend_from_slice(file.size.to_string().as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"format\":");
        out.extend_from_slice(self.format.to_string().as_bytes());
        out.extend_from_slice(b",\"kind\":");
        str(
            match self.kind {
                Kind::Desk => "desk",
                Kind::Agent => "agent",
                Kind::Pipeline => "pipeline",
            },
            &mut out,
        );
        out.extend_from_slice(b",\"name\":");
        str(&self.name, &mut out);
        out.extend_from_slice(b",\"permissions\":{\"network\":");
        strings(&self.permissions.network, &mut out);
        out.extend_from_slice(b",\"secrets\":");
        strings(&self.permissions.secrets, &mut out);
        out.extend_from_slice(b",\"tools\":");
        strings(&self.permissions.tools, &mut out);
        out.extend_from_slice(b"},\"publisher\":");
        str(&self.publisher, &mut out);
        out.extend_from_slice(b",\"version\":");
        str(&self.version, &mut out);
        out.push(b'}');
        out
    }

    /// Checks every field and the kind's schema.
    ///
    /// # Errors
    /// `ERR_PACK_MANIFEST_INVALID` (or a path error) naming the first problem.
    pub fn validate(&self, limits: &Limits) -> Result<(), PackError> {
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format {} is not supported (expected {FORMAT})",
                self.format
            )));
        }
        if !is_slug(&self.name) {
            return Err(invalid("name: must be a lowercase slug (a-z, 0-9, dashes)"));
        }
        if !is_slug(&self.publisher) {
            return Err(invalid("publisher: must be a lowercase slug"));
        }
        semver::Version::parse(&self.version)
            .map_err(|e| invalid(format!("version: not semver: {e}")))?;
        if self.description.trim().is_empty() || self.description.len() > 4096 {
            return Err(invalid("description: 1-4096 bytes"));
        }
        for tool in &self.permissions.tools {
            if !is_slug(&tool.replace(['_', '.', ':'], "-")) {
                return Err(invalid(format!(
                    "permissions.tools: `{tool}` is not a tool name"
                )));
            }
        }
        for domain in &self.permissions.network {
            if !is_domain(domain) {
                return Err(invalid(format!(
                    "permissions.network: `{domain}` is not a domain"
                )));
            }
        }
        for secret in &self.permissions.secrets {
            if secret.is_empty()
                || !secret
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(invalid(format!(
                    "permissions.secrets: `{secret}` is not a secret name (A-Z, 0-9, _)"
                )));
            }
        }
        for pair in self.files.windows(2) {
            if pair[0].path >= pair[1].path {
                return Err(invalid(format!(
                    "files: not sorted by path, or duplicated, at `{}`",
                    pair[1].path
                )));
            }
        }
        for file in &self.files {
            paths::check(&file.path, limits)?;
            if file.path == "pack.json" || file.path == "pack.sig" {
                return Err(invalid(format!("files: `{}` is reserved", file.path)));
            }
            if file.sha256.len() != 64
                || !file
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(invalid(format!(
                    "files: `{}` has a malformed sha256",
                    file.path
                )));
            }
        }
        let listed = |path: &str, field: &str| -> Result<(), PackError> {
            if self.files.iter().any(|f| f.path == path) {
                Ok(())
            } else {
                Err(invalid(format!("entry.{field}: `{path}` is not in files")))
            }
        };
        let entry = |e: serde_json::Error| invalid(format!("entry: {e}"));
        match self.kind {
            Kind::Desk => {
                let desk: DeskEntry = serde_json::from_value(self.entry.clone()).map_err(entry)?;
                if desk.templates.is_empty() {
                    return Err(invalid(
                        "entry.templates: a desk pack needs at least one template",
                    ));
                }
                desk.templates
                    .iter()
                    .try_for_each(|t| listed(t, "templates"))?;
                for v in &desk.variables {
                    if !matches!(v.ty.as_str(), "string" | "number" | "boolean")
                        || !v
                            .name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                        || v.name.is_empty()
                    {
                        return Err(invalid(format!(
                            "entry.variables: `{}` needs an identifier name and a type of string, number or boolean",
                            v.name
                        )));
                    }
                }
            }
            Kind::Agent => {
                let agent: AgentEntry =
                    serde_json::from_value(self.entry.clone()).map_err(entry)?;
                if agent.agents.is_empty() {
                    return Err(invalid(
                        "entry.agents: an agent pack needs at least one agent",
                    ));
                }
                for a in &agent.agents {
                    if !is_slug(&a.role) {
                        return Err(invalid(format!(
                            "entry.agents: role `{}` is not a slug",
                            a.role
                        )));
                    }
                    listed(&a.prompt, "agents.prompt")?;
                }
                for domain in &agent.policies.network {
                    if !self.permissions.network.contains(domain) {
                        return Err(invalid(format!(
                            "entry.policies.network: `{domain}` is not among permissions.network"
                        )));
                    }
                }
                for tool in &agent.policies.tools {
                    if !self.permissions.tools.contains(tool) {
                        return Err(invalid(format!(
                            "entry.policies.tools: `{tool}` is not among permissions.tools"
                        )));
                    }
                }
            }
            Kind::Pipeline => {
                let pipeline: PipelineEntry =
                    serde_json::from_value(self.entry.clone()).map_err(entry)?;
                if pipeline.pipelines.is_empty() {
                    return Err(invalid(
                        "entry.pipelines: a pipeline pack needs at least one pipeline",
                    ));
                }
                pipeline
                    .pipelines
                    .iter()
                    .try_for_each(|p| listed(p, "pipelines"))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn manifest(text: &str, size: u64, kind: Kind, entry: serde_json::Value) -> Manifest {
        Manifest {
            format: FORMAT,
            kind,
            name: format!("n{text}"),
            version: "1.0.0".into(),
            publisher: "acme".into(),
            description: text.into(),
            permissions: Permissions {
                tools: vec![text.into(), "read_file".into()],
                network: vec![],
                secrets: vec![format!("{text}\u{1}")],
            },
            entry,
            files: vec![
                FileEntry {
                    path: format!("a/{text}"),
                    size,
                    sha256: "0".repeat(64),
                },
                FileEntry {
                    path: "b".into(),
                    size: 0,
                    sha256: text.into(),
                },
            ],
        }
    }

    proptest! {
        /// The field-by-field writer gives exactly the generic canonical form, and `parse`
        /// accepts exactly what `is_canonical` accepts.
        #[test]
        fn writer_matches_generic_canonical_form(
            text in prop_oneof!["[ -~\u{7f}\u{1}\u{e9}]{0,12}", ".{0,12}"],
            size in any::<u64>(),
            kind in prop::sample::select(vec![Kind::Desk, Kind::Agent, Kind::Pipeline]),
            key in "[a-zA-Z\u{e9}\u{301}]{0,4}",
        ) {
            let entry = serde_json::json!({"z": [1, 2.5, -0.0, null, true], key.clone(): {"b": text, "a": 1.0}, "e\u{301}": "x"});
            let m = manifest(&text, size, kind, entry);
            let canonical = builderos_canon::to_canonical_bytes(&m).unwrap();
            prop_assert_eq!(m.canonical_bytes(), canonical.clone());
            prop_assert!(builderos_canon::is_canonical(&canonical));
            let parsed = Manifest::parse(&canonical).unwrap();
            prop_assert_eq!(parsed.canonical_bytes(), canonical);
            let loose = serde_json::to_vec(&m).unwrap();
            prop_assert_eq!(Manifest::parse(&loose).is_ok(), builderos_canon::is_canonical(&loose));
            let pretty = serde_json::to_vec_pretty(&m).unwrap();
            prop_assert_eq!(Manifest::parse(&pretty).is_ok(), builderos_canon::is_canonical(&pretty));
        }
    }

    /// Bytes that are not the canonical form are refused as such.
    #[test]
    fn non_canonical_spellings() {
        let m = manifest(
            "x",
            3,
            Kind::Pipeline,
            serde_json::json!({"pipelines": ["a/x"]}),
        );
        let good = String::from_utf8(m.canonical_bytes()).unwrap();
        assert!(Manifest::parse(good.as_bytes()).is_ok());
        for bad in [
            good.replace("\"format\":1", "\"format\":1.0"),
            good.replace("\"size\":3", "\"size\":3.0"),
            good.replace("\"kind\"", "\"\\u006bind\""),
            good.replace("\"description\":\"x\"", "\"description\":\"\\u0078\""),
            good.replace("\"description\":\"x\"", "\"description\":\"e\u{301}\""),
            good.replace(',', ", "),
        ] {
            let code = Manifest::parse(bad.as_bytes()).map_err(|e| e.code());
            let generic = builderos_canon::is_canonical(bad.as_bytes());
            assert!(code.is_err(), "{bad}");
            assert!(
                !generic || code == Err("ERR_PACK_MANIFEST_INVALID"),
                "{bad}"
            );
        }
    }
}
