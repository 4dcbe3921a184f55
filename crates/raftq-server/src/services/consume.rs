//! The Consume stream: a consumer on one queue that the leader keeps supplied. One task
//! per stream writes one log entry at a time, holding the acks read since the last one
//! and a receive for as many messages as the consumer has room for, so a consumer
//! never waits for its own round trip before the next batch, and the queue hands out
//! its messages to the stream in order.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use raftq_core::{Command, Outcome, QueueError, Receipt};
use raftq_proto::pb;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::message::{MessageApi, POLL_INTERVAL, ack_results, receipt, wall_clock_ms};
use crate::context::{invalid, unexpected};
use crate::error::ServiceError;

/// Most deliveries one stream may hold unacknowledged.
pub const MAX_PREFETCH: u32 = 1_000;
const DEFAULT_PREFETCH: u32 = 200;
const DEFAULT_MAX_MESSAGES: u32 = 100;
/// Answers queued for a client that reads them slower than they come.
pub const ANSWER_QUEUE: usize = 16;

/// What the stream's first message asked for, checked.
struct Start {
    queue: String,
    prefetch: usize,
    max_messages: usize,
    lease_ms: u64,
}

type Write<'a> = Pin<Box<dyn Future<Output = Result<Outcome, Status>> + Send + 'a>>;

/// How a stream ended, which decides what happens to its unacknowledged deliveries.
enum End {
    /// The consumer closed its side or went away: hand its deliveries back at once.
    Consumer,
    /// The node is stopping: leases end them.
    Node,
    /// The stream is refused with this status (a bad request, an unknown queue, lost
    /// leadership); its deliveries are handed back at once where this node still leads.
    Failed(Status),
}

impl MessageApi {
    fn consume_start(&self, first: Option<pb::ConsumeRequest>) -> Result<Start, Status> {
        let Some(pb::consume_request::Request::Start(start)) = first.and_then(|r| r.request) else {
            return Err(invalid(QueueError::invalid(
                "start",
                "the first message of a Consume stream must be `start`",
            )));
        };
        self.context.check_queue_name(&start.queue)?;
        let limits = &self.context.limits;
        let prefetch = match start.prefetch {
            0 => DEFAULT_PREFETCH,
            n if n > MAX_PREFETCH => {
                return Err(invalid(QueueError::invalid(
                    "prefetch",
                    format!("must be in 1..={MAX_PREFETCH}"),
                )));
            }
            n => n,
        };
        let max_messages = match start.max_messages {
            0 => DEFAULT_MAX_MESSAGES,
            n if n > limits.max_receive_messages => {
                return Err(invalid(QueueError::invalid(
                    "max_messages",
                    format!("must be in 1..={}", limits.max_receive_messages),
                )));
            }
            n => n,
        };
        if start.lease_ms != 0 {
            limits
                .check_lease("lease_ms", start.lease_ms)
                .map_err(invalid)?;
        }
        Ok(Start {
            queue: start.queue,
            prefetch: prefetch as usize,
            max_messages: max_messages as usize,
            lease_ms: start.lease_ms,
        })
    }

    /// Serves one Consume stream until the consumer closes it, the node stops leading or
    /// stopping, or a request is refused (then the answers end with that status).
    pub(super) async fn serve_consume(
        self,
        mut incoming: Streaming<pb::ConsumeRequest>,
        answers: mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    ) {
        let start = match incoming.message().await {
            Ok(first) => self.consume_start(first),
            Err(status) => Err(status),
        };
        let start = match start {
            Ok(start) => start,
            Err(status) => {
                let _ = answers.send(Err(status)).await;
                return;
            }
        };
        metrics::gauge!("raftq_consume_streams").increment(1.0);
        let mut outstanding = HashSet::new();
        let end = self
            .consume(&start, &mut incoming, &answers, &mut outstanding)
            .await;
        metrics::gauge!("raftq_consume_streams").decrement(1.0);
        match end {
            End::Consumer => self.release(&start.queue, outstanding).await,
            End::Node => {}
            End::Failed(status) => {
                let _ = answers.send(Err(status)).await;
                self.release(&start.queue, outstanding).await;
            }
        }
    }

