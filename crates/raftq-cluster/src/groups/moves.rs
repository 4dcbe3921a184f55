//! Moving replicas when nodes join or leave. The metadata leader writes the moves into
//! the placement ([`Placement::rebalance`]); each group's leader carries out its own:
//!
//! 1. a replica placed on a new node joins as a learner, catches up and becomes a voter
//!    (the same step that forms a group, in the parent module);
//! 2. once every placed replica votes, a leader that is itself moving away hands
//!    leadership to a placed replica, and the leader removes every member not placed;
//! 3. a node that runs a replica no longer placed on it drops the replica (its Raft
//!    instance, its keys, its files) once a committed membership of the group leaves the
//!    node out, as some replica of the group reports it.
//!
//! A group never has fewer voters than placed while it moves: the new replica votes
//! before the old one goes. Removing a node from the cluster first drains it
//! ([`DataGroups::drain`]): it is marked draining, its replicas move away, and only
//! then does it leave group 1.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use raftq_core::placement::{GroupPlan, Placement};
use raftq_core::{Command, GroupId};
use raftq_proto::raft_pb::GroupStateRequest;
use raftq_store::NodeId;

use super::{DataGroups, GROUP_STATE_TIMEOUT};
use crate::node::{MembershipView, RaftNode};
use crate::{ClusterError, lock};

/// How long the metadata group's voters must stay the same before replicas move to or
/// from a node that joined or left, so that nodes joining one after the other are
/// balanced in one step.
const SETTLE: Duration = Duration::from_secs(3);
/// How often a drain looks again at the groups still moving.
const DRAIN_POLL: Duration = Duration::from_millis(250);

