//! `raftq serve` configuration: defaults, then a TOML file, then `RAFTQ_*` environment
//! variables, then command-line flags (each later source wins).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use raftq_cluster::{RaftTuning, StorageTuning};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// This node's id, unique in the cluster and never reused with an empty data dir.
    pub node_id: u64,
    /// Where the gRPC API (public and Raft) listens.
    pub listen: SocketAddr,
    /// The address other nodes and clients use to reach `listen`; defaults to `listen`.
    pub advertise: Option<String>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Initial voters as `ID=HOST:PORT,...`. The lowest id forms the cluster on first start.
    pub peers: String,
    /// Address of a running member to join through (as learner, then voter).
    pub join: Option<String>,
    /// `text` or `json`.
    pub log_format: String,
    pub raft: RaftTuning,
    pub storage: StorageTuning,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            node_id: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 7401)),
            advertise: None,
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9401)),
            data_dir: PathBuf::from("raftq-data"),
            peers: String::new(),
            join: None,
            log_format: "text".to_string(),
            raft: RaftTuning::default(),
            storage: StorageTuning::default(),
        }
    }
}

/// `RAFTQ_*` variables read by `serve`; others (such as the client's `RAFTQ_ADDR`) are
/// left alone.
const ENV_KEYS: [&str; 10] = [
    "node_id",
    "listen",
    "advertise",
    "http_listen",
    "data_dir",
    "peers",
    "join",
    "log_format",
    "raft",
    "storage",
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
    pub http_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
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
        config.peer_map()?;
        Ok(config)
    }

    pub fn advertise_address(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
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
            ..FlagOverrides::default()
        };
        let config = ServeConfig::load(Some(&file), flags).unwrap();
        assert_eq!(config.node_id, 2);
        assert_eq!(config.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(config.raft.heartbeat_ms, 77);
    }

    #[test]
    fn raftq_environment_variables_reach_nested_raft_and_storage_settings() {
        // SAFETY: this is the only test that sets RAFTQ_ variables (of `raft` and of
        // `storage`'s write buffers; the other tests read neither).
        unsafe { std::env::set_var("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES", "500") };
        unsafe { std::env::set_var("RAFTQ_STORAGE__WRITE_BUFFER_MIB", "64") };
        let config = ServeConfig::load(None, FlagOverrides::default()).unwrap();
        unsafe { std::env::remove_var("RAFTQ_RAFT__SNAPSHOT_EVERY_ENTRIES") };
        unsafe { std::env::remove_var("RAFTQ_STORAGE__WRITE_BUFFER_MIB") };
        assert_eq!(config.raft.snapshot_every_entries, 500);
        assert_eq!(config.storage.write_buffer_mib, 64);
    }

    #[test]
    fn storage_memory_is_set_from_the_file_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(&file, "[storage]\nblock_cache_mib = 8\n").unwrap();
        let config = ServeConfig::load(Some(&file), FlagOverrides::default()).unwrap();
        assert_eq!(config.storage.block_cache_mib, 8);
        std::fs::write(&file, "[storage]\nblock_cache_mib = 0\n").unwrap();
        let error = ServeConfig::load(Some(&file), FlagOverrides::default())
            .expect_err("an empty block cache accepted")
            .to_string();
        assert!(error.contains("block_cache_mib must be in 1..="), "{error}");
    }

    #[test]
    fn a_misspelt_raft_setting_is_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("raftq.toml");
        std::fs::write(&file, "[raft]\nheartbeat = 77\n").unwrap();
        let error = ServeConfig::load(Some(&file), FlagOverrides::default())
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
