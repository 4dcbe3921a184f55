//! Nodes killed, paused and restarted under load: nothing acknowledged is lost or
//! delivered twice, and failed calls are answered as documented.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftq_client::{Client, Message, pb};
use raftq_tests::{Cluster, ClusterOptions, create_queue, wait_until, wait_until_or};

#[derive(Default)]
struct History {
    acked: HashSet<String>,
    unknown: HashSet<String>,
}

/// Sends `count` distinct bodies one by one (each with its own idempotency key, reused on
/// retries), recording which were acknowledged and which ended with an unknown outcome.
async fn produce(
    client: Client,
    queue: &'static str,
    prefix: &'static str,
    count: usize,
    history: Arc<Mutex<History>>,
) {
    for i in 0..count {
        let body = format!("{prefix}-{i:05}");
        let result = client.send(queue, Message::new(body.clone())).await;
        let mut history = history.lock().unwrap();
        match result {
            Ok(_) => history.acked.insert(body),
            Err(_) => history.unknown.insert(body),
        };
    }
}

/// Receives and acks until the queue stays empty; returns how often each body was acked.
async fn drain(client: &Client, queue: &str) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        let messages = client
            .receive(
                queue,
                500,
                Duration::from_millis(300),
                Some(Duration::from_secs(60)),
            )
            .await
            .expect("receive while draining");
        if messages.is_empty() {
            return seen;
        }
        for message in messages {
            client
                .ack(queue, &message.receipt)
                .await
                .expect("ack while draining");
            *seen
                .entry(String::from_utf8(message.body).expect("utf8"))
                .or_default() += 1;
        }
    }
}

