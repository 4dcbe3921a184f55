//! Cluster commands: `cluster status`, `add-node`, `remove-node`, `shrink`; the status output.

use clap::Subcommand;
use raftq_client::{Client, ClientError, pb};
use serde_json::json;

use super::output::{Output, print};

#[derive(Subcommand, Debug)]
pub(super) enum ClusterCommand {
    Status,
    /// Add a node as learner, then voter once it has caught up.
    AddNode {
        #[arg(long)]
        id: u64,
        /// The new node's public gRPC address (what clients use).
        #[arg(long)]
        node_addr: String,
        /// The new node's internal address (what other nodes use).
        #[arg(long)]
        internal_addr: String,
        /// Leave the node a learner.
        #[arg(long)]
        no_promote: bool,
        /// The node lost its data and was started again on an empty data directory: remove
        /// its old self, add it as a learner and promote it once it has caught up (a node
        /// does this itself when it starts).
        #[arg(long)]
        lost_data: bool,
    },
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
    /// Remove every member whose id is above `--to`, one at a time, highest first: what a
    /// scale-down to `--to` nodes (ids 1..=to) needs before the departing nodes stop.
    /// Nothing to remove is not an error.
    Shrink {
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
    },
}

pub(super) async fn run(
    client: &Client,
    command: ClusterCommand,
    output: Output,
) -> Result<(), ClientError> {
    let status = match command {
        ClusterCommand::Status => client.cluster_status().await?,
        ClusterCommand::AddNode {
            id,
            node_addr,
            internal_addr,
            no_promote,
            lost_data,
        } => {
            client
                .add_node(pb::AddNodeRequest {
                    node_id: id,
                    address: node_addr,
                    promote: !no_promote,
                    lost_data,
                    cluster_id: String::new(),
                    internal_address: internal_addr,
                })
                .await?
        }
        ClusterCommand::RemoveNode { id } => remove_drained(client, id).await?,
        ClusterCommand::Shrink { to } => shrink(client, to).await?,
    };
    print_status(output, &status);
    Ok(())
}

/// Removes the members above `to`, highest first; answers the last status seen.
async fn shrink(client: &Client, to: u64) -> Result<pb::ClusterStatusResponse, ClientError> {
    let status = client.cluster_status().await?;
    let mut departing: Vec<u64> = status
        .nodes
        .iter()
        .map(|node| node.node_id)
        .filter(|id| *id > to)
        .collect();
    departing.sort_unstable_by(|a, b| b.cmp(a));
    let mut status = status;
    for id in departing {
        eprintln!("removing node {id}");
        status = remove_drained(client, id).await?;
    }
    Ok(status)
}

/// Longest a removal waits for the node's data-group replicas to move elsewhere.
const DRAIN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Removes node `id`, calling again while the cluster answers that the node's data-group
/// replicas are still moving to other nodes (each call waits for them a while), for at
/// most [`DRAIN_DEADLINE`].
async fn remove_drained(
    client: &Client,
    id: u64,
) -> Result<pb::ClusterStatusResponse, ClientError> {
    let started = std::time::Instant::now();
    loop {
        match client.remove_node(id).await {
            Err(error)
                if error.code() == Some(tonic::Code::Unavailable)
                    && started.elapsed() < DRAIN_DEADLINE =>
            {
                eprintln!("  node {id}: {error}");
            }
            answer => return answer,
        }
    }
}

