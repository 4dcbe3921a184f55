//! raftq-bench: measures raftq and puts it beside its physical ceiling (`raw`: synced
//! RocksDB with no Raft or network) and beside NATS JetStream and RabbitMQ quorum queues
//! at equal durability. It prints figures and never asserts anything: speed is reported,
//! never tested.
//!
//! `raftq-bench run` runs one scenario against one target; `raftq-bench suite` runs every
//! scenario against every target named and prints one table.

mod agent;
mod cluster;
mod driver;
mod flood;
mod groups;
mod mail;
mod nats;
mod pg;
mod rabbitmq;
mod raftq;
mod raw;
mod report;
mod scenario;
mod stats;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use crate::cluster::SpawnedCluster;
use crate::driver::Driver;
use crate::report::{BacklogFigures, Report, max_rss, print_report, print_table};
use crate::scenario::{Load, Measured, within_setup_limit};
use crate::stats::{CpuMeter, RssMonitor, processes_named};

#[derive(Parser, Debug)]
#[command(
    name = "raftq-bench",
    about = "Benchmarks raftq beside its ceiling and its peers"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// One scenario against one target.
    Run(RunArgs),
    /// Every scenario against every target named, one table at the end.
    Suite(SuiteArgs),
    /// A raftq cluster pushed past its limits: long polls, streams, large requests and a
    /// flood of tiny messages; refusals counted, peak RSS, nothing acknowledged lost.
    Flood(flood::FloodArgs),
    /// What `raftq agent` adds to a send's latency, and how fast it forwards a backlog
    /// after an outage, beside direct sends.
    Agent(agent::AgentArgs),
    /// How fast raftq-pg's relay forwards a PostgreSQL outbox, and how fast an inbox
    /// consumer handles messages with one database transaction per batch.
    Pg(pg::PgArgs),
    /// How fast the mail bridge stores mail relayed by Postfix, and delivers a queue's
    /// messages through Postfix.
    Mail(mail::MailArgs),
    /// What idle data groups cost each node (CPU, memory), and how long a node running
    /// them takes to restart.
    Groups(groups::GroupsArgs),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    Raftq,
    Raw,
    Nats,
    Rabbitmq,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Scenario {
    /// One producer, one message per request, one request at a time.
    Latency,
    /// Producers only.
    Produce,
    /// Producers and consumers (send, receive, ack).
    EndToEnd,
    /// Many queues, one producer each.
    ManyQueues,
    /// Fill a backlog, (raftq, spawned: restart a follower), then drain it.
    Backlog,
}

