//! `raftq serve` configuration: defaults, then a TOML file, then `RAFTQ_*` environment
//! variables, then command-line flags (each later source wins).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use raftq_cluster::{GroupsConfig, RaftTuning, StorageTuning};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// This node's id, unique in the cluster and never reused with an empty data dir.
    pub node_id: u64,
    /// Where the public gRPC API (queues, messages, cluster status) listens.
    pub listen: SocketAddr,
    /// The address clients use to reach `listen` (named in leader hints); defaults to
    /// `listen`.
    pub advertise: Option<String>,
    /// Where the internal gRPC port listens: Raft, membership changes and calls forwarded
    /// between nodes. Only other nodes (and operators' tools) should reach it.
    pub internal_listen: SocketAddr,
    /// The address other nodes use to reach `internal_listen`; defaults to
    /// `internal_listen`.
    pub internal_advertise: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Initial voters as `ID=HOST:PORT,...`, each one's internal address. The lowest id
    /// forms the cluster on first start.
    pub peers: String,
    /// Internal address of a running member to join through (as learner, then voter).
    pub join: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
    /// Serve both ports in plaintext. Without it, `[tls]` must be set: a node refuses to
    /// start without TLS.
    pub insecure: bool,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub raft: RaftTuning,
    pub storage: StorageTuning,
    pub admission: crate::admission::AdmissionConfig,
    pub producers: ProducersConfig,
    /// `[groups]` (`RAFTQ_GROUPS__*`): data groups beside the metadata group.
    pub groups: GroupsConfig,
}

/// `[producers]` (`RAFTQ_PRODUCERS__*`): the bounds of producer sessions. The leader
/// writes them into the commands that register producers and open sessions, so the
/// leader's settings apply; give every node the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducersConfig {
    /// How long a producer may be idle before it is forgotten, when it registers without
    /// saying (at most 365 days).
    pub default_idle_expiry_ms: u64,
    /// Producers registered at once in the cluster.
    pub max_producers: u64,
    /// Producers with a session on one queue.
    pub max_sessions_per_queue: u64,
}

impl Default for ProducersConfig {
    fn default() -> Self {
        ProducersConfig {
            default_idle_expiry_ms: 7 * 24 * 60 * 60 * 1000,
            max_producers: 100_000,
            max_sessions_per_queue: 10_000,
        }
    }
}

impl ProducersConfig {
    fn check(&self) -> Result<(), String> {
        let max_expiry = raftq_core::producers::MAX_IDLE_EXPIRY_MS;
        if self.default_idle_expiry_ms == 0 || self.default_idle_expiry_ms > max_expiry {
            return Err(format!(
                "default_idle_expiry_ms is {}; it must be from 1 to {max_expiry}",
                self.default_idle_expiry_ms
            ));
        }
        if self.max_producers == 0 || self.max_sessions_per_queue == 0 {
            return Err("max_producers and max_sessions_per_queue must be above 0".into());
        }
        Ok(())
    }
}

/// `[auth]`: the bootstrap admin credential. With TLS on, clients must authenticate; the
/// admin token may do everything (create principals, grant them actions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A file holding the admin token (a Kubernetes Secret, say); surrounding white space
    /// is ignored.
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (prefer the file: the environment of a process is easy to
    /// read).
    pub admin_token: Option<String>,
}

/// Shortest admin token accepted.
const MIN_ADMIN_TOKEN: usize = 16;

/// `[tls]`: the files of this node's TLS, re-read when they change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM), for both ports and towards its peers.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The cluster CA (PEM): a peer on the internal port must present a certificate
    /// from it.
    pub ca: Option<PathBuf>,
    /// The CA of client certificates on the public port (optional): a client may then
    /// authenticate with a certificate from it.
    pub client_ca: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            advertise: None,
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 7601)),
            internal_advertise: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9401)),
            data_dir: PathBuf::from("raftq-data"),
            peers: String::new(),
            join: None,
            log_format: "text".to_string(),
            insecure: false,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            raft: RaftTuning::default(),
            storage: StorageTuning::default(),
            admission: crate::admission::AdmissionConfig::default(),
            producers: ProducersConfig::default(),
            groups: GroupsConfig::default(),
        }
    }
}

