//! The `bodies` column family of one group: body writes, reads, loads and deletes.

use std::sync::{Arc, Mutex};

use rocksdb::{ReadOptions, WriteBatch, WriteOptions};

use raftq_core::{BodyEffect, BodyRef, Delivery, GroupId, Outcome, QueueError};

use crate::db::{CF_BODIES, Db, StoreError, body_key, index_of_log_key};
use crate::snapshot::SnapshotReader;

/// Bodies loaded from a snapshot per RocksDB write.
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Message bodies of one group in RocksDB.
#[derive(Clone)]
pub(super) struct Bodies {
    pub(super) db: Db,
    pub(super) group: GroupId,
    /// Keys of bodies no longer referred to, deleted with the next snapshot.
    pub(super) unreferenced: Arc<Mutex<Vec<u64>>>,
}

impl Bodies {
    /// Carries out one command's body writes; its deletes wait for the next snapshot.
    /// Not synced: see the parent module's notes. Bodies with keys up to `on_disk_through`
    /// are on disk already (an entry applied again on start) and are left out.
    pub(super) fn write(
        &self,
        effects: Vec<BodyEffect>,
        on_disk_through: u64,
    ) -> Result<(), StoreError> {
        if effects.is_empty() {
            return Ok(());
        }
        let cf = self.db.cf(CF_BODIES);
        let mut batch = WriteBatch::default();
        let mut unreferenced = self.unreferenced();
        for effect in effects {
            match effect {
                BodyEffect::Put { key, .. } if key <= on_disk_through => {}
                BodyEffect::Put { key, bytes } => {
                    batch.put_cf(cf, body_key(self.group, key), bytes);
                }
                BodyEffect::Delete { key } => unreferenced.push(key),
            }
        }
        drop(unreferenced);
        if !batch.is_empty() {
            self.db.inner.write_opt(batch, &without_wal())?;
        }
        Ok(())
    }

    /// The highest key of a body in the family (0: none). After a crash, every body
    /// written before it is there too (see the parent module's notes).
    pub(super) fn highest_key(&self) -> Result<u64, StoreError> {
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        options.set_iterate_lower_bound(body_key(self.group, 0));
        options.set_iterate_upper_bound(body_key(self.group, u64::MAX));
        let mut iter = self
            .db
            .inner
            .raw_iterator_cf_opt(self.db.cf(CF_BODIES), options);
        iter.seek_to_last();
        iter.status()?;
        Ok(iter.key().and_then(index_of_log_key).unwrap_or(0))
    }

