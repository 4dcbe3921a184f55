//! Snapshot files: the queue state without its bodies, then every body it refers to.
//!
//! A snapshot can be far larger than memory (a backlog of a million messages), so it is
//! never held as one buffer: it is written to a file while reading the bodies from
//! RocksDB, streamed from that file to a follower, received into a file there, and loaded
//! from it.
//!
//! Layout, integers little-endian:
//!
//! ```text
//! magic "RAFTQSN1" | state length: u64 | state (bincode)
//! bodies, by key:  key: u64 | length: u64 | bytes        (key < u64::MAX)
//! end:             u64::MAX | number of bodies: u64
//! ```

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use raftq_core::StateMachine;

use crate::db::StoreError;

const MAGIC: &[u8; 8] = b"RAFTQSN1";
const END: u64 = u64::MAX;
/// Largest body a snapshot may hold; anything larger means the file is damaged.
const MAX_BODY_BYTES: u64 = 256 * 1024 * 1024;
const BUFFER_BYTES: usize = 1024 * 1024;
/// Bytes a snapshot being written may hold in the page cache before they are made
/// durable. The snapshot of a backlog is gigabytes: left to the final fsync, it would go
/// to the disk all at once and hold up every other fsync there (the Raft log's among
/// them) for seconds; written out as it goes, it delays them by about one slice. The
/// state at the file's start (about 100 MiB for a million messages) is written while
/// applying waits, so it is synced with the first body's slice, after applying resumes.
const SYNC_EVERY_BYTES: u64 = 8 * 1024 * 1024;

/// A finished snapshot file, open for reading. openraft hands it around as the snapshot's
/// data; the file stays readable even after a newer snapshot replaces it on disk.
#[derive(Debug)]
pub struct SnapshotData {
    path: PathBuf,
    file: File,
}

