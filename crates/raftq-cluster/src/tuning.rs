//! How a node is configured: Raft timing and log compaction, storage sizes, and the node's
//! identity and data directory.

use std::path::PathBuf;

use raftq_store::{Node, NodeId, OpenOptions};

/// Raft timing and log-compaction knobs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Take a snapshot once the entries appended since the last one hold this many bytes
    /// (0: by entries only).
    pub snapshot_every_bytes: u64,
    /// Entries kept in the log behind a snapshot (so slightly lagging followers need no snapshot).
    pub keep_entries_after_snapshot: u64,
    /// A write not committed within this time fails with UNAVAILABLE (outcome unknown).
    pub write_timeout_ms: u64,
    /// How far ahead of the log's time (plus the real time since) a leader may stamp
    /// commands: a leader whose clock runs ahead ends leases, delays, times to live and
    /// dedup windows at most this much early.
    pub max_clock_skew_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_every_entries: 20_000,
            snapshot_every_bytes: 256 * 1024 * 1024,
            keep_entries_after_snapshot: 1_000,
            write_timeout_ms: 5_000,
            max_clock_skew_ms: 1_000,
        }
    }
}

/// The memory RocksDB may use whatever the backlog: its write buffers and its block cache.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageTuning {
    /// Write buffers across all column families, MiB; flushed to table files when full.
    pub write_buffer_mib: u64,
    /// The block cache shared by every column family (index and filter blocks included), MiB.
    pub block_cache_mib: u64,
}

impl StorageTuning {
    /// Smallest write buffers: below this RocksDB flushes tiny table files all the time.
    pub const MIN_WRITE_BUFFER_MIB: u64 = 4;
    /// Largest value either setting takes (1 TiB).
    pub const MAX_MIB: u64 = 1 << 20;

    /// Why these settings cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        let range = |name: &str, value: u64, min: u64| {
            if (min..=Self::MAX_MIB).contains(&value) {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be in {min}..={}, not {value}",
                    Self::MAX_MIB
                ))
            }
        };
        range(
            "write_buffer_mib",
            self.write_buffer_mib,
            Self::MIN_WRITE_BUFFER_MIB,
        )?;
        range("block_cache_mib", self.block_cache_mib, 1)
    }

    pub(crate) fn open_options(&self) -> OpenOptions {
        let bytes = |mib: u64| usize::try_from(mib << 20).unwrap_or(usize::MAX);
        OpenOptions {
            write_buffer_bytes: bytes(self.write_buffer_mib),
            block_cache_bytes: bytes(self.block_cache_mib),
        }
    }
}

impl Default for StorageTuning {
    fn default() -> Self {
        let defaults = OpenOptions::default();
        StorageTuning {
            write_buffer_mib: (defaults.write_buffer_bytes >> 20) as u64,
            block_cache_mib: (defaults.block_cache_bytes >> 20) as u64,
        }
    }
}

/// `[groups]`: the data groups the cluster runs beside the metadata group (group 1). The
/// metadata group's leader places them once every node named in `peers` is a voter; give
/// every node the same settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    /// Data groups (0: none, and every queue lives in group 1).
    pub data_groups: u64,
    /// Replicas of each data group (every node, in a cluster of fewer nodes).
    pub replication_factor: u64,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            data_groups: 0,
            replication_factor: 3,
        }
    }
}

impl GroupsConfig {
    /// Why these settings cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        use raftq_core::placement::{MAX_GROUPS, MAX_REPLICAS};
        if self.data_groups > MAX_GROUPS as u64 {
            return Err(format!(
                "data_groups must be at most {MAX_GROUPS}, not {}",
                self.data_groups
            ));
        }
        if !(1..=MAX_REPLICAS as u64).contains(&self.replication_factor) {
            return Err(format!(
                "replication_factor must be in 1..={MAX_REPLICAS}, not {}",
                self.replication_factor
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub node_id: NodeId,
    /// Where other nodes (internal port) and clients (public port) reach this node.
    pub addresses: Node,
    /// How this node reaches its peers' internal ports.
    pub transport: raftq_tls::Transport,
    pub data_dir: PathBuf,
    /// The cluster this node's certificate names, if any: a cluster it forms takes that
    /// name as its id, and it refuses data and peers of any other.
    pub cluster_name: Option<String>,
    pub tuning: RaftTuning,
    pub storage: StorageTuning,
}

#[cfg(test)]
mod tests {
    use super::GroupsConfig;

    #[test]
    fn group_settings_are_checked_against_the_limits() {
        assert_eq!(GroupsConfig::default().check(), Ok(()));
        let groups = |data_groups, replication_factor| GroupsConfig {
            data_groups,
            replication_factor,
        };
        assert_eq!(groups(4_096, 7).check(), Ok(()));
        assert!(
            groups(4_097, 3)
                .check()
                .unwrap_err()
                .contains("at most 4096")
        );
        assert!(groups(16, 0).check().unwrap_err().contains("in 1..=7"));
        assert!(groups(16, 8).check().unwrap_err().contains("in 1..=7"));
    }
}
