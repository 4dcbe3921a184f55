//! One syncer thread per store, for the logs of every group in it: it takes every flush
//! callback waiting, from any group, fsyncs the write-ahead log once, completes them all,
//! and then records each group's last synced index in that group's watermark.

use std::collections::BTreeMap;
use std::io;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use openraft::storage::IOFlushed;

use crate::TypeConfig;
use crate::db::StoreError;
use crate::watermark::{self, Watermark};

/// Callbacks waiting for one fsync; beyond this, an append syncs inline (backpressure).
pub(crate) const SYNC_QUEUE_CAPACITY: usize = 4_096;

/// A flush callback waiting for the sync that covers its entries: the last index appended
/// to its group's log, the watermark's epoch at the append, and the group's watermark.
pub(crate) struct PendingSync {
    pub flushed: IOFlushed<TypeConfig>,
    pub index: u64,
    pub epoch: u64,
    pub watermark: Arc<Watermark>,
}

/// The store's syncer: where appends hand their callbacks. The thread ends once every
/// handle is gone; it holds the database weakly, so dropping the last store closes it.
#[derive(Clone)]
pub(crate) struct WalSyncer {
    sender: SyncSender<PendingSync>,
    /// The groups' watermarks, kept synced while their groups are idle.
    watermarks: Arc<Mutex<Vec<Weak<Watermark>>>>,
}

impl WalSyncer {
    pub(crate) fn start(db: Weak<rocksdb::DB>) -> io::Result<WalSyncer> {
        let (sender, pending) = sync_channel(SYNC_QUEUE_CAPACITY);
        let watermarks: Arc<Mutex<Vec<Weak<Watermark>>>> = Arc::default();
        let thread_watermarks = watermarks.clone();
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || run(db, thread_watermarks, pending))?;
        Ok(WalSyncer { sender, watermarks })
    }

    /// A group's watermark, to keep synced while the group is idle.
    pub(crate) fn register(&self, watermark: &Arc<Watermark>) {
        let mut watermarks = lock(&self.watermarks);
        watermarks.retain(|known| known.strong_count() > 0);
        watermarks.push(Arc::downgrade(watermark));
    }

    /// Whether `other` is the same syncer.
    #[cfg(test)]
    pub(crate) fn same_as(&self, other: &WalSyncer) -> bool {
        Arc::ptr_eq(&self.watermarks, &other.watermarks)
    }

    /// The groups whose logs are open on it.
    #[cfg(test)]
    pub(crate) fn open_logs(&self) -> usize {
        lock(&self.watermarks)
            .iter()
            .filter(|known| known.strong_count() > 0)
            .count()
    }

    /// Hands a callback to the thread; gives it back when the queue is full or the thread
    /// has stopped.
    pub(crate) fn submit(&self, pending: PendingSync) -> Result<(), TrySendError<PendingSync>> {
        self.sender.try_send(pending)
    }
}

fn lock(
    watermarks: &Mutex<Vec<Weak<Watermark>>>,
) -> std::sync::MutexGuard<'_, Vec<Weak<Watermark>>> {
    watermarks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn run(
    db: Weak<rocksdb::DB>,
    watermarks: Arc<Mutex<Vec<Weak<Watermark>>>>,
    pending: Receiver<PendingSync>,
) {
    loop {
        let first = match pending.recv_timeout(watermark::SYNC_EVERY) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                let live: Vec<Arc<Watermark>> =
                    lock(&watermarks).iter().filter_map(Weak::upgrade).collect();
                for watermark in live {
                    note_watermark_error(watermark.sync_if_due());
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < SYNC_QUEUE_CAPACITY {
            match pending.try_recv() {
                Ok(callback) => batch.push(callback),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(StoreError::from),
            None => Err(StoreError::Closed),
        };
        metrics::histogram!("raftq_wal_sync_seconds").record(started.elapsed().as_secs_f64());
        metrics::histogram!("raftq_wal_sync_batch_size").record(batch.len() as f64);
        metrics::counter!("raftq_wal_syncs_total").increment(1);
        // The highest index synced per group and epoch (almost always one epoch), recorded
        // once the callers are answered, off the path of every acknowledgement.
        let mut synced: BTreeMap<(usize, u64), (Arc<Watermark>, u64)> = BTreeMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        for PendingSync {
            flushed,
            index,
            epoch,
            watermark,
        } in batch
        {
            let key = (Arc::as_ptr(&watermark) as usize, epoch);
            let highest = synced.entry(key).or_insert((watermark, index));
            highest.1 = highest.1.max(index);
            answers.push(flushed);
        }
        for flushed in answers {
            let result = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::other(error.to_string())),
            };
            flushed.io_completed(result);
        }
        if result.is_ok() {
            // A write to the page cache, not synced here.
            for ((_, epoch), (watermark, index)) in &synced {
                note_watermark_error(watermark.advance(*index, *epoch));
            }
        }
        // Every group's, not only those synced now: a quiet group's last advance is
        // recorded on time even while others keep the thread busy.
        let live: Vec<Arc<Watermark>> =
            lock(&watermarks).iter().filter_map(Weak::upgrade).collect();
        for watermark in live {
            note_watermark_error(watermark.sync_if_due());
        }
    }
}

/// The watermark is a second line of defence: failing to keep it is logged, not fatal.
pub(crate) fn note_watermark_error(result: io::Result<()>) {
    if let Err(error) = result {
        tracing::warn!(%error, "cannot record the last synced log index");
    }
}
