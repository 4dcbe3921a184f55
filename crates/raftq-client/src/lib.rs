//! raftq-client: the Rust client. It hides leader discovery and retries: any node address
//! works, the client follows the leader hint in UNAVAILABLE answers, caches the leader,
//! and retries retryable calls across leader changes within a deadline. Each logical send
//! gets one idempotency key that every retry reuses, so a retried send is stored once.
//!
//! It must not depend on server internals: only the public protobuf API.

mod client;
mod consumer;
mod error;
mod outbox;
mod pipe;
mod producer;
mod transaction;

pub use client::{Channel, Client, ClientConfig, Credentials, Message, SendOptions};
pub use consumer::{ConsumeOptions, Consumer, Delivery};
pub use error::ClientError;
pub use outbox::{DeadLetter, Outbox, OutboxConfig, OutboxError, OutboxStatus, Queued};
pub use producer::Producer;
pub use raftq_proto::pb;
pub use raftq_tls::{ClientTls, TlsError, Transport};
pub use tonic::Code;
pub use transaction::Transaction;