fn check_exactly_once(history: &History, seen: &HashMap<String, usize>) {
    let lost: Vec<_> = history
        .acked
        .iter()
        .filter(|body| !seen.contains_key(*body))
        .collect();
    assert!(lost.is_empty(), "acknowledged sends lost: {lost:?}");
    let twice: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "delivered and acked more than once: {twice:?}"
    );
    let phantoms: Vec<_> = seen
        .keys()
        .filter(|body| !history.acked.contains(*body) && !history.unknown.contains(*body))
        .collect();
    assert!(phantoms.is_empty(), "messages nobody sent: {phantoms:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_sends_survive_leader_kill_exactly_once() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let history = Arc::new(Mutex::new(History::default()));
    let producers: Vec<_> = ["p1", "p2", "p3", "p4"]
        .into_iter()
        .map(|prefix| {
            tokio::spawn(produce(
                cluster.client(),
                "orders",
                prefix,
                400,
                history.clone(),
            ))
        })
        .collect();
    wait_until(
        "some sends are acknowledged",
        Duration::from_secs(30),
        || async { (history.lock().unwrap().acked.len() >= 200).then_some(()) },
    )
    .await;
    let old_leader = cluster.wait_for_leader().await;
    cluster.node(old_leader).kill();
    let new_leader = cluster.wait_for_leader().await;
    assert_ne!(new_leader, old_leader);
    for producer in producers {
        producer.await.expect("producer task");
    }
    cluster.node(old_leader).restart();
    let seen = drain(&cluster.client(), "orders").await;
    let history = history.lock().unwrap();
    assert!(
        history.acked.len() >= 1_000,
        "most sends succeed across the failover: {}",
        history.acked.len()
    );
    check_exactly_once(&history, &seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_killed_mid_batch_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "ledger", pb::QueueOptions::default()).await;
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let producer = {
        let client = client.clone();
        let acked = acked.clone();
        tokio::spawn(async move {
            for batch in 0.. {
                let bodies: Vec<String> = (0..50).map(|i| format!("b{batch:04}-{i:02}")).collect();
                let messages = bodies
                    .iter()
                    .map(|body| Message::new(body.clone()))
                    .collect();
                match client.send_batch("ledger", messages).await {
                    Ok(_) => acked.lock().unwrap().extend(bodies),
                    Err(_) => return,
                }
            }
        })
    };
    wait_until(
        "batches are being acknowledged",
        Duration::from_secs(30),
        || async { (acked.lock().unwrap().len() >= 2_000).then_some(()) },
    )
    .await;
    cluster.node(1).kill();
    producer.abort();
    let _ = producer.await;
    let acked_before_kill: HashSet<String> = acked.lock().unwrap().iter().cloned().collect();
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    let seen = drain(&cluster.client(), "ledger").await;
    let lost: Vec<_> = acked_before_kill
        .iter()
        .filter(|body| !seen.contains_key(*body))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    assert!(
        seen.values().all(|count| *count == 1),
        "a message was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_follower_catches_up_by_snapshot() {
    let options = ClusterOptions {
        env: vec![
            ("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES".into(), "500".into()),
            (
                "RAFTQ_RAFT__KEEP_ENTRIES_AFTER_SNAPSHOT".into(),
                "100".into(),
            ),
        ],
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start_with(3, options).await;
    let client = cluster.client();
    create_queue(&client, "backlog", pb::QueueOptions::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let stopped_at = cluster
        .node(follower)
        .client()
        .node_info()
        .await
        .expect("info")
        .last_log_index;
    cluster.node(follower).stop();

    let senders: Vec<_> = (0..8)
        .map(|worker| {
            let client = cluster.client();
            tokio::spawn(async move {
                for i in 0..625 {
                    client
                        .send("backlog", Message::new(format!("w{worker}-{i:04}")))
                        .await
                        .expect("send while a follower is down");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }
    let leader_client = cluster.node(leader).client();
    wait_until(
        "the leader purges its log behind a snapshot",
        Duration::from_secs(30),
        || async {
            let info = leader_client.node_info().await.ok()?;
            (info.purged_index > stopped_at + 1).then_some(())
        },
    )
    .await;

    cluster.node(follower).restart();
    let leader_committed = leader_client
        .node_info()
        .await
        .expect("leader info")
        .committed_index;
    let follower_client = cluster.node(follower).client();
    // A timeout shows the nodes' logs: this wait once timed out under load.
    let caught_up = wait_until_or(
        "the follower catches up",
        Duration::from_secs(60),
        || async {
            let info = follower_client.node_info().await.ok()?;
            (info.applied_index >= leader_committed).then_some(info)
        },
        || format!("leader committed {leader_committed}\n{}", cluster.logs()),
    )
    .await;
    assert!(
        caught_up.snapshot_index > stopped_at,
        "the follower installed a snapshot past where it stopped ({} <= {stopped_at})",
        caught_up.snapshot_index
    );
    let status = follower_client
        .cluster_status()
        .await
        .expect("status from the follower");
    assert_eq!(status.leader_id, leader);
    assert_eq!(status.nodes.len(), 3);
    assert!(
        status
            .nodes
            .iter()
            .all(|node| node.role == "leader" || node.role == "follower")
    );
    let depth = follower_client
        .get_queue("backlog")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 5_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_through_the_log_in_pieces() {
    // 160 entries of about 1 MiB each (batches of 1,000 messages), no snapshot: the
    // follower must receive about 160 MiB of log, far more than one append-entries call
    // may carry in its time limit.
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "far", pb::QueueOptions::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    cluster.node(follower).kill();
    let body = vec![b'x'; 1000];
    for batch in 0..160 {
        let messages = (0..1000)
            .map(|i| {
                let mut body = body.clone();
                body[..8].copy_from_slice(&(batch * 1000 + i as u64).to_le_bytes());
                Message::new(body)
            })
            .collect();
        client
            .send_batch("far", messages)
            .await
            .expect("send while a follower is down");
    }
    let leader_client = cluster.node(leader).client();
    let leader_info = leader_client.node_info().await.expect("leader info");
    assert_eq!(
        leader_info.snapshot_index, 0,
        "no snapshot: the log must carry it"
    );
    cluster.node(follower).restart();
    let follower_client = cluster.node(follower).client();
    wait_until_or(
        "the follower catches up",
        Duration::from_secs(90),
        || async {
            let info = follower_client.node_info().await.ok()?;
            (info.applied_index >= leader_info.committed_index).then_some(())
        },
        || {
            format!(
                "leader committed {}\n{}",
                leader_info.committed_index,
                cluster.logs()
            )
        },
    )
    .await;
    let depth = follower_client
        .get_queue("far")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 160_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_exits_on_sigterm_while_the_leader_streams_entries_to_it() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "busy", pb::QueueOptions::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    // A writer keeps the leader's replication stream to the follower busy.
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (client, running) = (cluster.client(), running.clone());
        tokio::spawn(async move {
            let (mut acked, mut attempted) = (0u64, 0u64);
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                attempted += 1;
                if client.send("busy", Message::new("x")).await.is_ok() {
                    acked += 1;
                }
            }
            (acked, attempted)
        })
    };
    wait_until("some sends acknowledged", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            let depth = client.get_queue("busy").await.ok()?.stats?.depth;
            (depth >= 20).then_some(())
        }
    })
    .await;
    // The harness fails the test if the node has not exited within its deadline: an open
    // replication stream must not keep a stopping server alive.
    cluster.node(follower).stop();
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let (acked, attempted) = writer.await.expect("writer");
    let depth = client
        .get_queue("busy")
        .await
        .expect("queue")
        .stats
        .unwrap_or_default()
        .depth;
    assert!(
        (acked..=attempted).contains(&depth),
        "{acked} acknowledged, {attempted} attempted, {depth} stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_exits_on_sigterm_while_a_client_holds_send_and_consume_streams_to_it() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "held", pb::QueueOptions::default()).await;
    create_queue(&client, "waiting", pb::QueueOptions::default()).await;
    // Routed to the leader, the next send opens a send stream there and leaves it open.
    client.get_queue("held").await.expect("get the queue");
    let leader = cluster.wait_for_leader().await;
    let (leader_grpc, leader_http) = {
        let node = cluster.node(leader);
        (node.grpc.clone(), node.http.clone())
    };
    assert_eq!(client.preferred_address(), leader_grpc);
    client
        .send("held", Message::new("before"))
        .await
        .expect("send");
    assert_eq!(
        raftq_tests::node_metric(&leader_http, "raftq_streamed_sends_total").await,
        1.0,
        "the send went on a stream"
    );
    // A consumer waiting on an empty queue holds a consume stream to the leader.
    let mut consumer = client
        .consume("waiting", raftq_client::ConsumeOptions::default())
        .await
        .expect("consume");
    wait_until(
        "the leader serves the consume stream",
        Duration::from_secs(10),
        || {
            let http = leader_http.clone();
            async move {
                (raftq_tests::node_metric(&http, "raftq_consume_streams").await == 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    // Fails the test if the node's graceful stop waits on an open stream.
    cluster.node(leader).stop();
    client
        .send("held", Message::new("after"))
        .await
        .expect("a send once the leader has stopped");
    let bodies: HashSet<Vec<u8>> = client
        .receive("held", 10, Duration::from_secs(2), None)
        .await
        .expect("receive")
        .into_iter()
        .map(|message| message.body)
        .collect();
    assert_eq!(
        bodies,
        HashSet::from([b"before".to_vec(), b"after".to_vec()])
    );
    // The consumer goes on at the new leader.
    client
        .send("waiting", Message::new("for the consumer"))
        .await
        .expect("send");
    let delivery = tokio::time::timeout(Duration::from_secs(20), consumer.next())
        .await
        .expect("a delivery within 20 s")
        .expect("the consumer follows the new leader");
    let bodies: Vec<Vec<u8>> = delivery.messages.into_iter().map(|m| m.body).collect();
    assert_eq!(bodies, [b"for the consumer".to_vec()]);
}

/// Records the result of acknowledging `receipt`: the body counts as acknowledged when
/// the ack succeeded, and once more each time it did so for the first time (an ack sent
/// again on a new stream answers `already_acked`). A delivery the old leader handed out may
/// have come to the consumer again since; its first receipt is then stale, and the later
/// one counts.
fn count_ack(
    acked: &mut HashMap<String, usize>,
    receipts_of: &mut HashMap<String, String>,
    receipt: String,
    result: &pb::AckResult,
) {
    let body = receipts_of.remove(&receipt).expect("an ack of a delivery");
    if result.code == 0 {
        *acked.entry(body).or_default() += usize::from(!result.already_acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_follows_a_new_leader_and_every_message_is_acknowledged() {
    use raftq_client::ConsumeOptions;

    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    // Short leases, so that deliveries the killed leader handed out and never answered
    // come back soon.
    let options = pb::QueueOptions {
        default_lease_ms: 2_000,
        ..pb::QueueOptions::default()
    };
    create_queue(&client, "failover", options).await;
    let bodies: Vec<String> = (0..2_000).map(|i| format!("f{i:05}")).collect();
    for chunk in bodies.chunks(200) {
        let messages = chunk
            .iter()
            .map(|body| Message::new(body.clone()))
            .collect();
        client.send_batch("failover", messages).await.expect("send");
    }
    let options = ConsumeOptions {
        prefetch: 100,
        max_messages: 50,
        lease: None,
    };
    let mut consumer = client.consume("failover", options).await.expect("consume");
    let mut acked: HashMap<String, usize> = HashMap::new();
    let mut receipts_of: HashMap<String, String> = HashMap::new();
    let mut killed = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while acked.len() < bodies.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} acknowledged\n{}",
            acked.len(),
            bodies.len(),
            cluster.logs()
        );
        if killed.is_none() && acked.len() >= 500 {
            let leader = cluster.wait_for_leader().await;
            cluster.node(leader).kill();
            killed = Some(leader);
        }
        let delivery = match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(delivery) => delivery.expect("the consumer follows the new leader"),
            Err(_) => continue,
        };
        for (receipt, result) in delivery.acks {
            count_ack(&mut acked, &mut receipts_of, receipt, &result);
        }
        let receipts: Vec<String> = delivery
            .messages
            .iter()
            .map(|m| m.receipt.clone())
            .collect();
        for message in delivery.messages {
            let body = String::from_utf8(message.body).expect("utf-8");
            receipts_of.insert(message.receipt, body);
        }
        consumer.ack(&receipts).await.expect("ack");
    }
    assert!(killed.is_some(), "the leader was killed mid-way");
    for (receipt, result) in consumer.close().await.expect("close").acks {
        count_ack(&mut acked, &mut receipts_of, receipt, &result);
    }
    assert!(
        receipts_of.is_empty(),
        "every ack was answered, across the new leader: {} were not",
        receipts_of.len()
    );
    let expected: HashSet<&String> = bodies.iter().collect();
    assert_eq!(acked.keys().collect::<HashSet<_>>(), expected);
    let twice: Vec<_> = acked.iter().filter(|(_, count)| **count > 1).collect();
    assert!(twice.is_empty(), "acknowledged twice: {twice:?}");
    let queue = client.get_queue("failover").await.expect("get queue");
    assert_eq!(queue.stats.expect("stats").depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_exits_on_sigterm_while_a_consumer_waits_on_it() {
    // With no other node to hand leadership to, only the node's own stop ends the stream.
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "waiting", pb::QueueOptions::default()).await;
    let consumer = client
        .consume("waiting", raftq_client::ConsumeOptions::default())
        .await
        .expect("consume");
    let http = cluster.node(1).http.clone();
    wait_until(
        "the node serves the consume stream",
        Duration::from_secs(10),
        || {
            let http = http.clone();
            async move {
                (raftq_tests::node_metric(&http, "raftq_consume_streams").await == 1.0)
                    .then_some(())
            }
        },
    )
    .await;
    // Fails the test if the node's graceful stop waits on the open stream.
    cluster.node(1).stop();
    drop(consumer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stops_promptly_under_a_consumer_that_reads_nothing_and_hands_its_messages_back() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    let options = pb::QueueOptions {
        default_lease_ms: 600_000,
        ..pb::QueueOptions::default()
    };
    create_queue(&client, "unread", options).await;
    // 64 KiB each, one per answer: far more than the node queues for a reader and the
    // connection's flow-control window together.
    for batch in 0..4 {
        let messages: Vec<Message> = (0..50)
            .map(|i| Message::new(format!("u{batch}-{i:02}-{}", "x".repeat(64 * 1024))))
            .collect();
        client.send_batch("unread", messages).await.expect("send");
    }
    let options = raftq_client::ConsumeOptions {
        prefetch: 200,
        max_messages: 1,
        lease: None,
    };
    let consumer = client.consume("unread", options).await.expect("consume");
    wait_until(
        "the stream holds every message",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                let stats = client.get_queue("unread").await.ok()?.stats?;
                (stats.in_flight == 200).then_some(())
            }
        },
    )
    .await;
    // Fails the test if the node's stop waits for a reader that never comes.
    cluster.node(1).stop();
    cluster.node(1).restart();
    // Handed back as the node stopped, not left to their ten-minute leases.
    let stats = wait_until(
        "the restarted node answers",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { client.get_queue("unread").await.ok()?.stats }
        },
    )
    .await;
    assert_eq!((stats.depth, stats.in_flight), (200, 0));
    drop(consumer);
}

/// While the leader dies, a send given to a follower that still forwards to it is
/// answered as documented: stored, or UNAVAILABLE with `raftq-retry-after-ms` (the
/// forward failed, or no leader is known yet), never UNKNOWN or a hint-less code, so a
/// client that retries UNAVAILABLE sends it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_forwarded_to_a_leader_that_died_is_unavailable_with_a_retry_hint() {
    use raftq_client::pb::message_service_client::MessageServiceClient;

    let mut cluster = Cluster::start(3).await;
    create_queue(&cluster.client(), "forwarded", pb::QueueOptions::default()).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let address = format!("http://{}", cluster.node(follower).grpc);
    let stub = MessageServiceClient::new(raftq_tests::connect(&address).await);
    cluster.node(leader).kill();
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stored = wait_until(
        "a send through the follower is stored by a new leader",
        Duration::from_secs(30),
        || {
            let mut stub = stub.clone();
            let refused = refused.clone();
            async move {
                let request = pb::SendRequest {
                    queue: "forwarded".into(),
                    message: Some(pb::OutgoingMessage {
                        body: b"after the leader died".to_vec(),
                        idempotency_key: "forwarded-1".into(),
                        ..pb::OutgoingMessage::default()
                    }),
                    producer: None,
                };
                match stub.send(request).await {
                    Ok(sent) => Some(sent.into_inner()),
                    Err(status) => {
                        let hint = status
                            .metadata()
                            .get("raftq-retry-after-ms")
                            .and_then(|value| value.to_str().ok())
                            .and_then(|value| value.parse::<u64>().ok());
                        let answer = (status.code(), hint, status.message().to_string());
                        refused.lock().unwrap().push(answer);
                        None
                    }
                }
            }
        },
    )
    .await;
    let refused = refused.lock().unwrap();
    assert!(
        !refused.is_empty(),
        "the first send after the kill went to the dead leader and must have failed"
    );
    for (code, hint, message) in refused.iter() {
        assert_eq!(*code, tonic::Code::Unavailable, "{message}");
        assert!(hint.is_some(), "no retry hint on {code:?} {message}");
    }
    assert!(stored.message_id > 0);
}
