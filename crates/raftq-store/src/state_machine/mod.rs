//! The openraft state machine: applies log entries to the pure [`raftq_core::StateMachine`],
//! keeps message bodies in RocksDB, and keeps snapshots in files.
//!
//! The queue state without bodies lives in memory; bodies live in the `bodies` column
//! family, written as entries are applied and read when messages are delivered or peeked,
//! so a large backlog does not have to fit in memory. On start the state is rebuilt from
//! the newest snapshot plus the committed log after it, so a node restarted after
//! `kill -9` recovers from its own disk.
//!
//! The rule that keeps bodies and state together: the `bodies` column family holds every
//! body that the state at the newest durable snapshot, or any later state, refers to.
//! - A body is written while the entry that brought it is applied, under the state's write
//!   lock, so a reader never sees a message without its body. It is written without the
//!   write-ahead log (the Raft log already holds it once, durably): a crash loses the
//!   bodies still in the write buffer, and applying the log again on start writes them
//!   again. Only those of entries behind the newest snapshot cannot come back that way
//!   (the log before it is purged), so the family is flushed to its files before a
//!   snapshot becomes the current one.
//! - A body's key is the id of the message that brought it, and ids grow in the order
//!   entries are applied, so bodies are written in key order; the family's writes reach
//!   its files in order (whole write buffers, oldest first). So after a crash every body
//!   up to the highest key on disk is on disk too, unless a snapshot deleted it: applying
//!   the log again on start skips writing those (a restart with a large backlog would
//!   otherwise write all of it again and compact the copies away). The entries applied
//!   again all come after the current snapshot, whose deletes are of keys below theirs.
//! - A body no longer referred to is deleted only with the next snapshot, in the same
//!   synced write that makes that snapshot the current one. Until then it waits in a list
//!   in memory (bounded by the snapshot interval). A crash loses the list, not the rule:
//!   the log after the snapshot is applied again on start, and lists the deletes again.
//! - So a restart from snapshot S finds the bodies of every state from S on, and a snapshot
//!   built at any index finds the bodies its state refers to. It skips those waiting to be
//!   deleted, so it carries no garbage to the node that installs it.
//! - Installing a snapshot first records it as "bodies not loaded", then replaces every
//!   body, then records it as loaded; a restart in between loads the bodies again.

mod bodies;
mod builder;
mod pointer;
mod shared;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use rocksdb::WriteBatch;
use tokio::sync::watch;

use raftq_core::{GroupId, StateMachine};

use crate::db::{CF_STATE, Db, StoreError, meta_key};
use crate::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter};
use crate::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

use bodies::{Bodies, load_bodies};
use builder::SnapshotBuilder;
use pointer::{
    OLD_SNAPSHOT_KEY, SnapshotPointer, adopt_snapshot_file, load_pointer, remove_other_snapshots,
    save_pointer,
};
pub use shared::{ReadError, SharedState};

