use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::body::{BodyChange, BodyRef};
use crate::command::{
    Delivery, MessageProperties, NewMessage, QueueInfo, QueueStats, Receipt, SendResult,
};
use crate::dedup::{DedupTable, dedup_key};
pub use crate::message::{MessageState, StoredMessage};
use crate::record::{Record, as_messages};
use crate::runs::{AsMap, ReadySet, RunMap};
use crate::seqmap::SeqMap;
use crate::sparse::Sparse;
use crate::{MessageId, Overflow, QueueError, QueueOptions, TimeMs};

/// Headers a dead-lettered message gains.
pub const DEAD_LETTER_REASON: &str = "raftq-dead-letter-reason";
pub const DEAD_LETTER_SOURCE: &str = "raftq-dead-letter-source";
pub const DELIVERY_COUNT: &str = "raftq-delivery-count";
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
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::MaxDeliveries => "max-deliveries",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::Overflow => "overflow",
            DeadLetterReason::NotReached => "not-reached",
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

/// Ack records forgotten at the same time, for consecutive message ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckedRun {
    at: TimeMs,
    first: MessageId,
    count: u64,
}

/// The ack expiry runs, serialized one (time, id) pair per record as before they were runs.
mod acked_runs {
    use std::collections::VecDeque;

    use serde::de::{SeqAccess, Visitor};
    use serde::ser::SerializeSeq;
    use serde::{Deserializer, Serializer};

    use super::AckedRun;

    pub(super) fn serialize<S: Serializer>(
        runs: &VecDeque<AckedRun>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let records: u64 = runs.iter().map(|run| run.count).sum();
        let mut seq = serializer.serialize_seq(Some(records as usize))?;
        for run in runs {
            for id in run.first..run.first + run.count {
                seq.serialize_element(&(run.at, id))?;
            }
        }
        seq.end()
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<VecDeque<AckedRun>, D::Error> {
        struct RunsVisitor;
        impl<'de> Visitor<'de> for RunsVisitor {
            type Value = VecDeque<AckedRun>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a sequence of (time, message id) pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut runs: VecDeque<AckedRun> = VecDeque::new();
                while let Some((at, id)) = seq.next_element::<(u64, u64)>()? {
                    match runs.back_mut() {
                        Some(run)
                            if run.at == at && run.first.checked_add(run.count) == Some(id) =>
                        {
                            run.count += 1
                        }
                        _ => runs.push_back(AckedRun {
                            at,
                            first: id,
                            count: 1,
                        }),
                    }
                }
                Ok(runs)
            }
        }
        deserializer.deserialize_seq(RunsVisitor)
    }
}

/// The stored messages of one group, in send order, and the one in flight if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Group {
    pending: BTreeSet<u64>,
    in_flight: Option<u64>,
}

/// Order of the ready set: higher priority first, then send order.
type ReadyKey = (u8, u64);

fn ready_key(priority: u8, sequence: u64) -> ReadyKey {
    (u8::MAX - priority, sequence)
}

