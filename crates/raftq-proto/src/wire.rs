//! Wire constants that client and server share: metadata keys, role names, size limits.

/// Response metadata: the leader's address, on UNAVAILABLE answers of a node that does
/// not lead and on answers a follower forwarded, so the caller's next call goes there.
pub const LEADER_ADDRESS_KEY: &str = "raftq-leader-address";

/// Response metadata on every UNAVAILABLE answer: how many milliseconds to wait before
/// the same call is sent again.
pub const RETRY_AFTER_MS_KEY: &str = "raftq-retry-after-ms";

/// Request metadata a node sets on a call it forwards: how many times the call has been
/// forwarded, so that it is forwarded at most twice (to a replica of its queue's group,
/// then to that group's leader).
pub const FORWARDED_KEY: &str = "raftq-forwarded";
/// Internal: on a forwarded call, the Raft group the forwarding node found the call's
/// queue in; a node running a replica of that group serves the call there, even when its
/// own copy of the placement has not caught up yet.
pub const GROUP_KEY: &str = "raftq-group";
/// Internal: on a forwarded call, the cluster of the node that forwarded it; a node of
/// another cluster refuses the call.
pub const CLUSTER_ID_KEY: &str = "raftq-cluster-id";
/// Internal: on a forwarded call, the principal the forwarding node authenticated the
/// caller as. Trusted on the internal port only; removed from calls on the public port.
pub const PRINCIPAL_KEY: &str = "raftq-principal";

/// Response metadata on the refusals of a producer's numbered send or commit whose code
/// alone does not say what to do: one of the `REASON_*` values.
pub const REASON_KEY: &str = "raftq-reason";
/// The producer was idle past its idle expiry and is forgotten: register a new one.
pub const REASON_PRODUCER_EXPIRED: &str = "producer-expired";
/// A sequence number was skipped: something the producer sent never reached the cluster.
pub const REASON_SEQUENCE_GAP: &str = "sequence-gap";
/// The sequence number was applied before; its answer is no longer kept.
pub const REASON_SEQUENCE_APPLIED: &str = "sequence-applied";

/// Largest request or response of the public API (a send batch, a receive), both ways.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A node's role as `NodeStatus.role` names it.
pub mod role {
    pub const LEADER: &str = "leader";
    pub const FOLLOWER: &str = "follower";
    pub const CANDIDATE: &str = "candidate";
    pub const LEARNER: &str = "learner";
    /// A node whose Raft instance has stopped.
    pub const SHUTDOWN: &str = "shutdown";
    /// A member that did not answer for itself in time.
    pub const UNKNOWN: &str = "unknown";
}
