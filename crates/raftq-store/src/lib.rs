//! raftq-store: everything that touches RocksDB or the disk — the Raft log, vote and commit
//! state, message bodies, and the state-machine snapshot files — plus the openraft type configuration they share
//! with raftq-cluster.
//!
//! It is the only crate that depends on `rocksdb`. It must not know about gRPC.

mod checksum;
pub mod codec;
mod db;
mod drop_group;
mod identity;
mod log_store;
mod member;
pub mod raw;
mod snapshot;
mod state_machine;
mod wal_sync;
mod watermark;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use db::{Db, OpenOptions, StorageMemory, StoreError};
pub use identity::NodeIdentity;
pub use log_store::{LogStore, forget_synced_watermarks};
pub use member::Node;
pub use snapshot::{IncomingSnapshot, SnapshotData};
pub use state_machine::{ReadError, SharedState, StateMachineStore};

/// What applying one log entry returns to the proposer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// A queue command's outcome.
    Queue(Box<Result<raftq_core::Outcome, raftq_core::QueueError>>),
    /// A blank or membership entry: nothing to report.
    Internal,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::Queue(outcome) => match outcome.as_ref() {
                Ok(_) => write!(f, "ok"),
                Err(error) => write!(f, "refused: {error}"),
            },
            Applied::Internal => write!(f, "internal"),
        }
    }
}

openraft::declare_raft_types!(
    /// The openraft types of a raftq group. Kept here and in raftq-cluster only, so an
    /// openraft upgrade touches those two crates.
    pub TypeConfig:
        D = raftq_core::Request,
        R = Applied,
        NodeId = u64,
        Node = Node,
);

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;
