//! Sending and receiving through any node: forwarding, leases, acks, long polls.

use std::collections::HashSet;
use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue, queue_stats, wait_until};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_delivers_1000_messages_exactly_once_in_order() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    for batch in 0..10 {
        let messages = (0..100)
            .map(|i| Message::new(format!("m{:04}", batch * 100 + i)))
            .collect();
        client
            .send_batch("orders", messages)
            .await
            .expect("send batch");
    }
    let mut received = Vec::new();
    while received.len() < 1000 {
        let messages = client
            .receive("orders", 100, Duration::from_millis(500), None)
            .await
            .expect("receive");
        assert!(
            !messages.is_empty(),
            "ran dry after {} messages",
            received.len()
        );
        for message in messages {
            client.ack("orders", &message.receipt).await.expect("ack");
            received.push(String::from_utf8(message.body).expect("utf8"));
        }
    }
    let expected: Vec<String> = (0..1000).map(|i| format!("m{i:04}")).collect();
    assert_eq!(received, expected, "every message once, in send order");
    let extra = client
        .receive("orders", 10, Duration::ZERO, None)
        .await
        .expect("receive");
    assert!(extra.is_empty(), "nothing is delivered twice");
    let stats = client
        .get_queue("orders")
        .await
        .expect("get")
        .stats
        .expect("stats");
    assert_eq!(
        (stats.depth, stats.total_sent, stats.total_acked),
        (0, 1000, 1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_accepts_writes_and_reads() {
    let cluster = Cluster::start(3).await;
    for node in &cluster.nodes {
        let client = node.client();
        let queue = format!("via-node-{}", node.id);
        create_queue(&client, &queue, pb::QueueOptions::default()).await;
        client
            .send(&queue, Message::new("hello"))
            .await
            .expect("send through any node");
        let got = node
            .client()
            .get_queue(&queue)
            .await
            .expect("get through any node");
        assert_eq!(got.stats.expect("stats").depth, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_returns_same_message_id_and_depth_grows_by_one() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "payments", pb::QueueOptions::default()).await;
    let first = client
        .send("payments", Message::new("charge 10").with_key("order-17"))
        .await
        .expect("first send");
    let second = client
        .send("payments", Message::new("charge 10").with_key("order-17"))
        .await
        .expect("second send");
    assert_eq!(first.message_id, second.message_id);
    assert!(!first.duplicate && second.duplicate);
    let stats = client
        .get_queue("payments")
        .await
        .expect("get")
        .stats
        .expect("stats");
    assert_eq!(stats.depth, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_redelivers_and_stale_receipt_is_failed_precondition() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "work", pb::QueueOptions::default()).await;
    client
        .send("work", Message::new("job"))
        .await
        .expect("send");
    let first = client
        .receive("work", 1, Duration::ZERO, Some(Duration::from_millis(300)))
        .await
        .expect("receive")
        .pop()
        .expect("a message");
    assert_eq!(first.attempt, 1);
    // The lease runs out; a long-polling receive gets the message again.
    let second = wait_until(
        "the message is redelivered",
        Duration::from_secs(10),
        || async {
            client
                .receive(
                    "work",
                    1,
                    Duration::from_millis(500),
                    Some(Duration::from_secs(30)),
                )
                .await
                .expect("receive")
                .pop()
        },
    )
    .await;
    assert_eq!(second.message_id, first.message_id);
    assert_eq!(second.attempt, 2);
    let stale = client
        .ack("work", &first.receipt)
        .await
        .expect_err("stale ack");
    assert_eq!(stale.code(), Some(Code::FailedPrecondition), "{stale}");
    let stale_extend = client
        .extend_lease("work", &first.receipt, Duration::from_secs(5))
        .await
        .expect_err("stale extend");
    assert_eq!(stale_extend.code(), Some(Code::FailedPrecondition));
    let depth = client
        .get_queue("work")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 1, "the stale ack changed nothing");
    client
        .ack("work", &second.receipt)
        .await
        .expect("current receipt acks");
    let depth = client
        .get_queue("work")
        .await
        .expect("get")
        .stats
        .expect("stats")
        .depth;
    assert_eq!(depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_releases_and_long_poll_receive_wakes_on_send() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "events", pb::QueueOptions::default()).await;
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .receive("events", 1, Duration::from_secs(10), None)
                .await
        })
    };
    client
        .send("events", Message::new("e1"))
        .await
        .expect("send");
    let got = waiter
        .await
        .expect("join")
        .expect("receive")
        .pop()
        .expect("woken by the send");
    assert_eq!(got.body, b"e1");
    client
        .nack("events", &got.receipt, Duration::ZERO)
        .await
        .expect("nack");
    let again = client
        .receive("events", 1, Duration::from_secs(5), None)
        .await
        .expect("receive")
        .pop()
        .expect("released message");
    assert_eq!((again.message_id, again.attempt), (got.message_id, 2));
    let ids: HashSet<u64> = [got.message_id, again.message_id].into_iter().collect();
    assert_eq!(ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_given_a_follower_learns_and_caches_the_leader() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster
        .nodes
        .iter()
        .find(|node| node.id != leader)
        .expect("a follower");
    let leader_address = cluster
        .nodes
        .iter()
        .find(|node| node.id == leader)
        .expect("leader")
        .grpc
        .clone();
    let client = follower.client();
    assert_eq!(client.preferred_address(), follower.grpc);
    create_queue(&client, "routed", pb::QueueOptions::default()).await;
    assert_eq!(
        client.preferred_address(),
        leader_address,
        "the forwarded answer named the leader"
    );
    client
        .send("routed", Message::new("direct"))
        .await
        .expect("send straight to the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_batch_acks_each_receipt_through_a_follower_and_refuses_bad_requests() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "batched", pb::QueueOptions::default()).await;
    let messages = (0..5).map(|i| Message::new(format!("m{i}"))).collect();
    client.send_batch("batched", messages).await.expect("send");
    let received = client
        .receive("batched", 5, Duration::from_millis(500), None)
        .await
        .expect("receive");
    assert_eq!(received.len(), 5);
    let mut receipts: Vec<String> = received.iter().map(|m| m.receipt.clone()).collect();
    // A receipt from a delivery that never happened (attempt 9) is refused on its own.
    let stale = format!("{}:9", received[4].message_id);
    receipts[4] = stale;
    // Through a follower: forwarded to the leader like every write.
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.node(cluster.follower_of(leader)).client();
    let results = follower
        .ack_batch("batched", &receipts)
        .await
        .expect("ack batch");
    let codes: Vec<i32> = results.iter().map(|r| r.code).collect();
    assert_eq!(codes[..4], [0, 0, 0, 0], "{results:?}");
    assert_eq!(codes[4], Code::FailedPrecondition as i32, "{results:?}");
    assert!(results.iter().all(|r| !r.already_acked));
    // Retried: already acked, nothing changes.
    let again = client
        .ack_batch("batched", &receipts[..4])
        .await
        .expect("retry");
    assert!(
        again.iter().all(|r| r.code == 0 && r.already_acked),
        "{again:?}"
    );
    let stats = client
        .get_queue("batched")
        .await
        .expect("get")
        .stats
        .expect("stats");
    assert_eq!((stats.depth, stats.total_acked), (1, 4));
    // Bad requests change nothing.
    let malformed = client
        .ack_batch("batched", &["not-a-receipt".to_string()])
        .await
        .expect_err("malformed");
    assert_eq!(malformed.code(), Some(Code::InvalidArgument));
    let empty = client.ack_batch("batched", &[]).await.expect_err("empty");
    assert_eq!(empty.code(), Some(Code::InvalidArgument));
    let unknown = client
        .ack_batch("missing", &[received[0].receipt.clone()])
        .await
        .expect_err("unknown queue");
    assert_eq!(unknown.code(), Some(Code::NotFound));
}

fn receipts_of(messages: &[pb::ReceivedMessage]) -> Vec<String> {
    messages.iter().map(|m| m.receipt.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_receive_acks_one_batch_and_takes_the_next_in_one_call() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "paired", pb::QueueOptions::default()).await;
    let messages = (0..6).map(|i| Message::new(format!("m{i}"))).collect();
    client.send_batch("paired", messages).await.expect("send");
    let wait = Duration::from_millis(500);
    let first = client
        .receive("paired", 3, wait, None)
        .await
        .expect("receive");
    let mut acks = receipts_of(&first);
    // A receipt of a delivery that never happened is refused on its own.
    acks.push(format!("{}:9", first[0].message_id));
    let second = client
        .ack_and_receive("paired", &acks, 3, wait, None)
        .await
        .expect("ack and receive");
    let codes: Vec<i32> = second.ack_results.iter().map(|r| r.code).collect();
    assert_eq!(
        codes,
        [0, 0, 0, Code::FailedPrecondition as i32],
        "{second:?}"
    );
    let bodies: Vec<&[u8]> = second.messages.iter().map(|m| &m.body[..]).collect();
    assert_eq!(
        bodies,
        [&b"m3"[..], b"m4", b"m5"],
        "the next batch, in order"
    );
    let stats = queue_stats(&client, "paired").await;
    assert_eq!((stats.depth, stats.in_flight, stats.total_acked), (3, 3, 3));

    // Nothing left to receive: the acks are applied at once, while the receive waits for
    // a message and then delivers it.
    let waiting = {
        let (client, acks) = (client.clone(), receipts_of(&second.messages));
        tokio::spawn(async move {
            client
                .ack_and_receive("paired", &acks, 3, Duration::from_secs(10), None)
                .await
        })
    };
    wait_until(
        "the acks applied before the receive returns",
        wait * 20,
        || {
            let client = client.clone();
            async move { (queue_stats(&client, "paired").await.total_acked == 6).then_some(()) }
        },
    )
    .await;
    assert!(!waiting.is_finished(), "the receive still waits");
    client
        .send("paired", Message::new("late"))
        .await
        .expect("send late");
    let third = waiting.await.expect("task").expect("long poll");
    assert_eq!(third.messages.len(), 1);
    assert_eq!(third.messages[0].body, b"late");
    assert_eq!(third.ack_results.len(), 3);
    assert!(
        third
            .ack_results
            .iter()
            .all(|r| r.code == 0 && !r.already_acked)
    );

    // Retried acks are already acknowledged; nothing else changes.
    let retried = client
        .ack_and_receive(
            "paired",
            &receipts_of(&second.messages),
            3,
            Duration::ZERO,
            None,
        )
        .await
        .expect("retry");
    assert!(retried.messages.is_empty());
    assert!(
        retried
            .ack_results
            .iter()
            .all(|r| r.code == 0 && r.already_acked)
    );

    // Bad requests fail whole and deliver nothing: "late" stays leased to `third` only.
    client
        .send("paired", Message::new("ready"))
        .await
        .expect("send");
    let before = queue_stats(&client, "paired").await;
    let late = third.messages[0].receipt.clone();
    let malformed = client
        .ack_and_receive(
            "paired",
            &[late.clone(), "junk".into()],
            3,
            Duration::ZERO,
            None,
        )
        .await
        .expect_err("malformed receipt");
    assert_eq!(malformed.code(), Some(Code::InvalidArgument));
    let too_many = vec![late.clone(); 1001];
    let refused = client
        .ack_and_receive("paired", &too_many, 3, Duration::ZERO, None)
        .await
        .expect_err("too many receipts");
    assert_eq!(refused.code(), Some(Code::InvalidArgument));
    let unknown = client
        .ack_and_receive(
            "missing",
            std::slice::from_ref(&late),
            3,
            Duration::ZERO,
            None,
        )
        .await
        .expect_err("unknown queue");
    assert_eq!(unknown.code(), Some(Code::NotFound));
    assert_eq!(
        queue_stats(&client, "paired").await,
        before,
        "nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_acking_with_their_receives_get_every_message_once() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "pairs", pb::QueueOptions::default()).await;
    const SENT: usize = 400;
    // Sends and paired acks and receives arrive together, so the leader puts them into
    // shared entries.
    let senders: Vec<_> = (0..8)
        .map(|s| {
            let client = client.clone();
            tokio::spawn(async move {
                for b in 0..5 {
                    let messages = (0..10)
                        .map(|i| Message::new(format!("s{s}-b{b}-{i}")))
                        .collect();
                    client.send_batch("pairs", messages).await.expect("send");
                }
            })
        })
        .collect();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let consumers: Vec<_> = (0..4)
        .map(|_| {
            let (client, received) = (client.clone(), received.clone());
            tokio::spawn(async move {
                let mut acks = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while received.lock().unwrap().len() < SENT {
                    assert!(tokio::time::Instant::now() < deadline, "consumers stalled");
                    let response = client
                        .ack_and_receive("pairs", &acks, 25, Duration::from_millis(100), None)
                        .await
                        .expect("ack and receive");
                    assert!(response.ack_results.iter().all(|r| r.code == 0));
                    acks = receipts_of(&response.messages);
                    received
                        .lock()
                        .unwrap()
                        .extend(response.messages.into_iter().map(|m| m.body));
                }
                if !acks.is_empty() {
                    client.ack_batch("pairs", &acks).await.expect("last acks");
                }
            })
        })
        .collect();
    for task in senders.into_iter().chain(consumers) {
        task.await.expect("task");
    }
    let received = received.lock().unwrap().clone();
    let unique: HashSet<_> = received.iter().collect();
    assert_eq!((received.len(), unique.len()), (SENT, SENT), "each once");
    let stats = queue_stats(&client, "pairs").await;
    assert_eq!((stats.depth, stats.total_acked), (0, SENT as u64));
}

/// The `raftq_streamed_sends_total` counter of the node whose HTTP address is `http`.
async fn streamed_sends(http: &str) -> u64 {
    raftq_tests::node_metric(http, "raftq_streamed_sends_total").await as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_stream_answers_each_send_by_id_and_a_follower_refuses_it() {
    use pb::message_service_client::MessageServiceClient;
    use tokio_stream::wrappers::ReceiverStream;

    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let grpc_of = |id: u64| {
        let node = cluster
            .nodes
            .iter()
            .find(|node| node.id == id)
            .expect("node");
        format!("http://{}", node.grpc)
    };
    let client = cluster.client();
    create_queue(&client, "streamed", pb::QueueOptions::default()).await;

    // A follower refuses the stream at once and names the leader.
    let mut on_follower = MessageServiceClient::new(raftq_tests::connect(&grpc_of(follower)).await);
    let (_open, nothing) = tokio::sync::mpsc::channel::<pb::StreamedSend>(1);
    let refusal = on_follower
        .send_stream(ReceiverStream::new(nothing))
        .await
        .expect_err("a follower refuses a send stream");
    assert_eq!(refusal.code(), Code::Unavailable, "{refusal:?}");
    let named = refusal
        .metadata()
        .get("raftq-leader-address")
        .and_then(|value| value.to_str().ok())
        .map(|address| format!("http://{address}"));
    assert_eq!(named, Some(grpc_of(leader)));

    let send = |id: u64, queue: &str, body: Option<&str>, key: &str| pb::StreamedSend {
        id,
        send: Some(pb::SendRequest {
            queue: queue.to_string(),
            message: body.map(|body| pb::OutgoingMessage {
                body: body.as_bytes().to_vec(),
                idempotency_key: key.to_string(),
                ..pb::OutgoingMessage::default()
            }),
            producer: None,
        }),
    };
    let sends = [
        send(7, "streamed", Some("a"), "key-a"),
        send(8, "streamed", Some("b"), "key-b"),
        send(9, "streamed", Some("a again"), "key-a"),
        send(10, "no-such-queue", Some("lost"), "key-lost"),
        send(11, "streamed", None, "key-none"),
        send(12, "streamed", Some("c"), "key-c"),
    ];
    let (requests, outgoing) = tokio::sync::mpsc::channel(sends.len());
    for item in sends {
        requests.send(item).await.expect("queue a send");
    }
    // The request side ends after the sends: the node answers them all, then ends too.
    drop(requests);
    let mut on_leader = MessageServiceClient::new(raftq_tests::connect(&grpc_of(leader)).await);
    let mut answers = on_leader
        .send_stream(ReceiverStream::new(outgoing))
        .await
        .expect("the leader serves the stream")
        .into_inner();
    let mut by_id = std::collections::HashMap::new();
    while let Some(answer) = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer within 10 s")
        .expect("the stream ends cleanly")
    {
        assert!(
            by_id.insert(answer.id, answer).is_none(),
            "one answer per id"
        );
    }
    let ids: HashSet<u64> = by_id.keys().copied().collect();
    assert_eq!(ids, HashSet::from([7, 8, 9, 10, 11, 12]));
    let stored = |id: u64| {
        let answer = &by_id[&id];
        assert_eq!(answer.code, 0, "send {id}: {}", answer.error);
        answer.sent.expect("a result")
    };
    let (a, b, a_again, c) = (stored(7), stored(8), stored(9), stored(12));
    assert!(!a.duplicate && !b.duplicate && !c.duplicate);
    assert!(a_again.duplicate, "the same key is a duplicate");
    assert_eq!(a_again.message_id, a.message_id);
    let distinct: HashSet<u64> = [a.message_id, b.message_id, c.message_id].into();
    assert_eq!(distinct.len(), 3);
    assert_eq!(
        by_id[&10].code,
        Code::NotFound as i32,
        "{}",
        by_id[&10].error
    );
    assert!(
        by_id[&10].error.contains("no-such-queue"),
        "{}",
        by_id[&10].error
    );
    assert_eq!(by_id[&11].code, Code::InvalidArgument as i32);
    assert!(by_id[&11].sent.is_none() && by_id[&10].sent.is_none());

    let stats = queue_stats(&client, "streamed").await;
    assert_eq!(stats.depth, 3, "a, b and c are stored once each");
    let received = client
        .receive("streamed", 10, Duration::from_secs(2), None)
        .await
        .expect("receive");
    let bodies: HashSet<Vec<u8>> = received.into_iter().map(|m| m.body).collect();
    assert_eq!(
        bodies,
        HashSet::from([b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_sends_share_a_send_stream_and_are_each_stored_once() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let leader_node = cluster
        .nodes
        .iter()
        .find(|node| node.id == leader)
        .expect("leader");
    let leader_http = leader_node.http.clone();
    let client = cluster.client();
    create_queue(&client, "shared", pb::QueueOptions::default()).await;
    // Route the client to the leader before counting.
    client.get_queue("shared").await.expect("get the queue");
    assert_eq!(client.preferred_address(), leader_node.grpc);
    let before = streamed_sends(&leader_http).await;

    const SENDS: usize = 400;
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..SENDS {
        let client = client.clone();
        sends.spawn(async move { client.send("shared", Message::new(format!("m{i}"))).await });
    }
    let ids: HashSet<u64> = sends
        .join_all()
        .await
        .into_iter()
        .map(|result| result.expect("send").message_id)
        .collect();
    assert_eq!(ids.len(), SENDS, "every send has its own message");
    let streamed = streamed_sends(&leader_http).await - before;
    assert_eq!(streamed, SENDS as u64, "every send went on the stream");
    assert_eq!(queue_stats(&client, "shared").await.depth, SENDS as u64);

    // With streams off, the same sends are calls of their own.
    let config = raftq_client::ClientConfig {
        stream_sends: false,
        ..raftq_tests::test_client_config()
    };
    let addresses: Vec<String> = cluster.nodes.iter().map(|node| node.grpc.clone()).collect();
    let unary = raftq_client::Client::new(&addresses, config).expect("client");
    for i in 0..10 {
        unary
            .send("shared", Message::new(format!("u{i}")))
            .await
            .expect("send");
    }
    assert_eq!(streamed_sends(&leader_http).await - before, SENDS as u64);
    assert_eq!(
        queue_stats(&client, "shared").await.depth,
        SENDS as u64 + 10
    );
}
