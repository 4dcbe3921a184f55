//! The `raw` target: the same bytes in the same batch sizes written to three synced
//! RocksDB instances on this disk, with no network and no Raft. A batch counts as stored
//! once two of the three have fsynced it (a quorum, as in a three-node cluster); a
//! consumer reads what producers wrote and deletes it, synced the same way.
//!
//! This is the physical ceiling of raftq's design on a machine, not a queue.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use raftq_store::raw::RawStore;
use tokio::sync::{Mutex, mpsc};

use crate::driver::{Consumer, Driver, Producer, Result};

/// Keys written but not yet consumed, per queue; producers wait when it is full.
const PENDING_KEYS: usize = 2_000_000;
const REPLICAS: usize = 3;
const QUORUM: usize = 2;

type KeyQueue = (mpsc::Sender<Vec<u8>>, Arc<Mutex<mpsc::Receiver<Vec<u8>>>>);

pub struct Raw {
    stores: Arc<Vec<RawStore>>,
    next_key: Arc<AtomicU64>,
    queues: std::sync::Mutex<std::collections::HashMap<String, KeyQueue>>,
    _dir: tempfile::TempDir,
}

impl Raw {
    pub fn open(parent: &Path) -> Result<Raw> {
        std::fs::create_dir_all(parent)?;
        let dir = tempfile::Builder::new().prefix("raw-").tempdir_in(parent)?;
        let stores = (0..REPLICAS)
            .map(|i| RawStore::open(&dir.path().join(format!("replica-{i}"))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Raw {
            stores: Arc::new(stores),
            next_key: Arc::new(AtomicU64::new(0)),
            queues: std::sync::Mutex::new(Default::default()),
            _dir: dir,
        })
    }

    fn keys(&self, queue: &str) -> KeyQueue {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(queue.to_string())
            .or_insert_with(|| {
                let (sender, receiver) = mpsc::channel(PENDING_KEYS);
                (sender, Arc::new(Mutex::new(receiver)))
            })
            .clone()
    }
}

/// Runs `write` on every replica in parallel and returns once a quorum has finished.
/// The others finish in the background.
async fn on_quorum<F>(stores: &Arc<Vec<RawStore>>, write: F) -> Result<()>
where
    F: Fn(&RawStore) -> std::result::Result<(), raftq_store::StoreError>
        + Send
        + Sync
        + Clone
        + 'static,
{
    let mut pending: FuturesUnordered<_> = (0..stores.len())
        .map(|i| {
            let (stores, write) = (stores.clone(), write.clone());
            tokio::task::spawn_blocking(move || write(&stores[i]))
        })
        .collect();
    let mut done = 0;
    while let Some(result) = pending.next().await {
        result??;
        done += 1;
        if done == QUORUM {
            return Ok(());
        }
    }
    anyhow::bail!("fewer than {QUORUM} replicas stored the batch")
}

impl Driver for Raw {
    fn create_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        self.keys(queue);
        async { Ok(()) }.boxed()
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        self.queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(queue);
        async { Ok(()) }.boxed()
    }

    fn producer<'a>(
        &'a self,
        queue: &'a str,
        _group: Option<String>,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        let producer = RawProducer {
            stores: self.stores.clone(),
            next_key: self.next_key.clone(),
            keys: self.keys(queue).0,
        };
        async move { Ok(Box::new(producer) as Box<dyn Producer>) }.boxed()
    }

    fn consumer<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        let consumer = RawConsumer {
            stores: self.stores.clone(),
            keys: self.keys(queue).1,
            max,
            taken: Vec::new(),
        };
        async move { Ok(Box::new(consumer) as Box<dyn Consumer>) }.boxed()
    }
}

struct RawProducer {
    stores: Arc<Vec<RawStore>>,
    next_key: Arc<AtomicU64>,
    keys: mpsc::Sender<Vec<u8>>,
}

impl Producer for RawProducer {
    fn send(&mut self, bodies: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        async move {
            let first = self
                .next_key
                .fetch_add(bodies.len() as u64, Ordering::Relaxed);
            let keys: Vec<Vec<u8>> = (0..bodies.len() as u64)
                .map(|i| (first + i).to_be_bytes().to_vec())
                .collect();
            let entries: Arc<Vec<(Vec<u8>, Bytes)>> =
                Arc::new(keys.iter().cloned().zip(bodies).collect());
            on_quorum(&self.stores, move |store| {
                store.put_synced(entries.iter().map(|(k, v)| (k.as_slice(), v.as_ref())))
            })
            .await?;
            for key in keys {
                self.keys.send(key).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

struct RawConsumer {
    stores: Arc<Vec<RawStore>>,
    keys: Arc<Mutex<mpsc::Receiver<Vec<u8>>>>,
    max: usize,
    taken: Vec<Vec<u8>>,
}

impl Consumer for RawConsumer {
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            let mut keys = Vec::with_capacity(self.max);
            {
                let mut receiver = self.keys.lock().await;
                let first = tokio::time::timeout(Duration::from_millis(200), receiver.recv()).await;
                if let Ok(Some(key)) = first {
                    keys.push(key);
                    while keys.len() < self.max {
                        match receiver.try_recv() {
                            Ok(key) => keys.push(key),
                            Err(_) => break,
                        }
                    }
                }
            }
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let stores = self.stores.clone();
            let read = keys.clone();
            let values = tokio::task::spawn_blocking(move || {
                let mut values = stores[0].get_many(read.iter().map(|k| k.as_slice()))?;
                // Replica 0 may be the one still writing; a quorum includes replica 1 then.
                for (key, value) in read.iter().zip(values.iter_mut()) {
                    if value.is_none() {
                        *value = stores[1].get_many([key.as_slice()])?.pop().flatten();
                    }
                }
                values
                    .into_iter()
                    .map(|value| value.ok_or_else(|| anyhow::anyhow!("a stored key is missing")))
                    .collect::<Result<Vec<_>>>()
            })
            .await??;
            self.taken = keys;
            Ok(values.into_iter().map(Bytes::from).collect())
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let keys = Arc::new(std::mem::take(&mut self.taken));
            if keys.is_empty() {
                return Ok(());
            }
            on_quorum(&self.stores, move |store| {
                store.delete_synced(keys.iter().map(|k| k.as_slice()))
            })
            .await
        }
        .boxed()
    }
}
