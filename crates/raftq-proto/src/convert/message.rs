use raftq_core::{
    AcknowledgementRequest, Delivery, MessageProperties, NewMessage, SendResult, StoredMessage,
    queue::MessageState,
};

use crate::pb;

/// A priority too large for a byte becomes 255, which validation refuses like any other
/// value above 7.
pub fn new_message(message: pb::OutgoingMessage) -> NewMessage {
    NewMessage {
        body: message.body,
        headers: message.headers.into_iter().collect(),
        idempotency_key: message.idempotency_key,
        properties: message.properties.map(properties).unwrap_or_default(),
        group: message.group,
        priority: u8::try_from(message.priority).unwrap_or(u8::MAX),
        delay_ms: message.delay_ms,
        ttl_ms: message.ttl_ms,
        acknowledgement: AcknowledgementRequest {
            queue: message.ack_queue,
            positive: message.ack_positive,
            negative: message.ack_negative,
        },
        time_to_reach_ms: message.time_to_reach_ms,
        sent_at_ms: message.sent_at_ms,
    }
}

fn properties(properties: pb::MessageProperties) -> MessageProperties {
    MessageProperties {
        label: properties.label,
        correlation_id: properties.correlation_id,
        reply_to: properties.reply_to,
        content_type: properties.content_type,
    }
}

/// None when every property is empty, so messages without properties stay small on the
/// wire.
fn pb_properties(properties: MessageProperties) -> Option<pb::MessageProperties> {
    if properties == MessageProperties::default() {
        return None;
    }
    Some(pb::MessageProperties {
        label: properties.label,
        correlation_id: properties.correlation_id,
        reply_to: properties.reply_to,
        content_type: properties.content_type,
    })
}

impl From<SendResult> for pb::SendResponse {
    fn from(result: SendResult) -> Self {
        pb::SendResponse {
            message_id: result.message_id,
            sequence: result.sequence,
            duplicate: result.duplicate,
            expired: result.expired,
        }
    }
}

impl From<Delivery> for pb::ReceivedMessage {
    fn from(delivery: Delivery) -> Self {
        pb::ReceivedMessage {
            message_id: delivery.message_id,
            sequence: delivery.sequence,
            body: delivery.body,
            headers: delivery.headers.into_iter().collect(),
            receipt: delivery.receipt.to_string(),
            attempt: delivery.receipt.attempt,
            enqueued_at_ms: delivery.enqueued_at_ms,
            lease_expires_at_ms: delivery.lease_expires_at_ms,
            group: delivery.group,
            priority: u32::from(delivery.priority),
            expires_at_ms: delivery.expires_at_ms,
            properties: pb_properties(delivery.properties),
        }
    }
}

pub fn message_state_name(state: &MessageState) -> &'static str {
    match state {
        MessageState::Ready => "ready",
        MessageState::Delayed { .. } => "delayed",
        MessageState::Leased { .. } => "leased",
    }
}

/// A stored message and its body's bytes (kept apart from the message, see
/// `raftq_core::body`).
impl From<(StoredMessage, Vec<u8>)> for pb::PeekedMessage {
    fn from((message, body): (StoredMessage, Vec<u8>)) -> Self {
        pb::PeekedMessage {
            message_id: message.message_id,
            sequence: message.sequence,
            state: message_state_name(&message.state).to_string(),
            body,
            headers: message.headers.into_inner().into_iter().collect(),
            enqueued_at_ms: message.enqueued_at_ms,
            deliveries: message.deliveries,
            group: message.group.into_inner(),
            priority: u32::from(message.priority),
            expires_at_ms: message.expires_at_ms,
            properties: pb_properties(message.properties.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use raftq_core::Receipt;

    use super::*;

    /// Frozen bytes: a delivery's wire form must not drift.
    #[test]
    fn received_message_wire_format_is_frozen() {
        let delivery = Delivery {
            message_id: 5,
            sequence: 2,
            body: b"hi".to_vec(),
            body_ref: Default::default(),
            headers: Default::default(),
            properties: Default::default(),
            group: String::new(),
            priority: 0,
            receipt: Receipt {
                message_id: 5,
                attempt: 1,
            },
            enqueued_at_ms: 10,
            lease_expires_at_ms: 20,
            expires_at_ms: 0,
        };
        let bytes = pb::ReceivedMessage::from(delivery).encode_to_vec();
        assert_eq!(
            bytes,
            [
                0x08, 0x05, 0x10, 0x02, 0x1a, 0x02, b'h', b'i', 0x2a, 0x03, b'5', b':', b'1', 0x30,
                0x01, 0x38, 0x0a, 0x40, 0x14
            ]
        );
    }
}
