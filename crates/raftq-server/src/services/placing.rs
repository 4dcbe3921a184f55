//! Creating, deleting and listing queues when the cluster runs data groups, on group 1's
//! leader. A queue is placed first, in group 1's log (beside `colocate_with`, else beside
//! its dead-letter queue when that one is placed, else in the group holding the fewest
//! queues), then created in its group by a call to that group's leader. Its dead-letter
//! and journal queues are placed beside it, so the messages it moves stay in one group.
//! A creation the group refuses takes the placement back; a deletion removes the queue
//! from its group, then the placement.

use futures::{StreamExt, TryStreamExt};
use raftq_core::placement::METADATA_GROUP;
use raftq_core::{Command, GroupId, Outcome, QueueError, journal_queue_name};
use raftq_proto::pb::{self, queue_service_server::QueueService};
use tonic::{Code, Request, Status};

use super::queue::QueueApi;
use crate::auth::Caller;
use crate::context::{Context, unexpected};
use crate::error::{ServiceError, status};

/// Most data groups asked at once for their queues by one list call.
const LIST_FAN_OUT: usize = 16;

impl QueueApi {
    /// `message` as a call this node makes on `group`'s leader for `caller`, one step of a
    /// call it coordinates.
    fn group_call<T>(
        &self,
        group: GroupId,
        message: T,
        caller: &Caller,
    ) -> Result<Request<T>, Status> {
        let context = self.context.for_group(group)?;
        let mut call = Request::new(message);
        call.extensions_mut().insert(caller.clone());
        Ok(context.forwarded(call))
    }

    pub(super) async fn create_placed(
        &self,
        caller: &Caller,
        request: pb::CreateQueueRequest,
    ) -> Result<pb::Queue, Status> {
        let context = self.context.at_meta();
        context.check_queue_name(&request.name)?;
        let options = raftq_proto::queue_options(request.options.clone()).map_err(status)?;
        options.validate(&context.limits).map_err(status)?;
        let name = request.name.clone();
        // Everything group 1 committed is applied here before the placement is read.
        context.read_barrier().await?;
        let placement = self.context.groups.refresh_placement();
        let in_group_1 = |queue: &str| context.meta.state().read().has_queue(queue);
        if in_group_1(&name) {
            // Created before there were data groups: group 1 answers ALREADY_EXISTS.
            return Self::create_here(&context, caller, request).await;
        }
        let exists = |queue: &str| placement.group_of(queue) != METADATA_GROUP || in_group_1(queue);
        let colocate = Some(request.colocate_with.as_str()).filter(|other| !other.is_empty());
        if let Some(other) = colocate
            && !exists(other)
        {
            return Err(status(QueueError::QueueNotFound {
                name: other.to_string(),
            }));
        }
        let dead_letters = options.dead_letter_queue.as_str();
        let placed_dlq = Some(dead_letters).filter(|dlq| !dlq.is_empty() && exists(dlq));
        if let (Some(other), Some(dlq)) = (colocate, placed_dlq)
            && placement.group_of(other) != placement.group_of(dlq)
        {
            return Err(status(ServiceError::AcrossGroups {
                queues: vec![
                    (other.to_string(), placement.group_of(other)),
                    (dlq.to_string(), placement.group_of(dlq)),
                ],
            }));
        }
        let newly_placed = placement.group_of(&name) == METADATA_GROUP;
        let place = Command::PlaceQueue {
            queue: name.clone(),
            colocate_with: colocate.or(placed_dlq).map(str::to_string),
        };
        let group = match context.write(place).await? {
            Outcome::Placed { group } => group,
            other => return Err(unexpected(other)),
        };
        if group == METADATA_GROUP {
            return Self::create_here(&context, caller, request).await;
        }
        let mut beside = Vec::new();
        if !dead_letters.is_empty() && placed_dlq.is_none() {
            beside.push(dead_letters.to_string());
        }
        if options.journal {
            beside.push(journal_queue_name(&name));
        }
        for queue in beside {
            let place = Command::PlaceQueue {
                queue,
                colocate_with: Some(name.clone()),
            };
            context.write(place).await?;
        }
        self.context.groups.refresh_placement();
        let call = self.group_call(group, request, caller)?;
        let created = QueueService::create_queue(self, call).await;
        if let Err(refusal) = &created
            && newly_placed
            && refused(refusal.code())
        {
            // Nothing was created: the name may be placed anew.
            context.write(Command::UnplaceQueue { queue: name }).await?;
        }
        let queue = created?.into_inner().queue;
        queue.ok_or_else(|| status(ServiceError::internal("a creation returned no queue")))
    }

    pub(super) async fn delete_placed(&self, caller: &Caller, name: String) -> Result<(), Status> {
        let context = self.context.at_meta();
        context.check_queue_name(&name)?;
        context.read_barrier().await?;
        let group = self.context.groups.refresh_placement().group_of(&name);
        if group == METADATA_GROUP {
            return Self::delete_here(&context, caller, name).await;
        }
        let call = self.group_call(group, pb::DeleteQueueRequest { name: name.clone() }, caller)?;
        QueueService::delete_queue(self, call).await?;
        match context.write(Command::UnplaceQueue { queue: name }).await? {
            Outcome::Placed { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The queues of every group, in name order, after `after`, at most `limit`.
    pub(super) async fn list_every_group(
        &self,
        caller: &Caller,
        after: &str,
        limit: usize,
    ) -> Result<Vec<pb::Queue>, Status> {
        let context: Context = self.context.at_meta();
        let mut queues = Self::list_here(&context, after, limit).await?;
        let groups: Vec<GroupId> = self
            .context
            .groups
            .placement()
            .groups()
            .map(|plan| plan.group)
            .collect();
        let lists: Vec<Vec<pb::Queue>> = futures::stream::iter(groups)
            .map(|group| async move {
                let message = pb::ListQueuesRequest {
                    after: after.to_string(),
                    limit: limit as u32,
                };
                let call = self.group_call(group, message, caller)?;
                let listed = QueueService::list_queues(self, call).await?;
                Ok::<_, Status>(listed.into_inner().queues)
            })
            .buffer_unordered(LIST_FAN_OUT)
            .try_collect()
            .await?;
        queues.extend(lists.into_iter().flatten());
        queues.sort_by(|a, b| a.name.cmp(&b.name));
        queues.dedup_by(|a, b| a.name == b.name);
        queues.truncate(limit);
        Ok(queues)
    }
}

/// Whether a group's answer to a creation says for certain that nothing was created.
fn refused(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::ResourceExhausted
            | Code::PermissionDenied
            | Code::OutOfRange
    )
}
