//! Every data directory records the cluster it belongs to; nodes of another cluster are
//! neither added nor served.

use std::time::Duration;

use raftq_client::{Code, pb};
use raftq_tests::{Cluster, free_port, raftq_binary, wait_until};

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
    let output = tokio::process::Command::new(raftq_binary())
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
        .args(raftq_tests::node_tls_args(ours.dir.path(), "restarted-2"))
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output)
        .await
        .expect("the node exits")
        .expect("run raftq serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    // Refused by its own check of the peers' cluster, or by their leader when it asks to
    // join (which one depends on how far the node's Raft has loaded its membership).
    assert!(
        stderr.contains(&format!("cluster {other} is not this cluster ({id})"))
            || stderr.contains(&format!("cluster {id} is not this cluster ({other})")),
        "{stderr}"
    );
}
