use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use raftq_core::{Command, Outcome, Receipt, TransactionAck, TransactionSend};
use raftq_proto::pb::{
    self, message_service_client::MessageServiceClient, message_service_server::MessageService,
};
use raftq_store::ReadError;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::forward_to_leader;
use crate::context::{Context, invalid, unexpected};
use crate::error::ServiceError;

/// Longest long-poll a receive may ask for.
pub const MAX_WAIT_MS: u64 = 20_000;
/// Most messages one peek returns.
const MAX_PEEK: usize = 1_000;
const DEFAULT_PEEK: usize = 10;
/// While long-polling, re-check at least this often (leases may expire without any write).
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(50);

pub struct MessageApi {
    pub context: Context,
    /// Turns true when the node stops: send streams stop reading, answer what they have
    /// read, and end, so that the server's graceful stop does not wait on them.
    pub stopped: watch::Receiver<bool>,
    /// Turns true when the node begins to stop, before a leader hands over: consume
    /// streams write their last acks and hand back their deliveries while it still leads.
    pub stopping: watch::Receiver<bool>,
}

pub(super) fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn receipt(text: &str) -> Result<Receipt, Status> {
    text.parse::<Receipt>().map_err(invalid)
}

fn receipts(texts: &[String]) -> Result<Vec<Receipt>, Status> {
    texts.iter().map(|text| receipt(text)).collect()
}

/// The wire form of one receipt an ack or nack refused.
pub(super) fn refused_result(error: raftq_core::QueueError) -> pb::AckResult {
    let status = Status::from(ServiceError::from(error));
    pb::AckResult {
        code: status.code() as i32,
        error: status.message().to_string(),
        already_acked: false,
    }
}

/// The wire form of an `AckBatch`'s per-receipt results; counts the messages acknowledged
/// now (not those a retried ack finds already acknowledged).
pub(super) fn ack_results(
    results: Vec<Result<bool, raftq_core::QueueError>>,
) -> Vec<pb::AckResult> {
    let results: Vec<pb::AckResult> = results
        .into_iter()
        .map(|result| match result {
            Ok(already_acked) => pb::AckResult {
                already_acked,
                ..pb::AckResult::default()
            },
            Err(error) => refused_result(error),
        })
        .collect();
    let acked = results
        .iter()
        .filter(|r| r.code == 0 && !r.already_acked)
        .count();
    metrics::counter!("raftq_messages_acked_total").increment(acked as u64);
    results
}

impl MessageApi {
    /// Another handle on the same service, for a stream's own task.
    fn clone_api(&self) -> MessageApi {
        MessageApi {
            context: self.context.clone(),
            stopped: self.stopped.clone(),
            stopping: self.stopping.clone(),
        }
    }

    async fn send_messages(
        &self,
        queue: String,
        messages: Vec<pb::OutgoingMessage>,
    ) -> Result<Vec<pb::SendResponse>, Status> {
        self.context.check_queue_name(&queue)?;
        let limits = &self.context.limits;
        if messages.len() > limits.max_batch_messages {
            return Err(invalid(raftq_core::QueueError::InvalidArgument {
                field: "messages".into(),
                reason: format!(
                    "{} messages exceed the batch limit of {}",
                    messages.len(),
                    limits.max_batch_messages
                ),
            }));
        }
        let messages: Vec<_> = messages.into_iter().map(raftq_proto::new_message).collect();
        for message in &messages {
            limits.check_message(message).map_err(ServiceError::from)?;
            if message.size() > limits.max_message_bytes {
                return Err(invalid(raftq_core::QueueError::MessageTooLarge {
                    size: message.size(),
                    limit: limits.max_message_bytes,
                }));
            }
        }
        let count = messages.len() as u64;
        match self
            .context
            .write(Command::Send { queue, messages })
            .await?
        {
            Outcome::Sent(results) => {
                metrics::counter!("raftq_messages_sent_total").increment(count);
                Ok(results.into_iter().map(Into::into).collect())
            }
            other => Err(unexpected(other)),
        }
    }
}

/// Most sends of one send stream in flight at once; the stream is read on as they finish.
pub const MAX_STREAMED_SENDS: usize = 1_024;
/// Most body bytes of one send stream in flight at once (a single larger send still
/// goes, alone).
const MAX_STREAMED_BYTES: usize = 16 * 1024 * 1024;