fn print_status(output: Output, status: &pb::ClusterStatusResponse) {
    let nodes: Vec<_> = status
        .nodes
        .iter()
        .map(|node| {
            json!({
                "node_id": node.node_id,
                "address": node.address,
                "internal_address": node.internal_address,
                "role": node.role,
                "voter": node.voter,
                "term": node.term,
                "last_log_index": node.last_log_index,
                "committed_index": node.committed_index,
                "applied_index": node.applied_index,
                "snapshot_index": node.snapshot_index,
                "purged_index": node.purged_index,
                "leader_id": node.leader_id,
                "rebuilding": node.rebuilding,
                "cluster_id": node.cluster_id,
                "replicas": node.replicas.iter().map(|r| json!({
                    "group_id": r.group_id,
                    "role": r.role,
                    "term": r.term,
                    "leader_id": r.leader_id,
                    "voters": r.voters,
                    "learners": r.learners,
                    "last_log_index": r.last_log_index,
                    "applied_index": r.applied_index,
                    "rebuilding": r.rebuilding,
                })).collect::<Vec<_>>(),
                "resources": node.resources.as_ref().map(|r| json!({
                    "stored_messages": r.stored_messages,
                    "max_stored_messages": r.max_stored_messages,
                    "stored_bytes": r.stored_bytes,
                    "max_stored_bytes": r.max_stored_bytes,
                    "dedup_records": r.dedup_records,
                    "max_dedup_records": r.max_dedup_records,
                    "disk_free_bytes": r.disk_free_bytes,
                    "min_free_disk_bytes": r.min_free_disk_bytes,
                    "sends_refused": r.sends_refused,
                })),
            })
        })
        .collect();
    let mut text = format!(
        "cluster: {}\nleader: node {} at {}\n",
        if status.cluster_id.is_empty() {
            "(no id recorded)"
        } else {
            &status.cluster_id
        },
        status.leader_id,
        status.leader_address
    );
    for node in &status.nodes {
        text.push_str(&format!(
            "  node {} {} (internal {}) {}{}{} term={} last_log={} committed={} applied={} snapshot={}\n",
            node.node_id,
            node.address,
            node.internal_address,
            node.role,
            if node.voter { "" } else { " (learner)" },
            if node.rebuilding {
                " (rebuilding: no vote yet)"
            } else {
                ""
            },
            node.term,
            node.last_log_index,
            node.committed_index,
            node.applied_index,
            node.snapshot_index
        ));
        if let Some(r) = &node.resources {
            text.push_str(&format!(
                "    stored {}/{} messages, {}/{} bytes, {}/{} dedup records; disk free {} (min {}){}\n",
                r.stored_messages,
                r.max_stored_messages,
                r.stored_bytes,
                r.max_stored_bytes,
                r.dedup_records,
                r.max_dedup_records,
                r.disk_free_bytes,
                r.min_free_disk_bytes,
                if r.sends_refused.is_empty() {
                    String::new()
                } else {
                    format!("; REFUSING SENDS ({})", r.sends_refused)
                }
            ));
        }
        if !node.replicas.is_empty() {
            let leads = node
                .replicas
                .iter()
                .filter(|r| r.role == raftq_proto::wire::role::LEADER)
                .count();
            let groups: Vec<String> = node
                .replicas
                .iter()
                .map(|r| format!("{}:{}", r.group_id, r.role))
                .collect();
            text.push_str(&format!(
                "    data groups: {} replicas, leads {leads}: {}\n",
                node.replicas.len(),
                groups.join(" ")
            ));
        }
    }
    let groups = group_summaries(status);
    if !groups.is_empty() {
        text.push_str("data groups:\n");
    }
    for group in &groups {
        let lag: Vec<String> = group
            .lag
            .iter()
            .map(|(node, lag)| format!("{node}:{lag}"))
            .collect();
        text.push_str(&format!(
            "  group {} leader {} voters {:?}{} queues={} messages={} bytes={} lag {}\n",
            group.group,
            if group.leader == 0 {
                "none".to_string()
            } else {
                format!("node {}", group.leader)
            },
            group.voters,
            if group.learners.is_empty() {
                String::new()
            } else {
                format!(" learners {:?}", group.learners)
            },
            group.queues,
            group.stored_messages,
            group.stored_bytes,
            lag.join(" ")
        ));
    }
    let groups: Vec<_> = groups
        .iter()
        .map(|group| {
            json!({
                "group_id": group.group,
                "leader_id": group.leader,
                "voters": group.voters,
                "learners": group.learners,
                "queues": group.queues,
                "stored_messages": group.stored_messages,
                "stored_bytes": group.stored_bytes,
                "lag": group.lag.iter().map(|(node, lag)| json!({"node_id": node, "entries": lag})).collect::<Vec<_>>(),
            })
        })
        .collect();
    print(
        output,
        json!({
            "cluster_id": status.cluster_id,
            "leader_id": status.leader_id,
            "leader_address": status.leader_address,
            "nodes": nodes,
            "groups": groups,
        }),
        text.trim_end().to_string(),
    );
}

