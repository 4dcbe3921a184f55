//! A queue's dedup table: the idempotency keys of messages sent within its dedup window,
//! each with the id and sequence the send was given, forgotten in the order they came.

use std::collections::{BTreeMap, VecDeque};
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

/// Per record, the key (16 bytes) and its message id (8) in a B-tree, and the key again in
/// the expiry FIFO (16). The sequence of each send and the expiry times are kept as runs:
/// messages sent to one queue get consecutive ids and sequences, and a batch of sends
/// shares one time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DedupTable {
    records: BTreeMap<DedupKey, MessageId>,
    /// Message id → sequence of every recorded send.
    sequences: RunMap<1>,
    /// Keys oldest first; the window is fixed per queue and time never goes back, so
    /// records are forgotten in the order they were made.
    keys: VecDeque<DedupKey>,
    /// When the keys are forgotten: (time, how many of the oldest keys), oldest first.
    expiry: VecDeque<(TimeMs, u64)>,
}

impl DedupTable {
    pub(crate) fn contains(&self, key: &DedupKey) -> bool {
        self.records.contains_key(key)
    }

    /// The message id and sequence the send with `key` was given.
    pub(crate) fn get(&self, key: &DedupKey) -> Option<(MessageId, u64)> {
        let message_id = *self.records.get(key)?;
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
        self.records.insert(key, message_id);
        self.sequences.insert(message_id, sequence);
        self.push_expiry(key, forget_at_ms);
    }

    fn push_expiry(&mut self, key: DedupKey, forget_at_ms: TimeMs) {
        self.keys.push_back(key);
        match self.expiry.back_mut() {
            Some((at, count)) if *at == forget_at_ms => *count += 1,
            _ => self.expiry.push_back((forget_at_ms, 1)),
        }
    }

    /// Forgets the records due at `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: TimeMs) {
        while let Some(&(at, count)) = self.expiry.front() {
            if at > now_ms {
                break;
            }
            self.expiry.pop_front();
            for key in self.keys.drain(..count as usize) {
                if let Some(message_id) = self.records.remove(&key) {
                    self.sequences.remove(message_id);
                }
            }
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
            .zip(&self.keys)
            .map(|(at, key)| {
                let message_id = self.records.get(key).copied().unwrap_or(0);
                let sequence = self.sequences.get(message_id).unwrap_or(0);
                (at, *key, message_id, sequence)
            })
    }
}

// Serialized as the two fields it replaced, so snapshot files keep their format:
// `dedup: BTreeMap<DedupKey, DedupRecord { message_id, sequence }>` and
// `dedup_expiry: VecDeque<(TimeMs, DedupKey)>`.

#[derive(Serialize, Deserialize)]
struct DedupRecord {
    message_id: MessageId,
    sequence: u64,
}

/// The records map, in key order.
struct RecordsByKey<'a>(&'a DedupTable);

impl Serialize for RecordsByKey<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.records.iter().map(|(key, message_id)| {
            let sequence = self.0.sequences.get(*message_id).unwrap_or(0);
            (
                key,
                DedupRecord {
                    message_id: *message_id,
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
                // Straight into the table: a state with millions of records must not hold
                // them twice while it loads.
                let mut table = DedupTable::default();
                seq.next_element_seed(RecordsSeed(&mut table))?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                seq.next_element_seed(ExpirySeed(&mut table))?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if table.keys.len() != table.records.len() {
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

/// Reads the records map into the table's records and sequences.
struct RecordsSeed<'a>(&'a mut DedupTable);

impl<'de> de::DeserializeSeed<'de> for RecordsSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of dedup keys to records")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some((key, record)) = map.next_entry::<DedupKey, DedupRecord>()? {
            self.0.records.insert(key, record.message_id);
            self.0.sequences.insert(record.message_id, record.sequence);
        }
        Ok(())
    }
}

/// Reads the expiry FIFO into the table's keys and expiry runs.
struct ExpirySeed<'a>(&'a mut DedupTable);

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
        let table = self.0;
        while let Some((at, key)) = seq.next_element::<(TimeMs, DedupKey)>()? {
            if !table.records.contains_key(&key) {
                return Err(de::Error::custom(
                    "a dedup expiry names a key with no record",
                ));
            }
            table.push_expiry(key, at);
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
}
