//! Transactions against a real cluster: consume-transform-produce exactly once across a
//! leader kill, and all-or-nothing commits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use raftq_client::{Code, Message, pb};
use raftq_tests::{Cluster, create_queue, wait_until};

const MESSAGES: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_move_10000_messages_exactly_once_while_the_leader_is_killed() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    let options = pb::QueueOptions {
        default_lease_ms: 10_000,
        ..pb::QueueOptions::default()
    };
    create_queue(&client, "incoming", options.clone()).await;
    create_queue(&client, "processed", options).await;
    let all: Vec<Message> = (0..MESSAGES)
        .map(|i| Message::new(format!("m{i:05}")))
        .collect();
    for batch in all.chunks(500) {
        client
            .send_batch("incoming", batch.to_vec())
            .await
            .expect("fill the source queue");
    }

    let committed = Arc::new(AtomicUsize::new(0));
    let mut movers = Vec::new();
    for _ in 0..2 {
        let client = cluster.client();
        let committed = committed.clone();
        movers.push(tokio::spawn(async move {
            loop {
                let mut tx = client.begin();
                let received = match tx
                    .receive("incoming", 100, Duration::from_millis(500), None)
                    .await
                {
                    Ok(received) => received,
                    Err(_) => continue, // the cluster is electing; try again
                };
                if received.is_empty() {
                    // Done once nothing is left, not even under a lease that may run out.
                    match client.get_queue("incoming").await {
                        Ok(queue) if queue.stats.is_some_and(|s| s.depth == 0) => break,
                        _ => continue,
                    }
                }
                for message in &received {
                    // The "transform": tag the body.
                    let mut body = b"moved:".to_vec();
                    body.extend_from_slice(&message.body);
                    tx.send("processed", Message::new(body));
                }
                match tx.commit().await {
                    Ok(_) => {
                        committed.fetch_add(received.len(), Ordering::Relaxed);
                    }
                    // A lease ran out: nothing was applied; the messages come back.
                    Err(error) if error.code() == Some(Code::FailedPrecondition) => {}
                    // Outcome unknown after the client's deadline: either it applied once
                    // or not at all; the leases settle it.
                    Err(_) => {}
                }
            }
        }));
    }

    // Kill the leader once the movers are well under way, then bring it back.
    wait_until("2,000 messages were moved", Duration::from_secs(60), || {
        let committed = committed.clone();
        async move { (committed.load(Ordering::Relaxed) >= 2_000).then_some(()) }
    })
    .await;
    let leader = cluster.wait_for_leader().await;
    cluster.node(leader).kill();
    let survivor_leader = cluster.wait_for_leader().await;
    assert_ne!(survivor_leader, leader);
    cluster.node(leader).restart();

    let client = cluster.client();
    wait_until(
        "every message is in the destination queue",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            async move {
                let source = client.get_queue("incoming").await.ok()?.stats?;
                let destination = client.get_queue("processed").await.ok()?.stats?;
                (source.depth == 0 && destination.depth as usize >= MESSAGES).then_some(())
            }
        },
    )
    .await;
    for mover in movers {
        mover.await.expect("mover");
    }

    let mut seen: HashMap<String, usize> = HashMap::new();
    loop {
        let got = client
            .receive("processed", 1_000, Duration::ZERO, None)
            .await
            .expect("receive from the destination");
        if got.is_empty() {
            break;
        }
        for message in got {
            *seen
                .entry(String::from_utf8(message.body).unwrap())
                .or_default() += 1;
            client
                .ack("processed", &message.receipt)
                .await
                .expect("ack");
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "moved more than once: {twice:?}");
    let missing: Vec<String> = (0..MESSAGES)
        .map(|i| format!("moved:m{i:05}"))
        .filter(|body| !seen.contains_key(body))
        .collect();
    assert!(missing.is_empty(), "never moved: {missing:?}");
    assert_eq!(seen.len(), MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_with_a_stale_receipt_applies_nothing_and_abort_releases() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "a", pb::QueueOptions::default()).await;
    create_queue(&client, "b", pb::QueueOptions::default()).await;
    client
        .send_batch("a", vec![Message::new("one"), Message::new("two")])
        .await
        .expect("send");

    // A receipt that is no longer current spoils the whole transaction.
    let mut tx = client.begin();
    let got = tx
        .receive("a", 2, Duration::from_secs(1), None)
        .await
        .expect("receive");
    assert_eq!(got.len(), 2);
    tx.ack("a", &format!("{}:9", got[0].message_id));
    tx.send("b", Message::new("derived"));
    let error = tx.commit().await.expect_err("stale receipt");
    assert_eq!(error.code(), Some(Code::FailedPrecondition));
    let b = client.get_queue("b").await.unwrap().stats.unwrap();
    assert_eq!(b.depth, 0, "nothing of a refused transaction is stored");
    let a = client.get_queue("a").await.unwrap().stats.unwrap();
    assert_eq!((a.depth, a.in_flight), (2, 2), "nothing was acked");

    // Abort (of a new transaction over the same deliveries) releases them at once.
    let mut tx = client.begin();
    for message in &got {
        tx.ack("a", &message.receipt);
    }
    tx.abort().await.expect("abort");
    let again = client
        .receive("a", 2, Duration::from_secs(1), None)
        .await
        .expect("receive again");
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|m| m.attempt == 2));
}
