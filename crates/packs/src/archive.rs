//! The zip structure, parsed and checked by hand. General zip readers are lenient where a
//! signed bundle must not be: they skip prepended data, ignore local headers, collapse
//! duplicate names and accept comments and trailing bytes. Here every byte of the archive
//! must belong to exactly one entry, the central directory or the one end record.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};

use crate::error::PackError;
use crate::limits::Limits;
use crate::paths;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_LEN: u64 = 22;

/// One checked entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its name (a checked relative path).
    pub name: String,
    /// 0 stored, 8 deflate.
    pub method: u16,
    /// CRC-32 of the uncompressed data.
    pub crc32: u32,
    /// Compressed size.
    pub compressed: u64,
    /// Declared uncompressed size.
    pub size: u64,
    /// General-purpose flags.
    pub flags: u16,
    /// Offset of its local header.
    pub local_offset: u64,
    /// Offset of its data (known once its local header is checked).
    pub data_offset: u64,
}

impl Entry {
    /// Where its data ends (known once its local header is checked): where the next entry,
    /// or the central directory, must start.
    #[must_use]
    pub fn data_end(&self) -> u64 {
        self.data_offset + self.compressed
    }
}

/// The central directory: entries in directory order, and where the directory starts.
#[derive(Debug, Clone)]
pub struct Central {
    /// The entries, their local headers not yet checked.
    pub entries: Vec<Entry>,
    /// Offset of the central directory: the entries' data must end exactly here.
    pub cd_offset: u64,
}

