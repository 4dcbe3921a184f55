//! What goes through the log: `Command` and its `Request` (a command with its log time),
//! the messages a send carries, receipts, and what applying a command returns (`Outcome`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::access::{Actions, TokenHash};
use crate::placement::GroupPlan;
use crate::producers::ProducerId;
use crate::{GroupId, MessageId, QueueError, QueueOptions, TimeMs};

/// One entry of the replicated log: a command plus the time the leader stamped on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Log time as the leader stamped it when it proposed the command: its wall clock, but
    /// never less than the log's time advanced by the real time since it last saw it move
    /// (raftq-cluster's `LogClock`). The state machine never lets its own notion of time go
    /// backwards, whatever this says.
    pub now_ms: TimeMs,
    pub command: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.command.kind(), self.now_ms)
    }
}

/// Descriptive properties a message carries unchanged from sender to receiver (the MSMQ
/// message properties). The queue only validates their size.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageProperties {
    /// A short human-readable title.
    pub label: String,
    /// Ties a reply or an acknowledgement to the message it answers.
    pub correlation_id: String,
    /// The queue a receiver should answer to.
    pub reply_to: String,
    /// The body's media type, e.g. `application/json`.
    pub content_type: String,
}

impl MessageProperties {
    pub fn size(&self) -> usize {
        self.label.len() + self.correlation_id.len() + self.reply_to.len() + self.content_type.len()
    }
}

/// A message as the producer hands it over.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub headers: BTreeMap<String, String>,
    /// Empty means "no idempotency key": the send is never deduplicated.
    pub idempotency_key: String,
    pub properties: MessageProperties,
    /// Messages with the same group are handed out strictly in send order, one at a time.
    /// Empty: no group.
    pub group: String,
    /// 0 (lowest, the default) to 7; only orders messages that have no group.
    pub priority: u8,
    /// Not delivered before this long after the send (0: at once).
    pub delay_ms: u64,
    /// Time to be received: the message expires if nobody has received it this long after
    /// the send. 0 takes the queue's default (which may be "never").
    pub ttl_ms: u64,
    /// Where to post acknowledgement messages about this message, and which.
    pub acknowledgement: AcknowledgementRequest,
    /// Time to reach the queue: when not 0, a message whose send is applied more than this
    /// long after `sent_at_ms` (the time it was first handed to a sender, e.g. written to
    /// an outbox) has not reached the queue in time. It is taken in (so retries stay
    /// idempotent) and expires at once.
    pub time_to_reach_ms: u64,
    pub sent_at_ms: TimeMs,
}

/// A sender's request for acknowledgement messages: a positive one when the message is
/// consumed (acked), a negative one when it expires, is dead-lettered or discarded. Each
/// is posted to `queue` with the original message id as correlation id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcknowledgementRequest {
    /// Empty: no acknowledgement messages.
    pub queue: String,
    pub positive: bool,
    pub negative: bool,
}

impl NewMessage {
    /// Bytes counted against `max_message_bytes`: body, header keys and values, group and
    /// properties.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        (self.body.len() + headers + self.group.len() + self.properties.size()) as u64
    }
}

/// A lease holder's proof of delivery: message id plus the delivery attempt that acts as a
/// fencing token. Text form: `<message_id>:<attempt>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Receipt {
    pub message_id: MessageId,
    pub attempt: u32,
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.message_id, self.attempt)
    }
}

impl std::str::FromStr for Receipt {
    type Err = QueueError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || {
            QueueError::invalid(
                "receipt",
                format!("{} is not `<message_id>:<attempt>`", crate::quote(text)),
            )
        };
        let (id, attempt) = text.split_once(':').ok_or_else(bad)?;
        let receipt = Receipt {
            message_id: id.parse().map_err(|_| bad())?,
            attempt: attempt.parse().map_err(|_| bad())?,
        };
        // Attempts count deliveries from 1; no receipt ever carries 0.
        if receipt.attempt == 0 {
            return Err(bad());
        }
        Ok(receipt)
    }
}

