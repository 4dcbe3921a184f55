//! A voter that lost its disk (a pod whose volume was lost, restarted with its node id on an
//! empty data directory), or whose disk lost the end of its write-ahead log, must not help
//! elect a leader that lacks acknowledged messages.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftq_client::{Client, Message, pb};
use raftq_tests::{Cluster, NodeProcess, create_queue, raftq_binary, refused_start, wait_until_or};

const MESSAGES: usize = 100;

/// Sends `MESSAGES` distinct bodies through `client`; every one is acknowledged.
async fn send_all(client: &Client, queue: &str, prefix: &str) -> BTreeSet<String> {
    let mut sent = BTreeSet::new();
    for i in 0..MESSAGES {
        let body = format!("{prefix}-{i:03}");
        client
            .send(queue, Message::new(body.clone()))
            .await
            .expect("send acknowledged");
        sent.insert(body);
    }
    sent
}

/// The bodies the queue holds, read through the leader without leasing them.
async fn bodies(client: &Client, queue: &str) -> BTreeSet<String> {
    client
        .peek(queue, 0, 1_000)
        .await
        .expect("peek")
        .into_iter()
        .map(|message| String::from_utf8(message.body).expect("utf8 body"))
        .collect()
}

/// Node `id`'s own report, or `None` when it does not answer.
async fn node_info(cluster: &mut Cluster, id: u64) -> Option<pb::NodeStatus> {
    cluster.node(id).client().node_info().await.ok()
}

/// Cuts the newest write-ahead-log file of the (stopped) node to half its length: a disk
/// that lost the end of a file the node had synced. RocksDB reads the cut record as a torn
/// write and opens without everything after it.
fn cut_write_ahead_log(node: &mut NodeProcess) {
    let mut logs: Vec<_> = std::fs::read_dir(node.data_dir.join("rocksdb"))
        .expect("the node's rocksdb directory")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    logs.sort();
    let newest = logs.pop().expect("a write-ahead-log file");
    let length = std::fs::metadata(&newest).expect("log file").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&newest)
        .and_then(|file| file.set_len(length / 2))
        .expect("cut the write-ahead log");
}

