//! Verification: the archive's structure, the manifest and its signature, and every file
//! against the manifest — streaming, with bounded memory whatever the pack's size.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::archive::{self, Entry};
use crate::error::PackError;
use crate::limits::{Limits, MAX_MANIFEST_BYTES, MAX_SIGNATURE_BYTES};
use crate::manifest::Manifest;
use crate::readahead;
use crate::sign::{self, TrustedKey};

/// How to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Size limits.
    pub limits: Limits,
    /// Keys revoked at or before this instant are refused (default: now; a server re-checking
    /// an already published pack passes its upload time).
    pub at: DateTime<Utc>,
    /// Archives at least this large are read ahead by a second thread while the first hashes
    /// (default 1 MiB; `u64::MAX`: never).
    pub read_ahead_from: u64,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            at: Utc::now(),
            read_ahead_from: 1 << 20,
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

/// The most inflated output handled at once (and the inflate buffer of a large entry).
const CHUNK: usize = 64 * 1024;

/// The read buffer of [`verify`]: large reads, each hashed where it landed.
const READ_BUF: usize = 256 * 1024;

fn corrupt(entry: &Entry, e: impl std::fmt::Display) -> PackError {
    PackError::Corrupt(format!("`{}`: {e}", entry.name.escape_debug()))
}

/// What is checked of an entry's uncompressed bytes as they go by: the limit, the declared
/// size, the CRC-32 and the SHA-256.
struct Check<'a> {
    entry: &'a Entry,
    limit: u64,
    cap: u64,
    total: u64,
    sha: Sha256,
    crc: crc32fast::Hasher,
}

impl<'a> Check<'a> {
    fn new(entry: &'a Entry, limit: u64) -> Self {
        Self {
            entry,
            limit,
            cap: limit.min(entry.size),
            total: 0,
            sha: Sha256::new(),
            crc: crc32fast::Hasher::new(),
        }
    }

    fn feed(&mut self, data: &[u8], sink: &mut dyn Write) -> Result<(), PackError> {
        self.total += data.len() as u64;
        if self.total > self.cap {
            return Err(if self.total > self.limit {
                PackError::EntryTooLarge(format!(
                    "`{}` expands beyond {} bytes",
                    self.entry.name.escape_debug(),
                    self.limit
                ))
            } else {
                PackError::SizeMismatch(format!(
                    "`{}` expands beyond its declared {} bytes",
                    self.entry.name.escape_debug(),
                    self.entry.size
                ))
            });
        }
        self.sha.update(data);
        self.crc.update(data);
        sink.write_all(data)?;
        Ok(())
    }

    fn finish(self) -> Result<([u8; 32], u64), PackError> {
        let (entry, total) = (self.entry, self.total);
        if total != entry.size {
            return Err(PackError::SizeMismatch(format!(
                "`{}` has {total} bytes, its header says {}",
                entry.name.escape_debug(),
                entry.size
            )));
        }
        if self.crc.finalize() != entry.crc32 {
            return Err(PackError::CrcMismatch(format!(
                "`{}` fails its CRC-32",
                entry.name.escape_debug()
            )));
        }
        Ok((self.sha.finalize().into(), total))
    }
}

/// What streaming entries needs beyond the reader, kept from one entry to the next: setting
/// up inflate state and zeroing an output buffer for every small file would cost more than
/// hashing it.
#[derive(Default)]
struct Streamer {
    inflate: Option<flate2::Decompress>,
    out: Vec<u8>,
}

