//! Snapshots by log bytes as well as entries: openraft takes one every
//! `[raft] snapshot_every_entries`, but entries of 4 MiB each would let the log grow by tens
//! of gigabytes before that. A node also takes one once the entries appended since its
//! last snapshot reach `[raft] snapshot_every_bytes`, so the log on disk stays within
//! about that (plus the entries kept behind a snapshot).

use raftq_store::LogStore;

use crate::lock;

pub(crate) struct LogGrowth {
    log: LogStore,
    every_bytes: u64,
    /// The snapshot index last seen, and the bytes appended when it was seen (or when a
    /// snapshot was last asked for).
    mark: std::sync::Mutex<(Option<u64>, u64)>,
}

impl LogGrowth {
    /// `every_bytes` 0: by entries only.
    pub(crate) fn new(log: LogStore, every_bytes: u64) -> LogGrowth {
        LogGrowth {
            log,
            every_bytes,
            mark: std::sync::Mutex::new((None, 0)),
        }
    }

    /// Whether a snapshot should be asked for now, given the index of the newest
    /// snapshot; when it says so, it counts from here until that snapshot is taken.
    pub(crate) fn snapshot_due(&self, snapshot_index: Option<u64>) -> bool {
        let appended = self.log.appended_bytes();
        let mut mark = lock(&self.mark);
        if mark.0 != snapshot_index {
            *mark = (snapshot_index, appended);
        }
        let grown = appended - mark.1;
        metrics::gauge!("raftq_log_bytes_since_snapshot").set(grown as f64);
        if self.every_bytes == 0 || grown < self.every_bytes {
            return false;
        }
        mark.1 = appended;
        true
    }
}
