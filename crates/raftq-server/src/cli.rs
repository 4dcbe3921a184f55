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
    /// For a whole-cluster restore: record that DATA_DIR, a stopped copy of another node's
    /// data directory, now belongs to node NODE_ID and that its log may vote.
    AdoptDataDir {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        node_id: u64,
    },
    /// Empty DATA_DIR, the data directory of a stopped node whose data is damaged, so that
    /// the node, started again, rebuilds from its peers (it grants no vote until it has
    /// caught up). Refused while a node runs on it.
    ResetDataDir {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Run the benchmark (`raftq-bench`, installed next to this binary); see `raftq bench --help`.
    #[command(disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
        #[command(flatten)]
        delivery: SendDelivery,
        #[command(flatten)]
        properties: SendProperties,
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
        /// Selective receive: only this message id ...
        #[arg(long, default_value_t = 0)]
        message_id: u64,
        /// ... and/or only messages with this correlation id.
        #[arg(long, default_value = "")]
        correlation_id: String,
    },
    /// Consume on a consume stream: print each message as it arrives and acknowledge it.
    Consume {
        queue: String,
        /// Stop after this many messages (0: never).
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Stop once nothing has arrived for this long (0: wait for ever).
        #[arg(long, default_value_t = 0)]
        idle_ms: u64,
        /// Most messages held unacknowledged on the stream.
        #[arg(long, default_value_t = 100)]
        prefetch: u32,
        /// Lease length; 0 uses the queue's default.
        #[arg(long, default_value_t = 0)]
        lease_ms: u64,
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
        /// Page on: start after this sequence (the last one shown).
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Only this message id ...
        #[arg(long, default_value_t = 0)]
        message_id: u64,
        /// ... and/or only messages with this correlation id.
        #[arg(long, default_value = "")]
        correlation_id: String,
    },
    /// Cluster status and membership.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Dead-letter queues: move messages back (redrive).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Transactions: acks and sends across queues, all or nothing.
    #[command(subcommand)]
    Tx(TxCommand),
    /// Journals of consumed messages (`<queue>.journal`; browse them with `peek`).
    #[command(subcommand)]
    Journal(JournalCommand),
}

