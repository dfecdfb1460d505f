//! Property tests: arbitrary bytes never panic the verifier, and any mutation of a valid
//! signed pack is either rejected or verifies to exactly the same content.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;

use builderos_packs::{VerifyOptions, verify};
use common::{key, trusted, valid_pack};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random bytes are rejected with a code, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let result = verify(&mut Cursor::new(&bytes), &[trusted(&key(1))], &VerifyOptions::default());
        prop_assert!(result.is_err());
        prop_assert!(result.unwrap_err().code().starts_with("ERR_PACK_"));
    }

    /// Flipping, inserting or truncating bytes of a valid pack never yields different content.
    #[test]
    fn mutations_are_rejected_or_harmless(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4)) {
        let original = valid_pack(&key(1));
        let keys = [trusted(&key(1))];
        let good = verify(&mut Cursor::new(&original), &keys, &VerifyOptions::default()).unwrap();
        let mut bytes = original.clone();
        for (index, value, op) in edits {
            let i = index.index(bytes.len().max(1));
            match op {
                0 => bytes[i] ^= value | 1,
                1 => bytes.insert(i, value),
                _ => bytes.truncate(i),
            }
            if bytes.is_empty() { break; }
        }
        let ahead = VerifyOptions { read_ahead_from: 0, ..VerifyOptions::default() };
        let other = verify(&mut Cursor::new(&bytes), &keys, &ahead).map_err(|e| e.code());
        let result = verify(&mut Cursor::new(&bytes), &keys, &VerifyOptions::default());
        // Read ahead by a second thread or not, the outcome is the same.
        prop_assert_eq!(result.as_ref().map(|p| &p.manifest_bytes).map_err(|e| e.code()), other.as_ref().map(|p| &p.manifest_bytes).map_err(|c| *c));
        if let Ok(pack) = result {
            prop_assert_eq!(pack.manifest_bytes, good.manifest_bytes);
            prop_assert_eq!(pack.manifest.files, good.manifest.files);
        }
    }
}
