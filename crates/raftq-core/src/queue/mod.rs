//! One queue (`Queue`): its messages, their indexes, and storing and removing a message.

mod dead_letter;
mod expiry;
mod lease;
mod outgoing;
mod select;
mod send;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::body::{BodyChange, BodyRef};
use crate::command::{QueueInfo, QueueStats};
use crate::dedup::DedupTable;
pub use crate::message::{MessageState, StoredMessage};
use crate::record::{Record, as_messages};
use crate::runs::{AsMap, ReadySet, RunMap};
use crate::seqmap::SeqMap;
use crate::{MessageId, QueueOptions, TimeMs};
pub(crate) use outgoing::Outgoing;
pub use outgoing::{
    ACK_KIND, DEAD_LETTER_DETAIL, DEAD_LETTER_REASON, DEAD_LETTER_SOURCE, DEAD_LETTERED,
    DELIVERY_COUNT, DeadLetterReason, ORIGINAL_MESSAGE_ID, SOURCE_QUEUE,
};

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

    /// Messages stored, their bytes, and the idempotency records kept.
    pub(crate) fn usage(&self) -> (u64, u64, u64) {
        (
            self.messages.len() as u64,
            self.bytes,
            self.dedup.len() as u64,
        )
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
}
