//! What tests do against a running cluster: wait for a condition with a deadline, make
//! queue calls, read a node's metrics over HTTP.

use std::future::Future;
use std::time::Duration;

use raftq_client::{Client, pb};

/// Runs `serve` (a `raftq serve` command expected to refuse to start) and returns what it
/// wrote to stderr, once it exited unsuccessfully within `deadline`.
pub async fn refused_start(mut serve: tokio::process::Command, deadline: Duration) -> String {
    let output = tokio::time::timeout(deadline, serve.output())
        .await
        .expect("the node exits")
        .expect("run raftq serve");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{stderr}");
    stderr
}

/// Polls `check` until it yields a value, or panics after `deadline` naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_or(what, deadline, check, String::new).await
}

/// Like [`wait_until`]; a timeout also shows `context()` (for example the nodes' logs).
pub async fn wait_until_or<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
    context: impl FnOnce() -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= end {
            panic!(
                "timed out after {deadline:?} waiting until {what}\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every body in `queue`, in delivery order, received and acknowledged until it is empty.
pub async fn drain_bodies(client: &Client, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    loop {
        let delivered = client
            .receive(queue, 1_000, Duration::ZERO, None)
            .await
            .expect("receive");
        if delivered.is_empty() {
            return bodies;
        }
        for message in &delivered {
            bodies.push(String::from_utf8(message.body.clone()).expect("utf-8"));
        }
        let receipts: Vec<String> = delivered.into_iter().map(|d| d.receipt).collect();
        client.ack_batch(queue, &receipts).await.expect("ack");
    }
}

/// A queue's statistics, as `GetQueue` answers them.
pub async fn queue_stats(client: &Client, queue: &str) -> pb::QueueStats {
    client
        .get_queue(queue)
        .await
        .expect("get queue")
        .stats
        .expect("stats")
}

/// The cluster's members, as `cluster status` lists them, in id order.
pub async fn member_ids(client: &Client) -> Vec<u64> {
    client
        .cluster_status()
        .await
        .expect("cluster status")
        .nodes
        .iter()
        .map(|node| node.node_id)
        .collect()
}

/// Creates a queue with the given options (zero fields take defaults).
pub async fn create_queue(client: &Client, name: &str, options: pb::QueueOptions) {
    client
        .create_queue(name, options)
        .await
        .expect("create queue");
}

/// The value of an unlabelled metric in a Prometheus text exposition (0 when absent).
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// An unlabelled metric of the node whose HTTP side port is `address` (0 when absent).
pub async fn node_metric(address: &str, name: &str) -> f64 {
    let (status, text) = http_get(address, "/metrics").await;
    assert_eq!(status, 200, "metrics of {address}");
    metric_value(&text, name)
}

/// A plain HTTP/1.0 GET against a node's side port: (status code, body).
pub async fn http_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the HTTP port");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read response");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}
