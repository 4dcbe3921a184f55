//! `raftq-bench pg`: how fast raftq-pg moves messages between PostgreSQL and a 3-node
//! cluster it starts (plaintext, as the peers run):
//!
//! - relay: `rows` outbox rows are written (transactions of 1,000 `enqueue` calls), then
//!   a relay starts and forwards them; its rate from start until the outbox is empty;
//! - inbox: `messages` messages are sent to a queue (batches of 500), then an inbox
//!   consumer handles them, one transaction per batch, its handler inserting one row per
//!   message; its rate from start until every message is handled and acknowledged.
//!
//! The database is `--database-url` (`scripts/peers/postgres start` gives a throwaway
//! one); the benchmark's tables are dropped first.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use raftq_client::{Message, pb};
use raftq_pg::tokio_postgres::{self, NoTls, Transaction};
use raftq_pg::{Handler, HandlerError, Inbox, InboxConfig, Relay, RelayConfig, Schema, enqueue};
use serde::Serialize;

use crate::cluster::SpawnedCluster;

#[derive(Args, Debug)]
pub struct PgArgs {
    /// The PostgreSQL database (a libpq connection string).
    #[arg(long, env = "RAFTQ_DATABASE_URL")]
    database_url: String,
    /// Outbox rows the relay forwards.
    #[arg(long, default_value_t = 50_000)]
    rows: usize,
    /// Messages the inbox consumer handles.
    #[arg(long, default_value_t = 50_000)]
    messages: usize,
    /// Rows per relay batch (1 to 1,000).
    #[arg(long, default_value_t = 500)]
    relay_batch: usize,
    /// Messages per inbox transaction (1 to 1,000).
    #[arg(long, default_value_t = 500)]
    inbox_batch: u32,
    /// Body size in bytes.
    #[arg(long, default_value_t = 128)]
    body: usize,
    /// The raftq binary (default: the one beside this benchmark).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7680)]
    base_port: u16,
    #[arg(long, default_value = "/tmp/raftq-bench-pg")]
    work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    rows: usize,
    relay_batch: usize,
    relay_rows_per_s: f64,
    messages: usize,
    inbox_batch: u32,
    /// The handler inserts a row per message (`Handler::handle`).
    inbox_per_message_insert_per_s: f64,
    /// The handler inserts the batch's rows in one statement (`Handler::handle_batch`).
    inbox_batch_insert_per_s: f64,
}

