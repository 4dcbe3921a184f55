//! Replicas move when nodes join or leave: two nodes joining a 3-node cluster take their
//! share of the data groups' replicas and leaders, and shrinking back to 3 moves them off
//! before the nodes leave, all under a workload that loses nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use raftq_client::{Client, Message, pb};
use raftq_tests::{Cluster, ClusterOptions, drain_bodies, member_ids, queue_stats, wait_until_or};

use crate::groups::{Replicas, formed, replicas, replicas_without};

const GROUPS: usize = 6;
/// The groups of the test with a node down.
const FEW_GROUPS: usize = 4;

/// Per node: (replicas, groups led), when every group runs on 3 agreed nodes of `nodes`.
fn spread(groups: &Replicas, nodes: &[u64]) -> Option<BTreeMap<u64, (usize, usize)>> {
    spread_of(groups, nodes, GROUPS)
}

/// [`spread`] for `count` groups.
fn spread_of(
    groups: &Replicas,
    nodes: &[u64],
    count: usize,
) -> Option<BTreeMap<u64, (usize, usize)>> {
    (groups.len() == count).then_some(())?;
    let mut per_node: BTreeMap<u64, (usize, usize)> =
        nodes.iter().map(|node| (*node, (0, 0))).collect();
    for replicas in groups.values() {
        let leader = formed(replicas, 3)?;
        for (node, replica) in replicas {
            if replica.rebuilding {
                return None;
            }
            let load = per_node.get_mut(node)?;
            load.0 += 1;
            load.1 += usize::from(leader == *node);
        }
    }
    Some(per_node)
}

