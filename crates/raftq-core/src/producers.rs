//! Producer sessions: exactly once with no time window. A producer registers once and is
//! given an id; every send it makes to a queue carries the next number of its own sequence
//! on that queue (a batch takes one number per message), and every commit it makes the
//! next number of its sequence of transactions. The state keeps, per (producer, stream),
//! the last number applied and the outcome of the last command, so a repeat is answered
//! with the original outcome, an older number is reported as applied before, and a gap (a
//! message the producer sent but the cluster never got) is refused.
//!
//! A producer lives until it has been idle for its idle expiry (chosen when it registers,
//! days by default); then it and its sessions are forgotten, and every later command of
//! it is refused as expired: never a silent duplicate. Ids are never reused, so an id
//! below the next one to give out that has no producer is known to have expired.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome};
use crate::{QueueError, TimeMs};

/// A producer's cluster-unique id, never reused.
pub type ProducerId = u64;

/// What a producer's sequence numbers count: its sends to one queue, or its commits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Stream {
    Queue(String),
    Transactions,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Queue(name) => write!(f, "queue {}", crate::quote(name)),
            Stream::Transactions => f.write_str("its transactions"),
        }
    }
}

/// A registered producer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    /// What the producer calls itself (for operators; not unique).
    pub name: String,
    pub registered_at_ms: TimeMs,
    pub last_active_ms: TimeMs,
    /// Forgotten once idle this long.
    pub idle_expiry_ms: u64,
    /// The streams it has sessions on.
    streams: BTreeSet<Stream>,
}

impl Producer {
    fn expires_at_ms(&self) -> TimeMs {
        self.last_active_ms.saturating_add(self.idle_expiry_ms)
    }
}

/// One producer's place in one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// The last sequence number applied (0: none yet).
    last: u64,
    /// The first sequence number of the last command applied, and its outcome.
    last_first: u64,
    last_outcome: Option<Outcome>,
}

/// Where a sequenced command stands against its producer's session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The next in sequence: apply it, then [`Producers::record`] its outcome.
    Next,
    /// A repeat of the last command applied: answer this (the first outcome) again.
    Repeat(Box<Outcome>),
}

/// Every producer and session of a state: in snapshots, encoded after the principals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producers {
    next_id: ProducerId,
    producers: BTreeMap<ProducerId, Producer>,
    /// (when it expires, producer), for forgetting in time order.
    expiry: BTreeSet<(TimeMs, ProducerId)>,
    sessions: BTreeMap<(ProducerId, Stream), Session>,
    /// Sessions per queue, for the per-queue bound.
    per_queue: BTreeMap<String, u64>,
}

impl Default for Producers {
    fn default() -> Self {
        Producers {
            next_id: 1,
            producers: BTreeMap::new(),
            expiry: BTreeSet::new(),
            sessions: BTreeMap::new(),
            per_queue: BTreeMap::new(),
        }
    }
}

/// The longest idle expiry a producer may ask for.
pub const MAX_IDLE_EXPIRY_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// Longest producer name.
pub const MAX_NAME_LEN: usize = 256;

impl Producers {
    /// Registered producers.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Sessions held, over all producers and streams.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions on `queue`.
    pub fn sessions_on(&self, queue: &str) -> u64 {
        self.per_queue.get(queue).copied().unwrap_or(0)
    }

    pub fn get(&self, id: ProducerId) -> Option<&Producer> {
        self.producers.get(&id)
    }

    /// Whether a registration would be refused: its name or expiry is out of bounds, or
    /// `max_producers` are registered already.
    pub fn check_register(
        &self,
        name: &str,
        idle_expiry_ms: u64,
        max_producers: u64,
    ) -> Result<(), QueueError> {
        if name.len() > MAX_NAME_LEN {
            return Err(QueueError::invalid(
                "name",
                format!("{} bytes; at most {MAX_NAME_LEN}", name.len()),
            ));
        }
        if idle_expiry_ms == 0 || idle_expiry_ms > MAX_IDLE_EXPIRY_MS {
            return Err(QueueError::invalid(
                "idle_expiry_ms",
                format!("{idle_expiry_ms}; from 1 to {MAX_IDLE_EXPIRY_MS} (365 days)"),
            ));
        }
        if self.producers.len() as u64 >= max_producers {
            return Err(QueueError::TooManyProducers {
                stream: "the cluster".to_string(),
                limit: max_producers,
            });
        }
        Ok(())
    }

    /// A new producer, active from `now_ms`.
    pub fn register(
        &mut self,
        name: &str,
        idle_expiry_ms: u64,
        max_producers: u64,
        now_ms: TimeMs,
    ) -> Result<ProducerId, QueueError> {
        self.check_register(name, idle_expiry_ms, max_producers)?;
        let id = self.next_id;
        self.next_id += 1;
        let producer = Producer {
            name: name.to_string(),
            registered_at_ms: now_ms,
            last_active_ms: now_ms,
            idle_expiry_ms,
            streams: BTreeSet::new(),
        };
        self.expiry.insert((producer.expires_at_ms(), id));
        self.producers.insert(id, producer);
        Ok(id)
    }

