//! The Raft log, vote and commit pointer in RocksDB, with group commit.
//!
//! `append` writes entries to RocksDB (memtable + write-ahead log, not yet synced), so they
//! are readable at once, and hands the flush callback to one syncer thread. That thread
//! takes every callback waiting, fsyncs the write-ahead log once, and completes them all:
//! many client writes share one fsync, and none is acknowledged before it is on disk.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Instant;

use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, entry::RaftEntry};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use raftq_core::GroupId;

use crate::db::{
    CF_LOG, CF_META, Db, StoreError, decode, encode, index_of_log_key, log_key, meta_key,
};
use crate::{Entry, LogId, TypeConfig, Vote};

/// Encoded entry bytes one read of the log brings into memory (at least one entry).
const READ_BUDGET_BYTES: usize = 8 * 1024 * 1024;

/// Callbacks waiting for one fsync; beyond this, `append` syncs inline (backpressure).
const SYNC_QUEUE_CAPACITY: usize = 4_096;

#[derive(Clone)]
pub struct LogStore {
    db: Db,
    group: GroupId,
    syncer: SyncSender<IOFlushed<TypeConfig>>,
}

impl LogStore {
    /// Opens the log of `group`. The syncer thread lives as long as any clone of the store.
    pub fn new(db: Db, group: GroupId) -> io::Result<LogStore> {
        let (syncer, pending) = sync_channel(SYNC_QUEUE_CAPACITY);
        // The syncer holds the database weakly, so dropping the last store closes RocksDB.
        let thread_db = std::sync::Arc::downgrade(&db.inner);
        std::thread::Builder::new()
            .name(format!("wal-sync-{group}"))
            .spawn(move || run_syncer(thread_db, pending))?;
        Ok(LogStore { db, group, syncer })
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
                if key[..8] != self.group.to_be_bytes() {
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
        let last_purged: Option<LogId> = self.read_meta("last_purged")?;
        let last = self.last_entry_log_id()?.or(last_purged);
        Ok(last.map(|log_id| log_id.index))
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.inner.write_opt(batch, &options)?;
        Ok(())
    }
}

fn run_syncer(db: std::sync::Weak<rocksdb::DB>, pending: Receiver<IOFlushed<TypeConfig>>) {
    while let Ok(first) = pending.recv() {
        let mut batch = vec![first];
        while batch.len() < SYNC_QUEUE_CAPACITY {
            match pending.try_recv() {
                Ok(callback) => batch.push(callback),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(StoreError::from),
            None => Err(StoreError::Closed),
        };
        metrics::histogram!("raftq_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("raftq_wal_sync_batch_size").record(batch.len() as f64);
        metrics::counter!("raftq_wal_syncs_total").increment(1);
        for callback in batch {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::other(error.to_string())),
            };
            callback.io_completed(result);
        }
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
            if key[..8] != self.group.to_be_bytes() {
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
        for entry in entries {
            let key = log_key(self.group, entry.log_id().index);
            batch.put_cf(self.db.cf(CF_LOG), key, encode("log entry", &entry)?);
            count += 1;
        }
        self.write(batch, false)?;
        metrics::counter!("raftq_log_entries_appended_total").increment(count);
        match self.syncer.try_send(callback) {
            Ok(()) => {}
            Err(TrySendError::Full(callback)) => {
                let result = self.db.sync_wal().map_err(io::Error::from);
                callback.io_completed(result);
            }
            Err(TrySendError::Disconnected(callback)) => {
                callback.io_completed(Err(io::Error::other("log syncer thread stopped")));
            }
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |log_id| log_id.index + 1);
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
