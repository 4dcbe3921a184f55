//! The `raftq` command line as a user's shell runs it.

use raftq_client::pb;
use raftq_tests::{Cluster, create_queue};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_command_whose_reader_has_gone_stops_quietly() {
    let cluster = Cluster::start(1).await;
    create_queue(&cluster.client(), "piped", pb::QueueOptions::default()).await;
    // Standard output is a pipe whose reading end is already closed (`... | head -0`).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = raftq_tests::cli()
        .args(["--addr", &cluster.nodes[0].grpc, "queue", "get", "piped"])
        .stdout(writer)
        .output()
        .expect("run raftq queue get");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_refuses_ports_in_use_before_starting_any_node() {
    // Something already listens where the second node's gRPC port would be.
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("address").port();
    let data = tempfile::TempDir::new().expect("temp dir");
    let dev = tokio::process::Command::new(raftq_tests::raftq_binary())
        .args([
            "dev",
            "--nodes",
            "3",
            "--base-port",
            &(port - 1).to_string(),
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start raftq dev");
    // Without the check it would start the nodes and run until stopped.
    let output = tokio::time::timeout(std::time::Duration::from_secs(30), dev.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("raftq dev kept running with port {port} taken"))
        .expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains("already in use") && stderr.contains(&port.to_string()),
        "stderr: {stderr}"
    );
    let started: Vec<_> = std::fs::read_dir(data.path())
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(started.is_empty(), "no node started: {started:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_consume_prints_and_acknowledges_up_to_its_count_and_hands_back_the_rest() {
    let cluster = Cluster::start(1).await;
    let client = cluster.client();
    create_queue(&client, "tail", pb::QueueOptions::default()).await;
    for body in ["one", "two", "three"] {
        client
            .send("tail", raftq_client::Message::new(body))
            .await
            .expect("send");
    }
    let consume = |args: &[&str]| {
        let output = raftq_tests::cli()
            .args(["--addr", &cluster.nodes[0].grpc, "consume", "tail"])
            .args(args)
            .output()
            .expect("run raftq consume");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "stdout: {stdout} stderr: {stderr}");
        stdout
    };
    let first = consume(&["--count", "2"]);
    let lines: Vec<&str> = first.lines().collect();
    assert_eq!(lines.len(), 2, "{first}");
    assert!(
        lines[0].ends_with("acked  one") && lines[1].ends_with("acked  two"),
        "{first}"
    );
    // The third came on the stream too, past the count: it is ready again at once.
    let queue = client.get_queue("tail").await.expect("get queue");
    let stats = queue.stats.expect("stats");
    assert_eq!((stats.depth, stats.in_flight, stats.total_acked), (1, 0, 2));
    let rest = consume(&["--idle-ms", "500"]);
    assert!(rest.trim_end().ends_with("acked  three"), "{rest}");
    assert_eq!(rest.lines().count(), 1, "{rest}");
    assert_eq!(consume(&["--idle-ms", "200"]).trim(), "no message");
    let stats = client.get_queue("tail").await.expect("get queue").stats;
    assert_eq!(stats.expect("stats").depth, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_send_with_the_same_key_twice_stores_one_message() {
    let cluster = Cluster::start(1).await;
    create_queue(&cluster.client(), "keyed", pb::QueueOptions::default()).await;
    let send = || {
        let output = raftq_tests::cli()
            .args(["--addr", &cluster.nodes[0].grpc, "--output", "json"])
            .args(["send", "keyed", "--body", "order #1", "--key", "order-1"])
            .output()
            .expect("run raftq send");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let first = send();
    let second = send();
    let id = |line: &str| -> u64 {
        let value: serde_json::Value = serde_json::from_str(line.trim()).expect("json");
        value["message_id"].as_u64().expect("message_id")
    };
    assert_eq!(id(&first), id(&second), "{first} {second}");
    let queue = cluster.client().get_queue("keyed").await.expect("get");
    assert_eq!(queue.stats.expect("stats").depth, 1);
}
