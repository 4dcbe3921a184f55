//! [`StateMachine`]: the queues of one Raft group, each command dispatched, and reads.

mod messages;
mod moves;
mod precheck;
mod queues;
mod sequenced;
mod transaction;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::access::Access;
use crate::body::{Bodies, BodyChange, BodyEffect, BodyRef};
use crate::command::{Command, Outcome, QueueInfo, Request};
use crate::placement::Placement;
use crate::producers::Producers;
use crate::queue::{Queue, StoredMessage};
use crate::{Limits, MessageId, QueueError, TimeMs};
use transaction::CommittedTransaction;

/// What a state holds in all queues: every stored message (dead letters, journal copies,
/// acknowledgement messages and redriven messages are messages of their queues), their
/// bytes, and the records kept to answer repeats (idempotency keys, committed
/// transactions, producers and their sessions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub queues: u64,
    pub messages: u64,
    pub bytes: u64,
    pub dedup_records: u64,
}

fn changed(changed: bool) -> Outcome {
    Outcome::AccessChanged { changed }
}

/// The replicated state of one Raft group: every queue it holds, and who may do what.
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
    /// Principals and grants. Encoded after the rest of the state (see
    /// [`StateMachine::access`]), so that states written before it existed still decode.
    #[serde(skip)]
    access: Access,
    /// Producers and their sessions. Encoded after the principals, for the same reason.
    #[serde(skip)]
    producers: Producers,
    /// The data groups and the queues placed in them (the metadata group's). Encoded after
    /// the producers, for the same reason.
    #[serde(skip)]
    placement: Placement,
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
            access: Access::default(),
            producers: Producers::default(),
            placement: Placement::default(),
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

    /// Principals and grants. A snapshot writes them after the state's other fields
    /// (which `serde` encodes without them) and [`StateMachine::restore_access`] puts them
    /// back; a snapshot from before they existed has none.
    pub fn access(&self) -> &Access {
        &self.access
    }

    pub fn restore_access(&mut self, mut access: Access) {
        access.reindex();
        self.access = access;
    }

    /// Producers and their sessions. A snapshot writes them after the principals, and
    /// [`StateMachine::restore_producers`] puts them back; a snapshot from before they
    /// existed has none.
    pub fn producers(&self) -> &Producers {
        &self.producers
    }

    pub fn restore_producers(&mut self, producers: Producers) {
        self.producers = producers;
    }

    /// The data groups and where queues live (in the metadata group; empty elsewhere). A
    /// snapshot writes it after the producers, and [`StateMachine::restore_placement`]
    /// puts it back; a snapshot from before it existed has none.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    pub fn restore_placement(&mut self, placement: Placement) {
        self.placement = placement;
    }

    /// Restores the draining nodes, which a snapshot keeps after the placement.
    pub fn restore_draining(&mut self, draining: std::collections::BTreeSet<u64>) {
        self.placement.restore_draining(draining);
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
        self.producers.forget_idle(self.now_ms);
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

    fn apply_command(&mut self, command: Command) -> Result<Outcome, QueueError> {
        match command {
            Command::CreateQueue { name, options } => self.create_queue(name, options),
            Command::DeleteQueue { name } => self.delete_queue(name),
            Command::PurgeQueue { name } => self.purge_queue(name),
            Command::Send { queue, messages } => self.send(queue, messages),
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            } => self.receive(queue, max_messages, lease_ms),
            Command::ReceiveSelected {
                queue,
                message_id,
                correlation_id,
                max_messages,
                lease_ms,
            } => self.receive_selected(queue, message_id, correlation_id, max_messages, lease_ms),
            Command::Ack { queue, receipt } => self.ack(queue, receipt),
            Command::Batch(_) => Err(QueueError::invalid(
                "command",
                "a batch cannot hold another batch",
            )),
            Command::AckBatch { queue, receipts } => self.ack_batch(queue, receipts),
            Command::Nack {
                queue,
                receipt,
                delay_ms,
            } => self.nack(queue, receipt, delay_ms),
            Command::Reject {
                queue,
                receipt,
                detail,
            } => self.reject(queue, receipt, detail),
            Command::ExtendLease {
                queue,
                receipt,
                lease_ms,
            } => self.extend_lease(queue, receipt, lease_ms),
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
            Command::Tick => self.tick(),
            Command::CreatePrincipal { name, token_hash } => self
                .access
                .create(&name, token_hash)
                .map(|()| changed(true)),
            Command::DeletePrincipal { name } => self.access.delete(&name).map(|()| changed(true)),
            Command::Grant {
                principal,
                pattern,
                actions,
            } => self
                .access
                .grant(&principal, &pattern, actions)
                .map(|()| changed(true)),
            Command::Revoke { principal, pattern } => {
                self.access.revoke(&principal, &pattern).map(changed)
            }
            Command::RegisterProducer {
                name,
                idle_expiry_ms,
                max_producers,
            } => self.register_producer(&name, idle_expiry_ms, max_producers),
            Command::ProducerSend {
                producer,
                first_sequence,
                max_sessions,
                queue,
                messages,
            } => self.producer_send(producer, first_sequence, max_sessions, queue, messages),
            Command::ProducerCommit {
                producer,
                sequence,
                transaction_id,
                acks,
                sends,
            } => self.producer_commit(producer, sequence, transaction_id, acks, sends),
            Command::PlaceGroups { groups } => self
                .placement
                .add_groups(&groups)
                .map(|()| Outcome::GroupsPlaced),
            Command::PlaceQueue {
                queue,
                colocate_with,
            } => self
                .placement
                .place(&queue, colocate_with.as_deref(), &self.limits)
                .map(|group| Outcome::Placed { group }),
            Command::UnplaceQueue { queue } => Ok(Outcome::Placed {
                group: self.placement.unplace(&queue),
            }),
            Command::MoveReplicas { groups } => self
                .placement
                .move_replicas(&groups)
                .map(|()| Outcome::GroupsPlaced),
            Command::DrainNode { node, draining } => {
                self.placement.set_draining(node, draining);
                Ok(Outcome::GroupsPlaced)
            }
        }
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

    /// Brings every queue with timed work due up to the state machine's time.
    pub(super) fn tick(&mut self) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
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

    /// Whether some queue has timed work due at `now_ms` (see [`Command::Tick`]).
    pub fn has_due_work(&self, now_ms: TimeMs) -> bool {
        let now = now_ms.max(self.now_ms);
        self.queues
            .values()
            .any(|queue| queue.next_due_ms().is_some_and(|at| at <= now))
    }

    /// What the state holds in all: the measure of a node's budget.
    pub fn usage(&self) -> Usage {
        let mut usage = Usage {
            queues: self.queues.len() as u64,
            dedup_records: (self.transactions.len()
                + self.producers.len()
                + self.producers.sessions()) as u64,
            ..Usage::default()
        };
        for queue in self.queues.values() {
            let (messages, bytes, dedup_records) = queue.usage();
            usage.messages += messages;
            usage.bytes += bytes;
            usage.dedup_records += dedup_records;
        }
        usage
    }

    pub fn queue_info(&self, name: &str) -> Result<QueueInfo, QueueError> {
        Ok(self.queue(name)?.info())
    }

    pub fn has_queue(&self, name: &str) -> bool {
        self.queues.contains_key(name)
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
