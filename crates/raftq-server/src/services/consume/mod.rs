//! The Consume stream: a consumer on one queue that the leader keeps supplied. One task
//! per stream writes one log entry at a time, holding the acks read since the last one
//! and a receive for as many messages as the consumer has room for, so a consumer
//! never waits for its own round trip before the next batch, and the queue hands out
//! its messages to the stream in order.

use raftq_core::access::Action;

use crate::auth::Caller;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use raftq_core::{Command, Outcome, QueueError};
use raftq_proto::pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

mod answer;
mod stream;

use answer::{Answered, answer, send};
use stream::{Settle, Shape, Stream, consumed, settle_commands};

use super::acks::POLL_INTERVAL;
use crate::context::Context;
use crate::error::{ServiceError, status};

/// Most deliveries one stream may hold unacknowledged.
pub const MAX_PREFETCH: u32 = 1_000;
const DEFAULT_PREFETCH: u32 = 200;
const DEFAULT_MAX_MESSAGES: u32 = 100;
/// Most body bytes a stream holds handed out and unacknowledged; a receive still takes
/// one message when the stream holds none.
const MAX_HELD_BYTES: usize = 16 * 1024 * 1024;
/// Answers queued for a client that reads them slower than they come.
const ANSWER_QUEUE: usize = 16;
/// With nothing written or answered for this long, the leader confirms with a quorum
/// that it still leads and sends an empty answer: a consumer can tell a quiet queue from
/// a stream nobody serves any more.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long the stream's first message may take.
const START_WITHIN: Duration = Duration::from_secs(10);
/// How long the writes that end a stream (its last acks, handing back its deliveries)
/// may take.
const CLOSING_WRITE_WITHIN: Duration = Duration::from_secs(5);

/// What the stream's first message asked for, checked.
struct Start {
    queue: String,
    prefetch: usize,
    max_messages: usize,
    lease_ms: u64,
}

type Write<'a> = Pin<Box<dyn Future<Output = Result<Outcome, Status>> + Send + 'a>>;
type Answers = mpsc::Sender<Result<pb::ConsumeResponse, Status>>;
/// The answers of one Consume stream, as the service returns them.
pub type ConsumeAnswers =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ConsumeResponse, Status>> + Send + 'static>>;

/// Serves Consume streams: one task per stream.
pub struct Consumer {
    context: Context,
    /// Turns true when the node begins to stop, before a leader hands over: streams write
    /// their last acks and hand back their deliveries while it still leads.
    stopping: watch::Receiver<bool>,
    /// Who opened the stream; its grants are checked when the stream starts.
    caller: Caller,
}

/// How a stream ended.
enum End {
    /// The consumer closed its side or went away.
    Consumer,
    /// The node is stopping.
    Node,
    /// The stream is refused with this status (a bad request, an unknown queue, lost
    /// leadership).
    Failed(Status),
}

impl Consumer {
    pub fn new(context: Context, stopping: watch::Receiver<bool>, caller: Caller) -> Consumer {
        Consumer {
            context,
            stopping,
            caller,
        }
    }

    /// Opens a stream on the leader, if this node leads, is not stopping and has room for
    /// it (`[admission]` consume stream limits); its task answers on what this returns.
    pub fn open(self, incoming: Streaming<pb::ConsumeRequest>) -> Result<ConsumeAnswers, Status> {
        // With data groups the stream's group is known once `start` names its queue.
        if !self.context.has_data_groups() {
            self.context.require_leader()?;
        }
        if *self.stopping.borrow() {
            return Err(status(ServiceError::Stopping));
        }
        // Without authentication (`--insecure`) every caller is the same one: only the
        // node's limit applies.
        let principal = match &self.caller {
            Caller::Anyone => None,
            caller => Some(caller.name()),
        };
        let slot = self.context.admission.consume_stream(principal)?;
        let (answers, answered) = mpsc::channel(ANSWER_QUEUE);
        tokio::spawn(self.serve(incoming, answers, slot));
        Ok(Box::pin(ReceiverStream::new(answered)))
    }

