//! One node of one Raft group: storage, openraft instance, transport service, and the
//! operations the gRPC front end needs (write, linearizable read, status, membership).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, mpsc, oneshot};

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{
    ChangeMembershipError, ClientWriteError, Fatal, LinearizableReadError, RaftError,
};
use openraft::{ChangeMembers, ReadPolicy, ServerState, SnapshotPolicy};

use raftq_core::{Command, GroupId, Outcome, QueueError, Request};
use raftq_proto::raft_pb::raft_service_server::RaftServiceServer;
use raftq_store::{
    Applied, Db, LogStore, Node, NodeId, OpenOptions, SharedState, StateMachineStore, TypeConfig,
};

use crate::network::Network;
use crate::service::RaftGrpc;
use crate::standing::{self, Standing};
use crate::{ClusterError, MAX_RAFT_MESSAGE_BYTES};

pub(crate) type Raft = openraft::Raft<TypeConfig, StateMachineStore>;

/// Raft timing and log-compaction knobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (so slightly lagging followers need no snapshot).
    pub keep_entries_after_snapshot: u64,
    /// A write not committed within this time fails with UNAVAILABLE (outcome unknown).
    pub write_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_every_entries: 20_000,
            keep_entries_after_snapshot: 1_000,
            write_timeout_ms: 5_000,
        }
    }
}

/// The memory RocksDB may use whatever the backlog: its write buffers and its block cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTuning {
    /// Write buffers across all column families, MiB; flushed to table files when full.
    pub write_buffer_mib: u64,
    /// The block cache shared by every column family (index and filter blocks included), MiB.
    pub block_cache_mib: u64,
}

impl StorageTuning {
    /// Smallest write buffers: below this RocksDB flushes tiny table files all the time.
    pub const MIN_WRITE_BUFFER_MIB: u64 = 4;
    /// Largest value either setting takes (1 TiB).
    pub const MAX_MIB: u64 = 1 << 20;

    /// Why these settings cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let range = |name: &str, value: u64, min: u64| {
            if (min..=Self::MAX_MIB).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be in {min}..={}, not {value}",
                    Self::MAX_MIB
                ))
            }
        };
        range(
            "write_buffer_mib",
            self.write_buffer_mib,
            Self::MIN_WRITE_BUFFER_MIB,
        )?;
        range("block_cache_mib", self.block_cache_mib, 1)
    }

    fn open_options(&self) -> OpenOptions {
        let bytes = |mib: u64| usize::try_from(mib << 20).unwrap_or(usize::MAX);
        OpenOptions {
            write_buffer_bytes: bytes(self.write_buffer_mib),
            block_cache_bytes: bytes(self.block_cache_mib),
        }
    }
}

impl Default for StorageTuning {
    fn default() -> Self {
        let defaults = OpenOptions::default();
        StorageTuning {
            write_buffer_mib: (defaults.write_buffer_bytes >> 20) as u64,
            block_cache_mib: (defaults.block_cache_bytes >> 20) as u64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// The gRPC address other nodes and clients reach this node at.
    pub advertise_address: String,
    pub data_dir: PathBuf,
    pub group: GroupId,
    pub tuning: RaftTuning,
    pub storage: StorageTuning,
}

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
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

/// What one node reports about itself.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub node_id: NodeId,
    pub address: String,
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
    pub members: BTreeMap<NodeId, (String, bool)>,
}

#[derive(Clone)]
pub struct RaftNode {
    raft: Raft,
    /// Whether this node may vote (see `standing`).
    standing: Standing,
    db: Db,
    shared: SharedState,
    config: Arc<NodeConfig>,
    proposer: Proposer,
    proposals: mpsc::Sender<Proposal>,
}

/// Most commands in one batched log entry.
const MAX_BATCH_COMMANDS: usize = 256;
/// A batch takes no more commands once it holds about this many bytes.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Batched entries being committed at once. While all are in flight, new writes wait in
/// the queue and then go into the next entry together: batches grow with the load.
const MAX_IN_FLIGHT_BATCHES: usize = 8;
/// Writes waiting to be batched; callers wait while it is full.
const PROPOSAL_QUEUE: usize = 8_192;

type WriteResult = Result<Result<Outcome, QueueError>, ClusterError>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<WriteResult>,
    /// When the write was queued, for the time it waits to be proposed.
    queued: std::time::Instant,
}

