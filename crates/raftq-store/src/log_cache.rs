//! The newest Raft log entries, kept decoded in memory.
//!
//! An entry is read again moments after it is appended: by the replication task of each
//! follower (on the leader) and by the state machine that applies it (on every node).
//! Without this cache each of those reads is a RocksDB lookup and a decode of the whole
//! entry, with every message body in it: three per entry on a leader with two followers.
//! The cache holds the newest entries up to a byte budget, as the appends left them; what
//! it no longer holds is read from RocksDB as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::entry::RaftEntry;

use crate::Entry;

/// Encoded bytes of entries the cache keeps (beyond one entry, which it always may).
pub(crate) const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Most entries the cache keeps. A decoded entry takes more memory than its encoding, by
/// far for small ones (a receive or an acknowledgement is tens of bytes on disk and
/// hundreds in memory), so the byte budget alone would let tens of thousands of them
/// stay. The reads the cache serves come within the few entries being replicated and
/// applied; openraft sends at most 300 per call.
pub(crate) const LOG_CACHE_ENTRIES: usize = 256;

pub(crate) struct LogCache {
    budget: usize,
    max_entries: usize,
    cached: Mutex<Cached>,
}

/// A run of consecutive entries ending at the newest one appended.
#[derive(Default)]
struct Cached {
    /// Index of `entries[0]`.
    first: u64,
    /// Each entry with its encoded size.
    entries: VecDeque<(Arc<Entry>, usize)>,
    bytes: usize,
}

impl Cached {
    /// The index after the newest cached entry.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Drops the entries from `index` on.
    fn truncate_from(&mut self, index: u64) {
        while self.end() > index.max(self.first) {
            match self.entries.pop_back() {
                Some((_, size)) => self.bytes -= size,
                None => break,
            }
        }
    }
}

