//! Orders in, payments out, with crashes: an application writes orders, each with an
//! outbox message, while the relay (a real process) is killed with -9 between raftq's
//! answer and its row update, the payments consumer (a real process, an inbox handler that
//! writes a payment row and enqueues a `paid:` message in one transaction) is killed with
//! -9 between its commit and its acknowledgement, each at seeded points, and the raftq
//! leader is killed twice. Afterwards every order was paid once, every outbox row reached
//! its queue once, and each customer's messages arrived in commit order.
//!
//! The seed is `RAFTQ_PG_SEED` (1 unless set); a failure prints it.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftq_client::pb;
use raftq_pg::Schema;
use raftq_tests::{create_queue, drain_bodies, queue_stats, test_ca, wait_until};

use crate::common::{ORDERS_TABLE, Setup, place_order};

const ORDERS: u64 = 600;
const CUSTOMERS: u64 = 6;
/// Crashes of each worker, each after 1 to 3 of its steps.
const CRASHES: usize = 5;

/// splitmix64, so a seed always gives the same crash points.
fn crash_points(seed: u64) -> Vec<u64> {
    let mut state = seed;
    (0..CRASHES)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            1 + (z ^ (z >> 31)) % 3
        })
        .collect()
}

/// Where the workers find the database and the cluster.
#[derive(Clone)]
struct Endpoints {
    database_url: String,
    nodes: String,
}

fn spawn_worker(role: &str, endpoints: &Endpoints, crash_after: Option<u64>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_raftq-pg-worker"))
        .args([role, &endpoints.database_url, &endpoints.nodes])
        .args(crash_after.map(|n| n.to_string()))
        .env("RAFTQ_CA_CERT", test_ca().ca_path())
        .env("RAFTQ_TOKEN", test_ca().admin_token())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start raftq-pg-worker")
}

/// Runs `role` with each crash point in turn (each run must end killed by its own -9),
/// then once more without one until `done`; how many runs crashed.
async fn supervise(
    role: &'static str,
    endpoints: Endpoints,
    points: Vec<u64>,
    done: Arc<AtomicBool>,
) -> usize {
    let mut crashed = 0;
    for point in points {
        let mut child = spawn_worker(role, &endpoints, Some(point));
        let status = wait_until(
            &format!("{role} reaches its crash point {point}"),
            Duration::from_secs(120),
            || {
                let status = child.try_wait().expect("wait");
                async move { status }
            },
        )
        .await;
        assert_eq!(
            status.signal(),
            Some(9),
            "{role} ended otherwise than by its -9 at step {point}: {status:?}"
        );
        crashed += 1;
    }
    let mut last = spawn_worker(role, &endpoints, None);
    wait_until(
        &format!("{role}'s work is done"),
        Duration::from_secs(300),
        || {
            let finished = done.load(Ordering::SeqCst);
            let exited = last.try_wait().expect("wait");
            assert!(exited.is_none(), "{role} stopped by itself: {exited:?}");
            async move { finished.then_some(()) }
        },
    )
    .await;
    let _ = last.kill();
    let _ = last.wait();
    crashed
}

/// Writes the orders, one transaction each.
async fn write_orders(mut db: tokio_postgres::Client) {
    for n in 0..ORDERS {
        let token = format!("order-{n:04}");
        let customer = format!("customer-{}", n % CUSTOMERS);
        let transaction = db.transaction().await.expect("begin");
        place_order(&transaction, &token, &customer).await;
        transaction.commit().await.expect("commit");
    }
}

