//! `Outbox`: sending while the cluster is unreachable. A send is written to a local file
//! (synced) and answered at once, with its `sent_at_ms` fixed then; a forwarder takes the
//! messages to the cluster in local order, in batches, as numbered sends of the outbox's
//! own producer, whenever the cluster answers, so each is stored exactly once however
//! long the outage and whatever crashes on the way. What the cluster refuses for good
//! (an unknown queue, an invalid message, no permission) becomes a local dead letter the
//! application can list and send again.

mod forward;
mod store;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, oneshot, watch};

use crate::client::{Client, Message};
use store::{Record, Store};

/// Where the outbox keeps its file, and its bounds.
#[derive(Debug, Clone)]
pub struct OutboxConfig {
    /// The outbox's file (created when missing).
    pub path: PathBuf,
    /// The name the outbox's producer registers with.
    pub name: String,
    /// Most messages waiting at once; a send past it is refused with `Full`.
    pub max_messages: u64,
    /// Most bytes (encoded messages) waiting at once.
    pub max_bytes: u64,
    /// Most messages one forwarded batch carries.
    pub batch_messages: usize,
}

impl OutboxConfig {
    pub fn new(path: impl Into<PathBuf>, name: impl Into<String>) -> OutboxConfig {
        OutboxConfig {
            path: path.into(),
            name: name.into(),
            max_messages: 1_000_000,
            max_bytes: 1024 * 1024 * 1024,
            batch_messages: 500,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "the outbox is full: {messages} messages and {bytes} bytes wait, at most \
         {max_messages} and {max_bytes}"
    )]
    Full {
        messages: u64,
        bytes: u64,
        max_messages: u64,
        max_bytes: u64,
    },
    #[error("invalid send: {0}")]
    Invalid(String),
    #[error("the outbox's file: {0}")]
    Store(String),
    #[error("the outbox is closed")]
    Closed,
}

/// A message the outbox holds: its local id (the order it goes in) and when it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub local_id: u64,
    pub sent_at_ms: u64,
}

/// What the outbox holds and how forwarding goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Messages waiting to be forwarded, and their bytes.
    pub pending: u64,
    pub pending_bytes: u64,
    /// Of those, the messages of the batch being forwarded now.
    pub in_flight: u64,
    /// How long the oldest waiting message has waited.
    pub oldest_age: Option<Duration>,
    pub dead_letters: u64,
    /// Messages forwarded since the outbox was opened.
    pub forwarded: u64,
    /// Why forwarding is held up, when it is (the cluster's last answer).
    pub stuck: Option<String>,
}

/// A message the cluster refused for good.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub local_id: u64,
    pub queue: String,
    pub message: crate::pb::OutgoingMessage,
    /// The cluster's answer.
    pub reason: String,
    pub failed_at_ms: u64,
}

struct Append {
    records: Vec<Record>,
    answer: oneshot::Sender<Result<u64, OutboxError>>,
}

pub(crate) struct Inner {
    client: Client,
    config: OutboxConfig,
    store: Arc<Store>,
    wake: Notify,
    /// Messages forwarded since the outbox opened. Changed together with the store
    /// (under this lock, in the same blocking task as the store's change) and read
    /// together with it, so that a status never shows a message as neither pending nor
    /// forwarded.
    forwarded: Arc<Mutex<u64>>,
    stuck: Mutex<Option<String>>,
}

impl Inner {
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| OutboxError::Store(error.to_string()))?
    }

    fn note_stuck(&self, why: Option<String>) {
        *self.stuck.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }
}

/// A durable outbox in front of a client. Cloning shares it.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
    appends: mpsc::SyncSender<Append>,
    stop: Arc<watch::Sender<bool>>,
}