/// What proposing a log entry needs: the Raft handle, the applied state (for log time)
/// and the clock.
#[derive(Clone)]
struct Proposer {
    raft: Raft,
    shared: SharedState,
    clock: Arc<LogClock>,
    write_timeout: Duration,
}

impl Proposer {
    /// Stamps the leader's time on `command`, replicates it to a quorum and returns the
    /// state machine's outcome, with the bodies of any deliveries not read yet (see
    /// `with_bodies`).
    async fn propose(&self, command: Command) -> WriteResult {
        let log_now_ms = self.shared.read().now_ms();
        let request = Request {
            now_ms: self.clock.stamp(log_now_ms, wall_clock_ms()),
            command,
        };
        let timeout = self.write_timeout;
        let started = std::time::Instant::now();
        let written = tokio::time::timeout(timeout, self.raft.client_write(request)).await;
        // From proposing an entry to its outcome (a quorum's fsync, then apply), or to the
        // time limit; a node that is not the leader refuses at once and is not counted.
        if !matches!(
            written,
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(
                _
            ))))
        ) {
            metrics::histogram!("raftq_raft_write_seconds").record(started.elapsed().as_secs_f64());
        }
        let written = written.map_err(|_| ClusterError::NoQuorum {
            reason: format!(
                "write not committed within {} ms; outcome unknown",
                timeout.as_millis()
            ),
        })?;
        match client_write_result(written)?.data {
            Applied::Queue(outcome) => Ok(*outcome),
            Applied::Internal => Err(stopped("a queue command produced no outcome")),
        }
    }

    /// Reads the bodies of the messages each outcome delivers, on a blocking thread (see
    /// `SharedState::fill_bodies` and `read_bodies`). At most `MAX_IN_FLIGHT_BATCHES` reads
    /// run at once, as each holds its batch's slot.
    async fn with_bodies(&self, outcomes: Vec<Result<Outcome, QueueError>>) -> Vec<WriteResult> {
        if !outcomes.iter().any(SharedState::needs_bodies) {
            return outcomes.into_iter().map(Ok).collect();
        }
        let count = outcomes.len();
        let shared = self.shared.clone();
        match tokio::task::spawn_blocking(move || read_bodies(&shared, outcomes)).await {
            Ok(answers) => answers,
            // The read panicked and took the outcomes with it: every command of the entry
            // is answered with the error (a bug, not a missing body).
            Err(error) => (0..count).map(|_| Err(unreadable(&error))).collect(),
        }
    }

    /// Proposes the commands of `batch` as one entry (a single command as itself) and
    /// answers each caller with its own command's result.
    async fn propose_batch(&self, mut batch: Vec<Proposal>) {
        metrics::histogram!("raftq_write_batch_commands").record(batch.len() as f64);
        let waited = metrics::histogram!("raftq_write_queue_seconds");
        for proposal in &batch {
            waited.record(proposal.queued.elapsed().as_secs_f64());
        }
        if batch.len() == 1 {
            let proposal = batch.remove(0);
            let answer = match self.propose(proposal.command).await {
                Ok(outcome) => self
                    .with_bodies(vec![outcome])
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(stopped("a command got no answer"))),
                Err(error) => Err(error),
            };
            let _ = proposal.reply.send(answer);
            return;
        }
        let (commands, replies) = splice(batch);
        let count = commands.len();
        match self.propose(Command::Batch(commands)).await {
            Ok(Ok(Outcome::Batch(results))) if results.len() == count => {
                answer_spliced(replies, self.with_bodies(results).await);
            }
            Ok(Ok(other)) => {
                let error = stopped(format!("a batch of {count} gave {other:?}"));
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
            Ok(Err(refused)) => {
                for (reply, _) in replies {
                    let _ = reply.send(Ok(Err(refused.clone())));
                }
            }
            Err(error) => {
                for (reply, _) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Where a caller's answer is in a batched entry's results: its command's, or (`Some(n)`)
/// the `n` results of the batch it wrote, spliced in.
type Reply = (oneshot::Sender<WriteResult>, Option<usize>);

/// The commands of one batched entry, in order. A write that is itself a batch (commands
/// one caller needs in one entry, such as acks and the receive after them) is spliced in,
/// as a batch holds no batch.
fn splice(batch: Vec<Proposal>) -> (Vec<Command>, Vec<Reply>) {
    let mut commands = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for proposal in batch {
        match proposal.command {
            Command::Batch(inner) => {
                replies.push((proposal.reply, Some(inner.len())));
                commands.extend(inner);
            }
            command => {
                replies.push((proposal.reply, None));
                commands.push(command);
            }
        }
    }
    (commands, replies)
}

/// Answers each caller of a batched entry from its results, one per spliced command: a
/// spliced batch gets its commands' outcomes as one `Outcome::Batch` (or the first
/// error reading their bodies).
fn answer_spliced(replies: Vec<Reply>, answers: Vec<WriteResult>) {
    let mut answers = answers.into_iter();
    for (reply, spliced) in replies {
        let answer = match spliced {
            None => answers
                .next()
                .unwrap_or_else(|| Err(stopped("a command got no answer"))),
            Some(len) => answers
                .by_ref()
                .take(len)
                .collect::<Result<Vec<_>, _>>()
                .map(|results| Ok(Outcome::Batch(results))),
        };
        let _ = reply.send(answer);
    }
}

/// Fills in the bodies that each outcome delivers, each on its own: a body that cannot be
/// read fails only the command that delivered it, and the other commands of the entry
/// get their outcomes. Blocks on RocksDB reads.
fn read_bodies(
    shared: &SharedState,
    outcomes: Vec<Result<Outcome, QueueError>>,
) -> Vec<WriteResult> {
    outcomes
        .into_iter()
        .map(|mut outcome| {
            if SharedState::needs_bodies(&outcome) {
                shared
                    .fill_bodies(&mut outcome)
                    .map_err(|error| unreadable(&error))?;
            }
            Ok(outcome)
        })
        .collect()
}

fn unreadable(error: &dyn std::fmt::Display) -> ClusterError {
    ClusterError::Storage {
        reason: format!("reading the bodies of delivered messages: {error}"),
    }
}

/// Takes writes off the queue and proposes them, as many per entry as have queued up
/// while earlier entries were being committed.
async fn run_batcher(proposer: Proposer, mut proposals: mpsc::Receiver<Proposal>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT_BATCHES));
    while let Some(first) = proposals.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.command.approx_bytes();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match proposals.try_recv() {
                Ok(proposal) => {
                    bytes += proposal.command.approx_bytes();
                    batch.push(proposal);
                }
                Err(_) => break,
            }
        }
        let proposer = proposer.clone();
        tokio::spawn(async move {
            proposer.propose_batch(batch).await;
            drop(slot);
        });
    }
}

