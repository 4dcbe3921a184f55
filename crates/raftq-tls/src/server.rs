//! A plain TLS server (no client certificates, no ALPN) from a certificate and key: what a
//! helper process offers a protocol other than gRPC (SMTP's STARTTLS, say).

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::{TlsError, pem, provider};

/// An acceptor presenting the chain in `cert` with `key`.
pub fn server_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let name = |path: &Path| path.display().to_string();
    let chain = pem::certificates(&pem::read(cert)?, &name(cert))?;
    let key = pem::private_key(&pem::read(key)?, &name(key))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|error| TlsError::Invalid {
            what: name(cert),
            reason: error.to_string(),
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
