//! The HTTP side port: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`
//! (as `probes` last found them).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use raftq_cluster::{DataGroups, RaftNode, Role};

use crate::probes::Probes;

/// Per-queue gauges are exported for at most this many queues (bounded label cardinality).
const MAX_QUEUE_GAUGES: usize = 1_000;
/// Per-group gauges, likewise, for at most this many of the node's data-group replicas.
const MAX_GROUP_GAUGES: usize = 1_000;

#[derive(Clone)]
struct HttpState {
    node: RaftNode,
    groups: std::sync::Arc<DataGroups>,
    prometheus: PrometheusHandle,
    probes: Probes,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    node: RaftNode,
    groups: std::sync::Arc<DataGroups>,
    prometheus: PrometheusHandle,
    probes: Probes,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState {
            node,
            groups,
            prometheus,
            probes,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

async fn render_metrics(State(state): State<HttpState>) -> String {
    let status = state.node.status();
    metrics::gauge!("raftq_raft_term").set(status.term as f64);
    metrics::gauge!("raftq_raft_last_log_index").set(status.last_log_index as f64);
    metrics::gauge!("raftq_raft_committed_index").set(status.committed_index as f64);
    metrics::gauge!("raftq_raft_applied_index").set(status.applied_index as f64);
    metrics::gauge!("raftq_raft_snapshot_index").set(status.snapshot_index as f64);
    metrics::gauge!("raftq_raft_purged_index").set(status.purged_index as f64);
    metrics::gauge!("raftq_raft_is_leader").set(if status.role == Role::Leader {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("raftq_raft_members").set(status.members.len() as f64);
    for replica in state.groups.replicas().iter().take(MAX_GROUP_GAUGES) {
        let status = replica.status();
        let group = status.group.to_string();
        let leads = if status.role == Role::Leader {
            1.0
        } else {
            0.0
        };
        metrics::gauge!("raftq_group_is_leader", "group" => group.clone()).set(leads);
        metrics::gauge!("raftq_group_term", "group" => group.clone()).set(status.term as f64);
        metrics::gauge!("raftq_group_last_log_index", "group" => group.clone())
            .set(status.last_log_index as f64);
        metrics::gauge!("raftq_group_applied_index", "group" => group.clone())
            .set(status.applied_index as f64);
        metrics::gauge!("raftq_group_committed_index", "group" => group.clone())
            .set(status.committed_index as f64);
        metrics::gauge!("raftq_group_members", "group" => group.clone())
            .set(status.members.len() as f64);
        let usage = replica.state().read().usage();
        metrics::gauge!("raftq_group_queues", "group" => group.clone()).set(usage.queues as f64);
        metrics::gauge!("raftq_group_stored_messages", "group" => group.clone())
            .set(usage.messages as f64);
        metrics::gauge!("raftq_group_stored_bytes", "group" => group).set(usage.bytes as f64);
    }
    let memory = state.node.storage_memory();
    metrics::gauge!("raftq_rocksdb_memtable_bytes").set(memory.memtables as f64);
    metrics::gauge!("raftq_rocksdb_block_cache_bytes").set(memory.block_cache as f64);
    metrics::gauge!("raftq_rocksdb_block_cache_capacity_bytes")
        .set(memory.block_cache_capacity as f64);
    metrics::gauge!("raftq_rocksdb_table_readers_bytes").set(memory.table_readers as f64);
    metrics::gauge!("raftq_allocator_committed_bytes").set(allocator_committed_bytes() as f64);
    // Group 1's queues, then those of the data groups this node runs a replica of.
    let mut queues = state.node.state().read().list_queues("", MAX_QUEUE_GAUGES);
    for replica in state.groups.replicas() {
        let room = MAX_QUEUE_GAUGES.saturating_sub(queues.len());
        if room == 0 {
            break;
        }
        queues.extend(replica.state().read().list_queues("", room));
    }
    metrics::gauge!("raftq_queues").set(queues.len() as f64);
    for queue in queues {
        let name = queue.name;
        metrics::gauge!("raftq_queue_depth", "queue" => name.clone()).set(queue.stats.depth as f64);
        metrics::gauge!("raftq_queue_in_flight", "queue" => name.clone())
            .set(queue.stats.in_flight as f64);
        metrics::gauge!("raftq_queue_delayed", "queue" => name).set(queue.stats.delayed as f64);
    }
    state.prometheus.render()
}

/// Memory the allocator has taken from the system for the Rust side (queue state,
/// buffers); RocksDB's is in the `raftq_rocksdb_*` gauges.
fn allocator_committed_bytes() -> usize {
    let (mut elapsed_ms, mut user_ms, mut system_ms) = (0, 0, 0);
    let (mut rss, mut peak_rss, mut committed, mut peak_committed, mut page_faults) =
        (0, 0, 0, 0, 0);
    // SAFETY: mi_process_info only writes its figures to the places given.
    unsafe {
        libmimalloc_sys::mi_process_info(
            &mut elapsed_ms,
            &mut user_ms,
            &mut system_ms,
            &mut rss,
            &mut peak_rss,
            &mut committed,
            &mut peak_committed,
            &mut page_faults,
        );
    }
    committed
}

async fn healthz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.probes.current().live {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn readyz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.probes.current().ready {
        Ok(reason) => (StatusCode::OK, format!("{reason}\n")),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
