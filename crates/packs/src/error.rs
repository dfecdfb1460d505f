//! One error type, one stable `ERR_PACK_*` code per failure kind.

macro_rules! pack_errors {
    ($( $(#[doc = $doc:literal])* $variant:ident => $code:literal, )*) => {
        /// Why a pack was rejected (or could not be built, signed or unpacked).
        #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
        #[non_exhaustive]
        pub enum PackError {
            $( $(#[doc = $doc])* #[error("{code}: {0}", code = $code)] $variant(String), )*
        }

        impl PackError {
            /// The stable code.
            #[must_use]
            pub fn code(&self) -> &'static str {
                match self { $(PackError::$variant(_) => $code,)* }
            }

            /// The human message (without the code).
            #[must_use]
            pub fn message(&self) -> &str {
                match self { $(PackError::$variant(m) => m,)* }
            }

            /// Every code with its meaning, for docs.
            #[must_use]
            pub fn all_codes() -> Vec<(&'static str, &'static str)> {
                vec![$(($code, concat!($($doc),*)),)*]
            }
        }
    };
}

pack_errors! {
    /// The bytes are not a zip archive (no end-of-central-directory record).
    NotAZip => "ERR_PACK_NOT_A_ZIP",
    /// The archive file exceeds the compressed-size limit.
    TooLarge => "ERR_PACK_TOO_LARGE",
    /// The entries together exceed the uncompressed-size limit.
    TooLargeUncompressed => "ERR_PACK_TOO_LARGE_UNCOMPRESSED",
    /// One entry exceeds the per-entry size limit.
    EntryTooLarge => "ERR_PACK_ENTRY_TOO_LARGE",
    /// More entries than the limit.
    TooManyEntries => "ERR_PACK_TOO_MANY_ENTRIES",
    /// An entry's compression ratio exceeds the limit (a zip bomb).
    ZipBomb => "ERR_PACK_ZIP_BOMB",
    /// Bytes after the end-of-central-directory record, or between the last entry and the central directory.
    TrailingData => "ERR_PACK_TRAILING_DATA",
    /// Bytes before the first entry (a prepended stub or a polyglot file).
    PrependedData => "ERR_PACK_PREPENDED_DATA",
    /// More than one end-of-central-directory record.
    MultipleEocd => "ERR_PACK_MULTIPLE_EOCD",
    /// An archive or entry comment (a place to hide data).
    Comment => "ERR_PACK_ARCHIVE_COMMENT",
    /// ZIP64 records or 0xFFFFFFFF size fields (packs are smaller than 4 GiB).
    Zip64 => "ERR_PACK_ZIP64",
    /// An extra field in a local or central header (unsigned bytes, or a second name such as Info-ZIP's Unicode path that other readers would use).
    ExtraField => "ERR_PACK_EXTRA_FIELD",
    /// A local header disagrees with the central directory, or the structure is malformed.
    HeaderMismatch => "ERR_PACK_HEADER_MISMATCH",
    /// Two entries' data overlap.
    OverlappingEntries => "ERR_PACK_OVERLAPPING_ENTRIES",
    /// An encrypted entry.
    Encrypted => "ERR_PACK_ENCRYPTED",
    /// A compression method other than stored (0) or deflate (8).
    UnsupportedCompression => "ERR_PACK_UNSUPPORTED_COMPRESSION",
    /// An entry uses a data descriptor (sizes after the data): not allowed in packs.
    DataDescriptor => "ERR_PACK_DATA_DESCRIPTOR",
    /// A symbolic link.
    Symlink => "ERR_PACK_SYMLINK",
    /// A directory entry, device, FIFO or anything but a regular file.
    NotRegularFile => "ERR_PACK_NOT_REGULAR_FILE",
    /// A `..` or `.` path segment.
    PathTraversal => "ERR_PACK_PATH_TRAVERSAL",
    /// An absolute path, a drive letter or a UNC path.
    AbsolutePath => "ERR_PACK_ABSOLUTE_PATH",
    /// A backslash in a path.
    Backslash => "ERR_PACK_BACKSLASH",
    /// An empty path or segment, a NUL or control character, or a name that isn't UTF-8.
    BadPath => "ERR_PACK_BAD_PATH",
    /// A path longer or deeper than the limits.
    PathTooLong => "ERR_PACK_PATH_TOO_LONG",
    /// The same name twice.
    DuplicateEntry => "ERR_PACK_DUPLICATE_ENTRY",
    /// Two names that collide case-insensitively or after Unicode normalisation.
    NameCollision => "ERR_PACK_NAME_COLLISION",
    /// No `pack.json`.
    ManifestMissing => "ERR_PACK_MANIFEST_MISSING",
    /// No `pack.sig`, or a malformed one.
    SignatureMissing => "ERR_PACK_SIGNATURE_MISSING",
    /// The manifest is not valid for the format or its kind's schema.
    ManifestInvalid => "ERR_PACK_MANIFEST_INVALID",
    /// The manifest bytes are not their canonical JSON form.
    NonCanonicalManifest => "ERR_PACK_NON_CANONICAL_MANIFEST",
    /// A file in the archive that the manifest doesn't list.
    FileNotInManifest => "ERR_PACK_FILE_NOT_IN_MANIFEST",
    /// A file the manifest lists that the archive lacks.
    FileMissing => "ERR_PACK_FILE_MISSING",
    /// A file's size differs from its header or the manifest.
    SizeMismatch => "ERR_PACK_SIZE_MISMATCH",
    /// A file's SHA-256 differs from the manifest.
    HashMismatch => "ERR_PACK_HASH_MISMATCH",
    /// A file's CRC-32 differs from its header.
    CrcMismatch => "ERR_PACK_CRC_MISMATCH",
    /// Compressed data that doesn't decompress.
    Corrupt => "ERR_PACK_CORRUPT",
    /// The signing key is not among the trusted keys.
    UnknownKey => "ERR_PACK_UNKNOWN_KEY",
    /// The signing key was revoked at or before the reference time.
    KeyRevoked => "ERR_PACK_KEY_REVOKED",
    /// A weak or non-canonical public key.
    WeakKey => "ERR_PACK_WEAK_KEY",
    /// The signature does not verify over this manifest.
    BadSignature => "ERR_PACK_BAD_SIGNATURE",
    /// The manifest's publisher is not the key's publisher.
    PublisherMismatch => "ERR_PACK_PUBLISHER_MISMATCH",
    /// An I/O error reading the pack or writing files.
    Io => "ERR_PACK_IO",
}

impl From<std::io::Error> for PackError {
    fn from(e: std::io::Error) -> Self {
        PackError::Io(e.to_string())
    }
}

/// The code table as Markdown (`docs/pack-errors.md`).
#[must_use]
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Pack error codes\n\n<!-- Generated from crates/packs/src/error.rs by `builderos docs`; a test fails when it drifts. -->\n\n\
         Every rejection of a pack names one of these codes (`builderos pack verify --json` prints it as `error.code`).\n\n\
         | code | meaning |\n| --- | --- |\n",
    );
    for (code, meaning) in PackError::all_codes() {
        out.push_str(&format!("| `{code}` | {} |\n", meaning.trim()));
    }
    out
}
