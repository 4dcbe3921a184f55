//! Incoming Raft RPCs: decode, check they are meant for this node and group, hand them to
//! openraft, encode the answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{Stream, StreamExt};
use openraft::raft::AppendEntriesRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status, Streaming};

use raftq_core::GroupId;
use raftq_proto::raft_pb::{
    GroupStateRequest, GroupStateResponse, RaftRequest, RaftResponse, SnapshotChunk,
    raft_service_server::RaftService,
};
use raftq_store::{
    IncomingSnapshot, NodeId, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote,
};

use crate::registry::{Registry, Served};
use crate::standing::Standing;
use crate::{ClusterError, lock};

/// Largest snapshot a node accepts over the transport.
const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Encoded bytes (KiB) of streamed append requests a follower holds at once, decoded and
/// waiting for their entries to reach the disk; the stream reads no further until some
/// are answered (and HTTP/2 flow control then holds the leader back). A request larger
/// than this is taken alone.
const STREAM_BUDGET_KIB: usize = 16 * 1024;

/// Streamed answers to a leader's append requests.
type AnswerStream = Pin<Box<dyn Stream<Item = Result<RaftResponse, Status>> + Send + 'static>>;

pub(crate) struct RaftGrpc {
    /// The groups this node serves; a message is routed by its group id.
    pub(crate) registry: Arc<Registry>,
    pub(crate) node_id: NodeId,
    /// The cluster this node belongs to.
    pub(crate) standing: Standing,
    /// Where received snapshots are written (the store's snapshot directory).
    pub(crate) snapshot_dir: std::path::PathBuf,
    /// Turns true when the server stops taking calls: replication streams, which never
    /// end on their own, then end, so that the server can finish.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl RaftGrpc {
    /// The replica a message for `group` goes to, once `check_target` and `check_cluster`
    /// passed; NOT_FOUND when this node serves no replica of `group`.
    fn served(
        &self,
        group: GroupId,
        target: NodeId,
        cluster: &str,
        from_leader: bool,
    ) -> Result<Served, Status> {
        check_target(self.node_id, target)?;
        let served = served_group(&self.registry, group)?;
        check_cluster(&self.standing, cluster, from_leader)?;
        Ok(served)
    }

    /// [`RaftGrpc::served`] for the group, node and cluster `request` names.
    fn served_request(&self, request: &RaftRequest, from_leader: bool) -> Result<Served, Status> {
        self.served(
            request.group_id,
            request.target_node_id,
            &request.cluster_id,
            from_leader,
        )
    }

    /// Refuses to vote, or to stand for election, while this replica's log has not caught
    /// up since it started empty.
    fn check_may_vote(&self, served: &Served, group: GroupId) -> Result<(), Status> {
        if served.vote.may_vote() {
            return Ok(());
        }
        metrics::counter!("raftq_votes_refused_total").increment(1);
        Err(Status::failed_precondition(format!(
            "node {}'s replica of group {group} started empty and is catching up with the \
             leader; it grants no vote until its log has caught up",
            self.node_id
        )))
    }
}

/// Refuses a message meant for another node than `node_id`.
fn check_target(node_id: NodeId, target: NodeId) -> Result<(), Status> {
    if target != node_id {
        // Another node now answers at the address the sender knows for `target`.
        return Err(Status::failed_precondition(format!(
            "this is node {node_id}, not node {target}"
        )));
    }
    Ok(())
}

/// The replica of `group`; NOT_FOUND when this node serves none (the sender takes it as
/// unreachable and backs off: a replica may be placed here before it starts).
fn served_group(registry: &Registry, group: GroupId) -> Result<Served, Status> {
    registry
        .get(group)
        .ok_or_else(|| Status::not_found(format!("raft group {group} is not served here")))
}

/// Refuses a message from a node of another cluster. A leader's message (an append or a
/// snapshot) to a node that belongs to no cluster yet makes it a member of the leader's.
fn check_cluster(standing: &Standing, cluster: &str, from_leader: bool) -> Result<(), Status> {
    let checked = if from_leader {
        standing.join(cluster)
    } else {
        standing.check_cluster(cluster)
    };
    checked.map_err(|error| match error {
        ClusterError::OtherCluster { .. } => {
            metrics::counter!("raftq_foreign_messages_refused_total").increment(1);
            Status::failed_precondition(error.to_string())
        }
        other => Status::unavailable(other.to_string()),
    })
}

