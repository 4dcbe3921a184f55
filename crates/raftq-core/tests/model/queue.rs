//! The reference queue: its messages in a vector in queue order, each rule written plainly.

use std::collections::{BTreeMap, BTreeSet};

use raftq_core::queue::MessageState;
use raftq_core::{
    BodyRef, Delivery, MessageProperties, NewMessage, QueueError, QueueInfo, QueueOptions,
    QueueStats, Receipt, SendResult, StoredMessage,
};

/// Headers the documentation names.
pub const REASON: &str = "raftq-dead-letter-reason";
pub const SOURCE: &str = "raftq-dead-letter-source";
pub const COUNT: &str = "raftq-delivery-count";
pub const COPIED_FROM: &str = "raftq-source-queue";
pub const ORIGINAL_ID: &str = "raftq-original-message-id";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Delayed { until: u64 },
    Leased { until: u64 },
}

/// Why a message leaves its queue unconsumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MaxDeliveries,
    Expired,
    Overflow,
    NotReached,
}

impl Reason {
    fn text(self) -> &'static str {
        match self {
            Reason::MaxDeliveries => "max-deliveries",
            Reason::Expired => "expired",
            Reason::Overflow => "overflow",
            Reason::NotReached => "not-reached",
        }
    }

    fn is_expiry(self) -> bool {
        matches!(self, Reason::Expired | Reason::NotReached)
    }
}

#[derive(Debug, Clone)]
pub struct Message {
    pub id: u64,
    pub sequence: u64,
    /// The id of the message that brought the body (a journal copy shares its original's).
    pub body_key: u64,
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    pub correlation: String,
    pub group: String,
    pub priority: u8,
    pub enqueued_at: u64,
    /// Time to be received runs out at this time; 0: never.
    pub expires_at: u64,
    /// The queue has not yet looked at the expiry: it does once, when brought up to a time
    /// at or past it (a leased message then waits for its lease to end).
    pub expiry_pending: bool,
    pub deliveries: u32,
    pub state: State,
}

impl Message {
    fn is_leased(&self) -> bool {
        matches!(self.state, State::Leased { .. })
    }

    fn properties(&self) -> MessageProperties {
        MessageProperties {
            correlation_id: self.correlation.clone(),
            ..MessageProperties::default()
        }
    }

    fn body_ref(&self) -> BodyRef {
        BodyRef {
            key: self.body_key,
            len: self.body.len() as u64,
        }
    }

    /// Body, headers, group and properties.
    fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.body.len() + headers + self.group.len() + self.correlation.len()) as u64
    }

    pub fn stored(&self) -> StoredMessage {
        StoredMessage {
            message_id: self.id,
            sequence: self.sequence,
            body: self.body_ref(),
            headers: self.headers.clone().into(),
            properties: self.properties().into(),
            group: self.group.clone().into(),
            priority: self.priority,
            enqueued_at_ms: self.enqueued_at,
            expires_at_ms: self.expires_at,
            deliveries: self.deliveries,
            state: match self.state {
                State::Ready => MessageState::Ready,
                State::Delayed { until } => MessageState::Delayed {
                    visible_at_ms: until,
                },
                State::Leased { until } => MessageState::Leased {
                    expires_at_ms: until,
                },
            },
            acknowledgement: Default::default(),
        }
    }
}

/// A message leaving a queue during a command; it arrives when the command ends.
#[derive(Debug, Clone)]
pub enum Outgoing {
    DeadLetter {
        message: Message,
        target: String,
    },
    /// A copy of a consumed message for the journal, sharing the original's body.
    Journal {
        copy: NewMessage,
        body_key: u64,
        target: String,
    },
}

pub fn stale(receipt: Receipt) -> QueueError {
    QueueError::StaleReceipt {
        receipt: format!("{}:{}", receipt.message_id, receipt.attempt),
        reason: String::new(),
    }
}

