//! What every gRPC service shares: the Raft replica a call is served by, the limits, and
//! the way to reach that replica's leader when this node is not it (its internal port).
//! Which replica serves a call on a queue is decided in `routing`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftq_cluster::{ClusterError, DataGroups, Node, RaftNode};
use raftq_core::access::Action;
use raftq_core::placement::METADATA_GROUP;
use raftq_core::{Command, GroupId, Limits, Outcome};
use raftq_proto::pb;
use raftq_proto::wire::{CLUSTER_ID_KEY, FORWARDED_KEY, GROUP_KEY};
use raftq_tls::Transport;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::admission::Admission;
use crate::auth::Caller;
use crate::error::{ServiceError, status};
use crate::routing::{MAX_HOPS, Remote, hops};

/// Most leader channels cached per node (one per distinct leader address seen).
const MAX_CACHED_CHANNELS: usize = 64;

#[derive(Clone)]
pub struct Context {
    /// The replica that serves the call: this node's replica of group 1, or of the data
    /// group holding the call's queue (see `Context::for_queue`).
    pub node: RaftNode,
    /// The group `node` belongs to, or that `remote` serves.
    pub group: GroupId,
    /// When the call's group has no replica on this node: the node of the group the call
    /// is forwarded to.
    pub remote: Option<Remote>,
    /// This node's replica of group 1 (the metadata group): placement, principals and
    /// grants, producers.
    pub meta: RaftNode,
    /// The data groups this node runs a replica of.
    pub groups: Arc<DataGroups>,
    pub limits: Arc<Limits>,
    /// How this node reaches other nodes' internal ports.
    pub transport: Transport,
    /// What this node serves at once.
    pub admission: Admission,
    /// The bounds this node writes into producers' commands when it leads.
    pub producers: crate::config::ProducersConfig,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Where a request is served.
pub enum Route {
    Local,
    /// Forward over this channel to the leader's internal port; the leader has these
    /// addresses.
    Leader(Channel, Node),
}

impl Context {
    pub fn new(
        node: RaftNode,
        groups: Arc<DataGroups>,
        transport: Transport,
        admission: Admission,
        producers: crate::config::ProducersConfig,
    ) -> Context {
        // The replicated limits: no command changes them, so the state's are read once.
        let limits = Arc::new(node.state().read().limits().clone());
        Context {
            meta: node.clone(),
            node,
            group: METADATA_GROUP,
            remote: None,
            groups,
            limits,
            transport,
            admission,
            producers,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// This context serving `group` through `node` (or forwarding to `remote`).
    pub fn scoped(&self, node: RaftNode, group: GroupId, remote: Option<Remote>) -> Context {
        Context {
            node,
            group,
            remote,
            ..self.clone()
        }
    }

    /// This node's figures for `NodeStatus`, its data-group replicas included.
    pub fn node_status(&self) -> pb::NodeStatus {
        pb::NodeStatus {
            resources: Some(self.admission.resources()),
            replicas: self
                .groups
                .replicas()
                .iter()
                .map(|replica| {
                    let usage = replica.state().read().usage();
                    pb::ReplicaStatus {
                        queues: usage.queues,
                        stored_messages: usage.messages,
                        stored_bytes: usage.bytes,
                        ..pb::ReplicaStatus::from(&replica.status())
                    }
                })
                .collect(),
            ..pb::NodeStatus::from(&self.meta.status())
        }
    }

    /// Serve here if this node leads the call's group; otherwise forward to its leader
    /// (or, with no replica of the group here, to a node that has one), unless the call
    /// was forwarded [`MAX_HOPS`] times already.
    pub fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let hops = hops(request);
        if hops > 0 {
            // Forwarded by a node of another cluster (sharing this one's CA, say).
            let theirs = request
                .metadata()
                .get(CLUSTER_ID_KEY)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            self.meta.check_cluster(theirs).map_err(status)?;
        }
        if let Some(remote) = &self.remote {
            if hops >= MAX_HOPS {
                return Err(self.not_leader());
            }
            return Ok(Route::Leader(
                self.channel(&remote.node.internal)?,
                remote.node.clone(),
            ));
        }
        if self.node.is_leader() {
            return Ok(Route::Local);
        }
        match self.node.leader_node() {
            Some((leader_id, node)) if leader_id != self.node.node_id() && hops < MAX_HOPS => {
                Ok(Route::Leader(self.channel(&node.internal)?, node))
            }
            Some((leader_id, node)) => Err(status(ClusterError::NotLeader {
                leader_id: Some(leader_id),
                leader_address: Some(node.public),
            })),
            None => Err(status(ClusterError::NotLeader {
                leader_id: None,
                leader_address: None,
            })),
        }
    }

    /// Serve here only if this node leads: for calls that are not forwarded (streams),
    /// the caller is told where the leader is instead.
    pub fn require_leader(&self) -> Result<(), Status> {
        if self.remote.is_none() && self.node.is_leader() {
            return Ok(());
        }
        Err(self.not_leader())
    }

    /// The answer of a node that does not lead the call's group (any more), naming the
    /// leader it knows (with no replica of the group here: a node that has one).
    pub fn not_leader(&self) -> Status {
        if let Some(remote) = &self.remote {
            return status(ClusterError::NotLeader {
                leader_id: Some(remote.node_id),
                leader_address: Some(remote.node.public.clone()),
            });
        }
        let (leader_id, leader_address) = self.node.leader().unzip();
        status(ClusterError::NotLeader {
            leader_id,
            leader_address,
        })
    }

    fn channel(&self, address: &str) -> Result<Channel, Status> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|e| {
            status(ServiceError::Forward {
                address: address.to_string(),
                reason: e.to_string(),
            })
        })?;
        let channel = self.transport.channel(
            &endpoint
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true),
        );
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Writes a command through Raft and turns both failure layers into a status. A
    /// command the state already refuses is answered without being written (see
    /// [`Context::precheck`]).
    pub async fn write(&self, command: Command) -> Result<Outcome, Status> {
        if self.remote.is_some() {
            return Err(self.not_leader());
        }
        self.precheck(&command).await?;
        let outcome = self.node.write(command).await.map_err(status)?;
        outcome.map_err(status)
    }

