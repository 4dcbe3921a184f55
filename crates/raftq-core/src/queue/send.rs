//! Sending: a batch checked against the limits, room made on overflow, dedup, storing.

use std::collections::HashSet;

use super::{DeadLetterReason, Queue};
use crate::body::{BodyChange, BodyRef};
use crate::command::{NewMessage, SendResult};
use crate::dedup::dedup_key;
use crate::message::{MessageState, StoredMessage};
use crate::record::Record;
use crate::{MessageId, Overflow, QueueError, TimeMs};

impl Queue {
    /// Checks a whole batch before storing any of it, so a refused batch changes nothing.
    /// Under the `DeadLetterOldest` policy a batch that does not fit is accepted when
    /// enough unleased old messages can make room (see [`Queue::make_room`]).
    pub(crate) fn check_send<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a NewMessage>,
    ) -> Result<(), QueueError> {
        let (count, bytes) = self.new_footprint(messages)?;
        let (excess_count, excess_bytes) = self.excess(count, bytes);
        if excess_count == 0 && excess_bytes == 0 {
            return Ok(());
        }
        let full = || QueueError::QueueFull {
            name: self.name.clone(),
            depth: self.messages.len() as u64,
            max_depth: self.options.max_depth,
        };
        // A batch larger than the whole queue never fits.
        let byte_limit = self.byte_limit();
        if count > self.options.max_depth || bytes > byte_limit {
            return Err(full());
        }
        if self.options.overflow == Overflow::Reject {
            return Err(full());
        }
        let (mut freed_count, mut freed_bytes) = (0u64, 0u64);
        for (_, message) in self.evictable() {
            if freed_count >= excess_count && freed_bytes >= excess_bytes {
                break;
            }
            freed_count += 1;
            freed_bytes += message.size();
        }
        if freed_count >= excess_count && freed_bytes >= excess_bytes {
            Ok(())
        } else {
            Err(full())
        }
    }

    /// [`Queue::check_send`] as of `now_ms`, without changing the queue: when timed work
    /// is due by then (expiries, ended leases), which would change how full the queue is
    /// once done, only the messages' sizes are checked.
    pub(crate) fn check_send_at<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a NewMessage>,
        now_ms: TimeMs,
    ) -> Result<(), QueueError> {
        if self.next_due_ms().is_some_and(|at| at <= now_ms) {
            return self.new_footprint(messages).map(|_| ());
        }
        self.check_send(messages)
    }

    fn byte_limit(&self) -> u64 {
        if self.options.max_bytes == 0 {
            u64::MAX
        } else {
            self.options.max_bytes
        }
    }

    /// Messages and bytes a batch would add (repeats of a remembered idempotency key add
    /// nothing); refuses a message above the size limit.
    fn new_footprint<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a NewMessage>,
    ) -> Result<(u64, u64), QueueError> {
        let (mut count, mut bytes) = (0u64, 0u64);
        // Keys this batch stores first: a repeat within the batch is a duplicate too,
        // when the queue remembers keys at all.
        let mut batch_keys = HashSet::new();
        for message in messages {
            let size = message.size();
            if size > self.options.max_message_bytes {
                return Err(QueueError::MessageTooLarge {
                    size,
                    limit: self.options.max_message_bytes,
                });
            }
            let stored = message.idempotency_key.is_empty() || {
                let key = dedup_key(&message.idempotency_key);
                !self.dedup.contains(&key)
                    && (self.options.dedup_window_ms == 0 || batch_keys.insert(key))
            };
            if stored {
                count += 1;
                bytes += size;
            }
        }
        Ok((count, bytes))
    }

    /// How far `count` more messages of `bytes` would go past the limits.
    fn excess(&self, count: u64, bytes: u64) -> (u64, u64) {
        let depth = self.messages.len() as u64;
        (
            (depth + count).saturating_sub(self.options.max_depth),
            (self.bytes + bytes).saturating_sub(self.byte_limit()),
        )
    }

    /// Oldest first, the messages an overflow may remove: those not under a lease.
    pub(super) fn evictable(&self) -> impl Iterator<Item = (u64, &Record)> {
        self.messages.iter().filter(|(_, m)| !m.is_leased())
    }

    /// Under `DeadLetterOldest`, removes the oldest unleased messages until a batch that
    /// passed [`Queue::check_send`] fits.
    pub(crate) fn make_room<'a>(&mut self, messages: impl IntoIterator<Item = &'a NewMessage>) {
        if let Ok((count, bytes)) = self.new_footprint(messages) {
            self.make_room_for(count, bytes);
        }
    }

    /// Under `DeadLetterOldest`, removes the oldest unleased messages until `count` more
    /// messages of `bytes` fit (or nothing more can go).
    pub(crate) fn make_room_for(&mut self, count: u64, bytes: u64) {
        loop {
            let (excess_count, excess_bytes) = self.excess(count, bytes);
            if excess_count == 0 && excess_bytes == 0 {
                return;
            }
            let Some((oldest, _)) = self.evictable().next() else {
                return;
            };
            self.drop_message(oldest, DeadLetterReason::Overflow);
        }
    }

    /// Stores a new message with the body it carries (kept under `message_id`).
    pub(crate) fn send(
        &mut self,
        mut message: NewMessage,
        message_id: MessageId,
        now_ms: TimeMs,
    ) -> SendResult {
        let bytes = std::mem::take(&mut message.body);
        let body = BodyRef {
            key: message_id,
            len: bytes.len() as u64,
        };
        self.store_new(message, body, Some(bytes), message_id, now_ms)
    }

    /// Stores a new message whose body is another message's (a journal copy).
    pub(crate) fn send_shared(
        &mut self,
        message: NewMessage,
        body: BodyRef,
        message_id: MessageId,
        now_ms: TimeMs,
    ) -> SendResult {
        self.store_new(message, body, None, message_id, now_ms)
    }

    /// `bytes` are the body's when it is new; `None` when the body is shared.
    fn store_new(
        &mut self,
        message: NewMessage,
        body: BodyRef,
        bytes: Option<Vec<u8>>,
        message_id: MessageId,
        now_ms: TimeMs,
    ) -> SendResult {
        let key =
            (!message.idempotency_key.is_empty()).then(|| dedup_key(&message.idempotency_key));
        if let Some((message_id, sequence)) = key.and_then(|key| self.dedup.get(&key)) {
            return SendResult {
                message_id,
                sequence,
                duplicate: true,
                expired: false,
            };
        }
        let sequence = self.next_sequence;
        if let Some(key) = key
            && self.options.dedup_window_ms > 0
        {
            let forget_at_ms = now_ms.saturating_add(self.options.dedup_window_ms);
            self.dedup.insert(key, message_id, sequence, forget_at_ms);
        }
        let ttl_ms = if message.ttl_ms == 0 {
            self.options.default_ttl_ms
        } else {
            message.ttl_ms
        };
        let expires_at_ms = if ttl_ms == 0 {
            0
        } else {
            now_ms.saturating_add(ttl_ms)
        };
        let too_late = message.time_to_reach_ms != 0
            && now_ms > message.sent_at_ms.saturating_add(message.time_to_reach_ms);
        let state = if message.delay_ms == 0 {
            MessageState::Ready
        } else {
            MessageState::Delayed {
                visible_at_ms: now_ms.saturating_add(message.delay_ms),
            }
        };
        self.body_changes.push(match bytes {
            Some(bytes) => BodyChange::New(body, bytes),
            None => BodyChange::Shared(body),
        });
        self.store(StoredMessage {
            message_id,
            sequence: 0,
            body,
            headers: message.headers.into(),
            properties: message.properties.into(),
            group: message.group.into(),
            priority: message.priority,
            enqueued_at_ms: now_ms,
            expires_at_ms,
            deliveries: 0,
            state,
            acknowledgement: message.acknowledgement.into(),
        });
        self.stats.total_sent += 1;
        if too_late {
            self.drop_message(sequence, DeadLetterReason::NotReached);
        }
        SendResult {
            message_id,
            sequence,
            duplicate: false,
            expired: too_late,
        }
    }
}