pub fn invalid(field: &str) -> QueueError {
    QueueError::InvalidArgument {
        field: field.into(),
        reason: String::new(),
    }
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub name: String,
    pub options: QueueOptions,
    pub created_at: u64,
    /// In queue order (sequence order): new arrivals go to the tail.
    pub messages: Vec<Message>,
    next_sequence: u64,
    /// Remembered idempotency keys: (key, message id, sequence, forgotten at).
    keys: Vec<(String, u64, u64, u64)>,
    /// Receipts that acknowledged a message: (receipt, forgotten at).
    acked: Vec<(Receipt, u64)>,
    /// The running totals (the counts of what is held are worked out when asked).
    totals: QueueStats,
    pub outbox: Vec<Outgoing>,
}

impl Queue {
    pub fn new(name: &str, options: QueueOptions, now: u64) -> Queue {
        Queue {
            name: name.into(),
            options,
            created_at: now,
            messages: Vec::new(),
            next_sequence: 1,
            keys: Vec::new(),
            acked: Vec::new(),
            totals: QueueStats::default(),
            outbox: Vec::new(),
        }
    }

    pub fn info(&self) -> QueueInfo {
        let count = |f: fn(&State) -> bool| self.messages.iter().filter(|m| f(&m.state)).count();
        let groups: BTreeSet<&str> = self
            .messages
            .iter()
            .filter(|m| !m.group.is_empty())
            .map(|m| m.group.as_str())
            .collect();
        QueueInfo {
            name: self.name.clone(),
            options: self.options.clone(),
            created_at_ms: self.created_at,
            stats: QueueStats {
                depth: self.messages.len() as u64,
                in_flight: count(|s| matches!(s, State::Leased { .. })) as u64,
                delayed: count(|s| matches!(s, State::Delayed { .. })) as u64,
                groups: groups.len() as u64,
                bytes: self.messages.iter().map(Message::size).sum(),
                ..self.totals.clone()
            },
        }
    }

    fn index(&self, sequence: u64) -> Option<usize> {
        self.messages.iter().position(|m| m.sequence == sequence)
    }

    pub fn holds(&self, id: u64) -> Option<&Message> {
        self.messages.iter().find(|m| m.id == id)
    }

    /// Whether bringing the queue up to `now` would change anything.
    pub fn is_due(&self, now: u64) -> bool {
        self.messages.iter().any(|m| match m.state {
            State::Delayed { until } | State::Leased { until } if until <= now => true,
            _ => m.expiry_pending && m.expires_at <= now,
        }) || self.keys.iter().any(|k| k.3 <= now)
            || self.acked.iter().any(|a| a.1 <= now)
    }

    /// Brings the queue up to `now`: first the delays that ended end (earliest first), then
    /// the leases that ended, then unleased messages past their time to be received expire;
    /// dedup keys and ack records past their window are forgotten.
    pub fn bring_up_to(&mut self, now: u64) {
        let ended = |messages: &[Message], leased: bool| {
            let mut ended: Vec<(u64, u64)> = messages
                .iter()
                .filter_map(|m| match m.state {
                    State::Delayed { until } if !leased && until <= now => {
                        Some((until, m.sequence))
                    }
                    State::Leased { until } if leased && until <= now => Some((until, m.sequence)),
                    _ => None,
                })
                .collect();
            ended.sort_unstable();
            ended
        };
        for leased in [false, true] {
            for (_, sequence) in ended(&self.messages, leased) {
                self.release(sequence, now);
            }
        }
        let mut expiring: Vec<(u64, u64)> = self
            .messages
            .iter()
            .filter(|m| m.expiry_pending && m.expires_at <= now)
            .map(|m| (m.expires_at, m.sequence))
            .collect();
        expiring.sort_unstable();
        for (_, sequence) in expiring {
            let Some(i) = self.index(sequence) else {
                continue;
            };
            self.messages[i].expiry_pending = false;
            if !self.messages[i].is_leased() {
                self.drop_at(i, Reason::Expired);
            }
        }
        self.keys.retain(|k| k.3 > now);
        self.acked.retain(|a| a.1 > now);
    }

    /// A message whose delay or lease ended: gone after its last allowed delivery or past its
    /// time to be received, else ready.
    fn release(&mut self, sequence: u64, now: u64) {
        let Some(i) = self.index(sequence) else {
            return;
        };
        let max = self.options.max_delivery_count;
        let m = &self.messages[i];
        if max > 0 && m.deliveries >= max {
            self.drop_at(i, Reason::MaxDeliveries);
        } else if m.expires_at != 0 && m.expires_at <= now {
            self.drop_at(i, Reason::Expired);
        } else {
            self.messages[i].state = State::Ready;
        }
    }

