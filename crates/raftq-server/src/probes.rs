//! The node's liveness and readiness, found in one place: one task evaluates them and
//! publishes the result to the gRPC health services `raftq.liveness` and
//! `raftq.readiness`, then to `/healthz` and `/readyz`, so the two never disagree.

use std::time::Duration;

use raftq_cluster::{RaftNode, Role};
use raftq_tls::Transport;
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// gRPC health service names that carry the node's liveness and readiness.
pub const LIVENESS_SERVICE: &str = "raftq.liveness";
pub const READINESS_SERVICE: &str = "raftq.readiness";
/// How often both are evaluated again.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// What the probes last found; `Ok` and `Err` carry the reason a probe prints.
#[derive(Debug, Clone)]
pub struct Health {
    pub live: Result<(), String>,
    pub ready: Result<String, String>,
}

/// The probes' latest finding, for readers.
#[derive(Clone)]
pub struct Probes {
    health: watch::Receiver<Health>,
}

impl Probes {
    pub fn current(&self) -> Health {
        self.health.borrow().clone()
    }
}

/// Starts evaluating the probes for `node` every [`PROBE_INTERVAL`] until `stop`
/// resolves; the first evaluation runs at once.
pub fn start(
    node: RaftNode,
    transport: Transport,
    reporter: HealthReporter,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Probes, tokio::task::JoinHandle<()>) {
    let (publish, health) = watch::channel(Health {
        live: Ok(()),
        ready: Err("starting".to_string()),
    });
    let task = tokio::spawn(async move {
        tokio::pin!(stop);
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = interval.tick() => {
                    let found = Health {
                        live: liveness(&node),
                        ready: readiness(&node, &transport).await,
                    };
                    // gRPC health first: once /readyz says ready, so does gRPC health.
                    reporter
                        .set_service_status(LIVENESS_SERVICE, serving(found.live.is_ok()))
                        .await;
                    reporter
                        .set_service_status(READINESS_SERVICE, serving(found.ready.is_ok()))
                        .await;
                    publish.send_replace(found);
                }
            }
        }
    });
    (Probes { health }, task)
}

fn serving(ok: bool) -> ServingStatus {
    if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// A follower counts as caught up while it has applied the leader's commit index less
/// this many entries (under load the commit index moves on between the two readings).
const READY_LAG_ENTRIES: u64 = 1_000;
/// Longest a readiness probe waits for the leader's answer.
const LEADER_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether this node is a caught-up member: it knows a leader, is in the membership, and
/// (a follower) has applied what the leader has committed, within `READY_LAG_ENTRIES`. A
/// node restarted far behind, or still receiving a snapshot, is not ready, so a rolling
/// update waits for it before taking down the next node. `Ok` and `Err` carry the reason.
async fn readiness(node: &RaftNode, transport: &Transport) -> Result<String, String> {
    let status = node.status();
    let Some(leader) = status.leader_id else {
        return Err("no leader known".to_string());
    };
    if !status.members.contains_key(&status.node_id) {
        return Err("not a member yet".to_string());
    }
    if leader == status.node_id {
        return Ok("ready; this node leads".to_string());
    }
    let Some((_, addresses)) = node.leader_node() else {
        return Err("no leader address known".to_string());
    };
    match crate::services::peer_status(leader, &addresses.internal, transport, LEADER_QUERY_TIMEOUT)
        .await
    {
        Some(leader_status)
            if status.applied_index + READY_LAG_ENTRIES >= leader_status.committed_index =>
        {
            Ok(format!(
                "ready; leader is node {leader}; applied {} of its {} committed",
                status.applied_index, leader_status.committed_index
            ))
        }
        Some(leader_status) => Err(format!(
            "catching up: applied {} of the {} entries node {leader} has committed",
            status.applied_index, leader_status.committed_index
        )),
        None => Err(format!(
            "cannot reach the leader, node {leader}, at its internal address {}",
            addresses.internal
        )),
    }
}

/// Whether Raft runs on this node.
fn liveness(node: &RaftNode) -> Result<(), String> {
    match node.status().role {
        Role::Shutdown => Err("raft stopped".to_string()),
        _ => Ok(()),
    }
}
