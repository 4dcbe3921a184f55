//! What one node reports about itself, and its wire form (`NodeStatus`).
//!
//! The conversion lives here, beside the type, rather than in raftq-proto: raftq-proto
//! must not depend on this crate (the client would link RocksDB). The role names are
//! raftq-proto's (`wire::role`).

use std::collections::BTreeMap;

use raftq_core::GroupId;
use raftq_proto::pb;
use raftq_proto::wire::role;
use raftq_store::{Node, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => role::LEADER,
            Role::Follower => role::FOLLOWER,
            Role::Candidate => role::CANDIDATE,
            Role::Learner => role::LEARNER,
            Role::Shutdown => role::SHUTDOWN,
        }
    }
}

/// What one node reports about itself.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    /// The group this is a replica of.
    pub group: GroupId,
    pub node_id: NodeId,
    pub addresses: Node,
    pub role: Role,
    pub term: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    pub purged_index: u64,
    pub snapshot_index: u64,
    pub leader_id: Option<NodeId>,
    pub voter: bool,
    /// True while this node, started on an empty data directory, catches up with a leader:
    /// until then it grants no vote.
    pub rebuilding: bool,
    /// The cluster this node belongs to; `None` until it formed or joined one.
    pub cluster_id: Option<String>,
    /// Every member (voters and learners) with its address, as this node knows them.
    pub members: BTreeMap<NodeId, (Node, bool)>,
}

impl From<&MemberStatus> for pb::NodeStatus {
    fn from(status: &MemberStatus) -> Self {
        pb::NodeStatus {
            node_id: status.node_id,
            address: status.addresses.public.clone(),
            role: status.role.as_str().to_string(),
            term: status.term,
            last_log_index: status.last_log_index,
            committed_index: status.committed_index,
            applied_index: status.applied_index,
            purged_index: status.purged_index,
            snapshot_index: status.snapshot_index,
            leader_id: status.leader_id.unwrap_or(0),
            voter: status.voter,
            rebuilding: status.rebuilding,
            cluster_id: status.cluster_id.clone().unwrap_or_default(),
            internal_address: status.addresses.internal.clone(),
            // Admission is the server's: it fills this in.
            resources: None,
            // The node's data groups are the server's to list.
            replicas: Vec::new(),
        }
    }
}

/// One replica of a data group: the group's figures as this node's replica sees them.
impl From<&MemberStatus> for pb::ReplicaStatus {
    fn from(status: &MemberStatus) -> Self {
        let members = |voter: bool| {
            status
                .members
                .iter()
                .filter(|(_, (_, is_voter))| *is_voter == voter)
                .map(|(id, _)| *id)
                .collect()
        };
        pb::ReplicaStatus {
            group_id: status.group,
            role: status.role.as_str().to_string(),
            term: status.term,
            leader_id: status.leader_id.unwrap_or(0),
            voters: members(true),
            learners: members(false),
            last_log_index: status.last_log_index,
            applied_index: status.applied_index,
            rebuilding: status.rebuilding,
            committed_index: status.committed_index,
            // The group's size is the state's: the server fills it in.
            queues: 0,
            stored_messages: 0,
            stored_bytes: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    /// Frozen bytes: what `cluster status` and the clients decode must not drift (new
    /// fields only ever add bytes at the end).
    #[test]
    fn node_status_wire_format_is_frozen() {
        let status = MemberStatus {
            group: 1,
            node_id: 2,
            addresses: Node::new("h:1", "h:1"),
            role: Role::Leader,
            term: 3,
            last_log_index: 4,
            committed_index: 5,
            applied_index: 6,
            purged_index: 7,
            snapshot_index: 8,
            leader_id: Some(2),
            voter: true,
            rebuilding: false,
            cluster_id: Some("c".into()),
            members: BTreeMap::new(),
        };
        let bytes = pb::NodeStatus::from(&status).encode_to_vec();
        assert_eq!(
            bytes,
            [
                0x08, 0x02, 0x12, 0x03, b'h', b':', b'1', 0x1a, 0x06, b'l', b'e', b'a', b'd', b'e',
                b'r', 0x20, 0x03, 0x28, 0x04, 0x30, 0x05, 0x38, 0x06, 0x40, 0x07, 0x48, 0x08, 0x50,
                0x02, 0x58, 0x01, 0x6a, 0x01, b'c', 0x72, 0x03, b'h', b':', b'1'
            ]
        );
    }
}
