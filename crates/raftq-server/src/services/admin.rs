use std::time::Duration;

use raftq_cluster::MemberStatus;
use raftq_proto::pb::{
    self, admin_service_client::AdminServiceClient, admin_service_server::AdminService,
};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use super::forward_to_leader;
use crate::context::Context;
use crate::error::ServiceError;

/// How long cluster status waits for each other node's own report.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

pub struct AdminApi {
    pub context: Context,
}

fn node_status(status: &MemberStatus) -> pb::NodeStatus {
    pb::NodeStatus {
        node_id: status.node_id,
        address: status.address.clone(),
        role: status.role.as_str().to_string(),
        term: status.term,
        last_log_index: status.last_log_index,
        committed_index: status.committed_index,
        applied_index: status.applied_index,
        purged_index: status.purged_index,
        snapshot_index: status.snapshot_index,
        leader_id: status.leader_id.unwrap_or(0),
        voter: status.voter,
        rebuilding: status.rebuilding,
        cluster_id: status.cluster_id.clone().unwrap_or_default(),
    }
}

/// What node `node_id` at `address` reports about itself, if it answers quickly and is that
/// node.
pub async fn peer_status(node_id: u64, address: &str) -> Option<pb::NodeStatus> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(PEER_STATUS_TIMEOUT)
        .timeout(PEER_STATUS_TIMEOUT);
    let channel = endpoint.connect().await.ok()?;
    let node = AdminServiceClient::new(channel)
        .node_info(pb::NodeInfoRequest {})
        .await
        .ok()?
        .into_inner()
        .node?;
    (node.node_id == node_id).then_some(node)
}

impl AdminApi {
    async fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let local = self.context.node.status();
        let mut nodes = Vec::with_capacity(local.members.len());
        let mut lookups = Vec::new();
        for (id, (address, voter)) in &local.members {
            if *id == local.node_id {
                nodes.push(node_status(&local));
            } else {
                let (id, address, voter) = (*id, address.clone(), *voter);
                lookups.push(async move {
                    peer_status(id, &address).await.unwrap_or(pb::NodeStatus {
                        node_id: id,
                        address,
                        role: "unknown".to_string(),
                        voter,
                        ..pb::NodeStatus::default()
                    })
                });
            }
        }
        nodes.extend(futures::future::join_all(lookups).await);
        nodes.sort_by_key(|node| node.node_id);
        let leader = self.context.node.leader();
        pb::ClusterStatusResponse {
            cluster_id: local.cluster_id.clone().unwrap_or_default(),
            leader_id: leader.as_ref().map_or(0, |(id, _)| *id),
            leader_address: leader.map(|(_, address)| address).unwrap_or_default(),
            nodes,
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn cluster_status(
        &self,
        _request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        Ok(Response::new(AdminApi::cluster_status(self).await))
    }

    async fn add_node(
        &self,
        request: Request<pb::AddNodeRequest>,
    ) -> Result<Response<pb::AddNodeResponse>, Status> {
        forward_to_leader!(self.context, request, AdminServiceClient<_>, add_node);
        let request = request.into_inner();
        if request.node_id == 0 {
            return Err(Status::invalid_argument("node_id must be at least 1"));
        }
        // A node whose data directory belongs to another cluster must not be sent this one's
        // log (nor vote in it), whatever else is true of it.
        self.context
            .node
            .check_cluster(&request.cluster_id)
            .map_err(ServiceError::from)?;
        if request.address.parse::<std::net::SocketAddr>().is_err()
            && !request.address.contains(':')
        {
            return Err(Status::invalid_argument(format!(
                "address {} is not HOST:PORT",
                raftq_core::quote(&request.address)
            )));
        }
        if let Some((address, _)) = self.context.node.status().members.get(&request.node_id)
            && *address != request.address
        {
            return Err(Status::already_exists(format!(
                "node {} is already a member at {address}",
                request.node_id
            )));
        }
        self.context
            .node
            .add_node(
                request.node_id,
                request.address,
                request.promote,
                request.lost_data,
            )
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::AddNodeResponse {
            status: Some(AdminApi::cluster_status(self).await),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        forward_to_leader!(self.context, request, AdminServiceClient<_>, remove_node);
        let node_id = request.into_inner().node_id;
        let status = self.context.node.status();
        if !status.members.contains_key(&node_id) {
            return Err(Status::not_found(format!("node {node_id} is not a member")));
        }
        let voters = status.members.values().filter(|(_, voter)| *voter).count();
        if voters <= 1
            && status
                .members
                .get(&node_id)
                .is_some_and(|(_, voter)| *voter)
        {
            return Err(Status::failed_precondition("cannot remove the last voter"));
        }
        self.context
            .node
            .remove_node(node_id)
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::RemoveNodeResponse {
            status: Some(AdminApi::cluster_status(self).await),
        }))
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse {
            node: Some(node_status(&self.context.node.status())),
        }))
    }
}