/// What a follower keeps for one replication stream: when each request not yet answered
/// arrived, with its share of the byte budget, and why the stream was refused, if it was.
#[derive(Clone, Default)]
struct StreamState {
    pending: Arc<Mutex<VecDeque<(Instant, OwnedSemaphorePermit)>>>,
    refused: Arc<Mutex<Option<Status>>>,
}

impl StreamState {
    fn refuse<T>(&self, status: Status) -> Option<T> {
        *lock(&self.refused) = Some(status);
        None
    }
}

/// The append requests of a replication stream for `group` (the first one's), checked
/// and decoded, each taken only once its bytes fit in the budget. A refused message ends
/// the requests (see `StreamState`); so does one for another group.
///
/// The requests also end when the server stops: the leader never ends its side, and a
/// request stream still open keeps the server from finishing.
fn append_requests(
    (first, incoming): (RaftRequest, Streaming<RaftRequest>),
    (group, node_id, standing): (GroupId, NodeId, Standing),
    state: StreamState,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> impl Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + 'static {
    let budget = Arc::new(Semaphore::new(STREAM_BUDGET_KIB));
    futures::stream::unfold(Some((Some(first), incoming, stopping)), move |open| {
        let (budget, state, standing) = (budget.clone(), state.clone(), standing.clone());
        async move {
            let (first, mut incoming, mut stopping) = open?;
            let message = match first {
                Some(first) => Ok(Some(first)),
                None => tokio::select! {
                    message = incoming.message() => message,
                    _ = stopping.wait_for(|stopping| *stopping) => return None,
                },
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(status) => return state.refuse(status),
            };
            let arrived = Instant::now();
            if message.group_id != group {
                return state.refuse(Status::invalid_argument(format!(
                    "a replication stream of group {group} carried a message of group {}",
                    message.group_id
                )));
            }
            if let Err(status) = check_target(node_id, message.target_node_id)
                .and_then(|()| check_cluster(&standing, &message.cluster_id, true))
            {
                return state.refuse(status);
            }
            let rpc = match decode(&message.payload) {
                Ok(rpc) => rpc,
                Err(status) => return state.refuse(status),
            };
            let kib = (message.payload.len() / 1024).clamp(1, STREAM_BUDGET_KIB);
            // The semaphore is never closed.
            let permit = budget.acquire_many_owned(kib as u32).await.ok()?;
            lock(&state.pending).push_back((arrived, permit));
            Some((rpc, Some((None, incoming, stopping))))
        }
    })
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    raftq_store::codec::decode_within(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

/// One answer, encoded for the wire.
fn answer<T: serde::Serialize>(message: &T) -> Result<RaftResponse, Status> {
    let payload = bincode::serialize(message).map_err(|e| Status::internal(e.to_string()))?;
    Ok(RaftResponse { payload })
}

fn reply<T: serde::Serialize>(message: &T) -> Result<Response<RaftResponse>, Status> {
    answer(message).map(Response::new)
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let served = self.served_request(&request, true)?;
        let rpc = decode(&request.payload)?;
        let response = served
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        // On a follower: from the leader's call arriving to its answer, which openraft gives
        // once the entries it carries (if any: heartbeats and commit updates carry none) are
        // on disk here.
        metrics::histogram!("raftq_append_entries_seconds").record(started.elapsed().as_secs_f64());
        reply(&response)
    }

    type AppendEntriesStreamStream = AnswerStream;

    async fn append_entries_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<AnswerStream>, Status> {
        // The first message names the group the whole stream replicates.
        let mut incoming = request.into_inner();
        let first = incoming
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty replication stream"))?;
        let group = first.group_id;
        let served = self.served_request(&first, true)?;
        let state = StreamState::default();
        let requests = append_requests(
            (first, incoming),
            (group, self.node_id, self.standing.clone()),
            state.clone(),
            self.stopping.clone(),
        );
        // openraft submits each request's entries before earlier ones are on disk and
        // yields the answers in order.
        let answers = Box::pin(served.raft.stream_append(requests));
        let pending = state.pending.clone();
        let answers = answers.map(move |result| {
            if let Some((arrived, _budget)) = lock(&pending).pop_front() {
                metrics::histogram!("raftq_append_entries_seconds")
                    .record(arrived.elapsed().as_secs_f64());
            }
            match result {
                Ok(result) => answer(&result),
                Err(fatal) => Err(Status::unavailable(fatal.to_string())),
            }
        });
        // After the last answer, the reason the requests stopped, if one was refused.
        let refused = futures::stream::once(async move { lock(&state.refused).take() })
            .filter_map(|refused| async move { refused.map(Err) });
        let mut stopping = self.stopping.clone();
        let stopped = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        Ok(Response::new(Box::pin(
            answers.chain(refused).take_until(stopped),
        )))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        let request = request.into_inner();
        let served = self.served_request(&request, false)?;
        self.check_may_vote(&served, request.group_id)?;
        let rpc = decode(&request.payload)?;
        let response = served
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        let request = request.into_inner();
        let served = self.served_request(&request, false)?;
        self.check_may_vote(&served, request.group_id)?;
        let rpc = decode(&request.payload)?;
        let response = served
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    async fn group_state(
        &self,
        request: Request<GroupStateRequest>,
    ) -> Result<Response<GroupStateResponse>, Status> {
        let request = request.into_inner();
        let served = self.served(
            request.group_id,
            request.target_node_id,
            &request.cluster_id,
            false,
        )?;
        let holds_state = crate::node::holds_raft_state(&served.raft)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let view = crate::node::membership_view(&served.raft);
        Ok(Response::new(GroupStateResponse {
            holds_state,
            members: view.members.into_iter().collect(),
            membership_committed: view.committed,
            membership_index: view.index,
            leader: served.raft.is_leader(),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftResponse>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let group = first.group_id;
        let served = self.served(group, first.target_node_id, &first.cluster_id, true)?;
        let (vote, meta, size): (Vote, SnapshotMeta, u64) = decode(&first.header)?;
        if size > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a snapshot of {size} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}"
            )));
        }
        // Written to a file as it arrives: a snapshot holds every stored body and may be far
        // larger than memory.
        let incoming = IncomingSnapshot::create(&self.snapshot_dir, group)
            .map_err(|e| Status::internal(format!("cannot store a snapshot: {e}")))?;
        // A file left behind by a failure here (a panic, a cancelled call) is removed
        // when the node next starts.
        let data = receive_into(incoming, first.data, &mut stream, size).await?;
        metrics::counter!("raftq_snapshots_received_total").increment(1);
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let response = served
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }
}

