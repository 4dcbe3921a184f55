//! A consumer on one queue over a `Consume` stream: the leader hands out messages as they
//! arrive, keeping up to `prefetch` unacknowledged on the stream, and applies the acks
//! and nacks sent on it with its next receive. The consumer does not wait for a round trip per
//! batch, and the stream's deliveries come in the order the queue hands them out.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::client::Client;
use crate::error::{ClientError, is_retryable};
use crate::pb;

/// Most receipts in one ack message (the server's limit).
const MAX_ACKS_PER_MESSAGE: usize = 1_000;
/// Ack and nack messages queued for the stream at most; `ack` and `nack` wait for room
/// beyond. The leader reads them as it goes, but not while its answers wait unread:
/// a consumer that acks a lot without calling `next` can fill both and wait.
const REQUEST_QUEUE: usize = 64;
/// The leader answers at least every 2 s (an empty answer when it has nothing else);
/// a stream silent for this long is taken for broken and opened again.
const SILENCE: Duration = Duration::from_secs(10);

/// How a [`Consumer`] consumes.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Most deliveries held unacknowledged (1..=1,000).
    pub prefetch: u32,
    /// Most messages in one [`Delivery`] (1..=1,000).
    pub max_messages: u32,
    /// Lease of each delivery; `None` uses the queue's default.
    pub lease: Option<Duration>,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 200,
            max_messages: 100,
            lease: None,
        }
    }
}

/// What one [`Consumer::next`] brought: messages, and the results of acks and nacks
/// given earlier ([`Consumer::close`] returns the last results the same way).
#[derive(Debug, Default)]
pub struct Delivery {
    pub messages: Vec<pb::ReceivedMessage>,
    /// Each acknowledged receipt with its result (`code` 0: acknowledged), in the order
    /// the receipts were given to [`Consumer::ack`].
    pub acks: Vec<(String, pb::AckResult)>,
    /// Each nacked receipt with its result (`code` 0: handed back), in the order the
    /// receipts were given to [`Consumer::nack`].
    pub nacks: Vec<(String, pb::AckResult)>,
}

struct Open {
    requests: mpsc::Sender<pb::ConsumeRequest>,
    answers: Streaming<pb::ConsumeResponse>,
    address: String,
    /// When the stream last answered (or opened).
    heard: Instant,
}

/// A consumer on one queue; see [`Client::consume`]. Deliveries it holds when it is closed
/// or dropped are handed out again at once; when the stream breaks, whichever node
/// leads hands them out again (at once, or when their leases end) and the consumer opens
/// a new stream, sending again the acks that were not answered (acks are idempotent).
pub struct Consumer {
    client: Client,
    queue: String,
    options: ConsumeOptions,
    stream: Option<Open>,
    /// Acks sent on the stream (or to send on the next one) and not answered yet, in order.
    unanswered: VecDeque<String>,
    /// Nacks likewise, with their delays in ms.
    unanswered_nacks: VecDeque<(String, u64)>,
    /// Since when the stream has been failing, and the pause before the next attempt;
    /// kept across `next` calls, so that a caller's timeouts do not reset them.
    failing_since: Option<Instant>,
    backoff: Duration,
}

impl Client {
    /// Opens a consumer on `queue`. A bad option or an unknown queue is answered by the
    /// first [`Consumer::next`].
    pub async fn consume(
        &self,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<Consumer, ClientError> {
        let mut consumer = Consumer {
            client: self.clone(),
            queue: queue.to_string(),
            options,
            stream: None,
            unanswered: VecDeque::new(),
            unanswered_nacks: VecDeque::new(),
            failing_since: None,
            backoff: self.config().initial_backoff,
        };
        consumer.open().await?;
        Ok(consumer)
    }
}

impl Consumer {
    fn start(&self) -> pb::ConsumeRequest {
        pb::ConsumeRequest {
            request: Some(pb::consume_request::Request::Start(pb::ConsumeStart {
                queue: self.queue.clone(),
                prefetch: self.options.prefetch,
                max_messages: self.options.max_messages,
                lease_ms: self
                    .options
                    .lease
                    .map_or(0, |lease| lease.as_millis() as u64),
            })),
        }
    }

