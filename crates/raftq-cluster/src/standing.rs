//! What this node's data directory says about it: the cluster it belongs to, and whether it
//! may vote. Settled from the directory's identity at start; the vote is earned back by a
//! node that started on an empty data directory once its log has caught up with a leader.
//!
//! A node on an empty data directory cannot tell a brand-new cluster from one it was a voter
//! of before its disk was lost. It grants no vote and starts no election until it holds,
//! synced to its own disk, an entry that the current leader committed in its own term: by
//! Raft's leader completeness that entry comes after every entry committed before, so from
//! then on its log is no worse than any follower's. Acknowledging appends meanwhile is safe:
//! it acknowledges only what it has written and synced.
//!
//! The cluster id is named by the node that forms the cluster and recorded by every node that
//! joins it (from the leader's answer to its join, or from the first append or snapshot a
//! leader sends it). Raft messages carry it; a node refuses messages and joins from another
//! cluster.
//!
//! A node whose certificate names its cluster is bound to that name: the cluster it forms
//! takes it as its id, it joins no cluster of another id, and it refuses to start on data of
//! another cluster. (Its TLS, in turn, takes only peers whose certificates name the same
//! cluster.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use raftq_core::GroupId;
use raftq_store::{Db, LogStore, NodeId, NodeIdentity, StoreError};

use crate::raft::Raft;
use crate::{ClusterError, lock};

/// The node's standing: the cluster it belongs to. Shared by the node, its replicas and
/// its Raft transport.
#[derive(Clone)]
pub(crate) struct Standing {
    /// The identity as recorded in the data directory; changed only together with the record.
    identity: Arc<Mutex<NodeIdentity>>,
    /// Whether the directory had no identity recorded when the node started: one that held
    /// Raft state of group 1 then was a member from before identities were recorded.
    unrecorded: bool,
    /// The cluster this node's certificate names, if any.
    bound: Option<String>,
    db: Db,
}

/// Whether one replica may vote (see the module's documentation): each group's log earns
/// its vote on its own.
#[derive(Clone)]
pub(crate) struct VoteRight {
    group: GroupId,
    voting: Arc<AtomicBool>,
    standing: Standing,
}

impl VoteRight {
    pub(crate) fn may_vote(&self) -> bool {
        self.voting.load(Ordering::Acquire)
    }

    /// Records (synced) that this replica's log may vote, then lets it vote and stand for
    /// election.
    pub(crate) fn allow(&self, raft: &Raft) -> Result<(), StoreError> {
        let group = self.group;
        self.standing
            .record(|identity| identity.set_voting(group, true))?;
        self.voting.store(true, Ordering::Release);
        raft.runtime_config().elect(true);
        voting_gauge(group, true);
        Ok(())
    }

    /// For the replica that forms a new group: names the cluster (unless this directory
    /// already belongs to one) and lets the replica vote from its first entry on.
    pub(crate) fn found(&self, raft: &Raft) -> Result<(), StoreError> {
        let name = self.standing.bound.clone();
        self.standing.record(|identity| {
            identity
                .cluster_id
                .get_or_insert_with(|| name.unwrap_or_else(new_cluster_id));
        })?;
        self.allow(raft)
    }
}

/// `raftq_node_voting` follows group 1, as it did when there was no other.
fn voting_gauge(group: GroupId, voting: bool) {
    let value = if voting { 1.0 } else { 0.0 };
    if group == 1 {
        metrics::gauge!("raftq_node_voting").set(value);
    }
    metrics::gauge!("raftq_replica_voting", "group" => group.to_string()).set(value);
}

impl Standing {
    /// The cluster this node belongs to, once it formed or joined one.
    pub(crate) fn cluster_id(&self) -> Option<String> {
        lock(&self.identity).cluster_id.clone()
    }

    /// Whether the replica of `group` whose log is `log` may vote: its vote is recorded,
    /// its log holds Raft state and lost no entry it had synced. A vote recorded for a log
    /// that no longer qualifies is taken back (synced).
    pub(crate) fn vote_right(
        &self,
        group: GroupId,
        log: &LogStore,
    ) -> Result<VoteRight, ClusterError> {
        let holds_state = log.holds_state().map_err(stopped)?;
        // A log that ends below what it had synced lost entries it acknowledged (a damaged
        // write-ahead log read back shorter): no better than an empty one.
        let damaged = log.lost_synced_entries();
        if let Some((synced, held)) = damaged {
            metrics::counter!("raftq_storage_corruption_total").increment(1);
            tracing::error!(
                group,
                synced,
                held,
                "the Raft log of group {group} ends at index {held}, but this node had synced \
                 it up to index {synced}: the disk lost or damaged entries it had acknowledged. \
                 The replica grants no vote and rebuilds from the leader; check the disk. (A \
                 cluster of one node has no leader to rebuild from: to go on with what the log \
                 holds, accepting the loss, stop the node and run `raftq adopt-data-dir`.)"
            );
        }
        let recorded = lock(&self.identity).votes_in(group)
            // One that held Raft state before identities were recorded was a member all along.
            || (group == 1 && self.unrecorded && holds_state);
        // A replica that votes but lost its Raft state (its log was emptied) is no better
        // than an empty one.
        let voting = recorded && holds_state && damaged.is_none();
        self.record(|identity| identity.set_voting(group, voting))
            .map_err(stopped)?;
        if !voting && group != 1 {
            tracing::info!(
                group,
                "this node's replica of group {group} holds no log it may vote with (new, or \
                 lost): it grants no vote until it has caught up with the group's leader"
            );
        } else if !voting {
            tracing::warn!(
                group,
                "this data directory holds no log of group {group} this node may vote with (it \
                 is new, or the node's data was lost): the replica grants no vote until it has \
                 caught up with the group's leader"
            );
        }
        voting_gauge(group, voting);
        Ok(VoteRight {
            group,
            voting: Arc::new(AtomicBool::new(voting)),
            standing: self.clone(),
        })
    }