async fn database(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// Records each message in `bench_handled`: one insert per message, or (`batched`) one
/// multi-row insert per batch.
struct Record {
    batched: bool,
}

impl Handler for Record {
    async fn handle(
        &mut self,
        transaction: &Transaction<'_>,
        message: &pb::ReceivedMessage,
    ) -> Result<(), HandlerError> {
        transaction
            .execute(
                "INSERT INTO bench_handled (message_id) VALUES ($1)",
                &[&(message.message_id as i64)],
            )
            .await?;
        Ok(())
    }

    async fn handle_batch(
        &mut self,
        transaction: &Transaction<'_>,
        messages: &[&pb::ReceivedMessage],
    ) -> Result<(), HandlerError> {
        if !self.batched {
            for message in messages {
                self.handle(transaction, message).await?;
            }
            return Ok(());
        }
        let ids: Vec<i64> = messages.iter().map(|m| m.message_id as i64).collect();
        transaction
            .execute(
                "INSERT INTO bench_handled (message_id) SELECT unnest($1::bigint[])",
                &[&ids],
            )
            .await?;
        Ok(())
    }
}

pub async fn run(args: PgArgs) -> anyhow::Result<()> {
    let exe = match &args.raftq_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("raftq"),
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let cluster =
        SpawnedCluster::start_with(&exe, &args.work_dir, 3, args.base_port, false, Vec::new())
            .await?;
    let client = cluster.client()?;
    for queue in ["relayed", "inbox-each", "inbox-batched"] {
        client
            .create_queue(
                queue,
                pb::QueueOptions {
                    max_depth: 10_000_000,
                    ..Default::default()
                },
            )
            .await?;
    }
    let schema = Schema::new("bench")?;
    let mut db = database(&args.database_url).await?;
    db.batch_execute(
        "DROP TABLE IF EXISTS bench_outbox, bench_relay, bench_relay_sequences, bench_inbox,
             bench_schema_versions, bench_handled;
         CREATE TABLE bench_handled (message_id bigint NOT NULL);",
    )
    .await?;
    schema.migrate(&mut db).await?;

    // 1. The relay forwarding a backlog.
    let body = vec![b'x'; args.body];
    for chunk in 0..args.rows.div_ceil(1_000) {
        let transaction = db.transaction().await?;
        for _ in 0..1_000.min(args.rows - chunk * 1_000) {
            enqueue(&transaction, &schema, "relayed", Message::new(body.clone())).await?;
        }
        transaction.commit().await?;
    }
    let relay = Relay::new(
        &args.database_url,
        client.clone(),
        RelayConfig {
            schema: schema.clone(),
            batch_messages: args.relay_batch,
            ..RelayConfig::default()
        },
    )?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let relaying = tokio::spawn(async move { relay.run(stopped).await });
    loop {
        let status = raftq_pg::outbox_status(&db, &schema).await?;
        if status.waiting == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay did not forward {} rows within 10 minutes ({} left)",
            args.rows,
            status.waiting
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_rows_per_s = args.rows as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    relaying.await??;

    // 2. An inbox consumer handling a backlog: one insert per message, then one per batch.
    let each = inbox_rate(&args, &client, &db, &schema, "inbox-each", false).await?;
    let batched = inbox_rate(&args, &client, &db, &schema, "inbox-batched", true).await?;
    cluster.stop().await;

    let report = Report {
        rows: args.rows,
        relay_batch: args.relay_batch,
        relay_rows_per_s,
        messages: args.messages,
        inbox_batch: args.inbox_batch,
        inbox_per_message_insert_per_s: each,
        inbox_batch_insert_per_s: batched,
    };
    println!(
        "relay: {} rows in batches of {} at {:.0} rows/s\ninbox: {} messages in transactions of {}: \
         {:.0} msg/s inserting a row per message, {:.0} msg/s inserting a batch's rows at once",
        report.rows,
        report.relay_batch,
        report.relay_rows_per_s,
        report.messages,
        report.inbox_batch,
        report.inbox_per_message_insert_per_s,
        report.inbox_batch_insert_per_s
    );
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Sends `messages` to `queue`, then runs an inbox consumer until it has handled them all;
/// its rate, in messages per second.
async fn inbox_rate(
    args: &PgArgs,
    client: &raftq_client::Client,
    db: &tokio_postgres::Client,
    schema: &Schema,
    queue: &str,
    batched: bool,
) -> anyhow::Result<f64> {
    let body = vec![b'x'; args.body];
    for chunk in 0..args.messages.div_ceil(500) {
        let count = 500.min(args.messages - chunk * 500);
        client
            .send_batch(
                queue,
                (0..count).map(|_| Message::new(body.clone())).collect(),
            )
            .await?;
    }
    db.execute("TRUNCATE bench_handled", &[]).await?;
    let mut inbox = Inbox::connect(
        &args.database_url,
        client.clone(),
        InboxConfig {
            schema: schema.clone(),
            batch_messages: args.inbox_batch,
            wait: Duration::from_millis(100),
            lease: Some(Duration::from_secs(60)),
            prune_after: None,
            ..InboxConfig::new(queue)
        },
    )
    .await?;
    let status = inbox.status();
    let mut handler = Record { batched };
    let started = Instant::now();
    while status.borrow().handled < args.messages as u64 {
        inbox.step(&mut handler).await?;
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the inbox did not handle {} messages within 10 minutes",
            args.messages
        );
    }
    inbox.flush().await?;
    let rate = args.messages as f64 / started.elapsed().as_secs_f64();
    let handled: i64 = db
        .query_one("SELECT count(DISTINCT message_id) FROM bench_handled", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        handled == args.messages as i64,
        "the inbox handled {handled} distinct messages of {}",
        args.messages
    );
    Ok(rate)
}