impl DataGroups {
    /// On the metadata leader: forgets draining nodes that have left group 1, and, once
    /// its voters have been the same for [`SETTLE`] (at once when `now`), moves the data
    /// groups' replicas so that they are spread over the voters that are not draining.
    pub(super) async fn rebalance_if_due(&self, now: bool) -> Result<(), ClusterError> {
        if !self.metadata.is_leader() {
            return Ok(());
        }
        let (any_groups, draining) = {
            let state = self.metadata.state().read();
            let placement = state.placement();
            (
                placement.groups().next().is_some(),
                placement.draining().clone(),
            )
        };
        if !any_groups {
            return Ok(());
        }
        let members = self.metadata.status().members;
        for node in draining.iter().filter(|node| !members.contains_key(node)) {
            self.write_placement(Command::DrainNode {
                node: *node,
                draining: false,
            })
            .await?;
        }
        let voters: Vec<NodeId> = members
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, _)| *id)
            .collect();
        let settled = {
            let mut seen = lock(&self.voters_seen);
            if seen.0 != voters {
                *seen = (voters.clone(), Instant::now());
            }
            seen.1.elapsed() >= SETTLE
        };
        let learners = members.values().any(|(_, voter)| !voter);
        if !now && (!settled || learners) {
            return Ok(());
        }
        let plans = self
            .metadata
            .state()
            .read()
            .placement()
            .rebalance(&voters, self.config.replication_factor as usize);
        if plans.is_empty() {
            return Ok(());
        }
        let count = plans.len();
        tracing::info!(count, ?voters, "moving the replicas of {count} data groups");
        metrics::counter!("raftq_group_moves_total").increment(count as u64);
        self.write_placement(Command::MoveReplicas { groups: plans })
            .await
    }

    /// On the metadata leader, before `node` leaves the cluster: marks it draining, moves
    /// its replicas to the other voters and waits, at most `within`, until no group's
    /// committed membership names it any more. Refused with [`ClusterError::Draining`],
    /// naming the groups still moving, when that takes longer (the moves go on; calling
    /// again waits for them).
    pub async fn drain(&self, node: NodeId, within: Duration) -> Result<(), ClusterError> {
        let placement = self.refresh_placement();
        if placement.groups().next().is_none() {
            return Ok(());
        }
        if !placement.draining().contains(&node) {
            self.write_placement(Command::DrainNode {
                node,
                draining: true,
            })
            .await?;
            tracing::info!(
                node,
                "draining node {node}: its replicas move to other nodes"
            );
        }
        let deadline = Instant::now() + within;
        let mut pending: BTreeSet<GroupId> = placement.groups().map(|plan| plan.group).collect();
        loop {
            self.rebalance_if_due(true).await?;
            let placement = self.refresh_placement();
            let mut moved = Vec::new();
            for group in &pending {
                let placed = placement
                    .replicas(*group)
                    .is_some_and(|replicas| replicas.contains(&node));
                if !placed && self.left_group(&placement, *group, node, 0).await {
                    moved.push(*group);
                }
            }
            for group in moved {
                pending.remove(&group);
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::Draining {
                    node,
                    groups: pending.into_iter().collect(),
                });
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Writes a placement command into group 1's log.
    async fn write_placement(&self, command: Command) -> Result<(), ClusterError> {
        self.metadata
            .write(command)
            .await?
            .map_err(|error| ClusterError::internal(format!("changing the placement: {error}")))?;
        Ok(())
    }

    /// On a group's leader once every placed replica votes: removes the members that are
    /// not placed (their nodes drop their replicas once they see the removal committed).
    pub(super) fn spawn_removals(self: &Arc<Self>, replica: RaftNode, plan: GroupPlan) {
        self.spawn_task(plan.group, "removing moved replicas", move |_| async move {
            let members = replica.status().members;
            for node in members.keys().filter(|node| !plan.replicas.contains(node)) {
                replica.remove_node(*node).await?;
                tracing::info!(
                    group = plan.group,
                    node,
                    "removed node {node} from data group {}: its replica moved",
                    plan.group
                );
            }
            Ok(())
        });
    }

    /// A replica running here that is no longer placed here: its leader adds the placed
    /// replicas and then hands leadership to one of them; a follower waits for its removal
    /// to be committed, then stops and drops the replica.
    pub(super) async fn leave(self: &Arc<Self>, replica: RaftNode, plan: GroupPlan) {
        if replica.is_leader() {
            let members = replica.status().members;
            let complete = plan
                .replicas
                .iter()
                .all(|node| members.get(node).is_some_and(|(_, voter)| *voter));
            if complete {
                self.hand_back(&replica, &plan.replicas).await;
            } else {
                self.spawn_membership(replica, plan, false);
            }
            return;
        }
        let group = plan.group;
        self.spawn_task(group, "dropping a moved replica", move |this| async move {
            let me = this.host.node_id();
            let known = replica.membership_view().index;
            if !this.left_group(&this.placement(), group, me, known).await {
                return Ok(());
            }
            let Some(replica) = lock(&this.replicas).remove(&group) else {
                return Ok(());
            };
            replica.shutdown().await;
            this.host.drop_group(group)?;
            tracing::info!(
                group,
                "dropped this node's replica of data group {group}: it moved"
            );
            Ok(())
        });
    }

    /// Groups whose state this node's store holds without running their replica (they
    /// moved away while it was down): dropped once their membership leaves it out.
    pub(super) fn drop_leftovers(self: &Arc<Self>, placement: &Placement) {
        let leftovers = {
            let mut leftovers = lock(&self.leftovers);
            if leftovers.is_none() {
                match self.host.stored_groups() {
                    Ok(stored) => *leftovers = Some(stored),
                    Err(error) => {
                        tracing::warn!(%error, "listing the groups this node stores");
                        return;
                    }
                }
            }
            leftovers.clone().unwrap_or_default()
        };
        let me = self.host.node_id();
        let running = self.host.groups();
        for group in leftovers {
            let placed_here = placement
                .replicas(group)
                .is_some_and(|replicas| replicas.contains(&me));
            if group <= 1 || placed_here || running.contains(&group) {
                if let Some(leftovers) = lock(&self.leftovers).as_mut() {
                    leftovers.remove(&group);
                }
                continue;
            }
            if placement.replicas(group).is_none() {
                continue;
            }
            self.spawn_task(group, "dropping a moved replica", move |this| async move {
                if !this.left_group(&this.placement(), group, me, 0).await {
                    return Ok(());
                }
                this.host.drop_group(group)?;
                if let Some(leftovers) = lock(&this.leftovers).as_mut() {
                    leftovers.remove(&group);
                }
                tracing::info!(group, "dropped what this node held of data group {group}");
                Ok(())
            });
        }
    }

    /// Whether a committed membership of `group` leaves `node` out, as the group's leader
    /// (one of its placed replicas other than `node`) reports it, no older than
    /// `newer_than` (the index of the newest membership `node` itself knows, so that a
    /// deposed leader's older membership never counts): this node's own replica directly,
    /// the others through the `GroupState` RPC.
    pub(super) async fn left_group(
        &self,
        placement: &Placement,
        group: GroupId,
        node: NodeId,
        newer_than: u64,
    ) -> bool {
        let Some(replicas) = placement.replicas(group) else {
            return false;
        };
        let me = self.host.node_id();
        let addresses = self.addresses();
        let cluster_id = self.host.cluster_id().unwrap_or_default();
        for other in replicas.iter().filter(|other| **other != node) {
            let view = if *other == me {
                self.replica(group)
                    .filter(RaftNode::is_leader)
                    .map(|replica| replica.membership_view())
            } else {
                let Some(address) = addresses.get(other) else {
                    continue;
                };
                let Ok(mut client) = self.host.connections().client(*other, &address.internal)
                else {
                    continue;
                };
                let mut request = tonic::Request::new(GroupStateRequest {
                    group_id: group,
                    target_node_id: *other,
                    cluster_id: cluster_id.clone(),
                });
                request.set_timeout(GROUP_STATE_TIMEOUT);
                match client.group_state(request).await {
                    Ok(answer) if answer.get_ref().leader => {
                        let answer = answer.into_inner();
                        Some(MembershipView {
                            members: answer.members.into_iter().collect(),
                            committed: answer.membership_committed,
                            index: answer.membership_index,
                        })
                    }
                    _ => None,
                }
            };
            if let Some(view) = view
                && view.committed
                && view.index >= newer_than
                && !view.members.is_empty()
                && !view.members.contains(&node)
            {
                return true;
            }
        }
        false
    }
}
