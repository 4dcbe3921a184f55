//! Messages moving between queues: what a command sent elsewhere, delivered; and redrive.

use super::StateMachine;
use crate::body::BodyChange;
use crate::command::Outcome;
use crate::queue::{Outgoing, Queue};
use crate::{MessageId, Overflow, QueueError, QueueOptions, TimeMs};

impl StateMachine {
    /// Delivers what touched queues sent elsewhere during this command: dead letters (to
    /// dead-letter queues, created on demand with default options), journal copies (to
    /// journal queues, created on demand) and acknowledgement messages (only to queues
    /// that exist). Dead letters and acknowledgements go in whatever the target's depth
    /// (moving a message never drops it for lack of room); when no more queues may be
    /// created, a dead letter is discarded and counted. Journal copies make room by
    /// dropping the oldest copies.
    pub(super) fn deliver_outgoing(&mut self) {
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

    pub(super) fn redrive(
        &mut self,
        name: &str,
        message_ids: &[MessageId],
        max: u32,
        to: &str,
    ) -> Result<Outcome, QueueError> {
        self.check_redrive(name, message_ids, max, to)?;
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

    /// A redrive's request and the queues it names (its source and `to`); the messages'
    /// own destinations are checked when it is applied.
    pub(super) fn check_redrive(
        &self,
        name: &str,
        message_ids: &[MessageId],
        max: u32,
        to: &str,
    ) -> Result<(), QueueError> {
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
        self.queue(name).map(|_| ())
    }
}
