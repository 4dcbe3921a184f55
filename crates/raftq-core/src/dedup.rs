//! A queue's dedup table: the idempotency keys of messages sent within its dedup window,
//! each with the id and sequence the send was given, forgotten in the order they came.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;
use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::runs::RunMap;
use crate::{MessageId, TimeMs};

/// An idempotency key as the dedup table keeps it: the first 16 bytes of its SHA-256.
/// Every message sent by the raftq client carries a key (a 36-character UUID), and a
/// queue remembers each for its dedup window: at tens of thousands of messages a second
/// that is millions of keys, so each is kept in 16 bytes, not as a string. Two different
/// keys share a digest with a probability of about n²/2¹²⁹ (n keys in one window).
pub(crate) type DedupKey = [u8; 16];

pub(crate) fn dedup_key(key: &str) -> DedupKey {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut short = [0u8; 16];
    short.copy_from_slice(&digest[..16]);
    short
}

/// Per record, the key once (16 bytes, in the order records are made) and its position in
/// a hash index (4 bytes and a control byte, at a load of 44–88 %). Message ids, sequences
/// and expiry times are kept as runs: messages sent to one queue get consecutive ids and
/// sequences, and a batch of sends shares one time.
#[derive(Clone)]
pub(crate) struct DedupTable {
    /// Keys oldest first; the window is fixed per queue and time never goes back, so
    /// records are forgotten in the order they were made.
    keys: VecDeque<DedupKey>,
    /// Position (see `front`) of `keys[0]`; positions only grow.
    front: u64,
    /// Message ids of the keys, position for position, as runs of consecutive ids: (first
    /// position, its id), in position order; a run lasts until the next one starts.
    ids: VecDeque<(u64, MessageId)>,
    /// Message id → sequence of every recorded send.
    sequences: RunMap<1>,
    /// When the keys are forgotten: (time, how many of the oldest keys), oldest first.
    expiry: VecDeque<(TimeMs, u64)>,
    /// Each key's position, truncated to 32 bits (fewer than 2³² records are ever held),
    /// found by the key's hash. The hash is keyed per process: it decides only where an
    /// entry sits in memory, never what the table answers.
    index: HashTable<u32>,
    hasher: RandomState,
}

impl Default for DedupTable {
    fn default() -> Self {
        DedupTable {
            keys: VecDeque::new(),
            front: 0,
            ids: VecDeque::new(),
            sequences: RunMap::default(),
            expiry: VecDeque::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
        }
    }
}

/// Two tables are equal when they hold the same records in the same order.
impl PartialEq for DedupTable {
    fn eq(&self, other: &Self) -> bool {
        self.keys.len() == other.keys.len() && self.records_in_order().eq(other.records_in_order())
    }
}

impl Eq for DedupTable {}

impl fmt::Debug for DedupTable {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_list().entries(self.records_in_order()).finish()
    }
}

impl DedupTable {
    fn hash(&self, key: &DedupKey) -> u64 {
        self.hasher.hash_one(key)
    }

    /// Where in `keys` the record of `key` is.
    fn find(&self, key: &DedupKey) -> Option<usize> {
        let front = self.front as u32;
        self.index
            .find(self.hash(key), |&position| {
                self.keys.get(position.wrapping_sub(front) as usize) == Some(key)
            })
            .map(|&position| position.wrapping_sub(front) as usize)
    }

    /// The message id of the record at `at` in `keys`.
    fn id_at(&self, at: usize) -> MessageId {
        let position = self.front + at as u64;
        let run = self.ids.partition_point(|(first, _)| *first <= position) - 1;
        let (first, id) = self.ids[run];
        id + (position - first)
    }

