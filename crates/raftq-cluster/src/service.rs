//! Incoming Raft RPCs: decode, check they are meant for this node and group, hand them to
//! openraft, encode the answer.

use tonic::{Request, Response, Status, Streaming};

use raftq_core::GroupId;
use raftq_proto::raft_pb::{
    RaftRequest, RaftResponse, SnapshotChunk, raft_service_server::RaftService,
};
use raftq_store::{NodeId, Snapshot, SnapshotMeta, Vote};

use crate::node::Raft;

/// Largest snapshot a node accepts over the transport.
const MAX_SNAPSHOT_BYTES: usize = 8 * 1024 * 1024 * 1024;

pub(crate) struct RaftGrpc {
    pub(crate) raft: Raft,
    pub(crate) node_id: NodeId,
    pub(crate) group: GroupId,
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
        let (vote, meta): (Vote, SnapshotMeta) = decode(&first.header)?;
        let mut data = first.data;
        while let Some(chunk) = stream.message().await? {
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(
                    "snapshot exceeds the size limit",
                ));
            }
            data.extend_from_slice(&chunk.data);
        }
        metrics::counter!("raftq_snapshots_received_total").increment(1);
        let snapshot = Snapshot {
            meta,
            snapshot: std::io::Cursor::new(data),
        };
        let response = self
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        reply(&response)
    }
}