    async fn consume(
        &self,
        start: &Start,
        incoming: &mut Streaming<pb::ConsumeRequest>,
        answers: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
        outstanding: &mut HashSet<Receipt>,
    ) -> End {
        let max_acks = self.context.limits.max_batch_messages;
        let max_receive = self.context.limits.max_receive_messages as usize;
        // Read and not written yet, in the order they came.
        let mut acks: Vec<Receipt> = Vec::new();
        let mut reading = true;
        let mut node_ended = false;
        let mut write: Option<Write<'_>> = None;
        // The last receive handed out nothing (another consumer was first): wait for the
        // state to change before the next, instead of writing empty receives.
        let mut dry = false;
        let mut receiving = false;
        let mut applied = self.context.node.state().subscribe();
        let mut stopped = self.stopped.clone();
        let end = loop {
            if write.is_none() {
                let room = start.prefetch.saturating_sub(outstanding.len());
                let receive = reading && !dry && room > 0 && self.deliverable(&start.queue);
                if receive || !acks.is_empty() {
                    let mut commands = Vec::with_capacity(2);
                    if !acks.is_empty() {
                        let taken = acks.len().min(max_acks);
                        commands.push(Command::AckBatch {
                            queue: start.queue.clone(),
                            receipts: acks.drain(..taken).collect(),
                        });
                    }
                    if receive {
                        commands.push(Command::Receive {
                            queue: start.queue.clone(),
                            max_messages: room.min(max_receive) as u32,
                            lease_ms: start.lease_ms,
                        });
                    }
                    receiving = receive;
                    write = Some(Box::pin(self.context.write(Command::Batch(commands))));
                } else if !reading {
                    break if node_ended { End::Node } else { End::Consumer };
                }
            }
            let idle = write.is_none();
            tokio::select! {
                () = async {
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                }, if reading => {
                    // Answer what is being written, then end; leases end the rest.
                    reading = false;
                    node_ended = true;
                }
                next = incoming.message(), if reading && acks.len() < max_acks => {
                    match next {
                        Ok(Some(request)) => match self.consume_acks(request) {
                            Ok(receipts) => {
                                for receipt in receipts {
                                    outstanding.remove(&receipt);
                                    acks.push(receipt);
                                }
                            }
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
                    let (acked, delivered) = match consumed(outcome) {
                        Ok(parts) => parts,
                        Err(status) => break End::Failed(status),
                    };
                    dry = receiving && delivered.is_empty();
                    for message in &delivered {
                        if let Ok(receipt) = message.receipt.parse::<Receipt>() {
                            outstanding.insert(receipt);
                        }
                    }
                    if !answer(answers, acked, delivered, start.max_messages).await {
                        // Nobody reads the answers any more.
                        break End::Consumer;
                    }
                }
                // Nothing to write: look again when an entry is applied (a send may have
                // made a message deliverable) or a lease or delay may have ended.
                _ = tokio::time::timeout(POLL_INTERVAL, applied.changed()), if idle => {
                    dry = false;
                    if let Err(status) = self.context.require_leader() {
                        break End::Failed(status);
                    }
                }
            }
        };
        // What a write under way hands out is the stream's too, though never answered.
        if let Some(write) = write
            && let Ok((_, delivered)) = consumed(write.await)
        {
            outstanding.extend(
                delivered
                    .iter()
                    .filter_map(|m| m.receipt.parse::<Receipt>().ok()),
            );
        }
        end
    }

    /// Whether a receive on `queue` would hand out something now; an unknown queue lets
    /// the log decide (a new leader may not have applied it yet), so that it is refused
    /// with NOT_FOUND.
    fn deliverable(&self, queue: &str) -> bool {
        self.context
            .node
            .state()
            .read()
            .has_deliverable(queue, wall_clock_ms())
            .unwrap_or(true)
    }

    /// The receipts of an ack message of the stream.
    fn consume_acks(&self, request: pb::ConsumeRequest) -> Result<Vec<Receipt>, Status> {
        match request.request {
            Some(pb::consume_request::Request::Ack(ack)) => {
                let max = self.context.limits.max_batch_messages;
                if ack.receipts.len() > max {
                    return Err(invalid(QueueError::invalid(
                        "ack.receipts",
                        format!("must hold at most {max} receipts"),
                    )));
                }
                ack.receipts.iter().map(|text| receipt(text)).collect()
            }
            Some(pb::consume_request::Request::Start(_)) => Err(invalid(QueueError::invalid(
                "start",
                "this stream has started already; open another to consume another queue",
            ))),
            None => Err(invalid(QueueError::invalid("request", "is required"))),
        }
    }

    /// Makes the stream's unacknowledged deliveries visible again at once, as a consumer
    /// that went away will not handle them.
    async fn release(&self, queue: &str, outstanding: HashSet<Receipt>) {
        if outstanding.is_empty() || !self.context.node.is_leader() {
            return;
        }
        let count = outstanding.len();
        let nacks = outstanding
            .into_iter()
            .map(|receipt| Command::Nack {
                queue: queue.to_string(),
                receipt,
                delay_ms: 0,
            })
            .collect();
        let released = tokio::time::timeout(
            Duration::from_secs(5),
            self.context.write(Command::Batch(nacks)),
        )
        .await;
        if let Ok(Ok(Outcome::Batch(results))) = released {
            let done = results.iter().filter(|result| result.is_ok()).count();
            metrics::counter!("raftq_consume_released_total").increment(done as u64);
        } else {
            tracing::debug!(count, "releasing a closed consumer's deliveries failed");
        }
    }
}

/// The ack results and deliveries of one of the stream's writes.
fn consumed(
    outcome: Result<Outcome, Status>,
) -> Result<(Vec<pb::AckResult>, Vec<pb::ReceivedMessage>), Status> {
    let results = match outcome? {
        Outcome::Batch(results) => results,
        other => return Err(unexpected(other)),
    };
    let mut acked = Vec::new();
    let mut delivered = Vec::new();
    for result in results {
        match result.map_err(|error| Status::from(ServiceError::from(error)))? {
            Outcome::AckedBatch(results) => acked = ack_results(results),
            Outcome::Received(deliveries) => {
                metrics::counter!("raftq_messages_delivered_total")
                    .increment(deliveries.len() as u64);
                delivered = deliveries.into_iter().map(Into::into).collect();
            }
            other => return Err(unexpected(other)),
        }
    }
    Ok((acked, delivered))
}

/// Sends one write's results, deliveries split into answers of `max_messages`, the ack
/// results with the first. False when the consumer no longer reads.
async fn answer(
    answers: &mpsc::Sender<Result<pb::ConsumeResponse, Status>>,
    mut ack_results: Vec<pb::AckResult>,
    mut delivered: Vec<pb::ReceivedMessage>,
    max_messages: usize,
) -> bool {
    while !ack_results.is_empty() || !delivered.is_empty() {
        let rest = delivered.split_off(delivered.len().min(max_messages));
        let response = pb::ConsumeResponse {
            messages: std::mem::replace(&mut delivered, rest),
            ack_results: std::mem::take(&mut ack_results),
        };
        if answers.send(Ok(response)).await.is_err() {
            return false;
        }
    }
    true
}