    /// Removes a message that was not consumed: to the dead-letter queue when the queue has
    /// one for this reason (with the dead-letter headers), else discarded.
    fn drop_at(&mut self, i: usize, reason: Reason) {
        let mut message = self.messages.remove(i);
        if reason.is_expiry() {
            self.totals.total_expired += 1;
        }
        let dead_letter = if reason.is_expiry() {
            self.options.dead_letter_expired
        } else {
            !self.options.dead_letter_queue.is_empty()
        };
        if !dead_letter {
            self.totals.total_discarded += 1;
            return;
        }
        self.totals.total_dead_lettered += 1;
        message.headers.insert(REASON.into(), reason.text().into());
        message.headers.insert(SOURCE.into(), self.name.clone());
        message
            .headers
            .insert(COUNT.into(), message.deliveries.to_string());
        self.outbox.push(Outgoing::DeadLetter {
            message,
            target: self.options.dead_letter_queue.clone(),
        });
    }

    /// What a plain receive could hand out now, in queue order: ready messages without a
    /// group, and each group's first message when it is ready (a leased or delayed first
    /// message holds its whole group).
    fn receivable(&self) -> Vec<usize> {
        let mut groups_seen = BTreeSet::new();
        (0..self.messages.len())
            .filter(|&i| {
                let m = &self.messages[i];
                let first_of_group = m.group.is_empty() || groups_seen.insert(m.group.clone());
                first_of_group && m.state == State::Ready
            })
            .collect()
    }

    /// Higher priority first, then queue order.
    pub fn receive(&mut self, max: u32, lease_ms: u64, now: u64) -> Vec<Delivery> {
        let mut chosen = self.receivable();
        chosen.sort_by_key(|&i| (std::cmp::Reverse(self.messages[i].priority), i));
        chosen.truncate(max as usize);
        self.lease_all(chosen, lease_ms, now)
    }

    /// Only messages the selector names (`id` when not 0, `correlation` when not empty),
    /// among those a plain receive could hand out, in queue order whatever their priority.
    pub fn receive_selected(
        &mut self,
        id: u64,
        correlation: &str,
        max: u32,
        lease_ms: u64,
        now: u64,
    ) -> Vec<Delivery> {
        let chosen: Vec<usize> = self
            .receivable()
            .into_iter()
            .filter(|&i| {
                let m = &self.messages[i];
                (id == 0 || m.id == id) && (correlation.is_empty() || m.correlation == correlation)
            })
            .take(max as usize)
            .collect();
        self.lease_all(chosen, lease_ms, now)
    }

    fn lease_all(&mut self, chosen: Vec<usize>, lease_ms: u64, now: u64) -> Vec<Delivery> {
        let until = now + lease_ms;
        self.totals.total_deliveries += chosen.len() as u64;
        chosen
            .into_iter()
            .map(|i| {
                let m = &mut self.messages[i];
                m.deliveries += 1;
                m.state = State::Leased { until };
                Delivery {
                    message_id: m.id,
                    sequence: m.sequence,
                    body: m.body.clone(),
                    body_ref: m.body_ref(),
                    headers: m.headers.clone(),
                    properties: m.properties(),
                    group: m.group.clone(),
                    priority: m.priority,
                    receipt: Receipt {
                        message_id: m.id,
                        attempt: m.deliveries,
                    },
                    enqueued_at_ms: m.enqueued_at,
                    lease_expires_at_ms: until,
                    expires_at_ms: m.expires_at,
                }
            })
            .collect()
    }

    /// The message a receipt holds: its current delivery, with the lease still running.
    fn current(&self, receipt: Receipt, now: u64) -> Result<usize, QueueError> {
        self.messages
            .iter()
            .position(|m| {
                m.id == receipt.message_id
                    && m.deliveries == receipt.attempt
                    && matches!(m.state, State::Leased { until } if until > now)
            })
            .ok_or_else(|| stale(receipt))
    }

    fn acknowledged(&self, receipt: Receipt) -> bool {
        self.acked.iter().any(|(r, _)| *r == receipt)
    }

