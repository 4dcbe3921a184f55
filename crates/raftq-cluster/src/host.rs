//! A node: its store, its standing in the cluster, its connections to the other nodes and
//! the Raft groups it serves a replica of. Every replica shares the store (and its one
//! write-ahead-log syncer), the connections and the Raft service.

use std::sync::Arc;

use raftq_core::GroupId;
use raftq_proto::raft_pb::raft_service_server::{RaftService, RaftServiceServer};
use raftq_store::{Db, NodeId};

use crate::connections::Connections;
use crate::node::RaftNode;
use crate::raft::stopped;
use crate::registry::Registry;
use crate::service::RaftGrpc;
use crate::standing::{self, Standing};
use crate::tuning::NodeConfig;
use crate::{ClusterError, MAX_RAFT_MESSAGE_BYTES};

#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    config: NodeConfig,
    db: Db,
    standing: Standing,
    connections: Arc<Connections>,
    registry: Arc<Registry>,
    /// Held while a replica starts: one group's store is never opened twice.
    starting: tokio::sync::Mutex<()>,
}

impl Host {
    /// Opens the node's RocksDB under the configured data directory and settles what the
    /// directory says about the node (see `standing`). No replica runs yet.
    pub fn open(config: NodeConfig) -> Result<Host, ClusterError> {
        std::fs::create_dir_all(&config.data_dir).map_err(stopped)?;
        config.storage.check().map_err(stopped)?;
        let db = Db::open(&config.data_dir, &config.storage.open_options()).map_err(stopped)?;
        let standing = standing::settle(&db, config.node_id, config.cluster_name.clone())?;
        let connections = Arc::new(Connections::new(config.transport.clone()));
        Ok(Host {
            inner: Arc::new(HostInner {
                config,
                db,
                standing,
                connections,
                registry: Arc::default(),
                starting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Starts this node's replica of `group`, which recovers its log, vote and newest
    /// snapshot from the store; refused when the replica runs already.
    pub async fn start_replica(&self, group: GroupId) -> Result<RaftNode, ClusterError> {
        if group == 0 {
            return Err(ClusterError::internal(
                "group 0 is the node's own record, not a Raft group",
            ));
        }
        let _starting = self.inner.starting.lock().await;
        if self.inner.registry.groups().contains(&group) {
            return Err(ClusterError::internal(format!(
                "the replica of group {group} runs already"
            )));
        }
        RaftNode::start_replica(self.clone(), group).await
    }

    /// Deletes everything this node holds of `group`, whose replica no longer runs here
    /// (it moved to other nodes): its vote record first, then its keys and files.
    pub fn drop_group(&self, group: GroupId) -> Result<(), ClusterError> {
        if group <= 1 || self.inner.registry.groups().contains(&group) {
            return Err(ClusterError::internal(format!(
                "group {group} cannot be dropped here: it is group 0 or 1, or its replica runs"
            )));
        }
        self.inner.standing.forget_group(group).map_err(stopped)?;
        self.inner.db.drop_group(group).map_err(stopped)
    }

    /// The groups whose Raft state (a vote) this node's store holds, running or not.
    pub fn stored_groups(&self) -> Result<std::collections::BTreeSet<GroupId>, ClusterError> {
        self.inner.db.groups_with_votes().map_err(stopped)
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The groups this node runs a replica of, in order.
    pub fn groups(&self) -> Vec<GroupId> {
        self.inner.registry.groups()
    }

    /// How many Raft messages named a group this node serves no replica of.
    pub fn unknown_group_refusals(&self) -> u64 {
        self.inner.registry.unknown_refused()
    }

    /// The gRPC service peers use to reach this node's replicas: each message goes to the
    /// replica of the group it names. Its replication streams end once `stopping` turns
    /// true (they would otherwise keep the server from finishing).
    pub fn raft_service(
        &self,
        stopping: tokio::sync::watch::Receiver<bool>,
    ) -> RaftServiceServer<impl RaftService> {
        RaftServiceServer::new(RaftGrpc {
            registry: self.inner.registry.clone(),
            node_id: self.inner.config.node_id,
            standing: self.inner.standing.clone(),
            snapshot_dir: self.inner.config.data_dir.join("snapshots"),
            stopping,
        })
        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    }

    /// What the node's RocksDB holds in memory.
    pub fn storage_memory(&self) -> raftq_store::StorageMemory {
        self.inner.db.memory()
    }

    /// The cluster this node belongs to; `None` until it formed or joined one.
    pub fn cluster_id(&self) -> Option<String> {
        self.inner.standing.cluster_id()
    }

    /// Refuses a node of another cluster (its cluster id, empty when it belongs to none yet).
    pub fn check_cluster(&self, theirs: &str) -> Result<(), ClusterError> {
        self.inner.standing.check_cluster(theirs)
    }

    /// Records (synced) that this node belongs to cluster `id`, as the leader answered its
    /// join; refused when it already belongs to another.
    pub fn join_cluster(&self, id: &str) -> Result<(), ClusterError> {
        self.inner.standing.join(id)
    }

    pub(crate) fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub(crate) fn db(&self) -> &Db {
        &self.inner.db
    }

    pub(crate) fn standing(&self) -> &Standing {
        &self.inner.standing
    }

    pub(crate) fn connections(&self) -> &Arc<Connections> {
        &self.inner.connections
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }
}