/// `RAFTQ_*` variables read by `serve`; others (such as the client's `RAFTQ_ADDR`) are
/// left alone.
const ENV_KEYS: [&str; 18] = [
    "node_id",
    "listen",
    "advertise",
    "internal_listen",
    "internal_advertise",
    "http_listen",
    "data_dir",
    "peers",
    "join",
    "log_format",
    "insecure",
    "tls",
    "auth",
    "raft",
    "storage",
    "admission",
    "producers",
    "groups",
];

/// Values given as flags; only those present override the other sources.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(skip_serializing_if = "TlsFlags::is_empty")]
    pub tls: TlsFlags,
    #[serde(skip_serializing_if = "AuthFlags::is_empty")]
    pub auth: AuthFlags,
}

/// `[auth]` values given as flags.
#[derive(Debug, Default, Serialize)]
pub struct AuthFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
}

impl AuthFlags {
    fn is_empty(&self) -> bool {
        self.admin_token_file.is_none()
    }
}

/// `[tls]` values given as flags.
#[derive(Debug, Default, Serialize)]
pub struct TlsFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl TlsFlags {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none() && self.client_ca.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("peer list entry {entry:?} is not ID=HOST:PORT")]
    BadPeer { entry: String },
    #[error("node id must be at least 1")]
    ZeroNodeId,
    #[error("log_format must be `text` or `json`, not {0:?}")]
    BadLogFormat(String),
    #[error("[storage] {0}")]
    BadStorage(String),
    #[error("[producers] {0}")]
    BadProducers(String),
    #[error("[groups] {0}")]
    BadGroups(String),
    #[error("[admission] {0}")]
    BadAdmission(String),
    #[error(
        "listen and internal_listen are both {0}: the public and the internal port must differ"
    )]
    SamePort(SocketAddr),
    #[error(
        "no TLS configured: set [tls] cert, key and ca (RAFTQ_TLS__CERT, RAFTQ_TLS__KEY, \
         RAFTQ_TLS__CA, or --tls-cert, --tls-key, --tls-ca), or start with --insecure to \
         serve plaintext (never where others can reach the ports)"
    )]
    NoTls,
    #[error("[tls] {missing} is not set; cert, key and ca go together")]
    PartialTls { missing: &'static str },
    #[error("--insecure and [tls] are both set: choose one")]
    InsecureAndTls,
    #[error(
        "no admin token: with TLS on, clients authenticate; set [auth] admin_token_file \
         (RAFTQ_AUTH__ADMIN_TOKEN_FILE, --admin-token-file) or admin_token"
    )]
    NoAdminToken,
    #[error("[auth] {0}")]
    BadAdminToken(String),
}