type ConsumeAnswers =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::ConsumeResponse, Status>> + Send + 'static>>;

type SendResults =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::StreamedSendResult, Status>> + Send + 'static>>;

fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| {
        invalid(raftq_core::QueueError::InvalidArgument {
            field: field.into(),
            reason: "is required".into(),
        })
    })
}

impl MessageApi {
    /// One message sent here, by a `Send` call or on a send stream.
    async fn send_one(&self, request: pb::SendRequest) -> Result<pb::SendResponse, Status> {
        let message = required(request.message, "message")?;
        let mut results = self.send_messages(request.queue, vec![message]).await?;
        results
            .pop()
            .ok_or_else(|| Status::internal("send returned no result"))
    }

    /// One send of a send stream, answered as `Send` would answer it.
    async fn streamed_send(&self, item: pb::StreamedSend) -> pb::StreamedSendResult {
        metrics::counter!("raftq_streamed_sends_total").increment(1);
        let outcome = match required(item.send, "send") {
            Ok(send) => self.send_one(send).await,
            Err(status) => Err(status),
        };
        match outcome {
            Ok(sent) => pb::StreamedSendResult {
                id: item.id,
                sent: Some(sent),
                ..pb::StreamedSendResult::default()
            },
            Err(status) => pb::StreamedSendResult {
                id: item.id,
                sent: None,
                code: status.code() as i32,
                error: status.message().to_string(),
            },
        }
    }

    /// Reads a send stream and answers each send as it is stored, with at most
    /// [`MAX_STREAMED_SENDS`] and [`MAX_STREAMED_BYTES`] in flight. A broken request stream ends the answers with
    /// its status once the sends already read are answered; so does the node stopping,
    /// with OK (the client sends what it had not had answered again, elsewhere).
    async fn serve_send_stream(
        self,
        mut incoming: Streaming<pb::StreamedSend>,
        answers: mpsc::Sender<Result<pb::StreamedSendResult, Status>>,
    ) {
        let api = &self;
        let mut in_flight = FuturesUnordered::new();
        let mut bytes_in_flight = 0;
        let mut reading = true;
        let mut broken = None;
        let mut stopped = self.stopped.clone();
        let stopping = async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        };
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                () = &mut stopping, if reading => reading = false,
                next = incoming.message(), if reading
                    && in_flight.len() < MAX_STREAMED_SENDS
                    && bytes_in_flight < MAX_STREAMED_BYTES => {
                    match next {
                        Ok(Some(item)) => {
                            let bytes = item
                                .send
                                .as_ref()
                                .and_then(|send| send.message.as_ref())
                                .map_or(0, |message| message.body.len());
                            bytes_in_flight += bytes;
                            in_flight.push(async move { (api.streamed_send(item).await, bytes) });
                        }
                        Ok(None) => reading = false,
                        Err(status) => {
                            reading = false;
                            broken = Some(status);
                        }
                    }
                }
                Some((answer, bytes)) = in_flight.next(), if !in_flight.is_empty() => {
                    bytes_in_flight -= bytes;
                    if answers.send(Ok(answer)).await.is_err() {
                        // The caller is gone. Sends already proposed still commit;
                        // their answers have nowhere to go.
                        return;
                    }
                }
                else => break,
            }
        }
        if let Some(status) = broken {
            let _ = answers.send(Err(status)).await;
        }
    }
}

#[tonic::async_trait]
impl MessageService for MessageApi {
    type SendStreamStream = SendResults;