// Reads past the end yield 0 rather than panicking: hostile input decides where we look.
fn u16_at(b: &[u8], i: usize) -> u16 {
    b.get(i..i + 2)
        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    b.get(i..i + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

fn mismatch(msg: impl Into<String>) -> PackError {
    PackError::HeaderMismatch(msg.into())
}

/// Moves to `target`. Short forward moves read through the gap instead of seeking, so a
/// buffered reader keeps its buffer (a seek would discard it and refill from the new
/// position for every small entry).
///
/// # Errors
/// I/O errors.
pub fn seek_to<R: Read + Seek>(r: &mut R, target: u64) -> Result<(), PackError> {
    let current = r.stream_position()?;
    if target >= current && target - current <= 64 * 1024 {
        std::io::copy(&mut r.by_ref().take(target - current), &mut std::io::sink())?;
    } else {
        r.seek(SeekFrom::Start(target))?;
    }
    Ok(())
}

fn read_exact_at<R: Read + Seek>(r: &mut R, offset: u64, len: usize) -> Result<Vec<u8>, PackError> {
    seek_to(r, offset)?;
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)
        .map_err(|_| mismatch(format!("truncated structure at offset {offset}")))?;
    Ok(buf)
}

/// Parses and checks the end record and the central directory (not yet the local headers).
///
/// # Errors
/// The [`PackError`] of the first structural problem.
pub fn read_central<R: Read + Seek>(r: &mut R, limits: &Limits) -> Result<Central, PackError> {
    let len = r.seek(SeekFrom::End(0))?;
    if len > limits.max_compressed {
        return Err(PackError::TooLarge(format!(
            "{len} bytes exceeds the limit of {}",
            limits.max_compressed
        )));
    }
    if len < EOCD_LEN {
        return Err(PackError::NotAZip("too short to be a zip archive".into()));
    }
    // The end record must be the last 22 bytes: no comment, nothing after it.
    let tail_len = len.min(EOCD_LEN + 65_535 + 1024);
    let tail = read_exact_at(r, len - tail_len, usize::try_from(tail_len).unwrap_or(0))?;
    let eocd_positions: Vec<usize> = (0..=tail.len() - 4)
        .filter(|&i| u32_at(&tail, i) == EOCD_SIG)
        .collect();
    let last = tail.len() - usize::try_from(EOCD_LEN).unwrap_or(22);
    if !eocd_positions.contains(&last) {
        return match eocd_positions.last() {
            None => Err(PackError::NotAZip(
                "no end-of-central-directory record".into(),
            )),
            Some(&p)
                if p + 22 <= tail.len()
                    && u16_at(&tail, p + 20) > 0
                    && p + 22 + usize::from(u16_at(&tail, p + 20)) == tail.len() =>
            {
                Err(PackError::Comment("the archive has a comment".into()))
            }
            Some(_) => Err(PackError::TrailingData(
                "bytes follow the end-of-central-directory record".into(),
            )),
        };
    }
    // Other end-record signatures before it are only records if they lie outside the entries
    // and the directory (checked below, once the directory's place is known): inside an
    // entry's data they are content, e.g. a stored nested zip.
    let eocd = &tail[last..];
    if last >= 20 && u32_at(&tail, last - 20) == ZIP64_LOCATOR_SIG {
        return Err(PackError::Zip64(
            "ZIP64 end-of-central-directory locator".into(),
        ));
    }
    let (disk, cd_disk, on_disk, total) = (
        u16_at(eocd, 4),
        u16_at(eocd, 6),
        u16_at(eocd, 8),
        u16_at(eocd, 10),
    );
    let (cd_size, cd_offset, comment_len) = (
        u64::from(u32_at(eocd, 12)),
        u64::from(u32_at(eocd, 16)),
        u16_at(eocd, 20),
    );
    if on_disk == 0xFFFF || total == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        return Err(PackError::Zip64("ZIP64 sentinel in the end record".into()));
    }
    if disk != 0 || cd_disk != 0 || on_disk != total {
        return Err(mismatch("multi-disk archives are not packs"));
    }
    if comment_len != 0 {
        return Err(PackError::Comment("the archive has a comment".into()));
    }
    if usize::from(total) > limits.max_entries {
        return Err(PackError::TooManyEntries(format!(
            "{total} entries exceeds the limit of {}",
            limits.max_entries
        )));
    }
    let eocd_offset = len - EOCD_LEN;
    match (cd_offset + cd_size).cmp(&eocd_offset) {
        std::cmp::Ordering::Less => {
            // Offsets that are all short by the same amount mean bytes were put in front of
            // a valid archive (a polyglot or self-extracting stub).
            let shifted = eocd_offset - cd_size;
            let probe = read_exact_at(r, shifted, 4)?;
            if u32_at(&probe, 0) == CENTRAL_SIG {
                return Err(PackError::PrependedData(format!(
                    "{} bytes before the archive",
                    shifted - cd_offset
                )));
            }
            // Between the directory and the end record: another end record, or other bytes.
            let tail_start = len - tail_len;
            let gap_start = usize::try_from((cd_offset + cd_size).saturating_sub(tail_start))
                .unwrap_or(usize::MAX);
            if eocd_positions.iter().any(|&p| p >= gap_start && p < last) {
                return Err(PackError::MultipleEocd(
                    "more than one end-of-central-directory record".into(),
                ));
            }
            return Err(PackError::TrailingData(
                "bytes between the central directory and its end record".into(),
            ));
        }
        std::cmp::Ordering::Greater => {
            return Err(mismatch("the central directory overruns its end record"));
        }
        std::cmp::Ordering::Equal => {}
    }
    let cd = read_exact_at(
        r,
        cd_offset,
        usize::try_from(cd_size).map_err(|_| mismatch("central directory too large"))?,
    )?;

    let mut entries = Vec::with_capacity(usize::from(total));
    // Collision key → index of the entry that has it; an exact duplicate has the same key.
    let mut names: HashMap<String, usize> = HashMap::with_capacity(usize::from(total));
    let mut total_size: u64 = 0;
    let mut pos = 0usize;
    for _ in 0..total {
        if pos + 46 > cd.len() || u32_at(&cd, pos) != CENTRAL_SIG {
            return Err(mismatch("malformed central directory entry"));
        }
        let made_by = u16_at(&cd, pos + 4);
        let flags = u16_at(&cd, pos + 8);
        let method = u16_at(&cd, pos + 10);
        let crc32 = u32_at(&cd, pos + 16);
        let compressed = u64::from(u32_at(&cd, pos + 20));
        let size = u64::from(u32_at(&cd, pos + 24));
        let (name_len, extra_len, comment_len) = (
            usize::from(u16_at(&cd, pos + 28)),
            usize::from(u16_at(&cd, pos + 30)),
            usize::from(u16_at(&cd, pos + 32)),
        );
        let disk_start = u16_at(&cd, pos + 34);
        let external = u32_at(&cd, pos + 38);
        let local_offset = u64::from(u32_at(&cd, pos + 42));
        let end = pos + 46 + name_len + extra_len + comment_len;
        if end > cd.len() {
            return Err(mismatch("central directory entry overruns the directory"));
        }
        let name_bytes = &cd[pos + 46..pos + 46 + name_len];
        let extra = &cd[pos + 46 + name_len..pos + 46 + name_len + extra_len];
        pos = end;

        let name = std::str::from_utf8(name_bytes)
            .map_err(|_| PackError::BadPath("an entry name is not UTF-8".into()))?
            .to_owned();
        let shown = name.escape_debug();
        if compressed == 0xFFFF_FFFF
            || size == 0xFFFF_FFFF
            || local_offset == 0xFFFF_FFFF
            || has_zip64_extra(extra)
        {
            return Err(PackError::Zip64(format!("`{shown}` uses ZIP64 fields")));
        }
        if !extra.is_empty() {
            return Err(PackError::ExtraField(format!(
                "`{shown}` has a {}-byte extra field in the central directory",
                extra.len()
            )));
        }
        if flags & 0x0001 != 0 || flags & 0x0040 != 0 {
            return Err(PackError::Encrypted(format!("`{shown}` is encrypted")));
        }
        if flags & 0x0008 != 0 {
            return Err(PackError::DataDescriptor(format!(
                "`{shown}` uses a data descriptor"
            )));
        }
        if method != 0 && method != 8 {
            return Err(PackError::UnsupportedCompression(format!(
                "`{shown}` uses compression method {method}"
            )));
        }
        if comment_len != 0 {
            return Err(PackError::Comment(format!(
                "`{shown}` has an entry comment"
            )));
        }
        if disk_start != 0 {
            return Err(mismatch(format!("`{shown}` starts on another disk")));
        }
        // File type from the Unix mode (made on Unix) or the DOS directory bit.
        let mode = external >> 16;
        if made_by >> 8 == 3 && mode != 0 {
            match mode & 0o170_000 {
                0o120_000 => {
                    return Err(PackError::Symlink(format!("`{shown}` is a symbolic link")));
                }
                0o100_000 => {}
                _ => {
                    return Err(PackError::NotRegularFile(format!(
                        "`{shown}` is not a regular file"
                    )));
                }
            }
        }
        if external & 0x10 != 0 || name.ends_with('/') {
            return Err(PackError::NotRegularFile(format!(
                "`{shown}` is a directory"
            )));
        }
        paths::check(&name, limits)?;
        if let Some(other) = names.insert(paths::collision_key(&name), entries.len()) {
            let other = entries.get(other).map_or("", |e: &Entry| e.name.as_str());
            if other == name {
                return Err(PackError::DuplicateEntry(format!(
                    "`{shown}` appears twice"
                )));
            }
            return Err(PackError::NameCollision(format!(
                "`{shown}` collides with `{}`",
                other.escape_debug()
            )));
        }
        if method == 0 && compressed != size {
            return Err(mismatch(format!(
                "`{shown}` is stored but its sizes differ"
            )));
        }
        if size > limits.max_entry {
            return Err(PackError::EntryTooLarge(format!(
                "`{shown}` declares {size} bytes; the limit is {}",
                limits.max_entry
            )));
        }
        if size > compressed.max(1).saturating_mul(limits.max_ratio) {
            return Err(PackError::ZipBomb(format!(
                "`{shown}` expands more than {}x",
                limits.max_ratio
            )));
        }
        total_size = total_size.saturating_add(size);
        if total_size > limits.max_uncompressed {
            return Err(PackError::TooLargeUncompressed(format!(
                "the entries exceed {} bytes",
                limits.max_uncompressed
            )));
        }
        entries.push(Entry {
            name,
            method,
            crc32,
            compressed,
            size,
            flags,
            local_offset,
            data_offset: 0,
        });
    }
    if pos != cd.len() {
        return Err(mismatch("bytes left over in the central directory"));
    }
    check_directories(&entries, &names)?;
    // Overlaps are visible from the directory alone: an entry needs at least its header,
    // name and data before the next one starts.
    let mut by_offset: Vec<&Entry> = entries.iter().collect();
    by_offset.sort_by_key(|e| e.local_offset);
    for pair in by_offset.windows(2) {
        let least_end = pair[0].local_offset + 30 + pair[0].name.len() as u64 + pair[0].compressed;
        if pair[1].local_offset < least_end {
            return Err(PackError::OverlappingEntries(format!(
                "`{}` overlaps `{}`",
                pair[1].name.escape_debug(),
                pair[0].name.escape_debug()
            )));
        }
    }
    if let Some(last) = by_offset.last()
        && last.local_offset + 30 + last.name.len() as u64 + last.compressed > cd_offset
    {
        return Err(PackError::OverlappingEntries(
            "the last entry overlaps the central directory".into(),
        ));
    }
    Ok(Central { entries, cd_offset })
}

