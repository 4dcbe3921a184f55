//! The Raft log, vote and commit pointer in RocksDB, with group commit.
//!
//! `append` writes entries to RocksDB (memtable + write-ahead log, not yet synced), so they
//! are readable at once, and hands the flush callback to the store's one syncer thread
//! (`wal_sync`, shared by every group's log). That thread takes every callback waiting,
//! fsyncs the write-ahead log once, and completes them all: many client writes share one
//! fsync, and none is acknowledged before it is on disk. After each sync it records the
//! last index synced outside the write-ahead log (see `watermark`), so that a log damaged
//! below that index is noticed at start.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::TrySendError;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, entry::RaftEntry};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use raftq_core::GroupId;

use crate::db::{
    CF_LOG, CF_META, Db, StoreError, decode, encode, group_of_key, index_of_log_key, log_key,
    meta_key,
};
use crate::wal_sync::{PendingSync, WalSyncer, note_watermark_error};
use crate::watermark::{self, Watermark};
use crate::{Entry, LogId, TypeConfig, Vote};

/// Encoded entry bytes one read of the log brings into memory (at least one entry).
const READ_BUDGET_BYTES: usize = 8 * 1024 * 1024;

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    group: GroupId,
    syncer: WalSyncer,
    watermark: Arc<Watermark>,
    /// Set at open when the log ends below the last index it had synced: (synced, held).
    lost: Option<(u64, u64)>,
    /// Encoded bytes of every entry appended since the store was opened.
    appended_bytes: Arc<std::sync::atomic::AtomicU64>,
}

/// The file in `dir` that records the last index of `group`'s log known to be synced.
fn watermark_path(dir: &Path, group: GroupId) -> PathBuf {
    dir.join(format!("log-synced-{group}"))
}

/// Forgets the synced watermarks recorded in data directory `dir`: for a copy taken from a
/// running node, whose log may end below what the node had synced when it was copied.
pub fn forget_synced_watermarks(dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("log-synced-")
        {
            watermark::forget(&entry.path())?;
        }
    }
    Ok(())
}

