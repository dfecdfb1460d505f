//! The mailer drains `mail_outbox`: it claims due messages with `FOR UPDATE SKIP LOCKED` (so
//! several API replicas never send one message twice), sends them over SMTP, and retries
//! failures with exponential backoff and jitter, giving up after [`MAX_ATTEMPTS`].
//!
//! Without an SMTP relay (development), "delivery" is one log line per message carrying the
//! recipient, the subject and the body's links — so `builderos dev` users can follow a magic
//! link. Production refuses to start without a relay (see `BR_OS_SMTP_URL`).

use std::time::Duration;

use chrono::Utc;
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Attempts before a message is marked failed.
pub const MAX_ATTEMPTS: i32 = 8;
/// Messages claimed per round.
const BATCH: i64 = 20;

/// Where mail goes.
#[derive(Clone)]
pub enum Transport {
    /// An SMTP relay.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// The log (development only).
    Log,
}

/// The configured mailer.
#[derive(Clone)]
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.transport {
            Transport::Smtp(_) => "smtp",
            Transport::Log => "log",
        };
        f.debug_struct("Mailer")
            .field("transport", &kind)
            .field("from", &self.from.to_string())
            .finish()
    }
}

/// Why the mailer could not be configured.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MailerError(String);

impl Mailer {
    /// A mailer for `smtp_url` (lettre's URL form: `smtp://host:port`, `smtp://user:pass@host:587?tls=required`,
    /// `smtps://user:pass@host:465`), or the log when `None`.
    ///
    /// # Errors
    /// A [`MailerError`] naming the bad setting.
    pub fn new(smtp_url: Option<&str>, from: &str) -> Result<Self, MailerError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| MailerError(format!("BR_OS_MAIL_FROM is not a mailbox: {e}")))?;
        let transport = match smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| MailerError(format!("BR_OS_SMTP_URL is not usable: {e}")))?
                    .timeout(Some(Duration::from_secs(10)))
                    .build(),
            ),
            None => Transport::Log,
        };
        Ok(Self { transport, from })
    }

    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), String> {
        match &self.transport {
            Transport::Log => {
                let links: Vec<&str> = body
                    .split_whitespace()
                    .filter(|w| w.starts_with("http://") || w.starts_with("https://"))
                    .collect();
                // Development only: the link is the point of logging the mail.
                tracing::info!(to, subject, links = ?links, "mail (no SMTP relay configured; logged instead of sent)");
                Ok(())
            }
            Transport::Smtp(smtp) => {
                let to: Mailbox = to.parse().map_err(|e| format!("bad recipient: {e}"))?;
                let message = Message::builder()
                    .from(self.from.clone())
                    .to(to)
                    .subject(subject)
                    .body(body.to_owned())
                    .map_err(|e| format!("building the message: {e}"))?;
                smtp.send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Sends what is due; returns how many messages were sent.
    ///
    /// # Errors
    /// Database errors (send failures are recorded on the message and retried later).
    pub async fn drain_once(&self, pool: &PgPool) -> Result<usize, sqlx::Error> {
        let mut tx = pool.begin().await?;
        let due: Vec<(Uuid, String, String, String, i32)> = sqlx::query_as(
            "SELECT id, to_address, subject, body, attempts FROM mail_outbox \
             WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() \
             ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        let mut sent = 0;
        for (id, to, subject, body, attempts) in due {
            match self.send(&to, &subject, &body).await {
                Ok(()) => {
                    sqlx::query("UPDATE mail_outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    metrics::counter!("builderos_mail_sent_total").increment(1);
                    sent += 1;
                }
                Err(error) => {
                    let attempts = attempts + 1;
                    let give_up = attempts >= MAX_ATTEMPTS;
                    let delay = backoff(attempts);
                    tracing::warn!(mail_id = %id, attempts, give_up, error = %error, "sending mail failed");
                    sqlx::query(
                        "UPDATE mail_outbox SET attempts = $2, last_error = $3, next_attempt_at = $4, \
                         failed_at = CASE WHEN $5 THEN now() ELSE NULL END WHERE id = $1",
                    )
                    .bind(id)
                    .bind(attempts)
                    .bind(error.chars().take(500).collect::<String>())
                    .bind(Utc::now() + delay)
                    .bind(give_up)
                    .execute(&mut *tx)
                    .await?;
                    metrics::counter!("builderos_mail_failed_total").increment(1);
                }
            }
        }
        tx.commit().await?;
        Ok(sent)
    }

    /// Drains the outbox every `interval` until `stop` is cancelled.
    pub async fn run(self, pool: PgPool, interval: Duration, stop: CancellationToken) {
        loop {
            match self.drain_once(&pool).await {
                Ok(n) if n > 0 => tracing::debug!(sent = n, "mail sent"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "mail outbox unavailable"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// Exponential backoff from 5 s, capped at one hour, with up to 20% jitter.
fn backoff(attempts: i32) -> chrono::Duration {
    let base = 5_i64
        .saturating_mul(1_i64 << attempts.clamp(0, 10))
        .min(3600);
    let mut jitter = [0u8; 1];
    let _ = getrandom::fill(&mut jitter);
    chrono::Duration::milliseconds(base * 1000 + base * 200 * i64::from(jitter[0]) / 255)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Backoff grows and is capped.
    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(1) < backoff(3));
        assert!(backoff(30) <= chrono::Duration::seconds(3600 + 720));
    }
}
