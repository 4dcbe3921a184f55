//! Answers to the consumer: one write's results split into responses, unless the node
//! begins to stop while they wait for room.

use raftq_proto::pb;
use tokio::sync::watch;

use super::stream::Written;
use super::{Answers, stopped};

pub(super) enum Answered {
    Yes,
    /// There was nothing to answer.
    Nothing,
    /// The consumer reads no more.
    Gone,
    /// The node began to stop while the answer waited for room.
    Stopping,
}

/// Sends one answer, unless the node begins to stop while it waits for room.
pub(super) async fn send(
    answers: &Answers,
    response: pb::ConsumeResponse,
    stopping: &mut watch::Receiver<bool>,
) -> Answered {
    tokio::select! {
        sent = answers.send(Ok(response)) => match sent {
            Ok(()) => Answered::Yes,
            Err(_) => Answered::Gone,
        },
        () = stopped(stopping) => Answered::Stopping,
    }
}

/// Sends one write's results, deliveries split into answers of `max_messages`, the ack
/// and nack results with the first.
pub(super) async fn answer(
    answers: &Answers,
    written: Written,
    max_messages: usize,
    stopping: &mut watch::Receiver<bool>,
) -> Answered {
    let Written {
        mut acked,
        mut nacked,
        mut delivered,
    } = written;
    let mut answered = Answered::Nothing;
    while !acked.is_empty() || !nacked.is_empty() || !delivered.is_empty() {
        let rest = delivered.split_off(delivered.len().min(max_messages));
        let response = pb::ConsumeResponse {
            messages: std::mem::replace(&mut delivered, rest),
            ack_results: std::mem::take(&mut acked),
            nack_results: std::mem::take(&mut nacked),
        };
        answered = send(answers, response, stopping).await;
        if !matches!(answered, Answered::Yes) {
            return answered;
        }
    }
    answered
}
