//! The one place where raftq errors become gRPC statuses: every status a service returns
//! is a `ServiceError` turned into a `Status` here, with its code and metadata.

use raftq_cluster::ClusterError;
use raftq_core::QueueError;
use raftq_proto::wire::{LEADER_ADDRESS_KEY, REASON_KEY, RETRY_AFTER_MS_KEY};
use tonic::{Code, Status};

/// How long a caller waits before sending again a call whose forward to the leader
/// failed, or that a stopping node refused.
const RETRY_FORWARD_MS: u64 = 200;
const RETRY_STOPPING_MS: u64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("forwarding to the leader at {address} failed: {reason}")]
    Forward { address: String, reason: String },
    /// A field of a request the state machine never sees (membership changes).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("node {node_id} is not a member")]
    NotMember { node_id: u64 },
    #[error("node {node_id} is already a member at {address}")]
    AlreadyMember { node_id: u64, address: String },
    #[error("cannot remove the last voter")]
    LastVoter,
    /// A limit of `[admission]` is reached.
    #[error("{what} ([admission] {limit}); try again later, or another node")]
    Overloaded { what: String, limit: &'static str },
    /// The node is stopping; the caller goes to another node.
    #[error("this node is stopping")]
    Stopping,
    /// The queues of one command live in more than one Raft group.
    #[error("{}", across_groups(.queues))]
    AcrossGroups { queues: Vec<(String, u64)> },
    /// A producer's numbered send or commit on a queue of a data group.
    #[error(
        "producer sessions cover the queues of group 1 only, and {what} in data group {group}: use idempotency keys (or transaction ids) there"
    )]
    ProducerInDataGroup { what: String, group: u64 },
    /// The placement names a group whose replicas this node cannot address (yet).
    #[error("no replica of group {group} is known to this node yet")]
    GroupUnknown { group: u64 },
    /// Stored data needed for an answer could not be read.
    #[error(transparent)]
    Read(#[from] raftq_store::StoreError),
    /// Something that cannot happen did: a bug.
    #[error("internal error: {what}")]
    Internal { what: String },
    #[error("{reason}")]
    Unauthenticated { reason: String },
    #[error("principal {} may not {action} {}", raftq_core::quote(.principal), match .queue {
        Some(queue) => format!("on queue {}", raftq_core::quote(queue)),
        None => "on the cluster".to_string(),
    })]
    PermissionDenied {
        principal: String,
        action: &'static str,
        queue: Option<String>,
    },
}

/// "queues a, b (group 2) and c (group 5) live in different Raft groups; ..." for a
/// command spanning groups.
fn across_groups(queues: &[(String, u64)]) -> String {
    let mut by_group: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (queue, group) in queues {
        let names = by_group.entry(*group).or_default();
        let quoted = raftq_core::quote(queue);
        if !names.contains(&quoted) {
            names.push(quoted);
        }
    }
    let parts: Vec<String> = by_group
        .iter()
        .map(|(group, names)| format!("{} (group {group})", names.join(", ")))
        .collect();
    format!(
        "queues {} live in different Raft groups: one transaction or move stays within one \
         group (create queues with colocate_with to put them together)",
        parts.join(" and ")
    )
}

impl ServiceError {
    pub fn internal(what: impl Into<String>) -> ServiceError {
        ServiceError::Internal { what: what.into() }
    }