    /// Records held.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    pub(crate) fn contains(&self, key: &DedupKey) -> bool {
        self.find(key).is_some()
    }

    /// The message id and sequence the send with `key` was given.
    pub(crate) fn get(&self, key: &DedupKey) -> Option<(MessageId, u64)> {
        let message_id = self.id_at(self.find(key)?);
        Some((message_id, self.sequences.get(message_id).unwrap_or(0)))
    }

    /// Records a send (its key must not be recorded) until `forget_at_ms`, which is never
    /// earlier than the last record's.
    pub(crate) fn insert(
        &mut self,
        key: DedupKey,
        message_id: MessageId,
        sequence: u64,
        forget_at_ms: TimeMs,
    ) {
        self.sequences.insert(message_id, sequence);
        self.push(key, message_id, forget_at_ms);
    }

    /// Appends a record to the keys, ids, expiry runs and index.
    fn push(&mut self, key: DedupKey, message_id: MessageId, forget_at_ms: TimeMs) {
        let position = self.front + self.keys.len() as u64;
        let continues = self
            .ids
            .back()
            .is_some_and(|&(first, id)| id.checked_add(position - first) == Some(message_id));
        if !continues {
            self.ids.push_back((position, message_id));
        }
        let hash = self.hash(&key);
        let (keys, front, hasher) = (&self.keys, self.front, &self.hasher);
        self.index.insert_unique(hash, position as u32, |&p| {
            hasher.hash_one(keys[p.wrapping_sub(front as u32) as usize])
        });
        self.keys.push_back(key);
        match self.expiry.back_mut() {
            Some((at, count)) if *at == forget_at_ms => *count += 1,
            _ => self.expiry.push_back((forget_at_ms, 1)),
        }
    }

    /// Forgets the oldest record.
    fn pop(&mut self) {
        let Some(key) = self.keys.front() else {
            return;
        };
        let message_id = self.id_at(0);
        let position = self.front as u32;
        if let Ok(entry) = self.index.find_entry(self.hash(key), |&p| p == position) {
            entry.remove();
        }
        self.sequences.remove(message_id);
        self.keys.pop_front();
        self.front += 1;
        if self
            .ids
            .get(1)
            .is_some_and(|&(first, _)| first <= self.front)
            || self.keys.is_empty()
        {
            self.ids.pop_front();
        }
    }

    /// Forgets the records due at `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: TimeMs) {
        let mut forgotten = false;
        while let Some(&(at, count)) = self.expiry.front() {
            if at > now_ms {
                break;
            }
            self.expiry.pop_front();
            for _ in 0..count {
                self.pop();
            }
            forgotten = true;
        }
        if forgotten && self.keys.len() * 4 < self.keys.capacity() {
            // A burst's records are gone: give their room back.
            self.keys.shrink_to(self.keys.len() * 2);
            let (keys, front, hasher) = (&self.keys, self.front, &self.hasher);
            self.index.shrink_to(self.keys.len() * 2, |&p| {
                hasher.hash_one(keys[p.wrapping_sub(front as u32) as usize])
            });
        }
    }

    /// When the oldest record is forgotten.
    pub(crate) fn next_due_ms(&self) -> Option<TimeMs> {
        self.expiry.front().map(|(at, _)| *at)
    }

    /// Every record, oldest first: (forget at, key, message id, sequence).
    fn records_in_order(&self) -> impl Iterator<Item = (TimeMs, DedupKey, MessageId, u64)> + '_ {
        self.expiry
            .iter()
            .flat_map(|(at, count)| std::iter::repeat_n(*at, *count as usize))
            .zip(self.keys.iter().enumerate())
            .map(|(at, (index, key))| {
                let message_id = self.id_at(index);
                let sequence = self.sequences.get(message_id).unwrap_or(0);
                (at, *key, message_id, sequence)
            })
    }
}

// Serialized as the two fields it replaced, so snapshot files keep their format:
// `dedup: BTreeMap<DedupKey, DedupRecord { message_id, sequence }>` and
// `dedup_expiry: VecDeque<(TimeMs, DedupKey)>`.

#[derive(Debug, Serialize, Deserialize)]
struct DedupRecord {
    message_id: MessageId,
    sequence: u64,
}

/// The records map, in key order.
struct RecordsByKey<'a>(&'a DedupTable);

