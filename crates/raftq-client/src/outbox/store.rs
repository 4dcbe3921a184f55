//! The outbox's file (redb, pure Rust): messages waiting to be forwarded in local order,
//! the batch being forwarded, the producer and its next numbers, and dead letters. Every
//! function here is one transaction, synced before it returns.

use std::path::Path;

use prost::Message as _;
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::OutboxError;
use crate::pb;

/// Waiting messages by local id (the order they were handed over).
const PENDING: TableDefinition<u64, &[u8]> = TableDefinition::new("pending");
/// Messages the cluster refused for good, by local id.
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
/// Per queue, the number the producer's next send there takes; "" for its commits.
const NEXT: TableDefinition<&str, u64> = TableDefinition::new("next");
/// Counters and the producer: see the `*_KEY` names.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The batch being forwarded (at most one row, `INFLIGHT_KEY`).
const INFLIGHT: TableDefinition<&str, &[u8]> = TableDefinition::new("inflight");

const PRODUCER_KEY: &str = "producer_id";
const NEXT_LOCAL_KEY: &str = "next_local_id";
const BYTES_KEY: &str = "pending_bytes";
const INFLIGHT_KEY: &str = "batch";

/// One message handed to the outbox.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Record {
    #[prost(string, tag = "1")]
    pub queue: String,
    #[prost(message, optional, tag = "2")]
    pub message: Option<pb::OutgoingMessage>,
    /// For a message of a transaction: the local id of its first message, and how many
    /// it has; 0 and 0 for a plain send.
    #[prost(uint64, tag = "3")]
    pub unit: u64,
    #[prost(uint64, tag = "4")]
    pub unit_size: u64,
    /// Why the cluster refused it (dead letters only), and when (ms since the epoch).
    #[prost(string, tag = "5")]
    pub reason: String,
    #[prost(uint64, tag = "6")]
    pub failed_at_ms: u64,
}

impl Record {
    pub fn bytes(&self) -> u64 {
        self.message.as_ref().map_or(0, |m| m.encoded_len() as u64)
    }
}

/// The batch being forwarded: `count` records from local id `first`, numbered from
/// `sequence` in the producer's sequence on `queue` (empty for a commit).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Batch {
    #[prost(uint64, tag = "1")]
    pub first: u64,
    #[prost(uint64, tag = "2")]
    pub count: u64,
    #[prost(string, tag = "3")]
    pub queue: String,
    #[prost(uint64, tag = "4")]
    pub sequence: u64,
    #[prost(uint64, tag = "5")]
    pub producer: u64,
}

fn failed<E: Into<redb::Error>>(error: E) -> OutboxError {
    OutboxError::Store(error.into().to_string())
}

pub(crate) struct Store {
    db: Database,
}

/// What waits, for the status.
pub(crate) struct Waiting {
    pub messages: u64,
    /// Messages of the batch being forwarded.
    pub in_flight: u64,
    pub bytes: u64,
    pub oldest_sent_at_ms: Option<u64>,
    pub dead_letters: u64,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, OutboxError> {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        create_durable_dir(dir)?;
        let db = Database::create(path).map_err(failed)?;
        // The file's name, as well as its content, must survive a power loss: a synced
        // commit in a file whose directory entry was never synced is lost with it.
        sync_dir(dir)?;
        // The tables exist from the start, so readers never find one missing.
        let mut txn = db.begin_write().map_err(failed)?;
        txn.set_durability(Durability::Immediate).map_err(failed)?;
        txn.open_table(PENDING).map_err(failed)?;
        txn.open_table(DEAD).map_err(failed)?;
        txn.open_table(NEXT).map_err(failed)?;
        txn.open_table(META).map_err(failed)?;
        txn.open_table(INFLIGHT).map_err(failed)?;
        txn.commit().map_err(failed)?;
        Ok(Store { db })
    }

