//! A follower that is down: the leader dials it a few times a second (openraft's backoff,
//! 200 ms doubling to 1 s), not in a loop, and replicates to it again once it is back.

use std::time::Duration;

use raftq_client::pb;
use raftq_tests::{Cluster, create_queue, wait_until};

/// Lines of node `log` that report a peer unreachable.
fn unreachable_reports(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("Unreachable"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dials_a_follower_that_is_down_a_few_times_a_second_not_in_a_loop() {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .nodes
        .iter()
        .map(|node| node.id)
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.node(follower).kill();
    let log = cluster.node(leader).log.clone();
    wait_until(
        "the leader finds the follower unreachable",
        Duration::from_secs(20),
        || {
            let reports = unreachable_reports(&log);
            async move { (reports > 0).then_some(()) }
        },
    )
    .await;
    // A window of five seconds, to show what does NOT happen in it: with the backoff
    // (200 ms doubling to 1 s) about ten attempts, each reported on two lines; without
    // it, thousands.
    let before = unreachable_reports(&log);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reports = unreachable_reports(&log) - before;
    assert!(
        reports <= 100,
        "the leader reported the follower unreachable {reports} times in 5 s"
    );
    // And it comes back into replication once it is up again.
    cluster.node(follower).restart();
    let client = cluster.client();
    create_queue(&client, "after", pb::QueueOptions::default()).await;
    let target = cluster
        .node(leader)
        .client()
        .node_info()
        .await
        .expect("leader status")
        .committed_index;
    wait_until("the follower catches up", Duration::from_secs(30), || {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.id == follower)
            .expect("node")
            .client();
        async move {
            let info = node.node_info().await.ok()?;
            (info.applied_index >= target).then_some(())
        }
    })
    .await;
}