    /// Opens a stream to the leader (following hints and retrying as calls do), then
    /// sends it the acks and nacks not answered on the last one.
    async fn open(&mut self) -> Result<(), ClientError> {
        let start = self.start();
        let latest = Mutex::new(None);
        let response = self
            .client
            .retry_queue(&self.queue, Duration::ZERO, |channel, _timeout| {
                let (requests, wire) = mpsc::channel(REQUEST_QUEUE);
                let _ = requests.try_send(start.clone());
                *latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(requests);
                async move {
                    Client::messages(channel)
                        .consume(ReceiverStream::new(wire))
                        .await
                }
            })
            .await?;
        let requests = latest
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .ok_or_else(|| ClientError::Status(tonic::Status::internal("no stream was opened")))?;
        let mut open = Open {
            requests,
            answers: response.into_inner(),
            address: self.client.address_for(&self.queue),
            heard: Instant::now(),
        };
        let pending: Vec<String> = self.unanswered.iter().cloned().collect();
        for chunk in pending.chunks(MAX_ACKS_PER_MESSAGE) {
            if !send_settle(&mut open, chunk, None).await {
                // Broken already: the next `next` opens another.
                return Ok(());
            }
        }
        let pending: Vec<(String, u64)> = self.unanswered_nacks.iter().cloned().collect();
        for run in pending.chunk_by(|a, b| a.1 == b.1) {
            for chunk in run.chunks(MAX_ACKS_PER_MESSAGE) {
                let receipts: Vec<String> = chunk.iter().map(|(r, _)| r.clone()).collect();
                if !send_settle(&mut open, &receipts, Some(chunk[0].1)).await {
                    return Ok(());
                }
            }
        }
        self.stream = Some(open);
        Ok(())
    }

    /// Acknowledges `receipts` (deliveries of this consumer's queue); a later
    /// [`Delivery`] carries their results. Waits only when many acks are queued already.
    /// A malformed receipt is refused (INVALID_ARGUMENT) and none of `receipts` is sent.
    pub async fn ack(&mut self, receipts: &[String]) -> Result<(), ClientError> {
        self.settle(receipts, None).await
    }

    /// Hands `receipts` back to the queue, visible again after `delay` (at most 12 h),
    /// and frees their room on the stream at once; a later [`Delivery`] carries the
    /// results. A nack sent again on a new stream after the old one broke answers
    /// FAILED_PRECONDITION when the first one had taken effect.
    pub async fn nack(&mut self, receipts: &[String], delay: Duration) -> Result<(), ClientError> {
        self.settle(receipts, Some(delay.as_millis() as u64)).await
    }

    /// Sends acks (`nack_delay_ms: None`) or nacks on the stream, or keeps them for the
    /// next one when the stream is broken.
    async fn settle(
        &mut self,
        receipts: &[String],
        nack_delay_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        if let Some(bad) = receipts.iter().find(|receipt| !well_formed(receipt)) {
            return Err(ClientError::Status(tonic::Status::invalid_argument(
                format!("receipt {bad:?} is not `<message_id>:<attempt>`"),
            )));
        }
        let mut chunks = receipts.chunks(MAX_ACKS_PER_MESSAGE);
        if let Some(open) = self.stream.as_mut() {
            for chunk in chunks.by_ref() {
                let sent = send_settle(open, chunk, nack_delay_ms).await;
                // Sent, or (when not) to go with the rest on the next stream.
                keep_unanswered(
                    &mut self.unanswered,
                    &mut self.unanswered_nacks,
                    chunk,
                    nack_delay_ms,
                );
                if !sent {
                    self.stream = None;
                    break;
                }
            }
        }
        for chunk in chunks {
            keep_unanswered(
                &mut self.unanswered,
                &mut self.unanswered_nacks,
                chunk,
                nack_delay_ms,
            );
        }
        Ok(())
    }

    /// The next delivery: messages, ack results or both. Waits for as long as the queue
    /// has nothing (wrap it in a timeout to stop waiting; that is safe). A broken stream
    /// is opened again within the client's retry deadline.
    pub async fn next(&mut self) -> Result<Delivery, ClientError> {
        loop {
            let status = match self.stream.as_mut() {
                None => {
                    self.open().await?;
                    if self.stream.is_some() {
                        continue;
                    }
                    tonic::Status::unavailable("the consume stream closed as it opened")
                }
                Some(open) => {
                    let silent_until = open.heard + SILENCE;
                    match tokio::time::timeout_at(silent_until.into(), open.answers.message()).await
                    {
                        Ok(Ok(Some(answer))) => {
                            open.heard = Instant::now();
                            self.failing_since = None;
                            self.backoff = self.client.config().initial_backoff;
                            if answer.messages.is_empty()
                                && answer.ack_results.is_empty()
                                && answer.nack_results.is_empty()
                            {
                                // A heartbeat: the stream is alive, the queue quiet.
                                continue;
                            }
                            return Ok(self.delivery(answer));
                        }
                        // The node ended the stream (it is stopping): go elsewhere.
                        Ok(Ok(None)) => {
                            tonic::Status::unavailable("the node ended the consume stream")
                        }
                        Ok(Err(status)) => status,
                        Err(_) => tonic::Status::unavailable(format!(
                            "the consume stream was silent for {SILENCE:?}"
                        )),
                    }
                }
            };
            let address = match self.stream.take() {
                Some(open) => open.address,
                None => self.client.address_for(&self.queue),
            };
            if !is_retryable(&status) {
                // The stream was refused: the leader wrote the acks it had read and handed
                // back its deliveries, so acks not answered would be stale or repeats.
                self.unanswered.clear();
                self.unanswered_nacks.clear();
                self.failing_since = None;
                return Err(ClientError::Status(status));
            }
            self.client
                .reroute_queue_after(&self.queue, &address, &status);
            let since = *self.failing_since.get_or_insert_with(Instant::now);
            let elapsed = since.elapsed();
            let config = self.client.config();
            if elapsed >= config.retry_deadline {
                self.failing_since = None;
                return Err(ClientError::RetriesExhausted {
                    attempts: 0,
                    elapsed_ms: elapsed.as_millis() as u64,
                    last: status,
                });
            }
            let pause = self.backoff;
            self.backoff = (self.backoff * 2).min(config.max_backoff);
            tokio::time::sleep(pause).await;
        }
    }

