//! One node's replica of one Raft group: the openraft instance, its write batcher and
//! applied state, and the operations the gRPC front end needs (write, linearizable read,
//! status, membership). The node's shared parts (store, connections, Raft service) are its
//! [`Host`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, Fatal, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};

use raftq_core::{Command, GroupId};
use raftq_proto::raft_pb::raft_service_server::{RaftService, RaftServiceServer};
use raftq_store::{LogStore, Node, NodeId, SharedState, StateMachineStore, TypeConfig};

use crate::ClusterError;
use crate::batcher::{PROPOSAL_QUEUE, Proposal, Proposer, WriteResult, run_batcher};
use crate::host::Host;
use crate::log_growth::LogGrowth;
use crate::network::Network;
use crate::raft::{Raft, client_write_result, stopped};
use crate::registry::Served;
use crate::standing::{self, VoteRight};
use crate::status::{MemberStatus, Role};
use crate::tuning::NodeConfig;

#[derive(Clone)]
pub struct RaftNode {
    host: Host,
    group: GroupId,
    raft: Raft,
    /// Whether this replica may vote (see `standing`).
    vote: VoteRight,
    shared: SharedState,
    proposer: Proposer,
    proposals: mpsc::Sender<Proposal>,
    log_growth: Arc<LogGrowth>,
}

impl RaftNode {
    /// Opens the node's RocksDB under `data_dir` and starts its replica of group 1, which
    /// recovers its log, vote and newest snapshot from disk.
    pub async fn start(config: NodeConfig) -> Result<RaftNode, ClusterError> {
        Host::open(config)?.start_replica(1).await
    }