/// One queue. Messages are keyed by sequence so that "lowest ready sequence first" is send
/// order, also for messages that come back after a nack or an expired lease.
///
/// The ready set holds every ungrouped message in state `Ready`, and for each group at
/// most its head, and only while the group has nothing in flight and the head is `Ready`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Queue {
    name: String,
    options: QueueOptions,
    created_at_ms: TimeMs,
    next_sequence: u64,
    /// By sequence, in chunks (see [`crate::seqmap`]), as compact records (see
    /// [`crate::record`]).
    #[serde(with = "as_messages")]
    messages: SeqMap<Record>,
    /// Ids and sequences grow together for messages sent here, so this index is mostly a
    /// few runs (see [`crate::runs`]); moved-in messages keep their ids and add runs of one.
    #[serde(with = "AsMap::<u64>")]
    sequence_by_id: RunMap<1>,
    ready: ReadySet,
    delayed: BTreeSet<(TimeMs, u64)>,
    leases: BTreeSet<(TimeMs, u64)>,
    /// Time-to-be-received deadlines of stored messages.
    expiry: BTreeSet<(TimeMs, u64)>,
    groups: BTreeMap<String, Group>,
    /// Sequences of stored messages by correlation id, for selective receive and peek.
    by_correlation: BTreeMap<String, BTreeSet<u64>>,
    dedup: DedupTable,
    /// Recently acked receipts (message id → attempt), so that a retried ack of the same
    /// receipt succeeds again.
    #[serde(with = "AsMap::<u32>")]
    acked: RunMap<0>,
    /// When ack records are forgotten, oldest first (as `dedup_expiry`): (time, first id,
    /// count) for runs of consecutive ids acked with the same forget time.
    #[serde(with = "acked_runs")]
    acked_expiry: VecDeque<AckedRun>,
    stats: QueueStats,
    /// Bytes of every stored message (see `StoredMessage::size`).
    bytes: u64,
    /// Messages leaving for the dead-letter queue during the current command; the state
    /// machine empties this before the command ends, so it is never part of the state.
    #[serde(skip)]
    outbox: Vec<Outgoing>,
    /// Bodies that arrived, were shared or were let go during the current command; the
    /// state machine takes them before the command ends, like the outbox.
    #[serde(skip)]
    body_changes: Vec<BodyChange>,
}

impl Queue {
    pub(crate) fn new(name: String, options: QueueOptions, now_ms: TimeMs) -> Self {
        Queue {
            name,
            options,
            created_at_ms: now_ms,
            next_sequence: 1,
            messages: SeqMap::default(),
            sequence_by_id: RunMap::default(),
            ready: ReadySet::default(),
            delayed: BTreeSet::new(),
            leases: BTreeSet::new(),
            expiry: BTreeSet::new(),
            groups: BTreeMap::new(),
            by_correlation: BTreeMap::new(),
            dedup: DedupTable::default(),
            acked: RunMap::default(),
            acked_expiry: VecDeque::new(),
            stats: QueueStats::default(),
            bytes: 0,
            outbox: Vec::new(),
            body_changes: Vec::new(),
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
        stats.groups = self.groups.len() as u64;
        stats.bytes = self.bytes;
        QueueInfo {
            name: self.name.clone(),
            options: self.options.clone(),
            created_at_ms: self.created_at_ms,
            stats,
        }
    }

    /// Messages that left for other queues since the last call.
    pub(crate) fn take_outgoing(&mut self) -> Vec<Outgoing> {
        std::mem::take(&mut self.outbox)
    }

    /// Body changes since the last call.
    pub(crate) fn take_body_changes(&mut self) -> Vec<BodyChange> {
        std::mem::take(&mut self.body_changes)
    }

    /// Every stored message's body, let go (the queue itself is going away).
    pub(crate) fn release_all_bodies(&self) -> Vec<BodyChange> {
        self.messages
            .values()
            .map(|message| BodyChange::Released(message.body()))
            .collect()
    }

    /// The bodies of every stored message (for checks of the state's bookkeeping).
    pub(crate) fn bodies(&self) -> impl Iterator<Item = BodyRef> + '_ {
        self.messages.values().map(Record::body)
    }

    /// Brings the queue up to `now_ms`: delays that ran out and leases that expired make
    /// messages ready again; messages past their time to be received expire; dedup and ack
    /// records past their window are forgotten.
    pub(crate) fn advance(&mut self, now_ms: TimeMs) {
        while let Some(&(at, sequence)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.make_ready(sequence, now_ms);
        }
        while let Some(&(at, sequence)) = self.leases.first() {
            if at > now_ms {
                break;
            }
            self.leases.pop_first();
            self.make_ready(sequence, now_ms);
        }
        while let Some(&(at, sequence)) = self.expiry.first() {
            if at > now_ms {
                break;
            }
            self.expiry.pop_first();
            // A message under a lease may still be acknowledged; it expires when its lease
            // ends without an ack (see `make_ready`).
            let leased = self.messages.get(sequence).is_none_or(Record::is_leased);
            if !leased {
                self.drop_message(sequence, DeadLetterReason::Expired);
            }
        }
        self.dedup.expire(now_ms);
        while let Some(&AckedRun { at, first, count }) = self.acked_expiry.front() {
            if at > now_ms {
                break;
            }
            self.acked_expiry.pop_front();
            for message_id in first..first + count {
                self.acked.remove(message_id);
            }
        }
    }

