//! The data groups a node runs, following the placement the metadata group (group 1)
//! holds: the metadata leader places the groups once the cluster has its initial voters;
//! every node starts the replicas placed on it; a group's founder forms it; a group's
//! leader brings in every replica placed on another node, and hands leadership back to
//! the group's first replica (its preferred leader) whenever that one can take it.
//!
//! The plan spreads first replicas within one of even over the nodes, so leaders are
//! balanced while every node runs. When a node dies, each group it led elects another
//! leader within an election timeout; when it returns and has caught up, the leaders
//! hand those groups back to it, as Kafka's preferred-leader election does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftq_core::placement::{GroupPlan, Placement};
use raftq_core::{Command, GroupId};
use raftq_proto::raft_pb::GroupStateRequest;
use raftq_store::{Node, NodeId};

use crate::host::Host;
use crate::node::RaftNode;
use crate::tuning::GroupsConfig;
use crate::{ClusterError, lock};

mod moves;

/// Longest one group's membership work (forming it, adding a replica) may take in one
/// round; what is not done is taken up again in a later round.
const MEMBERSHIP_ROUND: Duration = Duration::from_secs(30);
/// Longest a founder waits for another replica to say whether it holds Raft state.
const GROUP_STATE_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two handovers of one group's leadership to its first replica, so
/// that a first replica that keeps failing does not make its group's leadership flap.
const PREFERRED_LEADER_EVERY: Duration = Duration::from_secs(5);
/// Most membership tasks (forming a group, adding or removing a replica, checking that a
/// replica that moved away may be dropped) one node runs at once.
const MAX_MEMBERSHIP_TASKS: usize = 8;

pub struct DataGroups {
    host: Host,
    /// This node's replica of group 1, which holds the placement.
    metadata: RaftNode,
    config: GroupsConfig,
    /// Voters the cluster starts with (the nodes named in `peers`): the groups are placed
    /// once the metadata group has as many.
    initial_voters: usize,
    /// The data-group replicas running here.
    replicas: Mutex<BTreeMap<GroupId, RaftNode>>,
    /// Groups whose membership work is under way here.
    busy: Mutex<BTreeSet<GroupId>>,
    /// When this node last handed each group's leadership to its first replica.
    handed_back: Mutex<BTreeMap<GroupId, std::time::Instant>>,
    /// The placement as this node last read it from group 1, for routing calls without
    /// waiting on group 1's state while it applies.
    placement: Mutex<Arc<Placement>>,
    /// Whether that placement has any data group (read on every call; set once groups
    /// exist, never cleared, as groups are not removed).
    any_groups: std::sync::atomic::AtomicBool,
    /// Bounds the membership tasks running at once.
    tasks: Arc<tokio::sync::Semaphore>,
    /// On the metadata leader: the voters last seen, and since when, so that replicas move
    /// only once the nodes have settled (two nodes joining one after the other cause one
    /// rebalance, not two).
    voters_seen: Mutex<(Vec<NodeId>, std::time::Instant)>,
    /// Groups this node's store holds state of without running a replica (it moved away
    /// while the node was down): dropped once the group's membership leaves this node out.
    /// `None` until read, on the first round.
    leftovers: Mutex<Option<BTreeSet<GroupId>>>,
}

impl DataGroups {
    pub fn new(metadata: RaftNode, config: GroupsConfig, initial_voters: usize) -> Arc<Self> {
        Arc::new(DataGroups {
            host: metadata.host().clone(),
            metadata,
            config,
            initial_voters: initial_voters.max(1),
            replicas: Mutex::new(BTreeMap::new()),
            busy: Mutex::new(BTreeSet::new()),
            handed_back: Mutex::new(BTreeMap::new()),
            placement: Mutex::new(Arc::default()),
            any_groups: std::sync::atomic::AtomicBool::new(false),
            tasks: Arc::new(tokio::sync::Semaphore::new(MAX_MEMBERSHIP_TASKS)),
            voters_seen: Mutex::new((Vec::new(), std::time::Instant::now())),
            leftovers: Mutex::new(None),
        })
    }

    /// The placement as last read (every round, and by [`DataGroups::refresh_placement`]);
    /// up to a round behind group 1's applied state.
    pub fn placement(&self) -> Arc<Placement> {
        lock(&self.placement).clone()
    }

