//! The nemesis: a seeded schedule of process, clock and network faults, each healed before
//! the next. Network faults need the nodes in their own namespaces (`--network netns`).

use std::time::Duration;

use anyhow::Context as _;
use raftq_client::{Client, ClientConfig};
use raftq_tests::Cluster;

use crate::agent::AgentProcess;
use crate::pg::PgWorkload;

/// What faults hit besides nodes: the agent of the agent producers and the PostgreSQL
/// part of the workload, when the run has them.
#[derive(Default)]
pub struct Helpers {
    pub agent: Option<AgentProcess>,
    pub pg: Option<PgWorkload>,
}

impl Helpers {
    /// Whether a fault of `kind` has something to act on.
    pub fn can_take(&self, kind: FaultKind) -> bool {
        match kind {
            FaultKind::KillAgent => self.agent.is_some(),
            FaultKind::KillRelay | FaultKind::CrashInbox => self.pg.is_some(),
            _ => false,
        }
    }
}

/// splitmix64: a tiny deterministic generator, so a seed always gives the same schedule.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    KillLeader,
    KillFollower,
    KillRandom,
    PauseLeader,
    PauseFollower,
    RestartAll,
    /// Restart a node with its wall clock an hour ahead (or behind), then heal it.
    ClockAhead,
    ClockBehind,
    /// Cut the leader off from every other node (clients still reach it).
    PartitionLeader,
    /// A random split into a majority and a minority.
    PartitionHalves,
    /// Two sides that cannot see each other and one node that sees both.
    PartitionBridge,
    /// A random node's packets to the other nodes are lost at random (one way).
    LossOneWay,
    /// A random node's outgoing packets are delayed (one way).
    Latency,
    /// Kill a random node and restart it on an empty data directory with its node id, as a
    /// pod whose volume was lost; healed once it has rebuilt and votes again.
    WipeDisk,
    /// Kill a random node, damage one of its files (flip a bit in or truncate a write-ahead
    /// log, table file, MANIFEST or snapshot file) and restart it; healed once it votes
    /// again, rebuilt from its peers on an empty data directory if it will not start.
    CorruptMinority,
    /// Kill -9 a random node and drop every write it had not synced (its data directory is
    /// on the power-loss file system), then restart it.
    PowerLossOne,
    /// The same for every node at once.
    PowerLossAll,
    /// Kill -9 the agent of the agent producers, then start it again on its data directory.
    KillAgent,
    /// Every node drops what the host sends it: the host's clients (the workload, the
    /// outboxes, the agent) are cut off from the cluster while the nodes still see each
    /// other.
    CutOffClients,
    /// Kill -9 the active `raftq pg-relay` (the standby takes over), start it again after.
    KillRelay,
    /// Drop an inbox consumer wherever it is, start a new one after.
    CrashInbox,
}

impl FaultKind {
    pub fn parse(name: &str) -> Option<FaultKind> {
        Some(match name.trim() {
            "kill-leader" => FaultKind::KillLeader,
            "kill-follower" => FaultKind::KillFollower,
            "kill-random" => FaultKind::KillRandom,
            "pause-leader" => FaultKind::PauseLeader,
            "pause-follower" => FaultKind::PauseFollower,
            "restart-all" => FaultKind::RestartAll,
            "clock-ahead" => FaultKind::ClockAhead,
            "clock-behind" => FaultKind::ClockBehind,
            "partition-leader" => FaultKind::PartitionLeader,
            "partition-halves" => FaultKind::PartitionHalves,
            "partition-bridge" => FaultKind::PartitionBridge,
            "loss-oneway" => FaultKind::LossOneWay,
            "latency" => FaultKind::Latency,
            "wipe-disk" => FaultKind::WipeDisk,
            "corrupt-minority" => FaultKind::CorruptMinority,
            "power-loss-one" => FaultKind::PowerLossOne,
            "power-loss-all" => FaultKind::PowerLossAll,
            "kill-agent" => FaultKind::KillAgent,
            "cut-off-clients" => FaultKind::CutOffClients,
            "kill-relay" => FaultKind::KillRelay,
            "crash-inbox" => FaultKind::CrashInbox,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillRandom => "kill-random",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::PauseFollower => "pause-follower",
            FaultKind::RestartAll => "restart-all",
            FaultKind::ClockAhead => "clock-ahead",
            FaultKind::ClockBehind => "clock-behind",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionHalves => "partition-halves",
            FaultKind::PartitionBridge => "partition-bridge",
            FaultKind::LossOneWay => "loss-oneway",
            FaultKind::Latency => "latency",
            FaultKind::WipeDisk => "wipe-disk",
            FaultKind::CorruptMinority => "corrupt-minority",
            FaultKind::PowerLossOne => "power-loss-one",
            FaultKind::PowerLossAll => "power-loss-all",
            FaultKind::KillAgent => "kill-agent",
            FaultKind::CutOffClients => "cut-off-clients",
            FaultKind::KillRelay => "kill-relay",
            FaultKind::CrashInbox => "crash-inbox",
        }
    }

    /// Faults that act on packets, and so need the nodes in their own namespaces.
    pub fn needs_network(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionLeader
                | FaultKind::PartitionHalves
                | FaultKind::PartitionBridge
                | FaultKind::LossOneWay
                | FaultKind::Latency
                | FaultKind::CutOffClients
        )
    }

