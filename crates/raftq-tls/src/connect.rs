//! The client side: what a connection trusts and presents, and a connector that opens TLS
//! connections for tonic channels.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::cluster::PeerServers;
use crate::node::NodeTls;
use crate::{H2, TlsError, pem, provider};

/// What a client trusts (a CA) and, for mutual TLS, the certificate it presents.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field(
                "client_certificate",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .finish()
    }
}

impl ClientTls {
    /// Trusts the CA certificate(s) in the file `ca`; presents the certificate and key in
    /// `identity`, when given.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let ca_pem = pem::read(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((pem::read(cert)?, pem::read(key)?, cert, key)),
            None => None,
        };
        let roots = pem::roots(&ca_pem, &ca.display().to_string())?;
        let identity = match &identity {
            Some((cert_pem, key_pem, cert, key)) => Some((
                pem::certificates(cert_pem, &cert.display().to_string())?,
                pem::private_key(key_pem, &key.display().to_string())?,
            )),
            None => None,
        };
        Ok(ClientTls {
            config: client_config(roots, identity, None)?,
        })
    }

    /// As [`ClientTls::from_files`], from PEM text.
    pub fn from_pem(ca: &str, identity: Option<(&str, &str)>) -> Result<ClientTls, TlsError> {
        let roots = pem::roots(ca.as_bytes(), "the CA certificate")?;
        let identity = match identity {
            Some((cert, key)) => Some((
                pem::certificates(cert.as_bytes(), "the client certificate")?,
                pem::private_key(key.as_bytes(), "the client key")?,
            )),
            None => None,
        };
        Ok(ClientTls {
            config: client_config(roots, identity, None)?,
        })
    }

    /// Trusts the web's public roots (Mozilla's list, built in): for a server outside the
    /// cluster with a public certificate (a company's mail relay, say).
    pub fn public_roots() -> Result<ClientTls, TlsError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Ok(ClientTls {
            config: client_config(roots, None, None)?,
        })
    }

    /// The rustls configuration without HTTP/2's protocol name (ALPN), for a connection
    /// that is not gRPC (PostgreSQL's, say): the same trust and identity.
    pub fn rustls_config_without_alpn(&self) -> ClientConfig {
        let mut config = (*self.config).clone();
        config.alpn_protocols.clear();
        config
    }

    pub fn connector(&self) -> Connector {
        Connector {
            source: Source::Fixed(self.config.clone()),
        }
    }
}

/// A client configuration speaking HTTP/2, trusting `roots`; with `cluster`, only servers
/// whose certificates name that cluster (a node towards its peers).
pub(crate) fn client_config(
    roots: rustls::RootCertStore,
    identity: Option<(
        Vec<rustls_pki_types::CertificateDer<'static>>,
        rustls_pki_types::PrivateKeyDer<'static>,
    )>,
    cluster: Option<String>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let invalid = |what: &str| {
        let what = what.to_string();
        move |error: rustls::Error| TlsError::Invalid {
            what,
            reason: error.to_string(),
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid("TLS protocol versions"))?;
    let builder = match cluster {
        None => builder.with_root_certificates(roots),
        Some(cluster) => {
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .build()
            .map_err(|error| TlsError::Invalid {
                what: "the cluster CA".into(),
                reason: error.to_string(),
            })?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PeerServers {
                    inner,
                    cluster: Some(cluster),
                }))
        }
    };
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(invalid("the client certificate and key"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// Opens TLS connections for a tonic channel (`Endpoint::connect_with_connector_lazy`;
/// the endpoint's URI keeps the `http` scheme, TLS is this connector's business). The
/// server's name is checked against the host of the URI.
#[derive(Clone)]
pub struct Connector {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Fixed(Arc<ClientConfig>),
    /// A node's own certificate towards its peers: the configuration current at each new
    /// connection, so a rotated certificate is used from the next one on.
    Node(NodeTls),
}

impl Connector {
    pub(crate) fn node(tls: NodeTls) -> Connector {
        Connector {
            source: Source::Node(tls),
        }
    }

    fn config(&self) -> Arc<ClientConfig> {
        match &self.source {
            Source::Fixed(config) => config.clone(),
            Source::Node(node) => node.client_config(),
        }
    }
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let config = self.config();
        Box::pin(async move {
            let invalid =
                |reason: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, reason);
            let host = uri
                .host()
                .ok_or_else(|| invalid(format!("{uri} names no host")))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri
                .port_u16()
                .ok_or_else(|| invalid(format!("{uri} names no port")))?;
            let name = ServerName::try_from(host.clone())
                .map_err(|error| invalid(format!("{host} is not a server name: {error}")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}
