//! Outgoing Raft RPCs over gRPC. Payloads are openraft's own messages, serialized with
//! bincode; every request names its group and the node it is meant for.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::entry::RaftEntry;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2, stream_append_sequential};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tonic::transport::Channel;

use raftq_core::GroupId;
use raftq_proto::raft_pb::{RaftRequest, SnapshotChunk, raft_service_client::RaftServiceClient};
use raftq_store::{Entry, Node, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

use crate::connections::Connections;
use crate::lock;
use crate::standing::Standing;

/// Snapshot bytes per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Most entry bytes one append-entries call carries. openraft hands over up to
/// `max_payload_entries` entries at once, and entries holding batches of messages are
/// large: a follower far behind would get calls of hundreds of MiB that never finish
/// within the call's time limit, and would never catch up. Entries beyond this go in the
/// next call (the answer is then `PartialSuccess` up to the last entry sent).
const MAX_APPEND_BYTES: u64 = 8 * 1024 * 1024;
/// Time a call is allowed per byte it carries, on top of openraft's limit (10 MB/s).
const APPEND_NANOS_PER_BYTE: u64 = 100;
/// How often a replication stream with nothing outstanding looks again for answers that
/// are overdue (a request sent since it last looked has a deadline of its own).
const STREAM_DEADLINE_CHECK: Duration = Duration::from_millis(20);
/// Least time given to opening a replication stream (see `stream_append`).
const STREAM_OPEN_AT_LEAST: Duration = Duration::from_secs(1);
/// How long a replication stream holds back an append that carries no entries, only a
/// new commit point. openraft sends one whenever the commit advances while no new entry
/// is waiting; under a steady load the next entry follows within a millisecond or two and
/// carries the same commit point (or a later one), so the held append is dropped and the
/// follower answers one call instead of two. Followers learn of a commit at most this
/// much later; nothing a client waits for depends on that.
const COMMIT_ONLY_HOLD: Duration = Duration::from_millis(2);

pub(crate) struct Network {
    pub(crate) group: GroupId,
    /// Gives the cluster id every message carries.
    pub(crate) standing: Standing,
    /// The channels to the other nodes, shared with every other group of this node.
    pub(crate) connections: Arc<Connections>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            group: self.group,
            standing: self.standing.clone(),
            connections: self.connections.clone(),
            target,
            address: node.internal.clone(),
            streams: true,
        }
    }
}

pub(crate) struct Peer {
    group: GroupId,
    standing: Standing,
    connections: Arc<Connections>,
    target: NodeId,
    address: String,
    /// Whether the peer takes streamed appends; a node of an older version answers
    /// `UNIMPLEMENTED`, and then gets one call at a time.
    streams: bool,
}

fn unreachable(error: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(error)
}

/// Unreachable (so that openraft backs off before trying again) for a peer that is down,
/// too slow, or does not serve the group (yet: a replica is placed on a node before it
/// starts there).
fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::NotFound => {
            RPCError::Unreachable(unreachable(status))
        }
        _ => RPCError::Network(NetworkError::from_string(status)),
    }
}

impl Peer {
    fn client(&self) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        self.connections.client(self.target, &self.address)
    }

    fn request<T: serde::Serialize>(
        &self,
        message: &T,
        timeout: Duration,
    ) -> Result<tonic::Request<RaftRequest>, RPCError<TypeConfig>> {
        let payload =
            bincode::serialize(message).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut request = tonic::Request::new(RaftRequest {
            group_id: self.group,
            target_node_id: self.target,
            payload,
            cluster_id: self.standing.cluster_id().unwrap_or_default(),
        });
        request.set_timeout(timeout);
        Ok(request)
    }
}

