//! `raftq serve`: one node — Raft, the gRPC API, the HTTP side port — until SIGINT/SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusHandle;
use raftq_cluster::{DataGroups, Node, NodeConfig, RaftNode};
use raftq_tls::{NodeTls, Transport};
use tokio::sync::watch;

use crate::admission::Admission;
use crate::config::ServeConfig;
use crate::context::Context;
use crate::{grpc, http, probes};

/// How long the gRPC server may take to finish the calls and streams in flight once it
/// stops taking new ones.
const GRACEFUL_STOP_WITHIN: Duration = Duration::from_secs(10);
/// How long a stopping node waits for its consume streams to end before it goes on.
const CONSUME_STREAMS_END_WITHIN: Duration = Duration::from_secs(3);
/// How long a joining node keeps asking to be added before it gives up.
const JOIN_DEADLINE: Duration = Duration::from_secs(300);

pub async fn run(config: ServeConfig, prometheus: PrometheusHandle) -> anyhow::Result<()> {
    let addresses = config.addresses();
    let peers = config.peer_map()?;
    let tls = match config.tls_files()? {
        Some(files) => Some(NodeTls::load(files).context("loading the TLS files")?),
        None => {
            tracing::warn!(
                "serving plaintext (--insecure): anyone who reaches the ports can read and change \
                 every queue and speak Raft to this node; never where others can reach them"
            );
            None
        }
    };
    metrics::gauge!("raftq_insecure").set(if tls.is_none() { 1.0 } else { 0.0 });
    let transport = match &tls {
        Some(tls) => Transport::Tls(tls.connector()),
        None => Transport::Plaintext,
    };
    let public_listener = grpc::bind(config.listen, "public").await?;
    let internal_listener = grpc::bind(config.internal_listen, "internal").await?;
    let http_listener = http::bind(config.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener {}", config.http_listen))?;
    let node = RaftNode::start(NodeConfig {
        node_id: config.node_id,
        addresses: addresses.clone(),
        transport: transport.clone(),
        data_dir: config.data_dir.clone(),
        cluster_name: tls.as_ref().and_then(NodeTls::cluster),
        tuning: config.raft.clone(),
        storage: config.storage.clone(),
    })
    .await
    .context("starting raft")?;

    // The nodes named in `peers` are the voters the cluster starts with: data groups are
    // placed once they all are voters.
    let groups = DataGroups::new(node.clone(), config.groups.clone(), peers.len());

    let (stop, stopped) = watch::channel(false);
    let (begin_stop, stopping) = watch::channel(false);
    let admin_token = config.admin_token()?;
    let admission = Admission::new(config.admission.clone());
    let handlers = grpc::Handlers {
        context: Context::new(
            node.clone(),
            groups.clone(),
            transport.clone(),
            admission.clone(),
            config.producers.clone(),
        ),
        auth: crate::auth::Auth::new(node.clone(), admin_token.as_deref()),
        stopped: stopped.clone(),
        stopping,
    };
    let (public_routes, health_reporter) = handlers.public().await?;
    let internal_routes = handlers.internal(&node);
    let public_task = tokio::spawn(grpc::serve(
        public_routes,
        public_listener,
        tls.clone(),
        grpc::Port::Public,
        Some(admission.clone()),
        until(stopped.clone()),
    ));
    let internal_task = tokio::spawn(grpc::serve(
        internal_routes,
        internal_listener,
        tls.clone(),
        grpc::Port::Internal,
        None,
        until(stopped.clone()),
    ));
    tokio::spawn(admission.clone().watch_usage(
        node.clone(),
        groups.clone(),
        config.data_dir.clone(),
        until(stopped.clone()),
    ));
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(until(stopped.clone())));
    }
    let timer_task = tokio::spawn(timers(node.clone(), groups.clone(), until(stopped.clone())));
    let (probes, probe_task) = probes::start(
        node.clone(),
        transport.clone(),
        health_reporter.clone(),
        until(stopped.clone()),
    );
    let http_task = tokio::spawn(http::serve(
        http_listener,
        node.clone(),
        groups.clone(),
        prometheus,
        probes,
        until(stopped.clone()),
    ));
    tracing::info!(
        node_id = config.node_id,
        public = %config.listen,
        internal = %config.internal_listen,
        http = %config.http_listen,
        tls = tls.is_some(),
        raft = ?config.raft,
        "raftq node serving"
    );

    tokio::spawn(report_raft_failure(node.clone()));
    // How this node calls its peers as a client (joining): their internal ports, over its
    // own TLS, and with the admin token should a call end up on a public port.
    let as_peer = raftq_client::ClientConfig {
        transport: transport.clone(),
        token: admin_token.clone(),
        ..raftq_client::ClientConfig::default()
    };
    let bootstrap = bootstrap(&config, &node, &addresses, &as_peer, peers);
    let outcome = tokio::select! {
        result = bootstrap => result.map(|()| None),
        signal = shutdown_signal() => Ok(Some(signal)),
    };
    let signal = match outcome? {
        Some(signal) => signal,
        None => shutdown_signal().await,
    };
    tracing::info!(signal, "shutting down");
    // Consume streams end first, while this node still leads: their last acks are
    // written and their deliveries handed back, rather than left to their leases.
    let _ = begin_stop.send(true);
    let streams_ended = tokio::time::Instant::now() + CONSUME_STREAMS_END_WITHIN;
    while admission.consume_streams_open() > 0 && tokio::time::Instant::now() < streams_ended {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A leader hands over first, while it still serves Raft traffic, so the cluster has a
    // leader again at once rather than after an election timeout. Then the server stops
    // taking calls and finishes those in flight (clients retry elsewhere).
    node.hand_over_leadership(HAND_OVER_TIMEOUT).await;
    groups.shutdown(DATA_GROUP_HAND_OVER_TIMEOUT).await;
    let _ = stop.send(true);
    // A client that stopped reading a stream would hold the graceful stop for ever: its
    // answers wait for flow-control room. Past the limit the server stops anyway; a
    // consume stream has handed its deliveries back by then.
    let stop_by = tokio::time::Instant::now() + GRACEFUL_STOP_WITHIN;
    for (mut task, port) in [(public_task, "public"), (internal_task, "internal")] {
        match tokio::time::timeout_at(stop_by, &mut task).await {
            Ok(served) => served
                .with_context(|| format!("{port} gRPC task"))?
                .with_context(|| format!("{port} gRPC server"))?,
            Err(_) => {
                tracing::warn!(
                    port,
                    "calls or streams still open {GRACEFUL_STOP_WITHIN:?} after the stop began; closing them"
                );
                task.abort();
            }
        }
    }
    http_task
        .await
        .context("HTTP task")?
        .context("HTTP server")?;
    timer_task.await.context("timer task")?;
    probe_task.await.context("health probe task")?;
    node.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// Longest a stopping leader waits for another node to take over.
const HAND_OVER_TIMEOUT: Duration = Duration::from_secs(5);
/// The same, for each data group this node leads.
const DATA_GROUP_HAND_OVER_TIMEOUT: Duration = Duration::from_secs(1);

/// How often the leader looks for timed work (expiries, ended leases) to write a tick for.
const TICK_INTERVAL: Duration = Duration::from_millis(250);

/// Drives time-based queue work on the leader until `stop` resolves, follows the data
/// groups' placement, and on every node gives the allocator's free pages back to the
/// system at the same pace.
async fn timers(
    node: RaftNode,
    groups: std::sync::Arc<DataGroups>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut interval = tokio::time::interval(TICK_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = interval.tick() => {
                crate::release_freed_memory();
                groups.follow().await;
                for replica in std::iter::once(node.clone()).chain(groups.replicas()) {
                    if let Err(error) = replica.tick_if_due().await {
                        tracing::debug!(group = replica.group(), %error, "tick not written");
                    }
                    if let Err(error) = replica.snapshot_if_log_grew().await {
                        tracing::warn!(
                            group = replica.group(),
                            %error,
                            "no snapshot taken for the log's size"
                        );
                    }
                }
            }
        }
    }
}

