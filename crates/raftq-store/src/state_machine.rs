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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use rocksdb::{ReadOptions, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedMutexGuard, watch};

use raftq_core::{
    BodyEffect, BodyRef, Delivery, GroupId, MessageId, Outcome, QueueError, StateMachine,
    StoredMessage,
};

use crate::db::{
    CF_BODIES, CF_STATE, Db, StoreError, body_key, decode, encode, index_of_log_key, meta_key,
};
use crate::snapshot::{SnapshotData, SnapshotReader, SnapshotWriter};
use crate::{Applied, LogId, Snapshot, SnapshotMeta, StoredMembership, TypeConfig};

/// Bodies loaded from a snapshot per RocksDB write.
const LOAD_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Why a read of stored messages failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Message bodies of one group in RocksDB.
#[derive(Clone)]
struct Bodies {
    db: Db,
    group: GroupId,
    /// Keys of bodies no longer referred to, deleted with the next snapshot.
    unreferenced: Arc<Mutex<Vec<u64>>>,
}

impl Bodies {
    /// Carries out one command's body writes; its deletes wait for the next snapshot.
    /// Not synced: see the module's notes. Bodies with keys up to `on_disk_through` are
    /// on disk already (an entry applied again on start) and are left out.
    fn write(&self, effects: Vec<BodyEffect>, on_disk_through: u64) -> Result<(), StoreError> {
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
    /// written before it is there too (see the module's notes).
    fn highest_key(&self) -> Result<u64, StoreError> {
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

    fn unreferenced(&self) -> std::sync::MutexGuard<'_, Vec<u64>> {
        self.unreferenced
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bytes of each body, in order.
    ///
    /// Bodies are read to be handed out, mostly once each: the reads bypass the block
    /// cache, which a draining backlog would otherwise fill with blocks read only once.
    fn read(&self, bodies: &[BodyRef]) -> Result<Vec<Vec<u8>>, StoreError> {
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
                    return Ok(Vec::new());
                }
                found
                    .next()
                    .and_then(Result::transpose)
                    .ok_or(StoreError::MissingBody { key: body.key })?
                    .map_err(StoreError::from)
            })
            .collect()
    }

    /// Fills in the bodies of the deliveries an outcome holds.
    fn fill(&self, outcome: &mut Result<Outcome, QueueError>) -> Result<(), StoreError> {
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

/// The queue state shared between the Raft state machine (the only writer) and the gRPC
/// services (readers). Locks are held for one command or one read, never across `.await`.
#[derive(Clone)]
pub struct SharedState {
    state: Arc<RwLock<StateMachine>>,
    applied: watch::Sender<u64>,
    bodies: Bodies,
}

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        // A writer panicking mid-command would be a bug in raftq-core; keep serving reads.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateMachine> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `outcome` delivers messages whose bodies are in the `bodies` family, so that
    /// [`SharedState::fill_bodies`] has something to read.
    pub fn needs_bodies(outcome: &Result<Outcome, QueueError>) -> bool {
        match outcome {
            Ok(Outcome::Received(deliveries)) => deliveries.iter().any(|d| d.body_ref.len > 0),
            Ok(Outcome::Batch(outcomes)) => outcomes.iter().any(Self::needs_bodies),
            _ => false,
        }
    }

    /// Fills in the bodies of the messages `outcome` delivers. The node that proposed the
    /// entry calls this once it is applied, on a blocking thread: reading bodies that are no
    /// longer in memory takes disk reads, and doing that inside apply would hold up every
    /// later entry (a draining backlog spent most of the apply task's time there).
    ///
    /// Between apply and this read, a delivered body is deleted only by a snapshot taken
    /// after its message left the queue: its queue was purged or deleted, or the message
    /// was acknowledged (by this delivery's receipt, or after its lease ran out and it was
    /// delivered again). Should that come first, the read fails with
    /// [`StoreError::MissingBody`]; the caller answers that receive alone with the error.
    pub fn fill_bodies(&self, outcome: &mut Result<Outcome, QueueError>) -> Result<(), StoreError> {
        self.bodies.fill(outcome)
    }

    /// Receives the index of the last applied entry each time entries are applied.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Stored messages of `queue` in send order after `after_sequence` (only those a
    /// selector names, when it names any), each with its body.
    pub fn peek(
        &self,
        queue: &str,
        after_sequence: u64,
        max: usize,
        message_id: MessageId,
        correlation_id: &str,
    ) -> Result<Vec<(StoredMessage, Vec<u8>)>, ReadError> {
        // The bodies are read under the same lock as the messages: a body is written and
        // deleted only under the write lock, with the command that changes its message.
        let state = self.read();
        let messages =
            state.peek_selected(queue, after_sequence, max, message_id, correlation_id)?;
        let refs: Vec<BodyRef> = messages.iter().map(|m| m.body).collect();
        let bodies = self.bodies.read(&refs)?;
        Ok(messages.into_iter().zip(bodies).collect())
    }
}

