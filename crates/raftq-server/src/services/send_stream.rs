//! Send streams: many single sends on one stream, each answered as `Send` would answer
//! it, with at most [`MAX_STREAMED_SENDS`] and [`MAX_STREAMED_BYTES`] in flight. A send
//! goes to its queue's group: served here when this node leads it, else passed on as a
//! `Send` call, its answer naming that group's leader.

use futures::stream::{FuturesUnordered, Stream, StreamExt};
use raftq_core::access::Action;
use raftq_proto::pb::{self, message_service_client::MessageServiceClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::message::{MessageApi, required};
use crate::auth::Caller;
use crate::context::Route;

/// Most sends of one send stream in flight at once; the stream is read on as they finish.
pub const MAX_STREAMED_SENDS: usize = 1_024;
/// Most body bytes of one send stream in flight at once (a single larger send still
/// goes, alone).
const MAX_STREAMED_BYTES: usize = 16 * 1024 * 1024;

pub(super) type SendResults =
    std::pin::Pin<Box<dyn Stream<Item = Result<pb::StreamedSendResult, Status>> + Send + 'static>>;

impl MessageApi {
    /// Opens a send stream: on any node with data groups, on group 1's leader without.
    pub(super) fn open_send_stream(
        &self,
        request: Request<Streaming<pb::StreamedSend>>,
    ) -> Result<Response<SendResults>, Status> {
        // With data groups each send goes to its queue's group, from any node.
        if !self.context.has_data_groups() {
            self.context.require_leader()?;
        }
        let caller = crate::auth::caller(&request)?;
        let slot = self.context.admission.send_stream()?;
        let (answers, answered) = mpsc::channel(MAX_STREAMED_SENDS);
        let api = self.clone_api();
        tokio::spawn(async move {
            api.serve_send_stream(request.into_inner(), caller, answers)
                .await;
            drop(slot);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answered))))
    }

    /// One send of a send stream, answered as `Send` would answer it.
    async fn streamed_send(
        &self,
        item: pb::StreamedSend,
        caller: &Caller,
    ) -> pb::StreamedSendResult {
        metrics::counter!("raftq_streamed_sends_total").increment(1);
        let (outcome, leader) = match required(item.send, "send") {
            Ok(send) => {
                match crate::auth::authorize(
                    &self.context.meta,
                    caller,
                    Action::Send,
                    Some(&send.queue),
                ) {
                    Ok(()) => self.send_routed(send, caller).await,
                    Err(status) => (Err(status), None),
                }
            }
            Err(status) => (Err(status), None),
        };
        raftq_proto::streamed_send_result(item.id, outcome, leader)
    }

    /// One send of a send stream, in the group holding its queue: here when this node
    /// leads that group, else forwarded as a `Send` call; with the leader's address when
    /// it was forwarded.
    async fn send_routed(
        &self,
        send: pb::SendRequest,
        caller: &Caller,
    ) -> (Result<pb::SendResponse, Status>, Option<String>) {
        if !self.context.has_data_groups() {
            // Everything lives in group 1: served here, as the stream opened on its leader.
            return (self.send_one(send).await, None);
        }
        let context = match self.context.for_queue_name(&send.queue).await {
            Ok(context) => context,
            Err(status) => return (Err(status), None),
        };
        let mut request = Request::new(send);
        request.extensions_mut().insert(caller.clone());
        let (channel, leader) = match context.route(&request) {
            Ok(Route::Local) => {
                return (self.on(context).send_one(request.into_inner()).await, None);
            }
            Ok(Route::Leader(channel, leader)) => (channel, leader),
            Err(status) => return (Err(status), None),
        };
        let answer = MessageServiceClient::new(channel)
            .max_decoding_message_size(raftq_proto::wire::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(raftq_proto::wire::MAX_MESSAGE_BYTES)
            .send(context.forwarded(request))
            .await;
        match answer {
            Ok(response) => {
                // A later hop may have named the leader it reached.
                let named = response
                    .metadata()
                    .get(raftq_proto::wire::LEADER_ADDRESS_KEY)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string);
                (
                    Ok(response.into_inner()),
                    Some(named.unwrap_or(leader.public)),
                )
            }
            Err(status) => (
                Err(crate::error::forward_failed(status, &leader.internal)),
                None,
            ),
        }
    }

    /// Reads a send stream and answers each send as it is stored, with at most
    /// [`MAX_STREAMED_SENDS`] and [`MAX_STREAMED_BYTES`] in flight. A broken request stream ends the answers with
    /// its status once the sends already read are answered; so does the node stopping,
    /// with OK (the client sends what it had not had answered again, elsewhere).
    async fn serve_send_stream(
        self,
        mut incoming: Streaming<pb::StreamedSend>,
        caller: Caller,
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
                            let caller = &caller;
                            in_flight.push(async move { (api.streamed_send(item, caller).await, bytes) });
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
