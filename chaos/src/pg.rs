//! The PostgreSQL part of the workload (`--pg-producers N`): a real PostgreSQL server, producers
//! ("d*") that write each value into the outbox in a transaction of their own, two `raftq
//! pg-relay` processes (one active, one on standby) forwarding it to the queue `chaos-pg`, and
//! inbox consumers ("i*") whose handler inserts each value into the table `chaos_effects`
//! in the transaction that records the message in the inbox.
//!
//! The history gets a send per producer transaction (ok when its commit answered, unknown
//! when the commit's answer was lost), a receive per message a handler took, and, after the
//! drain, an ack per row of `chaos_effects` (process "db", at the time the row was
//! written): the checker then counts a value lost when its committed send has no row, a
//! duplicate when it has two, a phantom when a row has no send.
//!
//! Faults: `kill-relay` kills the active relay with -9 (the standby takes over) and starts
//! it again after the hold; `crash-inbox` drops an inbox consumer wherever it is (its
//! connection closes, an open transaction rolls back, acknowledgements owed are never
//! sent) and starts a new one after the hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftq_client::{Client, Message, pb};
use raftq_pg::tokio_postgres::Transaction;
use raftq_pg::{Handler, HandlerError, Inbox, InboxConfig, Schema, enqueue};
use raftq_tests::postgres::{Postgres, RelayProcess};

use crate::history::{Delivered, Op, Outcome};
use crate::recorder::Recorder;

/// The queue the outbox forwards to.
pub const PG_QUEUE: &str = "chaos-pg";

/// Inserts the batch's values into `chaos_effects` with the time they were handled, and
/// records a receive of each.
struct Effects {
    recorder: Recorder,
    name: String,
    /// When the current step's receive was asked for: where a receive's span begins.
    step_started: u64,
}

impl Handler for Effects {
    async fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> Result<(), HandlerError> {
        self.handle_batch(transaction, &[message]).await
    }

    async fn handle_batch(
        &mut self,
        transaction: &Transaction<'_>,
        messages: &[&pb::ReceivedMessage],
    ) -> Result<(), HandlerError> {
        let delivered: Vec<Delivered> = messages.iter().map(|m| Delivered::from(*m)).collect();
        let values: Vec<&str> = delivered.iter().map(|d| d.value.as_str()).collect();
        self.recorder.record(
            &self.name,
            Op::Receive {
                delivered: delivered.clone(),
            },
            self.step_started,
            Outcome::Ok,
            String::new(),
        );
        let now = self.recorder.now_ms();
        transaction
            .execute(
                "INSERT INTO chaos_effects (value, at_ms) SELECT unnest($1::text[]), $2",
                &[&values, &(now as i64)],
            )
            .await?;
        Ok(())
    }
}

