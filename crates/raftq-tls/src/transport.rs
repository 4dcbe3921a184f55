//! How a channel reaches a server: plaintext, or TLS through a [`Connector`].

use tonic::transport::{Channel, Endpoint};

use crate::Connector;

/// Plaintext (only with `--insecure` servers), or TLS.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plaintext,
    Tls(Connector),
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plaintext => "Plaintext",
            Transport::Tls(_) => "Tls",
        })
    }
}

impl Transport {
    /// A channel to `endpoint` that connects on first use (and again after a failure).
    /// The endpoint's URI keeps the `http` scheme either way.
    pub fn channel(&self, endpoint: &Endpoint) -> Channel {
        match self {
            Transport::Plaintext => endpoint.connect_lazy(),
            Transport::Tls(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
        }
    }

    /// A channel to `endpoint`, connected now.
    pub async fn connect(&self, endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
        match self {
            Transport::Plaintext => endpoint.connect().await,
            Transport::Tls(connector) => endpoint.connect_with_connector(connector.clone()).await,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }
}
