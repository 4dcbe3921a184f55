//! The log on disk stays bounded by bytes as well as entries: a node snapshots (and then
//! purges its log) once the entries since its last snapshot hold `snapshot_every_bytes`,
//! however few they are.

use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, ClusterOptions, create_queue, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_snapshots_once_its_log_holds_snapshot_every_bytes() {
    let cluster = Cluster::start_with(
        3,
        ClusterOptions {
            env: vec![
                // By entries, never within this test.
                (
                    "RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES".into(),
                    "1000000".into(),
                ),
                ("RAFTQ_RAFT__SNAPSHOT_EVERY_BYTES".into(), "1048576".into()),
                (
                    "RAFTQ_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT".into(),
                    "10".into(),
                ),
            ],
            ..ClusterOptions::default()
        },
    )
    .await;
    let client = cluster.client();
    create_queue(&client, "big", pb::QueueOptions::default()).await;
    // About 3 MiB in 24 entries: far fewer entries than the entry policy waits for.
    for batch in 0..24 {
        let messages = (0..4)
            .map(|n| Message::new(vec![(batch * 4 + n) as u8; 32 * 1024]))
            .collect();
        client.send_batch("big", messages).await.expect("send");
    }
    for node in &cluster.nodes {
        let client = node.client();
        wait_until(
            &format!("node {} snapshots and purges its log", node.id),
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let info = client.node_info().await.ok()?;
                    (info.snapshot_index > 0 && info.purged_index > 0).then_some(())
                }
            },
        )
        .await;
    }
    // Nothing was lost to the snapshot.
    let depth = client
        .get_queue("big")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 96);
}