    pub(super) fn unreferenced(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.unreferenced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bytes of each body, in order.
    ///
    /// Bodies are read to be handed out, mostly once each: the reads bypass the block
    /// cache, which a draining backlog would otherwise fill with blocks read only once.
    pub(super) fn read(&self, bodies: &[BodyRef]) -> Result<Vec<Vec<u8>>, StoreError> {
        self.read_present(bodies)?
            .into_iter()
            .zip(bodies)
            .map(|(bytes, body)| bytes.ok_or(StoreError::MissingBody { key: body.key }))
            .collect()
    }

    /// The bytes of each body, in order; `None` for a body no longer stored (its message
    /// left the queue, and a snapshot since let its body go).
    pub(super) fn read_present(
        &self,
        bodies: &[BodyRef],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.db.cf(CF_BODIES);
        let stored: Vec<&BodyRef> = bodies.iter().filter(|body| body.len > 0).collect();
        let mut options = ReadOptions::default();
        options.fill_cache(false);
        // The batched lookup reads each table block once for all the keys it holds (with
        // the cache bypassed, single lookups would read and decompress it once per key).
        let keys: Vec<[u8; 16]> = stored
            .iter()
            .map(|body| body_key(self.group, body.key))
            .collect();
        let mut found = self
            .db
            .inner
            .batched_multi_get_cf_opt(cf, &keys, false, &options)
            .into_iter()
            .map(|found| found.map(|value| value.map(|bytes| bytes.to_vec())));
        bodies
            .iter()
            .map(|body| {
                if body.len == 0 {
                    return Ok(Some(Vec::new()));
                }
                found
                    .next()
                    .and_then(Result::transpose)
                    .transpose()
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// Fills in the bodies of the deliveries an outcome holds.
    pub(super) fn fill(&self, outcome: &mut Result<Outcome, QueueError>) -> Result<(), StoreError> {
        match outcome {
            Ok(Outcome::Received(deliveries)) => self.fill_deliveries(deliveries),
            Ok(Outcome::Batch(outcomes)) => {
                for outcome in outcomes {
                    self.fill(outcome)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn fill_deliveries(&self, deliveries: &mut [Delivery]) -> Result<(), StoreError> {
        let refs: Vec<BodyRef> = deliveries.iter().map(|d| d.body_ref).collect();
        for (delivery, bytes) in deliveries.iter_mut().zip(self.read(&refs)?) {
            delivery.body = bytes;
        }
        Ok(())
    }
}

/// Body writes skip the write-ahead log; see the parent module's notes.
fn without_wal() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.disable_wal(true);
    options
}

/// Writes what the `bodies` family holds in memory to its files, so that the bodies of a
/// snapshot about to become current survive a crash (they are not in the write-ahead log).
pub(super) fn flush_bodies(db: &Db) -> Result<(), StoreError> {
    db.inner.flush_cf(db.cf(CF_BODIES))?;
    Ok(())
}

/// Replaces every body of `group` by those of the snapshot `reader` is positioned at.
pub(super) fn load_bodies(
    db: &Db,
    group: GroupId,
    reader: &mut SnapshotReader,
) -> Result<(), StoreError> {
    let cf = db.cf(CF_BODIES);
    let mut batch = WriteBatch::default();
    batch.delete_range_cf(cf, body_key(group, 0), body_key(group, u64::MAX));
    let mut bytes = 0;
    while let Some((key, body)) = reader.next_body()? {
        bytes += body.len();
        batch.put_cf(cf, body_key(group, key), body);
        if bytes >= LOAD_BATCH_BYTES {
            db.inner
                .write_opt(std::mem::take(&mut batch), &without_wal())?;
            bytes = 0;
        }
    }
    db.inner.write_opt(batch, &without_wal())?;
    flush_bodies(db)
}

/// Shortest run of consecutive body keys deleted as one range: reads consult every range
/// tombstone they overlap, so short runs (acks out of order) stay point deletes.
const MIN_RANGE_RUN: usize = 16;

/// Deletes the bodies `keys` (sorted) of `group` in `batch`. Keys are message ids and a
/// drain lets go of them in order, so they come mostly as runs of consecutive keys: each
/// long run is one range tombstone instead of a tombstone per body (a million, some 20
/// MB in the synced write that makes the snapshot current, after a drain of a million
/// messages; every later read and compaction of the bodies would step over them). A range
/// covers exactly the keys of its run.
pub(super) fn delete_bodies(batch: &mut WriteBatch, db: &Db, group: GroupId, keys: &[u64]) {
    let cf = db.cf(CF_BODIES);
    let mut rest = keys;
    while let Some(&first) = rest.first() {
        let run = rest
            .iter()
            .zip(first..=u64::MAX)
            .take_while(|(key, expected)| **key == *expected)
            .count();
        let end = first.checked_add(run as u64);
        match end {
            Some(end) if run >= MIN_RANGE_RUN => {
                batch.delete_range_cf(cf, body_key(group, first), body_key(group, end))
            }
            _ => {
                for key in &rest[..run] {
                    batch.delete_cf(cf, body_key(group, *key));
                }
            }
        }
        rest = &rest[run..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::OpenOptions;

    #[test]
    fn deleting_runs_of_bodies_removes_exactly_those_bodies() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let stored: Vec<u64> = (1..=40)
            .chain([50, 51, 52, 60, u64::MAX - 1, u64::MAX])
            .collect();
        for key in &stored {
            for group in [1, 2] {
                db.inner
                    .put_cf(db.cf(CF_BODIES), body_key(group, *key), b"x")
                    .unwrap();
            }
        }
        // A long run (a range), a short one, single keys (one between live neighbours) and
        // a run ending at the largest key there can be.
        let gone: Vec<u64> = (1..=30)
            .chain([35, 36, 37, 50, 52, 59, 60])
            .chain([u64::MAX - 1, u64::MAX])
            .collect();
        let mut batch = WriteBatch::default();
        delete_bodies(&mut batch, &db, 1, &gone);
        db.inner.write(batch).unwrap();
        let present = |group, key| {
            db.inner
                .get_cf(db.cf(CF_BODIES), body_key(group, key))
                .unwrap()
                .is_some()
        };
        for key in &stored {
            assert_eq!(present(1, *key), !gone.contains(key), "body {key}");
            assert!(present(2, *key), "body {key} of another group");
        }
    }
}
