use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::body::{Bodies, BodyChange, BodyEffect, BodyRef};
use crate::command::{
    Command, NewMessage, Outcome, QueueInfo, Request, SendResult, TransactionAck, TransactionSend,
};
use crate::queue::{Outgoing, Queue, StoredMessage};
use crate::{Limits, MessageId, Overflow, QueueError, QueueOptions, TimeMs, validate_queue_name};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CommittedTransaction {
    sent: Vec<SendResult>,
}

/// The replicated state of one Raft group: every queue it holds.
///
/// `apply` is a pure function of (state, request): no clock, no randomness, no IO. The
/// effective time is the largest `now_ms` seen so far, so time never goes backwards even
/// when a new leader's clock is behind the old one's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    limits: Limits,
    queues: BTreeMap<String, Queue>,
    next_message_id: MessageId,
    now_ms: TimeMs,
    /// Committed transaction ids, with the outcome a retried commit is answered with.
    transactions: BTreeMap<String, CommittedTransaction>,
    transaction_expiry: BTreeSet<(TimeMs, String)>,
    bodies: Bodies,
    /// Queues touched by the command being applied, whose dead letters must be moved
    /// before it ends. Always empty between commands.
    #[serde(skip)]
    touched: Vec<String>,
    /// Every queue touched by the command being applied, whose body changes are taken
    /// when it ends; and body changes of queues that went away. Always empty between
    /// commands.
    #[serde(skip)]
    changed: Vec<String>,
    #[serde(skip)]
    body_changes: Vec<BodyChange>,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(Limits::default())
    }
}

impl StateMachine {
    pub fn new(limits: Limits) -> Self {
        StateMachine {
            limits,
            queues: BTreeMap::new(),
            next_message_id: 1,
            now_ms: 0,
            transactions: BTreeMap::new(),
            transaction_expiry: BTreeSet::new(),
            bodies: Bodies::default(),
            touched: Vec::new(),
            changed: Vec::new(),
            body_changes: Vec::new(),
        }
    }

    /// From now on bodies are kept by the embedder, not in the state: applying a command
    /// records what to write and delete (see [`StateMachine::take_body_effects`]), and
    /// deliveries come out with empty bodies for the embedder to fill in from their
    /// [`BodyRef`]. Bodies held so far are handed over as effects.
    pub fn keep_bodies_outside(&mut self) {
        self.bodies.keep_outside();
    }

    /// Every body key in use is below this (keys are ids of messages that were sent).
    pub fn body_keys_end(&self) -> u64 {
        self.next_message_id
    }

    pub fn bodies_kept_outside(&self) -> bool {
        self.bodies.kept_outside()
    }

    /// Body writes and deletes since the last call, in order; only when bodies are kept
    /// outside. Applying them after each command keeps the embedder's bodies exactly those
    /// of the stored messages.
    pub fn take_body_effects(&mut self) -> Vec<BodyEffect> {
        self.bodies.take_effects()
    }

    /// The bytes of a stored message's body when the state keeps them; `None` when the
    /// embedder does.
    pub fn body(&self, body: BodyRef) -> Option<Vec<u8>> {
        self.bodies.get(body)
    }

