//! `ClusterError`: why the cluster could not carry out a request, and how long a caller
//! should wait before sending it again.

use raftq_store::NodeId;

/// Why the cluster could not carry out a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("this node is not the leader{}", leader_hint(.leader_id, .leader_address))]
    NotLeader {
        leader_id: Option<NodeId>,
        leader_address: Option<String>,
    },
    #[error("no quorum: {reason}")]
    NoQuorum { reason: String },
    /// The write may or may not have been committed (the leader changed under it, or no
    /// quorum answered in time): the caller sends it again, which is safe because sends
    /// carry idempotency keys and acks are fenced by their receipts.
    #[error("the write's outcome is unknown: {reason}")]
    OutcomeUnknown { reason: String },
    #[error("membership change refused: {reason}")]
    Membership { reason: String },
    #[error("another membership change is still being committed; retry shortly: {reason}")]
    MembershipBusy { reason: String },
    #[error("the raft node has stopped: {reason}")]
    Stopped { reason: String },
    /// A node of another cluster (a data directory formed or joined elsewhere, a peer list
    /// pointing at the wrong nodes) spoke to this one.
    #[error(
        "cluster {theirs} is not this cluster ({ours}): a data directory belongs to the one \
         cluster it formed or joined"
    )]
    OtherCluster { ours: String, theirs: String },
    /// The write was applied, but what it returns could not be read from the disk.
    #[error("storage error after the write was applied: {reason}")]
    Storage { reason: String },
    /// A node to be removed still runs replicas of data groups: they are being moved to
    /// other nodes, and the removal can go on once none is left.
    #[error(
        "node {node} still runs replicas of data groups {groups:?}; they are moving to other \
         nodes: call again"
    )]
    Draining { node: NodeId, groups: Vec<u64> },
    /// Something that cannot happen did: a bug, never retried.
    #[error("internal error: {reason}")]
    Internal { reason: String },
}

fn leader_hint(id: &Option<NodeId>, address: &Option<String>) -> String {
    match (id, address) {
        (Some(id), Some(address)) => format!("; leader is node {id} at {address}"),
        (Some(id), None) => format!("; leader is node {id}"),
        _ => "; no leader is known".to_string(),
    }
}

impl ClusterError {
    /// How long a caller should wait before it sends the same request again (to the leader
    /// named, or to any node), or `None` when sending it again cannot help. The status
    /// mapping turns every `Some` into UNAVAILABLE with this hint.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            // Straight to the named leader; without one, after an election.
            ClusterError::NotLeader { leader_address, .. } => {
                Some(if leader_address.is_some() { 0 } else { 200 })
            }
            ClusterError::NoQuorum { .. } => Some(500),
            ClusterError::OutcomeUnknown { .. } => Some(100),
            ClusterError::MembershipBusy { .. } => Some(200),
            ClusterError::Stopped { .. } => Some(1_000),
            ClusterError::Draining { .. } => Some(1_000),
            ClusterError::Membership { .. }
            | ClusterError::OtherCluster { .. }
            | ClusterError::Storage { .. }
            | ClusterError::Internal { .. } => None,
        }
    }

    pub(crate) fn internal(reason: impl std::fmt::Display) -> ClusterError {
        ClusterError::Internal {
            reason: reason.to_string(),
        }
    }
}
