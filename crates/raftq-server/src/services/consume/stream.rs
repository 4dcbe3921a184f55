//! One stream's state between its log writes: the deliveries it holds, the acks and
//! nacks read and not yet written, and what each write asked for and did.

use std::collections::HashMap;

use raftq_core::{Command, Outcome, QueueError, Receipt};
use raftq_proto::pb;
use tonic::Status;

use crate::context::unexpected;
use crate::error::{ServiceError, status};
use crate::services::acks::ack_results;

/// A delivery the stream handed out and the consumer has not acknowledged on it.
pub(super) struct Held {
    pub(super) lease_ends_ms: u64,
    pub(super) bytes: usize,
}

/// The stream's state between its log writes.
pub(super) struct Stream {
    pub(super) held: HashMap<Receipt, Held>,
    pub(super) held_bytes: usize,
    /// Read and not written yet, in the order they came.
    pub(super) acks: Vec<Receipt>,
    pub(super) nacks: Vec<(Receipt, u64)>,
}

/// What one message of the stream after `start` asks for.
pub(super) enum Settle {
    Ack(Vec<Receipt>),
    /// Receipts, and the delay before they are visible again.
    Nack(Vec<Receipt>, u64),
}

/// The commands of one of the stream's writes, in order: an `AckBatch` when `acks`, then
/// `nacks` nacks, then a receive when `receive`.
#[derive(Clone, Copy, Default)]
pub(super) struct Shape {
    pub(super) acks: bool,
    pub(super) nacks: usize,
    pub(super) receive: bool,
}

/// What one write did: ack results, nack results, deliveries.
#[derive(Default)]
pub(super) struct Written {
    pub(super) acked: Vec<pb::AckResult>,
    pub(super) nacked: Vec<pb::AckResult>,
    pub(super) delivered: Vec<pb::ReceivedMessage>,
}

impl Stream {
    pub(super) fn hold(&mut self, delivered: &[pb::ReceivedMessage]) {
        for message in delivered {
            if let Ok(receipt) = message.receipt.parse::<Receipt>() {
                let bytes = message.body.len();
                self.held_bytes += bytes;
                let lease_ends_ms = message.lease_expires_at_ms;
                self.held.insert(
                    receipt,
                    Held {
                        lease_ends_ms,
                        bytes,
                    },
                );
            }
        }
    }

    /// Takes in the acks or nacks of one request; their deliveries are no longer held.
    pub(super) fn settle(&mut self, settle: Settle) {
        match settle {
            Settle::Ack(receipts) => {
                for receipt in receipts {
                    self.unhold(&receipt);
                    self.acks.push(receipt);
                }
            }
            Settle::Nack(receipts, delay_ms) => {
                for receipt in receipts {
                    self.unhold(&receipt);
                    self.nacks.push((receipt, delay_ms));
                }
            }
        }
    }

    pub(super) fn unhold(&mut self, receipt: &Receipt) {
        if let Some(held) = self.held.remove(receipt) {
            self.held_bytes -= held.bytes;
        }
    }

    /// Forgets deliveries whose lease has ended (nacked by a call, say, or never
    /// acknowledged): the queue may hand them to anyone now, so they take no room.
    pub(super) fn forget_ended(&mut self, now_ms: u64) {
        let mut freed = 0;
        self.held.retain(|_, held| {
            let keep = held.lease_ends_ms > now_ms;
            if !keep {
                freed += held.bytes;
            }
            keep
        });
        self.held_bytes -= freed;
    }
}

/// The first of the acks and nacks read (at most `max` receipts in all) as commands,
/// acks first, and the shape of those commands.
pub(super) fn settle_commands(
    queue: &str,
    stream: &mut Stream,
    max: usize,
) -> (Vec<Command>, Shape) {
    let mut commands = Vec::with_capacity(2);
    let mut shape = Shape::default();
    let acks = stream.acks.len().min(max);
    if acks > 0 {
        commands.push(Command::AckBatch {
            queue: queue.to_string(),
            receipts: stream.acks.drain(..acks).collect(),
        });
        shape.acks = true;
    }
    let nacks = stream.nacks.len().min(max - acks);
    for (receipt, delay_ms) in stream.nacks.drain(..nacks) {
        commands.push(Command::Nack {
            queue: queue.to_string(),
            receipt,
            delay_ms,
        });
    }
    shape.nacks = nacks;
    (commands, shape)
}

/// The wire form of one nack's outcome.
pub(super) fn nack_result(outcome: Result<Outcome, QueueError>) -> pb::AckResult {
    match outcome {
        Ok(_) => {
            metrics::counter!("raftq_messages_nacked_total").increment(1);
            pb::AckResult::default()
        }
        Err(error) => raftq_proto::refused(&error),
    }
}

/// What one of the stream's writes, of `shape`, did. A refused ack batch or receive
/// (an unknown queue) fails the stream; each nack succeeds or fails on its own.
pub(super) fn consumed(outcome: Result<Outcome, Status>, shape: Shape) -> Result<Written, Status> {
    let results = match outcome? {
        Outcome::Batch(results) => results,
        other => return Err(unexpected(other)),
    };
    let expected = usize::from(shape.acks) + shape.nacks + usize::from(shape.receive);
    if results.len() != expected {
        return Err(status(ServiceError::internal(format!(
            "a consume stream's write of {expected} commands had {} results",
            results.len()
        ))));
    }
    let refused = |error: QueueError| status(error);
    let mut results = results.into_iter();
    let mut written = Written::default();
    if shape.acks {
        match results.next() {
            Some(Ok(Outcome::AckedBatch(outcomes))) => written.acked = ack_results(outcomes),
            Some(Ok(other)) => return Err(unexpected(other)),
            Some(Err(error)) => return Err(refused(error)),
            None => {}
        }
    }
    written.nacked = results
        .by_ref()
        .take(shape.nacks)
        .map(nack_result)
        .collect();
    if shape.receive {
        match results.next() {
            Some(Ok(Outcome::Received(deliveries))) => {
                metrics::counter!("raftq_messages_delivered_total")
                    .increment(deliveries.len() as u64);
                written.delivered = deliveries.into_iter().map(Into::into).collect();
            }
            Some(Ok(other)) => return Err(unexpected(other)),
            Some(Err(error)) => return Err(refused(error)),
            None => {}
        }
    }
    Ok(written)
}
