//! Consume streams: a consumer the leader keeps supplied, with acks on the same stream.

use std::collections::HashSet;
use std::time::Duration;

use raftq_client::{ConsumeOptions, Consumer, Delivery, Message, pb};
use raftq_tests::{Cluster, create_queue, queue_stats, wait_until};
use tonic::Code;

const NEXT_WITHIN: Duration = Duration::from_secs(10);

async fn next(consumer: &mut Consumer) -> Delivery {
    tokio::time::timeout(NEXT_WITHIN, consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("the stream delivers")
}

/// Opens a consume stream at `address` with `requests` and returns the status its answers
/// end with.
async fn refusal_of(address: String, requests: Vec<pb::ConsumeRequest>) -> tonic::Status {
    use pb::message_service_client::MessageServiceClient;
    use tokio_stream::wrappers::ReceiverStream;

    let (sender, outgoing) = tokio::sync::mpsc::channel(requests.len().max(1));
    for request in requests {
        sender.send(request).await.expect("queue a request");
    }
    let mut api = MessageServiceClient::new(raftq_tests::connect(&address).await);
    let mut answers = match api.consume(ReceiverStream::new(outgoing)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match tokio::time::timeout(NEXT_WITHIN, answers.message())
            .await
            .expect("an answer within 10 s")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without refusing"),
            Err(status) => return status,
        }
    }
}

/// A queue with leases of `lease_ms` holding messages `m0000` .. of `range`.
async fn leased_queue(
    client: &raftq_client::Client,
    queue: &str,
    lease_ms: u64,
    range: std::ops::Range<u32>,
) {
    let options = pb::QueueOptions {
        default_lease_ms: lease_ms,
        ..pb::QueueOptions::default()
    };
    create_queue(client, queue, options).await;
    send_numbered(client, queue, range).await;
}

async fn open_consumer(
    client: &raftq_client::Client,
    queue: &str,
    prefetch: u32,
    max_messages: u32,
) -> Consumer {
    let options = ConsumeOptions {
        prefetch,
        max_messages,
        lease: None,
    };
    client.consume(queue, options).await.expect("consume")
}

/// Takes deliveries until it holds `count` messages.
async fn take(consumer: &mut Consumer, count: usize) -> Vec<pb::ReceivedMessage> {
    let mut held = Vec::new();
    while held.len() < count {
        held.extend(next(consumer).await.messages);
    }
    held
}

fn receipts(messages: &[pb::ReceivedMessage]) -> Vec<String> {
    messages.iter().map(|m| m.receipt.clone()).collect()
}

async fn send_numbered(client: &raftq_client::Client, queue: &str, range: std::ops::Range<u32>) {
    let messages: Vec<Message> = range.map(|i| Message::new(format!("m{i:04}"))).collect();
    for chunk in messages.chunks(100) {
        client
            .send_batch(queue, chunk.to_vec())
            .await
            .expect("send batch");
    }
}

