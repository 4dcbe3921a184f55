//! Commands on messages: send, receive (plain and selective), ack, nack, lease extension.

use super::StateMachine;
use crate::command::{NewMessage, Outcome, Receipt};
use crate::{MessageId, QueueError};

impl StateMachine {
    /// Acknowledgement queues named by new messages must exist.
    pub(super) fn check_acknowledgement_queues<'a>(
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
    pub(super) fn check_receive(
        &self,
        queue: &str,
        max_messages: u32,
        lease_ms: u64,
    ) -> Result<(u64, u64), QueueError> {
        self.limits.check_receive_size(max_messages)?;
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

    /// Stores a batch of messages, all or none.
    pub(super) fn send(
        &mut self,
        queue: String,
        messages: Vec<NewMessage>,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_send_batch(&messages)?;
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

    /// Leases up to `max_messages` of the messages ready to hand out.
    pub(super) fn receive(
        &mut self,
        queue: String,
        max_messages: u32,
        lease_ms: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        let (max_bytes, lease_ms) = self.check_receive(&queue, max_messages, lease_ms)?;
        let queue = self.queue_mut(&queue)?;
        Ok(Outcome::Received(queue.receive(
            max_messages,
            max_bytes,
            lease_ms,
            now,
        )))
    }

    /// Leases ready messages named by a message id and/or a correlation id.
    pub(super) fn receive_selected(
        &mut self,
        queue: String,
        message_id: MessageId,
        correlation_id: String,
        max_messages: u32,
        lease_ms: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
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

    /// Acknowledges one receipt.
    pub(super) fn ack(&mut self, queue: String, receipt: Receipt) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        let queue = self.queue_mut(&queue)?;
        let already_acked = queue.ack(receipt, now)?;
        Ok(Outcome::Acked { already_acked })
    }

    /// Acknowledges each receipt on its own; each result is reported in order.
    pub(super) fn ack_batch(
        &mut self,
        queue: String,
        receipts: Vec<Receipt>,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_ack_batch(receipts.len())?;
        let queue = self.queue_mut(&queue)?;
        let results = receipts
            .into_iter()
            .map(|receipt| queue.ack(receipt, now))
            .collect();
        Ok(Outcome::AckedBatch(results))
    }

    /// Releases a leased message, visible again `delay_ms` from now.
    pub(super) fn nack(
        &mut self,
        queue: String,
        receipt: Receipt,
        delay_ms: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_nack_delay("delay_ms", delay_ms)?;
        let queue = self.queue_mut(&queue)?;
        let visible_at_ms = queue.nack(receipt, delay_ms, now)?;
        Ok(Outcome::Nacked { visible_at_ms })
    }

    /// Takes a leased message out for good: to the dead-letter queue, or discarded.
    pub(super) fn reject(
        &mut self,
        queue: String,
        receipt: Receipt,
        detail: String,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_reject_detail(&detail)?;
        let queue = self.queue_mut(&queue)?;
        let dead_lettered = queue.reject(receipt, &detail, now)?;
        Ok(Outcome::Rejected { dead_lettered })
    }

    /// Extends a lease to `lease_ms` from now.
    pub(super) fn extend_lease(
        &mut self,
        queue: String,
        receipt: Receipt,
        lease_ms: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.limits.check_lease("lease_ms", lease_ms)?;
        let queue = self.queue_mut(&queue)?;
        let lease_expires_at_ms = queue.extend_lease(receipt, lease_ms, now)?;
        Ok(Outcome::LeaseExtended {
            lease_expires_at_ms,
        })
    }
}
