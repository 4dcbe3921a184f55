//! The NATS JetStream target at equal durability: an R3 file stream on a three-node
//! cluster started with `jetstream { sync_interval: always }` (each write fsynced before
//! it is acknowledged, see `scripts/peers/nats`), work-queue retention, a durable pull
//! consumer with explicit acks, and every ack confirmed by the server (`double_ack`).

use std::future::IntoFuture;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::future::{BoxFuture, try_join_all};
use futures::{FutureExt, StreamExt};

use crate::driver::{Consumer, Driver, Producer, Result};

const CONSUMER: &str = "bench";
const FETCH_WAIT: Duration = Duration::from_millis(200);

pub struct Nats {
    context: jetstream::Context,
}

impl Nats {
    pub async fn connect(urls: &str) -> Result<Nats> {
        let servers: Vec<&str> = urls.split(',').map(str::trim).collect();
        let client = async_nats::connect(servers).await?;
        Ok(Nats {
            context: jetstream::new(client),
        })
    }
}

fn subject(queue: &str) -> String {
    format!("{queue}.messages")
}

impl Driver for Nats {
    fn create_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            let _ = self.context.delete_stream(queue).await;
            let stream = self
                .context
                .create_stream(stream::Config {
                    name: queue.to_string(),
                    subjects: vec![subject(queue)],
                    num_replicas: 3,
                    storage: stream::StorageType::File,
                    retention: stream::RetentionPolicy::WorkQueue,
                    ..Default::default()
                })
                .await?;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(CONSUMER.to_string()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 100_000,
                    ..Default::default()
                })
                .await?;
            // A new R3 consumer may answer "no responders" for a moment; wait until its
            // replicas report it.
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut consumer = consumer;
            loop {
                match consumer.info().await {
                    Ok(info) if info.cluster.as_ref().is_some_and(|c| c.leader.is_some()) => break,
                    _ if std::time::Instant::now() > deadline => {
                        anyhow::bail!("JetStream consumer for {queue} has no leader after 30 s")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.context.delete_stream(queue).await?;
            Ok(())
        }
        .boxed()
    }

    fn producer<'a>(
        &'a self,
        queue: &'a str,
        _group: Option<String>,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        let producer = NatsProducer {
            context: self.context.clone(),
            subject: subject(queue),
        };
        async move { Ok(Box::new(producer) as Box<dyn Producer>) }.boxed()
    }

    fn consumer<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            let stream = self.context.get_stream(queue).await?;
            let consumer: consumer::PullConsumer = stream
                .get_consumer(CONSUMER)
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            Ok(Box::new(NatsConsumer {
                consumer,
                max,
                taken: Vec::new(),
            }) as Box<dyn Consumer>)
        }
        .boxed()
    }
}

struct NatsProducer {
    context: jetstream::Context,
    subject: String,
}

impl Producer for NatsProducer {
    fn send(&mut self, bodies: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        async move {
            // Publish the whole batch, then wait for every stream acknowledgement.
            let mut acks = Vec::with_capacity(bodies.len());
            for body in bodies {
                acks.push(self.context.publish(self.subject.clone(), body).await?);
            }
            try_join_all(acks.into_iter().map(|ack| ack.into_future())).await?;
            Ok(())
        }
        .boxed()
    }
}

struct NatsConsumer {
    consumer: consumer::PullConsumer,
    max: usize,
    taken: Vec<jetstream::Message>,
}

impl Consumer for NatsConsumer {
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            let mut batch = self
                .consumer
                .fetch()
                .max_messages(self.max)
                .expires(FETCH_WAIT)
                .messages()
                .await?;
            let mut bodies = Vec::new();
            while let Some(message) = batch.next().await {
                let message = message.map_err(|error| anyhow::anyhow!("{error}"))?;
                bodies.push(message.payload.clone());
                self.taken.push(message);
            }
            Ok(bodies)
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            let taken = std::mem::take(&mut self.taken);
            try_join_all(taken.iter().map(|message| message.double_ack()))
                .await
                .map_err(|error| anyhow::anyhow!("{error}"))?;
            Ok(())
        }
        .boxed()
    }
}