    /// For a transaction: the receipt would consume its message now (a receipt that already
    /// acknowledged it does not pass).
    pub fn check_current(&self, receipt: Receipt, now: u64) -> Result<(), QueueError> {
        if self.acknowledged(receipt) {
            return Err(stale(receipt));
        }
        self.current(receipt, now).map(|_| ())
    }

    /// `Ok(true)`: the receipt already acknowledged the message (within the dedup window).
    pub fn ack(&mut self, receipt: Receipt, now: u64) -> Result<bool, QueueError> {
        if self.acknowledged(receipt) {
            return Ok(true);
        }
        let consumed = self.messages.remove(self.current(receipt, now)?);
        if self.options.journal {
            let mut headers = consumed.headers.clone();
            headers.insert(COPIED_FROM.into(), self.name.clone());
            headers.insert(ORIGINAL_ID.into(), consumed.id.to_string());
            self.outbox.push(Outgoing::Journal {
                copy: NewMessage {
                    body: consumed.body.clone(),
                    headers,
                    properties: consumed.properties(),
                    priority: consumed.priority,
                    ..NewMessage::default()
                },
                body_key: consumed.body_key,
                target: format!("{}.journal", self.name),
            });
        }
        self.acked
            .push((receipt, now + self.options.dedup_window_ms));
        self.totals.total_acked += 1;
        Ok(false)
    }

    pub fn nack(&mut self, receipt: Receipt, delay_ms: u64, now: u64) -> Result<u64, QueueError> {
        let i = self.current(receipt, now)?;
        let m = &mut self.messages[i];
        if delay_ms == 0 {
            let sequence = m.sequence;
            self.release(sequence, now);
        } else if m.expires_at != 0 && m.expires_at <= now {
            // Released past its time to be received: it expires now, not after the delay.
            self.drop_at(i, Reason::Expired);
        } else {
            m.state = State::Delayed {
                until: now + delay_ms,
            };
        }
        Ok(now + delay_ms)
    }

    /// The lease now runs `lease_ms` from `now` (shorter or longer than before).
    pub fn extend(&mut self, receipt: Receipt, lease_ms: u64, now: u64) -> Result<u64, QueueError> {
        let i = self.current(receipt, now)?;
        self.messages[i].state = State::Leased {
            until: now + lease_ms,
        };
        Ok(now + lease_ms)
    }

    /// Removes every message; remembered keys and acks stay.
    pub fn purge(&mut self) -> u64 {
        let removed = self.messages.len() as u64;
        self.messages.clear();
        removed
    }

    fn remembered(&self, key: &str) -> Option<&(String, u64, u64, u64)> {
        self.keys.iter().find(|k| k.0 == key)
    }

    /// Messages a send adds: one for each message without a key, one for each key that is
    /// not remembered (a key repeated within the send adds one message).
    pub fn footprint(&self, messages: &[&NewMessage]) -> u64 {
        let mut new_keys = BTreeSet::new();
        messages
            .iter()
            .filter(|m| {
                let key = &m.idempotency_key;
                key.is_empty() || (self.remembered(key).is_none() && new_keys.insert(key))
            })
            .count() as u64
    }

    /// Whether `count` more messages fit, or (dead-letter-oldest) unleased messages can make
    /// room for them.
    pub fn check_room(&self, count: u64) -> Result<(), QueueError> {
        let depth = self.messages.len() as u64;
        let max = self.options.max_depth;
        let excess = (depth + count).saturating_sub(max);
        if excess == 0 {
            return Ok(());
        }
        let full = QueueError::QueueFull {
            name: self.name.clone(),
            depth,
            max_depth: max,
        };
        let evictable = self.messages.iter().filter(|m| !m.is_leased()).count() as u64;
        let may_evict = self.options.overflow == raftq_core::Overflow::DeadLetterOldest;
        if count > max || !may_evict || evictable < excess {
            return Err(full);
        }
        Ok(())
    }

    /// Removes the oldest unleased messages until `count` more fit.
    pub fn make_room(&mut self, count: u64) {
        while self.messages.len() as u64 + count > self.options.max_depth {
            let Some(oldest) = self.messages.iter().position(|m| !m.is_leased()) else {
                return;
            };
            self.drop_at(oldest, Reason::Overflow);
        }
    }

