//! The outbox and its relay: a message is sent if and only if its transaction commits;
//! rows of one group arrive in commit order however transactions interleave; a row refused
//! for good is set aside with the reason while the rest go on; a standby `raftq pg-relay`
//! takes over from an active one killed with -9, and every row arrives once, in order.

use std::collections::HashMap;
use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_pg::{RelayConfig, Schema, enqueue};
use raftq_tests::postgres::RelayProcess;
use raftq_tests::{cli, create_queue, drain_bodies, http_get, queue_stats, wait_until};

use crate::common::{ORDERS_TABLE, Setup, place_order};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_sent_if_and_only_if_its_transaction_commits() {
    let mut setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    let schema = Schema::default();

    let committed = setup.db.transaction().await.expect("begin");
    enqueue(&committed, &schema, "orders", Message::new("kept"))
        .await
        .expect("enqueue");
    committed.commit().await.expect("commit");
    let rolled_back = setup.db.transaction().await.expect("begin");
    enqueue(&rolled_back, &schema, "orders", Message::new("dropped"))
        .await
        .expect("enqueue");
    rolled_back.rollback().await.expect("rollback");
    // Bad input is refused at once and writes nothing.
    let refused = enqueue(&setup.db, &schema, "", Message::new("x")).await;
    assert!(
        matches!(refused, Err(raftq_pg::Error::InvalidName(_))),
        "{refused:?}"
    );
    let huge = Message::new(vec![0u8; raftq_pg::MAX_BODY_BYTES + 1]);
    let refused = enqueue(&setup.db, &schema, "orders", huge).await;
    assert!(
        matches!(refused, Err(raftq_pg::Error::InvalidMessage(_))),
        "{refused:?}"
    );

    let (stop, relay) = setup.spawn_relay(RelayConfig::default());
    setup.outbox_emptied().await;
    assert_eq!(drain_bodies(&setup.client, "orders").await, ["kept"]);
    stop.send(true).expect("stop");
    relay.await.expect("joined").expect("relay ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_the_relay_without_waiting_for_its_poll() {
    let mut setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    // It looks for rows on its own only every ten minutes: only the notification that
    // the outbox's trigger sends on commit can wake it within the test.
    let (relay, stop) = setup.relay(RelayConfig {
        poll_interval: Duration::from_secs(600),
        ..RelayConfig::default()
    });
    let mut status = relay.status();
    let stopped = stop.subscribe();
    let running = tokio::spawn(async move { relay.run(stopped).await });
    tokio::time::timeout(Duration::from_secs(30), status.wait_for(|s| s.active))
        .await
        .expect("the relay becomes active within 30 s")
        .expect("status");
    for n in 0..3 {
        let transaction = setup.db.transaction().await.expect("begin");
        enqueue(
            &transaction,
            &Schema::default(),
            "orders",
            Message::new(format!("m{n}")),
        )
        .await
        .expect("enqueue");
        transaction.commit().await.expect("commit");
        wait_until("the row is forwarded", Duration::from_secs(20), || async {
            (queue_stats(&setup.client, "orders").await.depth == n + 1).then_some(())
        })
        .await;
    }
    stop.send(true).expect("stop");
    running.await.expect("joined").expect("relay ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_one_group_arrive_in_commit_order_however_transactions_interleave() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    setup
        .db
        .batch_execute(ORDERS_TABLE)
        .await
        .expect("orders table");
    let (stop, relay) = setup.spawn_relay(RelayConfig {
        batch_messages: 50,
        ..RelayConfig::default()
    });
    // Four writers, each with its own connection, write orders of the same three
    // customers at once. Each transaction enqueues first and takes the order's id after:
    // only if transactions of one customer take turns from the enqueue on do the ids of a
    // customer's orders follow their commit order.
    let mut writers = Vec::new();
    for writer in 0..4u64 {
        let mut db = setup.pg.connect().await;
        writers.push(tokio::spawn(async move {
            for n in 0..75u64 {
                let customer = format!("customer-{}", (writer + n) % 3);
                let token = format!("w{writer}-{n}");
                let transaction = db.transaction().await.expect("begin");
                place_order(&transaction, &token, &customer).await;
                // Let the other writers in before this one commits.
                tokio::time::sleep(Duration::from_millis(n % 3)).await;
                transaction.commit().await.expect("commit");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    setup.outbox_emptied().await;
    let received = drain_bodies(&setup.client, "orders").await;
    assert_eq!(received.len(), 300, "every order once");
    let ids: HashMap<String, (i64, String)> = setup
        .db
        .query("SELECT token, id, customer FROM orders", &[])
        .await
        .expect("orders")
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut distinct = std::collections::HashSet::new();
    for token in &received {
        assert!(distinct.insert(token), "{token} received twice");
        let (id, customer) = &ids[token];
        if let Some(before) = last.insert(customer, *id) {
            assert!(
                before < *id,
                "{customer}: order {id} arrived after order {before}, committed later"
            );
        }
    }
    stop.send(true).expect("stop");
    relay.await.expect("joined").expect("relay ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_refused_for_good_is_set_aside_with_the_reason_and_the_rest_go_on() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    let schema = Schema::default();
    for n in 0..20 {
        let queue = if n == 7 { "missing" } else { "orders" };
        enqueue(&setup.db, &schema, queue, Message::new(format!("m{n}")))
            .await
            .expect("enqueue");
    }
    let (stop, relay) = setup.spawn_relay(RelayConfig::default());
    let status = wait_until(
        "the rows are forwarded or set aside",
        Duration::from_secs(60),
        || async {
            let status = raftq_pg::outbox_status(&setup.db, &schema)
                .await
                .expect("status");
            (status.waiting == 0 && status.failed == 1).then_some(status)
        },
    )
    .await;
    assert_eq!(status.in_flight, None);
    let expected: Vec<String> = (0..20)
        .filter(|n| *n != 7)
        .map(|n| format!("m{n}"))
        .collect();
    assert_eq!(drain_bodies(&setup.client, "orders").await, expected);
    let failure: String = setup
        .db
        .query_one(
            "SELECT failure FROM raftq_outbox WHERE failed_at IS NOT NULL",
            &[],
        )
        .await
        .expect("the failed row")
        .get(0);
    assert!(failure.contains("missing"), "{failure}");

    // Once the cause is fixed, the row goes on its way.
    create_queue(&setup.client, "missing", pb::QueueOptions::default()).await;
    assert_eq!(
        raftq_pg::retry_failed(&setup.db, &schema)
            .await
            .expect("retry"),
        1
    );
    setup.outbox_emptied().await;
    assert_eq!(drain_bodies(&setup.client, "missing").await, ["m7"]);
    stop.send(true).expect("stop");
    relay.await.expect("joined").expect("relay ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_relay_takes_over_when_the_active_one_is_killed() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    let mut relays = [
        RelayProcess::start(&setup.pg.url(), &setup.nodes(), false),
        RelayProcess::start(&setup.pg.url(), &setup.nodes(), true),
    ];
    let active = wait_until("one relay is active", Duration::from_secs(30), || async {
        let states = [relays[0].active().await?, relays[1].active().await?];
        match states {
            [true, false] => Some(0),
            [false, true] => Some(1),
            _ => None,
        }
    })
    .await;
    let schema = Schema::default();
    let mut db = setup.pg.connect().await;
    for batch in 0..20 {
        let transaction = db.transaction().await.expect("begin");
        for n in 0..100 {
            let body = format!("m{:05}", batch * 100 + n);
            enqueue(&transaction, &schema, "orders", Message::new(body))
                .await
                .expect("enqueue");
        }
        transaction.commit().await.expect("commit");
    }
    // Killed with -9 in the middle of forwarding.
    wait_until(
        "forwarding is under way",
        Duration::from_secs(60),
        || async {
            let status = raftq_pg::outbox_status(&setup.db, &schema).await.ok()?;
            (status.waiting < 1_800).then_some(())
        },
    )
    .await;
    relays[active].kill();
    let standby = 1 - active;
    wait_until(
        "the standby takes over",
        Duration::from_secs(30),
        || async { relays[standby].active().await.filter(|active| *active) },
    )
    .await;
    setup.outbox_emptied().await;
    let expected: Vec<String> = (0..2_000).map(|n| format!("m{n:05}")).collect();
    assert_eq!(drain_bodies(&setup.client, "orders").await, expected);
    // The relay's metrics read the outbox when scraped (twice: one connection reused).
    for _ in 0..2 {
        let (status, metrics) = http_get(&relays[standby].http, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            metrics
                .lines()
                .any(|line| line == "raftq_pg_outbox_waiting 0"),
            "{metrics}"
        );
    }

    let status = cli()
        .args([
            "pg-relay",
            "status",
            "--database-url",
            &setup.pg.url(),
            "--output",
            "json",
        ])
        .output()
        .expect("raftq pg-relay status");
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status is JSON");
    assert_eq!(status["waiting"], 0, "{status}");
    assert_eq!(status["failed"], 0, "{status}");
}
