//! MessageService: send, receive (long-polling), ack, peek, commit and redrive; send
//! streams are served by `send_stream`, nack, reject and extend by `leases`, the Consume
//! stream by `consume`.

use std::time::Duration;

use raftq_core::access::Action;
use raftq_core::{Command, Delivery, Outcome, QueueError};
use raftq_proto::pb::{
    self, message_service_client::MessageServiceClient, message_service_server::MessageService,
};
use raftq_store::ReadError;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::acks::{POLL_INTERVAL, ack_results};
use super::forward_to_leader;
use crate::context::{Context, unexpected};
use crate::error::{ServiceError, status};

/// Longest long-poll a receive may ask for.
pub const MAX_WAIT_MS: u64 = 20_000;
/// Most messages one peek returns.
const MAX_PEEK: usize = 1_000;
const DEFAULT_PEEK: usize = 10;

pub struct MessageApi {
    pub context: Context,
    /// Turns true when the node stops: send streams stop reading, answer what they have
    /// read, and end, so that the server's graceful stop does not wait on them.
    pub stopped: watch::Receiver<bool>,
    /// Turns true when the node begins to stop, before a leader hands over: consume
    /// streams write their last acks and hand back their deliveries while it still leads.
    pub stopping: watch::Receiver<bool>,
}

impl MessageApi {
    /// Another handle on the same service, for a stream's own task.
    pub(super) fn clone_api(&self) -> MessageApi {
        self.on(self.context.clone())
    }

    /// This service serving calls through `context` (one group's).
    pub(super) fn on(&self, context: Context) -> MessageApi {
        MessageApi {
            context,
            stopped: self.stopped.clone(),
            stopping: self.stopping.clone(),
        }
    }

    /// This service for a call on `queue`: in the group holding it (see `routing`).
    pub(super) async fn on_queue<T>(
        &self,
        request: &Request<T>,
        queue: &str,
    ) -> Result<MessageApi, Status> {
        Ok(self.on(self.context.for_queue(request, queue).await?))
    }

    /// The command a Receive call asks for, once its limits are checked.
    fn check_receive(&self, request: &pb::ReceiveRequest) -> Result<Command, Status> {
        self.context.check_queue_name(&request.queue)?;
        let limits = &self.context.limits;
        let max_messages = request.max_messages.max(1);
        limits.check_receive_size(max_messages).map_err(status)?;
        if request.lease_ms != 0 {
            limits
                .check_lease("lease_ms", request.lease_ms)
                .map_err(status)?;
        }
        if request.wait_ms > MAX_WAIT_MS {
            return Err(status(QueueError::invalid(
                "wait_ms",
                format!("must be at most {MAX_WAIT_MS} ms"),
            )));
        }
        limits
            .check_receipts("ack_receipts", request.ack_receipts.len())
            .map_err(status)?;
        let queue = request.queue.clone();
        let lease_ms = request.lease_ms;
        Ok(if is_selective(request) {
            Command::ReceiveSelected {
                queue,
                message_id: request.message_id,
                correlation_id: request.correlation_id.clone(),
                max_messages,
                lease_ms,
            }
        } else {
            Command::Receive {
                queue,
                max_messages,
                lease_ms,
            }
        })
    }

    /// Whether a Receive call would hand out something now. An unknown queue may be one a
    /// new leader has not applied yet: the log decides.
    fn deliverable(&self, request: &pb::ReceiveRequest) -> bool {
        let now_ms = self.context.node.log_time_ms();
        let state = self.context.node.state().read();
        if is_selective(request) {
            state.has_selected_deliverable(
                &request.queue,
                request.message_id,
                &request.correlation_id,
                now_ms,
            )
        } else {
            state.has_deliverable(&request.queue, now_ms)
        }
        .unwrap_or(true)
    }

