//! `raftq pg-relay`: forward a PostgreSQL outbox table to the cluster, create its tables,
//! or show what it holds.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use raftq_client::{Client, ClientConfig, Transport};
use raftq_pg::tokio_postgres::Client as Database;
use raftq_pg::{DatabaseTls, Relay, RelayConfig, Schema};
use serde_json::json;

use super::output::{Output, print};

/// Forward an application's PostgreSQL outbox to the cluster (exactly once, in order).
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct PgRelayCommand {
    #[command(subcommand)]
    query: Option<PgRelayQuery>,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    run: PgRelayRunArgs,
}

#[derive(Args, Debug, Clone)]
struct DatabaseArgs {
    /// The application's database (a libpq connection string or postgresql:// URL).
    #[arg(long, env = "RAFTQ_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A file holding the connection string (a mounted Secret, say), instead of
    /// --database-url.
    #[arg(long, env = "RAFTQ_DATABASE_URL_FILE", conflicts_with = "database_url")]
    database_url_file: Option<std::path::PathBuf>,
    /// The CA certificate (PEM) the database server's certificate chains to: TLS to the
    /// database, as the connection string's `sslmode` asks (`require`: TLS or nothing).
    /// Without it, plaintext.
    #[arg(long, env = "RAFTQ_DATABASE_CA_CERT")]
    database_ca_cert: Option<std::path::PathBuf>,
    /// Prefix of the tables (`raftq` gives raftq_outbox, raftq_relay, ...; `app.raftq`
    /// puts them in schema `app`).
    #[arg(long, default_value = "raftq")]
    table_prefix: String,
}

impl DatabaseArgs {
    fn url(&self) -> anyhow::Result<String> {
        if let Some(path) = &self.database_url_file {
            let text = std::fs::read_to_string(path).map_err(|error| {
                anyhow::anyhow!("reading the database URL file {}: {error}", path.display())
            })?;
            return Ok(text.trim().to_string());
        }
        self.database_url.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "name the database: --database-url URL (or RAFTQ_DATABASE_URL), or \
                 --database-url-file FILE"
            )
        })
    }

    fn tls(&self) -> anyhow::Result<DatabaseTls> {
        Ok(match &self.database_ca_cert {
            Some(ca) => DatabaseTls::from_ca_file(ca)?,
            None => DatabaseTls::Plaintext,
        })
    }

    /// A connection to the database.
    async fn connect(&self) -> anyhow::Result<raftq_pg::tokio_postgres::Client> {
        let (client, _) = raftq_pg::connect(&self.url()?, &self.tls()?)
            .await
            .map_err(|error| anyhow::anyhow!("connecting to the database: {error}"))?;
        Ok(client)
    }

    fn schema(&self) -> anyhow::Result<Schema> {
        Ok(Schema::new(&self.table_prefix)?)
    }
}