#[derive(Args, Debug, Clone)]
struct Targets {
    /// raftq nodes to use (comma-separated) instead of starting a cluster.
    #[arg(long, value_delimiter = ',')]
    addr: Vec<String>,
    /// The `raftq` binary used to start clusters (default: next to this program).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    /// raftq: consumers acknowledge each batch with its own call (AckBatch) before the
    /// next receive, instead of with that receive.
    #[arg(long)]
    raftq_ack_apart: bool,
    /// raftq: single sends are calls of their own instead of sharing a send stream.
    #[arg(long)]
    raftq_unary_sends: bool,
    /// raftq: consumers receive with calls (the acks of each batch with the next
    /// receive) instead of a consume stream.
    #[arg(long)]
    raftq_receive_calls: bool,
    /// raftq: nodes of the clusters the benchmark starts.
    #[arg(long, default_value_t = 3)]
    raftq_nodes: u16,
    /// raftq: data groups of the clusters the benchmark starts (`[groups] data_groups`;
    /// 0: every queue in group 1). Queues are then placed over the groups.
    #[arg(long, default_value_t = 0)]
    raftq_data_groups: u64,
    /// First port of clusters the benchmark starts.
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
    /// raftq: clusters the benchmark starts serve TLS (throwaway certificates) and the
    /// client speaks it; without it they serve plaintext (`--insecure`), as the peers do.
    #[arg(long)]
    raftq_tls: bool,
    /// raftq: the CA certificate of the `--addr` cluster, to connect with TLS.
    #[arg(long, env = "RAFTQ_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// raftq: the token to authenticate with at the `--addr` cluster.
    #[arg(long, env = "RAFTQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// NATS JetStream servers.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
    )]
    nats: String,
    /// RabbitMQ AMQP URI.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    rabbitmq: String,
    /// Where data of started clusters and of `raw` goes (deleted afterwards).
    #[arg(long, default_value = "/tmp/raftq-bench")]
    work_dir: PathBuf,
    /// `text` or `json` (one JSON document on stdout).
    #[arg(long, default_value = "text")]
    output: String,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Target::Raftq)]
    target: Target,
    #[arg(long, value_enum, default_value_t = Scenario::Produce)]
    scenario: Scenario,
    #[command(flatten)]
    targets: Targets,
    /// Body bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Producers (per queue) [default: 16; backlog: 8, as the suite runs it].
    #[arg(long)]
    producers: Option<usize>,
    /// Consumers (per queue) for end-to-end and backlog [default: 4; backlog: 8].
    #[arg(long)]
    consumers: Option<usize>,
    /// Messages per send request (1: Send, more: SendBatch) [default: 1; backlog: 100].
    #[arg(long)]
    batch: Option<usize>,
    /// Messages per receive.
    #[arg(long, default_value_t = 100)]
    receive_max: usize,
    /// Requests each producer keeps in flight [default: 1; backlog: 4].
    #[arg(long)]
    window: Option<usize>,
    /// Seconds to send for (ignored when --messages is given).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Messages to send in all (backlog: the backlog's size).
    #[arg(long)]
    messages: Option<u64>,
    /// Queues [default: 1,000 for many-queues, 1 otherwise]; producers and consumers are
    /// per queue.
    #[arg(long)]
    queues: Option<usize>,
    /// raftq only: each producer sends in its own message group.
    #[arg(long)]
    groups: bool,
    /// Messages per second across all producers (default: as fast as they can).
    #[arg(long)]
    rate: Option<f64>,
}

#[derive(Args, Debug)]
struct SuiteArgs {
    /// Targets in the order they run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "raw,raftq,nats,rabbitmq"
    )]
    targets_to_run: Vec<Target>,
    #[command(flatten)]
    targets: Targets,
    /// Seconds per timed scenario.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Size of the backlog scenario.
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Queues of the many-queues scenario.
    #[arg(long, default_value_t = 1_000)]
    queues: usize,
    /// Also write the JSON report here.
    #[arg(long)]
    json_file: Option<PathBuf>,
}

fn default_load(seconds: f64) -> Load {
    Load {
        queues: 1,
        producers: 1,
        window: 1,
        batch: 1,
        consumers: 0,
        receive_max: 100,
        size: 1024,
        groups: false,
        messages: None,
        rate: None,
        duration: Duration::from_secs_f64(seconds),
        preloaded: 0,
        drain_limit: Duration::from_secs(120),
        call_limit: CALL_LIMIT,
    }
}

/// Longest one send, receive or ack may take before its target counts as not answering.
const CALL_LIMIT: Duration = Duration::from_secs(30);

/// The suite's scenarios: the shapes docs/performance.md sets its targets for.
fn suite_plan(args: &SuiteArgs) -> Vec<(String, Scenario, Load)> {
    let base = default_load(args.seconds);
    vec![
        (
            "latency (1 producer, 1 msg/request)".into(),
            Scenario::Latency,
            base.clone(),
        ),
        (
            "produce, 64 producers x 1 msg/request".into(),
            Scenario::Produce,
            Load {
                producers: 64,
                ..base.clone()
            },
        ),
        (
            "produce, 8 producers x window 4 x batch 100".into(),
            Scenario::Produce,
            Load {
                producers: 8,
                window: 4,
                batch: 100,
                ..base.clone()
            },
        ),
        (
            "end-to-end, 8 producers x window 2 x batch 100, 8 consumers x 100".into(),
            Scenario::EndToEnd,
            Load {
                producers: 8,
                window: 2,
                batch: 100,
                consumers: 8,
                ..base.clone()
            },
        ),
        (
            "end-to-end at 5,000 msg/s (8 producers x batch 10, 8 consumers x 100)".into(),
            Scenario::EndToEnd,
            Load {
                producers: 8,
                batch: 10,
                consumers: 8,
                rate: Some(5_000.0),
                ..base.clone()
            },
        ),
        (
            format!("many queues, {} queues x 1 producer", args.queues),
            Scenario::ManyQueues,
            Load {
                queues: args.queues,
                ..base.clone()
            },
        ),
        (
            format!(
                "backlog of {} (fill: 8 x window 4 x batch 100; drain: 8 consumers x 100)",
                args.backlog
            ),
            Scenario::Backlog,
            Load {
                producers: 8,
                window: 4,
                batch: 100,
                consumers: 8,
                messages: Some(args.backlog),
                drain_limit: Duration::from_secs(600),
                ..base
            },
        ),
    ]
}

