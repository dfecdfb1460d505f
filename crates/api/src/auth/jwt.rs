//! Access tokens: short-lived JWTs signed with Ed25519 (EdDSA), algorithm pinned on verify,
//! `iss`/`aud`/`exp` checked, and a `kid` so keys can rotate (old public keys keep verifying
//! until their tokens expire).

use std::collections::HashMap;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long an access token lives.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// The audience every access token names.
pub const AUDIENCE: &str = "builderos-api";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The user id.
    pub sub: Uuid,
    /// The session id (revoking the session revokes the token).
    pub sid: Uuid,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expiry (Unix seconds).
    pub exp: i64,
}

/// Why a key (or another start-up dependency of the API state) could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

impl KeyError {
    /// An error with this message.
    #[must_use]
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// The signing key and every public key still accepted.
#[derive(Clone)]
pub struct Keys {
    issuer: String,
    kid: String,
    encoding: EncodingKey,
    decoding: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_id(public: &ed25519_dalek::VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

impl Keys {
    /// Loads the signing key from PKCS#8 PEM, plus previous public keys (SPKI PEM) that
    /// tokens issued before a rotation were signed with.
    ///
    /// # Errors
    /// A [`KeyError`] when a PEM doesn't hold an Ed25519 key.
    pub fn from_pem(
        issuer: &str,
        private_pem: &str,
        previous_public_pems: &[String],
    ) -> Result<Self, KeyError> {
        let signing = SigningKey::from_pkcs8_pem(private_pem).map_err(|e| {
            KeyError(format!(
                "BR_OS_JWT_PRIVATE_KEY is not an Ed25519 PKCS#8 PEM key: {e}"
            ))
        })?;
        let mut keys = Self::from_signing_key(issuer, &signing)?;
        for pem in previous_public_pems {
            let public = ed25519_dalek::VerifyingKey::from_public_key_pem(pem).map_err(|e| {
                KeyError(format!(
                    "a previous JWT public key is not an Ed25519 SPKI PEM key: {e}"
                ))
            })?;
            let decoding =
                DecodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
            keys.decoding.insert(key_id(&public), decoding);
        }
        Ok(keys)
    }

    /// A fresh random key, for local development and tests (tokens die with the process).
    ///
    /// # Errors
    /// When there is no randomness.
    pub fn ephemeral(issuer: &str) -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError(e.to_string()))?;
        Self::from_signing_key(issuer, &SigningKey::from_bytes(&seed))
    }

    fn from_signing_key(issuer: &str, signing: &SigningKey) -> Result<Self, KeyError> {
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError(e.to_string()))?;
        let public = signing.verifying_key();
        let public_pem = public
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError(e.to_string()))?;
        let kid = key_id(&public);
        let encoding = EncodingKey::from_ed_pem(private_pem.as_bytes())
            .map_err(|e| KeyError(e.to_string()))?;
        let decoding =
            DecodingKey::from_ed_pem(public_pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self {
            issuer: issuer.to_owned(),
            kid: kid.clone(),
            encoding,
            decoding: HashMap::from([(kid, decoding)]),
        })
    }

    /// The current key's id.
    #[must_use]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Issues an access token for `user` in `session`; returns it and its lifetime in seconds.
    ///
    /// # Errors
    /// When signing fails.
    pub fn issue(
        &self,
        user: Uuid,
        session: Uuid,
    ) -> Result<(String, u64), jsonwebtoken::errors::Error> {
        let now = chrono::Utc::now().timestamp();
        let ttl = ACCESS_TTL.as_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: AUDIENCE.to_owned(),
            sub: user,
            sid: session,
            iat: now,
            exp: now + i64::try_from(ttl).unwrap_or(900),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok((jsonwebtoken::encode(&header, &claims, &self.encoding)?, ttl))
    }

    /// Verifies a token: EdDSA only (the header's `alg` is not trusted), a known `kid`, the
    /// signature, `iss`, `aud` and `exp`.
    #[must_use]
    pub fn verify(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::EdDSA {
            return None;
        }
        let key = self.decoding.get(header.kid.as_deref()?)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        jsonwebtoken::decode::<Claims>(token, key, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token verifies with its own keys only, and carries the claims it was issued with.
    #[test]
    fn issue_and_verify() {
        let keys = Keys::ephemeral("builderos").expect("keys");
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let (token, ttl) = keys.issue(user, session).expect("issue");
        assert_eq!(ttl, 900);
        let claims = keys.verify(&token).expect("valid");
        assert_eq!((claims.sub, claims.sid), (user, session));
        let other = Keys::ephemeral("builderos").expect("keys");
        assert!(
            other.verify(&token).is_none(),
            "another key's token must not verify"
        );
        let other_issuer = Keys::ephemeral("someone-else").expect("keys");
        assert!(other_issuer.verify(&token).is_none());
    }

    /// `alg: none`, HS256 and a tampered payload are all rejected.
    #[test]
    fn forged_tokens_are_rejected() {
        let keys = Keys::ephemeral("builderos").expect("keys");
        let (token, _) = keys.issue(Uuid::new_v4(), Uuid::new_v4()).expect("issue");
        let parts: Vec<&str> = token.split('.').collect();
        let none_header =
            b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, keys.kid()).as_bytes());
        assert!(
            keys.verify(&format!("{none_header}.{}.", parts[1]))
                .is_none()
        );
        let hs_header =
            b64(format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, keys.kid()).as_bytes());
        assert!(
            keys.verify(&format!("{hs_header}.{}.{}", parts[1], parts[2]))
                .is_none()
        );
        let mut payload: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .expect("b64"),
        )
        .expect("json");
        payload["sub"] = serde_json::json!(Uuid::new_v4());
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            b64(payload.to_string().as_bytes()),
            parts[2]
        );
        assert!(keys.verify(&tampered).is_none());
    }

    /// Expired tokens and tokens for another audience are rejected.
    #[test]
    fn expiry_and_audience() {
        let keys = Keys::ephemeral("builderos").expect("keys");
        let now = chrono::Utc::now().timestamp();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(keys.kid.clone());
        let mut claims = Claims {
            iss: "builderos".into(),
            aud: AUDIENCE.into(),
            sub: Uuid::new_v4(),
            sid: Uuid::new_v4(),
            iat: now - 3600,
            exp: now - 1800,
        };
        let expired = jsonwebtoken::encode(&header, &claims, &keys.encoding).expect("encode");
        assert!(keys.verify(&expired).is_none());
        claims.exp = now + 600;
        claims.aud = "another-service".into();
        let wrong_aud = jsonwebtoken::encode(&header, &claims, &keys.encoding).expect("encode");
        assert!(keys.verify(&wrong_aud).is_none());
    }

    /// After a rotation, tokens signed with the previous key still verify.
    #[test]
    fn rotation_keeps_previous_keys() {
        let mut seed = [7u8; 32];
        seed[0] = 1;
        let old = SigningKey::from_bytes(&seed);
        let old_keys = Keys::from_signing_key("builderos", &old).expect("keys");
        let (token, _) = old_keys
            .issue(Uuid::new_v4(), Uuid::new_v4())
            .expect("issue");
        let new = SigningKey::from_bytes(&[9u8; 32]);
        let new_pem = new.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let old_public = old
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .expect("pem");
        let rotated = Keys::from_pem("builderos", &new_pem, &[old_public]).expect("keys");
        assert_ne!(rotated.kid(), old_keys.kid());
        assert!(rotated.verify(&token).is_some());
        let without_old = Keys::from_pem("builderos", &new_pem, &[]).expect("keys");
        assert!(without_old.verify(&token).is_none());
    }
}
