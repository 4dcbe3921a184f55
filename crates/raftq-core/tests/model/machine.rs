//! The reference state machine: queues, ids, time, transactions, and what each command does.

use std::collections::BTreeMap;

use raftq_core::{
    Command, NewMessage, Outcome, Overflow, QueueError, QueueInfo, QueueOptions, SendResult,
    StoredMessage, TransactionAck, TransactionSend,
};

use crate::queue::{COUNT, Outgoing, Queue, REASON, SOURCE, invalid};

const MIN_LEASE_MS: u64 = 100;
const MAX_LEASE_MS: u64 = 12 * 60 * 60 * 1000;
const MAX_NACK_DELAY_MS: u64 = 12 * 60 * 60 * 1000;
const MAX_RECEIVE: u32 = 1_000;
const MAX_BATCH: usize = 1_000;
const MAX_PRIORITY: u8 = 7;

fn not_found(name: &str) -> QueueError {
    QueueError::QueueNotFound { name: name.into() }
}

/// Queues are brought up to time lazily, as in the real machine: a command brings each queue
/// it works on up to the machine's time when it first does, and a tick every queue with
/// something due; a queue nothing works on shows its state as of the last time one did.
pub struct Machine {
    queues: BTreeMap<String, Queue>,
    next_id: u64,
    now: u64,
    /// Committed transaction ids: their send results and when they are forgotten.
    transactions: BTreeMap<String, (Vec<SendResult>, u64)>,
    transaction_window_ms: u64,
    /// Queues the current command worked on, in the order it first did: what left them
    /// arrives in this order when the command ends.
    touched: Vec<String>,
}

impl Machine {
    pub fn new(transaction_window_ms: u64) -> Machine {
        Machine {
            queues: BTreeMap::new(),
            next_id: 1,
            now: 0,
            transactions: BTreeMap::new(),
            transaction_window_ms,
            touched: Vec::new(),
        }
    }

    /// The machine's time: the latest stamp seen.
    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn infos(&self) -> Vec<QueueInfo> {
        self.queues.values().map(Queue::info).collect()
    }

    pub fn peek(&self, name: &str) -> Vec<StoredMessage> {
        self.queues[name]
            .messages
            .iter()
            .map(|m| m.stored())
            .collect()
    }

    /// One command stamped `stamp`: its answer, with refusals' reasons left empty.
    pub fn apply(&mut self, stamp: u64, command: &Command) -> Result<Outcome, QueueError> {
        self.now = self.now.max(stamp);
        let now = self.now;
        self.transactions
            .retain(|_, (_, forget_at)| *forget_at > now);
        let result = self.command(command);
        self.deliver_outgoing();
        result
    }

    fn mark(&mut self, name: &str) {
        if !self.touched.iter().any(|t| t == name) {
            self.touched.push(name.into());
        }
    }

    /// The named queue, brought up to the machine's time.
    fn touch(&mut self, name: &str) -> Result<&mut Queue, QueueError> {
        if !self.queues.contains_key(name) {
            return Err(not_found(name));
        }
        self.mark(name);
        let queue = self.queues.get_mut(name).expect("exists");
        queue.bring_up_to(self.now);
        Ok(queue)
    }

    fn exists(&self, name: &str) -> Result<(), QueueError> {
        if self.queues.contains_key(name) {
            Ok(())
        } else {
            Err(not_found(name))
        }
    }

    fn create_on_demand(&mut self, name: &str, options: QueueOptions) {
        let now = self.now;
        self.queues
            .entry(name.into())
            .or_insert_with(|| Queue::new(name, options, now));
    }

    /// Delivers what left the touched queues: dead letters to their dead-letter queue
    /// (created with default options when missing; taken in as they are, the target is not
    /// brought up to time), journal copies to the journal (created on demand, brought up to
    /// time, the oldest copies making room), each copy with a new id.
    fn deliver_outgoing(&mut self) {
        while !self.touched.is_empty() {
            for name in std::mem::take(&mut self.touched) {
                let outgoing =
                    std::mem::take(&mut self.queues.get_mut(&name).expect("touched").outbox);
                for item in outgoing {
                    self.deliver(&name, item);
                }
            }
        }
    }