    /// A message whose lease or delay ended: dead-letters (or discards) it once it was
    /// delivered the maximum number of times or has expired; otherwise it may be handed
    /// out again (at the head of its group, if it has one).
    fn make_ready(&mut self, sequence: u64, now_ms: TimeMs) {
        let max = self.options.max_delivery_count;
        let Some(message) = self.messages.get_mut(sequence) else {
            return;
        };
        if max > 0 && message.deliveries >= max {
            self.drop_message(sequence, DeadLetterReason::MaxDeliveries);
            return;
        }
        if message.expires_at_ms != 0 && message.expires_at_ms <= now_ms {
            self.drop_message(sequence, DeadLetterReason::Expired);
            return;
        }
        message.set_state(MessageState::Ready);
        let group = message.group().to_string();
        let priority = message.priority;
        if group.is_empty() {
            self.ready.insert(ready_key(priority, sequence));
        } else {
            if let Some(entry) = self.groups.get_mut(&group)
                && entry.in_flight == Some(sequence)
            {
                entry.in_flight = None;
            }
            self.offer_group(&group);
        }
    }

    /// Puts the group's head into the ready set when the group may hand it out.
    fn offer_group(&mut self, group: &str) {
        let Some(entry) = self.groups.get(group) else {
            return;
        };
        if entry.in_flight.is_some() {
            return;
        }
        let Some(&head) = entry.pending.first() else {
            return;
        };
        if let Some(message) = self.messages.get(head)
            && message.state() == MessageState::Ready
        {
            self.ready.insert(ready_key(message.priority, head));
        }
    }

    /// Takes a message out of every index; its group's next message may move up.
    fn remove_message(&mut self, sequence: u64) -> Option<Record> {
        let message = self.messages.remove(sequence)?;
        self.bytes -= message.size();
        self.sequence_by_id.remove(message.message_id);
        self.ready.remove(&ready_key(message.priority, sequence));
        match message.state() {
            MessageState::Ready => {}
            MessageState::Delayed { visible_at_ms } => {
                self.delayed.remove(&(visible_at_ms, sequence));
            }
            MessageState::Leased { expires_at_ms } => {
                self.leases.remove(&(expires_at_ms, sequence));
            }
        }
        if message.expires_at_ms != 0 {
            self.expiry.remove(&(message.expires_at_ms, sequence));
        }
        let correlation = &message.properties().correlation_id;
        if !correlation.is_empty()
            && let Some(sequences) = self.by_correlation.get_mut(correlation)
        {
            sequences.remove(&sequence);
            if sequences.is_empty() {
                self.by_correlation.remove(correlation);
            }
        }
        if !message.group().is_empty()
            && let Some(entry) = self.groups.get_mut(message.group())
        {
            entry.pending.remove(&sequence);
            if entry.in_flight == Some(sequence) {
                entry.in_flight = None;
            }
            if entry.pending.is_empty() {
                self.groups.remove(message.group());
            } else {
                let group = message.group().to_string();
                self.offer_group(&group);
            }
        }
        Some(message)
    }

