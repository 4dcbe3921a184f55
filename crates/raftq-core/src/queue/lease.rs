//! Receiving, and a delivery's lease until it is acknowledged, released or extended.

use super::{AckedRun, DeadLetterReason, Queue, ready_key};
use crate::command::{Delivery, Receipt};
use crate::message::MessageState;
use crate::{QueueError, TimeMs};

impl Queue {
    pub(crate) fn receive(
        &mut self,
        max: u32,
        max_bytes: u64,
        lease_ms: u64,
        now_ms: TimeMs,
    ) -> Vec<Delivery> {
        let ready: Vec<u64> = self
            .ready
            .iter()
            .take(max as usize)
            .map(|(_, sequence)| sequence)
            .collect();
        self.lease_all(ready, max_bytes, lease_ms, now_ms)
    }

    /// Leases `sequences` (ready messages, in the order given) until the bytes run out;
    /// the first is always handed out.
    pub(super) fn lease_all(
        &mut self,
        sequences: Vec<u64>,
        max_bytes: u64,
        lease_ms: u64,
        now_ms: TimeMs,
    ) -> Vec<Delivery> {
        let expires_at_ms = now_ms.saturating_add(lease_ms);
        let mut deliveries = Vec::new();
        let mut bytes = 0u64;
        for sequence in sequences {
            let Some(message) = self.messages.get_mut(sequence) else {
                continue;
            };
            let body = message.body();
            let size = body.len;
            if !deliveries.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            self.ready.remove(&ready_key(message.priority, sequence));
            message.deliveries += 1;
            message.set_state(MessageState::Leased { expires_at_ms });
            self.leases.insert((expires_at_ms, sequence));
            if !message.group().is_empty()
                && let Some(entry) = self.groups.get_mut(message.group())
            {
                entry.in_flight = Some(sequence);
            }
            deliveries.push(Delivery {
                message_id: message.message_id,
                sequence,
                body: Vec::new(),
                body_ref: body,
                headers: message.headers().clone(),
                properties: message.properties().clone(),
                group: message.group().to_string(),
                priority: message.priority,
                receipt: Receipt {
                    message_id: message.message_id,
                    attempt: message.deliveries,
                },
                enqueued_at_ms: message.enqueued_at_ms,
                lease_expires_at_ms: expires_at_ms,
                expires_at_ms: message.expires_at_ms,
            });
        }
        self.stats.total_deliveries += deliveries.len() as u64;
        deliveries
    }

    /// Finds the leased message a receipt refers to, or says why the receipt is stale.
    fn leased(&self, receipt: Receipt, now_ms: TimeMs) -> Result<(u64, TimeMs), QueueError> {
        let stale = |reason: &str| QueueError::StaleReceipt {
            receipt: receipt.to_string(),
            reason: reason.to_string(),
        };
        let sequence = self
            .sequence_by_id
            .get(receipt.message_id)
            .ok_or_else(|| stale("the message is no longer in the queue"))?;
        let message = &self.messages[sequence];
        if message.deliveries != receipt.attempt {
            return Err(stale(&format!(
                "the message was delivered again (attempt {})",
                message.deliveries
            )));
        }
        match message.state() {
            MessageState::Leased { expires_at_ms } if expires_at_ms > now_ms => {
                Ok((sequence, expires_at_ms))
            }
            MessageState::Leased { .. } => Err(stale("the lease expired")),
            _ => Err(stale("its lease expired or the message was released")),
        }
    }

    /// Whether the receipt is the current delivery with its lease running, so an ack now
    /// would consume the message. Unlike a standalone ack, a receipt that already acked
    /// the message does not pass: a transaction built on it would apply its sends twice.
    pub(crate) fn check_current(&self, receipt: Receipt, now_ms: TimeMs) -> Result<(), QueueError> {
        if self
            .acked
            .get(receipt.message_id)
            .is_some_and(|attempt| attempt == u64::from(receipt.attempt))
        {
            return Err(QueueError::StaleReceipt {
                receipt: receipt.to_string(),
                reason: "it already acknowledged the message".into(),
            });
        }
        self.leased(receipt, now_ms).map(|_| ())
    }

    pub(crate) fn ack(&mut self, receipt: Receipt, now_ms: TimeMs) -> Result<bool, QueueError> {
        if self.acked.get(receipt.message_id) == Some(u64::from(receipt.attempt)) {
            return Ok(true);
        }
        let (sequence, _) = self.leased(receipt, now_ms)?;
        if let Some(message) = self.remove_message(sequence) {
            self.after_consumed(&message);
        }
        let forget_at = now_ms.saturating_add(self.options.dedup_window_ms);
        self.acked
            .insert(receipt.message_id, u64::from(receipt.attempt));
        match self.acked_expiry.back_mut() {
            Some(run)
                if run.at == forget_at
                    && run.first.checked_add(run.count) == Some(receipt.message_id) =>
            {
                run.count += 1;
            }
            _ => self.acked_expiry.push_back(AckedRun {
                at: forget_at,
                first: receipt.message_id,
                count: 1,
            }),
        }
        self.stats.total_acked += 1;
        Ok(false)
    }

    /// Takes a leased message out for good (see `Command::Reject`); returns whether it
    /// went to the dead-letter queue.
    pub(crate) fn reject(
        &mut self,
        receipt: Receipt,
        detail: &str,
        now_ms: TimeMs,
    ) -> Result<bool, QueueError> {
        let (sequence, _) = self.leased(receipt, now_ms)?;
        Ok(self.drop_message_with(sequence, DeadLetterReason::Rejected, detail))
    }

    pub(crate) fn nack(
        &mut self,
        receipt: Receipt,
        delay_ms: u64,
        now_ms: TimeMs,
    ) -> Result<TimeMs, QueueError> {
        let (sequence, expires_at_ms) = self.leased(receipt, now_ms)?;
        self.leases.remove(&(expires_at_ms, sequence));
        let visible_at_ms = now_ms.saturating_add(delay_ms);
        let expired = self
            .messages
            .get(sequence)
            .is_some_and(|m| m.expires_at_ms != 0 && m.expires_at_ms <= now_ms);
        if delay_ms == 0 {
            self.make_ready(sequence, now_ms);
        } else if expired {
            // Released after its time to be received: it expires now, not after the delay.
            self.drop_message(sequence, DeadLetterReason::Expired);
        } else if let Some(message) = self.messages.get_mut(sequence) {
            // Still the head of its group: the group waits for it (order is kept).
            message.set_state(MessageState::Delayed { visible_at_ms });
            self.delayed.insert((visible_at_ms, sequence));
            let group = message.group().to_string();
            if let Some(entry) = self.groups.get_mut(&group)
                && entry.in_flight == Some(sequence)
            {
                entry.in_flight = None;
            }
        }
        Ok(visible_at_ms)
    }

    pub(crate) fn extend_lease(
        &mut self,
        receipt: Receipt,
        lease_ms: u64,
        now_ms: TimeMs,
    ) -> Result<TimeMs, QueueError> {
        let (sequence, expires_at_ms) = self.leased(receipt, now_ms)?;
        let new_expiry = now_ms.saturating_add(lease_ms);
        self.leases.remove(&(expires_at_ms, sequence));
        self.leases.insert((new_expiry, sequence));
        if let Some(message) = self.messages.get_mut(sequence) {
            message.set_state(MessageState::Leased {
                expires_at_ms: new_expiry,
            });
        }
        Ok(new_expiry)
    }
}
