use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::{Delivery, NewMessage, QueueInfo, QueueStats, Receipt, SendResult};
use crate::{MessageId, QueueError, QueueOptions, TimeMs};

/// Where a stored message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    Ready,
    Delayed { visible_at_ms: TimeMs },
    Leased { expires_at_ms: TimeMs },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub message_id: MessageId,
    pub sequence: u64,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub enqueued_at_ms: TimeMs,
    /// Times handed out so far; the current delivery's attempt number when leased.
    pub deliveries: u32,
    pub state: MessageState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DedupRecord {
    message_id: MessageId,
    sequence: u64,
    expires_at_ms: TimeMs,
}

/// One queue. Messages are keyed by sequence so that "lowest ready sequence first" is send
/// order, also for messages that come back after a nack or an expired lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    name: String,
    options: QueueOptions,
    created_at_ms: TimeMs,
    next_sequence: u64,
    messages: BTreeMap<u64, StoredMessage>,
    sequence_by_id: BTreeMap<MessageId, u64>,
    ready: BTreeSet<u64>,
    delayed: BTreeSet<(TimeMs, u64)>,
    leases: BTreeSet<(TimeMs, u64)>,
    dedup: BTreeMap<String, DedupRecord>,
    dedup_expiry: BTreeSet<(TimeMs, String)>,
    /// Recently acked receipts, so that a retried ack of the same receipt succeeds again.
    acked: BTreeMap<MessageId, (u32, TimeMs)>,
    acked_expiry: BTreeSet<(TimeMs, MessageId)>,
    stats: QueueStats,
}

impl Queue {
    pub(crate) fn new(name: String, options: QueueOptions, now_ms: TimeMs) -> Self {
        Queue {
            name,
            options,
            created_at_ms: now_ms,
            next_sequence: 1,
            messages: BTreeMap::new(),
            sequence_by_id: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            leases: BTreeSet::new(),
            dedup: BTreeMap::new(),
            dedup_expiry: BTreeSet::new(),
            acked: BTreeMap::new(),
            acked_expiry: BTreeSet::new(),
            stats: QueueStats::default(),
        }
    }

    pub(crate) fn options(&self) -> &QueueOptions {
        &self.options
    }

    pub(crate) fn info(&self) -> QueueInfo {
        let mut stats = self.stats.clone();
        stats.depth = self.messages.len() as u64;
        stats.in_flight = self.leases.len() as u64;
        stats.delayed = self.delayed.len() as u64;
        QueueInfo {
            name: self.name.clone(),
            options: self.options.clone(),
            created_at_ms: self.created_at_ms,
            stats,
        }
    }

    /// Brings the queue up to `now_ms`: delays that ran out and leases that expired make
    /// messages ready again; dedup and ack records past their window are forgotten.
    pub(crate) fn advance(&mut self, now_ms: TimeMs) {
        while let Some(&(at, sequence)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.make_ready(sequence);
        }
        while let Some(&(at, sequence)) = self.leases.first() {
            if at > now_ms {
                break;
            }
            self.leases.pop_first();
            self.make_ready(sequence);
        }
        while let Some((at, _)) = self.dedup_expiry.first() {
            if *at > now_ms {
                break;
            }
            if let Some((_, key)) = self.dedup_expiry.pop_first() {
                self.dedup.remove(&key);
            }
        }
        while let Some(&(at, message_id)) = self.acked_expiry.first() {
            if at > now_ms {
                break;
            }
            self.acked_expiry.pop_first();
            self.acked.remove(&message_id);
        }
    }

    /// Returns a message to the ready set, or discards it once it was delivered the
    /// queue's maximum number of times.
    fn make_ready(&mut self, sequence: u64) {
        let max = self.options.max_delivery_count;
        let Some(message) = self.messages.get_mut(&sequence) else {
            return;
        };
        if max > 0 && message.deliveries >= max {
            let message_id = message.message_id;
            self.messages.remove(&sequence);
            self.sequence_by_id.remove(&message_id);
            self.stats.total_discarded += 1;
            return;
        }
        message.state = MessageState::Ready;
        self.ready.insert(sequence);
    }

    /// True when a receive at `now_ms` would hand out at least one message.
    pub(crate) fn has_deliverable(&self, now_ms: TimeMs) -> bool {
        !self.ready.is_empty()
            || self.delayed.first().is_some_and(|(at, _)| *at <= now_ms)
            || self.leases.first().is_some_and(|(at, _)| *at <= now_ms)
    }