    fn consume_start(&self, first: Option<pb::ConsumeRequest>) -> Result<Start, Status> {
        let Some(pb::consume_request::Request::Start(start)) = first.and_then(|r| r.request) else {
            return Err(status(QueueError::invalid(
                "start",
                "the first message of a Consume stream must be `start`",
            )));
        };
        self.context.check_queue_name(&start.queue)?;
        crate::auth::authorize(
            &self.context.meta,
            &self.caller,
            Action::Receive,
            Some(&start.queue),
        )?;
        let limits = &self.context.limits;
        let prefetch = match start.prefetch {
            0 => DEFAULT_PREFETCH,
            n if n > MAX_PREFETCH => {
                return Err(status(QueueError::invalid(
                    "prefetch",
                    format!("must be in 1..={MAX_PREFETCH}"),
                )));
            }
            n => n,
        };
        let max_messages = match start.max_messages {
            0 => DEFAULT_MAX_MESSAGES,
            n => n,
        };
        limits.check_receive_size(max_messages).map_err(status)?;
        if start.lease_ms != 0 {
            limits
                .check_lease("lease_ms", start.lease_ms)
                .map_err(status)?;
        }
        Ok(Start {
            queue: start.queue,
            prefetch: prefetch as usize,
            max_messages: max_messages as usize,
            lease_ms: start.lease_ms,
        })
    }

    /// Serves one Consume stream until the consumer closes it, the node stops leading or
    /// begins to stop, or a request is refused. However it ends, the acks read are written
    /// and the deliveries held are handed back while this node leads; a refusal then
    /// ends the answers with its status, a stopping node with UNAVAILABLE.
    async fn serve(
        self,
        mut incoming: Streaming<pb::ConsumeRequest>,
        answers: Answers,
        _slot: crate::admission::ConsumeSlot,
    ) {
        let mut stopping = self.stopping.clone();
        let first = tokio::select! {
            first = tokio::time::timeout(START_WITHIN, incoming.message()) => first,
            () = stopped(&mut stopping) => return,
        };
        let start = match first {
            Ok(Ok(first)) => self.consume_start(first),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(status(QueueError::invalid(
                "start",
                format!("no `start` within {START_WITHIN:?}"),
            ))),
        };
        let start = match start {
            Ok(start) => start,
            Err(status) => {
                let _ = answers.try_send(Err(status));
                return;
            }
        };
        // Served by the leader of the group holding the queue; elsewhere the stream ends
        // naming it.
        let context = match self.context.for_queue_name(&start.queue).await {
            Ok(context) => context,
            Err(status) => {
                let _ = answers.try_send(Err(status));
                return;
            }
        };
        if let Err(status) = context.require_leader() {
            let _ = answers.try_send(Err(status));
            return;
        }
        let this = Consumer { context, ..self };
        this.serve_started(start, incoming, answers).await;
    }

    /// [`Consumer::serve`] once the stream has started on the leader of its queue's group.
    async fn serve_started(
        self,
        start: Start,
        mut incoming: Streaming<pb::ConsumeRequest>,
        answers: Answers,
    ) {
        let mut stream = Stream {
            held: HashMap::new(),
            held_bytes: 0,
            acks: Vec::new(),
            nacks: Vec::new(),
        };
        let end = self
            .consume(&start, &mut incoming, &answers, &mut stream)
            .await;
        self.close(&start.queue, stream).await;
        let last = match end {
            End::Consumer => return,
            End::Node => status(ServiceError::Stopping),
            End::Failed(status) => status,
        };
        // A client that reads no more does not hold the node up.
        let _ = tokio::time::timeout(POLL_INTERVAL, answers.send(Err(last))).await;
    }

