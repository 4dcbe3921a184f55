//! The agent's message service: sends into the outbox, the rest passed through (consume
//! streams too).
//!
//! A send stored in the outbox is answered with message id and sequence 0 (the cluster
//! gives them when it takes the message) and the metadata `raftq-local-id`, the order the
//! agent took it in.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use raftq_client::{Client, Outbox};
use raftq_core::Limits;
use raftq_proto::pb::message_service_server::MessageService;
use raftq_proto::pb::{self, message_service_client::MessageServiceClient};
use raftq_proto::wire::MAX_MESSAGE_BYTES;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{passed, refused_by_outbox};

/// Response metadata on a send the agent stored: its local id (of the first message).
pub const LOCAL_ID_KEY: &str = "raftq-local-id";

pub struct AgentMessages {
    pub outbox: Outbox,
    pub cluster: Client,
}

/// Passes `$request` through to the cluster's `$method`, as the client calls it.
macro_rules! pass_through {
    ($self:ident, $request:ident, $method:ident, $extra:expr) => {{
        let message = $request.into_inner();
        $self
            .cluster
            .call($extra, |channel, timeout| {
                let mut request = Request::new(message.clone());
                request.set_timeout(timeout);
                async move {
                    MessageServiceClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES)
                        .$method(request)
                        .await
                }
            })
            .await
            .map(|response| Response::new(response.into_inner()))
            .map_err(passed)
    }};
}

impl AgentMessages {
    /// Checks `sends` as the cluster would on their own (queue names, message limits) and
    /// stores them; the answer per message, with the first local id.
    async fn store(
        &self,
        sends: Vec<(String, pb::OutgoingMessage)>,
        transaction: bool,
    ) -> Result<(Vec<pb::SendResponse>, u64), Status> {
        let limits = Limits::default();
        for (queue, _) in &sends {
            raftq_core::validate_queue_name(queue, &limits).map_err(crate::error::status)?;
        }
        let checked: Vec<_> = sends
            .iter()
            .map(|(_, message)| raftq_proto::new_message(message.clone()))
            .collect();
        if transaction {
            limits
                .check_transaction_parts(0, checked.iter())
                .map_err(crate::error::status)?;
        } else {
            limits
                .check_send_batch(&checked)
                .map_err(crate::error::status)?;
        }
        let queued = self
            .outbox
            .store_sends(sends, transaction)
            .await
            .map_err(refused_by_outbox)?;
        metrics::counter!("raftq_agent_stored_total").increment(queued.len() as u64);
        let first = queued.first().map_or(0, |queued| queued.local_id);
        Ok((
            queued.iter().map(|_| pb::SendResponse::default()).collect(),
            first,
        ))
    }

    async fn store_one(&self, request: pb::SendRequest) -> Result<(pb::SendResponse, u64), Status> {
        let message = request
            .message
            .ok_or_else(|| Status::invalid_argument("invalid argument `message`: is required"))?;
        let (mut answers, first) = self.store(vec![(request.queue, message)], false).await?;
        Ok((answers.pop().unwrap_or_default(), first))
    }
}

fn with_local_id<T>(answer: T, local_id: u64) -> Response<T> {
    let mut response = Response::new(answer);
    if let Ok(value) = local_id.to_string().parse() {
        response.metadata_mut().insert(LOCAL_ID_KEY, value);
    }
    response
}

type SendResults = std::pin::Pin<
    Box<dyn futures::Stream<Item = Result<pb::StreamedSendResult, Status>> + Send + 'static>,
>;

/// Sends of one stream stored, and answered, at most this many ahead of the reader.
const STREAM_ANSWERS: usize = 1_024;
/// Requests of a consume stream on their way to the cluster at most.
const CONSUME_REQUESTS: usize = 64;

#[tonic::async_trait]
impl MessageService for AgentMessages {
    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        if request.get_ref().producer.is_some() {
            // The application numbers its own sends: the cluster must judge them.
            return pass_through!(self, request, send, std::time::Duration::ZERO);
        }
        let (answer, local_id) = self.store_one(request.into_inner()).await?;
        Ok(with_local_id(answer, local_id))
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Result<Response<pb::SendBatchResponse>, Status> {
        if request.get_ref().producer.is_some() {
            return pass_through!(self, request, send_batch, std::time::Duration::ZERO);
        }
        let request = request.into_inner();
        let queue = request.queue;
        let sends = request
            .messages
            .into_iter()
            .map(|message| (queue.clone(), message))
            .collect();
        let (results, local_id) = self.store(sends, false).await?;
        Ok(with_local_id(pb::SendBatchResponse { results }, local_id))
    }

    type SendStreamStream = SendResults;

