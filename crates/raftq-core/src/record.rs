//! [`Record`]: a stored message as a queue keeps it, in 64 bytes.
//!
//! A backlog keeps one record per message, so its size is most of a queue's memory. The
//! public [`StoredMessage`] spells every field out (104 bytes); a record leaves out what
//! it can find elsewhere or pack:
//! - the sequence is the record's key in the queue's [`crate::seqmap::SeqMap`];
//! - the body's key is the message id for every message but a journal copy, and its
//!   length fits 32 bits under any message size limit, so only a body that differs is
//!   kept, with the rarely set fields, behind one pointer ([`Extras`]);
//! - the state's tag sits beside the priority and delivery count, its time in a field of
//!   its own.
//!
//! Records encode exactly as `StoredMessage` does (see [`as_messages`]), so snapshots keep
//! their format.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::body::BodyRef;
use crate::command::{AcknowledgementRequest, MessageProperties};
use crate::message::{MessageState, StoredMessage};
use crate::sparse::{Empty, Sparse};
use crate::{MessageId, TimeMs};

/// What most messages do not have: headers, properties, an acknowledgement request, a body
/// other than `BodyRef { key: message_id, len }` with a 32-bit length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extras {
    headers: Sparse<BTreeMap<String, String>>,
    properties: Sparse<MessageProperties>,
    acknowledgement: Sparse<AcknowledgementRequest>,
    body: Option<BodyRef>,
}

impl Empty for Extras {
    const EMPTY: &'static Self = &Extras {
        headers: Sparse::NONE,
        properties: Sparse::NONE,
        acknowledgement: Sparse::NONE,
        body: None,
    };
}

const READY: u8 = 0;
const DELAYED: u8 = 1;
const LEASED: u8 = 2;

/// A state as its tag and its time (0 for `Ready`).
fn packed(state: MessageState) -> (u8, TimeMs) {
    match state {
        MessageState::Ready => (READY, 0),
        MessageState::Delayed { visible_at_ms } => (DELAYED, visible_at_ms),
        MessageState::Leased { expires_at_ms } => (LEASED, expires_at_ms),
    }
}

/// A stored message without its sequence (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) message_id: MessageId,
    pub(crate) enqueued_at_ms: TimeMs,
    /// Expires (time to be received) at this time unless acknowledged; 0: never.
    pub(crate) expires_at_ms: TimeMs,
    /// The state's time: when a delayed message becomes visible or a lease ends.
    state_at_ms: TimeMs,
    extras: Sparse<Extras>,
    group: Sparse<String>,
    /// The body's length when `extras.body` is `None`.
    body_len: u32,
    /// Times handed out so far; the current delivery's attempt number when leased.
    pub(crate) deliveries: u32,
    pub(crate) priority: u8,
    state: u8,
}

impl Record {
    pub(crate) fn new(message: StoredMessage) -> Record {
        let StoredMessage {
            message_id,
            sequence: _,
            body,
            headers,
            properties,
            group,
            priority,
            enqueued_at_ms,
            expires_at_ms,
            deliveries,
            state,
            acknowledgement,
        } = message;
        let body_len = u32::try_from(body.len)
            .ok()
            .filter(|_| body.key == message_id);
        let (state, state_at_ms) = packed(state);
        Record {
            message_id,
            enqueued_at_ms,
            expires_at_ms,
            state_at_ms,
            extras: Sparse::new(Extras {
                headers,
                properties,
                acknowledgement,
                body: body_len.is_none().then_some(body),
            }),
            group,
            body_len: body_len.unwrap_or(0),
            deliveries,
            priority,
            state,
        }
    }

    /// The message, as the public type spells it out.
    pub(crate) fn to_message(&self, sequence: u64) -> StoredMessage {
        StoredMessage {
            message_id: self.message_id,
            sequence,
            body: self.body(),
            headers: self.extras.headers.clone(),
            properties: self.extras.properties.clone(),
            group: self.group.clone(),
            priority: self.priority,
            enqueued_at_ms: self.enqueued_at_ms,
            expires_at_ms: self.expires_at_ms,
            deliveries: self.deliveries,
            state: self.state(),
            acknowledgement: self.extras.acknowledgement.clone(),
        }
    }

