//! The inbox: an idempotent consumer. Each message is handled inside a PostgreSQL
//! transaction that also records its id in the inbox table; the transaction commits, then
//! the message is acknowledged. A message delivered again after a crash between the two is
//! recognised by its row and only acknowledged, so its effects happen once.
//!
//! Messages are taken in batches and handled in one transaction per batch (one commit per
//! batch, [`Handler::handle_batch`]); the batch's acknowledgements go with the next
//! receive. When a handler fails,
//! the batch is rolled back and handled again one message per transaction, and the
//! messages whose handler fails are released again (`nack`) after `retry_delay`.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use raftq_client::{Client, pb};
use tokio::sync::watch;
use tokio_postgres::Transaction;

use crate::connect::{DatabaseTls, connect};
use crate::schema::Schema;
use crate::{Error, SCHEMA_VERSION};

/// What a handler's failure carries.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

/// The application's work for one message, done in `transaction` (its database updates,
/// and any [`crate::enqueue`] of messages to send): committed with the inbox's row, or not
/// at all. Return an error to roll the message's work back and have it delivered again.
pub trait Handler: Send {
    fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// The work for several messages at once (those of a batch not handled before, in
    /// delivery order), in one transaction. By default `handle` for each in turn; a
    /// handler may do the batch's work in fewer statements (one multi-row insert, say),
    /// which is where a consumer's throughput comes from. An error rolls the batch back,
    /// and its messages are then handled one by one with `handle`.
    fn handle_batch(
        &mut self,
        transaction: &Transaction<'_>,
        messages: &[&pb::ReceivedMessage],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send {
        async move {
            for message in messages {
                self.handle(transaction, message).await?;
            }
            Ok(())
        }
    }
}

/// How an inbox consumer runs.
#[derive(Debug, Clone)]
pub struct InboxConfig {
    pub schema: Schema,
    /// The queue it consumes.
    pub queue: String,
    /// Most messages taken, handled and committed together: 1 to 1,000.
    pub batch_messages: u32,
    /// How long a receive waits for a message when none is ready (at most 20 s).
    pub wait: Duration,
    /// The lease of each delivery (`None`: the queue's default); a batch must be handled
    /// and committed within it, or its messages are delivered again (and then only
    /// acknowledged, once the first delivery's transaction has committed).
    pub lease: Option<Duration>,
    /// After a handler fails, when its message is delivered again.
    pub retry_delay: Duration,
    /// Inbox rows whose acknowledgement raftq confirmed longer ago than this are removed
    /// (checked every 10 minutes); `None` keeps them.
    pub prune_after: Option<Duration>,
    /// How the consumer reaches PostgreSQL.
    pub tls: DatabaseTls,
}

impl InboxConfig {
    pub fn new(queue: &str) -> InboxConfig {
        InboxConfig {
            schema: Schema::default(),
            queue: queue.to_string(),
            batch_messages: 100,
            wait: Duration::from_secs(1),
            lease: None,
            retry_delay: Duration::from_secs(1),
            prune_after: Some(Duration::from_secs(3_600)),
            tls: DatabaseTls::Plaintext,
        }
    }
}

/// A step the consumer took, reported to the observer given with [`Inbox::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxEvent {
    /// A transaction committed: `handled` messages' work and inbox rows; their
    /// acknowledgements are not yet sent.
    Committed { handled: usize },
    /// Messages delivered again whose work had already committed: only acknowledged.
    Duplicates { count: usize },
}

/// Counts since the consumer started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxStatus {
    pub handled: u64,
    pub duplicates: u64,
    /// Handler failures (each message released to be delivered again).
    pub failed: u64,
}

type Observer = Arc<dyn Fn(InboxEvent) + Send + Sync>;

/// An idempotent consumer of one queue, with its own PostgreSQL connection.
pub struct Inbox {
    pg: tokio_postgres::Client,
    raftq: Client,
    config: InboxConfig,
    observer: Option<Observer>,
    status: watch::Sender<InboxStatus>,
    /// Receipts to acknowledge with the next receive.
    to_ack: Vec<String>,
    /// Message ids whose acknowledgement raftq confirmed, to mark in the next transaction.
    confirmed: Vec<i64>,
}

/// A message ready to be handled: its id, and whether its inbox row is new.
type Taken<'m> = (&'m pb::ReceivedMessage, bool);

