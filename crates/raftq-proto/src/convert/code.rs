//! The gRPC status code of each way a queue command is refused: one table for whole calls
//! and for the per-item results of acks, nacks and streamed sends.

use raftq_core::QueueError;
use tonic::Code;

pub fn code_of(error: &QueueError) -> Code {
    match error {
        QueueError::InvalidQueueName { .. }
        | QueueError::InvalidArgument { .. }
        | QueueError::MessageTooLarge { .. } => Code::InvalidArgument,
        QueueError::QueueNotFound { .. }
        | QueueError::MessageNotFound { .. }
        | QueueError::PrincipalNotFound { .. } => Code::NotFound,
        QueueError::QueueAlreadyExists { .. } | QueueError::PrincipalAlreadyExists { .. } => {
            Code::AlreadyExists
        }
        QueueError::QueueFull { .. }
        | QueueError::TooManyQueues { .. }
        | QueueError::TooManyProducers { .. } => Code::ResourceExhausted,
        QueueError::StaleReceipt { .. }
        | QueueError::ProducerExpired { .. }
        | QueueError::SequenceGap { .. } => Code::FailedPrecondition,
        QueueError::SequenceApplied { .. } => Code::AlreadyExists,
    }
}

/// The stable reason a refusal carries in the status metadata [`crate::wire::REASON_KEY`]
/// where its code alone does not tell a client what to do: the answers to a producer's
/// numbered sends.
pub fn reason_of(error: &QueueError) -> Option<&'static str> {
    match error {
        QueueError::ProducerExpired { .. } => Some(crate::wire::REASON_PRODUCER_EXPIRED),
        QueueError::SequenceGap { .. } => Some(crate::wire::REASON_SEQUENCE_GAP),
        QueueError::SequenceApplied { .. } => Some(crate::wire::REASON_SEQUENCE_APPLIED),
        _ => None,
    }
}
