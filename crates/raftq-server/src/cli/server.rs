//! Server commands: `serve`, `dev`, `adopt-data-dir`, `reset-data-dir` and `bench`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::{AuthFlags, FlagOverrides, ServeConfig, TlsFlags};

#[derive(Subcommand, Debug)]
pub(super) enum ServerCommand {
    /// Run one node.
    Serve(Box<ServeArgs>),
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
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    node_id: Option<u64>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Address clients use to reach --listen (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Internal port: Raft, membership changes and calls forwarded between nodes.
    #[arg(long)]
    internal_listen: Option<std::net::SocketAddr>,
    /// Address other nodes use to reach --internal-listen (default: --internal-listen).
    #[arg(long)]
    internal_advertise: Option<String>,
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Initial voters: ID=HOST:PORT,... (their internal addresses)
    #[arg(long)]
    peers: Option<String>,
    /// Join an existing cluster through this member's internal address.
    #[arg(long)]
    join: Option<String>,
    #[arg(long)]
    log_format: Option<String>,
    /// Serve both ports in plaintext, without TLS (never where others can reach them).
    #[arg(long)]
    insecure: bool,
    /// This node's certificate chain (PEM); `[tls] cert`.
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM); `[tls] key`.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// The cluster CA (PEM); `[tls] ca`.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The CA of client certificates on the public port (PEM); `[tls] client_ca`.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// A file holding the bootstrap admin token; `[auth] admin_token_file`.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
}

pub(super) async fn run(command: ServerCommand) -> anyhow::Result<ExitCode> {
    match command {
        ServerCommand::Serve(args) => serve(*args).await,
        ServerCommand::Dev {
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
        ServerCommand::AdoptDataDir { data_dir, node_id } => {
            crate::data_dir::adopt(&data_dir, node_id)?;
            println!(
                "{} now belongs to node {node_id}, and its log may vote",
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::ResetDataDir { data_dir } => {
            crate::data_dir::reset(&data_dir)?;
            println!(
                "{} is empty: start the node again with its node id; it rebuilds from its \
                 peers and grants no vote until it has caught up",
                data_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        ServerCommand::Bench { args } => bench(args),
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = FlagOverrides {
        node_id: args.node_id,
        listen: args.listen,
        advertise: args.advertise,
        internal_listen: args.internal_listen,
        internal_advertise: args.internal_advertise,
        http_listen: args.http_listen,
        data_dir: args.data_dir,
        peers: args.peers,
        join: args.join,
        log_format: args.log_format,
        insecure: args.insecure.then_some(true),
        tls: TlsFlags {
            cert: args.tls_cert,
            key: args.tls_key,
            ca: args.tls_ca,
            client_ca: args.tls_client_ca,
        },
        auth: AuthFlags {
            admin_token_file: args.admin_token_file,
        },
    };
    let config = ServeConfig::load(args.config.as_deref(), flags)?;
    init_logging(&config.log_format, false);
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    crate::serve::run(config, prometheus).await?;
    Ok(ExitCode::SUCCESS)
}

/// Logs at `RUST_LOG`'s levels (default info) in `format` (`json` or text): a node to
/// stdout, a helper process (agent, relay, bridge) to stderr, leaving its stdout to what it
/// prints for people.
pub(super) fn init_logging(format: &str, to_stderr: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    use std::io::IsTerminal;
    let terminal = if to_stderr {
        std::io::stderr().is_terminal()
    } else {
        std::io::stdout().is_terminal()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(terminal);
    let _ = match (format == "json", to_stderr) {
        (true, false) => builder.json().try_init(),
        (true, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (false, false) => builder.try_init(),
        (false, true) => builder.with_writer(std::io::stderr).try_init(),
    };
}

/// Runs `raftq-bench` from next to this binary with the arguments given.
fn bench(args: Vec<String>) -> anyhow::Result<ExitCode> {
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
