//! Adding, removing and shrinking members, and nodes joining a running cluster.

use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue, member_ids, wait_until_or};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_node_joins_as_voter_and_a_removed_node_leaves_the_cluster_serving() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "jobs", pb::QueueOptions::default()).await;
    for i in 0..100 {
        client
            .send("jobs", Message::new(format!("j{i}")))
            .await
            .expect("send");
    }
    cluster.spawn_joining_node(4);
    let status = wait_until_or(
        "node 4 is a caught-up voter",
        Duration::from_secs(60),
        || async {
            let status = client.cluster_status().await.ok()?;
            let leader_applied = status
                .nodes
                .iter()
                .find(|n| n.role == "leader")?
                .applied_index;
            let four = status.nodes.iter().find(|n| n.node_id == 4)?;
            (four.voter && four.role == "follower" && four.applied_index >= leader_applied)
                .then_some(status)
        },
        || cluster.logs(),
    )
    .await;
    assert_eq!(status.nodes.len(), 4);

    let removed = if status.leader_id == 2 { 3 } else { 2 };
    let after = client.remove_node(removed).await.expect("remove node");
    assert!(
        after.nodes.iter().all(|node| node.node_id != removed),
        "{after:?}"
    );
    assert_eq!(after.nodes.len(), 3);
    cluster.node(removed).stop();

    let client = cluster.client();
    client
        .send("jobs", Message::new("after"))
        .await
        .expect("send after removal");
    let depth = client
        .get_queue("jobs")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 101);
    let four = cluster
        .node(4)
        .client()
        .node_info()
        .await
        .expect("node 4 info");
    assert!(four.voter);
}

/// Whether `id` is a voter that has applied everything the leader has.
async fn is_caught_up_voter(client: &raftq_client::Client, id: u64) -> bool {
    let Ok(status) = client.cluster_status().await else {
        return false;
    };
    let Some(leader) = status.nodes.iter().find(|n| n.role == "leader") else {
        return false;
    };
    status
        .nodes
        .iter()
        .any(|n| n.node_id == id && n.voter && n.applied_index >= leader.applied_index)
}

/// Two pods of a scale-up start together: the second membership change is refused while
/// the first is being committed, and the joining node must wait and ask again, not exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_joining_at_once_both_become_voters() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "jobs", pb::QueueOptions::default()).await;
    client
        .send("jobs", Message::new("before"))
        .await
        .expect("send");
    cluster.spawn_joining_node(4);
    cluster.spawn_joining_node(5);
    wait_until_or(
        "nodes 4 and 5 are caught-up voters",
        Duration::from_secs(90),
        || {
            let client = client.clone();
            async move {
                (is_caught_up_voter(&client, 4).await && is_caught_up_voter(&client, 5).await)
                    .then_some(())
            }
        },
        || cluster.logs(),
    )
    .await;
    let status = client.cluster_status().await.expect("status");
    assert_eq!(status.nodes.len(), 5, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_removes_the_members_above_the_count_and_a_removed_node_joins_again() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "jobs", pb::QueueOptions::default()).await;
    client
        .send("jobs", Message::new("before"))
        .await
        .expect("send");
    cluster.spawn_joining_node(4);
    wait_until_or(
        "node 4 is a caught-up voter",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move { is_caught_up_voter(&client, 4).await.then_some(()) }
        },
        || cluster.logs(),
    )
    .await;

    // What the chart's pre-upgrade hook runs on a scale-down from 4 to 3.
    let address = cluster.node(1).grpc.clone();
    let shrink = || {
        raftq_tests::cli()
            .args([
                "--addr", &address, "--output", "json", "cluster", "shrink", "--to", "3",
            ])
            .output()
            .expect("run raftq cluster shrink")
    };
    let output = shrink();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(member_ids(&client).await, [1, 2, 3]);
    // Again: nothing above 3 is left, nothing changes, and that is no error.
    let again = shrink();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).is_empty());

    // The removed node comes back on its old data (a scale-up again): it still remembers
    // itself as a member, but the cluster does not count it, so it joins again.
    cluster.node(4).stop();
    cluster.node(4).restart();
    wait_until_or(
        "node 4 is a caught-up voter again",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move { is_caught_up_voter(&client, 4).await.then_some(()) }
        },
        || cluster.logs(),
    )
    .await;
    let four = cluster.node(4).client();
    let depth = four
        .get_queue("jobs")
        .await
        .expect("get through node 4")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_before_it_exits() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "jobs", pb::QueueOptions::default()).await;
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).stop();
    let log = std::fs::read_to_string(&cluster.node(leader).log).unwrap_or_default();
    assert!(
        log.contains("leadership handed over"),
        "node {leader} stopped without handing over:\n{}",
        cluster.node(leader).log_tail()
    );
    // Another node leads, and writes go on.
    let next = cluster.wait_for_leader().await;
    assert_ne!(next, leader);
    client
        .send("jobs", Message::new("after"))
        .await
        .expect("send after the leader stopped");
}
