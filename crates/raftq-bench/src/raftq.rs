//! The raftq target, through the project's own Rust client.

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use raftq_client::{Client, ClientConfig, Code, ConsumeOptions, Message, Transport, pb};

use crate::driver::{Consumer, Driver, Producer, Result};

/// How long a receive waits for a message before returning empty.
const RECEIVE_WAIT: Duration = Duration::from_millis(200);
/// Deliveries a streaming consumer holds, in batches of the receive size: one batch being
/// handled, one on its way.
const PREFETCH_BATCHES: usize = 2;

pub struct Raftq {
    client: Client,
    options: Options,
}

/// Ways of using raftq other than the client's defaults, to compare against them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Consumers acknowledge each batch with its own `AckBatch` before the next receive,
    /// instead of with that receive.
    pub ack_apart: bool,
    /// Single sends are calls of their own instead of sharing a send stream.
    pub unary_sends: bool,
    /// Consumers receive with calls (acks with the next receive) instead of a consume
    /// stream.
    pub receive_calls: bool,
}

impl Raftq {
    pub fn connect(
        addresses: &[String],
        options: Options,
        (transport, token): (Transport, Option<String>),
    ) -> Result<Raftq> {
        let config = ClientConfig {
            stream_sends: !options.unary_sends,
            transport,
            token,
            ..ClientConfig::default()
        };
        Ok(Raftq {
            client: Client::new(addresses, config)?,
            options,
        })
    }
}

impl Driver for Raftq {
    fn create_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            match self.client.delete_queue(queue).await {
                Ok(()) => {}
                Err(error) if error.code() == Some(Code::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
            let options = pb::QueueOptions {
                // Room for the largest backlog scenario.
                max_depth: 10_000_000,
                ..pb::QueueOptions::default()
            };
            self.client.create_queue(queue, options).await?;
            Ok(())
        }
        .boxed()
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move { Ok(self.client.delete_queue(queue).await?) }.boxed()
    }

    fn producer<'a>(
        &'a self,
        queue: &'a str,
        group: Option<String>,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        let producer = RaftqProducer {
            client: self.client.clone(),
            queue: queue.to_string(),
            group,
        };
        async move { Ok(Box::new(producer) as Box<dyn Producer>) }.boxed()
    }

    fn consumer<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            if self.options.receive_calls || self.options.ack_apart {
                let consumer = RaftqConsumer {
                    client: self.client.clone(),
                    queue: queue.to_string(),
                    max: max as u32,
                    receipts: Vec::new(),
                    ack_apart: self.options.ack_apart,
                    unacked: Vec::new(),
                };
                return Ok(Box::new(consumer) as Box<dyn Consumer>);
            }
            let options = ConsumeOptions {
                prefetch: (max * PREFETCH_BATCHES) as u32,
                max_messages: max as u32,
                lease: None,
            };
            let consumer = StreamConsumer {
                consumer: Some(self.client.consume(queue, options).await?),
                receipts: Vec::new(),
            };
            Ok(Box::new(consumer) as Box<dyn Consumer>)
        }
        .boxed()
    }
}

struct RaftqProducer {
    client: Client,
    queue: String,
    group: Option<String>,
}

impl RaftqProducer {
    fn message(&self, body: Bytes) -> Message {
        let message = Message::new(body.to_vec());
        match &self.group {
            Some(group) => message.with_group(group.clone()),
            None => message,
        }
    }
}

impl Producer for RaftqProducer {
    fn send(&mut self, bodies: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        async move {
            if bodies.len() == 1 {
                let body = bodies.into_iter().next().unwrap_or_default();
                self.client.send(&self.queue, self.message(body)).await?;
            } else {
                let messages = bodies.into_iter().map(|body| self.message(body)).collect();
                self.client.send_batch(&self.queue, messages).await?;
            }
            Ok(())
        }
        .boxed()
    }
}

struct RaftqConsumer {
    client: Client,
    queue: String,
    max: u32,
    /// What the last receive delivered.
    receipts: Vec<String>,
    ack_apart: bool,
    /// Handed over by `ack`, for the next receive to acknowledge.
    unacked: Vec<String>,
}

/// The bodies of `messages`; their receipts go to `receipts`, for the ack.
fn bodies(messages: Vec<pb::ReceivedMessage>, receipts: &mut Vec<String>) -> Vec<Bytes> {
    *receipts = messages.iter().map(|m| m.receipt.clone()).collect();
    messages.into_iter().map(|m| Bytes::from(m.body)).collect()
}

fn refused(results: &[pb::AckResult]) -> Result<()> {
    match results.iter().find(|result| result.code != 0) {
        Some(failed) => anyhow::bail!("ack refused: {}", failed.error),
        None => Ok(()),
    }
}

impl RaftqConsumer {
    async fn ack_batch(&self, receipts: &[String]) -> Result<()> {
        let results = match self.client.ack_batch(&self.queue, receipts).await {
            Ok(results) => results,
            // A server from before AckBatch: one ack per message, concurrently.
            Err(error) if error.code() == Some(Code::Unimplemented) => {
                try_join_all(receipts.iter().map(|r| self.client.ack(&self.queue, r))).await?;
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        refused(&results)
    }
}

impl Consumer for RaftqConsumer {
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            // Acks waiting for this receive are dropped only once it has applied them.
            let response = self
                .client
                .ack_and_receive(&self.queue, &self.unacked, self.max, RECEIVE_WAIT, None)
                .await?;
            self.unacked.clear();
            refused(&response.ack_results)?;
            Ok(bodies(response.messages, &mut self.receipts))
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let receipts = std::mem::take(&mut self.receipts);
            if receipts.is_empty() {
                return Ok(());
            }
            if self.ack_apart {
                self.ack_batch(&receipts).await
            } else {
                self.unacked = receipts;
                Ok(())
            }
        }
        .boxed()
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<usize>> {
        async move {
            let receipts = std::mem::take(&mut self.unacked);
            if !receipts.is_empty() {
                self.ack_batch(&receipts).await?;
            }
            Ok(receipts.len())
        }
        .boxed()
    }
}

/// A consumer on a consume stream: the leader keeps it supplied, acks go on the stream.
struct StreamConsumer {
    /// `None` once finished.
    consumer: Option<raftq_client::Consumer>,
    receipts: Vec<String>,
}

fn refused_on_stream(acks: &[(String, pb::AckResult)]) -> Result<()> {
    match acks.iter().find(|(_, result)| result.code != 0) {
        Some((receipt, failed)) => anyhow::bail!("ack of {receipt} refused: {}", failed.error),
        None => Ok(()),
    }
}

impl Consumer for StreamConsumer {
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            let Some(consumer) = self.consumer.as_mut() else {
                anyhow::bail!("the consumer has finished");
            };
            let delivery = match tokio::time::timeout(RECEIVE_WAIT, consumer.next()).await {
                Ok(delivery) => delivery?,
                Err(_) => return Ok(Vec::new()),
            };
            refused_on_stream(&delivery.acks)?;
            Ok(bodies(delivery.messages, &mut self.receipts))
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let receipts = std::mem::take(&mut self.receipts);
            if let Some(consumer) = self.consumer.as_mut() {
                consumer.ack(&receipts).await?;
            }
            Ok(())
        }
        .boxed()
    }

    fn finish(&mut self) -> BoxFuture<'_, Result<usize>> {
        async move {
            let Some(consumer) = self.consumer.take() else {
                return Ok(0);
            };
            let acks = consumer.close().await?.acks;
            refused_on_stream(&acks)?;
            Ok(acks.len())
        }
        .boxed()
    }
}