    async fn send_stream(
        &self,
        request: Request<Streaming<pb::StreamedSend>>,
    ) -> Result<Response<Self::SendStreamStream>, Status> {
        let mut incoming = request.into_inner();
        let (answers, answered) = mpsc::channel(STREAM_ANSWERS);
        let agent = AgentMessages {
            outbox: self.outbox.clone(),
            cluster: self.cluster.clone(),
        };
        tokio::spawn(async move {
            while let Some(item) = incoming.next().await {
                let answer = match item {
                    Ok(item) => {
                        let stored = match item.send {
                            Some(send) => agent.store_one(send).await.map(|(answer, _)| answer),
                            None => Err(Status::invalid_argument(
                                "invalid argument `send`: is required",
                            )),
                        };
                        Ok(raftq_proto::streamed_send_result(item.id, stored, None))
                    }
                    Err(status) => Err(status),
                };
                let broken = answer.is_err();
                if answers.send(answer).await.is_err() || broken {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answered))))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let send_only = request.get_ref().acks.is_empty() && request.get_ref().producer.is_none();
        if !send_only {
            // Acks need the cluster now: their leases are there.
            return pass_through!(self, request, commit, std::time::Duration::ZERO);
        }
        let sends = request
            .into_inner()
            .sends
            .into_iter()
            .map(|send| {
                send.message
                    .map(|message| (send.queue, message))
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "invalid argument `sends.message`: every send needs a message",
                        )
                    })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let (sent, local_id) = self.store(sends, true).await?;
        Ok(with_local_id(
            pb::CommitResponse {
                sent,
                already_committed: false,
            },
            local_id,
        ))
    }

    async fn receive(
        &self,
        request: Request<pb::ReceiveRequest>,
    ) -> Result<Response<pb::ReceiveResponse>, Status> {
        let wait = std::time::Duration::from_millis(request.get_ref().wait_ms);
        pass_through!(self, request, receive, wait)
    }

    type ConsumeStream = SendResultsOf<pb::ConsumeResponse>;

    /// Passed through: the stream is opened at the cluster's leader (again on the way
    /// there if the first node does not lead: the application's opening request is kept
    /// for that), then the application's requests go to it and its answers come back.
    /// When either side ends, so does the other; the application opens it again, as it
    /// would with a node.
    async fn consume(
        &self,
        request: Request<Streaming<pb::ConsumeRequest>>,
    ) -> Result<Response<Self::ConsumeStream>, Status> {
        let mut incoming = request.into_inner();
        let opening = match incoming.next().await {
            Some(Ok(opening)) => opening,
            Some(Err(status)) => return Err(status),
            None => {
                return Err(Status::invalid_argument(
                    "the stream ended before it started",
                ));
            }
        };
        // The sender of the attempt that reached the leader, for the pump below.
        let opened: Arc<Mutex<Option<mpsc::Sender<pb::ConsumeRequest>>>> = Arc::default();
        let answers = self
            .cluster
            .call(std::time::Duration::ZERO, |channel, _| {
                let (to_cluster, requests) = mpsc::channel(CONSUME_REQUESTS);
                let opening = opening.clone();
                let opened = opened.clone();
                async move {
                    to_cluster
                        .send(opening)
                        .await
                        .map_err(|_| Status::internal("the consume stream closed at once"))?;
                    *opened.lock().unwrap_or_else(|p| p.into_inner()) = Some(to_cluster);
                    MessageServiceClient::new(channel)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .consume(ReceiverStream::new(requests))
                        .await
                }
            })
            .await
            .map_err(passed)?
            .into_inner();
        let to_cluster = opened
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Status::internal("no consume stream was opened"))?;
        tokio::spawn(async move {
            while let Some(Ok(request)) = incoming.next().await {
                if to_cluster.send(request).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn ack(
        &self,
        request: Request<pb::AckRequest>,
    ) -> Result<Response<pb::AckResponse>, Status> {
        pass_through!(self, request, ack, std::time::Duration::ZERO)
    }

    async fn ack_batch(
        &self,
        request: Request<pb::AckBatchRequest>,
    ) -> Result<Response<pb::AckBatchResponse>, Status> {
        pass_through!(self, request, ack_batch, std::time::Duration::ZERO)
    }

    async fn nack(
        &self,
        request: Request<pb::NackRequest>,
    ) -> Result<Response<pb::NackResponse>, Status> {
        pass_through!(self, request, nack, std::time::Duration::ZERO)
    }

    async fn extend_lease(
        &self,
        request: Request<pb::ExtendLeaseRequest>,
    ) -> Result<Response<pb::ExtendLeaseResponse>, Status> {
        pass_through!(self, request, extend_lease, std::time::Duration::ZERO)
    }

    async fn reject(
        &self,
        request: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::RejectResponse>, Status> {
        pass_through!(self, request, reject, std::time::Duration::ZERO)
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        pass_through!(self, request, peek, std::time::Duration::ZERO)
    }

    async fn redrive(
        &self,
        request: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        pass_through!(self, request, redrive, std::time::Duration::ZERO)
    }

    async fn register_producer(
        &self,
        request: Request<pb::RegisterProducerRequest>,
    ) -> Result<Response<pb::RegisterProducerResponse>, Status> {
        pass_through!(self, request, register_producer, std::time::Duration::ZERO)
    }
}

type SendResultsOf<T> =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;