impl Inbox {
    /// Connects to the database at `database_url` and checks the tables are there.
    pub async fn connect(
        database_url: &str,
        raftq: Client,
        config: InboxConfig,
    ) -> Result<Inbox, Error> {
        if !(1..=1_000).contains(&config.batch_messages) {
            return Err(Error::InvalidMessage(format!(
                "batch_messages is {}; it must be 1 to 1,000",
                config.batch_messages
            )));
        }
        let (pg, _) = connect(database_url, &config.tls).await?;
        let version = config.schema.version(&pg).await?;
        if version < SCHEMA_VERSION {
            return Err(Error::SchemaVersion {
                found: version,
                needed: SCHEMA_VERSION,
            });
        }
        Ok(Inbox {
            pg,
            raftq,
            config,
            observer: None,
            status: watch::Sender::new(InboxStatus::default()),
            to_ack: Vec::new(),
            confirmed: Vec::new(),
        })
    }

    /// Calls `observer` at each step (see [`InboxEvent`]), on the consumer's task.
    pub fn observe(&mut self, observer: impl Fn(InboxEvent) + Send + Sync + 'static) {
        self.observer = Some(Arc::new(observer));
    }

    pub fn status(&self) -> watch::Receiver<InboxStatus> {
        self.status.subscribe()
    }

    fn note(&self, event: InboxEvent) {
        if let Some(observer) = &self.observer {
            observer(event);
        }
    }

