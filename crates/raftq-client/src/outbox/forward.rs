//! The forwarder: takes the outbox's messages to the cluster in local order, in batches,
//! as numbered sends (or commits) of the outbox's producer, whenever the cluster answers.
//! The batch being forwarded is written down before it is sent, so after a crash the same
//! batch goes again with the same numbers and is stored once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::store::{Batch, Record};
use super::{Inner, OutboxError, now_ms};
use crate::error::ClientError;
use crate::pb;
use raftq_proto::wire::{REASON_PRODUCER_EXPIRED, REASON_SEQUENCE_APPLIED, REASON_SEQUENCE_GAP};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long an idle forwarder sleeps before it looks again without being woken.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The idle expiry the outbox's producer asks for: an outbox may wait out long outages.
const PRODUCER_IDLE_EXPIRY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// What one step did.
enum Step {
    /// Something was forwarded, refused for good, or is ready to go at once.
    Progress,
    /// Nothing waits.
    Idle,
    /// The cluster did not take it now; try again after a while.
    Later,
}

pub(super) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    while !*stop.borrow() {
        let pause = match step(&inner).await {
            Ok(Step::Progress) => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok(Step::Idle) => IDLE_POLL,
            Ok(Step::Later) => {
                let pause = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                pause
            }
            Err(error) => {
                inner.note_stuck(Some(format!("the outbox's file: {error}")));
                MAX_BACKOFF
            }
        };
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    // Every handle on the outbox is gone.
                    return;
                }
            }
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// The outbox's producer id, registered on first use (and again once expired).
async fn producer(inner: &Inner) -> Result<Option<u64>, OutboxError> {
    if let Some(id) = inner.blocking(|store| store.producer()).await? {
        return Ok(Some(id));
    }
    register(inner).await
}

async fn register(inner: &Inner) -> Result<Option<u64>, OutboxError> {
    match inner
        .client
        .register_producer(&inner.config.name, Some(PRODUCER_IDLE_EXPIRY))
        .await
    {
        Ok(registered) => {
            let id = registered.producer_id;
            inner.blocking(move |store| store.set_producer(id)).await?;
            Ok(Some(id))
        }
        Err(error) => {
            inner.note_stuck(Some(format!("registering the producer: {error}")));
            Ok(None)
        }
    }
}

/// The batch to forward now: the one chosen before (numbered again if it was chosen for a
/// producer that has since expired), or the next from the head.
async fn batch(inner: &Inner, producer: u64) -> Result<Option<Batch>, OutboxError> {
    let max = inner.config.batch_messages;
    match inner.blocking(|store| store.inflight()).await? {
        Some(batch) if batch.producer == producer => Ok(Some(batch)),
        Some(mut batch) => {
            let queue = batch.queue.clone();
            batch.sequence = inner
                .blocking(move |store| store.next_sequence(&queue))
                .await?;
            batch.producer = producer;
            let chosen = batch.clone();
            inner
                .blocking(move |store| store.set_inflight(Some(&chosen)))
                .await?;
            Ok(Some(batch))
        }
        None => {
            inner
                .blocking(move |store| store.choose(producer, max))
                .await
        }
    }
}

fn stamp(batch: &Batch) -> Option<pb::ProducerSequence> {
    Some(pb::ProducerSequence {
        producer_id: batch.producer,
        sequence: batch.sequence,
    })
}

/// Sends `batch` as one request; what the cluster answered.
async fn send(inner: &Inner, batch: &Batch, records: Vec<Record>) -> Result<(), ClientError> {
    if batch.queue.is_empty() {
        let request = pb::CommitRequest {
            transaction_id: format!("outbox-{}-{}", batch.producer, batch.first),
            acks: Vec::new(),
            sends: records
                .into_iter()
                .map(|record| pb::TransactionSend {
                    queue: record.queue,
                    message: record.message,
                })
                .collect(),
            producer: stamp(batch),
        };
        inner.client.commit(request).await.map(|_| ())
    } else {
        let request = pb::SendBatchRequest {
            queue: batch.queue.clone(),
            messages: records.into_iter().filter_map(|r| r.message).collect(),
            producer: stamp(batch),
        };
        inner.client.send_batch_request(request).await.map(|_| ())
    }
}

async fn step(inner: &Inner) -> Result<Step, OutboxError> {
    let Some(producer) = producer(inner).await? else {
        return Ok(Step::Later);
    };
    let Some(batch) = batch(inner, producer).await? else {
        inner.note_stuck(None);
        return Ok(Step::Idle);
    };
    let wanted = batch.clone();
    let records = inner.blocking(move |store| store.records(&wanted)).await?;
    if records.len() as u64 != batch.count {
        return Err(OutboxError::Store(format!(
            "the batch from local id {} holds {} of its {} messages",
            batch.first,
            records.len(),
            batch.count
        )));
    }
    let result = send(inner, &batch, records).await;
    let reason = result.as_ref().err().and_then(ClientError::reason);
    match (&result, reason) {
        (Ok(()), _) | (Err(_), Some(REASON_SEQUENCE_APPLIED)) => {
            let (done, max) = (batch.clone(), inner.config.batch_messages);
            let forwarded = inner.forwarded.clone();
            inner
                .blocking(move |store| {
                    let mut forwarded = forwarded.lock().unwrap_or_else(|p| p.into_inner());
                    let next = store.forwarded(&done, max)?;
                    *forwarded += done.count;
                    Ok(next)
                })
                .await?;
            metrics::counter!("raftq_outbox_forwarded_total").increment(batch.count);
            inner.note_stuck(None);
            Ok(Step::Progress)
        }
        (Err(error), Some(REASON_PRODUCER_EXPIRED)) => {
            // The cluster forgot the producer: whether the batch in flight when it went
            // idle was stored is unknown. It goes again under a new producer.
            inner.note_stuck(Some(format!("producer {producer} expired: {error}")));
            metrics::counter!("raftq_outbox_producer_renewals_total").increment(1);
            register(inner).await?;
            Ok(Step::Progress)
        }
        (Err(error), Some(REASON_SEQUENCE_GAP)) => {
            inner.note_stuck(Some(format!("out of step with the cluster: {error}")));
            Ok(Step::Later)
        }
        (Err(_), _)
            if result.as_ref().is_err_and(ClientError::is_refused_for_good)
                && batch.count > 1
                && !batch.queue.is_empty() =>
        {
            // One of them may be the cause: one at a time until it is found.
            let alone = Batch { count: 1, ..batch };
            inner
                .blocking(move |store| store.set_inflight(Some(&alone)))
                .await?;
            Ok(Step::Progress)
        }
        (Err(error), _) if error.is_refused_for_good() => {
            let reason = error.to_string();
            let done = batch.clone();
            let at = now_ms();
            inner
                .blocking(move |store| store.refused(&done, &reason, at))
                .await?;
            metrics::counter!("raftq_outbox_dead_letters_total").increment(batch.count);
            Ok(Step::Progress)
        }
        (Err(error), _) => {
            inner.note_stuck(Some(error.to_string()));
            Ok(Step::Later)
        }
    }
}
