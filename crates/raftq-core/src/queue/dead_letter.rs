//! A dead-letter queue's side: dead letters taken in, and handed back out by redrive.

use super::{DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, DELIVERY_COUNT, Queue};
use crate::body::BodyChange;
use crate::message::{MessageState, StoredMessage};
use crate::record::Record;
use crate::sparse::Sparse;
use crate::{MessageId, QueueError};

impl Queue {
    /// Takes in a message dead-lettered by another queue: it keeps its id, headers and
    /// properties, starts with no deliveries, no group and no expiry, ready at once.
    pub(crate) fn accept_dead_letter(&mut self, mut message: StoredMessage) {
        message.deliveries = 0;
        message.group = Sparse::default();
        message.expires_at_ms = 0;
        message.state = MessageState::Ready;
        if let Some(old) = self.sequence_by_id.get(message.message_id) {
            // The same id can only be here already if it was redriven and came back while a
            // copy stayed; keep one.
            if let Some(old) = self.remove_message(old)
                && old.body().key != message.body.key
            {
                self.body_changes.push(BodyChange::Released(old.body()));
            }
        }
        self.store(message);
        self.stats.total_sent += 1;
    }

    /// Removes dead-lettered messages for redrive: the listed ids (all must be here and not
    /// under a lease), or with no ids up to `max` unleased ones from the head.
    pub(crate) fn take_for_redrive(
        &mut self,
        message_ids: &[MessageId],
        max: usize,
    ) -> Result<Vec<StoredMessage>, QueueError> {
        let sequences: Vec<u64> = if message_ids.is_empty() {
            self.evictable()
                .take(max)
                .map(|(sequence, _)| sequence)
                .collect()
        } else {
            let mut sequences = Vec::with_capacity(message_ids.len());
            for id in message_ids {
                let sequence =
                    self.sequence_by_id
                        .get(*id)
                        .ok_or_else(|| QueueError::MessageNotFound {
                            queue: self.name.clone(),
                            message_id: *id,
                        })?;
                if self.messages[sequence].is_leased() {
                    return Err(QueueError::invalid(
                        "message_ids",
                        format!("message {id} is under a lease"),
                    ));
                }
                sequences.push(sequence);
            }
            sequences
        };
        Ok(sequences
            .into_iter()
            .filter_map(|sequence| {
                self.remove_message(sequence)
                    .map(|record| record.to_message(sequence))
            })
            .collect())
    }

    /// The source-queue header of each message a redrive would move (empty when absent).
    pub(crate) fn redrive_destinations(
        &self,
        message_ids: &[MessageId],
        max: usize,
    ) -> Vec<String> {
        let source = |m: &Record| {
            m.headers()
                .get(DEAD_LETTER_SOURCE)
                .cloned()
                .unwrap_or_default()
        };
        if message_ids.is_empty() {
            self.evictable().take(max).map(|(_, m)| source(m)).collect()
        } else {
            message_ids
                .iter()
                .filter_map(|id| self.sequence_by_id.get(*id))
                .map(|sequence| source(&self.messages[sequence]))
                .collect()
        }
    }

    /// Counts a dead letter that found no queue to go to.
    pub(crate) fn count_discarded(&mut self) {
        self.stats.total_dead_lettered -= 1;
        self.stats.total_discarded += 1;
    }

    /// Takes in a redriven message as new: no deliveries, dead-letter headers removed.
    pub(crate) fn accept_redriven(&mut self, mut message: StoredMessage) {
        for header in [DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, DELIVERY_COUNT] {
            message.headers.make_mut().remove(header);
        }
        self.accept_dead_letter(message);
    }
}