#[derive(Subcommand, Debug)]
enum JournalCommand {
    /// Send copies of journaled messages into a queue again, oldest first. Each copy is
    /// sent with the idempotency key `replay-<journal message id>`, so repeating a replay
    /// within the destination's dedup window sends nothing twice.
    Replay {
        /// The queue whose journal to replay (its journal is `<queue>.journal`).
        queue: String,
        /// Destination (default: the queue itself).
        #[arg(long)]
        to: Option<String>,
        /// Start after this journal sequence (see `peek <queue>.journal`).
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
}

#[derive(Subcommand, Debug)]
enum TxCommand {
    /// Commit the transaction described by a JSON file (`-` for standard input):
    /// {"transaction_id": "optional", "acks": [{"queue": "in", "receipt": "7:1"}],
    ///  "sends": [{"queue": "out", "body": "text", "key": "...", "group": "...",
    ///  "priority": 0, "delay_ms": 0, "ttl_ms": 0, "headers": {"k": "v"}}]}
    Commit {
        #[arg(long)]
        file: PathBuf,
    },
}

/// The JSON form of a transaction for `raftq tx commit`.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFile {
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    acks: Vec<TxFileAck>,
    #[serde(default)]
    sends: Vec<TxFileSend>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFileAck {
    queue: String,
    receipt: String,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFileSend {
    queue: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    group: String,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    ttl_ms: u64,
    #[serde(default)]
    headers: std::collections::HashMap<String, String>,
}

fn read_tx_file(path: &std::path::Path) -> Result<pb::CommitRequest, raftq_client::ClientError> {
    let bad = |reason: String| {
        raftq_client::ClientError::Status(tonic::Status::invalid_argument(format!(
            "transaction file {}: {reason}",
            path.display()
        )))
    };
    let bytes = read_body(path).map_err(|error| bad(error.to_string()))?;
    let file: TxFile = serde_json::from_slice(&bytes).map_err(|error| bad(error.to_string()))?;
    Ok(pb::CommitRequest {
        transaction_id: file
            .transaction_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        acks: file
            .acks
            .into_iter()
            .map(|ack| pb::TransactionAck {
                queue: ack.queue,
                receipt: ack.receipt,
            })
            .collect(),
        sends: file
            .sends
            .into_iter()
            .map(|send| pb::TransactionSend {
                queue: send.queue,
                message: Some(pb::OutgoingMessage {
                    body: send.body.into_bytes(),
                    headers: send.headers,
                    idempotency_key: send.key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                    group: send.group,
                    priority: send.priority,
                    delay_ms: send.delay_ms,
                    ttl_ms: send.ttl_ms,
                    properties: None,
                    ack_queue: String::new(),
                    ack_positive: false,
                    ack_negative: false,
                    time_to_reach_ms: 0,
                    sent_at_ms: 0,
                }),
            })
            .collect(),
    })
}

/// How a sent message is delivered.
#[derive(Args, Debug)]
struct SendDelivery {
    /// Message group: strict send order, one message in flight at a time.
    #[arg(long, default_value = "")]
    group: String,
    /// 0 (lowest, default) to 7; orders messages without a group.
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Not delivered before this many milliseconds have passed.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Time to be received; 0 takes the queue's default.
    #[arg(long, default_value_t = 0)]
    ttl_ms: u64,
    /// Post acknowledgement messages about this message to this queue.
    #[arg(long, default_value = "")]
    ack_queue: String,
    /// Ask for a "consumed" acknowledgement (with --ack-queue).
    #[arg(long)]
    ack_positive: bool,
    /// Ask for an acknowledgement when it expires or is dead-lettered (with --ack-queue).
    #[arg(long)]
    ack_negative: bool,
    /// The message must reach the queue within this many ms from now (0: no limit).
    #[arg(long, default_value_t = 0)]
    time_to_reach_ms: u64,
}

/// Message properties, carried to the receiver unchanged.
#[derive(Args, Debug)]
struct SendProperties {
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, default_value = "")]
    correlation_id: String,
    /// Queue a receiver should answer to.
    #[arg(long, default_value = "")]
    reply_to: String,
    #[arg(long, default_value = "")]
    content_type: String,
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Move messages out of a dead-letter queue, back where each came from (or --to).
    Redrive {
        queue: String,
        /// A message id to move (repeatable); without ids, moves up to --max from the head.
        #[arg(long = "id")]
        ids: Vec<u64>,
        #[arg(long, default_value_t = 0)]
        max: u32,
        /// Destination queue instead of each message's source queue.
        #[arg(long, default_value = "")]
        to: String,
        /// Move everything not under a lease, 1,000 at a time, until none is left.
        #[arg(long, conflicts_with_all = ["ids", "max"])]
        all: bool,
    },
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
        /// Queue that takes messages after max-delivery-count deliveries.
        #[arg(long, default_value = "")]
        dead_letter_queue: String,
        /// Also dead-letter messages whose time to be received ran out.
        #[arg(long)]
        dead_letter_expired: bool,
        /// Time to be received for messages that name none (0: never).
        #[arg(long, default_value_t = 0)]
        default_ttl_ms: u64,
        /// Most bytes the queue holds (0: no byte limit).
        #[arg(long, default_value_t = 0)]
        max_bytes: u64,
        /// When full: `reject` sends, or `dead-letter-oldest` to make room.
        #[arg(long, value_enum, default_value = "reject")]
        overflow: OverflowArg,
        /// Keep copies of consumed messages in `<name>.journal`.
        #[arg(long)]
        journal: bool,
        /// How long journal copies are kept (0: 24 h).
        #[arg(long, default_value_t = 0)]
        journal_retention_ms: u64,
        /// Most journal copies kept (0: 100000).
        #[arg(long, default_value_t = 0)]
        journal_max_messages: u64,
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

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverflowArg {
    Reject,
    DeadLetterOldest,
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
        /// The node lost its data and was started again on an empty data directory: remove
        /// its old self, add it as a learner and promote it once it has caught up (a node
        /// does this itself when it starts).
        #[arg(long)]
        lost_data: bool,
    },
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Remove every member whose id is above `--to`, one at a time, highest first: what a
    /// scale-down to `--to` nodes (ids 1..=to) needs before the departing nodes stop.
    /// Nothing to remove is not an error.
    Shrink {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
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
        Commands::AdoptDataDir { data_dir, node_id } => {
            crate::data_dir::adopt(&data_dir, node_id)?;
            println!(
                "{} now belongs to node {node_id}, and its log may vote",
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Commands::ResetDataDir { data_dir } => {
            crate::data_dir::reset(&data_dir)?;
            println!(
                "{} is empty: start the node again with its node id; it rebuilds from its \
                 peers and grants no vote until it has caught up",
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Commands::Bench { args } => {
            let exe = std::env::current_exe()?;
            let bench = exe.with_file_name("raftq-bench");
            let status = std::process::Command::new(&bench)
                .args(args)
                .status()
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot run {}: {error} (build it with `cargo build --workspace`)",
                        bench.display()
                    )
                })?;
            Ok(match status.code() {
                Some(0) => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
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
                        Output::Json => out(json!({"error": error.to_string(), "code": code})),
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
        Output::Json => out(value),
        Output::Text => out(text),
    }
}

/// Writes one line to standard output. When nobody reads it any more (`raftq peek q |
/// head -1`), stops at once and quietly, with 141 as a filter killed by SIGPIPE would.
fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("raftq: cannot write to standard output: {error}");
        std::process::exit(1);
    }
}

fn queue_json(queue: &pb::Queue) -> serde_json::Value {
    let options = queue.options.clone().unwrap_or_default();
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
            "dead_letter_queue": options.dead_letter_queue,
            "dead_letter_expired": options.dead_letter_expired,
            "default_ttl_ms": options.default_ttl_ms,
            "max_bytes": options.max_bytes,
            "overflow": options.overflow().as_str_name(),
            "journal": options.journal,
            "journal_retention_ms": options.journal_retention_ms,
            "journal_max_messages": options.journal_max_messages,
        },
        "stats": {
            "depth": stats.depth,
            "in_flight": stats.in_flight,
            "delayed": stats.delayed,
            "total_sent": stats.total_sent,
            "total_acked": stats.total_acked,
            "total_deliveries": stats.total_deliveries,
            "total_discarded": stats.total_discarded,
            "total_expired": stats.total_expired,
            "total_dead_lettered": stats.total_dead_lettered,
            "groups": stats.groups,
            "bytes": stats.bytes,
        },
    })
}

