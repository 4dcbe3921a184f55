//! `raftq agent`: store-and-forward beside an application. It serves the message and queue
//! services on a local address to applications with plain gRPC stubs: sends are kept in
//! its outbox (`raftq_client::Outbox`, a file in its data directory) before they are
//! answered, and forwarded to the cluster exactly once and in order whenever it is
//! reachable; every other call is passed through to the cluster. It is a client of the
//! cluster like any other: TLS and a token, unless `--insecure`.

mod messages;
mod queues;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use raftq_client::{Client, ClientConfig, ClientError, Outbox, OutboxConfig, Transport, pb};
use raftq_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use raftq_proto::pb::message_service_server::MessageServiceServer;
use raftq_proto::pb::queue_service_server::QueueServiceServer;
use raftq_proto::wire::MAX_MESSAGE_BYTES;
use tonic::{Request, Response, Status};

/// How `raftq agent` runs.
pub struct AgentOptions {
    pub data_dir: PathBuf,
    /// Where applications reach it: a loopback address (it serves plaintext and takes
    /// every local caller as trusted).
    pub listen: SocketAddr,
    /// Nodes of the cluster (any of them).
    pub cluster: Vec<String>,
    /// The name its producer registers with.
    pub name: String,
    /// How it reaches the cluster, and the token it authenticates with.
    pub transport: Transport,
    pub token: Option<String>,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub batch_messages: usize,
    /// Where `/metrics` (Prometheus) and `/healthz` are served, if anywhere.
    pub http_listen: Option<SocketAddr>,
}

/// Calls and streams open at once on one connection to the agent (HTTP/2).
const AGENT_STREAMS_PER_CONNECTION: u32 = 256;

/// How long a passed-through call tries the cluster before it is answered UNAVAILABLE.
const PASS_THROUGH_DEADLINE: Duration = Duration::from_secs(5);

/// A call passed through to the cluster that failed: its answer, or UNAVAILABLE when
/// the cluster did not answer in time.
pub(crate) fn passed(error: ClientError) -> Status {
    match error {
        ClientError::Status(status) => status,
        ClientError::RetriesExhausted { last, .. } => Status::unavailable(format!(
            "the agent cannot reach the cluster ({:?}: {}); sends are still taken",
            last.code(),
            last.message()
        )),
        other => Status::unavailable(other.to_string()),
    }
}

pub async fn run(options: AgentOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        options.listen.ip().is_loopback(),
        "the agent serves plaintext to local applications only: --listen must be a \
         loopback address, not {}",
        options.listen
    );
    let config = |retry_deadline| ClientConfig {
        retry_deadline,
        transport: options.transport.clone(),
        token: options.token.clone(),
        ..ClientConfig::default()
    };
    // The forwarder waits out outages; a passed-through call does not wait long.
    let forwarding = Client::new(&options.cluster, config(Duration::from_secs(30)))?;
    let passing = Client::new(&options.cluster, config(PASS_THROUGH_DEADLINE))?;
    let outbox = Outbox::open(
        forwarding,
        OutboxConfig {
            max_messages: options.max_messages,
            max_bytes: options.max_bytes,
            batch_messages: options.batch_messages,
            ..OutboxConfig::new(options.data_dir.join("outbox.redb"), options.name.clone())
        },
    )?;
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, cluster = ?options.cluster, "agent serving");
    println!("raftq agent: serving on {local}");
    let message = messages::AgentMessages {
        outbox: outbox.clone(),
        cluster: passing.clone(),
    };
    let queue = queues::AgentQueues { cluster: passing };
    let agent = AgentState {
        outbox: outbox.clone(),
    };
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    if let Some(address) = options.http_listen {
        let outbox = outbox.clone();
        crate::metrics_port::serve(address, stopped.clone(), move || {
            let outbox = outbox.clone();
            async move {
                // Refreshes the outbox's gauges (pending, oldest age).
                let _ = outbox.status().await;
            }
        })
        .await?;
    }
    let stop = async move {
        crate::serve::shutdown_signal().await;
        tracing::info!("agent stopping; what waits stays in the outbox");
        let _ = stopping.send(true);
    };
    tonic::transport::Server::builder()
        // Bounded as a node's public port is: calls at once per connection.
        .max_concurrent_streams(Some(AGENT_STREAMS_PER_CONNECTION))
        .add_service(
            MessageServiceServer::new(message)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(QueueServiceServer::new(queue))
        .add_service(AgentServiceServer::new(agent))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop,
        )
        .await?;
    outbox.close();
    Ok(())
}

struct AgentState {
    outbox: Outbox,
}

/// The status of a send the outbox refused.
pub(crate) fn refused_by_outbox(error: raftq_client::OutboxError) -> Status {
    match error {
        raftq_client::OutboxError::Full { .. } => Status::resource_exhausted(error.to_string()),
        raftq_client::OutboxError::Invalid(_) => Status::invalid_argument(error.to_string()),
        raftq_client::OutboxError::Closed => Status::unavailable(error.to_string()),
        raftq_client::OutboxError::Store(_) => Status::internal(error.to_string()),
    }
}

#[tonic::async_trait]
impl AgentService for AgentState {
    async fn agent_status(
        &self,
        _request: Request<pb::AgentStatusRequest>,
    ) -> Result<Response<pb::AgentStatusResponse>, Status> {
        let status = self.outbox.status().await.map_err(refused_by_outbox)?;
        Ok(Response::new(pb::AgentStatusResponse {
            pending: status.pending,
            pending_bytes: status.pending_bytes,
            in_flight: status.in_flight,
            oldest_age_ms: status.oldest_age.map_or(0, |age| age.as_millis() as u64),
            dead_letters: status.dead_letters,
            forwarded: status.forwarded,
            stuck: status.stuck.unwrap_or_default(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let max = match request.into_inner().max {
            0 => 100,
            max => max.min(10_000) as usize,
        };
        let letters = self
            .outbox
            .dead_letters(max)
            .await
            .map_err(refused_by_outbox)?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: letters
                .into_iter()
                .map(|letter| pb::AgentDeadLetter {
                    local_id: letter.local_id,
                    queue: letter.queue,
                    message: Some(letter.message),
                    reason: letter.reason,
                    failed_at_ms: letter.failed_at_ms,
                })
                .collect(),
        }))
    }

    async fn retry_dead_letters(
        &self,
        _request: Request<pb::RetryDeadLettersRequest>,
    ) -> Result<Response<pb::RetryDeadLettersResponse>, Status> {
        let moved = self
            .outbox
            .retry_dead_letters()
            .await
            .map_err(refused_by_outbox)?;
        Ok(Response::new(pb::RetryDeadLettersResponse { moved }))
    }
}