/// How many of `entries` (at least one) fit in `limit` serialized bytes, and their bytes.
fn entries_within(entries: &[Entry], limit: u64) -> (usize, u64) {
    let mut total = 0u64;
    for (count, entry) in entries.iter().enumerate() {
        let size = bincode::serialized_size(entry).unwrap_or(0);
        if count > 0 && total + size > limit {
            return (count, total);
        }
        total += size;
    }
    (entries.len(), total)
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    raftq_store::codec::decode_within(payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

type AppendStream<'s> = Result<
    BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>,
    RPCError<TypeConfig>,
>;

/// The follower's answers and the deadlines of the requests not yet answered (earliest
/// first); `None` once the stream has ended with an error.
type AnswerState = Option<(
    tonic::Streaming<raftq_proto::raft_pb::RaftResponse>,
    Arc<Mutex<VecDeque<Instant>>>,
)>;

/// The next answer of a replication stream, or `Unreachable` once the oldest request
/// waiting for one is past its deadline.
async fn next_answer(
    state: AnswerState,
    target: NodeId,
) -> Option<(
    Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
    AnswerState,
)> {
    let (mut answers, deadlines) = state?;
    loop {
        let due = lock(&deadlines).front().copied();
        // With nothing outstanding, look again shortly: a request sent meanwhile brings a
        // deadline of its own.
        let wait = match due {
            None => STREAM_DEADLINE_CHECK,
            Some(due) => match due.checked_duration_since(Instant::now()) {
                Some(wait) if !wait.is_zero() => wait,
                _ => {
                    let error =
                        unreachable(format!("node {target} did not answer an append in time"));
                    return Some((Err(RPCError::Unreachable(error)), None));
                }
            },
        };
        // `message` keeps its progress in the stream, so giving up on it is safe.
        match tokio::time::timeout(wait, answers.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(answer))) => {
                lock(&deadlines).pop_front();
                let result = decode::<StreamAppendResult<TypeConfig>>(&answer.payload);
                let next = result.is_ok().then_some((answers, deadlines));
                return Some((result, next));
            }
            Ok(Ok(None)) => return None,
            Ok(Err(status)) => return Some((Err(status_error(status)), None)),
        }
    }
}

/// An append that only moves the follower's commit point.
trait CommitOnly {
    fn commit_only(&self) -> bool;
}

impl CommitOnly for AppendEntriesRequest<TypeConfig> {
    fn commit_only(&self) -> bool {
        self.entries.is_empty()
    }
}

/// `input` with every commit-only item kept back for up to `hold`: an item that follows
/// within that time replaces it (a later commit-only item, keeping the first one's
/// deadline) or supersedes it (any other item, which goes out alone). The held item goes
/// out when its time is up or when `input` ends.
///
/// Dropping a commit-only append is safe with openraft's streams: it matches answers to
/// requests by the log position they acknowledge, not by count, so the answer to the
/// request that superseded it (which carries the same or a later commit point, and
/// starts where it would have) acknowledges both, timed from the later sending.
fn hold_commit_only<S, T>(input: S, hold: Duration) -> HoldCommitOnly<S, T>
where
    S: futures::Stream<Item = T> + Unpin,
    T: CommitOnly,
{
    HoldCommitOnly {
        input: Some(input),
        hold,
        held: None,
        timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
    }
}

