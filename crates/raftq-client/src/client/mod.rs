//! `Client`, `ClientConfig`: construction, channels, the leader cache, the send stream.

mod admin;
mod message;
mod messages;
mod queues;
mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftq_tls::Transport;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

/// A connection to one node that carries the client's credentials on every call.
pub type Channel = InterceptedService<tonic::transport::Channel, Credentials>;

/// The `authorization: Bearer <token>` every call carries, when the client has a token.
#[derive(Clone)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

use crate::error::ClientError;
use crate::pipe::{Ended, Pipe};
use raftq_proto::wire::MAX_MESSAGE_BYTES;

pub use message::{Message, SendOptions};
pub(crate) use retry::with_timeout;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Total time a call may spend retrying before it gives up.
    pub retry_deadline: Duration,
    /// Time limit of one attempt (a long-poll receive adds its wait to this).
    pub attempt_timeout: Duration,
    pub connect_timeout: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Single sends share one `SendStream` to the leader (many in flight on it) instead
    /// of a call each; a send the stream cannot answer goes again as a call.
    pub stream_sends: bool,
    /// TLS (the CA to trust, and a client certificate for mutual TLS), or plaintext for
    /// servers started with `--insecure`.
    pub transport: Transport,
    /// The bearer token every call carries (a principal's, or the admin token); none for
    /// servers started with `--insecure`.
    pub token: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retry_deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            stream_sends: true,
            transport: Transport::Plaintext,
            token: None,
        }
    }
}

/// Most queues whose leader the client remembers; past it the cache starts again.
const MAX_QUEUE_LEADERS: usize = 10_000;
/// Most send streams the client keeps open, one per node.
const MAX_PIPES: usize = 64;

struct Nodes {
    addresses: Vec<String>,
    channels: HashMap<String, Channel>,
    /// Address the next call goes to first: the last known leader, or a seed.
    preferred: String,
    /// Per queue, the node that last served (or was named as serving) its calls: with
    /// data groups each queue's group has its own leader.
    queue_leaders: HashMap<String, String>,
    next_seed: usize,
    /// The send streams single sends opened, one per node (the preferred one, and the
    /// leaders of queues' groups).
    pipes: HashMap<String, Pipe>,
    /// Nodes that answered a send stream with UNIMPLEMENTED (older servers).
    without_streams: HashSet<String>,
}

impl Nodes {
    /// Remembers `leader` as the node serving `queue`.
    fn remember(&mut self, queue: &str, leader: &str) {
        if self
            .queue_leaders
            .get(queue)
            .is_some_and(|known| known == leader)
        {
            return;
        }
        if self.queue_leaders.len() >= MAX_QUEUE_LEADERS && !self.queue_leaders.contains_key(queue)
        {
            self.queue_leaders.clear();
        }
        self.queue_leaders
            .insert(queue.to_string(), leader.to_string());
    }

    fn channel(&mut self, address: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let credentials = match &config.token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| ClientError::InvalidToken)?,
            ),
            None => None,
        };
        let channel = InterceptedService::new(
            config.transport.channel(&endpoint(address, config)?),
            Credentials(credentials),
        );
        self.channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }
}

/// A cheaply cloneable handle; clones share connections and the leader cache.
#[derive(Clone)]
pub struct Client {
    nodes: Arc<Mutex<Nodes>>,
    config: ClientConfig,
}

impl Client {
    /// A client for the cluster reachable at any of `addresses` (`HOST:PORT`). Connections
    /// are made lazily.
    pub fn new(addresses: &[String], config: ClientConfig) -> Result<Client, ClientError> {
        let addresses: Vec<String> = addresses
            .iter()
            .flat_map(|a| a.split(','))
            .map(|a| {
                a.trim()
                    .trim_start_matches("http://")
                    .trim_start_matches("https://")
                    .to_string()
            })
            .filter(|a| !a.is_empty())
            .collect();
        let first = addresses.first().cloned().ok_or(ClientError::NoAddress)?;
        for address in &addresses {
            endpoint(address, &config)?;
        }
        Ok(Client {
            nodes: Arc::new(Mutex::new(Nodes {
                addresses,
                channels: HashMap::new(),
                preferred: first,
                queue_leaders: HashMap::new(),
                next_seed: 1,
                pipes: HashMap::new(),
                without_streams: HashSet::new(),
            })),
            config,
        })
    }