    /// Checks the bodies' bookkeeping against the stored messages: each body is counted
    /// once per message that refers to it, and (when the state keeps them) exactly the
    /// referred bodies are held. For tests.
    pub fn check_bodies(&self) -> Result<(), String> {
        let mut refs: BTreeMap<u64, u64> = BTreeMap::new();
        for queue in self.queues.values() {
            for body in queue.bodies().filter(|body| body.len > 0) {
                *refs.entry(body.key).or_default() += 1;
            }
        }
        self.bodies.check(&refs)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state machine's time: the largest time stamped into any applied command.
    pub fn now_ms(&self) -> TimeMs {
        self.now_ms
    }

    /// Applies one command. On `Err` the state is exactly as before, except that the
    /// clock may have advanced (which only releases expired leases and delays).
    pub fn apply(&mut self, request: Request) -> Result<Outcome, QueueError> {
        self.now_ms = self.now_ms.max(request.now_ms);
        self.forget_transactions();
        match request.command {
            Command::Batch(commands) => Ok(Outcome::Batch(
                commands
                    .into_iter()
                    .map(|command| self.apply_one(command))
                    .collect(),
            )),
            command => self.apply_one(command),
        }
    }

    /// One command and what it sent elsewhere: exactly what one log entry of it does.
    fn apply_one(&mut self, command: Command) -> Result<Outcome, QueueError> {
        let mut result = self.apply_command(command);
        self.deliver_outgoing();
        self.settle_bodies();
        if let Ok(Outcome::Received(deliveries)) = &mut result {
            for delivery in deliveries {
                if let Some(bytes) = self.bodies.get(delivery.body_ref) {
                    delivery.body = bytes;
                }
            }
        }
        result
    }

    /// Takes the body changes of every queue the command touched into the bookkeeping.
    fn settle_bodies(&mut self) {
        let mut changes = std::mem::take(&mut self.body_changes);
        for name in std::mem::take(&mut self.changed) {
            if let Some(queue) = self.queues.get_mut(&name) {
                changes.extend(queue.take_body_changes());
            }
        }
        self.bodies.apply(changes);
    }

    /// Notes that `name` may change during this command.
    fn mark(&mut self, name: &str) {
        if !self.touched.iter().any(|touched| touched == name) {
            self.touched.push(name.to_string());
        }
        if !self.changed.iter().any(|changed| changed == name) {
            self.changed.push(name.to_string());
        }
    }

    /// Delivers what touched queues sent elsewhere during this command: dead letters (to
    /// dead-letter queues, created on demand with default options), journal copies (to
    /// journal queues, created on demand) and acknowledgement messages (only to queues
    /// that exist). Dead letters and acknowledgements go in whatever the target's depth
    /// (moving a message never drops it for lack of room); when no more queues may be
    /// created, a dead letter is discarded and counted. Journal copies make room by
    /// dropping the oldest copies.
    fn deliver_outgoing(&mut self) {
        let now = self.now_ms;
        // Delivering may touch more queues (a journal making room); those deliver nothing
        // further, so a few rounds always finish.
        for _ in 0..4 {
            let touched = std::mem::take(&mut self.touched);
            if touched.is_empty() {
                return;
            }
            for name in touched {
                let Some(queue) = self.queues.get_mut(&name) else {
                    continue;
                };
                for outgoing in queue.take_outgoing() {
                    self.deliver(&name, outgoing, now);
                }
            }
        }
    }

    fn deliver(&mut self, source: &str, outgoing: Outgoing, now: TimeMs) {
        match outgoing {
            Outgoing::DeadLetter { message, target } => {
                self.create_on_demand(&target, QueueOptions::default(), now);
                if self.queues.contains_key(&target) {
                    self.mark(&target);
                }
                match self.queues.get_mut(&target) {
                    Some(queue) => queue.accept_dead_letter(message),
                    None => {
                        self.body_changes.push(BodyChange::Released(message.body));
                        if let Some(queue) = self.queues.get_mut(source) {
                            queue.count_discarded();
                        }
                    }
                }
            }
            Outgoing::Journal {
                message,
                body,
                target,
            } => {
                let Some(source_options) = self.queues.get(source).map(|q| q.options().clone())
                else {
                    return;
                };
                let options = QueueOptions {
                    default_ttl_ms: source_options.journal_retention_ms,
                    max_depth: source_options.journal_max_messages,
                    overflow: Overflow::DeadLetterOldest,
                    ..QueueOptions::default()
                };
                self.create_on_demand(&target, options, now);
                let message_id = self.next_message_id;
                // Without a journal queue (none could be created) the copy is not kept.
                if let Ok(queue) = self.queue_mut(&target) {
                    queue.make_room_for(1, message.size() + body.len);
                    queue.send_shared(message, body, message_id, now);
                    self.next_message_id += 1;
                }
            }
            Outgoing::Notice { message, target } => {
                let message_id = self.next_message_id;
                if self.queues.contains_key(&target) {
                    self.mark(&target);
                }
                if let Some(queue) = self.queues.get_mut(&target) {
                    queue.advance(now);
                    queue.send(message, message_id, now);
                    self.next_message_id += 1;
                }
            }
        }
    }

    fn create_on_demand(&mut self, name: &str, options: QueueOptions, now: TimeMs) {
        if !self.queues.contains_key(name) && (self.queues.len() as u64) < self.limits.max_queues {
            self.queues
                .insert(name.to_string(), Queue::new(name.to_string(), options, now));
        }
    }

    /// Acknowledgement queues named by new messages must exist.
    fn check_acknowledgement_queues<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a NewMessage>,
    ) -> Result<(), QueueError> {
        for message in messages {
            let queue = &message.acknowledgement.queue;
            if !queue.is_empty() && !self.queues.contains_key(queue) {
                return Err(QueueError::not_found(queue));
            }
        }
        Ok(())
    }

