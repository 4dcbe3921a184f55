//! Commands on queues themselves: create, delete and purge.

use super::StateMachine;
use crate::command::Outcome;
use crate::queue::Queue;
use crate::{QueueError, QueueOptions, validate_queue_name};

impl StateMachine {
    /// Creates a queue once its name and options pass the limits.
    pub(super) fn create_queue(
        &mut self,
        name: String,
        options: QueueOptions,
    ) -> Result<Outcome, QueueError> {
        let now = self.now_ms;
        self.check_create_queue(&name, &options)?;
        let queue = Queue::new(name.clone(), options, now);
        let info = queue.info();
        self.queues.insert(name, queue);
        Ok(Outcome::Created(info))
    }

    /// Why a queue `name` with `options` cannot be created now, if it cannot.
    pub(super) fn check_create_queue(
        &self,
        name: &str,
        options: &QueueOptions,
    ) -> Result<(), QueueError> {
        validate_queue_name(name, &self.limits)?;
        options.validate(&self.limits)?;
        if options.journal {
            validate_queue_name(&crate::journal_queue_name(name), &self.limits).map_err(|_| {
                QueueError::invalid(
                    "journal",
                    "the name is too long for a `.journal` queue beside it",
                )
            })?;
        }
        if options.dead_letter_queue == name {
            return Err(QueueError::invalid(
                "dead_letter_queue",
                "a queue cannot be its own dead-letter queue",
            ));
        }
        if self.queues.contains_key(name) {
            return Err(QueueError::QueueAlreadyExists { name: name.into() });
        }
        if self.queues.len() as u64 >= self.limits.max_queues {
            return Err(QueueError::TooManyQueues {
                count: self.queues.len() as u64,
                limit: self.limits.max_queues,
            });
        }
        Ok(())
    }

    /// Deletes a queue and lets go of its messages' bodies.
    pub(super) fn delete_queue(&mut self, name: String) -> Result<Outcome, QueueError> {
        let mut queue = self
            .queues
            .remove(&name)
            .ok_or_else(|| QueueError::not_found(&name))?;
        self.body_changes.extend(queue.take_body_changes());
        self.body_changes.extend(queue.release_all_bodies());
        Ok(Outcome::Deleted)
    }

    /// Removes every message of a queue.
    pub(super) fn purge_queue(&mut self, name: String) -> Result<Outcome, QueueError> {
        let queue = self.queue_mut(&name)?;
        Ok(Outcome::Purged {
            removed: queue.purge(),
        })
    }
}
