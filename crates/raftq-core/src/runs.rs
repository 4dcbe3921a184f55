//! Sets and maps of `u64` kept as runs of consecutive keys.
//!
//! A queue's indexes mostly hold long runs: a backlog's ready set is every sequence from
//! the head to the tail; messages sent in one batch get consecutive ids and consecutive
//! sequences; a consumer acknowledges consecutive ids with the same attempt. Kept one entry
//! per key, each index costs about 30 bytes per message in a B-tree; kept as runs, a
//! backlog of a million messages costs a few entries. The worst case (no two keys
//! adjacent) is one B-tree entry per key, as before.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of `u64`, as runs: first value → last value (inclusive).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunSet {
    runs: BTreeMap<u64, u64>,
    len: u64,
}

impl RunSet {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The run holding `value`, as (first, last).
    fn run_of(&self, value: u64) -> Option<(u64, u64)> {
        let (&first, &last) = self.runs.range(..=value).next_back()?;
        (value <= last).then_some((first, last))
    }

    pub(crate) fn contains(&self, value: u64) -> bool {
        self.run_of(value).is_some()
    }

    /// Adds `value`, joining the runs it touches; false when it was there.
    pub(crate) fn insert(&mut self, value: u64) -> bool {
        if self.contains(value) {
            return false;
        }
        self.len += 1;
        let before = value
            .checked_sub(1)
            .and_then(|previous| self.run_of(previous))
            .map(|(first, _)| first);
        let after = value
            .checked_add(1)
            .and_then(|next| self.runs.get(&next).copied());
        if after.is_some() {
            self.runs.remove(&(value + 1));
        }
        let first = before.unwrap_or(value);
        let last = after.unwrap_or(value);
        self.runs.insert(first, last);
        true
    }

    /// Removes `value`, splitting its run; false when it was not there.
    pub(crate) fn remove(&mut self, value: u64) -> bool {
        let Some((first, last)) = self.run_of(value) else {
            return false;
        };
        self.len -= 1;
        self.runs.remove(&first);
        if first < value {
            self.runs.insert(first, value - 1);
        }
        if value < last {
            self.runs.insert(value + 1, last);
        }
        true
    }

    /// Every value, in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|(&first, &last)| first..=last)
    }
}

/// A map from `u64` keys to `u64` values, as runs over which the key grows by one and the
/// value by `STEP`: with `STEP` 1, an index from ids to sequences (both assigned in order);
/// with `STEP` 0, the same value for consecutive keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RunMap<const STEP: u64> {
    /// First key of each run → (value at the first key, keys in the run).
    runs: BTreeMap<u64, (u64, u64)>,
    len: u64,
}

impl<const STEP: u64> RunMap<STEP> {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The run holding `key`, as (first key, first value, length).
    fn run_of(&self, key: u64) -> Option<(u64, u64, u64)> {
        let (&first, &(value, len)) = self.runs.range(..=key).next_back()?;
        (key - first < len).then_some((first, value, len))
    }

    pub(crate) fn get(&self, key: u64) -> Option<u64> {
        self.run_of(key)
            .map(|(first, value, _)| value + (key - first) * STEP)
    }

    /// Sets `key` to `value`, joining the runs that then continue each other.
    pub(crate) fn insert(&mut self, key: u64, value: u64) {
        self.remove(key);
        self.len += 1;
        let mut first = key;
        let mut first_value = value;
        let mut len = 1;
        if let Some(previous) = key.checked_sub(1)
            && let Some((run_first, run_value, run_len)) = self.run_of(previous)
            && run_value.checked_add(run_len * STEP) == Some(value)
        {
            first = run_first;
            first_value = run_value;
            len += run_len;
        }
        if let Some(next) = key.checked_add(1)
            && let Some(&(next_value, next_len)) = self.runs.get(&next)
            && value.checked_add(STEP) == Some(next_value)
        {
            self.runs.remove(&next);
            len += next_len;
        }
        self.runs.insert(first, (first_value, len));
    }

    /// Removes `key`, splitting its run, and returns its value.
    pub(crate) fn remove(&mut self, key: u64) -> Option<u64> {
        let (first, value, len) = self.run_of(key)?;
        self.len -= 1;
        let offset = key - first;
        self.runs.remove(&first);
        if offset > 0 {
            self.runs.insert(first, (value, offset));
        }
        if offset + 1 < len {
            self.runs
                .insert(key + 1, (value + (offset + 1) * STEP, len - offset - 1));
        }
        Some(value + offset * STEP)
    }