    /// Whether a message or a join from a member of `theirs` may be taken: an empty id (a
    /// sender that belongs to no cluster yet) and a node that belongs to none yet take
    /// everything.
    pub(crate) fn check_cluster(&self, theirs: &str) -> Result<(), ClusterError> {
        let identity = lock(&self.identity);
        match identity.cluster_id.as_deref().or(self.bound.as_deref()) {
            Some(ours) if !theirs.is_empty() && ours != theirs => Err(ClusterError::OtherCluster {
                ours: ours.to_string(),
                theirs: theirs.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Records (synced) that this node belongs to cluster `id`, unless it already belongs
    /// to one: then `id` must be that one.
    pub(crate) fn join(&self, id: &str) -> Result<(), ClusterError> {
        if id.is_empty() {
            return Ok(());
        }
        self.check_cluster(id)?;
        if lock(&self.identity).cluster_id.is_some() {
            return Ok(());
        }
        self.record(|identity| {
            identity.cluster_id.get_or_insert_with(|| id.to_string());
        })
        .map_err(|error| ClusterError::Stopped {
            reason: error.to_string(),
        })?;
        tracing::info!(cluster_id = id, "this node belongs to cluster {id}");
        Ok(())
    }

    /// Changes the identity with `change` and records it, synced, when it changed.
    /// Forgets this node's vote record of `group` (synced): its replica moved away, and a
    /// replica started here again later is a new one that earns its vote anew.
    pub(crate) fn forget_group(&self, group: GroupId) -> Result<(), StoreError> {
        self.record(|identity| identity.set_voting(group, false))
    }

    fn record(&self, change: impl FnOnce(&mut NodeIdentity)) -> Result<(), StoreError> {
        let mut identity = lock(&self.identity);
        let mut changed = identity.clone();
        change(&mut changed);
        if changed != *identity {
            self.db.record_identity(&changed)?;
            *identity = changed;
        }
        Ok(())
    }
}

/// A new cluster's id: unique, and sortable by when the cluster was formed.
fn new_cluster_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

fn stopped(error: StoreError) -> ClusterError {
    ClusterError::Stopped {
        reason: error.to_string(),
    }
}

/// Reads (or, on a data directory that has none, records) the identity of the data
/// directory: a node refuses another node's directory, and a directory of another cluster
/// than the one its certificate names (`bound`). Whether each replica may vote is settled
/// when it starts (see [`Standing::vote_right`]).
pub(crate) fn settle(
    db: &Db,
    node_id: NodeId,
    bound: Option<String>,
) -> Result<Standing, ClusterError> {
    let recorded = db.identity().map_err(stopped)?;
    if let (Some(bound), Some(recorded)) = (
        &bound,
        recorded
            .as_ref()
            .and_then(|identity| identity.cluster_id.as_ref()),
    ) && bound != recorded
    {
        return Err(ClusterError::Stopped {
            reason: format!(
                "the data directory belongs to cluster {recorded}, but this node's certificate \
                 names cluster {bound}; give the node a certificate of cluster {recorded}, or \
                 start it on an empty data directory to join cluster {bound}"
            ),
        });
    }
    let identity = match recorded.clone() {
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
        Some(identity) => identity,
        None => {
            let identity = NodeIdentity {
                cluster_id: None,
                node_id,
                voting: false,
                voting_groups: Default::default(),
            };
            db.record_identity(&identity).map_err(stopped)?;
            identity
        }
    };
    Ok(Standing {
        identity: Arc::new(Mutex::new(identity)),
        unrecorded: recorded.is_none(),
        bound,
        db: db.clone(),
    })
}

/// How long a node earning its vote waits for news before it checks its log again.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Until the node may vote: waits for the log to catch up with a leader, then records that
/// (synced) and lets the node vote and stand for election. Ends when Raft stops.
///
/// Caught up means: a leader has told this node, since it started, of an entry committed
/// in the leader's own term (a commit point beyond the one on this node's disk, or a newer
/// term), and the node holds that entry synced. The first such entry is the one waited
/// for: a committed entry stays committed, so it is as good as any later one.
pub(crate) async fn earn_vote(raft: Raft, log: LogStore, node_id: NodeId, right: VoteRight) {
    let mut metrics = raft.metrics();
    // What the node's own disk held at start (a log that lost entries still holds a vote and
    // a commit point): only news from a leader since then counts.
    let (term_at_start, committed_at_start) = {
        let mut log = log.clone();
        match (log.read_vote().await, log.read_committed().await) {
            (Ok(vote), Ok(committed)) => (
                vote.map_or(0, |vote| vote.leader_id.term),
                committed.map(|committed| committed.index()),
            ),
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot read back the vote; this node keeps not voting");
                return;
            }
        }
    };
    // The first entry seen committed by a leader in its own term. It stays the target:
    // under steady writes the commit point keeps moving just ahead of what this node has
    // synced, and chasing it could take as long as the writes last.
    let mut target: Option<u64> = None;
    loop {
        // The founder of a new cluster may vote from its first entry on.
        if right.may_vote() {
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
                        && committed.committed_leader_id().term == metrics.current_term
                        && (metrics.current_term > term_at_start
                            || Some(committed.index()) > committed_at_start) =>
                {
                    Some(committed.index())
                }
                _ => None,
            }
        };
        if target.is_none() {
            target = committed_in_term;
        }
        if let Some(committed) = target {
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
    if let Err(error) = right.allow(&raft) {
        tracing::error!(%error, "cannot record that the log caught up; this node keeps not voting");
        return;
    }
    let group = right.group;
    tracing::info!(
        node_id,
        group,
        "the log of group {group} has caught up with the leader: this node votes again"
    );
}

/// For a cluster formed before cluster ids were recorded: once this node leads and belongs
/// to no cluster, it names one; the followers record it from its appends. Ends once the
/// node belongs to a cluster, or when Raft stops.
pub(crate) async fn name_old_cluster(raft: Raft, standing: Standing) {
    let mut metrics = raft.metrics();
    while standing.cluster_id().is_none() {
        let leading = metrics.borrow_watched().state == ServerState::Leader;
        if leading {
            if let Err(error) = standing.record(|identity| {
                identity.cluster_id.get_or_insert_with(new_cluster_id);
            }) {
                tracing::error!(%error, "cannot record the cluster id");
            }
            if let Some(id) = standing.cluster_id() {
                tracing::info!(cluster_id = %id, "named the cluster, which had no id yet");
            }
            return;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use raftq_store::{Db, LogStore, OpenOptions};

    use super::settle;
    use crate::ClusterError;

    #[test]
    fn a_node_belongs_to_the_first_cluster_it_joins_and_refuses_any_other() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let log = LogStore::new(db.clone(), 1).unwrap();
        let standing = settle(&db, 2, None).unwrap();
        assert_eq!(standing.cluster_id(), None);
        assert!(!standing.vote_right(1, &log).unwrap().may_vote());
        // Belonging to no cluster yet, it takes messages from any.
        standing.check_cluster("first").unwrap();

        standing.join("first").unwrap();
        standing.join("first").unwrap();
        assert_eq!(standing.cluster_id().as_deref(), Some("first"));
        let recorded = db.identity().unwrap().unwrap();
        assert_eq!(recorded.cluster_id.as_deref(), Some("first"));
        assert_eq!(recorded.node_id, 2);

        for refused in [standing.join("second"), standing.check_cluster("second")] {
            assert_eq!(
                refused,
                Err(ClusterError::OtherCluster {
                    ours: "first".into(),
                    theirs: "second".into()
                })
            );
        }
        assert_eq!(standing.cluster_id().as_deref(), Some("first"));
        // A sender that belongs to no cluster yet (a node about to join) is not refused.
        standing.check_cluster("").unwrap();
    }

    #[test]
    fn a_node_bound_to_a_cluster_by_its_certificate_keeps_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let standing = settle(&db, 1, Some("alpha".into())).unwrap();
        // Before it formed or joined a cluster, it already refuses another one.
        assert_eq!(
            standing.check_cluster("beta"),
            Err(ClusterError::OtherCluster {
                ours: "alpha".into(),
                theirs: "beta".into()
            })
        );
        standing.join("alpha").unwrap();
        drop(standing);
        // Its data now belongs to alpha: a certificate of beta cannot start on it.
        let Err(ClusterError::Stopped { reason }) = settle(&db, 1, Some("beta".into())) else {
            panic!("a certificate of another cluster is refused");
        };
        assert!(
            reason.contains("belongs to cluster alpha") && reason.contains("names cluster beta"),
            "{reason}"
        );
        settle(&db, 1, Some("alpha".into())).unwrap();
        settle(&db, 1, None).unwrap();
    }
}
