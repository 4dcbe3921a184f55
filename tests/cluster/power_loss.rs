//! Power loss: every node's data directory is on the power-loss file system, so what a node
//! had not synced is really gone after the fault, not kept by the page cache as after kill -9.

use std::collections::BTreeSet;
use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, ClusterOptions, create_queue, wait_until, wait_until_or};

/// Sends `count` bodies named `{prefix}-{i}` one by one; returns those acknowledged.
async fn send_bodies(
    client: raftq_client::Client,
    prefix: String,
    count: usize,
) -> BTreeSet<String> {
    send_padded(client, prefix, count, 0).await
}

/// As `send_bodies`, each body padded with `pad` bytes (so that snapshots grow).
async fn send_padded(
    client: raftq_client::Client,
    prefix: String,
    count: usize,
    pad: usize,
) -> BTreeSet<String> {
    let mut acked = BTreeSet::new();
    for i in 0..count {
        let body = format!("{prefix}-{i:04}-{}", "x".repeat(pad));
        if client
            .send("orders", Message::new(body.clone()))
            .await
            .is_ok()
        {
            acked.insert(body);
        }
    }
    acked
}

/// Sends `count` distinct bodies from each of `producers` concurrent tasks; returns the
/// bodies whose send was acknowledged.
async fn send_concurrently(cluster: &Cluster, producers: usize, count: usize) -> BTreeSet<String> {
    send_padded_concurrently(cluster, producers, count, 0).await
}

/// As `send_concurrently`, each body padded with `pad` bytes.
async fn send_padded_concurrently(
    cluster: &Cluster,
    producers: usize,
    count: usize,
    pad: usize,
) -> BTreeSet<String> {
    let tasks: Vec<_> = (0..producers)
        .map(|producer| {
            tokio::spawn(send_padded(
                cluster.client(),
                format!("p{producer}"),
                count,
                pad,
            ))
        })
        .collect();
    let mut acked = BTreeSet::new();
    for task in tasks {
        acked.extend(task.await.expect("producer task"));
    }
    acked
}

async fn stored_bodies(cluster: &Cluster) -> BTreeSet<String> {
    let client = cluster.client();
    let last_error = std::sync::Mutex::new(String::new());
    wait_until_or(
        "the queue can be read",
        Duration::from_secs(30),
        || async {
            match client.peek("orders", 0, 1_000).await {
                Ok(messages) => Some(messages),
                Err(error) => {
                    *last_error.lock().unwrap() = error.to_string();
                    None
                }
            }
        },
        || {
            format!(
                "last error: {}\n{}",
                last_error.lock().unwrap(),
                cluster.logs()
            )
        },
    )
    .await
    .into_iter()
    .map(|message| String::from_utf8(message.body).expect("utf8 body"))
    .collect()
}

/// Power goes out on all three nodes at once and comes back; returns once they are voters
/// again.
async fn every_node_loses_power(cluster: &mut Cluster) {
    for id in 1..=3 {
        cluster.node(id).lose_power();
    }
    for id in 1..=3 {
        cluster.node(id).restart();
    }
    cluster.wait_for_leader().await;
    cluster.wait_for_voters(3).await;
}

/// A cluster of `size` nodes on power-loss disks, with `env` for every node, and the queue
/// "orders".
async fn power_loss_cluster(size: u64, env: Vec<(String, String)>) -> Cluster {
    let cluster = Cluster::start_with(
        size,
        ClusterOptions {
            power_loss_disks: true,
            env,
            ..ClusterOptions::default()
        },
    )
    .await;
    // Every node a voter before any power is cut: a leader that loses power while the
    // others are still joining leaves a cluster with no quorum until it is back, and the
    // tests' loads would then wait out every send's retries.
    cluster.wait_for_voters(size).await;
    create_queue(&cluster.client(), "orders", pb::QueueOptions::default()).await;
    cluster
}

