//! A throwaway certificate authority and the certificates it issues: for `raftq dev`
//! and the tests, never for production (production certificates come from the operator's
//! own CA, or cert-manager).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::TlsError;

fn failed(error: rcgen::Error) -> TlsError {
    TlsError::Generate(error.to_string())
}

/// A CA that lives in memory for as long as it issues certificates.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How long an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From now on, for a year and more (rcgen's default span).
    Current,
    /// Ended years ago: for tests of expired certificates.
    Expired,
}

impl Authority {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(failed)?;
        Ok(Authority {
            issuer: CertifiedIssuer::self_signed(params, key).map_err(failed)?,
        })
    }

    /// The CA's certificate, PEM: what clients and nodes trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `common_name`, valid as a server for `names` (DNS names or IP
    /// addresses) and as a client.
    pub fn issue(&self, common_name: &str, names: &[String]) -> Result<Issued, TlsError> {
        self.issue_with(common_name, names, Validity::Current)
    }

    pub fn issue_with(
        &self,
        common_name: &str,
        names: &[String],
        validity: Validity,
    ) -> Result<Issued, TlsError> {
        self.issue_full(common_name, names, validity, None)
    }

    /// A node certificate, as [`Authority::issue`], that also names the cluster `cluster`
    /// (`urn:raftq:cluster:NAME`): its node speaks only to peers naming the same cluster.
    pub fn issue_in_cluster(
        &self,
        common_name: &str,
        names: &[String],
        cluster: &str,
    ) -> Result<Issued, TlsError> {
        self.issue_full(common_name, names, Validity::Current, Some(cluster))
    }

    fn issue_full(
        &self,
        common_name: &str,
        names: &[String],
        validity: Validity,
        cluster: Option<&str>,
    ) -> Result<Issued, TlsError> {
        let mut params = CertificateParams::new(names.to_vec()).map_err(failed)?;
        if let Some(cluster) = cluster {
            crate::check_cluster_name(cluster).map_err(TlsError::Generate)?;
            let uri = format!("{}{cluster}", crate::CLUSTER_URI_PREFIX);
            params
                .subject_alt_names
                .push(SanType::URI(uri.as_str().try_into().map_err(failed)?));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl Issued {
    /// Writes `<dir>/<stem>.pem` and `<dir>/<stem>.key` (the key readable by its owner
    /// only) and returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), TlsError> {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, &self.cert_pem, 0o644)?;
        write_file(&key, &self.key_pem, 0o600)?;
        Ok((cert, key))
    }
}

/// Writes `text` to `path` with permissions `mode`, through a temporary file renamed over
/// it: a reader (a node watching its files) never sees half a file.
pub fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let failed = |error: std::io::Error| TlsError::Read {
        path: path.display().to_string(),
        reason: error.to_string(),
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)
        .map_err(failed)?;
    file.write_all(text.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientTls, NodeTls, TlsFiles};

    #[test]
    fn issued_certificates_make_a_node_and_a_client_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("test CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        write_file(&ca_path, &ca.cert_pem(), 0o644).unwrap();
        let (cert, key) = ca
            .issue("node 1", &["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .write(dir.path(), "node")
            .unwrap();
        let node = NodeTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca_path.clone(),
            client_ca: None,
        })
        .unwrap();
        assert!(!node.reload_if_changed().unwrap(), "nothing changed");
        ClientTls::from_files(&ca_path, Some((&cert, &key))).unwrap();
        ClientTls::from_pem(&ca.cert_pem(), None).unwrap();
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Authority::new("test CA").unwrap();
        let ca_path = dir.path().join("ca.pem");
        write_file(&ca_path, &ca.cert_pem(), 0o644).unwrap();
        let (cert, key) = ca
            .issue("n", &["localhost".into()])
            .unwrap()
            .write(dir.path(), "n")
            .unwrap();
        write_file(&key, "not a key", 0o600).unwrap();
        let error = NodeTls::load(TlsFiles {
            cert,
            key: key.clone(),
            ca: ca_path,
            client_ca: None,
        })
        .err()
        .expect("a broken key is refused")
        .to_string();
        assert!(
            error.contains(&key.display().to_string()) && error.contains("private key"),
            "{error}"
        );
    }
}
