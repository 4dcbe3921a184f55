//! `Producer`: sends and commits numbered in a registered producer's own sequences, so a
//! repeat is recognised however long after (no dedup window): the cluster applies each
//! number once and answers a repeat with the first answer.
//!
//! One send per queue (and one commit) is in flight at a time, so the numbers reach the
//! cluster in order. A send whose outcome is unknown (the retries ran out) stays in
//! doubt: the next send to that queue first sends it again with the same numbers, so it
//! is stored exactly once whatever happened; do not send it again yourself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{Client, Message};
use crate::error::ClientError;
use crate::pb;
use crate::transaction::Transaction;

/// One sequence: the next number, and the request whose outcome is unknown, if any.
struct Lane<R> {
    next: u64,
    in_doubt: Option<R>,
}

impl<R> Lane<R> {
    fn new(next: u64) -> Arc<tokio::sync::Mutex<Lane<R>>> {
        Arc::new(tokio::sync::Mutex::new(Lane {
            next,
            in_doubt: None,
        }))
    }
}

/// A registered producer: its id and where it stands in each of its sequences.
pub struct Producer {
    client: Client,
    id: u64,
    queues: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Lane<pb::SendBatchRequest>>>>>,
    commits: Arc<tokio::sync::Mutex<Lane<pb::CommitRequest>>>,
}

/// What a request numbered from `first` takes: `count` numbers.
trait Numbered: Clone {
    fn numbers(&self) -> (u64, u64);
}

impl Numbered for pb::SendBatchRequest {
    fn numbers(&self) -> (u64, u64) {
        let first = self.producer.as_ref().map_or(0, |p| p.sequence);
        (first, self.messages.len() as u64)
    }
}

impl Numbered for pb::CommitRequest {
    fn numbers(&self) -> (u64, u64) {
        (self.producer.as_ref().map_or(0, |p| p.sequence), 1)
    }
}

impl Client {
    /// Registers a producer; `idle_expiry: None` takes the cluster's default (7 days
    /// unless configured). The cluster forgets a producer idle for longer, and refuses
    /// its later sends (FAILED_PRECONDITION, reason `producer-expired`).
    pub async fn register_producer(
        &self,
        name: &str,
        idle_expiry: Option<Duration>,
    ) -> Result<pb::RegisterProducerResponse, ClientError> {
        let request = pb::RegisterProducerRequest {
            name: name.to_string(),
            idle_expiry_ms: idle_expiry.map_or(0, |expiry| expiry.as_millis() as u64),
        };
        // A retry after an unknown outcome may register a second id; an unused one
        // costs a record until it expires.
        let response = self
            .retry(Duration::ZERO, |channel, timeout| {
                let request = crate::client::with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).register_producer(request).await }
            })
            .await?;
        Ok(response.into_inner())
    }

    /// A new producer, registered with the cluster's default idle expiry.
    pub async fn producer(&self, name: &str) -> Result<Producer, ClientError> {
        let registered = self.register_producer(name, None).await?;
        Ok(Producer::resume(
            self.clone(),
            registered.producer_id,
            HashMap::new(),
            1,
        ))
    }

    /// A send batch as it is (numbered or not), retried within the deadline.
    pub async fn send_batch_request(
        &self,
        request: pb::SendBatchRequest,
    ) -> Result<Vec<pb::SendResponse>, ClientError> {
        let response = self
            .retry_queue(&request.queue, Duration::ZERO, |channel, timeout| {
                let request = crate::client::with_timeout(request.clone(), timeout);
                async move { Self::messages(channel).send_batch(request).await }
            })
            .await?;
        Ok(response.into_inner().results)
    }
}

