//! A map keyed by a queue's sequence numbers, which are handed out in increasing order and
//! leave mostly in that order too.
//!
//! Keys are grouped into chunks of 64 consecutive sequences: a chunk holds a bitmap of the
//! sequences present and their values side by side, in order. A backlog of a million
//! messages is then about 16,000 chunks, and each message costs its value's size plus
//! about two bytes, where a B-tree of boxed values costs a pointer, a key, the box and
//! about half-empty nodes (about 40 bytes per message beyond the value). A chunk releases
//! room as its values leave and goes when its last value does, so a map never holds more
//! than a chunk per value stored.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Sequences per chunk: one bit each in a `u64`.
const SHIFT: u32 = 6;
const MASK: u64 = (1 << SHIFT) - 1;

/// A chunk's values, in sequence order, and which of its 64 sequences are present.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Chunk<V> {
    present: u64,
    values: VecDeque<V>,
}

impl<V> Chunk<V> {
    fn has(&self, offset: u32) -> bool {
        self.present >> offset & 1 == 1
    }

    /// Where the value of `offset` is (or would go) in `values`.
    fn index(&self, offset: u32) -> usize {
        (self.present & ((1u64 << offset) - 1)).count_ones() as usize
    }

    fn get(&self, offset: u32) -> Option<&V> {
        self.has(offset).then(|| &self.values[self.index(offset)])
    }

    /// The offsets present, in order, as the values are.
    fn offsets(&self) -> impl Iterator<Item = u32> + use<V> {
        let mut rest = self.present;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let offset = rest.trailing_zeros();
                rest &= rest - 1;
                offset
            })
        })
    }
}

fn split(key: u64) -> (u64, u32) {
    (key >> SHIFT, (key & MASK) as u32)
}

/// A map from `u64` to `V` for keys that mostly come and go in increasing order.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SeqMap<V> {
    chunks: BTreeMap<u64, Chunk<V>>,
    len: usize,
}