/// Directories implied by the names: none is also a file (`x` and `x/y`), and each has one
/// spelling (`Dir/a` and `dir/b` would be one directory on a case-insensitive file system and
/// two elsewhere). `names` maps each entry's collision key to its index.
fn check_directories(entries: &[Entry], names: &HashMap<String, usize>) -> Result<(), PackError> {
    let mut keys = vec![""; entries.len()];
    for (key, &i) in names {
        keys[i] = key.as_str();
    }
    // Collision key of a directory → its spelling.
    let mut dirs: HashMap<&str, &str> = HashMap::new();
    for (entry, key) in entries.iter().zip(&keys) {
        let name = entry.name.as_str();
        // Normalising and case-folding never add or remove a `/`: the k-th `/` of the key
        // ends the same directory as the k-th `/` of the name.
        for ((k, _), (n, _)) in key.match_indices('/').zip(name.match_indices('/')) {
            let (dir_key, dir) = (&key[..k], &name[..n]);
            if let Some(&file) = names.get(dir_key) {
                return Err(PackError::NameCollision(format!(
                    "`{}` is a file and also the directory of `{}`",
                    entries[file].name.escape_debug(),
                    name.escape_debug()
                )));
            }
            let spelling = dirs.entry(dir_key).or_insert(dir);
            if *spelling != dir {
                return Err(PackError::NameCollision(format!(
                    "`{}` and `{}` name one directory",
                    spelling.escape_debug(),
                    dir.escape_debug()
                )));
            }
        }
    }
    Ok(())
}

