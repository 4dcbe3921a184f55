//! Single sends multiplexed on one `SendStream` per leader connection: many sends in
//! flight, each answered on its own, without an HTTP/2 stream, a header block and a
//! trailer per message. A pipe is a best-effort fast path: whatever it cannot answer (it
//! could not open, the stream broke, the node stopped leading) the caller sends again with
//! the unary call, under the same idempotency key, so a message is stored once either way.

use std::collections::HashMap;

use crate::client::Channel;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use crate::error::is_retryable;
use crate::pb::{self, message_service_client::MessageServiceClient};

/// Most sends one pipe has on the wire at once (the server serves up to as many per
/// stream); further sends wait for a place.
pub(crate) const MAX_IN_FLIGHT: usize = 1_024;

/// What a caller gets back: the answer, or `None` when the pipe could not answer and the
/// send must go the unary way.
pub(crate) type Answer = Option<Result<pb::SendResponse, Status>>;

type Waiting = (
    pb::SendRequest,
    oneshot::Sender<Result<pb::SendResponse, Status>>,
);

/// The caller's end of a pipe; its task ends when this is dropped or the stream fails.
#[derive(Clone)]
pub(crate) struct Pipe {
    sends: mpsc::Sender<Waiting>,
}

/// How a pipe's stream ended.
pub(crate) enum Ended {
    /// The server does not serve send streams; do not open another to it.
    Unsupported,
    /// Anything else; a later send may open a new pipe.
    Other,
}

/// What a pipe tells its client: the node that leads a queue's group, when the node at
/// the other end passed a send to that queue on to it.
pub(crate) type Learned = Box<dyn Fn(&str, &str) + Send + 'static>;

impl Pipe {
    /// Opens a pipe over `channel`; `ended` hears how its stream ended, `learned`
    /// (queue, leader address) where a queue's sends would better go.
    pub(crate) fn open(
        channel: Channel,
        max_message_bytes: usize,
        ended: impl FnOnce(Ended) + Send + 'static,
        learned: Learned,
    ) -> Pipe {
        let (sends, waiting) = mpsc::channel(MAX_IN_FLIGHT);
        let client = MessageServiceClient::new(channel)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes);
        tokio::spawn(async move { ended(run(client, waiting, learned).await) });
        Pipe { sends }
    }

    /// False once the pipe's task has ended.
    pub(crate) fn is_open(&self) -> bool {
        !self.sends.is_closed()
    }

    /// Sends `request` on the stream and waits for its answer.
    pub(crate) async fn send(&self, request: pb::SendRequest) -> Answer {
        let (answer, answered) = oneshot::channel();
        self.sends.send((request, answer)).await.ok()?;
        answered.await.ok()
    }
}

async fn run(
    mut client: MessageServiceClient<Channel>,
    mut waiting: mpsc::Receiver<Waiting>,
    learned: Learned,
) -> Ended {
    // Every send on the wire has a place in `pending`, and there are at most
    // MAX_IN_FLIGHT of those: the outgoing queue never fills.
    let (outgoing, wire) = mpsc::channel(MAX_IN_FLIGHT);
    let mut answers = match client.send_stream(ReceiverStream::new(wire)).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == Code::Unimplemented => return Ended::Unsupported,
        Err(_) => return Ended::Other,
    };
    // Per send on the wire: who waits for its answer, and its queue.
    let mut pending: HashMap<u64, (oneshot::Sender<Result<pb::SendResponse, Status>>, String)> =
        HashMap::new();
    let mut next_id = 0u64;
    loop {
        tokio::select! {
            next = waiting.recv(), if pending.len() < MAX_IN_FLIGHT => {
                let Some((send, answer)) = next else { return Ended::Other };
                let queue = send.queue.clone();
                next_id += 1;
                if outgoing.try_send(pb::StreamedSend { id: next_id, send: Some(send) }).is_err() {
                    return Ended::Other;
                }
                pending.insert(next_id, (answer, queue));
            }
            answer = answers.message() => {
                let Ok(Some(result)) = answer else { return Ended::Other };
                let Some((caller, queue)) = pending.remove(&result.id) else { continue };
                if !result.leader_address.is_empty() {
                    learned(&queue, &result.leader_address);
                }
                let outcome = match (result.code, result.sent) {
                    (0, Some(sent)) => Ok(sent),
                    (0, None) => Err(Status::internal("a streamed send was answered without its result")),
                    (code, _) => Err(Status::new(Code::from_i32(code), result.error)),
                };
                if let Err(status) = &outcome
                    && is_retryable(status)
                {
                    // The node may have stopped leading: this send and every other
                    // pending one go the unary way, which follows the leader.
                    return Ended::Other;
                }
                let _ = caller.send(outcome);
            }
        }
    }
}
