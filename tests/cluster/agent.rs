//! `raftq agent`, a real process: sends taken while every node is stopped arrive once and
//! in order, though the agent is killed with -9 in the middle of forwarding and the outage
//! outlasts the queue's dedup window, though it is cut off from the cluster by a network
//! partition (twice, once mid-forwarding), and though its disk loses what it had not synced;
//! other calls pass through (a consume stream too), and are answered UNAVAILABLE while
//! the cluster is away, while sends are still taken.

use std::process::{Child, Stdio};
use std::time::Duration;

use raftq_client::{Client, ClientConfig, Code, ConsumeOptions, Message, Transport, pb};
use raftq_proto::pb::agent_service_client::AgentServiceClient;
use raftq_proto::pb::message_service_client::MessageServiceClient;
use raftq_tests::powerloss::PowerLossFs;
use raftq_tests::{
    Cluster, ClusterOptions, cli, create_queue, drain_bodies, free_port, http_get, metric_value,
    queue_stats, wait_until,
};
use tonic::transport::Channel;

struct Agent {
    child: Child,
    address: String,
    /// Its `/metrics` and `/healthz`.
    http: String,
}

impl Agent {
    fn start(cluster: &Cluster, dir: &std::path::Path, batch: usize) -> Agent {
        let address = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let nodes: Vec<String> = cluster.nodes.iter().map(|node| node.grpc.clone()).collect();
        let child = cli()
            .args(["agent", "--data-dir"])
            .arg(dir)
            .args(["--listen", &address, "--cluster", &nodes.join(",")])
            .args([
                "--batch-messages",
                &batch.to_string(),
                "--name",
                "test-agent",
                "--http-listen",
                &http,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        Agent {
            child,
            address,
            http,
        }
    }

    async fn messages(&self) -> MessageServiceClient<Channel> {
        let address = format!("http://{}", self.address);
        wait_until("the agent answers", Duration::from_secs(20), || {
            let address = address.clone();
            async move { MessageServiceClient::connect(address).await.ok() }
        })
        .await
    }

    async fn status(&self) -> pb::AgentStatusResponse {
        let address = format!("http://{}", self.address);
        wait_until("the agent answers", Duration::from_secs(20), || {
            let address = address.clone();
            async move {
                let mut agent = AgentServiceClient::connect(address).await.ok()?;
                agent
                    .agent_status(pb::AgentStatusRequest {})
                    .await
                    .ok()
                    .map(|answer| answer.into_inner())
            }
        })
        .await
    }
}

impl Agent {
    /// Waits until the agent has forwarded at least `at_least` messages and still holds
    /// some: it is in the middle of forwarding.
    async fn forwarding(&self, at_least: u64) -> pb::AgentStatusResponse {
        wait_until(
            "forwarding is under way",
            Duration::from_secs(60),
            || async move {
                let status = self.status().await;
                (status.forwarded >= at_least && status.pending > 0).then_some(status)
            },
        )
        .await
    }

    /// Waits until the agent holds nothing.
    async fn emptied(&self) {
        wait_until(
            "the agent has forwarded everything",
            Duration::from_secs(180),
            || async { (self.status().await.pending == 0).then_some(()) },
        )
        .await;
    }

    /// Kills the agent with -9.
    fn kill(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reaped");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn batch(queue: &str, from: usize, count: usize) -> pb::SendBatchRequest {
    pb::SendBatchRequest {
        queue: queue.into(),
        messages: (from..from + count)
            .map(|n| pb::OutgoingMessage {
                body: format!("m{n:05}").into_bytes(),
                ..Default::default()
            })
            .collect(),
        producer: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_through_an_agent_while_the_cluster_is_down_arrive_once_though_it_is_killed() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    // A dedup window shorter than the outage: only the agent's numbers keep sends once.
    let short_window = pb::QueueOptions {
        dedup_window_ms: 1_000,
        ..Default::default()
    };
    create_queue(&client, "orders", short_window.clone()).await;
    create_queue(&client, "probe", short_window).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut agent = Agent::start(&cluster, dir.path(), 50);
    let mut sender = agent.messages().await;

    cluster.stop_all();
    const COUNT: usize = 10_000;
    for from in (0..COUNT).step_by(100) {
        let answer = sender
            .send_batch(batch("orders", from, 100))
            .await
            .expect("the agent takes sends while the cluster is down");
        assert!(answer.metadata().get("raftq-local-id").is_some());
    }
    let status = agent.status().await;
    assert_eq!(status.pending, COUNT as u64);

    cluster.restart_all().await;
    // Killed with -9 in the middle of forwarding: its batch in flight goes again after
    // the restart, with the same numbers.
    let at_kill = agent.forwarding(1_000).await;
    agent.kill();
    assert!(at_kill.pending > 0);
    // Not before the dedup window has passed: a key sent now, to a queue with the same
    // window, is stored again once that window is over. Only the numbers are left then.
    let probe = || Message::new("probe").with_key("probe-key");
    client.send("probe", probe()).await.expect("probe");
    wait_until(
        "the dedup window has passed",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                let again = client.send("probe", probe()).await.ok()?;
                (!again.duplicate).then_some(())
            }
        },
    )
    .await;

    let agent = Agent::start(&cluster, dir.path(), 50);
    let restarted = agent.status().await;
    assert!(
        restarted.pending > 0,
        "the kill came after forwarding ended"
    );
    agent.emptied().await;
    let expected: Vec<String> = (0..COUNT).map(|n| format!("m{n:05}")).collect();
    let received = drain_bodies(&client, "orders").await;
    assert_eq!(received.len(), COUNT, "each once");
    assert_eq!(received, expected, "in send order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_from_the_cluster_takes_sends_and_forwards_each_once_when_healed() {
    let cluster = Cluster::start_with(
        3,
        ClusterOptions {
            network_namespaces: true,
            ..ClusterOptions::default()
        },
    )
    .await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let agent = Agent::start(&cluster, dir.path(), 50);
    let mut sender = agent.messages().await;
    let network = cluster.network.clone().expect("a private network");

    // Cut off: the agent's connections to every node time out.
    network.cut_off_host().expect("cut off");
    for from in (0..5_000).step_by(100) {
        sender
            .send_batch(batch("orders", from, 100))
            .await
            .expect("the agent takes sends while cut off");
    }
    network.heal().expect("heal");
    agent.forwarding(500).await;
    // Cut off again in the middle of forwarding: a batch in flight has an unknown outcome.
    network.cut_off_host().expect("cut off");
    for from in (5_000..10_000).step_by(100) {
        sender
            .send_batch(batch("orders", from, 100))
            .await
            .expect("the agent takes sends while cut off");
    }
    network.heal().expect("heal");
    agent.emptied().await;
    cluster.wait_for_leader().await;
    let expected: Vec<String> = (0..10_000).map(|n| format!("m{n:05}")).collect();
    assert_eq!(
        drain_bodies(&client, "orders").await,
        expected,
        "once, in order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_loses_power_keeps_every_send_it_answered_and_forwards_each_once() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let mut disk = PowerLossFs::mount(&dir.path().join("backing"), &dir.path().join("mnt"))
        .expect("power-loss file system (needs root and /dev/fuse)");
    let data = disk.mountpoint().join("agent");
    let mut agent = Agent::start(&cluster, &data, 20);
    let mut sender = agent.messages().await;

    // Every send answered while the node is down is on the disk, synced.
    cluster.node(1).stop();
    const COUNT: usize = 2_000;
    for from in (0..COUNT).step_by(50) {
        sender
            .send_batch(batch("orders", from, 50))
            .await
            .expect("the agent takes sends while the cluster is down");
    }
    agent.kill();
    disk.lose_power().expect("power loss");
    let mut agent = Agent::start(&cluster, &data, 20);
    assert_eq!(
        agent.status().await.pending,
        COUNT as u64,
        "an answered send was lost"
    );

    // Power lost again in the middle of forwarding.
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    agent.forwarding(200).await;
    agent.kill();
    disk.lose_power().expect("power loss");
    let agent = Agent::start(&cluster, &data, 20);
    agent.emptied().await;
    let expected: Vec<String> = (0..COUNT).map(|n| format!("m{n:05}")).collect();
    assert_eq!(
        drain_bodies(&client, "orders").await,
        expected,
        "once, in order"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_calls_pass_through_and_are_unavailable_while_the_cluster_is_away() {
    let mut cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "orders", pb::QueueOptions::default()).await;
    create_queue(&client, "consumed", pb::QueueOptions::default()).await;
    let dir = tempfile::tempdir().expect("dir");
    let agent = Agent::start(&cluster, dir.path(), 500);
    // A client of the agent as of any node: plaintext on loopback, no token.
    let through = Client::new(
        std::slice::from_ref(&agent.address),
        ClientConfig {
            transport: Transport::Plaintext,
            retry_deadline: Duration::from_secs(2),
            ..ClientConfig::default()
        },
    )
    .expect("client");
    agent.messages().await;
    through
        .send_batch_request(batch("orders", 0, 3))
        .await
        .expect("send");
    let received = wait_until("the sends are forwarded", Duration::from_secs(30), || {
        let through = through.clone();
        async move {
            let got = through
                .receive("orders", 10, Duration::from_millis(500), None)
                .await
                .ok()?;
            (!got.is_empty()).then_some(got)
        }
    })
    .await;
    through
        .ack("orders", &received[0].receipt)
        .await
        .expect("an ack passes through");
    assert_eq!(
        through.get_queue("orders").await.expect("get").name,
        "orders"
    );
    // A consume stream through the agent, with acks on it.
    through
        .send_batch_request(batch("consumed", 0, 2))
        .await
        .expect("send");
    let mut consumer = through
        .consume("consumed", ConsumeOptions::default())
        .await
        .expect("consume through the agent");
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("a delivery within 30 s")
            .expect("delivery");
        let receipts: Vec<String> = delivery
            .messages
            .iter()
            .map(|m| m.receipt.clone())
            .collect();
        bodies.extend(
            delivery
                .messages
                .into_iter()
                .map(|m| String::from_utf8(m.body).expect("utf-8")),
        );
        consumer.ack(&receipts).await.expect("ack on the stream");
    }
    assert_eq!(bodies, ["m00000", "m00001"]);
    wait_until(
        "the stream's acks are applied",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move {
                let stats = queue_stats(&client, "consumed").await;
                (stats.total_acked == 2 && stats.depth == 0).then_some(())
            }
        },
    )
    .await;
    drop(consumer);

    let (code, metrics) = http_get(&agent.http, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric_value(&metrics, "raftq_outbox_forwarded_total"), 5.0);
    assert_eq!(metric_value(&metrics, "raftq_outbox_pending_messages"), 0.0);

    cluster.node(1).stop();
    let away = through
        .receive("orders", 1, Duration::ZERO, None)
        .await
        .expect_err("no cluster");
    assert_eq!(away.code(), Some(Code::Unavailable), "{away}");
    let unknown = through
        .send_batch_request(batch("", 0, 1))
        .await
        .expect_err("refused by the agent itself");
    assert_eq!(unknown.code(), Some(Code::InvalidArgument), "{unknown}");
    through
        .send_batch_request(batch("orders", 3, 1))
        .await
        .expect("sends are still taken");
}
