//! Connections to PostgreSQL: plaintext, or TLS verified against a CA the operator names.

use std::path::Path;

use futures::StreamExt as _;
use raftq_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_postgres::tls::TlsStream;
use tokio_postgres::{AsyncMessage, Connection, NoTls};

use crate::Error;

/// How raftq-pg reaches PostgreSQL.
#[derive(Debug, Clone, Default)]
pub enum DatabaseTls {
    /// Plaintext (a connection string with `sslmode=require` is then refused).
    #[default]
    Plaintext,
    /// TLS when the connection string's `sslmode` asks for it (`prefer`, the default,
    /// falls back to plaintext when the server offers no TLS; `require` does not), the
    /// server's certificate verified against this CA and its name against the host.
    Verified(ClientTls),
}

impl DatabaseTls {
    /// TLS trusting the CA certificate(s) in the PEM file `ca`.
    pub fn from_ca_file(ca: &Path) -> Result<DatabaseTls, Error> {
        ClientTls::from_files(ca, None)
            .map(DatabaseTls::Verified)
            .map_err(|error| Error::Tls(error.to_string()))
    }
}

/// Connects to the database at `url`; the receiver wakes on every notification the
/// connection gets (LISTEN).
pub async fn connect(
    url: &str,
    tls: &DatabaseTls,
) -> Result<(tokio_postgres::Client, mpsc::Receiver<()>), Error> {
    // One waiting wake-up is enough: notifications only say "look again".
    let (wake, woken) = mpsc::channel(1);
    let client = match tls {
        DatabaseTls::Plaintext => {
            let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
            tokio::spawn(drive(connection, wake));
            client
        }
        DatabaseTls::Verified(tls) => {
            let connector =
                tokio_postgres_rustls::MakeRustlsConnect::new(tls.rustls_config_without_alpn());
            let (client, connection) = tokio_postgres::connect(url, connector).await?;
            tokio::spawn(drive(connection, wake));
            client
        }
    };
    Ok((client, woken))
}

/// Polls the connection until it closes, turning notifications into wake-ups.
async fn drive<S, T>(mut connection: Connection<S, T>, wake: mpsc::Sender<()>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: TlsStream + Unpin,
{
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notification(_)) => {
                let _ = wake.try_send(());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "raftq-pg: connection closed");
                break;
            }
        }
    }
}
