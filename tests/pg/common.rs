//! What the PostgreSQL tests share: a cluster, a database with raftq-pg's tables, and a
//! relay running in the test.

use std::time::Duration;

use raftq_client::{Client, Message};
use raftq_pg::{Relay, RelayConfig, Schema, enqueue};
use raftq_tests::postgres::Postgres;
use raftq_tests::{Cluster, wait_until};
use tokio::sync::watch;

/// A 3-node cluster and a PostgreSQL server with the tables migrated.
pub struct Setup {
    pub cluster: Cluster,
    pub pg: Postgres,
    pub db: tokio_postgres::Client,
    pub client: Client,
}

impl Setup {
    pub async fn start() -> Setup {
        let (cluster, pg) = tokio::join!(Cluster::start(3), Postgres::start());
        let mut db = pg.connect().await;
        let version = Schema::default().migrate(&mut db).await.expect("migrate");
        assert_eq!(version, raftq_pg::SCHEMA_VERSION);
        let client = cluster.client();
        Setup {
            cluster,
            pg,
            db,
            client,
        }
    }

    pub fn nodes(&self) -> Vec<String> {
        self.cluster
            .nodes
            .iter()
            .map(|node| node.grpc.clone())
            .collect()
    }

    /// A relay in this process, running until the returned sender is dropped or set.
    pub fn relay(&self, config: RelayConfig) -> (Relay, watch::Sender<bool>) {
        let relay = Relay::new(&self.pg.url(), self.client.clone(), config).expect("relay");
        (relay, watch::Sender::new(false))
    }

    /// Starts a relay task with `config`; stop it with the sender.
    pub fn spawn_relay(
        &self,
        config: RelayConfig,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(), raftq_pg::Error>>,
    ) {
        let (relay, stop) = self.relay(config);
        let stopped = stop.subscribe();
        (stop, tokio::spawn(async move { relay.run(stopped).await }))
    }

    /// Waits until the outbox holds no waiting row.
    pub async fn outbox_emptied(&self) {
        wait_until(
            "the outbox is forwarded",
            Duration::from_secs(120),
            || async {
                let status = raftq_pg::outbox_status(&self.db, &Schema::default())
                    .await
                    .expect("status");
                (status.waiting == 0).then_some(())
            },
        )
        .await;
    }
}

/// The table of orders the order tests write: an id taken in commit order per customer.
pub const ORDERS_TABLE: &str =
    "CREATE TABLE orders (id bigserial PRIMARY KEY, token text NOT NULL, customer text NOT NULL)";

/// In `transaction`: enqueues the order's message (`token`, in the customer's group) to
/// `orders`, then inserts the order. Its id is taken after the enqueue's lock on the
/// customer, so a customer's order ids follow the order their transactions commit in.
pub async fn place_order(
    transaction: &tokio_postgres::Transaction<'_>,
    token: &str,
    customer: &str,
) {
    enqueue(
        transaction,
        &Schema::default(),
        "orders",
        Message::new(token.to_string()).with_group(customer.to_string()),
    )
    .await
    .expect("enqueue");
    transaction
        .execute(
            "INSERT INTO orders (token, customer) VALUES ($1, $2)",
            &[&token, &customer],
        )
        .await
        .expect("order");
}
