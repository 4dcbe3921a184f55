use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue, wait_until};

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
    let status = wait_until(
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
