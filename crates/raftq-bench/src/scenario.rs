//! Runs one load against one target: producers (each with a window of requests in flight)
//! and consumers spread over a set of queues, until a message budget or a duration is
//! used up and the consumers have drained what was sent.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::{Driver, Result};
use crate::stats::{Counters, Percentiles, Progress, histogram};

/// Bytes at the start of every body that carry its send time.
const STAMP_BYTES: usize = 8;

#[derive(Debug, Clone, Serialize)]
pub struct Load {
    pub queues: usize,
    /// Producers per queue.
    pub producers: usize,
    /// Requests each producer keeps in flight.
    pub window: usize,
    /// Messages per send request.
    pub batch: usize,
    /// Consumers per queue (0: produce only).
    pub consumers: usize,
    /// Messages per receive.
    pub receive_max: usize,
    /// Body bytes.
    pub size: usize,
    /// raftq only: each producer sends in its own message group.
    pub groups: bool,
    /// Messages to send in all; `None`: send for `duration`.
    pub messages: Option<u64>,
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Messages per second across all producers; `None`: as fast as they can.
    pub rate: Option<f64>,
    /// Messages already in the queues that consumers must drain too.
    pub preloaded: u64,
    /// How long consumers may take to drain once producers are done.
    #[serde(serialize_with = "seconds")]
    pub drain_limit: Duration,
    /// Longest one send, receive or ack may take. A target that does not answer within it
    /// is counted as failing: that producer or consumer stops, and the scenario ends
    /// instead of hanging the suite.
    #[serde(serialize_with = "seconds")]
    pub call_limit: Duration,
}

fn seconds<S: serde::Serializer>(
    duration: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(duration.as_secs_f64())
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Measured {
    pub sent: u64,
    pub received: u64,
    pub errors: u64,
    pub produce_seconds: f64,
    pub consume_seconds: f64,
    pub produce_msgs_per_s: f64,
    pub produce_mib_per_s: f64,
    pub consume_msgs_per_s: f64,
    /// Producer request: from send to the target's acknowledgement.
    pub send_to_ack: Percentiles,
    /// Per message: from send to a consumer receiving it.
    pub send_to_receive: Percentiles,
    /// Consumers stopped at `drain_limit` with messages left.
    pub drain_incomplete: bool,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// A body of `size` bytes: the send time, then bytes of its own xorshift stream. Every
/// body is random and unlike every other, so no target gains from compressing bodies,
/// alone or together (bodies cut from one shared buffer compress well side by side: LZ4
/// finds the overlaps).
fn body(size: usize) -> Bytes {
    static SEED: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let size = size.max(STAMP_BYTES);
    let stamp = base().elapsed().as_micros() as u64;
    // splitmix64 of a counter: a well-mixed, never-zero start for each body's stream.
    let mut state = SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    state = (state ^ (state >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    state = (state ^ (state >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    state = (state ^ (state >> 31)) | 1;
    let mut body = Vec::with_capacity(size + 8);
    body.extend_from_slice(&stamp.to_le_bytes());
    while body.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        body.extend_from_slice(&state.to_le_bytes());
    }
    body.truncate(size);
    Bytes::from(body)
}

fn age_micros(body: &[u8]) -> Option<u64> {
    let stamp = u64::from_le_bytes(body.get(..STAMP_BYTES)?.try_into().ok()?);
    (base().elapsed().as_micros() as u64).checked_sub(stamp)
}

/// Hands out the message budget in batches; `None` once it is used up or time is over.
struct Budget {
    remaining: Option<AtomicU64>,
    deadline: Instant,
    /// Paced sends: messages per second across all producers (None: as fast as possible).
    rate: Option<f64>,
    started: Instant,
    claimed: AtomicU64,
}

impl Budget {
    /// Like [`Budget::claim`], but with a rate, waits until the batch is due.
    async fn take(&self, batch: u64) -> Option<u64> {
        let count = self.claim(batch)?;
        if let Some(rate) = self.rate {
            let before = self.claimed.fetch_add(count, Ordering::Relaxed);
            let due = self.started + Duration::from_secs_f64(before as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            if self.remaining.is_none() && Instant::now() >= self.deadline {
                return None;
            }
        }
        Some(count)
    }

    fn claim(&self, batch: u64) -> Option<u64> {
        match &self.remaining {
            Some(remaining) => remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                    (left > 0).then(|| left - left.min(batch))
                })
                .ok()
                .map(|left| left.min(batch)),
            None => (Instant::now() < self.deadline).then_some(batch),
        }
    }
}

/// Longest a target may take to accept a connection or to create a queue, a producer or
/// a consumer.
const SETUP_LIMIT: Duration = Duration::from_secs(60);

/// A setup step of a target, failed if it does not finish within [`SETUP_LIMIT`]: a peer
/// that stops answering ends the scenario instead of hanging the suite.
pub async fn within_setup_limit<T>(
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(SETUP_LIMIT, step).await.map_err(|_| {
        anyhow::anyhow!("the target did not answer a setup step within {SETUP_LIMIT:?}")
    })?
}

/// Why a send, receive or ack did not succeed.
enum CallError {
    /// No answer within the call limit: the target is not answering.
    Unanswered,
    /// The target answered with an error.
    Failed(anyhow::Error),
}

use CallError::{Failed, Unanswered};

async fn within_call_limit<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T>>,
) -> std::result::Result<T, CallError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failed(error)),
        Err(_) => Err(Unanswered),
    }
}