pub struct StateMachineStore {
    db: Db,
    group: GroupId,
    shared: SharedState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    /// Bodies with keys up to this one were on disk when the store opened: entries
    /// applied again do not write them again.
    bodies_on_disk_through: u64,
    /// Held by a snapshot build from the moment its state is copied until it is durable,
    /// and by an install: the two never touch the bodies at once.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachineStore {
    /// Opens the state machine of `group`, restoring the newest snapshot if any.
    pub fn open(db: Db, group: GroupId) -> Result<StateMachineStore, StoreError> {
        if db
            .inner
            .get_cf(db.cf(CF_STATE), meta_key(group, OLD_SNAPSHOT_KEY))?
            .is_some()
        {
            return Err(StoreError::OldLayout {
                path: db.snapshot_dir().to_path_buf(),
            });
        }
        let bodies = Bodies {
            db: db.clone(),
            group,
            unreferenced: Arc::new(Mutex::new(Vec::new())),
        };
        let mut store = StateMachineStore {
            db: db.clone(),
            group,
            shared: SharedState {
                state: Arc::new(RwLock::new(StateMachine::default())),
                applied: watch::channel(0).0,
                bodies,
            },
            last_applied: None,
            last_membership: StoredMembership::default(),
            bodies_on_disk_through: 0,
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        let pointer = load_pointer(&db, group)?;
        remove_other_snapshots(
            db.snapshot_dir(),
            group,
            pointer.as_ref().map(|p| p.file.as_str()),
            true,
        );
        match pointer {
            Some(mut pointer) => {
                let path = db.snapshot_dir().join(&pointer.file);
                let mut reader = SnapshotReader::open(&path)?;
                let state = reader.state()?;
                if !pointer.bodies_loaded {
                    // A crash interrupted installing this snapshot: load its bodies again.
                    load_bodies(&db, group, &mut reader)?;
                    pointer.bodies_loaded = true;
                    save_pointer(&db, WriteBatch::default(), group, &pointer)?;
                }
                store.install(&pointer.meta, state)?;
            }
            None => {
                let mut state = store.shared.write();
                state.keep_bodies_outside();
                let effects = state.take_body_effects();
                store.shared.bodies.write(effects, 0)?;
            }
        }
        store.bodies_on_disk_through = store.shared.bodies.highest_key()?;
        Ok(store)
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    fn install(&mut self, meta: &SnapshotMeta, mut state: StateMachine) -> Result<(), StoreError> {
        // Snapshots always hold states that keep bodies outside; this only guards the rule.
        state.keep_bodies_outside();
        let effects = state.take_body_effects();
        self.shared.bodies.write(effects, 0)?;
        *self.shared.write() = state;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        self.shared.applied.send_replace(index);
        Ok(())
    }

    fn current_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(pointer) = load_pointer(&self.db, self.group)? else {
            return Ok(None);
        };
        let data = SnapshotData::open(self.db.snapshot_dir().join(&pointer.file))?;
        Ok(Some(Snapshot {
            meta: pointer.meta,
            snapshot: data,
        }))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            self.last_applied = Some(entry.log_id);
            let applied = match entry.payload {
                EntryPayload::Blank => Applied::Internal,
                EntryPayload::Normal(request) => {
                    let kind = request.command.kind();
                    let outcome = {
                        let mut state = self.shared.write();
                        let outcome = state.apply(request);
                        let effects = state.take_body_effects();
                        self.shared
                            .bodies
                            .write(effects, self.bodies_on_disk_through)?;
                        outcome
                    };
                    // Delivered bodies are read by the node that proposed the entry, after
                    // apply and off this task (`SharedState::fill_bodies`).
                    let result = if outcome.is_ok() { "ok" } else { "refused" };
                    metrics::counter!("raftq_commands_applied_total", "command" => kind, "result" => result)
                        .increment(1);
                    Applied::Queue(Box::new(outcome))
                }
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied::Internal
                }
            };
            self.shared.applied.send_replace(entry.log_id.index);
            if let Some(responder) = responder {
                responder.send(applied);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let exclusive = self.snapshot_lock.clone().lock_owned().await;
        let mut unreferenced = std::mem::take(&mut *self.shared.bodies.unreferenced());
        unreferenced.sort_unstable();
        let index = self.last_applied.map_or(0, |log_id| log_id.index);
        let (shared, dir, group) = (
            self.shared.clone(),
            self.db.snapshot_dir().to_path_buf(),
            self.group,
        );
        // Writing the state takes a while for a large backlog: off the async workers. The
        // state stays the one at `last_applied`, as only this task applies, and it waits
        // here; reads (peek) go on meanwhile.
        let written = tokio::task::spawn_blocking(move || {
            let state = shared.read();
            SnapshotWriter::create(&dir, group, index, &state)
                .map(|writer| (writer, state.body_keys_end()))
        })
        .await;
        // A state that cannot be written is reported; the build then fails.
        let state = match written {
            Ok(Ok(written)) => Some(written),
            Ok(Err(error)) => {
                tracing::error!(%error, "writing the state for a snapshot");
                None
            }
            Err(error) => {
                tracing::error!(%error, "writing the state for a snapshot");
                None
            }
        };
        SnapshotBuilder {
            bodies: self.shared.bodies.clone(),
            state,
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
            },
            unreferenced: Some(unreferenced),
            _exclusive: exclusive,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let _exclusive = self.snapshot_lock.clone().lock_owned().await;
        let (db, group, meta_copy) = (self.db.clone(), self.group, meta.clone());
        // Reading and loading a large snapshot runs off the async workers (see
        // build_snapshot).
        let state = tokio::task::spawn_blocking(move || -> Result<StateMachine, StoreError> {
            let file = adopt_snapshot_file(&db, group, &meta_copy, snapshot)?;
            // Decode first: a snapshot that cannot be read must not replace anything.
            let mut reader = SnapshotReader::open(&db.snapshot_dir().join(&file))?;
            let state = reader.state()?;
            let mut pointer = SnapshotPointer {
                meta: meta_copy,
                file,
                bodies_loaded: false,
            };
            save_pointer(&db, WriteBatch::default(), group, &pointer)?;
            load_bodies(&db, group, &mut reader)?;
            pointer.bodies_loaded = true;
            save_pointer(&db, WriteBatch::default(), group, &pointer)?;
            remove_other_snapshots(db.snapshot_dir(), group, Some(&pointer.file), false);
            Ok(state)
        })
        .await
        .map_err(io::Error::other)??;
        // Every body was replaced by the snapshot's: nothing older waits to be deleted, and
        // entries after it write their bodies.
        self.shared.bodies.unreferenced().clear();
        self.bodies_on_disk_through = 0;
        self.install(meta, state)?;
        metrics::counter!("raftq_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current_snapshot()?)
    }
}
