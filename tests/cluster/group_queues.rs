//! Queues in data groups: placed over the groups when created, served from any node (the
//! call goes to its group's leader), transactions within one group, and a transaction
//! across groups refused before anything changes.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use raftq_client::{Client, Code, Message, pb};
use raftq_tests::{Cluster, ClusterOptions, queue_stats, wait_until_or};

use crate::groups::{all_formed, leaders_without};

const GROUPS: usize = 16;
const QUEUES: usize = 1_000;

async fn cluster_with_groups() -> Cluster {
    let cluster = Cluster::start_with(
        5,
        ClusterOptions {
            env: vec![("RAFTQ_GROUPS__DATA_GROUPS".into(), GROUPS.to_string())],
            ..ClusterOptions::default()
        },
    )
    .await;
    cluster.wait_for_voters(5).await;
    wait_until_or(
        "16 data groups formed on 3 nodes each",
        Duration::from_secs(120),
        || all_formed(&cluster, GROUPS),
        || cluster.logs(),
    )
    .await;
    cluster
}

fn name(i: usize) -> String {
    format!("q{i:04}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_queues_spread_over_sixteen_groups_are_served_through_any_node() {
    let cluster = cluster_with_groups().await;
    let clients: Vec<Client> = cluster.nodes.iter().map(|node| node.client()).collect();
    // Leaders within one of even: 16 groups over 5 nodes, 3 or 4 each (each group's
    // preferred leader leads it once it can).
    let balanced = || async {
        let leaders = leaders_without(&cluster, 0).await?;
        let mut led: BTreeMap<u64, usize> = cluster.nodes.iter().map(|node| (node.id, 0)).collect();
        for leader in leaders.values() {
            *led.entry(*leader).or_default() += 1;
        }
        let fewest = led.values().min().copied()?;
        let most = led.values().max().copied()?;
        (most - fewest <= 1).then_some(led)
    };
    wait_until_or(
        "leaders within one of even over the nodes",
        Duration::from_secs(30),
        balanced,
        || cluster.logs(),
    )
    .await;

    // Created through every node in turn, 16 at a time.
    futures::stream::iter(0..QUEUES)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            async move {
                client
                    .create_queue(&name(i), pb::QueueOptions::default())
                    .await
                    .map(|queue| (i, queue.raft_group))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .expect("create 1000 queues");

    // Least-loaded placement: every group within one queue of the others, none in group 1.
    let listed = clients[3].list_queues().await.expect("list queues");
    assert_eq!(
        listed.len(),
        QUEUES,
        "every queue is listed, through any node"
    );
    let mut per_group: BTreeMap<u64, usize> = BTreeMap::new();
    for queue in &listed {
        *per_group.entry(queue.raft_group).or_default() += 1;
    }
    assert!(
        !per_group.contains_key(&1),
        "no queue left in group 1: {per_group:?}"
    );
    assert_eq!(
        per_group.len(),
        GROUPS,
        "queues in every group: {per_group:?}"
    );
    let (least, most) = (
        per_group.values().min().copied().unwrap_or(0),
        per_group.values().max().copied().unwrap_or(0),
    );
    assert!(
        most - least <= 1,
        "queues per group within one: {per_group:?}"
    );
    let group_of: BTreeMap<String, u64> = listed
        .iter()
        .map(|queue| (queue.name.clone(), queue.raft_group))
        .collect();
    for (i, client) in clients.iter().enumerate() {
        let queue = client.get_queue(&name(i * 7)).await.expect("get queue");
        assert_eq!(
            queue.raft_group,
            group_of[&name(i * 7)],
            "get names the group"
        );
    }

    // 40 queues (several per group): 20 messages each, sent through rotating nodes with
    // idempotency keys, every fifth sent twice; received through another node, in order,
    // once each.
    let sampled: Vec<usize> = (0..QUEUES).step_by(25).collect();
    for (turn, i) in sampled.iter().enumerate() {
        let queue = name(*i);
        for n in 0..20 {
            let client = &clients[(turn + n) % clients.len()];
            let message = || Message::new(format!("{n:02}")).with_key(format!("{queue}-{n}"));
            let sent = client.send(&queue, message()).await.expect("send");
            assert!(!sent.duplicate);
            if n % 5 == 0 {
                let again = client.send(&queue, message()).await.expect("send again");
                assert!(again.duplicate, "a resend with the same key is a duplicate");
                assert_eq!(again.message_id, sent.message_id);
            }
        }
    }
    for (turn, i) in sampled.iter().enumerate() {
        let queue = name(*i);
        let client = &clients[(turn + 2) % clients.len()];
        let received = client
            .receive(&queue, 100, Duration::ZERO, None)
            .await
            .expect("receive");
        let bodies: Vec<String> = received
            .iter()
            .map(|message| String::from_utf8_lossy(&message.body).into_owned())
            .collect();
        let expected: Vec<String> = (0..20).map(|n| format!("{n:02}")).collect();
        assert_eq!(bodies, expected, "{queue}: every message once, in order");
        let receipts: Vec<String> = received.iter().map(|m| m.receipt.clone()).collect();
        client.ack_batch(&queue, &receipts).await.expect("ack");
        let stats = queue_stats(&clients[0], &queue).await;
        assert_eq!(
            (stats.depth, stats.in_flight),
            (0, 0),
            "{queue} is empty once acked"
        );
    }

    // Deleting a queue removes it everywhere; its name then is unknown.
    clients[1].delete_queue(&name(0)).await.expect("delete");
    let error = clients[4].get_queue(&name(0)).await.expect_err("deleted");
    assert_eq!(error.code(), Some(Code::NotFound), "{error}");
    let error = clients[2]
        .send(&name(0), Message::new("late"))
        .await
        .expect_err("send to a deleted queue");
    assert_eq!(error.code(), Some(Code::NotFound), "{error}");
    assert_eq!(
        clients[0].list_queues().await.expect("list").len(),
        QUEUES - 1
    );
}

/// A transaction holding one message received from `queue`.
async fn take_one(
    client: &Client,
    queue: &str,
) -> (raftq_client::Transaction, pb::ReceivedMessage) {
    let mut tx = client.begin();
    let mut taken = tx
        .receive(queue, 1, Duration::ZERO, None)
        .await
        .expect("receive in a transaction");
    assert_eq!(taken.len(), 1);
    (tx, taken.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_hold_within_a_group_and_a_commit_across_groups_changes_nothing() {
    let cluster = cluster_with_groups().await;
    let client = cluster.nodes[4].client();
    let options = pb::QueueOptions {
        default_lease_ms: 30_000,
        ..pb::QueueOptions::default()
    };
    let source = client
        .create_queue("orders", options.clone())
        .await
        .expect("create orders");
    let beside = client
        .create_queue_beside("shipments", options.clone(), "orders")
        .await
        .expect("create shipments beside orders");
    assert_eq!(beside.raft_group, source.raft_group, "colocated");
    // A queue in another group: the next one placed goes to a group holding fewer queues.
    let elsewhere = client
        .create_queue("audit", options.clone())
        .await
        .expect("create audit");
    assert_ne!(
        elsewhere.raft_group, source.raft_group,
        "placed in another group"
    );

    let error = client
        .create_queue_beside("nowhere", options.clone(), "no-such-queue")
        .await
        .expect_err("beside an unknown queue");
    assert_eq!(error.code(), Some(Code::NotFound), "{error}");

    for n in 0..3 {
        client
            .send("orders", Message::new(format!("order {n}")))
            .await
            .expect("send order");
    }
    // Within one group: the order moves atomically.
    let (mut tx, _) = take_one(&client, "orders").await;
    tx.send("shipments", Message::new("ship order 0"));
    tx.commit().await.expect("commit within one group");
    let depth = |queue: &'static str| {
        let client = client.clone();
        async move {
            let stats = queue_stats(&client, queue).await;
            (stats.depth, stats.in_flight)
        }
    };
    assert_eq!(depth("orders").await, (2, 0));
    assert_eq!(depth("shipments").await, (1, 0));

    // Across groups: refused, naming both groups, and nothing changes.
    let (mut tx, taken) = take_one(&client, "orders").await;
    tx.send("audit", Message::new("audited"));
    let error = tx.commit().await.expect_err("a commit across groups");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    let text = error.to_string();
    for group in [source.raft_group, elsewhere.raft_group] {
        assert!(
            text.contains(&format!("(group {group})")),
            "names group {group}: {text}"
        );
    }
    assert_eq!(depth("audit").await, (0, 0), "nothing sent");
    // Depth counts the message in flight too.
    assert_eq!(
        depth("orders").await,
        (2, 1),
        "the taken message is not acknowledged"
    );
    // The delivery is still held by its lease and can be acknowledged normally.
    client
        .ack("orders", &taken.receipt)
        .await
        .expect("ack the delivery outside the transaction");
    assert_eq!(depth("orders").await, (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_each_queues_group_leader_and_a_leader_kill_loses_nothing() {
    let mut cluster = cluster_with_groups().await;
    let client = cluster.client();
    let queues: Vec<String> = (0..8).map(|i| format!("spread{i}")).collect();
    let mut group_of = BTreeMap::new();
    for queue in &queues {
        let created = client
            .create_queue(queue, pb::QueueOptions::default())
            .await
            .expect("create");
        group_of.insert(queue.clone(), created.raft_group);
    }
    let addresses: BTreeMap<u64, String> = cluster
        .nodes
        .iter()
        .map(|node| (node.id, node.grpc.clone()))
        .collect();
    let grpc_of = |id: u64| addresses.get(&id).cloned().unwrap_or_default();
    // One call per queue teaches the client where each queue's group leader is.
    for queue in &queues {
        client.peek(queue, 0, 1).await.expect("peek an empty queue");
    }
    let leaders = leaders_without(&cluster, 0).await.expect("group leaders");
    for queue in &queues {
        let leader = leaders[&group_of[queue]];
        assert_eq!(
            client.address_for(queue),
            grpc_of(leader),
            "{queue}: calls go to the leader of group {}",
            group_of[queue]
        );
    }

    // 300 messages per queue, each with its own key, while the leader of the first queue's
    // group is killed: every queue gets each message once, in order.
    let victim = leaders[&group_of[&queues[0]]];
    let sender = {
        let client = client.clone();
        let queues = queues.clone();
        tokio::spawn(async move {
            for n in 0..300 {
                for queue in &queues {
                    let message = Message::new(format!("{n:03}")).with_key(format!("{queue}/{n}"));
                    client
                        .send(queue, message)
                        .await
                        .expect("send through a leader kill");
                }
            }
        })
    };
    wait_until_or(
        "100 messages in the first queue before the kill",
        Duration::from_secs(60),
        || async {
            let stats = client.get_queue(&queues[0]).await.ok()?.stats?;
            (stats.total_sent >= 100).then_some(())
        },
        || cluster.logs(),
    )
    .await;
    cluster.node(victim).kill();
    sender.await.expect("sender");
    let expected: Vec<String> = (0..300).map(|n| format!("{n:03}")).collect();
    for queue in &queues {
        let bodies = consume_bodies(&client, queue, expected.len()).await;
        assert_eq!(bodies, expected, "{queue}: each message once, in order");
        let stats = queue_stats(&client, queue).await;
        assert_eq!(stats.total_sent, 300, "{queue}: stored once each");
    }
    // The client learned the new leader of the killed node's groups.
    let leaders = wait_until_or(
        "every group has a running leader",
        Duration::from_secs(30),
        || leaders_without(&cluster, victim),
        || cluster.logs(),
    )
    .await;
    let queue = &queues[0];
    client.peek(queue, 0, 1).await.expect("peek");
    assert_eq!(
        client.address_for(queue),
        grpc_of(leaders[&group_of[queue]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_a_queue_moves_messages_to_live_beside_it_and_other_writes_are_refused() {
    let cluster = cluster_with_groups().await;
    let client = cluster.nodes[2].client();
    let first = client
        .create_queue(
            "first",
            pb::QueueOptions {
                dead_letter_queue: "first.dlq".into(),
                max_delivery_count: 1,
                journal: true,
                ..pb::QueueOptions::default()
            },
        )
        .await
        .expect("create");
    let second = client
        .create_queue("second", pb::QueueOptions::default())
        .await
        .expect("create");
    assert_ne!(first.raft_group, second.raft_group);

    // The dead-letter queue, created later, joins its queue's group; the journal queue is
    // created in it on demand.
    let dlq = client
        .create_queue("first.dlq", pb::QueueOptions::default())
        .await
        .expect("create the dead-letter queue");
    assert_eq!(dlq.raft_group, first.raft_group, "beside its queue");
    client
        .send("first", Message::new("kept"))
        .await
        .expect("send");
    client
        .send("first", Message::new("dead"))
        .await
        .expect("send");
    let received = client
        .receive("first", 2, Duration::ZERO, None)
        .await
        .expect("receive");
    assert_eq!(received.len(), 2);
    client
        .ack("first", &received[0].receipt)
        .await
        .expect("ack");
    client
        .nack("first", &received[1].receipt, Duration::ZERO)
        .await
        .expect("nack past the delivery count");
    let journal = client.get_queue("first.journal").await.expect("journal");
    assert_eq!(journal.raft_group, first.raft_group);
    assert_eq!(
        journal.stats.unwrap_or_default().depth,
        1,
        "the consumed copy"
    );
    let dead = client.get_queue("first.dlq").await.expect("dead letters");
    assert_eq!(dead.stats.unwrap_or_default().depth, 1, "the dead letter");
    // Redriving within the group works.
    assert_eq!(
        client
            .redrive("first.dlq", &[], 10, "")
            .await
            .expect("redrive"),
        1
    );
    // Moving into another group does not, and changes nothing.
    let error = client
        .redrive("first", &[], 10, "second")
        .await
        .expect_err("a redrive across groups");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");

    let sent_before = queue_stats(&client, "first").await.total_sent;
    // Acknowledgement messages would be written in first's group, where second is not.
    let message = Message::new("with acks").with_acknowledgements("second", true, true);
    let error = client
        .send("first", message)
        .await
        .expect_err("acknowledgements into another group");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    assert!(error.to_string().contains("second"), "{error}");
    // A producer's numbered sends are kept in group 1, not in data groups.
    let producer = client
        .producer("spreader")
        .await
        .expect("register a producer");
    let error = producer
        .send("second", Message::new("numbered"))
        .await
        .expect_err("a numbered send into a data group");
    assert_eq!(error.code(), Some(Code::FailedPrecondition), "{error}");
    assert_eq!(
        queue_stats(&client, "second").await.total_sent,
        0,
        "nothing sent to second"
    );
    assert_eq!(
        queue_stats(&client, "first").await.total_sent,
        sent_before,
        "nothing more sent to first"
    );
}

/// Consumes `count` messages of `queue` on a consume stream, acking each delivery, and
/// returns their bodies in the order delivered.
async fn consume_bodies(client: &Client, queue: &str, count: usize) -> Vec<String> {
    let mut consumer = client
        .consume(queue, raftq_client::ConsumeOptions::default())
        .await
        .expect("consume");
    let mut bodies = Vec::new();
    while bodies.len() < count {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery within 30 s")
            .expect("next delivery");
        let receipts: Vec<String> = delivery
            .messages
            .iter()
            .map(|message| message.receipt.clone())
            .collect();
        bodies.extend(
            delivery
                .messages
                .iter()
                .map(|message| String::from_utf8_lossy(&message.body).into_owned()),
        );
        consumer.ack(&receipts).await.expect("ack");
    }
    consumer.close().await.expect("close");
    bodies
}