    /// Refuses, before anything is written, a command that the request and this leader's
    /// state already refuse (an unknown queue, a full one, a size or count over a limit),
    /// with the error applying it would give. A leader may not have applied every
    /// committed entry yet (it was just elected): what its state refuses is looked at
    /// again after a read barrier, so a queue created a moment ago is never taken for a
    /// missing one.
    ///
    /// While a command is being applied the state is not waited for (that would hold an
    /// async thread behind every entry under load): the command goes to the log, which
    /// decides as it always does. Refused commands are cheap to apply, so a flood of them
    /// finds the state free and is refused here.
    async fn precheck(&self, command: &Command) -> Result<(), Status> {
        let first = {
            let now_ms = self.node.log_time_ms();
            match self.node.state().try_read() {
                Some(state) => state.precheck(command, now_ms),
                None => return Ok(()),
            }
        };
        if first.is_ok() {
            return Ok(());
        }
        let check = || {
            let now_ms = self.node.log_time_ms();
            self.node.state().read().precheck(command, now_ms)
        };
        self.read_barrier().await?;
        check().map_err(|error| {
            metrics::counter!("raftq_commands_refused_before_log_total").increment(1);
            status(error)
        })
    }

    /// Confirms leadership with a quorum before a read is served from local state.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        if self.remote.is_some() {
            return Err(self.not_leader());
        }
        self.node.linearizable_read().await.map_err(status)
    }

    /// The request's caller, if its grants allow `action` on `queue` (`None`: on the
    /// cluster); PERMISSION_DENIED naming both otherwise. Called where a call is served,
    /// before anything is written.
    pub fn allow<T>(
        &self,
        request: &Request<T>,
        action: Action,
        queue: Option<&str>,
    ) -> Result<Caller, Status> {
        let caller = crate::auth::caller(request)?;
        crate::auth::authorize(&self.meta, &caller, action, queue)?;
        Ok(caller)
    }

    pub fn check_queue_name(&self, name: &str) -> Result<(), Status> {
        raftq_core::validate_queue_name(name, &self.limits).map_err(status)
    }
}

impl Context {
    /// Marks a request as forwarded by this node, of this cluster, and names the group it
    /// is for; the caller's deadline and other metadata go with it.
    pub fn forwarded<T>(&self, mut request: Request<T>) -> Request<T> {
        let hops = hops(&request) + 1;
        crate::auth::name_caller(&mut request);
        // The leader takes the caller this node established; the credentials stay here.
        request.metadata_mut().remove("authorization");
        let (mut metadata, extensions, message) = request.into_parts();
        if let Ok(value) = hops.to_string().parse() {
            metadata.insert(FORWARDED_KEY, value);
        }
        metadata.remove(GROUP_KEY);
        if self.group != METADATA_GROUP
            && let Ok(value) = self.group.to_string().parse()
        {
            metadata.insert(GROUP_KEY, value);
        }
        if let Some(id) = self.meta.cluster_id()
            && let Ok(value) = id.parse()
        {
            metadata.insert(CLUSTER_ID_KEY, value);
        }
        Request::from_parts(metadata, extensions, message)
    }
}

/// The answer of a command that returned an outcome of an unexpected kind: a bug.
pub fn unexpected(outcome: Outcome) -> Status {
    status(ServiceError::internal(format!(
        "unexpected outcome {outcome:?}"
    )))
}
