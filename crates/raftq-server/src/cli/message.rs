//! Message commands: their subcommands, and `ack`, `nack` and `extend` on a delivery.

use std::time::Duration;

use clap::Subcommand;
use raftq_client::{Client, ClientError};
use serde_json::json;

use super::output::{Output, print};
use super::receive::{self, ConsumeArgs, PeekArgs, ReceiveArgs};
use super::send::{self, SendArgs};

#[derive(Subcommand, Debug)]
pub(super) enum MessageCommand {
    /// Send one message.
    Send(Box<SendArgs>),
    /// Receive messages under a lease.
    Receive(ReceiveArgs),
    /// Consume on a consume stream: print each message as it arrives and acknowledge it.
    Consume(ConsumeArgs),
    /// Acknowledge a delivery by its receipt.
    Ack { queue: String, receipt: String },
    /// Release a delivery so it is delivered again (after a delay).
    Nack {
        queue: String,
        receipt: String,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
    },
    /// Take a delivery out of its queue for good: to its dead-letter queue, or discarded.
    Reject {
        queue: String,
        receipt: String,
        /// Why, kept on the dead letter as raftq-dead-letter-detail.
        #[arg(long, default_value = "")]
        detail: String,
    },
    /// Extend a delivery's lease.
    Extend {
        queue: String,
        receipt: String,
        #[arg(long)]
        lease_ms: u64,
    },
    /// Show stored messages in send order without leasing them.
    Peek(PeekArgs),
}

pub(super) async fn run(
    client: &Client,
    command: MessageCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        MessageCommand::Send(args) => send::run(client, *args, output).await?,
        MessageCommand::Receive(args) => receive::receive(client, args, output).await?,
        MessageCommand::Consume(args) => receive::consume(client, args, output).await?,
        MessageCommand::Peek(args) => receive::peek(client, args, output).await?,
        MessageCommand::Ack { queue, receipt } => {
            let acked = client.ack(&queue, &receipt).await?;
            let note = if acked.already_acked {
                " (it was already acknowledged)"
            } else {
                ""
            };
            print(
                output,
                json!({"acked": receipt, "already_acked": acked.already_acked}),
                format!("acked {receipt}{note}"),
            );
        }
        MessageCommand::Nack {
            queue,
            receipt,
            delay_ms,
        } => {
            let nacked = client
                .nack(&queue, &receipt, Duration::from_millis(delay_ms))
                .await?;
            print(
                output,
                json!({"nacked": receipt, "visible_at_ms": nacked.visible_at_ms}),
                format!(
                    "released {receipt}; visible again at {} ms",
                    nacked.visible_at_ms
                ),
            );
        }
        MessageCommand::Reject {
            queue,
            receipt,
            detail,
        } => {
            let rejected = client.reject(&queue, &receipt, &detail).await?;
            let fate = if rejected.dead_lettered {
                "moved to the dead-letter queue"
            } else {
                "discarded (the queue has no dead-letter queue)"
            };
            print(
                output,
                json!({"rejected": receipt, "dead_lettered": rejected.dead_lettered}),
                format!("rejected {receipt}: {fate}"),
            );
        }
        MessageCommand::Extend {
            queue,
            receipt,
            lease_ms,
        } => {
            let extended = client
                .extend_lease(&queue, &receipt, Duration::from_millis(lease_ms))
                .await?;
            print(
                output,
                json!({"receipt": receipt, "lease_expires_at_ms": extended.lease_expires_at_ms}),
                format!(
                    "lease of {receipt} now ends at {} ms",
                    extended.lease_expires_at_ms
                ),
            );
        }
    }
    Ok(())
}
