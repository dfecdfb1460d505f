//! Where step outputs, indexes and receipts are kept: an [`ArtifactStore`] of content-addressed
//! blobs per org, [`LocalStore`] on a local disk.
//!
//! A run's artifacts have logical paths — a step attempt's outputs and its `index.json` and
//! `receipt.json` side by side under `runs/<run>/<step>/<attempt>/` — recorded in the
//! `artifacts` table with each file's SHA-256, size and the store's location for it. Blobs are
//! never overwritten and every read is checked against the digest, so what a path names can
//! never change after it was recorded (a racing second attempt writes its own blobs, it cannot
//! overwrite the first one's).
//!
//! [`LocalStore`] appends small blobs (a no-op step's receipt, most indexes and outputs) to
//! per-process segment files and keeps large ones as files named by their digest: a new file
//! per blob costs an inode, and allocating inodes was most of the operator's CPU per step.
//!
//! The API is blocking; async callers wrap it in `spawn_blocking`, except for the puts the
//! store itself calls quick ([`ArtifactStore::puts_quickly`]).

use std::collections::HashMap;
use std::fmt::Debug;
use std::fs::{self, File};
use std::io::{self, ErrorKind, Write as _};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use uuid::Uuid;

/// What a `put` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the store keeps the bytes, when their digest alone doesn't say: recorded with the
    /// artifact and handed back to [`ArtifactStore::get`]. Opaque to everyone but the store.
    pub location: Option<String>,
}

/// Stores blobs per org, checked against their SHA-256.
pub trait ArtifactStore: Send + Sync + Debug {
    /// Stores `bytes` for `org`. Nothing stored is ever overwritten, and readers never see a
    /// partly written blob. The bytes are durable once [`ArtifactStore::sync`] returns (the
    /// worker syncs once per batch of results, before recording them).
    ///
    /// # Errors
    /// `PermissionDenied` when a directory or file of the store is a symlink; any I/O error.
    fn put(&self, org: Uuid, bytes: &[u8]) -> io::Result<Blob>;

    /// The bytes stored for `org` under `sha256` (at `location`, as `put` returned it), checked
    /// against the digest.
    ///
    /// # Errors
    /// `InvalidInput` for a name that is not a lowercase hex SHA-256 or a location this store
    /// never returns; `NotFound` when nothing is stored there for this org; `InvalidData` when
    /// the stored bytes don't match the digest; `PermissionDenied` for a symlink; any I/O
    /// error.
    fn get(&self, org: Uuid, sha256: &str, location: Option<&str>) -> io::Result<Vec<u8>>;

    /// Makes everything stored so far durable.
    ///
    /// # Errors
    /// The I/O error of the flush. What was stored since the previous sync may then be lost,
    /// and a later sync does not bring it back: callers must not record it.
    fn sync(&self) -> io::Result<()>;

    /// Whether storing `size` bytes for `org` now is quick enough to do on an async runtime's
    /// thread: no network, no directory or file to create, no waiting for the disk, one
    /// system call or so. Callers hand other puts to `spawn_blocking`. The default says no.
    fn puts_quickly(&self, org: Uuid, size: u64) -> bool {
        let _ = (org, size);
        false
    }

    /// Stores several blobs for `org` (one step attempt's outputs, index and receipt), in order;
    /// the same as a `put` of each, which is what the default does.
    ///
    /// # Errors
    /// As [`ArtifactStore::put`]; blobs before the failing one stay stored.
    fn put_all(&self, org: Uuid, blobs: &[&[u8]]) -> io::Result<Vec<Blob>> {
        blobs.iter().map(|bytes| self.put(org, bytes)).collect()
    }
}

/// Blobs up to this size are appended to a segment.
const SEGMENT_BLOB_MAX: u64 = 1 << 20;
/// Puts up to this size in all are quick (see [`ArtifactStore::puts_quickly`]).
const QUICK_PUT_MAX: u64 = 64 << 10;
/// A segment past this size is closed and the next blob starts a new one.
const SEGMENT_MAX: u64 = 64 << 20;
/// Segment files kept open at once (the orgs written to most recently); an org whose file
/// was closed appends to the same segment again, reopened.
const OPEN_SEGMENTS_MAX: usize = 64;
/// A segment record's header: the digest, a space, the size in 20 decimal digits, a newline.
const HEADER_LEN: usize = 64 + 1 + 20 + 1;

