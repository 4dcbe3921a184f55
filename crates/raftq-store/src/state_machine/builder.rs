//! Building a snapshot: the state's file, the bodies it refers to, and making it current.

use std::io;
use std::path::PathBuf;

use openraft::RaftSnapshotBuilder;
use rocksdb::{ReadOptions, WriteBatch};
use tokio::sync::OwnedMutexGuard;

use super::bodies::{Bodies, delete_bodies, flush_bodies};
use super::pointer::{SnapshotPointer, remove_other_snapshots, save_pointer};
use crate::db::{CF_BODIES, StoreError, body_key, index_of_log_key};
use crate::snapshot::{SnapshotData, SnapshotWriter};
use crate::{Snapshot, SnapshotMeta, TypeConfig};

/// Builds a snapshot from the state encoded straight into the snapshot file while the
/// state-machine task waits (faster than a copy of the state, and nothing state-sized in
/// memory); the bodies are added on a blocking thread, so applying new entries goes on
/// meanwhile.
pub struct SnapshotBuilder {
    pub(super) bodies: Bodies,
    /// The file with the state written, and the end of its body keys (see
    /// `write_snapshot`).
    pub(super) state: Option<(SnapshotWriter, u64)>,
    pub(super) meta: SnapshotMeta,
    /// Bodies unreferenced at the copied state, sorted: left out of the snapshot and
    /// deleted when it becomes the current one.
    pub(super) unreferenced: Option<Vec<u64>>,
    pub(super) _exclusive: OwnedMutexGuard<()>,
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // Not built (or the build failed): the deletes wait for the next snapshot.
        if let Some(keys) = self.unreferenced.take() {
            self.bodies.unreferenced().extend(keys);
        }
        if let Some((writer, _)) = self.state.take() {
            writer.discard();
        }
    }
}

/// Writes the snapshot file of `state` with the bodies it refers to, then points to it and
/// deletes the `unreferenced` bodies, in one synced write.
fn write_snapshot(
    bodies: &Bodies,
    (mut writer, end): (SnapshotWriter, u64),
    meta: SnapshotMeta,
    unreferenced: &[u64],
) -> Result<(PathBuf, SnapshotMeta), StoreError> {
    let (db, group) = (&bodies.db, bodies.group);
    // Every body the state refers to has a key below `end`, and no body written after the
    // state was encoded has (keys are the ids of messages sent).
    let mut options = ReadOptions::default();
    options.fill_cache(false);
    options.set_iterate_upper_bound(body_key(group, end));
    let mut iter = db.inner.raw_iterator_cf_opt(db.cf(CF_BODIES), options);
    iter.seek(body_key(group, 0));
    let copied = (|| -> Result<(), StoreError> {
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            if let Some(key) = index_of_log_key(key)
                && unreferenced.binary_search(&key).is_err()
            {
                writer.body(key, value)?;
            }
            iter.next();
        }
        Ok(iter.status()?)
    })();
    drop(iter);
    if let Err(error) = copied {
        writer.discard();
        return Err(error);
    }
    let file = writer.finish()?;
    flush_bodies(db)?;
    let mut batch = WriteBatch::default();
    delete_bodies(&mut batch, db, group, unreferenced);
    save_pointer(
        db,
        batch,
        group,
        &SnapshotPointer {
            meta: meta.clone(),
            file: file.clone(),
            bodies_loaded: true,
        },
    )?;
    remove_other_snapshots(db.snapshot_dir(), group, Some(&file), false);
    Ok((db.snapshot_dir().join(file), meta))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = self.state.take().ok_or_else(|| {
            io::Error::other("the state could not be written, or this snapshot was built already")
        })?;
        let (bodies, meta) = (self.bodies.clone(), self.meta.clone());
        let unreferenced = self.unreferenced.take().unwrap_or_default();
        // Writing a large state and its bodies takes a while: do it off the async
        // workers, so heartbeats and client calls go on meanwhile.
        let written = tokio::task::spawn_blocking(move || {
            let written = write_snapshot(&bodies, state, meta, &unreferenced);
            (written, unreferenced)
        })
        .await
        .map_err(io::Error::other)?;
        let (path, meta) = match written {
            (Ok(written), _) => written,
            (Err(error), unreferenced) => {
                self.unreferenced = Some(unreferenced);
                return Err(error.into());
            }
        };
        let data = SnapshotData::open(path)?;
        metrics::counter!("raftq_snapshots_built_total").increment(1);
        metrics::gauge!("raftq_snapshot_bytes").set(data.len()? as f64);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}
