//! What the outbox holds and where its relay stands, read from the tables.

use tokio_postgres::GenericClient;

use crate::Error;
use crate::schema::Schema;

/// The outbox as the tables show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Rows waiting to be forwarded (the batch in flight included).
    pub waiting: u64,
    /// How long the oldest waiting row has waited, in milliseconds (0: none waits).
    pub oldest_age_ms: u64,
    /// Rows raftq refused for good, set aside with `failed_at` and `failure`.
    pub failed: u64,
    /// The producer the relay forwards as (0: none registered yet).
    pub producer_id: u64,
    /// The batch being forwarded: its queue and number of rows.
    pub in_flight: Option<(String, u64)>,
}

/// Reads the outbox's status.
pub async fn outbox_status(
    client: &impl GenericClient,
    schema: &Schema,
) -> Result<OutboxStatus, Error> {
    let counts = client
        .query_one(
            &format!(
                "SELECT count(*) FILTER (WHERE failed_at IS NULL),
                        count(*) FILTER (WHERE failed_at IS NOT NULL),
                        coalesce(extract(epoch FROM now() - min(created_at)
                                 FILTER (WHERE failed_at IS NULL)) * 1000, 0)::bigint
                 FROM {}",
                schema.outbox()
            ),
            &[],
        )
        .await?;
    let relay = client
        .query_one(
            &format!(
                "SELECT producer_id, batch_queue, cardinality(batch_ids) FROM {} WHERE id = 1",
                schema.relay()
            ),
            &[],
        )
        .await?;
    let in_flight = relay
        .get::<_, Option<String>>(1)
        .map(|queue| (queue, relay.get::<_, Option<i32>>(2).unwrap_or(0) as u64));
    Ok(OutboxStatus {
        waiting: counts.get::<_, i64>(0) as u64,
        failed: counts.get::<_, i64>(1) as u64,
        oldest_age_ms: counts.get::<_, i64>(2).max(0) as u64,
        producer_id: relay.get::<_, i64>(0) as u64,
        in_flight,
    })
}

/// Puts the rows raftq refused back in line (oldest first, behind nothing: they keep
/// their ids), for after the cause was fixed (the queue created, say); how many.
pub async fn retry_failed(client: &impl GenericClient, schema: &Schema) -> Result<u64, Error> {
    Ok(client
        .execute(
            &format!(
                "UPDATE {} SET failed_at = NULL, failure = NULL WHERE failed_at IS NOT NULL",
                schema.outbox()
            ),
            &[],
        )
        .await?)
}