/// Blobs on a local file system, per org:
///
/// - up to 1 MiB, appended to a segment, `<root>/<org>/segments/<segment id>.seg`: each record
///   is a header line (`<sha256> <size, 20 digits>\n`) and the bytes. Every process writes
///   segments of its own (a new id each time), appends at offsets it tracks itself and never
///   rewrites a byte; the location is `segment/<id>/<offset>`.
/// - larger, `<root>/<org>/sha256/<first two hex digits>/<digest>`, written through a
///   temporary file and a rename; equal bytes are kept once per org.
///
/// Symlinks below the root are refused on every component, so a planted link cannot lead a
/// write or read outside the org's directory. The check and the use are separate system calls:
/// the root must not be writable by anyone the operator does not trust.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    segment_max: u64,
    open_max: usize,
    /// Shared by clones: one process's open segments.
    segments: Arc<Mutex<Segments>>,
    /// Held by a sync from taking what to flush until the flush returns.
    sync_lock: Arc<Mutex<()>>,
}

#[derive(Debug, Default)]
struct Segments {
    /// The segment each org's next small blob goes to (one entry per org this process wrote
    /// to; its file closed when it went unused while others were busy).
    by_org: HashMap<Uuid, Segment>,
    /// How many of them have their file open.
    files_open: usize,
    /// Counts appends: when each segment was last used.
    clock: u64,
    /// Segments written since the last sync, by id.
    unsynced: HashMap<Uuid, Arc<File>>,
    /// A file or directory entry was created since the last sync (a large blob or a new
    /// segment): the next sync flushes the whole file system.
    new_entries: bool,
}

#[derive(Debug)]
struct Segment {
    id: Uuid,
    /// `None` once closed; reopened to append again.
    file: Option<Arc<File>>,
    len: u64,
    used: u64,
}

impl Segments {
    /// Makes `segment` (open) the one `org` appends to.
    fn set(&mut self, org: Uuid, segment: Segment) {
        self.remove(org);
        self.files_open += usize::from(segment.file.is_some());
        self.by_org.insert(org, segment);
    }

    fn remove(&mut self, org: Uuid) {
        if let Some(old) = self.by_org.remove(&org) {
            self.files_open -= usize::from(old.file.is_some());
        }
    }

    /// Nothing more is appended to the segments `ids` (a write or a sync of theirs failed).
    fn retire(&mut self, ids: &[Uuid]) {
        let orgs: Vec<Uuid> = self
            .by_org
            .iter()
            .filter(|(_, s)| ids.contains(&s.id))
            .map(|(org, _)| *org)
            .collect();
        for org in orgs {
            self.remove(org);
        }
    }

    /// `org`'s segment `id` is open again (unless another thread got there first).
    fn reopened(&mut self, org: Uuid, id: Uuid, file: Arc<File>) {
        if let Some(segment) = self.by_org.get_mut(&org)
            && segment.id == id
            && segment.file.is_none()
        {
            segment.file = Some(file);
            self.files_open += 1;
        }
    }

    /// Closes the least recently used segments' files (never `org`'s) while more than `max`
    /// are open. (A file written since the last sync stays open in `unsynced` until then.)
    fn close_idle(&mut self, org: Uuid, max: usize) {
        while self.files_open > max {
            let Some(segment) = self
                .by_org
                .iter_mut()
                .filter(|(o, s)| **o != org && s.file.is_some())
                .min_by_key(|(_, s)| s.used)
                .map(|(_, s)| s)
            else {
                return;
            };
            segment.file = None;
            self.files_open -= 1;
        }
    }
}

