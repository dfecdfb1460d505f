//! Where step outputs, indexes and receipts are kept: an [`ArtifactStore`] per deployment,
//! [`LocalStore`] on a local disk.
//!
//! Paths are the contract's canonical relative paths (see
//! [`crate::processors::contract::canonical_path`]); anything else is refused before the file
//! system sees it. The API is blocking; async callers wrap it in `spawn_blocking`.

use crate::processors::contract::canonical_path;
use std::fmt::Debug;
use std::fs;
use std::io::{self, ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// What a `put` stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredArtifact {
    /// The relative path, as given.
    pub path: String,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Stores artifacts per org.
pub trait ArtifactStore: Send + Sync + Debug {
    /// Stores `bytes` at `path` for `org`, replacing what was there atomically: readers see the
    /// old bytes or the new ones, never a mix. The bytes are durable once [`ArtifactStore::sync`]
    /// returns (the worker syncs once per batch of results, before recording them).
    ///
    /// # Errors
    /// `InvalidInput` for a path that is not a canonical relative path; `PermissionDenied` when
    /// a component is a symlink; any I/O error.
    fn put(&self, org: Uuid, path: &str, bytes: &[u8]) -> io::Result<StoredArtifact>;

    /// The bytes at `path` for `org`.
    ///
    /// # Errors
    /// As [`ArtifactStore::put`]; `NotFound` when nothing is stored there.
    fn get(&self, org: Uuid, path: &str) -> io::Result<Vec<u8>>;

    /// Makes everything stored so far durable.
    ///
    /// # Errors
    /// The I/O error of the flush.
    fn sync(&self) -> io::Result<()>;

    /// Stores several files for `org` (one step attempt's outputs, index and receipt); the same
    /// as a `put` of each, which is what the default does.
    ///
    /// # Errors
    /// As [`ArtifactStore::put`]; files before the failing one stay stored.
    fn put_all(&self, org: Uuid, files: &[(&str, &[u8])]) -> io::Result<Vec<StoredArtifact>> {
        files
            .iter()
            .map(|(path, bytes)| self.put(org, path, bytes))
            .collect()
    }
}

/// Artifacts under `<root>/<org>/<path>` on a local file system.
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

    /// The directory holding `path`'s file and the file name, every component checked.
    fn locate<'p>(&self, org: Uuid, path: &'p str, create: bool) -> io::Result<(PathBuf, &'p str)> {
        check_path(path)?;
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        if create {
            fs::create_dir_all(&self.root)?;
        }
        let mut dir = self.root.clone();
        let org = org.to_string();
        let components =
            std::iter::once(org.as_str()).chain(dirs.split('/').filter(|s| !s.is_empty()));
        for component in components {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) => ensure_real_dir(&dir, &meta)?,
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
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
        Ok((dir, name))
    }
}

impl ArtifactStore for LocalStore {
    fn put(&self, org: Uuid, path: &str, bytes: &[u8]) -> io::Result<StoredArtifact> {
        let (dir, name) = self.locate(org, path, true)?;
        write_atomic(&dir, name, path, bytes)
    }

    /// Checks (and creates) each distinct directory once for the whole set.
    fn put_all(&self, org: Uuid, files: &[(&str, &[u8])]) -> io::Result<Vec<StoredArtifact>> {
        let mut checked: Option<(String, PathBuf)> = None;
        let mut stored = Vec::with_capacity(files.len());
        for (path, bytes) in files {
            let parent = path.rsplit_once('/').map_or("", |(d, _)| d);
            let dir = match &checked {
                Some((p, dir)) if p == parent => {
                    check_path(path)?;
                    dir.clone()
                }
                _ => {
                    let (dir, _) = self.locate(org, path, true)?;
                    checked = Some((parent.to_owned(), dir.clone()));
                    dir
                }
            };
            let name = path.rsplit_once('/').map_or(*path, |(_, n)| n);
            stored.push(write_atomic(&dir, name, path, bytes)?);
        }
        Ok(stored)
    }

