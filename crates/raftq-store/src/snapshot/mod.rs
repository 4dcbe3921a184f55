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
//! magic "RAFTQSN2" | state length: u64 | state (bincode) | state SHA-256: 32 bytes
//! bodies, by key:  key: u64 | length: u64 | bytes        (key < u64::MAX)
//! end:             u64::MAX | number of bodies: u64 | bodies SHA-256 | file SHA-256
//! ```
//!
//! The bodies' checksum covers every body record; the file's covers the magic, the state
//! length and the other two checksums, and so every byte. A file that does not match is
//! never loaded (a snapshot received from the leader is checked as it is installed), so a
//! damaged snapshot is not served or passed on. Files of the first layout ("RAFTQSN1":
//! the same without checksums, the end record only `u64::MAX | number of bodies`) are
//! still read.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use raftq_core::StateMachine;
use sha2::{Digest as _, Sha256};

use crate::checksum::{self, HashingReader, HashingWriter, Sum};
use crate::db::StoreError;

const MAGIC: &[u8; 8] = b"RAFTQSN2";
/// The first layout, without checksums: still read.
const MAGIC_UNCHECKED: &[u8; 8] = b"RAFTQSN1";
/// The end record of the current layout: end marker, count, two checksums.
const END_RECORD_BYTES: u64 = 8 + 8 + 32 + 32;
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
    /// The magic and the state length, as written.
    header: [u8; 16],
    state_sum: Sum,
    bodies_hasher: Sha256,
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
        let mut writer = || -> Result<(u64, [u8; 16], Sum), StoreError> {
            file.write_all(MAGIC)?;
            // The length is known once the state is written: a placeholder, then the length.
            let length_at = MAGIC.len() as u64;
            file.write_all(&0u64.to_le_bytes())?;
            let mut hashing = HashingWriter {
                inner: &mut file,
                hasher: Sha256::new(),
            };
            bincode::serialize_into(&mut hashing, state).map_err(|source| StoreError::Encode {
                what: "snapshot state",
                source,
            })?;
            // Principals and grants follow the rest of the state, inside its length: a
            // state written before they existed ends without them (and without what
            // follows them).
            bincode::serialize_into(&mut hashing, state.access()).map_err(|source| {
                StoreError::Encode {
                    what: "snapshot principals",
                    source,
                }
            })?;
            // Producers and their sessions follow the principals, in the same way.
            bincode::serialize_into(&mut hashing, state.producers()).map_err(|source| {
                StoreError::Encode {
                    what: "snapshot producers",
                    source,
                }
            })?;
            // The placement of data groups and queues follows the producers.
            bincode::serialize_into(&mut hashing, state.placement()).map_err(|source| {
                StoreError::Encode {
                    what: "snapshot placement",
                    source,
                }
            })?;
            // The nodes being drained follow the placement.
            bincode::serialize_into(&mut hashing, state.placement().draining()).map_err(
                |source| StoreError::Encode {
                    what: "snapshot draining nodes",
                    source,
                },
            )?;
            let state_sum = checksum::finish(hashing.hasher);
            let state_end = file.stream_position()?;
            file.write_all(&state_sum)?;
            let end = file.stream_position()?;
            let length = state_end - length_at - 8;
            file.seek(SeekFrom::Start(length_at))?;
            file.write_all(&length.to_le_bytes())?;
            file.seek(SeekFrom::Start(end))?;
            let mut header = [0u8; 16];
            header[..8].copy_from_slice(MAGIC);
            header[8..].copy_from_slice(&length.to_le_bytes());
            Ok((end, header, state_sum))
        };
        let (unsynced, header, state_sum) = match writer() {
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
            header,
            state_sum,
            bodies_hasher: Sha256::new(),
        })
    }

    /// Removes a file that will not be finished.
    pub(crate) fn discard(self) {
        drop(self.file);
        let _ = fs::remove_file(&self.part);
    }

    pub(crate) fn body(&mut self, key: u64, bytes: &[u8]) -> io::Result<()> {
        let record = [key.to_le_bytes(), (bytes.len() as u64).to_le_bytes()];
        for part in [&record[0][..], &record[1][..], bytes] {
            self.file.write_all(part)?;
            self.bodies_hasher.update(part);
        }
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
            header,
            state_sum,
            bodies_hasher,
        } = self;
        let bodies_sum = checksum::finish(bodies_hasher);
        let file_sum = checksum::file_sum(&header, &state_sum, &bodies_sum, bodies);
        let finished = (|| {
            file.write_all(&END.to_le_bytes())?;
            file.write_all(&bodies.to_le_bytes())?;
            file.write_all(&bodies_sum)?;
            file.write_all(&file_sum)?;
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
    /// What the end record says, for files of the current layout (`None`: the first).
    expected: Option<Expected>,
    bodies_hasher: Sha256,
}

/// The checksums and count a file of the current layout must match.
struct Expected {
    state_sum: Sum,
    bodies_sum: Sum,
}

/// The next part of a snapshot's state, if any bytes of its length are left.
fn trailing<T: serde::de::DeserializeOwned>(
    limited: &mut HashingReader<io::Take<impl Read>>,
    what: &'static str,
) -> Result<Option<T>, StoreError> {
    let rest = limited.inner.limit();
    if rest == 0 {
        return Ok(None);
    }
    crate::codec::decode_from_within(limited, rest)
        .map(Some)
        .map_err(|source| StoreError::Decode { what, source })
}

fn read_sum(file: &mut impl Read) -> io::Result<Sum> {
    let mut sum = [0u8; 32];
    file.read_exact(&mut sum)?;
    Ok(sum)
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
    /// Opens the file and checks that it is complete (its end record is in place) and, for
    /// the current layout, that its header and checksums agree.
    pub(crate) fn open(path: &Path) -> io::Result<SnapshotReader> {
        let mut file = File::open(path)?;
        let size = file.metadata()?.len();
        let mut magic = [0u8; 8];
        if size < (MAGIC.len() + 8 + 16) as u64 || file.read_exact(&mut magic).is_err() {
            return Err(damaged(format!("snapshot {} is too short", path.display())));
        }
        let end_record = match &magic {
            magic if magic == MAGIC => END_RECORD_BYTES,
            magic if magic == MAGIC_UNCHECKED => 16,
            _ => {
                return Err(damaged(format!(
                    "{} is not a raftq snapshot of this format",
                    path.display()
                )));
            }
        };
        if size < MAGIC.len() as u64 + 8 + end_record {
            return Err(damaged(format!("snapshot {} is too short", path.display())));
        }
        file.seek(SeekFrom::End(-(end_record as i64)))?;
        if read_u64(&mut file)? != END {
            return Err(damaged(format!(
                "snapshot {} has no end record: it is incomplete",
                path.display()
            )));
        }
        let expected = if end_record == END_RECORD_BYTES {
            let bodies = read_u64(&mut file)?;
            let bodies_sum = read_sum(&mut file)?;
            let file_sum = read_sum(&mut file)?;
            file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
            let length = read_u64(&mut file)?;
            if length > size {
                return Err(damaged(format!(
                    "snapshot {} claims a state of {length} bytes",
                    path.display()
                )));
            }
            file.seek(SeekFrom::Current(length as i64))?;
            let state_sum = read_sum(&mut file)?;
            let mut header = [0u8; 16];
            header[..8].copy_from_slice(MAGIC);
            header[8..].copy_from_slice(&length.to_le_bytes());
            if checksum::file_sum(&header, &state_sum, &bodies_sum, bodies) != file_sum {
                return Err(damaged(format!(
                    "snapshot {} does not match its checksum: the file is damaged",
                    path.display()
                )));
            }
            Some(Expected {
                state_sum,
                bodies_sum,
            })
        } else {
            None
        };
        file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
        Ok(SnapshotReader {
            file: BufReader::with_capacity(BUFFER_BYTES, file),
            bodies: 0,
            ended: false,
            expected,
            bodies_hasher: Sha256::new(),
        })
    }

    pub(crate) fn state(&mut self) -> Result<StateMachine, StoreError> {
        let length = read_u64(&mut self.file)?;
        let mut limited = HashingReader {
            inner: (&mut self.file).take(length),
            hasher: Sha256::new(),
        };
        let mut state: StateMachine = crate::codec::decode_from_within(&mut limited, length)
            .map_err(|source| StoreError::Decode {
                what: "snapshot state",
                source,
            })?;
        // What follows the state inside its length, each part absent from a snapshot
        // written before it existed.
        if let Some(access) = trailing(&mut limited, "snapshot principals")? {
            state.restore_access(access);
        }
        if let Some(producers) = trailing(&mut limited, "snapshot producers")? {
            state.restore_producers(producers);
        }
        if let Some(placement) = trailing(&mut limited, "snapshot placement")? {
            state.restore_placement(placement);
        }
        if let Some(draining) = trailing(&mut limited, "snapshot draining nodes")? {
            state.restore_draining(draining);
        }
        if limited.inner.limit() != 0 {
            return Err(damaged("the snapshot state is shorter than its length says").into());
        }
        if let Some(expected) = &self.expected {
            let sum = checksum::finish(limited.hasher);
            if sum != expected.state_sum || read_sum(&mut self.file)? != expected.state_sum {
                return Err(damaged("the snapshot state does not match its checksum").into());
            }
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
            if let Some(expected) = &self.expected {
                let hasher = std::mem::take(&mut self.bodies_hasher);
                if checksum::finish(hasher) != expected.bodies_sum {
                    return Err(damaged("the snapshot's bodies do not match their checksum"));
                }
            }
            return Ok(None);
        }
        if length > MAX_BODY_BYTES {
            return Err(damaged(format!("body {key} claims {length} bytes")));
        }
        let mut bytes = vec![0u8; length as usize];
        self.file.read_exact(&mut bytes)?;
        self.bodies_hasher.update(key.to_le_bytes());
        self.bodies_hasher.update(length.to_le_bytes());
        self.bodies_hasher.update(&bytes);
        self.bodies += 1;
        Ok(Some((key, bytes)))
    }
}

#[cfg(test)]
mod tests;
