//! Every data directory records the cluster it belongs to; nodes of another cluster are
//! neither added nor served. Node certificates that name a cluster bind it: peers of another
//! cluster fail the handshake, and data of another cluster does not start.

use std::time::Duration;

use raftq_client::{ClientTls, Code, Transport, pb};
use raftq_tests::{
    Cluster, ClusterOptions, free_port, raftq_binary, refused_start, test_ca, tls_args, wait_until,
};

use crate::tls::internal_answer;

/// The cluster id as `cluster`'s leader reports it.
async fn cluster_id(cluster: &Cluster) -> String {
    let status = cluster
        .client()
        .cluster_status()
        .await
        .expect("cluster status");
    assert!(!status.cluster_id.is_empty(), "{status:?}");
    status.cluster_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_records_the_cluster_id_and_a_node_of_another_cluster_cannot_join() {
    let mut ours = Cluster::start(3).await;
    let theirs = Cluster::start(1).await;
    let id = cluster_id(&ours).await;
    let other = cluster_id(&theirs).await;
    assert_ne!(id, other, "each cluster is named when it is formed");
    for node in 1..=3 {
        let client = ours.node(node).client();
        wait_until(
            &format!("node {node} records cluster {id}"),
            Duration::from_secs(30),
            || {
                let (client, id) = (client.clone(), id.clone());
                async move {
                    let info = client.node_info().await.ok()?;
                    (info.cluster_id == id).then_some(())
                }
            },
        )
        .await;
    }

    let refused = ours
        .client()
        .add_node(pb::AddNodeRequest {
            node_id: 4,
            address: theirs.nodes[0].grpc.clone(),
            internal_address: theirs.nodes[0].internal.clone(),
            promote: true,
            lost_data: false,
            cluster_id: other.clone(),
        })
        .await
        .expect_err("a node of another cluster is refused");
    assert_eq!(refused.code(), Some(Code::FailedPrecondition), "{refused}");
    let message = refused.to_string();
    assert!(
        message.contains(&id) && message.contains(&other),
        "{message}"
    );
    let members = ours.client().cluster_status().await.expect("status").nodes;
    assert_eq!(
        members.iter().map(|node| node.node_id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_with_the_peers_of_another_cluster_refuses_to_serve() {
    let mut ours = Cluster::start(2).await;
    let theirs = Cluster::start(2).await;
    let id = cluster_id(&ours).await;
    let other = cluster_id(&theirs).await;
    ours.node(2).stop();
    let data_dir = ours.node(2).data_dir.clone();
    let listen = format!("127.0.0.1:{}", free_port());
    let internal = format!("127.0.0.1:{}", free_port());
    let peers = format!("1={},2={internal}", theirs.nodes[0].internal);
    let mut serve = tokio::process::Command::new(raftq_binary());
    serve
        .args([
            "serve",
            "--node-id",
            "2",
            "--listen",
            &listen,
            "--internal-listen",
            &internal,
            "--peers",
            &peers,
        ])
        .args(["--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .args(raftq_tests::node_tls_args(ours.dir.path(), "restarted-2"));
    let stderr = refused_start(serve, Duration::from_secs(60)).await;
    // Refused by its own check of the peers' cluster, or by their leader when it asks to
    // join (which one depends on how far the node's Raft has loaded its membership).
    assert!(
        stderr.contains(&format!("cluster {other} is not this cluster ({id})"))
            || stderr.contains(&format!("cluster {id} is not this cluster ({other})")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_bind_the_cluster_and_refuse_peers_and_data_of_another() {
    let mut alpha = Cluster::start_with(
        2,
        ClusterOptions {
            cluster_name: Some("alpha".into()),
            ..ClusterOptions::default()
        },
    )
    .await;
    assert_eq!(
        cluster_id(&alpha).await,
        "alpha",
        "the cluster takes the name its certificates give"
    );

    // One CA, three certificates: only the one naming alpha reaches alpha's Raft.
    let internal = alpha.nodes[0].internal.clone();
    let dir = alpha.dir.path().to_path_buf();
    let peer_of = |stem: &str, cluster: Option<&str>| {
        let (cert, key) = match cluster {
            Some(cluster) => test_ca().issue_node_in_cluster(&dir, stem, "127.0.0.1", cluster),
            None => test_ca().issue_node(&dir, stem, "127.0.0.1"),
        };
        Transport::Tls(
            ClientTls::from_files(&test_ca().ca_path(), Some((&cert, &key)))
                .expect("a peer's TLS")
                .connector(),
        )
    };
    internal_answer(&internal, &peer_of("alpha-peer", Some("alpha")))
        .await
        .expect("a peer of the same cluster reaches Raft");
    for (stem, cluster) in [("beta-peer", Some("beta")), ("unnamed-peer", None)] {
        let refused = internal_answer(&internal, &peer_of(stem, cluster)).await;
        assert!(refused.is_err(), "{stem}: {refused:?}");
    }

    // Node 2's data belongs to alpha: with a certificate naming beta it does not start.
    alpha.node(2).stop();
    let data_dir = alpha.node(2).data_dir.clone();
    let (cert, key) = test_ca().issue_node_in_cluster(&dir, "node-2-beta", "127.0.0.1", "beta");
    let mut serve = tokio::process::Command::new(raftq_binary());
    serve
        .args(["serve", "--node-id", "2", "--listen"])
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--internal-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(["--http-listen", "127.0.0.1:0", "--peers"])
        .arg(format!("1={internal}"))
        .arg("--data-dir")
        .arg(&data_dir)
        .args(tls_args(&cert, &key));
    let stderr = refused_start(serve, Duration::from_secs(60)).await;
    assert!(
        stderr.contains("belongs to cluster alpha") && stderr.contains("names cluster beta"),
        "{stderr}"
    );

    // With its own certificate it comes back.
    alpha.node(2).restart();
    alpha.wait_for_voters(2).await;
}
