//! The relay: forwards the outbox's committed rows to raftq, exactly once and in order.
//!
//! One relay is active per outbox table: it holds a PostgreSQL advisory lock for as long
//! as its connection lives, and every other relay waits on standby for the lock. The
//! active relay works batch by batch:
//!
//! 1. in one transaction it chooses the batch (the next rows of the queue of the oldest
//!    row, in id order), numbers it in its producer's sequence for that queue, and records
//!    the choice in the relay's row;
//! 2. it sends the batch to raftq as one numbered `SendBatch`;
//! 3. in one transaction it deletes the rows, advances the queue's number, and chooses the
//!    next batch.
//!
//! A relay that dies anywhere is replaced by one that reads the recorded batch and sends
//! exactly it again with the same numbers: raftq stores a numbered batch once, however
//! often it comes. LISTEN/NOTIFY wakes the relay when rows commit; it also looks every
//! `poll_interval` in case a notification was missed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message as _;
use raftq_client::{Client, ClientError, pb};
use tokio::sync::{mpsc, watch};

use crate::connect::{DatabaseTls, connect};
use crate::schema::{LOCK_CLASS, Schema};
use crate::{Error, SCHEMA_VERSION};

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub schema: Schema,
    /// Most rows one batch (one `SendBatch`) carries: 1 to 1,000.
    pub batch_messages: usize,
    /// How often the relay looks for rows without being woken, and a standby tries to take
    /// over.
    pub poll_interval: Duration,
    /// The name its producer registers with raftq.
    pub producer_name: String,
    /// Longest pause between attempts while raftq or PostgreSQL cannot be reached.
    pub max_backoff: Duration,
    /// How the relay reaches PostgreSQL.
    pub tls: DatabaseTls,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            schema: Schema::default(),
            batch_messages: 500,
            poll_interval: Duration::from_secs(1),
            producer_name: "raftq-pg-relay".to_string(),
            max_backoff: Duration::from_secs(5),
            tls: DatabaseTls::Plaintext,
        }
    }
}

/// What the relay is doing, for status pages and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// Holds the lock and forwards (else on standby, or not connected).
    pub active: bool,
    /// Rows forwarded since the relay started.
    pub forwarded: u64,
    /// Rows raftq refused for good, set aside (`failed_at`) since the relay started.
    pub failed: u64,
    /// The last error that held forwarding up, until forwarding goes on.
    pub stuck: Option<String>,
}

/// A step the relay took, reported to the observer given with [`Relay::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEvent {
    /// The relay took the lock and is the active relay.
    Active,
    /// raftq stored a batch of `count` rows (or had stored it before); the rows are not
    /// yet deleted.
    Stored { count: usize },
    /// The stored batch's rows are deleted.
    Recorded { count: usize },
}

type Observer = Arc<dyn Fn(RelayEvent) + Send + Sync>;

/// A relay for one outbox table.
pub struct Relay {
    database_url: String,
    raftq: Client,
    config: RelayConfig,
    status: watch::Sender<RelayStatus>,
    observer: Option<Observer>,
    forwarded: Arc<AtomicU64>,
}

/// The batch being forwarded, as recorded in the relay's row.
#[derive(Debug, Clone)]
struct Batch {
    queue: String,
    sequence: i64,
    ids: Vec<i64>,
}

/// The numbered rows on their way.
struct Loaded {
    batch: Batch,
    messages: Vec<pb::OutgoingMessage>,
}

