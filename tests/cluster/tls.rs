//! TLS on both ports: who is refused, and certificates rotated without a restart.

use std::time::Duration;

use raftq_client::{Client, ClientConfig, ClientTls, Transport, pb};
use raftq_proto::raft_pb::{RaftRequest, raft_service_client::RaftServiceClient};
use raftq_tests::tls::TestCa;
use raftq_tests::{Cluster, create_queue, test_ca, test_client_config, wait_until};
use raftq_tls::generate::{Authority, Validity, write_file};
use tonic::Code;
use tonic::transport::Endpoint;

/// A client of `address` that connects through `transport`, and gives up quickly.
fn client_over(address: &str, transport: Transport) -> Client {
    Client::new(
        &[address.to_string()],
        ClientConfig {
            retry_deadline: Duration::from_secs(2),
            transport,
            ..test_client_config()
        },
    )
    .expect("client")
}

/// What a node's internal port answers a Raft vote meant for another node, over a
/// connection through `transport`: a Raft-level refusal once the connection is accepted.
pub(crate) async fn internal_answer(
    address: &str,
    transport: &Transport,
) -> Result<tonic::Status, String> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let channel = transport
        .connect(&endpoint)
        .await
        .map_err(|error| format!("connect: {error:?}"))?;
    let answer = RaftServiceClient::new(channel)
        .vote(RaftRequest {
            group_id: 1,
            target_node_id: 999,
            payload: Vec::new(),
            cluster_id: String::new(),
        })
        .await;
    match answer {
        Err(status) if status.code() == Code::FailedPrecondition => Ok(status),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_clients_and_clients_trusting_another_ca_are_refused() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    create_queue(&cluster.client(), "q", pb::QueueOptions::default()).await;

    // The TLS server takes the plaintext HTTP/2 preface for a bad handshake and closes.
    // The client sees the closed connection as UNAVAILABLE or UNKNOWN, or, when it closes
    // while the call is being written, as CANCELLED.
    let plaintext = client_over(&node.grpc, Transport::Plaintext);
    let refused = plaintext
        .get_queue("q")
        .await
        .expect_err("plaintext refused");
    assert!(
        matches!(
            refused.code(),
            Some(Code::Unknown | Code::Unavailable | Code::Cancelled)
        ),
        "{refused}"
    );

    let elsewhere = Authority::new("another CA").expect("CA");
    let trusting_elsewhere = ClientTls::from_pem(&elsewhere.cert_pem(), None).expect("TLS");
    let refused = client_over(&node.grpc, Transport::Tls(trusting_elsewhere.connector()))
        .create_queue("sneaky", pb::QueueOptions::default())
        .await
        .expect_err("a server certificate from an unknown CA is refused");
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");

    let queues = cluster.client().list_queues().await.expect("list");
    assert_eq!(
        queues
            .iter()
            .map(|queue| queue.name.as_str())
            .collect::<Vec<_>>(),
        ["q"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_takes_only_peers_with_a_certificate_from_the_cluster_ca() {
    let cluster = Cluster::start(1).await;
    let internal = cluster.nodes[0].internal.clone();

    // A node's own kind of certificate: accepted, and refused only by Raft itself.
    let status = internal_answer(&internal, &test_ca().transport())
        .await
        .expect("a peer with a cluster certificate reaches Raft");
    assert!(status.message().contains("not node 999"), "{status}");

    // Trusting the cluster CA but presenting no certificate.
    let anonymous = ClientTls::from_files(&test_ca().ca_path(), None).expect("TLS");
    let refused = internal_answer(&internal, &Transport::Tls(anonymous.connector()))
        .await
        .expect_err("no client certificate");
    assert!(!refused.contains("not node 999"), "{refused}");

    // A certificate from another CA (a node of another cluster, or anyone).
    let other = TestCa::new("another cluster's CA");
    let (cert, key) = other.client_identity();
    let foreign = ClientTls::from_files(&test_ca().ca_path(), Some((&cert, &key))).expect("TLS");
    let refused = internal_answer(&internal, &Transport::Tls(foreign.connector()))
        .await
        .expect_err("a certificate from another CA");
    assert!(!refused.contains("not node 999"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_certificate_expired_is_refused_by_clients() {
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) =
        test_ca().issue_node_with(dir.path(), "expired", "127.0.0.1", Validity::Expired);
    let listen = format!("127.0.0.1:{}", raftq_tests::free_port());
    let internal = format!("127.0.0.1:{}", raftq_tests::free_port());
    let mut node = tokio::process::Command::new(raftq_tests::raftq_binary())
        .args([
            "serve",
            "--node-id",
            "1",
            "--listen",
            &listen,
            "--internal-listen",
            &internal,
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--tls-ca")
        .arg(test_ca().ca_path())
        .arg("--admin-token-file")
        .arg(test_ca().admin_token_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start raftq serve");
    // The node serves (it does not judge its own certificate); clients refuse it.
    let client = client_over(&listen, test_ca().transport());
    wait_until("the node listens", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(&listen).await.ok()
    })
    .await;
    let refused = client
        .cluster_status()
        .await
        .expect_err("an expired server certificate is refused");
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");
    node.kill().await.expect("stop the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let cluster = Cluster::start(1).await;
    let node = &cluster.nodes[0];
    // Clients that trust only a new CA cannot connect yet.
    let next = Authority::new("the next CA").expect("CA");
    let trusting_next = Transport::Tls(
        ClientTls::from_pem(&next.cert_pem(), None)
            .expect("TLS")
            .connector(),
    );
    let new_client = client_over(&node.grpc, trusting_next.clone());
    new_client
        .cluster_status()
        .await
        .expect_err("the node's certificate is not from the next CA yet");

    // The files are replaced, as cert-manager does (each written whole, then renamed).
    let issued = next
        .issue("node-1", &["127.0.0.1".into(), "localhost".into()])
        .expect("certificate");
    let dir = cluster.dir.path();
    write_file(&dir.join("node-1.key"), &issued.key_pem, 0o600).expect("key");
    write_file(&dir.join("node-1.pem"), &issued.cert_pem, 0o644).expect("cert");

    wait_until(
        "the node presents its new certificate",
        Duration::from_secs(30),
        || {
            let address = node.grpc.clone();
            let transport = trusting_next.clone();
            async move { client_over(&address, transport).cluster_status().await.ok() }
        },
    )
    .await;
}
