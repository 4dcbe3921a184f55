//! `raftq agent`: run the store-and-forward agent, or ask a running one what it holds.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use raftq_client::{Transport, pb};
use raftq_proto::pb::agent_service_client::AgentServiceClient;
use serde_json::json;

use super::output::{Output, print};

/// Send through a local agent that keeps sends while the cluster is unreachable.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct AgentCommand {
    #[command(subcommand)]
    query: Option<AgentQuery>,
    #[command(flatten)]
    run: AgentRunArgs,
}

/// Runs the agent (the global --ca-cert and --token are how it reaches the cluster).
#[derive(Args, Debug)]
struct AgentRunArgs {
    /// Where the outbox's file is kept.
    #[arg(long, default_value = ".raftq-agent")]
    data_dir: PathBuf,
    /// Where applications reach the agent (loopback only: it serves plaintext).
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: std::net::SocketAddr,
    #[command(flatten)]
    reach: super::ClusterArgs,
    /// The name the agent's producer registers with.
    #[arg(long, default_value = "raftq-agent")]
    name: String,
    /// Most messages the outbox holds.
    #[arg(long, default_value_t = 1_000_000)]
    max_messages: u64,
    /// Most bytes the outbox holds.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    max_bytes: u64,
    /// Most messages one forwarded batch carries (1 to 1,000).
    #[arg(long, default_value_t = 500)]
    batch_messages: usize,
    /// Where to serve `/metrics` (Prometheus: the outbox's depth, oldest age, forwarded
    /// and dead-lettered counts) and `/healthz`; none by default.
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
}

#[derive(Subcommand, Debug)]
enum AgentQuery {
    /// What the agent holds: waiting, in flight, dead-lettered, forwarded.
    Status {
        /// The agent's address.
        #[arg(long, env = "RAFTQ_AGENT_ADDR", default_value = "127.0.0.1:7700")]
        agent: String,
    },
    /// Messages the cluster refused for good, which the agent keeps aside.
    DeadLetters {
        #[arg(long, env = "RAFTQ_AGENT_ADDR", default_value = "127.0.0.1:7700")]
        agent: String,
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 100)]
        max: u32,
        /// Put every one back at the end of the waiting messages instead.
        #[arg(long)]
        retry: bool,
    },
}

pub(super) async fn run(
    command: AgentCommand,
    access: (Transport, Option<String>),
    output: Output,
) -> anyhow::Result<ExitCode> {
    match command.query {
        None => {
            super::server::init_logging("text", true);
            let args = command.run;
            let (transport, token) = access;
            args.reach.check("the agent", &transport)?;
            crate::agent::run(crate::agent::AgentOptions {
                data_dir: args.data_dir,
                listen: args.listen,
                cluster: args.reach.cluster,
                name: args.name,
                transport,
                token,
                max_messages: args.max_messages,
                max_bytes: args.max_bytes,
                batch_messages: args.batch_messages,
                http_listen: args.http_listen,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Some(query) => {
            query_agent(query, output).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn agent(address: &str) -> anyhow::Result<AgentServiceClient<tonic::transport::Channel>> {
    let address = address.trim_start_matches("http://");
    AgentServiceClient::connect(format!("http://{address}"))
        .await
        .map_err(|error| anyhow::anyhow!("no agent answers at {address}: {error}"))
}

async fn query_agent(query: AgentQuery, output: Output) -> anyhow::Result<()> {
    match query {
        AgentQuery::Status { agent: address } => {
            let status = agent(&address)
                .await?
                .agent_status(pb::AgentStatusRequest {})
                .await?
                .into_inner();
            let stuck = if status.stuck.is_empty() {
                String::new()
            } else {
                format!("\nheld up: {}", status.stuck)
            };
            print(
                output,
                json!({
                    "pending": status.pending,
                    "pending_bytes": status.pending_bytes,
                    "in_flight": status.in_flight,
                    "oldest_age_ms": status.oldest_age_ms,
                    "dead_letters": status.dead_letters,
                    "forwarded": status.forwarded,
                    "stuck": status.stuck,
                }),
                format!(
                    "pending: {} ({} bytes, oldest {} ms)\nin flight: {}\ndead letters: {}\n\
                     forwarded: {}{stuck}",
                    status.pending,
                    status.pending_bytes,
                    status.oldest_age_ms,
                    status.in_flight,
                    status.dead_letters,
                    status.forwarded
                ),
            );
        }
        AgentQuery::DeadLetters {
            agent: address,
            max,
            retry,
        } => {
            let mut agent = agent(&address).await?;
            if retry {
                let moved = agent
                    .retry_dead_letters(pb::RetryDeadLettersRequest {})
                    .await?
                    .into_inner()
                    .moved;
                print(
                    output,
                    json!({ "moved": moved }),
                    format!("{moved} dead letters waiting again"),
                );
                return Ok(());
            }
            let letters = agent
                .list_dead_letters(pb::ListDeadLettersRequest { max })
                .await?
                .into_inner()
                .dead_letters;
            for letter in letters {
                let body = letter.message.map(|m| m.body).unwrap_or_default();
                print(
                    output,
                    json!({
                        "local_id": letter.local_id,
                        "queue": letter.queue,
                        "body": String::from_utf8_lossy(&body),
                        "reason": letter.reason,
                        "failed_at_ms": letter.failed_at_ms,
                    }),
                    format!(
                        "{}\t{}\t{}\t{}",
                        letter.local_id,
                        letter.queue,
                        letter.reason,
                        String::from_utf8_lossy(&body)
                    ),
                );
            }
        }
    }
    Ok(())
}