impl<V> Default for SeqMap<V> {
    fn default() -> Self {
        SeqMap {
            chunks: BTreeMap::new(),
            len: 0,
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for SeqMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> SeqMap<V> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, key: u64) -> Option<&V> {
        let (chunk, offset) = split(key);
        self.chunks.get(&chunk)?.get(offset)
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut V> {
        let (chunk, offset) = split(key);
        let chunk = self.chunks.get_mut(&chunk)?;
        if !chunk.has(offset) {
            return None;
        }
        let index = chunk.index(offset);
        Some(&mut chunk.values[index])
    }

    /// Inserts `value` at `key`, returning the value it replaces.
    pub(crate) fn insert(&mut self, key: u64, value: V) -> Option<V> {
        let (chunk, offset) = split(key);
        let chunk = self.chunks.entry(chunk).or_insert_with(|| Chunk {
            present: 0,
            values: VecDeque::new(),
        });
        let index = chunk.index(offset);
        if chunk.has(offset) {
            return Some(std::mem::replace(&mut chunk.values[index], value));
        }
        chunk.values.insert(index, value);
        chunk.present |= 1 << offset;
        self.len += 1;
        None
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<V> {
        let (chunk_key, offset) = split(key);
        let chunk = self.chunks.get_mut(&chunk_key)?;
        if !chunk.has(offset) {
            return None;
        }
        let index = chunk.index(offset);
        let value = chunk.values.remove(index)?;
        chunk.present &= !(1 << offset);
        self.len -= 1;
        if chunk.present == 0 {
            self.chunks.remove(&chunk_key);
        } else if chunk.values.len() * 4 <= chunk.values.capacity() && chunk.values.capacity() > 8 {
            // Acknowledged out of order: give back what the chunk no longer needs, keeping
            // room to double so that one more removal does not shrink it again.
            chunk.values.shrink_to(chunk.values.len() * 2);
        }
        Some(value)
    }

    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// Every entry in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.range_from(0)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.chunks.values().flat_map(|c| c.values.iter())
    }

    /// The entries with keys from `start` on, in key order.
    pub(crate) fn range_from(&self, start: u64) -> impl Iterator<Item = (u64, &V)> {
        let (first_chunk, _) = split(start);
        self.chunks
            .range(first_chunk..)
            .flat_map(|(&chunk, c)| {
                c.offsets()
                    .zip(&c.values)
                    .map(move |(offset, value)| (chunk << SHIFT | u64::from(offset), value))
            })
            .skip_while(move |(key, _)| *key < start)
    }
}

impl<V> std::ops::Index<u64> for SeqMap<V> {
    type Output = V;

    fn index(&self, key: u64) -> &V {
        self.get(key)
            .unwrap_or_else(|| panic!("sequence {key} is in the map"))
    }
}

/// Serialized as a map in key order, as a `BTreeMap<u64, V>` is.
impl<V: Serialize> Serialize for SeqMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len))?;
        for (key, value) in self.iter() {
            map.serialize_entry(&key, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SeqMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = SeqMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from sequence to value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<SeqMap<V>, A::Error> {
                let mut map = SeqMap::default();
                while let Some((key, value)) = access.next_entry::<u64, V>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::SeqMap;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64),
        Remove(u64),
        RemoveFirst,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u64..600).prop_map(Op::Insert),
            2 => (0u64..600).prop_map(Op::Remove),
            1 => Just(Op::RemoveFirst),
        ]
    }

    proptest! {
        #[test]
        fn behaves_as_a_btree_map(ops in prop::collection::vec(op(), 0..400), start in 0u64..700) {
            let mut map = SeqMap::default();
            let mut model = BTreeMap::new();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert(key) => {
                        prop_assert_eq!(map.insert(key, step), model.insert(key, step));
                    }
                    Op::Remove(key) => prop_assert_eq!(map.remove(key), model.remove(&key)),
                    Op::RemoveFirst => {
                        let first = model.keys().next().copied();
                        if let Some(key) = first {
                            prop_assert_eq!(map.remove(key), model.remove(&key));
                        }
                    }
                }
                prop_assert_eq!(map.len(), model.len());
            }
            let entries: Vec<(u64, usize)> = map.iter().map(|(k, v)| (k, *v)).collect();
            let expected: Vec<(u64, usize)> = model.iter().map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(&entries, &expected);
            let values: Vec<usize> = map.values().copied().collect();
            prop_assert_eq!(values, model.values().copied().collect::<Vec<_>>());
            let from: Vec<(u64, usize)> = map.range_from(start).map(|(k, v)| (k, *v)).collect();
            let expected_from: Vec<(u64, usize)> =
                model.range(start..).map(|(k, v)| (*k, *v)).collect();
            prop_assert_eq!(from, expected_from);
            for key in 0..700 {
                prop_assert_eq!(map.get(key), model.get(&key));
            }
            // Encoded exactly as the B-tree map it replaces, and read back the same.
            let bytes = bincode::serialize(&map).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&model).unwrap());
            let back: SeqMap<usize> = bincode::deserialize(&bytes).unwrap();
            prop_assert!(back == map);
        }
    }

    #[test]
    fn a_chunk_goes_with_its_last_value_and_shrinks_when_mostly_empty() {
        let mut map = SeqMap::default();
        for key in 0..128u64 {
            map.insert(key, key);
        }
        assert_eq!(map.chunks.len(), 2);
        for key in 0..64u64 {
            map.remove(key);
        }
        assert_eq!(map.chunks.len(), 1, "the emptied chunk is gone");
        for key in (64..128u64).filter(|key| key % 8 != 0) {
            map.remove(key);
        }
        let chunk = map.chunks.values().next().unwrap();
        assert_eq!(chunk.values.len(), 8);
        assert!(chunk.values.capacity() <= 16, "{}", chunk.values.capacity());
        assert_eq!(
            map.values().copied().collect::<Vec<_>>(),
            (64..128).step_by(8).collect::<Vec<u64>>()
        );
    }
}
