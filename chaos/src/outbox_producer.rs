//! Producers that send through the client's durable outbox ("o*"): a send counts as
//! acknowledged once the outbox has it on disk, and the outbox forwards it to the cluster
//! as numbered sends of its own producer, under whatever faults the nemesis brings. The
//! checker then holds these values to the same rules as any acknowledged send: received,
//! once, in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use raftq_client::{Client, Message, Outbox, OutboxConfig};

use crate::history::{Op, Outcome};
use crate::recorder::Recorder;

/// Outboxes of the run, their files in a directory removed with it.
pub struct Outboxes {
    dir: tempfile::TempDir,
    outboxes: Vec<Outbox>,
}

impl Outboxes {
    pub fn new() -> anyhow::Result<Outboxes> {
        Ok(Outboxes {
            dir: tempfile::tempdir()?,
            outboxes: Vec::new(),
        })
    }

    /// A new outbox forwarding through `client`, for producer `name`.
    pub fn open(&mut self, client: Client, name: &str) -> anyhow::Result<Outbox> {
        let outbox = Outbox::open(
            client,
            OutboxConfig::new(self.dir.path().join(format!("{name}.redb")), name),
        )?;
        self.outboxes.push(outbox.clone());
        Ok(outbox)
    }

    /// Waits until every outbox has forwarded what it holds (at most `limit` in all);
    /// whether they all did.
    pub async fn flush(&self, limit: Duration) -> bool {
        let end = tokio::time::Instant::now() + limit;
        for outbox in &self.outboxes {
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            match outbox.flush(left).await {
                Ok(true) => {}
                Ok(false) | Err(_) => {
                    let status = outbox.status().await;
                    println!("raftq-chaos: an outbox did not forward everything: {status:?}");
                    return false;
                }
            }
        }
        for outbox in &self.outboxes {
            outbox.close();
        }
        true
    }
}

/// Sends `name-0000000`, `name-0000001`, ... to `queue` through `outbox` until `stop`.
pub async fn produce(
    outbox: Outbox,
    recorder: Recorder,
    name: String,
    queue: &'static str,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let value = format!("{name}-{n:07}");
        n += 1;
        let start = recorder.now_ms();
        let (outcome, error) = match outbox.send(queue, Message::new(value.clone())).await {
            Ok(_) => (Outcome::Ok, String::new()),
            Err(error) => (Outcome::Failed, error.to_string()),
        };
        recorder.record(&name, Op::Send { value }, start, outcome, error);
        // The outbox answers at disk speed; keep its share of the load like a producer's.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