impl Relay {
    /// A relay reading the outbox at `database_url` (a libpq connection string or URL)
    /// and forwarding through `raftq`.
    pub fn new(database_url: &str, raftq: Client, config: RelayConfig) -> Result<Relay, Error> {
        if !(1..=1_000).contains(&config.batch_messages) {
            return Err(Error::InvalidMessage(format!(
                "batch_messages is {}; it must be 1 to 1,000",
                config.batch_messages
            )));
        }
        database_url.parse::<tokio_postgres::Config>()?;
        Ok(Relay {
            database_url: database_url.to_string(),
            raftq,
            config,
            status: watch::Sender::new(RelayStatus::default()),
            observer: None,
            forwarded: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Calls `observer` at each step (see [`RelayEvent`]), on the relay's task: keep it
    /// short.
    pub fn observe(&mut self, observer: impl Fn(RelayEvent) + Send + Sync + 'static) {
        self.observer = Some(Arc::new(observer));
    }

    /// Follows the relay's status.
    pub fn status(&self) -> watch::Receiver<RelayStatus> {
        self.status.subscribe()
    }

    fn note(&self, event: RelayEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    fn set_stuck(&self, stuck: Option<String>) {
        self.status.send_if_modified(|status| {
            let changed = status.stuck != stuck;
            status.stuck = stuck;
            changed
        });
    }

    /// Runs until `stop` turns true: connects, waits for the lock, forwards; after a lost
    /// connection, connects again (backing off up to `max_backoff`). Returns an error only
    /// for what retrying cannot cure (the tables missing, raftq's state out of step).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
        let mut backoff = Backoff::new(self.config.max_backoff);
        while !*stop.borrow() {
            let result = self.connected(&mut stop).await;
            self.status.send_modify(|status| status.active = false);
            metrics::gauge!("raftq_pg_relay_active").set(0.0);
            match result {
                Ok(()) => return Ok(()),
                Err(error @ (Error::SchemaVersion { .. } | Error::OutOfStep(_))) => {
                    return Err(error);
                }
                Err(error) => {
                    tracing::warn!(%error, "raftq-pg relay: connection lost; connecting again");
                    self.set_stuck(Some(error.to_string()));
                    backoff.wait(&mut stop).await;
                }
            }
        }
        Ok(())
    }

    /// One connection's life: standby until the lock is taken, then forwarding.
    async fn connected(&self, stop: &mut watch::Receiver<bool>) -> Result<(), Error> {
        metrics::gauge!("raftq_pg_relay_active").set(0.0);
        let (mut pg, mut wake) = connect(&self.database_url, &self.config.tls).await?;
        let schema = &self.config.schema;
        let version = schema.version(&pg).await?;
        if version < SCHEMA_VERSION {
            return Err(Error::SchemaVersion {
                found: version,
                needed: SCHEMA_VERSION,
            });
        }
        pg.batch_execute(&format!("LISTEN {}", schema.channel()))
            .await?;
        let key = schema.relay_lock_key();
        loop {
            let locked: bool = pg
                .query_one(
                    "SELECT pg_try_advisory_lock($1, hashtext($2))",
                    &[&LOCK_CLASS, &key],
                )
                .await?
                .get(0);
            if locked {
                break;
            }
            if !self.wait(&mut wake, stop).await {
                return Ok(());
            }
        }
        tracing::info!(outbox = %schema.outbox(), "raftq-pg relay: active");
        self.status.send_modify(|status| status.active = true);
        metrics::gauge!("raftq_pg_relay_active").set(1.0);
        self.note(RelayEvent::Active);
        self.forward(&mut pg, &mut wake, stop).await
    }

    /// Waits for a notification, the poll interval or the stop; false on the stop.
    async fn wait(&self, wake: &mut mpsc::Receiver<()>, stop: &mut watch::Receiver<bool>) -> bool {
        tokio::select! {
            _ = wake.recv() => {}
            _ = tokio::time::sleep(self.config.poll_interval) => {}
            _ = stop.changed() => {}
        }
        !*stop.borrow()
    }

    /// The active relay's loop.
    async fn forward(
        &self,
        pg: &mut tokio_postgres::Client,
        wake: &mut mpsc::Receiver<()>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut producer = self.producer(pg).await?;
        let mut backoff = Backoff::new(self.config.max_backoff);
        let mut loaded = self.recorded_batch(pg).await?;
        while !*stop.borrow() {
            let Some(current) = loaded.take() else {
                loaded = self.choose(pg, producer, None).await?;
                if loaded.is_none() && !self.wait(wake, stop).await {
                    return Ok(());
                }
                continue;
            };
            let request = pb::SendBatchRequest {
                queue: current.batch.queue.clone(),
                messages: current.messages.clone(),
                producer: Some(pb::ProducerSequence {
                    producer_id: producer as u64,
                    sequence: current.batch.sequence as u64,
                }),
            };
            let result = self.raftq.send_batch_request(request).await;
            let reason = result.as_ref().err().and_then(ClientError::reason);
            match (&result, reason) {
                (Ok(_), _) | (Err(_), Some(raftq_proto::wire::REASON_SEQUENCE_APPLIED)) => {
                    let count = current.batch.ids.len();
                    self.note(RelayEvent::Stored { count });
                    loaded = self.choose(pg, producer, Some(&current.batch)).await?;
                    self.note(RelayEvent::Recorded { count });
                    let total = self.forwarded.fetch_add(count as u64, Ordering::Relaxed);
                    self.status.send_modify(|status| {
                        status.forwarded = total + count as u64;
                        status.stuck = None;
                    });
                    metrics::counter!("raftq_pg_relay_forwarded_total").increment(count as u64);
                    backoff.reset();
                }
                (Err(error), Some(raftq_proto::wire::REASON_PRODUCER_EXPIRED)) => {
                    // raftq forgot the producer (idle past its expiry) while this batch's
                    // outcome was unknown: it goes again under a new producer; its
                    // messages' idempotency keys drop it if raftq stored it within the
                    // queue's dedup window.
                    tracing::warn!(%error, "raftq-pg relay: producer expired; registering a new one");
                    producer = self.register().await?;
                    loaded = self.renumber(pg, producer, current).await?;
                }
                (Err(error), Some(raftq_proto::wire::REASON_SEQUENCE_GAP)) => {
                    return Err(Error::OutOfStep(format!(
                        "raftq and the relay's table {} disagree on the next number of \
                         producer {producer} on queue {}: {error}",
                        self.config.schema.sequences(),
                        current.batch.queue
                    )));
                }
                (Err(error), _) if error.is_refused_for_good() => {
                    loaded = self.refused(pg, producer, current, error).await?;
                }
                (Err(error), _) => {
                    self.set_stuck(Some(error.to_string()));
                    loaded = Some(current);
                    backoff.wait(stop).await;
                }
            }
        }
        Ok(())
    }

    /// The producer the relay forwards as: the recorded one, or a new one registered now.
    async fn producer(&self, pg: &mut tokio_postgres::Client) -> Result<i64, Error> {
        let recorded: i64 = pg
            .query_one(
                &format!(
                    "SELECT producer_id FROM {} WHERE id = 1",
                    self.config.schema.relay()
                ),
                &[],
            )
            .await?
            .get(0);
        if recorded != 0 {
            return Ok(recorded);
        }
        let id = self.register().await?;
        pg.execute(
            &format!(
                "UPDATE {} SET producer_id = $1, updated_at = now() WHERE id = 1",
                self.config.schema.relay()
            ),
            &[&id],
        )
        .await?;
        Ok(id)
    }

    /// Registers a new producer with raftq (recorded by the caller, with its batch).
    async fn register(&self) -> Result<i64, Error> {
        let registered = self
            .raftq
            .register_producer(&self.config.producer_name, None)
            .await?;
        let id = registered.producer_id as i64;
        tracing::info!(producer = id, "raftq-pg relay: producer registered");
        Ok(id)
    }

    /// The batch recorded as being forwarded, with its rows.
    async fn recorded_batch(
        &self,
        pg: &mut tokio_postgres::Client,
    ) -> Result<Option<Loaded>, Error> {
        let row = pg
            .query_one(
                &format!(
                    "SELECT batch_queue, batch_sequence, batch_ids FROM {} WHERE id = 1",
                    self.config.schema.relay()
                ),
                &[],
            )
            .await?;
        let (Some(queue), Some(sequence), Some(ids)) = (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<i64>>(1),
            row.get::<_, Option<Vec<i64>>>(2),
        ) else {
            return Ok(None);
        };
        let rows = pg
            .query(
                &format!(
                    "SELECT id, message FROM {} WHERE id = ANY($1) ORDER BY id",
                    self.config.schema.outbox()
                ),
                &[&ids],
            )
            .await?;
        if rows.len() != ids.len() {
            return Err(Error::OutOfStep(format!(
                "{} of the {} rows of the batch being forwarded (ids {:?}..) are gone from {}: \
                 were they deleted by hand?",
                ids.len() - rows.len(),
                ids.len(),
                ids.first(),
                self.config.schema.outbox()
            )));
        }
        let messages = decode(&rows)?;
        Ok(Some(Loaded {
            batch: Batch {
                queue,
                sequence,
                ids,
            },
            messages,
        }))
    }

    /// In one transaction: records `done` (stored by raftq: its rows deleted, its queue's
    /// number advanced), then chooses, numbers and records the next batch.
    async fn choose(
        &self,
        pg: &mut tokio_postgres::Client,
        producer: i64,
        done: Option<&Batch>,
    ) -> Result<Option<Loaded>, Error> {
        let schema = &self.config.schema;
        let transaction = pg.transaction().await?;
        if let Some(done) = done {
            transaction
                .execute(
                    &format!("DELETE FROM {} WHERE id = ANY($1)", schema.outbox()),
                    &[&done.ids],
                )
                .await?;
            let next = done.sequence + done.ids.len() as i64;
            transaction
                .execute(
                    &format!(
                        "INSERT INTO {} (producer_id, queue, next) VALUES ($1, $2, $3)
                         ON CONFLICT (producer_id, queue) DO UPDATE SET next = excluded.next",
                        schema.sequences()
                    ),
                    &[&producer, &done.queue, &next],
                )
                .await?;
        }
        let limit = self.config.batch_messages as i64;
        let rows = transaction
            .query(
                &format!(
                    "SELECT id, message, queue FROM {outbox}
                     WHERE failed_at IS NULL AND queue = (
                         SELECT queue FROM {outbox} WHERE failed_at IS NULL ORDER BY id LIMIT 1)
                     ORDER BY id LIMIT $1",
                    outbox = schema.outbox()
                ),
                &[&limit],
            )
            .await?;
        let loaded = match rows.first() {
            None => None,
            Some(first) => {
                let queue: String = first.get(2);
                let sequence = next_sequence(&transaction, schema, producer, &queue).await?;
                let ids: Vec<i64> = rows.iter().map(|row| row.get(0)).collect();
                Some(Loaded {
                    messages: decode(&rows)?,
                    batch: Batch {
                        queue,
                        sequence,
                        ids,
                    },
                })
            }
        };
        record_batch(
            &transaction,
            schema,
            producer,
            loaded.as_ref().map(|l| &l.batch),
        )
        .await?;
        transaction.commit().await?;
        Ok(loaded)
    }

    /// Numbers `loaded` again for a new producer, and records it.
    async fn renumber(
        &self,
        pg: &mut tokio_postgres::Client,
        producer: i64,
        mut loaded: Loaded,
    ) -> Result<Option<Loaded>, Error> {
        let schema = &self.config.schema;
        let transaction = pg.transaction().await?;
        loaded.batch.sequence =
            next_sequence(&transaction, schema, producer, &loaded.batch.queue).await?;
        record_batch(&transaction, schema, producer, Some(&loaded.batch)).await?;
        transaction.commit().await?;
        Ok(Some(loaded))
    }

    /// raftq refused `loaded` for good: nothing was stored and its numbers are free again.
    /// A batch of several rows is tried one row at a time to find the cause; a single row
    /// is set aside with raftq's answer.
    async fn refused(
        &self,
        pg: &mut tokio_postgres::Client,
        producer: i64,
        mut loaded: Loaded,
        error: &ClientError,
    ) -> Result<Option<Loaded>, Error> {
        let schema = &self.config.schema;
        if loaded.batch.ids.len() > 1 {
            loaded.batch.ids.truncate(1);
            loaded.messages.truncate(1);
            let transaction = pg.transaction().await?;
            record_batch(&transaction, schema, producer, Some(&loaded.batch)).await?;
            transaction.commit().await?;
            return Ok(Some(loaded));
        }
        tracing::warn!(id = loaded.batch.ids[0], queue = %loaded.batch.queue, %error,
            "raftq-pg relay: a row was refused for good and set aside");
        {
            let transaction = pg.transaction().await?;
            transaction
                .execute(
                    &format!(
                        "UPDATE {} SET failed_at = now(), failure = $2 WHERE id = ANY($1)",
                        schema.outbox()
                    ),
                    &[&loaded.batch.ids, &error.to_string()],
                )
                .await?;
            record_batch(&transaction, schema, producer, None).await?;
            transaction.commit().await?;
        }
        self.status.send_modify(|status| status.failed += 1);
        metrics::counter!("raftq_pg_relay_failed_total").increment(1);
        self.choose(pg, producer, None).await
    }
}

async fn next_sequence(
    transaction: &tokio_postgres::Transaction<'_>,
    schema: &Schema,
    producer: i64,
    queue: &str,
) -> Result<i64, Error> {
    let row = transaction
        .query_opt(
            &format!(
                "SELECT next FROM {} WHERE producer_id = $1 AND queue = $2",
                schema.sequences()
            ),
            &[&producer, &queue],
        )
        .await?;
    Ok(row.map_or(1, |row| row.get(0)))
}

/// Records the batch being forwarded (none) and the producer whose numbers it carries.
async fn record_batch(
    transaction: &tokio_postgres::Transaction<'_>,
    schema: &Schema,
    producer: i64,
    batch: Option<&Batch>,
) -> Result<(), Error> {
    transaction
        .execute(
            &format!(
                "UPDATE {} SET batch_queue = $1, batch_sequence = $2, batch_ids = $3,
                 producer_id = $4, updated_at = now() WHERE id = 1",
                schema.relay()
            ),
            &[
                &batch.map(|b| b.queue.as_str()),
                &batch.map(|b| b.sequence),
                &batch.map(|b| b.ids.as_slice()),
                &producer,
            ],
        )
        .await?;
    Ok(())
}

/// The messages of outbox rows (`id`, `message`, ...).
fn decode(rows: &[tokio_postgres::Row]) -> Result<Vec<pb::OutgoingMessage>, Error> {
    rows.iter()
        .map(|row| {
            let bytes: &[u8] = row.get(1);
            pb::OutgoingMessage::decode(bytes).map_err(|error| {
                Error::InvalidMessage(format!(
                    "outbox row {} does not hold a message: {error}",
                    row.get::<_, i64>(0)
                ))
            })
        })
        .collect()
}

/// Pauses that double from 100 ms up to a bound, and start again after a success.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(100),
            max,
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    async fn wait(&mut self, stop: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = tokio::time::sleep(self.next) => {}
            _ = stop.changed() => {}
        }
        self.next = (self.next * 2).min(self.max);
    }
}
