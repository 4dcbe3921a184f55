//! Incoming Raft RPCs: decode, check they are meant for this node and group, hand them to
//! openraft, encode the answer.

use tonic::{Request, Response, Status, Streaming};

use raftq_core::GroupId;
use raftq_proto::raft_pb::{
    RaftRequest, RaftResponse, SnapshotChunk, raft_service_server::RaftService,
};
use raftq_store::{IncomingSnapshot, NodeId, Snapshot, SnapshotMeta, Vote};

use crate::node::Raft;

/// Largest snapshot a node accepts over the transport.
const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024 * 1024;

pub(crate) struct RaftGrpc {
    pub(crate) raft: Raft,
    pub(crate) node_id: NodeId,
    pub(crate) group: GroupId,
    /// Where received snapshots are written (the store's snapshot directory).
    pub(crate) snapshot_dir: std::path::PathBuf,
}

impl RaftGrpc {
    fn check(&self, group: GroupId, target: NodeId) -> Result<(), Status> {
        if group != self.group {
            return Err(Status::not_found(format!(
                "raft group {group} is not served here"
            )));
        }
        if target != self.node_id {
            // Another node now answers at the address the sender knows for `target`.
            return Err(Status::failed_precondition(format!(
                "this is node {}, not node {target}",
                self.node_id
            )));
        }
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

fn reply<T: serde::Serialize>(message: &T) -> Result<Response<RaftResponse>, Status> {
    let payload = bincode::serialize(message).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftResponse { payload }))
}

#[tonic::async_trait]
impl RaftService for RaftGrpc {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftResponse>, Status> {
        let request = request.into_inner();
        self.check(request.group_id, request.target_node_id)?;
        let rpc = decode(&request.payload)?;
        let response = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftResponse>, Status> {
        let request = request.into_inner();
        self.check(request.group_id, request.target_node_id)?;
        let rpc = decode(&request.payload)?;
        let response = self
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
        self.check(request.group_id, request.target_node_id)?;
        let rpc = decode(&request.payload)?;
        let response = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
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
        self.check(first.group_id, first.target_node_id)?;
        let (vote, meta, size): (Vote, SnapshotMeta, u64) = decode(&first.header)?;
        if size > MAX_SNAPSHOT_BYTES {
            return Err(Status::resource_exhausted(format!(
                "a snapshot of {size} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}"
            )));
        }
        // Written to a file as it arrives: a snapshot holds every stored body and may be far
        // larger than memory.
        let mut incoming = IncomingSnapshot::create(&self.snapshot_dir, self.group)
            .map_err(|e| Status::internal(format!("cannot store a snapshot: {e}")))?;
        if let Err(status) = receive_into(&mut incoming, first.data, &mut stream, size).await {
            incoming.discard();
            return Err(status);
        }
        // A file left behind by a failure here is removed when the node next installs a
        // snapshot or starts.
        let data = incoming
            .finish()
            .map_err(|e| Status::internal(format!("cannot store a snapshot: {e}")))?;
        metrics::counter!("raftq_snapshots_received_total").increment(1);
        let snapshot = Snapshot {
            meta,
            snapshot: data,
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }
}

/// Writes the snapshot's chunks to `incoming` until the stream ends; it must carry exactly
/// the announced `size`.
async fn receive_into(
    incoming: &mut IncomingSnapshot,
    first: Vec<u8>,
    stream: &mut Streaming<SnapshotChunk>,
    size: u64,
) -> Result<(), Status> {
    let mut chunk = first;
    loop {
        if incoming.written() + chunk.len() as u64 > size {
            return Err(Status::invalid_argument(format!(
                "the snapshot is longer than the {size} bytes announced"
            )));
        }
        incoming
            .write(&chunk)
            .map_err(|e| Status::internal(format!("cannot store a snapshot: {e}")))?;
        match stream.message().await? {
            Some(next) => chunk = next.data,
            None => break,
        }
    }
    if incoming.written() != size {
        return Err(Status::invalid_argument(format!(
            "the snapshot stream ended after {} of {size} bytes",
            incoming.written()
        )));
    }
    Ok(())
}
