//! raftq-chaos: runs a workload against a real raftq cluster while a seeded nemesis injects
//! faults, records every operation in a history, drains the queue after healing, and
//! checks the history: lost = 0, duplicates = 0, phantoms = 0, order kept.
//!
//! It must not depend on server internals: it drives `raftq` processes and the client only.

mod agent;
mod checker;
mod consumers;
mod damage;
mod history;
mod nemesis;
mod outbox_producer;
mod pg;
mod recorder;
mod timeline;
mod unavailability;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "raftq-chaos",
    about = "Fault injection with a recorded history and a checker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a cluster, run workload and nemesis, drain, check.
    Run(RunArgs),
    /// Check an existing history file (and, with `--timeline`, draw its timeline again).
    Check {
        history: PathBuf,
        /// Also write the run's timeline (SVG) here.
        #[arg(long)]
        timeline: Option<PathBuf>,
    },
    /// Remove network namespaces, bridges and power-loss file system mounts left by runs
    /// that were killed (only while no other run is going on).
    Cleanup,
    /// Run the workload against a cluster started elsewhere (containers, say) until
    /// `--stop-file` exists or `--duration` passes, then drain and check.
    Load(LoadArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// gRPC addresses of the cluster (comma-separated); the client follows the leader.
    #[arg(long, value_delimiter = ',', required = true)]
    addr: Vec<String>,
    /// Stop producing once this file exists.
    #[arg(long)]
    stop_file: Option<PathBuf>,
    /// The CA certificate (PEM) the cluster's certificates chain to; without it,
    /// plaintext (a cluster started with --insecure).
    #[arg(long, env = "RAFTQ_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// A client certificate (PEM) to present, with --key.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The bearer token to authenticate with (needs send, receive and manage on the
    /// workload's queues).
    #[arg(long, env = "RAFTQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Stop producing after this long at the latest, e.g. 10m.
    #[arg(long, default_value = "30m", value_parser = parse_duration)]
    duration: Duration,
    #[command(flatten)]
    mix: workload::Mix,
    /// Where the history, summary and timeline go.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Namespaces when this process may create them (root), else loopback.
    Auto,
    /// Every node in its own network namespace with its own address; needed by the network
    /// faults.
    Netns,
    /// Every node on loopback ports of this host; process and clock faults only.
    Loopback,
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Seed of the fault schedule; the same seed gives the same schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Length of the faulty phase, e.g. 120s or 2m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Fault kinds to draw from (comma-separated), or `all`: kill-leader, kill-follower,
    /// kill-random, pause-leader, pause-follower, restart-all, clock-ahead, clock-behind (the
    /// clock faults preload libfaketime into the node), wipe-disk, corrupt-minority,
    /// power-loss-one and power-loss-all (as root, with the data directories on the power-loss file system),
    /// kill-agent (with agent producers), kill-relay and crash-inbox (with PostgreSQL
    /// producers), and with `--network netns`
    /// partition-leader, partition-halves, partition-bridge, loss-oneway, latency,
    /// cut-off-clients.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Where the nodes run: own network namespaces (needed for network faults) or loopback.
    #[arg(long, value_enum, default_value_t = NetworkMode::Auto)]
    network: NetworkMode,
    /// How closely faults follow each other: normal (held 1–5 s, then 2–5 s of quiet) or
    /// fast (held 1–3 s, then 1–2 s of quiet).
    #[arg(long, value_enum, default_value_t = nemesis::Pace::Normal)]
    pace: nemesis::Pace,
    /// Data groups the cluster runs (`[groups] data_groups`): the queues are spread over
    /// them, the transactional movers' two queues placed together. Producer sessions
    /// are kept in group 1 only, so the outbox, agent and PostgreSQL producers need 0.
    #[arg(long, default_value_t = 0)]
    data_groups: u64,
    #[command(flatten)]
    mix: workload::Mix,
    /// Where the history, summary and timeline go.
    #[arg(long, default_value = "chaos-out")]
    out: PathBuf,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s or 2m"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(value)),
        "m" => Ok(Duration::from_secs(value * 60)),
        "ms" => Ok(Duration::from_millis(value)),
        _ => Err(format!("unknown unit in {text:?} (use ms, s or m)")),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { history, timeline } => {
            let text = std::fs::read_to_string(&history)
                .with_context(|| format!("reading {}", history.display()))?;
            let events = history::from_jsonl(&text)?;
            let end = producing_end_ms(&events);
            let verdict = checker::check(&events, end);
            if let Some(path) = timeline {
                let run_end_ms = events.iter().map(|event| event.end_ms).max().unwrap_or(0);
                std::fs::write(&path, timeline::render(&events, run_end_ms))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", serde_json::to_string_pretty(&verdict)?);
            print!("{}", verdict.unavailability_table());
            Ok(exit(verdict.valid))
        }
        Command::Cleanup => {
            let removed = raftq_tests::netns::cleanup_stale();
            println!("removed {removed} namespaces and bridges");
            let unmounted = raftq_tests::powerloss::cleanup_stale();
            println!("unmounted {unmounted} power-loss file systems");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            let verdict = workload::run(&args).await?;
            Ok(exit(verdict.valid))
        }
        Command::Load(args) => {
            let verdict = workload::load(&args).await?;
            Ok(exit(verdict.valid))
        }
    }
}

/// When the producers stopped, as far as a history shows it: the end of the last send
/// (the run measures availability until its producers have returned, and the drain after
/// that has no sends). A history without sends ends with its last event.
fn producing_end_ms(events: &[history::Event]) -> u64 {
    let last = |sends_only: bool| {
        events
            .iter()
            .filter(|e| !sends_only || matches!(e.op, history::Op::Send { .. }))
            .map(|e| e.end_ms)
            .max()
    };
    last(true).or_else(|| last(false)).unwrap_or(0)
}

fn exit(valid: bool) -> std::process::ExitCode {
    if valid {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use history::{Event, Op, Outcome};

    fn event(op: Op, end_ms: u64) -> Event {
        Event {
            process: "p1".into(),
            op,
            start_ms: end_ms.saturating_sub(5),
            end_ms,
            outcome: Outcome::Ok,
            error: String::new(),
        }
    }

    #[test]
    fn a_history_stops_producing_with_its_last_send_not_its_drain() {
        let send = Op::Send { value: "a".into() };
        let ack = Op::Ack { value: "a".into() };
        let events = [event(send, 1_000), event(ack.clone(), 9_000)];
        assert_eq!(producing_end_ms(&events), 1_000);
        assert_eq!(producing_end_ms(&[event(ack, 9_000)]), 9_000);
        assert_eq!(producing_end_ms(&[]), 0);
    }
}
