//! Journal commands: `journal replay`, sending journaled copies into a queue again.

use clap::Subcommand;
use raftq_client::{Client, ClientError, Message};
use serde_json::json;

use super::output::{Output, print};

#[derive(Subcommand, Debug)]
pub(super) enum JournalCommand {
    /// Send copies of journaled messages into a queue again, oldest first. Each copy is
    /// sent with the idempotency key `replay-<journal message id>`, so repeating a replay
    /// within the destination's dedup window sends nothing twice.
    Replay {
        /// The queue whose journal to replay (its journal is `<queue>.journal`).
        queue: String,
        /// Destination (default: the queue itself).
        #[arg(long)]
        to: Option<String>,
        /// Start after this journal sequence (see `peek <queue>.journal`).
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        max: u32,
    },
}

pub(super) async fn run(
    client: &Client,
    command: JournalCommand,
    output: Output,
) -> Result<(), ClientError> {
    let JournalCommand::Replay {
        queue,
        to,
        after,
        max,
    } = command;
    let journal = format!("{queue}.journal");
    let to = to.unwrap_or(queue);
    let copies = client.peek(&journal, after, max).await?;
    let last = copies.last().map_or(after, |copy| copy.sequence);
    let messages: Vec<Message> = copies
        .into_iter()
        .map(|copy| {
            let mut headers = copy.headers;
            headers.remove("raftq-source-queue");
            Message {
                body: copy.body,
                headers,
                key: Some(format!("replay-{}", copy.message_id)),
                priority: copy.priority,
                properties: copy.properties.unwrap_or_default(),
                ..Message::default()
            }
        })
        .collect();
    let count = messages.len();
    if count > 0 {
        client.send_batch(&to, messages).await?;
    }
    print(
        output,
        json!({"journal": journal, "to": to, "replayed": count, "last_sequence": last}),
        format!(
            "replayed {count} messages from {journal} into {to} (continue with --after {last})"
        ),
    );
    Ok(())
}