impl LocalStore {
    /// A store rooted at `root` (created on first `put`).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            segment_max: SEGMENT_MAX,
            open_max: OPEN_SEGMENTS_MAX,
            segments: Arc::default(),
            sync_lock: Arc::default(),
        }
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> MutexGuard<'_, Segments> {
        // (no I/O and nothing that panics runs under the lock: a poisoned one is still
        // consistent)
        self.segments
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `<root>/<org>/<components…>`, every component below the root checked (and created when
    /// `create`).
    fn locate(&self, org: Uuid, components: &[&str], create: bool) -> io::Result<PathBuf> {
        let mut dir = self.root.clone();
        let org = org.to_string();
        for (i, component) in std::iter::once(org.as_str())
            .chain(components.iter().copied())
            .enumerate()
        {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) => ensure_real_dir(&dir, &meta)?,
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    if i == 0 {
                        fs::create_dir_all(&self.root)?;
                    }
                    match fs::create_dir(&dir) {
                        Ok(()) => self.lock().new_entries = true,
                        // Another writer made it first; check what it made.
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                            ensure_real_dir(&dir, &fs::symlink_metadata(&dir)?)?;
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(dir)
    }

    /// Appends `bytes` to `org`'s segment (a new one when it has none or it is full). The
    /// record's place is reserved under the lock and written outside it.
    fn append(&self, org: Uuid, sha256: &str, bytes: &[u8]) -> io::Result<String> {
        let mut record = Vec::with_capacity(HEADER_LEN + bytes.len());
        writeln!(record, "{sha256} {:020}", bytes.len())?;
        record.extend_from_slice(bytes);
        let (id, offset, file) = self.reserve(org, record.len() as u64)?;
        if let Err(e) = file.write_all_at(&record, offset) {
            // Whatever part was written stays unreferenced; nothing more goes to this segment.
            self.lock().retire(&[id]);
            return Err(e);
        }
        self.lock().unsynced.insert(id, file);
        Ok(format!("segment/{id}/{offset}"))
    }

    /// `len` bytes reserved at the end of `org`'s segment: its id, the offset and its file.
    /// Segments are created and reopened without the lock.
    fn reserve(&self, org: Uuid, len: u64) -> io::Result<(Uuid, u64, Arc<File>)> {
        loop {
            let mut segments = self.lock();
            let current = segments
                .by_org
                .get(&org)
                .filter(|s| s.len == 0 || s.len + len <= self.segment_max)
                .map(|s| (s.id, s.file.clone()));
            match current {
                Some((id, Some(file))) => {
                    segments.clock += 1;
                    let clock = segments.clock;
                    let Some(segment) = segments.by_org.get_mut(&org) else {
                        continue;
                    };
                    let offset = segment.len;
                    segment.len += len;
                    segment.used = clock;
                    segments.close_idle(org, self.open_max);
                    return Ok((id, offset, file));
                }
                Some((id, None)) => {
                    drop(segments);
                    match self.reopen_segment(org, id) {
                        Ok(file) => self.lock().reopened(org, id, file),
                        // (removed, or a symlink planted in its place: never followed)
                        Err(e) => {
                            tracing::warn!(%org, segment = %id, error = %e, "a closed segment could not be reopened; starting another");
                            let segment = self.create_segment(org)?;
                            self.lock().set(org, segment);
                        }
                    }
                }
                None => {
                    drop(segments);
                    let segment = self.create_segment(org)?;
                    self.lock().set(org, segment);
                }
            }
        }
    }

    fn create_segment(&self, org: Uuid) -> io::Result<Segment> {
        let dir = self.locate(org, &["segments"], true)?;
        let id = Uuid::now_v7();
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(format!("{id}.seg")))?;
        self.lock().new_entries = true;
        Ok(Segment {
            id,
            file: Some(Arc::new(file)),
            len: 0,
            used: 0,
        })
    }

    /// A segment this store wrote before and closed, opened again to append to.
    fn reopen_segment(&self, org: Uuid, id: Uuid) -> io::Result<Arc<File>> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self
            .locate(org, &["segments"], false)?
            .join(format!("{id}.seg"));
        let file = fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&path)
            .map_err(|e| nofollow_error(&path, e))?;
        Ok(Arc::new(file))
    }

    /// The bytes of the record at `location`, if it holds `sha256`.
    fn read_record(&self, org: Uuid, sha256: &str, location: &str) -> io::Result<Vec<u8>> {
        let (id, offset) = parse_location(location)?;
        let path = self
            .locate(org, &["segments"], false)?
            .join(format!("{id}.seg"));
        let file = open_nofollow(&path)?;
        let damaged = || {
            io::Error::new(
                ErrorKind::InvalidData,
                format!(
                    "`{}` holds no record of `{sha256}` at {offset}",
                    path.display()
                ),
            )
        };
        // (a record cut short by the end of the segment is damage too)
        let truncated = |e: io::Error| {
            if e.kind() == ErrorKind::UnexpectedEof {
                damaged()
            } else {
                e
            }
        };
        let mut header = [0_u8; HEADER_LEN];
        file.read_exact_at(&mut header, offset).map_err(truncated)?;
        let size = parse_header(&header, sha256).ok_or_else(damaged)?;
        let mut bytes = vec![0_u8; usize::try_from(size).map_err(|_| damaged())?];
        file.read_exact_at(&mut bytes, offset + HEADER_LEN as u64)
            .map_err(truncated)?;
        Ok(bytes)
    }

    /// Stores `bytes` as `<org>/sha256/<fan>/<digest>` unless equal bytes are there already.
    fn put_file(&self, org: Uuid, blob: &Blob, bytes: &[u8]) -> io::Result<()> {
        let fan = blob.sha256.get(..2).unwrap_or("");
        let dir = self.locate(org, &["sha256", fan], true)?;
        let target = dir.join(&blob.sha256);
        match fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(symlink(&target)),
            // Stored before, if the bytes are the same: a blob damaged by a crash before its
            // sync (or since) is written again, whatever its size.
            Ok(meta)
                if meta.is_file()
                    && meta.len() == blob.size
                    && read_nofollow(&target).is_ok_and(|stored| stored == bytes) =>
            {
                // (written by another process, or one that crashed, perhaps not yet durable:
                // the next sync flushes the file system)
                self.lock().new_entries = true;
                return Ok(());
            }
            Ok(meta) if meta.is_dir() => {
                return Err(io::Error::new(
                    ErrorKind::IsADirectory,
                    format!("`{}` is a directory", target.display()),
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        write_atomic(&dir, &target, bytes)?;
        self.lock().new_entries = true;
        Ok(())
    }
}

impl ArtifactStore for LocalStore {
    fn put(&self, org: Uuid, bytes: &[u8]) -> io::Result<Blob> {
        let mut blob = Blob {
            sha256: builderos_canon::sha256_hex(bytes),
            size: bytes.len() as u64,
            location: None,
        };
        if blob.size <= SEGMENT_BLOB_MAX {
            blob.location = Some(self.append(org, &blob.sha256, bytes)?);
        } else {
            self.put_file(org, &blob, bytes)?;
        }
        Ok(blob)
    }

    /// Up to 64 KiB in all, when the org's segment is open and has room for them: a `pwrite`
    /// per blob into the page cache.
    fn puts_quickly(&self, org: Uuid, size: u64) -> bool {
        size <= QUICK_PUT_MAX
            && self.lock().by_org.get(&org).is_some_and(|s| {
                // (each blob of the size carries a header)
                s.file.is_some() && s.len + size + 4 * HEADER_LEN as u64 <= self.segment_max
            })
    }

    fn get(&self, org: Uuid, sha256: &str, location: Option<&str>) -> io::Result<Vec<u8>> {
        check_digest(sha256)?;
        let bytes = match location {
            Some(location) => self.read_record(org, sha256, location)?,
            None => {
                let fan = sha256.get(..2).unwrap_or("");
                read_nofollow(&self.locate(org, &["sha256", fan], false)?.join(sha256))?
            }
        };
        if builderos_canon::sha256_hex(&bytes) != sha256 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("the blob `{sha256}` of org {org} does not match its digest"),
            ));
        }
        Ok(bytes)
    }

    /// An `fdatasync` of each segment written since the last sync; one `syncfs(2)` of the file
    /// system holding the root instead when files or directories were created meanwhile (their
    /// names must reach the disk too), which happens once per segment and per large blob.
    fn sync(&self) -> io::Result<()> {
        // (one sync at a time: a second caller must not return before the first's flush)
        let _one = self
            .sync_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (unsynced, new_entries) = {
            let mut segments = self.lock();
            (
                std::mem::take(&mut segments.unsynced),
                std::mem::take(&mut segments.new_entries),
            )
        };
        let synced = if new_entries {
            match File::open(&self.root) {
                Ok(root) => nix::unistd::syncfs(&root).map_err(io::Error::from),
                // Nothing was ever stored.
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        } else {
            unsynced.values().try_for_each(|file| file.sync_data())
        };
        if synced.is_err() {
            // Never tried again: Linux reports a failed writeback once, and marks the pages
            // clean, so a second sync would succeed with the bytes lost. What was stored since
            // the last sync is lost to the caller (the worker fails those steps), and nothing
            // more goes to these segments.
            let ids: Vec<Uuid> = unsynced.keys().copied().collect();
            self.lock().retire(&ids);
        }
        synced
    }
}

