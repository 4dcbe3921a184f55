//! Selective receive and peek: the messages named by message id or correlation id.

use super::{Queue, ready_key};
use crate::command::Delivery;
use crate::message::{MessageState, StoredMessage};
use crate::{MessageId, TimeMs};

impl Queue {
    /// The stored messages a selector names, in send order: the message with `message_id`
    /// (when not 0) and/or those carrying `correlation_id` (when not empty).
    fn selected(&self, message_id: MessageId, correlation_id: &str) -> Vec<u64> {
        let by_id = (message_id != 0).then(|| self.sequence_by_id.get(message_id));
        let by_correlation = (!correlation_id.is_empty()).then(|| {
            self.by_correlation
                .get(correlation_id)
                .cloned()
                .unwrap_or_default()
        });
        match (by_id, by_correlation) {
            (Some(id), Some(set)) => id.filter(|s| set.contains(s)).into_iter().collect(),
            (Some(id), None) => id.into_iter().collect(),
            (None, Some(set)) => set.into_iter().collect(),
            (None, None) => Vec::new(),
        }
    }

    fn is_ready(&self, sequence: u64) -> bool {
        self.messages
            .get(sequence)
            .is_some_and(|m| self.ready.contains(&ready_key(m.priority, sequence)))
    }

    /// Receives only messages the selector names, among those a plain receive could hand
    /// out now (ready, and heading a group with nothing in flight).
    pub(crate) fn receive_selected(
        &mut self,
        message_id: MessageId,
        correlation_id: &str,
        max: u32,
        max_bytes: u64,
        lease_ms: u64,
        now_ms: TimeMs,
    ) -> Vec<Delivery> {
        let chosen: Vec<u64> = self
            .selected(message_id, correlation_id)
            .into_iter()
            .filter(|sequence| self.is_ready(*sequence))
            .take(max as usize)
            .collect();
        self.lease_all(chosen, max_bytes, lease_ms, now_ms)
    }

    /// Whether a selective receive at `now_ms` could hand out something: a named message is
    /// ready, or its delay or lease has ended.
    pub(crate) fn has_selected_deliverable(
        &self,
        message_id: MessageId,
        correlation_id: &str,
        now_ms: TimeMs,
    ) -> bool {
        self.selected(message_id, correlation_id)
            .into_iter()
            .any(|sequence| {
                self.is_ready(sequence)
                    || self
                        .messages
                        .get(sequence)
                        .is_some_and(|m| match m.state() {
                            MessageState::Ready => false,
                            MessageState::Delayed { visible_at_ms } => visible_at_ms <= now_ms,
                            MessageState::Leased { expires_at_ms } => expires_at_ms <= now_ms,
                        })
            })
    }

    /// Messages in send order from `after_sequence` on, without leasing them; only those a
    /// selector names when it names any (`message_id` not 0, `correlation_id` not empty).
    pub(crate) fn peek(
        &self,
        after_sequence: u64,
        max: usize,
        message_id: MessageId,
        correlation_id: &str,
    ) -> Vec<StoredMessage> {
        if message_id == 0 && correlation_id.is_empty() {
            return self
                .messages
                .range_from(after_sequence.saturating_add(1))
                .take(max)
                .map(|(sequence, message)| message.to_message(sequence))
                .collect();
        }
        self.selected(message_id, correlation_id)
            .into_iter()
            .filter(|sequence| *sequence > after_sequence)
            .take(max)
            .filter_map(|sequence| {
                self.messages
                    .get(sequence)
                    .map(|message| message.to_message(sequence))
            })
            .collect()
    }
}
