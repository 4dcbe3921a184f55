//! Cluster calls: status, membership changes and a node's own view.

use std::time::Duration;

use tonic::transport::Channel;

use super::Client;
use super::retry::{missing, with_timeout};
use crate::error::ClientError;
use crate::pb::{self, admin_service_client::AdminServiceClient};

impl Client {
    fn admin(channel: Channel) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(channel)
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| async move {
                Self::admin(channel)
                    .cluster_status(with_timeout(pb::ClusterStatusRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Adds a node as a learner and, with `promote`, makes it a voter once it has caught up
    /// (see `AddNodeRequest` for each field), through the leader. `lost_data` says the node
    /// started again on an empty data directory: a member of that id is removed, then added
    /// again as a learner.
    pub async fn add_node(
        &self,
        request: pb::AddNodeRequest,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let response = self
            .retry(Duration::from_secs(60), |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::admin(channel).add_node(request).await }
            })
            .await?;
        missing(response.into_inner().status, "status")
    }

    pub async fn remove_node(
        &self,
        node_id: u64,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let request = pb::RemoveNodeRequest { node_id };
        let response = self
            .retry(Duration::from_secs(10), |channel, timeout| {
                let request = with_timeout(request, timeout);
                async move { Self::admin(channel).remove_node(request).await }
            })
            .await?;
        missing(response.into_inner().status, "status")
    }

    /// This node's own view (never forwarded): role, term and indexes.
    pub async fn node_info(&self) -> Result<pb::NodeStatus, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| async move {
                Self::admin(channel)
                    .node_info(with_timeout(pb::NodeInfoRequest {}, timeout))
                    .await
            })
            .await?;
        missing(response.into_inner().node, "node")
    }
}