/// Sends keyed, numbered messages to every queue in turn until told to stop, counting
/// the rounds done in `rounds`; answers how many each queue was sent (every send
/// acknowledged).
fn keep_sending(
    client: Client,
    queues: Vec<String>,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            for queue in &queues {
                let message = Message::new(format!("{n:05}")).with_key(format!("{queue}/{n}"));
                client
                    .send(queue, message)
                    .await
                    .expect("a send while replicas move");
            }
            n += 1;
            rounds.store(n, Ordering::Relaxed);
        }
        n
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_move_onto_joining_nodes_and_off_departing_ones_losing_nothing() {
    let mut cluster = Cluster::start_with(
        3,
        ClusterOptions {
            env: vec![("RAFTQ_GROUPS__DATA_GROUPS".into(), GROUPS.to_string())],
            ..ClusterOptions::default()
        },
    )
    .await;
    wait_until_or(
        "6 data groups on nodes 1 to 3",
        Duration::from_secs(60),
        || async { spread(&replicas(&cluster).await?, &[1, 2, 3]) },
        || cluster.logs(),
    )
    .await;
    let client = cluster.client();
    let queues: Vec<String> = (0..GROUPS).map(|i| format!("moving{i}")).collect();
    for queue in &queues {
        client
            .create_queue(queue, pb::QueueOptions::default())
            .await
            .expect("create");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let sender = keep_sending(client.clone(), queues.clone(), stop.clone(), rounds.clone());
    let before_join = rounds.load(Ordering::Relaxed);

    // Two nodes join: 18 replicas over 5 nodes is 3 or 4 each, 6 leaders 1 or 2 each.
    cluster.spawn_joining_node(4);
    cluster.spawn_joining_node(5);
    cluster.wait_for_voters(5).await;
    let per_node = wait_until_or(
        "the replicas and leaders spread over 5 nodes",
        Duration::from_secs(120),
        || async {
            let per_node = spread(&replicas(&cluster).await?, &[1, 2, 3, 4, 5])?;
            per_node
                .values()
                .all(|(replicas, leads)| (3..=4).contains(replicas) && (1..=2).contains(leads))
                .then_some(per_node)
        },
        || cluster.logs(),
    )
    .await;
    assert_eq!(per_node.len(), 5, "{per_node:?}");
    let before_shrink = rounds.load(Ordering::Relaxed);
    assert!(
        before_shrink > before_join,
        "messages were sent while the replicas moved onto nodes 4 and 5"
    );

    // Shrink back to 3 as the chart's hook does: the replicas move off nodes 4 and 5
    // before they leave, and the two drop what they held.
    let address = cluster.node(1).grpc.clone();
    let output = raftq_tests::cli()
        .args(["--addr", &address, "cluster", "shrink", "--to", "3"])
        .output()
        .expect("run raftq cluster shrink");
    assert!(
        output.status.success(),
        "shrink: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    assert_eq!(member_ids(&client).await, [1, 2, 3]);
    wait_until_or(
        "every group on nodes 1 to 3 again, nodes 4 and 5 running none",
        Duration::from_secs(60),
        || async { spread(&replicas(&cluster).await?, &[1, 2, 3]) },
        || cluster.logs(),
    )
    .await;

    assert!(
        rounds.load(Ordering::Relaxed) > before_shrink,
        "messages were sent while the replicas moved off nodes 4 and 5"
    );
    stop.store(true, Ordering::Relaxed);
    let sent = sender.await.expect("sender");
    // Every acknowledged message is there once, in order, in every queue.
    let expected: Vec<String> = (0..sent).map(|n| format!("{n:05}")).collect();
    for queue in &queues {
        let stats = queue_stats(&client, queue).await;
        assert_eq!(stats.total_sent as usize, sent, "{queue}: stored once each");
        let bodies = drain_bodies(&client, queue).await;
        assert_eq!(bodies, expected, "{queue}: each message once, in order");
    }
}

/// A node that is down while it is removed: its replicas move without it, the removal
/// completes, and when it comes back on its old disk (and joins again) the groups agree
/// on their members, it gets its share again, and every message is there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_removed_while_down_comes_back_on_its_old_disk_and_the_groups_agree() {
    let mut cluster = Cluster::start_with(
        3,
        ClusterOptions {
            env: vec![("RAFTQ_GROUPS__DATA_GROUPS".into(), FEW_GROUPS.to_string())],
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.spawn_joining_node(4);
    cluster.wait_for_voters(4).await;
    wait_until_or(
        "4 data groups spread over 4 nodes",
        Duration::from_secs(60),
        || async { spread_of(&replicas(&cluster).await?, &[1, 2, 3, 4], FEW_GROUPS) },
        || cluster.logs(),
    )
    .await;
    let client = cluster.client();
    let queues: Vec<String> = (0..FEW_GROUPS).map(|i| format!("kept{i}")).collect();
    for queue in &queues {
        client
            .create_queue(queue, pb::QueueOptions::default())
            .await
            .expect("create");
        for n in 0..50 {
            client
                .send(
                    queue,
                    Message::new(format!("{n:05}")).with_key(format!("{queue}/{n}")),
                )
                .await
                .expect("send");
        }
    }

    cluster.node(4).kill();
    let address = cluster.node(1).grpc.clone();
    let output = raftq_tests::cli()
        .args(["--addr", &address, "cluster", "remove-node", "--id", "4"])
        .output()
        .expect("run raftq cluster remove-node");
    assert!(
        output.status.success(),
        "remove-node 4 while it is down: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        cluster.logs()
    );
    wait_until_or(
        "every group on nodes 1 to 3 while node 4 is down",
        Duration::from_secs(60),
        || async {
            spread_of(
                &replicas_without(&cluster, 4).await?,
                &[1, 2, 3],
                FEW_GROUPS,
            )
        },
        || cluster.logs(),
    )
    .await;

    // Back on its old disk, it joins again and is given replicas again; the groups it
    // held agree on their members with it.
    cluster.node(4).restart();
    cluster.wait_for_voters(4).await;
    wait_until_or(
        "4 data groups spread over 4 nodes again",
        Duration::from_secs(120),
        || async { spread_of(&replicas(&cluster).await?, &[1, 2, 3, 4], FEW_GROUPS) },
        || cluster.logs(),
    )
    .await;
    let expected: Vec<String> = (0..50).map(|n| format!("{n:05}")).collect();
    for queue in &queues {
        let bodies = drain_bodies(&client, queue).await;
        assert_eq!(bodies, expected, "{queue}: each message once, in order");
        assert_eq!(queue_stats(&client, queue).await.total_sent, 50);
    }
}
