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
        QueueError::QueueFull { .. } | QueueError::TooManyQueues { .. } => Code::ResourceExhausted,
        QueueError::StaleReceipt { .. } => Code::FailedPrecondition,
    }
}
