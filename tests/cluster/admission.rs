//! Admission limits: past each `[admission]` limit the next call (or connection) is
//! refused with RESOURCE_EXHAUSTED naming the limit, and counted; what was admitted goes
//! on, and room comes back when it ends.

use std::time::Duration;

use raftq_client::pb;
use raftq_proto::pb::message_service_client::MessageServiceClient;
use raftq_proto::pb::queue_service_client::QueueServiceClient;
use raftq_tests::{
    Cluster, ClusterOptions, connect, create_queue, http_get, node_metric, wait_until,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// A one-node cluster with `[admission]` settings `limits` (`NAME=VALUE`).
async fn limited(limits: &[(&str, &str)]) -> Cluster {
    let env = limits
        .iter()
        .map(|(name, value)| {
            (
                format!("RAFTQ_ADMISSION__{}", name.to_ascii_uppercase()),
                value.to_string(),
            )
        })
        .collect();
    Cluster::start_with(
        1,
        ClusterOptions {
            env,
            ..ClusterOptions::default()
        },
    )
    .await
}

/// How many times the node refused for `limit`.
async fn refusals(cluster: &Cluster, limit: &str) -> u64 {
    let (_, text) = http_get(&cluster.nodes[0].http, "/metrics").await;
    let series = format!("raftq_admission_refusals_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

fn assert_exhausted(status: &tonic::Status, limit: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(limit), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_receives_send_streams_and_consume_streams_are_bounded() {
    let cluster = limited(&[
        ("max_waiting_receives", "2"),
        ("max_send_streams", "1"),
        ("max_consume_streams_per_principal", "1"),
    ])
    .await;
    let address = cluster.nodes[0].grpc.clone();
    create_queue(&cluster.client(), "q", pb::QueueOptions::default()).await;

    // Two receives wait on the empty queue; a third that would wait is refused, one that
    // does not wait is served.
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let client = cluster.client();
            tokio::spawn(async move { client.receive("q", 1, Duration::from_secs(15), None).await })
        })
        .collect();
    let http = cluster.nodes[0].http.clone();
    wait_until("two receives wait", Duration::from_secs(10), || {
        let http = http.clone();
        async move { (node_metric(&http, "raftq_receives_waiting").await >= 2.0).then_some(()) }
    })
    .await;
    let mut messages = MessageServiceClient::new(connect(&address).await);
    let refused = messages
        .receive(pb::ReceiveRequest {
            queue: "q".into(),
            max_messages: 1,
            wait_ms: 1_000,
            ..Default::default()
        })
        .await
        .expect_err("a third receive that would wait is refused");
    assert_exhausted(&refused, "max_waiting_receives");
    messages
        .receive(pb::ReceiveRequest {
            queue: "q".into(),
            max_messages: 1,
            ..Default::default()
        })
        .await
        .expect("a receive that does not wait is served");
    // The waiting ones are served when messages come, and their places come back.
    for body in ["a", "b"] {
        cluster
            .client()
            .send("q", raftq_client::Message::new(body))
            .await
            .expect("send");
    }
    for receive in waiting {
        let delivered = receive.await.expect("task").expect("receive");
        assert_eq!(delivered.len(), 1);
    }
    messages
        .receive(pb::ReceiveRequest {
            queue: "q".into(),
            max_messages: 1,
            wait_ms: 10,
            ..Default::default()
        })
        .await
        .expect("a waiting receive is admitted again");
    assert!(refusals(&cluster, "max_waiting_receives").await >= 1);

    // One send stream at a time.
    let (_first_sends, first) = mpsc::channel::<pb::StreamedSend>(1);
    let _open = messages
        .send_stream(ReceiverStream::new(first))
        .await
        .expect("the first send stream opens");
    let (_second_sends, second) = mpsc::channel::<pb::StreamedSend>(1);
    let refused = messages
        .send_stream(ReceiverStream::new(second))
        .await
        .expect_err("a second send stream is refused");
    assert_exhausted(&refused, "max_send_streams");

    // One consume stream per principal.
    let (_first_requests, first) = mpsc::channel::<pb::ConsumeRequest>(1);
    let _consuming = messages
        .consume(ReceiverStream::new(first))
        .await
        .expect("the first consume stream opens");
    let (_second_requests, second) = mpsc::channel::<pb::ConsumeRequest>(1);
    let refused = messages
        .consume(ReceiverStream::new(second))
        .await
        .expect_err("a second consume stream of the same principal is refused");
    assert_exhausted(&refused, "max_consume_streams_per_principal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_refused_and_room_comes_back() {
    let cluster = limited(&[("max_connections", "2")]).await;
    let address = cluster.nodes[0].grpc.clone();
    // Connections of the cluster's start may still be closing: wait for two places.
    let mut held = Vec::new();
    for n in 0..2 {
        let connection = wait_until(
            &format!("connection {n} is admitted"),
            Duration::from_secs(20),
            || {
                let address = address.clone();
                async move {
                    let mut queues = QueueServiceClient::new(connect(&address).await);
                    let listed = queues.list_queues(pb::ListQueuesRequest::default()).await;
                    listed.is_ok().then_some(queues)
                }
            },
        )
        .await;
        held.push(connection);
    }
    let mut third = QueueServiceClient::new(connect(&address).await);
    let refused = third
        .list_queues(pb::ListQueuesRequest::default())
        .await
        .expect_err("a third connection is refused");
    assert_exhausted(&refused, "max_connections");
    assert!(refusals(&cluster, "max_connections").await >= 1);
    // The admitted connections are still served.
    for queues in &mut held {
        queues
            .list_queues(pb::ListQueuesRequest::default())
            .await
            .expect("an admitted connection is served");
    }
    drop(held);
    wait_until(
        "a new connection is admitted once others closed",
        Duration::from_secs(20),
        || {
            let address = address.clone();
            async move {
                let mut queues = QueueServiceClient::new(connect(&address).await);
                queues
                    .list_queues(pb::ListQueuesRequest::default())
                    .await
                    .ok()
            }
        },
    )
    .await;
}

/// Sends to `q` until one is refused (usage is sampled: a send or two may pass a budget
/// before the refusals begin), and returns the refusal.
async fn first_refused_send(
    client: &raftq_client::Client,
    what: &str,
) -> raftq_client::ClientError {
    wait_until(what, Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            client
                .send("q", raftq_client::Message::new("m"))
                .await
                .err()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_budget_sends_are_refused_while_receives_and_acks_go_on() {
    let cluster = limited(&[("max_stored_messages", "3")]).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    let refused = first_refused_send(&client, "sends are refused at the budget").await;
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("max_stored_messages"),
        "{refused}"
    );
    let status = client.cluster_status().await.expect("status");
    let resources = status.nodes[0].resources.clone().expect("resources");
    assert_eq!(resources.sends_refused, "max_stored_messages");
    assert!(resources.stored_messages >= 3, "{resources:?}");
    assert_eq!(resources.max_stored_messages, 3);

    // Receives and acks go on, and drain the node below its budget.
    loop {
        let delivered = client
            .receive("q", 100, Duration::ZERO, None)
            .await
            .expect("a receive at the budget is served");
        if delivered.is_empty() {
            break;
        }
        let receipts: Vec<String> = delivered.iter().map(|d| d.receipt.clone()).collect();
        client
            .ack_batch("q", &receipts)
            .await
            .expect("acks at the budget are served");
    }
    wait_until(
        "sends are taken again below the budget",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                client
                    .send("q", raftq_client::Message::new("again"))
                    .await
                    .ok()
            }
        },
    )
    .await;
    assert!(refusals(&cluster, "max_stored_messages").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_free_space_threshold_sends_are_refused() {
    // A threshold no disk here meets: every send is refused for it, the rest is served.
    let cluster = limited(&[("min_free_disk_bytes", "1152921504606846976")]).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    let refused = first_refused_send(&client, "sends are refused below the free space").await;
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("min_free_disk_bytes"),
        "{refused}"
    );
    let resources = client.cluster_status().await.expect("status").nodes[0]
        .resources
        .clone()
        .expect("resources");
    assert_eq!(resources.sends_refused, "min_free_disk_bytes");
    assert!(resources.disk_free_bytes > 0, "{resources:?}");
    client
        .receive("q", 1, Duration::ZERO, None)
        .await
        .expect("receives are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_past_the_budget_are_refused_and_a_larger_call_goes_alone() {
    let mut cluster = Cluster::start_with(
        3,
        ClusterOptions {
            env: vec![(
                "RAFTQ_ADMISSION__MAX_REQUEST_BYTES".into(),
                "1048576".into(),
            )],
            ..ClusterOptions::default()
        },
    )
    .await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    // A call larger than the whole budget is served, alone.
    let large: Vec<_> = (0..4)
        .map(|n| raftq_client::Message::new(vec![n; 512 * 1024]))
        .collect();
    client
        .send_batch("q", large)
        .await
        .expect("a call larger than the budget goes alone");

    // With no quorum, a send waits for its write with its bytes held...
    let leader = cluster.wait_for_leader().await;
    let leader_address = cluster.node(leader).grpc.clone();
    let leader_http = cluster.node(leader).http.clone();
    for id in 1..=3 {
        if id != leader {
            cluster.node(id).stop();
        }
    }
    let mut messages = MessageServiceClient::new(connect(&leader_address).await);
    let waiting = {
        let mut messages = messages.clone();
        tokio::spawn(async move {
            messages
                .send(pb::SendRequest {
                    queue: "q".into(),
                    message: Some(pb::OutgoingMessage {
                        body: vec![1; 900 * 1024],
                        ..Default::default()
                    }),
                    producer: None,
                })
                .await
        })
    };
    wait_until(
        "the first send holds its bytes",
        Duration::from_secs(10),
        || {
            let http = leader_http.clone();
            async move {
                (node_metric(&http, "raftq_request_bytes_in_flight").await >= 900.0 * 1024.0)
                    .then_some(())
            }
        },
    )
    .await;
    // ... so one more that does not fit is refused as it arrives.
    let refused = messages
        .send(pb::SendRequest {
            queue: "q".into(),
            message: Some(pb::OutgoingMessage {
                body: vec![2; 300 * 1024],
                ..Default::default()
            }),
            producer: None,
        })
        .await
        .expect_err("a send past the budget is refused");
    assert_exhausted(&refused, "max_request_bytes");
    let first = waiting.await.expect("task");
    assert!(first.is_err(), "no quorum: the first send cannot commit");
}

/// A tmpfs of `mib` MiB mounted at `dir` (root only), unmounted when dropped.
struct SmallVolume {
    dir: std::path::PathBuf,
}

impl SmallVolume {
    fn mount(dir: &std::path::Path, mib: u64) -> SmallVolume {
        std::fs::create_dir_all(dir).expect("the mount point");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount (the test needs root)");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        SmallVolume {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for SmallVolume {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
    }
}

/// Copies the files under `from` into `to`, keeping the tree.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).expect("read the data directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("its type").is_dir() {
            std::fs::create_dir_all(&target).expect("a directory");
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_volume_filled_to_the_threshold_refuses_sends_and_recovers_when_space_returns() {
    // Sends stop below 64 MiB free, on a data volume of 128 MiB.
    let mut cluster = limited(&[("min_free_disk_bytes", "67108864")]).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    client
        .send("q", raftq_client::Message::new("before"))
        .await
        .expect("send");
    // The node's data moves onto the small volume.
    cluster.node(1).stop();
    let data_dir = cluster.node(1).data_dir.clone();
    let moved = data_dir.with_extension("moved");
    std::fs::rename(&data_dir, &moved).expect("move the data directory aside");
    let volume = SmallVolume::mount(&data_dir, 128);
    copy_tree(&moved, &data_dir);
    cluster.node(1).restart();
    cluster.wait_for_leader().await;
    wait_until(
        "sends are taken on the small volume",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move {
                client
                    .send("q", raftq_client::Message::new("on the volume"))
                    .await
                    .ok()
            }
        },
    )
    .await;

    // Something else fills the volume to below the threshold.
    let ballast = data_dir.join("ballast");
    let free = nix::sys::statvfs::statvfs(&data_dir).expect("statvfs");
    let free_bytes = free.blocks_available() * free.fragment_size();
    let fill = free_bytes.saturating_sub(32 * 1024 * 1024);
    std::fs::write(&ballast, vec![0u8; fill as usize]).expect("write the ballast");
    let refused = first_refused_send(&client, "sends are refused below the threshold").await;
    assert_eq!(refused.code(), Some(Code::ResourceExhausted), "{refused}");
    assert!(
        refused.to_string().contains("min_free_disk_bytes"),
        "{refused}"
    );
    // Receives and acks go on.
    let delivered = client
        .receive("q", 10, Duration::ZERO, None)
        .await
        .expect("a receive on a full disk");
    assert!(!delivered.is_empty());
    let receipts: Vec<String> = delivered.iter().map(|d| d.receipt.clone()).collect();
    client
        .ack_batch("q", &receipts)
        .await
        .expect("acks on a full disk");

    // Space comes back: the node takes sends again by itself.
    std::fs::remove_file(&ballast).expect("remove the ballast");
    wait_until("sends are taken again", Duration::from_secs(20), || {
        let client = client.clone();
        async move {
            client
                .send("q", raftq_client::Message::new("after"))
                .await
                .ok()
        }
    })
    .await;
    cluster.node(1).stop();
    drop(volume);
}
