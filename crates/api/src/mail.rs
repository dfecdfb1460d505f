//! Outgoing mail goes through the `mail_outbox` table, in the same transaction as the change
//! that causes it (an invitation, a magic link), so no mail is sent for a rolled-back change
//! and none is lost for a committed one. The mailer drains the outbox.

use sqlx::PgConnection;
use uuid::Uuid;

/// Queues a message.
///
/// # Errors
/// Database errors.
pub async fn enqueue(
    conn: &mut PgConnection,
    to: &str,
    subject: &str,
    body: &str,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO mail_outbox (id, to_address, subject, body) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(to)
        .bind(subject)
        .bind(body)
        .execute(&mut *conn)
        .await?;
    Ok(id)
}