    /// Writes a receive, after the acks `ack` holds in the same entry when there are any;
    /// returns the acks' results (when there were acks) and the deliveries.
    async fn write_receive(
        &self,
        receive: Command,
        ack: Option<Command>,
    ) -> Result<(Option<Vec<pb::AckResult>>, Vec<Delivery>), Status> {
        let Some(ack) = ack else {
            return match self.context.write(receive).await? {
                Outcome::Received(deliveries) => Ok((None, deliveries)),
                other => Err(unexpected(other)),
            };
        };
        let mut results = match self
            .context
            .write(Command::Batch(vec![ack, receive]))
            .await?
        {
            Outcome::Batch(results) if results.len() == 2 => results.into_iter(),
            other => return Err(unexpected(other)),
        };
        let acked = match results.next() {
            Some(Ok(Outcome::AckedBatch(results))) => ack_results(results),
            Some(Err(error)) => return Err(status(error)),
            other => {
                return Err(status(ServiceError::internal(format!(
                    "unexpected ack outcome {other:?}"
                ))));
            }
        };
        match results.next().map(|received| received.map_err(status)) {
            Some(Ok(Outcome::Received(deliveries))) => Ok((Some(acked), deliveries)),
            Some(Ok(other)) => Err(unexpected(other)),
            Some(Err(status)) => Err(status),
            None => Ok((Some(acked), Vec::new())),
        }
    }

    async fn send_messages(
        &self,
        queue: String,
        messages: Vec<pb::OutgoingMessage>,
        producer: Option<pb::ProducerSequence>,
    ) -> Result<Vec<pb::SendResponse>, Status> {
        self.context.check_queue_name(&queue)?;
        self.context.check_sends(
            &queue,
            messages.iter().map(|message| message.ack_queue.as_str()),
            producer.is_some(),
        )?;
        let limits = &self.context.limits;
        let messages: Vec<_> = messages.into_iter().map(raftq_proto::new_message).collect();
        limits.check_send_batch(&messages).map_err(status)?;
        let count = messages.len() as u64;
        self.context.admission.check_store()?;
        let _bytes = self
            .context
            .admission
            .request_bytes(messages.iter().map(|message| message.size()).sum())?;
        let command = self.numbered(Command::Send { queue, messages }, producer)?;
        match self.context.write(command).await? {
            Outcome::Sent(results) => {
                metrics::counter!("raftq_messages_sent_total").increment(count);
                Ok(results.into_iter().map(Into::into).collect())
            }
            other => Err(unexpected(other)),
        }
    }
}

/// A receive of chosen messages (by id or correlation id) rather than the next ones.
fn is_selective(request: &pb::ReceiveRequest) -> bool {
    request.message_id != 0 || !request.correlation_id.is_empty()
}

pub(super) fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| status(QueueError::invalid(field, "is required")))
}

impl MessageApi {
    /// One message sent here, by a `Send` call or on a send stream.
    pub(super) async fn send_one(
        &self,
        request: pb::SendRequest,
    ) -> Result<pb::SendResponse, Status> {
        let message = required(request.message, "message")?;
        let mut results = self
            .send_messages(request.queue, vec![message], request.producer)
            .await?;
        results
            .pop()
            .ok_or_else(|| status(ServiceError::internal("a send returned no result")))
    }
}

#[tonic::async_trait]
impl MessageService for MessageApi {
    type SendStreamStream = super::send_stream::SendResults;

    async fn send_stream(
        &self,
        request: Request<Streaming<pb::StreamedSend>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        self.open_send_stream(request)
    }

