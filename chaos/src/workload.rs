//! The run: cluster, producers and consumers recording a history, the nemesis, healing,
//! a final drain, and the checker's verdict with the files a person can look at.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::ValueEnum as _;
use raftq_client::{Client, ClientConfig, ClientError, ClientTls, Code, Message, Transport, pb};
use raftq_tests::{Cluster, ClusterOptions};

use crate::agent::AgentProcess;
use crate::checker::{self, Verdict};
use crate::consumers::{consume, consume_stream, mover};
use crate::history::{Op, Outcome};
use crate::nemesis::Helpers;
use crate::nemesis::{self, FaultKind};
use crate::outbox_producer::Outboxes;
use crate::pg::{PG_QUEUE, PgWorkload};
pub(crate) use crate::recorder::Recorder;
use crate::timeline;
use crate::{LoadArgs, NetworkMode, RunArgs};

const QUEUE: &str = "chaos";
/// Grouped producers send here, each with its own message group.
const GROUP_QUEUE: &str = "chaos-groups";
/// Transactional movers take values from here and, in one commit each, ack them and send
/// `out:<value>` to `TX_OUT`.
pub(crate) const TX_IN: &str = "chaos-tx-in";
pub(crate) const TX_OUT: &str = "chaos-tx-out";
const QUEUES: [&str; 4] = [QUEUE, GROUP_QUEUE, TX_IN, TX_OUT];
/// The final drain, once every fault is healed, goes on while the queues keep shrinking:
/// it gives up when they have not shrunk for `DRAIN_STALL`, and after `DRAIN_DEADLINE` in
/// any case.
const DRAIN_DEADLINE: Duration = Duration::from_secs(900);
const DRAIN_STALL: Duration = Duration::from_secs(60);
/// How long the outboxes (and the agent) get to forward what they hold once the producers
/// stop.
const OUTBOX_FLUSH_DEADLINE: Duration = Duration::from_secs(300);
/// A grouped producer spreads its values over this many message groups of its own, so
/// grouped consumers keep up (one message of a group in flight at a time).
const GROUPS_PER_PRODUCER: u64 = 8;

pub(crate) fn outcome_of(error: &ClientError) -> Outcome {
    match error {
        ClientError::RetriesExhausted { .. } => Outcome::Unknown,
        _ => Outcome::Failed,
    }
}

/// A client of the workload, connecting and authenticating as `access` says.
fn workload_client(addresses: &[String], access: &ClientConfig) -> anyhow::Result<Client> {
    Ok(Client::new(
        addresses,
        ClientConfig {
            retry_deadline: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(2),
            ..access.clone()
        },
    )?)
}

/// Sends values one after another to `queue`; a grouped producer puts them all in the
/// message group named after itself.
async fn produce(
    client: Client,
    recorder: Recorder,
    name: String,
    queue: &'static str,
    grouped: bool,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let value = format!("{name}-{n:07}");
        n += 1;
        let start = recorder.now_ms();
        let mut message = Message::new(value.clone());
        if grouped {
            message = message.with_group(format!("{name}.{}", n % GROUPS_PER_PRODUCER));
        }
        let result = client.send(queue, message).await;
        let (outcome, error) = match &result {
            Ok(_) => (Outcome::Ok, String::new()),
            Err(error) => (outcome_of(error), error.to_string()),
        };
        recorder.record(&name, Op::Send { value }, start, outcome, error);
    }
}