    pub fn connect(address: &str) -> Result<Client, ClientError> {
        Client::new(&[address.to_string()], ClientConfig::default())
    }

    /// The node the next call goes to first: the cached leader once one is known.
    pub fn preferred_address(&self) -> String {
        self.lock().preferred.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nodes> {
        self.nodes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The node calls on `queue` go to first: the leader of its group once a call named
    /// it, else the preferred node.
    pub fn address_for(&self, queue: &str) -> String {
        let nodes = self.lock();
        nodes
            .queue_leaders
            .get(queue)
            .unwrap_or(&nodes.preferred)
            .clone()
    }

    /// Where the next call goes: for a call on `queue`, that queue's leader when known.
    fn channel(&self, queue: Option<&str>) -> Result<(String, Channel), ClientError> {
        let mut nodes = self.lock();
        let address = queue
            .and_then(|queue| nodes.queue_leaders.get(queue))
            .unwrap_or(&nodes.preferred)
            .clone();
        let channel = nodes.channel(&address, &self.config)?;
        Ok((address, channel))
    }

    /// Remembers `leader` as the node serving `queue` (or every call, for `None`).
    fn remember_leader(&self, queue: Option<&str>, leader: &str) {
        let mut nodes = self.lock();
        match queue {
            Some(queue) => nodes.remember(queue, leader),
            None => nodes.preferred = leader.to_string(),
        }
    }

    /// Forgets the node serving `queue`: its next call goes to the preferred node.
    fn forget_leader(&self, queue: &str) {
        self.lock().queue_leaders.remove(queue);
    }

    /// The send stream for sends to `queue`: to the leader of its group when known, else
    /// to the preferred node; opened if there is none (or it ended). `None` when streamed
    /// sends are off or that node does not serve send streams.
    fn pipe(&self, queue: &str) -> Option<Pipe> {
        if !self.config.stream_sends {
            return None;
        }
        let mut nodes = self.lock();
        let address = nodes.queue_leaders.get(queue).unwrap_or(&nodes.preferred);
        if let Some(pipe) = nodes.pipes.get(address)
            && pipe.is_open()
        {
            return Some(pipe.clone());
        }
        let address = address.clone();
        if nodes.without_streams.contains(&address) {
            return None;
        }
        let channel = nodes.channel(&address, &self.config).ok()?;
        let shared = Arc::downgrade(&self.nodes);
        let learning = Arc::downgrade(&self.nodes);
        let refused = address.clone();
        let ended = move |ended| {
            if let (Ended::Unsupported, Some(nodes)) = (ended, shared.upgrade()) {
                let mut nodes = nodes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                nodes.without_streams.insert(refused);
            }
        };
        let learned = Box::new(move |queue: &str, leader: &str| {
            if let Some(nodes) = learning.upgrade() {
                nodes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .remember(queue, leader);
            }
        });
        let pipe = Pipe::open(channel, MAX_MESSAGE_BYTES, ended, learned);
        // At most one per node; those whose stream ended go, and past MAX_PIPES (hints
        // naming ever more addresses) the others too: their sends still finish.
        nodes.pipes.retain(|_, pipe| pipe.is_open());
        if nodes.pipes.len() >= MAX_PIPES {
            nodes.pipes.clear();
        }
        nodes.pipes.insert(address, pipe.clone());
        Some(pipe)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }
}

fn endpoint(address: &str, config: &ClientConfig) -> Result<Endpoint, ClientError> {
    Endpoint::from_shared(format!("http://{address}"))
        .map(|endpoint| {
            endpoint
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
        })
        .map_err(|error| ClientError::InvalidAddress {
            address: address.to_string(),
            reason: error.to_string(),
        })
}
