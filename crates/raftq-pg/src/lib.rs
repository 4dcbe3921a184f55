//! raftq-pg: exactly once between raftq and the application's PostgreSQL database.
//!
//! - **Outbox** ([`enqueue`], [`Relay`]): a message is written into an outbox table inside
//!   the application's own transaction, so it exists if and only if the transaction
//!   commits; a relay forwards committed rows to raftq as numbered sends of its producer
//!   (stored once however often a crash makes it send them), in order per order key, and
//!   deletes them once raftq has them. One relay is active per table (an advisory lock);
//!   others wait on standby.
//! - **Inbox** ([`Inbox`]): an idempotent consumer that handles each message in a
//!   transaction which also records the message's id, commits, then acknowledges; a
//!   redelivery after a crash between the two is only acknowledged. A handler may
//!   [`enqueue`] in the same transaction: "receive, update the database, send" is then
//!   exactly once end to end.
//! - **Schema** ([`Schema`]): the tables' names from one prefix, and the migration that
//!   creates them (`sql/001_outbox_inbox.sql`).
//!
//! This is the role MSMQ gave to MTS and DTC (a queue operation committed together with a
//! database update), without two-phase commit: see `docs/semantics.md`.

mod connect;
mod error;
mod inbox;
mod outbox;
mod relay;
mod schema;
mod status;

pub use connect::{DatabaseTls, connect};
pub use error::Error;
pub use inbox::{Handler, HandlerError, Inbox, InboxConfig, InboxEvent, InboxStatus};
pub use outbox::{MAX_BODY_BYTES, enqueue};
pub use relay::{Relay, RelayConfig, RelayEvent, RelayStatus};
pub use schema::Schema;
pub use status::{OutboxStatus, outbox_status, retry_failed};
/// The PostgreSQL client this crate works with (its `Transaction` is what handlers get).
pub use tokio_postgres;

/// The schema version this library needs (the number of migrations).
pub const SCHEMA_VERSION: u32 = 1;