    /// Reads the placement from group 1's applied state now, waiting for the state if an
    /// entry is being applied.
    pub fn refresh_placement(&self) -> Arc<Placement> {
        let placement = Arc::new(self.metadata.state().read().placement().clone());
        *lock(&self.placement) = placement.clone();
        if placement.groups().next().is_some() {
            self.any_groups
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        placement
    }

    /// Whether the cluster runs data groups, as the placement last read says: without
    /// them every call is served by group 1, and routing has nothing to look up.
    pub fn any(&self) -> bool {
        self.any_groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This node's replica of data group `group`, if it runs one.
    pub fn replica(&self, group: GroupId) -> Option<RaftNode> {
        lock(&self.replicas).get(&group).cloned()
    }

    /// This node's data-group replicas, in group order.
    pub fn replicas(&self) -> Vec<RaftNode> {
        lock(&self.replicas).values().cloned().collect()
    }

    /// One round (the server runs one every 250 ms): places the groups when due, moves
    /// replicas when the nodes changed, starts the replicas placed here, and starts the
    /// membership work of groups this node founds or leads, or has left. Errors are
    /// logged; the next round tries again.
    pub async fn follow(self: &Arc<Self>) {
        if let Err(error) = self.place_groups_if_due().await {
            tracing::warn!(%error, "placing the data groups");
        }
        if let Err(error) = self.rebalance_if_due(false).await {
            tracing::warn!(%error, "rebalancing the data groups");
        }
        let placement = self.refresh_placement();
        let me = self.host.node_id();
        for plan in placement.groups() {
            if !plan.replicas.contains(&me) {
                if let Some(replica) = self.replica(plan.group) {
                    self.leave(replica, plan).await;
                }
                continue;
            }
            let replica = match self.start(plan.group).await {
                Ok(replica) => replica,
                Err(error) => {
                    tracing::warn!(group = plan.group, %error, "starting a replica");
                    continue;
                }
            };
            let founder = plan.replicas[0] == me;
            let members = replica.status().members;
            let complete = plan
                .replicas
                .iter()
                .all(|node| members.get(node).is_some_and(|(_, voter)| *voter));
            let departed = members.keys().any(|node| !plan.replicas.contains(node));
            if !complete && (replica.is_leader() || founder) {
                self.spawn_membership(replica, plan, founder);
            } else if complete && departed && replica.is_leader() {
                self.spawn_removals(replica, plan);
            } else if complete && !founder && replica.is_leader() {
                self.hand_back(&replica, &plan.replicas[..1]).await;
            }
        }
        self.drop_leftovers(&placement);
    }

    /// Stops every data-group replica here, a leader handing over first.
    pub async fn shutdown(&self, hand_over_within: Duration) {
        let replicas: Vec<RaftNode> = std::mem::take(&mut *lock(&self.replicas))
            .into_values()
            .collect();
        futures::future::join_all(
            replicas
                .iter()
                .map(|replica| replica.hand_over_leadership(hand_over_within)),
        )
        .await;
        for replica in replicas {
            replica.shutdown().await;
        }
    }

    /// On a group's leader that is not its first replica: hands leadership to the first
    /// of `preferred` that can take it (see [`RaftNode::transfer_if_ready`]), at most once
    /// per [`PREFERRED_LEADER_EVERY`].
    async fn hand_back(&self, replica: &RaftNode, preferred: &[NodeId]) {
        let group = replica.group();
        let now = std::time::Instant::now();
        if lock(&self.handed_back)
            .get(&group)
            .is_some_and(|at| now.duration_since(*at) < PREFERRED_LEADER_EVERY)
        {
            return;
        }
        let mut asked = Ok(None);
        for node in preferred {
            match replica.transfer_if_ready(*node).await {
                Ok(false) => continue,
                Ok(true) => asked = Ok(Some(*node)),
                Err(error) => asked = Err(error),
            }
            break;
        }
        match asked {
            Ok(Some(preferred)) => {
                lock(&self.handed_back).insert(group, now);
                metrics::counter!("raftq_group_leadership_handed_back_total").increment(1);
                tracing::info!(
                    group,
                    preferred,
                    "handing the group's leadership to node {preferred}"
                );
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(group, %error, "handing leadership back"),
        }
    }

    async fn start(&self, group: GroupId) -> Result<RaftNode, ClusterError> {
        if let Some(replica) = self.replica(group) {
            return Ok(replica);
        }
        let replica = self.host.start_replica(group).await?;
        tracing::info!(group, "started a replica of data group {group}");
        lock(&self.replicas).insert(group, replica.clone());
        Ok(replica)
    }

    /// On the metadata leader: places the missing data groups over the voters, once there
    /// are as many voters as the cluster starts with.
    async fn place_groups_if_due(&self) -> Result<(), ClusterError> {
        if !self.metadata.is_leader() {
            return Ok(());
        }
        let placed = self.metadata.state().read().placement().groups().count() as u64;
        if placed >= self.config.data_groups {
            return Ok(());
        }
        let status = self.metadata.status();
        let voters: Vec<NodeId> = status
            .members
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, _)| *id)
            .collect();
        if voters.len() < self.initial_voters {
            return Ok(());
        }
        let plans = self.metadata.state().read().placement().plan_groups(
            &voters,
            (self.config.data_groups - placed) as usize,
            self.config.replication_factor as usize,
        );
        let count = plans.len();
        self.metadata
            .write(Command::PlaceGroups { groups: plans })
            .await?
            .map_err(|error| ClusterError::internal(format!("placing groups: {error}")))?;
        tracing::info!(count, voters = ?voters, "placed {count} data groups");
        Ok(())
    }

    fn spawn_membership(self: &Arc<Self>, replica: RaftNode, plan: GroupPlan, founder: bool) {
        self.spawn_task(
            plan.group,
            "data group membership",
            move |this| async move { this.complete_membership(&replica, &plan, founder).await },
        );
    }

    /// Runs one group's membership work in a task of its own: at most one per group, at
    /// most [`MAX_MEMBERSHIP_TASKS`] at once, each for at most [`MEMBERSHIP_ROUND`]; what
    /// is not done is taken up again in a later round.
    fn spawn_task<F, Work>(self: &Arc<Self>, group: GroupId, what: &'static str, work: F)
    where
        F: FnOnce(Arc<Self>) -> Work + Send + 'static,
        Work: std::future::Future<Output = Result<(), ClusterError>> + Send + 'static,
    {
        if !lock(&self.busy).insert(group) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(_permit) = this.tasks.clone().acquire_owned().await {
                match tokio::time::timeout(MEMBERSHIP_ROUND, work(this.clone())).await {
                    Ok(Ok(())) => {}
                    // The change before (forming the group, adding another replica) is
                    // still being committed: the next round goes on.
                    Ok(Err(error @ ClusterError::MembershipBusy { .. })) => {
                        tracing::debug!(group, %error, "{what}")
                    }
                    Ok(Err(error)) => tracing::warn!(group, %error, "{what}"),
                    Err(_) => tracing::info!(group, "{what}: not done yet"),
                }
            }
            lock(&this.busy).remove(&group);
        });
    }

