//! raftq-core: the domain types and the deterministic queue state machine.
//!
//! It owns what a queue *is*: names and their rules, options and their limits, messages,
//! leases and receipts, idempotency (dedup) records, and `apply(command, now) -> outcome`.
//!
//! It must not do IO: no clocks, no tokio, no RocksDB, no gRPC. Time arrives inside each
//! command (stamped by the Raft leader), so replaying the log gives the same state on
//! every node.

pub mod access;
pub mod body;
mod checks;
mod command;
mod dedup;
mod error;
mod limits;
mod message;
pub mod placement;
pub mod producers;
pub mod queue;
mod record;
mod runs;
mod seqmap;
pub mod sparse;
mod state;

pub use body::{BodyEffect, BodyRef};
pub use checks::MAX_REJECT_DETAIL;
pub use command::{
    AcknowledgementRequest, Command, Delivery, MessageProperties, NewMessage, Outcome, QueueInfo,
    QueueStats, Receipt, Request, SendResult, TransactionAck, TransactionSend,
};
pub use error::{QueueError, quote};
pub use limits::{Limits, Overflow, QueueOptions, journal_queue_name, validate_queue_name};
pub use queue::StoredMessage;
pub use sparse::Sparse;
pub use state::{StateMachine, Usage};

/// Identifier of a Raft group. One group holds every queue today; the id is carried in
/// storage keys and Raft RPCs so queues can later be spread over many groups.
pub type GroupId = u64;

/// Cluster-unique, monotonically assigned message id.
pub type MessageId = u64;

/// Milliseconds since the Unix epoch, as stamped into the log by the leader.
pub type TimeMs = u64;