impl Streamer {
    /// Streams the entry whose data starts at `r`'s position, reading no more than its
    /// compressed size: stored data is hashed straight from `r`'s buffer, deflated data is
    /// inflated a chunk at a time.
    fn stream<B: BufRead>(
        &mut self,
        r: &mut B,
        entry: &Entry,
        limit: u64,
        sink: &mut dyn Write,
    ) -> Result<([u8; 32], u64), PackError> {
        let mut check = Check::new(entry, limit);
        let mut remaining = entry.compressed;
        if entry.method == 0 {
            while remaining > 0 {
                let available = r.fill_buf().map_err(|e| corrupt(entry, e))?;
                if available.is_empty() {
                    break;
                }
                let n =
                    usize::try_from(remaining).map_or(available.len(), |m| m.min(available.len()));
                check.feed(&available[..n], sink)?;
                r.consume(n);
                remaining -= n as u64;
            }
            return check.finish();
        }
        // Small entries get a small buffer: zeroing 64 KiB for a 1 KiB file would dominate.
        let want = usize::try_from(entry.size.saturating_add(1))
            .unwrap_or(CHUNK)
            .clamp(512, CHUNK);
        if self.out.len() < want {
            self.out.resize(want, 0);
        }
        let out = &mut self.out[..want];
        let inflate = match &mut self.inflate {
            Some(inflate) => {
                inflate.reset(false);
                inflate
            }
            none => none.insert(flate2::Decompress::new(false)),
        };
        loop {
            let available = r.fill_buf().map_err(|e| corrupt(entry, e))?;
            let n = usize::try_from(remaining).map_or(available.len(), |m| m.min(available.len()));
            let input = &available[..n];
            let eof = input.is_empty();
            let (before_in, before_out) = (inflate.total_in(), inflate.total_out());
            let flush = if eof {
                flate2::FlushDecompress::Finish
            } else {
                flate2::FlushDecompress::None
            };
            let status = inflate
                .decompress(input, out, flush)
                .map_err(|e| corrupt(entry, format!("corrupt deflate stream: {e}")))?;
            // Both are bounded by the slices just passed in.
            let consumed = usize::try_from(inflate.total_in() - before_in).unwrap_or(n);
            let produced = usize::try_from(inflate.total_out() - before_out).unwrap_or(0);
            r.consume(consumed);
            remaining -= consumed as u64;
            check.feed(&out[..produced], sink)?;
            match status {
                // The stream must fill the entry exactly: bytes after its end would be data
                // no manifest hash covers.
                flate2::Status::StreamEnd if remaining > 0 => {
                    return Err(corrupt(
                        entry,
                        format!("{remaining} bytes follow the end of the deflate stream"),
                    ));
                }
                flate2::Status::StreamEnd => break,
                // The input ran out before the stream ended.
                _ if eof && produced == 0 => {
                    return Err(corrupt(entry, "the deflate stream does not end"));
                }
                _ if !eof && consumed == 0 && produced == 0 => {
                    return Err(corrupt(entry, "corrupt deflate stream: no progress"));
                }
                _ => {}
            }
        }
        check.finish()
    }
}

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
    let capacity = usize::try_from(entry.compressed)
        .unwrap_or(CHUNK)
        .clamp(1, CHUNK);
    let mut data = BufReader::with_capacity(capacity, r.take(entry.compressed));
    let (sha, size) = Streamer::default().stream(&mut data, entry, limit, sink)?;
    Ok((hex::encode(sha), size))
}

/// The forward pass's view of the archive: bytes in order from offset 0, and where it is.
struct Forward<'a> {
    src: &'a mut dyn BufRead,
    pos: u64,
}

impl Forward<'_> {
    /// Moves forward to `target` (past the unused tail of a deflate stream that ended early).
    fn skip_to(&mut self, target: u64) -> Result<(), PackError> {
        while self.pos < target {
            let available = self.src.fill_buf()?.len();
            if available == 0 {
                return Err(PackError::HeaderMismatch(format!(
                    "the archive ends before offset {target}"
                )));
            }
            let n = usize::try_from(target - self.pos).map_or(available, |m| m.min(available));
            self.consume(n);
        }
        Ok(())
    }
}

impl Read for Forward<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        readahead::read_buffered(self, buf)
    }
}

impl BufRead for Forward<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.src.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.src.consume(amt);
        self.pos += amt as u64;
    }
}

/// Reads a pack file whole (within `limit`), with its SHA-256.
fn read_small(
    r: &mut Forward<'_>,
    streamer: &mut Streamer,
    entry: &Entry,
    limit: u64,
) -> Result<(Vec<u8>, [u8; 32]), PackError> {
    let mut out = Vec::with_capacity(usize::try_from(entry.size.min(limit)).unwrap_or(0));
    let (sha, _) = streamer.stream(r, entry, limit, &mut out)?;
    Ok((out, sha))
}

/// What the forward pass keeps: the two pack files and every other entry's SHA-256 and size.
struct Pass {
    manifest: Option<(Vec<u8>, [u8; 32])>,
    signature: Option<(Vec<u8>, [u8; 32])>,
    hashes: Vec<Option<([u8; 32], u64)>>,
}