/// Runs the relay (the global --ca-cert and --token are how it reaches the cluster).
#[derive(Args, Debug)]
struct PgRelayRunArgs {
    #[command(flatten)]
    reach: super::ClusterArgs,
    /// Most rows one forwarded batch carries (1 to 1,000).
    #[arg(long, default_value_t = 500)]
    batch_messages: usize,
    /// Create or update the tables first (as `migrate` does).
    #[arg(long)]
    migrate: bool,
    /// Where to serve `/metrics` (Prometheus: forwarded and refused rows, whether this
    /// relay is the active one, the rows waiting) and `/healthz`; none by default.
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum PgRelayQuery {
    /// Create or update the outbox, relay and inbox tables.
    Migrate {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Print the SQL (names filled in) instead of running it.
        #[arg(long)]
        print: bool,
    },
    /// What the outbox holds: rows waiting, their oldest age, rows set aside, the batch in
    /// flight.
    Status {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Put the rows the cluster refused back in line (after fixing the cause).
    RetryFailed {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

pub(super) async fn run(
    command: PgRelayCommand,
    access: (Transport, Option<String>),
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command.query {
        None => relay(command.database, command.run, access).await,
        Some(PgRelayQuery::Migrate { database, print }) => {
            let schema = database.schema()?;
            if print {
                for sql in schema.migration_sql() {
                    println!("{sql}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            let mut pg = database.connect().await?;
            let version = schema.migrate(&mut pg).await?;
            super::output::print(
                output,
                json!({"outbox": schema.outbox(), "inbox": schema.inbox(), "version": version}),
                format!(
                    "tables {} and {} at version {version}",
                    schema.outbox(),
                    schema.inbox()
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(PgRelayQuery::Status { database }) => {
            let pg = database.connect().await?;
            let status = raftq_pg::outbox_status(&pg, &database.schema()?).await?;
            let in_flight = status
                .in_flight
                .as_ref()
                .map(|(queue, count)| format!("{count} rows to {queue}"))
                .unwrap_or_else(|| "none".to_string());
            print(
                output,
                json!({
                    "waiting": status.waiting,
                    "oldest_age_ms": status.oldest_age_ms,
                    "failed": status.failed,
                    "producer_id": status.producer_id,
                    "in_flight": status.in_flight.as_ref().map(|(queue, count)| json!({"queue": queue, "rows": count})),
                }),
                format!(
                    "waiting: {} (oldest {} ms)\nfailed: {}\nin flight: {in_flight}\nproducer: {}",
                    status.waiting, status.oldest_age_ms, status.failed, status.producer_id
                ),
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(PgRelayQuery::RetryFailed { database }) => {
            let pg = database.connect().await?;
            let count = raftq_pg::retry_failed(&pg, &database.schema()?).await?;
            print(
                output,
                json!({"retried": count}),
                format!("{count} rows put back in line"),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn relay(
    database: DatabaseArgs,
    args: PgRelayRunArgs,
    (transport, token): (Transport, Option<String>),
) -> anyhow::Result<ExitCode> {
    super::server::init_logging("text", true);
    args.reach.check("the relay", &transport)?;
    let url = database.url()?;
    let schema = database.schema()?;
    let tls = database.tls()?;
    if args.migrate {
        let mut pg = database.connect().await?;
        schema.migrate(&mut pg).await?;
    }
    let raftq = Client::new(
        &args.reach.cluster,
        ClientConfig {
            retry_deadline: Duration::from_secs(30),
            transport,
            token,
            ..ClientConfig::default()
        },
    )?;
    let relay = Relay::new(
        &url,
        raftq,
        RelayConfig {
            schema: schema.clone(),
            batch_messages: args.batch_messages,
            tls: tls.clone(),
            ..RelayConfig::default()
        },
    )?;
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    if let Some(address) = args.http_listen {
        let (url, tls) = (url.clone(), tls.clone());
        // One connection for the scrapes, opened again after it fails.
        let scraping: Arc<tokio::sync::Mutex<Option<Database>>> = Arc::default();
        crate::metrics_port::serve(address, stopped.clone(), move || {
            let (url, tls, schema) = (url.clone(), tls.clone(), schema.clone());
            let scraping = scraping.clone();
            async move {
                // The rows waiting, read when scraped.
                let mut pg = scraping.lock().await;
                if pg.as_ref().is_none_or(Database::is_closed)
                    && let Ok((client, _)) = raftq_pg::connect(&url, &tls).await
                {
                    *pg = Some(client);
                }
                if let Some(client) = pg.as_ref() {
                    match raftq_pg::outbox_status(client, &schema).await {
                        Ok(status) => {
                            metrics::gauge!("raftq_pg_outbox_waiting").set(status.waiting as f64);
                            metrics::gauge!("raftq_pg_outbox_oldest_age_seconds")
                                .set(status.oldest_age_ms as f64 / 1000.0);
                            metrics::gauge!("raftq_pg_outbox_failed").set(status.failed as f64);
                        }
                        Err(_) => *pg = None,
                    }
                }
            }
        })
        .await?;
    }
    println!("raftq pg-relay: forwarding {}", database.schema()?.outbox());
    tokio::spawn(async move {
        crate::serve::shutdown_signal().await;
        tracing::info!("pg-relay stopping");
        let _ = stopping.send(true);
    });
    relay.run(stopped).await?;
    Ok(ExitCode::SUCCESS)
}
