//! `SharedState`: the applied queue state for readers, and reads of it with bodies.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use tokio::sync::watch;

use raftq_core::{BodyRef, MessageId, Outcome, QueueError, StateMachine, StoredMessage};

use super::bodies::Bodies;
use crate::db::StoreError;

/// Why a read of stored messages failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The queue state shared between the Raft state machine (the only writer) and the gRPC
/// services (readers). Locks are held for one command or one read, never across `.await`.
#[derive(Clone)]
pub struct SharedState {
    pub(super) state: Arc<RwLock<StateMachine>>,
    pub(super) applied: watch::Sender<u64>,
    pub(super) bodies: Bodies,
}

impl SharedState {
    pub fn read(&self) -> RwLockReadGuard<'_, StateMachine> {
        // A writer panicking mid-command would be a bug in raftq-core; keep serving reads.
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The state, if no command is being applied right now.
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, StateMachine>> {
        match self.state.try_read() {
            Ok(state) => Some(state),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    pub(super) fn write(&self) -> std::sync::RwLockWriteGuard<'_, StateMachine> {
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
    /// selector names, when it names any), each with its body: at most `max` of them, and
    /// no more than `max_bytes` of bodies (but always the first).
    ///
    /// The messages are taken under the state's lock, their bodies read after it is let
    /// go (they are on disk: a read under the lock would hold up every write meanwhile).
    /// A body is stored under its entry's index, and never changes; it is deleted only by
    /// a snapshot taken after its message left the queue. A message whose body is gone by
    /// the time it is read had left the queue meanwhile, and is not in the answer.
    pub fn peek(
        &self,
        queue: &str,
        after_sequence: u64,
        max: usize,
        max_bytes: u64,
        message_id: MessageId,
        correlation_id: &str,
    ) -> Result<Vec<(StoredMessage, Vec<u8>)>, ReadError> {
        let mut messages =
            self.read()
                .peek_selected(queue, after_sequence, max, message_id, correlation_id)?;
        let mut bytes = 0u64;
        let within = messages
            .iter()
            .position(|message| {
                bytes = bytes.saturating_add(message.body.len);
                bytes > max_bytes
            })
            .unwrap_or(messages.len())
            .max(1);
        messages.truncate(within);
        let refs: Vec<BodyRef> = messages.iter().map(|m| m.body).collect();
        let bodies = self.bodies.read_present(&refs)?;
        Ok(messages
            .into_iter()
            .zip(bodies)
            .filter_map(|(message, body)| Some((message, body?)))
            .collect())
    }
}