/// Everything that changes queue state goes through the log as one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    CreateQueue {
        name: String,
        options: QueueOptions,
    },
    DeleteQueue {
        name: String,
    },
    PurgeQueue {
        name: String,
    },
    /// All messages are stored, or none (any invalid message refuses the batch).
    Send {
        queue: String,
        messages: Vec<NewMessage>,
    },
    Receive {
        queue: String,
        max_messages: u32,
        /// 0 means the queue's default lease.
        lease_ms: u64,
    },
    /// Like `Receive`, but only the message with `message_id` (when not 0) and/or the
    /// messages carrying `correlation_id` (when not empty), among those ready now.
    ReceiveSelected {
        queue: String,
        message_id: MessageId,
        correlation_id: String,
        max_messages: u32,
        lease_ms: u64,
    },
    Ack {
        queue: String,
        receipt: Receipt,
    },
    /// Acknowledges each receipt on its own (not all or nothing): one log entry for many
    /// acks. Each receipt's result is reported in order.
    AckBatch {
        queue: String,
        receipts: Vec<Receipt>,
    },
    Nack {
        queue: String,
        receipt: Receipt,
        /// The message becomes visible again this long after the nack (0: at once).
        delay_ms: u64,
    },
    ExtendLease {
        queue: String,
        receipt: Receipt,
        /// New lease length counted from the command's time.
        lease_ms: u64,
    },
    /// Moves dead-lettered messages from `queue` back to the queue each came from (or to
    /// `to`, when set): the listed ids, or with no ids up to `max` from the head. Messages
    /// under a lease stay.
    Redrive {
        queue: String,
        message_ids: Vec<MessageId>,
        max: u32,
        to: String,
    },
    /// Applies all of `acks` and `sends`, across any queues, or none of them. A repeat of
    /// a committed `transaction_id` (inside the transaction window) changes nothing and
    /// answers the first commit's outcome.
    Commit {
        transaction_id: String,
        acks: Vec<TransactionAck>,
        sends: Vec<TransactionSend>,
    },
    /// Brings every queue with timed work due (ended delays and leases, expiries,
    /// forgotten dedup records) up to the command's time. The leader writes one when
    /// something is due, so expiry and dead-lettering happen without other traffic.
    Tick,
    /// Several independent commands in one log entry, applied in order as if each were
    /// its own entry (with this entry's time): each gets its own result. A leader puts
    /// concurrent client writes together this way so they share one entry. A batch holds
    /// no batch: decoding refuses one (bytes nesting batches thousands deep would
    /// otherwise exhaust the stack of the node decoding them).
    Batch(#[serde(deserialize_with = "batch_items")] Vec<Command>),
    /// A new principal, which authenticates with the token that hashes to `token_hash`
    /// (the token itself is never written) and may do nothing until granted.
    CreatePrincipal {
        name: String,
        token_hash: TokenHash,
    },
    /// The principal and its grants go; its token no longer authenticates.
    DeletePrincipal {
        name: String,
    },
    /// `principal` may do `actions` on the queues `pattern` matches (replacing what it
    /// could do there before).
    Grant {
        principal: String,
        pattern: String,
        actions: Actions,
    },
    /// `principal` may no longer do anything through its grant on `pattern`.
    Revoke {
        principal: String,
        pattern: String,
    },
    /// A new producer (see [`crate::producers`]), forgotten once idle for
    /// `idle_expiry_ms`. `max_producers` is the leader's bound on registered producers.
    RegisterProducer {
        name: String,
        idle_expiry_ms: u64,
        max_producers: u64,
    },
    /// A `Send` numbered in its producer's sequence on the queue: the first message has
    /// `first_sequence`, each next one more. `max_sessions` is the leader's bound on
    /// producer sessions per queue.
    ProducerSend {
        producer: ProducerId,
        first_sequence: u64,
        max_sessions: u64,
        queue: String,
        messages: Vec<NewMessage>,
    },
    /// A `Commit` numbered `sequence` in its producer's sequence of transactions.
    ProducerCommit {
        producer: ProducerId,
        sequence: u64,
        transaction_id: String,
        acks: Vec<TransactionAck>,
        sends: Vec<TransactionSend>,
    },
    /// Takes a leased message out of its queue for good, as a consumer that cannot ever
    /// process it: to the queue's dead-letter queue (reason `rejected`, `detail` as
    /// `raftq-dead-letter-detail`), or discarded when the queue has none. A negative
    /// acknowledgement message of kind `rejected` follows when the sender asked for one.
    Reject {
        queue: String,
        receipt: Receipt,
        detail: String,
    },
    /// Metadata group only: adds data groups and their replicas (see [`Placement`](crate::placement::Placement)).
    PlaceGroups {
        groups: Vec<GroupPlan>,
    },
    /// Metadata group only: places a queue in a data group, beside `colocate_with` when
    /// given, or where it is already (see [`Placement::place`](crate::placement::Placement::place)).
    PlaceQueue {
        queue: String,
        colocate_with: Option<String>,
    },
    /// Metadata group only: forgets where a deleted queue lived.
    UnplaceQueue {
        queue: String,
    },
    /// Metadata group only: gives existing data groups new replicas, a rebalance's moves
    /// (see [`Placement::rebalance`](crate::placement::Placement::rebalance)).
    MoveReplicas {
        groups: Vec<GroupPlan>,
    },
    /// Metadata group only: marks a node as draining before it leaves (the next rebalance
    /// moves its replicas elsewhere), or not any more.
    DrainNode {
        node: u64,
        draining: bool,
    },
}

