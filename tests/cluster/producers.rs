//! Producer sessions: a repeat is recognised after the dedup window, a gap and an older
//! number are refused with their reasons and write nothing, an idle producer expires with
//! an explicit error, a producer's commit is applied once whatever its transaction id, and
//! a producer's sends survive a leader kill exactly once and in order.

use std::time::Duration;

use raftq_client::{Client, ClientError, Code, Message, pb};
use raftq_proto::wire::{REASON_PRODUCER_EXPIRED, REASON_SEQUENCE_APPLIED, REASON_SEQUENCE_GAP};
use raftq_tests::{Cluster, create_queue, queue_stats, wait_until};

fn numbered(queue: &str, producer: u64, first: u64, bodies: &[&str]) -> pb::SendBatchRequest {
    pb::SendBatchRequest {
        queue: queue.to_string(),
        messages: bodies
            .iter()
            .map(|body| pb::OutgoingMessage {
                body: body.as_bytes().to_vec(),
                // Keys the dedup window forgets: only the producer's numbers remain.
                idempotency_key: format!("{queue}-{body}"),
                ..Default::default()
            })
            .collect(),
        producer: Some(pb::ProducerSequence {
            producer_id: producer,
            sequence: first,
        }),
    }
}

fn refused(result: Result<Vec<pb::SendResponse>, ClientError>) -> ClientError {
    result.expect_err("the send should be refused")
}

async fn depth(client: &Client, queue: &str) -> u64 {
    queue_stats(client, queue).await.depth
}

