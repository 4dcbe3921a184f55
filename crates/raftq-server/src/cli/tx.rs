//! Transaction commands: `tx commit`, with the JSON transaction file it reads.

use std::path::PathBuf;

use clap::Subcommand;
use raftq_client::{Client, ClientError, pb};
use serde_json::json;

use super::output::{Output, print};
use super::read_body;

#[derive(Subcommand, Debug)]
pub(super) enum TxCommand {
    /// Commit the transaction described by a JSON file (`-` for standard input):
    /// {"transaction_id": "optional", "acks": [{"queue": "in", "receipt": "7:1"}],
    ///  "sends": [{"queue": "out", "body": "text", "key": "...", "group": "...",
    ///  "priority": 0, "delay_ms": 0, "ttl_ms": 0, "headers": {"k": "v"}}]}
    Commit {
        #[arg(long)]
        file: PathBuf,
    },
}

/// The JSON form of a transaction for `raftq tx commit`.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFile {
    #[serde(default)]
    transaction_id: Option<String>,
    #[serde(default)]
    acks: Vec<TxFileAck>,
    #[serde(default)]
    sends: Vec<TxFileSend>,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFileAck {
    queue: String,
    receipt: String,
}

#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TxFileSend {
    queue: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    group: String,
    #[serde(default)]
    priority: u32,
    #[serde(default)]
    delay_ms: u64,
    #[serde(default)]
    ttl_ms: u64,
    #[serde(default)]
    headers: std::collections::HashMap<String, String>,
}

pub(super) async fn run(
    client: &Client,
    command: TxCommand,
    output: Output,
) -> Result<(), ClientError> {
    let TxCommand::Commit { file } = command;
    let request = read_tx_file(&file)?;
    let id = request.transaction_id.clone();
    let (acks, sends) = (request.acks.len(), request.sends.len());
    let committed = client.commit(request).await?;
    let ids: Vec<u64> = committed.sent.iter().map(|s| s.message_id).collect();
    print(
        output,
        json!({
            "transaction_id": id,
            "acks": acks,
            "sent_message_ids": ids,
            "already_committed": committed.already_committed,
        }),
        format!(
            "committed transaction {id}: {acks} acks, {sends} sends (message ids {ids:?}){}",
            if committed.already_committed {
                "; it had already committed"
            } else {
                ""
            }
        ),
    );
    Ok(())
}

fn read_tx_file(path: &std::path::Path) -> Result<pb::CommitRequest, ClientError> {
    let bad = |reason: String| {
        ClientError::Status(tonic::Status::invalid_argument(format!(
            "transaction file {}: {reason}",
            path.display()
        )))
    };
    let bytes = read_body(path).map_err(|error| bad(error.to_string()))?;
    let file: TxFile = serde_json::from_slice(&bytes).map_err(|error| bad(error.to_string()))?;
    Ok(pb::CommitRequest {
        transaction_id: file
            .transaction_id
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        acks: file
            .acks
            .into_iter()
            .map(|ack| pb::TransactionAck {
                queue: ack.queue,
                receipt: ack.receipt,
            })
            .collect(),
        sends: file
            .sends
            .into_iter()
            .map(|send| pb::TransactionSend {
                queue: send.queue,
                message: Some(pb::OutgoingMessage {
                    body: send.body.into_bytes(),
                    headers: send.headers,
                    idempotency_key: send.key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                    group: send.group,
                    priority: send.priority,
                    delay_ms: send.delay_ms,
                    ttl_ms: send.ttl_ms,
                    properties: None,
                    ack_queue: String::new(),
                    ack_positive: false,
                    ack_negative: false,
                    time_to_reach_ms: 0,
                    sent_at_ms: 0,
                }),
            })
            .collect(),
        producer: None,
    })
}
