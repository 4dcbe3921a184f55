//! The SMTP client towards the relay: lettre's SMTP conversation over connections the
//! bridge opens itself, kept open between mails (a small pool).
//!
//! Why not lettre's own transport: it writes a mail's content and its final `.` in two
//! writes on a socket with Nagle's algorithm on, so each mail waited for the relay's
//! delayed ACK (about 40 ms): about 170 mails/s through Postfix with 8 connections. Here
//! the socket has TCP_NODELAY; STARTTLS is done before lettre takes the connection over
//! (it cannot upgrade a stream it did not open), and the server's greeting is replayed
//! to it.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::Error;
use crate::config::RelayTls;

/// How a send ended when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// The relay refused for good (5xx): sending again will not help.
    Permanent(String),
    /// Anything else (4xx, no connection, a timeout): try again later.
    Transient(String),
}

/// The relay and the connections kept open to it.
pub struct Relay {
    host: String,
    port: u16,
    tls: RelayTls,
    connector: TlsConnector,
    hello: ClientId,
    timeout: Duration,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    max_idle: usize,
}

impl Relay {
    /// A client of the relay at `address` (HOST:PORT); `trust` verifies its certificate
    /// when `tls` is not `None`. A send (its whole exchange) waits at most `timeout`; at
    /// most `max_idle` connections stay open between sends.
    pub fn new(
        address: &str,
        tls: RelayTls,
        trust: &raftq_tls::ClientTls,
        hello: &str,
        timeout: Duration,
        max_idle: usize,
    ) -> Result<Relay, Error> {
        let (host, port) = address
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.trim_matches(['[', ']']), port.parse().ok()?)))
            .ok_or_else(|| Error::Config(format!("relay {address:?}: not HOST:PORT")))?;
        // SMTP, not HTTP/2: no ALPN.
        let config = trust.rustls_config_without_alpn();
        Ok(Relay {
            host: host.to_string(),
            port,
            tls,
            connector: TlsConnector::from(Arc::new(config)),
            hello: ClientId::Domain(hello.to_string()),
            timeout,
            idle: Mutex::new(Vec::new()),
            max_idle,
        })
    }

    /// Sends one mail within the relay's deadline: on a connection kept from before (one
    /// the relay closed meanwhile is replaced once), or a new one.
    pub async fn send(&self, envelope: &Envelope, mail: &[u8]) -> Result<(), SendError> {
        tokio::time::timeout(self.timeout, self.send_now(envelope, mail))
            .await
            .unwrap_or_else(|_| {
                Err(SendError::Transient(format!(
                    "the relay did not answer within {:?}",
                    self.timeout
                )))
            })
    }

    async fn send_now(&self, envelope: &Envelope, mail: &[u8]) -> Result<(), SendError> {
        let kept = self.lock().pop();
        if let Some(mut connection) = kept {
            match connection.send(envelope, mail).await {
                Ok(_) => {
                    self.keep(connection);
                    return Ok(());
                }
                // The relay's own answer about this mail (lettre has closed the
                // connection): that is the outcome.
                Err(error) if is_answer(&error) => return Err(classify(&error)),
                // The connection was gone (closed while idle, a 421 on shutdown): a new
                // one. (Had the relay taken the mail before it went, it gets it twice,
                // with the same Message-ID.)
                Err(_) => {}
            }
        }
        let mut connection = self.open().await?;
        match connection.send(envelope, mail).await {
            Ok(_) => {
                self.keep(connection);
                Ok(())
            }
            Err(error) => Err(classify(&error)),
        }
    }

    fn keep(&self, connection: AsyncSmtpConnection) {
        let mut idle = self.lock();
        if idle.len() < self.max_idle && !connection.has_broken() {
            idle.push(connection);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AsyncSmtpConnection>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A new connection, greeted, with TLS as configured.
    async fn open(&self) -> Result<AsyncSmtpConnection, SendError> {
        let failed = |what: &str, error: &dyn std::fmt::Display| {
            SendError::Transient(format!("{what} {}:{}: {error}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| failed("connecting to", &error))?;
        tcp.set_nodelay(true)
            .map_err(|error| failed("TCP_NODELAY on", &error))?;
        let peer = tcp
            .peer_addr()
            .map_err(|error| failed("connecting to", &error))?;
        let stream = match self.tls {
            RelayTls::None => RelayStream {
                replay: Vec::new(),
                inner: Inner::Plain(tcp),
                peer,
            },
            RelayTls::Tls => RelayStream {
                replay: Vec::new(),
                inner: Inner::Tls(Box::new(self.handshake(tcp).await?)),
                peer,
            },
            RelayTls::Starttls => {
                let (greeting, tcp) = self
                    .start_tls(tcp)
                    .await
                    .map_err(|error| failed("STARTTLS with", &error))?;
                RelayStream {
                    replay: greeting,
                    inner: Inner::Tls(Box::new(self.handshake(tcp).await?)),
                    peer,
                }
            }
        };
        AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
            .await
            .map_err(|error| classify(&error))
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, SendError> {
        let name = ServerName::try_from(self.host.clone())
            .map_err(|error| SendError::Transient(format!("relay name {}: {error}", self.host)))?;
        self.connector.connect(name, tcp).await.map_err(|error| {
            SendError::Transient(format!("TLS with {}:{}: {error}", self.host, self.port))
        })
    }

    /// The plaintext part of STARTTLS: the greeting (returned, to replay to lettre), EHLO,
    /// STARTTLS and its 220.
    async fn start_tls(&self, tcp: TcpStream) -> io::Result<(Vec<u8>, TcpStream)> {
        let mut reader = BufReader::new(tcp);
        let greeting = read_reply(&mut reader).await?;
        reader
            .get_mut()
            .write_all(format!("EHLO {}\r\n", self.hello).as_bytes())
            .await?;
        let ehlo = read_reply(&mut reader).await?;
        if !String::from_utf8_lossy(&ehlo)
            .to_ascii_uppercase()
            .contains("STARTTLS")
        {
            return Err(io::Error::other("the relay does not offer STARTTLS"));
        }
        reader.get_mut().write_all(b"STARTTLS\r\n").await?;
        let ready = read_reply(&mut reader).await?;
        if !ready.starts_with(b"220") {
            return Err(io::Error::other(format!(
                "the relay refused STARTTLS: {}",
                String::from_utf8_lossy(&ready).trim()
            )));
        }
        if !reader.buffer().is_empty() {
            return Err(io::Error::other(
                "the relay sent data before the TLS handshake",
            ));
        }
        Ok((greeting, reader.into_inner()))
    }
}

/// One SMTP reply, all its lines.
async fn read_reply(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut reply = Vec::new();
    loop {
        let start = reply.len();
        if reader.read_until(b'\n', &mut reply).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the relay closed the connection",
            ));
        }
        if reply.len() - start > 1_000 || reply.len() > 16_000 {
            return Err(io::Error::other("the relay's reply is too long"));
        }
        if reply.get(start + 3) != Some(&b'-') {
            return Ok(reply);
        }
    }
}

/// Whether the relay answered about the mail itself (a 4xx other than 421 "closing", a
/// 5xx), or lettre refused it (e.g. 8-bit content to a relay without 8BITMIME).
fn is_answer(error: &lettre::transport::smtp::Error) -> bool {
    let closing = error.status().is_some_and(|code| code.to_string() == "421");
    error.is_permanent() || error.is_client() || (error.is_transient() && !closing)
}

/// Permanent: the relay's 5xx, or a mail lettre cannot send to it at all.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    if error.is_permanent() || error.is_client() {
        SendError::Permanent(format!("smtp: {error}"))
    } else {
        SendError::Transient(format!("smtp: {error}"))
    }
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The connection lettre talks over; it first reads `replay` (the greeting already read
/// before STARTTLS).
struct RelayStream {
    replay: Vec<u8>,
    inner: Inner,
    peer: std::net::SocketAddr,
}

impl std::fmt::Debug for RelayStream {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "RelayStream({})", self.peer)
    }
}

impl AsyncTokioStream for RelayStream {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.peer)
    }
}

impl AsyncRead for RelayStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let count = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..count]);
            this.replay.drain(..count);
            return Poll::Ready(Ok(()));
        }
        match &mut this.inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_read(context, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_read(context, buf),
        }
    }
}

impl AsyncWrite for RelayStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_write(context, bytes),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write(context, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_flush(context),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            Inner::Plain(tcp) => Pin::new(tcp).poll_shutdown(context),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(context),
        }
    }
}