    /// What to write next, if anything: the acks and nacks read (as many as one write
    /// takes), then a receive when `may_receive`, the stream has room and the queue has
    /// something to hand out.
    fn next_write(
        &self,
        start: &Start,
        stream: &mut Stream,
        may_receive: bool,
    ) -> Option<(Vec<Command>, Shape)> {
        let limits = &self.context.limits;
        stream.forget_ended(self.now_ms());
        let room = start.prefetch.saturating_sub(stream.held.len());
        let receive = may_receive
            && room > 0
            && stream.held_bytes < MAX_HELD_BYTES
            && self.deliverable(&start.queue);
        if !receive && stream.acks.is_empty() && stream.nacks.is_empty() {
            return None;
        }
        let (mut commands, settled) =
            settle_commands(&start.queue, stream, limits.max_batch_messages);
        if receive {
            commands.push(Command::Receive {
                queue: start.queue.clone(),
                max_messages: room.min(limits.max_receive_messages as usize) as u32,
                lease_ms: start.lease_ms,
            });
        }
        Some((commands, Shape { receive, ..settled }))
    }

    /// While the stream has nothing to write: ends it when this node no longer leads, and
    /// after [`HEARTBEAT`] without an answer confirms it still leads and sends a heartbeat.
    async fn keep_alive(
        &self,
        answers: &Answers,
        last_answer: &mut Instant,
        stopping: &mut watch::Receiver<bool>,
    ) -> Result<(), End> {
        self.context.require_leader().map_err(End::Failed)?;
        if last_answer.elapsed() < HEARTBEAT {
            return Ok(());
        }
        self.confirm_leading().await.map_err(End::Failed)?;
        match send(answers, pb::ConsumeResponse::default(), stopping).await {
            Answered::Gone => Err(End::Consumer),
            Answered::Stopping => Err(End::Node),
            Answered::Yes | Answered::Nothing => {
                *last_answer = Instant::now();
                Ok(())
            }
        }
    }

    async fn consume(
        &self,
        start: &Start,
        incoming: &mut Streaming<pb::ConsumeRequest>,
        answers: &Answers,
        stream: &mut Stream,
    ) -> End {
        let max_acks = self.context.limits.max_batch_messages;
        let mut reading = true;
        let mut write: Option<Write<'_>> = None;
        // The last receive handed out nothing (another consumer was first): wait for
        // another entry to be applied before the next, instead of writing empty receives.
        let mut dry = false;
        let mut shape = Shape::default();
        let mut last_answer = Instant::now();
        let mut applied = self.context.node.state().subscribe();
        let mut stopping = self.stopping.clone();
        let end = loop {
            if write.is_none() {
                match self.next_write(start, stream, reading && !dry) {
                    Some((commands, planned)) => {
                        shape = planned;
                        write = Some(Box::pin(self.context.write(Command::Batch(commands))));
                    }
                    None if !reading => break End::Consumer,
                    None => {}
                }
            }
            let idle = write.is_none();
            tokio::select! {
                () = stopped(&mut stopping) => break End::Node,
                next = incoming.message(),
                    if reading && stream.acks.len() + stream.nacks.len() < max_acks =>
                {
                    match next {
                        Ok(Some(request)) => match self.consume_settle(request) {
                            Ok(settle) => stream.settle(settle),
                            Err(status) => break End::Failed(status),
                        },
                        // Closed by the consumer, or broken: what was read is still
                        // acknowledged.
                        Ok(None) | Err(_) => reading = false,
                    }
                }
                outcome = async {
                    match write.as_mut() {
                        Some(write) => write.await,
                        None => std::future::pending().await,
                    }
                } => {
                    write = None;
                    // Entries applied so far are seen: a dry stream waits for a later one.
                    applied.borrow_and_update();
                    let written = match consumed(outcome, shape) {
                        Ok(written) => written,
                        Err(status) => break End::Failed(status),
                    };
                    dry = shape.receive && written.delivered.is_empty();
                    stream.hold(&written.delivered);
                    match answer(answers, written, start.max_messages, &mut stopping).await {
                        Answered::Yes => last_answer = Instant::now(),
                        Answered::Nothing => {}
                        Answered::Gone => break End::Consumer,
                        Answered::Stopping => break End::Node,
                    }
                }
                // Nothing to write: look again when an entry is applied (a send may have
                // made a message deliverable) or a lease or delay may have ended.
                _ = tokio::time::timeout(POLL_INTERVAL, applied.changed()), if idle => {
                    dry = false;
                    if let Err(end) = self.keep_alive(answers, &mut last_answer, &mut stopping).await {
                        break end;
                    }
                }
            }
        };
        // What a write under way hands out is the stream's too, though never answered.
        if let Some(write) = write
            && let Ok(written) = consumed(write.await, shape)
        {
            stream.hold(&written.delivered);
        }
        end
    }

