//! Reading messages: `receive`, `consume` and `peek`, and how a message they show prints.

use std::time::Duration;

use clap::Args;
use raftq_client::{Client, ClientError, pb};
use serde_json::json;

use super::output::{Output, out, print};

// No doc comments on these argument structs: clap would apply them to the command, which
// its variant in `MessageCommand` describes.

#[derive(Args, Debug)]
pub(super) struct ReceiveArgs {
    queue: String,
    #[arg(long, default_value_t = 1)]
    max: u32,
    /// Long-poll: wait this long for a message.
    #[arg(long, default_value_t = 0)]
    wait_ms: u64,
    /// Lease length; 0 uses the queue's default.
    #[arg(long, default_value_t = 0)]
    lease_ms: u64,
    /// Acknowledge each message right after receiving it.
    #[arg(long)]
    ack: bool,
    /// Selective receive: only this message id ...
    #[arg(long, default_value_t = 0)]
    message_id: u64,
    /// ... and/or only messages with this correlation id.
    #[arg(long, default_value = "")]
    correlation_id: String,
}

#[derive(Args, Debug)]
pub(super) struct ConsumeArgs {
    queue: String,
    /// Stop after this many messages (0: never).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// Stop once nothing has arrived for this long (0: wait for ever).
    #[arg(long, default_value_t = 0)]
    idle_ms: u64,
    /// Most messages held unacknowledged on the stream.
    #[arg(long, default_value_t = 100)]
    prefetch: u32,
    /// Lease length; 0 uses the queue's default.
    #[arg(long, default_value_t = 0)]
    lease_ms: u64,
}

#[derive(Args, Debug)]
pub(super) struct PeekArgs {
    queue: String,
    #[arg(long, default_value_t = 10)]
    max: u32,
    /// Page on: start after this sequence (the last one shown).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Only this message id ...
    #[arg(long, default_value_t = 0)]
    message_id: u64,
    /// ... and/or only messages with this correlation id.
    #[arg(long, default_value = "")]
    correlation_id: String,
}

pub(super) async fn receive(
    client: &Client,
    args: ReceiveArgs,
    output: Output,
) -> Result<(), ClientError> {
    let lease = (args.lease_ms > 0).then(|| Duration::from_millis(args.lease_ms));
    let messages = client
        .receive_selected(
            &args.queue,
            args.message_id,
            &args.correlation_id,
            args.max,
            Duration::from_millis(args.wait_ms),
            lease,
        )
        .await?;
    if messages.is_empty() && output == Output::Text {
        out("no message");
    }
    for message in messages {
        if args.ack {
            client.ack(&args.queue, &message.receipt).await?;
        }
        print_received(output, &message, args.ack);
    }
    Ok(())
}

pub(super) async fn consume(
    client: &Client,
    args: ConsumeArgs,
    output: Output,
) -> Result<(), ClientError> {
    let (count, idle_ms) = (args.count, args.idle_ms);
    let options = raftq_client::ConsumeOptions {
        prefetch: args.prefetch,
        max_messages: args.prefetch.min(100),
        lease: (args.lease_ms > 0).then(|| Duration::from_millis(args.lease_ms)),
    };
    let mut consumer = client.consume(&args.queue, options).await?;
    let mut printed = 0u64;
    while count == 0 || printed < count {
        let delivery = if idle_ms == 0 {
            consumer.next().await?
        } else {
            match tokio::time::timeout(Duration::from_millis(idle_ms), consumer.next()).await {
                Ok(delivery) => delivery?,
                Err(_) => break,
            }
        };
        refused_acks(&delivery.acks)?;
        let mut receipts = Vec::new();
        for message in delivery.messages {
            if count != 0 && printed == count {
                // Beyond the count: handed back when the consumer closes.
                break;
            }
            print_received(output, &message, true);
            receipts.push(message.receipt);
            printed += 1;
        }
        consumer.ack(&receipts).await?;
    }
    refused_acks(&consumer.close().await?.acks)?;
    if printed == 0 && output == Output::Text {
        out("no message");
    }
    Ok(())
}

pub(super) async fn peek(
    client: &Client,
    args: PeekArgs,
    output: Output,
) -> Result<(), ClientError> {
    let messages = client
        .peek_selected(
            &args.queue,
            args.after,
            args.max,
            args.message_id,
            &args.correlation_id,
        )
        .await?;
    if messages.is_empty() && output == Output::Text {
        out("no message");
    }
    for message in messages {
        let body = String::from_utf8_lossy(&message.body).to_string();
        print(
            output,
            json!({
                "message_id": message.message_id,
                "sequence": message.sequence,
                "body": body,
                "headers": message.headers,
                "state": message.state,
                "deliveries": message.deliveries,
                "enqueued_at_ms": message.enqueued_at_ms,
                "expires_at_ms": message.expires_at_ms,
                "group": message.group,
                "priority": message.priority,
                "properties": properties_json(message.properties.as_ref()),
            }),
            format!(
                "{}  seq={}  {}{}  {}",
                message.message_id,
                message.sequence,
                message.state,
                group_text(&message.group),
                body
            ),
        );
    }
    Ok(())
}

fn properties_json(properties: Option<&pb::MessageProperties>) -> serde_json::Value {
    let properties = properties.cloned().unwrap_or_default();
    json!({
        "label": properties.label,
        "correlation_id": properties.correlation_id,
        "reply_to": properties.reply_to,
        "content_type": properties.content_type,
    })
}

/// Prints one delivered message, as `receive` and `consume` do.
fn print_received(output: Output, message: &pb::ReceivedMessage, acked: bool) {
    let body = String::from_utf8_lossy(&message.body).to_string();
    print(
        output,
        json!({
            "message_id": message.message_id,
            "sequence": message.sequence,
            "body": body,
            "headers": message.headers,
            "receipt": message.receipt,
            "attempt": message.attempt,
            "enqueued_at_ms": message.enqueued_at_ms,
            "lease_expires_at_ms": message.lease_expires_at_ms,
            "expires_at_ms": message.expires_at_ms,
            "group": message.group,
            "priority": message.priority,
            "properties": properties_json(message.properties.as_ref()),
            "acked": acked,
        }),
        format!(
            "{}  receipt={}  attempt={}{}{}  {}",
            message.message_id,
            message.receipt,
            message.attempt,
            group_text(&message.group),
            if acked { "  acked" } else { "" },
            body
        ),
    );
}

/// Fails with the first refused ack of a consume stream (a stale receipt: its lease ended
/// before the ack, and the message may be delivered again).
fn refused_acks(acks: &[(String, pb::AckResult)]) -> Result<(), ClientError> {
    match acks.iter().find(|(_, result)| result.code != 0) {
        Some((receipt, result)) => Err(ClientError::Status(tonic::Status::new(
            tonic::Code::from_i32(result.code),
            format!("ack of {receipt}: {}", result.error),
        ))),
        None => Ok(()),
    }
}

fn group_text(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!("  group={group}")
    }
}
