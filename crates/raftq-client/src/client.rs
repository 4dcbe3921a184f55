//! `Client`: any node's address, leader following, retries within a deadline with one
//! idempotency key per logical send, and every call of the public API.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::error::{ClientError, is_retryable};
use crate::pb::{
    self, admin_service_client::AdminServiceClient, message_service_client::MessageServiceClient,
    queue_service_client::QueueServiceClient,
};
use crate::pipe::{Ended, Pipe};
use raftq_proto::wire::{LEADER_ADDRESS_KEY, MAX_MESSAGE_BYTES, RETRY_AFTER_MS_KEY};

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
        }
    }
}

/// The leader an UNAVAILABLE answer names, if any.
fn leader_hint(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get(LEADER_ADDRESS_KEY)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// Idempotency key; when `None` the client generates one (UUIDv7) for this logical send.
    pub key: Option<String>,
    /// Message group: strict send order, one in flight at a time. Empty: none.
    pub group: String,
    /// 0 (default, lowest) to 7, for messages without a group.
    pub priority: u32,
    /// Not delivered before this much time has passed.
    pub delay: Duration,
    /// Time to be received; zero takes the queue's default.
    pub ttl: Duration,
    pub properties: pb::MessageProperties,
    /// Queue for acknowledgement messages about this one; empty: none.
    pub ack_queue: String,
    /// Ask for a "consumed" acknowledgement.
    pub ack_positive: bool,
    /// Ask for an acknowledgement when it expires or is dead-lettered or discarded.
    pub ack_negative: bool,
    /// Time to reach the queue, counted from `sent_at_ms`; zero: none.
    pub time_to_reach: Duration,
    /// When the message was first handed to a sender (ms since the epoch).
    pub sent_at_ms: u64,
}

