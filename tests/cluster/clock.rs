//! Log time under a leader whose clock runs ahead: stamps stay within the skew bound, no
//! lease ends early, log time never goes back, and leases end at the real rate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue, wait_until};

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_an_hour_ahead_stamps_within_the_skew_and_ends_no_lease_early() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "clock", pb::QueueOptions::default()).await;
    client
        .send("clock", Message::new("leased"))
        .await
        .expect("send");
    let leased = client
        .receive("clock", 1, Duration::ZERO, Some(Duration::from_secs(30)))
        .await
        .expect("receive");
    assert_eq!(leased.len(), 1);

    // The only node (so the leader) comes back with its clock an hour ahead.
    cluster.node(1).stop();
    cluster.node(1).restart_with_clock(Some("+1h"));
    cluster.wait_for_leader().await;
    let stamped = client
        .send("clock", Message::new("stamped"))
        .await
        .expect("send");
    let stamped_at = client
        .peek("clock", stamped.sequence - 1, 1)
        .await
        .expect("peek")[0]
        .enqueued_at_ms;
    // The skew bound is 1 s; the margin is for the time between the stamp and this read.
    assert!(
        stamped_at <= wall_ms() + 10_000,
        "stamped {} ms ahead of the true time",
        stamped_at.saturating_sub(wall_ms())
    );
    // The lease taken before is not ended an hour early: only the new message comes.
    let handed = client
        .receive(
            "clock",
            2,
            Duration::from_millis(500),
            Some(Duration::from_secs(30)),
        )
        .await
        .expect("receive");
    assert_eq!(
        handed.iter().map(|m| m.body.clone()).collect::<Vec<_>>(),
        vec![b"stamped".to_vec()],
        "a lease ended early"
    );

    // Back to the true clock: log time does not go back.
    cluster.node(1).stop();
    cluster.node(1).restart_with_clock(None);
    cluster.wait_for_leader().await;
    let later = client
        .send("clock", Message::new("later"))
        .await
        .expect("send");
    let later_at = client
        .peek("clock", later.sequence - 1, 1)
        .await
        .expect("peek")[0]
        .enqueued_at_ms;
    assert!(
        later_at >= stamped_at,
        "log time went back: {later_at} < {stamped_at}"
    );
    // Leases end at the real rate.
    let short = client
        .receive("clock", 1, Duration::ZERO, Some(Duration::from_millis(300)))
        .await
        .expect("receive");
    assert_eq!(short.len(), 1);
    let again = wait_until(
        "the short lease ends and its message comes back",
        Duration::from_secs(10),
        || async {
            let messages = client
                .receive(
                    "clock",
                    1,
                    Duration::from_millis(200),
                    Some(Duration::from_secs(30)),
                )
                .await
                .ok()?;
            messages
                .into_iter()
                .find(|m| m.message_id == short[0].message_id)
        },
    )
    .await;
    assert_eq!(again.attempt, short[0].attempt + 1);
}