    /// Forgets every producer idle past its expiry at `now_ms`, with its sessions.
    pub fn forget_idle(&mut self, now_ms: TimeMs) {
        while let Some(&(at, id)) = self.expiry.first() {
            if at > now_ms {
                break;
            }
            self.expiry.pop_first();
            let Some(producer) = self.producers.remove(&id) else {
                continue;
            };
            for stream in producer.streams {
                if let Stream::Queue(name) = &stream {
                    self.count_session(name, false);
                }
                self.sessions.remove(&(id, stream));
            }
        }
    }

    fn count_session(&mut self, queue: &str, added: bool) {
        if added {
            *self.per_queue.entry(queue.to_string()).or_default() += 1;
        } else if let Some(count) = self.per_queue.get_mut(queue) {
            *count -= 1;
            if *count == 0 {
                self.per_queue.remove(queue);
            }
        }
    }

    fn producer(&self, id: ProducerId) -> Result<&Producer, QueueError> {
        self.producers
            .get(&id)
            .ok_or(if id == 0 || id >= self.next_id {
                QueueError::invalid("producer_id", format!("producer {id} was never registered"))
            } else {
                QueueError::ProducerExpired { producer: id }
            })
    }

    /// Where a command numbered `first ..= first + count - 1` on `stream` stands: the
    /// next in sequence or a repeat of the last one; refused when the producer expired
    /// (or never was), when it is older than the last, out of order, or would open a
    /// session past `max_sessions` on its queue. Changes nothing.
    pub fn check(
        &self,
        id: ProducerId,
        stream: &Stream,
        first: u64,
        count: u64,
        max_sessions: u64,
    ) -> Result<Standing, QueueError> {
        self.producer(id)?;
        if first == 0 || count == 0 {
            return Err(QueueError::invalid(
                "sequence",
                "sequence numbers start at 1, and a command takes at least one",
            ));
        }
        let Some(session) = self.sessions.get(&(id, stream.clone())) else {
            if first != 1 {
                return Err(QueueError::SequenceGap {
                    producer: id,
                    stream: stream.to_string(),
                    expected: 1,
                    got: first,
                });
            }
            if let Stream::Queue(name) = stream
                && self.sessions_on(name) >= max_sessions
            {
                return Err(QueueError::TooManyProducers {
                    stream: stream.to_string(),
                    limit: max_sessions,
                });
            }
            return Ok(Standing::Next);
        };
        let last = first.saturating_add(count - 1);
        if first == session.last + 1 {
            Ok(Standing::Next)
        } else if first == session.last_first && last == session.last {
            match &session.last_outcome {
                Some(outcome) => Ok(Standing::Repeat(Box::new(outcome.clone()))),
                None => Err(QueueError::SequenceApplied {
                    producer: id,
                    stream: stream.to_string(),
                    sequence: first,
                    last: session.last,
                }),
            }
        } else if last <= session.last {
            Err(QueueError::SequenceApplied {
                producer: id,
                stream: stream.to_string(),
                sequence: first,
                last: session.last,
            })
        } else if first <= session.last {
            Err(QueueError::invalid(
                "sequence",
                format!(
                    "{first} to {last} overlaps what producer {id} already sent on {stream} \
                     (up to {})",
                    session.last
                ),
            ))
        } else {
            Err(QueueError::SequenceGap {
                producer: id,
                stream: stream.to_string(),
                expected: session.last + 1,
                got: first,
            })
        }
    }

    /// Records that the command numbered from `first` (`count` numbers) on `stream` was
    /// applied with `outcome`, and that the producer was active at `now_ms`. Only after
    /// [`Producers::check`] answered `Next` for it.
    pub fn record(
        &mut self,
        id: ProducerId,
        stream: Stream,
        first: u64,
        count: u64,
        outcome: Outcome,
        now_ms: TimeMs,
    ) {
        let key = (id, stream);
        if !self.sessions.contains_key(&key) {
            if let Stream::Queue(name) = &key.1 {
                self.count_session(name, true);
            }
            if let Some(producer) = self.producers.get_mut(&id) {
                producer.streams.insert(key.1.clone());
            }
        }
        self.sessions.insert(
            key,
            Session {
                last: first + count - 1,
                last_first: first,
                last_outcome: Some(outcome),
            },
        );
        self.touch(id, now_ms);
    }

