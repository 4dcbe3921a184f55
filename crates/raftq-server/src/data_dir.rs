//! Operator commands on a stopped node's data directory: adopting a restored copy, and
//! emptying a damaged one so the node rebuilds from its peers.

use std::path::Path;

use anyhow::Context as _;

/// Records in a restored copy of a data directory that it belongs to `node_id` and may vote.
/// It stays in the cluster it was copied from: every node of a restored cluster is given a
/// copy of the same cluster.
pub(crate) fn adopt(data_dir: &Path, node_id: u64) -> anyhow::Result<()> {
    anyhow::ensure!(node_id >= 1, "node ids start at 1");
    ensure_raftq_data(data_dir)?;
    // A copy taken from a running node may end below what that node had synced.
    raftq_store::forget_synced_watermarks(data_dir)?;
    let db = raftq_store::Db::open(data_dir, &raftq_store::OpenOptions::default())?;
    let cluster_id = db.identity()?.and_then(|identity| identity.cluster_id);
    let mut identity = raftq_store::NodeIdentity {
        cluster_id,
        node_id,
        voting: true,
        voting_groups: Default::default(),
    };
    // Every data group the copy took part in votes again too, as group 1 does.
    for group in db.groups_with_votes()? {
        identity.set_voting(group, true);
    }
    db.record_identity(&identity)?;
    Ok(())
}

/// Empties a stopped node's data directory (the directory itself stays: it may be a
/// volume's mount point). The node, started again on it, is a node that lost its data.
pub(crate) fn reset(data_dir: &Path) -> anyhow::Result<()> {
    ensure_raftq_data(data_dir)?;
    if let Some(pid) = rocksdb_lock_holder(&data_dir.join("rocksdb").join("LOCK"))? {
        anyhow::bail!(
            "a node (process {pid}) is running on {}: stop it first",
            data_dir.display()
        );
    }
    for entry in std::fs::read_dir(data_dir)? {
        let path = entry?.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.with_context(|| format!("removing {}", path.display()))?;
    }
    std::fs::File::open(data_dir)?.sync_all()?;
    Ok(())
}

/// Refuses a directory that holds no raftq data: these commands must never touch another
/// directory by mistake.
fn ensure_raftq_data(data_dir: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        data_dir.join("rocksdb").is_dir(),
        "{} holds no raftq data (no rocksdb directory)",
        data_dir.display()
    );
    Ok(())
}

/// The process holding RocksDB's lock on `lock` (a node running on the directory), if any.
fn rocksdb_lock_holder(lock: &Path) -> anyhow::Result<Option<i32>> {
    use std::os::fd::AsRawFd as _;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("opening {}", lock.display())),
    };
    // RocksDB locks the file with a POSIX record lock; F_GETLK reports who holds it.
    // SAFETY: `flock` is a plain C struct, zeroed then filled; the descriptor is open.
    let mut query: libc::flock = unsafe { std::mem::zeroed() };
    query.l_type = libc::F_WRLCK as libc::c_short;
    query.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: as above; fcntl writes only into `query`.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut query) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("checking the lock on {}", lock.display()));
    }
    Ok((query.l_type != libc::F_UNLCK as libc::c_short).then_some(query.l_pid))
}
