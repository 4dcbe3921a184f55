//! The physical ceiling of raftq's design on a machine, for `raftq-bench`: a RocksDB
//! opened with the node's own options, written in batches with a synced write-ahead log,
//! with no Raft, no network and no queue logic. Three of these side by side stand in for
//! a three-node cluster's disks.

use std::path::Path;

use rocksdb::{WriteBatch, WriteOptions};

use crate::db::{CF_STATE, Db, OpenOptions, StoreError};

pub struct RawStore {
    db: Db,
}

impl RawStore {
    pub fn open(path: &Path) -> Result<RawStore, StoreError> {
        Ok(RawStore {
            db: Db::open(path, &OpenOptions::default())?,
        })
    }

    /// Writes every `(key, value)` in one batch and returns once it is fsynced.
    pub fn put_synced<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for (key, value) in entries {
            batch.put_cf(self.db.cf(CF_STATE), key, value);
        }
        self.write_synced(batch)
    }

    /// Deletes every key in one batch and returns once it is fsynced.
    pub fn delete_synced<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for key in keys {
            batch.delete_cf(self.db.cf(CF_STATE), key);
        }
        self.write_synced(batch)
    }

    /// Reads the values of `keys` (missing ones are `None`).
    pub fn get_many<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.db.cf(CF_STATE);
        self.db
            .inner
            .multi_get_cf(keys.into_iter().map(|key| (cf, key)))
            .into_iter()
            .map(|value| value.map_err(StoreError::from))
            .collect()
    }

    fn write_synced(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.db.inner.write_opt(batch, &options)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RawStore;

    #[test]
    fn written_values_are_read_back_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RawStore::open(dir.path()).expect("open");
        store
            .put_synced([(&b"a"[..], &b"1"[..]), (&b"b"[..], &b"2"[..])])
            .expect("put");
        let values = store
            .get_many([&b"a"[..], &b"b"[..], &b"c"[..]])
            .expect("get");
        assert_eq!(values, vec![Some(b"1".to_vec()), Some(b"2".to_vec()), None]);
        store.delete_synced([&b"a"[..]]).expect("delete");
        assert_eq!(store.get_many([&b"a"[..]]).expect("get"), vec![None]);
    }
}