impl Producer {
    /// A producer registered before (its id kept somewhere durable), going on from
    /// `next`: per queue, the number its next send there takes (queues not named start
    /// at 1), and the number of its next commit.
    pub fn resume(
        client: Client,
        id: u64,
        next: HashMap<String, u64>,
        next_commit: u64,
    ) -> Producer {
        Producer {
            client,
            id,
            queues: Mutex::new(
                next.into_iter()
                    .map(|(queue, next)| (queue, Lane::new(next)))
                    .collect(),
            ),
            commits: Lane::new(next_commit),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The number the next send to `queue` takes.
    pub async fn next_sequence(&self, queue: &str) -> u64 {
        self.lane(queue).lock().await.next
    }

    fn lane(&self, queue: &str) -> Arc<tokio::sync::Mutex<Lane<pb::SendBatchRequest>>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues
            .entry(queue.to_string())
            .or_insert_with(|| Lane::new(1))
            .clone()
    }

    fn stamp(&self, sequence: u64) -> Option<pb::ProducerSequence> {
        Some(pb::ProducerSequence {
            producer_id: self.id,
            sequence,
        })
    }

    /// Sends the send to `queue` whose outcome is unknown, if there is one, until its
    /// outcome is known (each send does this first; call it when no send follows).
    pub async fn settle(&self, queue: &str) -> Result<(), ClientError> {
        let lane = self.lane(queue);
        let mut lane = lane.lock().await;
        self.settle_sends(&mut lane).await
    }

    async fn settle_sends(&self, lane: &mut Lane<pb::SendBatchRequest>) -> Result<(), ClientError> {
        let client = self.client.clone();
        settle(lane, |request| {
            let client = client.clone();
            async move { client.send_batch_request(request).await }
        })
        .await
    }

    /// Sends one message as the next number on `queue`.
    pub async fn send(
        &self,
        queue: &str,
        message: Message,
    ) -> Result<pb::SendResponse, ClientError> {
        let mut results = self.send_batch(queue, vec![message]).await?;
        results
            .pop()
            .ok_or_else(|| ClientError::Status(tonic::Status::internal("a send returned nothing")))
    }

    /// Sends up to 1,000 messages atomically, taking the next numbers on `queue`.
    pub async fn send_batch(
        &self,
        queue: &str,
        messages: Vec<Message>,
    ) -> Result<Vec<pb::SendResponse>, ClientError> {
        let lane = self.lane(queue);
        let mut lane = lane.lock().await;
        self.settle_sends(&mut lane).await?;
        let request = pb::SendBatchRequest {
            queue: queue.to_string(),
            messages: messages.into_iter().map(Message::into_proto).collect(),
            producer: self.stamp(lane.next),
        };
        let client = self.client.clone();
        numbered(&mut lane, request, |request| async move {
            client.send_batch_request(request).await
        })
        .await
    }

    /// Commits `transaction` as the producer's next commit: a repeat is then recognised
    /// however long after, not only within the transaction window.
    pub async fn commit(
        &self,
        transaction: Transaction,
    ) -> Result<pb::CommitResponse, ClientError> {
        let mut lane = self.commits.lock().await;
        let client = self.client.clone();
        settle(&mut lane, |request| {
            let client = client.clone();
            async move { client.commit(request).await }
        })
        .await?;
        let mut request = transaction.into_request();
        request.producer = self.stamp(lane.next);
        let client = self.client.clone();
        numbered(&mut lane, request, |request| async move {
            client.commit(request).await
        })
        .await
    }
}

/// Sends the lane's request in doubt again, if there is one, until its outcome is known.
async fn settle<R: Numbered, T, F, Fut>(lane: &mut Lane<R>, call: F) -> Result<(), ClientError>
where
    F: Fn(R) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let Some(request) = lane.in_doubt.take() else {
        return Ok(());
    };
    let (first, count) = request.numbers();
    match call(request.clone()).await {
        Ok(_) => lane.next = first + count,
        Err(error) if error.reason() == Some(raftq_proto::wire::REASON_SEQUENCE_APPLIED) => {
            lane.next = first + count;
        }
        Err(error) if error.is_outcome_unknown() => {
            lane.in_doubt = Some(request);
            return Err(error);
        }
        // Refused: nothing was stored, and its numbers are free again.
        Err(_) => {}
    }
    Ok(())
}

/// Sends `request` (numbered from the lane's next number); the numbers are taken when it
/// is applied, kept in doubt when its outcome is unknown, and free again when refused.
async fn numbered<R: Numbered, T, F, Fut>(
    lane: &mut Lane<R>,
    request: R,
    call: F,
) -> Result<T, ClientError>
where
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let (first, count) = request.numbers();
    match call(request.clone()).await {
        Ok(answer) => {
            lane.next = first + count;
            Ok(answer)
        }
        Err(error) => {
            if error.is_outcome_unknown() {
                lane.in_doubt = Some(request);
            }
            Err(error)
        }
    }
}
