//! `ClientError`, and which gRPC answers a client sends again.

use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node address given")]
    NoAddress,
    #[error("invalid node address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("the token holds characters a request header cannot carry")]
    InvalidToken,
    /// The server refused the call; `status.code()` says why (NOT_FOUND, INVALID_ARGUMENT, ...).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("gave up after {attempts} attempts in {elapsed_ms} ms: {:?}: {}", .last.code(), .last.message())]
    RetriesExhausted {
        attempts: u32,
        elapsed_ms: u64,
        last: tonic::Status,
    },
}

impl ClientError {
    /// The gRPC code of the final answer, if the server gave one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status(status) | ClientError::RetriesExhausted { last: status, .. } => {
                Some(status.code())
            }
            ClientError::NoAddress
            | ClientError::InvalidAddress { .. }
            | ClientError::InvalidToken => None,
        }
    }

    /// The reason the server gave with its refusal (status metadata `raftq-reason`), for
    /// the refusals whose code alone does not say what to do: see `raftq_proto::wire`'s
    /// `REASON_*`.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ClientError::Status(status) | ClientError::RetriesExhausted { last: status, .. } => {
                status
                    .metadata()
                    .get(raftq_proto::wire::REASON_KEY)
                    .and_then(|value| value.to_str().ok())
            }
            _ => None,
        }
    }

    /// Whether the outcome of the call is unknown (it may or may not have taken effect).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, ClientError::RetriesExhausted { .. })
    }

    /// Whether the cluster refused the call for good: nothing was stored, and sending the
    /// same again would be refused again (an unknown queue, an invalid message, a missing
    /// permission, a precondition that does not hold). A forwarder sets such a message
    /// aside rather than retrying it.
    pub fn is_refused_for_good(&self) -> bool {
        !self.is_outcome_unknown()
            && matches!(
                self.code(),
                Some(
                    Code::NotFound
                        | Code::InvalidArgument
                        | Code::PermissionDenied
                        | Code::OutOfRange
                        | Code::FailedPrecondition
                        | Code::AlreadyExists
                )
            )
    }
}

/// Codes worth retrying: the cluster is electing, a node is down, or a deadline passed.
pub(crate) fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}
