//! Delivery of the outbound queue's messages by SMTP through a relay. Each message is
//! received under a lease and, by the relay's answer: 2xx acknowledged; 4xx (or no answer)
//! released with a delay that doubles per attempt; 5xx rejected to the dead-letter queue
//! with the relay's reply as the detail. A bridge that dies mid-delivery leaves the lease
//! to run out: the message is delivered again, with the same Message-ID.

mod compose;

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use raftq_client::{Client, ClientError};
use raftq_proto::pb;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use compose::{
    Composed, Composer, MAIL_BCC, MAIL_CC, MAIL_FROM, MAIL_IN_REPLY_TO, MAIL_TO, RAFTQ_MESSAGE_ID,
    RAFTQ_QUEUE, Unsendable,
};

use crate::Error;
use crate::config::{OutboundConfig, RelayTls};

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
    relay: AsyncSmtpTransport<Tokio1Executor>,
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
        let (host, port) = config
            .relay
            .rsplit_once(':')
            .and_then(|(host, port)| {
                Some((host.trim_matches(['[', ']']), port.parse::<u16>().ok()?))
            })
            .ok_or_else(|| {
                Error::Config(format!("outbound relay {:?}: not HOST:PORT", config.relay))
            })?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(port)
            .hello_name(ClientId::Domain(domain.to_string()))
            .timeout(Some(Duration::from_millis(config.lease_ms / 4)))
            .pool_config(PoolConfig::new().max_size(config.concurrency as u32));
        if config.relay_tls != RelayTls::None {
            let mut parameters = TlsParameters::builder(host.to_string());
            if let Some(path) = &config.relay_ca_cert {
                let pem = std::fs::read(path).map_err(|source| Error::Io {
                    what: format!("reading {}", path.display()),
                    source,
                })?;
                let certificate = Certificate::from_pem(&pem)
                    .map_err(|error| Error::Relay(format!("{}: {error}", path.display())))?;
                parameters = parameters.add_root_certificate(certificate);
            }
            let parameters = parameters
                .build_rustls()
                .map_err(|error| Error::Relay(format!("TLS to the relay: {error}")))?;
            builder = builder.tls(match config.relay_tls {
                RelayTls::Tls => Tls::Wrapper(parameters),
                _ => Tls::Required(parameters),
            });
        }
        Ok(Outbound {
            relay: builder.build(),
            domain: domain.to_ascii_lowercase(),
            config,
            client,
        })
    }

    /// Creates the outbound queue with its dead-letter queue when it does not exist.
    pub async fn prepare(&self) -> Result<(), Error> {
        match self.client.get_queue(&self.config.queue).await {
            Ok(_) => Ok(()),
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
            let mut received = 0;
            if room > 0 {
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
            if running.len() == self.config.concurrency || (received == 0 && !running.is_empty()) {
                running.join_next().await;
            }
        }
        while running.join_next().await.is_some() {}
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
            Ok(Composed { envelope, bytes }) => {
                let limit = Duration::from_millis(self.config.lease_ms / 2);
                match tokio::time::timeout(limit, self.relay.send_raw(&envelope, &bytes)).await {
                    Ok(Ok(_)) => Fate::Delivered,
                    Ok(Err(error)) if error.is_permanent() => {
                        Fate::Bounced(format!("smtp: {error}"))
                    }
                    Ok(Err(error)) => Fate::Deferred(format!("smtp: {error}")),
                    Err(_) => Fate::Deferred(format!("the relay did not answer within {limit:?}")),
                }
            }
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
