//! Sign-in throttling, kept in PostgreSQL so every API replica shares it.
//!
//! Failed attempts are counted per account (`account:<email>`, whether or not the account
//! exists, so throttling reveals nothing) and per client address (`addr:<ip>`), in fixed
//! windows. Over the limit, sign-in answers 429 `ERR_RATE_LIMITED` with `Retry-After`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Failures per account per window.
pub const ACCOUNT_LIMIT: i32 = 5;
/// Failures per client address per window.
pub const ADDRESS_LIMIT: i32 = 20;
/// The window.
pub const WINDOW_SECONDS: i64 = 15 * 60;

/// The keys an attempt counts against.
#[must_use]
pub fn keys(email: &str, addr: Option<&str>) -> Vec<String> {
    let mut keys = vec![format!("account:{email}")];
    if let Some(addr) = addr {
        keys.push(format!("addr:{addr}"));
    }
    keys
}

fn limit(key: &str) -> i32 {
    if key.starts_with("account:") {
        ACCOUNT_LIMIT
    } else {
        ADDRESS_LIMIT
    }
}

/// Seconds until the caller may try again, if any key is over its limit.
///
/// # Errors
/// Database errors.
pub async fn retry_after(pool: &PgPool, keys: &[String]) -> Result<Option<u64>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>, i32)> =
        sqlx::query_as("SELECT key, window_start, failures FROM auth_throttle WHERE key = ANY($1)")
            .bind(keys)
            .fetch_all(pool)
            .await?;
    let now = Utc::now();
    let wait = rows
        .iter()
        .filter(|(key, start, failures)| {
            *failures >= limit(key) && (now - *start).num_seconds() < WINDOW_SECONDS
        })
        .map(|(_, start, _)| WINDOW_SECONDS - (now - *start).num_seconds())
        .max();
    Ok(wait.map(|s| u64::try_from(s.max(1)).unwrap_or(1)))
}

/// Counts a failure against every key.
///
/// # Errors
/// Database errors.
pub async fn record_failure(pool: &PgPool, keys: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO auth_throttle (key, window_start, failures) SELECT k, now(), 1 FROM unnest($1::text[]) AS k \
         ON CONFLICT (key) DO UPDATE SET \
           failures = CASE WHEN auth_throttle.window_start < now() - make_interval(secs => $2) THEN 1 ELSE auth_throttle.failures + 1 END, \
           window_start = CASE WHEN auth_throttle.window_start < now() - make_interval(secs => $2) THEN now() ELSE auth_throttle.window_start END",
    )
    .bind(keys)
    .bind(WINDOW_SECONDS as f64)
    .execute(pool)
    .await?;
    Ok(())
}

/// Clears the account's counter after a successful sign-in.
///
/// # Errors
/// Database errors.
pub async fn clear_account(pool: &PgPool, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM auth_throttle WHERE key = $1")
        .bind(format!("account:{email}"))
        .execute(pool)
        .await?;
    Ok(())
}
