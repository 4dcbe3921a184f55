//! Dead-letter commands: `dlq redrive`, moving messages out of a dead-letter queue.

use clap::Subcommand;
use raftq_client::{Client, ClientError};
use serde_json::json;

use super::output::{Output, print};

#[derive(Subcommand, Debug)]
pub(super) enum DlqCommand {
    /// Move messages out of a dead-letter queue, back where each came from (or --to).
    Redrive {
        queue: String,
        /// A message id to move (repeatable); without ids, moves up to --max from the head.
        #[arg(long = "id")]
        ids: Vec<u64>,
        #[arg(long, default_value_t = 0)]
        max: u32,
        /// Destination queue instead of each message's source queue.
        #[arg(long, default_value = "")]
        to: String,
        /// Move everything not under a lease, 1,000 at a time, until none is left.
        #[arg(long, conflicts_with_all = ["ids", "max"])]
        all: bool,
    },
}

pub(super) async fn run(
    client: &Client,
    command: DlqCommand,
    output: Output,
) -> Result<(), ClientError> {
    let DlqCommand::Redrive {
        queue,
        ids,
        max,
        to,
        all,
    } = command;
    let moved = if all {
        redrive_all(client, &queue, &to).await?
    } else {
        client.redrive(&queue, &ids, max, &to).await?
    };
    print(
        output,
        json!({"queue": queue, "moved": moved}),
        format!("moved {moved} messages out of {queue}"),
    );
    Ok(())
}

/// Moves everything not under a lease out of `queue`, 1,000 at a time; answers how many.
async fn redrive_all(client: &Client, queue: &str, to: &str) -> Result<u64, ClientError> {
    // Bounded by what is there now, so a destination that sends messages
    // straight back cannot keep this going.
    let depth = client
        .get_queue(queue)
        .await?
        .stats
        .map_or(0, |stats| stats.depth);
    let mut total = 0;
    for _ in 0..=depth / 1_000 {
        let moved = client.redrive(queue, &[], 1_000, to).await?;
        total += moved;
        if moved == 0 {
            break;
        }
    }
    Ok(total)
}