thread_local! {
    /// Whether the command being decoded on this thread is inside a batch.
    static IN_BATCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A batch's commands, refusing a batch among them before decoding it.
fn batch_items<'de, D: serde::Deserializer<'de>>(decoder: D) -> Result<Vec<Command>, D::Error> {
    if IN_BATCH.with(|inside| inside.replace(true)) {
        // The outer batch's decoding resets the mark when it ends.
        return Err(serde::de::Error::custom(
            "a batch cannot hold another batch",
        ));
    }
    let items = Vec::<Command>::deserialize(decoder);
    IN_BATCH.with(|inside| inside.set(false));
    items
}

impl Command {
    /// About how many bytes the command adds to a log entry: its messages' sizes, or a
    /// small constant. Used to bound batched entries.
    pub fn approx_bytes(&self) -> usize {
        const SMALL: usize = 64;
        match self {
            Command::Send { messages, .. } | Command::ProducerSend { messages, .. } => messages
                .iter()
                .map(|message| message.size() as usize + SMALL)
                .sum(),
            Command::Commit { sends, .. } | Command::ProducerCommit { sends, .. } => sends
                .iter()
                .map(|send| send.message.size() as usize + SMALL)
                .sum::<usize>()
                .max(SMALL),
            Command::AckBatch { receipts, .. } => receipts.len() * 16 + SMALL,
            Command::Batch(commands) => commands.iter().map(Command::approx_bytes).sum(),
            _ => SMALL,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Command::CreateQueue { .. } => "create_queue",
            Command::DeleteQueue { .. } => "delete_queue",
            Command::PurgeQueue { .. } => "purge_queue",
            Command::Send { .. } => "send",
            Command::Receive { .. } => "receive",
            Command::ReceiveSelected { .. } => "receive_selected",
            Command::Ack { .. } => "ack",
            Command::AckBatch { .. } => "ack_batch",
            Command::Nack { .. } => "nack",
            Command::ExtendLease { .. } => "extend_lease",
            Command::Redrive { .. } => "redrive",
            Command::Commit { .. } => "commit",
            Command::Tick => "tick",
            Command::Batch(_) => "batch",
            Command::CreatePrincipal { .. } => "create_principal",
            Command::DeletePrincipal { .. } => "delete_principal",
            Command::Grant { .. } => "grant",
            Command::Revoke { .. } => "revoke",
            Command::RegisterProducer { .. } => "register_producer",
            Command::ProducerSend { .. } => "producer_send",
            Command::ProducerCommit { .. } => "producer_commit",
            Command::Reject { .. } => "reject",
            Command::PlaceGroups { .. } => "place_groups",
            Command::PlaceQueue { .. } => "place_queue",
            Command::UnplaceQueue { .. } => "unplace_queue",
            Command::MoveReplicas { .. } => "move_replicas",
            Command::DrainNode { .. } => "drain_node",
        }
    }
}

/// An acknowledgement inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionAck {
    pub queue: String,
    pub receipt: Receipt,
}