struct HoldCommitOnly<S, T> {
    /// `None` once it has ended.
    input: Option<S>,
    hold: Duration,
    held: Option<T>,
    /// Armed while an item is held.
    timer: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl<S, T> futures::Stream for HoldCommitOnly<S, T>
where
    S: futures::Stream<Item = T> + Unpin,
    T: CommitOnly + Unpin,
{
    type Item = T;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            let Some(input) = this.input.as_mut() else {
                return Poll::Ready(this.held.take());
            };
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) if item.commit_only() => {
                    if this.held.replace(item).is_none() {
                        let due = tokio::time::Instant::now() + this.hold;
                        this.timer.as_mut().reset(due);
                    }
                }
                Poll::Ready(Some(item)) => {
                    this.held = None;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => {
                    this.input = None;
                    return Poll::Ready(this.held.take());
                }
                Poll::Pending => {
                    if this.held.is_some() && this.timer.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(this.held.take());
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// The pauses between attempts to reach a peer that is unreachable: 200 ms, doubling up
/// to 1 s (a peer that is down is dialled once a second, not in a loop; one that comes
/// back is found within a second).
fn unreachable_backoff() -> openraft::network::Backoff {
    openraft::network::Backoff::new((0..).map(|attempt: u32| {
        (Duration::from_millis(200) * 2u32.saturating_pow(attempt.min(3)))
            .min(Duration::from_secs(1))
    }))
}

impl RaftNetworkV2<TypeConfig> for Peer {
    fn backoff(&self) -> Option<openraft::network::Backoff> {
        Some(unreachable_backoff())
    }

    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let (keep, bytes) = entries_within(&rpc.entries, MAX_APPEND_BYTES);
        let truncated = keep < rpc.entries.len();
        rpc.entries.truncate(keep);
        let last_sent = rpc.entries.last().map(|entry| entry.log_id());
        let timeout = option.hard_ttl() + Duration::from_nanos(bytes * APPEND_NANOS_PER_BYTE);
        let request = self.request(&rpc, timeout)?;
        let mut client = self.client()?;
        let response = client.append_entries(request).await.map_err(status_error)?;
        match decode(&response.into_inner().payload)? {
            AppendEntriesResponse::Success if truncated => {
                Ok(AppendEntriesResponse::PartialSuccess(last_sent))
            }
            response => Ok(response),
        }
    }

    /// Pipelined replication over one streaming call: each request goes out as openraft
    /// produces it, without waiting for the answers to earlier ones, and the follower
    /// answers them in order as their entries reach its disk. openraft reads at most
    /// 8 MiB of entries per request (see the log store), so requests are not cut here.
    /// Every answer has a deadline, as a single call has: openraft's time limit plus the
    /// time its bytes may take, counted from when it was sent or from the deadline of the
    /// answer before it, whichever is later. A link that stops answering ends the stream
    /// with `Unreachable`, and openraft opens another.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, AppendStream<'s>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        if !self.streams {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            // openraft waits out its backoff (after the peer was unreachable) before it hands
            // over a request. Take the first one before connecting: a peer that refuses
            // connections fails the stream before any request is asked for, so without this
            // no backoff would ever apply and the peer would be dialled in a tight loop (a
            // core spent, and two warnings logged, per attempt).
            let mut input = input;
            let first = input.next().await;
            let input = futures::stream::iter(first).chain(input);
            let mut client = self.client()?;
            let (group, target) = (self.group, self.target);
            let cluster = self.standing.cluster_id().unwrap_or_default();
            let limit = option.hard_ttl();
            let deadlines: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
            let sent = deadlines.clone();
            let input = hold_commit_only(input, COMMIT_ONLY_HOLD);
            let requests = input.map(move |rpc| {
                // bincode does not fail on these types; an empty payload would be refused
                // by the follower, ending the stream.
                let payload = bincode::serialize(&rpc).unwrap_or_default();
                let transfer = Duration::from_nanos(payload.len() as u64 * APPEND_NANOS_PER_BYTE);
                let mut pending = lock(&sent);
                let due = Instant::now() + limit + transfer;
                let due = pending
                    .back()
                    .map_or(due, |before| due.max(*before + transfer));
                pending.push_back(due);
                RaftRequest {
                    group_id: group,
                    target_node_id: target,
                    payload,
                    cluster_id: cluster.clone(),
                }
            });
            // Opening the stream may include connecting (TCP, the TLS handshake, HTTP/2),
            // which under load takes longer than a heartbeat: given only openraft's limit,
            // every attempt could be cut before its connection is up, and the follower
            // would never be reached.
            let opened = tokio::time::timeout(
                limit.max(STREAM_OPEN_AT_LEAST),
                client.append_entries_stream(tonic::Request::new(requests)),
            )
            .await;
            let answers = match opened {
                Err(_) => {
                    return Err(RPCError::Unreachable(unreachable(format!(
                        "node {target} did not open a replication stream in {:?}",
                        limit.max(STREAM_OPEN_AT_LEAST)
                    ))));
                }
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    // An older node: one call at a time from the next attempt on.
                    self.streams = false;
                    return Err(status_error(status));
                }
                Ok(Err(status)) => return Err(status_error(status)),
                Ok(Ok(response)) => response.into_inner(),
            };
            let answers = futures::stream::unfold(Some((answers, deadlines)), move |state| {
                next_answer(state, target)
            });
            Ok(Box::pin(answers) as BoxStream<'s, _>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc, option.hard_ttl())?;
        let mut client = self.client()?;
        let response = client.vote(request).await.map_err(status_error)?;
        decode(&response.into_inner().payload)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc, option.hard_ttl())?;
        let mut client = self.client()?;
        let response = client
            .transfer_leader(request)
            .await
            .map_err(status_error)?;
        decode(&response.into_inner().payload)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let file = snapshot
            .snapshot
            .into_file()
            .map_err(|e| NetworkError::new(&e))?;
        let size = file.metadata().map_err(|e| NetworkError::new(&e))?.len();
        let header = bincode::serialize(&(vote, snapshot.meta.clone(), size))
            .map_err(|e| NetworkError::new(&e))?;
        let chunks = snapshot_chunks(
            (
                self.group,
                self.target,
                self.standing.cluster_id().unwrap_or_default(),
            ),
            header,
            tokio::fs::File::from_std(file),
        );
        metrics::counter!("raftq_snapshots_sent_total").increment(1);
        let mut request = tonic::Request::new(chunks);
        request.set_timeout(option.hard_ttl().max(Duration::from_secs(60)));
        let mut client = self.client()?;
        let send = client.install_snapshot(request);
        let response = tokio::select! {
            response = send => response.map_err(|status| match status_error(status) {
                RPCError::Unreachable(e) => StreamingError::Unreachable(e),
                RPCError::Network(e) => StreamingError::Network(e),
                other => StreamingError::Network(NetworkError::from_string(other)),
            })?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        raftq_store::codec::decode_within(&response.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}

/// The chunks of one snapshot stream: the header first, then the file in pieces of
/// `SNAPSHOT_CHUNK_BYTES`, read as the transport takes them (the file may be far larger
/// than memory). A read error ends the stream early; the receiver then refuses the
/// snapshot, as it is shorter than the header says.
fn snapshot_chunks(
    (group, target, cluster_id): (GroupId, NodeId, String),
    header: Vec<u8>,
    file: tokio::fs::File,
) -> impl futures::Stream<Item = SnapshotChunk> + Send + 'static {
    use tokio::io::AsyncReadExt;
    let head = SnapshotChunk {
        group_id: group,
        target_node_id: target,
        header,
        data: Vec::new(),
        cluster_id,
    };
    let rest = futures::stream::unfold(Some(file), move |file| async move {
        let mut file = file?;
        let mut data = Vec::with_capacity(SNAPSHOT_CHUNK_BYTES);
        match (&mut file)
            .take(SNAPSHOT_CHUNK_BYTES as u64)
            .read_to_end(&mut data)
            .await
        {
            Ok(0) => None,
            Ok(_) => Some((
                SnapshotChunk {
                    group_id: group,
                    target_node_id: target,
                    header: Vec::new(),
                    data,
                    cluster_id: String::new(),
                },
                Some(file),
            )),
            Err(error) => {
                tracing::warn!(%error, "reading a snapshot file to send failed");
                None
            }
        }
    });
    futures::StreamExt::chain(futures::stream::once(async move { head }), rest)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn an_unreachable_peer_is_tried_again_after_200_ms_doubling_to_one_second() {
        let pauses: Vec<u128> = super::unreachable_backoff()
            .take(6)
            .map(|pause| pause.as_millis())
            .collect();
        assert_eq!(pauses, [200, 400, 800, 1000, 1000, 1000]);
    }

    use futures::StreamExt;
    use openraft::EntryPayload;
    use openraft::entry::RaftEntry;
    use raftq_core::{Command, NewMessage, Request};
    use raftq_store::{Entry, TypeConfig};

    use super::{CommitOnly, entries_within, hold_commit_only};

    fn entry(index: u64, body_bytes: usize) -> Entry {
        let request = Request {
            now_ms: 1,
            command: Command::Send {
                queue: "q".into(),
                messages: vec![NewMessage {
                    body: vec![0; body_bytes],
                    ..NewMessage::default()
                }],
            },
        };
        Entry::new(
            openraft::testing::log_id::<TypeConfig>(1, 1, index),
            EntryPayload::Normal(request),
        )
    }

    #[test]
    fn an_append_takes_entries_up_to_the_byte_limit_and_at_least_one() {
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1000)).collect();
        let (count, bytes) = entries_within(&entries, 3_500);
        assert_eq!(count, 3);
        assert!(bytes > 3_000 && bytes <= 3_500, "{bytes}");
        assert_eq!(entries_within(&entries, u64::MAX).0, 10);
        let huge = vec![entry(1, 10_000), entry(2, 10)];
        assert_eq!(
            entries_within(&huge, 100).0,
            1,
            "one entry even when it alone is larger"
        );
        assert_eq!(entries_within(&[], 100), (0, 0));
    }