impl LogCache {
    /// A cache of at most `max_entries` entries and `budget` encoded bytes (beyond one
    /// entry, which it always keeps).
    pub(crate) fn new(budget: usize, max_entries: usize) -> LogCache {
        LogCache {
            budget,
            max_entries: max_entries.max(1),
            cached: Mutex::new(Cached::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cached> {
        self.cached
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes entries just written to the log, in index order, each with its encoded size.
    /// openraft appends right after the last entry (after truncating the log where it
    /// overwrites), and the log store forgets cached entries from the first index it writes
    /// before writing; so an entry normally continues the cached run. One that does not
    /// starts a new run.
    pub(crate) fn appended(&self, entries: Vec<(Entry, usize)>) {
        let mut cached = self.lock();
        for (entry, size) in entries {
            let index = entry.index();
            if cached.entries.is_empty() || index != cached.end() {
                *cached = Cached {
                    first: index,
                    ..Cached::default()
                };
            }
            cached.entries.push_back((Arc::new(entry), size));
            cached.bytes += size;
            while (cached.bytes > self.budget && cached.entries.len() > 1)
                || cached.entries.len() > self.max_entries
            {
                if let Some((_, size)) = cached.entries.pop_front() {
                    cached.bytes -= size;
                    cached.first += 1;
                }
            }
        }
    }

    /// Forgets the entries from `index` on (the log was truncated there).
    pub(crate) fn truncate_from(&self, index: u64) {
        self.lock().truncate_from(index);
    }

    /// Forgets the entries up to and including `index` (the log was purged there).
    pub(crate) fn purge_through(&self, index: u64) {
        let mut cached = self.lock();
        while cached.first <= index {
            match cached.entries.pop_front() {
                Some((_, size)) => {
                    cached.bytes -= size;
                    cached.first += 1;
                }
                None => {
                    *cached = Cached::default();
                    break;
                }
            }
        }
    }

    /// The entries of `[start, end)`, stopping after the first that brings the encoded
    /// bytes to `budget`, when the cache holds the entry at `start`; `None` when it does
    /// not (the caller reads the log instead). The cache always ends at the newest entry
    /// appended, so an entry the cache holds is followed by every later one.
    pub(crate) fn read(&self, start: u64, end: u64, budget: usize) -> Option<Vec<Entry>> {
        let shared: Vec<Arc<Entry>> = {
            let cached = self.lock();
            if start < cached.first || start >= cached.end() {
                return None;
            }
            let mut bytes = 0usize;
            let mut taken = Vec::new();
            let from = (start - cached.first) as usize;
            for (entry, size) in cached.entries.range(from..) {
                if entry.index() >= end {
                    break;
                }
                taken.push(entry.clone());
                bytes += size;
                if bytes >= budget {
                    break;
                }
            }
            taken
        };
        // The deep copies are made outside the lock.
        Some(shared.iter().map(|entry| Entry::clone(entry)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftq_core::{Command, Request};

    fn entry(term: u64, index: u64) -> (Entry, usize) {
        let log_id = openraft::LogId::new(
            openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
            index,
        );
        let request = Request {
            now_ms: index,
            command: Command::PurgeQueue {
                name: format!("q{term}"),
            },
        };
        (Entry::new_normal(log_id, request), 100)
    }

    fn ids(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|entries| {
            entries
                .iter()
                .map(|entry| (entry.log_id().leader_id.term, entry.index()))
                .collect()
        })
    }

    #[test]
    fn serves_a_range_it_holds_and_refers_the_rest_to_the_log() {
        let cache = LogCache::new(1_000, 100);
        cache.appended((5..=8).map(|index| entry(1, index)).collect());
        assert_eq!(
            ids(cache.read(6, 100, usize::MAX)),
            Some(vec![(1, 6), (1, 7), (1, 8)])
        );
        assert_eq!(
            ids(cache.read(5, 7, usize::MAX)),
            Some(vec![(1, 5), (1, 6)])
        );
        assert_eq!(ids(cache.read(5, 100, 150)), Some(vec![(1, 5), (1, 6)]));
        assert_eq!(
            ids(cache.read(4, 100, usize::MAX)),
            None,
            "starts before it"
        );
        assert_eq!(
            ids(cache.read(9, 100, usize::MAX)),
            None,
            "nothing that new"
        );
    }

    #[test]
    fn keeps_the_newest_entries_within_its_budget_and_count() {
        let cache = LogCache::new(350, 100);
        cache.appended((1..=10).map(|index| entry(1, index)).collect());
        assert_eq!(ids(cache.read(7, 100, usize::MAX)), None);
        assert_eq!(
            ids(cache.read(8, 100, usize::MAX)),
            Some(vec![(1, 8), (1, 9), (1, 10)])
        );
        // And within its count of entries, however small they are.
        let counted = LogCache::new(usize::MAX, 2);
        counted.appended((1..=10).map(|index| entry(1, index)).collect());
        assert_eq!(ids(counted.read(8, 100, usize::MAX)), None);
        assert_eq!(
            ids(counted.read(9, 100, usize::MAX)),
            Some(vec![(1, 9), (1, 10)])
        );
        let one = LogCache::new(10, 100);
        one.appended(vec![entry(1, 1), entry(1, 2)]);
        assert_eq!(ids(one.read(2, 3, usize::MAX)), Some(vec![(1, 2)]));
    }

    #[test]
    fn follows_truncation_purge_and_overwriting_appends() {
        let cache = LogCache::new(10_000, 100);
        cache.appended((1..=6).map(|index| entry(1, index)).collect());
        cache.truncate_from(5);
        assert_eq!(ids(cache.read(5, 100, usize::MAX)), None);
        // A new leader's entries replace the old term's from index 4 on (the store forgets
        // the cached entries it overwrites first).
        cache.truncate_from(4);
        cache.appended(vec![entry(2, 4), entry(2, 5)]);
        assert_eq!(
            ids(cache.read(3, 100, usize::MAX)),
            Some(vec![(1, 3), (2, 4), (2, 5)])
        );
        cache.purge_through(3);
        assert_eq!(ids(cache.read(3, 100, usize::MAX)), None);
        assert_eq!(
            ids(cache.read(4, 100, usize::MAX)),
            Some(vec![(2, 4), (2, 5)])
        );
        cache.purge_through(9);
        assert_eq!(ids(cache.read(5, 100, usize::MAX)), None);
        // An append that does not follow the cached run (after a snapshot) starts anew.
        cache.appended(vec![entry(2, 1)]);
        cache.appended(vec![entry(3, 20)]);
        assert_eq!(ids(cache.read(1, 100, usize::MAX)), None);
        assert_eq!(ids(cache.read(20, 100, usize::MAX)), Some(vec![(3, 20)]));
        // So does one that goes back without a truncation first: nothing older is kept.
        cache.appended(vec![entry(3, 21), entry(3, 22)]);
        cache.appended(vec![entry(4, 21)]);
        assert_eq!(ids(cache.read(20, 100, usize::MAX)), None);
        assert_eq!(ids(cache.read(21, 100, usize::MAX)), Some(vec![(4, 21)]));
    }
}