    /// Removes a message that will not be acknowledged here: to the dead-letter queue when
    /// the queue has one for this reason, else discarded (and counted).
    fn drop_message(&mut self, sequence: u64, reason: DeadLetterReason) {
        let Some(message) = self.remove_message(sequence) else {
            return;
        };
        if matches!(
            reason,
            DeadLetterReason::Expired | DeadLetterReason::NotReached
        ) {
            self.stats.total_expired += 1;
        }
        let dead_letter = match reason {
            DeadLetterReason::MaxDeliveries | DeadLetterReason::Overflow => {
                !self.options.dead_letter_queue.is_empty()
            }
            DeadLetterReason::Expired | DeadLetterReason::NotReached => {
                self.options.dead_letter_expired
            }
        };
        if message.acknowledgement().negative {
            let kind = reason.as_str();
            self.post_notice(&message, kind, Some(dead_letter));
        }
        if !dead_letter {
            self.stats.total_discarded += 1;
            self.body_changes.push(BodyChange::Released(message.body()));
            return;
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
        self.outbox.push(Outgoing::DeadLetter {
            message,
            target: self.options.dead_letter_queue.clone(),
        });
    }

    /// Queues an acknowledgement message about `message` for its acknowledgement queue.
    fn post_notice(&mut self, message: &Record, kind: &str, dead_lettered: Option<bool>) {
        let mut headers = BTreeMap::from([
            (ACK_KIND.to_string(), kind.to_string()),
            (SOURCE_QUEUE.to_string(), self.name.clone()),
        ]);
        if let Some(dead_lettered) = dead_lettered {
            headers.insert(DEAD_LETTERED.to_string(), dead_lettered.to_string());
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
    fn after_consumed(&mut self, message: &Record) {
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
            self.post_notice(message, "consumed", None);
        }
        self.body_changes.push(BodyChange::Released(message.body()));
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

    /// Earliest time anything in the queue changes by itself: a delay or lease ends, a
    /// message expires, a dedup or ack record is forgotten.
    pub(crate) fn next_due_ms(&self) -> Option<TimeMs> {
        [
            self.delayed.first().map(|(at, _)| *at),
            self.leases.first().map(|(at, _)| *at),
            self.expiry.first().map(|(at, _)| *at),
            self.dedup.next_due_ms(),
            self.acked_expiry.front().map(|run| run.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }

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
        for message in messages {
            let size = message.size();
            if size > self.options.max_message_bytes {
                return Err(QueueError::MessageTooLarge {
                    size,
                    limit: self.options.max_message_bytes,
                });
            }
            if message.idempotency_key.is_empty()
                || !self.dedup.contains(&dedup_key(&message.idempotency_key))
            {
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
    fn evictable(&self) -> impl Iterator<Item = (u64, &Record)> {
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

    /// Adds a message at the tail (its `sequence` is replaced by the next one) in the state
    /// it carries (`Ready` or `Delayed`).
    fn store(&mut self, message: StoredMessage) -> u64 {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        if message.expires_at_ms != 0 {
            self.expiry.insert((message.expires_at_ms, sequence));
        }
        if !message.group.is_empty() {
            self.groups
                .entry(message.group.to_string())
                .or_default()
                .pending
                .insert(sequence);
        }
        if !message.properties.correlation_id.is_empty() {
            self.by_correlation
                .entry(message.properties.correlation_id.clone())
                .or_default()
                .insert(sequence);
        }
        self.bytes += message.size();
        let state = message.state;
        let (group, priority) = (message.group.to_string(), message.priority);
        self.sequence_by_id.insert(message.message_id, sequence);
        self.messages.insert(sequence, Record::new(message));
        match state {
            MessageState::Delayed { visible_at_ms } => {
                self.delayed.insert((visible_at_ms, sequence));
            }
            MessageState::Ready if group.is_empty() => {
                self.ready.insert(ready_key(priority, sequence));
            }
            MessageState::Ready => self.offer_group(&group),
            MessageState::Leased { .. } => unreachable!("stored messages start unleased"),
        }
        sequence
    }

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

    /// Leases `sequences` (ready messages, in the order given) until the bytes run out;
    /// the first is always handed out.
    fn lease_all(
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

    /// Removes every stored message; dedup records stay so retried sends are not re-stored.
    pub(crate) fn purge(&mut self) -> u64 {
        let removed = self.messages.len() as u64;
        let released = self.release_all_bodies();
        self.body_changes.extend(released);
        self.bytes = 0;
        self.messages.clear();
        self.sequence_by_id.clear();
        self.ready.clear();
        self.delayed.clear();
        self.leases.clear();
        self.expiry.clear();
        self.groups.clear();
        self.by_correlation.clear();
        removed
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