    pub(crate) fn clear(&mut self) {
        self.runs.clear();
        self.len = 0;
    }

    /// Every (key, value), in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().flat_map(|(&first, &(value, len))| {
            (0..len).map(move |offset| (first + offset, value + offset * STEP))
        })
    }
}

/// Ready messages of a queue, ordered by (inverted priority, sequence): one run set per
/// priority in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ReadySet {
    by_priority: BTreeMap<u8, RunSet>,
}

impl ReadySet {
    pub(crate) fn insert(&mut self, (rank, sequence): (u8, u64)) -> bool {
        self.by_priority.entry(rank).or_default().insert(sequence)
    }

    pub(crate) fn remove(&mut self, (rank, sequence): &(u8, u64)) -> bool {
        let Some(set) = self.by_priority.get_mut(rank) else {
            return false;
        };
        let removed = set.remove(*sequence);
        if set.is_empty() {
            self.by_priority.remove(rank);
        }
        removed
    }

    pub(crate) fn contains(&self, (rank, sequence): &(u8, u64)) -> bool {
        self.by_priority
            .get(rank)
            .is_some_and(|set| set.contains(*sequence))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_priority.is_empty()
    }

    pub(crate) fn len(&self) -> u64 {
        self.by_priority.values().map(RunSet::len).sum()
    }

    pub(crate) fn clear(&mut self) {
        self.by_priority.clear();
    }

    /// In hand-out order: highest priority (lowest rank) first, then send order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u8, u64)> + '_ {
        self.by_priority
            .iter()
            .flat_map(|(&rank, set)| set.iter().map(move |sequence| (rank, sequence)))
    }
}

// Serialized exactly as the B-tree collections they replace (a sequence of keys, a map of
// key to value), so snapshots keep their format.

impl Serialize for ReadySet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len() as usize))?;
        for key in self.iter() {
            seq.serialize_element(&key)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for ReadySet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ReadyVisitor;
        impl<'de> Visitor<'de> for ReadyVisitor {
            type Value = ReadySet;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sequence of (rank, sequence) pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ReadySet, A::Error> {
                let mut set = ReadySet::default();
                while let Some(key) = seq.next_element::<(u8, u64)>()? {
                    set.insert(key);
                }
                Ok(set)
            }
        }
        deserializer.deserialize_seq(ReadyVisitor)
    }
}

/// A value type a [`RunMap`] is serialized with (what the replaced map held).
pub(crate) trait RunValue: Serialize + for<'de> Deserialize<'de> {
    fn from_u64(value: u64) -> Self;
    fn into_u64(self) -> u64;
}

impl RunValue for u64 {
    fn from_u64(value: u64) -> Self {
        value
    }
    fn into_u64(self) -> u64 {
        self
    }
}

impl RunValue for u32 {
    fn from_u64(value: u64) -> Self {
        // Only u32 values are ever inserted into maps serialized as u32.
        value as u32
    }
    fn into_u64(self) -> u64 {
        u64::from(self)
    }
}

/// Serializes a [`RunMap`] as a map of `u64` to `V` (`#[serde(with = ...)]` helpers).
pub(crate) struct AsMap<V>(PhantomData<V>);

impl<V: RunValue> AsMap<V> {
    pub(crate) fn serialize<const STEP: u64, S: Serializer>(
        map: &RunMap<STEP>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out = serializer.serialize_map(Some(map.len() as usize))?;
        for (key, value) in map.iter() {
            out.serialize_entry(&key, &V::from_u64(value))?;
        }
        out.end()
    }