/// The time a leader stamps on commands: its wall clock, but never less than the log's
/// time advanced by the real time elapsed since this node last saw it move. So when an
/// earlier leader's clock ran ahead, log time neither goes back nor stalls until this
/// node's clock catches up: leases and delays keep expiring at the real rate.
#[derive(Default)]
struct LogClock {
    /// Largest log time seen, and when (monotonic) it was seen.
    anchor: std::sync::Mutex<(u64, Option<std::time::Instant>)>,
}

impl LogClock {
    fn stamp(&self, log_now_ms: u64, wall_ms: u64) -> u64 {
        let mut anchor = self
            .anchor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if log_now_ms > anchor.0 || anchor.1.is_none() {
            *anchor = (log_now_ms.max(anchor.0), Some(std::time::Instant::now()));
        }
        let elapsed = anchor.1.map_or(0, |seen| seen.elapsed().as_millis() as u64);
        wall_ms.max(anchor.0 + elapsed)
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

fn stopped(error: impl std::fmt::Display) -> ClusterError {
    ClusterError::Stopped {
        reason: error.to_string(),
    }
}

impl RaftNode {
    /// Opens the node's RocksDB under `data_dir` and starts its Raft instance. The node
    /// recovers its log, vote and newest snapshot from disk.
    pub async fn start(config: NodeConfig) -> Result<RaftNode, ClusterError> {
        std::fs::create_dir_all(&config.data_dir).map_err(stopped)?;
        config.storage.check().map_err(stopped)?;
        let db = Db::open(&config.data_dir, &config.storage.open_options()).map_err(stopped)?;
        let log_store = LogStore::new(db.clone(), config.group).map_err(stopped)?;
        let standing = standing::settle(&db, &log_store, config.node_id)?;
        let state_machine = StateMachineStore::open(db.clone(), config.group).map_err(stopped)?;
        let shared = state_machine.shared();
        let tuning = &config.tuning;
        let raft_config = openraft::Config {
            cluster_name: "raftq".to_string(),
            heartbeat_interval: tuning.heartbeat_ms,
            election_timeout_min: tuning.election_timeout_min_ms,
            election_timeout_max: tuning.election_timeout_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(tuning.snapshot_every_entries),
            max_in_snapshot_log_to_keep: tuning.keep_entries_after_snapshot,
            enable_elect: standing.may_vote(),
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
            group: config.group,
            standing: standing.clone(),
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
        let proposer = Proposer {
            raft: raft.clone(),
            shared: shared.clone(),
            clock: Arc::new(LogClock::default()),
            write_timeout: Duration::from_millis(config.tuning.write_timeout_ms),
        };
        let (proposals, queued) = mpsc::channel(PROPOSAL_QUEUE);
        tokio::spawn(run_batcher(proposer.clone(), queued));
        // Ends once the node may vote, or when Raft stops.
        tokio::spawn(standing::earn_vote(
            raft.clone(),
            log_store,
            config.node_id,
            standing.clone(),
        ));
        // Ends once the node belongs to a cluster, or when Raft stops.
        tokio::spawn(standing::name_old_cluster(raft.clone(), standing.clone()));
        Ok(RaftNode {
            standing,
            raft,
            db,
            shared,
            config: Arc::new(config),
            proposer,
            proposals,
        })
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The gRPC service peers use to reach this node's Raft. Its replication streams end
    /// once `stopping` turns true (they would otherwise keep the server from finishing).
    pub fn raft_service(
        &self,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> RaftServiceServer<impl raftq_proto::raft_pb::raft_service_server::RaftService> {
        RaftServiceServer::new(RaftGrpc {
            raft: self.raft.clone(),
            node_id: self.config.node_id,
            group: self.config.group,
            standing: self.standing.clone(),
            snapshot_dir: self.config.data_dir.join("snapshots"),
            stopping,
        })
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }

    /// What the node's RocksDB holds in memory.
    pub fn storage_memory(&self) -> raftq_store::StorageMemory {
        self.db.memory()
    }

    /// The replicated queue state as applied on this node.
    pub fn state(&self) -> &SharedState {
        &self.shared
    }

    /// Whether this node holds any Raft state (a vote, a log, a membership): false on a
    /// node that started on an empty data directory and has heard from no leader yet.
    pub async fn holds_raft_state(&self) -> Result<bool, ClusterError> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        Ok(metrics.current_term > 0
            || metrics.last_log_index.is_some()
            || self.raft.is_initialized().await.map_err(stopped)?)
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
        self.standing.found(&self.raft).map_err(stopped)?;
        let nodes = BTreeMap::from([(
            self.config.node_id,
            Node {
                addr: self.config.advertise_address.clone(),
            },
        )]);
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(error)) => {
                tracing::info!(%error, "cluster already initialized");
                Ok(false)
            }
            Err(RaftError::Fatal(fatal)) => Err(stopped(fatal)),
        }
    }

    /// Stamps the leader's wall-clock time on `command`, replicates it to a quorum and
    /// returns the state machine's outcome. Writes arriving together share log entries.
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
            .unwrap_or_else(|_| Err(stopped("the write batcher dropped a write")))
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
            state.has_due_work(self.proposer.clock.stamp(state.now_ms(), wall_clock_ms()))
        };
        if !due {
            return Ok(false);
        }
        self.write(Command::Tick)
            .await?
            .map_err(|error| stopped(format!("a tick was refused: {error}")))?;
        Ok(true)
    }

