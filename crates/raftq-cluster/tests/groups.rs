//! Several Raft groups on the same nodes: real RocksDB stores in temporary directories and
//! real gRPC between the nodes over loopback sockets, each node's Raft service serving
//! every group it runs a replica of.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raftq_cluster::{Host, Node, NodeConfig, RaftNode, RaftTuning, StorageTuning};
use raftq_core::{Command, NewMessage, Outcome, QueueOptions};
use tokio::sync::watch;

/// One node: its host and the port its Raft service listens on.
struct TestNode {
    host: Host,
    port: u16,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
}

/// Elections only when a leader is gone for seconds: in these tests the first node leads
/// every group it formed, and the others never call it.
fn tuning() -> RaftTuning {
    RaftTuning {
        election_timeout_min_ms: 3_000,
        election_timeout_max_ms: 4_000,
        ..RaftTuning::default()
    }
}

async fn start_node(node_id: u64) -> TestNode {
    start_node_with(node_id, tuning()).await
}

async fn start_node_with(node_id: u64, tuning: RaftTuning) -> TestNode {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{port}");
    let host = Host::open(NodeConfig {
        node_id,
        addresses: Node::new(address.clone(), address),
        transport: raftq_tls::Transport::Plaintext,
        data_dir: dir.path().to_path_buf(),
        cluster_name: None,
        tuning,
        storage: StorageTuning::default(),
    })
    .unwrap();
    let (stop, stopping) = watch::channel(false);
    let service = host.raft_service(stopping.clone());
    tokio::spawn(async move {
        let mut stopping = stopping;
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async move {
                    let _ = stopping.wait_for(|stopping| *stopping).await;
                },
            )
            .await
            .unwrap();
    });
    TestNode {
        host,
        port,
        _dir: dir,
        _stop: stop,
    }
}

fn address(node: &TestNode) -> Node {
    let address = format!("127.0.0.1:{}", node.port);
    Node::new(address.clone(), address)
}

/// Polls `check` every 20 ms until it holds, or panics after `within` naming `what`.
async fn wait_until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Forms `group` with `nodes[0]` as its first voter, then adds the others as voters.
async fn form_group(nodes: &[TestNode], group: u64) -> Vec<RaftNode> {
    let mut replicas = Vec::new();
    for node in nodes {
        replicas.push(node.host.start_replica(group).await.unwrap());
    }
    assert!(replicas[0].initialize().await.unwrap());
    wait_until(
        &format!("node 1 leads group {group}"),
        Duration::from_secs(10),
        || replicas[0].is_leader(),
    )
    .await;
    for (node, replica) in nodes.iter().zip(&replicas).skip(1) {
        replicas[0]
            .add_node(replica.node_id(), address(node), true, false)
            .await
            .unwrap();
    }
    replicas
}

async fn create_and_fill(leader: &RaftNode, queue: &str, messages: usize) {
    let created = leader
        .write(Command::CreateQueue {
            name: queue.into(),
            options: QueueOptions::default(),
        })
        .await
        .unwrap();
    assert!(matches!(created, Ok(Outcome::Created(_))), "{created:?}");
    for i in 0..messages {
        let sent = leader
            .write(Command::Send {
                queue: queue.into(),
                messages: vec![NewMessage {
                    body: format!("{queue}-{i}").into_bytes(),
                    ..NewMessage::default()
                }],
            })
            .await
            .unwrap();
        assert!(matches!(sent, Ok(Outcome::Sent(_))), "{sent:?}");
    }
}

/// Messages stored in `queue` as `replica` applied them; `None` when it has no such queue.
fn depth(replica: &RaftNode, queue: &str) -> Option<u64> {
    let state = replica.state().read();
    state.queue_info(queue).ok().map(|info| info.stats.depth)
}

