//! gRPC health, reflection, Prometheus metrics and the probes.

use raftq_client::{Message, pb};
use std::time::Duration;

use raftq_tests::{Cluster, create_queue, http_get, metric_value, wait_until};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};
use tonic_reflection::pb::v1alpha;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_grpc_health_reflection_and_prometheus_metrics() {
    let cluster = Cluster::start(3).await;
    let client = cluster.client();
    create_queue(&client, "observed", pb::QueueOptions::default()).await;
    for i in 0..5 {
        client
            .send("observed", Message::new(format!("m{i}")))
            .await
            .expect("send");
    }
    let leader = cluster.wait_for_leader().await;
    for node in &cluster.nodes {
        let channel = raftq_tests::connect(&node.grpc).await;
        let health = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "raftq.v1.MessageService".into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(health.status, ServingStatus::Serving as i32);
        // The probes' services: live, and ready once the node is a caught-up member.
        for service in ["raftq.liveness", "raftq.readiness"] {
            let health = HealthClient::new(channel.clone());
            wait_until(
                &format!("{service} is serving on node {}", node.id),
                Duration::from_secs(20),
                || {
                    let mut health = health.clone();
                    async move {
                        let status = health
                            .check(HealthCheckRequest {
                                service: service.into(),
                            })
                            .await
                            .ok()?
                            .into_inner()
                            .status;
                        (status == ServingStatus::Serving as i32).then_some(())
                    }
                },
            )
            .await;
        }

        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        // Older tools ask the v1alpha version of reflection.
        let mut older =
            v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone())
                .server_reflection_info(tokio_stream::iter(vec![
                    v1alpha::ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(
                            v1alpha::server_reflection_request::MessageRequest::ListServices(
                                String::new(),
                            ),
                        ),
                    },
                ]))
                .await
                .expect("reflection v1alpha")
                .into_inner();
        let answer = older
            .message()
            .await
            .expect("reflection v1alpha answer")
            .expect("one answer");
        assert!(
            matches!(
                answer.message_response,
                Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(
                    ref list
                )) if list.service.iter().any(|service| service.name == "raftq.v1.QueueService")
            ),
            "{answer:?}"
        );
        let mut responses = ServerReflectionClient::new(channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses
            .message()
            .await
            .expect("reflection answer")
            .expect("one answer");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection answer {response:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in [
            "raftq.v1.QueueService",
            "raftq.v1.MessageService",
            "raftq.v1.AdminService",
        ] {
            assert!(
                names.iter().any(|name| name == service),
                "{service} missing from {names:?}"
            );
        }
        // The internal protocol is served on the internal port only, and not described.
        assert!(
            !names.iter().any(|name| name.starts_with("raftq.raft.")),
            "the public port describes the internal protocol: {names:?}"
        );

        let (status, _) = http_get(&node.http, "/healthz").await;
        assert_eq!(status, 200, "healthz of node {}", node.id);
        let (status, body) = http_get(&node.http, "/readyz").await;
        assert_eq!(status, 200, "readyz of node {}: {body}", node.id);
        // One source of readiness: what /readyz says, gRPC health says already.
        let readiness = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "raftq.readiness".into(),
            })
            .await
            .expect("readiness check")
            .into_inner();
        assert_eq!(
            readiness.status,
            ServingStatus::Serving as i32,
            "node {}",
            node.id
        );
        let (status, metrics) = http_get(&node.http, "/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("raftq_raft_term "), "{metrics}");
        assert!(metrics.contains("raftq_raft_applied_index "), "{metrics}");
        let committed = metric_value(&metrics, "raftq_allocator_committed_bytes");
        assert!(
            committed > 0.0,
            "allocator committed {committed}: {metrics}"
        );
        if node.id == leader {
            assert!(
                metrics.contains("raftq_queue_depth{queue=\"observed\"} 5"),
                "{metrics}"
            );
            assert!(metrics.contains("raftq_messages_sent_total 5"), "{metrics}");
            assert!(metrics.contains("raftq_wal_sync_batch_size"), "{metrics}");
            assert!(metrics.contains("raftq_raft_is_leader 1"), "{metrics}");
            let writes = metric_value(&metrics, "raftq_raft_write_seconds_count");
            assert!(writes > 0.0, "leader commit timings: {metrics}");
            // Every client write is timed in the batcher's queue: at least the five sends.
            let queued = metric_value(&metrics, "raftq_write_queue_seconds_count");
            assert!(queued >= 5.0, "leader queue timings: {metrics}");
        } else {
            let appends = metric_value(&metrics, "raftq_append_entries_seconds_count");
            assert!(appends > 0.0, "follower append timings: {metrics}");
        }
    }
}