    fn delivery(&mut self, answer: pb::ConsumeResponse) -> Delivery {
        let mut acks = Vec::with_capacity(answer.ack_results.len());
        for result in answer.ack_results {
            let Some(receipt) = self.unanswered.pop_front() else {
                break;
            };
            acks.push((receipt, result));
        }
        let mut nacks = Vec::with_capacity(answer.nack_results.len());
        for result in answer.nack_results {
            let Some((receipt, _)) = self.unanswered_nacks.pop_front() else {
                break;
            };
            nacks.push((receipt, result));
        }
        Delivery {
            messages: answer.messages,
            acks,
            nacks,
        }
    }

    /// Ends the consumer: waits for the results of every ack and nack given (returned as
    /// a delivery without messages), and hands whatever it received and did not
    /// acknowledge out again at once. Acks the stream could not answer go as `AckBatch`
    /// calls, nacks as `Nack` calls.
    pub async fn close(mut self) -> Result<Delivery, ClientError> {
        let mut results = Delivery::default();
        if let Some(open) = self.stream.take() {
            let Open {
                requests,
                mut answers,
                ..
            } = open;
            drop(requests);
            let deadline = self.client.config().attempt_timeout;
            let drained = tokio::time::timeout(deadline, async {
                while let Ok(Some(answer)) = answers.message().await {
                    let settled = self.delivery(answer);
                    results.acks.extend(settled.acks);
                    results.nacks.extend(settled.nacks);
                }
            })
            .await;
            let _ = drained;
        }
        let rest: Vec<String> = self.unanswered.drain(..).collect();
        for chunk in rest.chunks(MAX_ACKS_PER_MESSAGE) {
            let answered = self.client.ack_batch(&self.queue, chunk).await?;
            results.acks.extend(chunk.iter().cloned().zip(answered));
        }
        let rest: Vec<(String, u64)> = self.unanswered_nacks.drain(..).collect();
        for (receipt, delay_ms) in rest {
            let delay = Duration::from_millis(delay_ms);
            let result = match self.client.nack(&self.queue, &receipt, delay).await {
                Ok(_) => pb::AckResult::default(),
                Err(ClientError::Status(status)) => pb::AckResult {
                    code: status.code() as i32,
                    error: status.message().to_string(),
                    already_acked: false,
                },
                Err(error) => return Err(error),
            };
            results.nacks.push((receipt, result));
        }
        Ok(results)
    }
}

/// Keeps acks (`nack_delay_ms: None`) or nacks for their answers, in the order sent.
fn keep_unanswered(
    acks: &mut VecDeque<String>,
    nacks: &mut VecDeque<(String, u64)>,
    receipts: &[String],
    nack_delay_ms: Option<u64>,
) {
    match nack_delay_ms {
        None => acks.extend(receipts.iter().cloned()),
        Some(delay) => nacks.extend(receipts.iter().map(|receipt| (receipt.clone(), delay))),
    }
}

/// Whether `receipt` has the form `<message_id>:<attempt>` the server accepts.
fn well_formed(receipt: &str) -> bool {
    receipt.split_once(':').is_some_and(|(id, attempt)| {
        id.parse::<u64>().is_ok() && attempt.parse::<u32>().is_ok_and(|attempt| attempt > 0)
    })
}

/// Sends one ack message (`nack_delay_ms: None`) or nack message on the stream; false
/// when the stream is gone.
async fn send_settle(open: &mut Open, receipts: &[String], nack_delay_ms: Option<u64>) -> bool {
    let receipts = receipts.to_vec();
    let request = match nack_delay_ms {
        None => pb::consume_request::Request::Ack(pb::ConsumeAck { receipts }),
        Some(delay_ms) => {
            pb::consume_request::Request::Nack(pb::ConsumeNack { receipts, delay_ms })
        }
    };
    let request = pb::ConsumeRequest {
        request: Some(request),
    };
    open.requests.send(request).await.is_ok()
}