impl Serialize for RecordsByKey<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Positions sorted by key: 4 bytes per record for as long as this takes.
        let table = self.0;
        let mut order: Vec<u32> = (0..table.keys.len() as u32).collect();
        order.sort_unstable_by_key(|&at| table.keys[at as usize]);
        serializer.collect_map(order.into_iter().map(|at| {
            let message_id = table.id_at(at as usize);
            let sequence = table.sequences.get(message_id).unwrap_or(0);
            (
                table.keys[at as usize],
                DedupRecord {
                    message_id,
                    sequence,
                },
            )
        }))
    }
}

/// The expiry FIFO, one (time, key) pair per record.
struct ExpiryPairs<'a>(&'a DedupTable);

impl Serialize for ExpiryPairs<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.keys.len()))?;
        for (at, key, _, _) in self.0.records_in_order() {
            seq.serialize_element(&(at, key))?;
        }
        seq.end()
    }
}

impl Serialize for DedupTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_struct("DedupTable", 2)?;
        out.serialize_field("dedup", &RecordsByKey(self))?;
        out.serialize_field("dedup_expiry", &ExpiryPairs(self))?;
        out.end()
    }
}

impl<'de> Deserialize<'de> for DedupTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;
        impl<'de> Visitor<'de> for TableVisitor {
            type Value = DedupTable;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a dedup map and its expiry FIFO")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DedupTable, A::Error> {
                // The records come by key, their order with the FIFO after them: the
                // records wait in one vector (32 bytes each) until the FIFO orders them.
                let RecordList(mut records) = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                records.sort_unstable_by_key(|(key, _)| *key);
                let mut table = DedupTable::default();
                seq.next_element_seed(ExpirySeed {
                    table: &mut table,
                    records: &records,
                })?
                .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if table.keys.len() != records.len() {
                    return Err(de::Error::custom(
                        "the dedup expiry FIFO does not name every record once",
                    ));
                }
                Ok(table)
            }
        }
        deserializer.deserialize_struct("DedupTable", &["dedup", "dedup_expiry"], TableVisitor)
    }
}

/// The records map, read as a list of its entries.
struct RecordList(Vec<(DedupKey, DedupRecord)>);

impl<'de> Deserialize<'de> for RecordList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = RecordList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of dedup keys to records")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RecordList, A::Error> {
                let mut records = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(entry) = map.next_entry()? {
                    records.push(entry);
                }
                Ok(RecordList(records))
            }
        }
        deserializer.deserialize_map(ListVisitor)
    }
}

/// Reads the expiry FIFO into the table, taking each key's record from `records` (sorted
/// by key).
struct ExpirySeed<'a> {
    table: &'a mut DedupTable,
    records: &'a [(DedupKey, DedupRecord)],
}