impl LogStore {
    /// Encoded bytes of the entries appended (by any clone) since the store was opened.
    pub fn appended_bytes(&self) -> u64 {
        self.appended_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Opens the log of `group`, on the store's syncer (started with the first log).
    pub fn new(db: Db, group: GroupId) -> io::Result<LogStore> {
        let (watermark, recorded) = Watermark::open(&watermark_path(db.dir(), group))?;
        let watermark = Arc::new(watermark);
        let syncer = db.wal_syncer()?;
        syncer.register(&watermark);
        let mut store = LogStore {
            db,
            group,
            syncer,
            watermark,
            lost: None,
            appended_bytes: Arc::default(),
        };
        let held = store.last_index()?.unwrap_or(0);
        store.lost = recorded
            .filter(|synced| *synced > held)
            .map(|synced| (synced, held));
        Ok(store)
    }

    /// When the log ends below the last index it had synced, as recorded outside the
    /// write-ahead log: `(synced, held)`. Its disk lost or damaged entries it had
    /// acknowledged, and it must not vote with it until it has caught up again.
    pub fn lost_synced_entries(&self) -> Option<(u64, u64)> {
        self.lost
    }

    /// The index of the last entry the log holds, or covers by a purge behind a snapshot.
    fn last_index(&self) -> Result<Option<u64>, StoreError> {
        let last_purged: Option<LogId> = self.read_meta("last_purged")?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(last.map(|log_id| log_id.index))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        name: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let bytes = self
            .db
            .inner
            .get_cf(self.db.cf(CF_META), meta_key(self.group, name))?;
        bytes.map(|bytes| decode(name, &bytes)).transpose()
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, StoreError> {
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self.db.inner.iterator_cf(
            self.db.cf(CF_LOG),
            IteratorMode::From(&upper, Direction::Reverse),
        );
        match iter.next() {
            Some(item) => {
                let (key, value) = item?;
                if group_of_key(&key) != Some(self.group) {
                    return Ok(None);
                }
                let entry: Entry = decode("log entry", &value)?;
                Ok(Some(entry.log_id()))
            }
            None => Ok(None),
        }
    }

    /// Whether this group has any Raft state on disk: a vote, a log entry, or a purge point
    /// (a log compacted behind a snapshot).
    pub fn holds_state(&self) -> Result<bool, StoreError> {
        Ok(self.read_meta::<Vote>("vote")?.is_some()
            || self.last_entry_log_id()?.is_some()
            || self.read_meta::<LogId>("last_purged")?.is_some())
    }

    /// Syncs the write-ahead log, then returns the index of the last entry the log holds
    /// (or covers by a purge behind a snapshot): every entry up to it is on disk.
    pub fn synced_last_index(&self) -> Result<Option<u64>, StoreError> {
        self.db.sync_wal()?;
        self.last_index()
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.inner.write_opt(batch, &options)?;
        Ok(())
    }
}

fn start_index<RB: RangeBounds<u64>>(range: &RB) -> u64 {
    match range.start_bound() {
        Bound::Included(index) => *index,
        Bound::Excluded(index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    }
}

fn end_index<RB: RangeBounds<u64>>(range: &RB) -> u64 {
    match range.end_bound() {
        Bound::Included(index) => index.saturating_add(1),
        Bound::Excluded(index) => *index,
        Bound::Unbounded => u64::MAX,
    }
}

impl LogStore {
    /// The entries of `[start, end)` in order, stopping after the first entry that brings
    /// the encoded bytes read to `budget` (so at least one entry when the range has any).
    fn read_entries(&self, start: u64, end: u64, budget: usize) -> Result<Vec<Entry>, io::Error> {
        let mut entries = Vec::new();
        if start >= end {
            return Ok(entries);
        }
        // The raw iterator lends each value: entries are decoded from RocksDB's buffer
        // without first copying it out.
        let mut iter = self.db.inner.raw_iterator_cf(self.db.cf(CF_LOG));
        iter.seek(log_key(self.group, start));
        let mut bytes = 0usize;
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if group_of_key(key) != Some(self.group) {
                break;
            }
            match index_of_log_key(key) {
                Some(index) if index < end => {}
                _ => break,
            }
            entries.push(decode::<Entry>("log entry", value)?);
            bytes += value.len();
            if bytes >= budget {
                break;
            }
            iter.next();
        }
        iter.status().map_err(StoreError::from)?;
        Ok(entries)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_entries(start_index(&range), end_index(&range), usize::MAX)
    }

    /// Replication reads at most [`READ_BUDGET_BYTES`] of entries per call: a follower far
    /// behind would otherwise have hundreds of entries of whole client batches read into
    /// the leader's memory at once.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, io::Error> {
        self.read_entries(start, end, READ_BUDGET_BYTES)
    }

    /// Entries to apply are read [`READ_BUDGET_BYTES`] at a time as the state machine takes
    /// them, not all at once: a node restarted behind its commit point, or a follower
    /// catching up, applies a long stretch of the log in one go.
    async fn entries_stream<RB>(
        &mut self,
        range: RB,
    ) -> impl futures::Stream<Item = Result<Entry, io::Error>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        use futures::StreamExt;
        let (start, end) = (start_index(&range), end_index(&range));
        let store = self.clone();
        futures::stream::unfold(Some(start), move |next| {
            let store = store.clone();
            async move {
                let from = next.filter(|from| *from < end)?;
                let page = match store.read_entries(from, end, READ_BUDGET_BYTES) {
                    Ok(page) if page.is_empty() => return None,
                    Ok(page) => page,
                    Err(error) => return Some((vec![Err(error)], None)),
                };
                let after = page.last().map(|entry| entry.index() + 1);
                Some((page.into_iter().map(Ok).collect::<Vec<_>>(), after))
            }
        })
        .flat_map(futures::stream::iter)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.read_meta("vote")?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.read_meta("last_purged")?;
        let last_log_id = self.last_entry_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_META),
            meta_key(self.group, "vote"),
            encode("vote", vote)?,
        );
        self.write(batch, true)?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: the commit pointer only speeds up recovery; Raft re-learns it.
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_META),
            meta_key(self.group, "committed"),
            encode("committed", &committed)?,
        );
        self.write(batch, false)?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.read_meta::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut count = 0u64;
        let mut last = 0u64;
        let mut bytes = 0u64;
        for entry in entries {
            last = last.max(entry.log_id().index);
            let key = log_key(self.group, entry.log_id().index);
            let encoded = encode("log entry", &entry)?;
            bytes += encoded.len() as u64;
            batch.put_cf(self.db.cf(CF_LOG), key, encoded);
            count += 1;
        }
        self.appended_bytes
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        let epoch = self.watermark.epoch();
        self.write(batch, false)?;
        metrics::counter!("raftq_log_entries_appended_total").increment(count);
        let pending = PendingSync {
            flushed: callback,
            index: last,
            epoch,
            watermark: self.watermark.clone(),
        };
        match self.syncer.submit(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(PendingSync {
                flushed: callback, ..
            })) => {
                let result = self.db.sync_wal().map_err(io::Error::from);
                if result.is_ok() {
                    note_watermark_error(self.watermark.advance(last, epoch));
                }
                callback.io_completed(result);
            }
            Err(TrySendError::Disconnected(PendingSync {
                flushed: callback, ..
            })) => {
                callback.io_completed(Err(io::Error::other("log syncer thread stopped")));
            }
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
        // First, so that the log ending here after a crash is not taken for damaged.
        self.watermark.lower(from.saturating_sub(1))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            log_key(self.group, from),
            log_key(self.group, u64::MAX),
        );
        self.write(batch, false)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.db.cf(CF_META),
            meta_key(self.group, "last_purged"),
            encode("last_purged", &log_id)?,
        );
        batch.delete_range_cf(
            self.db.cf(CF_LOG),
            log_key(self.group, 0),
            log_key(self.group, log_id.index + 1),
        );
        self.write(batch, false)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;

    #[test]
    fn the_logs_of_every_group_in_a_store_share_one_syncer() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let seven = LogStore::new(db.clone(), 7).unwrap();
        let eight = LogStore::new(db.clone(), 8).unwrap();
        assert!(seven.syncer.same_as(&eight.syncer));
        assert_eq!(seven.syncer.open_logs(), 2);
        drop(eight);
        assert_eq!(seven.syncer.open_logs(), 1);
        // Another store has its own.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Db::open(other_dir.path(), &OpenOptions::default()).unwrap();
        let nine = LogStore::new(other, 9).unwrap();
        assert!(!nine.syncer.same_as(&seven.syncer));
    }
}
