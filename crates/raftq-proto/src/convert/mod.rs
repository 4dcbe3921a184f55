//! Protobuf <-> domain conversions, one file per message kind.

mod message;
mod queue;

pub use message::{message_state_name, new_message};
pub use queue::queue_options;