impl<'de> de::DeserializeSeed<'de> for ExpirySeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ExpirySeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a sequence of (time, key) pairs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let table = self.table;
        while let Some((at, key)) = seq.next_element::<(TimeMs, DedupKey)>()? {
            let record = self
                .records
                .binary_search_by_key(&key, |(key, _)| *key)
                .map(|found| &self.records[found].1)
                .map_err(|_| de::Error::custom("a dedup expiry names a key with no record"))?;
            if table.contains(&key) {
                return Err(de::Error::custom("a dedup expiry names a key twice"));
            }
            table.insert(key, record.message_id, record.sequence, at);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_forgotten_in_order_and_keep_their_sequence() {
        let mut table = DedupTable::default();
        table.insert(dedup_key("a"), 10, 1, 100);
        table.insert(dedup_key("b"), 11, 2, 100);
        table.insert(dedup_key("c"), 20, 3, 150);
        assert_eq!(table.get(&dedup_key("b")), Some((11, 2)));
        assert_eq!(table.get(&dedup_key("c")), Some((20, 3)));
        assert_eq!(table.next_due_ms(), Some(100));
        table.expire(99);
        assert!(table.contains(&dedup_key("a")));
        table.expire(100);
        assert!(!table.contains(&dedup_key("a")));
        assert!(!table.contains(&dedup_key("b")));
        assert_eq!(table.get(&dedup_key("c")), Some((20, 3)));
        assert_eq!(table.next_due_ms(), Some(150));
        table.expire(150);
        assert_eq!(table, DedupTable::default());
    }

    use std::collections::BTreeMap;

    #[test]
    fn serialized_as_the_two_fields_it_replaced() {
        #[derive(Serialize)]
        struct Old {
            dedup: BTreeMap<DedupKey, DedupRecord>,
            dedup_expiry: VecDeque<(TimeMs, DedupKey)>,
        }
        let (a, b, c) = (dedup_key("a"), dedup_key("b"), dedup_key("c"));
        let old = Old {
            dedup: BTreeMap::from([
                (
                    a,
                    DedupRecord {
                        message_id: 10,
                        sequence: 1,
                    },
                ),
                (
                    b,
                    DedupRecord {
                        message_id: 11,
                        sequence: 2,
                    },
                ),
                (
                    c,
                    DedupRecord {
                        message_id: 20,
                        sequence: 3,
                    },
                ),
            ]),
            dedup_expiry: VecDeque::from([(100, a), (100, b), (150, c)]),
        };
        let bytes = bincode::serialize(&old).expect("encode");
        let table: DedupTable = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(table.get(&b), Some((11, 2)));
        assert_eq!(table.next_due_ms(), Some(100));
        assert_eq!(bincode::serialize(&table).expect("encode"), bytes);
    }

    #[derive(Serialize)]
    struct OldTable {
        dedup: BTreeMap<DedupKey, DedupRecord>,
        dedup_expiry: VecDeque<(TimeMs, DedupKey)>,
    }

    proptest::proptest! {
        /// Against the two collections it replaced: the same answers, the same encoding, and
        /// decoded back to an equal table.
        #[test]
        fn behaves_as_the_map_and_fifo_it_replaced(
            steps in proptest::collection::vec((0u8..40, 1u64..4, 0u64..3, proptest::bool::ANY), 0..300),
        ) {
            let mut table = DedupTable::default();
            let mut model = OldTable { dedup: BTreeMap::new(), dedup_expiry: VecDeque::new() };
            let (mut now, mut next_id, mut sequence) = (0u64, 1u64, 0u64);
            for (name, id_step, advance, expire) in steps {
                let key = dedup_key(&name.to_string());
                now += advance;
                next_id += id_step - 1;
                if expire {
                    table.expire(now);
                    while model.dedup_expiry.front().is_some_and(|(at, _)| *at <= now) {
                        let (_, key) = model.dedup_expiry.pop_front().unwrap();
                        model.dedup.remove(&key);
                    }
                }
                if let std::collections::btree_map::Entry::Vacant(vacant) = model.dedup.entry(key) {
                    sequence += 1;
                    table.insert(key, next_id, sequence, now + 5);
                    vacant.insert(DedupRecord { message_id: next_id, sequence });
                    model.dedup_expiry.push_back((now + 5, key));
                    next_id += 1;
                }
                for probe in 0u8..40 {
                    let probe = dedup_key(&probe.to_string());
                    let expected = model.dedup.get(&probe).map(|r| (r.message_id, r.sequence));
                    proptest::prop_assert_eq!(table.get(&probe), expected);
                    proptest::prop_assert_eq!(table.contains(&probe), expected.is_some());
                }
                proptest::prop_assert_eq!(
                    table.next_due_ms(),
                    model.dedup_expiry.front().map(|(at, _)| *at)
                );
            }
            let bytes = bincode::serialize(&table).unwrap();
            proptest::prop_assert_eq!(&bytes, &bincode::serialize(&model).unwrap());
            let back: DedupTable = bincode::deserialize(&bytes).unwrap();
            proptest::prop_assert_eq!(back, table);
        }
    }

    #[test]
    fn a_forged_table_naming_a_key_twice_is_refused() {
        let a = dedup_key("a");
        let forged = OldTable {
            dedup: BTreeMap::from([(
                a,
                DedupRecord {
                    message_id: 1,
                    sequence: 1,
                },
            )]),
            dedup_expiry: VecDeque::from([(100, a), (100, a)]),
        };
        let bytes = bincode::serialize(&forged).unwrap();
        let error = bincode::deserialize::<DedupTable>(&bytes).unwrap_err();
        assert!(error.to_string().contains("twice"), "{error}");
    }
}