/// Appends waiting for the writer at most; a sender waits for room.
const APPEND_QUEUE: usize = 4_096;
/// Appends one sync covers at most.
const GROUP_COMMIT: usize = 256;

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Outbox {
    /// Opens (or creates) the outbox's file and starts forwarding through `client`; what
    /// an earlier run left waiting goes first. Needs a tokio runtime.
    pub fn open(client: Client, config: OutboxConfig) -> Result<Outbox, OutboxError> {
        if config.batch_messages == 0 || config.batch_messages > 1_000 {
            return Err(OutboxError::Invalid(
                "batch_messages must be from 1 to 1,000".into(),
            ));
        }
        let store = Arc::new(Store::open(&config.path)?);
        let inner = Arc::new(Inner {
            client,
            config,
            store,
            wake: Notify::new(),
            forwarded: Arc::default(),
            stuck: Mutex::new(None),
        });
        let (appends, received) = mpsc::sync_channel(APPEND_QUEUE);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("raftq-outbox-writer".into())
            .spawn(move || write_appends(&writer, &received))
            .map_err(|error| OutboxError::Store(error.to_string()))?;
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(forward::run(inner.clone(), stopped));
        Ok(Outbox {
            inner,
            appends,
            stop: Arc::new(stop),
        })
    }

    async fn append(&self, records: Vec<Record>) -> Result<u64, OutboxError> {
        let (answer, answered) = oneshot::channel();
        let appends = self.appends.clone();
        tokio::task::spawn_blocking(move || appends.send(Append { records, answer }))
            .await
            .map_err(|error| OutboxError::Store(error.to_string()))?
            .map_err(|_| OutboxError::Closed)?;
        answered.await.map_err(|_| OutboxError::Closed)?
    }

    /// Stores `message` for `queue` in the outbox's file (synced) and returns: the
    /// message is forwarded when the cluster answers. Its `sent_at_ms` is now unless set.
    pub async fn send(&self, queue: &str, message: Message) -> Result<Queued, OutboxError> {
        self.send_batch(queue, vec![message])
            .await?
            .pop()
            .ok_or(OutboxError::Closed)
    }

    /// Stores up to 1,000 messages for `queue`, all or none, in order.
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<Queued>, OutboxError> {
        let sends = messages
            .into_iter()
            .map(|message| (queue.to_string(), message.into_proto()))
            .collect();
        self.store_sends(sends, false).await
    }

    /// A transaction of sends only (to any queues): stored in the outbox's file now, and
    /// committed as one when forwarded (all stored, or, if the cluster refuses it for
    /// good, none and a dead letter each).
    pub async fn commit(&self, sends: Vec<(String, Message)>) -> Result<Vec<Queued>, OutboxError> {
        let sends = sends
            .into_iter()
            .map(|(queue, message)| (queue, message.into_proto()))
            .collect();
        self.store_sends(sends, true).await
    }

    /// Stores sends as the wire carries them (a proxy's), as `send_batch` (one queue) or
    /// `commit` (`transaction`) would; an empty `sent_at_ms` is set to now.
    pub async fn store_sends(
        &self,
        sends: Vec<(String, crate::pb::OutgoingMessage)>,
        transaction: bool,
    ) -> Result<Vec<Queued>, OutboxError> {
        if sends.is_empty() || sends.len() > 1_000 {
            return Err(OutboxError::Invalid("from 1 to 1,000 messages".into()));
        }
        let now = now_ms();
        let size = sends.len() as u64;
        let mut stamped = Vec::with_capacity(sends.len());
        let mut records = Vec::with_capacity(sends.len());
        for (queue, mut message) in sends {
            if queue.is_empty() {
                return Err(OutboxError::Invalid("a queue name is required".into()));
            }
            if message.sent_at_ms == 0 {
                message.sent_at_ms = now;
            }
            stamped.push(message.sent_at_ms);
            records.push(Record {
                queue,
                message: Some(message),
                unit: 0,
                unit_size: if transaction { size } else { 0 },
                reason: String::new(),
                failed_at_ms: 0,
            });
        }
        let first = self.append(records).await?;
        self.inner.wake.notify_one();
        Ok(stamped
            .into_iter()
            .enumerate()
            .map(|(n, sent_at_ms)| Queued {
                local_id: first + n as u64,
                sent_at_ms,
            })
            .collect())
    }

    pub async fn status(&self) -> Result<OutboxStatus, OutboxError> {
        let forwarded = self.inner.forwarded.clone();
        let (waiting, forwarded) = self
            .inner
            .blocking(move |store| {
                let forwarded = forwarded.lock().unwrap_or_else(|p| p.into_inner());
                Ok((store.waiting()?, *forwarded))
            })
            .await?;
        let oldest_age = waiting
            .oldest_sent_at_ms
            .map(|sent| Duration::from_millis(now_ms().saturating_sub(sent)));
        metrics::gauge!("raftq_outbox_pending_messages").set(waiting.messages as f64);
        metrics::gauge!("raftq_outbox_oldest_age_seconds")
            .set(oldest_age.map_or(0.0, |age| age.as_secs_f64()));
        Ok(OutboxStatus {
            pending: waiting.messages,
            pending_bytes: waiting.bytes,
            in_flight: waiting.in_flight,
            oldest_age,
            dead_letters: waiting.dead_letters,
            forwarded,
            stuck: self
                .inner
                .stuck
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        })
    }

    /// Up to `max` dead letters, oldest first.
    pub async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        let letters = self
            .inner
            .blocking(move |store| store.dead_letters(max))
            .await?;
        Ok(letters
            .into_iter()
            .map(|(local_id, record)| DeadLetter {
                local_id,
                queue: record.queue,
                message: record.message.unwrap_or_default(),
                reason: record.reason,
                failed_at_ms: record.failed_at_ms,
            })
            .collect())
    }

    /// Puts every dead letter back at the end of the waiting messages (each alone, even
    /// if it was part of a transaction); how many.
    pub async fn retry_dead_letters(&self) -> Result<u64, OutboxError> {
        let moved = self
            .inner
            .blocking(|store| store.retry_dead_letters())
            .await?;
        self.inner.wake.notify_one();
        Ok(moved)
    }

    /// Waits until nothing waits (everything forwarded or dead-lettered), at most `limit`;
    /// `false` when time ran out.
    pub async fn flush(&self, limit: Duration) -> Result<bool, OutboxError> {
        let end = tokio::time::Instant::now() + limit;
        loop {
            if self.status().await?.pending == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= end {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops forwarding (what waits stays in the file for the next open).
    pub fn close(&self) {
        let _ = self.stop.send(true);
    }
}

/// The writer thread: takes appends as they come, as many as wait (up to
/// [`GROUP_COMMIT`]) in one synced transaction.
fn write_appends(inner: &Inner, received: &mpsc::Receiver<Append>) {
    while let Ok(first) = received.recv() {
        let mut appends = vec![first];
        while appends.len() < GROUP_COMMIT {
            match received.try_recv() {
                Ok(append) => appends.push(append),
                Err(_) => break,
            }
        }
        let (groups, answers): (Vec<_>, Vec<_>) = appends
            .into_iter()
            .map(|append| (append.records, append.answer))
            .unzip();
        let config = &inner.config;
        match inner
            .store
            .append(groups, config.max_messages, config.max_bytes)
        {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Err(error) => {
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}
