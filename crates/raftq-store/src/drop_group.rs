//! Removing one Raft group's replica from a store: what a node does once the group has
//! moved elsewhere. Every key of every family starts with the group, so one range per
//! family covers it; the group's snapshot files and synced-index file go too.

use raftq_core::GroupId;
use rocksdb::{WriteBatch, WriteOptions};

use crate::db::{CF_BODIES, CF_LOG, CF_META, CF_STATE, Db, StoreError, sync_directory};

impl Db {
    /// Deletes everything of `group` in this store: its log, vote and other Raft state,
    /// its state machine's keys, its bodies, its snapshot files and its synced index.
    /// No log or state machine of the group may be open. Group 0 (the node's identity)
    /// is refused. The deletion is synced before the files are removed.
    pub fn drop_group(&self, group: GroupId) -> Result<(), StoreError> {
        if group == 0 {
            return Err(StoreError::Refused(
                "group 0 holds the node's identity and cannot be dropped".into(),
            ));
        }
        let from = group.to_be_bytes().to_vec();
        // Every key of the group starts with its 8 bytes; the next group's start, or for
        // the last group a bound above every key of it.
        let to = match group.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xff; 9],
        };
        let mut batch = WriteBatch::default();
        for family in [CF_LOG, CF_META, CF_STATE, CF_BODIES] {
            batch.delete_range_cf(self.cf(family), &from, &to);
        }
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.inner.write_opt(batch, &options)?;
        let snapshot = format!("g{group}-");
        let incoming = format!("incoming-g{group}-");
        for entry in std::fs::read_dir(self.snapshot_dir())?.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&snapshot) || name.starts_with(&incoming) {
                std::fs::remove_file(entry.path())?;
            }
        }
        sync_directory(self.snapshot_dir())?;
        let synced_index = self.dir().join(format!("log-synced-{group}"));
        match std::fs::remove_file(&synced_index) {
            Ok(()) => sync_directory(self.dir())?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }
}
