//! What a leader checks before it proposes a command: every refusal that the request and
//! the state as it is now already decide. A command refused here is never written to the
//! log, so a flood of commands that would be refused cannot grow it.
//!
//! The checks are the ones `apply` makes (the same functions), read-only. Passing them
//! promises nothing: the state may change before the command is applied (a receipt goes
//! stale, a queue fills up), and `apply` decides then. What depends on time the state has
//! not caught up with yet (a full queue whose messages are due to expire) is left to
//! `apply`, so a command is never refused here that `apply` would have taken.

use super::StateMachine;
use crate::command::{Command, NewMessage, TransactionAck, TransactionSend};
use crate::producers::{ProducerId, Standing, Stream};
use crate::{QueueError, TimeMs};

impl StateMachine {
    /// The error `apply` would give `command` now, if the request and the state as it is
    /// at `now_ms` (the leader's estimate of the command's time) already decide it.
    pub fn precheck(&self, command: &Command, now_ms: TimeMs) -> Result<(), QueueError> {
        let now_ms = now_ms.max(self.now_ms);
        match command {
            Command::CreateQueue { name, options } => self.check_create_queue(name, options),
            Command::DeleteQueue { name } | Command::PurgeQueue { name } => {
                self.queue(name).map(|_| ())
            }
            Command::Send { queue, messages } => self.precheck_send(queue, messages, now_ms),
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            } => self
                .check_receive(queue, *max_messages, *lease_ms)
                .map(|_| ()),
            Command::ReceiveSelected {
                queue,
                message_id,
                correlation_id,
                max_messages,
                lease_ms,
            } => {
                if *message_id == 0 && correlation_id.is_empty() {
                    return Err(QueueError::invalid(
                        "selector",
                        "name a message id or a correlation id",
                    ));
                }
                self.check_receive(queue, *max_messages, *lease_ms)
                    .map(|_| ())
            }
            Command::Ack { queue, .. } => self.queue(queue).map(|_| ()),
            Command::AckBatch { queue, receipts } => {
                self.limits.check_ack_batch(receipts.len())?;
                self.queue(queue).map(|_| ())
            }
            Command::Nack {
                queue, delay_ms, ..
            } => {
                self.limits.check_nack_delay("delay_ms", *delay_ms)?;
                self.queue(queue).map(|_| ())
            }
            Command::Reject { queue, detail, .. } => {
                self.limits.check_reject_detail(detail)?;
                self.queue(queue).map(|_| ())
            }
            Command::ExtendLease {
                queue, lease_ms, ..
            } => {
                self.limits.check_lease("lease_ms", *lease_ms)?;
                self.queue(queue).map(|_| ())
            }
            Command::Redrive {
                queue,
                message_ids,
                max,
                to,
            } => self.check_redrive(queue, message_ids, *max, to),
            Command::Commit {
                transaction_id,
                acks,
                sends,
            } => self.precheck_commit(transaction_id, acks, sends, now_ms),
            Command::Tick | Command::UnplaceQueue { .. } | Command::DrainNode { .. } => Ok(()),
            Command::MoveReplicas { groups } => self.placement.check_moves(groups),
            Command::PlaceGroups { groups } => self.placement.check_groups(groups),
            Command::PlaceQueue {
                queue,
                colocate_with,
            } => crate::placement::check_place(queue, colocate_with.as_deref(), &self.limits),
            Command::Batch(commands) => commands
                .iter()
                .try_for_each(|command| self.precheck(command, now_ms)),
            Command::CreatePrincipal { name, .. } => self.access.check_create(name),
            Command::DeletePrincipal { name }
            | Command::Revoke {
                principal: name, ..
            } => self.access.check_exists(name),
            Command::Grant {
                principal,
                pattern,
                actions,
            } => self.access.check_grant(principal, pattern, *actions),
            Command::RegisterProducer {
                name,
                idle_expiry_ms,
                max_producers,
            } => self
                .producers
                .check_register(name, *idle_expiry_ms, *max_producers),
            Command::ProducerSend {
                producer,
                first_sequence,
                max_sessions,
                queue,
                messages,
            } => self.precheck_numbered(
                *producer,
                Stream::Queue(queue.clone()),
                (*first_sequence, messages.len() as u64),
                *max_sessions,
                || self.precheck_send(queue, messages, now_ms),
            ),
            Command::ProducerCommit {
                producer,
                sequence,
                transaction_id,
                acks,
                sends,
            } => self.precheck_numbered(
                *producer,
                Stream::Transactions,
                (*sequence, 1),
                u64::MAX,
                || self.precheck_commit(transaction_id, acks, sends, now_ms),
            ),
        }
    }

    fn precheck_send(
        &self,
        queue: &str,
        messages: &[NewMessage],
        now_ms: TimeMs,
    ) -> Result<(), QueueError> {
        self.limits.check_send_batch(messages)?;
        self.check_acknowledgement_queues(messages)?;
        self.queue(queue)?.check_send_at(messages, now_ms)
    }

    fn precheck_commit(
        &self,
        transaction_id: &str,
        acks: &[TransactionAck],
        sends: &[TransactionSend],
        now_ms: TimeMs,
    ) -> Result<(), QueueError> {
        self.limits.check_transaction_id(transaction_id)?;
        if self.transactions.contains_key(transaction_id) {
            // A repeat: `apply` answers it with the first commit's outcome.
            return Ok(());
        }
        self.limits
            .check_transaction_parts(acks.len(), sends.iter().map(|send| &send.message))?;
        self.check_acknowledgement_queues(sends.iter().map(|send| &send.message))?;
        for ack in acks {
            self.queue(&ack.queue)?;
        }
        self.check_transaction_sends(sends, now_ms)
    }

    /// A numbered send or commit: its sequence, then (only when it is next: a repeat is
    /// answered, not applied) the command itself.
    fn precheck_numbered(
        &self,
        producer: ProducerId,
        stream: Stream,
        (first, count): (u64, u64),
        max_sessions: u64,
        command: impl FnOnce() -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        match self
            .producers
            .check(producer, &stream, first, count, max_sessions)?
        {
            Standing::Repeat(_) => Ok(()),
            Standing::Next => command(),
        }
    }

    /// The sends of a transaction, by queue: each queue exists and has room for its part.
    fn check_transaction_sends(
        &self,
        sends: &[TransactionSend],
        now_ms: TimeMs,
    ) -> Result<(), QueueError> {
        let mut by_queue: std::collections::BTreeMap<&str, Vec<_>> = Default::default();
        for send in sends {
            by_queue
                .entry(send.queue.as_str())
                .or_default()
                .push(&send.message);
        }
        for (name, messages) in by_queue {
            self.queue(name)?
                .check_send_at(messages.iter().copied(), now_ms)?;
        }
        Ok(())
    }
}
