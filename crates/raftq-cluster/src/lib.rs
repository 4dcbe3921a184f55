//! raftq-cluster: a node's Raft groups — the node's store and connections shared by its
//! replicas, each replica's openraft instance, the gRPC transport that routes messages by
//! group, membership changes, leader lookup and the leader's time stamp on every command.
//!
//! It must not serve the public API or decide queue semantics: gRPC services live in
//! raftq-server, queue rules in raftq-core.

mod batcher;
mod clock;
mod connections;
mod error;
mod groups;
mod host;
mod log_growth;
mod network;
mod node;
mod raft;
mod registry;
mod service;
mod standing;
mod status;
mod tuning;

pub use error::ClusterError;
pub use groups::DataGroups;
pub use host::Host;
pub use node::{MembershipView, RaftNode};
pub use raftq_store::{Node, NodeId};
pub use status::{MemberStatus, Role};
pub use tuning::{GroupsConfig, NodeConfig, RaftTuning, StorageTuning};

/// Largest Raft RPC accepted or sent over gRPC. Bounded: a batch of append entries holds
/// at most `max_payload_entries` entries of at most one client batch each.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// Locks `mutex`; a panic elsewhere while it was held leaves plain bookkeeping (deadlines,
/// permits) that stays usable, so the lock is taken anyway.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