/// `segment/<id>/<offset>` as `put` wrote it: anything else is refused before the file system
/// sees it.
fn parse_location(location: &str) -> io::Result<(Uuid, u64)> {
    let invalid = || {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("`{location}` is not a location of this store"),
        )
    };
    let rest = location.strip_prefix("segment/").ok_or_else(invalid)?;
    let (id, offset) = rest.split_once('/').ok_or_else(invalid)?;
    let id = Uuid::try_parse(id).map_err(|_| invalid())?;
    // (only the hyphenated lowercase form `put` writes, and plain decimal digits)
    if format!("segment/{id}/{offset}") != location
        || offset.is_empty()
        || !offset.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid());
    }
    Ok((id, offset.parse().map_err(|_| invalid())?))
}

/// The size in a record's header, if the header names `sha256` and a size a segment can hold.
fn parse_header(header: &[u8; HEADER_LEN], sha256: &str) -> Option<u64> {
    let (digest, rest) = header.split_at(64);
    let (space, rest) = rest.split_first()?;
    let (size, newline) = rest.split_at(20);
    if digest != sha256.as_bytes()
        || *space != b' '
        || newline != b"\n"
        || !size.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let size: u64 = std::str::from_utf8(size).ok()?.parse().ok()?;
    (size <= SEGMENT_BLOB_MAX).then_some(size)
}

