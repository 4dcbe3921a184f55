//! Certificates, keys and trust roots from PEM bytes.

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// The bytes of `path`.
pub(crate) fn read(path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.display().to_string(),
        reason: error.to_string(),
    })
}

/// Every certificate in `pem` (a chain: the leaf first).
pub(crate) fn certificates(
    pem: &[u8],
    path: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid {
            what: path.to_string(),
            reason: error.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_string(),
            what: "certificate",
        });
    }
    Ok(certificates)
}

/// The private key in `pem` (PKCS#8, PKCS#1 or SEC1).
pub(crate) fn private_key(pem: &[u8], path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_string(),
            what: "private key",
        },
        other => TlsError::Invalid {
            what: path.to_string(),
            reason: other.to_string(),
        },
    })
}

/// A trust store holding every certificate in `pem`.
pub(crate) fn roots(pem: &[u8], path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(pem, path)? {
        roots.add(certificate).map_err(|error| TlsError::Invalid {
            what: format!("CA certificate in {path}"),
            reason: error.to_string(),
        })?;
    }
    Ok(roots)
}