    /// Faults that act on a helper process rather than on nodes (skipped when the run has
    /// no such helper).
    pub fn on_helper(self) -> bool {
        matches!(
            self,
            FaultKind::KillAgent | FaultKind::KillRelay | FaultKind::CrashInbox
        )
    }

    /// Faults that drop unsynced writes, and so need the nodes' data directories on the
    /// power-loss file system (root and /dev/fuse).
    pub fn needs_power_loss_disks(self) -> bool {
        matches!(self, FaultKind::PowerLossOne | FaultKind::PowerLossAll)
    }

    /// Whether the fault leaves fewer than a majority of nodes up and connected (then no
    /// system can be available, and the checker does not count the time as unavailable).
    /// Every partition this nemesis makes leaves a connected majority.
    pub fn majority_down(self, nodes: &[u64], cluster_size: u64) -> bool {
        !self.needs_network() && nodes.len() as u64 * 2 > cluster_size
    }
}

/// Every fault kind, in the order the help lists them.
pub const ALL_FAULTS: &str = "kill-leader,kill-follower,kill-random,pause-leader,pause-follower,restart-all,clock-ahead,clock-behind,partition-leader,partition-halves,partition-bridge,loss-oneway,latency,cut-off-clients,wipe-disk,corrupt-minority,power-loss-one,power-loss-all,kill-agent,kill-relay,crash-inbox";

/// A deterministic shuffle of `ids` driven by `pick`.
fn shuffled(ids: &[u64], pick: u64) -> Vec<u64> {
    let mut rng = Rng::new(pick);
    let mut ids = ids.to_vec();
    for i in (1..ids.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        ids.swap(i, j);
    }
    ids
}

/// One planned fault: what, and how long it lasts before it is healed.
#[derive(Debug, Clone, Copy)]
pub struct Planned {
    pub kind: FaultKind,
    pub hold: Duration,
    /// Quiet time after healing, before the next fault.
    pub rest: Duration,
    /// Drawn once, used to pick among candidate nodes.
    pub pick: u64,
}

/// How closely faults follow each other.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Each fault held 1–5 s, then 2–5 s of quiet.
    Normal,
    /// Each fault held 1–3 s, then 1–2 s of quiet: about twice the faults in the same time,
    /// for long runs that must inject many.
    Fast,
}

impl Pace {
    /// Bounds of the hold and of the quiet after it, in milliseconds.
    fn bounds(self) -> ((u64, u64), (u64, u64)) {
        match self {
            Pace::Normal => ((1_000, 5_000), (2_000, 5_000)),
            Pace::Fast => ((1_000, 3_000), (1_000, 2_000)),
        }
    }
}

pub fn schedule(seed: u64, kinds: &[FaultKind], total: Duration, pace: Pace) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut plan = Vec::new();
    let mut elapsed = Duration::ZERO;
    let ((hold_min, hold_max), (rest_min, rest_max)) = pace.bounds();
    while elapsed < total && !kinds.is_empty() {
        let kind = kinds[(rng.next() % kinds.len() as u64) as usize];
        let hold = Duration::from_millis(rng.between(hold_min, hold_max));
        let rest = Duration::from_millis(rng.between(rest_min, rest_max));
        plan.push(Planned {
            kind,
            hold,
            rest,
            pick: rng.next(),
        });
        elapsed += hold + rest;
    }
    plan
}