    pub(crate) fn body(&self) -> BodyRef {
        self.extras.body.unwrap_or(BodyRef {
            key: self.message_id,
            len: u64::from(self.body_len),
        })
    }

    pub(crate) fn state(&self) -> MessageState {
        match self.state {
            DELAYED => MessageState::Delayed {
                visible_at_ms: self.state_at_ms,
            },
            LEASED => MessageState::Leased {
                expires_at_ms: self.state_at_ms,
            },
            _ => MessageState::Ready,
        }
    }

    pub(crate) fn is_leased(&self) -> bool {
        self.state == LEASED
    }

    pub(crate) fn set_state(&mut self, state: MessageState) {
        (self.state, self.state_at_ms) = packed(state);
    }

    pub(crate) fn group(&self) -> &str {
        &self.group
    }

    pub(crate) fn headers(&self) -> &BTreeMap<String, String> {
        &self.extras.headers
    }

    pub(crate) fn properties(&self) -> &MessageProperties {
        &self.extras.properties
    }

    pub(crate) fn acknowledgement(&self) -> &AcknowledgementRequest {
        &self.extras.acknowledgement
    }

    /// Bytes counted against `max_bytes`, as [`StoredMessage::size`] counts them.
    pub(crate) fn size(&self) -> u64 {
        let headers: usize = self.headers().iter().map(|(k, v)| k.len() + v.len()).sum();
        self.body().len + (headers + self.group.len() + self.properties().size()) as u64
    }
}

/// A record with its sequence, encoded field for field as [`StoredMessage`].
#[derive(Serialize)]
#[serde(rename = "StoredMessage")]
struct AsMessage<'a> {
    message_id: MessageId,
    sequence: u64,
    body: BodyRef,
    headers: &'a BTreeMap<String, String>,
    properties: &'a MessageProperties,
    group: &'a str,
    priority: u8,
    enqueued_at_ms: TimeMs,
    expires_at_ms: TimeMs,
    deliveries: u32,
    state: MessageState,
    acknowledgement: &'a AcknowledgementRequest,
}

/// A queue's records by sequence, encoded as the `BTreeMap<u64, StoredMessage>` they
/// replace. Decoding refuses a message whose sequence is not its key.
pub(crate) mod as_messages {
    use std::fmt;

    use serde::de::{Error, MapAccess, Visitor};
    use serde::ser::SerializeMap;
    use serde::{Deserializer, Serializer};

    use super::{AsMessage, Record};
    use crate::message::StoredMessage;
    use crate::seqmap::SeqMap;

