//! The node's two gRPC ports and what each serves.
//!
//! - The **public** port: QueueService, MessageService, AdminService, grpc.health and
//!   reflection of the public API. No Raft RPC is served there: a client that calls one
//!   gets UNIMPLEMENTED.
//! - The **internal** port: the Raft transport, and the same queue, message and admin
//!   handlers for calls other nodes make — calls forwarded to the leader, a node asking to
//!   join, a node's own report for `cluster status`. Only other nodes reach it.

use std::time::Duration;

use anyhow::Context as _;
use raftq_cluster::RaftNode;
use raftq_proto::pb::{
    admin_service_server::AdminServiceServer, message_service_server::MessageServiceServer,
    queue_service_server::QueueServiceServer,
};
use raftq_proto::wire::MAX_MESSAGE_BYTES;
use raftq_tls::NodeTls;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::context::Context;
use crate::services::{AdminApi, MessageApi, QueueApi};

/// What both ports' handlers share.
pub(crate) struct Handlers {
    pub context: Context,
    /// Who is calling, established on each port before a handler runs.
    pub auth: Auth,
    /// Turns true when the servers stop taking calls.
    pub stopped: watch::Receiver<bool>,
    /// Turns true when the node begins to stop (consume streams end first).
    pub stopping: watch::Receiver<bool>,
}

impl Handlers {
    /// The queue, message and admin services, as both ports serve them, each call's
    /// caller established first as `port` does it (see `auth`).
    fn api(&self, port: Port) -> Routes {
        let auth = self.auth.clone();
        let caller = move |request| match port {
            Port::Public => auth.public(request),
            Port::Internal => auth.internal(request),
        };
        let routes = Routes::default()
            .add_service(InterceptedService::new(
                QueueServiceServer::new(QueueApi {
                    context: self.context.clone(),
                })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
                caller.clone(),
            ))
            .add_service(InterceptedService::new(
                MessageServiceServer::new(MessageApi {
                    context: self.context.clone(),
                    stopped: self.stopped.clone(),
                    stopping: self.stopping.clone(),
                })
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
                caller.clone(),
            ))
            .add_service(InterceptedService::new(
                AdminServiceServer::new(AdminApi {
                    context: self.context.clone(),
                }),
                caller,
            ));
        crate::admission::count_bodies(routes, self.context.admission.clone())
    }

    /// The public port's services.
    pub async fn public(&self) -> anyhow::Result<(Routes, HealthReporter)> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<QueueServiceServer<QueueApi>>().await;
        health
            .set_serving::<MessageServiceServer<MessageApi>>()
            .await;
        health.set_serving::<AdminServiceServer<AdminApi>>().await;
        // Reflection in both versions: grpcurl and current tools ask v1, older ones v1alpha.
        // Only the public API is described.
        let described = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(raftq_proto::PUBLIC_FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = described()
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = described()
            .build_v1alpha()
            .context("building the reflection service (v1alpha)")?;
        let routes = self
            .api(Port::Public)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(reflection_v1alpha);
        Ok((routes, health))
    }

    /// The internal port's services.
    pub fn internal(&self, node: &RaftNode) -> Routes {
        self.api(Port::Internal)
            .add_service(node.raft_service(self.stopped.clone()))
    }
}

/// Binds one port.
pub(crate) async fn bind(address: std::net::SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding the {what} gRPC listener {address}"))
}

/// Which of the two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    Public,
    Internal,
}

impl Port {
    pub fn name(self) -> &'static str {
        match self {
            Port::Public => "public",
            Port::Internal => "internal",
        }
    }
}

/// Serves `routes` on `listener` until `stop` resolves, then finishes the calls in flight.
/// With `tls`, every connection is TLS: on the internal port the peer must present a
/// certificate from the cluster CA. With `admission` (the public port), connections are
/// counted and each takes at most its limit of concurrent calls.
pub(crate) async fn serve(
    routes: Routes,
    listener: TcpListener,
    tls: Option<NodeTls>,
    port: Port,
    admission: Option<Admission>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder()
        // Pings find peers that went away without closing their connection (a client
        // host lost, say): their streams end, and a consume stream hands its deliveries
        // back instead of holding them until their leases end.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(admission) = &admission {
        builder = builder.max_concurrent_streams(admission.config().max_streams_per_connection);
    }
    let router = builder.add_routes(routes);
    // Answers (to clients, and to the leader's append-entries) go out at once: without
    // TCP_NODELAY, Nagle's algorithm meets the peer's delayed ACK and small responses wait
    // up to 40 ms. (The TLS acceptor sets it too.)
    match tls {
        Some(tls) => {
            let incoming = raftq_tls::incoming(listener, port.name(), move || match port {
                Port::Public => tls.public_acceptor(),
                Port::Internal => tls.internal_acceptor(),
            });
            serve_connections(router, incoming, admission, stop).await
        }
        None => {
            let incoming = TcpListenerStream::new(listener).map(|accepted| {
                if let Ok(stream) = &accepted
                    && let Err(error) = stream.set_nodelay(true)
                {
                    tracing::warn!(%error, "setting TCP_NODELAY");
                }
                accepted
            });
            serve_connections(router, incoming, admission, stop).await
        }
    }
}

/// Serves the connections of `incoming`, counted by `admission` when given.
async fn serve_connections<IO>(
    router: tonic::transport::server::Router,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<IO>> + Send + 'static,
    admission: Option<Admission>,
    stop: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
{
    match admission {
        Some(admission) => {
            let admitted = incoming.filter_map(move |accepted| match accepted {
                Ok(io) => crate::admission::admit(&admission, io).map(Ok),
                Err(error) => Some(Err(error)),
            });
            router.serve_with_incoming_shutdown(admitted, stop).await
        }
        None => router.serve_with_incoming_shutdown(incoming, stop).await,
    }
}