async fn until(mut stopped: watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM and names the one that came.
pub(crate) async fn shutdown_signal() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops this node");
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

/// Reports, once, that Raft stopped on an error of its own. The node then serves nothing:
/// calls are answered UNAVAILABLE, the liveness and readiness probes fail (so Kubernetes
/// restarts the pod), and `raftq_raft_running` drops to 0 for alerts elsewhere.
async fn report_raft_failure(node: RaftNode) {
    metrics::gauge!("raftq_raft_running").set(1.0);
    let reason = node.failed().await;
    metrics::gauge!("raftq_raft_running").set(0.0);
    tracing::error!(
        %reason,
        "Raft stopped on this node, which serves nothing until it is restarted. If the error \
         says the data is corrupt or fails a checksum (raftq_storage_corruption_total counts \
         these), the disk returned damaged data: stop the node, empty its data directory \
         (`raftq reset-data-dir --data-dir DIR`) and start it again to rebuild it from its peers (docs/operations.md, \"Replace one node that lost \
         its data\"), and check the disk"
    );
}

/// Forms the cluster or joins it. With a peer list, the lowest id forms the cluster alone
/// (when neither it nor any peer holds Raft state) and every other node joins it through the
/// peers; a node started with `--join` joins through that address.
async fn bootstrap(
    config: &ServeConfig,
    node: &RaftNode,
    addresses: &Node,
    as_peer: &raftq_client::ClientConfig,
    peers: std::collections::BTreeMap<u64, String>,
) -> anyhow::Result<()> {
    if let Some(join) = &config.join {
        return join_cluster(node, std::slice::from_ref(join), addresses, as_peer).await;
    }
    let members = if peers.is_empty() {
        std::collections::BTreeMap::from([(config.node_id, addresses.internal.clone())])
    } else {
        peers
    };
    if !members.contains_key(&config.node_id) {
        anyhow::bail!("node id {} is not in the peer list", config.node_id);
    }
    let others: std::collections::BTreeMap<u64, String> = members
        .iter()
        .filter(|(id, _)| **id != config.node_id)
        .map(|(id, address)| (*id, address.clone()))
        .collect();
    let founder = members.keys().next() == Some(&config.node_id);
    if founder && !node.holds_raft_state().await? {
        if peers_hold_no_raft_state(&others, &as_peer.transport).await {
            if node.initialize().await? {
                tracing::info!("formed a new cluster; the other peers join it");
            }
            return Ok(());
        }
        tracing::warn!(
            "this node's data directory is empty, but its peers already form a cluster: \
             joining it as a node that lost its data"
        );
    }
    if others.is_empty() {
        return Ok(());
    }
    let others: Vec<String> = others.into_values().collect();
    join_cluster(node, &others, addresses, as_peer).await
}

/// How often a forming node asks its peers whether they hold Raft state.
const PEER_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Waits until every peer has answered, and tells whether none of them holds Raft state.
/// A founder whose own data directory is empty forms a new cluster only then: had it lost
/// its disk, forming a new cluster would leave the old one's data behind.
async fn peers_hold_no_raft_state(
    peers: &std::collections::BTreeMap<u64, String>,
    transport: &Transport,
) -> bool {
    let mut answered = std::collections::BTreeSet::new();
    let mut asked = 0u64;
    loop {
        for (id, address) in peers {
            if answered.contains(id) {
                continue;
            }
            if let Some(status) = crate::services::peer_status(
                *id,
                address,
                transport,
                crate::services::PEER_STATUS_TIMEOUT,
            )
            .await
            {
                if status.term > 0 || status.last_log_index > 0 || status.leader_id != 0 {
                    return false;
                }
                answered.insert(*id);
            }
        }
        if answered.len() == peers.len() {
            return true;
        }
        asked += 1;
        if asked.is_multiple_of(50) {
            let waiting: Vec<&u64> = peers.keys().filter(|id| !answered.contains(id)).collect();
            tracing::info!(
                ?waiting,
                "waiting for every peer to answer before forming the cluster"
            );
        }
        tokio::time::sleep(PEER_POLL_INTERVAL).await;
    }
}

/// Joins the cluster through `through` (members' internal addresses) as a voter, unless the cluster already has this
/// node as a voter at this address. The node's own view is not enough: a node removed while
/// it was down (a scale-down) still remembers itself as a member, and must join again when it
/// comes back; one that the cluster counts as a learner is promoted. A node that lost its
/// data asks to be made a learner until it has caught up, whatever the cluster counts it as.
async fn join_cluster(
    node: &RaftNode,
    through: &[String],
    addresses: &Node,
    as_peer: &raftq_client::ClientConfig,
) -> anyhow::Result<()> {
    let client = raftq_client::Client::new(
        through,
        raftq_client::ClientConfig {
            retry_deadline: JOIN_DEADLINE,
            ..as_peer.clone()
        },
    )?;
    let status = node.status();
    let locally_voter = status
        .members
        .get(&node.node_id())
        .is_some_and(|(_, voter)| *voter);
    if locally_voter && !status.rebuilding {
        // The cluster may need this node's vote to answer at all (every node restarting at
        // once): Raft already runs, so only ask, and stay as is when nobody answers.
        match client.cluster_status().await {
            Ok(cluster) => {
                // Peers of another cluster than the one this data directory belongs to:
                // serving would mix the two.
                node.check_cluster(&cluster.cluster_id)?;
                if cluster.nodes.iter().any(|member| {
                    member.node_id == node.node_id()
                        && member.voter
                        && member.address == addresses.public
                        && member.internal_address == addresses.internal
                }) {
                    tracing::info!("already a voter; not joining again");
                    return Ok(());
                }
                tracing::info!("the cluster does not count this node as a voter");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot confirm membership with the cluster; staying a member");
                return Ok(());
            }
        }
    }
    let through = through.join(",");
    tracing::info!(%through, rebuilding = status.rebuilding, "asking the cluster to add this node");
    let joined = client
        .add_node(raftq_client::pb::AddNodeRequest {
            node_id: node.node_id(),
            address: addresses.public.clone(),
            internal_address: addresses.internal.clone(),
            promote: true,
            lost_data: status.rebuilding,
            cluster_id: status.cluster_id.clone().unwrap_or_default(),
        })
        .await
        .with_context(|| format!("joining through {through}"))?;
    node.join_cluster(&joined.cluster_id)?;
    tracing::info!(cluster_id = %joined.cluster_id, "joined the cluster as a voter");
    Ok(())
}
