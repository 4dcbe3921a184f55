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
    let output = std::process::Command::new(raftq_tests::raftq_binary())
        .args(["--addr", &cluster.nodes[0].grpc, "queue", "get", "piped"])
        .stdout(writer)
        .output()
        .expect("run raftq queue get");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(141), "stderr: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr: {stderr}");
}
