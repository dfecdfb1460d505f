//! Keys and signatures.
//!
//! - Key id: `ed25519:` + the first 16 bytes of SHA-256 of the 32-byte public key, hex.
//! - Signed message: [`CONTEXT`] followed by the 32-byte SHA-256 of the canonical manifest.
//! - `pack.sig`: canonical JSON `{"alg":"ed25519","key_id":"…","sig":"<base64 of 64 bytes>"}`.
//! - Key files: the secret key as PKCS#8 PEM (mode 0600), the public key as SPKI PEM.

use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::PackError;

/// Domain separation: a signature over a pack can't be replayed as anything else.
pub const CONTEXT: &[u8] = b"builderos-pack-signature-v1\0";

/// The key id of a public key.
#[must_use]
pub fn key_id(public: &VerifyingKey) -> String {
    format!(
        "ed25519:{}",
        hex::encode(&Sha256::digest(public.as_bytes())[..16])
    )
}

/// The message a pack's signature covers.
#[must_use]
pub fn message(manifest_bytes: &[u8]) -> Vec<u8> {
    let mut m = CONTEXT.to_vec();
    m.extend_from_slice(&Sha256::digest(manifest_bytes));
    m
}

/// `pack.sig`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// Always `ed25519`.
    pub alg: String,
    /// Who signed.
    pub key_id: String,
    /// Base64 (standard, padded) of the 64-byte signature.
    pub sig: String,
}

/// Signs canonical manifest bytes.
///
/// # Errors
/// Never in practice (canonical serialization of the signature file).
pub fn sign(key: &SigningKey, manifest_bytes: &[u8]) -> Result<Vec<u8>, PackError> {
    let signature = key.sign(&message(manifest_bytes));
    let file = SignatureFile {
        alg: "ed25519".into(),
        key_id: key_id(&key.verifying_key()),
        sig: base64::engine::general_purpose::STANDARD.encode(signature.to_bytes()),
    };
    builderos_canon::to_canonical_bytes(&file)
        .map_err(|e| PackError::SignatureMissing(e.to_string()))
}

/// A key the verifier trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Its id.
    pub key_id: String,
    /// The key.
    pub public: VerifyingKey,
    /// The publisher it belongs to; when set, the manifest must name it.
    pub publisher: Option<String>,
    /// Signatures are refused at or after this instant.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TrustedKey {
    /// Trusts a raw 32-byte public key, refusing weak (small-order) and non-canonical encodings.
    ///
    /// # Errors
    /// `ERR_PACK_WEAK_KEY`.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, PackError> {
        let public = VerifyingKey::from_bytes(bytes)
            .map_err(|e| PackError::WeakKey(format!("not a valid Ed25519 point: {e}")))?;
        if public.is_weak() {
            return Err(PackError::WeakKey("the public key has small order".into()));
        }
        // Decoding reduces a y coordinate at or above the field prime (and accepts a sign bit
        // on x = 0); re-encoding the point shows whether these were its canonical bytes.
        if public.to_edwards().compress().to_bytes() != *bytes {
            return Err(PackError::WeakKey(
                "the public key is not canonically encoded".into(),
            ));
        }
        Ok(Self {
            key_id: key_id(&public),
            public,
            publisher: None,
            revoked_at: None,
        })
    }

    /// Trusts a public key from SPKI PEM.
    ///
    /// # Errors
    /// `ERR_PACK_WEAK_KEY` for unusable keys.
    pub fn from_pem(pem: &str) -> Result<Self, PackError> {
        if pem.contains("PRIVATE KEY-----") {
            return Err(PackError::WeakKey(
                "this is a secret key; trust the public key file (`.pub`) instead".into(),
            ));
        }
        let public = VerifyingKey::from_public_key_pem(pem)
            .map_err(|e| PackError::WeakKey(format!("not an Ed25519 public key PEM: {e}")))?;
        Self::from_bytes(public.as_bytes())
    }
}