/// One data group as the nodes' replicas report it.
#[derive(Debug, Default, PartialEq)]
struct GroupSummary {
    group: u64,
    /// 0 when no replica leads.
    leader: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// As the leader's replica holds them (or any replica's, without a leader).
    queues: u64,
    stored_messages: u64,
    stored_bytes: u64,
    /// Per replica: how many entries its applied index is behind the leader's log.
    lag: Vec<(u64, u64)>,
}

/// Every data group in `status`, from the replicas the nodes report, in group order.
fn group_summaries(status: &pb::ClusterStatusResponse) -> Vec<GroupSummary> {
    let mut replicas: std::collections::BTreeMap<u64, Vec<(u64, &pb::ReplicaStatus)>> =
        std::collections::BTreeMap::new();
    for node in &status.nodes {
        for replica in &node.replicas {
            replicas
                .entry(replica.group_id)
                .or_default()
                .push((node.node_id, replica));
        }
    }
    replicas
        .into_iter()
        .map(|(group, replicas)| {
            let leading = replicas
                .iter()
                .find(|(_, replica)| replica.role == raftq_proto::wire::role::LEADER);
            let (leader, source) = match leading {
                Some((node, replica)) => (*node, *replica),
                None => (0, replicas[0].1),
            };
            let lag = replicas
                .iter()
                .map(|(node, replica)| {
                    (
                        *node,
                        source.last_log_index.saturating_sub(replica.applied_index),
                    )
                })
                .collect();
            GroupSummary {
                group,
                leader,
                voters: source.voters.clone(),
                learners: source.learners.clone(),
                queues: source.queues,
                stored_messages: source.stored_messages,
                stored_bytes: source.stored_bytes,
                lag,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_summed_up_from_its_leaders_replica_with_each_replicas_lag() {
        let replica = |group, role: &str, last, applied| pb::ReplicaStatus {
            group_id: group,
            role: role.into(),
            voters: vec![1, 2],
            last_log_index: last,
            applied_index: applied,
            queues: if role == "leader" { 3 } else { 2 },
            stored_messages: 10,
            stored_bytes: 100,
            ..pb::ReplicaStatus::default()
        };
        let status = pb::ClusterStatusResponse {
            nodes: vec![
                pb::NodeStatus {
                    node_id: 1,
                    replicas: vec![replica(2, "follower", 40, 35), replica(3, "follower", 5, 5)],
                    ..pb::NodeStatus::default()
                },
                pb::NodeStatus {
                    node_id: 2,
                    replicas: vec![replica(2, "leader", 50, 50)],
                    ..pb::NodeStatus::default()
                },
            ],
            ..pb::ClusterStatusResponse::default()
        };
        let groups = group_summaries(&status);
        assert_eq!(groups.len(), 2);
        assert_eq!(
            groups[0],
            GroupSummary {
                group: 2,
                leader: 2,
                voters: vec![1, 2],
                learners: vec![],
                queues: 3,
                stored_messages: 10,
                stored_bytes: 100,
                lag: vec![(1, 15), (2, 0)],
            }
        );
        assert_eq!(groups[1].leader, 0, "no replica of group 3 leads");
        assert_eq!(groups[1].lag, vec![(1, 0)]);
    }
}
