//! The history: one JSON object per line for every operation's invocation and result, and
//! for every fault the nemesis injects. The checker reads nothing else.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The operation took effect.
    Ok,
    /// The operation certainly did not take effect (the server refused it).
    Failed,
    /// The operation may or may not have taken effect (timeout, lost connection).
    Unknown,
}

/// One message handed out by a receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    pub value: String,
    /// Queue sequence: the position the cluster assigned at send time.
    pub sequence: u64,
    pub attempt: u32,
    /// The message group, for values sent with one.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

impl From<&raftq_client::pb::ReceivedMessage> for Delivered {
    fn from(message: &raftq_client::pb::ReceivedMessage) -> Delivered {
        Delivered {
            value: String::from_utf8_lossy(&message.body).into_owned(),
            sequence: message.sequence,
            attempt: message.attempt,
            group: message.group.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// `value` is unique per send; `producer` sends its values one after another.
    Send {
        value: String,
    },
    Receive {
        delivered: Vec<Delivered>,
    },
    Ack {
        value: String,
    },
    /// A fault the nemesis started (`start_ms`) and healed (`end_ms`).
    Fault {
        kind: String,
        nodes: Vec<u64>,
        majority_down: bool,
        /// How it was done, e.g. the sides of a partition.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        detail: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub process: String,
    #[serde(flatten)]
    pub op: Op,
    /// Milliseconds since the run started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

pub fn to_jsonl(events: &[Event]) -> String {
    events
        .iter()
        .filter_map(|event| serde_json::to_string(event).ok())
        .map(|line| line + "\n")
        .collect()
}

pub fn from_jsonl(text: &str) -> Result<Vec<Event>, serde_json::Error> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}