/// An inbox consumer until `stop`: on any error it starts again with a new connection.
async fn consume(
    client: Client,
    database_url: String,
    recorder: Recorder,
    name: String,
    stop: Arc<AtomicBool>,
) {
    let mut handler = Effects {
        recorder: recorder.clone(),
        name: name.clone(),
        step_started: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        let config = InboxConfig {
            batch_messages: 50,
            wait: Duration::from_millis(300),
            lease: Some(Duration::from_secs(5)),
            retry_delay: Duration::from_millis(200),
            prune_after: None,
            ..InboxConfig::new(PG_QUEUE)
        };
        let mut inbox = match Inbox::connect(&database_url, client.clone(), config).await {
            Ok(inbox) => inbox,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while !stop.load(Ordering::Relaxed) {
            handler.step_started = recorder.now_ms();
            match inbox.step(&mut handler).await {
                Ok(_) => {}
                Err(raftq_pg::Error::Raftq(_)) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(_) => break,
            }
        }
        let _ = inbox.flush().await;
    }
}

/// Writes `value` into the outbox in a transaction of its own: ok when the commit
/// answered, unknown when its answer was lost (it may or may not have committed).
async fn write(
    db: &mut raftq_pg::tokio_postgres::Client,
    schema: &Schema,
    value: &str,
) -> (Outcome, String) {
    let transaction = match db.transaction().await {
        Ok(transaction) => transaction,
        Err(error) => return (Outcome::Failed, error.to_string()),
    };
    if let Err(error) = enqueue(
        &transaction,
        schema,
        PG_QUEUE,
        Message::new(value.to_string()),
    )
    .await
    {
        return (Outcome::Failed, error.to_string());
    }
    match transaction.commit().await {
        Ok(()) => (Outcome::Ok, String::new()),
        Err(error) if error.is_closed() => (Outcome::Unknown, error.to_string()),
        Err(error) => (Outcome::Failed, error.to_string()),
    }
}

/// Writes `name-0000000`, `name-0000001`, ... into the outbox, one transaction each.
async fn produce(database_url: String, recorder: Recorder, name: String, stop: Arc<AtomicBool>) {
    let schema = Schema::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok((mut db, connection)) =
            raftq_pg::tokio_postgres::connect(&database_url, raftq_pg::tokio_postgres::NoTls).await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tokio::spawn(connection);
        while !stop.load(Ordering::Relaxed) {
            let value = format!("{name}-{n:07}");
            n += 1;
            let start = recorder.now_ms();
            let (outcome, error) = write(&mut db, &schema, &value).await;
            let broken = outcome != Outcome::Ok && db.is_closed();
            recorder.record(&name, Op::Send { value }, start, outcome, error);
            if broken {
                break;
            }
            // A transaction commits at disk speed; keep its share of the load a producer's.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// The PostgreSQL server, the relays and the inbox consumers of a run.
pub struct PgWorkload {
    // Fields drop in order: the processes first, then the server.
    relays: Vec<RelayProcess>,
    consumers: Vec<Option<tokio::task::JoinHandle<()>>>,
    consumer_stop: Arc<AtomicBool>,
    client: Client,
    recorder: Recorder,
    pg: Postgres,
}

impl PgWorkload {
    /// Starts PostgreSQL with the tables, the relays and `consumers` inbox consumers, and
    /// returns the producers' tasks (`producers` of them) beside it.
    pub async fn start(
        nodes: Vec<String>,
        client: Client,
        recorder: Recorder,
        producers: usize,
        consumers: usize,
        stop_producers: Arc<AtomicBool>,
        stop_consumers: Arc<AtomicBool>,
    ) -> anyhow::Result<(PgWorkload, Vec<tokio::task::JoinHandle<()>>)> {
        let pg = Postgres::start().await;
        let mut db = pg.connect().await;
        Schema::default().migrate(&mut db).await?;
        db.batch_execute(
            "CREATE TABLE chaos_effects (id bigserial PRIMARY KEY, value text NOT NULL, at_ms bigint NOT NULL)",
        )
        .await?;
        match client
            .create_queue(
                PG_QUEUE,
                pb::QueueOptions {
                    default_lease_ms: 5_000,
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => {}
            Err(error) if error.code() == Some(raftq_client::Code::AlreadyExists) => {}
            Err(error) => return Err(error.into()),
        }
        let url = pg.url();
        let relays = vec![
            RelayProcess::start(&url, &nodes, false),
            RelayProcess::start(&url, &nodes, false),
        ];
        let mut workload = PgWorkload {
            relays,
            consumers: Vec::new(),
            consumer_stop: stop_consumers,
            client,
            recorder: recorder.clone(),
            pg,
        };
        for i in 0..consumers {
            workload.consumers.push(Some(workload.spawn_consumer(i)));
        }
        let tasks = (0..producers)
            .map(|i| {
                tokio::spawn(produce(
                    url.clone(),
                    recorder.clone(),
                    format!("d{i}"),
                    stop_producers.clone(),
                ))
            })
            .collect();
        Ok((workload, tasks))
    }

    fn spawn_consumer(&self, index: usize) -> tokio::task::JoinHandle<()> {
        tokio::spawn(consume(
            self.client.clone(),
            self.pg.url(),
            self.recorder.clone(),
            format!("i{index}"),
            self.consumer_stop.clone(),
        ))
    }

    /// Kills the active relay with -9, waits `hold`, starts it again (as the standby).
    pub async fn kill_relay(&mut self, hold: Duration) -> anyhow::Result<String> {
        let mut active = None;
        for (index, relay) in self.relays.iter().enumerate() {
            if relay.active().await == Some(true) {
                active = Some(index);
            }
        }
        let index = active.unwrap_or(0);
        self.relays[index].kill();
        tokio::time::sleep(hold).await;
        self.relays[index].restart();
        Ok(format!(
            "relay {index} ({}) killed",
            if active.is_some() {
                "active"
            } else {
                "none was active"
            }
        ))
    }

    /// Drops consumer `pick % consumers` wherever it is, waits `hold`, starts a new one.
    pub async fn crash_consumer(&mut self, pick: u64, hold: Duration) -> String {
        if self.consumers.is_empty() {
            return "no inbox consumer".to_string();
        }
        let index = (pick % self.consumers.len() as u64) as usize;
        if let Some(task) = self.consumers[index].take() {
            task.abort();
            let _ = task.await;
        }
        tokio::time::sleep(hold).await;
        self.consumers[index] = Some(self.spawn_consumer(index));
        format!("inbox consumer i{index} dropped mid-flight; started again")
    }

    /// Waits until the outbox holds nothing (at most `limit`); whether it emptied.
    pub async fn flush(&self, limit: Duration) -> bool {
        let db = self.pg.connect().await;
        let end = tokio::time::Instant::now() + limit;
        let mut last = None;
        while tokio::time::Instant::now() < end {
            last = raftq_pg::outbox_status(&db, &Schema::default()).await.ok();
            if last.as_ref().is_some_and(|status| status.waiting == 0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("raftq-chaos: the PostgreSQL outbox was not forwarded: {last:?}");
        false
    }

    /// Once the consumers have stopped: every effect row, recorded as an ack at the time it
    /// was written.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        for task in self.consumers.iter_mut().filter_map(Option::take) {
            let _ = task.await;
        }
        let db = self.pg.connect().await;
        let rows = db
            .query("SELECT value, at_ms FROM chaos_effects ORDER BY id", &[])
            .await?;
        for row in rows {
            let at = row.get::<_, i64>(1) as u64;
            self.recorder.record_at(
                "db",
                Op::Ack { value: row.get(0) },
                at,
                at,
                Outcome::Ok,
                String::new(),
            );
        }
        Ok(())
    }
}
