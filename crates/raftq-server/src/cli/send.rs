//! `send`: its flags, the message they make, and what a send prints.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use raftq_client::{Client, ClientError, Message, pb};
use serde_json::json;

use super::output::{Output, print};
use super::read_body;

// No doc comment: clap would apply it to `send`, which its variant in `MessageCommand`
// describes.
#[derive(Args, Debug)]
pub(super) struct SendArgs {
    queue: String,
    /// The body as text.
    #[arg(
        long,
        required_unless_present = "body_file",
        conflicts_with = "body_file"
    )]
    body: Option<String>,
    /// Read the body from a file (`-` for standard input), as bytes.
    #[arg(long)]
    body_file: Option<PathBuf>,
    /// Idempotency key (generated when absent).
    #[arg(long)]
    key: Option<String>,
    /// A header as KEY=VALUE (repeatable).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    #[command(flatten)]
    delivery: SendDelivery,
    #[command(flatten)]
    properties: SendProperties,
}

/// How a sent message is delivered.
#[derive(Args, Debug)]
struct SendDelivery {
    /// Message group: strict send order, one message in flight at a time.
    #[arg(long, default_value = "")]
    group: String,
    /// 0 (lowest, default) to 7; orders messages without a group.
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Not delivered before this many milliseconds have passed.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Time to be received; 0 takes the queue's default.
    #[arg(long, default_value_t = 0)]
    ttl_ms: u64,
    /// Post acknowledgement messages about this message to this queue.
    #[arg(long, default_value = "")]
    ack_queue: String,
    /// Ask for a "consumed" acknowledgement (with --ack-queue).
    #[arg(long)]
    ack_positive: bool,
    /// Ask for an acknowledgement when it expires or is dead-lettered (with --ack-queue).
    #[arg(long)]
    ack_negative: bool,
    /// The message must reach the queue within this many ms from now (0: no limit).
    #[arg(long, default_value_t = 0)]
    time_to_reach_ms: u64,
}

/// Message properties, carried to the receiver unchanged.
#[derive(Args, Debug)]
struct SendProperties {
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long, default_value = "")]
    correlation_id: String,
    /// Queue a receiver should answer to.
    #[arg(long, default_value = "")]
    reply_to: String,
    #[arg(long, default_value = "")]
    content_type: String,
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

pub(super) async fn run(
    client: &Client,
    args: SendArgs,
    output: Output,
) -> Result<(), ClientError> {
    let body = match (args.body, args.body_file) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(path)) => read_body(&path).map_err(|error| {
            ClientError::Status(tonic::Status::invalid_argument(format!(
                "reading the body from {}: {error}",
                path.display()
            )))
        })?,
        (None, None) => Vec::new(),
    };
    let (delivery, properties) = (args.delivery, args.properties);
    let mut message = Message {
        body,
        headers: args.headers.into_iter().collect(),
        key: args.key,
        group: delivery.group,
        priority: delivery.priority,
        delay: Duration::from_millis(delivery.delay_ms),
        ttl: Duration::from_millis(delivery.ttl_ms),
        ack_queue: delivery.ack_queue,
        ack_positive: delivery.ack_positive,
        ack_negative: delivery.ack_negative,
        properties: pb::MessageProperties {
            label: properties.label,
            correlation_id: properties.correlation_id,
            reply_to: properties.reply_to,
            content_type: properties.content_type,
        },
        ..Message::default()
    };
    if delivery.time_to_reach_ms > 0 {
        message = message.with_time_to_reach(Duration::from_millis(delivery.time_to_reach_ms));
    }
    let sent = client.send(&args.queue, message).await?;
    // An agent stores the message and answers before the cluster has given it an id.
    let text = if sent.message_id == 0 {
        "stored by the agent: it goes to the cluster when the cluster is reachable".to_string()
    } else {
        format!(
            "sent message {} (sequence {}){}{}",
            sent.message_id,
            sent.sequence,
            if sent.duplicate {
                ", duplicate of an earlier send"
            } else {
                ""
            },
            if sent.expired {
                "; it arrived after its time to reach the queue and expired"
            } else {
                ""
            }
        )
    };
    print(
        output,
        json!({"message_id": sent.message_id, "sequence": sent.sequence, "duplicate": sent.duplicate, "expired": sent.expired}),
        text,
    );
    Ok(())
}
