//! A node's TLS: its certificate and key, the cluster CA and (optionally) the CA of client
//! certificates, read from files and read again when they change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use tokio_rustls::TlsAcceptor;

use crate::cluster::PeerClients;
use crate::connect::{Connector, client_config};
use crate::{H2, TlsError, pem, provider};

/// How often the files are looked at for a change.
const RELOAD_POLL: Duration = Duration::from_secs(5);

/// Where a node's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM), presented on both ports and to peers.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA (PEM): peers' certificates on the internal port must chain to it,
    /// and this node checks its peers' server certificates against it.
    pub ca: PathBuf,
    /// The CA of client certificates on the public port, if clients may authenticate with
    /// one; without it the public port asks for none.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [&self.cert, &self.key, &self.ca]
            .into_iter()
            .map(PathBuf::as_path)
            .chain(self.client_ca.as_deref())
    }
}

/// A node's TLS configurations, rebuilt when its files change. Cheap to clone.
#[derive(Clone)]
pub struct NodeTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    current: RwLock<Material>,
    /// What the files held when `current` was built.
    stamp: Mutex<Vec<Option<u64>>>,
}

/// Everything built from one reading of the files.
#[derive(Clone)]
struct Material {
    /// The cluster this node's certificate names, if any.
    cluster: Option<String>,
    public: Arc<ServerConfig>,
    internal: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl NodeTls {
    /// Reads the files; fails if any is missing or invalid.
    pub fn load(files: TlsFiles) -> Result<NodeTls, TlsError> {
        let stamp = stamp(&files);
        let material = Material::read(&files)?;
        Ok(NodeTls {
            inner: Arc::new(Inner {
                files,
                current: RwLock::new(material),
                stamp: Mutex::new(stamp),
            }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The cluster this node's certificate names (`urn:raftq:cluster:NAME`), if any: then
    /// its peers' certificates must name the same one, and so must its data.
    pub fn cluster(&self) -> Option<String> {
        self.material().cluster
    }

    /// The public port's acceptor: this node's certificate; a client certificate is
    /// optional, and checked against the client CA when one is given.
    pub fn public_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material().public)
    }

    /// The internal port's acceptor: a peer must present a certificate from the cluster CA.
    pub fn internal_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.material().internal)
    }

    /// Connections to peers: the cluster CA, and this node's certificate as the client's.
    pub fn connector(&self) -> Connector {
        Connector::node(self.clone())
    }

    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.material().client
    }

    fn material(&self) -> Material {
        self.inner
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the files again if they changed since they were last read. A change that
    /// does not make a valid set (a rotation half written) keeps what is in use, and is
    /// tried again at the next look. Returns whether new material is now in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.inner.files);
        let mut seen = self
            .inner
            .stamp
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *seen == now {
            return Ok(false);
        }
        let material = Material::read(&self.inner.files)?;
        let before = self.material().cluster;
        if material.cluster != before {
            let name = |cluster: &Option<String>| cluster.clone().unwrap_or_else(|| "none".into());
            return Err(TlsError::Invalid {
                what: self.inner.files.cert.display().to_string(),
                reason: format!(
                    "the new certificate names cluster {}, the one in use names {}; a node \
                     cannot change clusters while it runs",
                    name(&material.cluster),
                    name(&before)
                ),
            });
        }
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = material;
        *seen = now;
        Ok(true)
    }

    /// Looks at the files every few seconds until `stop` resolves, and takes new material
    /// into use when they change: connections made afterwards use it, open ones keep
    /// theirs.
    pub async fn watch(self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut interval = tokio::time::interval(RELOAD_POLL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = interval.tick() => match self.reload_if_changed() {
                    Ok(true) => {
                        metrics::counter!("raftq_tls_reloads_total").increment(1);
                        tracing::info!(cert = %self.inner.files.cert.display(), "TLS certificates reloaded");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        metrics::counter!("raftq_tls_reload_failures_total").increment(1);
                        tracing::warn!(%error, "TLS files changed but do not make a valid set; still using the previous ones");
                    }
                },
            }
        }
    }
}

/// A hash of each file's bytes (`None`: unreadable). The contents, not the modification
/// time: a rotated key has the same length, and may be written within the file system's
/// time granularity of the one before.
fn stamp(files: &TlsFiles) -> Vec<Option<u64>> {
    use std::hash::{Hash as _, Hasher as _};
    files
        .paths()
        .map(|path| {
            let bytes = std::fs::read(path).ok()?;
            let mut hasher = std::hash::DefaultHasher::new();
            bytes.hash(&mut hasher);
            Some(hasher.finish())
        })
        .collect()
}

impl Material {
    fn read(files: &TlsFiles) -> Result<Material, TlsError> {
        let name = |path: &Path| path.display().to_string();
        let chain = pem::certificates(&pem::read(&files.cert)?, &name(&files.cert))?;
        let key = pem::private_key(&pem::read(&files.key)?, &name(&files.key))?;
        // A rotation caught between its two files: the key of one pair, the certificate
        // of the other. Taken into use, every handshake would fail.
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider()).map_err(
            |error| TlsError::Invalid {
                what: format!("{} and {}", name(&files.cert), name(&files.key)),
                reason: error.to_string(),
            },
        )?;
        let cluster = crate::cluster_name(&chain[0]).map_err(|reason| TlsError::Invalid {
            what: name(&files.cert),
            reason,
        })?;
        let cluster_roots = Arc::new(pem::roots(&pem::read(&files.ca)?, &name(&files.ca))?);
        let invalid = |what: &str| {
            let what = what.to_string();
            move |error: String| TlsError::Invalid {
                what,
                reason: error,
            }
        };
        let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>| {
            let builder = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|error| invalid("TLS protocol versions")(error.to_string()))?;
            let builder = match verifier {
                Some(verifier) => builder.with_client_cert_verifier(verifier),
                None => builder.with_no_client_auth(),
            };
            let mut config = builder
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|error| {
                    invalid(&format!("{} and {}", name(&files.cert), name(&files.key)))(
                        error.to_string(),
                    )
                })?;
            config.alpn_protocols = vec![H2.to_vec()];
            Ok::<_, TlsError>(Arc::new(config))
        };
        let peers = Arc::new(PeerClients {
            inner: WebPkiClientVerifier::builder_with_provider(cluster_roots.clone(), provider())
                .build()
                .map_err(|error| invalid(&name(&files.ca))(error.to_string()))?,
            cluster: cluster.clone(),
        });
        let clients = match &files.client_ca {
            Some(path) => Some(
                WebPkiClientVerifier::builder_with_provider(
                    Arc::new(pem::roots(&pem::read(path)?, &name(path))?),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|error| invalid(&name(path))(error.to_string()))?,
            ),
            None => None,
        };
        Ok(Material {
            public: server(clients)?,
            internal: server(Some(peers))?,
            client: client_config(
                (*cluster_roots).clone(),
                Some((chain.clone(), key.clone_key())),
                cluster.clone(),
            )?,
            cluster,
        })
    }
}
