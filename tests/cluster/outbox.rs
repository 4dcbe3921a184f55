//! The client's durable outbox: sends taken while every node is down arrive once and in
//! order when the cluster returns (a transaction's sends together, an expired time to
//! reach as not-reached); what waits survives closing and reopening the outbox; a refusal
//! for good becomes a local dead letter, sent again on request; a full outbox says so.

use std::time::Duration;

use raftq_client::{Client, Message, Outbox, OutboxConfig, OutboxError, pb};
use raftq_tests::{Cluster, create_queue, drain_bodies, queue_stats, wait_until};

/// Opens the outbox at `config`, waiting until an earlier handle on the file is gone.
async fn reopen(client: &Client, config: &OutboxConfig) -> Outbox {
    wait_until("the outbox's file is free", Duration::from_secs(20), || {
        let (client, config) = (client.clone(), config.clone());
        async move { Outbox::open(client, config).ok() }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_taken_while_every_node_is_down_arrive_once_and_in_order_when_it_returns() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    create_queue(&client, "audit", pb::QueueOptions::default()).await;
    let timely = pb::QueueOptions {
        dead_letter_queue: "timely.dlq".into(),
        dead_letter_expired: true,
        ..Default::default()
    };
    create_queue(&client, "timely", timely).await;
    let dir = tempfile::tempdir().expect("dir");
    let outbox = Outbox::open(
        client.clone(),
        OutboxConfig::new(dir.path().join("outbox.redb"), "till-1"),
    )
    .expect("outbox");

    cluster.stop_all();
    let mut queued = Vec::new();
    for n in 0..600 {
        queued.push(
            outbox
                .send("orders", Message::new(format!("o{n}")))
                .await
                .expect("stored"),
        );
        if n % 100 == 99 {
            // A transaction of sends only, to two queues, between the plain sends.
            outbox
                .commit(vec![
                    ("orders".into(), Message::new(format!("t{n}"))),
                    ("audit".into(), Message::new(format!("a{n}"))),
                ])
                .await
                .expect("stored");
        }
    }
    // Its time to reach the queue passes while the cluster is down.
    outbox
        .send(
            "timely",
            Message::new("late").with_time_to_reach(Duration::from_millis(200)),
        )
        .await
        .expect("stored");
    assert!(
        queued.windows(2).all(|w| w[0].local_id < w[1].local_id),
        "local ids grow"
    );
    let status = outbox.status().await.expect("status");
    assert_eq!(status.pending, 600 + 12 + 1);
    assert!(status.oldest_age.is_some());

    cluster.restart_all().await;
    assert!(
        outbox.flush(Duration::from_secs(90)).await.expect("flush"),
        "not forwarded: {:?}",
        outbox.status().await
    );
    let status = outbox.status().await.expect("status");
    assert_eq!((status.pending, status.dead_letters), (0, 0));
    assert_eq!(status.forwarded, 613);

    let mut expected = Vec::new();
    for n in 0..600 {
        expected.push(format!("o{n}"));
        if n % 100 == 99 {
            expected.push(format!("t{n}"));
        }
    }
    assert_eq!(
        drain_bodies(&client, "orders").await,
        expected,
        "once, in order"
    );
    let audit: Vec<String> = (0..6).map(|k| format!("a{}", k * 100 + 99)).collect();
    assert_eq!(drain_bodies(&client, "audit").await, audit);
    assert_eq!(queue_stats(&client, "timely").await.depth, 0);
    assert_eq!(
        drain_bodies(&client, "timely.dlq").await,
        vec!["late".to_string()],
        "arrived past its time to reach: not-reached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_survives_closing_the_outbox_and_goes_once_after_reopening() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let config = OutboxConfig::new(dir.path().join("outbox.redb"), "till-2");
    let outbox = Outbox::open(client.clone(), config.clone()).expect("outbox");
    // Some go at once; then the node stops and the rest wait.
    for n in 0..100 {
        outbox
            .send("orders", Message::new(format!("m{n}")))
            .await
            .expect("stored");
    }
    assert!(outbox.flush(Duration::from_secs(30)).await.expect("flush"));
    cluster.node(1).stop();
    for n in 100..400 {
        outbox
            .send("orders", Message::new(format!("m{n}")))
            .await
            .expect("stored");
    }
    outbox.close();
    drop(outbox);

    let outbox = reopen(&client, &config).await;
    assert_eq!(outbox.status().await.expect("status").pending, 300);
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    assert!(outbox.flush(Duration::from_secs(60)).await.expect("flush"));
    let expected: Vec<String> = (0..400).map(|n| format!("m{n}")).collect();
    assert_eq!(drain_bodies(&client, "orders").await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_for_good_becomes_a_dead_letter_the_rest_go_on_and_it_can_go_again() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let outbox = Outbox::open(
        client.clone(),
        OutboxConfig::new(dir.path().join("outbox.redb"), "till-3"),
    )
    .expect("outbox");
    outbox
        .send("orders", Message::new("first"))
        .await
        .expect("stored");
    outbox
        .send("nowhere", Message::new("lost"))
        .await
        .expect("stored");
    outbox
        .send("orders", Message::new("second"))
        .await
        .expect("stored");
    assert!(outbox.flush(Duration::from_secs(30)).await.expect("flush"));
    assert_eq!(
        drain_bodies(&client, "orders").await,
        vec!["first", "second"]
    );
    let letters = outbox.dead_letters(10).await.expect("dead letters");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].queue, "nowhere");
    assert_eq!(letters[0].message.body, b"lost");
    assert!(
        letters[0].reason.contains("NotFound"),
        "{}",
        letters[0].reason
    );

    create_queue(&client, "nowhere", pb::QueueOptions::default()).await;
    assert_eq!(outbox.retry_dead_letters().await.expect("retry"), 1);
    assert!(outbox.flush(Duration::from_secs(30)).await.expect("flush"));
    assert_eq!(drain_bodies(&client, "nowhere").await, vec!["lost"]);
    assert_eq!(outbox.status().await.expect("status").dead_letters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_refuses_the_next_send_and_takes_sends_again_once_forwarded() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    cluster.node(1).stop();
    let dir = tempfile::tempdir().expect("dir");
    let config = OutboxConfig {
        max_messages: 10,
        ..OutboxConfig::new(dir.path().join("outbox.redb"), "till-4")
    };
    let outbox = Outbox::open(client.clone(), config).expect("outbox");
    for n in 0..10 {
        outbox
            .send("orders", Message::new(format!("m{n}")))
            .await
            .expect("stored");
    }
    let full = outbox
        .send("orders", Message::new("one too many"))
        .await
        .expect_err("full");
    assert!(
        matches!(
            full,
            OutboxError::Full {
                messages: 10,
                max_messages: 10,
                ..
            }
        ),
        "{full}"
    );
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    assert!(outbox.flush(Duration::from_secs(60)).await.expect("flush"));
    outbox
        .send("orders", Message::new("m10"))
        .await
        .expect("room again");
    assert!(outbox.flush(Duration::from_secs(30)).await.expect("flush"));
    let expected: Vec<String> = (0..11).map(|n| format!("m{n}")).collect();
    assert_eq!(drain_bodies(&client, "orders").await, expected);
}
