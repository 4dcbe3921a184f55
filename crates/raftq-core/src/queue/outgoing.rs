//! What leaves a queue during a command: dead letters, journal copies, acknowledgements.

use std::collections::BTreeMap;

use super::Queue;
use crate::body::{BodyChange, BodyRef};
use crate::command::{MessageProperties, NewMessage};
use crate::message::StoredMessage;
use crate::record::Record;
use crate::sparse::Sparse;

/// Headers a dead-lettered message gains.
pub const DEAD_LETTER_REASON: &str = "raftq-dead-letter-reason";
pub const DEAD_LETTER_SOURCE: &str = "raftq-dead-letter-source";
pub const DELIVERY_COUNT: &str = "raftq-delivery-count";
/// The consumer's own words on a rejected message (dead letter and acknowledgement).
pub const DEAD_LETTER_DETAIL: &str = "raftq-dead-letter-detail";
/// Headers of acknowledgement messages and journal copies.
pub const ACK_KIND: &str = "raftq-ack-kind";
pub const DEAD_LETTERED: &str = "raftq-dead-lettered";
pub const SOURCE_QUEUE: &str = "raftq-source-queue";
pub const ORIGINAL_MESSAGE_ID: &str = "raftq-original-message-id";

/// Why a message left its queue without being acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    MaxDeliveries,
    Expired,
    /// Removed to make room under the `DeadLetterOldest` overflow policy.
    Overflow,
    /// Arrived after its time to reach the queue.
    NotReached,
    /// Rejected by its consumer.
    Rejected,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MaxDeliveries => "max-deliveries",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Overflow => "overflow",
            DeadLetterReason::NotReached => "not-reached",
            DeadLetterReason::Rejected => "rejected",
        }
    }
}

/// A message leaving a queue for another one during a command; the state machine
/// delivers it before the command ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    /// Moves to the dead-letter queue `target` (created on demand).
    DeadLetter {
        message: StoredMessage,
        target: String,
    },
    /// A copy of a consumed message for the journal queue `target` (created on demand).
    /// `message` has no body of its own: the copy shares `body` with the original.
    Journal {
        message: NewMessage,
        body: BodyRef,
        target: String,
    },
    /// An acknowledgement message for `target`, posted only if that queue exists.
    Notice { message: NewMessage, target: String },
}

impl Queue {
    /// Removes a message that will not be acknowledged here: to the dead-letter queue when
    /// the queue has one for this reason, else discarded (and counted).
    /// Returns whether it went to the dead-letter queue.
    pub(super) fn drop_message(&mut self, sequence: u64, reason: DeadLetterReason) -> bool {
        self.drop_message_with(sequence, reason, "")
    }

    /// `drop_message` with the consumer's `detail` (when not empty) on the dead letter and
    /// the acknowledgement message.
    pub(super) fn drop_message_with(
        &mut self,
        sequence: u64,
        reason: DeadLetterReason,
        detail: &str,
    ) -> bool {
        let Some(message) = self.remove_message(sequence) else {
            return false;
        };
        if matches!(
            reason,
            DeadLetterReason::Expired | DeadLetterReason::NotReached
        ) {
            self.stats.total_expired += 1;
        }
        let dead_letter = match reason {
            DeadLetterReason::MaxDeliveries
            | DeadLetterReason::Overflow
            | DeadLetterReason::Rejected => !self.options.dead_letter_queue.is_empty(),
            DeadLetterReason::Expired | DeadLetterReason::NotReached => {
                self.options.dead_letter_expired
            }
        };
        if message.acknowledgement().negative {
            let kind = reason.as_str();
            self.post_notice(&message, kind, Some(dead_letter), detail);
        }
        if !dead_letter {
            self.stats.total_discarded += 1;
            self.body_changes.push(BodyChange::Released(message.body()));
            return false;
        }
        let mut message = message.to_message(sequence);
        // Acknowledgements are the sending queue's business; a dead letter asks for none.
        message.acknowledgement = Sparse::default();
        self.stats.total_dead_lettered += 1;
        let deliveries = message.deliveries.to_string();
        let headers = message.headers.make_mut();
        headers.insert(DEAD_LETTER_REASON.into(), reason.as_str().into());
        headers.insert(DEAD_LETTER_SOURCE.into(), self.name.clone());
        headers.insert(DELIVERY_COUNT.into(), deliveries);
        if !detail.is_empty() {
            headers.insert(DEAD_LETTER_DETAIL.into(), detail.into());
        }
        self.outbox.push(Outgoing::DeadLetter {
            message,
            target: self.options.dead_letter_queue.clone(),
        });
        true
    }

    /// Queues an acknowledgement message about `message` for its acknowledgement queue.
    fn post_notice(
        &mut self,
        message: &Record,
        kind: &str,
        dead_lettered: Option<bool>,
        detail: &str,
    ) {
        let mut headers = BTreeMap::from([
            (ACK_KIND.to_string(), kind.to_string()),
            (SOURCE_QUEUE.to_string(), self.name.clone()),
        ]);
        if let Some(dead_lettered) = dead_lettered {
            headers.insert(DEAD_LETTERED.to_string(), dead_lettered.to_string());
        }
        if !detail.is_empty() {
            headers.insert(DEAD_LETTER_DETAIL.to_string(), detail.to_string());
        }
        self.outbox.push(Outgoing::Notice {
            message: NewMessage {
                headers,
                properties: MessageProperties {
                    label: message.properties().label.clone(),
                    correlation_id: message.message_id.to_string(),
                    ..MessageProperties::default()
                },
                ..NewMessage::default()
            },
            target: message.acknowledgement().queue.clone(),
        });
    }

    /// After an ack: the journal copy and the positive acknowledgement, when asked for.
    pub(super) fn after_consumed(&mut self, message: &Record) {
        if self.options.journal {
            let mut headers = message.headers().clone();
            headers.insert(SOURCE_QUEUE.to_string(), self.name.clone());
            headers.insert(
                ORIGINAL_MESSAGE_ID.to_string(),
                message.message_id.to_string(),
            );
            self.outbox.push(Outgoing::Journal {
                body: message.body(),
                message: NewMessage {
                    headers,
                    properties: message.properties().clone(),
                    priority: message.priority,
                    ..NewMessage::default()
                },
                target: crate::journal_queue_name(&self.name),
            });
        }
        if message.acknowledgement().positive {
            self.post_notice(message, "consumed", None, "");
        }
        self.body_changes.push(BodyChange::Released(message.body()));
    }
}