    /// Waits until this node (the leader) has applied everything committed before the call,
    /// confirmed by a quorum: reads after this see every acknowledged write.
    pub async fn linearizable_read(&self) -> Result<(), ClusterError> {
        let timeout = Duration::from_millis(self.config.tuning.write_timeout_ms);
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
                    leader_address: forward.leader_node.map(|node| node.addr),
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

    /// The leader this node currently knows, with its address.
    pub fn leader(&self) -> Option<(NodeId, String)> {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let leader = metrics.current_leader?;
        let address = metrics
            .membership_config
            .membership()
            .get_node(&leader)?
            .addr
            .clone();
        Some((leader, address))
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
            .map(|(id, node)| (*id, (node.addr.clone(), voters.contains(id))))
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
            node_id: self.config.node_id,
            address: self.config.advertise_address.clone(),
            role,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed_index: index(metrics.local_committed),
            applied_index: index(metrics.last_applied),
            purged_index: index(metrics.purged),
            snapshot_index: index(metrics.snapshot),
            leader_id: metrics.current_leader,
            voter: voters.contains(&self.config.node_id),
            rebuilding: !self.standing.may_vote(),
            cluster_id: self.standing.cluster_id(),
            members,
        }
    }

    /// Adds a node as a learner, waits until it has caught up, then (if `promote`) makes it
    /// a voter. A member that `lost_data` is removed first, then added as a new learner:
    /// the entries it acknowledged as that member are gone from its disk.
    pub async fn add_node(
        &self,
        node_id: NodeId,
        address: String,
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
        self.change(
            self.raft
                .add_learner(node_id, Node { addr: address }, true)
                .await,
        )?;
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

    /// Refuses a node of another cluster (its cluster id, empty when it belongs to none yet).
    pub fn check_cluster(&self, theirs: &str) -> Result<(), ClusterError> {
        self.standing.check_cluster(theirs)
    }

    /// Records (synced) that this node belongs to cluster `id`, as the leader answered its
    /// join; refused when it already belongs to another.
    pub fn join_cluster(&self, id: &str) -> Result<(), ClusterError> {
        self.standing.join(id)
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
        let me = self.config.node_id;
        let metrics = self.raft.metrics().borrow_watched().clone();
        if metrics.current_leader != Some(me) {
            return None;
        }
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        // A voter that has stopped answering heartbeats (it is stopping too, say: every
        // node of a cluster stopped at once) cannot take over.
        let alive = Duration::from_millis(self.config.tuning.election_timeout_min_ms);
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
        let step = Duration::from_millis(self.config.tuning.heartbeat_ms.max(10));
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

    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
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

fn client_write_result<T>(
    result: Result<T, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>,
) -> Result<T, ClusterError> {
    match result {
        Ok(value) => Ok(value),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Err(ClusterError::NotLeader {
                leader_id: forward.leader_id,
                leader_address: forward.leader_node.map(|node| node.addr),
            })
        }
        Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
            Err(ClusterError::OutcomeUnknown)
        }
        // Two nodes joining at once: the second change waits for the first to commit.
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
            ChangeMembershipError::InProgress(in_progress),
        ))) => Err(ClusterError::MembershipBusy {
            reason: in_progress.to_string(),
        }),
        Err(RaftError::APIError(error)) => Err(ClusterError::Membership {
            reason: error.to_string(),
        }),
        Err(RaftError::Fatal(fatal)) => Err(stopped(fatal)),
    }
}