/// The log's time, as the leader stamps a send to `queue`.
async fn log_time_ms(client: &Client, queue: &str) -> u64 {
    let sent = client
        .send(queue, Message::new("tick"))
        .await
        .expect("send");
    client
        .peek(queue, sent.sequence - 1, 1)
        .await
        .expect("peek")[0]
        .enqueued_at_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_after_the_dedup_window_is_answered_with_the_first_result_and_stored_once() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    let short_window = pb::QueueOptions {
        dedup_window_ms: 1_000,
        ..Default::default()
    };
    create_queue(&client, "orders", short_window.clone()).await;
    create_queue(&client, "probe", short_window).await;
    let producer = client
        .register_producer("till-7", None)
        .await
        .expect("register");
    assert!(producer.producer_id > 0);
    assert_eq!(producer.idle_expiry_ms, 7 * 24 * 60 * 60 * 1000);

    let first = client
        .send_batch_request(numbered(
            "orders",
            producer.producer_id,
            1,
            &["a", "b", "c"],
        ))
        .await
        .expect("send");
    assert!(first.iter().all(|result| !result.duplicate));
    // The window has passed once a key sent after these is forgotten on a queue with the
    // same window: a plain send with it is stored again.
    client
        .send("probe", Message::new("p").with_key("probe-key"))
        .await
        .expect("probe");
    wait_until(
        "the dedup window has passed",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let again = client
                    .send("probe", Message::new("p").with_key("probe-key"))
                    .await
                    .ok()?;
                (!again.duplicate).then_some(())
            }
        },
    )
    .await;

    let repeat = client
        .send_batch_request(numbered(
            "orders",
            producer.producer_id,
            1,
            &["a", "b", "c"],
        ))
        .await
        .expect("repeat");
    assert!(repeat.iter().all(|result| result.duplicate), "{repeat:?}");
    let ids = |results: &[pb::SendResponse]| -> Vec<u64> {
        results.iter().map(|result| result.message_id).collect()
    };
    assert_eq!(ids(&repeat), ids(&first));
    assert_eq!(depth(&client, "orders").await, 3);

    // The next numbers go on; a plain send of the same keys would have been stored twice.
    let next = client
        .send_batch_request(numbered("orders", producer.producer_id, 4, &["d"]))
        .await
        .expect("next");
    assert!(!next[0].duplicate);
    assert_eq!(depth(&client, "orders").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_an_older_number_and_an_unknown_producer_are_refused_and_write_nothing() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let id = client
        .register_producer("till-8", None)
        .await
        .expect("register")
        .producer_id;
    client
        .send_batch_request(numbered("orders", id, 1, &["a", "b"]))
        .await
        .expect("send");
    client
        .send_batch_request(numbered("orders", id, 3, &["c"]))
        .await
        .expect("send");
    let index = cluster.last_log_index().await;

    let gap = refused(
        client
            .send_batch_request(numbered("orders", id, 5, &["e"]))
            .await,
    );
    assert_eq!(gap.code(), Some(Code::FailedPrecondition), "{gap}");
    assert_eq!(gap.reason(), Some(REASON_SEQUENCE_GAP));
    assert!(
        gap.to_string()
            .contains("expected sequence number 4, got 5"),
        "{gap}"
    );

    let older = refused(
        client
            .send_batch_request(numbered("orders", id, 1, &["a"]))
            .await,
    );
    assert_eq!(older.code(), Some(Code::AlreadyExists), "{older}");
    assert_eq!(older.reason(), Some(REASON_SEQUENCE_APPLIED));

    let overlapping = refused(
        client
            .send_batch_request(numbered("orders", id, 2, &["b", "c", "d"]))
            .await,
    );
    assert_eq!(
        overlapping.code(),
        Some(Code::InvalidArgument),
        "{overlapping}"
    );

    let unknown = refused(
        client
            .send_batch_request(numbered("orders", id + 1000, 1, &["x"]))
            .await,
    );
    assert_eq!(unknown.code(), Some(Code::InvalidArgument), "{unknown}");
    assert!(
        unknown.to_string().contains("never registered"),
        "{unknown}"
    );

    assert_eq!(
        cluster.last_log_index().await,
        index,
        "a refused numbered send wrote to the log"
    );
    assert_eq!(depth(&client, "orders").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_producer_expires_and_its_next_send_is_refused_as_expired() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    create_queue(&client, "clock", pb::QueueOptions::default()).await;
    let registered_at = log_time_ms(&client, "clock").await;
    let id = client
        .register_producer("ship", Some(Duration::from_secs(1)))
        .await
        .expect("register")
        .producer_id;
    client
        .send_batch_request(numbered("orders", id, 1, &["a"]))
        .await
        .expect("send");
    // Idle for its expiry, as the log's time tells.
    wait_until("a second of log time passes", Duration::from_secs(20), || {
        let client = client.clone();
        async move { (log_time_ms(&client, "clock").await > registered_at + 3_000).then_some(()) }
    })
    .await;
    for first in [2, 1] {
        let expired = refused(
            client
                .send_batch_request(numbered("orders", id, first, &["a"]))
                .await,
        );
        assert_eq!(expired.code(), Some(Code::FailedPrecondition), "{expired}");
        assert_eq!(expired.reason(), Some(REASON_PRODUCER_EXPIRED));
    }
    assert_eq!(depth(&client, "orders").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_commit_is_applied_once_whatever_its_transaction_id() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "in", pb::QueueOptions::default()).await;
    create_queue(&client, "out", pb::QueueOptions::default()).await;
    client
        .send("in", Message::new("order"))
        .await
        .expect("send");
    let producer = client.producer("worker").await.expect("producer");

    let mut transaction = client.begin();
    let received = transaction
        .receive("in", 1, Duration::ZERO, Some(Duration::from_secs(60)))
        .await
        .expect("receive");
    assert_eq!(received.len(), 1);
    transaction.send("out", Message::new("payment"));
    let committed = producer.commit(transaction).await.expect("commit");
    assert!(!committed.already_committed);

    // The same commit number under another transaction id (as after the id was lost):
    // answered with the first outcome, nothing applied again.
    let repeat = pb::CommitRequest {
        transaction_id: "another-id".into(),
        acks: vec![],
        sends: vec![pb::TransactionSend {
            queue: "out".into(),
            message: Some(pb::OutgoingMessage {
                body: b"payment".to_vec(),
                ..Default::default()
            }),
        }],
        producer: Some(pb::ProducerSequence {
            producer_id: producer.id(),
            sequence: 1,
        }),
    };
    let answer = client.commit(repeat).await.expect("repeat");
    assert!(answer.already_committed);
    assert_eq!(answer.sent[0].message_id, committed.sent[0].message_id);
    assert_eq!(depth(&client, "out").await, 1);
    assert_eq!(depth(&client, "in").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producers_sends_through_a_leader_kill_arrive_once_and_in_order() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let producer = client.producer("till-9").await.expect("producer");
    const COUNT: usize = 300;
    let sending = {
        let producer = std::sync::Arc::new(producer);
        let sender = producer.clone();
        let task = tokio::spawn(async move {
            for n in 0..COUNT {
                match sender.send("orders", Message::new(n.to_string())).await {
                    Ok(_) => {}
                    // In doubt: the next send settles it first, with the same numbers;
                    // it is not sent again by hand.
                    Err(error) if error.is_outcome_unknown() => {}
                    Err(error) => panic!("send {n}: {error}"),
                }
            }
            sender.settle("orders").await.expect("settle");
        });
        (task, producer)
    };
    wait_until("a third is sent", Duration::from_secs(60), || {
        let client = client.clone();
        async move { (depth(&client, "orders").await as usize >= COUNT / 3).then_some(()) }
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).kill();
    sending.0.await.expect("sender");
    cluster.node(leader).restart();

    let mut bodies = Vec::new();
    loop {
        let delivered = client
            .receive("orders", 1_000, Duration::ZERO, None)
            .await
            .expect("receive");
        if delivered.is_empty() {
            break;
        }
        for message in &delivered {
            bodies.push(String::from_utf8(message.body.clone()).expect("utf-8"));
        }
        let receipts: Vec<String> = delivered.into_iter().map(|d| d.receipt).collect();
        client.ack_batch("orders", &receipts).await.expect("ack");
    }
    let expected: Vec<String> = (0..COUNT).map(|n| n.to_string()).collect();
    assert_eq!(bodies, expected, "each send once, in order");
}