impl SnapshotData {
    pub(crate) fn open(path: PathBuf) -> io::Result<SnapshotData> {
        let file = File::open(&path)?;
        Ok(SnapshotData { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the file in bytes.
    pub fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The file, positioned at its start, for streaming it elsewhere.
    pub fn into_file(mut self) -> io::Result<File> {
        self.file.seek(SeekFrom::Start(0))?;
        Ok(self.file)
    }
}

/// Counts `added` bytes written to `file`; once `unsynced` reaches a slice, makes them
/// durable.
fn sync_slice(file: &mut BufWriter<File>, unsynced: &mut u64, added: u64) -> io::Result<()> {
    *unsynced += added;
    if *unsynced >= SYNC_EVERY_BYTES {
        file.flush()?;
        file.get_ref().sync_data()?;
        *unsynced = 0;
    }
    Ok(())
}

/// Gives every snapshot file written by this process its own name.
static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

pub(crate) fn unique_name(prefix: &str, group: u64, index: u64, extension: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}g{group}-i{index}-{nanos}-{n}.{extension}")
}

/// A snapshot being received from the leader, written to a file in this node's snapshot
/// directory as its chunks arrive.
pub struct IncomingSnapshot {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
    /// Bytes written since the file was last synced.
    unsynced: u64,
}

impl IncomingSnapshot {
    pub fn create(dir: &Path, group: u64) -> io::Result<IncomingSnapshot> {
        let path = dir.join(unique_name("incoming-", group, 0, "part"));
        let file = File::create(&path)?;
        Ok(IncomingSnapshot {
            path,
            file: BufWriter::with_capacity(BUFFER_BYTES, file),
            written: 0,
            unsynced: 0,
        })
    }

    /// Appends `bytes`, syncing the file every `SYNC_EVERY_BYTES` (so this blocks: call it
    /// off the async workers).
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        sync_slice(&mut self.file, &mut self.unsynced, bytes.len() as u64)
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    /// Makes the file durable and hands it over for installing.
    pub fn finish(self) -> io::Result<SnapshotData> {
        let file = self.file.into_inner().map_err(|error| error.into_error())?;
        file.sync_all()?;
        drop(file);
        SnapshotData::open(self.path)
    }

    /// Removes a snapshot that will not be installed.
    pub fn discard(self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Writes a snapshot file: the state, then the bodies `bodies` yields in key order.
pub(crate) struct SnapshotWriter {
    dir: PathBuf,
    part: PathBuf,
    name: String,
    file: BufWriter<File>,
    bodies: u64,
    /// Bytes written since the file was last synced.
    unsynced: u64,
}

impl SnapshotWriter {
    /// Starts the file with `state`, encoded straight into it: a state of a million
    /// messages encodes to a few hundred MiB, which must not be held in memory as well.
    pub(crate) fn create(
        dir: &Path,
        group: u64,
        index: u64,
        state: &StateMachine,
    ) -> Result<SnapshotWriter, StoreError> {
        let name = unique_name("", group, index, "snap");
        let part = dir.join(format!("{name}.part"));
        let mut file = BufWriter::with_capacity(BUFFER_BYTES, File::create(&part)?);
        let mut writer = || -> Result<u64, StoreError> {
            file.write_all(MAGIC)?;
            // The length is known once the state is written: a placeholder, then the length.
            let length_at = MAGIC.len() as u64;
            file.write_all(&0u64.to_le_bytes())?;
            bincode::serialize_into(&mut file, state).map_err(|source| StoreError::Encode {
                what: "snapshot state",
                source,
            })?;
            let end = file.stream_position()?;
            file.seek(SeekFrom::Start(length_at))?;
            file.write_all(&(end - length_at - 8).to_le_bytes())?;
            file.seek(SeekFrom::Start(end))?;
            Ok(end)
        };
        let unsynced = match writer() {
            Ok(written) => written,
            Err(error) => {
                let _ = fs::remove_file(&part);
                return Err(error);
            }
        };
        Ok(SnapshotWriter {
            dir: dir.to_path_buf(),
            part,
            name,
            file,
            bodies: 0,
            unsynced,
        })
    }

    /// Removes a file that will not be finished.
    pub(crate) fn discard(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.part);
    }

    pub(crate) fn body(&mut self, key: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(&key.to_le_bytes())?;
        self.file.write_all(&(bytes.len() as u64).to_le_bytes())?;
        self.file.write_all(bytes)?;
        self.bodies += 1;
        sync_slice(&mut self.file, &mut self.unsynced, 16 + bytes.len() as u64)
    }

    /// Ends the file, makes it durable under its final name and returns that name; a file
    /// that cannot be finished is removed.
    pub(crate) fn finish(self) -> io::Result<String> {
        let SnapshotWriter {
            dir,
            part,
            name,
            mut file,
            bodies,
            unsynced: _,
        } = self;
        let finished = (|| {
            file.write_all(&END.to_le_bytes())?;
            file.write_all(&bodies.to_le_bytes())?;
            let file = file.into_inner().map_err(|error| error.into_error())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&part, dir.join(&name))
        })();
        if let Err(error) = finished {
            let _ = fs::remove_file(&part);
            return Err(error);
        }
        File::open(&dir)?.sync_all()?;
        Ok(name)
    }
}

/// Reads a snapshot file: first the state, then the bodies one by one.
pub(crate) struct SnapshotReader {
    file: BufReader<File>,
    bodies: u64,
    ended: bool,
}

fn damaged(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn read_u64(file: &mut impl Read) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    file.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

impl SnapshotReader {
    /// Opens the file and checks that it is complete (its end record is in place).
    pub(crate) fn open(path: &Path) -> io::Result<SnapshotReader> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        if size < (MAGIC.len() + 8 + 16) as u64 {
            return Err(damaged(format!("snapshot {} is too short", path.display())));
        }
        file.seek(SeekFrom::End(-16))?;
        if read_u64(&mut file)? != END {
            return Err(damaged(format!(
                "snapshot {} has no end record: it is incomplete",
                path.display()
            )));
        }
        file.seek(SeekFrom::Start(0))?;
        let mut magic = [0u8; 8];
        file.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(damaged(format!(
                "{} is not a raftq snapshot of this format",
                path.display()
            )));
        }
        Ok(SnapshotReader {
            file: BufReader::with_capacity(BUFFER_BYTES, file),
            bodies: 0,
            ended: false,
        })
    }

    pub(crate) fn state(&mut self) -> Result<StateMachine, StoreError> {
        let length = read_u64(&mut self.file)?;
        let mut limited = (&mut self.file).take(length);
        let state =
            bincode::deserialize_from(&mut limited).map_err(|source| StoreError::Decode {
                what: "snapshot state",
                source,
            })?;
        if limited.limit() != 0 {
            return Err(damaged("the snapshot state is shorter than its length says").into());
        }
        Ok(state)
    }

    /// The next body, or `None` after the last (once the count in the end record matches).
    pub(crate) fn next_body(&mut self) -> io::Result<Option<(u64, Vec<u8>)>> {
        if self.ended {
            return Ok(None);
        }
        let key = read_u64(&mut self.file)?;
        let length = read_u64(&mut self.file)?;
        if key == END {
            self.ended = true;
            if length != self.bodies {
                return Err(damaged(format!(
                    "the snapshot says {length} bodies, it holds {}",
                    self.bodies
                )));
            }
            return Ok(None);
        }
        if length > MAX_BODY_BYTES {
            return Err(damaged(format!("body {key} claims {length} bytes")));
        }
        let mut bytes = vec![0u8; length as usize];
        self.file.read_exact(&mut bytes)?;
        self.bodies += 1;
        Ok(Some((key, bytes)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_written_out_in_slices_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateMachine::default();
        let mut writer = SnapshotWriter::create(dir.path(), 1, 7, &state).unwrap();
        // Three times the slice: the file is synced twice on the way and once at the end.
        let body = |key: u64| vec![key as u8; 1024 * 1024];
        let count = 3 * SYNC_EVERY_BYTES / (1024 * 1024);
        for key in 0..count {
            writer.body(key, &body(key)).unwrap();
            assert!(writer.unsynced < SYNC_EVERY_BYTES);
        }
        let name = writer.finish().unwrap();
        let mut reader = SnapshotReader::open(&dir.path().join(name)).unwrap();
        assert_eq!(reader.state().unwrap(), state);
        for key in 0..count {
            assert_eq!(reader.next_body().unwrap(), Some((key, body(key))));
        }
        assert_eq!(reader.next_body().unwrap(), None);
    }

    #[test]
    fn a_received_snapshot_is_synced_in_slices_and_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut incoming = IncomingSnapshot::create(dir.path(), 1).unwrap();
        let chunk = |n: u64| vec![n as u8; 1024 * 1024];
        let count = 3 * SYNC_EVERY_BYTES / (1024 * 1024);
        for n in 0..count {
            incoming.write(&chunk(n)).unwrap();
            assert!(incoming.unsynced < SYNC_EVERY_BYTES);
        }
        assert_eq!(incoming.written(), count * 1024 * 1024);
        let data = incoming.finish().unwrap();
        let bytes = fs::read(data.path()).unwrap();
        let expected: Vec<u8> = (0..count).flat_map(chunk).collect();
        assert!(bytes == expected, "the file holds every chunk in order");
    }
}
