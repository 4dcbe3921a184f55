//! AdminService: cluster status (each member's own report), node info, adding and
//! removing nodes.

use std::time::Duration;

use raftq_proto::pb::{
    self, admin_service_client::AdminServiceClient, admin_service_server::AdminService,
};
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use raftq_cluster::Node;
use raftq_tls::Transport;

use raftq_core::access::Action;

/// Longest a removal waits for the node's data-group replicas to move to other nodes
/// before it answers UNAVAILABLE (the moves go on; the caller calls again).
const DRAIN_WAIT: Duration = Duration::from_secs(20);

use super::{forward_to_leader, principals};
use crate::auth::audit;
use crate::context::Context;
use crate::error::{ServiceError, status};

/// How long cluster status waits for each other node's own report.
pub const PEER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

pub struct AdminApi {
    pub context: Context,
}

/// What node `node_id` reports about itself when asked at its internal `address`, if it
/// answers within `timeout` and is that node.
pub async fn peer_status(
    node_id: u64,
    address: &str,
    transport: &Transport,
    timeout: Duration,
) -> Option<pb::NodeStatus> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = transport.connect(&endpoint).await.ok()?;
    let node = AdminServiceClient::new(channel)
        .node_info(pb::NodeInfoRequest {})
        .await
        .ok()?
        .into_inner()
        .node?;
    (node.node_id == node_id).then_some(node)
}

/// Refuses an address that is not `HOST:PORT`.
fn check_address(field: &'static str, address: &str) -> Result<(), Status> {
    if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
        return Err(status(ServiceError::InvalidArgument {
            field,
            reason: format!("{} is not HOST:PORT", raftq_core::quote(address)),
        }));
    }
    Ok(())
}

impl AdminApi {
    async fn cluster_status(&self) -> pb::ClusterStatusResponse {
        let local = self.context.node.status();
        let mut nodes = Vec::with_capacity(local.members.len());
        let mut lookups = Vec::new();
        for (id, (addresses, voter)) in &local.members {
            if *id == local.node_id {
                nodes.push(self.context.node_status());
            } else {
                let (id, addresses, voter) = (*id, addresses.clone(), *voter);
                let transport = self.context.transport.clone();
                lookups.push(async move {
                    peer_status(id, &addresses.internal, &transport, PEER_STATUS_TIMEOUT)
                        .await
                        // Voter or learner as this node's membership has it (the leader's
                        // is the one that counts): a member's own copy may lag, e.g. a
                        // node rebuilt on an empty disk that is a learner again.
                        .map(|status| pb::NodeStatus { voter, ..status })
                        .unwrap_or(pb::NodeStatus {
                            node_id: id,
                            address: addresses.public,
                            internal_address: addresses.internal,
                            role: raftq_proto::wire::role::UNKNOWN.to_string(),
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
        let caller = self.context.allow(&request, Action::Admin, None)?;
        let request = request.into_inner();
        let request_node_id = request.node_id;
        if request.node_id == 0 {
            return Err(status(ServiceError::InvalidArgument {
                field: "node_id",
                reason: "must be at least 1".into(),
            }));
        }
        // A node whose data directory belongs to another cluster must not be sent this one's
        // log (nor vote in it), whatever else is true of it.
        self.context
            .node
            .check_cluster(&request.cluster_id)
            .map_err(status)?;
        let internal = if request.internal_address.is_empty() {
            request.address.clone()
        } else {
            request.internal_address
        };
        check_address("address", &request.address)?;
        check_address("internal_address", &internal)?;
        let addresses = Node::new(internal, request.address);
        if let Some((known, _)) = self.context.node.status().members.get(&request.node_id)
            && *known != addresses
        {
            return Err(status(ServiceError::AlreadyMember {
                node_id: request.node_id,
                address: known.to_string(),
            }));
        }
        let added = self
            .context
            .node
            .add_node(
                request.node_id,
                addresses,
                request.promote,
                request.lost_data,
            )
            .await;
        audit(
            &caller,
            Action::Admin,
            &format!("add node {}", request_node_id),
            added.is_ok(),
        );
        added.map_err(status)?;
        Ok(Response::new(pb::AddNodeResponse {
            status: Some(AdminApi::cluster_status(self).await),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        forward_to_leader!(self.context, request, AdminServiceClient<_>, remove_node);
        let caller = self.context.allow(&request, Action::Admin, None)?;
        let node_id = request.into_inner().node_id;
        let members = self.context.node.status().members;
        if !members.contains_key(&node_id) {
            return Err(status(ServiceError::NotMember { node_id }));
        }
        let voters = members.values().filter(|(_, voter)| *voter).count();
        if voters <= 1 && members.get(&node_id).is_some_and(|(_, voter)| *voter) {
            return Err(status(ServiceError::LastVoter));
        }
        // A node running replicas of data groups is drained first: they move to the
        // other nodes, and the node leaves group 1 once no group counts on it.
        let removed = match self.context.groups.drain(node_id, DRAIN_WAIT).await {
            Ok(()) => self.context.node.remove_node(node_id).await,
            Err(error) => Err(error),
        };
        audit(
            &caller,
            Action::Admin,
            &format!("remove node {node_id}"),
            removed.is_ok(),
        );
        removed.map_err(status)?;
        Ok(Response::new(pb::RemoveNodeResponse {
            status: Some(AdminApi::cluster_status(self).await),
        }))
    }

    async fn create_principal(
        &self,
        request: Request<pb::CreatePrincipalRequest>,
    ) -> Result<Response<pb::CreatePrincipalResponse>, Status> {
        forward_to_leader!(
            self.context,
            request,
            AdminServiceClient<_>,
            create_principal
        );
        let caller = self.context.allow(&request, Action::Admin, None)?;
        principals::create(&self.context, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn delete_principal(
        &self,
        request: Request<pb::DeletePrincipalRequest>,
    ) -> Result<Response<pb::DeletePrincipalResponse>, Status> {
        forward_to_leader!(
            self.context,
            request,
            AdminServiceClient<_>,
            delete_principal
        );
        let caller = self.context.allow(&request, Action::Admin, None)?;
        principals::delete(&self.context, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_principals(
        &self,
        request: Request<pb::ListPrincipalsRequest>,
    ) -> Result<Response<pb::ListPrincipalsResponse>, Status> {
        forward_to_leader!(
            self.context,
            request,
            AdminServiceClient<_>,
            list_principals
        );
        self.context.allow(&request, Action::Admin, None)?;
        principals::list(&self.context).await.map(Response::new)
    }

    async fn grant(
        &self,
        request: Request<pb::GrantRequest>,
    ) -> Result<Response<pb::GrantResponse>, Status> {
        forward_to_leader!(self.context, request, AdminServiceClient<_>, grant);
        let caller = self.context.allow(&request, Action::Admin, None)?;
        principals::grant(&self.context, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeRequest>,
    ) -> Result<Response<pb::RevokeResponse>, Status> {
        forward_to_leader!(self.context, request, AdminServiceClient<_>, revoke);
        let caller = self.context.allow(&request, Action::Admin, None)?;
        principals::revoke(&self.context, &caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn node_info(
        &self,
        _request: Request<pb::NodeInfoRequest>,
    ) -> Result<Response<pb::NodeInfoResponse>, Status> {
        Ok(Response::new(pb::NodeInfoResponse {
            node: Some(self.context.node_status()),
        }))
    }
}
