//! raftq-mail: the bridge between queues and people's mail (the role of MSMQ's Exchange
//! connector), as a client of the cluster like any other.
//!
//! - **Inbound** ([`inbound::Inbound`]): an SMTP server for `QUEUE@DOMAIN`. A mail is
//!   stored in the queue whole (content type `message/rfc822`), keyed by its Message-ID so
//!   that a resent mail is stored once, with Subject as the label, In-Reply-To as the
//!   correlation id and Reply-To as the reply-to queue when it is one of ours; 250 only once
//!   the cluster stored it, 451 when it could not, so the sending server keeps the mail.
//! - **Outbound** ([`outbound::Outbound`]): the messages of one queue (`mail.out`) sent
//!   through a relay; acknowledged on 2xx, released with a growing delay on 4xx, rejected
//!   to the dead-letter queue with the relay's reply on 5xx. The Message-ID derives from
//!   the raftq message id, so a reply's In-Reply-To correlates it with the original.
//!
//! `docs/operations.md` ("The mail bridge") says how to run it; `raftq bridge mail` is the
//! command.

pub mod address;
pub mod config;
mod error;
pub mod inbound;
pub mod outbound;
mod reply;

use std::sync::Arc;
use std::time::Duration;

use raftq_client::Client;
use tokio::sync::watch;

pub use config::{InboundConfig, MailConfig, OutboundConfig, RelayTls};
pub use error::Error;
pub use reply::Reply;

/// Pause between attempts to prepare the outbound queue while the cluster cannot be
/// reached at start.
const PREPARE_RETRY: Duration = Duration::from_secs(2);

/// Both directions, as configured.
pub struct Bridge {
    inbound: Option<Arc<inbound::Inbound>>,
    outbound: Option<Arc<outbound::Outbound>>,
}

impl Bridge {
    pub fn new(config: &MailConfig, client: Client) -> Result<Bridge, Error> {
        let inbound = match &config.inbound {
            Some(inbound) => Some(Arc::new(inbound::Inbound::new(
                inbound.clone(),
                &config.domain,
                client.clone(),
            )?)),
            None => None,
        };
        let outbound = match &config.outbound {
            Some(outbound) => Some(Arc::new(outbound::Outbound::new(
                outbound.clone(),
                &config.domain,
                client,
            )?)),
            None => None,
        };
        Ok(Bridge { inbound, outbound })
    }

    /// Listens and delivers until `stopped` turns true. The SMTP port is bound before
    /// anything else, so a bad address fails at once.
    pub async fn run(self, stopped: watch::Receiver<bool>) -> Result<(), Error> {
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(inbound) = self.inbound {
            let listener = inbound.bind().await?;
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "taking mail");
            }
            tasks.spawn(inbound.serve(listener, stopped.clone()));
        }
        if let Some(outbound) = self.outbound {
            let mut stopped = stopped.clone();
            tasks.spawn(async move {
                loop {
                    match outbound.prepare().await {
                        Ok(()) => break,
                        Err(error) => {
                            tracing::warn!(%error, "preparing the outbound queue failed; trying again")
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(PREPARE_RETRY) => {}
                        _ = stopped.wait_for(|stopped| *stopped) => return,
                    }
                }
                outbound.run(stopped).await;
            });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}