    /// Validates a receive's size and lease; returns the byte limit and the lease to use.
    fn check_receive(
        &self,
        queue: &str,
        max_messages: u32,
        lease_ms: u64,
    ) -> Result<(u64, u64), QueueError> {
        if max_messages == 0 || max_messages > self.limits.max_receive_messages {
            return Err(QueueError::invalid(
                "max_messages",
                format!("must be in 1..={}", self.limits.max_receive_messages),
            ));
        }
        if lease_ms != 0 {
            self.limits.check_lease("lease_ms", lease_ms)?;
        }
        let default_lease = self.queue(queue)?.options().default_lease_ms;
        let lease_ms = if lease_ms == 0 {
            default_lease
        } else {
            lease_ms
        };
        Ok((self.limits.max_receive_bytes, lease_ms))
    }

    fn forget_transactions(&mut self) {
        while let Some((at, _)) = self.transaction_expiry.first() {
            if *at > self.now_ms {
                break;
            }
            if let Some((_, id)) = self.transaction_expiry.pop_first() {
                self.transactions.remove(&id);
            }
        }
    }

    /// All of `acks` and `sends` or nothing: every part is checked (queues exist, receipts
    /// are current, messages valid, queues have room) before anything changes.
    fn commit(
        &mut self,
        transaction_id: String,
        acks: Vec<TransactionAck>,
        sends: Vec<TransactionSend>,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        if transaction_id.is_empty() || transaction_id.len() > self.limits.max_idempotency_key_len {
            return Err(QueueError::invalid(
                "transaction_id",
                format!("must be 1..={} bytes", self.limits.max_idempotency_key_len),
            ));
        }
        if let Some(committed) = self.transactions.get(&transaction_id) {
            return Ok(Outcome::Committed {
                sent: committed.sent.clone(),
                already_committed: true,
            });
        }
        let parts = acks.len() + sends.len();
        if parts == 0 || parts > self.limits.max_batch_messages {
            return Err(QueueError::invalid(
                "transaction",
                format!(
                    "must hold 1..={} acks and sends",
                    self.limits.max_batch_messages
                ),
            ));
        }
        for send in &sends {
            self.limits.check_message(&send.message)?;
        }
        self.check_acknowledgement_queues(sends.iter().map(|send| &send.message))?;
        for ack in &acks {
            self.queue_mut(&ack.queue)?
                .check_current(ack.receipt, now)?;
        }
        let mut by_queue: BTreeMap<&str, Vec<&NewMessage>> = BTreeMap::new();
        for send in &sends {
            by_queue
                .entry(send.queue.as_str())
                .or_default()
                .push(&send.message);
        }
        for (name, messages) in &by_queue {
            // Checked without the acks' effect: a full queue aborts even when the same
            // transaction consumes from it.
            self.queue_mut(name)?.check_send(messages.iter().copied())?;
        }
        for ack in acks {
            self.queue_mut(&ack.queue)?.ack(ack.receipt, now)?;
        }
        for (name, messages) in by_queue {
            self.queue_mut(name)?.make_room(messages);
        }
        let mut sent = Vec::with_capacity(sends.len());
        for send in sends {
            let message_id = self.next_message_id;
            let result = self
                .queue_mut(&send.queue)?
                .send(send.message, message_id, now);
            if !result.duplicate {
                self.next_message_id += 1;
            }
            sent.push(result);
        }
        let forget_at = now.saturating_add(self.limits.transaction_window_ms);
        self.transaction_expiry
            .insert((forget_at, transaction_id.clone()));
        self.transactions
            .insert(transaction_id, CommittedTransaction { sent: sent.clone() });
        Ok(Outcome::Committed {
            sent,
            already_committed: false,
        })
    }