fn queue_text(queue: &pb::Queue) -> String {
    let stats = queue.stats.unwrap_or_default();
    format!(
        "{}  depth={} in_flight={} delayed={} sent={} acked={} dead_lettered={} expired={}",
        queue.name,
        stats.depth,
        stats.in_flight,
        stats.delayed,
        stats.total_sent,
        stats.total_acked,
        stats.total_dead_lettered,
        stats.total_expired
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
            dead_letter_queue,
            dead_letter_expired,
            default_ttl_ms,
            max_bytes,
            overflow,
            journal,
            journal_retention_ms,
            journal_max_messages,
        }) => {
            let overflow = match overflow {
                OverflowArg::Reject => pb::OverflowPolicy::Reject,
                OverflowArg::DeadLetterOldest => pb::OverflowPolicy::DeadLetterOldest,
            };
            let options = pb::QueueOptions {
                journal,
                journal_retention_ms,
                journal_max_messages,
                max_bytes,
                overflow: overflow as i32,
                dedup_window_ms,
                default_lease_ms: lease_ms,
                max_delivery_count,
                max_message_bytes,
                max_depth,
                dead_letter_queue,
                dead_letter_expired,
                default_ttl_ms,
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
            delivery,
            properties,
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
            let mut message = Message {
                body,
                headers: headers.into_iter().collect(),
                key,
                group: delivery.group,
                priority: delivery.priority,
                delay: Duration::from_millis(delivery.delay_ms),
                ttl: Duration::from_millis(delivery.ttl_ms),
                ack_queue: delivery.ack_queue,
                ack_positive: delivery.ack_positive,
                ack_negative: delivery.ack_negative,
                properties: pb::MessageProperties {
                    label: properties.label,
                    correlation_id: properties.correlation_id,
                    reply_to: properties.reply_to,
                    content_type: properties.content_type,
                },
                ..Message::default()
            };
            if delivery.time_to_reach_ms > 0 {
                message =
                    message.with_time_to_reach(Duration::from_millis(delivery.time_to_reach_ms));
            }
            let sent = client.send(&queue, message).await?;
            print(
                output,
                json!({"message_id": sent.message_id, "sequence": sent.sequence, "duplicate": sent.duplicate, "expired": sent.expired}),
                format!(
                    "sent message {} (sequence {}){}{}",
                    sent.message_id,
                    sent.sequence,
                    if sent.duplicate {
                        ", duplicate of an earlier send"
                    } else {
                        ""
                    },
                    if sent.expired {
                        "; it arrived after its time to reach the queue and expired"
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
            message_id,
            correlation_id,
        } => {
            let lease = (lease_ms > 0).then(|| Duration::from_millis(lease_ms));
            let messages = client
                .receive_selected(
                    &queue,
                    message_id,
                    &correlation_id,
                    max,
                    Duration::from_millis(wait_ms),
                    lease,
                )
                .await?;
            if messages.is_empty() && output == Output::Text {
                out("no message");
            }
            for message in messages {
                if ack {
                    client.ack(&queue, &message.receipt).await?;
                }
                print_received(output, &message, ack);
            }
        }
        Commands::Consume {
            queue,
            count,
            idle_ms,
            prefetch,
            lease_ms,
        } => {
            let options = raftq_client::ConsumeOptions {
                prefetch,
                max_messages: prefetch.min(100),
                lease: (lease_ms > 0).then(|| Duration::from_millis(lease_ms)),
            };
            let mut consumer = client.consume(&queue, options).await?;
            let mut printed = 0u64;
            while count == 0 || printed < count {
                let delivery = if idle_ms == 0 {
                    consumer.next().await?
                } else {
                    match tokio::time::timeout(Duration::from_millis(idle_ms), consumer.next())
                        .await
                    {
                        Ok(delivery) => delivery?,
                        Err(_) => break,
                    }
                };
                refused_acks(&delivery.acks)?;
                let mut receipts = Vec::new();
                for message in delivery.messages {
                    if count != 0 && printed == count {
                        // Beyond the count: handed back when the consumer closes.
                        break;
                    }
                    print_received(output, &message, true);
                    receipts.push(message.receipt);
                    printed += 1;
                }
                consumer.ack(&receipts).await?;
            }
            refused_acks(&consumer.close().await?.acks)?;
            if printed == 0 && output == Output::Text {
                out("no message");
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
        Commands::Peek {
            queue,
            max,
            after,
            message_id,
            correlation_id,
        } => {
            let messages = client
                .peek_selected(&queue, after, max, message_id, &correlation_id)
                .await?;
            if messages.is_empty() && output == Output::Text {
                out("no message");
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
                        "expires_at_ms": message.expires_at_ms,
                        "group": message.group,
                        "priority": message.priority,
                        "properties": properties_json(message.properties.as_ref()),
                    }),
                    format!(
                        "{}  seq={}  {}{}  {}",
                        message.message_id,
                        message.sequence,
                        message.state,
                        group_text(&message.group),
                        body
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
            lost_data,
        }) => print_status(
            output,
            &client
                .add_node(pb::AddNodeRequest {
                    node_id: id,
                    address: node_addr,
                    promote: !no_promote,
                    lost_data,
                    cluster_id: String::new(),
                })
                .await?,
        ),
        Commands::Cluster(ClusterCommand::RemoveNode { id }) => {
            print_status(output, &client.remove_node(id).await?)
        }
        Commands::Cluster(ClusterCommand::Shrink { to }) => {
            let status = client.cluster_status().await?;
            let mut departing: Vec<u64> = status
                .nodes
                .iter()
                .map(|node| node.node_id)
                .filter(|id| *id > to)
                .collect();
            departing.sort_unstable_by(|a, b| b.cmp(a));
            let mut status = status;
            for id in departing {
                eprintln!("removing node {id}");
                status = client.remove_node(id).await?;
            }
            print_status(output, &status)
        }
        Commands::Dlq(DlqCommand::Redrive {
            queue,
            ids,
            max,
            to,
            all,
        }) => {
            let moved = if all {
                // Bounded by what is there now, so a destination that sends messages
                // straight back cannot keep this going.
                let depth = client
                    .get_queue(&queue)
                    .await?
                    .stats
                    .map_or(0, |stats| stats.depth);
                let mut total = 0;
                for _ in 0..=depth / 1_000 {
                    let moved = client.redrive(&queue, &[], 1_000, &to).await?;
                    total += moved;
                    if moved == 0 {
                        break;
                    }
                }
                total
            } else {
                client.redrive(&queue, &ids, max, &to).await?
            };
            print(
                output,
                json!({"queue": queue, "moved": moved}),
                format!("moved {moved} messages out of {queue}"),
            );
        }
        Commands::Journal(JournalCommand::Replay {
            queue,
            to,
            after,
            max,
        }) => {
            let journal = format!("{queue}.journal");
            let to = to.unwrap_or(queue);
            let copies = client.peek(&journal, after, max).await?;
            let last = copies.last().map_or(after, |copy| copy.sequence);
            let messages: Vec<Message> = copies
                .into_iter()
                .map(|copy| {
                    let mut headers = copy.headers;
                    headers.remove("raftq-source-queue");
                    Message {
                        body: copy.body,
                        headers,
                        key: Some(format!("replay-{}", copy.message_id)),
                        priority: copy.priority,
                        properties: copy.properties.unwrap_or_default(),
                        ..Message::default()
                    }
                })
                .collect();
            let count = messages.len();
            if count > 0 {
                client.send_batch(&to, messages).await?;
            }
            print(
                output,
                json!({"journal": journal, "to": to, "replayed": count, "last_sequence": last}),
                format!(
                    "replayed {count} messages from {journal} into {to} (continue with --after {last})"
                ),
            );
        }
        Commands::Tx(TxCommand::Commit { file }) => {
            let request = read_tx_file(&file)?;
            let id = request.transaction_id.clone();
            let (acks, sends) = (request.acks.len(), request.sends.len());
            let committed = client.commit(request).await?;
            let ids: Vec<u64> = committed.sent.iter().map(|s| s.message_id).collect();
            print(
                output,
                json!({
                    "transaction_id": id,
                    "acks": acks,
                    "sent_message_ids": ids,
                    "already_committed": committed.already_committed,
                }),
                format!(
                    "committed transaction {id}: {acks} acks, {sends} sends (message ids {ids:?}){}",
                    if committed.already_committed {
                        "; it had already committed"
                    } else {
                        ""
                    }
                ),
            );
        }
        Commands::Serve(_)
        | Commands::Dev { .. }
        | Commands::Bench { .. }
        | Commands::AdoptDataDir { .. }
        | Commands::ResetDataDir { .. } => {
            unreachable!("server commands are handled by run")
        }
    }
    Ok(())
}

fn properties_json(properties: Option<&pb::MessageProperties>) -> serde_json::Value {
    let properties = properties.cloned().unwrap_or_default();
    json!({
        "label": properties.label,
        "correlation_id": properties.correlation_id,
        "reply_to": properties.reply_to,
        "content_type": properties.content_type,
    })
}

/// Prints one delivered message, as `receive` and `consume` do.
fn print_received(output: Output, message: &pb::ReceivedMessage, acked: bool) {
    let body = String::from_utf8_lossy(&message.body).to_string();
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
            "expires_at_ms": message.expires_at_ms,
            "group": message.group,
            "priority": message.priority,
            "properties": properties_json(message.properties.as_ref()),
            "acked": acked,
        }),
        format!(
            "{}  receipt={}  attempt={}{}{}  {}",
            message.message_id,
            message.receipt,
            message.attempt,
            group_text(&message.group),
            if acked { "  acked" } else { "" },
            body
        ),
    );
}