/// A send inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionSend {
    pub queue: String,
    pub message: NewMessage,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendResult {
    pub message_id: MessageId,
    /// Position in the queue's send order (1-based, never reused).
    pub sequence: u64,
    /// True when the idempotency key was seen inside the dedup window: nothing new was stored.
    pub duplicate: bool,
    /// True when the message arrived after its time to reach the queue and expired at once.
    pub expired: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub message_id: MessageId,
    pub sequence: u64,
    /// The bytes. Empty in the state machine's outcome when the embedder keeps bodies
    /// (see [`crate::StateMachine::keep_bodies_outside`]): it fills them in from `body_ref`.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    pub body_ref: crate::BodyRef,
    pub headers: BTreeMap<String, String>,
    pub properties: MessageProperties,
    pub group: String,
    pub priority: u8,
    pub receipt: Receipt,
    pub enqueued_at_ms: TimeMs,
    pub lease_expires_at_ms: TimeMs,
    /// When the message expires if not acknowledged (0: never).
    pub expires_at_ms: TimeMs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Messages stored: ready, delayed and in flight.
    pub depth: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub total_sent: u64,
    pub total_acked: u64,
    pub total_deliveries: u64,
    /// Messages dropped after reaching `max_delivery_count` or expiring, where the queue
    /// has no dead-letter queue.
    pub total_discarded: u64,
    /// Messages that expired (time to be received) before anyone acknowledged them.
    pub total_expired: u64,
    /// Messages moved to the dead-letter queue.
    pub total_dead_lettered: u64,
    /// Message groups that hold at least one message.
    pub groups: u64,
    /// Bytes held (body, headers, group and properties of every stored message).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    pub name: String,
    pub options: QueueOptions,
    pub created_at_ms: TimeMs,
    pub stats: QueueStats,
}

/// What a successfully applied command reports back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Created(QueueInfo),
    Deleted,
    Purged {
        removed: u64,
    },
    Sent(Vec<SendResult>),
    Received(Vec<Delivery>),
    Acked {
        already_acked: bool,
    },
    /// Per receipt of an `AckBatch`, in order: acked (`true` when it already was), or why not.
    AckedBatch(Vec<Result<bool, QueueError>>),
    Nacked {
        visible_at_ms: TimeMs,
    },
    /// The message left its queue: to its dead-letter queue when `dead_lettered`.
    Rejected {
        dead_lettered: bool,
    },
    LeaseExtended {
        lease_expires_at_ms: TimeMs,
    },
    Redriven {
        moved: u64,
    },
    /// The sends' results in request order; `already_committed` when this was a repeat.
    Committed {
        sent: Vec<SendResult>,
        already_committed: bool,
    },
    /// Queues a tick brought up to time.
    Ticked {
        queues: u64,
    },
    /// A `Batch`'s results, one per command in order.
    Batch(Vec<Result<Outcome, QueueError>>),
    /// A principal, grant or revocation took effect; `changed` is false for a revocation
    /// of a grant that did not exist.
    AccessChanged {
        changed: bool,
    },
    /// A producer was registered.
    ProducerRegistered {
        producer_id: ProducerId,
        idle_expiry_ms: u64,
    },
    /// Data groups were added.
    GroupsPlaced,
    /// The group a queue was placed in, or had lived in when it was unplaced.
    Placed {
        group: GroupId,
    },
}

impl Outcome {
    /// This outcome given again to a repeat of the command: nothing new was stored.
    pub(crate) fn repeated(self) -> Outcome {
        match self {
            Outcome::Sent(results) => Outcome::Sent(
                results
                    .into_iter()
                    .map(|result| SendResult {
                        duplicate: true,
                        ..result
                    })
                    .collect(),
            ),
            Outcome::Committed { sent, .. } => Outcome::Committed {
                sent,
                already_committed: true,
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_text_form_round_trips_and_rejects_garbage() {
        let receipt = Receipt {
            message_id: 42,
            attempt: 3,
        };
        assert_eq!(receipt.to_string(), "42:3");
        assert_eq!("42:3".parse::<Receipt>(), Ok(receipt));
        for bad in ["", "42", "x:1", "1:y", "1:2:3", "-1:2", "5:0"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad}");
        }
    }
}
