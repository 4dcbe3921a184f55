//! QueueService: create, get, list, delete and purge queues.

use raftq_core::{Command, Outcome};
use raftq_proto::pb::{
    self, queue_service_client::QueueServiceClient, queue_service_server::QueueService,
};
use tonic::{Request, Response, Status};

use super::forward_to_leader;
use crate::context::{Context, unexpected};
use crate::error::status;

/// Most queues one list call returns.
const MAX_LIST: usize = 1_000;

pub struct QueueApi {
    pub context: Context,
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, create_queue);
        let request = request.into_inner();
        self.context.check_queue_name(&request.name)?;
        let options = raftq_proto::queue_options(request.options).map_err(status)?;
        options.validate(&self.context.limits).map_err(status)?;
        match self
            .context
            .write(Command::CreateQueue {
                name: request.name,
                options,
            })
            .await?
        {
            Outcome::Created(info) => Ok(Response::new(pb::CreateQueueResponse {
                queue: Some(info.into()),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, get_queue);
        let name = request.into_inner().name;
        self.context.check_queue_name(&name)?;
        self.context.read_barrier().await?;
        let info = self
            .context
            .node
            .state()
            .read()
            .queue_info(&name)
            .map_err(status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(info.into()),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, list_queues);
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        self.context.read_barrier().await?;
        let queues = self
            .context
            .node
            .state()
            .read()
            .list_queues(&request.after, limit);
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, delete_queue);
        let name = request.into_inner().name;
        self.context.check_queue_name(&name)?;
        match self.context.write(Command::DeleteQueue { name }).await? {
            Outcome::Deleted => Ok(Response::new(pb::DeleteQueueResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, purge_queue);
        let name = request.into_inner().name;
        self.context.check_queue_name(&name)?;
        match self.context.write(Command::PurgeQueue { name }).await? {
            Outcome::Purged { removed } => Ok(Response::new(pb::PurgeQueueResponse { removed })),
            other => Err(unexpected(other)),
        }
    }
}
