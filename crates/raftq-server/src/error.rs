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

#[cfg(test)]
mod tests {
    use super::*;

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