fn all_acknowledged(acks: &[(String, pb::AckResult)]) {
    for (receipt, result) in acks {
        assert_eq!(result.code, 0, "ack of {receipt}: {}", result.error);
        assert!(!result.already_acked, "{receipt} was acknowledged once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_gets_every_message_once_in_order_within_its_prefetch() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "stream", pb::QueueOptions::default()).await;
    send_numbered(&client, "stream", 0..500).await;

    let mut consumer = open_consumer(&client, "stream", 50, 20).await;
    let mut bodies = Vec::new();
    let mut acked = Vec::new();
    while bodies.len() < 500 {
        let delivery = next(&mut consumer).await;
        all_acknowledged(&delivery.acks);
        acked.extend(delivery.acks.into_iter().map(|(receipt, _)| receipt));
        assert!(
            delivery.messages.len() <= 20,
            "at most max_messages a delivery"
        );
        // Held: delivered and not acknowledged yet; the stream never exceeds prefetch.
        let delivered = bodies.len() + delivery.messages.len();
        assert!(
            delivered - acked.len() <= 50,
            "{} held unacknowledged with a prefetch of 50",
            delivered - acked.len()
        );
        let receipts = receipts(&delivery.messages);
        bodies.extend(
            delivery
                .messages
                .into_iter()
                .map(|m| String::from_utf8(m.body).expect("utf-8")),
        );
        consumer.ack(&receipts).await.expect("ack");
    }
    let expected: Vec<String> = (0..500).map(|i| format!("m{i:04}")).collect();
    assert_eq!(bodies, expected, "every message once, in send order");

    // Messages sent while the consumer waits come to it without another request.
    send_numbered(&client, "stream", 500..503).await;
    let mut late = Vec::new();
    while late.len() < 3 {
        let delivery = next(&mut consumer).await;
        all_acknowledged(&delivery.acks);
        acked.extend(delivery.acks.into_iter().map(|(receipt, _)| receipt));
        let receipts = receipts(&delivery.messages);
        late.extend(delivery.messages.into_iter().map(|m| m.body));
        consumer.ack(&receipts).await.expect("ack");
    }
    assert_eq!(
        late,
        [b"m0500".to_vec(), b"m0501".to_vec(), b"m0502".to_vec()]
    );

    let rest = consumer.close().await.expect("close").acks;
    all_acknowledged(&rest);
    acked.extend(rest.into_iter().map(|(receipt, _)| receipt));
    let distinct: HashSet<&String> = acked.iter().collect();
    assert_eq!(acked.len(), 503, "one result per receipt acknowledged");
    assert_eq!(distinct.len(), 503);
    let queue = client.get_queue("stream").await.expect("get queue");
    assert_eq!(
        queue.stats.expect("stats").depth,
        0,
        "everything acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_consumer_hands_back_what_it_did_not_acknowledge_at_once() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    leased_queue(&client, "held", 600_000, 0..10).await;
    let mut consumer = open_consumer(&client, "held", 10, 10).await;
    let held = take(&mut consumer, 10).await;
    let acked = receipts(&held[..3]);
    consumer.ack(&acked).await.expect("ack");
    let results = consumer.close().await.expect("close").acks;
    let answered: Vec<&String> = results.iter().map(|(receipt, _)| receipt).collect();
    assert_eq!(answered, acked.iter().collect::<Vec<_>>());
    all_acknowledged(&results);

    // The other seven are ready again long before their ten-minute leases would end.
    let again = client
        .receive("held", 100, Duration::from_secs(5), None)
        .await
        .expect("receive");
    let bodies: Vec<Vec<u8>> = again.iter().map(|m| m.body.clone()).collect();
    let expected: Vec<Vec<u8>> = (3..10).map(|i| format!("m{i:04}").into_bytes()).collect();
    assert_eq!(bodies, expected);
    assert!(
        again.iter().all(|m| m.attempt == 2),
        "a second delivery each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consume_stream_refuses_bad_requests_and_a_follower_names_the_leader() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.wait_for_leader().await;
    let follower = cluster.follower_of(leader);
    let grpc_of = |id: u64| {
        let node = cluster.nodes.iter().find(|n| n.id == id).expect("node");
        format!("http://{}", node.grpc)
    };
    let client = cluster.client();
    create_queue(&client, "checked", pb::QueueOptions::default()).await;
    send_numbered(&client, "checked", 0..5).await;

    let start = |queue: &str, prefetch: u32| pb::ConsumeRequest {
        request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
            queue: queue.to_string(),
            prefetch,
            ..pb::ConsumeStart::default()
        })),
    };
    let ack = |receipts: &[&str]| pb::ConsumeRequest {
        request: Some(pb::consume_request::Request::Ack(pb::ConsumeAck {
            receipts: receipts.iter().map(|r| r.to_string()).collect(),
        })),
    };
    let refusal =
        |node: u64, requests: Vec<pb::ConsumeRequest>| refusal_of(grpc_of(node), requests);

    let on_follower = refusal(follower, vec![start("checked", 0)]).await;
    assert_eq!(on_follower.code(), Code::Unavailable, "{on_follower:?}");
    let named = on_follower
        .metadata()
        .get("raftq-leader-address")
        .and_then(|value| value.to_str().ok())
        .map(|address| format!("http://{address}"));
    assert_eq!(named, Some(grpc_of(leader)));

    let cases = [
        (vec![ack(&["1:1"])], Code::InvalidArgument, "start"),
        (
            vec![start("checked", 5_000)],
            Code::InvalidArgument,
            "prefetch",
        ),
        (
            vec![start("no-such-queue", 0)],
            Code::NotFound,
            "no-such-queue",
        ),
        (
            vec![start("checked", 1), ack(&["not a receipt"])],
            Code::InvalidArgument,
            "receipt",
        ),
        (
            vec![start("checked", 1), start("checked", 1)],
            Code::InvalidArgument,
            "started",
        ),
    ];
    for (requests, code, mentioned) in cases {
        let status = refusal(leader, requests).await;
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status.message().contains(mentioned),
            "{:?} should mention {mentioned:?}",
            status.message()
        );
    }
    // Nothing was acknowledged: the five messages are all there, handed back by the
    // refused streams.
    let all = wait_until(
        "the refused streams' deliveries are back",
        NEXT_WITHIN,
        || async {
            let messages = client
                .receive("checked", 100, Duration::from_millis(500), None)
                .await
                .expect("receive");
            (messages.len() == 5).then_some(messages)
        },
    )
    .await;
    assert_eq!(all.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_consume_stream_still_applies_the_acks_it_read_before() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "flushed", pb::QueueOptions::default()).await;
    let sent = client
        .send_batch("flushed", vec![Message::new("a"), Message::new("b")])
        .await
        .expect("send");
    // First deliveries carry attempt 1, so their receipts are known before they come.
    let first_receipts: Vec<String> = sent.iter().map(|s| format!("{}:1", s.message_id)).collect();
    let requests = [
        pb::consume_request::Request::Start(pb::ConsumeStart {
            queue: "flushed".into(),
            ..pb::ConsumeStart::default()
        }),
        pb::consume_request::Request::Ack(pb::ConsumeAck {
            receipts: first_receipts,
        }),
        pb::consume_request::Request::Ack(pb::ConsumeAck {
            receipts: vec!["not a receipt".into()],
        }),
    ];
    let requests = requests
        .into_iter()
        .map(|request| pb::ConsumeRequest {
            request: Some(request),
        })
        .collect();
    let refusal = refusal_of(format!("http://{}", cluster.nodes[0].grpc), requests).await;
    assert_eq!(refusal.code(), Code::InvalidArgument, "{refusal:?}");
    let stats = queue_stats(&client, "flushed").await;
    assert_eq!(
        (stats.depth, stats.total_acked),
        (0, 2),
        "both acks were applied"
    );

    // The Rust client refuses a malformed receipt itself, and the stream goes on.
    send_numbered(&client, "flushed", 0..3).await;
    let mut consumer = client
        .consume("flushed", ConsumeOptions::default())
        .await
        .expect("consume");
    let held = take(&mut consumer, 3).await;
    let refused = consumer
        .ack(&["not a receipt".to_string()])
        .await
        .expect_err("a malformed receipt is refused");
    assert_eq!(refused.code(), Some(Code::InvalidArgument), "{refused}");
    consumer.ack(&receipts(&held)).await.expect("ack");
    let mut results = Vec::new();
    while results.len() < 3 {
        results.extend(next(&mut consumer).await.acks);
    }
    all_acknowledged(&results);
    assert!(consumer.close().await.expect("close").acks.is_empty());
    let stats = queue_stats(&client, "flushed").await;
    assert_eq!(stats.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_leases_end_gets_its_room_back() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    leased_queue(&client, "lapsed", 1_000, 0..4).await;
    let mut consumer = open_consumer(&client, "lapsed", 2, 2).await;
    // Take two and never acknowledge them: the prefetch is full until their leases end.
    take(&mut consumer, 2).await;
    // Then the stream has room again: every message comes (again) and is acknowledged.
    let mut acked = HashSet::new();
    while acked.len() < 4 {
        let delivery = next(&mut consumer).await;
        all_acknowledged(&delivery.acks);
        let receipts = receipts(&delivery.messages);
        acked.extend(delivery.messages.into_iter().map(|m| m.body));
        consumer.ack(&receipts).await.expect("ack");
    }
    all_acknowledged(&consumer.close().await.expect("close").acks);
    let stats = queue_stats(&client, "lapsed").await;
    assert_eq!(stats.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_on_the_stream_hands_the_message_back_and_frees_its_room_at_once() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    // Ten-minute leases: only the nacks can bring a message back within the test.
    leased_queue(&client, "rejected", 600_000, 0..2).await;
    let mut consumer = open_consumer(&client, "rejected", 1, 1).await;
    let first = take(&mut consumer, 1).await;
    assert_eq!(first[0].body, b"m0000");
    consumer
        .nack(&receipts(&first), Duration::ZERO)
        .await
        .expect("nack");
    // The stream had room for one: it comes again at once, second attempt.
    let again = next(&mut consumer).await;
    let answered: Vec<&str> = again.nacks.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(answered, [first[0].receipt.as_str()]);
    assert_eq!(again.nacks[0].1.code, 0, "{}", again.nacks[0].1.error);
    let again = if again.messages.is_empty() {
        take(&mut consumer, 1).await
    } else {
        again.messages
    };
    assert_eq!(
        (again[0].body.as_slice(), again[0].attempt),
        (&b"m0000"[..], 2)
    );
    // Nacked for a minute, it stays away; the next message comes instead.
    consumer
        .nack(&receipts(&again), Duration::from_secs(60))
        .await
        .expect("nack");
    let next_one = take(&mut consumer, 1).await;
    assert_eq!(next_one[0].body, b"m0001");
    consumer.ack(&receipts(&next_one)).await.expect("ack");
    let last = consumer.close().await.expect("close");
    all_acknowledged(&last.acks);
    let nacked: Vec<i32> = last.nacks.iter().map(|(_, result)| result.code).collect();
    assert!(nacked.iter().all(|code| *code == 0), "{:?}", last.nacks);
    let stats = queue_stats(&client, "rejected").await;
    assert_eq!((stats.depth, stats.delayed, stats.in_flight), (1, 1, 0));
    // A stale receipt's nack is answered on its own, and the stream goes on.
    let mut consumer = open_consumer(&client, "rejected", 1, 1).await;
    consumer
        .nack(&receipts(&first), Duration::ZERO)
        .await
        .expect("nack");
    let refused = next(&mut consumer).await.nacks;
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].1.code,
        Code::FailedPrecondition as i32,
        "{refused:?}"
    );
    consumer.close().await.expect("close");
}
