//! Queue commands: `queue create`, `get`, `list`, `delete`, `purge`; how a queue prints.

use clap::{Args, Subcommand, ValueEnum};
use raftq_client::{Client, ClientError, pb};
use serde_json::json;

use super::output::{Output, print};

#[derive(Subcommand, Debug)]
pub(super) enum QueueCommand {
    Create(CreateArgs),
    Get { name: String },
    List,
    Delete { name: String },
    Purge { name: String },
}

// No doc comment: clap would make it the description of `queue create`, which has none.
#[derive(Args, Debug)]
pub(super) struct CreateArgs {
    name: String,
    #[arg(long, default_value_t = 0)]
    dedup_window_ms: u64,
    #[arg(long, default_value_t = 0)]
    lease_ms: u64,
    #[arg(long, default_value_t = 0)]
    max_delivery_count: u32,
    #[arg(long, default_value_t = 0)]
    max_message_bytes: u64,
    #[arg(long, default_value_t = 0)]
    max_depth: u64,
    /// Queue that takes messages after max-delivery-count deliveries.
    #[arg(long, default_value = "")]
    dead_letter_queue: String,
    /// Also dead-letter messages whose time to be received ran out.
    #[arg(long)]
    dead_letter_expired: bool,
    /// Time to be received for messages that name none (0: never).
    #[arg(long, default_value_t = 0)]
    default_ttl_ms: u64,
    /// Most bytes the queue holds (0: no byte limit).
    #[arg(long, default_value_t = 0)]
    max_bytes: u64,
    /// When full: `reject` sends, or `dead-letter-oldest` to make room.
    #[arg(long, value_enum, default_value = "reject")]
    overflow: OverflowArg,
    /// Keep copies of consumed messages in `<name>.journal`.
    #[arg(long)]
    journal: bool,
    /// How long journal copies are kept (0: 24 h).
    #[arg(long, default_value_t = 0)]
    journal_retention_ms: u64,
    /// Most journal copies kept (0: 100000).
    #[arg(long, default_value_t = 0)]
    journal_max_messages: u64,
    /// Place the queue in the data group of this queue, so that one transaction may
    /// span both.
    #[arg(long, default_value = "")]
    colocate_with: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OverflowArg {
    Reject,
    DeadLetterOldest,
}

pub(super) async fn run(
    client: &Client,
    command: QueueCommand,
    output: Output,
) -> Result<(), ClientError> {
    match command {
        QueueCommand::Create(args) => {
            let colocate_with = args.colocate_with.clone();
            let (name, options) = args.into_request();
            let queue = client
                .create_queue_beside(&name, options, &colocate_with)
                .await?;
            print(
                output,
                queue_json(&queue),
                format!("created {}", queue_text(&queue)),
            );
        }
        QueueCommand::Get { name } => {
            let queue = client.get_queue(&name).await?;
            print(output, queue_json(&queue), queue_text(&queue));
        }
        QueueCommand::List => {
            for queue in client.list_queues().await? {
                print(output, queue_json(&queue), queue_text(&queue));
            }
        }
        QueueCommand::Delete { name } => {
            client.delete_queue(&name).await?;
            print(output, json!({"deleted": name}), format!("deleted {name}"));
        }
        QueueCommand::Purge { name } => {
            let removed = client.purge_queue(&name).await?;
            print(
                output,
                json!({"queue": name, "removed": removed}),
                format!("purged {name}: {removed} removed"),
            );
        }
    }
    Ok(())
}

impl CreateArgs {
    /// The new queue's name and the options it is created with.
    fn into_request(self) -> (String, pb::QueueOptions) {
        let overflow = match self.overflow {
            OverflowArg::Reject => pb::OverflowPolicy::Reject,
            OverflowArg::DeadLetterOldest => pb::OverflowPolicy::DeadLetterOldest,
        };
        let options = pb::QueueOptions {
            journal: self.journal,
            journal_retention_ms: self.journal_retention_ms,
            journal_max_messages: self.journal_max_messages,
            max_bytes: self.max_bytes,
            overflow: overflow as i32,
            dedup_window_ms: self.dedup_window_ms,
            default_lease_ms: self.lease_ms,
            max_delivery_count: self.max_delivery_count,
            max_message_bytes: self.max_message_bytes,
            max_depth: self.max_depth,
            dead_letter_queue: self.dead_letter_queue,
            dead_letter_expired: self.dead_letter_expired,
            default_ttl_ms: self.default_ttl_ms,
        };
        (self.name, options)
    }
}

fn queue_json(queue: &pb::Queue) -> serde_json::Value {
    let options = queue.options.clone().unwrap_or_default();
    let stats = queue.stats.unwrap_or_default();
    json!({
        "name": queue.name,
        "raft_group": queue.raft_group,
        "created_at_ms": queue.created_at_ms,
        "options": {
            "dedup_window_ms": options.dedup_window_ms,
            "default_lease_ms": options.default_lease_ms,
            "max_delivery_count": options.max_delivery_count,
            "max_message_bytes": options.max_message_bytes,
            "max_depth": options.max_depth,
            "dead_letter_queue": options.dead_letter_queue,
            "dead_letter_expired": options.dead_letter_expired,
            "default_ttl_ms": options.default_ttl_ms,
            "max_bytes": options.max_bytes,
            "overflow": options.overflow().as_str_name(),
            "journal": options.journal,
            "journal_retention_ms": options.journal_retention_ms,
            "journal_max_messages": options.journal_max_messages,
        },
        "stats": {
            "depth": stats.depth,
            "in_flight": stats.in_flight,
            "delayed": stats.delayed,
            "total_sent": stats.total_sent,
            "total_acked": stats.total_acked,
            "total_deliveries": stats.total_deliveries,
            "total_discarded": stats.total_discarded,
            "total_expired": stats.total_expired,
            "total_dead_lettered": stats.total_dead_lettered,
            "groups": stats.groups,
            "bytes": stats.bytes,
        },
    })
}

fn queue_text(queue: &pb::Queue) -> String {
    let stats = queue.stats.unwrap_or_default();
    format!(
        "{}  raft_group={} depth={} in_flight={} delayed={} sent={} acked={} dead_lettered={} expired={}",
        queue.name,
        queue.raft_group,
        stats.depth,
        stats.in_flight,
        stats.delayed,
        stats.total_sent,
        stats.total_acked,
        stats.total_dead_lettered,
        stats.total_expired
    )
}