    pub(crate) fn deserialize<'de, const STEP: u64, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<RunMap<STEP>, D::Error> {
        struct MapVisitor<V, const STEP: u64>(PhantomData<V>);
        impl<'de, V: RunValue, const STEP: u64> Visitor<'de> for MapVisitor<V, STEP> {
            type Value = RunMap<STEP>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of u64 keys")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<RunMap<STEP>, A::Error> {
                let mut map = RunMap::default();
                while let Some((key, value)) = access.next_entry::<u64, V>()? {
                    map.insert(key, value.into_u64());
                }
                Ok(map)
            }
        }
        deserializer.deserialize_map(MapVisitor::<V, STEP>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        // Small keys, so runs form, touch and split often.
        let op = prop_oneof![
            (0u64..40, 0u64..4).prop_map(|(k, v)| Op::Insert(k, v)),
            (0u64..40).prop_map(Op::Remove),
        ];
        proptest::collection::vec(op, 0..200)
    }

    proptest! {
        #[test]
        fn a_run_set_holds_what_a_btree_set_holds(ops in ops()) {
            let mut runs = RunSet::default();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(k, _) => prop_assert_eq!(runs.insert(k), model.insert(k)),
                    Op::Remove(k) => prop_assert_eq!(runs.remove(k), model.remove(&k)),
                }
                prop_assert_eq!(runs.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(runs.len(), model.len() as u64);
                // Runs are maximal: no two touch.
                let bounds: Vec<(u64, u64)> = runs.runs.iter().map(|(a, b)| (*a, *b)).collect();
                for pair in bounds.windows(2) {
                    prop_assert!(pair[0].1 + 1 < pair[1].0, "{:?}", bounds);
                }
            }
        }

        #[test]
        fn a_run_map_holds_what_a_btree_map_holds(ops in ops()) {
            fn check<const STEP: u64>(ops: &[Op]) -> Result<(), TestCaseError> {
                let mut runs = RunMap::<STEP>::default();
                let mut model = BTreeMap::new();
                for op in ops {
                    match *op {
                        Op::Insert(k, v) => {
                            // Values that continue a neighbour's run as often as not.
                            let value = k * STEP + v % 2;
                            runs.insert(k, value);
                            model.insert(k, value);
                        }
                        Op::Remove(k) => prop_assert_eq!(runs.remove(k), model.remove(&k)),
                    }
                    prop_assert_eq!(runs.iter().collect::<Vec<_>>(), model.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>());
                    prop_assert_eq!(runs.len(), model.len() as u64);
                    for k in 0..41 {
                        prop_assert_eq!(runs.get(k), model.get(&k).copied());
                    }
                }
                Ok(())
            }
            check::<0>(&ops)?;
            check::<1>(&ops)?;
        }

        #[test]
        fn a_ready_set_orders_by_rank_then_sequence(keys in proptest::collection::vec((0u8..3, 0u64..30), 0..100)) {
            let mut ready = ReadySet::default();
            let mut model = BTreeSet::new();
            for (i, key) in keys.iter().enumerate() {
                if i % 3 == 2 {
                    prop_assert_eq!(ready.remove(key), model.remove(key));
                } else {
                    prop_assert_eq!(ready.insert(*key), model.insert(*key));
                }
                prop_assert_eq!(ready.contains(key), model.contains(key));
            }
            prop_assert_eq!(ready.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(ready.is_empty(), model.is_empty());
        }
    }

    #[test]
    fn a_backlog_in_order_is_one_run() {
        let mut ready = RunSet::default();
        let mut ids = RunMap::<1>::default();
        for sequence in 1..=1_000 {
            ready.insert(sequence);
            ids.insert(5_000 + sequence, sequence);
        }
        assert_eq!(ready.runs.len(), 1);
        assert_eq!(ids.runs.len(), 1);
        assert_eq!(ids.get(5_500), Some(500));
        // Consuming from the head keeps one run.
        for sequence in 1..=10 {
            ready.remove(sequence);
            ids.remove(5_000 + sequence);
        }
        assert_eq!((ready.runs.len(), ready.len()), (1, 990));
        assert_eq!((ids.runs.len(), ids.len()), (1, 990));
    }

    #[test]
    fn serialized_as_the_collections_they_replace() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct New {
            ready: ReadySet,
            #[serde(with = "AsMap::<u64>")]
            ids: RunMap<1>,
            #[serde(with = "AsMap::<u32>")]
            acked: RunMap<0>,
        }
        #[derive(Serialize, Deserialize)]
        struct Old {
            ready: BTreeSet<(u8, u64)>,
            ids: BTreeMap<u64, u64>,
            acked: BTreeMap<u64, u32>,
        }
        let old = Old {
            ready: BTreeSet::from([(0, 3), (0, 4), (5, 1)]),
            ids: BTreeMap::from([(10, 1), (11, 2), (20, 7)]),
            acked: BTreeMap::from([(10, 1), (11, 1), (12, 2)]),
        };
        let bytes = bincode::serialize(&old).expect("encode");
        let new: New = bincode::deserialize(&bytes).expect("decode");
        assert_eq!(new.ids.get(11), Some(2));
        assert_eq!(new.acked.get(12), Some(2));
        assert_eq!(bincode::serialize(&new).expect("encode"), bytes);
    }
}