pub async fn run(
    driver: Arc<dyn Driver>,
    label: &str,
    queues: &[String],
    load: &Load,
) -> Result<Measured> {
    let counters = Arc::new(Counters::default());
    let producers_done = Arc::new(AtomicBool::new(load.producers == 0));
    // Connect everything before the clock starts.
    let mut producer_handles = Vec::new();
    for (q, queue) in queues.iter().enumerate() {
        for p in 0..load.producers {
            for _ in 0..load.window.max(1) {
                let group = load.groups.then(|| format!("q{q}-p{p}"));
                producer_handles.push(within_setup_limit(driver.producer(queue, group)).await?);
            }
        }
    }
    let mut consumer_handles = Vec::new();
    for queue in queues {
        for _ in 0..load.consumers {
            consumer_handles
                .push(within_setup_limit(driver.consumer(queue, load.receive_max)).await?);
        }
    }
    let progress = Progress::start(label.to_string(), counters.clone());
    let started = Instant::now();
    let budget = Arc::new(Budget {
        remaining: load.messages.map(AtomicU64::new),
        deadline: started + load.duration,
        rate: load.rate,
        started,
        claimed: AtomicU64::new(0),
    });
    let mut producers = Vec::new();
    for mut producer in producer_handles {
        let (counters, budget, size, batch, call_limit) = (
            counters.clone(),
            budget.clone(),
            load.size,
            load.batch as u64,
            load.call_limit,
        );
        producers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            while let Some(count) = budget.take(batch).await {
                let bodies = (0..count).map(|_| body(size)).collect();
                let begin = Instant::now();
                match within_call_limit(call_limit, producer.send(bodies)).await {
                    Ok(()) => {
                        let _ = latencies.record(begin.elapsed().as_micros() as u64);
                        counters.sent.fetch_add(count, Ordering::Relaxed);
                    }
                    Err(Unanswered) => {
                        counters.count_error(&format!("send: no answer within {call_limit:?}"));
                        break;
                    }
                    Err(Failed(error)) => counters.count_error(&format!("send failed: {error:#}")),
                }
            }
            latencies
        }));
    }
    let mut consumers = Vec::new();
    for mut consumer in consumer_handles {
        let (counters, producers_done) = (counters.clone(), producers_done.clone());
        let (preloaded, drain_limit, call_limit) =
            (load.preloaded, load.drain_limit, load.call_limit);
        consumers.push(tokio::spawn(async move {
            let mut latencies = histogram();
            let mut drain_deadline: Option<Instant> = None;
            let mut last_ack = Instant::now();
            loop {
                if producers_done.load(Ordering::Relaxed) {
                    if counters.received() >= counters.sent() + preloaded {
                        break;
                    }
                    let deadline =
                        *drain_deadline.get_or_insert_with(|| Instant::now() + drain_limit);
                    if Instant::now() > deadline {
                        return (latencies, last_ack, true);
                    }
                }
                let bodies = match within_call_limit(call_limit, consumer.receive()).await {
                    Ok(bodies) => bodies,
                    Err(Unanswered) => {
                        counters.count_error(&format!("receive: no answer within {call_limit:?}"));
                        return (latencies, last_ack, true);
                    }
                    Err(Failed(error)) => {
                        counters.count_error(&format!("receive failed: {error:#}"));
                        continue;
                    }
                };
                if bodies.is_empty() {
                    continue;
                }
                for body in &bodies {
                    if let Some(age) = age_micros(body) {
                        let _ = latencies.record(age.max(1));
                    }
                }
                match within_call_limit(call_limit, consumer.ack()).await {
                    Ok(()) => {
                        counters
                            .received
                            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
                        last_ack = Instant::now();
                    }
                    Err(Unanswered) => {
                        counters.count_error(&format!("ack: no answer within {call_limit:?}"));
                        return (latencies, last_ack, true);
                    }
                    Err(Failed(error)) => counters.count_error(&format!("ack failed: {error:#}")),
                }
            }
            match within_call_limit(call_limit, consumer.finish()).await {
                Ok(0) => {}
                Ok(_) => last_ack = Instant::now(),
                Err(Unanswered) => {
                    counters.count_error(&format!("last ack: no answer within {call_limit:?}"));
                    return (latencies, last_ack, true);
                }
                Err(Failed(error)) => counters.count_error(&format!("last ack failed: {error:#}")),
            }
            (latencies, last_ack, false)
        }));
    }
    let mut send_to_ack = histogram();
    for producer in producers {
        send_to_ack.add(producer.await?)?;
    }
    let produce_seconds = started.elapsed().as_secs_f64();
    producers_done.store(true, Ordering::Relaxed);
    let mut send_to_receive: Histogram<u64> = histogram();
    let mut consume_end = started;
    let mut drain_incomplete = false;
    for consumer in consumers {
        let (latencies, last_ack, incomplete) = consumer.await?;
        send_to_receive.add(latencies)?;
        consume_end = consume_end.max(last_ack);
        drain_incomplete |= incomplete;
    }
    progress.finish().await;
    let consume_seconds = consume_end.duration_since(started).as_secs_f64();
    let (sent, received) = (counters.sent(), counters.received());
    let per_s = |count: u64, seconds: f64| {
        if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        }
    };
    Ok(Measured {
        sent,
        received,
        errors: counters.errors(),
        produce_seconds,
        consume_seconds,
        produce_msgs_per_s: per_s(sent, produce_seconds),
        produce_mib_per_s: per_s(sent, produce_seconds) * load.size as f64 / (1024.0 * 1024.0),
        consume_msgs_per_s: per_s(received, consume_seconds),
        send_to_ack: Percentiles::of(&send_to_ack),
        send_to_receive: Percentiles::of(&send_to_receive),
        drain_incomplete,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use futures::FutureExt;
    use futures::future::BoxFuture;

    use crate::driver::{Consumer, Driver, Producer, Result};

    /// A target that takes queues and hands out producers and consumers, but never answers
    /// a send, a receive or an ack.
    struct Silent;

    impl Driver for Silent {
        fn create_queue<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<()>> {
            async { Ok(()) }.boxed()
        }
        fn delete_queue<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<()>> {
            async { Ok(()) }.boxed()
        }
        fn producer<'a>(
            &'a self,
            _: &'a str,
            _: Option<String>,
        ) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
            async { Ok(Box::new(Silent) as Box<dyn Producer>) }.boxed()
        }
        fn consumer<'a>(
            &'a self,
            _: &'a str,
            _: usize,
        ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
            async { Ok(Box::new(Silent) as Box<dyn Consumer>) }.boxed()
        }
    }

    impl Producer for Silent {
        fn send(&mut self, _: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
            futures::future::pending().boxed()
        }
    }

    impl Consumer for Silent {
        fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
            futures::future::pending().boxed()
        }
        fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
            futures::future::pending().boxed()
        }
    }

    fn load(producers: usize, consumers: usize) -> super::Load {
        super::Load {
            queues: 1,
            producers,
            window: 2,
            batch: 1,
            consumers,
            receive_max: 10,
            size: 64,
            groups: false,
            messages: Some(100),
            duration: Duration::from_secs(600),
            rate: None,
            preloaded: if producers == 0 { 10 } else { 0 },
            drain_limit: Duration::from_secs(600),
            call_limit: Duration::from_millis(50),
        }
    }

    #[tokio::test]
    async fn producers_of_a_target_that_stops_answering_end_with_an_error_each() {
        let queues = ["q".to_string()];
        let measured = tokio::time::timeout(
            Duration::from_secs(30),
            super::run(Arc::new(Silent), "silent", &queues, &load(3, 0)),
        )
        .await
        .expect("the scenario ends although no send is answered")
        .expect("the scenario reports its figures");
        assert_eq!(measured.sent, 0);
        // Each of the 3 x 2 producers gave up after its first unanswered send.
        assert_eq!(measured.errors, 6);
    }

    #[tokio::test]
    async fn a_drain_from_a_target_that_stops_answering_ends_incomplete() {
        let queues = ["q".to_string()];
        let measured = tokio::time::timeout(
            Duration::from_secs(30),
            super::run(Arc::new(Silent), "silent", &queues, &load(0, 2)),
        )
        .await
        .expect("the drain ends although no receive is answered")
        .expect("the scenario reports its figures");
        assert_eq!(measured.received, 0);
        assert_eq!(measured.errors, 2);
        assert!(measured.drain_incomplete);
    }

    #[test]
    fn bodies_have_the_size_asked_for_and_share_no_bytes_a_compressor_could_reuse() {
        // Any run of 8 bytes (past the send time) found twice among many bodies would let
        // LZ4 store the second copy as a reference; random 8-byte runs never repeat.
        let mut seen = HashSet::new();
        for _ in 0..1_000 {
            let body = super::body(1024);
            assert_eq!(body.len(), 1024);
            for window in body[super::STAMP_BYTES..].windows(8) {
                assert!(seen.insert(window.to_vec()), "a repeated run of bytes");
            }
        }
        assert_eq!(super::body(3).len(), super::STAMP_BYTES);
    }
}