    fn push(&mut self, mut message: Message) -> u64 {
        message.sequence = self.next_sequence;
        self.next_sequence += 1;
        self.totals.total_sent += 1;
        self.messages.push(message);
        self.next_sequence - 1
    }

    /// Stores a new message as `id` (or answers the remembered send of its key).
    pub fn store_new(&mut self, new: &NewMessage, body_key: u64, id: u64, now: u64) -> SendResult {
        let key = &new.idempotency_key;
        if let Some(&(_, message_id, sequence, _)) =
            self.remembered(key).filter(|_| !key.is_empty())
        {
            return SendResult {
                message_id,
                sequence,
                duplicate: true,
                expired: false,
            };
        }
        if !key.is_empty() && self.options.dedup_window_ms > 0 {
            let forget_at = now + self.options.dedup_window_ms;
            self.keys
                .push((key.clone(), id, self.next_sequence, forget_at));
        }
        let ttl = if new.ttl_ms == 0 {
            self.options.default_ttl_ms
        } else {
            new.ttl_ms
        };
        let expires_at = if ttl == 0 { 0 } else { now + ttl };
        let sequence = self.push(Message {
            id,
            sequence: 0,
            body_key,
            body: new.body.clone(),
            headers: new.headers.clone(),
            correlation: new.properties.correlation_id.clone(),
            group: new.group.clone(),
            priority: new.priority,
            enqueued_at: now,
            expires_at,
            expiry_pending: expires_at != 0,
            deliveries: 0,
            state: if new.delay_ms == 0 {
                State::Ready
            } else {
                State::Delayed {
                    until: now + new.delay_ms,
                }
            },
        });
        let too_late = new.time_to_reach_ms != 0 && now > new.sent_at_ms + new.time_to_reach_ms;
        if too_late {
            let last = self.messages.len() - 1;
            self.drop_at(last, Reason::NotReached);
        }
        SendResult {
            message_id: id,
            sequence,
            duplicate: false,
            expired: too_late,
        }
    }

    /// Takes in a message moved from another queue (a dead letter, a redrive): same id,
    /// body, headers, properties, priority and enqueue time; no deliveries, group or
    /// expiry; ready at the tail.
    pub fn accept(&mut self, mut message: Message) {
        message.deliveries = 0;
        message.group.clear();
        message.expires_at = 0;
        message.expiry_pending = false;
        message.state = State::Ready;
        self.messages.retain(|m| m.id != message.id);
        self.push(message);
    }

    /// The source-queue header of each message a redrive would move (empty when absent):
    /// the listed ids that are here, or with no ids the first `max` unleased messages.
    pub fn redrive_sources(&self, ids: &[u64], max: usize) -> Vec<String> {
        let source = |m: &Message| m.headers.get(SOURCE).cloned().unwrap_or_default();
        if ids.is_empty() {
            self.messages
                .iter()
                .filter(|m| !m.is_leased())
                .take(max)
                .map(source)
                .collect()
        } else {
            ids.iter()
                .filter_map(|id| self.holds(*id))
                .map(source)
                .collect()
        }
    }

    /// Takes out the messages a redrive moves, in the order it moves them; refuses an
    /// unknown or leased id, taking nothing.
    pub fn take_for_redrive(
        &mut self,
        ids: &[u64],
        max: usize,
    ) -> Result<Vec<Message>, QueueError> {
        let chosen: Vec<u64> = if ids.is_empty() {
            self.messages
                .iter()
                .filter(|m| !m.is_leased())
                .take(max)
                .map(|m| m.id)
                .collect()
        } else {
            let mut chosen = Vec::new();
            for &id in ids {
                let message = self.holds(id).ok_or_else(|| QueueError::MessageNotFound {
                    queue: self.name.clone(),
                    message_id: id,
                })?;
                if message.is_leased() {
                    return Err(invalid("message_ids"));
                }
                if !chosen.contains(&id) {
                    chosen.push(id);
                }
            }
            chosen
        };
        Ok(chosen
            .into_iter()
            .filter_map(|id| {
                let i = self.messages.iter().position(|m| m.id == id)?;
                Some(self.messages.remove(i))
            })
            .collect())
    }
}
