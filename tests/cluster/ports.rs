//! The two ports: the public one serves the client API and nothing of the internal
//! protocol; the internal one serves Raft, membership changes and forwarded calls.

use raftq_client::{Message, pb};
use raftq_proto::raft_pb::{RaftRequest, SnapshotChunk, raft_service_client::RaftServiceClient};
use raftq_tests::{Cluster, create_queue};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_raft_rpc_on_the_public_port_is_unimplemented() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "q", pb::QueueOptions::default()).await;
    client.send("q", Message::new("kept")).await.expect("send");
    let stats_before = client.get_queue("q").await.expect("get").stats;

    for node in &cluster.nodes {
        let mut raft =
            RaftServiceClient::new(raftq_tests::connect(&format!("http://{}", node.grpc)).await);
        // A forged vote with a huge term, meant for this node of this cluster.
        let forged = || RaftRequest {
            group_id: 1,
            target_node_id: node.id,
            payload: vec![0; 16],
            cluster_id: String::new(),
        };
        let refusals = [
            ("AppendEntries", raft.append_entries(forged()).await.err()),
            ("Vote", raft.vote(forged()).await.err()),
            ("TransferLeader", raft.transfer_leader(forged()).await.err()),
            (
                "InstallSnapshot",
                raft.install_snapshot(tokio_stream::iter(vec![SnapshotChunk {
                    group_id: 1,
                    target_node_id: node.id,
                    header: vec![0; 16],
                    data: vec![0; 16],
                    cluster_id: String::new(),
                }]))
                .await
                .err(),
            ),
            (
                "AppendEntriesStream",
                match raft
                    .append_entries_stream(tokio_stream::iter(vec![forged()]))
                    .await
                {
                    Ok(mut answers) => answers.get_mut().message().await.err(),
                    Err(status) => Some(status),
                },
            ),
        ];
        for (rpc, refusal) in refusals {
            let status = refusal.unwrap_or_else(|| panic!("{rpc} answered on the public port"));
            assert_eq!(status.code(), Code::Unimplemented, "{rpc}: {status}");
        }
    }
    // Nothing changed: the same leader and term, the message still there.
    let status = client.cluster_status().await.expect("status");
    assert_eq!(status.nodes.len(), 3);
    assert!(
        status
            .nodes
            .iter()
            .all(|node| node.term == status.nodes[0].term)
    );
    assert_eq!(
        client.get_queue("q").await.expect("get").stats,
        stats_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_names_both_ports_and_leader_hints_name_the_public_one() {
    let cluster = Cluster::start(3).await;
    let status = cluster.client().cluster_status().await.expect("status");
    for node in &cluster.nodes {
        let reported = status
            .nodes
            .iter()
            .find(|reported| reported.node_id == node.id)
            .expect("every node reported");
        assert_eq!(reported.address, node.grpc);
        assert_eq!(reported.internal_address, node.internal);
    }
    let leader = cluster
        .nodes
        .iter()
        .find(|node| node.id == status.leader_id)
        .expect("the leader is a node");
    assert_eq!(status.leader_address, leader.grpc);

    // A call through a follower's public port is forwarded over the internal port and
    // served; the answer names the leader's public address.
    let follower = cluster
        .nodes
        .iter()
        .find(|node| node.id != status.leader_id)
        .expect("a follower");
    let through_follower = raftq_client::Client::new(
        std::slice::from_ref(&follower.grpc),
        raftq_tests::test_client_config(),
    )
    .expect("client");
    create_queue(&through_follower, "forwarded", pb::QueueOptions::default()).await;
    through_follower
        .send("forwarded", Message::new("via a follower"))
        .await
        .expect("a send through a follower is forwarded");
    assert_eq!(through_follower.preferred_address(), leader.grpc);
}