async fn payments(setup: &Setup) -> i64 {
    setup
        .db
        .query_one("SELECT count(*) FROM payments", &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_order_is_paid_once_and_in_order_though_relay_consumer_and_leader_are_killed() {
    let seed: u64 = std::env::var("RAFTQ_PG_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(1);
    println!("RAFTQ_PG_SEED={seed}");
    let mut setup = Setup::start().await;
    setup
        .db
        .batch_execute(
            &format!("{ORDERS_TABLE};
             CREATE TABLE payments (id bigserial PRIMARY KEY, token text NOT NULL, customer text NOT NULL);"),
        )
        .await
        .expect("business tables");
    let short_lease = pb::QueueOptions {
        default_lease_ms: 2_000,
        ..pb::QueueOptions::default()
    };
    create_queue(&setup.client, "orders", short_lease).await;
    create_queue(&setup.client, "payments", pb::QueueOptions::default()).await;
    let writer = tokio::spawn(write_orders(setup.pg.connect().await));

    // The workers run beside the test; the test keeps the cluster to kill its leader.
    let done = Arc::new(AtomicBool::new(false));
    let endpoints = Endpoints {
        database_url: setup.pg.url(),
        nodes: setup.nodes().join(","),
    };
    let relay = tokio::spawn(supervise(
        "relay",
        endpoints.clone(),
        crash_points(seed),
        done.clone(),
    ));
    let consumer = tokio::spawn(supervise(
        "payments",
        endpoints,
        crash_points(seed.wrapping_mul(31).wrapping_add(7)),
        done.clone(),
    ));

    for paid in [150, 350] {
        wait_until("payments are made", Duration::from_secs(180), || async {
            (payments(&setup).await >= paid).then_some(())
        })
        .await;
        let leader = setup.cluster.wait_for_leader().await;
        setup.cluster.node(leader).kill();
        // Down until the others have elected a leader of their own.
        setup.cluster.wait_for_leader().await;
        setup.cluster.node(leader).restart();
    }
    writer.await.expect("writer");
    wait_until(
        "every order is paid and forwarded",
        Duration::from_secs(300),
        || async {
            let status = raftq_pg::outbox_status(&setup.db, &Schema::default())
                .await
                .ok()?;
            let orders = queue_stats(&setup.client, "orders").await.depth;
            (payments(&setup).await >= ORDERS as i64 && status.waiting == 0 && orders == 0)
                .then_some(())
        },
    )
    .await;
    done.store(true, Ordering::SeqCst);
    assert_eq!(relay.await.expect("relay supervisor"), CRASHES);
    assert_eq!(consumer.await.expect("consumer supervisor"), CRASHES);

    // Every order paid once, in each customer's order.
    let order_ids: HashMap<String, i64> = setup
        .db
        .query("SELECT token, id FROM orders", &[])
        .await
        .expect("orders")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(order_ids.len(), ORDERS as usize);
    let paid = setup
        .db
        .query("SELECT token, customer FROM payments ORDER BY id", &[])
        .await
        .expect("payments");
    let paid: Vec<(String, String)> = paid.iter().map(|row| (row.get(0), row.get(1))).collect();
    assert_in_order("payments made", &paid, &order_ids, seed);

    // Every payment message sent once, in each customer's order.
    let sent: Vec<(String, String)> = drain_bodies(&setup.client, "payments")
        .await
        .into_iter()
        .map(|body| {
            let token = body
                .strip_prefix("paid:")
                .expect("a paid: message")
                .to_string();
            let customer = format!(
                "customer-{}",
                token[6..].parse::<u64>().expect("order number") % CUSTOMERS
            );
            (token, customer)
        })
        .collect();
    assert_in_order("payment messages", &sent, &order_ids, seed);
}

/// `items` (token, customer) hold every order once, each customer's in the order its
/// orders committed.
fn assert_in_order(
    what: &str,
    items: &[(String, String)],
    order_ids: &HashMap<String, i64>,
    seed: u64,
) {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    for (token, customer) in items {
        assert!(seen.insert(token), "{what}: {token} twice (seed {seed})");
        let id = order_ids[token];
        if let Some(before) = last.insert(customer, id) {
            assert!(
                before < id,
                "{what}: {customer}'s order {id} came after {before} (seed {seed})"
            );
        }
    }
    assert_eq!(
        seen.len(),
        ORDERS as usize,
        "{what}: every order (seed {seed})"
    );
}
