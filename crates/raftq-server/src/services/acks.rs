//! What acks answer, shared by the calls and the Consume stream: per-receipt results and
//! the count of messages acknowledged; how often a waiting call looks again.

use std::time::Duration;

use raftq_core::QueueError;
use raftq_proto::pb;

/// While long-polling, re-check at least this often (leases may expire without any write).
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The wire form of an `AckBatch`'s per-receipt results; counts the messages acknowledged
/// now (not those a retried ack finds already acknowledged).
pub(super) fn ack_results(results: Vec<Result<bool, QueueError>>) -> Vec<pb::AckResult> {
    let results: Vec<pb::AckResult> = results.into_iter().map(raftq_proto::ack_result).collect();
    let acked = results
        .iter()
        .filter(|r| r.code == 0 && !r.already_acked)
        .count();
    metrics::counter!("raftq_messages_acked_total").increment(acked as u64);
    results
}
