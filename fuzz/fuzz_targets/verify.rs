//! Fuzzes pack verification: any input must be rejected with a code or verify, never panic,
//! hang or allocate without bound. Run: `cargo +nightly fuzz run verify` (see docs/pack-format.md).
#![no_main]

use std::io::Cursor;

use builderos_packs::{TrustedKey, VerifyOptions, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[1u8; 32]);
    let Ok(trusted) = TrustedKey::from_bytes(key.verifying_key().as_bytes()) else { return };
    let _ = verify(&mut Cursor::new(data), &[trusted], &VerifyOptions::default());
});
