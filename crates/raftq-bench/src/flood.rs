//! `raftq-bench flood`: a cluster pushed past its limits, phase by phase — long polls,
//! streams, large requests, a flood of tiny messages into a small budget. Each phase
//! reports how many calls were served, how many were refused with RESOURCE_EXHAUSTED and
//! how many failed otherwise, and the nodes' peak RSS; the last one checks that every
//! acknowledged send is received once the flood stops, and that sends are taken again.
//!
//! It starts a cluster of its own, or floods one someone else runs (`--addr`, with TLS and
//! a token as any client), such as nodes in memory-limited containers
//! (`tests/container/flood`); their peak memory is then for the caller to read.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use raftq_client::pb::message_service_client::MessageServiceClient;
use raftq_client::{Client, ClientConfig, ClientTls, Code, Message, Transport, pb};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::SpawnedCluster;
use crate::stats::RssMonitor;

#[derive(Args, Debug)]
pub struct FloodArgs {
    /// Receives that wait (5 s each) opened at once.
    #[arg(long, default_value_t = 10_000)]
    long_polls: usize,
    /// Consume streams opened at once.
    #[arg(long, default_value_t = 2_000)]
    streams: usize,
    /// Send-batch calls of 64 MiB (16 messages of just under 4 MiB) sent at once.
    #[arg(long, default_value_t = 100)]
    large_requests: usize,
    /// The nodes' budget of stored messages (`[admission] max_stored_messages`) for the
    /// flood of tiny messages.
    #[arg(long, default_value_t = 200_000)]
    budget_messages: u64,
    /// How long the flood of tiny messages lasts.
    #[arg(long, default_value_t = 20)]
    flood_seconds: u64,
    /// Nodes of a running cluster to flood (comma-separated) instead of starting one; its
    /// budget of stored messages is its own.
    #[arg(long, value_delimiter = ',')]
    addr: Vec<String>,
    /// The CA certificate of the `--addr` cluster, to connect with TLS.
    #[arg(long, env = "RAFTQ_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The token to authenticate with at the `--addr` cluster (it needs the manage
    /// permission on the queues `flood` and `tiny`).
    #[arg(long, env = "RAFTQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The raftq binary (default: the one beside this benchmark).
    #[arg(long)]
    raftq_bin: Option<PathBuf>,
    #[arg(long, default_value_t = 7600)]
    base_port: u16,
    #[arg(long, default_value = "/tmp/raftq-bench")]
    work_dir: PathBuf,
}

/// What one phase saw.
#[derive(Debug, Default, Serialize)]
struct Phase {
    attempted: u64,
    served: u64,
    refused: u64,
    failed: u64,
    /// The first refusal's message.
    refusal: String,
    /// The first other failure's code and message.
    failure: String,
    peak_rss_mib: BTreeMap<String, f64>,
}

#[derive(Default)]
struct Tally {
    served: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    refusal: std::sync::Mutex<String>,
    failure: std::sync::Mutex<String>,
}

