//! The agent's queue service: every call passed through to the cluster.

use raftq_client::Client;
use raftq_proto::pb::queue_service_server::QueueService;
use raftq_proto::pb::{self, queue_service_client::QueueServiceClient};
use tonic::{Request, Response, Status};

use super::passed;

pub struct AgentQueues {
    pub cluster: Client,
}

/// Passes `$request` through to the cluster's `$method`.
macro_rules! pass_through {
    ($self:ident, $request:ident, $method:ident) => {{
        let message = $request.into_inner();
        $self
            .cluster
            .call(std::time::Duration::ZERO, |channel, timeout| {
                let mut request = Request::new(message.clone());
                request.set_timeout(timeout);
                async move { QueueServiceClient::new(channel).$method(request).await }
            })
            .await
            .map(|response| Response::new(response.into_inner()))
            .map_err(passed)
    }};
}

#[tonic::async_trait]
impl QueueService for AgentQueues {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        pass_through!(self, request, create_queue)
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        pass_through!(self, request, get_queue)
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        pass_through!(self, request, list_queues)
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        pass_through!(self, request, delete_queue)
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        pass_through!(self, request, purge_queue)
    }
}
