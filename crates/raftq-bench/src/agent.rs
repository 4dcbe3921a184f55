//! `raftq-bench agent`: what `raftq agent` costs and gives. Against a 3-node cluster it
//! starts (plaintext, as the peers run), it measures:
//!
//! - the latency a send through a local agent adds: single sends, one at a time, to the
//!   leader directly and to the agent, in alternating rounds, p50 and p99 of each;
//! - forwarding after an outage: with every node stopped, the agent takes `backlog`
//!   messages (batches of 500); the nodes start again. Reported: how long after the first
//!   leader the agent forwards its first batch, and its rate from then until it holds
//!   nothing, beside the rate of the same messages sent directly in batches of 500, one
//!   batch at a time.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use raftq_client::pb;
use raftq_client::pb::agent_service_client::AgentServiceClient;
use raftq_client::pb::message_service_client::MessageServiceClient;
use serde::Serialize;
use tonic::transport::Channel;

use crate::cluster::SpawnedCluster;
use crate::stats::{Percentiles, histogram};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Single sends per way (direct, through the agent), in rounds of 100.
    #[arg(long, default_value_t = 2_000)]
    sends: usize,
    /// Messages the agent holds when the cluster comes back.
    #[arg(long, default_value_t = 50_000)]
    backlog: usize,
    /// Body size in bytes.
    #[arg(long, default_value_t = 128)]
    body: usize,
    /// The raftq binary (default: the one beside this benchmark).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7650)]
    base_port: u16,
    #[arg(long, default_value = "/tmp/raftq-bench-agent")]
    work_dir: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    direct_send: Percentiles,
    agent_send: Percentiles,
    added_p50_ms: f64,
    backlog: usize,
    /// From the cluster's return (a leader) to the first batch forwarded.
    found_back_s: f64,
    /// The backlog's rate from the first batch forwarded to the last.
    forwarded_per_s: f64,
    direct_batched_per_s: f64,
    forwarding_ratio: f64,
}

fn message(body: usize, n: usize) -> pb::OutgoingMessage {
    pb::OutgoingMessage {
        body: vec![b'x'; body],
        idempotency_key: format!("bench-{n}"),
        ..Default::default()
    }
}

async fn status(
    agent: &mut AgentServiceClient<Channel>,
) -> anyhow::Result<pb::AgentStatusResponse> {
    Ok(agent
        .agent_status(pb::AgentStatusRequest {})
        .await?
        .into_inner())
}

async fn pending(agent: &mut AgentServiceClient<Channel>) -> anyhow::Result<u64> {
    Ok(status(agent).await?.pending)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let exe = match &args.raftq_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("raftq"),
    };
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let mut cluster =
        SpawnedCluster::start_with(&exe, &args.work_dir, 3, args.base_port, false, Vec::new())
            .await?;
    let client = cluster.client()?;
    for queue in ["latency", "forwarded", "direct"] {
        client
            .create_queue(
                queue,
                pb::QueueOptions {
                    max_depth: 10_000_000,
                    ..Default::default()
                },
            )
            .await?;
    }
    let agent_address = format!("127.0.0.1:{}", args.base_port + 50);
    let mut agent_process = tokio::process::Command::new(&exe)
        .args([
            "agent",
            "--insecure",
            "--listen",
            &agent_address,
            "--data-dir",
        ])
        .arg(args.work_dir.join("agent"))
        .args(["--cluster", &cluster.addresses().join(",")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let agent_uri = format!("http://{agent_address}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut through, mut agent) = loop {
        if let (Ok(through), Ok(agent)) = (
            MessageServiceClient::connect(agent_uri.clone()).await,
            AgentServiceClient::connect(agent_uri.clone()).await,
        ) {
            break (through, agent);
        }
        anyhow::ensure!(Instant::now() < deadline, "the agent did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leader = client.cluster_status().await?.leader_address;
    let mut direct = MessageServiceClient::connect(format!("http://{leader}")).await?;

    // 1. Latency, alternating rounds.
    let (mut direct_us, mut agent_us) = (histogram(), histogram());
    for round in 0..args.sends.div_ceil(100) {
        for n in 0..100 {
            let id = round * 100 + n;
            let request = || pb::SendRequest {
                queue: "latency".into(),
                message: Some(message(args.body, id)),
                producer: None,
            };
            let started = Instant::now();
            direct.send(request()).await?;
            direct_us.record(started.elapsed().as_micros() as u64)?;
            let started = Instant::now();
            through.send(request()).await?;
            agent_us.record(started.elapsed().as_micros() as u64)?;
        }
    }
    // The agent's copies went too (same keys: stored once); let it finish.
    while pending(&mut agent).await? > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 2. Direct batched produce of the backlog, one batch at a time.
    let batches = args.backlog.div_ceil(500);
    let started = Instant::now();
    for batch in 0..batches {
        direct
            .send_batch(pb::SendBatchRequest {
                queue: "direct".into(),
                messages: (0..500)
                    .map(|n| message(args.body, batch * 500 + n))
                    .collect(),
                producer: None,
            })
            .await?;
    }
    let direct_batched_per_s = (batches * 500) as f64 / started.elapsed().as_secs_f64();

    // 3. The backlog taken while every node is down, then forwarded.
    cluster.stop_nodes().await;
    for batch in 0..batches {
        through
            .send_batch(pb::SendBatchRequest {
                queue: "forwarded".into(),
                messages: (0..500)
                    .map(|n| message(args.body, batch * 500 + n))
                    .collect(),
                producer: None,
            })
            .await?;
    }
    let before = status(&mut agent).await?.forwarded;
    cluster.start_nodes().await?;
    let back = Instant::now();
    // From the cluster's return to the first batch forwarded: the agent finding it back.
    let mut first_forward = None;
    loop {
        let now = status(&mut agent).await?;
        if first_forward.is_none() && now.forwarded > before {
            first_forward = Some(Instant::now());
        }
        if now.pending == 0 {
            break;
        }
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(600),
            "the agent did not forward its backlog within 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first_forward = first_forward.unwrap_or(back);
    let found_back_s = (first_forward - back).as_secs_f64();
    let forwarded_per_s = (batches * 500) as f64 / first_forward.elapsed().as_secs_f64();
    let _ = agent_process.kill().await;
    cluster.stop().await;

    let (direct_send, agent_send) = (Percentiles::of(&direct_us), Percentiles::of(&agent_us));
    let report = Report {
        added_p50_ms: agent_send.p50_ms - direct_send.p50_ms,
        direct_send,
        agent_send,
        backlog: batches * 500,
        found_back_s,
        forwarded_per_s,
        direct_batched_per_s,
        forwarding_ratio: forwarded_per_s / direct_batched_per_s,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
