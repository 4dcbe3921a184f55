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
    #[error("leader changed before the write was committed; its outcome is unknown")]
    OutcomeUnknown,
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
}

fn leader_hint(id: &Option<NodeId>, address: &Option<String>) -> String {
    match (id, address) {
        (Some(id), Some(address)) => format!("; leader is node {id} at {address}"),
        (Some(id), None) => format!("; leader is node {id}"),
        _ => "; no leader is known".to_string(),
    }
}

impl ClusterError {
    /// Whether the same request may be sent again (to the leader, or later). A write whose
    /// outcome is unknown is retryable only because sends carry idempotency keys and acks
    /// are fenced.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClusterError::NotLeader { .. }
            | ClusterError::NoQuorum { .. }
            | ClusterError::OutcomeUnknown
            | ClusterError::MembershipBusy { .. } => true,
            ClusterError::Membership { .. }
            | ClusterError::OtherCluster { .. }
            | ClusterError::Stopped { .. }
            | ClusterError::Storage { .. } => false,
        }
    }
}
