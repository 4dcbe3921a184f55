//! `QueueError`: every way the state machine refuses a command, and `quote` for echoing
//! a caller's input in a bounded way.

use serde::{Deserialize, Serialize};

/// Every way a queue command can be refused. A refused command changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum QueueError {
    #[error("queue name {} is invalid: {reason}", quote(.name))]
    InvalidQueueName { name: String, reason: String },
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("queue {} does not exist", quote(.name))]
    QueueNotFound { name: String },
    #[error("queue {} already exists", quote(.name))]
    QueueAlreadyExists { name: String },
    #[error("message of {size} bytes exceeds the queue's limit of {limit} bytes")]
    MessageTooLarge { size: u64, limit: u64 },
    #[error("queue {} is full: depth {depth} of at most {max_depth}", quote(.name))]
    QueueFull {
        name: String,
        depth: u64,
        max_depth: u64,
    },
    #[error("cluster holds {count} queues, the limit is {limit}")]
    TooManyQueues { count: u64, limit: u64 },
    #[error("message {message_id} is not in queue {}", quote(.queue))]
    MessageNotFound { queue: String, message_id: u64 },
    #[error("receipt {receipt} is stale: {reason}")]
    StaleReceipt { receipt: String, reason: String },
    #[error("principal {} does not exist", quote(.name))]
    PrincipalNotFound { name: String },
    #[error("principal {} already exists", quote(.name))]
    PrincipalAlreadyExists { name: String },
    #[error(
        "producer {producer} has expired: it was idle longer than its idle expiry, and its \
         sessions are forgotten; register a new producer (what it sent after its last \
         answered send may have been stored)"
    )]
    ProducerExpired { producer: u64 },
    #[error(
        "producer {producer} on {stream}: expected sequence number {expected}, got {got}; \
         the numbers in between never reached the cluster"
    )]
    SequenceGap {
        producer: u64,
        stream: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "producer {producer} on {stream}: sequence number {sequence} was applied before \
         (the last applied is {last}), and its answer is no longer kept"
    )]
    SequenceApplied {
        producer: u64,
        stream: String,
        sequence: u64,
        last: u64,
    },
    #[error("too many producers on {stream}: the limit is {limit}")]
    TooManyProducers { stream: String, limit: u64 },
}

/// Characters of a caller's input an error message quotes at most.
const QUOTE_CHARS: usize = 64;

/// `text` quoted for an error message, cut after [`QUOTE_CHARS`] characters: messages echo
/// what a caller sent, and must stay small (gRPC clients commonly refuse status metadata
/// over 16 KiB) whatever the caller sent.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(QUOTE_CHARS) {
        None => format!("{text:?}"),
        Some((end, _)) => format!("{:?}... ({} bytes)", &text[..end], text.len()),
    }
}

impl QueueError {
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

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn a_quote_keeps_short_input_whole_and_cuts_long_input() {
        assert_eq!(quote("orders"), "\"orders\"");
        let long = "é".repeat(10_000);
        let quoted = quote(&long);
        assert!(quoted.len() < 200, "{quoted}");
        assert!(quoted.ends_with("... (20000 bytes)"), "{quoted}");
    }
}