    /// The producer was active at `now_ms`: its idle expiry starts again.
    pub fn touch(&mut self, id: ProducerId, now_ms: TimeMs) {
        if let Some(producer) = self.producers.get_mut(&id) {
            self.expiry.remove(&(producer.expires_at_ms(), id));
            producer.last_active_ms = producer.last_active_ms.max(now_ms);
            self.expiry.insert((producer.expires_at_ms(), id));
        }
    }
}

/// `command`, a `Send` or a `Commit`, numbered `sequence` in `producer`'s sequence (see
/// [`Command::ProducerSend`], [`Command::ProducerCommit`]); any other command is refused.
pub fn numbered(
    command: Command,
    producer: ProducerId,
    sequence: u64,
    max_sessions: u64,
) -> Result<Command, QueueError> {
    match command {
        Command::Send { queue, messages } => Ok(Command::ProducerSend {
            producer,
            first_sequence: sequence,
            max_sessions,
            queue,
            messages,
        }),
        Command::Commit {
            transaction_id,
            acks,
            sends,
        } => Ok(Command::ProducerCommit {
            producer,
            sequence,
            transaction_id,
            acks,
            sends,
        }),
        other => Err(QueueError::invalid(
            "producer",
            format!("a {} is not numbered by a producer", other.kind()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 60 * 60 * 1000;

    fn sent(id: u64) -> Outcome {
        Outcome::Sent(vec![crate::SendResult {
            message_id: id,
            sequence: id,
            duplicate: false,
            expired: false,
        }])
    }

    fn orders() -> Stream {
        Stream::Queue("orders".into())
    }

    #[test]
    fn the_next_number_is_taken_a_repeat_answered_and_a_gap_refused() {
        let mut producers = Producers::default();
        let id = producers.register("till-7", DAY, 10, 0).unwrap();
        assert_eq!(producers.check(id, &orders(), 1, 3, 10), Ok(Standing::Next));
        producers.record(id, orders(), 1, 3, sent(1), 0);
        assert_eq!(
            producers.check(id, &orders(), 1, 3, 10),
            Ok(Standing::Repeat(Box::new(sent(1))))
        );
        assert_eq!(producers.check(id, &orders(), 4, 1, 10), Ok(Standing::Next));
        assert!(matches!(
            producers.check(id, &orders(), 6, 1, 10),
            Err(QueueError::SequenceGap {
                expected: 4,
                got: 6,
                ..
            })
        ));
        assert!(matches!(
            producers.check(id, &orders(), 2, 1, 10),
            Err(QueueError::SequenceApplied { last: 3, .. })
        ));
        assert!(matches!(
            producers.check(id, &orders(), 3, 2, 10),
            Err(QueueError::InvalidArgument { .. })
        ));
        // Another stream counts from 1 on its own.
        assert_eq!(
            producers.check(id, &Stream::Transactions, 1, 1, 10),
            Ok(Standing::Next)
        );
        assert!(matches!(
            producers.check(id, &Stream::Queue("other".into()), 2, 1, 10),
            Err(QueueError::SequenceGap { expected: 1, .. })
        ));
    }

    #[test]
    fn an_idle_producer_expires_and_is_refused_as_expired_never_as_new() {
        let mut producers = Producers::default();
        let id = producers.register("ship", 2 * DAY, 10, 0).unwrap();
        producers.record(id, orders(), 1, 1, sent(1), DAY);
        producers.forget_idle(3 * DAY - 1);
        assert_eq!(producers.check(id, &orders(), 2, 1, 10), Ok(Standing::Next));
        producers.forget_idle(3 * DAY);
        assert_eq!(
            producers.check(id, &orders(), 1, 1, 10),
            Err(QueueError::ProducerExpired { producer: id })
        );
        assert_eq!(producers.sessions(), 0);
        assert_eq!(producers.sessions_on("orders"), 0);
        assert!(matches!(
            producers.check(id + 1, &orders(), 1, 1, 10),
            Err(QueueError::InvalidArgument { .. })
        ));
    }

    #[test]
    fn sessions_per_queue_and_producers_are_bounded() {
        let mut producers = Producers::default();
        let a = producers.register("a", DAY, 2, 0).unwrap();
        let b = producers.register("b", DAY, 2, 0).unwrap();
        assert!(matches!(
            producers.register("c", DAY, 2, 0),
            Err(QueueError::TooManyProducers { limit: 2, .. })
        ));
        producers.record(a, orders(), 1, 1, sent(1), 0);
        assert!(matches!(
            producers.check(b, &orders(), 1, 1, 1),
            Err(QueueError::TooManyProducers { limit: 1, .. })
        ));
        // A producer that has its session goes on.
        assert_eq!(producers.check(a, &orders(), 2, 1, 1), Ok(Standing::Next));
        assert!(producers.check_register(&"n".repeat(300), DAY, 9).is_err());
        assert!(producers.check_register("n", 0, 9).is_err());
    }
}
