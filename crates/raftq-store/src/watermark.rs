//! The highest log index this node has synced, kept outside the write-ahead log.
//!
//! RocksDB recovers a write-ahead log whose tail does not read back (a record cut short or
//! failing its checksum) by dropping that tail: after a power loss the tail is a write that
//! was never synced, and dropping it is right. But a damaged disk can cut or garble records
//! that were synced, and those entries were acknowledged to a leader: a node that quietly
//! lost them must not vote as if it held them. RocksDB cannot tell the two apart, so the
//! log store keeps its own account: after every sync of the write-ahead log it writes the
//! last index that sync covered to a small file of its own, just after answering the
//! appends (off the path of every acknowledgement; not synced each time, so no second
//! fsync per write; synced at most a second later). At start, a log that ends below
//! the index the file records has lost synced entries (see `LogStore::lost_synced_entries`).
//!
//! The account is a lower bound of what was synced: a power loss takes back only the file's
//! unsynced writes, which were never ahead of the log. It misses damage to entries synced in
//! the last moment before the file was written or synced, which nothing short of a second
//! fsync per write would catch.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::db::sync_directory;

/// How long an advanced watermark may stay unsynced.
pub(crate) const SYNC_EVERY: Duration = Duration::from_secs(1);

/// Bytes of the record: the index, then its complement (a torn or damaged record does not
/// read back as a valid one).
const RECORD_BYTES: usize = 16;

#[derive(Debug)]
pub(crate) struct Watermark {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    /// The index last written to the file.
    written: u64,
    /// Whether `written` is not yet synced.
    dirty: bool,
    synced_at: Instant,
    /// Raised by every truncation of the log: syncs of appends made before it do not
    /// advance the watermark (their entries may be gone).
    epoch: u64,
}

fn encode(index: u64) -> [u8; RECORD_BYTES] {
    let mut record = [0u8; RECORD_BYTES];
    record[..8].copy_from_slice(&index.to_le_bytes());
    record[8..].copy_from_slice(&(!index).to_le_bytes());
    record
}

fn decode(record: &[u8]) -> Option<u64> {
    let index = u64::from_le_bytes(record.get(..8)?.try_into().ok()?);
    let check = u64::from_le_bytes(record.get(8..RECORD_BYTES)?.try_into().ok()?);
    (check == !index).then_some(index)
}

impl Watermark {
    /// Opens (or creates) the watermark file at `path`, and returns it with the index it
    /// recorded: `None` for a new file, or one that does not read back (then nothing is
    /// known, which is safe).
    pub(crate) fn open(path: &Path) -> io::Result<(Watermark, Option<u64>)> {
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if !existed {
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                sync_directory(dir).map_err(io::Error::other)?;
            }
        }
        let mut record = [0u8; RECORD_BYTES];
        let recorded = match file.read_exact_at(&mut record, 0) {
            Ok(()) => decode(&record),
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(error) => return Err(error),
        };
        let state = State {
            file,
            written: recorded.unwrap_or(0),
            dirty: false,
            synced_at: Instant::now(),
            epoch: 0,
        };
        Ok((
            Watermark {
                state: Mutex::new(state),
            },
            recorded,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current epoch, to be handed with an append to the sync that covers it.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// After a sync of the write-ahead log that covered entries up to `index`, appended in
    /// `epoch`: records `index` (unsynced; `sync_if_due` syncs it).
    pub(crate) fn advance(&self, index: u64, epoch: u64) -> io::Result<()> {
        let mut state = self.lock();
        if epoch != state.epoch || index <= state.written {
            return Ok(());
        }
        state.file.write_all_at(&encode(index), 0)?;
        state.written = index;
        state.dirty = true;
        Ok(())
    }

    /// Syncs the file when it holds an index written more than `SYNC_EVERY` ago.
    pub(crate) fn sync_if_due(&self) -> io::Result<()> {
        let mut state = self.lock();
        if state.dirty && state.synced_at.elapsed() >= SYNC_EVERY {
            state.file.sync_data()?;
            state.dirty = false;
            state.synced_at = Instant::now();
        }
        Ok(())
    }

    /// Before the log drops its entries after `index` (Raft truncating a conflicting
    /// suffix): lowers the watermark, synced, so that a log ending there is not taken for
    /// damaged. Syncs of earlier appends no longer advance it.
    pub(crate) fn lower(&self, index: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.epoch += 1;
        if index < state.written {
            state.file.write_all_at(&encode(index), 0)?;
            state.file.sync_data()?;
            state.written = index;
            state.dirty = false;
            state.synced_at = Instant::now();
        }
        Ok(())
    }
}

/// Forgets what the watermark file at `path` records (a data directory copied from a
/// running node may hold a watermark ahead of the copied log).
pub fn forget(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::{Watermark, decode, encode};

    #[test]
    fn the_watermark_reads_back_what_was_written_and_ignores_a_damaged_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log-synced-1");
        let (watermark, recorded) = Watermark::open(&path).unwrap();
        assert_eq!(recorded, None);
        watermark.advance(10, 0).unwrap();
        watermark.advance(7, 0).unwrap();
        drop(watermark);
        let (watermark, recorded) = Watermark::open(&path).unwrap();
        assert_eq!(recorded, Some(10));

        // A truncation lowers it; a sync of an append made before the truncation does not
        // raise it again.
        let stale = watermark.epoch();
        watermark.lower(4).unwrap();
        watermark.advance(10, stale).unwrap();
        watermark.advance(5, watermark.epoch()).unwrap();
        drop(watermark);
        assert_eq!(Watermark::open(&path).unwrap().1, Some(5));

        let mut record = encode(5);
        record[3] ^= 0x10;
        assert_eq!(decode(&record), None);
        std::fs::write(&path, record).unwrap();
        assert_eq!(Watermark::open(&path).unwrap().1, None);
    }
}