fn run_load(args: &RunArgs) -> Load {
    // A backlog is filled and drained as the suite does it unless told otherwise: with one
    // message per request, filling a million takes minutes.
    let (producers, window, batch, consumers) = match args.scenario {
        Scenario::Backlog => (8, 4, 100, 8),
        _ => (16, 1, 1, 4),
    };
    let mut load = Load {
        producers: args.producers.unwrap_or(producers),
        window: args.window.unwrap_or(window),
        batch: args.batch.unwrap_or(batch),
        consumers: args.consumers.unwrap_or(consumers),
        receive_max: args.receive_max,
        size: args.size,
        groups: args.groups,
        messages: args.messages,
        rate: args.rate,
        ..default_load(args.seconds)
    };
    match args.scenario {
        Scenario::Latency => {
            load.producers = 1;
            load.window = 1;
            load.batch = 1;
            load.consumers = 0;
        }
        Scenario::Produce => load.consumers = 0,
        Scenario::EndToEnd => load.queues = args.queues.unwrap_or(1),
        Scenario::ManyQueues => {
            load.queues = args.queues.unwrap_or(1_000);
            load.producers = 1;
            load.consumers = 0;
        }
        Scenario::Backlog => {
            load.messages = Some(args.messages.unwrap_or(1_000_000));
            load.drain_limit = Duration::from_secs(600);
        }
    }
    load
}

/// A target ready to be measured, with what it owns (a started cluster, raw's files).
struct Prepared {
    driver: Arc<dyn Driver>,
    processes: Vec<(String, u32)>,
    cluster: Option<SpawnedCluster>,
}

fn raftq_bin(targets: &Targets) -> anyhow::Result<PathBuf> {
    if let Some(bin) = &targets.raftq_bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe()?;
    let sibling = exe.with_file_name("raftq");
    anyhow::ensure!(
        sibling.exists(),
        "no raftq binary next to {}; build it (cargo build --workspace) or pass --raftq-bin",
        exe.display()
    );
    Ok(sibling)
}

impl Targets {
    fn raftq_options(&self) -> raftq::Options {
        raftq::Options {
            ack_apart: self.raftq_ack_apart,
            unary_sends: self.raftq_unary_sends,
            receive_calls: self.raftq_receive_calls,
        }
    }
}

async fn prepare(target: Target, targets: &Targets) -> anyhow::Result<Prepared> {
    Ok(match target {
        Target::Raftq if !targets.addr.is_empty() => Prepared {
            driver: Arc::new(raftq::Raftq::connect(
                &targets.addr,
                targets.raftq_options(),
                (
                    match &targets.ca_cert {
                        Some(ca) => raftq_client::Transport::Tls(
                            raftq_client::ClientTls::from_files(ca, None)?.connector(),
                        ),
                        None => raftq_client::Transport::Plaintext,
                    },
                    targets.token.clone(),
                ),
            )?),
            // Server processes only: not `raftq dev` or a `raftq bench` wrapper.
            processes: processes_named("raftq", Some("serve")),
            cluster: None,
        },
        Target::Raftq => {
            let groups = targets.raftq_data_groups;
            let env = vec![("RAFTQ_GROUPS__DATA_GROUPS".to_string(), groups.to_string())];
            let cluster = SpawnedCluster::start_with(
                &raftq_bin(targets)?,
                &targets.work_dir,
                targets.raftq_nodes,
                targets.base_port,
                targets.raftq_tls,
                env,
            )
            .await?;
            if groups > 0 {
                // Every group on 3 nodes (all, in a smaller cluster).
                let replicas = groups as usize * usize::from(targets.raftq_nodes.min(3));
                let clients = groups::node_clients(&cluster)?;
                groups::wait_formed(&clients, replicas).await?;
            }
            Prepared {
                driver: Arc::new(raftq::Raftq::connect(
                    &cluster.addresses(),
                    targets.raftq_options(),
                    cluster.access(),
                )?),
                processes: cluster.processes(),
                cluster: Some(cluster),
            }
        }
        Target::Raw => Prepared {
            driver: Arc::new(raw::Raw::open(&targets.work_dir)?),
            processes: vec![("raftq-bench".into(), std::process::id())],
            cluster: None,
        },
        Target::Nats => Prepared {
            driver: Arc::new(within_setup_limit(nats::Nats::connect(&targets.nats)).await?),
            processes: processes_named("nats-server", None),
            cluster: None,
        },
        Target::Rabbitmq => Prepared {
            driver: Arc::new(
                within_setup_limit(rabbitmq::RabbitMq::connect(&targets.rabbitmq)).await?,
            ),
            processes: processes_named("beam.smp", None),
            cluster: None,
        },
    })
}

