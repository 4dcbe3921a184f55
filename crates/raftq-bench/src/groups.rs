//! `raftq-bench groups`: what data groups cost a cluster that does nothing, and how long a
//! node running many of them takes to restart. For each group count it starts a fresh
//! cluster (`[groups] data_groups`), waits until every group runs with a leader on each
//! of its replicas, then measures each node's CPU share and resident memory over a quiet
//! window, and the restart of one node (killed with SIGKILL) until it answers with group
//! 1 caught up, and until every data-group replica it runs knows its leader again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use raftq_client::{Client, ClientConfig};
use serde::Serialize;

use crate::cluster::SpawnedCluster;
use crate::stats::{clock_ticks_per_second, cpu_ticks, rss_mib};

#[derive(Args, Debug)]
pub struct GroupsArgs {
    /// Data-group counts to measure, one cluster each (0: group 1 only).
    #[arg(long, value_delimiter = ',', default_value = "0,16,64")]
    groups: Vec<u64>,
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// The quiet window the CPU share is measured over, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The raftq binary (default: the one beside this benchmark).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7820)]
    base_port: u16,
    /// Where the nodes' data directories go.
    #[arg(long, default_value = "target/bench-groups")]
    work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct GroupsReport {
    data_groups: u64,
    nodes: u16,
    /// Per node, in node order.
    replicas: Vec<usize>,
    leads: Vec<usize>,
    cpu_percent: Vec<f64>,
    rss_mib: Vec<f64>,
    /// Node 2 after SIGKILL: until it answered and applied group 1's commits, and until
    /// each of its data-group replicas knew its leader again.
    restart_ready_seconds: f64,
    restart_replicas_seconds: f64,
}

/// Longest the groups may take to form, or a restarted node's replicas to catch up.
const FORM_DEADLINE: Duration = Duration::from_secs(180);

pub async fn run(args: GroupsArgs) -> anyhow::Result<()> {
    let exe = match &args.raftq_bin {
        Some(exe) => exe.clone(),
        None => std::env::current_exe()?.with_file_name("raftq"),
    };
    let mut reports = Vec::new();
    for &count in &args.groups {
        let env = vec![("RAFTQ_GROUPS__DATA_GROUPS".to_string(), count.to_string())];
        let mut cluster = SpawnedCluster::start_with(
            &exe,
            &args.work_dir,
            args.nodes,
            args.base_port,
            false,
            env,
        )
        .await?;
        let expected = count as usize * usize::from(args.nodes.min(3));
        let clients = node_clients(&cluster)?;
        let (replicas, leads) = wait_formed(&clients, expected).await?;
        let processes = cluster.processes();
        let before: Vec<u64> = processes.iter().map(|(_, pid)| cpu_ticks(*pid)).collect();
        let window = Duration::from_secs(args.seconds);
        tokio::time::sleep(window).await;
        let ticks_per_second = clock_ticks_per_second();
        let cpu_percent = processes
            .iter()
            .zip(&before)
            .map(|((_, pid), before)| {
                let used = cpu_ticks(*pid).saturating_sub(*before) as f64 / ticks_per_second;
                100.0 * used / window.as_secs_f64()
            })
            .collect();
        let rss = processes
            .iter()
            .map(|(_, pid)| rss_mib(*pid).unwrap_or(0.0))
            .collect();
        let restarted = 1.min(clients.len() - 1);
        let ready = cluster.restart(restarted).await?;
        let started = Instant::now() - ready;
        wait_formed(&clients, expected).await?;
        let report = GroupsReport {
            data_groups: count,
            nodes: args.nodes,
            replicas,
            leads,
            cpu_percent,
            rss_mib: rss,
            restart_ready_seconds: ready.as_secs_f64(),
            restart_replicas_seconds: started.elapsed().as_secs_f64(),
        };
        println!("{}", serde_json::to_string(&report)?);
        reports.push(report);
        cluster.stop().await;
    }
    println!();
    println!(
        "{:>12} {:>16} {:>14} {:>22} {:>18} {:>22}",
        "data groups",
        "replicas/node",
        "leads/node",
        "CPU % per node (idle)",
        "RSS MiB per node",
        "restart: ready/replicas"
    );
    for report in &reports {
        let list = |values: &[usize]| {
            values
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join("/")
        };
        let floats = |values: &[f64]| {
            values
                .iter()
                .map(|value| format!("{value:.1}"))
                .collect::<Vec<_>>()
                .join("/")
        };
        println!(
            "{:>12} {:>16} {:>14} {:>22} {:>18} {:>15.2}s/{:.2}s",
            report.data_groups,
            list(&report.replicas),
            list(&report.leads),
            floats(&report.cpu_percent),
            floats(&report.rss_mib),
            report.restart_ready_seconds,
            report.restart_replicas_seconds
        );
    }
    Ok(())
}

/// One client per node, each talking to that node only.
pub(crate) fn node_clients(cluster: &SpawnedCluster) -> anyhow::Result<Vec<Client>> {
    let (transport, token) = cluster.access();
    cluster
        .addresses()
        .into_iter()
        .map(|address| {
            Ok(Client::new(
                &[address],
                ClientConfig {
                    retry_deadline: Duration::from_millis(500),
                    transport: transport.clone(),
                    token: token.clone(),
                    ..ClientConfig::default()
                },
            )?)
        })
        .collect()
}

/// Waits until the nodes run `expected` data-group replicas in all, each knowing its
/// leader and none catching up; returns each node's replicas and leaderships.
pub(crate) async fn wait_formed(
    clients: &[Client],
    expected: usize,
) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let deadline = Instant::now() + FORM_DEADLINE;
    loop {
        let mut replicas = Vec::new();
        let mut leads = Vec::new();
        let mut settled = true;
        for client in clients {
            match client.node_info().await {
                Ok(info) => {
                    settled &= info
                        .replicas
                        .iter()
                        .all(|replica| replica.leader_id != 0 && !replica.rebuilding);
                    replicas.push(info.replicas.len());
                    leads.push(
                        info.replicas
                            .iter()
                            .filter(|replica| replica.leader_id == info.node_id)
                            .count(),
                    );
                }
                Err(_) => settled = false,
            }
        }
        if settled && replicas.iter().sum::<usize>() == expected {
            return Ok((replicas, leads));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the data groups did not form within {FORM_DEADLINE:?}: {replicas:?} replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