    /// Consumes until `stop` turns true, then acknowledges what it handled. Errors from
    /// raftq (unreachable, electing) are retried; an error from PostgreSQL ends the run
    /// (what was committed is acknowledged by whichever consumer gets it next).
    pub async fn run<H: Handler>(
        &mut self,
        handler: &mut H,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let mut pause = Duration::from_millis(100);
        let mut pruned = tokio::time::Instant::now();
        while !*stop.borrow() {
            match self.step(handler).await {
                Ok(_) => pause = Duration::from_millis(100),
                Err(Error::Raftq(error)) => {
                    tracing::warn!(%error, queue = %self.config.queue, "raftq-pg inbox: raftq unavailable");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stop.changed() => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                Err(error) => return Err(error),
            }
            if let Some(after) = self.config.prune_after
                && pruned.elapsed() > Duration::from_secs(600)
            {
                pruned = tokio::time::Instant::now();
                self.prune(after).await?;
            }
        }
        self.flush().await
    }

    /// Sends the acknowledgements still owed, and records those raftq confirmed.
    pub async fn flush(&mut self) -> Result<(), Error> {
        if !self.to_ack.is_empty() {
            let receipts = std::mem::take(&mut self.to_ack);
            let results = self.raftq.ack_batch(&self.config.queue, &receipts).await?;
            self.confirm(&receipts, &results);
        }
        if !self.confirmed.is_empty() {
            let confirmed = std::mem::take(&mut self.confirmed);
            self.pg
                .execute(&self.mark_acked_sql(), &[&self.config.queue, &confirmed])
                .await?;
        }
        Ok(())
    }

    fn mark_acked_sql(&self) -> String {
        format!(
            "UPDATE {} SET acked_at = now()
             WHERE queue = $1 AND message_id = ANY($2) AND acked_at IS NULL",
            self.config.schema.inbox()
        )
    }

    /// Notes the message ids of acknowledgements raftq confirmed (`code` 0).
    fn confirm(&mut self, receipts: &[String], results: &[pb::AckResult]) {
        for (receipt, result) in receipts.iter().zip(results) {
            if result.code == 0
                && let Some(id) = receipt
                    .split_once(':')
                    .and_then(|(id, _)| id.parse::<i64>().ok())
            {
                self.confirmed.push(id);
            }
        }
    }

    /// One batch: acknowledge the last one and receive, handle and commit, queue the
    /// acknowledgements. Returns how many messages were received.
    pub async fn step<H: Handler>(&mut self, handler: &mut H) -> Result<usize, Error> {
        let receipts = std::mem::take(&mut self.to_ack);
        let response = match self
            .raftq
            .ack_and_receive(
                &self.config.queue,
                &receipts,
                self.config.batch_messages,
                self.config.wait,
                self.config.lease,
            )
            .await
        {
            Ok(response) => response,
            Err(error) => {
                // Acks are safe to send again.
                self.to_ack = receipts;
                return Err(error.into());
            }
        };
        self.confirm(&receipts, &response.ack_results);
        let messages = response.messages;
        if messages.is_empty() {
            if !self.confirmed.is_empty() {
                let confirmed = std::mem::take(&mut self.confirmed);
                self.pg
                    .execute(&self.mark_acked_sql(), &[&self.config.queue, &confirmed])
                    .await?;
            }
            return Ok(0);
        }
        if !self.handle_batch(handler, &messages).await? {
            self.handle_one_by_one(handler, &messages).await?;
        }
        Ok(messages.len())
    }

    /// Handles `messages` in one transaction; false (nothing committed) when a handler
    /// failed.
    async fn handle_batch<H: Handler>(
        &mut self,
        handler: &mut H,
        messages: &[pb::ReceivedMessage],
    ) -> Result<bool, Error> {
        let confirmed = std::mem::take(&mut self.confirmed);
        let mark_acked = self.mark_acked_sql();
        let transaction = self.pg.transaction().await?;
        if !confirmed.is_empty() {
            transaction
                .execute(&mark_acked, &[&self.config.queue, &confirmed])
                .await?;
        }
        let taken = take(&transaction, &self.config, messages).await?;
        let new: Vec<&pb::ReceivedMessage> = taken
            .iter()
            .filter(|(_, new)| *new)
            .map(|(message, _)| *message)
            .collect();
        let handled = new.len();
        if !new.is_empty()
            && let Err(error) = handler.handle_batch(&transaction, &new).await
        {
            tracing::debug!(%error, "raftq-pg inbox: a handler failed; handling the batch one by one");
            transaction.rollback().await?;
            self.confirmed = confirmed;
            return Ok(false);
        }
        transaction.commit().await?;
        self.after_commit(&taken, handled);
        Ok(true)
    }

    /// Handles `messages` one per transaction, releasing those whose handler fails.
    async fn handle_one_by_one<H: Handler>(
        &mut self,
        handler: &mut H,
        messages: &[pb::ReceivedMessage],
    ) -> Result<(), Error> {
        for message in messages {
            let transaction = self.pg.transaction().await?;
            let taken = take(&transaction, &self.config, std::slice::from_ref(message)).await?;
            let new = taken[0].1;
            if new && let Err(error) = handler.handle(&transaction, message).await {
                transaction.rollback().await?;
                tracing::warn!(%error, message = message.message_id, queue = %self.config.queue,
                    "raftq-pg inbox: the handler failed; the message is delivered again later");
                self.status.send_modify(|status| status.failed += 1);
                metrics::counter!("raftq_pg_inbox_failed_total").increment(1);
                // Nothing of it committed: released, it comes again after the delay.
                if let Err(error) = self
                    .raftq
                    .nack(
                        &self.config.queue,
                        &message.receipt,
                        self.config.retry_delay,
                    )
                    .await
                {
                    tracing::debug!(%error, "raftq-pg inbox: release failed; the lease runs out instead");
                }
                continue;
            }
            transaction.commit().await?;
            self.after_commit(&taken, usize::from(new));
        }
        Ok(())
    }

    fn after_commit(&mut self, taken: &[Taken<'_>], handled: usize) {
        let duplicates = taken.len() - handled;
        self.note(InboxEvent::Committed { handled });
        if duplicates > 0 {
            self.note(InboxEvent::Duplicates { count: duplicates });
        }
        self.to_ack
            .extend(taken.iter().map(|(message, _)| message.receipt.clone()));
        self.status.send_modify(|status| {
            status.handled += handled as u64;
            status.duplicates += duplicates as u64;
        });
        metrics::counter!("raftq_pg_inbox_handled_total").increment(handled as u64);
        metrics::counter!("raftq_pg_inbox_duplicates_total").increment(duplicates as u64);
    }

    /// Removes the inbox rows of this queue whose acknowledgement raftq confirmed more
    /// than `older_than` ago (at most 10,000 per call); how many.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, Error> {
        let inbox = self.config.schema.inbox();
        let seconds = older_than.as_secs_f64();
        let removed = self
            .pg
            .execute(
                &format!(
                    "DELETE FROM {inbox} WHERE ctid IN (
                         SELECT ctid FROM {inbox}
                         WHERE queue = $1 AND acked_at < now() - make_interval(secs => $2)
                         LIMIT 10000)"
                ),
                &[&self.config.queue, &seconds],
            )
            .await?;
        Ok(removed)
    }
}

/// Inserts the inbox rows of `messages` in `transaction`; each message with whether its row
/// is new (false: its work committed before, it only needs acknowledging).
async fn take<'m>(
    transaction: &Transaction<'_>,
    config: &InboxConfig,
    messages: &'m [pb::ReceivedMessage],
) -> Result<Vec<Taken<'m>>, Error> {
    let ids: Vec<i64> = messages.iter().map(|m| m.message_id as i64).collect();
    let inserted = transaction
        .query(
            &format!(
                "INSERT INTO {} (queue, message_id) SELECT $1, unnest($2::bigint[])
                 ON CONFLICT (queue, message_id) DO NOTHING RETURNING message_id",
                config.schema.inbox()
            ),
            &[&config.queue, &ids],
        )
        .await?;
    let new: HashSet<i64> = inserted.iter().map(|row| row.get(0)).collect();
    Ok(messages
        .iter()
        .map(|message| (message, new.contains(&(message.message_id as i64))))
        .collect())
}
