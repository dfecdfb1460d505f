//! Signed pack bundles: the format, its canonical manifest, Ed25519 signatures, verification
//! that rejects hostile archives, safe unpacking, deterministic building — and the publisher
//! CLI behind the `cli` feature.
//!
//! Pure: no database, no network, no async — so it can be fuzzed and used offline. The format
//! is specified in `docs/pack-format.md`.
//!
//! # Layout
//! - [`error`]: `PackError`, one stable `ERR_PACK_*` code per failure kind.
//! - [`limits`]: size, count, ratio and path limits with safe defaults.
//! - [`paths`]: what a safe entry name is; when two names collide.
//! - [`archive`]: the zip structure, parsed and checked byte for byte.
//! - [`manifest`]: `pack.json` and the kind schemas.
//! - [`sign`]: key ids, the signed message, `pack.sig`, key files.
//! - [`verify`]: the whole verification, streaming.
//! - `readahead`: reading large archives ahead on a second thread.
//! - [`unpack`]: writing a verified pack into a fresh directory.
//! - [`build`]: deterministic build and signing.
//! - `cli` (feature `cli`): `builderos pack …`.

pub mod archive;
pub mod build;
#[cfg(feature = "cli")]
pub mod cli;
pub mod error;
pub mod limits;
pub mod manifest;
pub mod paths;
mod readahead;
pub mod sign;
pub mod unpack;
pub mod verify;

pub use error::PackError;
pub use limits::Limits;
pub use manifest::{Kind, Manifest};
pub use sign::TrustedKey;
pub use verify::{VerifiedPack, VerifyOptions, verify};
