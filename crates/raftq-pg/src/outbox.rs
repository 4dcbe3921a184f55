//! `enqueue`: a message written to the outbox inside the application's own transaction,
//! so it is sent if and only if that transaction commits.

use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raftq_client::Message;
use tokio_postgres::GenericClient;

use crate::Error;
use crate::schema::{LOCK_CLASS, Schema};

/// Largest message body the outbox takes (the cluster's default per-message limit); a
/// larger one is refused at once rather than by the relay later.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Writes `message` for `queue` into the outbox, in the transaction `transaction` (any
/// [`GenericClient`]: a `Transaction`, or a client inside `BEGIN`). The relay forwards it
/// once the transaction commits; a rollback leaves nothing.
///
/// Messages with the same order key (the message's group, when it has one) are forwarded
/// in the order their transactions commit: the first `enqueue` of a key in a transaction
/// takes a lock on the key that is held until the transaction ends, so two transactions
/// that write the same key take turns. Messages without a group are forwarded in the
/// order they were written (by id), which between concurrent transactions need not be
/// their commit order.
///
/// The message's `sent_at_ms` is set now (when it is 0), so its time to reach the queue
/// counts from the application's send, not from the relay's.
pub async fn enqueue(
    transaction: &impl GenericClient,
    schema: &Schema,
    queue: &str,
    mut message: Message,
) -> Result<i64, Error> {
    if queue.is_empty() || queue.len() > 255 {
        return Err(Error::InvalidName(format!(
            "{queue:?} is not a queue name (1 to 255 characters)"
        )));
    }
    if message.body.len() > MAX_BODY_BYTES {
        return Err(Error::InvalidMessage(format!(
            "the message body is {} bytes; the outbox takes at most {MAX_BODY_BYTES}",
            message.body.len()
        )));
    }
    if message.sent_at_ms == 0 {
        message.sent_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() as u64);
    }
    let order_key = message.group.clone();
    if !order_key.is_empty() {
        transaction
            .execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))",
                &[
                    &LOCK_CLASS,
                    &format!("{}:{queue}:{order_key}", schema.outbox()),
                ],
            )
            .await?;
    }
    let encoded = message.into_proto().encode_to_vec();
    let row = transaction
        .query_one(
            &format!(
                "INSERT INTO {} (queue, order_key, message) VALUES ($1, $2, $3) RETURNING id",
                schema.outbox()
            ),
            &[&queue, &order_key, &encoded],
        )
        .await?;
    Ok(row.get(0))
}
