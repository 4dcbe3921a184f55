//! The node's budget for what it stores, and its disk: like RabbitMQ's memory and disk
//! alarms, sends are refused (RESOURCE_EXHAUSTED) while the stored messages, their bytes
//! or the records kept to answer repeats are at the budget, or the data directory's file
//! system has less free space than the threshold; receives, acks and deletes go on, and
//! sends are taken again as soon as usage falls back (nothing to reset).
//!
//! Usage is sampled every [`SAMPLE_EVERY`] from the state (which every replica holds
//! alike, so the leader's view stands for all) and from the file system: a burst of sends
//! may pass the budget by what arrives within one period.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftq_cluster::{DataGroups, RaftNode};
use raftq_proto::pb;
use tonic::Status;

use super::{Admission, refuse};

/// How often usage and free space are looked at.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The last sample; `u64::MAX` free bytes until the disk was looked at.
#[derive(Default)]
pub(super) struct Sampled {
    messages: AtomicU64,
    bytes: AtomicU64,
    dedup_records: AtomicU64,
    disk_free: AtomicU64,
}

impl Sampled {
    pub(super) fn new() -> Sampled {
        Sampled {
            disk_free: AtomicU64::new(u64::MAX),
            ..Sampled::default()
        }
    }
}

impl Admission {
    /// Refuses a send while the node is at its budget or short of disk.
    pub fn check_store(&self) -> Result<(), Status> {
        match self.over_budget() {
            Some((limit, what)) => Err(refuse(limit, what)),
            None => Ok(()),
        }
    }

    /// The budget limit reached and what it says, if one is.
    fn over_budget(&self) -> Option<(&'static str, String)> {
        let config = &self.inner.config;
        let sampled = &self.inner.sampled;
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        let (messages, bytes, records, free) = (
            load(&sampled.messages),
            load(&sampled.bytes),
            load(&sampled.dedup_records),
            load(&sampled.disk_free),
        );
        if messages >= config.max_stored_messages {
            return Some((
                "max_stored_messages",
                format!(
                    "this node stores {messages} messages, its budget is {} (sends wait for receives to make room)",
                    config.max_stored_messages
                ),
            ));
        }
        if bytes >= config.max_stored_bytes {
            return Some((
                "max_stored_bytes",
                format!(
                    "this node stores {bytes} bytes of messages, its budget is {} (sends wait for receives to make room)",
                    config.max_stored_bytes
                ),
            ));
        }
        if records >= config.max_dedup_records {
            return Some((
                "max_dedup_records",
                format!(
                    "this node keeps {records} idempotency and transaction records, its budget is {} (they are forgotten as their windows end)",
                    config.max_dedup_records
                ),
            ));
        }
        if free < config.min_free_disk_bytes {
            return Some((
                "min_free_disk_bytes",
                format!(
                    "the data directory's file system has {free} bytes free, below {}",
                    config.min_free_disk_bytes
                ),
            ));
        }
        None
    }

    /// This node's usage, budget and disk, for `cluster status`.
    pub fn resources(&self) -> pb::NodeResources {
        let config = &self.inner.config;
        let sampled = &self.inner.sampled;
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        pb::NodeResources {
            stored_messages: load(&sampled.messages),
            max_stored_messages: config.max_stored_messages,
            stored_bytes: load(&sampled.bytes),
            max_stored_bytes: config.max_stored_bytes,
            dedup_records: load(&sampled.dedup_records),
            max_dedup_records: config.max_dedup_records,
            disk_free_bytes: match load(&sampled.disk_free) {
                u64::MAX => 0,
                free => free,
            },
            min_free_disk_bytes: config.min_free_disk_bytes,
            sends_refused: self
                .over_budget()
                .map(|(limit, _)| limit.to_string())
                .unwrap_or_default(),
        }
    }

    /// Samples usage and free space every [`SAMPLE_EVERY`] until `stop` resolves.
    /// The usage summed over every replica the node runs (group 1's and the data
    /// groups'): all of them are stored on this node's disk.
    pub async fn watch_usage(
        self,
        node: RaftNode,
        groups: Arc<DataGroups>,
        data_dir: PathBuf,
        stop: impl Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut interval = tokio::time::interval(SAMPLE_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refusing = None;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = interval.tick() => {}
            }
            let mut usage = node.state().read().usage();
            for replica in groups.replicas() {
                let more = replica.state().read().usage();
                usage.messages += more.messages;
                usage.bytes += more.bytes;
                usage.dedup_records += more.dedup_records;
            }
            let sampled = &self.inner.sampled;
            sampled.messages.store(usage.messages, Ordering::Relaxed);
            sampled.bytes.store(usage.bytes, Ordering::Relaxed);
            sampled
                .dedup_records
                .store(usage.dedup_records, Ordering::Relaxed);
            match free_bytes(&data_dir) {
                Ok(free) => sampled.disk_free.store(free, Ordering::Relaxed),
                Err(error) => {
                    tracing::warn!(%error, dir = %data_dir.display(), "reading the free space of the data directory")
                }
            }
            metrics::gauge!("raftq_stored_messages").set(usage.messages as f64);
            metrics::gauge!("raftq_stored_bytes").set(usage.bytes as f64);
            metrics::gauge!("raftq_dedup_records").set(usage.dedup_records as f64);
            metrics::gauge!("raftq_disk_free_bytes")
                .set(sampled.disk_free.load(Ordering::Relaxed) as f64);
            let now = self.over_budget();
            let limit = now.as_ref().map(|(limit, _)| *limit);
            if limit != refusing {
                match &now {
                    Some((limit, what)) => tracing::warn!(limit, "refusing sends: {what}"),
                    None => tracing::info!("taking sends again: usage is back within the budget"),
                }
                metrics::gauge!("raftq_sends_refused").set(if now.is_some() { 1.0 } else { 0.0 });
                refusing = limit;
            }
        }
    }
}

/// Bytes an unprivileged process may still write on the file system of `dir`.
fn free_bytes(dir: &std::path::Path) -> nix::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(dir)?;
    Ok(stat.blocks_available().saturating_mul(stat.fragment_size()))
}
