//! [`StoredMessage`]: a stored message spelled out field for field, and its state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::body::BodyRef;
use crate::command::{AcknowledgementRequest, MessageProperties};
use crate::sparse::Sparse;
use crate::{MessageId, TimeMs};

/// Where a stored message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageState {
    /// May be handed out: at once without a group, or when it heads its group and the group
    /// has nothing in flight.
    Ready,
    Delayed {
        visible_at_ms: TimeMs,
    },
    Leased {
        expires_at_ms: TimeMs,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub message_id: MessageId,
    pub sequence: u64,
    /// Where the body is kept (see [`crate::body`]).
    pub body: BodyRef,
    /// Headers, properties and acknowledgement requests are empty on most messages:
    /// [`Sparse`] keeps each empty one at 8 bytes.
    pub headers: Sparse<BTreeMap<String, String>>,
    pub properties: Sparse<MessageProperties>,
    /// Most messages have no group.
    pub group: Sparse<String>,
    pub priority: u8,
    pub enqueued_at_ms: TimeMs,
    /// Expires (time to be received) at this time unless acknowledged; 0: never.
    pub expires_at_ms: TimeMs,
    /// Times handed out so far; the current delivery's attempt number when leased.
    pub deliveries: u32,
    pub state: MessageState,
    pub acknowledgement: Sparse<AcknowledgementRequest>,
}

impl StoredMessage {
    /// Bytes counted against `max_bytes`, as `NewMessage::size` counts them.
    pub fn size(&self) -> u64 {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.body.len + (headers + self.group.len() + self.properties.size()) as u64
    }
}
