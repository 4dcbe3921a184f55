//! The server side: TLS connections accepted on a listener, for tonic's
//! `serve_with_incoming`.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// Longest a TLS handshake may take; a client that stalls it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes in progress at once on one listener; further connections wait to be
/// accepted (in the kernel's backlog).
const MAX_HANDSHAKES: usize = 256;
/// Handshaken connections waiting for the server to take them.
const READY_CONNECTIONS: usize = 64;

/// The connections accepted on `listener` that completed a TLS handshake with the acceptor
/// `acceptor` gives at that moment (so rotated certificates apply to new connections).
/// A failed handshake is logged and counted (`raftq_tls_handshake_failures_total{port}`),
/// never ends the stream. Accepting stops when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    port: &'static str,
    acceptor: impl Fn() -> TlsAcceptor + Send + Sync + 'static,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (ready, taken) = mpsc::channel(READY_CONNECTIONS);
    let acceptor = Arc::new(acceptor);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let accepted = tokio::select! {
                () = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, port, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!(%error, "setting TCP_NODELAY");
            }
            let (acceptor, ready) = (acceptor(), ready.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => refused(port, peer, &error.to_string()),
                    Err(_) => refused(port, peer, "the handshake did not finish in time"),
                }
            });
        }
    });
    ReceiverStream::new(taken)
}

fn refused(port: &'static str, peer: std::net::SocketAddr, reason: &str) {
    metrics::counter!("raftq_tls_handshake_failures_total", "port" => port).increment(1);
    tracing::info!(port, %peer, reason, "TLS handshake refused");
}