    /// The status code, the leader to name and how long to wait before a retry.
    fn parts(&self) -> (Code, Option<&str>, Option<u64>) {
        match self {
            ServiceError::Queue(error) => (raftq_proto::code_of(error), None, None),
            ServiceError::Cluster(error) => {
                let leader = match error {
                    ClusterError::NotLeader { leader_address, .. } => leader_address.as_deref(),
                    _ => None,
                };
                let code = match (error.retry_after_ms(), error) {
                    (Some(_), _) => Code::Unavailable,
                    (None, ClusterError::Membership { .. } | ClusterError::OtherCluster { .. }) => {
                        Code::FailedPrecondition
                    }
                    (None, _) => Code::Internal,
                };
                (code, leader, error.retry_after_ms())
            }
            ServiceError::Forward { .. } => (Code::Unavailable, None, Some(RETRY_FORWARD_MS)),
            ServiceError::Stopping => (Code::Unavailable, None, Some(RETRY_STOPPING_MS)),
            ServiceError::AcrossGroups { .. } | ServiceError::ProducerInDataGroup { .. } => {
                (Code::FailedPrecondition, None, None)
            }
            ServiceError::GroupUnknown { .. } => (Code::Unavailable, None, Some(RETRY_FORWARD_MS)),
            ServiceError::InvalidArgument { .. } => (Code::InvalidArgument, None, None),
            ServiceError::NotMember { .. } => (Code::NotFound, None, None),
            ServiceError::AlreadyMember { .. } => (Code::AlreadyExists, None, None),
            ServiceError::LastVoter => (Code::FailedPrecondition, None, None),
            ServiceError::Overloaded { .. } => (Code::ResourceExhausted, None, None),
            ServiceError::Read(_) | ServiceError::Internal { .. } => (Code::Internal, None, None),
            ServiceError::Unauthenticated { .. } => (Code::Unauthenticated, None, None),
            ServiceError::PermissionDenied { .. } => (Code::PermissionDenied, None, None),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        let (code, leader, retry_after_ms) = error.parts();
        let mut status = Status::new(code, error.to_string());
        if let Some(address) = leader.and_then(|address| address.parse().ok()) {
            status.metadata_mut().insert(LEADER_ADDRESS_KEY, address);
        }
        if let Some(value) = retry_after_ms.and_then(|ms| ms.to_string().parse().ok()) {
            status.metadata_mut().insert(RETRY_AFTER_MS_KEY, value);
        }
        if let ServiceError::Queue(error) = &error
            && let Some(reason) = raftq_proto::reason_of(error)
        {
            status.metadata_mut().insert(
                REASON_KEY,
                tonic::metadata::MetadataValue::from_static(reason),
            );
        }
        status
    }
}

/// Statuses of a service's calls, from any error of the layers below.
pub fn status(error: impl Into<ServiceError>) -> Status {
    error.into().into()
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
            (
                ClusterError::Internal { reason: "x".into() }.into(),
                Code::Internal,
            ),
            (
                ServiceError::InvalidArgument {
                    field: "node_id",
                    reason: "x".into(),
                },
                Code::InvalidArgument,
            ),
            (ServiceError::NotMember { node_id: 4 }, Code::NotFound),
            (
                ServiceError::AlreadyMember {
                    node_id: 4,
                    address: "a:1".into(),
                },
                Code::AlreadyExists,
            ),
            (ServiceError::LastVoter, Code::FailedPrecondition),
            (
                ServiceError::Overloaded {
                    what: "this node serves 1 send stream already".into(),
                    limit: "max_send_streams",
                },
                Code::ResourceExhausted,
            ),
            (ServiceError::internal("x"), Code::Internal),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    /// Every UNAVAILABLE answer says when to retry; nothing else does, so a client never
    /// retries a bug or a refusal.
    #[test]
    fn exactly_the_unavailable_answers_carry_a_retry_hint() {
        let hint = |error: ServiceError| {
            let status = Status::from(error);
            let hint = status
                .metadata()
                .get(RETRY_AFTER_MS_KEY)
                .map(|value| value.to_str().unwrap().parse::<u64>().unwrap());
            (status.code(), hint)
        };
        let outcome_unknown = ClusterError::OutcomeUnknown { reason: "x".into() };
        assert_eq!(hint(outcome_unknown.into()), (Code::Unavailable, Some(100)));
        let no_quorum = ClusterError::NoQuorum { reason: "x".into() };
        assert_eq!(hint(no_quorum.into()), (Code::Unavailable, Some(500)));
        assert_eq!(
            hint(ServiceError::Stopping),
            (Code::Unavailable, Some(1_000))
        );
        let stopped = ClusterError::Stopped { reason: "x".into() };
        assert_eq!(hint(stopped.into()), (Code::Unavailable, Some(1_000)));
        let bug = ClusterError::Internal { reason: "x".into() };
        assert_eq!(hint(bug.into()), (Code::Internal, None));
        assert_eq!(hint(ServiceError::internal("x")), (Code::Internal, None));
        let full = QueueError::QueueFull {
            name: "q".into(),
            depth: 1,
            max_depth: 1,
        };
        assert_eq!(hint(full.into()), (Code::ResourceExhausted, None));
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

    #[test]
    fn a_command_across_groups_names_each_group_once_with_its_queues() {
        let status = Status::from(ServiceError::AcrossGroups {
            queues: vec![
                ("orders".into(), 2),
                ("audit".into(), 5),
                ("shipments".into(), 2),
                ("orders".into(), 2),
            ],
        });
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().starts_with(
                r#"queues "orders", "shipments" (group 2) and "audit" (group 5) live"#
            ),
            "{}",
            status.message()
        );
    }
}
