//! The Raft groups this node serves a replica of: what the Raft service routes each
//! incoming message to by its group id.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use raftq_core::GroupId;

use crate::raft::Raft;
use crate::standing::VoteRight;

/// One group's replica, as the Raft service needs it.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) raft: Raft,
    /// Whether the replica may vote; one that may not also refuses to take over leadership.
    pub(crate) vote: VoteRight,
}

#[derive(Default)]
pub(crate) struct Registry {
    groups: RwLock<HashMap<GroupId, Served>>,
    /// Messages refused because they named a group not served here.
    unknown: AtomicU64,
}

impl Registry {
    /// Adds `group`'s replica; false (and nothing changes) when the group is served already.
    pub(crate) fn insert(&self, group: GroupId, served: Served) -> bool {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        if groups.contains_key(&group) {
            return false;
        }
        groups.insert(group, served);
        true
    }

    pub(crate) fn remove(&self, group: GroupId) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        groups.remove(&group);
    }

    /// The replica of `group`, or `None` (counted) when this node serves none.
    pub(crate) fn get(&self, group: GroupId) -> Option<Served> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        let served = groups.get(&group).cloned();
        if served.is_none() {
            self.unknown.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("raftq_raft_unknown_group_refused_total").increment(1);
        }
        served
    }

    /// The groups served, in order.
    pub(crate) fn groups(&self) -> Vec<GroupId> {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<GroupId> = groups.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// How many messages named a group not served here, since the node started.
    pub(crate) fn unknown_refused(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }
}
