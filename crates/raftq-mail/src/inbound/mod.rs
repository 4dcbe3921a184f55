//! The SMTP server that takes mail for `QUEUE@DOMAIN` into queues.

mod mapping;
mod session;
mod store;

use std::sync::Arc;

use raftq_client::Client;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

pub use mapping::{CC, DATE, ENVELOPE_FROM, ENVELOPE_TO, FROM, MESSAGE_ID, RFC822, TO, to_message};
use session::State;

use crate::Error;
use crate::config::InboundConfig;

pub struct Inbound {
    config: InboundConfig,
    domain: String,
    hostname: String,
    acceptor: Option<TlsAcceptor>,
    queues: store::Queues,
}

impl Inbound {
    pub fn new(config: InboundConfig, domain: &str, client: Client) -> Result<Inbound, Error> {
        let acceptor = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(raftq_tls::server_acceptor(cert, key)?),
            _ => None,
        };
        Ok(Inbound {
            hostname: config
                .hostname
                .clone()
                .unwrap_or_else(|| domain.to_string()),
            domain: domain.to_ascii_lowercase(),
            config,
            acceptor,
            queues: store::Queues::new(client),
        })
    }

    /// Binds the listener (so that a bad address fails at start, not later).
    pub async fn bind(&self) -> Result<TcpListener, Error> {
        TcpListener::bind(self.config.listen)
            .await
            .map_err(|source| Error::Io {
                what: format!("listening on {}", self.config.listen),
                source,
            })
    }

    /// Serves SMTP sessions on `listener` until `stopped` turns true; at most
    /// `max_connections` at once. Sessions under way when the process then ends are cut:
    /// their senders were not answered 250, so they send again (and a mail stored before
    /// the cut is stored once, by its key).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut stopped: watch::Receiver<bool>) {
        let slots = Arc::new(Semaphore::new(self.config.max_connections));
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                _ = stopped.wait_for(|stopped| *stopped) => return,
            };
            let Ok(permit) = permit else {
                return;
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stopped.wait_for(|stopped| *stopped) => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accepting an SMTP connection failed");
                    continue;
                }
            };
            let inbound = self.clone();
            tokio::spawn(async move {
                if let Err(error) = inbound.session(stream, peer).await {
                    tracing::debug!(%peer, %error, "SMTP session ended with an error");
                }
                drop(permit);
            });
        }
    }

    async fn session(
        self: Arc<Self>,
        mut stream: TcpStream,
        peer: std::net::SocketAddr,
    ) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let _ = stream.set_nodelay(true);
        // No enhanced status code: it is not part of a greeting.
        let greeting = format!("220 {} ESMTP raftq mail bridge\r\n", self.hostname);
        tokio::time::timeout(HANDSHAKE, stream.write_all(greeting.as_bytes()))
            .await
            .map_err(|_| timed_out("greeting"))??;
        let mut state = State::default();
        match self.converse(&mut stream, &mut state, peer).await? {
            session::End::Closed => Ok(()),
            session::End::StartTls => {
                let Some(acceptor) = self.acceptor.clone() else {
                    return Ok(());
                };
                let mut tls = tokio::time::timeout(HANDSHAKE, acceptor.accept(stream))
                    .await
                    .map_err(|_| timed_out("TLS handshake"))??;
                // RFC 3207: everything known before TLS is forgotten.
                let mut state = State::after_tls();
                self.converse(&mut tls, &mut state, peer).await?;
                let _ = tokio::time::timeout(HANDSHAKE, tls.shutdown()).await;
                Ok(())
            }
        }
    }
}

/// The longest a greeting or a TLS handshake may take.
const HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(10);

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}
