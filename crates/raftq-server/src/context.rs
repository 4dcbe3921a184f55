//! What every gRPC service shares: the Raft node, the limits, and the way to reach the
//! leader when this node is not it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftq_cluster::{ClusterError, RaftNode};
use raftq_core::{Command, Limits, Outcome};
use raftq_proto::wire::FORWARDED_KEY;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::error::{ServiceError, status};

/// Most leader channels cached per node (one per distinct leader address seen).
const MAX_CACHED_CHANNELS: usize = 64;

#[derive(Clone)]
pub struct Context {
    pub node: RaftNode,
    pub limits: Arc<Limits>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

/// Where a request is served.
pub enum Route {
    Local,
    /// Forward over this channel to the leader at this address.
    Leader(Channel, String),
}

impl Context {
    pub fn new(node: RaftNode) -> Context {
        // The replicated limits: no command changes them, so the state's are read once.
        let limits = Arc::new(node.state().read().limits().clone());
        Context {
            node,
            limits,
            channels: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Serve here if this node leads; otherwise forward to the leader, once.
    pub fn route<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        if self.node.is_leader() {
            return Ok(Route::Local);
        }
        let leader = self.node.leader();
        let forwarded = request.metadata().contains_key(FORWARDED_KEY);
        match leader {
            Some((leader_id, address)) if leader_id != self.node.node_id() && !forwarded => {
                Ok(Route::Leader(self.channel(&address)?, address))
            }
            Some((leader_id, address)) => Err(status(ClusterError::NotLeader {
                leader_id: Some(leader_id),
                leader_address: Some(address),
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
        if self.node.is_leader() {
            return Ok(());
        }
        Err(self.not_leader())
    }

    /// The answer of a node that does not lead (any more), naming the leader it knows.
    pub fn not_leader(&self) -> Status {
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
        let channel = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        if channels.len() >= MAX_CACHED_CHANNELS {
            channels.clear();
        }
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    /// Writes a command through Raft and turns both failure layers into a status.
    pub async fn write(&self, command: Command) -> Result<Outcome, Status> {
        let outcome = self.node.write(command).await.map_err(status)?;
        outcome.map_err(status)
    }

    /// Confirms leadership with a quorum before a read is served from local state.
    pub async fn read_barrier(&self) -> Result<(), Status> {
        self.node.linearizable_read().await.map_err(status)
    }

    pub fn check_queue_name(&self, name: &str) -> Result<(), Status> {
        raftq_core::validate_queue_name(name, &self.limits).map_err(status)
    }
}

/// Marks a request as forwarded and copies the caller's deadline.
pub fn forwarded<T>(request: Request<T>) -> Request<T> {
    let (mut metadata, extensions, message) = request.into_parts();
    if let Ok(value) = "1".parse() {
        metadata.insert(FORWARDED_KEY, value);
    }
    Request::from_parts(metadata, extensions, message)
}

/// The answer of a command that returned an outcome of an unexpected kind: a bug.
pub fn unexpected(outcome: Outcome) -> Status {
    status(ServiceError::internal(format!(
        "unexpected outcome {outcome:?}"
    )))
}
