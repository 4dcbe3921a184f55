//! Outgoing Raft RPCs over gRPC. Payloads are openraft's own messages, serialized with
//! bincode; every request names its group and the node it is meant for.

use std::future::Future;
use std::time::Duration;

use openraft::OptionalSend;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use raftq_core::GroupId;
use raftq_proto::raft_pb::{RaftRequest, SnapshotChunk, raft_service_client::RaftServiceClient};
use raftq_store::{Node, NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

use crate::MAX_RAFT_MESSAGE_BYTES;

/// Snapshot bytes per streamed chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) struct Network {
    pub(crate) group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Node) -> Peer {
        Peer {
            group: self.group,
            target,
            address: node.addr.clone(),
            client: None,
        }
    }
}

pub(crate) struct Peer {
    group: GroupId,
    target: NodeId,
    address: String,
    client: Option<RaftServiceClient<Channel>>,
}

fn unreachable(error: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(error)
}

fn status_error(status: tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
            RPCError::Unreachable(unreachable(status))
        }
        _ => RPCError::Network(NetworkError::from_string(status)),
    }
}

impl Peer {
    fn client(&mut self) -> Result<RaftServiceClient<Channel>, Unreachable<TypeConfig>> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{}", self.address))
            .map_err(unreachable)?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .connect_lazy();
        let client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
        self.client = Some(client.clone());
        Ok(client)
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
        });
        request.set_timeout(timeout);
        Ok(request)
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, RPCError<TypeConfig>> {
    bincode::deserialize(payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let request = self.request(&rpc, option.hard_ttl())?;
        let mut client = self.client()?;
        let response = client.append_entries(request).await.map_err(status_error)?;
        decode(&response.into_inner().payload)
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

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = bincode::serialize(&(vote, snapshot.meta.clone()))
            .map_err(|e| NetworkError::new(&e))?;
        let data = snapshot.snapshot.into_inner();
        let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK_BYTES + 1);
        chunks.push(SnapshotChunk {
            group_id: self.group,
            target_node_id: self.target,
            header,
            data: Vec::new(),
        });
        for piece in data.chunks(SNAPSHOT_CHUNK_BYTES) {
            chunks.push(SnapshotChunk {
                group_id: self.group,
                target_node_id: self.target,
                header: Vec::new(),
                data: piece.to_vec(),
            });
        }
        metrics::counter!("raftq_snapshots_sent_total").increment(1);
        let mut request = tonic::Request::new(tokio_stream::iter(chunks));
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
        bincode::deserialize(&response.into_inner().payload)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))
    }
}
