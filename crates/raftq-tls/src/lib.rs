//! raftq-tls: everything raftq does with TLS, in one place.
//!
//! - [`ClientTls`]: how a client (or a node, towards its peers) connects: the CA it trusts
//!   and, optionally, the certificate it presents. Its [`Connector`] opens TLS connections
//!   for tonic channels.
//! - [`NodeTls`]: a node's certificate, key and cluster CA, read from files and read again
//!   when the files change (cert-manager rotates them), with the server side of both
//!   ports ([`incoming`]) and the client side towards peers.
//! - [`cluster_name`]: the cluster a node certificate names; a node whose certificate
//!   names one speaks only to peers of that cluster.
//! - [`server_acceptor`]: a plain TLS server from a certificate and key (the mail bridge's
//!   STARTTLS).
//! - [`generate`]: a throwaway CA and certificates, for `raftq dev` and the tests.
//!
//! It must not know about queues, Raft or gRPC services: only certificates, sockets and
//! channels ([`Transport`]).

mod accept;
mod cluster;
mod connect;
pub mod generate;
mod node;
mod pem;
mod server;
mod transport;

pub use accept::incoming;
pub use cluster::{CLUSTER_URI_PREFIX, check_name as check_cluster_name, cluster_name};
pub use connect::{ClientTls, Connector};
pub use node::{NodeTls, TlsFiles};
pub use server::server_acceptor;
pub use transport::Transport;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: String, what: &'static str },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("generating certificates: {0}")]
    Generate(String),
}

/// The protocol every raftq connection speaks inside TLS (ALPN).
const H2: &[u8] = b"h2";

/// ring, the one crypto provider raftq builds with (no C build, unlike aws-lc).
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The common name of a certificate's subject (the name a client certificate gives its
/// principal), if it has one that is text.
pub fn common_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let name = parsed.subject().iter_common_name().next()?;
    name.as_str().ok().map(str::to_string)
}