    fn meta(&self, key: &str) -> Result<Option<u64>, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(META).map_err(failed)?;
        Ok(table.get(key).map_err(failed)?.map(|value| value.value()))
    }

    pub fn producer(&self) -> Result<Option<u64>, OutboxError> {
        self.meta(PRODUCER_KEY)
    }

    /// A new producer: the numbers of the old one no longer apply.
    pub fn set_producer(&self, producer: u64) -> Result<(), OutboxError> {
        self.write(|txn| {
            txn.open_table(META)?.insert(PRODUCER_KEY, producer)?;
            txn.open_table(NEXT)?.retain(|_, _| false)?;
            Ok(())
        })
    }

    fn write<T>(
        &self,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, OutboxError> {
        let mut txn = self.db.begin_write().map_err(failed)?;
        txn.set_durability(Durability::Immediate).map_err(failed)?;
        let value = change(&txn).map_err(failed)?;
        txn.commit().map_err(failed)?;
        Ok(value)
    }

    /// Appends groups of records (each group all or none), synced once for all; each
    /// group's answer is its first local id, or `Full` when it would pass the bounds.
    pub fn append(
        &self,
        groups: Vec<Vec<Record>>,
        max_messages: u64,
        max_bytes: u64,
    ) -> Result<Vec<Result<u64, OutboxError>>, OutboxError> {
        self.write(|txn| {
            let mut meta = txn.open_table(META)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut next = meta.get(NEXT_LOCAL_KEY)?.map_or(1, |v| v.value());
            let mut bytes = meta.get(BYTES_KEY)?.map_or(0, |v| v.value());
            let mut count = pending.len()?;
            let mut answers = Vec::with_capacity(groups.len());
            for mut group in groups {
                let size: u64 = group.iter().map(Record::bytes).sum();
                if count + group.len() as u64 > max_messages || bytes + size > max_bytes {
                    answers.push(Err(OutboxError::Full {
                        messages: count,
                        bytes,
                        max_messages,
                        max_bytes,
                    }));
                    continue;
                }
                let first = next;
                let in_unit = group.len() > 1 && group[0].unit_size > 0;
                for record in &mut group {
                    if in_unit {
                        record.unit = first;
                    }
                    pending.insert(next, record.encode_to_vec().as_slice())?;
                    next += 1;
                }
                count += group.len() as u64;
                bytes += size;
                answers.push(Ok(first));
            }
            meta.insert(NEXT_LOCAL_KEY, next)?;
            meta.insert(BYTES_KEY, bytes)?;
            Ok(answers)
        })
    }

    /// The batch being forwarded, if one was chosen and not settled.
    pub fn inflight(&self) -> Result<Option<Batch>, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(INFLIGHT).map_err(failed)?;
        let Some(value) = table.get(INFLIGHT_KEY).map_err(failed)? else {
            return Ok(None);
        };
        Batch::decode(value.value())
            .map(Some)
            .map_err(|error| OutboxError::Store(format!("damaged batch record: {error}")))
    }

    /// Up to `max` records from the head that go in one request: a run of plain sends to
    /// one queue, or one transaction.
    #[cfg(test)]
    pub fn head(&self, max: usize) -> Result<Vec<(u64, Record)>, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(PENDING).map_err(failed)?;
        head_of(&table, max).map_err(failed)
    }

    /// Chooses the next batch from the head, numbered for `producer`, as the one being
    /// forwarded; `None` when nothing waits.
    pub fn choose(&self, producer: u64, max: usize) -> Result<Option<Batch>, OutboxError> {
        self.write(|txn| choose_in(txn, producer, max))
    }

    /// The records of `batch`, in order.
    pub fn records(&self, batch: &Batch) -> Result<Vec<Record>, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(PENDING).map_err(failed)?;
        let mut records = Vec::with_capacity(batch.count as usize);
        for entry in table
            .range(batch.first..batch.first + batch.count)
            .map_err(failed)?
        {
            let (_, value) = entry.map_err(failed)?;
            records.push(
                Record::decode(value.value())
                    .map_err(|error| OutboxError::Store(format!("damaged record: {error}")))?,
            );
        }
        Ok(records)
    }

    /// The number the producer's next send to `queue` takes ("" : its next commit).
    pub fn next_sequence(&self, queue: &str) -> Result<u64, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(NEXT).map_err(failed)?;
        Ok(table.get(queue).map_err(failed)?.map_or(1, |v| v.value()))
    }

    /// Chooses `batch` as the one being forwarded (or forgets the choice with `None`).
    pub fn set_inflight(&self, batch: Option<&Batch>) -> Result<(), OutboxError> {
        self.write(|txn| {
            let mut table = txn.open_table(INFLIGHT)?;
            match batch {
                Some(batch) => {
                    table.insert(INFLIGHT_KEY, batch.encode_to_vec().as_slice())?;
                }
                None => {
                    table.remove(INFLIGHT_KEY)?;
                }
            }
            Ok(())
        })
    }

    /// The cluster has `batch`: its records go, its numbers are used, and the next batch
    /// is chosen (up to `max` messages) in the same transaction: one sync per batch.
    pub fn forwarded(&self, batch: &Batch, max: usize) -> Result<Option<Batch>, OutboxError> {
        self.write(|txn| {
            let bytes = remove_records(txn, batch, None)?;
            let mut meta = txn.open_table(META)?;
            let held = meta.get(BYTES_KEY)?.map_or(0, |v| v.value());
            meta.insert(BYTES_KEY, held.saturating_sub(bytes))?;
            // A send takes a number per message; a commit one in all.
            let used = if batch.queue.is_empty() {
                1
            } else {
                batch.count
            };
            txn.open_table(NEXT)?
                .insert(batch.queue.as_str(), batch.sequence + used)?;
            txn.open_table(INFLIGHT)?.remove(INFLIGHT_KEY)?;
            choose_in(txn, batch.producer, max)
        })
    }

    /// The cluster refused `batch` for good: its records become dead letters with
    /// `reason`; its numbers stay free.
    pub fn refused(&self, batch: &Batch, reason: &str, now_ms: u64) -> Result<(), OutboxError> {
        self.write(|txn| {
            let bytes = remove_records(txn, batch, Some((reason, now_ms)))?;
            let mut meta = txn.open_table(META)?;
            let held = meta.get(BYTES_KEY)?.map_or(0, |v| v.value());
            meta.insert(BYTES_KEY, held.saturating_sub(bytes))?;
            txn.open_table(INFLIGHT)?.remove(INFLIGHT_KEY)?;
            Ok(())
        })
    }

    pub fn waiting(&self) -> Result<Waiting, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let pending = txn.open_table(PENDING).map_err(failed)?;
        let meta = txn.open_table(META).map_err(failed)?;
        let dead = txn.open_table(DEAD).map_err(failed)?;
        let oldest = match pending.first().map_err(failed)? {
            Some((_, value)) => Record::decode(value.value())
                .ok()
                .and_then(|record| record.message.map(|m| m.sent_at_ms)),
            None => None,
        };
        let in_flight = txn.open_table(INFLIGHT).map_err(failed)?;
        let in_flight = match in_flight.get(INFLIGHT_KEY).map_err(failed)? {
            Some(value) => Batch::decode(value.value()).map_or(0, |batch| batch.count),
            None => 0,
        };
        Ok(Waiting {
            messages: pending.len().map_err(failed)?,
            in_flight,
            bytes: meta
                .get(BYTES_KEY)
                .map_err(failed)?
                .map_or(0, |v| v.value()),
            oldest_sent_at_ms: oldest,
            dead_letters: dead.len().map_err(failed)?,
        })
    }

    /// Up to `max` dead letters, oldest first, with their local ids.
    pub fn dead_letters(&self, max: usize) -> Result<Vec<(u64, Record)>, OutboxError> {
        let txn = self.db.begin_read().map_err(failed)?;
        let table = txn.open_table(DEAD).map_err(failed)?;
        let mut letters = Vec::new();
        for entry in table.iter().map_err(failed)?.take(max) {
            let (id, value) = entry.map_err(failed)?;
            let record = Record::decode(value.value())
                .map_err(|error| OutboxError::Store(format!("damaged record: {error}")))?;
            letters.push((id.value(), record));
        }
        Ok(letters)
    }

    /// Every dead letter back to the end of the waiting messages; how many.
    pub fn retry_dead_letters(&self) -> Result<u64, OutboxError> {
        self.write(|txn| {
            let mut dead = txn.open_table(DEAD)?;
            let mut pending = txn.open_table(PENDING)?;
            let mut meta = txn.open_table(META)?;
            let mut next = meta.get(NEXT_LOCAL_KEY)?.map_or(1, |v| v.value());
            let mut bytes = meta.get(BYTES_KEY)?.map_or(0, |v| v.value());
            let mut moved = 0;
            while let Some((_, value)) = dead.pop_first()? {
                let Ok(mut record) = Record::decode(value.value()) else {
                    continue;
                };
                record.reason.clear();
                record.failed_at_ms = 0;
                // Alone now: the rest of its transaction may have gone.
                record.unit = 0;
                record.unit_size = 0;
                bytes += record.bytes();
                pending.insert(next, record.encode_to_vec().as_slice())?;
                next += 1;
                moved += 1;
            }
            meta.insert(NEXT_LOCAL_KEY, next)?;
            meta.insert(BYTES_KEY, bytes)?;
            Ok(moved)
        })
    }
}