/// The leader as the nodes themselves report it (short timeouts: a paused node must not
/// hold the nemesis up).
pub async fn find_leader(cluster: &Cluster) -> Option<u64> {
    for node in cluster.nodes.iter().filter(|node| node.is_running()) {
        let client = Client::new(
            std::slice::from_ref(&node.grpc),
            ClientConfig {
                retry_deadline: Duration::from_millis(300),
                attempt_timeout: Duration::from_millis(300),
                ..raftq_tests::test_client_config()
            },
        )
        .ok()?;
        if let Ok(info) = client.node_info().await
            && info.role == "leader"
        {
            return Some(info.node_id);
        }
    }
    None
}

/// Waits (bounded) until some node reports itself leader.
pub async fn wait_for_leader(cluster: &Cluster, deadline: Duration) -> Option<u64> {
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if let Some(leader) = find_leader(cluster).await {
            return Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Which nodes a fault hits.
pub async fn targets(cluster: &Cluster, planned: &Planned) -> Vec<u64> {
    let ids: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
    let leader = find_leader(cluster).await;
    let pick = |candidates: &[u64]| -> Vec<u64> {
        if candidates.is_empty() {
            Vec::new()
        } else {
            vec![candidates[(planned.pick % candidates.len() as u64) as usize]]
        }
    };
    let followers: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| Some(*id) != leader)
        .collect();
    match planned.kind {
        FaultKind::KillLeader | FaultKind::PauseLeader => {
            leader.map(|id| vec![id]).unwrap_or_default()
        }
        FaultKind::KillFollower | FaultKind::PauseFollower => pick(&followers),
        FaultKind::KillRandom
        | FaultKind::WipeDisk
        | FaultKind::CorruptMinority
        | FaultKind::PowerLossOne
        | FaultKind::ClockAhead
        | FaultKind::ClockBehind
        | FaultKind::LossOneWay
        | FaultKind::Latency => pick(&ids),
        FaultKind::RestartAll | FaultKind::PowerLossAll | FaultKind::CutOffClients => ids,
        FaultKind::KillAgent | FaultKind::KillRelay | FaultKind::CrashInbox => Vec::new(),
        FaultKind::PartitionLeader => leader.map(|id| vec![id]).unwrap_or_default(),
        // The minority side.
        FaultKind::PartitionHalves => {
            let mut minority = shuffled(&ids, planned.pick);
            minority.truncate((ids.len() - 1) / 2);
            minority.sort_unstable();
            minority
        }
        // The bridge node.
        FaultKind::PartitionBridge => pick(&ids),
    }
}

/// The sides of a partition: the targets on one side, everyone else on the other; for a
/// bridge, the others split in two with the bridge node on neither side.
fn sides(kind: FaultKind, nodes: &[u64], all: &[u64], pick: u64) -> Vec<Vec<u64>> {
    let others: Vec<u64> = all
        .iter()
        .copied()
        .filter(|id| !nodes.contains(id))
        .collect();
    if kind == FaultKind::PartitionBridge {
        let mixed = shuffled(&others, pick);
        let (a, b) = mixed.split_at(mixed.len() / 2);
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        vec![a, b]
    } else {
        vec![nodes.to_vec(), others]
    }
}

fn describe(groups: &[Vec<u64>]) -> String {
    groups
        .iter()
        .map(|group| format!("{group:?}"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Share of packets lost on a one-way lossy link.
const LOSS_PERCENT: u32 = 40;
/// Added delay on a slow link.
const DELAY_MS: u32 = 200;

/// Injects the fault on `nodes`; returns after it has been healed, with a description of
/// what was done (the sides of a partition, how a link was slowed).
pub async fn inject(
    cluster: &mut Cluster,
    helpers: &mut Helpers,
    planned: &Planned,
    nodes: &[u64],
) -> anyhow::Result<String> {
    let (kind, hold) = (planned.kind, planned.hold);
    match kind {
        FaultKind::KillAgent => {
            let agent = helpers
                .agent
                .as_mut()
                .context("kill-agent needs agent producers")?;
            let held = agent.status().await.map_or(0, |status| status.pending);
            agent.kill();
            tokio::time::sleep(hold).await;
            agent.restart().await?;
            return Ok(format!("killed holding {held} messages; started again"));
        }
        FaultKind::KillRelay => {
            let pg = helpers
                .pg
                .as_mut()
                .context("kill-relay needs --pg-producers")?;
            return pg.kill_relay(hold).await;
        }
        FaultKind::CrashInbox => {
            let pg = helpers
                .pg
                .as_mut()
                .context("crash-inbox needs --pg-producers")?;
            return Ok(pg.crash_consumer(planned.pick, hold).await);
        }
        _ => {}
    }
    if kind.needs_network() {
        let network = cluster
            .network
            .clone()
            .context("network faults need --network netns")?;
        let all: Vec<u64> = cluster.nodes.iter().map(|node| node.id).collect();
        let detail = match kind {
            FaultKind::LossOneWay => {
                network
                    .lossy_from(nodes[0], LOSS_PERCENT)
                    .map_err(anyhow::Error::msg)?;
                format!("{LOSS_PERCENT}% of packets from node {} lost", nodes[0])
            }
            FaultKind::CutOffClients => {
                network.cut_off_host().map_err(anyhow::Error::msg)?;
                "every node drops what the host sends".to_string()
            }
            FaultKind::Latency => {
                let how = network
                    .slow_egress(nodes[0], DELAY_MS)
                    .map_err(anyhow::Error::msg)?;
                format!("node {} egress delayed {DELAY_MS} ms ({how:?})", nodes[0])
            }
            _ => {
                let groups = sides(kind, nodes, &all, planned.pick);
                network.partition(&groups).map_err(anyhow::Error::msg)?;
                describe(&groups)
            }
        };
        tokio::time::sleep(hold).await;
        network.heal().map_err(anyhow::Error::msg)?;
        return Ok(detail);
    }
    match kind {
        FaultKind::KillLeader
        | FaultKind::KillFollower
        | FaultKind::KillRandom
        | FaultKind::RestartAll => {
            for id in nodes {
                cluster.node(*id).kill();
            }
            tokio::time::sleep(hold).await;
            for id in nodes {
                cluster.node(*id).restart();
            }
        }
        FaultKind::ClockAhead | FaultKind::ClockBehind => {
            let offset = if kind == FaultKind::ClockAhead {
                "+1h"
            } else {
                "-1h"
            };
            for id in nodes {
                cluster.node(*id).stop();
                cluster.node(*id).restart_with_clock(Some(offset));
            }
            tokio::time::sleep(hold).await;
            for id in nodes {
                cluster.node(*id).stop();
                cluster.node(*id).restart_with_clock(None);
            }
        }
        FaultKind::PauseLeader | FaultKind::PauseFollower => {
            for id in nodes {
                cluster.node(*id).pause();
            }
            tokio::time::sleep(hold).await;
            for id in nodes {
                cluster.node(*id).resume();
            }
        }
        FaultKind::PowerLossOne | FaultKind::PowerLossAll => {
            let mut dropped = Vec::new();
            for id in nodes {
                // Read just before the kill: what the node had written and not synced.
                dropped.push(format!(
                    "node {id}: {} bytes",
                    cluster.node(*id).unsynced_bytes()
                ));
                cluster.node(*id).lose_power();
            }
            tokio::time::sleep(hold).await;
            for id in nodes {
                cluster.node(*id).restart();
            }
            return Ok(format!("unsynced writes dropped ({})", dropped.join(", ")));
        }
        FaultKind::CorruptMinority => {
            let id = nodes[0];
            cluster.node(id).kill();
            let data_dir = cluster.node(id).data_dir.clone();
            let done = crate::damage::damage(&data_dir, planned.pick)?
                .unwrap_or_else(|| "no file to damage".to_string());
            cluster.node(id).restart();
            tokio::time::sleep(hold).await;
            if wait_until_voting(cluster, id, DAMAGE_NOTICED_WITHIN).await {
                return Ok(format!("node {id}: {done}; it runs and votes"));
            }
            // The operator's path: an empty data directory, rebuilt from the peers.
            let how = if cluster.node(id).has_exited() {
                "it refused to start"
            } else {
                cluster.node(id).kill();
                "it did not vote again"
            };
            cluster.node(id).wipe();
            cluster.node(id).restart();
            let rebuilt = wait_until_voting(cluster, id, REBUILD_DEADLINE).await;
            return Ok(format!(
                "node {id}: {done}; {how}; rebuilt on an empty data directory{}",
                if rebuilt { "" } else { ", not voting yet" }
            ));
        }
        FaultKind::WipeDisk => {
            let id = nodes[0];
            cluster.node(id).kill();
            cluster.node(id).wipe();
            cluster.node(id).restart();
            tokio::time::sleep(hold).await;
            // Healed once the node has caught up and votes again: until then the cluster
            // tolerates one failure fewer, and a second wiped voter would leave no quorum
            // that may vote.
            let started = tokio::time::Instant::now();
            let rebuilt = wait_until_voting(cluster, id, REBUILD_DEADLINE).await;
            let waited = started.elapsed().as_secs_f64();
            return Ok(if rebuilt {
                format!(
                    "node {id} restarted on an empty data directory; voting again {waited:.1} s after the hold"
                )
            } else {
                format!(
                    "node {id} restarted on an empty data directory; not voting again within {REBUILD_DEADLINE:?}"
                )
            });
        }
        _ => unreachable!("network faults are handled above"),
    }
    Ok(String::new())
}

/// How long a damaged node has, after the fault's hold, to vote again before it is rebuilt.
const DAMAGE_NOTICED_WITHIN: Duration = Duration::from_secs(10);
/// Longest the nemesis waits for a wiped node to rebuild before it goes on.
const REBUILD_DEADLINE: Duration = Duration::from_secs(120);

/// Waits (bounded) until node `id` reports itself a voter that votes, and the leader
/// counts it as a voter too. (A node rebuilt on an empty disk is removed and added again
/// as a learner: its own copy of the log may still show it a voter while the leader has
/// not promoted it yet, and until then the cluster tolerates one failure fewer.)
async fn wait_until_voting(cluster: &Cluster, id: u64, deadline: Duration) -> bool {
    let Some(node) = cluster.nodes.iter().find(|node| node.id == id) else {
        return false;
    };
    let end = tokio::time::Instant::now() + deadline;
    while tokio::time::Instant::now() < end {
        if let Ok(info) = node.client().node_info().await
            && info.voter
            && !info.rebuilding
            && let Ok(status) = cluster.client().cluster_status().await
            && let Some(leader) = cluster.nodes.iter().find(|n| n.id == status.leader_id)
            && let Ok(at_leader) = leader.client().cluster_status().await
            && at_leader
                .nodes
                .iter()
                .any(|member| member.node_id == id && member.voter)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_leave_a_connected_majority() {
        for size in [3u64, 5] {
            let all: Vec<u64> = (1..=size).collect();
            for pick in 0..50 {
                let minority = {
                    let mut ids = shuffled(&all, pick);
                    ids.truncate((all.len() - 1) / 2);
                    ids
                };
                let groups = sides(FaultKind::PartitionHalves, &minority, &all, pick);
                assert!(groups[1].len() as u64 * 2 > size, "{groups:?}");
                assert_eq!(groups[0].len() + groups[1].len(), all.len());
                // Bridge: both sides non-empty, the bridge on neither, so bridge + the
                // larger side is a majority.
                let bridge = [all[(pick % size) as usize]];
                let groups = sides(FaultKind::PartitionBridge, &bridge, &all, pick);
                assert!(groups.iter().all(|side| !side.is_empty()), "{groups:?}");
                assert!(groups.iter().all(|side| !side.contains(&bridge[0])));
                let larger = groups.iter().map(Vec::len).max().unwrap_or(0) as u64;
                assert!((larger + 1) * 2 > size, "{groups:?}");
                assert!(!FaultKind::PartitionBridge.majority_down(&bridge, size));
            }
        }
        assert!(FaultKind::RestartAll.majority_down(&[1, 2, 3], 3));
        assert!(!FaultKind::KillLeader.majority_down(&[1], 3));
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = [
            FaultKind::KillLeader,
            FaultKind::PauseFollower,
            FaultKind::RestartAll,
        ];
        let a = schedule(42, &kinds, Duration::from_secs(120), Pace::Normal);
        let b = schedule(42, &kinds, Duration::from_secs(120), Pace::Normal);
        let c = schedule(43, &kinds, Duration::from_secs(120), Pace::Normal);
        let key = |plan: &[Planned]| {
            plan.iter()
                .map(|p| (p.kind, p.hold, p.rest, p.pick))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
        let fast = schedule(42, &kinds, Duration::from_secs(120), Pace::Fast);
        assert!(fast.len() > a.len());
        assert!(
            fast.iter()
                .all(|p| p.hold <= Duration::from_secs(3) && p.rest <= Duration::from_secs(2))
        );
        assert_ne!(key(&a), key(&c));
        assert!(
            a.iter()
                .map(|p| p.kind)
                .collect::<std::collections::HashSet<_>>()
                .len()
                > 1
        );
    }
}