    /// Earliest time at which a delayed or leased message becomes ready again.
    pub(crate) fn next_wakeup_ms(&self) -> Option<TimeMs> {
        let delayed = self.delayed.first().map(|(at, _)| *at);
        let leased = self.leases.first().map(|(at, _)| *at);
        match (delayed, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks a whole batch before storing any of it, so a refused batch changes nothing.
    pub(crate) fn check_send(&self, messages: &[NewMessage]) -> Result<(), QueueError> {
        let mut new_messages = 0u64;
        for message in messages {
            let size = message.size();
            if size > self.options.max_message_bytes {
                return Err(QueueError::MessageTooLarge {
                    size,
                    limit: self.options.max_message_bytes,
                });
            }
            if message.idempotency_key.is_empty()
                || !self.dedup.contains_key(&message.idempotency_key)
            {
                new_messages += 1;
            }
        }
        let depth = self.messages.len() as u64;
        if depth + new_messages > self.options.max_depth {
            return Err(QueueError::QueueFull {
                name: self.name.clone(),
                depth,
                max_depth: self.options.max_depth,
            });
        }
        Ok(())
    }

    pub(crate) fn send(
        &mut self,
        message: NewMessage,
        message_id: MessageId,
        now_ms: TimeMs,
    ) -> SendResult {
        if let Some(record) = self.dedup.get(&message.idempotency_key) {
            return SendResult {
                message_id: record.message_id,
                sequence: record.sequence,
                duplicate: true,
            };
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        if !message.idempotency_key.is_empty() && self.options.dedup_window_ms > 0 {
            let expires_at_ms = now_ms.saturating_add(self.options.dedup_window_ms);
            self.dedup_expiry
                .insert((expires_at_ms, message.idempotency_key.clone()));
            self.dedup.insert(
                message.idempotency_key,
                DedupRecord {
                    message_id,
                    sequence,
                    expires_at_ms,
                },
            );
        }
        self.messages.insert(
            sequence,
            StoredMessage {
                message_id,
                sequence,
                body: message.body,
                headers: message.headers,
                enqueued_at_ms: now_ms,
                deliveries: 0,
                state: MessageState::Ready,
            },
        );
        self.sequence_by_id.insert(message_id, sequence);
        self.ready.insert(sequence);
        self.stats.total_sent += 1;
        SendResult {
            message_id,
            sequence,
            duplicate: false,
        }
    }

    pub(crate) fn receive(
        &mut self,
        max: u32,
        max_bytes: u64,
        lease_ms: u64,
        now_ms: TimeMs,
    ) -> Vec<Delivery> {
        let expires_at_ms = now_ms.saturating_add(lease_ms);
        let mut deliveries = Vec::new();
        let mut bytes = 0u64;
        while deliveries.len() < max as usize {
            let Some(&sequence) = self.ready.first() else {
                break;
            };
            let size = self
                .messages
                .get(&sequence)
                .map_or(0, |m| m.body.len() as u64);
            if !deliveries.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            self.ready.pop_first();
            let Some(message) = self.messages.get_mut(&sequence) else {
                continue;
            };
            message.deliveries += 1;
            message.state = MessageState::Leased { expires_at_ms };
            self.leases.insert((expires_at_ms, sequence));
            deliveries.push(Delivery {
                message_id: message.message_id,
                sequence,
                body: message.body.clone(),
                headers: message.headers.clone(),
                receipt: Receipt {
                    message_id: message.message_id,
                    attempt: message.deliveries,
                },
                enqueued_at_ms: message.enqueued_at_ms,
                lease_expires_at_ms: expires_at_ms,
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
        let sequence = *self
            .sequence_by_id
            .get(&receipt.message_id)
            .ok_or_else(|| stale("the message is no longer in the queue"))?;
        let message = &self.messages[&sequence];
        if message.deliveries != receipt.attempt {
            return Err(stale(&format!(
                "the message was delivered again (attempt {})",
                message.deliveries
            )));
        }
        match message.state {
            MessageState::Leased { expires_at_ms } if expires_at_ms > now_ms => {
                Ok((sequence, expires_at_ms))
            }
            MessageState::Leased { .. } => Err(stale("the lease expired")),
            _ => Err(stale("its lease expired or the message was released")),
        }
    }

    pub(crate) fn ack(&mut self, receipt: Receipt, now_ms: TimeMs) -> Result<bool, QueueError> {
        if self
            .acked
            .get(&receipt.message_id)
            .map(|(attempt, _)| *attempt)
            == Some(receipt.attempt)
        {
            return Ok(true);
        }
        let (sequence, expires_at_ms) = self.leased(receipt, now_ms)?;
        self.leases.remove(&(expires_at_ms, sequence));
        self.messages.remove(&sequence);
        self.sequence_by_id.remove(&receipt.message_id);
        let forget_at = now_ms.saturating_add(self.options.dedup_window_ms);
        self.acked
            .insert(receipt.message_id, (receipt.attempt, forget_at));
        self.acked_expiry.insert((forget_at, receipt.message_id));
        self.stats.total_acked += 1;
        Ok(false)
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
        if delay_ms == 0 {
            self.make_ready(sequence);
        } else if let Some(message) = self.messages.get_mut(&sequence) {
            message.state = MessageState::Delayed { visible_at_ms };
            self.delayed.insert((visible_at_ms, sequence));
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
        if let Some(message) = self.messages.get_mut(&sequence) {
            message.state = MessageState::Leased {
                expires_at_ms: new_expiry,
            };
        }
        Ok(new_expiry)
    }

    /// Removes every stored message; dedup records stay so retried sends are not re-stored.
    pub(crate) fn purge(&mut self) -> u64 {
        let removed = self.messages.len() as u64;
        self.messages.clear();
        self.sequence_by_id.clear();
        self.ready.clear();
        self.delayed.clear();
        self.leases.clear();
        removed
    }

    /// Messages in send order from `after_sequence` on, without leasing them.
    pub(crate) fn peek(&self, after_sequence: u64, max: usize) -> Vec<StoredMessage> {
        self.messages
            .range(after_sequence.saturating_add(1)..)
            .take(max)
            .map(|(_, message)| message.clone())
            .collect()
    }
}