    type ConsumeStream = super::consume::ConsumeAnswers;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let caller = crate::auth::caller(&request)?;
        let consumer =
            super::consume::Consumer::new(self.context.clone(), self.stopping.clone(), caller);
        consumer.open(request.into_inner()).map(Response::new)
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, send);
        api.context
            .allow(&request, Action::Send, Some(&request.get_ref().queue))?;
        api.send_one(request.into_inner()).await.map(Response::new)
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, send_batch);
        api.context
            .allow(&request, Action::Send, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        let results = api
            .send_messages(request.queue, request.messages, request.producer)
            .await?;
        Ok(Response::new(pb::SendBatchResponse { results }))
    }

    async fn receive(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<pb::ReceiveResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, receive);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        let receiving = api.check_receive(&request)?;
        // A receive that may wait holds one of the node's places for waiting receives.
        let _waiting = if request.wait_ms > 0 {
            Some(api.context.admission.waiting_receive()?)
        } else {
            None
        };
        // Acks to apply with the first write; the answer carries their results.
        let acks = raftq_proto::receipts(&request.ack_receipts).map_err(status)?;
        let mut acks = Some(acks).filter(|acks| !acks.is_empty());
        let mut acked = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms);
        let mut applied = api.context.node.state().subscribe();
        loop {
            let ack = acks.take().map(|receipts| Command::AckBatch {
                queue: request.queue.clone(),
                receipts,
            });
            // Only write a receive into the log when it would deliver something, or when
            // the caller does not wait (so an unknown queue still gets NOT_FOUND from Raft).
            let out_of_time = tokio::time::Instant::now() >= deadline;
            if out_of_time || api.deliverable(&request) {
                let (ack_results, deliveries) = api.write_receive(receiving.clone(), ack).await?;
                acked = ack_results.unwrap_or(acked);
                if !deliveries.is_empty() || out_of_time {
                    metrics::counter!("raftq_messages_delivered_total")
                        .increment(deliveries.len() as u64);
                    return Ok(Response::new(pb::ReceiveResponse {
                        messages: deliveries.into_iter().map(Into::into).collect(),
                        ack_results: acked,
                    }));
                }
            } else if let Some(ack) = ack {
                // Nothing to receive yet: the acks go in at once, the receive waits.
                acked = match api.context.write(ack).await? {
                    Outcome::AckedBatch(results) => ack_results(results),
                    other => return Err(unexpected(other)),
                };
            }
            let wake = deadline.min(tokio::time::Instant::now() + POLL_INTERVAL);
            // Either a new entry was applied or the poll interval passed: look again.
            let _ = tokio::time::timeout_at(wake, applied.changed()).await;
            if !api.context.node.is_leader() {
                return Err(api.context.not_leader());
            }
        }
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, ack);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        let receipt = raftq_proto::receipt(&request.receipt).map_err(status)?;
        match api
            .context
            .write(Command::Ack {
                queue: request.queue,
                receipt,
            })
            .await?
        {
            Outcome::Acked { already_acked } => {
                metrics::counter!("raftq_messages_acked_total")
                    .increment(u64::from(!already_acked));
                Ok(Response::new(pb::AckResponse { already_acked }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn ack_batch(
        &self,
        request: Request<pb::AckBatchRequest>,
    ) -> Result<Response<pb::AckBatchResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, ack_batch);
        api.context
            .allow(&request, Action::Receive, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        api.context
            .limits
            .check_ack_batch(request.receipts.len())
            .map_err(status)?;
        let receipts = raftq_proto::receipts(&request.receipts).map_err(status)?;
        match api
            .context
            .write(Command::AckBatch {
                queue: request.queue,
                receipts,
            })
            .await?
        {
            Outcome::AckedBatch(results) => Ok(Response::new(pb::AckBatchResponse {
                results: ack_results(results),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        self.nack_one(request).await
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        self.extend_one(request).await
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::RejectResponse>, Status> {
        self.reject_one(request).await
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        let api = self.on_queue(&request, &request.get_ref().queue).await?;
        forward_to_leader!(api.context, request, MessageServiceClient<_>, peek);
        api.context
            .allow(&request, Action::Browse, Some(&request.get_ref().queue))?;
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        let max = match request.max_messages as usize {
            0 => DEFAULT_PEEK,
            n if n > MAX_PEEK => {
                return Err(status(QueueError::invalid(
                    "max_messages",
                    format!("must be at most {MAX_PEEK}"),
                )));
            }
            n => n,
        };
        api.context.read_barrier().await?;
        let state = api.context.node.state().clone();
        let max_bytes = api.context.limits.max_receive_bytes;
        // Bodies come from disk: read on a blocking thread, not on the async runtime.
        let messages = tokio::task::spawn_blocking(move || {
            state.peek(
                &request.queue,
                request.after_sequence,
                max,
                max_bytes,
                request.message_id,
                &request.correlation_id,
            )
        })
        .await
        .map_err(|error| status(ServiceError::internal(format!("peek task: {error}"))))?
        .map_err(|error| match error {
            ReadError::Queue(error) => status(error),
            ReadError::Store(error) => status(error),
        })?;
        Ok(Response::new(pb::PeekResponse {
            messages: messages.into_iter().map(Into::into).collect(),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let api = {
            let parts = request.get_ref();
            let acks = parts.acks.iter().map(|ack| ack.queue.as_str());
            // A send's acknowledgement messages are written in the same group too.
            let ack_queues = parts.sends.iter().filter_map(|send| {
                let message = send.message.as_ref()?;
                Some(message.ack_queue.as_str()).filter(|name| !name.is_empty())
            });
            let queues: Vec<&str> = acks
                .chain(parts.sends.iter().map(|send| send.queue.as_str()))
                .chain(ack_queues)
                .collect();
            self.on(self.context.for_queues(&request, &queues).await?)
        };
        forward_to_leader!(api.context, request, MessageServiceClient<_>, commit);
        let caller = crate::auth::caller(&request)?;
        let request = request.into_inner();
        let producer = request.producer;
        if producer.is_some() {
            api.context.check_sends("", std::iter::empty(), true)?;
        }
        let command = raftq_proto::commit(request).map_err(status)?;
        let _bytes = api
            .context
            .admission
            .request_bytes(command.approx_bytes() as u64)?;
        if let Command::Commit { sends, .. } = &command
            && !sends.is_empty()
        {
            api.context.admission.check_store()?;
        }
        if let Command::Commit {
            transaction_id,
            acks,
            sends,
        } = &command
        {
            let limits = &api.context.limits;
            limits
                .check_transaction_id(transaction_id)
                .map_err(status)?;
            let messages = sends.iter().map(|send| &send.message);
            limits
                .check_transaction_parts(acks.len(), messages)
                .map_err(status)?;
            let queues = acks.iter().map(|ack| &ack.queue);
            for queue in queues.chain(sends.iter().map(|send| &send.queue)) {
                api.context.check_queue_name(queue)?;
            }
            // Every part must be allowed, or nothing is written.
            let node = &api.context.meta;
            for ack in acks {
                crate::auth::authorize(node, &caller, Action::Receive, Some(&ack.queue))?;
            }
            for send in sends {
                crate::auth::authorize(node, &caller, Action::Send, Some(&send.queue))?;
            }
        }
        match api.context.write(api.numbered(command, producer)?).await? {
            Outcome::Committed {
                sent,
                already_committed,
            } => {
                if !already_committed {
                    metrics::counter!("raftq_transactions_committed_total").increment(1);
                }
                Ok(Response::new(pb::CommitResponse {
                    sent: sent.into_iter().map(Into::into).collect(),
                    already_committed,
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn register_producer(
        &self,
        request: Request<pb::RegisterProducerRequest>,
    ) -> Result<Response<pb::RegisterProducerResponse>, Status> {
        forward_to_leader!(
            self.context,
            request,
            MessageServiceClient<_>,
            register_producer
        );
        let caller = crate::auth::caller(&request)?;
        self.register(&caller, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        let api = {
            let parts = request.get_ref();
            let mut queues = vec![parts.queue.as_str()];
            if !parts.to.is_empty() {
                queues.push(parts.to.as_str());
            }
            self.on(self.context.for_queues(&request, &queues).await?)
        };
        forward_to_leader!(api.context, request, MessageServiceClient<_>, redrive);
        let caller = api
            .context
            .allow(&request, Action::Manage, Some(&request.get_ref().queue))?;
        if !request.get_ref().to.is_empty() {
            crate::auth::authorize(
                &api.context.meta,
                &caller,
                Action::Send,
                Some(&request.get_ref().to),
            )?;
        }
        let request = request.into_inner();
        api.context.check_queue_name(&request.queue)?;
        if !request.to.is_empty() {
            api.context.check_queue_name(&request.to)?;
        }
        let command = Command::Redrive {
            queue: request.queue,
            message_ids: request.message_ids,
            max: request.max_messages,
            to: request.to,
        };
        match api.context.write(command).await? {
            Outcome::Redriven { moved } => {
                metrics::counter!("raftq_messages_redriven_total").increment(moved);
                Ok(Response::new(pb::RedriveResponse { moved }))
            }
            other => Err(unexpected(other)),
        }
    }
}
