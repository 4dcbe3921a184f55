//! Whether this node may vote: settled from the data directory's identity at start, and
//! earned back by a node that started on an empty data directory once its log has caught
//! up with a leader.
//!
//! A node on an empty data directory cannot tell a brand-new cluster from one it was a voter
//! of before its disk was lost. It grants no vote and starts no election until it holds,
//! synced to its own disk, an entry that the current leader committed in its own term: by
//! Raft's leader completeness that entry comes after every entry committed before, so from
//! then on its log is no worse than any follower's. Acknowledging appends meanwhile is safe:
//! it acknowledges only what it has written and synced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use openraft::async_runtime::WatchReceiver;
use raftq_store::{Db, LogStore, NodeId, NodeIdentity};

use crate::ClusterError;
use crate::node::Raft;

/// Shared between the node and its Raft transport.
#[derive(Debug, Clone)]
pub(crate) struct Standing {
    voting: Arc<AtomicBool>,
}

impl Standing {
    pub(crate) fn may_vote(&self) -> bool {
        self.voting.load(Ordering::Acquire)
    }

    /// Records (synced) that this node's log may vote, then lets it vote and stand for
    /// election.
    pub(crate) fn allow(
        &self,
        raft: &Raft,
        db: &Db,
        node_id: NodeId,
    ) -> Result<(), raftq_store::StoreError> {
        db.record_identity(&NodeIdentity {
            node_id,
            voting: true,
        })?;
        self.voting.store(true, Ordering::Release);
        raft.runtime_config().elect(true);
        metrics::gauge!("raftq_node_voting").set(1.0);
        Ok(())
    }
}

/// Reads (or, on a data directory that has none, records) the identity of the data
/// directory: a node refuses another node's directory; a directory without Raft state does
/// not vote.
pub(crate) fn settle(db: &Db, log: &LogStore, node_id: NodeId) -> Result<Standing, ClusterError> {
    let stopped = |error: raftq_store::StoreError| ClusterError::Stopped {
        reason: error.to_string(),
    };
    let holds_state = log.holds_state().map_err(stopped)?;
    let recorded = db.identity().map_err(stopped)?;
    let voting = match &recorded {
        Some(identity) if identity.node_id != node_id => {
            return Err(ClusterError::Stopped {
                reason: format!(
                    "the data directory belongs to node {}, not to node {node_id}; start node \
                     {node_id} on its own data directory, or on an empty one to rebuild it \
                     from the cluster",
                    identity.node_id
                ),
            });
        }
        // A directory that votes but lost its Raft state (its log column families were
        // emptied) is no better than an empty one.
        Some(identity) => identity.voting && holds_state,
        // An empty directory is new; one that held Raft state before identities were
        // recorded was a member all along.
        None => holds_state,
    };
    let identity = NodeIdentity { node_id, voting };
    if recorded.as_ref() != Some(&identity) {
        db.record_identity(&identity).map_err(stopped)?;
    }
    if !voting {
        tracing::warn!(
            node_id,
            "this data directory holds no log this node may vote with (it is new, or the \
             node's data was lost): the node grants no vote until it has caught up with a leader"
        );
    }
    metrics::gauge!("raftq_node_voting").set(if voting { 1.0 } else { 0.0 });
    Ok(Standing {
        voting: Arc::new(AtomicBool::new(voting)),
    })
}

/// How long a node earning its vote waits for news before it checks its log again.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Until the node may vote: waits for the log to catch up with a leader, then records that
/// (synced) and lets the node vote and stand for election. Ends when Raft stops.
pub(crate) async fn earn_vote(
    raft: Raft,
    db: Db,
    log: LogStore,
    node_id: NodeId,
    standing: Standing,
) {
    let mut metrics = raft.metrics();
    loop {
        // The founder of a new cluster may vote from its first entry on.
        if standing.may_vote() {
            return;
        }
        let committed_in_term = {
            let metrics = metrics.borrow_watched();
            let led_by_another = metrics
                .current_leader
                .is_some_and(|leader| leader != node_id);
            match metrics.local_committed {
                Some(committed)
                    if led_by_another
                        && committed.committed_leader_id().term == metrics.current_term =>
                {
                    Some(committed.index())
                }
                _ => None,
            }
        };
        if let Some(committed) = committed_in_term {
            match log.synced_last_index() {
                Ok(Some(last)) if last >= committed => break,
                Ok(_) => {}
                Err(error) => {
                    tracing::error!(%error, "cannot read back the log; this node keeps not voting");
                    return;
                }
            }
        }
        // Entries the leader counts as committed may still be on their way to this node's
        // disk, and nothing else may change the metrics for a while: look again soon.
        if let Ok(Err(_stopped)) = tokio::time::timeout(RECHECK_EVERY, metrics.changed()).await {
            return;
        }
    }
    if let Err(error) = standing.allow(&raft, &db, node_id) {
        tracing::error!(%error, "cannot record that the log caught up; this node keeps not voting");
        return;
    }
    tracing::info!(
        node_id,
        "the log has caught up with the leader: this node votes again"
    );
}
