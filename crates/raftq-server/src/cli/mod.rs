//! Command-line interface: the top-level commands, their dispatch and client exit statuses.

mod agent;
mod bridge;
mod cluster;
mod dlq;
mod journal;
mod message;
mod output;
mod pg_relay;
mod principal;
mod queue;
mod receive;
mod send;
mod server;
mod tls;
mod tx;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raftq_client::{Client, ClientConfig, ClientError, ClientTls, Transport};
use serde_json::json;

use output::{Output, out};

#[derive(Parser, Debug)]
#[command(
    name = "raftq",
    version,
    about = "Replicated message queue: server and client"
)]
pub struct Cli {
    /// Any node of the cluster (HOST:PORT; a comma-separated list is tried in turn).
    #[arg(
        long,
        global = true,
        env = "RAFTQ_ADDR",
        default_value = "127.0.0.1:7401"
    )]
    addr: String,
    /// `text` for people, `json` for one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    output: Output,
    #[command(flatten)]
    access: AccessArgs,
    #[command(subcommand)]
    command: Commands,
}

/// How a client command (or the agent) reaches the cluster.
#[derive(Args, Debug)]
struct AccessArgs {
    /// The CA certificate (PEM) the cluster's certificates chain to: connect with TLS.
    /// Without it, plaintext (servers started with --insecure).
    #[arg(long, global = true, env = "RAFTQ_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// The bearer token to authenticate with (a principal's, or the admin token).
    #[arg(long, global = true, env = "RAFTQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (a mounted Secret, say), instead of --token.
    #[arg(
        long,
        global = true,
        env = "RAFTQ_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present (mutual TLS); needs --client-key.
    #[arg(
        long,
        global = true,
        env = "RAFTQ_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "RAFTQ_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
}

/// How a helper process (agent, relay, bridge) names the cluster it is a client of.
#[derive(Args, Debug, Clone)]
struct ClusterArgs {
    /// Nodes of the cluster (comma-separated; any of them).
    #[arg(long, env = "RAFTQ_CLUSTER", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Reach the cluster in plaintext without a token (a cluster started with
    /// --insecure). Without it, --ca-cert is required.
    #[arg(long)]
    insecure: bool,
}

impl ClusterArgs {
    /// Refuses to start `who` without nodes, or in plaintext unless asked to.
    fn check(&self, who: &str, transport: &Transport) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.cluster.is_empty(),
            "name the cluster's nodes: --cluster HOST:PORT,... (or RAFTQ_CLUSTER)"
        );
        anyhow::ensure!(
            self.insecure || transport.is_tls(),
            "{who} speaks TLS to the cluster: give --ca-cert (and a token), or --insecure \
             for a cluster started with --insecure"
        );
        Ok(())
    }
}

/// The transport and token `args` ask for.
fn access(args: &AccessArgs) -> anyhow::Result<(Transport, Option<String>)> {
    let transport = match &args.ca_cert {
        Some(ca) => {
            let identity = args.client_cert.as_deref().zip(args.client_key.as_deref());
            Transport::Tls(ClientTls::from_files(ca, identity)?.connector())
        }
        None => Transport::Plaintext,
    };
    let token = match &args.token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|error| {
                    anyhow::anyhow!("reading the token file {}: {error}", path.display())
                })?
                .trim()
                .to_string(),
        ),
        None => args.token.clone(),
    };
    Ok((transport, token))
}

