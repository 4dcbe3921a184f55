use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Outcome, QueueInfo, Request};
use crate::queue::{Queue, StoredMessage};
use crate::{Limits, MessageId, QueueError, TimeMs, validate_queue_name};

/// The replicated state of one Raft group: every queue it holds.
///
/// `apply` is a pure function of (state, request): no clock, no randomness, no IO. The
/// effective time is the largest `now_ms` seen so far, so time never goes backwards even
/// when a new leader's clock is behind the old one's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    limits: Limits,
    queues: BTreeMap<String, Queue>,
    next_message_id: MessageId,
    now_ms: TimeMs,
}

impl Default for StateMachine {
    fn default() -> Self {
        StateMachine::new(Limits::default())
    }
}

impl StateMachine {
    pub fn new(limits: Limits) -> Self {
        StateMachine {
            limits,
            queues: BTreeMap::new(),
            next_message_id: 1,
            now_ms: 0,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The state machine's time: the largest time stamped into any applied command.
    pub fn now_ms(&self) -> TimeMs {
        self.now_ms
    }

    /// Applies one command. On `Err` the state is exactly as before, except that the
    /// clock may have advanced (which only releases expired leases and delays).
    pub fn apply(&mut self, request: Request) -> Result<Outcome, QueueError> {
        self.now_ms = self.now_ms.max(request.now_ms);
        let now = self.now_ms;
        match request.command {
            Command::CreateQueue { name, options } => {
                validate_queue_name(&name, &self.limits)?;
                options.validate(&self.limits)?;
                if self.queues.contains_key(&name) {
                    return Err(QueueError::QueueAlreadyExists { name });
                }
                if self.queues.len() as u64 >= self.limits.max_queues {
                    return Err(QueueError::TooManyQueues {
                        count: self.queues.len() as u64,
                        limit: self.limits.max_queues,
                    });
                }
                let queue = Queue::new(name.clone(), options, now);
                let info = queue.info();
                self.queues.insert(name, queue);
                Ok(Outcome::Created(info))
            }
            Command::DeleteQueue { name } => {
                self.queues
                    .remove(&name)
                    .ok_or_else(|| QueueError::not_found(&name))?;
                Ok(Outcome::Deleted)
            }
            Command::PurgeQueue { name } => {
                let queue = self.queue_mut(&name)?;
                Ok(Outcome::Purged {
                    removed: queue.purge(),
                })
            }
            Command::Send { queue, messages } => {
                if messages.is_empty() {
                    return Err(QueueError::invalid("messages", "the batch is empty"));
                }
                if messages.len() > self.limits.max_batch_messages {
                    return Err(QueueError::invalid(
                        "messages",
                        format!(
                            "{} messages exceed the batch limit of {}",
                            messages.len(),
                            self.limits.max_batch_messages
                        ),
                    ));
                }
                for message in &messages {
                    self.limits.check_message(message)?;
                }
                let first_id = self.next_message_id;
                let queue = self.queue_mut(&queue)?;
                queue.check_send(&messages)?;
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
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            } => {
                if max_messages == 0 || max_messages > self.limits.max_receive_messages {
                    return Err(QueueError::invalid(
                        "max_messages",
                        format!("must be in 1..={}", self.limits.max_receive_messages),
                    ));
                }
                if lease_ms != 0 {
                    self.limits.check_lease("lease_ms", lease_ms)?;
                }
                let max_bytes = self.limits.max_receive_bytes;
                let queue = self.queue_mut(&queue)?;
                let lease_ms = if lease_ms == 0 {
                    queue.options().default_lease_ms
                } else {
                    lease_ms
                };
                Ok(Outcome::Received(queue.receive(
                    max_messages,
                    max_bytes,
                    lease_ms,
                    now,
                )))
            }
            Command::Ack { queue, receipt } => {
                let queue = self.queue_mut(&queue)?;
                let already_acked = queue.ack(receipt, now)?;
                Ok(Outcome::Acked { already_acked })
            }
            Command::Nack {
                queue,
                receipt,
                delay_ms,
            } => {
                if delay_ms > self.limits.max_nack_delay_ms {
                    return Err(QueueError::invalid(
                        "delay_ms",
                        format!("must be at most {} ms", self.limits.max_nack_delay_ms),
                    ));
                }
                let queue = self.queue_mut(&queue)?;
                let visible_at_ms = queue.nack(receipt, delay_ms, now)?;
                Ok(Outcome::Nacked { visible_at_ms })
            }
            Command::ExtendLease {
                queue,
                receipt,
                lease_ms,
            } => {
                self.limits.check_lease("lease_ms", lease_ms)?;
                let queue = self.queue_mut(&queue)?;
                let lease_expires_at_ms = queue.extend_lease(receipt, lease_ms, now)?;
                Ok(Outcome::LeaseExtended {
                    lease_expires_at_ms,
                })
            }
        }
    }

    /// The named queue, brought up to the state machine's time.
    fn queue_mut(&mut self, name: &str) -> Result<&mut Queue, QueueError> {
        let now = self.now_ms;
        let queue = self
            .queues
            .get_mut(name)
            .ok_or_else(|| QueueError::not_found(name))?;
        queue.advance(now);
        Ok(queue)
    }

    fn queue(&self, name: &str) -> Result<&Queue, QueueError> {
        self.queues
            .get(name)
            .ok_or_else(|| QueueError::not_found(name))
    }

    pub fn queue_info(&self, name: &str) -> Result<QueueInfo, QueueError> {
        Ok(self.queue(name)?.info())
    }

    /// Queues in name order, starting after `after` (exclusive), at most `max`.
    pub fn list_queues(&self, after: &str, max: usize) -> Vec<QueueInfo> {
        use std::ops::Bound;
        self.queues
            .range::<str, _>((Bound::Excluded(after), Bound::Unbounded))
            .take(max)
            .map(|(_, queue)| queue.info())
            .collect()
    }

    pub fn peek(
        &self,
        name: &str,
        after_sequence: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, QueueError> {
        Ok(self.queue(name)?.peek(after_sequence, max))
    }

    /// Whether a receive on `name` at time `now_ms` would deliver something. Lets a
    /// long-polling receive wait without writing empty receives into the log.
    pub fn has_deliverable(&self, name: &str, now_ms: TimeMs) -> Result<bool, QueueError> {
        Ok(self.queue(name)?.has_deliverable(now_ms.max(self.now_ms)))
    }

    /// When the next delayed or leased message of `name` becomes ready, if any.
    pub fn next_wakeup_ms(&self, name: &str) -> Option<TimeMs> {
        self.queues.get(name).and_then(Queue::next_wakeup_ms)
    }
}
