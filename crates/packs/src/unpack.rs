//! Safe unpacking of a verified pack into a fresh directory.
//!
//! Files are written by this code — never by a general extractor — into a new private
//! directory next to the destination, each with `create_new` (nothing existing is replaced or
//! followed), mode 0644 whatever the archive says, and re-hashed while written. Only when
//! everything is in place is the directory renamed to the destination, so a failed unpack
//! leaves nothing behind.

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::PackError;
use crate::verify::{VerifiedPack, stream_entry};

/// Unpacks `pack` (read again from `reader`, the same bytes it was verified from) into `dest`,
/// which must not exist.
///
/// # Errors
/// `ERR_PACK_IO` when `dest` exists or writing fails; `ERR_PACK_HASH_MISMATCH` when the bytes
/// changed since verification.
pub fn unpack<R: Read + Seek>(
    reader: &mut R,
    pack: &VerifiedPack,
    dest: &Path,
) -> Result<(), PackError> {
    if dest.exists() {
        return Err(PackError::Io(format!("{} already exists", dest.display())));
    }
    let parent = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| PackError::Io(e.to_string()))?;
    let file_name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("pack");
    let staging = parent.join(format!(".{file_name}.unpacking-{}", hex::encode(suffix)));
    fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let result = write_all(reader, pack, &staging).and_then(|()| {
        fs::set_permissions(
            &staging,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        fs::rename(&staging, dest).map_err(PackError::from)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

fn write_all<R: Read + Seek>(
    reader: &mut R,
    pack: &VerifiedPack,
    root: &Path,
) -> Result<(), PackError> {
    let entries: std::collections::HashMap<&str, &crate::archive::Entry> =
        pack.entries.iter().map(|e| (e.name.as_str(), e)).collect();
    for file in &pack.manifest.files {
        let entry = *entries
            .get(file.path.as_str())
            .ok_or_else(|| PackError::FileMissing(file.path.clone()))?;
        let failed = |e: std::io::Error| PackError::Io(format!("writing `{}`: {e}", file.path));
        // The path was checked (relative, no `..`, no empty segments); every directory on it is
        // created here, inside a directory only this process has written to, so no link can
        // be on the way.
        let target = file
            .path
            .split('/')
            .fold(root.to_path_buf(), |p, s| p.join(s));
        if let Some(dir) = target.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .map_err(failed)?;
        }
        // `create_new` (O_CREAT|O_EXCL) never follows or replaces anything already there.
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&target)
            .map_err(failed)?;
        let mut sink = BufWriter::new(out);
        let (sha, _) = stream_entry(reader, entry, entry.size, &mut sink)?;
        sink.flush().map_err(failed)?;
        if sha != file.sha256 {
            return Err(PackError::HashMismatch(format!(
                "`{}` changed since verification",
                file.path
            )));
        }
    }
    let mut manifest = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(root.join("pack.json"))?;
    manifest.write_all(&pack.manifest_bytes)?;
    Ok(())
}
