//! The openraft state machine: applies log entries to the pure [`raftq_core::StateMachine`]
//! and keeps snapshots of it in RocksDB.
//!
//! The queue state lives in memory; it is rebuilt on start from the newest snapshot plus
//! the committed log after it, so a node restarted after `kill -9` recovers from its own
//! disk. Snapshots are written synced before they are reported.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use raftq_core::{GroupId, StateMachine};

use crate::db::{CF_STATE, Db, StoreError, decode, encode, meta_key};
use crate::{Applied, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig};

/// The queue state shared between the Raft state machine (the only writer) and the gRPC
/// services (readers). Locks are held for one command or one read, never across `.await`.
#[derive(Clone)]
pub struct SharedState {
    state: Arc<RwLock<StateMachine>>,
    applied: watch::Sender<u64>,
}

impl Default for SharedState {
    fn default() -> Self {
        SharedState {
            state: Arc::new(RwLock::new(StateMachine::default())),
            applied: watch::channel(0).0,
        }
    }
}

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        // A writer panicking mid-command would be a bug in raftq-core; keep serving reads.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn replace(&self, state: StateMachine) {
        *self
            .state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }

    /// Receives the index of the last applied entry each time entries are applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

pub struct StateMachineStore {
    db: Db,
    group: GroupId,
    shared: SharedState,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
}

impl StateMachineStore {
    /// Opens the state machine of `group`, restoring the newest stored snapshot if any.
    pub fn open(db: Db, group: GroupId) -> Result<StateMachineStore, StoreError> {
        let mut store = StateMachineStore {
            db,
            group,
            shared: SharedState::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
        };
        if let Some(snapshot) = store.load_snapshot()? {
            store.restore(&snapshot.meta, &snapshot.data)?;
        }
        Ok(store)
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    fn restore(&mut self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StoreError> {
        let state: StateMachine = decode("snapshot", data)?;
        self.install(meta, state);
        Ok(())
    }

    fn install(&mut self, meta: &SnapshotMeta, state: StateMachine) {
        self.shared.replace(state);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        self.shared.applied.send_replace(index);
    }

    fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, StoreError> {
        load_snapshot(&self.db, self.group)
    }
}

fn load_snapshot(db: &Db, group: GroupId) -> Result<Option<StoredSnapshot>, StoreError> {
    let bytes = db
        .inner
        .get_cf(db.cf(CF_STATE), meta_key(group, "snapshot"))?;
    bytes.map(|bytes| decode("snapshot", &bytes)).transpose()
}

fn save_snapshot(db: &Db, group: GroupId, snapshot: &StoredSnapshot) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.put_cf(
        db.cf(CF_STATE),
        meta_key(group, "snapshot"),
        encode("snapshot", snapshot)?,
    );
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.inner.write_opt(batch, &options)?;
    Ok(())
}

/// Builds a snapshot from a copy of the state taken on the state-machine task, so
/// serializing and writing it does not hold up applying new entries.
pub struct SnapshotBuilder {
    db: Db,
    group: GroupId,
    state: StateMachine,
    meta: SnapshotMeta,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let state = std::mem::take(&mut self.state);
        let (db, group, meta) = (self.db.clone(), self.group, self.meta.clone());
        // Serializing and writing a large state takes a while: do it off the async
        // workers, so heartbeats and client calls go on meanwhile.
        let stored = tokio::task::spawn_blocking(move || -> Result<StoredSnapshot, StoreError> {
            let data = encode("snapshot", &state)?;
            drop(state);
            let stored = StoredSnapshot { meta, data };
            save_snapshot(&db, group, &stored)?;
            Ok(stored)
        })
        .await
        .map_err(io::Error::other)??;
        metrics::counter!("raftq_snapshots_built_total").increment(1);
        metrics::gauge!("raftq_snapshot_bytes").set(stored.data.len() as f64);
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: std::io::Cursor::new(stored.data),
        })
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
                    let outcome = self
                        .shared
                        .state
                        .write()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .apply(request);
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
        SnapshotBuilder {
            db: self.db.clone(),
            group: self.group,
            state: self.shared.read().clone(),
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        // Decode first: a snapshot that cannot be read must not replace anything. Both
        // decoding and the synced write run off the async workers (see build_snapshot).
        let (db, group) = (self.db.clone(), self.group);
        let (state, stored) = tokio::task::spawn_blocking(
            move || -> Result<(StateMachine, StoredSnapshot), StoreError> {
                let state: StateMachine = decode("snapshot", &stored.data)?;
                save_snapshot(&db, group, &stored)?;
                Ok((state, stored))
            },
        )
        .await
        .map_err(io::Error::other)??;
        self.install(&stored.meta, state);
        metrics::counter!("raftq_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.load_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: std::io::Cursor::new(stored.data),
        }))
    }
}
