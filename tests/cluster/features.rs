//! Message groups, dead-lettering, expiry, delayed delivery and priority against a real
//! three-node cluster.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_consumed_in_order_one_at_a_time_by_concurrent_consumers() {
    const GROUPS: usize = 6;
    const PER_GROUP: usize = 40;
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    // Interleave the groups in one stream of batches.
    let messages: Vec<Message> = (0..PER_GROUP)
        .flat_map(|i| {
            (0..GROUPS)
                .map(move |g| Message::new(format!("g{g}-{i:03}")).with_group(format!("g{g}")))
        })
        .collect();
    for batch in messages.chunks(120) {
        client
            .send_batch("orders", batch.to_vec())
            .await
            .expect("send batch");
    }
    // Per group: the order messages were handed out in, and how many are in flight now.
    let seen: Arc<Mutex<BTreeMap<String, Vec<String>>>> = Arc::default();
    let in_flight: Arc<Mutex<BTreeMap<String, u32>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..4 {
        let client = cluster.client();
        let (seen, in_flight) = (seen.clone(), in_flight.clone());
        consumers.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let done = seen.lock().unwrap().values().map(Vec::len).sum::<usize>()
                    == GROUPS * PER_GROUP;
                if done || Instant::now() > deadline {
                    break;
                }
                let got = client
                    .receive("orders", 10, Duration::from_millis(200), None)
                    .await
                    .expect("receive");
                for message in &got {
                    let mut flying = in_flight.lock().unwrap();
                    let count = flying.entry(message.group.clone()).or_default();
                    *count += 1;
                    assert_eq!(*count, 1, "two messages of {} in flight", message.group);
                    seen.lock()
                        .unwrap()
                        .entry(message.group.clone())
                        .or_default()
                        .push(String::from_utf8(message.body.clone()).unwrap());
                }
                for message in got {
                    // Decrement before the ack: once acked, the next one may be handed out.
                    *in_flight.lock().unwrap().get_mut(&message.group).unwrap() -= 1;
                    client.ack("orders", &message.receipt).await.expect("ack");
                }
            }
        }));
    }
    for consumer in consumers {
        consumer.await.expect("consumer");
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), GROUPS);
    for (group, bodies) in seen.iter() {
        let expected: Vec<String> = (0..PER_GROUP).map(|i| format!("{group}-{i:03}")).collect();
        assert_eq!(bodies, &expected, "group {group} in send order, each once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_nacked_max_delivery_count_times_is_dead_lettered_and_can_be_redriven() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(
        &client,
        "payments",
        pb::QueueOptions {
            max_delivery_count: 3,
            dead_letter_queue: "payments.dlq".into(),
            ..pb::QueueOptions::default()
        },
    )
    .await;
    let sent = client
        .send(
            "payments",
            Message::new("poison").with_properties(pb::MessageProperties {
                label: "refund 42".into(),
                ..pb::MessageProperties::default()
            }),
        )
        .await
        .expect("send");
    for attempt in 1..=3 {
        let got = client
            .receive("payments", 1, Duration::from_secs(2), None)
            .await
            .expect("receive");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].attempt, attempt);
        client
            .nack("payments", &got[0].receipt, Duration::ZERO)
            .await
            .expect("nack");
    }
    let dead = client
        .receive("payments.dlq", 1, Duration::from_secs(2), None)
        .await
        .expect("receive from the dead-letter queue");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id, sent.message_id);
    assert_eq!(
        dead[0].headers["raftq-dead-letter-reason"],
        "max-deliveries"
    );
    assert_eq!(dead[0].headers["raftq-delivery-count"], "3");
    assert_eq!(dead[0].properties.as_ref().unwrap().label, "refund 42");
    client
        .nack("payments.dlq", &dead[0].receipt, Duration::ZERO)
        .await
        .expect("release it in the dead-letter queue");
    let stats = client.get_queue("payments").await.unwrap().stats.unwrap();
    assert_eq!((stats.depth, stats.total_dead_lettered), (0, 1));

    let moved = client
        .redrive("payments.dlq", &[sent.message_id], 0, "")
        .await
        .expect("redrive");
    assert_eq!(moved, 1);
    let back = client
        .receive("payments", 1, Duration::from_secs(2), None)
        .await
        .expect("receive the redriven message");
    assert_eq!(back[0].message_id, sent.message_id);
    assert_eq!(back[0].attempt, 1);
    let dlq = client
        .get_queue("payments.dlq")
        .await
        .unwrap()
        .stats
        .unwrap();
    assert_eq!(dlq.depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_received_in_time_expires_into_the_dead_letter_queue() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(
        &client,
        "quotes",
        pb::QueueOptions {
            dead_letter_queue: "quotes.expired".into(),
            dead_letter_expired: true,
            ..pb::QueueOptions::default()
        },
    )
    .await;
    client
        .send(
            "quotes",
            Message::new("stale quote").with_ttl(Duration::from_millis(300)),
        )
        .await
        .expect("send");
    client
        .send("quotes", Message::new("fresh quote"))
        .await
        .expect("send");
    // Nobody touches "quotes": the leader's timer still expires the stale quote into the
    // dead-letter queue once the log's time has passed its deadline.
    let expired = wait_until("the quote expired", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let got = client
                .receive("quotes.expired", 1, Duration::from_millis(100), None)
                .await
                .ok()?;
            got.into_iter().next()
        }
    })
    .await;
    assert_eq!(expired.body, b"stale quote");
    assert_eq!(expired.headers["raftq-dead-letter-reason"], "expired");
    let got = client
        .receive("quotes", 10, Duration::from_millis(500), None)
        .await
        .expect("receive");
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
    assert_eq!(bodies, [b"fresh quote".as_slice()]);
    let stats = client.get_queue("quotes").await.unwrap().stats.unwrap();
    assert_eq!(stats.total_expired, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_is_delivered_only_after_its_delay() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "reminders", pb::QueueOptions::default()).await;
    let sent_at = Instant::now();
    client
        .send(
            "reminders",
            Message::new("later").with_delay(Duration::from_millis(1_500)),
        )
        .await
        .expect("send");
    let early = client
        .receive("reminders", 1, Duration::ZERO, None)
        .await
        .expect("receive");
    assert!(early.is_empty(), "delivered before its delay");
    let peeked = client.peek("reminders", 0, 10).await.expect("peek");
    assert_eq!(peeked[0].state, "delayed");
    // A long poll wakes when the delay ends.
    let got = client
        .receive("reminders", 1, Duration::from_secs(10), None)
        .await
        .expect("receive");
    assert_eq!(got.len(), 1);
    assert!(
        sent_at.elapsed() >= Duration::from_millis(1_500),
        "delivered after {:?}",
        sent_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_messages_are_received_first() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "jobs", pb::QueueOptions::default()).await;
    let messages = vec![
        Message::new("bulk-1"),
        Message::new("urgent").with_priority(7),
        Message::new("bulk-2"),
        Message::new("normal").with_priority(3),
    ];
    client.send_batch("jobs", messages).await.expect("send");
    let got = client
        .receive("jobs", 10, Duration::ZERO, None)
        .await
        .expect("receive");
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.body.clone()).unwrap())
        .collect();
    assert_eq!(bodies, ["urgent", "normal", "bulk-1", "bulk-2"]);
    assert_eq!(got[0].priority, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgement_messages_tell_the_sender_what_became_of_its_messages() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    create_queue(&client, "order-acks", pb::QueueOptions::default()).await;
    let consumed = client
        .send(
            "orders",
            Message::new("will be consumed").with_acknowledgements("order-acks", true, true),
        )
        .await
        .expect("send");
    let expiring = client
        .send(
            "orders",
            Message::new("nobody takes this")
                .with_ttl(Duration::from_millis(1_500))
                .with_delay(Duration::from_millis(100))
                .with_acknowledgements("order-acks", true, true),
        )
        .await
        .expect("send");
    let got = client
        .receive("orders", 1, Duration::from_secs(2), None)
        .await
        .expect("receive");
    assert_eq!(got[0].message_id, consumed.message_id);
    client.ack("orders", &got[0].receipt).await.expect("ack");

    // Both acknowledgements arrive: the positive one at once, the negative one when the
    // leader's timer expires the second message.
    let kinds: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    wait_until(
        "both acknowledgements arrived",
        Duration::from_secs(15),
        || {
            let client = client.clone();
            let kinds = kinds.clone();
            async move {
                let notices = client
                    .receive("order-acks", 10, Duration::from_millis(200), None)
                    .await
                    .ok()?;
                for notice in notices {
                    let properties = notice.properties.clone().unwrap_or_default();
                    kinds.lock().unwrap().insert(
                        properties.correlation_id,
                        notice.headers["raftq-ack-kind"].clone(),
                    );
                    client.ack("order-acks", &notice.receipt).await.ok()?;
                }
                (kinds.lock().unwrap().len() == 2).then_some(())
            }
        },
    )
    .await;
    let kinds = kinds.lock().unwrap().clone();
    assert_eq!(kinds[&consumed.message_id.to_string()], "consumed");
    assert_eq!(kinds[&expiring.message_id.to_string()], "expired");
}
