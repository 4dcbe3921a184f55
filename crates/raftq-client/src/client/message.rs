//! `Message`, a message to send, and its builders.

use std::collections::HashMap;
use std::time::Duration;

use crate::pb;

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
    /// Idempotency key; when `None` the client generates one (UUIDv7) for this logical send.
    pub key: Option<String>,
    /// Message group: strict send order, one in flight at a time. Empty: none.
    pub group: String,
    /// 0 (default, lowest) to 7, for messages without a group.
    pub priority: u32,
    /// Not delivered before this much time has passed.
    pub delay: Duration,
    /// Time to be received; zero takes the queue's default.
    pub ttl: Duration,
    pub properties: pb::MessageProperties,
    /// Queue for acknowledgement messages about this one; empty: none.
    pub ack_queue: String,
    /// Ask for a "consumed" acknowledgement.
    pub ack_positive: bool,
    /// Ask for an acknowledgement when it expires or is dead-lettered or discarded.
    pub ack_negative: bool,
    /// Time to reach the queue, counted from `sent_at_ms`; zero: none.
    pub time_to_reach: Duration,
    /// When the message was first handed to a sender (ms since the epoch).
    pub sent_at_ms: u64,
}

impl Message {
    pub fn new(body: impl Into<Vec<u8>>) -> Message {
        Message {
            body: body.into(),
            ..Message::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    pub fn with_group(mut self, group: impl Into<String>) -> Message {
        self.group = group.into();
        self
    }

    pub fn with_priority(mut self, priority: u32) -> Message {
        self.priority = priority;
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Message {
        self.delay = delay;
        self
    }

    pub fn with_ttl(mut self, ttl: Duration) -> Message {
        self.ttl = ttl;
        self
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Asks for acknowledgement messages in `queue`: positive (consumed) and/or negative
    /// (expired, dead-lettered, discarded).
    pub fn with_acknowledgements(
        mut self,
        queue: impl Into<String>,
        positive: bool,
        negative: bool,
    ) -> Message {
        self.ack_queue = queue.into();
        self.ack_positive = positive;
        self.ack_negative = negative;
        self
    }

    /// The message must reach its queue within `limit` from now, or it expires on arrival.
    pub fn with_time_to_reach(mut self, limit: Duration) -> Message {
        self.time_to_reach = limit;
        self.sent_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as u64)
            .unwrap_or(0);
        self
    }

    pub fn with_properties(mut self, properties: pb::MessageProperties) -> Message {
        self.properties = properties;
        self
    }

    /// The message as the API carries it (an idempotency key is generated when it has none).
    pub fn into_proto(self) -> pb::OutgoingMessage {
        let properties =
            (self.properties != pb::MessageProperties::default()).then_some(self.properties);
        pb::OutgoingMessage {
            body: self.body,
            headers: self.headers,
            idempotency_key: self.key.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            group: self.group,
            priority: self.priority,
            delay_ms: self.delay.as_millis() as u64,
            ttl_ms: self.ttl.as_millis() as u64,
            properties,
            ack_queue: self.ack_queue,
            ack_positive: self.ack_positive,
            ack_negative: self.ack_negative,
            time_to_reach_ms: self.time_to_reach.as_millis() as u64,
            sent_at_ms: self.sent_at_ms,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SendOptions {}
