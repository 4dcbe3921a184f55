//! A node certificate may name the cluster its node belongs to (a URI name,
//! `urn:raftq:cluster:NAME`). A node whose own certificate names a cluster takes peers on
//! its internal port, and connects to peers, only when their certificates name the same
//! cluster: two clusters issued from one CA cannot speak to each other, and the cluster id
//! its data records must be that name (the cluster layer checks that at start).

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};

/// How a certificate names its cluster.
pub const CLUSTER_URI_PREFIX: &str = "urn:raftq:cluster:";

/// The longest cluster name a certificate may give.
const MAX_NAME: usize = 128;

/// The cluster a certificate names: `Ok(None)` when it names none, an error when its name
/// is not one raftq takes (empty, too long, or with characters other than ASCII letters,
/// digits, `-`, `_` and `.`), or when it names two.
pub fn cluster_name(certificate: &[u8]) -> Result<Option<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate)
        .map_err(|error| format!("the certificate cannot be parsed: {error}"))?;
    let Some(names) = parsed
        .subject_alternative_name()
        .map_err(|error| format!("the certificate's alternative names cannot be read: {error}"))?
    else {
        return Ok(None);
    };
    let mut found: Option<String> = None;
    for name in &names.value.general_names {
        let x509_parser::extensions::GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(cluster) = uri.strip_prefix(CLUSTER_URI_PREFIX) else {
            continue;
        };
        check_name(cluster)?;
        match &found {
            Some(other) if other != cluster => {
                return Err(format!(
                    "the certificate names two clusters, {other} and {cluster}"
                ));
            }
            _ => found = Some(cluster.to_string()),
        }
    }
    Ok(found)
}

/// Whether `name` may be a cluster's name.
pub fn check_name(name: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > MAX_NAME || !name.chars().all(allowed) {
        return Err(format!(
            "{name:?} is not a cluster name: 1 to {MAX_NAME} ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Whether a peer's certificate names cluster `ours` (when this node's certificate names
/// one; otherwise every certificate the CA issued is taken).
fn check_peer(ours: Option<&str>, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
    let Some(ours) = ours else {
        return Ok(());
    };
    let refused = |reason: String| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
            reason,
        )))))
    };
    match cluster_name(certificate) {
        Ok(Some(theirs)) if theirs == ours => Ok(()),
        Ok(Some(theirs)) => Err(refused(format!(
            "the peer's certificate names cluster {theirs}, not this cluster ({ours})"
        ))),
        Ok(None) => Err(refused(format!(
            "the peer's certificate names no cluster; this cluster is {ours}"
        ))),
        Err(reason) => Err(refused(reason)),
    }
}

#[derive(Debug)]
struct Refused(String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The internal port's check of peers: the CA's, then the cluster's.
#[derive(Debug)]
pub(crate) struct PeerClients {
    pub(crate) inner: Arc<dyn ClientCertVerifier>,
    pub(crate) cluster: Option<String>,
}

impl ClientCertVerifier for PeerClients {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_peer(self.cluster.as_deref(), end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A node's check of the peers it connects to: the CA's, then the cluster's.
#[derive(Debug)]
pub(crate) struct PeerServers {
    pub(crate) inner: Arc<dyn ServerCertVerifier>,
    pub(crate) cluster: Option<String>,
}

impl ServerCertVerifier for PeerServers {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_peer(self.cluster.as_deref(), end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
