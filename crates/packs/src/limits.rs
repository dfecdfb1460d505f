//! Verification limits, with safe defaults.

/// What a pack may be, at most. Every limit is enforced on what is actually read, never only
/// on what headers declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Size of the archive file (default 256 MiB).
    pub max_compressed: u64,
    /// Total uncompressed size of all entries (default 1 GiB).
    pub max_uncompressed: u64,
    /// Uncompressed size of one entry (default 256 MiB).
    pub max_entry: u64,
    /// Number of entries (default 10,000).
    pub max_entries: usize,
    /// Uncompressed/compressed ratio of one entry (default 200).
    pub max_ratio: u64,
    /// Bytes in a path (default 255).
    pub max_path_len: usize,
    /// Segments in a path (default 16).
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_compressed: 256 << 20,
            max_uncompressed: 1 << 30,
            max_entry: 256 << 20,
            max_entries: 10_000,
            max_ratio: 200,
            max_path_len: 255,
            max_depth: 16,
        }
    }
}

/// The manifest's own cap.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The signature file's cap.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
