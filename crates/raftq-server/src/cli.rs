//! Command-line interface: server commands and client commands over the Rust client.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use raftq_client::{Client, ClientConfig, Message, pb};
use serde_json::json;

use crate::config::{FlagOverrides, ServeConfig};

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
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run one node.
    Serve(ServeArgs),
    /// Run a local cluster of N nodes on 127.0.0.1 (ports BASE_PORT..BASE_PORT+N-1).
    Dev {
        #[arg(long, default_value_t = 3)]
        nodes: u16,
        #[arg(long, default_value = ".raftq-dev")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 7401)]
        base_port: u16,
    },
    /// Create, inspect, list, delete and purge queues.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Send one message.
    Send {
        queue: String,
        /// The body as text.
        #[arg(
            long,
            required_unless_present = "body_file",
            conflicts_with = "body_file"
        )]
        body: Option<String>,
        /// Read the body from a file (`-` for standard input), as bytes.
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Idempotency key (generated when absent).
        #[arg(long)]
        key: Option<String>,
        /// A header as KEY=VALUE (repeatable).
        #[arg(long = "header", value_parser = parse_header)]
        headers: Vec<(String, String)>,
    },
    /// Receive messages under a lease.
    Receive {
        queue: String,
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Long-poll: wait this long for a message.
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Lease length; 0 uses the queue's default.
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
        /// Acknowledge each message right after receiving it.
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge a delivery by its receipt.
    Ack { queue: String, receipt: String },
    /// Release a delivery so it is delivered again (after a delay).
    Nack {
        queue: String,
        receipt: String,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Extend a delivery's lease.
    Extend {
        queue: String,
        receipt: String,
        #[arg(long)]
        lease_ms: u64,
    },
    /// Show stored messages in send order without leasing them.
    Peek {
        queue: String,
        #[arg(long, default_value_t = 10)]
        max: u32,
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    advertise: Option<String>,
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial voters: ID=HOST:PORT,...
    #[arg(long)]
    peers: Option<String>,
    /// Join an existing cluster through this member.
    #[arg(long)]
    join: Option<String>,
    #[arg(long)]
    log_format: Option<String>,
}

#[derive(Subcommand, Debug)]
enum QueueCommand {
    Create {
        name: String,
        #[arg(long, default_value_t = 0)]
        dedup_window_ms: u64,
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
        #[arg(long, default_value_t = 0)]
        max_delivery_count: u32,
        #[arg(long, default_value_t = 0)]
        max_message_bytes: u64,
        #[arg(long, default_value_t = 0)]
        max_depth: u64,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    Purge {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    Status,
    /// Add a node as learner, then voter once it has caught up.
    AddNode {
        #[arg(long)]
        id: u64,
        /// The new node's gRPC address.
        #[arg(long)]
        node_addr: String,
        /// Leave the node a learner.
        #[arg(long)]
        no_promote: bool,
    },
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
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
        _ => 1,
    }
}

fn read_body(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    if path == std::path::Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
        Ok(body)
    } else {
        std::fs::read(path)
    }
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let output = cli.output;
    match cli.command {
        Commands::Serve(args) => {
            let flags = FlagOverrides {
                node_id: args.node_id,
                listen: args.listen,
                advertise: args.advertise,
                http_listen: args.http_listen,
                data_dir: args.data_dir,
                peers: args.peers,
                join: args.join,
                log_format: args.log_format,
            };
            let config = ServeConfig::load(args.config.as_deref(), flags)?;
            init_logging(&config.log_format);
            let prometheus =
                metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
            crate::serve::run(config, prometheus).await?;
            Ok(ExitCode::SUCCESS)
        }
        Commands::Dev {
            nodes,
            data_dir,
            base_port,
        } => {
            crate::dev::run(crate::dev::DevOptions {
                nodes,
                data_dir,
                base_port,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        command => {
            // A person is waiting: give up sooner than a service would.
            let config = ClientConfig {
                retry_deadline: Duration::from_secs(10),
                ..ClientConfig::default()
            };
            let client = Client::new(&[cli.addr], config)?;
            match client_command(&client, command, output).await {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) => {
                    let code = error
                        .code()
                        .map(|code| format!("{code:?}"))
                        .unwrap_or_default();
                    match output {
                        Output::Json => {
                            println!("{}", json!({"error": error.to_string(), "code": code}))
                        }
                        Output::Text => eprintln!("raftq: {error}"),
                    }
                    Ok(ExitCode::from(exit_code(error.code())))
                }
            }
        }
    }
}

fn print(output: Output, value: serde_json::Value, text: String) {
    match output {
        Output::Json => println!("{value}"),
        Output::Text => println!("{text}"),
    }
}

fn queue_json(queue: &pb::Queue) -> serde_json::Value {
    let options = queue.options.unwrap_or_default();
    let stats = queue.stats.unwrap_or_default();
    json!({
        "name": queue.name,
        "created_at_ms": queue.created_at_ms,
        "options": {
            "dedup_window_ms": options.dedup_window_ms,
            "default_lease_ms": options.default_lease_ms,
            "max_delivery_count": options.max_delivery_count,
            "max_message_bytes": options.max_message_bytes,
            "max_depth": options.max_depth,
        },
        "stats": {
            "depth": stats.depth,
            "in_flight": stats.in_flight,
            "delayed": stats.delayed,
            "total_sent": stats.total_sent,
            "total_acked": stats.total_acked,
            "total_deliveries": stats.total_deliveries,
            "total_discarded": stats.total_discarded,
        },
    })
}

fn queue_text(queue: &pb::Queue) -> String {
    let stats = queue.stats.unwrap_or_default();
    format!(
        "{}  depth={} in_flight={} delayed={} sent={} acked={}",
        queue.name,
        stats.depth,
        stats.in_flight,
        stats.delayed,
        stats.total_sent,
        stats.total_acked
    )
}

async fn client_command(
    client: &Client,
    command: Commands,
    output: Output,
) -> Result<(), raftq_client::ClientError> {
    match command {
        Commands::Queue(QueueCommand::Create {
            name,
            dedup_window_ms,
            lease_ms,
            max_delivery_count,
            max_message_bytes,
            max_depth,
        }) => {
            let options = pb::QueueOptions {
                dedup_window_ms,
                default_lease_ms: lease_ms,
                max_delivery_count,
                max_message_bytes,
                max_depth,
            };
            let queue = client.create_queue(&name, options).await?;
            print(
                output,
                queue_json(&queue),
                format!("created {}", queue_text(&queue)),
            );
        }
        Commands::Queue(QueueCommand::Get { name }) => {
            let queue = client.get_queue(&name).await?;
            print(output, queue_json(&queue), queue_text(&queue));
        }
        Commands::Queue(QueueCommand::List) => {
            for queue in client.list_queues().await? {
                print(output, queue_json(&queue), queue_text(&queue));
            }
        }
        Commands::Queue(QueueCommand::Delete { name }) => {
            client.delete_queue(&name).await?;
            print(output, json!({"deleted": name}), format!("deleted {name}"));
        }
        Commands::Queue(QueueCommand::Purge { name }) => {
            let removed = client.purge_queue(&name).await?;
            print(
                output,
                json!({"queue": name, "removed": removed}),
                format!("purged {name}: {removed} removed"),
            );
        }
        Commands::Send {
            queue,
            body,
            body_file,
            key,
            headers,
        } => {
            let body = match (body, body_file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => read_body(&path).map_err(|error| {
                    raftq_client::ClientError::Status(tonic::Status::invalid_argument(format!(
                        "reading the body from {}: {error}",
                        path.display()
                    )))
                })?,
                (None, None) => Vec::new(),
            };
            let message = Message {
                body,
                headers: headers.into_iter().collect(),
                key,
            };
            let sent = client.send(&queue, message).await?;
            print(
                output,
                json!({"message_id": sent.message_id, "sequence": sent.sequence, "duplicate": sent.duplicate}),
                format!(
                    "sent message {} (sequence {}){}",
                    sent.message_id,
                    sent.sequence,
                    if sent.duplicate {
                        ", duplicate of an earlier send"
                    } else {
                        ""
                    }
                ),
            );
        }
        Commands::Receive {
            queue,
            max,
            wait_ms,
            lease_ms,
            ack,
        } => {
            let lease = (lease_ms > 0).then(|| Duration::from_millis(lease_ms));
            let messages = client
                .receive(&queue, max, Duration::from_millis(wait_ms), lease)
                .await?;
            if messages.is_empty() && output == Output::Text {
                println!("no message");
            }
            for message in messages {
                let body = String::from_utf8_lossy(&message.body).to_string();
                let acked = if ack {
                    client.ack(&queue, &message.receipt).await?;
                    true
                } else {
                    false
                };
                print(
                    output,
                    json!({
                        "message_id": message.message_id,
                        "sequence": message.sequence,
                        "body": body,
                        "headers": message.headers,
                        "receipt": message.receipt,
                        "attempt": message.attempt,
                        "enqueued_at_ms": message.enqueued_at_ms,
                        "lease_expires_at_ms": message.lease_expires_at_ms,
                        "acked": acked,
                    }),
                    format!(
                        "{}  receipt={}  attempt={}{}  {}",
                        message.message_id,
                        message.receipt,
                        message.attempt,
                        if acked { "  acked" } else { "" },
                        body
                    ),
                );
            }
        }
        Commands::Ack { queue, receipt } => {
            let acked = client.ack(&queue, &receipt).await?;
            let note = if acked.already_acked {
                " (it was already acknowledged)"
            } else {
                ""
            };
            print(
                output,
                json!({"acked": receipt, "already_acked": acked.already_acked}),
                format!("acked {receipt}{note}"),
            );
        }
        Commands::Nack {
            queue,
            receipt,
            delay_ms,
        } => {
            let nacked = client
                .nack(&queue, &receipt, Duration::from_millis(delay_ms))
                .await?;
            print(
                output,
                json!({"nacked": receipt, "visible_at_ms": nacked.visible_at_ms}),
                format!(
                    "released {receipt}; visible again at {} ms",
                    nacked.visible_at_ms
                ),
            );
        }
        Commands::Extend {
            queue,
            receipt,
            lease_ms,
        } => {
            let extended = client
                .extend_lease(&queue, &receipt, Duration::from_millis(lease_ms))
                .await?;
            print(
                output,
                json!({"receipt": receipt, "lease_expires_at_ms": extended.lease_expires_at_ms}),
                format!(
                    "lease of {receipt} now ends at {} ms",
                    extended.lease_expires_at_ms
                ),
            );
        }
        Commands::Peek { queue, max, after } => {
            let messages = client.peek(&queue, after, max).await?;
            if messages.is_empty() && output == Output::Text {
                println!("no message");
            }
            for message in messages {
                let body = String::from_utf8_lossy(&message.body).to_string();
                print(
                    output,
                    json!({
                        "message_id": message.message_id,
                        "sequence": message.sequence,
                        "body": body,
                        "headers": message.headers,
                        "state": message.state,
                        "deliveries": message.deliveries,
                        "enqueued_at_ms": message.enqueued_at_ms,
                    }),
                    format!(
                        "{}  seq={}  {}  {}",
                        message.message_id, message.sequence, message.state, body
                    ),
                );
            }
        }
        Commands::Cluster(ClusterCommand::Status) => {
            print_status(output, &client.cluster_status().await?)
        }
        Commands::Cluster(ClusterCommand::AddNode {
            id,
            node_addr,
            no_promote,
        }) => print_status(output, &client.add_node(id, &node_addr, !no_promote).await?),
        Commands::Cluster(ClusterCommand::RemoveNode { id }) => {
            print_status(output, &client.remove_node(id).await?)
        }
        Commands::Serve(_) | Commands::Dev { .. } => {
            unreachable!("server commands are handled by run")
        }
    }
    Ok(())
}

fn print_status(output: Output, status: &pb::ClusterStatusResponse) {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|node| {
            json!({
                "node_id": node.node_id,
                "address": node.address,
                "role": node.role,
                "voter": node.voter,
                "term": node.term,
                "last_log_index": node.last_log_index,
                "committed_index": node.committed_index,
                "applied_index": node.applied_index,
                "snapshot_index": node.snapshot_index,
                "purged_index": node.purged_index,
                "leader_id": node.leader_id,
            })
        })
        .collect();
    let mut text = format!(
        "leader: node {} at {}\n",
        status.leader_id, status.leader_address
    );
    for node in &status.nodes {
        text.push_str(&format!(
            "  node {} {} {}{} term={} last_log={} committed={} applied={} snapshot={}\n",
            node.node_id,
            node.address,
            node.role,
            if node.voter { "" } else { " (learner)" },
            node.term,
            node.last_log_index,
            node.committed_index,
            node.applied_index,
            node.snapshot_index
        ));
    }
    print(
        output,
        json!({"leader_id": status.leader_id, "leader_address": status.leader_address, "nodes": nodes}),
        text.trim_end().to_string(),
    );
}
