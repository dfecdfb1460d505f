//! `promptpack.zip`: prompts with all their versions and labels, for moving between orgs.
//!
//! The archive holds `promptpack.json` (canonical JSON: the prompts, their labels and for each
//! version its metadata, content hash, file name, size and SHA-256) and one
//! `prompts/<name>/<version>.yaml` per version, byte for byte as published. Building is
//! deterministic (sorted entries, fixed timestamps and permissions). Reading goes through the
//! packs crate's hardened zip parser, so traversal, links, duplicates, bombs and the other
//! hostile-archive tricks are refused the same way as for signed packs; then every file must
//! be listed, every listed file present, and every size, SHA-256 and spec content hash must
//! match the manifest.

use std::collections::BTreeMap;
use std::io::{Cursor, Write};

use builderos_packs::Limits as ZipLimits;
use builderos_packs::archive;
use builderos_packs::verify::stream_entry;
use builderos_shared::error::ErrorCode;
use builderos_shared::http::ApiError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use super::spec::{self, Spec};
use super::{parse_label, parse_version};

/// The manifest's file name.
pub const MANIFEST: &str = "promptpack.json";
/// The bundle format this server writes and reads.
pub const FORMAT: u32 = 1;
/// Most prompts in one bundle.
const MAX_PROMPTS: usize = 1000;
/// Most versions in one bundle.
const MAX_VERSIONS: usize = 10_000;

/// The manifest.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1.
    pub format: u32,
    /// The prompts, sorted by name.
    pub prompts: Vec<BundledPrompt>,
}

/// One prompt in a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundledPrompt {
    /// Its name (slug).
    pub name: String,
    /// Its description.
    pub description: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Label → version.
    pub labels: BTreeMap<String, String>,
    /// Its versions, lowest first.
    pub versions: Vec<BundledVersion>,
}

/// One version in a bundle.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BundledVersion {
    /// The semver.
    pub version: String,
    /// Its changelog.
    pub changelog: String,
    /// Its author's display name.
    pub author: String,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// `sha256:<hex>` of the canonical spec.
    pub content_hash: String,
    /// The spec's file in the archive.
    pub file: String,
    /// The file's size.
    pub size: u64,
    /// The file's SHA-256 (hex).
    pub sha256: String,
}

/// A prompt of a read bundle: its manifest entry and, per version, the YAML and parsed spec.
#[derive(Debug)]
pub struct ReadPrompt {
    /// The manifest entry.
    pub meta: BundledPrompt,
    /// (version, YAML, spec) in manifest order.
    pub versions: Vec<(semver::Version, String, Spec)>,
}

/// A prompt to export: its metadata, labels, and (version metadata, YAML) pairs.
pub struct ExportPrompt {
    /// Name, description, tags, labels; `versions` filled by [`write`].
    pub meta: BundledPrompt,
    /// (version metadata without file/size/sha256, YAML).
    pub specs: Vec<(BundledVersion, String)>,
}

fn file_name(prompt: &str, version: &str) -> String {
    format!("prompts/{prompt}/{version}.yaml")
}

fn zip_err(e: zip::result::ZipError) -> ApiError {
    ApiError::internal(&e)
}

/// Builds a bundle of `prompts` (byte-identical for the same content).
///
/// # Errors
/// Internal errors of the zip writer.
pub fn write(mut prompts: Vec<ExportPrompt>) -> Result<Vec<u8>, ApiError> {
    prompts.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let mut manifest = Manifest {
        format: FORMAT,
        prompts: Vec::with_capacity(prompts.len()),
    };
    let mut files = Vec::new();
    for p in prompts {
        let mut meta = p.meta;
        meta.versions.clear();
        for (mut v, yaml) in p.specs {
            v.file = file_name(&meta.name, &v.version);
            v.size = yaml.len() as u64;
            v.sha256 = builderos_canon::sha256_hex(yaml.as_bytes());
            files.push((v.file.clone(), yaml));
            meta.versions.push(v);
        }
        manifest.prompts.push(meta);
    }
    let manifest_bytes = serde_json::to_value(&manifest)
        .map(|v| builderos_canon::value_to_canonical_bytes(&v))
        .map_err(|e| ApiError::internal(&e))?;
    zip.start_file(MANIFEST, options).map_err(zip_err)?;
    zip.write_all(&manifest_bytes)
        .map_err(|e| ApiError::internal(&e))?;
    files.sort();
    for (name, yaml) in files {
        zip.start_file(name, options).map_err(zip_err)?;
        zip.write_all(yaml.as_bytes())
            .map_err(|e| ApiError::internal(&e))?;
    }
    Ok(zip.finish().map_err(zip_err)?.into_inner())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BundleInvalid, message)
}

fn mismatch(message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BundleHashMismatch, message)
}

