//! Admission control: how much one node takes on at once. Every limit, when reached,
//! refuses what comes next with RESOURCE_EXHAUSTED naming the limit (and its setting), and
//! counts it in `raftq_admission_refusals_total{limit}`; what was admitted goes on. The
//! defaults keep a node inside the chart's memory limit (2 GiB).
//!
//! - connections to the public port ([`connections`]), and calls at once on each
//!   (HTTP/2's concurrent streams: a client opening more waits for one to end);
//! - receives that may wait (long polls), send streams, consume streams (per node and per
//!   principal);
//! - bytes of request bodies being received ([`bodies`]) and of messages in calls being
//!   served (sends, send batches, commits);
//! - what the node stores and its free disk space ([`budget`]): sends are refused at the
//!   budget while receives, acks and deletes go on.

mod bodies;
mod budget;
mod connections;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::error::{ServiceError, status};
pub use bodies::count_bodies;
pub use connections::{admit, peer_certificates, refusal};

/// `[admission]` (`RAFTQ_ADMISSION__*`): what one node serves at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Connections the public port keeps open at once. Every call on one more connection
    /// is refused, and the connection closed within seconds.
    pub max_connections: usize,
    /// Calls and streams open at once on one public-port connection (HTTP/2
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// Receive calls that may wait (`wait_ms` above 0) in progress at once.
    pub max_waiting_receives: usize,
    /// Send streams open at once.
    pub max_send_streams: usize,
    /// Consume streams open at once.
    pub max_consume_streams: usize,
    /// Consume streams open at once for one principal.
    pub max_consume_streams_per_principal: usize,
    /// Bytes of messages in send, send-batch and commit calls being served at once (a
    /// call larger than this is served alone).
    pub max_request_bytes: u64,
    /// Messages stored in all queues (dead letters, journals and acknowledgement messages
    /// included): at this many, sends are refused.
    pub max_stored_messages: u64,
    /// Bytes of those messages: at this many, sends are refused.
    pub max_stored_bytes: u64,
    /// Records kept to answer repeats (idempotency keys, committed transactions): at this
    /// many, sends are refused.
    pub max_dedup_records: u64,
    /// Free bytes the data directory's file system keeps: below this, sends are refused,
    /// before RocksDB or a snapshot runs out of space.
    pub min_free_disk_bytes: u64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_connections: 2_048,
            max_streams_per_connection: 256,
            max_waiting_receives: 4_096,
            max_send_streams: 256,
            max_consume_streams: 1_024,
            max_consume_streams_per_principal: 256,
            max_request_bytes: 256 * 1024 * 1024,
            max_stored_messages: 5_000_000,
            max_stored_bytes: 8 * 1024 * 1024 * 1024,
            max_dedup_records: 5_000_000,
            min_free_disk_bytes: 512 * 1024 * 1024,
        }
    }
}

impl AdmissionConfig {
    /// Refuses limits that would refuse everything.
    pub fn check(&self) -> Result<(), String> {
        let zero = [
            ("max_connections", self.max_connections as u64),
            (
                "max_streams_per_connection",
                u64::from(self.max_streams_per_connection),
            ),
            ("max_waiting_receives", self.max_waiting_receives as u64),
            ("max_send_streams", self.max_send_streams as u64),
            ("max_consume_streams", self.max_consume_streams as u64),
            (
                "max_consume_streams_per_principal",
                self.max_consume_streams_per_principal as u64,
            ),
            ("max_request_bytes", self.max_request_bytes),
            ("max_stored_messages", self.max_stored_messages),
            ("max_stored_bytes", self.max_stored_bytes),
            ("max_dedup_records", self.max_dedup_records),
        ]
        .into_iter()
        .find(|(_, value)| *value == 0);
        match zero {
            Some((name, _)) => Err(format!("{name} must be at least 1")),
            None => Ok(()),
        }
    }
}

/// The node's admission state. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

struct Inner {
    config: AdmissionConfig,
    connections: Arc<Semaphore>,
    /// Connections over the limit being answered with refusals before they are closed.
    refusing: Arc<Semaphore>,
    waiting_receives: Arc<Semaphore>,
    send_streams: Arc<Semaphore>,
    consume_streams: Arc<Semaphore>,
    consume_by_principal: Mutex<HashMap<String, usize>>,
    request_bytes: Arc<Semaphore>,
    sampled: budget::Sampled,
}

/// Most connections over the limit kept open at once to be refused; more are closed at
/// once.
const MAX_REFUSING: usize = 256;

/// A place taken under a limit, given back on drop.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    gauge: &'static str,
    amount: f64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::gauge!(self.gauge).decrement(self.amount);
    }
}

/// A consume stream's place, under the node's limit and its principal's.
pub struct ConsumeSlot {
    _node: Slot,
    principal: Option<String>,
    admission: Admission,
}