    pub(crate) fn serialize<S: Serializer>(
        records: &SeqMap<Record>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(records.len()))?;
        for (sequence, record) in records.iter() {
            let message = AsMessage {
                message_id: record.message_id,
                sequence,
                body: record.body(),
                headers: record.headers(),
                properties: record.properties(),
                group: record.group(),
                priority: record.priority,
                enqueued_at_ms: record.enqueued_at_ms,
                expires_at_ms: record.expires_at_ms,
                deliveries: record.deliveries,
                state: record.state(),
                acknowledgement: record.acknowledgement(),
            };
            map.serialize_entry(&sequence, &message)?;
        }
        map.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<SeqMap<Record>, D::Error> {
        struct RecordsVisitor;
        impl<'de> Visitor<'de> for RecordsVisitor {
            type Value = SeqMap<Record>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map from sequence to stored message")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut records = SeqMap::default();
                while let Some((sequence, message)) = access.next_entry::<u64, StoredMessage>()? {
                    if message.sequence != sequence {
                        return Err(A::Error::custom(format!(
                            "message {} is stored under sequence {sequence} but has sequence {}",
                            message.message_id, message.sequence
                        )));
                    }
                    if records.insert(sequence, Record::new(message)).is_some() {
                        return Err(A::Error::custom(format!(
                            "sequence {sequence} is stored twice"
                        )));
                    }
                }
                Ok(records)
            }
        }
        deserializer.deserialize_map(RecordsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::seqmap::SeqMap;

    #[test]
    fn a_record_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Record>(), 64);
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![3 => Just(String::new()), 1 => "[a-z]{1,4}"]
    }

    fn state() -> impl Strategy<Value = MessageState> {
        prop_oneof![
            Just(MessageState::Ready),
            any::<u64>().prop_map(|visible_at_ms| MessageState::Delayed { visible_at_ms }),
            any::<u64>().prop_map(|expires_at_ms| MessageState::Leased { expires_at_ms }),
        ]
    }

    prop_compose! {
        fn message()(
            message_id in any::<u64>(),
            // Mostly the usual body (keyed by the id, a short length), sometimes another
            // message's (a journal copy) or one longer than 32 bits.
            body in prop_oneof![
                4 => (0u64..5000).prop_map(|len| (None, len)),
                1 => (any::<u64>(), any::<u64>()).prop_map(|(key, len)| (Some(key), len)),
            ],
            header in (text(), text()),
            properties in (text(), text(), text(), text()),
            group in text(),
            priority in any::<u8>(),
            times in (any::<u64>(), any::<u64>()),
            deliveries in any::<u32>(),
            state in state(),
            acknowledgement in (text(), any::<bool>(), any::<bool>()),
        ) -> StoredMessage {
            let (key, len) = body;
            let mut headers = BTreeMap::new();
            if !header.0.is_empty() {
                headers.insert(header.0, header.1);
            }
            StoredMessage {
                message_id,
                sequence: 0,
                body: BodyRef { key: key.unwrap_or(message_id), len },
                headers: headers.into(),
                properties: MessageProperties {
                    label: properties.0,
                    correlation_id: properties.1,
                    reply_to: properties.2,
                    content_type: properties.3,
                }
                .into(),
                group: group.into(),
                priority,
                enqueued_at_ms: times.0,
                expires_at_ms: times.1,
                deliveries,
                state,
                acknowledgement: AcknowledgementRequest {
                    queue: acknowledgement.0,
                    positive: acknowledgement.1,
                    negative: acknowledgement.2,
                }
                .into(),
            }
        }
    }

    #[derive(Serialize, serde::Deserialize)]
    struct Records(#[serde(with = "as_messages")] SeqMap<Record>);

    proptest! {
        #[test]
        fn a_record_keeps_every_field_and_encodes_as_the_message(
            messages in prop::collection::vec((1u64..1000, message()), 0..40)
        ) {
            let mut model = BTreeMap::new();
            let mut records = SeqMap::default();
            for (sequence, mut message) in messages {
                message.sequence = sequence;
                let record = Record::new(message.clone());
                prop_assert_eq!(record.to_message(sequence), message.clone());
                prop_assert_eq!(record.size(), message.size());
                prop_assert_eq!(record.is_leased(), matches!(message.state, MessageState::Leased { .. }));
                records.insert(sequence, record);
                model.insert(sequence, message);
            }
            let bytes = bincode::serialize(&Records(records.clone())).unwrap();
            prop_assert_eq!(&bytes, &bincode::serialize(&model).unwrap());
            let back: Records = bincode::deserialize(&bytes).unwrap();
            prop_assert!(back.0 == records);
        }
    }

    #[test]
    fn a_message_stored_under_another_sequence_is_refused() {
        let message = StoredMessage {
            message_id: 7,
            sequence: 3,
            body: BodyRef { key: 7, len: 1 },
            headers: Sparse::default(),
            properties: Sparse::default(),
            group: Sparse::default(),
            priority: 0,
            enqueued_at_ms: 0,
            expires_at_ms: 0,
            deliveries: 0,
            state: MessageState::Ready,
            acknowledgement: Sparse::default(),
        };
        let forged = BTreeMap::from([(4u64, message)]);
        let bytes = bincode::serialize(&forged).unwrap();
        let error = bincode::deserialize::<Records>(&bytes)
            .err()
            .expect("refused");
        assert!(error.to_string().contains("sequence 4"), "{error}");
    }
}
