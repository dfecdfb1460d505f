//! Where step outputs, indexes and receipts are kept: an [`ArtifactStore`] of content-addressed
//! blobs per org, [`LocalStore`] on a local disk.
//!
//! A run's artifacts have logical paths — a step attempt's outputs and its `index.json` and
//! `receipt.json` side by side under `runs/<run>/<step>/<attempt>/` — recorded in the
//! `artifacts` table with each file's SHA-256 and size. The store keeps the bytes under that
//! digest, so what a path names can never change after it was recorded (a racing second
//! attempt writes its own blobs, it cannot overwrite the first one's), equal bytes are kept once
//! per org, and storing a step's files needs no directories of its own.
//!
//! The API is blocking; async callers wrap it in `spawn_blocking`.

use std::fmt::Debug;
use std::fs;
use std::io::{self, ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// What a `put` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Lowercase hex SHA-256 of the bytes: the blob's name in the store.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Stores blobs per org, named by their SHA-256.
pub trait ArtifactStore: Send + Sync + Debug {
    /// Stores `bytes` for `org` under their digest; bytes already stored are not written again.
    /// Readers never see a partly written blob. The bytes are durable once
    /// [`ArtifactStore::sync`] returns (the worker syncs once per batch of results, before
    /// recording them).
    ///
    /// # Errors
    /// `PermissionDenied` when a directory of the store is a symlink; any I/O error.
    fn put(&self, org: Uuid, bytes: &[u8]) -> io::Result<Blob>;

    /// The bytes stored for `org` under `sha256`, checked against it.
    ///
    /// # Errors
    /// `InvalidInput` for a name that is not a lowercase hex SHA-256; `NotFound` when nothing
    /// is stored under it for this org; `InvalidData` when the stored bytes no longer match it;
    /// `PermissionDenied` for a symlink; any I/O error.
    fn get(&self, org: Uuid, sha256: &str) -> io::Result<Vec<u8>>;

    /// Makes everything stored so far durable.
    ///
    /// # Errors
    /// The I/O error of the flush.
    fn sync(&self) -> io::Result<()>;

    /// Stores several blobs for `org` (one step attempt's outputs, index and receipt), in order;
    /// the same as a `put` of each, which is what the default does.
    ///
    /// # Errors
    /// As [`ArtifactStore::put`]; blobs before the failing one stay stored.
    fn put_all(&self, org: Uuid, blobs: &[&[u8]]) -> io::Result<Vec<Blob>> {
        blobs.iter().map(|bytes| self.put(org, bytes)).collect()
    }
}

/// Blobs under `<root>/<org>/sha256/<first two hex digits>/<digest>` on a local file system.
///
/// Symlinks below the root are refused on every component, so a planted link cannot lead a
/// write or read outside the org's directory. The check and the use are separate system calls:
/// the root must not be writable by anyone the operator does not trust.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first `put`).
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `sha256` of `org` lives (for tests; `sha256` is not checked).
    #[cfg(test)]
    fn blob_path(&self, org: Uuid, sha256: &str) -> PathBuf {
        let fan = sha256.get(..2).unwrap_or("");
        self.root
            .join(org.to_string())
            .join("sha256")
            .join(fan)
            .join(sha256)
    }

    /// The directory holding `sha256`'s blob, every component below the root checked (and
    /// created when `create`).
    fn locate(&self, org: Uuid, sha256: &str, create: bool) -> io::Result<PathBuf> {
        let mut dir = self.root.clone();
        let org = org.to_string();
        let fan = sha256.get(..2).unwrap_or("");
        for component in [org.as_str(), "sha256", fan] {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) => ensure_real_dir(&dir, &meta)?,
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    if component == org {
                        fs::create_dir_all(&self.root)?;
                    }
                    match fs::create_dir(&dir) {
                        Ok(()) => {}
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
}

impl ArtifactStore for LocalStore {
    fn put(&self, org: Uuid, bytes: &[u8]) -> io::Result<Blob> {
        let blob = Blob {
            sha256: builderos_canon::sha256_hex(bytes),
            size: bytes.len() as u64,
        };
        let dir = self.locate(org, &blob.sha256, true)?;
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
                return Ok(blob);
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
        Ok(blob)
    }

    fn get(&self, org: Uuid, sha256: &str) -> io::Result<Vec<u8>> {
        check_digest(sha256)?;
        let target = self.locate(org, sha256, false)?.join(sha256);
        let bytes = read_nofollow(&target)?;
        if builderos_canon::sha256_hex(&bytes) != sha256 {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("the blob `{}` does not match its digest", target.display()),
            ));
        }
        Ok(bytes)
    }

    /// One `syncfs(2)` of the file system holding the root: the files and renames of every
    /// `put` so far reach the disk together (a group commit instead of an fsync per file).
    fn sync(&self) -> io::Result<()> {
        match fs::File::open(&self.root) {
            Ok(root) => nix::unistd::syncfs(&root).map_err(io::Error::from),
            // Nothing was ever stored.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
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

/// The file at `path`, refused (`PermissionDenied`) when `path` itself is a symlink: opened
/// with `O_NOFOLLOW`, so no link can be swapped in between a check and the read.
fn read_nofollow(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            // ELOOP: the last component is a symlink.
            if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
                symlink(path)
            } else {
                e
            }
        })?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
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

    /// Bytes land under their digest and read back; equal bytes are kept once; another org's
    /// blob is not found; no temporary files stay behind.
    #[test]
    fn put_then_get() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let blob = store.put(org, b"hello").expect("put");
        assert_eq!(blob.size, 5);
        assert_eq!(blob.sha256, builderos_canon::sha256_hex(b"hello"));
        let on_disk = store.blob_path(org, &blob.sha256);
        assert!(on_disk.ends_with(format!("sha256/{}/{}", &blob.sha256[..2], blob.sha256)));
        assert_eq!(fs::read(&on_disk).expect("read"), b"hello");
        assert_eq!(store.get(org, &blob.sha256).expect("get"), b"hello");

        // (a write would rename a new file, with a new inode, into place)
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).expect("meta"));
        let first = inode(&on_disk);
        let again = store.put_all(org, &[b"hello", b"other"]).expect("put_all");
        assert_eq!(again[0], blob);
        assert_eq!(again[1].sha256, builderos_canon::sha256_hex(b"other"));
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

        let other = Uuid::new_v4();
        assert_eq!(
            store
                .get(other, &blob.sha256)
                .expect_err("other org")
                .kind(),
            ErrorKind::NotFound
        );
    }

    /// A name that is not a digest is refused before touching the disk.
    #[test]
    fn refuses_names_that_are_not_digests() {
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
                store.get(org, bad).expect_err(bad).kind(),
                ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    /// A blob changed on disk is reported, not served; the next put of its bytes writes it
    /// again, whether the damage changed its size or not.
    #[test]
    fn damaged_blobs() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let blob = store.put(org, b"the bytes").expect("put");
        let path = store.blob_path(org, &blob.sha256);
        for damage in [&b"the bytez"[..], b"the"] {
            fs::write(&path, damage).expect("tamper");
            assert_eq!(
                store.get(org, &blob.sha256).expect_err("damaged").kind(),
                ErrorKind::InvalidData
            );
            assert_eq!(store.put(org, b"the bytes").expect("put again"), blob);
            assert_eq!(store.get(org, &blob.sha256).expect("get"), b"the bytes");
        }
    }

    /// A symlinked directory or blob below the root is refused for writes and reads.
    #[cfg(unix)]
    #[test]
    fn refuses_symlinks() {
        let (dir, store) = store();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");

        // The org's digest directory is a link to somewhere else.
        let org = Uuid::new_v4();
        store.put(org, b"x").expect("put");
        let org_dir = store.root().join(org.to_string());
        fs::remove_dir_all(org_dir.join("sha256")).expect("rm");
        std::os::unix::fs::symlink(&outside, org_dir.join("sha256")).expect("symlink");
        assert_eq!(
            store.put(org, b"y").expect_err("put").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(fs::read_dir(&outside).expect("dir").count(), 0);

        // A blob is a link to a file outside.
        let org = Uuid::new_v4();
        let blob = store.put(org, b"z").expect("put");
        let path = store.blob_path(org, &blob.sha256);
        fs::remove_file(&path).expect("rm");
        fs::write(outside.join("secret"), b"z").expect("write");
        std::os::unix::fs::symlink(outside.join("secret"), &path).expect("symlink");
        assert_eq!(
            store.get(org, &blob.sha256).expect_err("read").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            store.put(org, b"z").expect_err("put").kind(),
            ErrorKind::PermissionDenied
        );
    }

    /// A file where the store needs a directory is an error, not an overwrite.
    #[test]
    fn file_where_a_directory_belongs() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        fs::create_dir_all(store.root().join(org.to_string())).expect("mkdir");
        fs::write(store.root().join(org.to_string()).join("sha256"), b"x").expect("write");
        assert_eq!(
            store.put(org, b"y").expect_err("clash").kind(),
            ErrorKind::NotADirectory
        );
    }
}
