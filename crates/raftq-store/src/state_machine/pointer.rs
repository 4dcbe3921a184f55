//! The pointer to the current snapshot, and the snapshot files it keeps or lets go of.

use std::path::Path;

use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

use raftq_core::GroupId;

use crate::SnapshotMeta;
use crate::db::{CF_STATE, Db, StoreError, decode, encode, meta_key};
use crate::snapshot::SnapshotData;

/// Where the newest snapshot is: its file in the snapshot directory, and whether its
/// bodies are in the `bodies` column family yet.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotPointer {
    pub(super) meta: SnapshotMeta,
    pub(super) file: String,
    pub(super) bodies_loaded: bool,
}

const POINTER_KEY: &str = "snapshot-file";
/// Where raftq kept whole snapshots, bodies included, before bodies moved to RocksDB.
pub(super) const OLD_SNAPSHOT_KEY: &str = "snapshot";

pub(super) fn load_pointer(db: &Db, group: GroupId) -> Result<Option<SnapshotPointer>, StoreError> {
    let bytes = db
        .inner
        .get_cf(db.cf(CF_STATE), meta_key(group, POINTER_KEY))?;
    bytes
        .map(|bytes| decode("snapshot pointer", &bytes))
        .transpose()
}

/// Makes `pointer` the current snapshot, with whatever else `batch` holds, synced.
pub(super) fn save_pointer(
    db: &Db,
    mut batch: WriteBatch,
    group: GroupId,
    pointer: &SnapshotPointer,
) -> Result<(), StoreError> {
    batch.put_cf(
        db.cf(CF_STATE),
        meta_key(group, POINTER_KEY),
        encode("snapshot pointer", pointer)?,
    );
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.inner.write_opt(batch, &options)?;
    Ok(())
}

/// Removes this group's snapshot files other than `keep`: older snapshots, and files left
/// half-written by a crash. Files still being received are left alone unless `at_start`.
pub(super) fn remove_other_snapshots(
    dir: &Path,
    group: GroupId,
    keep: Option<&str>,
    at_start: bool,
) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let snapshot = format!("g{group}-");
    let incoming = format!("incoming-g{group}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with(&snapshot) || (at_start && name.starts_with(&incoming));
        if Some(name) == keep || !ours {
            continue;
        }
        if let Err(error) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = name, %error, "cannot remove an old snapshot file");
        }
    }
}

/// Gives a received snapshot file its own name in this node's snapshot directory (copying
/// it there when it is elsewhere) and returns that name.
pub(super) fn adopt_snapshot_file(
    db: &Db,
    group: GroupId,
    meta: &SnapshotMeta,
    snapshot: SnapshotData,
) -> Result<String, StoreError> {
    let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
    let name = crate::snapshot::unique_name("", group, index, "snap");
    let target = db.snapshot_dir().join(&name);
    let source = snapshot.path().to_path_buf();
    let received_here = source.parent() == Some(db.snapshot_dir())
        && source
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("incoming-"));
    if received_here {
        std::fs::rename(&source, &target)?;
    } else {
        std::fs::copy(&source, &target)?;
        std::fs::File::open(&target)?.sync_all()?;
    }
    std::fs::File::open(db.snapshot_dir())?.sync_all()?;
    Ok(name)
}