    /// See [`Host::start_replica`].
    pub(crate) async fn start_replica(
        host: Host,
        group: GroupId,
    ) -> Result<RaftNode, ClusterError> {
        let db = host.db().clone();
        let log_store = LogStore::new(db.clone(), group).map_err(stopped)?;
        let vote = host.standing().vote_right(group, &log_store)?;
        let state_machine = StateMachineStore::open(db, group).map_err(stopped)?;
        let shared = state_machine.shared();
        let config = host.config();
        let tuning = &config.tuning;
        let raft_config = openraft::Config {
            cluster_name: "raftq".to_string(),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_min_ms,
            election_timeout_max: tuning.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every_entries),
            max_in_snapshot_log_to_keep: tuning.keep_entries_after_snapshot,
            enable_elect: vote.may_vote(),
            // A leader that restarts must win an election again, as in plain Raft: the
            // commit pointer is not synced and the state machine is rebuilt from the log, so
            // a leader restored at once could serve reads (and answer retries) from a
            // commit point older than writes it had acknowledged before it lost power.
            enable_leader_restore: Some(false),
            // A follower whose log is behind what the leader last saw it hold lost its
            // data: replicate to it from the start instead of retrying the same entries.
            allow_log_reversion: Some(true),
            ..openraft::Config::default()
        }
        .validate()
        .map_err(stopped)?;
        let network = Network {
            group,
            standing: host.standing().clone(),
            connections: host.connections().clone(),
        };
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            network,
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(stopped)?;
        let proposer = Proposer::new(
            raft.clone(),
            shared.clone(),
            Duration::from_millis(tuning.write_timeout_ms),
            tuning.max_clock_skew_ms,
        );
        let (proposals, queued) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_batcher(proposer.clone(), queued));
        let log_growth = Arc::new(LogGrowth::new(
            log_store.clone(),
            tuning.snapshot_every_bytes,
        ));
        // Ends once the replica may vote, or when Raft stops.
        tokio::spawn(standing::earn_vote(
            raft.clone(),
            log_store,
            config.node_id,
            vote.clone(),
        ));
        // Ends once the node belongs to a cluster, or when Raft stops.
        tokio::spawn(standing::name_old_cluster(
            raft.clone(),
            host.standing().clone(),
        ));
        host.registry().insert(
            group,
            Served {
                raft: raft.clone(),
                vote: vote.clone(),
            },
        );
        Ok(RaftNode {
            host,
            group,
            vote,
            raft,
            shared,
            proposer,
            proposals,
            log_growth,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config().node_id
    }

    /// The group this is a replica of.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The node this replica runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    fn config(&self) -> &NodeConfig {
        self.host.config()
    }

    /// See [`Host::raft_service`].
    pub fn raft_service(
        &self,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> RaftServiceServer<impl RaftService> {
        self.host.raft_service(stopping)
    }

    /// What the node's RocksDB holds in memory.
    pub fn storage_memory(&self) -> raftq_store::StorageMemory {
        self.host.storage_memory()
    }

    /// The replicated queue state as applied on this node.
    pub fn state(&self) -> &SharedState {
        &self.shared
    }

    /// Now, as the log sees it: the time a command proposed at this moment would carry
    /// (see `clock`). The one clock every time-based decision of the services reads, so
    /// that what they expect matches what the state machine will do.
    pub fn log_time_ms(&self) -> u64 {
        let log_now_ms = self.shared.read().now_ms();
        self.proposer.log_time(log_now_ms)
    }

    /// Whether this node holds any Raft state (a vote, a log, a membership): false on a
    /// node that started on an empty data directory and has heard from no leader yet.
    pub async fn holds_raft_state(&self) -> Result<bool, ClusterError> {
        holds_raft_state(&self.raft).await
    }

    /// Forms a new cluster with this node as its only voter, unless this node already holds
    /// Raft state. Other nodes join it afterwards as learners and become voters once they
    /// have caught up: a node on an empty data directory never votes before that (see
    /// `standing`), so a cluster cannot be formed by electing among several of them.
    pub async fn initialize(&self) -> Result<bool, ClusterError> {
        if self.holds_raft_state().await? {
            return Ok(false);
        }
        // The founder names the cluster, and its log is the whole log: it may vote from the
        // first entry on.
        self.vote.found(&self.raft).map_err(stopped)?;
        let nodes = BTreeMap::from([(self.node_id(), self.config().addresses.clone())]);
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(error)) => {
                tracing::info!(%error, "cluster already initialized");
                Ok(false)
            }
            Err(RaftError::Fatal(fatal)) => Err(stopped(fatal)),
        }
    }

    /// Stamps log time (see `clock`) on `command`, replicates it to a quorum and returns
    /// the state machine's outcome. Writes arriving together share log entries (see
    /// `batcher`).
    pub async fn write(&self, command: Command) -> WriteResult {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal {
                command,
                reply,
                queued: std::time::Instant::now(),
            })
            .await
            .map_err(|_| stopped("the write batcher has stopped"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(ClusterError::internal("the write batcher dropped a write")))
    }

    /// On the leader, writes a [`Command::Tick`] when some queue has timed work due (an
    /// expiry, an ended lease or delay), so it happens without other traffic. Returns
    /// whether a tick was written.
    pub async fn tick_if_due(&self) -> Result<bool, ClusterError> {
        if !self.is_leader() {
            return Ok(false);
        }
        let due = {
            let state = self.shared.read();
            state.has_due_work(self.proposer.log_time(state.now_ms()))
        };
        if !due {
            return Ok(false);
        }
        self.write(Command::Tick)
            .await?
            .map_err(|error| ClusterError::internal(format!("a tick was refused: {error}")))?;
        Ok(true)
    }

    /// Asks Raft for a snapshot when the log grew by `[raft] snapshot_every_bytes` since the
    /// last one (see `log_growth`). Returns whether it asked.
    pub async fn snapshot_if_log_grew(&self) -> Result<bool, ClusterError> {
        let snapshot = self
            .raft
            .metrics()
            .borrow_watched()
            .snapshot
            .map(|log_id| log_id.index);
        if !self.log_growth.snapshot_due(snapshot) {
            return Ok(false);
        }
        tracing::info!(
            "the log grew past snapshot_every_bytes since the last snapshot: taking one"
        );
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|error| ClusterError::internal(format!("asking for a snapshot: {error}")))?;
        Ok(true)
    }

    /// Waits until this node (the leader) has applied everything committed before the call,
    /// confirmed by a quorum: reads after this see every acknowledged write.
    pub async fn linearizable_read(&self) -> Result<(), ClusterError> {
        let timeout = Duration::from_millis(self.config().tuning.write_timeout_ms);
        let read = tokio::time::timeout(
            timeout,
            self.raft.ensure_linearizable(ReadPolicy::ReadIndex),
        )
        .await
        .map_err(|_| ClusterError::NoQuorum {
            reason: format!(
                "no quorum confirmed leadership within {} ms",
                timeout.as_millis()
            ),
        })?;
        match read {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                Err(ClusterError::NotLeader {
                    leader_id: forward.leader_id,
                    leader_address: forward.leader_node.map(|node| node.public),
                })
            }
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(error))) => {
                Err(ClusterError::NoQuorum {
                    reason: error.to_string(),
                })
            }
            Err(RaftError::Fatal(fatal)) => Err(stopped(fatal)),
        }
    }

    /// The leader this node currently knows, with its public address (for clients).
    pub fn leader(&self) -> Option<(NodeId, String)> {
        self.leader_node()
            .map(|(leader, node)| (leader, node.public))
    }

    /// The leader this node currently knows, with both its addresses.
    pub fn leader_node(&self) -> Option<(NodeId, Node)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let node = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .clone();
        Some((leader, node))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.is_leader()
    }

    /// Whether a quorum acknowledged this node as leader within `within` (false on a
    /// follower, and on a leader cut off from the others, which still thinks it leads).
    pub fn quorum_acked_within(&self, within: Duration) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .last_quorum_acked
            .as_ref()
            .is_some_and(|acked| openraft::Instant::elapsed(&**acked) <= within)
    }

    pub fn status(&self) -> MemberStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| (*id, (node.clone(), voters.contains(id))))
            .collect();
        let role = match metrics.state {
            ServerState::Leader => Role::Leader,
            ServerState::Follower => Role::Follower,
            ServerState::Candidate => Role::Candidate,
            ServerState::Learner => Role::Learner,
            ServerState::Shutdown => Role::Shutdown,
        };
        let index = |log_id: Option<raftq_store::LogId>| log_id.map_or(0, |log_id| log_id.index);
        MemberStatus {
            group: self.group,
            node_id: self.node_id(),
            addresses: self.config().addresses.clone(),
            role,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: index(metrics.local_committed),
            applied_index: index(metrics.last_applied),
            purged_index: index(metrics.purged),
            snapshot_index: index(metrics.snapshot),
            leader_id: metrics.current_leader,
            voter: voters.contains(&self.node_id()),
            rebuilding: !self.vote.may_vote(),
            cluster_id: self.host.cluster_id(),
            members,
        }
    }

    /// Adds a node as a learner, waits until it has caught up, then (if `promote`) makes it
    /// a voter. A member that `lost_data` is removed first, then added as a new learner:
    /// the entries it acknowledged as that member are gone from its disk.
    pub async fn add_node(
        &self,
        node_id: NodeId,
        address: Node,
        promote: bool,
        lost_data: bool,
    ) -> Result<(), ClusterError> {
        let known = self.status().members.get(&node_id).cloned();
        if lost_data && known.is_some() {
            // Removed altogether, not only made a learner: the leader's replication
            // progress for the node says it holds entries it no longer has, and openraft
            // never looks below what a follower once matched. Added again, it is a new
            // learner that is sent the log (or a snapshot) from the start.
            tracing::warn!(
                node_id,
                "node lost its data: removed, and added again as a learner until it has caught up"
            );
            self.remove_node(node_id).await?;
        } else if known.is_some_and(|(known, voter)| known == address && (voter || !promote)) {
            // A node that restarts asks to join again; when it already is what it asks to
            // be, nothing changes.
            return Ok(());
        }
        self.change(self.raft.add_learner(node_id, address, true).await)?;
        if promote {
            let voters = BTreeSet::from([node_id]);
            self.change(
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(voters), false)
                    .await,
            )?;
        }
        Ok(())
    }

    /// Waits until Raft stops on an error of its own (a storage error: a disk that fails, or
    /// returns damaged data) and returns that error. Pending for as long as Raft runs, and
    /// for ever once it was shut down on purpose.
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        let reason = loop {
            let failure = match &metrics.borrow_watched().running_state {
                Ok(()) => None,
                Err(Fatal::Stopped) => break None,
                Err(fatal) => Some(fatal.to_string()),
            };
            if failure.is_some() {
                break failure;
            }
            if metrics.changed().await.is_err() && metrics.borrow_watched().running_state.is_ok() {
                // The Raft core ended without saying why: only a panic does that.
                break Some("the Raft core ended unexpectedly".to_string());
            }
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// The cluster this node belongs to; `None` until it formed or joined one.
    pub fn cluster_id(&self) -> Option<String> {
        self.host.cluster_id()
    }

    /// Refuses a node of another cluster (its cluster id, empty when it belongs to none yet).
    pub fn check_cluster(&self, theirs: &str) -> Result<(), ClusterError> {
        self.host.check_cluster(theirs)
    }

    /// Records (synced) that this node belongs to cluster `id`, as the leader answered its
    /// join; refused when it already belongs to another.
    pub fn join_cluster(&self, id: &str) -> Result<(), ClusterError> {
        self.host.join_cluster(id)
    }

    /// Removes a node from the voters and from the membership altogether.
    pub async fn remove_node(&self, node_id: NodeId) -> Result<(), ClusterError> {
        let ids = BTreeSet::from([node_id]);
        let status = self.status();
        if status
            .members
            .get(&node_id)
            .is_some_and(|(_, voter)| *voter)
        {
            self.change(
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(ids.clone()), false)
                    .await,
            )?;
        }
        if self.status().members.contains_key(&node_id) {
            self.change(
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await,
            )?;
        }
        Ok(())
    }

    fn change<T>(
        &self,
        result: Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
    ) -> Result<T, ClusterError> {
        client_write_result(result)
    }

    /// On the leader: names the voter whose log is furthest along as the next leader and
    /// waits, at most `within`, until another node leads. Lets a node that is about to stop
    /// hand over at once instead of leaving the cluster leaderless for an election timeout.
    /// Returns the new leader, or `None` when this node was not the leader or nobody took
    /// over in time.
    pub async fn hand_over_leadership(&self, within: Duration) -> Option<NodeId> {
        let me = self.node_id();
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(me) {
            return None;
        }
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        // A voter that has stopped answering heartbeats (it is stopping too, say: every
        // node of a cluster stopped at once) cannot take over.
        let alive = Duration::from_millis(self.config().tuning.election_timeout_min_ms);
        let successor = metrics
            .replication
            .as_ref()?
            .iter()
            .filter(|(id, _)| **id != me && voters.contains(id))
            .filter(|(id, _)| answered_within(&metrics, **id, alive))
            .max_by_key(|(_, matched)| matched.map(|log_id| log_id.index))
            .map(|(id, _)| *id);
        let Some(successor) = successor else {
            tracing::info!("no voter is answering; stopping without a handover");
            return None;
        };
        tracing::info!(successor, "handing leadership over");
        if let Err(error) = self.raft.trigger().transfer_leader(successor).await {
            tracing::warn!(%error, "leadership transfer");
            return None;
        }
        // Wait for another leader, but not for a successor that stops answering.
        let deadline = tokio::time::Instant::now() + within;
        let step = Duration::from_millis(self.config().tuning.heartbeat_ms.max(10));
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                tracing::warn!("no other node took over leadership in time");
                return None;
            }
            match self
                .raft
                .wait(Some(step.min(left)))
                .metrics(
                    |metrics| metrics.current_leader.is_some_and(|leader| leader != me),
                    "another node leads",
                )
                .await
            {
                Ok(metrics) => {
                    tracing::info!(leader = ?metrics.current_leader, "leadership handed over");
                    return metrics.current_leader;
                }
                Err(_) => {
                    let metrics = self.raft.metrics().borrow_watched().clone();
                    if metrics.current_leader == Some(me)
                        && !answered_within(&metrics, successor, alive)
                    {
                        tracing::warn!(successor, "the successor stopped answering; no handover");
                        return None;
                    }
                }
            }
        }
    }

    /// On the leader: hands leadership to `to` when it is a voter that answered a
    /// heartbeat within the last election timeout and holds every entry this leader has;
    /// returns whether it asked. The transfer itself completes (or not) on its own: `to`
    /// stands for election once its log is current.
    pub async fn transfer_if_ready(&self, to: NodeId) -> Result<bool, ClusterError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(self.node_id()) || to == self.node_id() {
            return Ok(false);
        }
        let voter = metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == to);
        let alive = Duration::from_millis(self.config().tuning.election_timeout_min_ms);
        let caught_up = metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&to).cloned().flatten())
            .is_some_and(|matched| Some(matched.index) >= metrics.last_log_index);
        if !(voter && caught_up && answered_within(&metrics, to, alive)) {
            return Ok(false);
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|error| ClusterError::internal(format!("leadership transfer: {error}")))?;
        Ok(true)
    }

    /// The newest membership this replica knows.
    pub fn membership_view(&self) -> MembershipView {
        membership_view(&self.raft)
    }

    /// Stops this replica; the node serves the group no more.
    pub async fn shutdown(&self) {
        self.host.registry().remove(self.group);
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
    }
}