    /// Confirms that a quorum still follows this node: from Raft's own heartbeats when a
    /// quorum answered one lately, else with a read barrier.
    async fn confirm_leading(&self) -> Result<(), Status> {
        if self.context.node.quorum_acked_within(HEARTBEAT) {
            return Ok(());
        }
        match tokio::time::timeout(HEARTBEAT, self.context.read_barrier()).await {
            Ok(confirmed) => confirmed,
            Err(_) => Err(status(raftq_cluster::ClusterError::NoQuorum {
                reason: format!("this node could not confirm it leads within {HEARTBEAT:?}"),
            })),
        }
    }

    /// Log time as the leader stamps it.
    fn now_ms(&self) -> u64 {
        self.context.node.log_time_ms()
    }

    /// Whether a receive on `queue` would hand out something now; an unknown queue lets
    /// the log decide (a new leader may not have applied it yet), so that it is refused
    /// with NOT_FOUND.
    fn deliverable(&self, queue: &str) -> bool {
        let now_ms = self.now_ms();
        self.context
            .node
            .state()
            .read()
            .has_deliverable(queue, now_ms)
            .unwrap_or(true)
    }

    /// What an ack or nack message of the stream asks for, checked.
    fn consume_settle(&self, request: pb::ConsumeRequest) -> Result<Settle, Status> {
        let limits = &self.context.limits;
        let parsed = |field: &str, receipts: &[String]| {
            limits
                .check_receipts(field, receipts.len())
                .map_err(status)?;
            raftq_proto::receipts(receipts).map_err(status)
        };
        match request.request {
            Some(pb::consume_request::Request::Ack(ack)) => {
                Ok(Settle::Ack(parsed("ack.receipts", &ack.receipts)?))
            }
            Some(pb::consume_request::Request::Nack(nack)) => {
                limits
                    .check_nack_delay("nack.delay_ms", nack.delay_ms)
                    .map_err(status)?;
                let receipts = parsed("nack.receipts", &nack.receipts)?;
                Ok(Settle::Nack(receipts, nack.delay_ms))
            }
            Some(pb::consume_request::Request::Start(_)) => Err(status(QueueError::invalid(
                "start",
                "this stream has started already; open another to consume another queue",
            ))),
            None => Err(status(QueueError::invalid("request", "is required"))),
        }
    }

    /// Ends a stream while this node leads: writes the acks it read and did not write,
    /// then makes its unacknowledged deliveries visible again at once, as nobody will
    /// handle them on this stream.
    async fn close(&self, queue: &str, mut stream: Stream) {
        if !self.context.node.is_leader() {
            return;
        }
        let max_acks = self.context.limits.max_batch_messages;
        while !stream.acks.is_empty() || !stream.nacks.is_empty() {
            let (commands, shape) = settle_commands(queue, &mut stream, max_acks);
            let settled = self.context.write(Command::Batch(commands));
            let written = tokio::time::timeout(CLOSING_WRITE_WITHIN, settled).await;
            if !written.is_ok_and(|outcome| consumed(outcome, shape).is_ok()) {
                tracing::debug!("writing a closed consumer's last acks failed");
                return;
            }
        }
        stream.forget_ended(self.now_ms());
        if stream.held.is_empty() {
            return;
        }
        let nacks = stream
            .held
            .into_keys()
            .map(|receipt| Command::Nack {
                queue: queue.to_string(),
                receipt,
                delay_ms: 0,
            })
            .collect();
        let released = tokio::time::timeout(
            CLOSING_WRITE_WITHIN,
            self.context.write(Command::Batch(nacks)),
        )
        .await;
        if let Ok(Ok(Outcome::Batch(results))) = released {
            let done = results.iter().filter(|result| result.is_ok()).count();
            metrics::counter!("raftq_consume_released_total").increment(done as u64);
        } else {
            tracing::debug!("releasing a closed consumer's deliveries failed");
        }
    }
}

/// Resolves once the node begins to stop.
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}