async fn measure(
    target: Target,
    title: &str,
    scenario: Scenario,
    load: &Load,
    prepared: &mut Prepared,
) -> anyhow::Result<Report> {
    let label = format!("[{target:?} {scenario:?}]").to_lowercase();
    let queues: Vec<String> = (0..load.queues).map(|i| format!("bench-{i}")).collect();
    for queue in &queues {
        scenario::within_setup_limit(prepared.driver.create_queue(queue)).await?;
    }
    let report = if scenario == Scenario::Backlog {
        let fill_load = Load {
            consumers: 0,
            ..load.clone()
        };
        let monitor = RssMonitor::start(prepared.processes.clone());
        let fill = scenario::run(
            prepared.driver.clone(),
            &format!("{label} fill"),
            &queues,
            &fill_load,
        )
        .await?;
        let fill_rss = monitor.finish().await;
        let mut restart_ready_seconds = None;
        if let Some(cluster) = &mut prepared.cluster {
            let follower = cluster.follower().await?;
            eprintln!("{label} restarting node {} with the backlog", follower + 1);
            restart_ready_seconds = Some(cluster.restart(follower).await?.as_secs_f64());
            prepared.processes = cluster.processes();
        }
        let drain_load = Load {
            producers: 0,
            messages: Some(0),
            preloaded: fill.sent,
            ..load.clone()
        };
        let monitor = RssMonitor::start(prepared.processes.clone());
        let drain = scenario::run(
            prepared.driver.clone(),
            &format!("{label} drain"),
            &queues,
            &drain_load,
        )
        .await?;
        let drain_rss = monitor.finish().await;
        let mut peaks = fill_rss.clone();
        for (name, mib) in &drain_rss {
            let peak = peaks.entry(name.clone()).or_insert(0.0);
            *peak = peak.max(*mib);
        }
        let backlog = BacklogFigures {
            fill_msgs_per_s: fill.produce_msgs_per_s,
            drain_msgs_per_s: drain.consume_msgs_per_s,
            peak_rss_fill_mib: max_rss(&fill_rss),
            peak_rss_drain_mib: max_rss(&drain_rss),
            restart_ready_seconds,
        };
        let measured = Measured {
            received: drain.received,
            consume_seconds: drain.consume_seconds,
            consume_msgs_per_s: drain.consume_msgs_per_s,
            send_to_receive: drain.send_to_receive,
            drain_incomplete: drain.drain_incomplete,
            errors: fill.errors + drain.errors,
            ..fill
        };
        Report {
            target,
            scenario: title.to_string(),
            load: load.clone(),
            measured,
            peak_rss_mib: peaks,
            cpu_percent: BTreeMap::new(),
            backlog: Some(backlog),
            error: None,
        }
    } else {
        let monitor = RssMonitor::start(prepared.processes.clone());
        let cpu = CpuMeter::start(&prepared.processes);
        let measured = scenario::run(prepared.driver.clone(), &label, &queues, load).await?;
        Report {
            target,
            scenario: title.to_string(),
            load: load.clone(),
            measured,
            peak_rss_mib: monitor.finish().await,
            cpu_percent: cpu.finish(),
            backlog: None,
            error: None,
        }
    };
    for queue in &queues {
        if let Err(error) = scenario::within_setup_limit(prepared.driver.delete_queue(queue)).await
        {
            eprintln!("{label} deleting {queue}: {error:#}");
        }
    }
    Ok(report)
}

