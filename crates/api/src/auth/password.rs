//! Password hashing: argon2id with OWASP parameters, on a blocking thread.

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version};

/// OWASP's recommended argon2id parameters: 19 MiB, 2 passes, 1 lane.
pub const M_COST_KIB: u32 = 19_456;
/// Passes.
pub const T_COST: u32 = 2;
/// Lanes.
pub const P_COST: u32 = 1;

/// Accepted password lengths in bytes.
pub const MIN_LEN: usize = 12;
/// Upper bound, so hashing cost can't be driven up by huge inputs.
pub const MAX_LEN: usize = 1024;

fn hasher() -> Argon2<'static> {
    let params = Params::new(M_COST_KIB, T_COST, P_COST, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Checks the length rule.
///
/// # Errors
/// A message saying which bound was violated.
pub fn check_policy(password: &str) -> Result<(), String> {
    let len = password.len();
    if len < MIN_LEN {
        Err(format!("password must be at least {MIN_LEN} bytes"))
    } else if len > MAX_LEN {
        Err(format!("password must be at most {MAX_LEN} bytes"))
    } else {
        Ok(())
    }
}

/// Hashes a password into a PHC string, off the async threads.
///
/// # Errors
/// When hashing fails (out of memory, no randomness) or the blocking pool is gone.
pub async fn hash(password: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || {
        hasher()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// The outcome of checking a password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// Wrong password (or no usable hash).
    No,
    /// Right password; the hash uses the current parameters.
    Yes,
    /// Right password; here is a new hash with the current parameters to store.
    YesRehashed(String),
}

/// A fixed hash that unknown accounts are checked against, so that an unknown email costs
/// the same time as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0VVUbwM+nK+SD1R6DMkdqSDPLx9a8yvUW6tCOd1Fhl8";

/// Verifies `password` against `stored` (or against a dummy hash when there is none) off the
/// async threads, and rehashes when the stored parameters are not the current ones.
///
/// # Errors
/// Only when the blocking pool is gone.
pub async fn verify(password: String, stored: Option<String>) -> Result<Verified, String> {
    tokio::task::spawn_blocking(move || {
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let Ok(parsed) = PasswordHash::new(&stored) else {
            return Verified::No;
        };
        let ok = hasher()
            .verify_password(password.as_bytes(), stored.as_str())
            .is_ok();
        if !ok || !known {
            return Verified::No;
        }
        let current = Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == M_COST_KIB && p.t_cost() == T_COST && p.p_cost() == P_COST
        }) && parsed.algorithm.as_str() == "argon2id";
        if current {
            Verified::Yes
        } else {
            match hasher().hash_password(password.as_bytes()) {
                Ok(h) => Verified::YesRehashed(h.to_string()),
                Err(_) => Verified::Yes,
            }
        }
    })
    .await
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hash verifies its password only, and carries the OWASP parameters.
    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash("correct horse battery".to_owned())
            .await
            .expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(
            verify("correct horse battery".to_owned(), Some(h.clone())).await,
            Ok(Verified::Yes)
        );
        assert_eq!(
            verify("wrong horse battery".to_owned(), Some(h)).await,
            Ok(Verified::No)
        );
        assert_eq!(
            verify("anything at all".to_owned(), None).await,
            Ok(Verified::No)
        );
    }

    /// A hash made with weaker parameters is replaced on a successful sign-in.
    #[tokio::test]
    async fn rehash_on_old_parameters() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).expect("params"),
        );
        let old = weak
            .hash_password(b"correct horse battery")
            .expect("hash")
            .to_string();
        match verify("correct horse battery".to_owned(), Some(old))
            .await
            .expect("verify")
        {
            Verified::YesRehashed(new) => assert!(new.contains("m=19456,t=2,p=1")),
            other => panic!("expected a rehash, got {other:?}"),
        }
    }

    /// Length bounds.
    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy(&"x".repeat(12)).is_ok());
        assert!(check_policy(&"x".repeat(1025)).is_err());
    }
}
