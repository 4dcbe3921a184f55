//! QueueService: create, get, list, delete and purge queues. With data groups, creating,
//! deleting and listing are coordinated by group 1's leader (`placing`); get and purge go
//! to the group holding the queue.

use raftq_core::access::Action;
use raftq_core::placement::METADATA_GROUP;
use raftq_core::{Command, Outcome};
use raftq_proto::pb::{
    self, queue_service_client::QueueServiceClient, queue_service_server::QueueService,
};
use tonic::{Request, Response, Status};

use super::forward_to_leader;
use crate::auth::Caller;
use crate::context::{Context, unexpected};
use crate::error::status;
use crate::routing::named_group;

/// One audit line for a queue managed (or not).
pub(super) fn audit_manage<T>(
    caller: &Caller,
    what: &str,
    queue: &str,
    written: &Result<T, Status>,
) {
    crate::auth::audit(
        caller,
        Action::Manage,
        &format!("{what} queue {queue}"),
        written.is_ok(),
    );
}

/// Most queues one list call returns.
pub(super) const MAX_LIST: usize = 1_000;

pub struct QueueApi {
    pub context: Context,
}

impl QueueApi {
    /// The context of a create, delete or list call: the data group's, for a step that
    /// group 1's leader made on one; group 1's for a call from a client (or forwarded
    /// on its behalf), which group 1's leader coordinates when there are data groups.
    fn coordinated<T>(&self, request: &Request<T>) -> Result<Context, Status> {
        match named_group(request) {
            Some(group) if group != METADATA_GROUP => self.context.for_group(group),
            _ => Ok(self.context.at_meta()),
        }
    }

    /// Creates the queue in the group `context` serves, once placed there.
    pub(super) async fn create_here(
        context: &Context,
        caller: &Caller,
        request: pb::CreateQueueRequest,
    ) -> Result<pb::Queue, Status> {
        context.check_queue_name(&request.name)?;
        let options = raftq_proto::queue_options(request.options).map_err(status)?;
        options.validate(&context.limits).map_err(status)?;
        let name = request.name.clone();
        let written = context
            .write(Command::CreateQueue {
                name: request.name,
                options,
            })
            .await;
        audit_manage(caller, "create", &name, &written);
        match written? {
            Outcome::Created(info) => Ok(raftq_proto::queue_in_group(info, context.group)),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes the queue from the group `context` serves.
    pub(super) async fn delete_here(
        context: &Context,
        caller: &Caller,
        name: String,
    ) -> Result<(), Status> {
        context.check_queue_name(&name)?;
        let written = context
            .write(Command::DeleteQueue { name: name.clone() })
            .await;
        audit_manage(caller, "delete", &name, &written);
        match written? {
            Outcome::Deleted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The queues of the group `context` serves, after `after`, at most `limit`.
    pub(super) async fn list_here(
        context: &Context,
        after: &str,
        limit: usize,
    ) -> Result<Vec<pb::Queue>, Status> {
        context.read_barrier().await?;
        let queues = context.node.state().read().list_queues(after, limit);
        Ok(queues
            .into_iter()
            .map(|info| raftq_proto::queue_in_group(info, context.group))
            .collect())
    }
}

#[tonic::async_trait]
impl QueueService for QueueApi {
    async fn create_queue(
        &self,
        request: Request<pb::CreateQueueRequest>,
    ) -> Result<Response<pb::CreateQueueResponse>, Status> {
        let context = self.coordinated(&request)?;
        forward_to_leader!(context, request, QueueServiceClient<_>, create_queue);
        let caller = context.allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let queue = if context.group == METADATA_GROUP && context.has_data_groups() {
            self.create_placed(&caller, request.into_inner()).await?
        } else {
            Self::create_here(&context, &caller, request.into_inner()).await?
        };
        Ok(Response::new(pb::CreateQueueResponse {
            queue: Some(queue),
        }))
    }

    async fn get_queue(
        &self,
        request: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::GetQueueResponse>, Status> {
        let context = self
            .context
            .for_queue(&request, &request.get_ref().name)
            .await?;
        forward_to_leader!(context, request, QueueServiceClient<_>, get_queue);
        context.allow(&request, Action::Browse, Some(&request.get_ref().name))?;
        let name = request.into_inner().name;
        context.check_queue_name(&name)?;
        context.read_barrier().await?;
        let info = context
            .node
            .state()
            .read()
            .queue_info(&name)
            .map_err(status)?;
        Ok(Response::new(pb::GetQueueResponse {
            queue: Some(raftq_proto::queue_in_group(info, context.group)),
        }))
    }

    async fn list_queues(
        &self,
        request: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let context = self.coordinated(&request)?;
        forward_to_leader!(context, request, QueueServiceClient<_>, list_queues);
        let caller = crate::auth::caller(&request)?;
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => MAX_LIST,
            n => n.min(MAX_LIST),
        };
        let mut queues = if context.group == METADATA_GROUP && context.has_data_groups() {
            self.list_every_group(&caller, &request.after, limit)
                .await?
        } else {
            Self::list_here(&context, &request.after, limit).await?
        };
        // A principal sees the queues it may do something on.
        if let Caller::Principal(name) = &caller {
            let state = context.meta.state().read();
            queues.retain(|queue| {
                Action::ALL
                    .into_iter()
                    .any(|action| state.access().allows(name, action, Some(&queue.name)))
            });
        }
        Ok(Response::new(pb::ListQueuesResponse { queues }))
    }

    async fn delete_queue(
        &self,
        request: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        let context = self.coordinated(&request)?;
        forward_to_leader!(context, request, QueueServiceClient<_>, delete_queue);
        let caller = context.allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let name = request.into_inner().name;
        if context.group == METADATA_GROUP && context.has_data_groups() {
            self.delete_placed(&caller, name).await?;
        } else {
            Self::delete_here(&context, &caller, name).await?;
        }
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn purge_queue(
        &self,
        request: Request<pb::PurgeQueueRequest>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let context = self
            .context
            .for_queue(&request, &request.get_ref().name)
            .await?;
        forward_to_leader!(context, request, QueueServiceClient<_>, purge_queue);
        let caller = context.allow(&request, Action::Manage, Some(&request.get_ref().name))?;
        let name = request.into_inner().name;
        context.check_queue_name(&name)?;
        let written = context
            .write(Command::PurgeQueue { name: name.clone() })
            .await;
        audit_manage(&caller, "purge", &name, &written);
        match written? {
            Outcome::Purged { removed } => Ok(Response::new(pb::PurgeQueueResponse { removed })),
            other => Err(unexpected(other)),
        }
    }
}