async fn finish(prepared: Prepared) {
    if let Some(cluster) = prepared.cluster {
        cluster.stop().await;
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let load = run_load(&args);
    let mut prepared = prepare(args.target, &args.targets).await?;
    let title = format!("{:?}", args.scenario).to_lowercase();
    let report = measure(args.target, &title, args.scenario, &load, &mut prepared).await;
    finish(prepared).await;
    let report = report?;
    if args.targets.output == "json" {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn suite(args: SuiteArgs) -> anyhow::Result<()> {
    let plan = suite_plan(&args);
    let mut reports = Vec::new();
    for target in &args.targets_to_run {
        for (title, scenario, load) in &plan {
            // A fresh raftq cluster (and raw store) per scenario: every one starts empty.
            // A scenario that fails is reported as such and the suite goes on.
            let report = match prepare(*target, &args.targets).await {
                Ok(mut prepared) => {
                    let report = measure(*target, title, *scenario, load, &mut prepared).await;
                    finish(prepared).await;
                    report
                }
                Err(error) => Err(error),
            };
            let report = report.unwrap_or_else(|error| {
                eprintln!("{target:?} / {title}: failed: {error:#}");
                Report {
                    target: *target,
                    scenario: title.clone(),
                    load: load.clone(),
                    measured: Measured::default(),
                    peak_rss_mib: BTreeMap::new(),
                    cpu_percent: BTreeMap::new(),
                    backlog: None,
                    error: Some(format!("{error:#}")),
                }
            });
            if args.targets.output != "json" {
                print_report(&report);
            }
            reports.push(report);
        }
    }
    let failed = reports
        .iter()
        .filter(|report| report.error.is_some())
        .count();
    let json = serde_json::to_string_pretty(&reports)?;
    if let Some(path) = &args.json_file {
        std::fs::write(path, &json)?;
    }
    if args.targets.output == "json" {
        println!("{json}");
    } else {
        print_table(&reports);
    }
    anyhow::ensure!(failed == 0, "{failed} scenario(s) failed");
    Ok(())
}

fn clean_work_dir(path: &Path) {
    // Leftovers of an interrupted run; every run makes its own subdirectory.
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Mode::Run(args) => {
            clean_work_dir(&args.targets.work_dir);
            run(args).await
        }
        Mode::Suite(args) => {
            clean_work_dir(&args.targets.work_dir);
            suite(args).await
        }
        Mode::Flood(args) => flood::run(args).await,
        Mode::Agent(args) => agent::run(args).await,
        Mode::Pg(args) => pg::run(args).await,
        Mode::Mail(args) => mail::run(args).await,
        Mode::Groups(args) => groups::run(args).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Mode, run_load};

    fn load_of(command: &str) -> super::Load {
        let cli = Cli::try_parse_from(command.split_whitespace()).expect("parses");
        match cli.command {
            Mode::Run(args) => run_load(&args),
            other => panic!("not a run: {other:?}"),
        }
    }

    /// Producers, window, batch, consumers.
    fn shape(load: &super::Load) -> (usize, usize, usize, usize) {
        (load.producers, load.window, load.batch, load.consumers)
    }

    #[test]
    fn a_backlog_run_fills_and_drains_as_the_suite_does_unless_told_otherwise() {
        let load = load_of("raftq-bench run --scenario backlog");
        assert_eq!(shape(&load), (8, 4, 100, 8));
        assert_eq!(load.messages, Some(1_000_000));
        let load = load_of("raftq-bench run --scenario backlog --producers 2 --batch 1");
        assert_eq!(shape(&load), (2, 4, 1, 8));
    }

    #[test]
    fn other_runs_default_to_sixteen_producers_of_one_message() {
        let load = load_of("raftq-bench run --scenario produce");
        assert_eq!(shape(&load), (16, 1, 1, 0));
        let load = load_of("raftq-bench run --scenario end-to-end --window 2");
        assert_eq!(shape(&load), (16, 2, 1, 4));
    }
}
