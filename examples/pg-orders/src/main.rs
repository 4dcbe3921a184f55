//! pg-orders: orders in, payments out, exactly once with PostgreSQL.
//!
//! ```text
//! pg-orders setup          create the shop's tables, raftq-pg's tables and the queues
//! pg-orders place N        place N orders: each an `orders` row and a message, one transaction
//! pg-orders payments       consume `orders`: a `payments` row and a `payment-done` message per
//!                          order, in one transaction with the inbox row (Ctrl-C stops it)
//! pg-orders report         orders, payments, and orders paid more than once (always 0)
//! ```
//!
//! The database is `RAFTQ_DATABASE_URL`; the cluster `RAFTQ_ADDR` with `RAFTQ_CA_CERT` and
//! `RAFTQ_TOKEN` (what `source .raftq-dev/client.env` sets). `raftq pg-relay` forwards the
//! outbox to the cluster.

use std::time::Duration;

use anyhow::Context as _;
use raftq_client::{Client, ClientConfig, ClientTls, Code, Message, Transport, pb};
use raftq_pg::tokio_postgres::{self, NoTls, Transaction};
use raftq_pg::{Handler, HandlerError, Inbox, InboxConfig, Schema, enqueue};

const SHOP_TABLES: &str = "
    CREATE TABLE IF NOT EXISTS orders (
        id       bigserial PRIMARY KEY,
        customer text      NOT NULL,
        amount   integer   NOT NULL,
        placed   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS payments (
        id       bigserial PRIMARY KEY,
        order_id bigint    NOT NULL,
        amount   integer   NOT NULL,
        paid     timestamptz NOT NULL DEFAULT now()
    );";

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("set {name} (see the README's example section)"))
}

async fn database() -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&env("RAFTQ_DATABASE_URL")?, NoTls)
        .await
        .context("connecting to the database")?;
    tokio::spawn(connection);
    Ok(client)
}

fn cluster() -> anyhow::Result<Client> {
    let ca = env("RAFTQ_CA_CERT")?;
    Ok(Client::new(
        &[env("RAFTQ_ADDR")?],
        ClientConfig {
            transport: Transport::Tls(ClientTls::from_files(ca.as_ref(), None)?.connector()),
            token: std::env::var("RAFTQ_TOKEN").ok(),
            ..ClientConfig::default()
        },
    )?)
}

/// Pays an order: a payments row and a `payment-done` message, in the inbox's transaction.
struct Payments;

impl Handler for Payments {
    async fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> Result<(), HandlerError> {
        let order_id: i64 = std::str::from_utf8(&message.body)?.parse()?;
        let amount: i32 = transaction
            .query_one("SELECT amount FROM orders WHERE id = $1", &[&order_id])
            .await?
            .get(0);
        transaction
            .execute(
                "INSERT INTO payments (order_id, amount) VALUES ($1, $2)",
                &[&order_id, &amount],
            )
            .await?;
        let done =
            Message::new(format!("payment-done {order_id}")).with_group(message.group.clone());
        enqueue(transaction, &Schema::default(), "payments", done).await?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["setup"] => {
            let mut db = database().await?;
            db.batch_execute(SHOP_TABLES).await?;
            Schema::default().migrate(&mut db).await?;
            let raftq = cluster()?;
            for queue in ["orders", "payments"] {
                match raftq.create_queue(queue, pb::QueueOptions::default()).await {
                    Ok(_) => {}
                    Err(error) if error.code() == Some(Code::AlreadyExists) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            println!("tables and queues ready");
        }
        ["place", count] => {
            let mut db = database().await?;
            for n in 0..count.parse::<u32>()? {
                let customer = format!("customer-{}", n % 5);
                let transaction = db.transaction().await?;
                // The order's id goes in the message, so it is taken first.
                let id: i64 = transaction
                    .query_one("SELECT nextval('orders_id_seq')", &[])
                    .await?
                    .get(0);
                enqueue(
                    &transaction,
                    &Schema::default(),
                    "orders",
                    Message::new(id.to_string()).with_group(customer.clone()),
                )
                .await?;
                transaction
                    .execute(
                        "INSERT INTO orders (id, customer, amount) VALUES ($1, $2, $3)",
                        &[&id, &customer, &(100 + n as i32)],
                    )
                    .await?;
                transaction.commit().await?;
            }
            println!("placed {count} orders");
        }
        ["payments"] => {
            let mut inbox = Inbox::connect(
                &env("RAFTQ_DATABASE_URL")?,
                cluster()?,
                InboxConfig::new("orders"),
            )
            .await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                let _ = stop.send(true);
            });
            let status = inbox.status();
            let reporter = tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let now = status.borrow().clone();
                    if now.handled != last {
                        println!(
                            "paid {} orders ({} redelivered, only acknowledged)",
                            now.handled, now.duplicates
                        );
                        last = now.handled;
                    }
                }
            });
            println!("paying orders; Ctrl-C stops");
            inbox.run(&mut Payments, stopped).await?;
            reporter.abort();
        }
        ["report"] => {
            let db = database().await?;
            let row = db
                .query_one(
                    "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM payments),
                            (SELECT count(*) FROM (SELECT order_id FROM payments
                                                   GROUP BY order_id HAVING count(*) > 1) twice)",
                    &[],
                )
                .await?;
            let (orders, payments, twice): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            let waiting = raftq_pg::outbox_status(&db, &Schema::default())
                .await?
                .waiting;
            println!(
                "orders {orders}, payments {payments}, paid twice {twice}, outbox waiting {waiting}"
            );
        }
        _ => anyhow::bail!("usage: pg-orders setup | place N | payments | report"),
    }
    Ok(())
}
