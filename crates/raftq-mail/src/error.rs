//! Why the bridge could not start or stopped.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] raftq_tls::TlsError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the cluster: {0}")]
    Cluster(#[from] raftq_client::ClientError),
    #[error("the relay: {0}")]
    Relay(String),
}