    fn get(&self, org: Uuid, path: &str) -> io::Result<Vec<u8>> {
        let (dir, name) = self.locate(org, path, false)?;
        let target = dir.join(name);
        if fs::symlink_metadata(&target)?.file_type().is_symlink() {
            return Err(symlink(&target));
        }
        fs::read(&target)
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

/// Writes `bytes` as `dir/name` through a temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, path: &str, bytes: &[u8]) -> io::Result<StoredArtifact> {
    let target = dir.join(name);
    match fs::symlink_metadata(&target) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(symlink(&target)),
        Ok(meta) if meta.is_dir() => {
            return Err(io::Error::new(
                ErrorKind::IsADirectory,
                format!("artifact path `{path}` is a directory"),
            ));
        }
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut suffix = [0_u8; 16];
    getrandom::fill(&mut suffix).map_err(|e| io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".builderos-tmp-{}", hex::encode(suffix)));
    let written = write_new(&tmp, bytes).and_then(|()| fs::rename(&tmp, &target));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(StoredArtifact {
        path: path.to_owned(),
        sha256: builderos_canon::sha256_hex(bytes),
        size: bytes.len() as u64,
    })
}

/// Only paths already in canonical form: the store never reinterprets a path.
fn check_path(path: &str) -> io::Result<()> {
    match canonical_path(path) {
        Ok(canonical) if canonical == path => Ok(()),
        Ok(_) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            "artifact path must be in Unicode NFC",
        )),
        Err(reason) => Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("artifact path {reason}"),
        )),
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

    /// Bytes land at `<root>/<org>/<path>` and read back; a second put replaces them.
    #[test]
    fn put_then_get() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        let stored = store.put(org, "runs/r/s/1/out.txt", b"hello").expect("put");
        assert_eq!(stored.size, 5);
        assert_eq!(stored.sha256, builderos_canon::sha256_hex(b"hello"));
        let on_disk = store
            .root()
            .join(org.to_string())
            .join("runs/r/s/1/out.txt");
        assert_eq!(fs::read(on_disk).expect("read"), b"hello");
        store.put(org, "runs/r/s/1/out.txt", b"again").expect("put");
        assert_eq!(store.get(org, "runs/r/s/1/out.txt").expect("get"), b"again");
        let leftovers = fs::read_dir(store.root().join(org.to_string()).join("runs/r/s/1"))
            .expect("dir")
            .count();
        assert_eq!(leftovers, 1, "no temp files left behind");
        let other = Uuid::new_v4();
        assert_eq!(
            store
                .get(other, "runs/r/s/1/out.txt")
                .expect_err("other org")
                .kind(),
            ErrorKind::NotFound
        );
    }

    /// Traversal, absolute and non-canonical paths are refused before touching the disk.
    #[test]
    fn refuses_non_canonical_paths() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        for bad in [
            "../escape",
            "a/../../escape",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "a\\b",
            "a/b/",
            "",
            "nul\0byte",
            "e\u{301}",
        ] {
            let err = store.put(org, bad, b"x").expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad:?}");
            assert_eq!(
                store.get(org, bad).expect_err(bad).kind(),
                ErrorKind::InvalidInput
            );
        }
        assert!(!store.root().join(org.to_string()).exists());
    }

    /// A symlinked directory or file below the root is refused for writes and reads.
    #[cfg(unix)]
    #[test]
    fn refuses_symlinks() {
        let (dir, store) = store();
        let org = Uuid::new_v4();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).expect("mkdir");
        fs::write(outside.join("secret"), b"s").expect("write");
        store.put(org, "ok", b"x").expect("put");
        let org_dir = store.root().join(org.to_string());
        std::os::unix::fs::symlink(&outside, org_dir.join("link")).expect("symlink");
        std::os::unix::fs::symlink(outside.join("secret"), org_dir.join("file")).expect("symlink");
        for path in ["link/secret", "link/new"] {
            let err = store.put(org, path, b"x").expect_err(path);
            assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{path}");
        }
        assert_eq!(
            store.get(org, "link/secret").expect_err("read").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            store.get(org, "file").expect_err("read").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            store.put(org, "file", b"x").expect_err("put").kind(),
            ErrorKind::PermissionDenied
        );
        assert!(!outside.join("new").exists());
        assert_eq!(fs::read(outside.join("secret")).expect("read"), b"s");
    }

    /// A file where a directory is needed (and the reverse) is an error, not an overwrite.
    #[test]
    fn file_and_directory_clash() {
        let (_dir, store) = store();
        let org = Uuid::new_v4();
        store.put(org, "a", b"x").expect("put");
        assert_eq!(
            store.put(org, "a/b", b"y").expect_err("clash").kind(),
            ErrorKind::NotADirectory
        );
        store.put(org, "d/e", b"y").expect("put");
        assert_eq!(
            store.put(org, "d", b"z").expect_err("clash").kind(),
            ErrorKind::IsADirectory
        );
    }
}