/// Checks an entry's local header against its directory entry and records where its data
/// starts.
///
/// # Errors
/// `ERR_PACK_HEADER_MISMATCH` or `ERR_PACK_ZIP64`.
pub fn check_local<R: Read + Seek>(r: &mut R, entry: &mut Entry) -> Result<(), PackError> {
    seek_to(r, entry.local_offset)?;
    check_local_here(r, entry)
}

/// [`check_local`] on a reader already at the entry's local header (a forward-only pass).
///
/// # Errors
/// As [`check_local`].
pub fn check_local_here<R: Read>(r: &mut R, entry: &mut Entry) -> Result<(), PackError> {
    let shown = entry.name.escape_debug();
    let mut local = [0u8; 30];
    r.read_exact(&mut local).map_err(|_| {
        mismatch(format!(
            "truncated structure at offset {}",
            entry.local_offset
        ))
    })?;
    if u32_at(&local, 0) != LOCAL_SIG {
        return Err(mismatch(format!(
            "`{shown}`: no local header where the directory points"
        )));
    }
    let (name_len, extra_len) = (
        usize::from(u16_at(&local, 26)),
        usize::from(u16_at(&local, 28)),
    );
    if u16_at(&local, 6) != entry.flags
        || u16_at(&local, 8) != entry.method
        || u32_at(&local, 14) != entry.crc32
        || u64::from(u32_at(&local, 18)) != entry.compressed
        || u64::from(u32_at(&local, 22)) != entry.size
        || name_len != entry.name.len()
    {
        return Err(mismatch(format!(
            "`{shown}`: the local header disagrees with the central directory"
        )));
    }
    let mut rest = vec![0u8; name_len + extra_len];
    r.read_exact(&mut rest)
        .map_err(|_| mismatch(format!("`{shown}`: truncated local header")))?;
    if &rest[..name_len] != entry.name.as_bytes() {
        return Err(mismatch(format!(
            "`{shown}`: the local header names another file"
        )));
    }
    if has_zip64_extra(&rest[name_len..]) {
        return Err(PackError::Zip64(format!("`{shown}` uses ZIP64 fields")));
    }
    if extra_len != 0 {
        return Err(PackError::ExtraField(format!(
            "`{shown}` has a {extra_len}-byte extra field in its local header"
        )));
    }
    entry.data_offset =
        entry.local_offset + 30 + u64::try_from(name_len + extra_len).unwrap_or(u64::MAX);
    Ok(())
}