/// One forward pass over the archive from offset 0: each entry must start where the previous
/// one ended, its local header is checked where it stands, the two pack files are kept and
/// every other entry is hashed. Nothing is interpreted here: the signature is checked after.
fn forward_pass(
    src: &mut dyn BufRead,
    entries: &mut [Entry],
    cd_offset: u64,
    limits: &Limits,
    progress: &mut dyn FnMut(u64),
) -> Result<Pass, PackError> {
    let mut r = Forward { src, pos: 0 };
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].local_offset);
    let mut pass = Pass {
        manifest: None,
        signature: None,
        hashes: vec![None; entries.len()],
    };
    let mut streamer = Streamer::default();
    let mut done = 0u64;
    for i in order {
        archive::check_tiling(&entries[i], r.pos)?;
        archive::check_local_here(&mut r, &mut entries[i])?;
        let entry = &entries[i];
        match entry.name.as_str() {
            "pack.json" => {
                pass.manifest = Some(read_small(
                    &mut r,
                    &mut streamer,
                    entry,
                    MAX_MANIFEST_BYTES,
                )?);
            }
            "pack.sig" => {
                pass.signature = Some(read_small(
                    &mut r,
                    &mut streamer,
                    entry,
                    MAX_SIGNATURE_BYTES,
                )?);
            }
            _ => {
                let (sha, size) =
                    streamer.stream(&mut r, entry, limits.max_entry, &mut std::io::sink())?;
                done += size;
                progress(done);
                pass.hashes[i] = Some((sha, size));
            }
        }
        r.skip_to(entry.data_end())?;
    }
    archive::check_end(r.pos, cd_offset)?;
    Ok(pass)
}

/// Verifies a pack against `keys`.
///
/// # Errors
/// The [`PackError`] of the first failed check.
pub fn verify<R: Read + Seek + Send>(
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
pub fn verify_with_progress<R: Read + Seek + Send>(
    reader: &mut R,
    keys: &[TrustedKey],
    options: &VerifyOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<VerifiedPack, PackError> {
    let limits = &options.limits;
    let archive::Central {
        mut entries,
        cd_offset,
    } = archive::read_central(reader, limits)?;
    reader.seek(SeekFrom::Start(0))?;
    let pass = if cd_offset >= options.read_ahead_from {
        readahead::with_read_ahead(reader, |src| {
            forward_pass(src, &mut entries, cd_offset, limits, progress)
        })
    } else {
        let mut src = BufReader::with_capacity(READ_BUF, &mut *reader);
        forward_pass(&mut src, &mut entries, cd_offset, limits, progress)
    }?;
    let hashes = pass.hashes;
    let (manifest_bytes, manifest_sha) = pass
        .manifest
        .ok_or_else(|| PackError::ManifestMissing("no pack.json".into()))?;
    let (sig_bytes, _) = pass
        .signature
        .ok_or_else(|| PackError::SignatureMissing("no pack.sig".into()))?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    let key = sign::verify_digest(&sig_bytes, &manifest_sha, keys, options.at)?;
    if let Some(publisher) = &key.publisher
        && *publisher != manifest.publisher
    {
        return Err(PackError::PublisherMismatch(format!(
            "signed by a key of `{publisher}`, but the manifest names `{}`",
            manifest.publisher
        )));
    }
    manifest.validate(limits)?;

    // Entries are matched to the manifest's files (whose paths `validate` found unique): first
    // any entry the manifest does not list, in directory order, then every listed file in the
    // manifest's order.
    let listed: HashMap<&str, usize> = manifest
        .files
        .iter()
        .enumerate()
        .map(|(j, f)| (f.path.as_str(), j))
        .collect();
    let mut found: Vec<Option<([u8; 32], u64)>> = vec![None; manifest.files.len()];
    for (entry, hash) in entries.iter().zip(hashes) {
        let Some(hash) = hash else { continue };
        let Some(&j) = listed.get(entry.name.as_str()) else {
            return Err(PackError::FileNotInManifest(format!(
                "`{}` is not listed in the manifest",
                entry.name.escape_debug()
            )));
        };
        found[j] = Some(hash);
    }
    let mut hex_sha = [0u8; 64];
    for (file, found) in manifest.files.iter().zip(&found) {
        let Some((sha, size)) = found else {
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
        hex::encode_to_slice(sha, &mut hex_sha)
            .map_err(|e| PackError::HashMismatch(e.to_string()))?;
        if hex_sha != file.sha256.as_bytes() {
            return Err(PackError::HashMismatch(format!(
                "`{}` does not match its SHA-256",
                file.path
            )));
        }
    }
    // Computed while the manifest was read.
    let manifest_sha256 = hex::encode(manifest_sha);
    Ok(VerifiedPack {
        manifest,
        manifest_bytes,
        manifest_sha256,
        key_id: key.key_id.clone(),
        entries,
    })
}
