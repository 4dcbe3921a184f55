//! Producers on the message service: registration, and sends and commits numbered in a
//! producer's sequence (exactly once with no time window; see `raftq_core::producers`).

use raftq_core::access::Action;
use raftq_core::{Command, Outcome};
use raftq_proto::pb;
use tonic::Status;

use super::message::MessageApi;
use crate::auth::Caller;
use crate::context::unexpected;
use crate::error::{ServiceError, status};

impl MessageApi {
    /// A new producer. Any caller that may send somewhere may register one; the cluster
    /// holds at most `[producers] max_producers`.
    pub(super) async fn register(
        &self,
        caller: &Caller,
        request: pb::RegisterProducerRequest,
    ) -> Result<pb::RegisterProducerResponse, Status> {
        if let Caller::Principal(name) = caller
            && !self
                .context
                .meta
                .state()
                .read()
                .access()
                .allows_somewhere(name, Action::Send)
        {
            return Err(status(ServiceError::PermissionDenied {
                principal: name.clone(),
                action: Action::Send.name(),
                queue: None,
            }));
        }
        let config = &self.context.producers;
        let idle_expiry_ms = match request.idle_expiry_ms {
            0 => config.default_idle_expiry_ms,
            asked => asked,
        };
        let command = Command::RegisterProducer {
            name: request.name,
            idle_expiry_ms,
            max_producers: config.max_producers,
        };
        match self.context.write(command).await? {
            Outcome::ProducerRegistered {
                producer_id,
                idle_expiry_ms,
            } => {
                metrics::counter!("raftq_producers_registered_total").increment(1);
                Ok(pb::RegisterProducerResponse {
                    producer_id,
                    idle_expiry_ms,
                })
            }
            other => Err(unexpected(other)),
        }
    }

    /// `command` (a send or a commit) as the request asks: numbered in the producer's
    /// sequence when it names one, with this node's bound on sessions per queue.
    pub(super) fn numbered(
        &self,
        command: Command,
        producer: Option<pb::ProducerSequence>,
    ) -> Result<Command, Status> {
        let Some(producer) = producer else {
            return Ok(command);
        };
        raftq_core::producers::numbered(
            command,
            producer.producer_id,
            producer.sequence,
            self.context.producers.max_sessions_per_queue,
        )
        .map_err(status)
    }
}