fn io_failed(what: &Path, error: std::io::Error) -> OutboxError {
    OutboxError::Store(format!("{}: {error}", what.display()))
}

/// Syncs directory `dir`: the names created in it become durable.
fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| io_failed(dir, error))
}

/// Creates `dir` and any missing parents, each made durable in its own parent.
fn create_durable_dir(dir: &Path) -> Result<(), OutboxError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        create_durable_dir(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(io_failed(dir, error)),
    }
    match dir.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        Some(parent) => sync_dir(parent),
        None => Ok(()),
    }
}

/// The records at the head that go in one request.
fn head_of(
    table: &impl ReadableTable<u64, &'static [u8]>,
    max: usize,
) -> Result<Vec<(u64, Record)>, redb::Error> {
    let mut head: Vec<(u64, Record)> = Vec::new();
    for entry in table.iter()? {
        let (id, value) = entry?;
        let record = Record::decode(value.value())
            .map_err(|error| redb::Error::Corrupted(format!("damaged record: {error}")))?;
        if let Some((_, first)) = head.first() {
            let same_unit = first.unit != 0 && record.unit == first.unit;
            let same_run = first.unit == 0 && record.unit == 0 && record.queue == first.queue;
            if !(same_unit || same_run) || (first.unit == 0 && head.len() >= max) {
                break;
            }
        }
        head.push((id.value(), record));
    }
    Ok(head)
}

