//! Malformed, oversized and unknown input: a specific status, and nothing changed.

use std::time::Duration;

use raftq_client::{Message, pb};
use raftq_tests::{Cluster, create_queue};
use tonic::Code;

/// Snapshot of everything observable about the cluster's queues.
async fn observable(client: &raftq_client::Client) -> Vec<(String, u64, u64, u64)> {
    client
        .list_queues()
        .await
        .expect("list")
        .into_iter()
        .map(|queue| {
            let stats = queue.stats.unwrap_or_default();
            (queue.name, stats.depth, stats.total_sent, stats.in_flight)
        })
        .collect()
}

fn unit<T>(result: Result<T, raftq_client::ClientError>) -> Result<(), raftq_client::ClientError> {
    result.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_gets_its_status_code_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    let small = pb::QueueOptions {
        max_message_bytes: 1024,
        max_depth: 2,
        ..pb::QueueOptions::default()
    };
    create_queue(&client, "small", small).await;
    client
        .send("small", Message::new("one"))
        .await
        .expect("send");
    let before = observable(&client).await;
    let log_before = cluster.last_log_index().await;

    let mut failures = Vec::new();
    let mut expect =
        |case: &str, result: Result<(), raftq_client::ClientError>, code: Code| match result {
            Err(error) if error.code() == Some(code) => {
                let message = error.to_string();
                assert!(
                    !message.is_empty(),
                    "{case}: the message says what was wrong"
                );
                // Whatever the caller sent, the answer quotes only a short prefix of it.
                assert!(
                    message.len() < 1_024,
                    "{case}: a message of {} bytes",
                    message.len()
                );
            }
            other => failures.push(format!("{case}: expected {code:?}, got {other:?}")),
        };

    expect(
        "bad queue name",
        unit(
            client
                .create_queue("bad name!", pb::QueueOptions::default())
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "empty queue name",
        unit(client.create_queue("", pb::QueueOptions::default()).await),
        Code::InvalidArgument,
    );
    expect(
        "zero-length lease option is fine but a 1 ms lease is not",
        unit(
            client
                .create_queue(
                    "x",
                    pb::QueueOptions {
                        default_lease_ms: 1,
                        ..Default::default()
                    },
                )
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "an overflow policy this version does not define",
        unit(
            client
                .create_queue(
                    "x",
                    pb::QueueOptions {
                        overflow: 99,
                        ..Default::default()
                    },
                )
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "duplicate create",
        unit(
            client
                .create_queue("small", pb::QueueOptions::default())
                .await,
        ),
        Code::AlreadyExists,
    );
    expect(
        "an ack with a receipt of 10,000 characters",
        unit(client.ack("small", &"9".repeat(10_000)).await),
        Code::InvalidArgument,
    );
    expect(
        "a queue name of 10,000 characters",
        unit(
            client
                .create_queue(&"q".repeat(10_000), pb::QueueOptions::default())
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "unknown queue send",
        unit(client.send("missing", Message::new("x")).await),
        Code::NotFound,
    );
    expect(
        "unknown queue get",
        unit(client.get_queue("missing").await),
        Code::NotFound,
    );
    expect(
        "unknown queue delete",
        unit(client.delete_queue("missing").await),
        Code::NotFound,
    );
    expect(
        "oversized message",
        unit(client.send("small", Message::new(vec![7u8; 2000])).await),
        Code::InvalidArgument,
    );
    expect(
        "message over the cluster limit",
        unit(
            client
                .send("small", Message::new(vec![7u8; 5 * 1024 * 1024]))
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "empty batch",
        unit(client.send_batch("small", Vec::new()).await),
        Code::InvalidArgument,
    );
    expect(
        "queue full",
        unit(
            client
                .send_batch("small", vec![Message::new("a"), Message::new("b")])
                .await,
        ),
        Code::ResourceExhausted,
    );
    expect(
        "huge lease",
        unit(
            client
                .receive(
                    "small",
                    1,
                    Duration::ZERO,
                    Some(Duration::from_secs(86_400)),
                )
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "too many messages asked",
        unit(client.receive("small", 5_000, Duration::ZERO, None).await),
        Code::InvalidArgument,
    );
    expect(
        "long poll too long",
        unit(
            client
                .receive("small", 1, Duration::from_secs(60), None)
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "malformed receipt",
        unit(client.ack("small", "not-a-receipt").await),
        Code::InvalidArgument,
    );
    expect(
        "zero lease extension",
        unit(client.extend_lease("small", "1:1", Duration::ZERO).await),
        Code::InvalidArgument,
    );
    expect(
        "receive on an unknown queue",
        unit(client.receive("missing", 1, Duration::ZERO, None).await),
        Code::NotFound,
    );
    expect(
        "long poll on an unknown queue",
        unit(
            client
                .receive("missing", 1, Duration::from_secs(1), None)
                .await,
        ),
        Code::NotFound,
    );
    expect(
        "ack on an unknown queue",
        unit(client.ack("missing", "1:1").await),
        Code::NotFound,
    );
    expect(
        "nack on an unknown queue",
        unit(client.nack("missing", "1:1", Duration::ZERO).await),
        Code::NotFound,
    );
    expect(
        "purge of an unknown queue",
        unit(client.purge_queue("missing").await),
        Code::NotFound,
    );
    expect(
        "a queue that is its own dead-letter queue",
        unit(
            client
                .create_queue(
                    "selfish",
                    pb::QueueOptions {
                        dead_letter_queue: "selfish".into(),
                        ..Default::default()
                    },
                )
                .await,
        ),
        Code::InvalidArgument,
    );
    expect(
        "a redrive of more messages than a batch holds",
        unit(client.redrive("small", &[], 1_000_000, "").await),
        Code::InvalidArgument,
    );
    expect(
        "a redrive to an unknown queue",
        unit(client.redrive("small", &[], 1, "missing").await),
        Code::NotFound,
    );
    expect(
        "a commit sending to an unknown queue",
        unit(
            client
                .commit(pb::CommitRequest {
                    transaction_id: "t-unknown".into(),
                    acks: Vec::new(),
                    sends: vec![pb::TransactionSend {
                        queue: "missing".into(),
                        message: Some(pb::OutgoingMessage {
                            body: b"x".to_vec(),
                            ..Default::default()
                        }),
                    }],
                    producer: None,
                })
                .await,
        ),
        Code::NotFound,
    );
    expect(
        "a grant of a malformed queue pattern",
        unit(client.grant("nobody", "or*ders", &["send"]).await),
        Code::InvalidArgument,
    );
    expect(
        "a grant to an unknown principal",
        unit(client.grant("nobody", "orders", &["send"]).await),
        Code::NotFound,
    );
    assert_eq!(
        cluster.last_log_index().await,
        log_before,
        "no refused call above was written to the log"
    );
    // Refused only when applied: whether a receipt is current is the log's to say.
    expect(
        "unknown receipt",
        unit(client.ack("small", "999999:1").await),
        Code::FailedPrecondition,
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        observable(&client).await,
        before,
        "bad input changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_without_quorum_are_unavailable() {
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    cluster.node(2).kill();
    cluster.node(3).kill();
    let lonely = raftq_client::Client::new(
        &[cluster.nodes[0].grpc.clone()],
        raftq_client::ClientConfig {
            retry_deadline: Duration::from_secs(3),
            ..raftq_tests::test_client_config()
        },
    )
    .expect("client");
    let error = lonely
        .send("q", Message::new("x"))
        .await
        .expect_err("no quorum");
    assert_eq!(error.code(), Some(Code::Unavailable), "{error}");
}

/// Opens a replication stream to `address`, sends `message` on it and returns the status
/// the node refuses the stream with, or ends it with.
async fn replication_stream_refusal(
    address: &str,
    message: raftq_proto::raft_pb::RaftRequest,
) -> tonic::Status {
    use raftq_proto::raft_pb::raft_service_client::RaftServiceClient;
    let mut raft = RaftServiceClient::new(raftq_tests::connect(&format!("http://{address}")).await);
    // The request side stays open: the node must refuse the message it was sent, not
    // the end of the stream.
    let (sender, requests) = tokio::sync::mpsc::channel(1);
    sender.send(message).await.expect("queue the message");
    let mut answers = match raft
        .append_entries_stream(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
    {
        Ok(answers) => answers.into_inner(),
        // The first message names the group the stream is for: one meant for another
        // node, group or cluster is refused before the stream opens.
        Err(status) => return status,
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), answers.message())
        .await
        .expect("an answer within 10 s");
    drop(sender);
    answer.expect_err("the message is refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_stream_meant_for_another_node_group_or_cluster_or_undecodable_is_refused() {
    use raftq_proto::raft_pb::RaftRequest;
    let mut cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    client
        .send("q", Message::new("before"))
        .await
        .expect("send");
    let address = cluster.node(2).internal.clone();

    let status = replication_stream_refusal(
        &address,
        RaftRequest {
            group_id: 1,
            target_node_id: 3,
            payload: Vec::new(),
            cluster_id: String::new(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(status.message().contains("not node 3"), "{status}");

    // A message for a group the node runs no replica of.
    let status = replication_stream_refusal(
        &address,
        RaftRequest {
            group_id: 9,
            target_node_id: 2,
            payload: Vec::new(),
            cluster_id: String::new(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status}");
    assert!(
        status.message().contains("group 9 is not served"),
        "{status}"
    );

    // A message from a node of another cluster.
    let status = replication_stream_refusal(
        &address,
        RaftRequest {
            group_id: 1,
            target_node_id: 2,
            payload: Vec::new(),
            cluster_id: "another-cluster".into(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert!(
        status
            .message()
            .contains("cluster another-cluster is not this cluster"),
        "{status}"
    );

    let status = replication_stream_refusal(
        &address,
        RaftRequest {
            group_id: 1,
            target_node_id: 2,
            payload: vec![0xFF; 7],
            cluster_id: String::new(),
        },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");

    // Replication itself, which runs over such streams, goes on.
    client.send("q", Message::new("after")).await.expect("send");
    let depth = client
        .get_queue("q")
        .await
        .expect("queue")
        .stats
        .unwrap_or_default()
        .depth;
    assert_eq!(depth, 2);
}
