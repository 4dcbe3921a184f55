//! Which replica serves a call on a queue. With data groups, the metadata group's
//! placement says which group holds each queue; a call is served by that group's leader.
//! A node running a replica of the group serves the call when it leads the group and
//! otherwise forwards it to the leader it knows; a node without one forwards it to a node
//! that has one. A call is forwarded at most [`MAX_HOPS`] times, and a forwarded call
//! names its group ([`GROUP_KEY`]), so the next node serves it in that group even when
//! its own copy of the placement is a moment behind.

use std::collections::BTreeSet;

use raftq_cluster::Node;
use raftq_core::GroupId;
use raftq_core::placement::METADATA_GROUP;
use raftq_proto::wire::{FORWARDED_KEY, GROUP_KEY};
use raftq_store::NodeId;
use tonic::{Request, Status};

use crate::context::Context;
use crate::error::{ServiceError, status};

/// Most times one call is forwarded: to a replica of its queue's group (or to the
/// metadata leader, when the queue is not placed yet here), then to that group's leader.
pub const MAX_HOPS: u32 = 2;

/// A group this node runs no replica of, and the node of it that calls are forwarded to.
#[derive(Clone, Debug)]
pub struct Remote {
    pub node_id: NodeId,
    pub node: Node,
}

/// How many times `request` has been forwarded (a node that predates hop counts marks
/// a forwarded call with 1).
pub fn hops<T>(request: &Request<T>) -> u32 {
    match request.metadata().get(FORWARDED_KEY) {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|value| value.parse().ok())
            .unwrap_or(1)
            .max(1),
    }
}

/// The data group a forwarding node named on `request` (group 1 is never named: a call
/// goes there also when its queue is not placed yet, and the next node looks again).
pub fn named_group<T>(request: &Request<T>) -> Option<GroupId> {
    if hops(request) == 0 {
        return None;
    }
    let group = request
        .metadata()
        .get(GROUP_KEY)?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (group != METADATA_GROUP).then_some(group)
}

impl Context {
    /// This node's context for a call on `queue`: served by the replica of the group the
    /// placement puts it in. A queue this node's placement does not know yet (placed a
    /// moment ago) is looked up again after a read barrier when this node leads group 1;
    /// otherwise the call goes to group 1's leader, which does that.
    pub async fn for_queue<T>(&self, request: &Request<T>, queue: &str) -> Result<Context, Status> {
        if !self.has_data_groups() {
            return Ok(self.at_meta());
        }
        if let Some(group) = named_group(request)
            && let Some(context) = self.local_group(group)
        {
            return Ok(context);
        }
        self.for_queue_name(queue).await
    }

    /// [`Context::for_queue`] for a call that names no group (not forwarded, or a stream).
    pub async fn for_queue_name(&self, queue: &str) -> Result<Context, Status> {
        if !self.has_data_groups() {
            return Ok(self.at_meta());
        }
        let (mut group, known) = self.lookup(queue);
        if !known && self.meta.is_leader() {
            self.meta.linearizable_read().await.map_err(status)?;
            group = self.meta.state().read().placement().group_of(queue);
        }
        self.for_group(group)
    }

    /// This node's context for a call on all of `queues` (a transaction, a redrive):
    /// FAILED_PRECONDITION naming the groups when they live in more than one, since a
    /// command is atomic within one group only.
    pub async fn for_queues<T>(
        &self,
        request: &Request<T>,
        queues: &[&str],
    ) -> Result<Context, Status> {
        if let Some(group) = named_group(request)
            && let Some(context) = self.local_group(group)
        {
            return Ok(context);
        }
        let mut placed: Vec<(GroupId, &str)> = Vec::with_capacity(queues.len());
        let mut unknown = false;
        for queue in queues {
            let (group, known) = self.lookup(queue);
            unknown |= !known;
            placed.push((group, queue));
        }
        if unknown {
            if !self.meta.is_leader() {
                // Group 1's leader looks again, after a read barrier.
                return Ok(self.at_meta());
            }
            self.meta.linearizable_read().await.map_err(status)?;
            let state = self.meta.state().read();
            for (group, queue) in &mut placed {
                *group = state.placement().group_of(queue);
            }
        }
        let groups: BTreeSet<GroupId> = placed.iter().map(|(group, _)| *group).collect();
        if groups.len() > 1 {
            return Err(status(ServiceError::AcrossGroups {
                queues: placed
                    .iter()
                    .map(|(group, queue)| (queue.to_string(), *group))
                    .collect(),
            }));
        }
        self.for_group(groups.first().copied().unwrap_or(METADATA_GROUP))
    }

