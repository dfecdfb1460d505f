//! Building and signing packs deterministically: the same source directory (and key) always
//! gives byte-identical archives — entries in a fixed order (`pack.json`, content files sorted
//! by path, `pack.sig`), fixed timestamps (1980-01-01), fixed permissions (0644), deflate at a
//! fixed level — or stored, for a file that deflate does not make smaller (decided from the
//! file's own bytes, so the choice is as deterministic as the rest).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipArchive, ZipWriter};

use crate::archive;
use crate::error::PackError;
use crate::limits::Limits;
use crate::manifest::{FileEntry, Kind, Manifest, Permissions};
use crate::sign;

/// The source manifest a publisher edits: the manifest without `files`.
pub const SOURCE_MANIFEST: &str = "pack.src.json";

/// `pack.src.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceManifest {
    /// Format version (1).
    pub format: u32,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Publisher id.
    pub publisher: String,
    /// Description.
    pub description: String,
    /// Requested permissions.
    pub permissions: Permissions,
    /// Entry points.
    pub entry: serde_json::Value,
}

fn options(method: CompressionMethod) -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(method)
        .compression_level(if method == CompressionMethod::Deflated {
            Some(i64::from(LEVEL))
        } else {
            None
        })
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644)
        .large_file(false)
}

fn zip_err(e: zip::result::ZipError) -> PackError {
    PackError::Io(format!("zip: {e}"))
}

fn collect(dir: &Path, base: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<(), PackError> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        // Hidden files and directories (`.git`, `.env`, editor state) are never packed: a
        // secret next to the sources must not ship by accident.
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type()?;
        let rel = path
            .strip_prefix(base)
            .map_err(|e| PackError::Io(e.to_string()))?;
        let name = rel
            .to_str()
            .ok_or_else(|| PackError::BadPath(format!("{} is not UTF-8", rel.display())))?
            .replace(std::path::MAIN_SEPARATOR, "/");
        if kind.is_symlink() {
            return Err(PackError::Symlink(format!(
                "{name} is a symbolic link; packs hold regular files only"
            )));
        } else if kind.is_dir() {
            collect(&path, base, out)?;
        } else if kind.is_file() {
            if name != SOURCE_MANIFEST {
                out.push((name, path));
            }
        } else {
            return Err(PackError::NotRegularFile(format!(
                "{name} is not a regular file"
            )));
        }
    }
    Ok(())
}

/// The deflate level of content entries (the one [`options`] gives the zip writer).
const LEVEL: u32 = 6;

/// Counts bytes written and discards them.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a content file is stored: deflate at [`LEVEL`] when that makes it smaller, otherwise
/// stored as is (inflating already-compressed data only costs the reader a copy).
fn method_for(path: &Path, size: u64) -> Result<CompressionMethod, PackError> {
    if size == 0 {
        return Ok(CompressionMethod::Stored);
    }
    let mut encoder =
        flate2::write::DeflateEncoder::new(Counter(0), flate2::Compression::new(LEVEL));
    std::io::copy(&mut File::open(path)?, &mut encoder)?;
    let compressed = encoder.finish()?.0;
    Ok(if compressed < size {
        CompressionMethod::Deflated
    } else {
        CompressionMethod::Stored
    })
}

fn hash_file(path: &Path) -> Result<(String, u64), PackError> {
    let mut file = File::open(path)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(sha.finalize()), size))
}

/// Builds an unsigned pack from `dir` (its `pack.src.json` plus every other file) into `out`;
/// returns the manifest.
///
/// # Errors
/// Invalid source manifests, hostile file names, links, I/O errors.
pub fn build<W: Write + Seek>(dir: &Path, out: W, limits: &Limits) -> Result<Manifest, PackError> {
    let source: SourceManifest = serde_json::from_slice(
        &std::fs::read(dir.join(SOURCE_MANIFEST))
            .map_err(|e| PackError::ManifestMissing(format!("{SOURCE_MANIFEST}: {e}")))?,
    )
    .map_err(|e| PackError::ManifestInvalid(format!("{SOURCE_MANIFEST}: {e}")))?;
    let mut files = Vec::new();
    collect(dir, dir, &mut files)?;
    files.sort();
    let mut entries = Vec::with_capacity(files.len());
    let mut methods = Vec::with_capacity(files.len());
    for (name, path) in &files {
        if name == "pack.json" || name == "pack.sig" {
            return Err(PackError::ManifestInvalid(format!(
                "{name} is reserved; remove it from the source directory"
            )));
        }
        crate::paths::check(name, limits)?;
        let (sha256, size) = hash_file(path)?;
        methods.push(method_for(path, size)?);
        entries.push(FileEntry {
            path: name.clone(),
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        format: source.format,
        kind: source.kind,
        name: source.name,
        version: source.version,
        publisher: source.publisher,
        description: source.description,
        permissions: source.permissions,
        entry: source.entry,
        files: entries,
    };
    manifest.validate(limits)?;
    let manifest_bytes = manifest.to_canonical_bytes()?;
    let mut zip = ZipWriter::new(out);
    zip.start_file("pack.json", options(CompressionMethod::Stored))
        .map_err(zip_err)?;
    zip.write_all(&manifest_bytes)?;
    for ((name, path), method) in files.iter().zip(methods) {
        zip.start_file(name.as_str(), options(method))
            .map_err(zip_err)?;
        std::io::copy(&mut File::open(path)?, &mut zip)?;
    }
    zip.finish().map_err(zip_err)?;
    Ok(manifest)
}

/// Signs an unsigned pack (from [`build`]): copies its entries byte for byte and adds
/// `pack.sig` over its manifest.
///
/// # Errors
/// Structural problems of the input, an invalid manifest, I/O errors.
pub fn sign<R: Read + Seek, W: Write + Seek>(
    mut unsigned: R,
    key: &SigningKey,
    out: W,
    limits: &Limits,
) -> Result<Manifest, PackError> {
    let entries = archive::read_entries(&mut unsigned, limits)?;
    if entries.iter().any(|e| e.name == "pack.sig") {
        return Err(PackError::SignatureMissing(
            "the pack is already signed; sign the unsigned build".into(),
        ));
    }
    let manifest_entry = entries
        .iter()
        .find(|e| e.name == "pack.json")
        .ok_or_else(|| PackError::ManifestMissing("no pack.json".into()))?;
    let mut manifest_bytes = Vec::new();
    crate::verify::stream_entry(
        &mut unsigned,
        manifest_entry,
        crate::limits::MAX_MANIFEST_BYTES,
        &mut manifest_bytes,
    )?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    manifest.validate(limits)?;
    let signature = sign::sign(key, &manifest_bytes)?;
    let mut archive = ZipArchive::new(unsigned).map_err(zip_err)?;
    let mut zip = ZipWriter::new(out);
    for i in 0..archive.len() {
        let file = archive.by_index_raw(i).map_err(zip_err)?;
        zip.raw_copy_file(file).map_err(zip_err)?;
    }
    zip.start_file("pack.sig", options(CompressionMethod::Stored))
        .map_err(zip_err)?;
    zip.write_all(&signature)?;
    zip.finish().map_err(zip_err)?;
    Ok(manifest)
}
