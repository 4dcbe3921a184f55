//! Protobuf <-> domain conversions, one file per message kind.

mod ack;
mod code;
mod message;
mod queue;
mod transaction;

pub use ack::{ack_result, receipt, receipts, refused};
pub use code::{code_of, reason_of};
pub use message::{message_state_name, new_message, streamed_send_result};
pub use queue::{queue_in_group, queue_options};
pub use transaction::commit;