    /// This node's context for calls on `group`.
    pub fn for_group(&self, group: GroupId) -> Result<Context, Status> {
        if let Some(context) = self.local_group(group) {
            return Ok(context);
        }
        // No replica here: forward to one of the group's replicas, the first (its
        // preferred leader) whose addresses group 1 knows.
        let placement = self.groups.placement();
        let members = self.meta.status().members;
        let remote = placement
            .replicas(group)
            .unwrap_or_default()
            .iter()
            .find_map(|id| {
                members.get(id).map(|(node, _)| Remote {
                    node_id: *id,
                    node: node.clone(),
                })
            })
            .ok_or_else(|| status(ServiceError::GroupUnknown { group }))?;
        Ok(self.scoped(self.meta.clone(), group, Some(remote)))
    }

    /// Refuses, with FAILED_PRECONDITION naming the groups, messages sent to `queue` in
    /// this context's group that ask for acknowledgement messages in a queue of another
    /// group (the acknowledgement would be written in this group, where that queue is
    /// not), and a producer's numbered send or commit (`queue` empty) in a data group
    /// (producer sessions live in group 1).
    pub fn check_sends<'a>(
        &self,
        queue: &str,
        ack_queues: impl Iterator<Item = &'a str>,
        numbered: bool,
    ) -> Result<(), Status> {
        if !self.has_data_groups() {
            return Ok(());
        }
        if numbered && self.group != METADATA_GROUP {
            let what = match queue {
                "" => "this transaction's queues live".to_string(),
                queue => format!("queue {} lives", raftq_core::quote(queue)),
            };
            return Err(status(ServiceError::ProducerInDataGroup {
                what,
                group: self.group,
            }));
        }
        for ack_queue in ack_queues.filter(|name| !name.is_empty()) {
            let (group, _) = self.lookup(ack_queue);
            if group != self.group {
                return Err(status(ServiceError::AcrossGroups {
                    queues: vec![
                        (queue.to_string(), self.group),
                        (ack_queue.to_string(), group),
                    ],
                }));
            }
        }
        Ok(())
    }

    /// Whether the cluster runs data groups (as far as this node's placement knows).
    pub fn has_data_groups(&self) -> bool {
        self.groups.any()
    }

    /// This node's context for group 1.
    pub fn at_meta(&self) -> Context {
        self.scoped(self.meta.clone(), METADATA_GROUP, None)
    }

    /// The context of `group` when this node runs a replica of it.
    fn local_group(&self, group: GroupId) -> Option<Context> {
        if group == METADATA_GROUP {
            return Some(self.at_meta());
        }
        let replica = self.groups.replica(group)?;
        Some(self.scoped(replica, group, None))
    }

    /// The group `queue` lives in by this node's placement, and whether that is known:
    /// false for a queue placed nowhere while data groups exist, unless group 1 holds it
    /// (it was created before there were data groups). The copy of the placement is
    /// read first; group 1's applied state (when not being written) for a queue the copy
    /// does not place.
    fn lookup(&self, queue: &str) -> (GroupId, bool) {
        let placement = self.groups.placement();
        let group = placement.group_of(queue);
        if group != METADATA_GROUP || placement.groups().next().is_none() {
            return (group, true);
        }
        match self.meta.state().try_read() {
            Some(state) => {
                let group = state.placement().group_of(queue);
                (group, group != METADATA_GROUP || state.has_queue(queue))
            }
            None => (METADATA_GROUP, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use raftq_proto::wire::{FORWARDED_KEY, GROUP_KEY};
    use tonic::Request;

    use super::{hops, named_group};

    fn request(forwarded: Option<&'static str>, group: Option<&'static str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = forwarded {
            request
                .metadata_mut()
                .insert(FORWARDED_KEY, value.parse().expect("ascii"));
        }
        if let Some(value) = group {
            request
                .metadata_mut()
                .insert(GROUP_KEY, value.parse().expect("ascii"));
        }
        request
    }

    #[test]
    fn hops_count_forwards_and_a_group_is_named_only_on_forwarded_calls() {
        assert_eq!(hops(&request(None, None)), 0);
        assert_eq!(hops(&request(Some("1"), None)), 1);
        assert_eq!(hops(&request(Some("2"), None)), 2);
        // An older node marked a forwarded call with a value it did not count.
        assert_eq!(hops(&request(Some("yes"), None)), 1);
        assert_eq!(named_group(&request(Some("1"), Some("7"))), Some(7));
        // A client cannot pick the group by naming one.
        assert_eq!(named_group(&request(None, Some("7"))), None);
        assert_eq!(named_group(&request(Some("1"), Some("x"))), None);
        assert_eq!(named_group(&request(Some("1"), Some("1"))), None);
    }
}