impl Tally {
    fn count(&self, result: Result<(), tonic::Status>) {
        match result {
            Ok(()) => self.served.fetch_add(1, Ordering::Relaxed),
            Err(status) if status.code() == Code::ResourceExhausted => {
                let mut first = self.refusal.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_empty() {
                    *first = status.message().to_string();
                }
                self.refused.fetch_add(1, Ordering::Relaxed)
            }
            Err(status) => {
                let mut first = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                if first.is_empty() {
                    *first = format!("{:?}: {}", status.code(), status.message());
                }
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn phase(&self, attempted: usize, peak_rss_mib: BTreeMap<String, f64>) -> Phase {
        Phase {
            attempted: attempted as u64,
            served: self.served.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            refusal: self
                .refusal
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            failure: self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            peak_rss_mib,
        }
    }
}

/// How the flood reaches the nodes: the transport, and the token every call carries.
#[derive(Clone)]
struct Access {
    transport: Transport,
    authorization: Option<MetadataValue<Ascii>>,
}

/// A message service on `channel` whose calls carry the access token.
type Service = MessageServiceClient<InterceptedService<Channel, Access>>;

impl tonic::service::Interceptor for Access {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Access {
    fn new(transport: Transport, token: Option<&str>) -> anyhow::Result<Access> {
        let authorization = match token {
            Some(token) => Some(format!("Bearer {token}").parse()?),
            None => None,
        };
        Ok(Access {
            transport,
            authorization,
        })
    }

    /// `count` connections to the leader's public port.
    async fn connections(&self, address: &str, count: usize) -> anyhow::Result<Vec<Channel>> {
        let endpoint = Endpoint::from_shared(format!("http://{address}"))?
            .connect_timeout(Duration::from_secs(5));
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            channels.push(self.transport.connect(&endpoint).await?);
        }
        Ok(channels)
    }

    fn service(&self, channel: Channel) -> Service {
        MessageServiceClient::with_interceptor(channel, self.clone())
    }
}

async fn leader_address(client: &Client) -> anyhow::Result<String> {
    Ok(client.cluster_status().await?.leader_address)
}

/// The cluster under the flood: started here, or someone else's.
struct Flooded {
    client: Client,
    access: Access,
    spawned: Option<SpawnedCluster>,
}

impl Flooded {
    async fn start(args: &FloodArgs) -> anyhow::Result<Flooded> {
        if !args.addr.is_empty() {
            let transport = match &args.ca_cert {
                Some(ca) => Transport::Tls(ClientTls::from_files(ca, None)?.connector()),
                None => Transport::Plaintext,
            };
            let client = Client::new(
                &args.addr,
                ClientConfig {
                    transport: transport.clone(),
                    token: args.token.clone(),
                    ..ClientConfig::default()
                },
            )?;
            let access = Access::new(transport, args.token.as_deref())?;
            return Ok(Flooded {
                client,
                access,
                spawned: None,
            });
        }
        let exe = match &args.raftq_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("raftq"),
        };
        let env = vec![(
            "RAFTQ_ADMISSION__MAX_STORED_MESSAGES".to_string(),
            args.budget_messages.to_string(),
        )];
        let cluster =
            SpawnedCluster::start_with(&exe, &args.work_dir, 3, args.base_port, false, env).await?;
        let (transport, token) = cluster.access();
        Ok(Flooded {
            client: cluster.client()?,
            access: Access::new(transport, token.as_deref())?,
            spawned: Some(cluster),
        })
    }

    /// Watches the peak RSS of the nodes started here (none of someone else's).
    fn rss(&self) -> RssMonitor {
        RssMonitor::start(
            self.spawned
                .as_ref()
                .map(SpawnedCluster::processes)
                .unwrap_or_default(),
        )
    }
}

pub async fn run(args: FloodArgs) -> anyhow::Result<()> {
    let flooded = Flooded::start(&args).await?;
    let (client, access) = (flooded.client.clone(), flooded.access.clone());
    client
        .create_queue(
            "flood",
            pb::QueueOptions {
                max_message_bytes: 4 * 1024 * 1024,
                max_depth: 100_000_000,
                ..pb::QueueOptions::default()
            },
        )
        .await?;
    let leader = leader_address(&client).await?;
    let mut report = BTreeMap::new();

    // 1. Long polls, over as many connections as they need at 256 calls each.
    let rss = flooded.rss();
    let tally = Arc::new(Tally::default());
    let channels = access
        .connections(&leader, args.long_polls.div_ceil(200).max(1))
        .await?;
    let mut calls = Vec::with_capacity(args.long_polls);
    for n in 0..args.long_polls {
        let (mut service, tally) = (
            access.service(channels[n % channels.len()].clone()),
            tally.clone(),
        );
        calls.push(tokio::spawn(async move {
            let answer = service
                .receive(pb::ReceiveRequest {
                    queue: "flood".into(),
                    max_messages: 1,
                    wait_ms: 5_000,
                    ..Default::default()
                })
                .await;
            tally.count(answer.map(|_| ()));
        }));
    }
    futures::future::join_all(calls).await;
    drop(channels);
    report.insert(
        "long_polls",
        tally.phase(args.long_polls, rss.finish().await),
    );

    // 2. Consume streams, held open together, then closed.
    let rss = flooded.rss();
    let tally = Arc::new(Tally::default());
    let channels = access
        .connections(&leader, args.streams.div_ceil(200).max(1))
        .await?;
    let mut held = Vec::new();
    for n in 0..args.streams {
        let (requests, stream) = mpsc::channel::<pb::ConsumeRequest>(1);
        let answer = access
            .service(channels[n % channels.len()].clone())
            .consume(ReceiverStream::new(stream))
            .await;
        tally.count(answer.as_ref().map(|_| ()).map_err(Clone::clone));
        held.push((requests, answer));
    }
    drop(held);
    drop(channels);
    report.insert("streams", tally.phase(args.streams, rss.finish().await));

    // 3. Large requests at once, each its own connection.
    let rss = flooded.rss();
    let tally = Arc::new(Tally::default());
    let channels = access.connections(&leader, args.large_requests).await?;
    let mut calls = Vec::new();
    for channel in channels {
        let (service, tally) = (access.service(channel), tally.clone());
        calls.push(tokio::spawn(async move {
            let messages = (0..16u8)
                .map(|n| pb::OutgoingMessage {
                    // Under the 4 MiB message limit and, 16 together, the 64 MiB call limit.
                    body: vec![n; 4 * 1024 * 1024 - 1024],
                    ..Default::default()
                })
                .collect();
            let answer = service
                .max_encoding_message_size(80 * 1024 * 1024)
                .send_batch(pb::SendBatchRequest {
                    queue: "flood".into(),
                    messages,
                    producer: None,
                })
                .await;
            tally.count(answer.map(|_| ()));
        }));
    }
    futures::future::join_all(calls).await;
    report.insert(
        "large_requests",
        tally.phase(args.large_requests, rss.finish().await),
    );
    client.purge_queue("flood").await?;
    // A queue of its own: a large send whose outcome was unknown may still commit.
    client
        .create_queue(
            "tiny",
            pb::QueueOptions {
                max_depth: 100_000_000,
                ..pb::QueueOptions::default()
            },
        )
        .await?;

    // 4. Tiny messages until the budget refuses them; then drained, and taken again.
    let rss = flooded.rss();
    let tally = Arc::new(Tally::default());
    let acked = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + Duration::from_secs(args.flood_seconds);
    let mut producers = Vec::new();
    for _ in 0..8 {
        let (client, tally, acked) = (client.clone(), tally.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            let mut attempted = 0u64;
            while tokio::time::Instant::now() < until {
                let batch = (0..1_000).map(|_| Message::new(vec![7u8; 16])).collect();
                attempted += 1;
                match client.send_batch("tiny", batch).await {
                    Ok(results) => {
                        acked.fetch_add(results.len() as u64, Ordering::Relaxed);
                        tally.count(Ok(()));
                    }
                    Err(error) => {
                        let status = tonic::Status::new(
                            error.code().unwrap_or(Code::Unknown),
                            error.to_string(),
                        );
                        let refused = status.code() == Code::ResourceExhausted;
                        tally.count(Err(status));
                        if refused {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
            attempted
        }));
    }
    let mut attempted = 0;
    for producer in producers {
        attempted += producer.await?;
    }
    let mut flood = tally.phase(attempted as usize, BTreeMap::new());
    // Drained: every acknowledged send comes out once.
    let mut received = 0u64;
    loop {
        let delivered = client.receive("tiny", 1_000, Duration::ZERO, None).await?;
        if delivered.is_empty() {
            break;
        }
        received += delivered.len() as u64;
        let receipts: Vec<String> = delivered.into_iter().map(|d| d.receipt).collect();
        client.ack_batch("tiny", &receipts).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let taken_again = loop {
        if client.send("tiny", Message::new("again")).await.is_ok() {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    flood.peak_rss_mib = rss.finish().await;
    let acked = acked.load(Ordering::Relaxed);
    report.insert("tiny_flood", flood);
    let summary = serde_json::json!({
        "phases": report,
        "tiny_flood_acked": acked,
        "tiny_flood_received_after": received,
        "sends_taken_again": taken_again,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    if let Some(cluster) = flooded.spawned {
        cluster.stop().await;
    }
    anyhow::ensure!(
        received == acked,
        "{acked} sends acknowledged, {received} received"
    );
    anyhow::ensure!(taken_again, "sends were not taken again after the drain");
    Ok(())
}