impl ServeConfig {
    pub fn load(
        file: Option<&std::path::Path>,
        flags: FlagOverrides,
    ) -> Result<ServeConfig, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ServeConfig::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        let config: ServeConfig = figment
            .merge(
                Env::prefixed("RAFTQ_")
                    .filter(|key| {
                        let key = key.as_str().to_ascii_lowercase();
                        ENV_KEYS.contains(&key.as_str())
                            || key.starts_with("raft__")
                            || key.starts_with("storage__")
                            || key.starts_with("tls__")
                            || key.starts_with("auth__")
                            || key.starts_with("admission__")
                            || key.starts_with("producers__")
                            || key.starts_with("groups__")
                    })
                    .split("__"),
            )
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(Box::new)?;
        if config.node_id == 0 {
            return Err(ConfigError::ZeroNodeId);
        }
        if !matches!(config.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::BadLogFormat(config.log_format));
        }
        config.storage.check().map_err(ConfigError::BadStorage)?;
        config
            .admission
            .check()
            .map_err(ConfigError::BadAdmission)?;
        config
            .producers
            .check()
            .map_err(ConfigError::BadProducers)?;
        config.groups.check().map_err(ConfigError::BadGroups)?;
        config.peer_map()?;
        if config.listen == config.internal_listen && config.listen.port() != 0 {
            return Err(ConfigError::SamePort(config.listen));
        }
        if config.tls_files()?.is_some() {
            config.admin_token()?;
        }
        Ok(config)
    }

    /// Where other nodes (internal) and clients (public) reach this node.
    pub fn addresses(&self) -> raftq_cluster::Node {
        raftq_cluster::Node::new(
            self.internal_advertise
                .clone()
                .unwrap_or_else(|| self.internal_listen.to_string()),
            self.advertise
                .clone()
                .unwrap_or_else(|| self.listen.to_string()),
        )
    }

    /// The TLS files, or `None` with `--insecure`; refuses a configuration that is
    /// neither, or half of TLS.
    pub fn tls_files(&self) -> Result<Option<raftq_tls::TlsFiles>, ConfigError> {
        let tls = &self.tls;
        let any =
            tls.cert.is_some() || tls.key.is_some() || tls.ca.is_some() || tls.client_ca.is_some();
        match (self.insecure, any) {
            (true, true) => return Err(ConfigError::InsecureAndTls),
            (true, false) => return Ok(None),
            (false, false) => return Err(ConfigError::NoTls),
            (false, true) => {}
        }
        let required = |value: &Option<PathBuf>, missing| {
            value.clone().ok_or(ConfigError::PartialTls { missing })
        };
        Ok(Some(raftq_tls::TlsFiles {
            cert: required(&tls.cert, "cert")?,
            key: required(&tls.key, "key")?,
            ca: required(&tls.ca, "ca")?,
            client_ca: tls.client_ca.clone(),
        }))
    }

    /// The bootstrap admin token: required with TLS, and ignored without (`--insecure`
    /// turns authentication off along with TLS).
    pub fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        if self.insecure {
            return Ok(None);
        }
        let token = match (&self.auth.admin_token_file, &self.auth.admin_token) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::BadAdminToken(
                    "admin_token_file and admin_token are both set: choose one".into(),
                ));
            }
            (Some(path), None) => std::fs::read_to_string(path)
                .map_err(|error| {
                    ConfigError::BadAdminToken(format!(
                        "admin_token_file {}: {error}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
            (None, Some(token)) => token.trim().to_string(),
            (None, None) => return Err(ConfigError::NoAdminToken),
        };
        if token.len() < MIN_ADMIN_TOKEN || token.contains(char::is_whitespace) {
            return Err(ConfigError::BadAdminToken(format!(
                "the admin token must be at least {MIN_ADMIN_TOKEN} characters, without spaces"
            )));
        }
        Ok(Some(token))
    }

    pub fn peer_map(&self) -> Result<BTreeMap<u64, String>, ConfigError> {
        parse_peers(&self.peers)
    }
}

pub fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let mut peers = BTreeMap::new();
    for entry in text
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
    {
        let bad = || ConfigError::BadPeer {
            entry: entry.to_string(),
        };
        let (id, address) = entry.split_once('=').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        if id == 0 || !address.contains(':') {
            return Err(bad());
        }
        peers.insert(id, address.trim().to_string());
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags that serve plaintext: these tests are about other settings.
    fn insecure() -> FlagOverrides {
        FlagOverrides {
            insecure: Some(true),
            ..FlagOverrides::default()
        }
    }

    #[test]
    fn a_node_without_tls_must_say_insecure_and_tls_comes_whole() {
        let error = ServeConfig::load(None, FlagOverrides::default())
            .expect_err("plaintext without --insecure")
            .to_string();
        assert!(
            error.contains("--insecure") && error.contains("[tls]"),
            "{error}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(&file, "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n").unwrap();
        let error = ServeConfig::load(Some(&file), FlagOverrides::default())
            .expect_err("no CA")
            .to_string();
        assert!(error.contains("[tls] ca is not set"), "{error}");
        let error = ServeConfig::load(Some(&file), insecure())
            .expect_err("both")
            .to_string();
        assert!(error.contains("--insecure and [tls]"), "{error}");
        let flags = FlagOverrides {
            tls: TlsFlags {
                ca: Some(PathBuf::from("/ca.pem")),
                ..TlsFlags::default()
            },
            ..FlagOverrides::default()
        };
        let error = ServeConfig::load(Some(&file), flags)
            .expect_err("TLS without an admin token")
            .to_string();
        assert!(error.contains("no admin token"), "{error}");
        std::fs::write(
            &file,
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\nca = \"/ca.pem\"\n\
             [auth]\nadmin_token = \"0123456789abcdef\"\n",
        )
        .unwrap();
        let config = ServeConfig::load(Some(&file), FlagOverrides::default()).unwrap();
        assert_eq!(
            config.admin_token().unwrap().as_deref(),
            Some("0123456789abcdef")
        );
        let files = config.tls_files().unwrap().expect("TLS");
        assert_eq!(files.cert, PathBuf::from("/c.pem"));
        assert_eq!(files.ca, PathBuf::from("/ca.pem"));
        assert_eq!(files.client_ca, None);
    }

    #[test]
    fn flags_override_file_and_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(
            &file,
            "node_id = 2\ndata_dir = \"/from/file\"\n[raft]\nheartbeat_ms = 77\n",
        )
        .unwrap();
        let flags = FlagOverrides {
            data_dir: Some(PathBuf::from("/from/flag")),
            ..insecure()
        };
        let config = ServeConfig::load(Some(&file), flags).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.raft.heartbeat_ms, 77);
    }

    #[test]
    fn raftq_environment_variables_reach_nested_raft_storage_and_groups_settings() {
        // SAFETY: this is the only test that sets RAFTQ_ variables (of `raft`, of
        // `storage`'s write buffers and of `groups`; the other tests read none of them).
        unsafe { std::env::set_var("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES", "500") };
        unsafe { std::env::set_var("RAFTQ_STORAGE__WRITE_BUFFER_MIB", "64") };
        unsafe { std::env::set_var("RAFTQ_GROUPS__DATA_GROUPS", "16") };
        let config = ServeConfig::load(None, insecure()).unwrap();
        unsafe { std::env::remove_var("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES") };
        unsafe { std::env::remove_var("RAFTQ_STORAGE__WRITE_BUFFER_MIB") };
        unsafe { std::env::remove_var("RAFTQ_GROUPS__DATA_GROUPS") };
        assert_eq!(config.raft.snapshot_every_entries, 500);
        assert_eq!(config.storage.write_buffer_mib, 64);
        assert_eq!(config.groups.data_groups, 16);
    }

    #[test]
    fn a_replication_factor_outside_1_to_7_is_refused() {
        // (`data_groups` is left to the test of RAFTQ_ variables, which sets it.)
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        for bad in ["replication_factor = 0", "replication_factor = 8"] {
            std::fs::write(&file, format!("[groups]\n{bad}\n")).unwrap();
            let error = ServeConfig::load(Some(&file), insecure())
                .expect_err(bad)
                .to_string();
            assert!(
                error.contains("[groups] replication_factor must be in 1..=7"),
                "{error}"
            );
        }
        std::fs::write(&file, "[groups]\nreplication_factor = 5\n").unwrap();
        let config = ServeConfig::load(Some(&file), insecure()).unwrap();
        assert_eq!(config.groups.replication_factor, 5);
    }

    #[test]
    fn storage_memory_is_set_from_the_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(&file, "[storage]\nblock_cache_mib = 8\n").unwrap();
        let config = ServeConfig::load(Some(&file), insecure()).unwrap();
        assert_eq!(config.storage.block_cache_mib, 8);
        std::fs::write(&file, "[storage]\nblock_cache_mib = 0\n").unwrap();
        let error = ServeConfig::load(Some(&file), insecure())
            .expect_err("an empty block cache accepted")
            .to_string();
        assert!(error.contains("block_cache_mib must be in 1..="), "{error}");
    }

    #[test]
    fn a_misspelt_raft_setting_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(&file, "[raft]\nheartbeat = 77\n").unwrap();
        let error = ServeConfig::load(Some(&file), insecure())
            .expect_err("unknown key accepted")
            .to_string();
        assert!(error.contains("heartbeat"), "{error}");
    }

    #[test]
    fn peer_lists_parse_and_reject_garbage() {
        let peers = parse_peers("1=127.0.0.1:7401, 2=127.0.0.1:7402").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[&2], "127.0.0.1:7402");
        for bad in ["1", "x=127.0.0.1:1", "0=127.0.0.1:1", "3=nohost"] {
            assert!(parse_peers(bad).is_err(), "{bad}");
        }
    }
}
