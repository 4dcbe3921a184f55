//! Calls on one leased delivery: nack (hand it back), reject (take it out for good) and
//! extend (a longer lease).

use raftq_core::access::Action;
use raftq_core::{Command, Outcome};
use raftq_proto::pb::{self, message_service_client::MessageServiceClient};
use tonic::{Request, Response, Status};

use super::forward_to_leader;
use super::message::MessageApi;
use crate::context::unexpected;
use crate::error::status;

impl MessageApi {
    pub(super) async fn nack_one(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, nack);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        let receipt = raftq_proto::receipt(&request.receipt).map_err(status)?;
        api.context
            .limits
            .check_nack_delay("delay_ms", request.delay_ms)
            .map_err(status)?;
        let command = Command::Nack {
            queue: request.queue,
            receipt,
            delay_ms: request.delay_ms,
        };
        match api.context.write(command).await? {
            Outcome::Nacked { visible_at_ms } => {
                metrics::counter!("raftq_messages_nacked_total").increment(1);
                Ok(Response::new(pb::NackResponse { visible_at_ms }))
            }
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn extend_one(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, extend_lease);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        let receipt = raftq_proto::receipt(&request.receipt).map_err(status)?;
        api.context
            .limits
            .check_lease("lease_ms", request.lease_ms)
            .map_err(status)?;
        let command = Command::ExtendLease {
            queue: request.queue,
            receipt,
            lease_ms: request.lease_ms,
        };
        match api.context.write(command).await? {
            Outcome::LeaseExtended {
                lease_expires_at_ms,
            } => Ok(Response::new(pb::ExtendLeaseResponse {
                lease_expires_at_ms,
            })),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn reject_one(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::RejectResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, reject);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        let receipt = raftq_proto::receipt(&request.receipt).map_err(status)?;
        api.context
            .limits
            .check_reject_detail(&request.detail)
            .map_err(status)?;
        let command = Command::Reject {
            queue: request.queue,
            receipt,
            detail: request.detail,
        };
        match api.context.write(command).await? {
            Outcome::Rejected { dead_lettered } => {
                metrics::counter!("raftq_messages_rejected_total").increment(1);
                Ok(Response::new(pb::RejectResponse { dead_lettered }))
            }
            other => Err(unexpected(other)),
        }
    }
}
