//! Secret tokens: generation, the recognisable format, and hashing for storage.
//!
//! Every secret BuilderOS hands out looks like `<prefix>_<32 base62 chars><6 base62 chars>`:
//! 190 random bits followed by a CRC32 checksum of them. The prefix says what the secret is
//! (`bos_` API token, `bosr_` refresh token, `bosm_` magic link, `bosi_` invitation), so
//! secret scanners can match `bos[rmi]?_[0-9A-Za-z]{38}` and verify the checksum offline
//! without false positives. Only the SHA-256 of a secret is stored.

use sha2::{Digest, Sha256};

/// What a secret is for; its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `bos_`: an API token.
    ApiToken,
    /// `bosr_`: a refresh token.
    Refresh,
    /// `bosm_`: a magic sign-in link.
    MagicLink,
    /// `bosi_`: an invitation.
    Invitation,
}

impl Kind {
    /// The prefix, including its underscore.
    #[must_use]
    pub const fn prefix(self) -> &'static str {
        match self {
            Kind::ApiToken => "bos_",
            Kind::Refresh => "bosr_",
            Kind::MagicLink => "bosm_",
            Kind::Invitation => "bosi_",
        }
    }
}

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BODY_LEN: usize = 32;
const CHECK_LEN: usize = 6;

/// A secret, whose `Debug` shows only its prefix.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretToken(String);

impl SecretToken {
    /// The full secret, to hand to its owner exactly once.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The SHA-256 to store.
    #[must_use]
    pub fn hash(&self) -> String {
        hash(&self.0)
    }

    /// The first characters, safe to show in lists.
    #[must_use]
    pub fn display_prefix(&self) -> String {
        self.0.chars().take(12).collect()
    }
}

impl std::fmt::Debug for SecretToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretToken({}…)", self.display_prefix())
    }
}

/// Makes a new random secret of `kind`.
///
/// # Errors
/// When the operating system has no randomness to give.
pub fn generate(kind: Kind) -> Result<SecretToken, getrandom::Error> {
    let mut body = String::with_capacity(BODY_LEN);
    let mut buf = [0u8; 64];
    while body.len() < BODY_LEN {
        getrandom::fill(&mut buf)?;
        // Rejection sampling keeps every character uniformly likely.
        for b in buf {
            if b < 248 && body.len() < BODY_LEN {
                body.push(char::from(ALPHABET[usize::from(b % 62)]));
            }
        }
    }
    let check = checksum(&body);
    Ok(SecretToken(format!("{}{body}{check}", kind.prefix())))
}

fn checksum(body: &str) -> String {
    let mut n = crc32fast::hash(body.as_bytes());
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `token` has the shape and a valid checksum for `kind` (cheap; no database).
#[must_use]
pub fn well_formed(token: &str, kind: Kind) -> bool {
    let Some(rest) = token.strip_prefix(kind.prefix()) else {
        return false;
    };
    if rest.len() != BODY_LEN + CHECK_LEN || !rest.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (body, check) = rest.split_at(BODY_LEN);
    checksum(body) == check
}

/// SHA-256 hex of a secret, for storage and lookup.
#[must_use]
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Generated secrets carry their prefix and a checksum that a scanner can verify.
    #[test]
    fn format_and_checksum() {
        for kind in [
            Kind::ApiToken,
            Kind::Refresh,
            Kind::MagicLink,
            Kind::Invitation,
        ] {
            let t = generate(kind).expect("random");
            assert!(t.expose().starts_with(kind.prefix()));
            assert_eq!(t.expose().len(), kind.prefix().len() + 38);
            assert!(well_formed(t.expose(), kind));
            // One changed character breaks the checksum.
            let mut chars: Vec<char> = t.expose().chars().collect();
            let i = kind.prefix().len() + 3;
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let tampered: String = chars.into_iter().collect();
            assert!(!well_formed(&tampered, kind));
        }
        assert!(!well_formed("bos_short", Kind::ApiToken));
        let refresh = generate(Kind::Refresh).expect("random");
        assert!(!well_formed(refresh.expose(), Kind::ApiToken));
    }

    /// Debug never shows the secret.
    #[test]
    fn debug_is_redacted() {
        let t = generate(Kind::ApiToken).expect("random");
        assert!(!format!("{t:?}").contains(&t.expose()[12..]));
    }
}