/// Chooses the batch at the head, numbered for `producer`, as the one in flight.
fn choose_in(
    txn: &redb::WriteTransaction,
    producer: u64,
    max: usize,
) -> Result<Option<Batch>, redb::Error> {
    let head = head_of(&txn.open_table(PENDING)?, max)?;
    let Some((first, record)) = head.first() else {
        return Ok(None);
    };
    let queue = if record.unit != 0 {
        String::new()
    } else {
        record.queue.clone()
    };
    let sequence = txn
        .open_table(NEXT)?
        .get(queue.as_str())?
        .map_or(1, |v| v.value());
    let batch = Batch {
        first: *first,
        count: head.len() as u64,
        queue,
        sequence,
        producer,
    };
    txn.open_table(INFLIGHT)?
        .insert(INFLIGHT_KEY, batch.encode_to_vec().as_slice())?;
    Ok(Some(batch))
}

/// Removes `batch`'s records from the waiting ones (to the dead letters when `dead`
/// says why); their bytes.
fn remove_records(
    txn: &redb::WriteTransaction,
    batch: &Batch,
    dead: Option<(&str, u64)>,
) -> Result<u64, redb::Error> {
    let mut pending = txn.open_table(PENDING)?;
    let mut letters = txn.open_table(DEAD)?;
    let mut bytes = 0;
    for id in batch.first..batch.first + batch.count {
        let Some(value) = pending.remove(id)? else {
            continue;
        };
        let encoded = value.value().to_vec();
        drop(value);
        let Ok(mut record) = Record::decode(encoded.as_slice()) else {
            continue;
        };
        bytes += record.bytes();
        if let Some((reason, at_ms)) = dead {
            record.reason = reason.to_string();
            record.failed_at_ms = at_ms;
            letters.insert(id, record.encode_to_vec().as_slice())?;
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(queue: &str, unit_size: u64) -> Record {
        Record {
            queue: queue.into(),
            message: Some(pb::OutgoingMessage {
                body: vec![1; 10],
                ..Default::default()
            }),
            unit: 0,
            unit_size,
            reason: String::new(),
            failed_at_ms: 0,
        }
    }

    #[test]
    fn the_head_is_a_run_of_one_queue_or_one_transaction_and_appends_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("o.redb")).unwrap();
        let answers = store
            .append(
                vec![
                    vec![record("a", 0)],
                    vec![record("a", 0)],
                    vec![record("b", 2), record("a", 2)],
                    vec![record("a", 0)],
                    vec![record("a", 0)],
                ],
                5,
                u64::MAX,
            )
            .unwrap();
        assert_eq!(answers[..3], [Ok(1), Ok(2), Ok(3)]);
        assert!(matches!(answers[3], Ok(5)));
        assert!(matches!(
            answers[4],
            Err(OutboxError::Full { messages: 5, .. })
        ));
        let ids = |head: Vec<(u64, Record)>| head.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        assert_eq!(ids(store.head(10).unwrap()), [1, 2]);
        assert_eq!(ids(store.head(1).unwrap()), [1]);
        let run = Batch {
            first: 1,
            count: 2,
            queue: "a".into(),
            sequence: 1,
            producer: 7,
        };
        let next = store
            .forwarded(&run, 10)
            .unwrap()
            .expect("the transaction is next");
        assert_eq!((next.first, next.count, next.queue.as_str()), (3, 2, ""));
        assert_eq!(store.next_sequence("a").unwrap(), 3);
        // The transaction, whole, though it names two queues.
        assert_eq!(ids(store.head(10).unwrap()), [3, 4]);
        let waiting = store.waiting().unwrap();
        assert_eq!(
            (waiting.messages, waiting.bytes),
            (3, 3 * record("a", 0).bytes())
        );
    }
}