impl Drop for ConsumeSlot {
    fn drop(&mut self) {
        let Some(principal) = &self.principal else {
            return;
        };
        let mut counts = self.admission.consume_counts();
        if let Some(count) = counts.get_mut(principal) {
            *count -= 1;
            if *count == 0 {
                counts.remove(principal);
            }
        }
    }
}

impl Admission {
    pub fn new(config: AdmissionConfig) -> Admission {
        let permits = |n: usize| Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)));
        let bytes = usize::try_from(config.max_request_bytes).unwrap_or(usize::MAX);
        Admission {
            inner: Arc::new(Inner {
                connections: permits(config.max_connections),
                refusing: permits(MAX_REFUSING),
                waiting_receives: permits(config.max_waiting_receives),
                send_streams: permits(config.max_send_streams),
                consume_streams: permits(config.max_consume_streams),
                consume_by_principal: Mutex::new(HashMap::new()),
                request_bytes: permits(bytes),
                sampled: budget::Sampled::new(),
                config,
            }),
        }
    }

    pub fn config(&self) -> &AdmissionConfig {
        &self.inner.config
    }

    /// A place for a receive that may wait.
    pub fn waiting_receive(&self) -> Result<Slot, Status> {
        take(
            &self.inner.waiting_receives,
            1,
            "raftq_receives_waiting",
            || {
                refuse(
                    "max_waiting_receives",
                    format!(
                        "this node serves {} receives that wait already",
                        self.inner.config.max_waiting_receives
                    ),
                )
            },
        )
    }

    /// A place for a send stream.
    pub fn send_stream(&self) -> Result<Slot, Status> {
        take(&self.inner.send_streams, 1, "raftq_send_streams", || {
            refuse(
                "max_send_streams",
                format!(
                    "this node serves {} send streams already",
                    self.inner.config.max_send_streams
                ),
            )
        })
    }

    /// A place for a consume stream of `principal` (`None`: no principal's limit applies).
    pub fn consume_stream(&self, principal: Option<&str>) -> Result<ConsumeSlot, Status> {
        let node = take(
            &self.inner.consume_streams,
            1,
            "raftq_consume_streams",
            || {
                refuse(
                    "max_consume_streams",
                    format!(
                        "this node serves {} consume streams already",
                        self.inner.config.max_consume_streams
                    ),
                )
            },
        )?;
        let Some(principal) = principal else {
            return Ok(ConsumeSlot {
                _node: node,
                principal: None,
                admission: self.clone(),
            });
        };
        let limit = self.inner.config.max_consume_streams_per_principal;
        let mut counts = self.consume_counts();
        let count = counts.entry(principal.to_string()).or_default();
        if *count >= limit {
            return Err(refuse(
                "max_consume_streams_per_principal",
                format!(
                    "principal {} has {limit} consume streams open on this node already",
                    raftq_core::quote(principal)
                ),
            ));
        }
        *count += 1;
        drop(counts);
        Ok(ConsumeSlot {
            _node: node,
            principal: Some(principal.to_string()),
            admission: self.clone(),
        })
    }

    /// Room for `bytes` of messages in a call being served. A call larger than the whole
    /// limit takes all of it: it is served when nothing else is in flight.
    pub fn request_bytes(&self, bytes: u64) -> Result<Slot, Status> {
        let limit = self.inner.config.max_request_bytes;
        let wanted = bytes.clamp(1, limit);
        let amount = u32::try_from(wanted).unwrap_or(u32::MAX);
        take(
            &self.inner.request_bytes,
            amount,
            "raftq_request_bytes_in_flight",
            || {
                refuse(
                    "max_request_bytes",
                    format!(
                        "this node holds {limit} bytes of messages in calls being served \
                         already; this call brings {bytes}"
                    ),
                )
            },
        )
    }

    /// Consume streams open on this node now.
    pub fn consume_streams_open(&self) -> usize {
        let limit = self
            .inner
            .config
            .max_consume_streams
            .min(Semaphore::MAX_PERMITS);
        limit - self.inner.consume_streams.available_permits()
    }

    fn consume_counts(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.inner
            .consume_by_principal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `amount` permits of `limit` now, or the refusal `refused` makes.
fn take(
    limit: &Arc<Semaphore>,
    amount: u32,
    gauge: &'static str,
    refused: impl FnOnce() -> Status,
) -> Result<Slot, Status> {
    match limit.clone().try_acquire_many_owned(amount) {
        Ok(permit) => {
            metrics::gauge!(gauge).increment(f64::from(amount));
            Ok(Slot {
                _permit: permit,
                gauge,
                amount: f64::from(amount),
            })
        }
        Err(_) => Err(refused()),
    }
}

/// RESOURCE_EXHAUSTED for `limit` (the `[admission]` setting), counted.
fn refuse(limit: &'static str, what: String) -> Status {
    metrics::counter!("raftq_admission_refusals_total", "limit" => limit).increment(1);
    status(ServiceError::Overloaded { what, limit })
}
