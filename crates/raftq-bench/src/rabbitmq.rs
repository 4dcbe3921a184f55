//! The RabbitMQ target at equal durability: quorum queues (replicated by Raft on the
//! three nodes of `scripts/peers/rabbitmq`, fsynced before a publish is confirmed),
//! persistent messages, publisher confirms, and manual consumer acks. Each producer and
//! consumer has its own connection and channel.

use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, try_join_all};
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::driver::{Consumer, Driver, Producer, Result};

const RECEIVE_WAIT: Duration = Duration::from_millis(200);

pub struct RabbitMq {
    uri: String,
    admin: Channel,
    _connection: Connection,
}

async fn channel(uri: &str) -> Result<(Connection, Channel)> {
    let connection = Connection::connect(uri, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    Ok((connection, channel))
}

impl RabbitMq {
    pub async fn connect(uri: &str) -> Result<RabbitMq> {
        let (connection, admin) = channel(uri).await?;
        Ok(RabbitMq {
            uri: uri.to_string(),
            admin,
            _connection: connection,
        })
    }
}

impl Driver for RabbitMq {
    fn create_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.admin
                .queue_delete(queue, QueueDeleteOptions::default())
                .await?;
            let mut arguments = FieldTable::default();
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            self.admin
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    arguments,
                )
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn delete_queue<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            self.admin
                .queue_delete(queue, QueueDeleteOptions::default())
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn producer<'a>(
        &'a self,
        queue: &'a str,
        _group: Option<String>,
    ) -> BoxFuture<'a, Result<Box<dyn Producer>>> {
        async move {
            let (connection, channel) = channel(&self.uri).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok(Box::new(RabbitProducer {
                channel,
                queue: queue.to_string(),
                _connection: connection,
            }) as Box<dyn Producer>)
        }
        .boxed()
    }

    fn consumer<'a>(
        &'a self,
        queue: &'a str,
        max: usize,
    ) -> BoxFuture<'a, Result<Box<dyn Consumer>>> {
        async move {
            let (connection, channel) = channel(&self.uri).await?;
            // Two batches unacknowledged, as raftq's consume stream holds.
            channel
                .basic_qos(
                    (2 * max).min(usize::from(u16::MAX)) as u16,
                    BasicQosOptions::default(),
                )
                .await?;
            let consumer = channel
                .basic_consume(
                    queue,
                    "",
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Box::new(RabbitConsumer {
                channel,
                consumer,
                max,
                last_tag: None,
                _connection: connection,
            }) as Box<dyn Consumer>)
        }
        .boxed()
    }
}

struct RabbitProducer {
    channel: Channel,
    queue: String,
    _connection: Connection,
}

impl Producer for RabbitProducer {
    fn send(&mut self, bodies: Vec<Bytes>) -> BoxFuture<'_, Result<()>> {
        async move {
            let mut confirms = Vec::with_capacity(bodies.len());
            for body in bodies {
                confirms.push(
                    self.channel
                        .basic_publish(
                            "",
                            &self.queue,
                            BasicPublishOptions::default(),
                            &body,
                            // Persistent.
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?,
                );
            }
            for confirmation in try_join_all(confirms).await? {
                if !confirmation.is_ack() {
                    anyhow::bail!("publish not confirmed: {confirmation:?}");
                }
            }
            Ok(())
        }
        .boxed()
    }
}

struct RabbitConsumer {
    channel: Channel,
    consumer: lapin::Consumer,
    max: usize,
    last_tag: Option<u64>,
    _connection: Connection,
}

impl Consumer for RabbitConsumer {
    fn receive(&mut self) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            let mut bodies = Vec::new();
            let first = match tokio::time::timeout(RECEIVE_WAIT, self.consumer.next()).await {
                Ok(Some(delivery)) => delivery?,
                Ok(None) => anyhow::bail!("the consumer was cancelled"),
                Err(_) => return Ok(bodies),
            };
            self.last_tag = Some(first.delivery_tag);
            bodies.push(Bytes::from(first.data));
            while bodies.len() < self.max {
                match self.consumer.next().now_or_never() {
                    Some(Some(delivery)) => {
                        let delivery = delivery?;
                        self.last_tag = Some(delivery.delivery_tag);
                        bodies.push(Bytes::from(delivery.data));
                    }
                    _ => break,
                }
            }
            Ok(bodies)
        }
        .boxed()
    }

    fn ack(&mut self) -> BoxFuture<'_, Result<()>> {
        async move {
            if let Some(tag) = self.last_tag.take() {
                // One ack covers every delivery up to this tag on this channel.
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true })
                    .await?;
            }
            Ok(())
        }
        .boxed()
    }
}