/// Fails with the first refused ack of a consume stream (a stale receipt: its lease ended
/// before the ack, and the message may be delivered again).
fn refused_acks(acks: &[(String, pb::AckResult)]) -> Result<(), raftq_client::ClientError> {
    match acks.iter().find(|(_, result)| result.code != 0) {
        Some((receipt, result)) => Err(raftq_client::ClientError::Status(tonic::Status::new(
            tonic::Code::from_i32(result.code),
            format!("ack of {receipt}: {}", result.error),
        ))),
        None => Ok(()),
    }
}

fn group_text(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!("  group={group}")
    }
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
                "rebuilding": node.rebuilding,
                "cluster_id": node.cluster_id,
            })
        })
        .collect();
    let mut text = format!(
        "cluster: {}\nleader: node {} at {}\n",
        if status.cluster_id.is_empty() {
            "(no id recorded)"
        } else {
            &status.cluster_id
        },
        status.leader_id,
        status.leader_address
    );
    for node in &status.nodes {
        text.push_str(&format!(
            "  node {} {} {}{}{} term={} last_log={} committed={} applied={} snapshot={}\n",
            node.node_id,
            node.address,
            node.role,
            if node.voter { "" } else { " (learner)" },
            if node.rebuilding {
                " (rebuilding: no vote yet)"
            } else {
                ""
            },
            node.term,
            node.last_log_index,
            node.committed_index,
            node.applied_index,
            node.snapshot_index
        ));
    }
    print(
        output,
        json!({
            "cluster_id": status.cluster_id,
            "leader_id": status.leader_id,
            "leader_address": status.leader_address,
            "nodes": nodes,
        }),
        text.trim_end().to_string(),
    );
}
