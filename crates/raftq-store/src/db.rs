//! The node's RocksDB: opening it with its column families and options, the key layout
//! (group id first), `StoreError`, and memory figures for the metrics.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, Options};

use raftq_core::GroupId;

pub(crate) const CF_LOG: &str = "raft_log";
pub(crate) const CF_META: &str = "raft_meta";
pub(crate) const CF_STATE: &str = "state_machine";
/// Message bodies, keyed by group and body key (see `raftq_core::body`).
pub(crate) const CF_BODIES: &str = "bodies";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb at {path}: {source}")]
    Open {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("the database is closed")]
    Closed,
    #[error("snapshot file: {0}")]
    Io(#[from] std::io::Error),
    #[error("message body {key} is missing from the store")]
    MissingBody { key: u64 },
    #[error(
        "{path} was written by an earlier raftq whose snapshots held message bodies in \
         memory; this version cannot read it: start the node with an empty data directory \
         and let it catch up from the cluster"
    )]
    OldLayout { path: PathBuf },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("stored {what} cannot be decoded: {source}")]
    Decode {
        what: &'static str,
        source: bincode::Error,
    },
    #[error("stored {what} is corrupt: {reason}")]
    Corrupt { what: &'static str, reason: String },
    /// A request the store refuses (e.g. dropping group 0).
    #[error("{0}")]
    Refused(String),
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        source: bincode::Error,
    },
}

impl StoreError {
    /// Whether the disk returned damaged data: a checksum that does not match, or stored
    /// bytes that do not decode.
    pub fn is_corruption(&self) -> bool {
        match self {
            StoreError::Rocks(error) | StoreError::Open { source: error, .. } => {
                error.kind() == rocksdb::ErrorKind::Corruption
            }
            StoreError::Decode { .. } | StoreError::Corrupt { .. } => true,
            StoreError::Closed
            | StoreError::Io(_)
            | StoreError::MissingBody { .. }
            | StoreError::OldLayout { .. }
            | StoreError::Encode { .. }
            | StoreError::Refused(_) => false,
        }
    }
}

/// How storage errors reach Raft, which stops on them. Damaged data is counted in
/// `raftq_storage_corruption_total`.
impl From<StoreError> for std::io::Error {
    fn from(error: StoreError) -> Self {
        if error.is_corruption() {
            metrics::counter!("raftq_storage_corruption_total").increment(1);
        }
        std::io::Error::other(error)
    }
}

#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Memory for RocksDB's write buffers across column families.
    pub write_buffer_bytes: usize,
    /// One block cache shared by every column family (without it, each family would get a
    /// cache of its own).
    pub block_cache_bytes: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            write_buffer_bytes: 32 * 1024 * 1024,
            block_cache_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Table block size of the families that hold message bodies (the log and the bodies).
const LARGE_BLOCK_BYTES: usize = 64 * 1024;
/// Table block size of the other families (RocksDB's default).
const SMALL_BLOCK_BYTES: usize = 4 * 1024;
/// Alignment and size of the block written to find out whether O_DIRECT works.
const DIRECT_IO_ALIGN: usize = 4096;

/// Whether files in `dir` can be written with O_DIRECT: some file systems (older tmpfs,
/// some FUSE file systems) refuse it at open or at the first write, and RocksDB would
/// then fail its first flush instead of its open. Writes one aligned block to a probe
/// file, then removes it.
fn writes_around_page_cache(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let probe = dir.join(".direct-io-probe");
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)?;
        let buffer = vec![0u8; 2 * DIRECT_IO_ALIGN];
        let start = buffer.as_ptr().align_offset(DIRECT_IO_ALIGN);
        let block = buffer
            .get(start..start.saturating_add(DIRECT_IO_ALIGN))
            .ok_or_else(|| std::io::Error::other("no aligned block in the buffer"))?;
        file.write_all(block)
    })();
    let _ = std::fs::remove_file(&probe);
    written.is_ok()
}

/// Memory RocksDB holds, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageMemory {
    /// Write buffers (memtables), active and being flushed, of every column family.
    pub memtables: u64,
    /// Blocks in the shared block cache.
    pub block_cache: u64,
    /// The most the block cache holds (`OpenOptions::block_cache_bytes`).
    pub block_cache_capacity: u64,
    /// What open table files hold outside the cache (their index and filter blocks are
    /// kept in the cache).
    pub table_readers: u64,
}

/// One RocksDB instance per node, shared by the log store and the state machine, and the
/// directory of its snapshot files.
#[derive(Clone)]
pub struct Db {
    pub(crate) inner: Arc<DB>,
    dir: PathBuf,
    snapshot_dir: PathBuf,
    /// The one syncer of every group's log, started with the first log opened.
    wal: Arc<std::sync::Mutex<Option<crate::wal_sync::WalSyncer>>>,
}

