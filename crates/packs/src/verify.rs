//! Verification: the archive's structure, the manifest and its signature, and every file
//! against the manifest — streaming, with bounded memory whatever the pack's size.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{Read, Seek, Write};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::archive::{self, Entry};
use crate::error::PackError;
use crate::limits::{Limits, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
use crate::manifest::Manifest;
use crate::sign::{self, TrustedKey};

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Size limits.
    pub limits: Limits,
    /// Keys revoked at or before this instant are refused (default: now; a server re-checking
    /// an already published pack passes its upload time).
    pub at: DateTime<Utc>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            at: Utc::now(),
        }
    }
}

/// A pack that passed every check.
#[derive(Debug, Clone)]
pub struct VerifiedPack {
    /// The manifest.
    pub manifest: Manifest,
    /// Its canonical bytes (what was signed).
    pub manifest_bytes: Vec<u8>,
    /// SHA-256 of the manifest bytes, hex: the pack's content identity.
    pub manifest_sha256: String,
    /// The key that signed it.
    pub key_id: String,
    /// The archive's entries (content files and the two pack files).
    pub entries: Vec<Entry>,
}

const CHUNK: usize = 64 * 1024;

/// Streams one entry's uncompressed bytes into `sink`, enforcing `limit` on what is actually
/// produced and checking the CRC and size; returns the SHA-256 and the size.
///
/// # Errors
/// `ERR_PACK_CORRUPT`, `ERR_PACK_ENTRY_TOO_LARGE`, `ERR_PACK_SIZE_MISMATCH`, `ERR_PACK_CRC_MISMATCH`.
pub fn stream_entry<R: Read + Seek>(
    r: &mut R,
    entry: &Entry,
    limit: u64,
    sink: &mut dyn Write,
) -> Result<(String, u64), PackError> {
    archive::seek_to(r, entry.data_offset)?;
    let raw = r.take(entry.compressed);
    let mut reader: Box<dyn Read + '_> = match entry.method {
        0 => Box::new(raw),
        _ => Box::new(flate2::read::DeflateDecoder::new(raw)),
    };
    let mut sha = Sha256::new();
    let mut crc = crc32fast::Hasher::new();
    let mut total: u64 = 0;
    // Small entries get a small buffer: zeroing 64 KiB per 1 KiB file would dominate.
    let mut buf = vec![
        0u8;
        usize::try_from(entry.size.saturating_add(1))
            .unwrap_or(CHUNK)
            .clamp(512, CHUNK)
    ];
    let cap = limit.min(entry.size);
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| PackError::Corrupt(format!("`{}`: {e}", entry.name.escape_debug())))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > cap {
            return Err(if total > limit {
                PackError::EntryTooLarge(format!(
                    "`{}` expands beyond {limit} bytes",
                    entry.name.escape_debug()
                ))
            } else {
                PackError::SizeMismatch(format!(
                    "`{}` expands beyond its declared {} bytes",
                    entry.name.escape_debug(),
                    entry.size
                ))
            });
        }
        sha.update(&buf[..n]);
        crc.update(&buf[..n]);
        sink.write_all(&buf[..n])?;
    }
    if total != entry.size {
        return Err(PackError::SizeMismatch(format!(
            "`{}` has {total} bytes, its header says {}",
            entry.name.escape_debug(),
            entry.size
        )));
    }
    if crc.finalize() != entry.crc32 {
        return Err(PackError::CrcMismatch(format!(
            "`{}` fails its CRC-32",
            entry.name.escape_debug()
        )));
    }
    Ok((hex::encode(sha.finalize()), total))
}

fn read_small<R: Read + Seek>(r: &mut R, entry: &Entry, limit: u64) -> Result<Vec<u8>, PackError> {
    let mut out = Vec::new();
    stream_entry(r, entry, limit, &mut out)?;
    Ok(out)
}

/// Verifies a pack against `keys`.
///
/// # Errors
/// The [`PackError`] of the first failed check.
pub fn verify<R: Read + Seek>(
    reader: &mut R,
    keys: &[TrustedKey],
    options: &VerifyOptions,
) -> Result<VerifiedPack, PackError> {
    verify_with_progress(reader, keys, options, &mut |_| {})
}

/// [`verify`], reporting the uncompressed bytes checked so far (for progress bars).
///
/// # Errors
/// As [`verify`].
pub fn verify_with_progress<R: Read + Seek>(
    reader: &mut R,
    keys: &[TrustedKey],
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifiedPack, PackError> {
    let limits = &options.limits;
    // One forward pass over the archive: each local header is checked where it stands, the
    // entries must tile the file, the two pack files are kept, every other entry is hashed.
    // Nothing is interpreted before the signature is checked below.
    let archive::Central {
        mut entries,
        cd_offset,
    } = archive::read_central(reader, limits)?;
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].local_offset);
    let mut expected = 0;
    let (mut manifest_bytes, mut sig_bytes) = (None, None);
    let mut hashes: HashMap<String, (String, u64)> = HashMap::with_capacity(entries.len());
    let mut done = 0u64;
    for i in order {
        archive::check_local(reader, &mut entries[i])?;
        expected = archive::check_tiling(&entries[i], expected)?;
        let entry = &entries[i];
        match entry.name.as_str() {
            "pack.json" => manifest_bytes = Some(read_small(reader, entry, MAX_MANIFEST_BYTES)?),
            "pack.sig" => sig_bytes = Some(read_small(reader, entry, MAX_SIGNATURE_BYTES)?),
            name => {
                let (sha, size) =
                    stream_entry(reader, entry, limits.max_entry, &mut std::io::sink())?;
                done += size;
                progress(done);
                hashes.insert(name.to_owned(), (sha, size));
            }
        }
    }
    archive::check_end(expected, cd_offset)?;
    let manifest_bytes =
        manifest_bytes.ok_or_else(|| PackError::ManifestMissing("no pack.json".into()))?;
    let sig_bytes = sig_bytes.ok_or_else(|| PackError::SignatureMissing("no pack.sig".into()))?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let key = sign::verify(&sig_bytes, &manifest_bytes, keys, options.at)?;
    if let Some(publisher) = &key.publisher
        && *publisher != manifest.publisher
    {
        return Err(PackError::PublisherMismatch(format!(
            "signed by a key of `{publisher}`, but the manifest names `{}`",
            manifest.publisher
        )));
    }
    manifest.validate(limits)?;

    let listed: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    if let Some(extra) = entries
        .iter()
        .map(|e| e.name.as_str())
        .find(|n| *n != "pack.json" && *n != "pack.sig" && !listed.contains(n))
    {
        return Err(PackError::FileNotInManifest(format!(
            "`{}` is not listed in the manifest",
            extra.escape_debug()
        )));
    }
    for file in &manifest.files {
        let Some((sha, size)) = hashes.get(&file.path) else {
            return Err(PackError::FileMissing(format!(
                "`{}` is listed but not in the archive",
                file.path
            )));
        };
        if *size != file.size {
            return Err(PackError::SizeMismatch(format!(
                "`{}`: {size} bytes in the archive, {} in the manifest",
                file.path, file.size
            )));
        }
        if *sha != file.sha256 {
            return Err(PackError::HashMismatch(format!(
                "`{}` does not match its SHA-256",
                file.path
            )));
        }
    }
    let manifest_sha256 = hex::encode(Sha256::digest(&manifest_bytes));
    Ok(VerifiedPack {
        manifest,
        manifest_bytes,
        manifest_sha256,
        key_id: key.key_id.clone(),
        entries,
    })
}