/// Chunks queued for the thread writing a received snapshot (1 MiB each).
const INCOMING_CHUNKS: usize = 4;

/// Writes the snapshot's chunks to `incoming` until the stream ends; it must carry exactly
/// the announced `size`. The file is written, synced and finished on a blocking thread:
/// syncing gigabytes must not hold up an async worker (and the heartbeats it serves).
async fn receive_into(
    incoming: IncomingSnapshot,
    first: Vec<u8>,
    stream: &mut Streaming<SnapshotChunk>,
    size: u64,
) -> Result<SnapshotData, Status> {
    let store_error = |e: std::io::Error| Status::internal(format!("cannot store a snapshot: {e}"));
    let writer_failed =
        |e: tokio::task::JoinError| Status::internal(format!("the snapshot writer failed: {e}"));
    let (chunks, mut queued) = tokio::sync::mpsc::channel::<Vec<u8>>(INCOMING_CHUNKS);
    let writer = tokio::task::spawn_blocking(move || {
        let mut incoming = incoming;
        while let Some(chunk) = queued.blocking_recv() {
            if let Err(error) = incoming.write(&chunk) {
                incoming.discard();
                return Err(error);
            }
        }
        Ok(incoming)
    });
    let mut received = 0u64;
    let mut chunk = first;
    let streamed = async {
        loop {
            received += chunk.len() as u64;
            if received > size {
                return Err(Status::invalid_argument(format!(
                    "the snapshot is longer than the {size} bytes announced"
                )));
            }
            if chunks.send(chunk).await.is_err() {
                // The writer stopped on an error, which it reports below.
                return Ok(());
            }
            match stream.message().await? {
                Some(next) => chunk = next.data,
                None => break,
            }
        }
        if received != size {
            return Err(Status::invalid_argument(format!(
                "the snapshot stream ended after {received} of {size} bytes"
            )));
        }
        Ok(())
    }
    .await;
    drop(chunks);
    let incoming = writer.await.map_err(writer_failed)?.map_err(store_error)?;
    if let Err(status) = streamed {
        incoming.discard();
        return Err(status);
    }
    tokio::task::spawn_blocking(move || incoming.finish())
        .await
        .map_err(writer_failed)?
        .map_err(store_error)
}
