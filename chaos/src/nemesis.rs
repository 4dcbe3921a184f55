//! The nemesis: a seeded schedule of process faults, each healed before the next.

use std::time::Duration;

use raftq_client::{Client, ClientConfig};
use raftq_tests::Cluster;

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
        }
    }
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

pub fn schedule(seed: u64, kinds: &[FaultKind], total: Duration) -> Vec<Planned> {
    let mut rng = Rng::new(seed);
    let mut plan = Vec::new();
    let mut elapsed = Duration::ZERO;
    while elapsed < total && !kinds.is_empty() {
        let kind = kinds[(rng.next() % kinds.len() as u64) as usize];
        let hold = Duration::from_millis(rng.between(1_000, 5_000));
        let rest = Duration::from_millis(rng.between(2_000, 5_000));
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
                ..ClientConfig::default()
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
        FaultKind::KillRandom | FaultKind::ClockAhead | FaultKind::ClockBehind => pick(&ids),
        FaultKind::RestartAll => ids,
    }
}

/// Injects the fault on `nodes`; returns after it has been healed.
pub async fn inject(cluster: &mut Cluster, kind: FaultKind, nodes: &[u64], hold: Duration) {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let kinds = [
            FaultKind::KillLeader,
            FaultKind::PauseFollower,
            FaultKind::RestartAll,
        ];
        let a = schedule(42, &kinds, Duration::from_secs(120));
        let b = schedule(42, &kinds, Duration::from_secs(120));
        let c = schedule(43, &kinds, Duration::from_secs(120));
        let key = |plan: &[Planned]| {
            plan.iter()
                .map(|p| (p.kind, p.hold, p.rest, p.pick))
                .collect::<Vec<_>>()
        };
        assert_eq!(key(&a), key(&b));
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
