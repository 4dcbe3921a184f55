//! Messages on the wire: outgoing messages, send results, deliveries, peeked messages and
//! the answers of send streams.

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

/// The answer to one send of a send stream: what `Send` would have answered, or the code
/// and message it would have failed with.
/// The answer to one send of a send stream; `leader_address` names the leader of the
/// send's group when the serving node passed the send on to it.
pub fn streamed_send_result(
    id: u64,
    sent: Result<pb::SendResponse, tonic::Status>,
    leader_address: Option<String>,
) -> pb::StreamedSendResult {
    pb::StreamedSendResult {
        leader_address: leader_address.unwrap_or_default(),
        ..result_of(id, sent)
    }
}

fn result_of(id: u64, sent: Result<pb::SendResponse, tonic::Status>) -> pb::StreamedSendResult {
    match sent {
        Ok(sent) => pb::StreamedSendResult {
            id,
            sent: Some(sent),
            ..pb::StreamedSendResult::default()
        },
        Err(status) => pb::StreamedSendResult {
            id,
            sent: None,
            code: status.code() as i32,
            error: status.message().to_string(),
            ..pb::StreamedSendResult::default()
        },
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

    fn delivery() -> Delivery {
        Delivery {
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
        }
    }

    /// A delivery's wire form, as the test below freezes it.
    const DELIVERY: [u8; 19] = [
        0x08, 0x05, 0x10, 0x02, 0x1a, 0x02, b'h', b'i', 0x2a, 0x03, b'5', b':', b'1', 0x30, 0x01,
        0x38, 0x0a, 0x40, 0x14,
    ];

    fn sent() -> pb::SendResponse {
        pb::SendResponse::from(SendResult {
            message_id: 300,
            sequence: 2,
            duplicate: true,
            expired: false,
        })
    }

    /// Frozen bytes: a delivery's wire form must not drift.
    #[test]
    fn received_message_wire_format_is_frozen() {
        let bytes = pb::ReceivedMessage::from(delivery()).encode_to_vec();
        assert_eq!(bytes, DELIVERY);
    }

    #[test]
    fn send_response_wire_format_is_frozen() {
        assert_eq!(
            sent().encode_to_vec(),
            [0x08, 0xac, 0x02, 0x10, 0x02, 0x18, 0x01]
        );
    }

    #[test]
    fn streamed_send_result_wire_format_is_frozen() {
        let stored = streamed_send_result(9, Ok(sent()), None);
        assert_eq!(
            stored.encode_to_vec(),
            [
                0x08, 0x09, 0x12, 0x07, 0x08, 0xac, 0x02, 0x10, 0x02, 0x18, 0x01
            ]
        );
        let refused = streamed_send_result(9, Err(tonic::Status::not_found("q")), None);
        assert_eq!(
            refused.encode_to_vec(),
            [0x08, 0x09, 0x18, 0x05, 0x22, 0x01, b'q']
        );
        // A send passed on to its group's leader names it after the result.
        let passed_on = streamed_send_result(9, Ok(sent()), Some("n:1".into()));
        assert_eq!(
            passed_on.encode_to_vec()[11..],
            [0x2a, 0x03, b'n', b':', b'1']
        );
    }

    #[test]
    fn receive_and_consume_responses_wire_format_is_frozen() {
        let acked = pb::AckResult {
            already_acked: true,
            ..pb::AckResult::default()
        };
        let mut expected = vec![0x0a, DELIVERY.len() as u8];
        expected.extend_from_slice(&DELIVERY);
        expected.extend_from_slice(&[0x12, 0x02, 0x18, 0x01]);
        let received = pb::ReceiveResponse {
            messages: vec![delivery().into()],
            ack_results: vec![acked.clone()],
        };
        assert_eq!(received.encode_to_vec(), expected);
        let consumed = pb::ConsumeResponse {
            messages: vec![delivery().into()],
            ack_results: vec![acked],
            nack_results: vec![pb::AckResult::default()],
        };
        expected.extend_from_slice(&[0x1a, 0x00]);
        assert_eq!(consumed.encode_to_vec(), expected);
        // A heartbeat is empty.
        assert!(pb::ConsumeResponse::default().encode_to_vec().is_empty());
    }
}