impl Db {
    /// Opens (or creates) a node's storage in its data directory `dir`: RocksDB in
    /// `dir/rocksdb`, snapshot files in `dir/snapshots`.
    pub fn open(dir: &Path, options: &OpenOptions) -> Result<Db, StoreError> {
        let snapshot_dir = dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        let path = dir.join("rocksdb");
        let path = path.as_path();
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_db_write_buffer_size(options.write_buffer_bytes);
        db_options.set_max_background_jobs(2);
        // Table files are written around the page cache where the file system allows it.
        // Through it, the kernel's copy of every flushed byte into freshly allocated
        // cache pages took about 30 % of the machine under batched sends, more than the
        // rest of the flush; the bytes are read back rarely (a drain, a lagging follower).
        // The write-ahead log still goes through the cache and is synced as before.
        let direct_writes = writes_around_page_cache(dir);
        db_options.set_use_direct_io_for_flush_and_compaction(direct_writes);
        if !direct_writes {
            tracing::warn!(
                dir = %dir.display(),
                "the file system refuses O_DIRECT: table files are written through the page cache"
            );
        }
        // Bodies and log entries are read back in key order (a drain, a follower catching
        // up): the kernel's read-ahead, which RocksDB turns off by default, serves those
        // reads in large pieces now that the flushed bytes are not in the page cache.
        db_options.set_advise_random_on_open(false);
        // A write-ahead-log record damaged in the middle of the log is an error, never a
        // shorter log: the default (point-in-time recovery) would stop replaying there and
        // open without the entries after it, which this node may have acknowledged to a
        // leader. Only a torn last record (a write the power took before it was synced,
        // never acknowledged) is dropped.
        db_options.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        db_options.set_paranoid_checks(true);
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let family = |compressed: bool, block_bytes: usize| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            // Index and filter blocks live in the cache too, so what RocksDB holds for
            // reading stays within the cache's size however much data there is (outside
            // it they grow with every table file). Level 0's stay pinned: they are read
            // on every lookup.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            table.set_block_size(block_bytes);
            let mut family = Options::default();
            family.set_block_based_table_factory(&table);
            if compressed {
                family.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            family
        };
        // Message bodies, in the log and in their own family, are stored as sent, as
        // brokers do: what compresses well is better compressed once by its sender, and
        // LZ4 run over random or already compressed bodies at every flush cost 5-6 % of
        // the machine under batched sends and saved nothing (see "Bodies that do not
        // compress" in docs/performance-log.md).
        // They are read many at a time in key order, so their blocks are large: a
        // hundred 1 KiB bodies take two reads, not twenty-five.
        let families = vec![
            ColumnFamilyDescriptor::new(CF_LOG, family(false, LARGE_BLOCK_BYTES)),
            ColumnFamilyDescriptor::new(CF_META, family(false, SMALL_BLOCK_BYTES)),
            ColumnFamilyDescriptor::new(CF_STATE, family(true, SMALL_BLOCK_BYTES)),
            ColumnFamilyDescriptor::new(CF_BODIES, family(false, LARGE_BLOCK_BYTES)),
        ];
        let inner = DB::open_cf_descriptors(&db_options, path, families).map_err(|source| {
            StoreError::Open {
                path: path.to_path_buf(),
                source,
            }
        })?;
        // RocksDB syncs the names of its files in `rocksdb/`, but not the name `rocksdb`
        // itself (nor `snapshots`): until `dir` is synced, a power loss can take either away
        // with everything in it, acknowledged writes included.
        sync_directory(dir)?;
        // And the data directory's own name, which `open` may just have created. Its parent
        // is the operator's (a volume's root, say) and may not be readable: then only warn.
        if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty())
            && let Err(error) = sync_directory(parent)
        {
            tracing::warn!(dir = %parent.display(), %error, "cannot sync the directory holding the data directory");
        }
        Ok(Db {
            inner: Arc::new(inner),
            dir: dir.to_path_buf(),
            snapshot_dir,
            wal: Arc::default(),
        })
    }

    /// The store's write-ahead-log syncer, shared by the logs of every group.
    pub(crate) fn wal_syncer(&self) -> std::io::Result<crate::wal_sync::WalSyncer> {
        let mut wal = self
            .wal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(syncer) = wal.as_ref() {
            return Ok(syncer.clone());
        }
        let syncer = crate::wal_sync::WalSyncer::start(Arc::downgrade(&self.inner))?;
        *wal = Some(syncer.clone());
        Ok(syncer)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where snapshot files are kept.
    pub fn snapshot_dir(&self) -> &Path {
        &self.snapshot_dir
    }

    /// What RocksDB holds in memory now (for the node's metrics).
    pub fn memory(&self) -> StorageMemory {
        let mut memory = StorageMemory::default();
        for name in [CF_LOG, CF_META, CF_STATE, CF_BODIES] {
            let cf = self.cf(name);
            let property = |key: &str| {
                self.inner
                    .property_int_value_cf(cf, key)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            memory.memtables += property("rocksdb.cur-size-all-mem-tables");
            memory.table_readers += property("rocksdb.estimate-table-readers-mem");
            // The cache is shared: every family reports the same figure.
            memory.block_cache = property("rocksdb.block-cache-usage");
            memory.block_cache_capacity = property("rocksdb.block-cache-capacity");
        }
        memory
    }

    pub(crate) fn cf(&self, name: &'static str) -> &rocksdb::ColumnFamily {
        // The families are created by `open`, so a missing one is a programming error.
        self.inner
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} was opened"))
    }

    /// Makes every write so far durable: one fsync of the write-ahead log covers them all.
    pub(crate) fn sync_wal(&self) -> Result<(), StoreError> {
        self.inner.flush_wal(true)?;
        Ok(())
    }
}