#[cfg(test)]
mod tests {
    use super::LogClock;

    use std::collections::BTreeMap;

    use futures::stream;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use raftq_core::{
        Command, Delivery, NewMessage, Outcome, QueueError, QueueOptions, Receipt, Request,
    };
    use raftq_store::{Db, Entry, OpenOptions, SharedState, StateMachineStore};

    use super::read_bodies;
    use crate::ClusterError;

    fn entry(index: u64, command: Command) -> Entry {
        Entry::new_normal(
            openraft::LogId::new(
                openraft::impls::leader_id_adv::LeaderId {
                    term: 1,
                    node_id: 1,
                },
                index,
            ),
            Request {
                now_ms: 1_000 + index,
                command,
            },
        )
    }

    /// A delivery of `message_id` as apply leaves it: its body (`len` bytes under key
    /// `message_id`) still to be read.
    fn unread(message_id: u64, len: u64) -> Delivery {
        Delivery {
            message_id,
            sequence: message_id,
            body: Vec::new(),
            body_ref: raftq_core::BodyRef {
                key: message_id,
                len,
            },
            headers: BTreeMap::new(),
            properties: Default::default(),
            group: String::new(),
            priority: 0,
            receipt: Receipt {
                message_id,
                attempt: 1,
            },
            enqueued_at_ms: 0,
            lease_expires_at_ms: 0,
            expires_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_body_that_cannot_be_read_fails_only_the_receive_that_delivered_it() {
        let dir = tempfile::TempDir::new().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db, 1).unwrap();
        let create = Command::CreateQueue {
            name: "q".into(),
            options: QueueOptions::default(),
        };
        let send = Command::Send {
            queue: "q".into(),
            messages: vec![NewMessage {
                body: b"kept".to_vec(),
                ..Default::default()
            }],
        };
        let entries = [entry(1, create), entry(2, send)].map(|e| Ok((e, None)));
        sm.apply(stream::iter(entries)).await.unwrap();
        let shared: SharedState = sm.shared();

        // One entry's outcomes: an ack, a receive of the stored body, a receive of a body
        // that is gone, a refusal.
        let answers = read_bodies(
            &shared,
            vec![
                Ok(Outcome::Acked {
                    already_acked: false,
                }),
                Ok(Outcome::Received(vec![unread(1, 4)])),
                Ok(Outcome::Received(vec![unread(99, 4)])),
                Err(QueueError::QueueNotFound { name: "r".into() }),
            ],
        );
        assert_eq!(answers.len(), 4);
        assert!(matches!(
            answers[0],
            Ok(Ok(Outcome::Acked {
                already_acked: false
            }))
        ));
        match &answers[1] {
            Ok(Ok(Outcome::Received(deliveries))) => assert_eq!(deliveries[0].body, b"kept"),
            other => panic!("the readable receive: {other:?}"),
        }
        assert!(
            matches!(&answers[2], Err(ClusterError::Storage { reason }) if reason.contains("99")),
            "{:?}",
            answers[2]
        );
        assert!(matches!(
            answers[3],
            Ok(Err(QueueError::QueueNotFound { .. }))
        ));
    }

    #[test]
    fn a_batch_written_by_one_caller_is_spliced_into_the_entry_and_answered_whole() {
        let ack = |message_id| Command::Ack {
            queue: "q".into(),
            receipt: Receipt {
                message_id,
                attempt: 1,
            },
        };
        let (proposals, mut answers): (Vec<_>, Vec<_>) =
            [ack(1), Command::Batch(vec![ack(2), ack(3)]), ack(4)]
                .into_iter()
                .map(|command| {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let queued = std::time::Instant::now();
                    (
                        super::Proposal {
                            command,
                            reply,
                            queued,
                        },
                        answer,
                    )
                })
                .unzip();
        let (commands, replies) = super::splice(proposals);
        assert_eq!(commands, [ack(1), ack(2), ack(3), ack(4)]);
        let acked = |already_acked| Ok(Ok(Outcome::Acked { already_acked }));
        super::answer_spliced(
            replies,
            vec![acked(false), acked(true), acked(false), acked(true)],
        );
        let mut answer = |i: usize| answers[i].try_recv().expect("answered").expect("written");
        assert_eq!(
            answer(0),
            Ok(Outcome::Acked {
                already_acked: false
            })
        );
        assert_eq!(
            answer(1),
            Ok(Outcome::Batch(vec![
                Ok(Outcome::Acked {
                    already_acked: true
                }),
                Ok(Outcome::Acked {
                    already_acked: false
                }),
            ]))
        );
        assert_eq!(
            answer(2),
            Ok(Outcome::Acked {
                already_acked: true
            })
        );
    }

    #[test]
    fn stamps_follow_the_wall_clock_when_it_is_ahead_of_log_time() {
        let clock = LogClock::default();
        assert_eq!(clock.stamp(1_000, 5_000), 5_000);
    }

    #[test]
    fn stamps_keep_advancing_from_log_time_when_an_earlier_leader_ran_ahead() {
        let clock = LogClock::default();
        // The log is an hour ahead of this node's wall clock.
        let first = clock.stamp(3_600_000, 1_000);
        assert!(first >= 3_600_000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = clock.stamp(3_600_000, 1_020);
        assert!(
            later >= first + 20,
            "log time advances at the real rate: {first} -> {later}"
        );
    }
}
