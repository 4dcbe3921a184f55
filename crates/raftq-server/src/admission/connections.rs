//! Connections to the public port, counted. A connection over the limit is still taken
//! (so its caller learns why, instead of waiting on a full backlog): every call on it is
//! refused with RESOURCE_EXHAUSTED, and it is closed a few seconds later. At most
//! [`MAX_REFUSING`](super::MAX_REFUSING) such connections are kept; beyond that they are
//! closed at once.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tonic::Status;
use tonic::transport::server::Connected;

use super::{Admission, refuse};

/// How long a connection over the limit stays open to answer refusals.
const REFUSING_FOR: Duration = Duration::from_secs(5);

/// What a call learns of its connection (a request extension): the transport's own
/// information, and whether the connection is over the limit.
#[derive(Clone)]
pub struct ConnectionInfo<I> {
    pub transport: I,
    over_limit: Option<Arc<str>>,
}

/// A connection taken by the public port, holding its place until it closes.
pub struct Admitted<IO> {
    io: IO,
    _place: OwnedSemaphorePermit,
    over_limit: Option<Arc<str>>,
    /// When a connection over the limit is closed.
    closes: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Takes a connection into the count: `None` when it is over the limit and no more
/// connections may wait to be refused (the caller drops it, closing it).
pub fn admit<IO>(admission: &Admission, io: IO) -> Option<Admitted<IO>> {
    let inner = &admission.inner;
    if let Ok(place) = inner.connections.clone().try_acquire_owned() {
        metrics::gauge!("raftq_connections").increment(1.0);
        return Some(Admitted {
            io,
            _place: place,
            over_limit: None,
            closes: None,
        });
    }
    // Counted once per connection, not per call refused on it.
    let message = refuse(
        "max_connections",
        format!(
            "this node serves {} connections already",
            inner.config.max_connections
        ),
    )
    .message()
    .to_string();
    let place = inner.refusing.clone().try_acquire_owned().ok()?;
    Some(Admitted {
        io,
        _place: place,
        over_limit: Some(message.into()),
        closes: Some(Box::pin(tokio::time::sleep(REFUSING_FOR))),
    })
}

/// RESOURCE_EXHAUSTED for a call on a connection over the limit, found in the call's
/// extensions (`ConnectInfo` of plaintext or TLS connections).
pub fn refusal(extensions: &tonic::Extensions) -> Option<Status> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let over_limit = extensions
        .get::<ConnectionInfo<TlsConnectInfo<TcpConnectInfo>>>()
        .map(|info| info.over_limit.clone())
        .or_else(|| {
            extensions
                .get::<ConnectionInfo<TcpConnectInfo>>()
                .map(|info| info.over_limit.clone())
        })??;
    Some(Status::resource_exhausted(over_limit.to_string()))
}

/// The certificates the client presented, on a TLS connection that has some.
pub fn peer_certificates(
    extensions: &tonic::Extensions,
) -> Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<ConnectionInfo<TlsConnectInfo<TcpConnectInfo>>>()?
        .transport
        .peer_certs()
}

impl<IO> Drop for Admitted<IO> {
    fn drop(&mut self) {
        if self.over_limit.is_none() {
            metrics::gauge!("raftq_connections").decrement(1.0);
        }
    }
}

impl<IO: Connected> Connected for Admitted<IO> {
    type ConnectInfo = ConnectionInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectionInfo {
            transport: self.io.connect_info(),
            over_limit: self.over_limit.clone(),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Admitted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(closes) = &mut self.closes
            && closes.as_mut().poll(cx).is_ready()
        {
            // Its time is up: the server reads the end of the connection, and closes it.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Admitted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