/// Makes the names in `dir` durable (new files and directories, renames, removals).
pub(crate) fn sync_directory(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Keys carry the group id first, so one RocksDB can hold many Raft groups.
pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Bodies are keyed like log entries: group, then the body's key.
pub(crate) fn body_key(group: GroupId, key: u64) -> [u8; 16] {
    log_key(group, key)
}

/// The group a log key (or any key starting with a group) belongs to; `None` for a key too
/// short to hold one (damaged data).
pub(crate) fn group_of_key(key: &[u8]) -> Option<GroupId> {
    key.get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(GroupId::from_be_bytes)
}

pub(crate) fn index_of_log_key(key: &[u8]) -> Option<u64> {
    key.get(8..16)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
}

pub(crate) fn meta_key(group: GroupId, name: &str) -> Vec<u8> {
    let mut key = group.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

pub(crate) fn encode<T: serde::Serialize>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    crate::codec::decode_within(bytes).map_err(|source| StoreError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    use raftq_core::{Command, NewMessage, Request};

    use super::{Db, OpenOptions};

    #[test]
    fn the_block_cache_has_the_capacity_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let options = OpenOptions {
            block_cache_bytes: 8 << 20,
            ..OpenOptions::default()
        };
        let db = Db::open(dir.path(), &options).unwrap();
        assert_eq!(db.memory().block_cache_capacity, 8 << 20);
    }

    #[test]
    fn flushed_tables_read_back_and_the_direct_write_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let cf = db.cf(super::CF_BODIES);
        for key in 0..2_000u64 {
            let body = vec![(key % 251) as u8; 1024 + key as usize % 7];
            db.inner.put_cf(cf, super::body_key(1, key), &body).unwrap();
        }
        // The flush writes table files (with O_DIRECT where the file system allows it);
        // reads then come from those files, not from the memtable.
        db.inner.flush_cf(cf).unwrap();
        assert!(db.memory().memtables < 1 << 20, "{:?}", db.memory());
        for key in (0..2_000u64).step_by(97) {
            let body = db.inner.get_cf(cf, super::body_key(1, key)).unwrap();
            assert_eq!(body, Some(vec![(key % 251) as u8; 1024 + key as usize % 7]));
        }
        assert!(!dir.path().join(".direct-io-probe").exists());
    }

    #[test]
    fn a_body_is_stored_as_its_length_then_its_bytes_as_before() {
        // Bodies are (de)serialized as byte runs; bincode lays them out exactly as the
        // earlier per-byte encoding did (u64 length, then the bytes), so logs and
        // snapshots written before still read back.
        let request = Request {
            now_ms: 7,
            command: Command::Send {
                queue: "q".into(),
                messages: vec![NewMessage {
                    body: vec![0xAB, 0xCD, 0xEF],
                    ..NewMessage::default()
                }],
            },
        };
        let bytes = super::encode("request", &request).expect("encode");
        let run = [3, 0, 0, 0, 0, 0, 0, 0, 0xAB, 0xCD, 0xEF];
        assert!(
            bytes.windows(run.len()).any(|window| window == run),
            "{bytes:?}"
        );
        let decoded: Request = super::decode("request", &bytes).expect("decode");
        assert_eq!(decoded, request);
    }
}