    fn apply_command(&mut self, command: Command) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        match command {
            Command::CreateQueue { name, options } => {
                validate_queue_name(&name, &self.limits)?;
                options.validate(&self.limits)?;
                if options.journal {
                    validate_queue_name(&crate::journal_queue_name(&name), &self.limits).map_err(
                        |_| {
                            QueueError::invalid(
                                "journal",
                                "the name is too long for a `.journal` queue beside it",
                            )
                        },
                    )?;
                }
                if options.dead_letter_queue == name {
                    return Err(QueueError::invalid(
                        "dead_letter_queue",
                        "a queue cannot be its own dead-letter queue",
                    ));
                }
                if self.queues.contains_key(&name) {
                    return Err(QueueError::QueueAlreadyExists { name });
                }
                if self.queues.len() as u64 >= self.limits.max_queues {
                    return Err(QueueError::TooManyQueues {
                        count: self.queues.len() as u64,
                        limit: self.limits.max_queues,
                    });
                }
                let queue = Queue::new(name.clone(), options, now);
                let info = queue.info();
                self.queues.insert(name, queue);
                Ok(Outcome::Created(info))
            }
            Command::DeleteQueue { name } => {
                let mut queue = self
                    .queues
                    .remove(&name)
                    .ok_or_else(|| QueueError::not_found(&name))?;
                self.body_changes.extend(queue.take_body_changes());
                self.body_changes.extend(queue.release_all_bodies());
                Ok(Outcome::Deleted)
            }
            Command::PurgeQueue { name } => {
                let queue = self.queue_mut(&name)?;
                Ok(Outcome::Purged {
                    removed: queue.purge(),
                })
            }
            Command::Send { queue, messages } => {
                if messages.is_empty() {
                    return Err(QueueError::invalid("messages", "the batch is empty"));
                }
                if messages.len() > self.limits.max_batch_messages {
                    return Err(QueueError::invalid(
                        "messages",
                        format!(
                            "{} messages exceed the batch limit of {}",
                            messages.len(),
                            self.limits.max_batch_messages
                        ),
                    ));
                }
                for message in &messages {
                    self.limits.check_message(message)?;
                }
                self.check_acknowledgement_queues(&messages)?;
                let first_id = self.next_message_id;
                let queue = self.queue_mut(&queue)?;
                queue.check_send(&messages)?;
                queue.make_room(&messages);
                let mut next_id = first_id;
                let results: Vec<_> = messages
                    .into_iter()
                    .map(|message| {
                        let result = queue.send(message, next_id, now);
                        if !result.duplicate {
                            next_id += 1;
                        }
                        result
                    })
                    .collect();
                self.next_message_id = next_id;
                Ok(Outcome::Sent(results))
            }
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            } => {
                let (max_bytes, lease_ms) = self.check_receive(&queue, max_messages, lease_ms)?;
                let queue = self.queue_mut(&queue)?;
                Ok(Outcome::Received(queue.receive(
                    max_messages,
                    max_bytes,
                    lease_ms,
                    now,
                )))
            }
            Command::ReceiveSelected {
                queue,
                message_id,
                correlation_id,
                max_messages,
                lease_ms,
            } => {
                if message_id == 0 && correlation_id.is_empty() {
                    return Err(QueueError::invalid(
                        "selector",
                        "name a message id or a correlation id",
                    ));
                }
                let (max_bytes, lease_ms) = self.check_receive(&queue, max_messages, lease_ms)?;
                let queue = self.queue_mut(&queue)?;
                Ok(Outcome::Received(queue.receive_selected(
                    message_id,
                    &correlation_id,
                    max_messages,
                    max_bytes,
                    lease_ms,
                    now,
                )))
            }
            Command::Ack { queue, receipt } => {
                let queue = self.queue_mut(&queue)?;
                let already_acked = queue.ack(receipt, now)?;
                Ok(Outcome::Acked { already_acked })
            }
            Command::Batch(_) => Err(QueueError::invalid(
                "command",
                "a batch cannot hold another batch",
            )),
            Command::AckBatch { queue, receipts } => {
                if receipts.is_empty() || receipts.len() > self.limits.max_batch_messages {
                    return Err(QueueError::invalid(
                        "receipts",
                        format!("must hold 1 to {} receipts", self.limits.max_batch_messages),
                    ));
                }
                let queue = self.queue_mut(&queue)?;
                let results = receipts
                    .into_iter()
                    .map(|receipt| queue.ack(receipt, now))
                    .collect();
                Ok(Outcome::AckedBatch(results))
            }
            Command::Nack {
                queue,
                receipt,
                delay_ms,
            } => {
                if delay_ms > self.limits.max_nack_delay_ms {
                    return Err(QueueError::invalid(
                        "delay_ms",
                        format!("must be at most {} ms", self.limits.max_nack_delay_ms),
                    ));
                }
                let queue = self.queue_mut(&queue)?;
                let visible_at_ms = queue.nack(receipt, delay_ms, now)?;
                Ok(Outcome::Nacked { visible_at_ms })
            }
            Command::ExtendLease {
                queue,
                receipt,
                lease_ms,
            } => {
                self.limits.check_lease("lease_ms", lease_ms)?;
                let queue = self.queue_mut(&queue)?;
                let lease_expires_at_ms = queue.extend_lease(receipt, lease_ms, now)?;
                Ok(Outcome::LeaseExtended {
                    lease_expires_at_ms,
                })
            }
            Command::Redrive {
                queue,
                message_ids,
                max,
                to,
            } => self.redrive(&queue, &message_ids, max, &to),
            Command::Commit {
                transaction_id,
                acks,
                sends,
            } => self.commit(transaction_id, acks, sends),
            Command::Tick => {
                let due: Vec<String> = self
                    .queues
                    .iter()
                    .filter(|(_, queue)| queue.next_due_ms().is_some_and(|at| at <= now))
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in &due {
                    self.queue_mut(name)?;
                }
                Ok(Outcome::Ticked {
                    queues: due.len() as u64,
                })
            }
        }
    }

    /// Whether some queue has timed work due at `now_ms` (see [`Command::Tick`]).
    pub fn has_due_work(&self, now_ms: TimeMs) -> bool {
        let now = now_ms.max(self.now_ms);
        self.queues
            .values()
            .any(|queue| queue.next_due_ms().is_some_and(|at| at <= now))
    }

    fn redrive(
        &mut self,
        name: &str,
        message_ids: &[MessageId],
        max: u32,
        to: &str,
    ) -> Result<Outcome, QueueError> {
        let limit = self.limits.max_batch_messages;
        if message_ids.len() > limit || max as usize > limit {
            return Err(QueueError::invalid(
                "message_ids",
                format!("at most {limit} messages per redrive"),
            ));
        }
        if message_ids.is_empty() && max == 0 {
            return Err(QueueError::invalid(
                "max",
                "name message ids or a maximum count",
            ));
        }
        if !to.is_empty() && !self.queues.contains_key(to) {
            return Err(QueueError::not_found(to));
        }
        // Every destination must exist before anything moves, so a redrive is all or none.
        let candidates = self
            .queue_mut(name)?
            .redrive_destinations(message_ids, max as usize);
        for destination in candidates {
            let destination = if to.is_empty() {
                destination
            } else {
                to.to_string()
            };
            if destination.is_empty() {
                return Err(QueueError::invalid(
                    "to",
                    "a message has no source queue header; name a destination",
                ));
            }
            if !self.queues.contains_key(&destination) {
                return Err(QueueError::not_found(&destination));
            }
        }
        let messages = self
            .queue_mut(name)?
            .take_for_redrive(message_ids, max as usize)?;
        let moved = messages.len() as u64;
        for message in messages {
            let destination = if to.is_empty() {
                message
                    .headers
                    .get(crate::queue::DEAD_LETTER_SOURCE)
                    .cloned()
                    .unwrap_or_default()
            } else {
                to.to_string()
            };
            self.queue_mut(&destination)?.accept_redriven(message);
        }
        Ok(Outcome::Redriven { moved })
    }

    /// The named queue, brought up to the state machine's time.
    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, QueueError> {
        let now = self.now_ms;
        if self.queues.contains_key(name) {
            self.mark(name);
        }
        let queue = self
            .queues
            .get_mut(name)
            .ok_or_else(|| QueueError::not_found(name))?;
        queue.advance(now);
        Ok(queue)
    }

    fn queue(&self, name: &str) -> Result<&Queue, QueueError> {
        self.queues
            .get(name)
            .ok_or_else(|| QueueError::not_found(name))
    }

    pub fn queue_info(&self, name: &str) -> Result<QueueInfo, QueueError> {
        Ok(self.queue(name)?.info())
    }

    /// Queues in name order, starting after `after` (exclusive), at most `max`.
    pub fn list_queues(&self, after: &str, max: usize) -> Vec<QueueInfo> {
        use std::ops::Bound;
        self.queues
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(max)
            .map(|(_, queue)| queue.info())
            .collect()
    }

    pub fn peek(
        &self,
        name: &str,
        after_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, QueueError> {
        Ok(self.queue(name)?.peek(after_sequence, max, 0, ""))
    }

    /// Peek restricted to a message id and/or a correlation id.
    pub fn peek_selected(
        &self,
        name: &str,
        after_sequence: u64,
        max: usize,
        message_id: MessageId,
        correlation_id: &str,
    ) -> Result<Vec<StoredMessage>, QueueError> {
        Ok(self
            .queue(name)?
            .peek(after_sequence, max, message_id, correlation_id))
    }

    /// Whether a selective receive on `name` at `now_ms` could deliver something.
    pub fn has_selected_deliverable(
        &self,
        name: &str,
        message_id: MessageId,
        correlation_id: &str,
        now_ms: TimeMs,
    ) -> Result<bool, QueueError> {
        Ok(self.queue(name)?.has_selected_deliverable(
            message_id,
            correlation_id,
            now_ms.max(self.now_ms),
        ))
    }

    /// Whether a receive on `name` at time `now_ms` would deliver something. Lets a
    /// long-polling receive wait without writing empty receives into the log.
    pub fn has_deliverable(&self, name: &str, now_ms: TimeMs) -> Result<bool, QueueError> {
        Ok(self.queue(name)?.has_deliverable(now_ms.max(self.now_ms)))
    }

    /// When the next delayed or leased message of `name` becomes ready, if any.
    pub fn next_wakeup_ms(&self, name: &str) -> Option<TimeMs> {
        self.queues.get(name).and_then(Queue::next_wakeup_ms)
    }
}