// The top-level commands, in the order `raftq --help` lists them: server and message
// commands stand at the top level themselves, the other groups are subcommands. No doc
// comment: clap applies an enum's doc comment to the command it belongs to, `raftq`.
#[derive(Subcommand, Debug)]
enum Commands {
    #[command(flatten)]
    Server(server::ServerCommand),
    /// Create, inspect, list, delete and purge queues.
    #[command(subcommand)]
    Queue(queue::QueueCommand),
    #[command(flatten)]
    Message(message::MessageCommand),
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Dead-letter queues: move messages back (redrive).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Transactions: acks and sends across queues, all or nothing.
    #[command(subcommand)]
    Tx(tx::TxCommand),
    /// Journals of consumed messages (`<queue>.journal`; browse them with `peek`).
    #[command(subcommand)]
    Journal(journal::JournalCommand),
    /// Principals: who may call the cluster (create, list, delete).
    #[command(subcommand)]
    Principal(principal::PrincipalCommand),
    #[command(flatten)]
    Access(principal::AccessCommand),
    /// Certificates for trying raftq out (a throwaway CA).
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    Agent(agent::AgentCommand),
    /// Forward an application's PostgreSQL outbox to the cluster, exactly once and in order.
    PgRelay(pg_relay::PgRelayCommand),
    /// Bridges to other messaging: `raftq bridge mail` (SMTP in and out).
    #[command(subcommand)]
    Bridge(bridge::BridgeCommand),
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let output = cli.output;
    match cli.command {
        Commands::Server(command) => server::run(command).await,
        Commands::Tls(command) => tls::run(command),
        Commands::Agent(command) => agent::run(command, access(&cli.access)?, output).await,
        Commands::PgRelay(command) => pg_relay::run(command, access(&cli.access)?, output).await,
        Commands::Bridge(command) => bridge::run(command, access(&cli.access)?).await,
        command => {
            let (transport, token) = access(&cli.access)?;
            // A person is waiting: give up sooner than a service would.
            let config = ClientConfig {
                retry_deadline: Duration::from_secs(10),
                transport,
                token,
                ..ClientConfig::default()
            };
            let client = Client::new(std::slice::from_ref(&cli.addr), config)?;
            match client_command(&client, command, output).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    let code = error
                        .code()
                        .map(|code| format!("{code:?}"))
                        .unwrap_or_default();
                    match output {
                        Output::Json => out(json!({"error": error.to_string(), "code": code})),
                        Output::Text => eprintln!("raftq: {error}"),
                    }
                    Ok(ExitCode::from(exit_code(error.code())))
                }
            }
        }
    }
}

async fn client_command(
    client: &Client,
    command: Commands,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        Commands::Queue(command) => queue::run(client, command, output).await,
        Commands::Message(command) => message::run(client, command, output).await,
        Commands::Cluster(command) => cluster::run(client, command, output).await,
        Commands::Dlq(command) => dlq::run(client, command, output).await,
        Commands::Tx(command) => tx::run(client, command, output).await,
        Commands::Journal(command) => journal::run(client, command, output).await,
        Commands::Principal(command) => principal::run_principal(client, command, output).await,
        Commands::Access(command) => principal::run_access(client, command, output).await,
        Commands::Server(_)
        | Commands::Tls(_)
        | Commands::Agent(_)
        | Commands::PgRelay(_)
        | Commands::Bridge(_) => {
            unreachable!("handled by run")
        }
    }
}

/// Exit status of a failed client command, so scripts can tell failures apart
/// (2 is left to usage errors, as clap reports them).
fn exit_code(code: Option<tonic::Code>) -> u8 {
    match code {
        Some(tonic::Code::NotFound) => 3,
        Some(tonic::Code::InvalidArgument) => 4,
        Some(tonic::Code::AlreadyExists) => 5,
        Some(tonic::Code::FailedPrecondition) => 6,
        Some(tonic::Code::ResourceExhausted) => 7,
        Some(tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled) => {
            8
        }
        Some(tonic::Code::Unauthenticated) => 9,
        Some(tonic::Code::PermissionDenied) => 10,
        _ => 1,
    }
}

/// Reads a file given on the command line, or standard input for `-`, as bytes.
fn read_body(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    if path == std::path::Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
        Ok(body)
    } else {
        std::fs::read(path)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Global options are added to every subcommand: one named like a subcommand's own
    /// (`send --key` and a global `--key`, say) would panic when parsed.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        for args in [
            &["raftq", "send", "q", "--body", "b", "--key", "k"][..],
            &[
                "raftq", "--token", "t", "grant", "app", "--queue", "q*", "--allow", "send",
            ],
            &[
                "raftq",
                "--client-cert",
                "c.pem",
                "--client-key",
                "k.pem",
                "queue",
                "list",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|error| panic!("{args:?}: {error}"));
        }
    }
}
