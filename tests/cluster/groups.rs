//! Data groups: the metadata group places them over the nodes, and each node runs the
//! replicas placed on it.

use std::collections::BTreeMap;
use std::time::Duration;

use raftq_client::pb;
use raftq_tests::{Cluster, ClusterOptions, http_get, metric_value, wait_until_or};

/// Per data group, each replica's status with the node reporting it.
pub(crate) type Replicas = BTreeMap<u64, Vec<(u64, pb::ReplicaStatus)>>;

/// Every node's data-group replicas, once all nodes answer.
pub(crate) async fn replicas(cluster: &Cluster) -> Option<Replicas> {
    replicas_without(cluster, 0).await
}

/// Every node's data-group replicas but node `down`'s, once those nodes answer.
pub(crate) async fn replicas_without(cluster: &Cluster, down: u64) -> Option<Replicas> {
    let mut groups = Replicas::new();
    for node in cluster.nodes.iter().filter(|node| node.id != down) {
        let status = node.client().node_info().await.ok()?;
        for replica in status.replicas {
            groups
                .entry(replica.group_id)
                .or_default()
                .push((status.node_id, replica));
        }
    }
    Some(groups)
}

/// Whether `group` runs on `size` nodes that all name the same voters (those nodes) and
/// the same leader, which says it leads.
pub(crate) fn formed(group: &[(u64, pb::ReplicaStatus)], size: usize) -> Option<u64> {
    if group.len() != size {
        return None;
    }
    let mut nodes: Vec<u64> = group.iter().map(|(node, _)| *node).collect();
    nodes.sort_unstable();
    let leader = group[0].1.leader_id;
    let agreed = group.iter().all(|(node, replica)| {
        replica.voters == nodes
            && replica.learners.is_empty()
            && replica.leader_id == leader
            && (replica.role == "leader") == (*node == leader)
    });
    (agreed && leader != 0).then_some(leader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_data_groups_on_five_nodes_run_three_replicas_each_with_leaders_spread() {
    let cluster = Cluster::start_with(
        5,
        ClusterOptions {
            env: vec![("RAFTQ_GROUPS__DATA_GROUPS".into(), "16".into())],
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_for_voters(5).await;
    let leaders = wait_until_or(
        "16 data groups run on 3 nodes each, with their voters and a leader agreed",
        Duration::from_secs(120),
        || async {
            let groups = replicas(&cluster).await?;
            if groups.len() != 16 {
                return None;
            }
            let mut leaders = BTreeMap::new();
            for (group, replicas) in &groups {
                leaders.insert(*group, formed(replicas, 3)?);
            }
            Some((groups, leaders))
        },
        || cluster.logs(),
    )
    .await;
    let (groups, leaders) = leaders;
    assert_eq!(
        groups.keys().copied().collect::<Vec<_>>(),
        (2..=17).collect::<Vec<u64>>(),
        "data groups are numbered after group 1"
    );
    // 48 replicas over 5 nodes: 9 or 10 each; 16 leaders: 3 or 4 each.
    let mut per_node: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
    for (group, replicas) in &groups {
        for (node, _) in replicas {
            let load = per_node.entry(*node).or_default();
            load.0 += 1;
            load.1 += usize::from(leaders[group] == *node);
        }
    }
    assert_eq!(per_node.len(), 5, "{per_node:?}");
    for (node, (replicas, leads)) in &per_node {
        assert!((9..=10).contains(replicas), "node {node}: {per_node:?}");
        assert!((3..=4).contains(leads), "node {node}: {per_node:?}");
    }

    // `cluster status` shows each node's data groups.
    let status = cluster.client().cluster_status().await.expect("status");
    for node in &status.nodes {
        assert_eq!(node.replicas.len(), per_node[&node.node_id].0, "{node:?}");
    }

    // Each node's metrics name the groups it leads, one leader per group.
    let mut led_in_metrics: BTreeMap<u64, u64> = BTreeMap::new();
    for node in &cluster.nodes {
        let (code, text) = http_get(&node.http, "/metrics").await;
        assert_eq!(code, 200);
        for group in groups.keys() {
            let name = format!("raftq_group_is_leader{{group=\"{group}\"}}");
            if metric_value(&text, &name) == 1.0 {
                assert!(led_in_metrics.insert(*group, node.id).is_none(), "{group}");
            }
        }
    }
    assert_eq!(led_in_metrics, leaders, "leaders as the metrics say");
}

/// The leaders of `count` data groups that each run on 3 nodes, agreed and caught up
/// (no replica rebuilding).
pub(crate) async fn all_formed(cluster: &Cluster, count: usize) -> Option<Vec<u64>> {
    let groups = replicas(cluster).await?;
    (groups.len() == count).then_some(())?;
    let rebuilding = groups
        .values()
        .flatten()
        .any(|(_, replica)| replica.rebuilding);
    let leaders: Option<Vec<u64>> = groups
        .values()
        .map(|replicas| formed(replicas, 3))
        .collect();
    leaders.filter(|_| !rebuilding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_that_lost_its_disk_forms_no_second_group_and_is_rebuilt() {
    let mut cluster = Cluster::start_with(
        3,
        ClusterOptions {
            env: vec![("RAFTQ_GROUPS__DATA_GROUPS".into(), "3".into())],
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_for_voters(3).await;
    // Three groups on three nodes: each node founds one.
    wait_until_or(
        "3 data groups formed on 3 nodes",
        Duration::from_secs(60),
        || all_formed(&cluster, 3),
        || cluster.logs(),
    )
    .await;

    // Node 1 loses its disk. Started again, it finds its group's replica empty; the other
    // replicas hold the group, so it forms nothing and is sent the group instead (a second
    // group of the same id would show node 1 alone as its voter, and never agree).
    cluster.node(1).kill();
    cluster.node(1).wipe();
    cluster.node(1).restart();
    cluster.wait_for_voters(3).await;
    wait_until_or(
        "the 3 data groups run on 3 nodes again, node 1 rebuilt",
        Duration::from_secs(60),
        || all_formed(&cluster, 3),
        || cluster.logs(),
    )
    .await;
    let groups = replicas(&cluster).await.expect("statuses");
    for (group, replicas) in groups {
        for (node, replica) in replicas {
            assert_eq!(
                replica.voters,
                vec![1, 2, 3],
                "group {group} on node {node}"
            );
            assert!(replica.last_log_index > 0, "group {group} on node {node}");
        }
    }
}

/// Each data group's leader, as the replicas on the nodes other than `down` agree on it;
/// `None` until they all answer and agree.
pub(crate) async fn leaders_without(cluster: &Cluster, down: u64) -> Option<BTreeMap<u64, u64>> {
    let groups = replicas_without(cluster, down).await?;
    groups
        .iter()
        .map(|(group, replicas)| {
            let leader = replicas[0].1.leader_id;
            let agreed = leader != 0
                && leader != down
                && replicas.iter().all(|(node, replica)| {
                    replica.leader_id == leader && (replica.role == "leader") == (*node == leader)
                });
            agreed.then_some((*group, leader))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_leaderships_move_within_two_election_timeouts_and_come_back() {
    let mut cluster = Cluster::start_with(
        5,
        ClusterOptions {
            env: vec![
                ("RAFTQ_GROUPS__DATA_GROUPS".into(), "16".into()),
                ("RAFTQ_RAFT__ELECTION_TIMEOUT_MIN_MS".into(), "1000".into()),
                ("RAFTQ_RAFT__ELECTION_TIMEOUT_MAX_MS".into(), "2000".into()),
            ],
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_for_voters(5).await;
    let before = wait_until_or(
        "16 data groups formed",
        Duration::from_secs(120),
        || async {
            let groups = replicas(&cluster).await?;
            (groups.len() == 16).then_some(())?;
            groups
                .iter()
                .map(|(group, replicas)| Some((*group, formed(replicas, 3)?)))
                .collect::<Option<BTreeMap<u64, u64>>>()
        },
        || cluster.logs(),
    )
    .await;
    // The node that leads the most data groups (3 or 4 of them).
    let mut leads: BTreeMap<u64, usize> = BTreeMap::new();
    for leader in before.values() {
        *leads.entry(*leader).or_default() += 1;
    }
    let (&victim, &led) = leads.iter().max_by_key(|(_, count)| **count).unwrap();
    assert!(led >= 3, "{leads:?}");

    cluster.node(victim).kill();
    let killed = std::time::Instant::now();
    let moved = wait_until_or(
        "every group has a leader other than the killed node",
        Duration::from_secs(30),
        || leaders_without(&cluster, victim),
        || cluster.logs(),
    )
    .await;
    let took = killed.elapsed();
    assert_eq!(moved.len(), 16);
    // Twice the largest election timeout: a follower stands after at most one.
    assert!(
        took <= Duration::from_millis(2 * 2_000),
        "the killed node's {led} leaderships moved in {took:?}"
    );
    for (group, leader) in &before {
        if *leader != victim {
            assert_eq!(moved[group], *leader, "group {group} kept its leader");
        }
    }

    // Back, and caught up, the node takes its groups' leadership again: the leaders are
    // as they were, within one of even per node.
    cluster.node(victim).restart();
    wait_until_or(
        "each group is led by its first replica again",
        Duration::from_secs(60),
        || async {
            let groups = replicas(&cluster).await?;
            let now = groups
                .iter()
                .map(|(group, replicas)| Some((*group, formed(replicas, 3)?)))
                .collect::<Option<BTreeMap<u64, u64>>>()?;
            (now == before).then_some(())
        },
        || cluster.logs(),
    )
    .await;
}