/// Established TCP connections from this process to each of `ports` (the client side: a
/// local port other than the one listened on, the remote port one of `ports`).
fn client_connections(ports: &[u16]) -> HashMap<u16, usize> {
    let mut counts: HashMap<u16, usize> = ports.iter().map(|port| (*port, 0)).collect();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16);
        let (Ok(local), Ok(remote)) = (port(fields[1]), port(fields[2])) else {
            continue;
        };
        // State 01 is ESTABLISHED.
        if fields[3] == "01"
            && !ports.contains(&local)
            && let Some(count) = counts.get_mut(&remote)
        {
            *count += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_on_three_nodes_replicate_apart_over_one_connection_per_node_pair() {
    let nodes = vec![
        start_node(1).await,
        start_node(2).await,
        start_node(3).await,
    ];
    let first = form_group(&nodes, 1).await;
    let second = form_group(&nodes, 2).await;
    for node in &nodes {
        assert_eq!(node.host.groups(), vec![1, 2]);
    }
    create_and_fill(&first[0], "orders", 40).await;
    create_and_fill(&second[0], "payments", 60).await;

    // Each group holds its own queue, on every one of its replicas, and nothing of the
    // other group's.
    for (one, two) in first.iter().zip(&second) {
        wait_until(
            &format!("node {} applied both groups", one.node_id()),
            Duration::from_secs(10),
            || depth(one, "orders") == Some(40) && depth(two, "payments") == Some(60),
        )
        .await;
        assert_eq!(depth(one, "payments"), None);
        assert_eq!(depth(two, "orders"), None);
        assert_eq!(one.status().leader_id, Some(1));
        assert_eq!(two.status().leader_id, Some(1));
    }

    // Node 1 leads both groups and replicates both to nodes 2 and 3: one connection to
    // each, however many groups.
    let ports: Vec<u16> = nodes.iter().map(|node| node.port).collect();
    let connections = client_connections(&ports);
    assert_eq!(connections[&nodes[1].port], 1, "{connections:?}");
    assert_eq!(connections[&nodes[2].port], 1, "{connections:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_a_node_does_not_serve_yet_is_refused_and_the_leader_backs_off_until_it_does() {
    // Heartbeats go out on their own timer whatever the answers: one a second here, so
    // that the refusals counted are mostly the replication's attempts.
    let slow_heartbeats = RaftTuning {
        heartbeat_ms: 1_000,
        ..tuning()
    };
    let leader_node = start_node_with(1, slow_heartbeats.clone()).await;
    let other = start_node_with(2, slow_heartbeats).await;
    let leader = leader_node.host.start_replica(7).await.unwrap();
    assert!(leader.initialize().await.unwrap());
    wait_until("node 1 leads group 7", Duration::from_secs(10), || {
        leader.is_leader()
    })
    .await;
    create_and_fill(&leader, "mail.out", 5).await;

    // Node 2 runs no replica of group 7: the leader's appends are refused as for a group
    // not served there, and it tries again after 200 ms, 400 ms, 800 ms, ... not in a loop
    // (six refusals, heartbeats included, take more than a second).
    let adding = {
        let leader = leader.clone();
        let address = address(&other);
        tokio::spawn(async move { leader.add_node(2, address, false, false).await })
    };
    let started = Instant::now();
    wait_until(
        "node 2 refused six messages",
        Duration::from_secs(20),
        || other.host.unknown_group_refusals() >= 6,
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_000),
        "six refusals within {elapsed:?}: no backoff"
    );

    // Once node 2 runs the replica, the leader's next attempt reaches it and it catches up.
    // (openraft counts a learner within `replication_lag_threshold` entries as caught
    // up, so adding it returns before it is reached.)
    adding.await.unwrap().unwrap();
    let replica = other.host.start_replica(7).await.unwrap();
    wait_until("node 2 applied group 7", Duration::from_secs(10), || {
        depth(&replica, "mail.out") == Some(5)
    })
    .await;
    assert!(
        replica.host().start_replica(7).await.is_err(),
        "started twice"
    );
}