    /// Forms the group (on its founder, when no replica holds Raft state yet), then, on
    /// its leader, adds every replica placed elsewhere as a voter.
    async fn complete_membership(
        &self,
        replica: &RaftNode,
        plan: &GroupPlan,
        founder: bool,
    ) -> Result<(), ClusterError> {
        let addresses = self.addresses();
        if founder && !replica.holds_raft_state().await? {
            if !self.no_replica_holds_state(plan, &addresses).await {
                return Ok(());
            }
            if replica.initialize().await? {
                tracing::info!(group = plan.group, "formed data group {}", plan.group);
            }
        }
        if !replica.is_leader() {
            return Ok(());
        }
        let members = replica.status().members;
        for node in &plan.replicas {
            if members.get(node).is_some_and(|(_, voter)| *voter) {
                continue;
            }
            let Some(address) = addresses.get(node) else {
                continue;
            };
            replica
                .add_node(*node, address.clone(), true, false)
                .await?;
            tracing::info!(group = plan.group, node, "added node {node} to data group");
        }
        Ok(())
    }

    /// Every node's addresses, as the metadata group knows them.
    fn addresses(&self) -> BTreeMap<NodeId, Node> {
        self.metadata
            .status()
            .members
            .into_iter()
            .map(|(id, (node, _))| (id, node))
            .collect()
    }

    /// Whether every other replica of `plan` runs and holds no Raft state of the group: a
    /// founder that lost its disk must not form a second group of the same id.
    async fn no_replica_holds_state(
        &self,
        plan: &GroupPlan,
        addresses: &BTreeMap<NodeId, Node>,
    ) -> bool {
        let me = self.host.node_id();
        let cluster_id = self.host.cluster_id().unwrap_or_default();
        for node in plan.replicas.iter().filter(|node| **node != me) {
            let Some(address) = addresses.get(node) else {
                return false;
            };
            let Ok(mut client) = self.host.connections().client(*node, &address.internal) else {
                return false;
            };
            let mut request = tonic::Request::new(GroupStateRequest {
                group_id: plan.group,
                target_node_id: *node,
                cluster_id: cluster_id.clone(),
            });
            request.set_timeout(GROUP_STATE_TIMEOUT);
            match client.group_state(request).await {
                Ok(answer) if !answer.get_ref().holds_state => {}
                Ok(_) => {
                    // This replica is new to the group (the group moved here, or this
                    // node lost its data): the group's leader adds it.
                    tracing::info!(
                        group = plan.group,
                        node,
                        "this node is the group's first replica but holds none of it, while \
                         node {node} does: it waits to be added by the group's leader"
                    );
                    return false;
                }
                // Not running the replica yet, or not reachable: ask again next round.
                Err(_) => return false,
            }
        }
        true
    }
}