    /// Items below 100 stand for commit-only appends.
    impl CommitOnly for u32 {
        fn commit_only(&self) -> bool {
            *self < 100
        }
    }

    fn held(items: Vec<u32>, hold: Duration) -> impl futures::Stream<Item = u32> + Unpin {
        hold_commit_only(futures::stream::iter(items), hold)
    }

    #[tokio::test]
    async fn a_commit_only_append_followed_by_entries_is_not_sent() {
        let out: Vec<u32> = held(vec![1, 200, 2, 3, 300, 400], Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(out, vec![200, 300, 400]);
    }

    #[tokio::test]
    async fn the_last_commit_only_append_goes_out_when_the_input_ends() {
        let started = Instant::now();
        let out: Vec<u32> = held(vec![200, 1, 2], Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(out, vec![200, 2], "the newest commit point, once");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not held to the end"
        );
    }

    #[tokio::test]
    async fn a_commit_only_append_goes_out_when_its_hold_is_up() {
        let (tx, rx) = tokio::sync::mpsc::channel::<u32>(4);
        let input = tokio_stream_of(rx);
        let hold = Duration::from_millis(20);
        let mut out = hold_commit_only(input, hold);
        let started = Instant::now();
        tx.send(1).await.unwrap();
        tx.send(2).await.unwrap();
        // The input stays open: only the hold can release the item.
        let first = tokio::time::timeout(Duration::from_secs(10), out.next()).await;
        assert_eq!(first.unwrap(), Some(2));
        assert!(started.elapsed() >= hold, "released before its hold");
        tx.send(300).await.unwrap();
        drop(tx);
        assert_eq!(out.collect::<Vec<_>>().await, vec![300]);
    }

    fn tokio_stream_of(
        mut rx: tokio::sync::mpsc::Receiver<u32>,
    ) -> impl futures::Stream<Item = u32> + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
