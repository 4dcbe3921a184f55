//! A received mail as a raftq message: the full original as the body (after the bridge's
//! trace header), the main headers as message headers, Subject as the label, In-Reply-To
//! as the correlation id, Reply-To as the reply-to queue when it is one of ours, and the
//! Message-ID as the idempotency key.

use mail_parser::{HeaderValue, MessageParser};
use raftq_client::Message;
use raftq_proto::pb;

use crate::address::{LOOP_HEADER, idempotency_key, message_id_of, parse_address};
use crate::reply::Reply;

/// The content type of a bridged mail: the body is the whole RFC 5322 message.
pub const RFC822: &str = "message/rfc822";
/// Longest value kept of one mail header (message headers are bounded in all).
const MAX_HEADER_VALUE: usize = 1_000;
/// Longest label and correlation id (the cluster's property limit is 1,024 bytes).
const MAX_PROPERTY: usize = 1_000;

/// Headers of the stored message (the mail's own, and the envelope's).
pub const FROM: &str = "mail-from";
pub const TO: &str = "mail-to";
pub const CC: &str = "mail-cc";
pub const MESSAGE_ID: &str = "mail-message-id";
pub const DATE: &str = "mail-date";
pub const ENVELOPE_FROM: &str = "mail-envelope-from";
pub const ENVELOPE_TO: &str = "mail-envelope-to";

/// What the session knows besides the mail's bytes.
pub struct Envelope<'a> {
    pub domain: &'a str,
    pub sender: &'a str,
    /// The recipient address this copy is for.
    pub recipient: &'a str,
}