pub async fn run(args: &RunArgs) -> anyhow::Result<Verdict> {
    let namespaces = match args.network {
        NetworkMode::Netns => {
            anyhow::ensure!(
                raftq_tests::netns::available(),
                "--network netns needs root, iproute2 and iptables"
            );
            true
        }
        NetworkMode::Loopback => false,
        NetworkMode::Auto => raftq_tests::netns::available(),
    };
    let faults = if args.faults == "all" {
        nemesis::ALL_FAULTS
            .split(',')
            .filter(|name| namespaces || !FaultKind::parse(name).is_some_and(|k| k.needs_network()))
            .filter(|name| {
                raftq_tests::powerloss::available()
                    || !FaultKind::parse(name).is_some_and(|k| k.needs_power_loss_disks())
            })
            .collect::<Vec<_>>()
            .join(",")
    } else {
        args.faults.clone()
    };
    let kinds: Vec<FaultKind> = faults
        .split(',')
        .map(|name| FaultKind::parse(name).with_context(|| format!("unknown fault kind {name:?}")))
        .collect::<anyhow::Result<_>>()?;
    if let Some(kind) = kinds.iter().find(|kind| kind.needs_network())
        && !namespaces
    {
        anyhow::bail!(
            "{} needs the nodes in network namespaces (--network netns, as root)",
            kind.name()
        );
    }
    let power_loss_disks = kinds.iter().any(|kind| kind.needs_power_loss_disks());
    if power_loss_disks && !raftq_tests::powerloss::available() {
        anyhow::bail!("power-loss faults need root and /dev/fuse (the power-loss file system)");
    }
    if args.data_groups > 0 && args.mix.uses_producer_sessions() {
        anyhow::bail!(
            "--data-groups needs --outbox-producers 0 --agent-producers 0 --pg-producers 0: \
             producer sessions are kept in group 1 only"
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let reproduce = format!(
        "chaos/run --nodes {} --seed {} --duration {}s --network {} --pace {} --faults {} --data-groups {} {}",
        args.nodes,
        args.seed,
        args.duration.as_secs(),
        if namespaces { "netns" } else { "loopback" },
        args.pace
            .to_possible_value()
            .expect("no skipped variants")
            .get_name(),
        faults,
        args.data_groups,
        args.mix.flags()
    );
    println!("raftq-chaos: {reproduce}");
    let mut cluster = Cluster::start_with(
        args.nodes,
        ClusterOptions {
            network_namespaces: namespaces,
            power_loss_disks,
            env: vec![(
                "RAFTQ_GROUPS__DATA_GROUPS".into(),
                args.data_groups.to_string(),
            )],
            ..ClusterOptions::default()
        },
    )
    .await;
    if args.data_groups > 0 {
        wait_for_data_groups(&cluster, args.data_groups, args.nodes).await?;
    }
    let mut workload = Workload::start(
        cluster_addresses(&cluster),
        &args.mix,
        raftq_tests::test_client_config(),
        true,
    )
    .await?;
    let recorder = workload.recorder.clone();
    let plan = nemesis::schedule(args.seed, &kinds, args.duration, args.pace);
    for planned in plan {
        if recorder.elapsed() >= args.duration {
            break;
        }
        // Quiet time first, so the workload is running before the first fault.
        tokio::time::sleep(planned.rest).await;
        let nodes = nemesis::targets(&cluster, &planned).await;
        let on_helper = planned.kind.on_helper() && workload.helpers.can_take(planned.kind);
        if nodes.is_empty() && !on_helper {
            continue;
        }
        let start = recorder.now_ms();
        println!(
            "  {:>7.1}s {} on {:?} for {:?}",
            start as f64 / 1000.0,
            planned.kind.name(),
            nodes,
            planned.hold
        );
        let detail = nemesis::inject(&mut cluster, &mut workload.helpers, &planned, &nodes).await?;
        if !detail.is_empty() {
            println!("            {detail}");
        }
        let majority_down = planned.kind.majority_down(&nodes, args.nodes);
        recorder.record(
            "nemesis",
            Op::Fault {
                kind: planned.kind.name().to_string(),
                nodes,
                majority_down,
                detail,
            },
            start,
            Outcome::Ok,
            String::new(),
        );
        nemesis::wait_for_leader(&cluster, Duration::from_secs(30)).await;
    }

    let summary = serde_json::json!({
        "command": reproduce,
        "seed": args.seed,
        "nodes": args.nodes,
        "duration_s": args.duration.as_secs(),
    });
    workload.finish(&args.out, &reproduce, summary).await
}

/// Runs the workload against a cluster someone else drives (see `LoadArgs`).
pub async fn load(args: &LoadArgs) -> anyhow::Result<Verdict> {
    let reproduce = format!(
        "raftq-chaos load --addr {} {}",
        args.addr.join(","),
        args.mix.flags()
    );
    println!("raftq-chaos: {reproduce}");
    let transport = match &args.ca_cert {
        Some(ca) => Transport::Tls(
            ClientTls::from_files(ca, args.cert.as_deref().zip(args.key.as_deref()))?.connector(),
        ),
        None => Transport::Plaintext,
    };
    let access = ClientConfig {
        transport,
        token: args.token.clone(),
        ..ClientConfig::default()
    };
    // No agent or PostgreSQL here: they would need the raftq binary and the cluster's
    // credentials beside this process.
    let workload = Workload::start(args.addr.clone(), &args.mix, access, false).await?;
    let deadline = tokio::time::Instant::now() + args.duration;
    println!("raftq-chaos: load running");
    while tokio::time::Instant::now() < deadline
        && !args.stop_file.as_ref().is_some_and(|file| file.exists())
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let summary = serde_json::json!({ "command": reproduce });
    workload.finish(&args.out, &reproduce, summary).await
}

/// What the workload runs: how many of each kind of process.
#[derive(clap::Args, Debug, Clone)]
pub struct Mix {
    #[arg(long, default_value_t = 3)]
    pub producers: usize,
    #[arg(long, default_value_t = 3)]
    pub consumers: usize,
    /// Consumers of the first queue on consume streams ("s*"): acks go on the stream.
    #[arg(long, default_value_t = 1)]
    pub stream_consumers: usize,
    /// Producers that send to a second queue, each in its own message group (order and
    /// one-in-flight per group are checked).
    #[arg(long, default_value_t = 2)]
    pub grouped_producers: usize,
    #[arg(long, default_value_t = 2)]
    pub grouped_consumers: usize,
    /// Transactional movers: a producer `t0` sends to a third queue, movers `m*` move each
    /// value to a fourth queue in transactions (ack + send in one commit), a consumer
    /// `tc0` consumes the result. 0 leaves transactions out.
    #[arg(long, default_value_t = 2)]
    pub tx_movers: usize,
    /// Producers that send to the first queue through the client's durable outbox ("o*"):
    /// acknowledged once on its disk, forwarded exactly once under the faults.
    #[arg(long, default_value_t = 1)]
    pub outbox_producers: usize,
    /// Producers that send to the first queue with plain gRPC calls through a `raftq
    /// agent` process ("a*"), which keeps each send on its disk and forwards it (`run`
    /// only: `load` starts no agent).
    #[arg(long, default_value_t = 1)]
    pub agent_producers: usize,
    /// Producers that write values into a PostgreSQL outbox ("d*"), forwarded by `raftq
    /// pg-relay` processes to a fifth queue and consumed by inbox consumers that record
    /// each in a table (`run` only; 0 leaves PostgreSQL out).
    #[arg(long, default_value_t = 0)]
    pub pg_producers: usize,
    /// Inbox consumers ("i*") of the PostgreSQL part.
    #[arg(long, default_value_t = 2)]
    pub pg_consumers: usize,
}

/// Waits until each of the `groups` data groups runs on its replicas (3 nodes, or all in
/// a smaller cluster) with a leader, so that the queues are placed in them.
async fn wait_for_data_groups(cluster: &Cluster, groups: u64, nodes: u64) -> anyhow::Result<()> {
    let expected = groups * nodes.min(3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut replicas = 0;
        let mut led = true;
        for node in &cluster.nodes {
            if let Ok(status) = node.client().node_info().await {
                replicas += status.replicas.len() as u64;
                led &= status.replicas.iter().all(|replica| replica.leader_id != 0);
            }
        }
        if replicas == expected && led {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the {groups} data groups did not form within 120 s ({replicas} of {expected} replicas)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Mix {
    /// Whether the mix has producers that number their sends (producer sessions).
    pub fn uses_producer_sessions(&self) -> bool {
        self.outbox_producers + self.agent_producers + self.pg_producers > 0
    }

    /// The flags that give this mix, for a command line that reproduces a run.
    pub fn flags(&self) -> String {
        format!(
            "--producers {} --consumers {} --stream-consumers {} --grouped-producers {} --grouped-consumers {} --tx-movers {} --outbox-producers {} --agent-producers {} --pg-producers {} --pg-consumers {}",
            self.producers,
            self.consumers,
            self.stream_consumers,
            self.grouped_producers,
            self.grouped_consumers,
            self.tx_movers,
            self.outbox_producers,
            self.agent_producers,
            self.pg_producers,
            self.pg_consumers
        )
    }
}

fn cluster_addresses(cluster: &Cluster) -> Vec<String> {
    cluster.nodes.iter().map(|node| node.grpc.clone()).collect()
}

/// Producers and consumers running against a cluster, recording every operation.
pub struct Workload {
    addresses: Vec<String>,
    client: Client,
    recorder: Recorder,
    stop_producers: Arc<AtomicBool>,
    stop_consumers: Arc<AtomicBool>,
    producers: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<tokio::task::JoinHandle<()>>,
    outboxes: Outboxes,
    /// The agent and the PostgreSQL part, when they run.
    pub helpers: Helpers,
}

impl Workload {
    /// Creates the queues (if missing) and starts every process of `mix` (the agent and
    /// PostgreSQL parts only `with_helpers`).
    pub async fn start(
        addresses: Vec<String>,
        mix: &Mix,
        access: ClientConfig,
        with_helpers: bool,
    ) -> anyhow::Result<Workload> {
        let client = workload_client(&addresses, &access)?;
        for queue in QUEUES {
            // A transaction stays within one Raft group: the movers' queues go together.
            let beside = if queue == TX_OUT { TX_IN } else { "" };
            let options = pb::QueueOptions {
                default_lease_ms: 5_000,
                dedup_window_ms: 3_600_000,
                ..pb::QueueOptions::default()
            };
            match client.create_queue_beside(queue, options, beside).await {
                Ok(_) => {}
                Err(error) if error.code() == Some(Code::AlreadyExists) => {}
                Err(error) => return Err(error.into()),
            }
            let group = client.get_queue(queue).await?.raft_group;
            println!("raftq-chaos: queue {queue} in Raft group {group}");
        }
        let recorder = Recorder::new();
        let stop_producers = Arc::new(AtomicBool::new(false));
        let stop_consumers = Arc::new(AtomicBool::new(false));
        // Plain producers ("p*") and grouped ones ("g*", one message group each); consumers
        // of each queue ("c*", "gc*").
        let plain = (0..mix.producers).map(|i| (format!("p{i}"), QUEUE, false));
        let grouped = (0..mix.grouped_producers).map(|i| (format!("g{i}"), GROUP_QUEUE, true));
        let transactional = (0..mix.tx_movers.min(1)).map(|i| (format!("t{i}"), TX_IN, false));
        let producers: Vec<_> = plain
            .chain(grouped)
            .chain(transactional)
            .map(|(name, queue, grouped)| {
                let task = produce(
                    workload_client(&addresses, &access)?,
                    recorder.clone(),
                    name,
                    queue,
                    grouped,
                    stop_producers.clone(),
                );
                Ok(tokio::spawn(task))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut producers = producers;
        let mut outboxes = Outboxes::new()?;
        for i in 0..mix.outbox_producers {
            let name = format!("o{i}");
            let outbox = outboxes.open(workload_client(&addresses, &access)?, &name)?;
            let task = crate::outbox_producer::produce(
                outbox,
                recorder.clone(),
                name,
                QUEUE,
                stop_producers.clone(),
            );
            producers.push(tokio::spawn(task));
        }
        let agent = if with_helpers && mix.agent_producers > 0 {
            Some(AgentProcess::start(addresses.clone()).await?)
        } else {
            None
        };
        if let Some(agent) = &agent {
            for i in 0..mix.agent_producers {
                let task = produce(
                    agent.client()?,
                    recorder.clone(),
                    format!("a{i}"),
                    QUEUE,
                    false,
                    stop_producers.clone(),
                );
                producers.push(tokio::spawn(task));
            }
        }
        let pg = if with_helpers && mix.pg_producers > 0 {
            let (pg, tasks) = PgWorkload::start(
                addresses.clone(),
                workload_client(&addresses, &access)?,
                recorder.clone(),
                mix.pg_producers,
                mix.pg_consumers,
                stop_producers.clone(),
                stop_consumers.clone(),
            )
            .await?;
            producers.extend(tasks);
            Some(pg)
        } else {
            None
        };
        let plain = (0..mix.consumers).map(|i| (format!("c{i}"), QUEUE));
        let grouped = (0..mix.grouped_consumers).map(|i| (format!("gc{i}"), GROUP_QUEUE));
        let moved = (0..mix.tx_movers.min(1)).map(|i| (format!("tc{i}"), TX_OUT));
        let mut consumers: Vec<_> = plain
            .chain(grouped)
            .chain(moved)
            .map(|(name, queue)| {
                let task = consume(
                    workload_client(&addresses, &access)?,
                    recorder.clone(),
                    name,
                    queue,
                    stop_consumers.clone(),
                );
                Ok(tokio::spawn(task))
            })
            .collect::<anyhow::Result<_>>()?;
        for i in 0..mix.stream_consumers {
            let task = consume_stream(
                workload_client(&addresses, &access)?,
                recorder.clone(),
                format!("s{i}"),
                QUEUE,
                stop_consumers.clone(),
            );
            consumers.push(tokio::spawn(task));
        }
        for i in 0..mix.tx_movers {
            let task = mover(
                workload_client(&addresses, &access)?,
                recorder.clone(),
                format!("m{i}"),
                stop_consumers.clone(),
            );
            consumers.push(tokio::spawn(task));
        }
        Ok(Workload {
            addresses,
            client,
            recorder,
            stop_producers,
            stop_consumers,
            producers,
            consumers,
            outboxes,
            helpers: Helpers { agent, pg },
        })
    }

    /// Stops the producers, drains the queues, stops the consumers, checks the history and
    /// writes it with `summary` (the verdict added) to `out`.
    pub async fn finish(
        self,
        out: &std::path::Path,
        reproduce: &str,
        mut summary: serde_json::Value,
    ) -> anyhow::Result<Verdict> {
        let Workload {
            addresses,
            client,
            recorder,
            stop_producers,
            stop_consumers,
            producers,
            consumers,
            outboxes,
            helpers: Helpers { agent, pg },
        } = self;
        stop_producers.store(true, Ordering::Relaxed);
        for producer in producers {
            producer.await.context("producer task")?;
        }
        // Availability is judged while producers run; the drain comes after, once the
        // outboxes have forwarded what they took.
        let producing_end_ms = recorder.now_ms();
        let mut forwarded = outboxes.flush(OUTBOX_FLUSH_DEADLINE).await;
        if let Some(agent) = &agent {
            forwarded &= agent.flush(OUTBOX_FLUSH_DEADLINE).await;
        }
        if let Some(pg) = &pg {
            forwarded &= pg.flush(OUTBOX_FLUSH_DEADLINE).await;
        }
        let drained = drain(&client, pg.is_some()).await && forwarded;
        stop_consumers.store(true, Ordering::Relaxed);
        for consumer in consumers {
            consumer.await.context("consumer task")?;
        }
        if let Some(pg) = pg {
            // The database's rows become the history's acks.
            pg.finish().await?;
        }
        let run_end_ms = recorder.now_ms();
        let events = recorder.events();
        let mut verdict = checker::check(&events, producing_end_ms);
        if !drained {
            verdict.valid = false;
            println!(
                "raftq-chaos: the queues did not drain (within {DRAIN_DEADLINE:?}, or they stopped shrinking for {DRAIN_STALL:?}) through {addresses:?}"
            );
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        std::fs::write(out.join("history.jsonl"), crate::history::to_jsonl(&events))?;
        summary["drained"] = serde_json::json!(drained);
        summary["verdict"] = serde_json::to_value(&verdict)?;
        std::fs::write(
            out.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        std::fs::write(
            out.join("timeline.svg"),
            timeline::render(&events, run_end_ms),
        )?;
        println!("raftq-chaos: {}", verdict.counts_line());
        print!("{}", verdict.unavailability_table());
        println!(
            "raftq-chaos: {} — history, summary.json and timeline.svg in {}",
            if verdict.valid { "VALID" } else { "INVALID" },
            out.display()
        );
        if !verdict.valid {
            println!("raftq-chaos: reproduce with: {reproduce}");
            for problem in verdict.lost.iter().take(5) {
                println!("  lost {problem}");
            }
            for problem in verdict.duplicates.iter().take(5) {
                println!("  duplicate {problem}");
            }
            for problem in verdict.order_violations.iter().take(5) {
                println!("  order: {problem}");
            }
        }
        Ok(verdict)
    }
}

/// Waits until every message of every queue has been consumed (consumers keep running
/// meanwhile), as long as the queues keep shrinking (see `DRAIN_STALL`).
async fn drain(client: &Client, with_pg: bool) -> bool {
    let end = tokio::time::Instant::now() + DRAIN_DEADLINE;
    let mut smallest = u64::MAX;
    let mut last_progress = tokio::time::Instant::now();
    while tokio::time::Instant::now() < end {
        let mut depth = 0;
        let mut known = true;
        for queue in QUEUES.iter().chain(with_pg.then_some(&PG_QUEUE)) {
            match client.get_queue(queue).await {
                Ok(queue) => depth += queue.stats.unwrap_or_default().depth,
                Err(_) => known = false,
            }
        }
        if known && depth == 0 {
            return true;
        }
        if known && depth < smallest {
            smallest = depth;
            last_progress = tokio::time::Instant::now();
        }
        if last_progress.elapsed() > DRAIN_STALL {
            println!("raftq-chaos: the drain stalled with {smallest} messages left");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}