impl Message {
    pub fn new(body: impl Into<Vec<u8>>) -> Message {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    pub fn with_group(mut self, group: impl Into<String>) -> Message {
        self.group = group.into();
        self
    }

    pub fn with_priority(mut self, priority: u32) -> Message {
        self.priority = priority;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Message {
        self.delay = delay;
        self
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Message {
        self.ttl = ttl;
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Asks for acknowledgement messages in `queue`: positive (consumed) and/or negative
    /// (expired, dead-lettered, discarded).
    pub fn with_acknowledgements(
        mut self,
        queue: impl Into<String>,
        positive: bool,
        negative: bool,
    ) -> Message {
        self.ack_queue = queue.into();
        self.ack_positive = positive;
        self.ack_negative = negative;
        self
    }

    /// The message must reach its queue within `limit` from now, or it expires on arrival.
    pub fn with_time_to_reach(mut self, limit: Duration) -> Message {
        self.time_to_reach = limit;
        self.sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        self
    }

    pub fn with_properties(mut self, properties: pb::MessageProperties) -> Message {
        self.properties = properties;
        self
    }

    pub(crate) fn into_proto(self) -> pb::OutgoingMessage {
        let properties =
            (self.properties != pb::MessageProperties::default()).then_some(self.properties);
        pb::OutgoingMessage {
            body: self.body,
            headers: self.headers,
            idempotency_key: self.key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            group: self.group,
            priority: self.priority,
            delay_ms: self.delay.as_millis() as u64,
            ttl_ms: self.ttl.as_millis() as u64,
            properties,
            ack_queue: self.ack_queue,
            ack_positive: self.ack_positive,
            ack_negative: self.ack_negative,
            time_to_reach_ms: self.time_to_reach.as_millis() as u64,
            sent_at_ms: self.sent_at_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {}

struct Nodes {
    addresses: Vec<String>,
    channels: HashMap<String, Channel>,
    /// Address the next call goes to first: the last known leader, or a seed.
    preferred: String,
    next_seed: usize,
    /// The send stream to the preferred node, once a single send has opened it.
    pipe: Option<Pipe>,
    /// Nodes that answered a send stream with UNIMPLEMENTED (older servers).
    without_streams: HashSet<String>,
}

impl Nodes {
    fn channel(&mut self, address: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
        if let Some(channel) = self.channels.get(address) {
            return Ok(channel.clone());
        }
        let channel = endpoint(address, config)?.connect_lazy();
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
            .map(|a| a.trim().trim_start_matches("http://").to_string())
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
                next_seed: 1,
                pipe: None,
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

    fn channel(&self) -> Result<(String, Channel), ClientError> {
        let mut nodes = self.lock();
        let address = nodes.preferred.clone();
        let channel = nodes.channel(&address, &self.config)?;
        Ok((address, channel))
    }

    /// The send stream to the preferred node, opened if there is none (or it ended);
    /// `None` when streamed sends are off or that node does not serve send streams.
    fn pipe(&self) -> Option<Pipe> {
        if !self.config.stream_sends {
            return None;
        }
        let mut nodes = self.lock();
        let address = nodes.preferred.clone();
        if let Some(pipe) = &nodes.pipe
            && pipe.address == address
            && pipe.is_open()
        {
            return Some(pipe.clone());
        }
        if nodes.without_streams.contains(&address) {
            return None;
        }
        let channel = nodes.channel(&address, &self.config).ok()?;
        let shared = Arc::downgrade(&self.nodes);
        let refused = address.clone();
        let pipe = Pipe::open(address, channel, MAX_MESSAGE_BYTES, move |ended| {
            if let (Ended::Unsupported, Some(nodes)) = (ended, shared.upgrade()) {
                let mut nodes = nodes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                nodes.without_streams.insert(refused);
            }
        });
        nodes.pipe = Some(pipe.clone());
        Some(pipe)
    }

    pub(crate) fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// After `status` from `address`: go to the leader it names, or try the next seed.
    pub(crate) fn reroute_after(&self, address: &str, status: &tonic::Status) {
        self.reroute(address, leader_hint(status));
    }

    /// After a failure at `address`: go to the hinted leader, or try the next seed address.
    fn reroute(&self, address: &str, leader_hint: Option<String>) {
        let mut nodes = self.lock();
        match leader_hint {
            Some(leader) if leader != address => nodes.preferred = leader,
            _ => {
                if nodes.addresses.is_empty() {
                    return;
                }
                let index = nodes.next_seed % nodes.addresses.len();
                nodes.next_seed += 1;
                nodes.preferred = nodes.addresses[index].clone();
            }
        }
    }

    /// Runs `call` until it succeeds, fails for good, or the retry deadline passes.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        extra_timeout: Duration,
        call: F,
    ) -> Result<tonic::Response<T>, ClientError>
    where
        F: Fn(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut backoff = self.config.initial_backoff;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (address, channel) = self.channel()?;
            let timeout = self.config.attempt_timeout + extra_timeout;
            let status = match tokio::time::timeout(timeout, call(channel, timeout)).await {
                Ok(Ok(response)) => {
                    // A forwarded call names the leader: go there directly next time.
                    if let Some(leader) = response
                        .metadata()
                        .get(LEADER_ADDRESS_KEY)
                        .and_then(|value| value.to_str().ok())
                        && leader != address
                    {
                        self.lock().preferred = leader.to_string();
                    }
                    return Ok(response);
                }
                Ok(Err(status)) => status,
                Err(_) => tonic::Status::deadline_exceeded(format!(
                    "no answer from {address} within {timeout:?}"
                )),
            };
            if !is_retryable(&status) {
                return Err(ClientError::Status(status));
            }
            let hint = leader_hint(&status);
            let retry_after = status
                .metadata()
                .get(RETRY_AFTER_MS_KEY)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .map(Duration::from_millis);
            let followed_hint = hint.as_deref().is_some_and(|leader| leader != address);
            self.reroute(&address, hint);
            let elapsed = started.elapsed();
            if elapsed >= self.config.retry_deadline {
                return Err(ClientError::RetriesExhausted {
                    attempts,
                    elapsed_ms: elapsed.as_millis() as u64,
                    last: status,
                });
            }
            let pause = if followed_hint {
                Duration::ZERO
            } else {
                retry_after.unwrap_or(backoff).min(self.config.max_backoff)
            };
            tokio::time::sleep(pause.min(self.config.retry_deadline - elapsed)).await;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }

    fn queues(channel: Channel) -> QueueServiceClient<Channel> {
        QueueServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub(crate) fn messages(channel: Channel) -> MessageServiceClient<Channel> {
        MessageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn admin(channel: Channel) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(channel)
    }

    pub async fn create_queue(
        &self,
        name: &str,
        options: pb::QueueOptions,
    ) -> Result<pb::Queue, ClientError> {
        let request = pb::CreateQueueRequest {
            name: name.to_string(),
            options: Some(options),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).create_queue(request).await }
            })
            .await?;
        missing(response.into_inner().queue, "queue")
    }

    pub async fn get_queue(&self, name: &str) -> Result<pb::Queue, ClientError> {
        let request = pb::GetQueueRequest {
            name: name.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).get_queue(request).await }
            })
            .await?;
        missing(response.into_inner().queue, "queue")
    }

    pub async fn list_queues(&self) -> Result<Vec<pb::Queue>, ClientError> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let request = pb::ListQueuesRequest {
                after: after.clone(),
                limit: 0,
            };
            let page = self
                .retry(Duration::ZERO, |channel, timeout| {
                    let request = with_timeout(request.clone(), timeout);
                    async move { Self::queues(channel).list_queues(request).await }
                })
                .await?
                .into_inner()
                .queues;
            match page.last() {
                Some(last) => after = last.name.clone(),
                None => return Ok(all),
            }
            all.extend(page);
        }
    }