/// The message to store, or the reply that refuses the mail. `queue_of` names the queue a
/// local part of the domain stands for (an alias resolved), or `None` when the bridge
/// takes no mail for it.
pub fn to_message(
    raw: &[u8],
    envelope: &Envelope<'_>,
    queue_of: impl Fn(&str) -> Option<String>,
) -> Result<Message, Reply> {
    let Some(parsed) = MessageParser::default().parse_headers(raw) else {
        return Err(Reply::new(
            554,
            [5, 6, 0],
            "not an RFC 5322 message: no header could be read",
        ));
    };
    if parsed.headers().is_empty() {
        return Err(Reply::new(
            554,
            [5, 6, 0],
            "not an RFC 5322 message: it has no header",
        ));
    }
    if parsed.headers_raw().any(|(name, value)| {
        name.eq_ignore_ascii_case(LOOP_HEADER) && value.trim().eq_ignore_ascii_case(envelope.domain)
    }) {
        return Err(Reply::new(
            554,
            [5, 4, 6],
            format!(
                "mail loop: this mail already passed the bridge for {}",
                envelope.domain
            ),
        ));
    }
    let mut body = format!("{LOOP_HEADER}: {}\r\n", envelope.domain).into_bytes();
    body.extend_from_slice(raw);
    let mut message = Message::new(body).with_key(idempotency_key(parsed.message_id(), raw));

    let addresses = |address: Option<&mail_parser::Address<'_>>| {
        address
            .map(|address| {
                address
                    .iter()
                    .filter_map(|addr| addr.address())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut headers = vec![
        (FROM, addresses(parsed.from())),
        (TO, addresses(parsed.to())),
        (CC, addresses(parsed.cc())),
        (
            MESSAGE_ID,
            parsed.message_id().unwrap_or_default().to_string(),
        ),
        (
            DATE,
            parsed
                .date()
                .map(|date| date.to_rfc3339())
                .unwrap_or_default(),
        ),
        (ENVELOPE_FROM, envelope.sender.to_string()),
        (ENVELOPE_TO, envelope.recipient.to_string()),
    ];
    headers.retain(|(_, value)| !value.is_empty());
    for (name, value) in headers {
        message = message.with_header(name, bounded(&value, MAX_HEADER_VALUE));
    }

    let reply_to = parsed
        .reply_to()
        .and_then(|address| address.first())
        .and_then(|addr| addr.address())
        .and_then(parse_address)
        .filter(|(_, domain)| domain.eq_ignore_ascii_case(envelope.domain))
        .and_then(|(local, _)| queue_of(&local))
        .unwrap_or_default();
    let in_reply_to = first_reference(parsed.in_reply_to());
    let correlation_id = match in_reply_to {
        Some(reference) => match message_id_of(&reference, envelope.domain) {
            Some(id) => id.to_string(),
            None => bounded(&reference, MAX_PROPERTY),
        },
        None => String::new(),
    };
    Ok(message.with_properties(pb::MessageProperties {
        label: bounded(parsed.subject().unwrap_or_default(), MAX_PROPERTY),
        correlation_id,
        reply_to,
        content_type: RFC822.to_string(),
    }))
}

/// The first message id an In-Reply-To names (it may hold one or several).
fn first_reference(value: &HeaderValue<'_>) -> Option<String> {
    match value {
        HeaderValue::Text(text) => Some(text.to_string()),
        HeaderValue::TextList(list) => list.first().map(|text| text.to_string()),
        _ => None,
    }
    .filter(|text| !text.trim().is_empty())
}

/// `text` cut to at most `max` bytes on a character boundary.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope<'static> {
        Envelope {
            domain: "q.example",
            sender: "alice@example.org",
            recipient: "orders@q.example",
        }
    }

    #[test]
    fn fields_are_mapped_and_loops_refused() {
        let raw = b"From: Alice <alice@example.org>\r\nTo: orders@q.example\r\n\
            Subject: =?UTF-8?Q?caf=C3=A9?= order\r\nMessage-ID: <m1@example.org>\r\n\
            In-Reply-To: <raftq.77@q.example>\r\nReply-To: replies@q.example\r\n\r\nhello\r\n";
        let message = to_message(raw, &envelope(), |local| {
            (local == "replies").then(|| local.to_string())
        })
        .unwrap()
        .into_proto();
        let properties = message.properties.unwrap();
        assert_eq!(properties.label, "café order");
        assert_eq!(properties.correlation_id, "77");
        assert_eq!(properties.reply_to, "replies");
        assert_eq!(properties.content_type, RFC822);
        assert_eq!(message.idempotency_key, "mail:<m1@example.org>");
        assert_eq!(message.headers[FROM], "alice@example.org");
        assert!(
            message
                .body
                .starts_with(b"X-Raftq-Loop: q.example\r\nFrom: Alice")
        );
        assert!(message.body.ends_with(raw));

        // Reply-To outside the domain, or not a queue, is not a reply-to queue.
        let message = to_message(raw, &envelope(), |_| None).unwrap().into_proto();
        assert_eq!(message.properties.unwrap().reply_to, "");

        let mut looped = b"X-Raftq-Loop: Q.example\r\n".to_vec();
        looped.extend_from_slice(raw);
        let refused =
            to_message(&looped, &envelope(), |local| Some(local.to_string())).unwrap_err();
        assert_eq!((refused.code, refused.status), (554, [5, 4, 6]));
    }

    #[test]
    fn odd_mail_is_stored_or_refused_precisely() {
        // No Message-ID: the key is a digest of the bytes, the same for the same mail.
        let raw = b"Subject: no id\r\n\r\nbody\r\n";
        let one = to_message(raw, &envelope(), |local| Some(local.to_string()))
            .unwrap()
            .into_proto();
        let two = to_message(raw, &envelope(), |local| Some(local.to_string()))
            .unwrap()
            .into_proto();
        assert!(one.idempotency_key.starts_with("mail-sha256:"));
        assert_eq!(one.idempotency_key, two.idempotency_key);
        // Raw 8-bit bytes in a header are kept as text.
        let raw = b"Subject: caf\xe9 \xc3\xa9\r\nMessage-ID: <8@x>\r\n\r\n.\r\n";
        let message = to_message(raw, &envelope(), |local| Some(local.to_string()))
            .unwrap()
            .into_proto();
        assert!(message.properties.unwrap().label.starts_with("caf"));
        // No header at all.
        let refused = to_message(b"\r\njust a body\r\n", &envelope(), |local| {
            Some(local.to_string())
        })
        .unwrap_err();
        assert_eq!((refused.code, refused.status), (554, [5, 6, 0]));
    }
}