/// Parses `pack.sig` and verifies it over `manifest_bytes` with a trusted, unrevoked key.
///
/// # Errors
/// `ERR_PACK_SIGNATURE_MISSING`, `ERR_PACK_UNKNOWN_KEY`, `ERR_PACK_KEY_REVOKED`,
/// `ERR_PACK_BAD_SIGNATURE`.
pub fn verify<'k>(
    sig_bytes: &[u8],
    manifest_bytes: &[u8],
    keys: &'k [TrustedKey],
    at: DateTime<Utc>,
) -> Result<&'k TrustedKey, PackError> {
    verify_digest(sig_bytes, &Sha256::digest(manifest_bytes).into(), keys, at)
}

/// [`verify`], given the SHA-256 of the manifest bytes (already computed while they were
/// read) instead of the bytes.
///
/// # Errors
/// As [`verify`].
pub fn verify_digest<'k>(
    sig_bytes: &[u8],
    manifest_sha256: &[u8; 32],
    keys: &'k [TrustedKey],
    at: DateTime<Utc>,
) -> Result<&'k TrustedKey, PackError> {
    let file: SignatureFile = serde_json::from_slice(sig_bytes)
        .map_err(|e| PackError::SignatureMissing(format!("pack.sig: {e}")))?;
    // One byte form, like the manifest's: a signed pack's bytes are fixed by its content.
    if builderos_canon::to_canonical_bytes(&file).ok().as_deref() != Some(sig_bytes) {
        return Err(PackError::BadSignature(
            "pack.sig is not canonical JSON".into(),
        ));
    }
    if file.alg != "ed25519" {
        return Err(PackError::SignatureMissing(format!(
            "pack.sig: algorithm `{}` is not ed25519",
            file.alg
        )));
    }
    let key = keys
        .iter()
        .find(|k| k.key_id == file.key_id)
        .ok_or_else(|| PackError::UnknownKey(format!("key {} is not trusted", file.key_id)))?;
    if key.revoked_at.is_some_and(|r| r <= at) {
        return Err(PackError::KeyRevoked(format!(
            "key {} was revoked",
            key.key_id
        )));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&file.sig)
        .map_err(|_| PackError::BadSignature("pack.sig: sig is not base64".into()))?;
    let raw: [u8; 64] = raw
        .try_into()
        .map_err(|_| PackError::BadSignature("pack.sig: sig is not 64 bytes".into()))?;
    key.public
        .verify_strict(
            &[CONTEXT, manifest_sha256.as_slice()].concat(),
            &Signature::from_bytes(&raw),
        )
        .map_err(|_| {
            PackError::BadSignature("the signature does not match this manifest".into())
        })?;
    Ok(key)
}

/// A fresh signing key.
///
/// # Errors
/// When the OS has no randomness.
pub fn generate() -> Result<SigningKey, PackError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| PackError::Io(format!("no randomness: {e}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// PKCS#8 PEM of a secret key.
///
/// # Errors
/// Encoding failures.
pub fn secret_pem(key: &SigningKey) -> Result<String, PackError> {
    // PKCS#8 v1 (RFC 8410: the seed alone), which every tool reads (OpenSSL 3.0 does not
    // read the v2 form that also carries the public key); the public key is derived again
    // on reading.
    let seed_only = ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    Ok(seed_only
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| PackError::Io(e.to_string()))?
        .to_string())
}

/// SPKI PEM of a public key.
///
/// # Errors
/// Encoding failures.
pub fn public_pem(key: &VerifyingKey) -> Result<String, PackError> {
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| PackError::Io(e.to_string()))
}

/// Reads a secret key from PKCS#8 PEM.
///
/// # Errors
/// `ERR_PACK_IO` when it isn't one.
pub fn read_secret_pem(pem: &str) -> Result<SigningKey, PackError> {
    SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| PackError::Io(format!("not an Ed25519 PKCS#8 secret key: {e}")))
}