    fn deliver(&mut self, source: &str, item: Outgoing) {
        let now = self.now;
        match item {
            Outgoing::DeadLetter { message, target } => {
                self.create_on_demand(&target, QueueOptions::default());
                self.mark(&target);
                self.queues
                    .get_mut(&target)
                    .expect("created")
                    .accept(message);
            }
            Outgoing::Journal {
                copy,
                body_key,
                target,
            } => {
                let source = &self.queues[source].options;
                let options = QueueOptions {
                    default_ttl_ms: source.journal_retention_ms,
                    max_depth: source.journal_max_messages,
                    overflow: Overflow::DeadLetterOldest,
                    ..QueueOptions::default()
                };
                self.create_on_demand(&target, options);
                let id = self.next_id;
                self.next_id += 1;
                let journal = self.touch(&target).expect("created");
                journal.make_room(1);
                journal.store_new(&copy, body_key, id, now);
            }
        }
    }

    /// The only invalid message field runs generate is the priority.
    fn check_message(message: &NewMessage) -> Result<(), QueueError> {
        if message.priority > MAX_PRIORITY {
            Err(invalid("priority"))
        } else {
            Ok(())
        }
    }

    /// Lease and size of a receive: `max` in 1..=1000, the lease 0 (the queue's default) or
    /// in range, the queue must exist.
    fn receive_terms(&self, queue: &str, max: u32, lease_ms: u64) -> Result<u64, QueueError> {
        if max == 0 || max > MAX_RECEIVE {
            return Err(invalid("max_messages"));
        }
        if lease_ms != 0 && !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&lease_ms) {
            return Err(invalid("lease_ms"));
        }
        let queue = self.queues.get(queue).ok_or_else(|| not_found(queue))?;
        Ok(match lease_ms {
            0 => queue.options.default_lease_ms,
            lease_ms => lease_ms,
        })
    }

    /// Stores `messages` in `queue` with new ids (repeated keys take none).
    fn store(&mut self, queue: &str, messages: &[&NewMessage]) -> Vec<SendResult> {
        let now = self.now;
        let mut next_id = self.next_id;
        let queue = self.queues.get_mut(queue).expect("checked");
        let results = messages
            .iter()
            .map(|message| {
                let result = queue.store_new(message, next_id, next_id, now);
                if !result.duplicate {
                    next_id += 1;
                }
                result
            })
            .collect();
        self.next_id = next_id;
        results
    }

    fn command(&mut self, command: &Command) -> Result<Outcome, QueueError> {
        let now = self.now;
        match command {
            Command::CreateQueue { name, options } => {
                if self.queues.contains_key(name) {
                    return Err(QueueError::QueueAlreadyExists { name: name.clone() });
                }
                let queue = Queue::new(name, options.clone(), now);
                let info = queue.info();
                self.queues.insert(name.clone(), queue);
                Ok(Outcome::Created(info))
            }
            Command::PurgeQueue { name } => Ok(Outcome::Purged {
                removed: self.touch(name)?.purge(),
            }),
            Command::Send { queue, messages } => {
                if messages.is_empty() || messages.len() > MAX_BATCH {
                    return Err(invalid("messages"));
                }
                messages.iter().try_for_each(Self::check_message)?;
                let messages: Vec<&NewMessage> = messages.iter().collect();
                let target = self.touch(queue)?;
                let count = target.footprint(&messages);
                target.check_room(count)?;
                target.make_room(count);
                Ok(Outcome::Sent(self.store(queue, &messages)))
            }
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            } => {
                let lease_ms = self.receive_terms(queue, *max_messages, *lease_ms)?;
                let deliveries = self.touch(queue)?.receive(*max_messages, lease_ms, now);
                Ok(Outcome::Received(deliveries))
            }
            Command::ReceiveSelected {
                queue,
                message_id,
                correlation_id,
                max_messages,
                lease_ms,
            } => {
                if *message_id == 0 && correlation_id.is_empty() {
                    return Err(invalid("selector"));
                }
                let lease_ms = self.receive_terms(queue, *max_messages, *lease_ms)?;
                let deliveries = self.touch(queue)?.receive_selected(
                    *message_id,
                    correlation_id,
                    *max_messages,
                    lease_ms,
                    now,
                );
                Ok(Outcome::Received(deliveries))
            }
            Command::Ack { queue, receipt } => Ok(Outcome::Acked {
                already_acked: self.touch(queue)?.ack(*receipt, now)?,
            }),
            Command::AckBatch { queue, receipts } => {
                if receipts.is_empty() || receipts.len() > MAX_BATCH {
                    return Err(invalid("receipts"));
                }
                let queue = self.touch(queue)?;
                Ok(Outcome::AckedBatch(
                    receipts.iter().map(|r| queue.ack(*r, now)).collect(),
                ))
            }
            Command::Nack {
                queue,
                receipt,
                delay_ms,
            } => {
                if *delay_ms > MAX_NACK_DELAY_MS {
                    return Err(invalid("delay_ms"));
                }
                let visible_at_ms = self.touch(queue)?.nack(*receipt, *delay_ms, now)?;
                Ok(Outcome::Nacked { visible_at_ms })
            }
            Command::ExtendLease {
                queue,
                receipt,
                lease_ms,
            } => {
                if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(lease_ms) {
                    return Err(invalid("lease_ms"));
                }
                let lease_expires_at_ms = self.touch(queue)?.extend(*receipt, *lease_ms, now)?;
                Ok(Outcome::LeaseExtended {
                    lease_expires_at_ms,
                })
            }
            Command::Redrive {
                queue,
                message_ids,
                max,
                to,
            } => self.redrive(queue, message_ids, *max as usize, to),
            Command::Commit {
                transaction_id,
                acks,
                sends,
            } => self.commit(transaction_id, acks, sends),
            Command::Tick => {
                let due: Vec<String> = self
                    .queues
                    .values()
                    .filter(|q| q.is_due(now))
                    .map(|q| q.name.clone())
                    .collect();
                for name in &due {
                    self.touch(name)?;
                }
                Ok(Outcome::Ticked {
                    queues: due.len() as u64,
                })
            }
            other => panic!("the model does not take {other:?}"),
        }
    }

    /// Moves messages (the listed ids, or the first `max` unleased) back to the queue each
    /// came from, or to `to`: all or none. A moved message starts afresh at the tail,
    /// without the dead-letter headers.
    fn redrive(
        &mut self,
        source: &str,
        ids: &[u64],
        max: usize,
        to: &str,
    ) -> Result<Outcome, QueueError> {
        if ids.len() > MAX_BATCH || max > MAX_BATCH {
            return Err(invalid("message_ids"));
        }
        if ids.is_empty() && max == 0 {
            return Err(invalid("max"));
        }
        if !to.is_empty() {
            self.exists(to)?;
        }
        let destination = |header: String| {
            if to.is_empty() {
                header
            } else {
                to.to_string()
            }
        };
        for header in self.touch(source)?.redrive_sources(ids, max) {
            let destination = destination(header);
            if destination.is_empty() {
                return Err(invalid("to"));
            }
            self.exists(&destination)?;
        }
        let moving = self
            .queues
            .get_mut(source)
            .expect("touched")
            .take_for_redrive(ids, max)?;
        let moved = moving.len() as u64;
        for mut message in moving {
            let header = message.headers.get(SOURCE).cloned().unwrap_or_default();
            for name in [REASON, SOURCE, COUNT] {
                message.headers.remove(name);
            }
            self.touch(&destination(header))?.accept(message);
        }
        Ok(Outcome::Redriven { moved })
    }

    /// All acks and sends or none: every part is checked before anything changes (each
    /// receipt current and not the one that already acked, each destination with room for
    /// its sends without counting the acks), then acks, room, sends in order.
    fn commit(
        &mut self,
        id: &str,
        acks: &[TransactionAck],
        sends: &[TransactionSend],
    ) -> Result<Outcome, QueueError> {
        let now = self.now;
        if id.is_empty() {
            return Err(invalid("transaction_id"));
        }
        if let Some((sent, _)) = self.transactions.get(id) {
            return Ok(Outcome::Committed {
                sent: sent.clone(),
                already_committed: true,
            });
        }
        let parts = acks.len() + sends.len();
        if parts == 0 || parts > MAX_BATCH {
            return Err(invalid("transaction"));
        }
        sends
            .iter()
            .try_for_each(|send| Self::check_message(&send.message))?;
        for ack in acks {
            self.touch(&ack.queue)?.check_current(ack.receipt, now)?;
        }
        let mut by_queue: BTreeMap<&str, Vec<&NewMessage>> = BTreeMap::new();
        for send in sends {
            by_queue.entry(&send.queue).or_default().push(&send.message);
        }
        for (name, messages) in &by_queue {
            let queue = self.touch(name)?;
            queue.check_room(queue.footprint(messages))?;
        }
        for ack in acks {
            let acked = self.touch(&ack.queue)?.ack(ack.receipt, now);
            assert!(acked.is_ok(), "a checked ack failed: {acked:?}");
        }
        for (name, messages) in &by_queue {
            let queue = self.touch(name)?;
            queue.make_room(queue.footprint(messages));
        }
        let mut sent = Vec::new();
        for send in sends {
            sent.extend(self.store(&send.queue, &[&send.message]));
        }
        let forget_at = now + self.transaction_window_ms;
        self.transactions
            .insert(id.into(), (sent.clone(), forget_at));
        Ok(Outcome::Committed {
            sent,
            already_committed: false,
        })
    }
}