/// Reads and checks a bundle completely before anything is imported.
///
/// # Errors
/// 422 `ERR_BUNDLE_INVALID` (hostile or malformed archive, bad manifest, missing or extra
/// files), 422 `ERR_BUNDLE_HASH_MISMATCH`, and the spec errors of an invalid spec.
pub fn read(bytes: &[u8], max_spec_bytes: usize) -> Result<Vec<ReadPrompt>, ApiError> {
    let limits = ZipLimits {
        max_compressed: bytes.len() as u64,
        max_uncompressed: 64 << 20,
        max_entry: 16 << 20,
        max_entries: MAX_VERSIONS + 1,
        ..ZipLimits::default()
    };
    let mut reader = Cursor::new(bytes);
    let entries = archive::read_entries(&mut reader, &limits)
        .map_err(|e| invalid(format!("not a safe archive: {}: {e}", e.code())))?;
    let mut contents: BTreeMap<String, (Vec<u8>, String)> = BTreeMap::new();
    for entry in &entries {
        let mut data = Vec::new();
        let (sha, _) = stream_entry(&mut reader, entry, limits.max_entry, &mut data)
            .map_err(|e| invalid(format!("not a safe archive: {}: {e}", e.code())))?;
        contents.insert(entry.name.clone(), (data, sha));
    }
    let (manifest_bytes, _) = contents
        .remove(MANIFEST)
        .ok_or_else(|| invalid(format!("the bundle has no {MANIFEST}")))?;
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| invalid(format!("{MANIFEST}: {e}")))?;
    if manifest.format != FORMAT {
        return Err(invalid(format!(
            "{MANIFEST}: format {} is not supported (this server reads {FORMAT})",
            manifest.format
        )));
    }
    if manifest.prompts.len() > MAX_PROMPTS {
        return Err(invalid(format!(
            "a bundle holds at most {MAX_PROMPTS} prompts"
        )));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(manifest.prompts.len());
    for meta in manifest.prompts {
        crate::domain::Slug::parse("name", &meta.name)
            .map_err(|e| invalid(format!("{MANIFEST}: {}", e.message)))?;
        if !names.insert(meta.name.clone()) {
            return Err(invalid(format!(
                "{MANIFEST}: prompt `{}` appears twice",
                meta.name
            )));
        }
        let mut versions = Vec::with_capacity(meta.versions.len());
        for v in &meta.versions {
            let where_ = format!("{}@{}", meta.name, v.version);
            let version = parse_version(&v.version)
                .map_err(|e| invalid(format!("{MANIFEST}: {where_}: {}", e.message)))?;
            if v.file != file_name(&meta.name, &v.version) {
                return Err(invalid(format!(
                    "{MANIFEST}: {where_}: file must be `{}`",
                    file_name(&meta.name, &v.version)
                )));
            }
            if v.changelog.trim().is_empty() {
                return Err(invalid(format!("{MANIFEST}: {where_}: empty changelog")));
            }
            let (data, sha) = contents.remove(&v.file).ok_or_else(|| {
                invalid(format!("{MANIFEST} lists `{}`, which is missing", v.file))
            })?;
            if data.len() as u64 != v.size || sha != v.sha256 {
                return Err(mismatch(format!(
                    "`{}` does not match the size and SHA-256 the manifest records",
                    v.file
                )));
            }
            let yaml = String::from_utf8(data)
                .map_err(|_| invalid(format!("`{}` is not UTF-8", v.file)))?;
            let spec = spec::parse(&yaml, max_spec_bytes)
                .map_err(|e| ApiError::new(e.code, format!("{where_}: {}", e.message)))?;
            if spec.content_hash() != v.content_hash {
                return Err(mismatch(format!(
                    "{where_}: the spec's content hash is {}, the manifest says {}",
                    spec.content_hash(),
                    v.content_hash
                )));
            }
            versions.push((version, yaml, spec));
        }
        let mut sorted: Vec<&semver::Version> = versions.iter().map(|(v, _, _)| v).collect();
        sorted.sort();
        if sorted.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid(format!(
                "{MANIFEST}: `{}` lists a version twice",
                meta.name
            )));
        }
        for (label, target) in &meta.labels {
            parse_label(label).map_err(|e| invalid(format!("{MANIFEST}: {}", e.message)))?;
            if !meta.versions.iter().any(|v| &v.version == target) {
                return Err(invalid(format!(
                    "{MANIFEST}: label `{label}` of `{}` points at {target}, which the bundle lacks",
                    meta.name
                )));
            }
        }
        versions.sort_by(|a, b| a.0.cmp(&b.0));
        out.push(ReadPrompt { meta, versions });
    }
    if let Some(extra) = contents.keys().next() {
        return Err(invalid(format!(
            "`{extra}` is in the archive but not in {MANIFEST}"
        )));
    }
    Ok(out)
}
