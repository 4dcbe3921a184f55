//! Cluster calls: status, membership changes and a node's own view.

use std::time::Duration;

use crate::client::Channel;

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
        // A node running data-group replicas is drained first: the cluster waits up to
        // 20 s for them to move before it answers.
        let response = self
            .retry(Duration::from_secs(30), |channel, timeout| {
                let request = with_timeout(request, timeout);
                async move { Self::admin(channel).remove_node(request).await }
            })
            .await?;
        missing(response.into_inner().status, "status")
    }

    /// Creates a principal; the answer holds its token, which the cluster does not keep.
    /// (A retry after an answer was lost is refused with ALREADY_EXISTS: delete the
    /// principal and create it again.)
    pub async fn create_principal(
        &self,
        name: &str,
    ) -> Result<pb::CreatePrincipalResponse, ClientError> {
        let request = pb::CreatePrincipalRequest {
            name: name.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::admin(channel).create_principal(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn delete_principal(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::DeletePrincipalRequest {
            name: name.to_string(),
        };
        self.retry(Duration::ZERO, |channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { Self::admin(channel).delete_principal(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn list_principals(&self) -> Result<Vec<pb::PrincipalInfo>, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(pb::ListPrincipalsRequest {}, timeout);
                async move { Self::admin(channel).list_principals(request).await }
            })
            .await?;
        Ok(response.into_inner().principals)
    }

    /// Lets `name` do `actions` (`send`, `receive`, `browse`, `manage`, `admin`) on the
    /// queues `queue` matches (a name, or a prefix ending in `*`).
    pub async fn grant(
        &self,
        name: &str,
        queue: &str,
        actions: &[&str],
    ) -> Result<pb::PrincipalInfo, ClientError> {
        let request = pb::GrantRequest {
            name: name.to_string(),
            grant: Some(pb::QueueGrant {
                queue: queue.to_string(),
                actions: actions.iter().map(|action| action.to_string()).collect(),
            }),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::admin(channel).grant(request).await }
            })
            .await?;
        missing(response.into_inner().principal, "principal")
    }

    /// Removes `name`'s grant on `queue`; false when there was none.
    pub async fn revoke(&self, name: &str, queue: &str) -> Result<bool, ClientError> {
        let request = pb::RevokeRequest {
            name: name.to_string(),
            queue: queue.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::admin(channel).revoke(request).await }
            })
            .await?;
        Ok(response.into_inner().revoked)
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