    async fn send_stream(
        &self,
        request: Request<Streaming<pb::StreamedSend>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        self.context.require_leader()?;
        let (answers, answered) = mpsc::channel(MAX_STREAMED_SENDS);
        tokio::spawn(
            self.clone_api()
                .serve_send_stream(request.into_inner(), answers),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(answered))))
    }

    type ConsumeStream = ConsumeAnswers;

    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        self.context.require_leader()?;
        if *self.stopping.borrow() {
            return Err(Status::unavailable("this node is stopping"));
        }
        let slot = super::consume::StreamSlot::take()?;
        let (answers, answered) = mpsc::channel(super::consume::ANSWER_QUEUE);
        tokio::spawn(
            self.clone_api()
                .serve_consume(request.into_inner(), answers, slot),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(answered))))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, send);
        self.send_one(request.into_inner()).await.map(Response::new)
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, send_batch);
        let request = request.into_inner();
        let results = self.send_messages(request.queue, request.messages).await?;
        Ok(Response::new(pb::SendBatchResponse { results }))
    }

    async fn receive(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<pb::ReceiveResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, receive);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let limits = &self.context.limits;
        let max_messages = request.max_messages.max(1);
        if max_messages > limits.max_receive_messages {
            return Err(invalid(raftq_core::QueueError::InvalidArgument {
                field: "max_messages".into(),
                reason: format!("must be in 1..={}", limits.max_receive_messages),
            }));
        }
        if request.lease_ms != 0 {
            limits
                .check_lease("lease_ms", request.lease_ms)
                .map_err(invalid)?;
        }
        if request.wait_ms > MAX_WAIT_MS {
            return Err(invalid(raftq_core::QueueError::InvalidArgument {
                field: "wait_ms".into(),
                reason: format!("must be at most {MAX_WAIT_MS} ms"),
            }));
        }
        if request.ack_receipts.len() > limits.max_batch_messages {
            return Err(invalid(raftq_core::QueueError::InvalidArgument {
                field: "ack_receipts".into(),
                reason: format!("must hold at most {} receipts", limits.max_batch_messages),
            }));
        }
        // Acks to apply with the first write; the answer carries their results.
        let mut acks = Some(receipts(&request.ack_receipts)?).filter(|acks| !acks.is_empty());
        let mut acked = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(request.wait_ms);
        let mut applied = self.context.node.state().subscribe();
        loop {
            // Only write a receive into the log when it would deliver something, or when
            // the caller does not wait (so an unknown queue still gets NOT_FOUND from Raft).
            let selective = request.message_id != 0 || !request.correlation_id.is_empty();
            let deliverable = {
                let state = self.context.node.state().read();
                if selective {
                    state.has_selected_deliverable(
                        &request.queue,
                        request.message_id,
                        &request.correlation_id,
                        wall_clock_ms(),
                    )
                } else {
                    state.has_deliverable(&request.queue, wall_clock_ms())
                }
            }
            // An unknown queue here may be one a new leader has not applied yet: let the
            // log decide.
            .unwrap_or(true);
            let out_of_time = tokio::time::Instant::now() >= deadline;
            let receiving = deliverable || out_of_time;
            let ack = acks.take().map(|receipts| Command::AckBatch {
                queue: request.queue.clone(),
                receipts,
            });
            if !receiving {
                if let Some(ack) = ack {
                    // Nothing to receive yet: the acks go in at once, the receive waits.
                    acked = match self.context.write(ack).await? {
                        Outcome::AckedBatch(results) => ack_results(results),
                        other => return Err(unexpected(other)),
                    };
                }
            } else {
                let command = if selective {
                    Command::ReceiveSelected {
                        queue: request.queue.clone(),
                        message_id: request.message_id,
                        correlation_id: request.correlation_id.clone(),
                        max_messages,
                        lease_ms: request.lease_ms,
                    }
                } else {
                    Command::Receive {
                        queue: request.queue.clone(),
                        max_messages,
                        lease_ms: request.lease_ms,
                    }
                };
                let outcome = match ack {
                    // The acks and the receive share one entry, acks first.
                    Some(ack) => match self
                        .context
                        .write(Command::Batch(vec![ack, command]))
                        .await?
                    {
                        Outcome::Batch(mut results) if results.len() == 2 => {
                            let received = results.pop();
                            match results.pop() {
                                Some(Ok(Outcome::AckedBatch(results))) => {
                                    acked = ack_results(results);
                                }
                                Some(Err(error)) => return Err(ServiceError::from(error).into()),
                                other => {
                                    return Err(Status::internal(format!(
                                        "unexpected ack outcome {other:?}"
                                    )));
                                }
                            }
                            received
                                .unwrap_or_else(|| Ok(Outcome::Received(Vec::new())))
                                .map_err(|error| Status::from(ServiceError::from(error)))?
                        }
                        other => return Err(unexpected(other)),
                    },
                    None => self.context.write(command).await?,
                };
                let deliveries = match outcome {
                    Outcome::Received(deliveries) => deliveries,
                    other => return Err(unexpected(other)),
                };
                if !deliveries.is_empty() || out_of_time {
                    metrics::counter!("raftq_messages_delivered_total")
                        .increment(deliveries.len() as u64);
                    return Ok(Response::new(pb::ReceiveResponse {
                        messages: deliveries.into_iter().map(Into::into).collect(),
                        ack_results: acked,
                    }));
                }
            }
            let wake = deadline.min(tokio::time::Instant::now() + POLL_INTERVAL);
            // Either a new entry was applied or the poll interval passed: look again.
            let _ = tokio::time::timeout_at(wake, applied.changed()).await;
            if !self.context.node.is_leader() {
                return Err(ServiceError::from(raftq_cluster::ClusterError::NotLeader {
                    leader_id: self.context.node.leader().map(|(id, _)| id),
                    leader_address: self.context.node.leader().map(|(_, address)| address),
                })
                .into());
            }
        }
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, ack);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let receipt = receipt(&request.receipt)?;
        match self
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
        forward_to_leader!(self.context, request, MessageServiceClient<_>, ack_batch);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let receipts = receipts(&request.receipts)?;
        match self
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
        forward_to_leader!(self.context, request, MessageServiceClient<_>, nack);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let receipt = receipt(&request.receipt)?;
        let command = Command::Nack {
            queue: request.queue,
            receipt,
            delay_ms: request.delay_ms,
        };
        match self.context.write(command).await? {
            Outcome::Nacked { visible_at_ms } => {
                metrics::counter!("raftq_messages_nacked_total").increment(1);
                Ok(Response::new(pb::NackResponse { visible_at_ms }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, extend_lease);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let receipt = receipt(&request.receipt)?;
        self.context
            .limits
            .check_lease("lease_ms", request.lease_ms)
            .map_err(invalid)?;
        let command = Command::ExtendLease {
            queue: request.queue,
            receipt,
            lease_ms: request.lease_ms,
        };
        match self.context.write(command).await? {
            Outcome::LeaseExtended {
                lease_expires_at_ms,
            } => Ok(Response::new(pb::ExtendLeaseResponse {
                lease_expires_at_ms,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, peek);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        let max = match request.max_messages as usize {
            0 => DEFAULT_PEEK,
            n if n > MAX_PEEK => {
                return Err(invalid(raftq_core::QueueError::InvalidArgument {
                    field: "max_messages".into(),
                    reason: format!("must be at most {MAX_PEEK}"),
                }));
            }
            n => n,
        };
        self.context.read_barrier().await?;
        let messages = self
            .context
            .node
            .state()
            .peek(
                &request.queue,
                request.after_sequence,
                max,
                request.message_id,
                &request.correlation_id,
            )
            .map_err(|error| match error {
                ReadError::Queue(error) => Status::from(ServiceError::from(error)),
                ReadError::Store(error) => Status::internal(error.to_string()),
            })?;
        Ok(Response::new(pb::PeekResponse {
            messages: messages.into_iter().map(Into::into).collect(),
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, commit);
        let request = request.into_inner();
        let mut acks = Vec::with_capacity(request.acks.len());
        for ack in request.acks {
            self.context.check_queue_name(&ack.queue)?;
            acks.push(TransactionAck {
                queue: ack.queue,
                receipt: receipt(&ack.receipt)?,
            });
        }
        let mut sends = Vec::with_capacity(request.sends.len());
        for send in request.sends {
            self.context.check_queue_name(&send.queue)?;
            let message = send.message.ok_or_else(|| {
                invalid(raftq_core::QueueError::InvalidArgument {
                    field: "sends.message".into(),
                    reason: "every send needs a message".into(),
                })
            })?;
            sends.push(TransactionSend {
                queue: send.queue,
                message: raftq_proto::new_message(message),
            });
        }
        let command = Command::Commit {
            transaction_id: request.transaction_id,
            acks,
            sends,
        };
        match self.context.write(command).await? {
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

    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        forward_to_leader!(self.context, request, MessageServiceClient<_>, redrive);
        let request = request.into_inner();
        self.context.check_queue_name(&request.queue)?;
        if !request.to.is_empty() {
            self.context.check_queue_name(&request.to)?;
        }
        let command = Command::Redrive {
            queue: request.queue,
            message_ids: request.message_ids,
            max: request.max_messages,
            to: request.to,
        };
        match self.context.write(command).await? {
            Outcome::Redriven { moved } => {
                metrics::counter!("raftq_messages_redriven_total").increment(moved);
                Ok(Response::new(pb::RedriveResponse { moved }))
            }
            other => Err(unexpected(other)),
        }
    }
}