/// Where the newest snapshot is: its file in the snapshot directory, and whether its
/// bodies are in the `bodies` column family yet.
#[derive(Serialize, Deserialize)]
struct SnapshotPointer {
    meta: SnapshotMeta,
    file: String,
    bodies_loaded: bool,
}

const POINTER_KEY: &str = "snapshot-file";
/// Where raftq kept whole snapshots, bodies included, before bodies moved to RocksDB.
const OLD_SNAPSHOT_KEY: &str = "snapshot";

fn load_pointer(db: &Db, group: GroupId) -> Result<Option<SnapshotPointer>, StoreError> {
    let bytes = db
        .inner
        .get_cf(db.cf(CF_STATE), meta_key(group, POINTER_KEY))?;
    bytes
        .map(|bytes| decode("snapshot pointer", &bytes))
        .transpose()
}

/// Makes `pointer` the current snapshot, with whatever else `batch` holds, synced.
fn save_pointer(
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

/// Body writes skip the write-ahead log; see the module's notes.
fn without_wal() -> WriteOptions {
    let mut options = WriteOptions::default();
    options.disable_wal(true);
    options
}

/// Writes what the `bodies` family holds in memory to its files, so that the bodies of a
/// snapshot about to become current survive a crash (they are not in the write-ahead log).
fn flush_bodies(db: &Db) -> Result<(), StoreError> {
    db.inner.flush_cf(db.cf(CF_BODIES))?;
    Ok(())
}

/// Replaces every body of `group` by those of the snapshot `reader` is positioned at.
fn load_bodies(db: &Db, group: GroupId, reader: &mut SnapshotReader) -> Result<(), StoreError> {
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

/// Removes this group's snapshot files other than `keep`: older snapshots, and files left
/// half-written by a crash. Files still being received are left alone unless `at_start`.
fn remove_other_snapshots(dir: &Path, group: GroupId, keep: Option<&str>, at_start: bool) {
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

/// Builds a snapshot from the state encoded straight into the snapshot file while the
/// state-machine task waits (faster than a copy of the state, and nothing state-sized in
/// memory); the bodies are added on a blocking thread, so applying new entries goes on
/// meanwhile.
pub struct SnapshotBuilder {
    bodies: Bodies,
    /// The file with the state written, and the end of its body keys (see
    /// `write_snapshot`).
    state: Option<(SnapshotWriter, u64)>,
    meta: SnapshotMeta,
    /// Bodies unreferenced at the copied state, sorted: left out of the snapshot and
    /// deleted when it becomes the current one.
    unreferenced: Option<Vec<u64>>,
    _exclusive: OwnedMutexGuard<()>,
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

/// Shortest run of consecutive body keys deleted as one range: reads consult every range
/// tombstone they overlap, so short runs (acks out of order) stay point deletes.
const MIN_RANGE_RUN: usize = 16;

/// Deletes the bodies `keys` (sorted) of `group` in `batch`. Keys are message ids and a
/// drain lets go of them in order, so they come mostly as runs of consecutive keys: each
/// long run is one range tombstone instead of a tombstone per body (a million, some 20
/// MB in the synced write that makes the snapshot current, after a drain of a million
/// messages; every later read and compaction of the bodies would step over them). A range
/// covers exactly the keys of its run.
fn delete_bodies(batch: &mut WriteBatch, db: &Db, group: GroupId, keys: &[u64]) {
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

/// Gives a received snapshot file its own name in this node's snapshot directory (copying
/// it there when it is elsewhere) and returns that name.
fn adopt_snapshot_file(
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

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use raftq_core::{Command, NewMessage, QueueOptions, Request};

    use super::*;
    use crate::{Entry, OpenOptions};

    fn entry(index: u64, command: Command) -> Entry {
        let leader = openraft::impls::leader_id_adv::LeaderId {
            term: 1,
            node_id: 1,
        };
        let request = Request {
            now_ms: 1_000 + index,
            command,
        };
        Entry::new_normal(openraft::LogId::new(leader, index), request)
    }

    /// Creates queue `q` at index 1, then sends each batch of bodies at the next index.
    fn create_and_send(batches: &[&[&str]]) -> Vec<Entry> {
        let create = Command::CreateQueue {
            name: "q".into(),
            options: QueueOptions::default(),
        };
        let sends = batches.iter().map(|bodies| Command::Send {
            queue: "q".into(),
            messages: bodies
                .iter()
                .map(|text| NewMessage {
                    body: text.as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        std::iter::once(create)
            .chain(sends)
            .enumerate()
            .map(|(i, command)| entry(i as u64 + 1, command))
            .collect()
    }

    async fn apply_all(sm: &mut StateMachineStore, entries: Vec<Entry>) {
        let entries: Vec<_> = entries.into_iter().map(|e| Ok((e, None))).collect();
        sm.apply(futures::stream::iter(entries)).await.unwrap();
    }

    fn peeked(sm: &StateMachineStore) -> Vec<(u64, String)> {
        sm.shared()
            .peek("q", 0, 10, 0, "")
            .unwrap()
            .into_iter()
            .map(|(message, body)| (message.body.key, String::from_utf8(body).unwrap()))
            .collect()
    }

    fn bodies_in_memtable(db: &Db) -> u64 {
        db.inner
            .property_int_value_cf(db.cf(CF_BODIES), "rocksdb.num-entries-active-mem-table")
            .unwrap()
            .unwrap()
    }

    fn texts(peeked: &[(u64, String)]) -> Vec<&str> {
        peeked.iter().map(|(_, text)| text.as_str()).collect()
    }

    #[tokio::test]
    async fn applying_the_log_again_on_start_rewrites_no_body_already_on_disk() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = create_and_send(&[&["a", "b"], &["c"], &["d"]]);
        {
            let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
            let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
            apply_all(&mut sm, log.clone()).await;
            flush_bodies(&db).unwrap();
        }
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
        // Message ids, and so body keys, are 1 to 4.
        assert_eq!(sm.bodies_on_disk_through, 4);
        // No snapshot: the whole log is applied again, and its bodies are already there.
        apply_all(&mut sm, log).await;
        assert_eq!(bodies_in_memtable(&db), 0);
        assert_eq!(texts(&peeked(&sm)), ["a", "b", "c", "d"]);
        // A new entry writes its bodies.
        apply_all(
            &mut sm,
            create_and_send(&[&[], &[], &[], &["e"]]).split_off(4),
        )
        .await;
        assert_eq!(bodies_in_memtable(&db), 1);
        assert_eq!(sm.shared.bodies.highest_key().unwrap(), 5);
        assert_eq!(texts(&peeked(&sm)), ["a", "b", "c", "d", "e"]);
    }

    #[tokio::test]
    async fn bodies_lost_with_the_write_buffer_are_written_again_on_start() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = create_and_send(&[&["a", "b"], &["c"]]);
        {
            let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
            let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
            apply_all(&mut sm, log[..2].to_vec()).await;
            flush_bodies(&db).unwrap();
            apply_all(&mut sm, log[2..].to_vec()).await;
            // As a crash leaves it: the last entry's write never reached the table files.
            let (key, _) = peeked(&sm)[2].clone();
            db.inner
                .delete_cf(db.cf(CF_BODIES), body_key(1, key))
                .unwrap();
        }
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db, 1).unwrap();
        assert_eq!(sm.bodies_on_disk_through, 2);
        apply_all(&mut sm, log).await;
        assert_eq!(texts(&peeked(&sm)), ["a", "b", "c"]);
        assert_eq!(sm.shared.bodies.highest_key().unwrap(), 3);
    }

    #[tokio::test]
    async fn after_an_install_every_entry_writes_its_bodies_whatever_was_on_disk_before() {
        let (source_dir, dir) = (
            tempfile::TempDir::new().unwrap(),
            tempfile::TempDir::new().unwrap(),
        );
        let db = Db::open(source_dir.path(), &OpenOptions::default()).unwrap();
        let mut source = StateMachineStore::open(db, 1).unwrap();
        let log = create_and_send(&[&["a"], &["b"]]);
        apply_all(&mut source, log.clone()).await;
        let snapshot = source
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        {
            // This node had bodies of higher keys before (as no committed log would leave
            // it: the test is of the rule, that an install forgets what was on disk).
            let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
            let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
            apply_all(&mut sm, create_and_send(&[&["x"], &["y"], &["z"], &["w"]])).await;
            flush_bodies(&db).unwrap();
        }
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
        assert_eq!(sm.bodies_on_disk_through, 4);
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(sm.bodies_on_disk_through, 0);
        apply_all(&mut sm, create_and_send(&[&[], &[], &["c"]]).split_off(3)).await;
        assert_eq!(texts(&peeked(&sm)), ["a", "b", "c"]);
        drop(sm);
        let sm = StateMachineStore::open(db, 1).unwrap();
        assert_eq!(sm.bodies_on_disk_through, 3);
    }

    #[test]
    fn a_data_directory_with_a_snapshot_of_the_old_layout_is_refused_not_misread() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        db.inner
            .put_cf(db.cf(CF_STATE), meta_key(1, OLD_SNAPSHOT_KEY), b"old")
            .unwrap();
        let error = StateMachineStore::open(db, 1).err().expect("opened");
        assert!(matches!(error, StoreError::OldLayout { .. }), "{error}");
    }

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