    pub async fn delete_queue(&self, name: &str) -> Result<(), ClientError> {
        let request = pb::DeleteQueueRequest {
            name: name.to_string(),
        };
        self.retry(Duration::ZERO, |channel, timeout| {
            let request = with_timeout(request.clone(), timeout);
            async move { Self::queues(channel).delete_queue(request).await }
        })
        .await?;
        Ok(())
    }

    pub async fn purge_queue(&self, name: &str) -> Result<u64, ClientError> {
        let request = pb::PurgeQueueRequest {
            name: name.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::queues(channel).purge_queue(request).await }
            })
            .await?;
        Ok(response.into_inner().removed)
    }

    /// Sends one message. The idempotency key (given or generated) is fixed before the
    /// first attempt and reused by every retry.
    pub async fn send(
        &self,
        queue: &str,
        message: Message,
    ) -> Result<pb::SendResponse, ClientError> {
        let request = pb::SendRequest {
            queue: queue.to_string(),
            message: Some(message.into_proto()),
        };
        if let Some(pipe) = self.pipe() {
            let streamed =
                tokio::time::timeout(self.config.attempt_timeout, pipe.send(request.clone()));
            if let Ok(Some(answer)) = streamed.await {
                return answer.map_err(ClientError::Status);
            }
            // Not answered on the stream: the call below retries it under the same key.
        }
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).send(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Sends up to 1,000 messages atomically (all stored or none).
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<pb::SendResponse>, ClientError> {
        let request = pb::SendBatchRequest {
            queue: queue.to_string(),
            messages: messages.into_iter().map(Message::into_proto).collect(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).send_batch(request).await }
            })
            .await?;
        Ok(response.into_inner().results)
    }

    /// Receives up to `max` messages under a lease, waiting up to `wait` for one to arrive.
    /// `lease: None` uses the queue's default lease.
    pub async fn receive(
        &self,
        queue: &str,
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<pb::ReceivedMessage>, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            ..pb::ReceiveRequest::default()
        };
        Ok(self.receive_request(request, wait).await?.messages)
    }

    /// Selective receive: only the message `message_id` (when not 0) and/or messages with
    /// `correlation_id` (when not empty), waiting up to `wait` for one to be ready.
    pub async fn receive_selected(
        &self,
        queue: &str,
        message_id: u64,
        correlation_id: &str,
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<Vec<pb::ReceivedMessage>, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            message_id,
            correlation_id: correlation_id.to_string(),
            ..pb::ReceiveRequest::default()
        };
        Ok(self.receive_request(request, wait).await?.messages)
    }

    /// Acknowledges `acks` (earlier deliveries of `queue`) and receives up to `max`
    /// messages, in one call and one log entry: what a consumer working batch by batch
    /// needs, at one round trip per batch. The acks are applied at once even when the
    /// receive then waits up to `wait` for a message; their results come back in order,
    /// as from [`Client::ack_batch`]. Retrying is safe for the acks, as each ack is.
    pub async fn ack_and_receive(
        &self,
        queue: &str,
        acks: &[String],
        max: u32,
        wait: Duration,
        lease: Option<Duration>,
    ) -> Result<pb::ReceiveResponse, ClientError> {
        let request = pb::ReceiveRequest {
            queue: queue.to_string(),
            max_messages: max,
            wait_ms: wait.as_millis() as u64,
            lease_ms: lease.map_or(0, |lease| lease.as_millis() as u64),
            ack_receipts: acks.to_vec(),
            ..pb::ReceiveRequest::default()
        };
        let response = self.receive_request(request, wait).await?;
        if response.ack_results.len() != acks.len() {
            // A server that predates `ack_receipts` ignores them: nothing was acknowledged.
            return Err(ClientError::Status(tonic::Status::unimplemented(format!(
                "the server answered {} of {} acks sent with a receive; it may not support \
                 acknowledging with a receive",
                response.ack_results.len(),
                acks.len()
            ))));
        }
        Ok(response)
    }

    async fn receive_request(
        &self,
        request: pb::ReceiveRequest,
        wait: Duration,
    ) -> Result<pb::ReceiveResponse, ClientError> {
        let response = self
            .retry(wait, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).receive(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Acknowledges a delivery. Retrying an ack that already succeeded is answered with
    /// `already_acked = true`; a stale receipt is FAILED_PRECONDITION.
    pub async fn ack(&self, queue: &str, receipt: &str) -> Result<pb::AckResponse, ClientError> {
        let request = pb::AckRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).ack(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Acknowledges many deliveries of `queue` in one call. Each receipt's result comes
    /// back in order (`code` 0: acknowledged); retrying the call is safe, as each ack is.
    pub async fn ack_batch(
        &self,
        queue: &str,
        receipts: &[String],
    ) -> Result<Vec<pb::AckResult>, ClientError> {
        let request = pb::AckBatchRequest {
            queue: queue.to_string(),
            receipts: receipts.to_vec(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).ack_batch(request).await }
            })
            .await?;
        Ok(response.into_inner().results)
    }

    pub async fn nack(
        &self,
        queue: &str,
        receipt: &str,
        delay: Duration,
    ) -> Result<pb::NackResponse, ClientError> {
        let request = pb::NackRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            delay_ms: delay.as_millis() as u64,
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).nack(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    pub async fn extend_lease(
        &self,
        queue: &str,
        receipt: &str,
        lease: Duration,
    ) -> Result<pb::ExtendLeaseResponse, ClientError> {
        let request = pb::ExtendLeaseRequest {
            queue: queue.to_string(),
            receipt: receipt.to_string(),
            lease_ms: lease.as_millis() as u64,
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).extend_lease(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Starts a transaction: receive and send inside it, then commit or abort.
    pub fn begin(&self) -> crate::Transaction {
        crate::Transaction::new(self.clone())
    }

    /// Commits a transaction built by hand; see [`crate::Transaction`] for the usual way.
    pub async fn commit(
        &self,
        request: pb::CommitRequest,
    ) -> Result<pb::CommitResponse, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).commit(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Moves messages out of a dead-letter queue: `ids`, or with none up to `max` from the
    /// head; back where each came from, or to `to` when it is not empty. Moving by id is
    /// safe to retry; moving by count after an uncertain outcome may move a second batch.
    pub async fn redrive(
        &self,
        queue: &str,
        ids: &[u64],
        max: u32,
        to: &str,
    ) -> Result<u64, ClientError> {
        let request = pb::RedriveRequest {
            queue: queue.to_string(),
            message_ids: ids.to_vec(),
            max_messages: max,
            to: to.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).redrive(request).await }
            })
            .await?;
        Ok(response.into_inner().moved)
    }

    pub async fn peek(
        &self,
        queue: &str,
        after_sequence: u64,
        max: u32,
    ) -> Result<Vec<pb::PeekedMessage>, ClientError> {
        self.peek_selected(queue, after_sequence, max, 0, "").await
    }

    /// Browse (page with `after_sequence`) only the message `message_id` (when not 0)
    /// and/or messages with `correlation_id` (when not empty), without leasing them.
    pub async fn peek_selected(
        &self,
        queue: &str,
        after_sequence: u64,
        max: u32,
        message_id: u64,
        correlation_id: &str,
    ) -> Result<Vec<pb::PeekedMessage>, ClientError> {
        let request = pb::PeekRequest {
            queue: queue.to_string(),
            after_sequence,
            max_messages: max,
            message_id,
            correlation_id: correlation_id.to_string(),
        };
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).peek(request).await }
            })
            .await?;
        Ok(response.into_inner().messages)
    }

    pub async fn cluster_status(&self) -> Result<pb::ClusterStatusResponse, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| async move {
                Self::admin(channel)
                    .cluster_status(with_timeout(pb::ClusterStatusRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(response.into_inner())
    }

    /// Adds a node as a learner and, with `promote`, makes it a voter once it has caught up
    /// (see `AddNodeRequest` for each field), through the leader. `lost_data` says the node
    /// started again on an empty data directory: a member of that id is removed, then added
    /// again as a learner.
    pub async fn add_node(
        &self,
        request: pb::AddNodeRequest,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let response = self
            .retry(Duration::from_secs(60), |channel, timeout| {
                let request = with_timeout(request.clone(), timeout);
                async move { Self::admin(channel).add_node(request).await }
            })
            .await?;
        missing(response.into_inner().status, "status")
    }

    pub async fn remove_node(
        &self,
        node_id: u64,
    ) -> Result<pb::ClusterStatusResponse, ClientError> {
        let request = pb::RemoveNodeRequest { node_id };
        let response = self
            .retry(Duration::from_secs(10), |channel, timeout| {
                let request = with_timeout(request, timeout);
                async move { Self::admin(channel).remove_node(request).await }
            })
            .await?;
        missing(response.into_inner().status, "status")
    }

    /// This node's own view (never forwarded): role, term and indexes.
    pub async fn node_info(&self) -> Result<pb::NodeStatus, ClientError> {
        let response = self
            .retry(Duration::ZERO, |channel, timeout| async move {
                Self::admin(channel)
                    .node_info(with_timeout(pb::NodeInfoRequest {}, timeout))
                    .await
            })
            .await?;
        missing(response.into_inner().node, "node")
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

fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

fn missing<T>(value: Option<T>, field: &str) -> Result<T, ClientError> {
    value.ok_or_else(|| {
        ClientError::Status(tonic::Status::internal(format!("response lacks {field}")))
    })
}
