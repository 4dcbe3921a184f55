use serde::{Deserialize, Serialize};

/// Every way a queue command can be refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    #[error("queue name {name:?} is invalid: {reason}")]
    InvalidQueueName { name: String, reason: String },
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("queue {name:?} does not exist")]
    QueueNotFound { name: String },
    #[error("queue {name:?} already exists")]
    QueueAlreadyExists { name: String },
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    MessageTooLarge { size: u64, limit: u64 },
    #[error("queue {name:?} is full: depth {depth} of at most {max_depth}")]
    QueueFull {
        name: String,
        depth: u64,
        max_depth: u64,
    },
    #[error("cluster holds {count} queues, the limit is {limit}")]
    TooManyQueues { count: u64, limit: u64 },
    #[error("message {message_id} is not in queue {queue:?}")]
    MessageNotFound { queue: String, message_id: u64 },
    #[error("receipt {receipt} is stale: {reason}")]
    StaleReceipt { receipt: String, reason: String },
}

impl QueueError {
    /// Whether retrying the very same command could succeed later without the caller
    /// changing anything. Only capacity errors qualify: consumers may drain the queue.
    pub fn is_retryable(&self) -> bool {
        matches!(self, QueueError::QueueFull { .. })
    }

    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        QueueError::InvalidArgument {
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_found(name: &str) -> Self {
        QueueError::QueueNotFound {
            name: name.to_string(),
        }
    }
}