/// Acknowledged sends are committed on the leader and `damaged` only (the third node is
/// paused); then the leader is killed and `damaged` loses them (`damage`, while it is down).
/// Were `damaged` to vote, the third node, which lacks them, could lead without them.
async fn a_voter_that_lost_acked_entries_does_not_elect_a_leader_missing_them(
    damage: fn(&mut NodeProcess),
) {
    let mut cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let lagging = cluster.follower_of(leader);
    let damaged = (1..=3)
        .find(|id| *id != leader && *id != lagging)
        .expect("a third node");
    let client = cluster.node(leader).client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;

    cluster.node(lagging).pause();
    let sent = send_all(&client, "orders", "acked").await;
    cluster.node(leader).kill();
    cluster.node(damaged).kill();
    damage(cluster.node(damaged));
    cluster.node(damaged).restart();
    cluster.node(lagging).resume();

    // Were `damaged` to vote, `lagging` would lead within an election timeout or two
    // (300-600 ms here).
    let damaged_client = cluster.node(damaged).client();
    wait_until_or(
        "the damaged node answers and says it is rebuilding",
        Duration::from_secs(30),
        || async {
            let info = damaged_client.node_info().await.ok()?;
            info.rebuilding.then_some(())
        },
        || cluster.logs(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for id in [damaged, lagging] {
        let info = node_info(&mut cluster, id).await.expect("node answers");
        assert_ne!(
            info.role,
            "leader",
            "node {id} leads without the acknowledged messages\n{}",
            cluster.logs()
        );
    }

    // The old leader comes back with the messages; the damaged node catches up from it.
    cluster.node(leader).restart();
    cluster.wait_for_leader().await;
    cluster.wait_for_voters(3).await;
    let client = cluster.client();
    assert_eq!(bodies(&client, "orders").await, sent, "{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_an_empty_disk_does_not_elect_a_leader_missing_acked_messages() {
    a_voter_that_lost_acked_entries_does_not_elect_a_leader_missing_them(NodeProcess::wipe).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_whose_write_ahead_log_was_cut_does_not_elect_a_leader_missing_acked_messages() {
    a_voter_that_lost_acked_entries_does_not_elect_a_leader_missing_them(cut_write_ahead_log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_rebuilds_and_then_each_other_node_can_fail_in_turn_losing_nothing() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let mut sent = send_all(&client, "orders", "before").await;

    let leader = cluster.wait_for_leader().await;
    let wiped = cluster.follower_of(leader);
    cluster.node(wiped).kill();
    cluster.node(wiped).wipe();
    cluster.node(wiped).restart();
    cluster.wait_for_voters(3).await;
    sent.extend(send_all(&client, "orders", "rebuilt").await);

    // Each other node in turn: with it down, the wiped node's vote is needed, and its log
    // must hold every acknowledged message.
    for down in (1..=3).filter(|id| *id != wiped) {
        cluster.node(down).kill();
        cluster.wait_for_leader().await;
        let client = cluster.client();
        assert_eq!(
            bodies(&client, "orders").await,
            sent,
            "with node {down} down\n{}",
            cluster.logs()
        );
        cluster.node(down).restart();
        cluster.wait_for_voters(3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_data_directory_that_belongs_to_another_node() {
    let mut cluster = Cluster::start(1).await;
    cluster.node(1).stop();
    let data_dir = cluster.node(1).data_dir.clone();
    let mut serve = tokio::process::Command::new(raftq_binary());
    serve
        .args(["serve", "--node-id", "2", "--listen", "127.0.0.1:0"])
        .args(["--internal-listen", "127.0.0.1:0", "--insecure"])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir);
    let stderr = refused_start(serve, Duration::from_secs(30)).await;
    assert!(
        stderr.contains("belongs to node 1, not to node 2"),
        "{stderr}"
    );
}

/// `raftq reset-data-dir`, as an operator runs it.
fn reset_data_dir(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(raftq_binary())
        .args(["reset-data-dir", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run raftq reset-data-dir")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_data_dir_refuses_a_running_node_and_the_reset_node_rebuilds_from_its_peers() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let sent = send_all(&client, "orders", "kept").await;
    let data_dir = cluster.node(2).data_dir.clone();

    let refused = reset_data_dir(&data_dir);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("is running on"), "{stderr}");
    let not_ours = reset_data_dir(data_dir.parent().expect("the cluster's directory"));
    assert!(!not_ours.status.success());
    assert!(
        String::from_utf8_lossy(&not_ours.stderr).contains("holds no raftq data"),
        "{not_ours:?}"
    );

    cluster.node(2).kill();
    let reset = reset_data_dir(&data_dir);
    assert!(reset.status.success(), "{reset:?}");
    assert_eq!(
        std::fs::read_dir(&data_dir).expect("data dir").count(),
        0,
        "the directory is empty"
    );
    cluster.node(2).restart();
    cluster.wait_for_voters(3).await;
    // Node 2 holds everything again: with it, either other node may fail.
    for down in [1, 3] {
        cluster.node(down).kill();
        cluster.wait_for_leader().await;
        assert_eq!(
            bodies(&cluster.client(), "orders").await,
            sent,
            "{}",
            cluster.logs()
        );
        cluster.node(down).restart();
        cluster.wait_for_voters(3).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_earns_its_vote_back_while_writes_go_on() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "steady", pb::QueueOptions::default()).await;
    // Writes that do not stop while the node rebuilds: the commit point keeps moving.
    let writing = Arc::new(AtomicBool::new(true));
    let writers: Vec<_> = (0..2)
        .map(|_| {
            let (client, writing) = (client.clone(), writing.clone());
            tokio::spawn(async move {
                let mut sent = 0u64;
                while writing.load(Ordering::Relaxed) {
                    let batch = (0..10).map(|n| Message::new(format!("m{n}"))).collect();
                    if client.send_batch("steady", batch).await.is_ok() {
                        sent += 10;
                    }
                }
                sent
            })
        })
        .collect();
    let leader = cluster.wait_for_leader().await;
    let wiped = cluster.follower_of(leader);
    cluster.node(wiped).kill();
    cluster.node(wiped).wipe();
    cluster.node(wiped).restart();
    let rebuilt = cluster.node(wiped).client();
    wait_until_or(
        "the wiped node votes again while writes go on",
        Duration::from_secs(30),
        || {
            let rebuilt = rebuilt.clone();
            async move {
                let info = rebuilt.node_info().await.ok()?;
                (info.voter && !info.rebuilding).then_some(())
            }
        },
        || cluster.logs(),
    )
    .await;
    writing.store(false, Ordering::Relaxed);
    let mut sent = 0;
    for writer in writers {
        sent += writer.await.expect("a writer");
    }
    assert!(sent > 0, "writes went on");
}