/// Checks that an entry starts exactly where the previous one ended (`expected`): no gaps
/// (hidden or prepended data) and no overlaps. Checked before its local header is read, so a
/// forward-only pass never has to move back.
///
/// # Errors
/// `ERR_PACK_OVERLAPPING_ENTRIES`, `ERR_PACK_PREPENDED_DATA` or `ERR_PACK_TRAILING_DATA`.
pub fn check_tiling(entry: &Entry, expected: u64) -> Result<(), PackError> {
    if entry.local_offset < expected {
        return Err(PackError::OverlappingEntries(format!(
            "`{}` overlaps the entry before it",
            entry.name.escape_debug()
        )));
    }
    if entry.local_offset > expected {
        return Err(if expected == 0 {
            PackError::PrependedData(format!(
                "{} bytes before the first entry",
                entry.local_offset
            ))
        } else {
            PackError::TrailingData(format!(
                "unclaimed bytes before `{}`",
                entry.name.escape_debug()
            ))
        });
    }
    Ok(())
}

/// Checks that the last entry ends exactly where the central directory starts.
///
/// # Errors
/// `ERR_PACK_OVERLAPPING_ENTRIES` or `ERR_PACK_TRAILING_DATA`.
pub fn check_end(expected: u64, cd_offset: u64) -> Result<(), PackError> {
    match expected.cmp(&cd_offset) {
        std::cmp::Ordering::Greater => Err(PackError::OverlappingEntries(
            "the last entry overlaps the central directory".into(),
        )),
        std::cmp::Ordering::Less => Err(PackError::TrailingData(
            "unclaimed bytes before the central directory".into(),
        )),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// The whole structural check: the directory, every local header, and the tiling. Returns the
/// entries in directory order.
///
/// # Errors
/// The [`PackError`] of the first structural problem.
pub fn read_entries<R: Read + Seek>(r: &mut R, limits: &Limits) -> Result<Vec<Entry>, PackError> {
    let Central {
        mut entries,
        cd_offset,
    } = read_central(r, limits)?;
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by_key(|&i| entries[i].local_offset);
    let mut expected = 0;
    for i in order {
        check_tiling(&entries[i], expected)?;
        check_local(r, &mut entries[i])?;
        expected = entries[i].data_end();
    }
    check_end(expected, cd_offset)?;
    Ok(entries)
}

fn has_zip64_extra(extra: &[u8]) -> bool {
    let mut i = 0;
    while i + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, i), usize::from(u16_at(extra, i + 2)));
        if id == 0x0001 {
            return true;
        }
        i += 4 + len;
    }
    false
}