/// Whether `raft` holds any Raft state: a vote, a log, a membership.
pub(crate) async fn holds_raft_state(raft: &Raft) -> Result<bool, ClusterError> {
    let metrics = raft.metrics().borrow_watched().clone();
    Ok(metrics.current_term > 0
        || metrics.last_log_index.is_some()
        || raft.is_initialized().await.map_err(stopped)?)
}

/// The newest membership a replica knows: see [`membership_view`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembershipView {
    /// Its members, voters and learners.
    pub members: BTreeSet<NodeId>,
    /// Whether it is committed: its entry is at or below the committed index. A committed
    /// membership holds for the whole group, whichever replica reports it.
    pub committed: bool,
    /// The log index of its entry (0 when there is none): of two memberships, the one
    /// with the higher index is the newer.
    pub index: u64,
}

/// The newest membership `raft` knows.
pub(crate) fn membership_view(raft: &Raft) -> MembershipView {
    let metrics = raft.metrics().borrow_watched().clone();
    let config = &metrics.membership_config;
    let index = config.log_id().as_ref().map_or(0, |entry| entry.index);
    let committed = config.log_id().is_some()
        && metrics
            .local_committed
            .as_ref()
            .is_some_and(|committed| committed.index >= index);
    MembershipView {
        members: config.membership().nodes().map(|(id, _)| *id).collect(),
        committed,
        index,
    }
}

/// Whether `node` answered one of this leader's heartbeats within `within`.
fn answered_within(
    metrics: &openraft::RaftMetrics<TypeConfig>,
    node: NodeId,
    within: Duration,
) -> bool {
    use openraft::async_runtime::Instant as _;
    metrics
        .heartbeat
        .as_ref()
        .and_then(|heartbeats| heartbeats.get(&node).cloned().flatten())
        .is_some_and(|at| at.elapsed() < within)
}