/// Writes `bytes` as `target` (in `dir`) through a temporary file and a rename.
fn write_atomic(dir: &Path, target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut suffix = [0_u8; 16];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    // (a dot name: never a digest)
    let tmp = dir.join(format!(".tmp-{}", hex::encode(suffix)));
    let written = write_new(&tmp, bytes).and_then(|()| fs::rename(&tmp, target));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Only a lowercase hex SHA-256 names a blob: anything else is refused before the file system
/// sees it.
fn check_digest(sha256: &str) -> io::Result<()> {
    if sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::InvalidInput,
            "a blob is named by a lowercase hex SHA-256",
        ))
    }
}

fn ensure_real_dir(dir: &Path, meta: &fs::Metadata) -> io::Result<()> {
    if meta.file_type().is_symlink() {
        Err(symlink(dir))
    } else if meta.is_dir() {
        Ok(())
    } else {
        Err(io::Error::new(
            ErrorKind::NotADirectory,
            format!("`{}` is not a directory", dir.display()),
        ))
    }
}

fn symlink(path: &Path) -> io::Error {
    io::Error::new(
        ErrorKind::PermissionDenied,
        format!("`{}` is a symlink; refused", path.display()),
    )
}

/// The file at `path`, opened for reading and refused (`PermissionDenied`) when `path` itself
/// is a symlink: opened with `O_NOFOLLOW`, so no link can be swapped in between a check and the
/// read.
fn open_nofollow(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| nofollow_error(path, e))
}

/// An `O_NOFOLLOW` open's error: ELOOP (the last component is a symlink) as `PermissionDenied`.
fn nofollow_error(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
        symlink(path)
    } else {
        e
    }
}

fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    open_nofollow(path)?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path().join("artifacts"));
        (dir, store)
    }

    /// Where a large blob lives.
    fn blob_path(store: &LocalStore, org: Uuid, sha256: &str) -> PathBuf {
        store
            .root()
            .join(org.to_string())
            .join("sha256")
            .join(&sha256[..2])
            .join(sha256)
    }

    /// The segment file a location names.
    fn segment_path(store: &LocalStore, org: Uuid, location: &str) -> PathBuf {
        let (id, _) = parse_location(location).expect("location");
        store
            .root()
            .join(org.to_string())
            .join("segments")
            .join(format!("{id}.seg"))
    }

    /// What a failing `get` reports.
    fn get_err(store: &LocalStore, org: Uuid, sha256: &str, location: Option<&str>) -> ErrorKind {
        store
            .get(org, sha256, location)
            .expect_err("the get should fail")
            .kind()
    }

    fn large(fill: u8) -> Vec<u8> {
        vec![fill; usize::try_from(SEGMENT_BLOB_MAX).expect("size") + 1]
    }

    /// Small blobs go to one segment, one after the other, and read back by their location;
    /// the records are self-describing; another org finds nothing there.
    #[test]
    fn small_blobs_share_a_segment() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let blobs = store
            .put_all(org, &[b"hello", b"", b"hello"])
            .expect("put_all");
        assert_eq!(blobs[0].size, 5);
        assert_eq!(blobs[0].sha256, builderos_canon::sha256_hex(b"hello"));
        let locations: Vec<&str> = blobs
            .iter()
            .map(|b| b.location.as_deref().expect("a small blob has a location"))
            .collect();
        assert_ne!(locations[0], locations[2], "appended, never shared");
        assert_eq!(
            segment_path(&store, org, locations[0]),
            segment_path(&store, org, locations[2])
        );
        for (blob, expected) in blobs.iter().zip([&b"hello"[..], b"", b"hello"]) {
            assert_eq!(
                store
                    .get(org, &blob.sha256, blob.location.as_deref())
                    .expect("get"),
                expected
            );
        }
        let segment = fs::read(segment_path(&store, org, locations[0])).expect("segment");
        let first = format!("{} {:020}\nhello", blobs[0].sha256, 5);
        assert!(segment.starts_with(first.as_bytes()));
        store.sync().expect("sync");

        // Another org, or another blob's digest at this location: not served.
        let other = Uuid::new_v4();
        assert_eq!(
            get_err(&store, other, &blobs[0].sha256, Some(locations[0])),
            ErrorKind::NotFound
        );
        assert_eq!(
            get_err(&store, org, &blobs[1].sha256, Some(locations[0])),
            ErrorKind::InvalidData
        );
        // Past the end of the segment.
        let (id, _) = parse_location(locations[0]).expect("location");
        let beyond = format!("segment/{id}/{}", segment.len());
        assert_eq!(
            get_err(&store, org, &blobs[0].sha256, Some(&beyond)),
            ErrorKind::InvalidData
        );
    }

    /// Two stores (two processes) never write the same segment; a full segment is closed and
    /// the next blob starts another.
    #[test]
    fn segments_per_store_and_rotation() {
        let (dir, store) = store();
        let org = Uuid::new_v4();
        let mut second = LocalStore::new(dir.path().join("artifacts"));
        second.segment_max = 100;
        let a = store.put(org, b"first").expect("put");
        let b = second.put(org, b"second").expect("put");
        let (a_loc, b_loc) = (a.location.expect("loc"), b.location.expect("loc"));
        assert_ne!(
            segment_path(&store, org, &a_loc),
            segment_path(&store, org, &b_loc)
        );
        let c = second
            .put(org, b"third")
            .expect("put")
            .location
            .expect("loc");
        assert_ne!(
            segment_path(&store, org, &b_loc),
            segment_path(&store, org, &c),
            "the second record would pass 100 bytes"
        );
        assert_eq!(
            store
                .get(org, &builderos_canon::sha256_hex(b"third"), Some(&c))
                .expect("read another store's segment"),
            b"third"
        );
        second.sync().expect("sync");
    }

    /// With more orgs writing than files may stay open, the least recently used segment is
    /// closed, and its org appends to the same segment again, reopened.
    #[test]
    fn closed_segments_are_reopened() {
        let (_dir, mut store) = store();
        store.open_max = 1;
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let first = store.put(a, b"one").expect("put").location.expect("loc");
        let other = store.put(b, b"two").expect("put").location.expect("loc");
        assert_eq!(store.lock().files_open, 1, "a's file was closed");
        let again = store.put(a, b"three").expect("put").location.expect("loc");
        assert_eq!(store.lock().files_open, 1, "b's file was closed");
        assert_eq!(
            segment_path(&store, a, &first),
            segment_path(&store, a, &again)
        );
        let (_, first_at) = parse_location(&first).expect("loc");
        let (_, again_at) = parse_location(&again).expect("loc");
        assert_eq!(again_at, first_at + (HEADER_LEN + 3) as u64);
        store.sync().expect("sync");
        for (org, location, bytes) in [
            (a, &first, &b"one"[..]),
            (b, &other, b"two"),
            (a, &again, b"three"),
        ] {
            assert_eq!(
                store
                    .get(org, &builderos_canon::sha256_hex(bytes), Some(location))
                    .expect("get"),
                bytes
            );
        }

        // A link planted where a closed segment was is not followed: the org starts another.
        store.put(b, b"four").expect("put");
        let path = segment_path(&store, a, &first);
        let moved = path.with_extension("moved");
        fs::rename(&path, &moved).expect("move");
        std::os::unix::fs::symlink(&moved, &path).expect("symlink");
        let before = fs::read(&moved).expect("read");
        let five = store.put(a, b"five").expect("put").location.expect("loc");
        assert_ne!(segment_path(&store, a, &five), path);
        assert_eq!(
            fs::read(&moved).expect("read"),
            before,
            "nothing written through the link"
        );
        assert_eq!(
            store
                .get(a, &builderos_canon::sha256_hex(b"five"), Some(&five))
                .expect("get"),
            b"five"
        );
    }

    /// Puts from many threads at once each get their own place; every record reads back. A put
    /// is quick only once the org's segment is open, and only when small.
    #[test]
    fn concurrent_puts_and_quick_puts() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        assert!(!store.puts_quickly(org, 10), "no segment open yet");
        let written: Vec<(Vec<u8>, Blob)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8_u8)
                .map(|t| {
                    let store = store.clone();
                    scope.spawn(move || {
                        (0..50_u8)
                            .map(|i| {
                                let bytes = vec![t; usize::from(i) + 1];
                                let blob = store.put(org, &bytes).expect("put");
                                (bytes, blob)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("thread"))
                .collect()
        });
        store.sync().expect("sync");
        let mut locations: Vec<&str> = written
            .iter()
            .map(|(_, b)| b.location.as_deref().expect("loc"))
            .collect();
        locations.sort_unstable();
        locations.dedup();
        assert_eq!(locations.len(), 400, "every record has its own place");
        for (bytes, blob) in &written {
            assert_eq!(
                &store
                    .get(org, &blob.sha256, blob.location.as_deref())
                    .expect("get"),
                bytes
            );
        }
        assert!(store.puts_quickly(org, 10));
        assert!(!store.puts_quickly(org, QUICK_PUT_MAX + 1));
        assert!(!store.puts_quickly(Uuid::new_v4(), 10), "another org");
    }

    /// Large blobs are files named by their digest: equal bytes are kept once, and no
    /// temporary files stay behind.
    #[test]
    fn large_blobs_are_files() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let bytes = large(b'x');
        let blob = store.put(org, &bytes).expect("put");
        assert_eq!(blob.location, None);
        let on_disk = blob_path(&store, org, &blob.sha256);
        assert_eq!(fs::read(&on_disk).expect("read"), bytes);
        assert_eq!(store.get(org, &blob.sha256, None).expect("get"), bytes);

        // (a write would rename a new file, with a new inode, into place)
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("meta"));
        let first = inode(&on_disk);
        assert_eq!(store.put(org, &bytes).expect("again"), blob);
        assert_eq!(inode(&on_disk), first, "equal bytes are not written again");
        let leftovers: Vec<_> = fs::read_dir(on_disk.parent().expect("dir"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "no temp files left behind: {leftovers:?}"
        );
        store.sync().expect("sync");
        assert_eq!(
            get_err(&store, Uuid::new_v4(), &blob.sha256, None),
            ErrorKind::NotFound
        );
    }

    /// A name that is not a digest, or a location this store never writes, is refused before
    /// touching the disk.
    #[test]
    fn refuses_names_and_locations_it_never_wrote() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let upper = builderos_canon::sha256_hex(b"x").to_uppercase();
        for bad in [
            "../escape",
            "",
            "abc",
            upper.as_str(),
            "g000000000000000000000000000000000000000000000000000000000000000",
            "00/0000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(
                get_err(&store, org, bad, None),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
        let sha = builderos_canon::sha256_hex(b"x");
        let id = Uuid::now_v7();
        for bad in [
            String::new(),
            "segment/".to_owned(),
            format!("segment/{id}"),
            format!("segment/{id}/"),
            format!("segment/{id}/+1"),
            format!("segment/{id}/1/2"),
            format!("segment/{}/0", id.simple()),
            format!("segment/{}/0", id.to_string().to_uppercase()),
            format!("segment/../{id}/0"),
            format!("segment/{id}/99999999999999999999999"),
            format!("sha256/{id}/0"),
        ] {
            assert_eq!(
                get_err(&store, org, &sha, Some(&bad)),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    /// Bytes changed on disk are reported, not served: in a segment, whether the record's
    /// bytes or its header; a large blob, whose next put writes it again.
    #[test]
    fn damaged_blobs() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let small = store.put(org, b"the bytes").expect("put");
        let location = small.location.clone().expect("location");
        let path = segment_path(&store, org, &location);
        let clean = fs::read(&path).expect("segment");
        for at in [HEADER_LEN + 2, 70] {
            let mut damaged = clean.clone();
            damaged[at] ^= 1;
            fs::write(&path, &damaged).expect("tamper");
            assert_eq!(
                get_err(&store, org, &small.sha256, Some(&location)),
                ErrorKind::InvalidData,
                "damage at {at}"
            );
        }
        fs::write(&path, &clean[..clean.len() - 1]).expect("truncate");
        assert_eq!(
            get_err(&store, org, &small.sha256, Some(&location)),
            ErrorKind::InvalidData
        );

        let bytes = large(b'y');
        let blob = store.put(org, &bytes).expect("put");
        let path = blob_path(&store, org, &blob.sha256);
        for damage in [&b"the bytez"[..], b"the"] {
            fs::write(&path, damage).expect("tamper");
            assert_eq!(
                get_err(&store, org, &blob.sha256, None),
                ErrorKind::InvalidData
            );
            assert_eq!(store.put(org, &bytes).expect("put again"), blob);
            assert_eq!(store.get(org, &blob.sha256, None).expect("get"), bytes);
        }
    }

    /// A symlinked directory, segment or blob below the root is refused for writes and reads.
    #[cfg(unix)]
    #[test]
    fn refuses_symlinks() {
        let (dir, store) = store();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");

        // The org's segments directory is a link to somewhere else.
        let org = Uuid::new_v4();
        let blob = store.put(org, b"x").expect("put");
        let location = blob.location.expect("location");
        let segments = store.root().join(org.to_string()).join("segments");
        fs::rename(&segments, outside.join("moved")).expect("move");
        std::os::unix::fs::symlink(outside.join("moved"), &segments).expect("symlink");
        assert_eq!(
            get_err(&store, org, &blob.sha256, Some(&location)),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            LocalStore::new(store.root())
                .put(org, b"y")
                .expect_err("put")
                .kind(),
            ErrorKind::PermissionDenied
        );

        // A segment is a link to a file outside.
        let org = Uuid::new_v4();
        let blob = store.put(org, b"z").expect("put");
        let location = blob.location.expect("location");
        let path = segment_path(&store, org, &location);
        fs::rename(&path, outside.join("segment")).expect("move");
        std::os::unix::fs::symlink(outside.join("segment"), &path).expect("symlink");
        assert_eq!(
            get_err(&store, org, &blob.sha256, Some(&location)),
            ErrorKind::PermissionDenied
        );

        // A large blob is a link to a file outside; so is the org's digest directory.
        let org = Uuid::new_v4();
        let bytes = large(b'z');
        let blob = store.put(org, &bytes).expect("put");
        let path = blob_path(&store, org, &blob.sha256);
        fs::remove_file(&path).expect("rm");
        fs::write(outside.join("secret"), &bytes).expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), &path).expect("symlink");
        assert_eq!(
            get_err(&store, org, &blob.sha256, None),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            store.put(org, &bytes).expect_err("put").kind(),
            ErrorKind::PermissionDenied
        );
        let org_dir = store.root().join(org.to_string());
        fs::remove_dir_all(org_dir.join("sha256")).expect("rm");
        fs::create_dir_all(outside.join("digests")).expect("mkdir");
        std::os::unix::fs::symlink(outside.join("digests"), org_dir.join("sha256"))
            .expect("symlink");
        assert_eq!(
            store.put(org, &bytes).expect_err("put").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            fs::read_dir(outside.join("digests")).expect("dir").count(),
            0
        );
    }

    /// A file where the store needs a directory is an error, not an overwrite.
    #[test]
    fn file_where_a_directory_belongs() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        fs::create_dir_all(store.root().join(org.to_string())).expect("mkdir");
        fs::write(store.root().join(org.to_string()).join("segments"), b"x").expect("write");
        assert_eq!(
            store.put(org, b"y").expect_err("clash").kind(),
            ErrorKind::NotADirectory
        );
    }
}
