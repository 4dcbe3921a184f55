//! The one place where raftq errors become gRPC statuses.

use raftq_cluster::ClusterError;
use raftq_core::QueueError;
use tonic::{Code, Status};

/// Metadata key carrying the leader's address on UNAVAILABLE answers, so a client can go
/// straight to the leader.
pub const LEADER_ADDRESS_KEY: &str = "raftq-leader-address";
/// Metadata key carrying how long a client should wait before retrying.
pub const RETRY_AFTER_MS_KEY: &str = "raftq-retry-after-ms";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("forwarding to the leader at {address} failed: {reason}")]
    Forward { address: String, reason: String },
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let message = error.to_string();
        match error {
            ServiceError::Queue(error) => {
                let code = match error {
                    QueueError::InvalidQueueName { .. }
                    | QueueError::InvalidArgument { .. }
                    | QueueError::MessageTooLarge { .. } => Code::InvalidArgument,
                    QueueError::QueueNotFound { .. } | QueueError::MessageNotFound { .. } => {
                        Code::NotFound
                    }
                    QueueError::QueueAlreadyExists { .. } => Code::AlreadyExists,
                    QueueError::QueueFull { .. } | QueueError::TooManyQueues { .. } => {
                        Code::ResourceExhausted
                    }
                    QueueError::StaleReceipt { .. } => Code::FailedPrecondition,
                };
                Status::new(code, message)
            }
            ServiceError::Cluster(error) => {
                let (code, leader, retry_after_ms) = match error {
                    ClusterError::NotLeader { leader_address, .. } => {
                        let retry = if leader_address.is_some() { 0 } else { 200 };
                        (Code::Unavailable, leader_address, retry)
                    }
                    ClusterError::NoQuorum { .. } => (Code::Unavailable, None, 500),
                    ClusterError::OutcomeUnknown => (Code::Unavailable, None, 100),
                    ClusterError::Membership { .. } | ClusterError::OtherCluster { .. } => {
                        (Code::FailedPrecondition, None, 0)
                    }
                    ClusterError::MembershipBusy { .. } => (Code::Unavailable, None, 200),
                    ClusterError::Stopped { .. } => (Code::Unavailable, None, 1_000),
                    ClusterError::Storage { .. } => (Code::Internal, None, 0),
                };
                let mut status = Status::new(code, message);
                if let Some(address) = leader.and_then(|address| address.parse().ok()) {
                    status.metadata_mut().insert(LEADER_ADDRESS_KEY, address);
                }
                if code == Code::Unavailable
                    && let Ok(value) = retry_after_ms.to_string().parse()
                {
                    status.metadata_mut().insert(RETRY_AFTER_MS_KEY, value);
                }
                status
            }
            ServiceError::Forward { .. } => {
                let mut status = Status::new(Code::Unavailable, message);
                if let Ok(value) = "200".parse() {
                    status.metadata_mut().insert(RETRY_AFTER_MS_KEY, value);
                }
                status
            }
        }
    }
}

/// The answer to a call forwarded to the leader at `address` that failed. The leader's own
/// answers pass through: they went through the mapping above. A failure of the forward
/// itself (the leader died mid-call: UNKNOWN "transport error", a refused connection,
/// a cancelled stream) becomes UNAVAILABLE with a retry hint, as documented: the call's
/// outcome is unknown, and the client retries it (sends carry idempotency keys).
pub fn forward_failed(status: Status, address: &str) -> Status {
    // Every UNAVAILABLE the mapping above makes carries a retry hint; it never makes
    // UNKNOWN or CANCELLED; HTTP/2 failures surface as INTERNAL "h2 protocol error".
    let forward_itself_failed = !status.metadata().contains_key(RETRY_AFTER_MS_KEY)
        && match status.code() {
            Code::Unknown | Code::Unavailable | Code::Cancelled => true,
            Code::Internal => status.message().contains("h2 protocol error"),
            _ => false,
        };
    if !forward_itself_failed {
        return status;
    }
    ServiceError::Forward {
        address: address.to_string(),
        reason: raftq_core::quote(status.message()),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forward_that_failed_is_unavailable_with_a_retry_hint_and_the_leaders_answers_pass() {
        let hint = |status: &Status| {
            status
                .metadata()
                .get(RETRY_AFTER_MS_KEY)
                .map(|value| value.to_str().unwrap().to_string())
        };
        for failed in [
            Status::unknown("transport error"),
            Status::unavailable("tcp connect error"),
            Status::cancelled("the stream was reset"),
            Status::internal("h2 protocol error: stream no longer needed"),
        ] {
            let answer = forward_failed(failed.clone(), "10.0.0.1:7401");
            assert_eq!(answer.code(), Code::Unavailable, "{failed:?}");
            assert_eq!(hint(&answer).as_deref(), Some("200"), "{failed:?}");
            assert!(answer.message().contains("10.0.0.1:7401"), "{answer:?}");
        }
        let leaders: Vec<Status> = vec![
            ServiceError::from(QueueError::QueueNotFound { name: "q".into() }).into(),
            ServiceError::from(ClusterError::NoQuorum { reason: "x".into() }).into(),
            ServiceError::from(ClusterError::Storage { reason: "x".into() }).into(),
        ];
        for answer in leaders {
            let passed = forward_failed(answer.clone(), "10.0.0.1:7401");
            assert_eq!(passed.code(), answer.code());
            assert_eq!(passed.message(), answer.message());
            assert_eq!(hint(&passed), hint(&answer));
        }
    }

    #[test]
    fn each_error_kind_maps_to_its_documented_code() {
        let cases: Vec<(ServiceError, Code)> = vec![
            (
                QueueError::QueueNotFound { name: "q".into() }.into(),
                Code::NotFound,
            ),
            (
                QueueError::QueueAlreadyExists { name: "q".into() }.into(),
                Code::AlreadyExists,
            ),
            (
                QueueError::MessageTooLarge { size: 2, limit: 1 }.into(),
                Code::InvalidArgument,
            ),
            (
                QueueError::StaleReceipt {
                    receipt: "1:1".into(),
                    reason: "x".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                QueueError::QueueFull {
                    name: "q".into(),
                    depth: 1,
                    max_depth: 1,
                }
                .into(),
                Code::ResourceExhausted,
            ),
            (
                ClusterError::NoQuorum { reason: "x".into() }.into(),
                Code::Unavailable,
            ),
            (
                ClusterError::MembershipBusy { reason: "x".into() }.into(),
                Code::Unavailable,
            ),
            (
                ClusterError::Membership { reason: "x".into() }.into(),
                Code::FailedPrecondition,
            ),
            (
                ClusterError::OtherCluster {
                    ours: "a".into(),
                    theirs: "b".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                ClusterError::Storage { reason: "x".into() }.into(),
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn not_leader_carries_the_leader_address() {
        let status = Status::from(ServiceError::from(ClusterError::NotLeader {
            leader_id: Some(2),
            leader_address: Some("127.0.0.1:7402".into()),
        }));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status
                .metadata()
                .get(LEADER_ADDRESS_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("127.0.0.1:7402")
        );
    }
}