/// Fails naming every acknowledged send the queue no longer holds.
async fn assert_none_lost(cluster: &Cluster, acked: &BTreeSet<String>) {
    let stored = stored_bodies(cluster).await;
    let lost: Vec<&String> = acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged sends lost: {lost:?}\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_sends_survive_every_node_losing_power_at_once() {
    let mut cluster = power_loss_cluster(3, Vec::new()).await;
    let acked = send_concurrently(&cluster, 4, 100).await;
    assert_eq!(
        acked.len(),
        400,
        "every send is acknowledged before the fault"
    );
    // What the nodes wrote past their last sync (the commit pointer, the state machine's
    // write buffer) is dropped with the power. A leader that came back as leader without an
    // election once served reads from a commit point older than sends it had acknowledged.
    every_node_loses_power(&mut cluster).await;
    assert_eq!(stored_bodies(&cluster).await, acked, "{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_losing_power_under_load_loses_no_acknowledged_send() {
    let mut cluster = power_loss_cluster(3, Vec::new()).await;
    let leader = cluster.wait_for_leader().await;
    let load = tokio::spawn(send_bodies(cluster.client(), "load".into(), 400));
    wait_until("the load has started", Duration::from_secs(30), || async {
        let depth = cluster
            .client()
            .get_queue("orders")
            .await
            .ok()?
            .stats?
            .depth;
        (depth >= 50).then_some(())
    })
    .await;
    cluster.node(leader).lose_power();
    let acked = load.await.expect("producer task");
    cluster.node(leader).restart();
    cluster.wait_for_voters(3).await;
    assert_none_lost(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_losing_power_keeps_every_acknowledged_send() {
    let mut cluster = power_loss_cluster(1, Vec::new()).await;
    let client = cluster.client();
    let mut acked = BTreeSet::new();
    for i in 0..50 {
        let body = format!("single-{i:03}");
        client
            .send("orders", Message::new(body.clone()))
            .await
            .expect("send acknowledged");
        acked.insert(body);
    }
    cluster.node(1).lose_power();
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    assert_eq!(stored_bodies(&cluster).await, acked, "{}", cluster.logs());
}

/// A snapshot every 100 entries, 20 kept behind it: snapshots are built all the time, and a
/// follower that was away needs one installed.
fn frequent_snapshots() -> Vec<(String, String)> {
    vec![
        ("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES".into(), "100".into()),
        (
            "RAFTQ_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT".into(),
            "20".into(),
        ),
    ]
}

/// Bytes each body is padded with: 600 of them make a snapshot file of more than 1 MiB,
/// which the store writes in more than one piece, so a write can be held mid-file.
const PAD: usize = 2_048;

/// Waits until the held write is reached; returns the file's path.
fn held(
    cluster: &Cluster,
    tripped: &std::sync::mpsc::Receiver<std::path::PathBuf>,
) -> std::path::PathBuf {
    tripped
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the held write was never reached\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_losing_power_in_the_middle_of_building_a_snapshot_loses_nothing() {
    let mut cluster = power_loss_cluster(3, frequent_snapshots()).await;
    let leader = cluster.wait_for_leader().await;
    let builder = cluster.follower_of(leader);
    // The write after the first piece of the file: the state and bodies are partly written,
    // nothing of the file synced, its name not synced either.
    let tripped = cluster.node(builder).hold_write(".snap.part", 1);
    let mut acked = send_padded_concurrently(&cluster, 4, 150, PAD).await;
    assert_eq!(acked.len(), 600, "every send is acknowledged");
    let file = held(&cluster, &tripped);
    assert!(file.to_string_lossy().contains("snapshots/"), "{file:?}");

    cluster.node(builder).lose_power();
    cluster.node(builder).restart();
    acked.extend(send_bodies(cluster.client(), "after".into(), 50).await);
    every_node_loses_power(&mut cluster).await;
    assert_none_lost(&cluster, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_losing_power_in_the_middle_of_receiving_a_snapshot_loses_nothing() {
    let mut cluster = power_loss_cluster(3, frequent_snapshots()).await;
    let leader = cluster.wait_for_leader().await;
    let away = cluster.follower_of(leader);
    cluster.node(away).kill();
    let mut acked = send_padded_concurrently(&cluster, 4, 150, PAD).await;
    assert_eq!(
        acked.len(),
        600,
        "every send is acknowledged with one node away"
    );
    // Purging follows the snapshot in the background: wait for it rather than race it.
    let leader_client = cluster.node(leader).client();
    wait_until_or(
        "the leader purged its log behind a snapshot",
        Duration::from_secs(30),
        || async {
            let info = leader_client.node_info().await.ok()?;
            (info.purged_index > 0).then_some(())
        },
        || cluster.logs(),
    )
    .await;

    // The node comes back behind the purged log and is sent a snapshot; its power goes out
    // after the first piece of the received file is written, while sends go on.
    let tripped = cluster.node(away).hold_write("incoming-", 1);
    let load = tokio::spawn(send_bodies(cluster.client(), "during".into(), 300));
    cluster.node(away).restart();
    let file = held(&cluster, &tripped);
    assert!(file.to_string_lossy().contains("snapshots/"), "{file:?}");
    cluster.node(away).lose_power();
    cluster.node(away).restart();
    acked.extend(load.await.expect("producer task"));
    every_node_loses_power(&mut cluster).await;
    assert_none_lost(&cluster, &acked).await;
}
