//! The inbox: a message whose work committed is only acknowledged when it is delivered
//! again; a failing handler rolls its message back and gets it again while the rest of the
//! batch commits; pruning removes only rows whose acknowledgement raftq confirmed.

use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_pg::tokio_postgres::Transaction;
use raftq_pg::{Handler, HandlerError, Inbox, InboxConfig};
use raftq_tests::{create_queue, queue_stats};

use crate::common::Setup;

/// Records each message's body in `seen`; fails the first delivery of a body `bad`.
struct Recorder;

impl Handler for Recorder {
    async fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> Result<(), HandlerError> {
        let body = String::from_utf8(message.body.clone())?;
        transaction
            .execute(
                "INSERT INTO seen (body, attempt) VALUES ($1, $2)",
                &[&body, &(message.attempt as i32)],
            )
            .await?;
        if body == "bad" && message.attempt == 1 {
            return Err("refused on its first delivery".into());
        }
        Ok(())
    }
}

async fn seen_table(setup: &Setup) {
    setup
        .db
        .batch_execute("CREATE TABLE seen (body text NOT NULL, attempt int NOT NULL)")
        .await
        .expect("seen table");
}

async fn send_all(setup: &Setup, bodies: &[String]) {
    let messages = bodies
        .iter()
        .map(|body| Message::new(body.clone()))
        .collect();
    setup
        .client
        .send_batch("orders", messages)
        .await
        .expect("send");
}

fn config(lease: Duration) -> InboxConfig {
    InboxConfig {
        batch_messages: 10,
        wait: Duration::from_millis(200),
        lease: Some(lease),
        ..InboxConfig::new("orders")
    }
}

/// Runs `inbox` until the queue is empty and everything handled is acknowledged.
async fn consume_all(setup: &Setup, inbox: &mut Inbox) {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        inbox.step(&mut Recorder).await.expect("step");
        inbox.flush().await.expect("flush");
        if queue_stats(&setup.client, "orders").await.depth == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the queue was not consumed within 60 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_work_committed_is_only_acknowledged_when_delivered_again() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    seen_table(&setup).await;
    let bodies: Vec<String> = (0..30).map(|n| format!("m{n}")).collect();
    send_all(&setup, &bodies).await;

    // A consumer handles and commits a batch, then dies before acknowledging it.
    let url = setup.pg.url();
    let mut first = Inbox::connect(&url, setup.client.clone(), config(Duration::from_secs(1)))
        .await
        .expect("inbox");
    let taken = first.step(&mut Recorder).await.expect("step");
    assert_eq!(taken, 10);
    drop(first);

    // Another takes over: the first ten come again once their lease runs out, and are only
    // acknowledged.
    let mut second = Inbox::connect(&url, setup.client.clone(), config(Duration::from_secs(1)))
        .await
        .expect("inbox");
    let status = second.status();
    consume_all(&setup, &mut second).await;
    let status = status.borrow().clone();
    assert_eq!(status.handled, 20, "{status:?}");
    assert_eq!(status.duplicates, 10, "{status:?}");
    let rows = setup
        .db
        .query("SELECT body, count(*) FROM seen GROUP BY body", &[])
        .await
        .expect("seen");
    assert_eq!(rows.len(), 30);
    assert!(rows.iter().all(|row| row.get::<_, i64>(1) == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_handler_rolls_its_message_back_and_gets_it_again_while_the_rest_commit() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    seen_table(&setup).await;
    let mut bodies: Vec<String> = (0..9).map(|n| format!("m{n}")).collect();
    bodies.insert(4, "bad".to_string());
    send_all(&setup, &bodies).await;
    let mut inbox = Inbox::connect(
        &setup.pg.url(),
        setup.client.clone(),
        InboxConfig {
            retry_delay: Duration::from_millis(200),
            ..config(Duration::from_secs(5))
        },
    )
    .await
    .expect("inbox");
    let status = inbox.status();
    consume_all(&setup, &mut inbox).await;
    let status = status.borrow().clone();
    assert_eq!((status.handled, status.failed), (10, 1), "{status:?}");
    let rows = setup
        .db
        .query("SELECT body, attempt FROM seen ORDER BY body", &[])
        .await
        .expect("seen");
    // The failed attempt left nothing; the second attempt of "bad" committed.
    assert_eq!(rows.len(), 10);
    let bad: Vec<i32> = rows
        .iter()
        .filter(|row| row.get::<_, &str>(0) == "bad")
        .map(|row| row.get(1))
        .collect();
    assert_eq!(bad, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruning_removes_only_rows_whose_acknowledgement_raftq_confirmed() {
    let setup = Setup::start().await;
    create_queue(&setup.client, "orders", pb::QueueOptions::default()).await;
    seen_table(&setup).await;
    let bodies: Vec<String> = (0..10).map(|n| format!("m{n}")).collect();
    send_all(&setup, &bodies).await;
    let mut inbox = Inbox::connect(
        &setup.pg.url(),
        setup.client.clone(),
        config(Duration::from_secs(5)),
    )
    .await
    .expect("inbox");
    consume_all(&setup, &mut inbox).await;
    // A row whose acknowledgement was never confirmed (its answer lost, say).
    setup
        .db
        .execute(
            "INSERT INTO raftq_inbox (queue, message_id) VALUES ('orders', 999999)",
            &[],
        )
        .await
        .expect("insert");
    let removed = inbox.prune(Duration::ZERO).await.expect("prune");
    assert_eq!(removed, 10);
    let left: Vec<i64> = setup
        .db
        .query("SELECT message_id FROM raftq_inbox", &[])
        .await
        .expect("inbox rows")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(left, [999999]);
}
