//! QueueService: create, get, list, delete and purge queues.

use raftq_core::access::Action;
use raftq_core::{Command, Outcome};
use raftq_proto::pb::{
    self, queue_service_client::QueueServiceClient, queue_service_server::QueueService,
};
use tonic::{Request, Response, Status};

use super::forward_to_leader;
use crate::auth::Caller;
use crate::context::{Context, unexpected};
use crate::error::status;

/// One audit line for a queue managed (or not).
fn audit_manage(caller: &Caller, what: &str, queue: &str, written: &Result<Outcome, Status>) {
    crate::auth::audit(
        caller,
        Action::Manage,
        &format!("{what} queue {queue}"),
        written.is_ok(),
    );
}

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
        let caller = self
            .context
            .allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let request = request.into_inner();
        self.context.check_queue_name(&request.name)?;
        let options = raftq_proto::queue_options(request.options).map_err(status)?;
        options.validate(&self.context.limits).map_err(status)?;
        let name = request.name.clone();
        let written = self
            .context
            .write(Command::CreateQueue {
                name: request.name,
                options,
            })
            .await;
        audit_manage(&caller, "create", &name, &written);
        match written? {
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
        self.context
            .allow(&request, Action::Browse, Some(&request.get_ref().name))?;
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
        let caller = crate::auth::caller(&request)?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        self.context.read_barrier().await?;
        // A principal sees the queues it may do something on.
        let queues = {
            let state = self.context.node.state();
            let state = state.read();
            let mut queues = state.list_queues(&request.after, limit);
            if let Caller::Principal(name) = &caller {
                queues.retain(|queue| {
                    Action::ALL
                        .into_iter()
                        .any(|action| state.access().allows(name, action, Some(&queue.name)))
                });
            }
            queues
        };
        Ok(Response::new(pb::ListQueuesResponse {
            queues: queues.into_iter().map(Into::into).collect(),
        }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, delete_queue);
        let caller = self
            .context
            .allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let name = request.into_inner().name;
        self.context.check_queue_name(&name)?;
        let written = self
            .context
            .write(Command::DeleteQueue { name: name.clone() })
            .await;
        audit_manage(&caller, "delete", &name, &written);
        match written? {
            Outcome::Deleted => Ok(Response::new(pb::DeleteQueueResponse {})),
            other => Err(unexpected(other)),
        }
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        forward_to_leader!(self.context, request, QueueServiceClient<_>, purge_queue);
        let caller = self
            .context
            .allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let name = request.into_inner().name;
        self.context.check_queue_name(&name)?;
        let written = self
            .context
            .write(Command::PurgeQueue { name: name.clone() })
            .await;
        audit_manage(&caller, "purge", &name, &written);
        match written? {
            Outcome::Purged { removed } => Ok(Response::new(pb::PurgeQueueResponse { removed })),
            other => Err(unexpected(other)),
        }
    }
}
