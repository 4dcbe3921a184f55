//! Delivery of the outbound queue's messages by SMTP through a relay. Each message is
//! received under a lease and, by the relay's answer: 2xx acknowledged; 4xx (or no answer)
//! released with a delay that doubles per attempt; 5xx rejected to the dead-letter queue
//! with the relay's reply as the detail. A bridge that dies mid-delivery leaves the lease
//! to run out: the message is delivered again, with the same Message-ID.

mod compose;
mod relay;

use std::sync::Arc;
use std::time::Duration;

use raftq_client::{Client, ClientError};
use raftq_proto::pb;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use compose::{
    Composed, Composer, MAIL_BCC, MAIL_CC, MAIL_FROM, MAIL_IN_REPLY_TO, MAIL_TO, RAFTQ_MESSAGE_ID,
    RAFTQ_QUEUE, Unsendable,
};
pub use relay::{Relay, SendError};

use crate::Error;
use crate::config::OutboundConfig;

/// The longest a receive waits for a message.
const POLL: Duration = Duration::from_secs(5);
/// Pause after the cluster failed a receive (it retries within its own deadline first).
const CLUSTER_PAUSE: Duration = Duration::from_secs(1);
/// The longest detail kept with a rejected message (the cluster's limit).
const MAX_DETAIL: usize = 1_024;

pub struct Outbound {
    config: OutboundConfig,
    domain: String,
    client: Client,
    relay: Relay,
}

/// What became of one message.
#[derive(Debug)]
enum Fate {
    Delivered,
    Deferred(String),
    Bounced(String),
}

impl Outbound {
    pub fn new(config: OutboundConfig, domain: &str, client: Client) -> Result<Outbound, Error> {
        let trust = match &config.relay_ca_cert {
            Some(path) => raftq_tls::ClientTls::from_files(path, None)?,
            None => raftq_tls::ClientTls::public_roots()?,
        };
        let relay = Relay::new(
            &config.relay,
            config.relay_tls,
            &trust,
            domain,
            // The whole exchange; the ack after it has the rest of the lease.
            Duration::from_millis(config.lease_ms / 2),
            config.concurrency,
        )?;
        Ok(Outbound {
            relay,
            domain: domain.to_ascii_lowercase(),
            config,
            client,
        })
    }

    /// Creates the outbound queue with its dead-letter queue when it does not exist.
    pub async fn prepare(&self) -> Result<(), Error> {
        match self.client.get_queue(&self.config.queue).await {
            Ok(queue) => {
                if queue
                    .options
                    .is_none_or(|options| options.dead_letter_queue.is_empty())
                {
                    tracing::warn!(
                        queue = %self.config.queue,
                        "the outbound queue has no dead-letter queue: mail the relay refuses \
                         for good will be discarded, not kept; give it one"
                    );
                }
                Ok(())
            }
            Err(error) if error.code() == Some(tonic::Code::NotFound) => {
                let options = pb::QueueOptions {
                    dead_letter_queue: format!("{}.dlq", self.config.queue),
                    ..pb::QueueOptions::default()
                };
                match self.client.create_queue(&self.config.queue, options).await {
                    Ok(_) => Ok(()),
                    Err(error) if error.code() == Some(tonic::Code::AlreadyExists) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Delivers until `stopped` turns true, then finishes the deliveries under way.
    pub async fn run(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let mut running = JoinSet::new();
        let lease = Duration::from_millis(self.config.lease_ms);
        while !*stopped.borrow() {
            let room = self.config.concurrency - running.len();
            // Refill in batches: a receive per finished delivery would cost a log write
            // per message and hold the loop for its round trip.
            let refill = running.is_empty() || room >= self.refill_at();
            let mut received = 0;
            if refill {
                let wait = if running.is_empty() {
                    POLL
                } else {
                    Duration::ZERO
                };
                let receive =
                    self.client
                        .receive(&self.config.queue, room as u32, wait, Some(lease));
                let answer = tokio::select! {
                    answer = receive => answer,
                    _ = stopped.wait_for(|stopped| *stopped) => break,
                };
                match answer {
                    Ok(messages) => {
                        received = messages.len();
                        for message in messages {
                            let outbound = self.clone();
                            running.spawn(async move { outbound.deliver(message).await });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, queue = %self.config.queue, "receiving mail to send failed");
                        tokio::time::sleep(CLUSTER_PAUSE).await;
                    }
                }
            }
            if !running.is_empty()
                && (!refill || received == 0 || running.len() == self.config.concurrency)
            {
                running.join_next().await;
            }
        }
        while running.join_next().await.is_some() {}
    }

    /// How much room (deliveries finished) makes the loop receive again: a quarter of
    /// the concurrency.
    fn refill_at(&self) -> usize {
        (self.config.concurrency / 4).max(1)
    }

    /// Sends one message and settles it by the relay's answer.
    async fn deliver(&self, message: pb::ReceivedMessage) {
        let composer = Composer {
            domain: &self.domain,
            from: &self.config.from,
            queue: &self.config.queue,
        };
        let fate = match composer.compose(&message) {
            Err(Unsendable(reason)) => Fate::Bounced(reason),
            Ok(Composed { envelope, bytes }) => match self.relay.send(&envelope, &bytes).await {
                Ok(()) => Fate::Delivered,
                Err(SendError::Permanent(reply)) => Fate::Bounced(reply),
                Err(SendError::Transient(reason)) => Fate::Deferred(reason),
            },
        };
        let queue = &self.config.queue;
        let receipt = &message.receipt;
        let settled = match &fate {
            Fate::Delivered => {
                metrics::counter!("raftq_mail_outbound_delivered_total").increment(1);
                self.client.ack(queue, receipt).await.map(|_| ())
            }
            Fate::Deferred(reason) => {
                let delay = self.config.retry_delay(message.attempt);
                metrics::counter!("raftq_mail_outbound_deferred_total").increment(1);
                tracing::info!(
                    message_id = message.message_id,
                    attempt = message.attempt,
                    ?delay,
                    reason,
                    "delivery deferred"
                );
                self.client.nack(queue, receipt, delay).await.map(|_| ())
            }
            Fate::Bounced(reason) => {
                metrics::counter!("raftq_mail_outbound_bounced_total").increment(1);
                tracing::warn!(
                    message_id = message.message_id,
                    reason,
                    "delivery failed for good; dead-lettered"
                );
                self.client
                    .reject(queue, receipt, bounded(reason))
                    .await
                    .map(|_| ())
            }
        };
        if let Err(error) = settled {
            settle_failed(&message, &fate, &error);
        }
    }
}

/// The message's lease will run out and it will be delivered again (a delivered one then
/// twice, with the same Message-ID).
fn settle_failed(message: &pb::ReceivedMessage, fate: &Fate, error: &ClientError) {
    metrics::counter!("raftq_mail_outbound_settle_failures_total").increment(1);
    tracing::warn!(message_id = message.message_id, ?fate, %error, "could not settle a delivery; it will be tried again when its lease ends");
}

fn bounded(text: &str) -> &str {
    if text.len() <= MAX_DETAIL {
        return text;
    }
    let mut end = MAX_DETAIL;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
