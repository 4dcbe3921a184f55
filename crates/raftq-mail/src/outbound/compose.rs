//! A queue's message as a mail: either its body is already a whole RFC 5322 message
//! (content type `message/rfc822`), or the mail is made from the message's headers
//! (`mail-to`, `mail-cc`, `mail-bcc`, `mail-from`, `mail-in-reply-to`), its label (the
//! Subject) and its body. Either way the Message-ID is derived from the raftq message id
//! (unless a whole message brings its own), so every attempt sends the same one.

use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Message};
use mail_parser::MessageParser;
use raftq_proto::pb;

use crate::address::{LOOP_HEADER, outbound_message_id, parse_address};
use crate::inbound::RFC822;

/// Message headers read when the mail is made from the message.
pub const MAIL_TO: &str = "mail-to";
pub const MAIL_CC: &str = "mail-cc";
pub const MAIL_BCC: &str = "mail-bcc";
pub const MAIL_FROM: &str = "mail-from";
pub const MAIL_IN_REPLY_TO: &str = "mail-in-reply-to";
/// Headers the bridge adds to each outbound mail.
pub const RAFTQ_MESSAGE_ID: &str = "X-Raftq-Message-Id";
pub const RAFTQ_QUEUE: &str = "X-Raftq-Queue";

/// A mail ready for the relay.
pub struct Composed {
    pub envelope: Envelope,
    pub bytes: Vec<u8>,
}

/// Why a message cannot become a mail (it is rejected with this, never retried).
#[derive(Debug, PartialEq, Eq)]
pub struct Unsendable(pub String);

pub struct Composer<'a> {
    pub domain: &'a str,
    /// The envelope sender and default From.
    pub from: &'a str,
    pub queue: &'a str,
}

impl Composer<'_> {
    pub fn compose(&self, message: &pb::ReceivedMessage) -> Result<Composed, Unsendable> {
        let properties = message.properties.clone().unwrap_or_default();
        let message_id = outbound_message_id(message.message_id, self.domain);
        let (recipients, bytes) = if properties.content_type.eq_ignore_ascii_case(RFC822) {
            self.whole(message, &message_id)?
        } else {
            self.made(message, &properties, &message_id)?
        };
        let sender = self
            .from
            .parse()
            .map_err(|error| Unsendable(format!("sender {}: {error}", self.from)))?;
        let envelope = Envelope::new(Some(sender), recipients)
            .map_err(|error| Unsendable(format!("envelope: {error}")))?;
        Ok(Composed {
            envelope,
            bytes: crlf(bytes),
        })
    }

    /// A body that is a whole mail: sent as it is, with a Message-ID added when missing.
    /// Recipients: the `mail-to`, `mail-cc` and `mail-bcc` headers when given, else the
    /// mail's To and Cc.
    fn whole(
        &self,
        message: &pb::ReceivedMessage,
        message_id: &str,
    ) -> Result<(Vec<lettre::Address>, Vec<u8>), Unsendable> {
        let parsed = MessageParser::default()
            .parse_headers(&message.body)
            .filter(|parsed| !parsed.headers().is_empty())
            .ok_or_else(|| Unsendable("the body is not an RFC 5322 message".into()))?;
        let mut listed: Vec<String> = [MAIL_TO, MAIL_CC, MAIL_BCC]
            .iter()
            .filter_map(|name| message.headers.get(*name))
            .flat_map(|list| split(list))
            .collect();
        if listed.is_empty() {
            for address in [parsed.to(), parsed.cc()].into_iter().flatten() {
                listed.extend(
                    address
                        .iter()
                        .filter_map(|addr| addr.address())
                        .map(str::to_string),
                );
            }
        }
        let recipients = self.recipients(&listed)?;
        let passed_here = parsed.headers_raw().any(|(name, value)| {
            name.eq_ignore_ascii_case(LOOP_HEADER) && value.trim().eq_ignore_ascii_case(self.domain)
        });
        if passed_here
            && recipients
                .iter()
                .any(|address| address.domain().eq_ignore_ascii_case(self.domain))
        {
            return Err(Unsendable(format!(
                "mail loop: this mail came in through the bridge for {} and would go back to it",
                self.domain
            )));
        }
        let mut bytes = Vec::with_capacity(message.body.len() + 128);
        bytes.extend_from_slice(
            format!("{RAFTQ_MESSAGE_ID}: {}\r\n", message.message_id).as_bytes(),
        );
        if parsed.message_id().is_none() {
            bytes.extend_from_slice(format!("Message-ID: {message_id}\r\n").as_bytes());
        }
        bytes.extend_from_slice(&message.body);
        Ok((recipients, bytes))
    }

    /// A mail made from the message's headers, label and body.
    fn made(
        &self,
        message: &pb::ReceivedMessage,
        properties: &pb::MessageProperties,
        message_id: &str,
    ) -> Result<(Vec<lettre::Address>, Vec<u8>), Unsendable> {
        let header = |name: &str| message.headers.get(name).map(String::as_str).unwrap_or("");
        let to = split(header(MAIL_TO));
        if to.is_empty() {
            return Err(Unsendable(format!(
                "no recipient: set the {MAIL_TO} header"
            )));
        }
        let (cc, bcc) = (split(header(MAIL_CC)), split(header(MAIL_BCC)));
        let from = match header(MAIL_FROM) {
            "" => self.from,
            from => from,
        };
        let mailbox = |text: &str| -> Result<Mailbox, Unsendable> {
            text.parse()
                .map_err(|error| Unsendable(format!("address {text:?}: {error}")))
        };
        let mut builder = Message::builder()
            .message_id(Some(message_id.to_string()))
            .from(mailbox(from)?)
            .subject(properties.label.clone())
            .date_now()
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii(RAFTQ_MESSAGE_ID.into()).expect("a valid header name"),
                message.message_id.to_string(),
            ))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii(RAFTQ_QUEUE.into()).expect("a valid header name"),
                self.queue.to_string(),
            ));
        for address in &to {
            builder = builder.to(mailbox(address)?);
        }
        for address in &cc {
            builder = builder.cc(mailbox(address)?);
        }
        if !properties.reply_to.is_empty() {
            builder = builder.reply_to(mailbox(&format!(
                "{}@{}",
                properties.reply_to, self.domain
            ))?);
        }
        let reference = header(MAIL_IN_REPLY_TO);
        if !reference.is_empty() {
            builder = builder
                .in_reply_to(reference.to_string())
                .references(reference.to_string());
        }
        let content_type = match properties.content_type.as_str() {
            "" => ContentType::TEXT_PLAIN,
            given => ContentType::parse(given)
                .map_err(|error| Unsendable(format!("content type {given:?}: {error}")))?,
        };
        let mail = builder
            .header(content_type)
            .body(message.body.clone())
            .map_err(|error| Unsendable(format!("building the mail: {error}")))?;
        let listed: Vec<String> = to.into_iter().chain(cc).chain(bcc).collect();
        Ok((self.recipients(&listed)?, mail.formatted()))
    }

    fn recipients(&self, listed: &[String]) -> Result<Vec<lettre::Address>, Unsendable> {
        if listed.is_empty() {
            return Err(Unsendable(format!(
                "no recipient: set the {MAIL_TO} header or To"
            )));
        }
        listed
            .iter()
            .map(|text| {
                let (local, domain) = parse_address(address_of(text))
                    .ok_or_else(|| Unsendable(format!("not a mail address: {text:?}")))?;
                lettre::Address::new(local, domain)
                    .map_err(|error| Unsendable(format!("not a mail address: {text:?}: {error}")))
            })
            .collect()
    }
}

/// `bytes` with every line ending CRLF: a bare CR or LF (possible in a whole mail taken in
/// by SMTP) would let a lenient relay see the mail's end, and commands after it, where the
/// sender put a bare `LF.CRLF` (SMTP smuggling).
fn crlf(bytes: Vec<u8>) -> Vec<u8> {
    if !bytes.iter().enumerate().any(|(i, &byte)| match byte {
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        _ => false,
    }) {
        return bytes;
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The mailboxes in a comma-separated header value (`Name <address>` or `address`).
fn split(list: &str) -> Vec<String> {
    list.split(',')
        .map(|item| item.trim().to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

/// The address inside a mailbox (`Name <address>` or `address`).
fn address_of(mailbox: &str) -> &str {
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(open), Some(close)) if open < close => mailbox[open + 1..close].trim(),
        _ => mailbox.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn composer() -> Composer<'static> {
        Composer {
            domain: "q.example",
            from: "raftq@q.example",
            queue: "mail.out",
        }
    }

    fn message(
        body: &str,
        headers: &[(&str, &str)],
        properties: pb::MessageProperties,
    ) -> pb::ReceivedMessage {
        pb::ReceivedMessage {
            message_id: 42,
            body: body.as_bytes().to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            properties: Some(properties),
            ..pb::ReceivedMessage::default()
        }
    }

    #[test]
    fn a_mail_is_made_from_headers_label_and_body() {
        let composed = composer()
            .compose(&message(
                "Your order shipped.",
                &[
                    (MAIL_TO, "Bob <bob@example.org>, carol@example.org"),
                    (MAIL_BCC, "audit@example.org"),
                ],
                pb::MessageProperties {
                    label: "Order 7".into(),
                    reply_to: "replies".into(),
                    ..Default::default()
                },
            ))
            .unwrap();
        let text = String::from_utf8(composed.bytes).unwrap();
        assert!(text.contains("Message-ID: <raftq.42@q.example>"), "{text}");
        assert!(text.contains("Subject: Order 7"), "{text}");
        assert!(text.contains("Reply-To: replies@q.example"), "{text}");
        assert!(text.contains("X-Raftq-Message-Id: 42"), "{text}");
        assert!(!text.contains("audit@"), "Bcc is not shown: {text}");
        assert_eq!(composed.envelope.to().len(), 3);
        assert_eq!(
            composed.envelope.from().unwrap().to_string(),
            "raftq@q.example"
        );
    }

    #[test]
    fn bare_line_feeds_cannot_end_a_mail_early() {
        let smuggled = "To: dan@example.org\r\n\r\nhi\n.\r\nMAIL FROM:<x@y>\r\nend\r\r\n";
        let whole = pb::MessageProperties {
            content_type: RFC822.into(),
            ..Default::default()
        };
        let composed = composer().compose(&message(smuggled, &[], whole)).unwrap();
        let text = String::from_utf8(composed.bytes).unwrap();
        assert!(text.contains("hi\r\n.\r\nMAIL"), "{text:?}");
        assert!(text.ends_with("end\r\n\r\n"), "{text:?}");
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']), "{text:?}");
        assert_eq!(crlf(b"a\r\nb".to_vec()), b"a\r\nb");
    }

    #[test]
    fn whole_mails_keep_their_id_and_loops_and_bad_input_are_unsendable() {
        let whole = pb::MessageProperties {
            content_type: RFC822.into(),
            ..Default::default()
        };
        let composed = composer()
            .compose(&message(
                "To: dan@example.org\r\nSubject: hi\r\n\r\nbody\r\n",
                &[],
                whole.clone(),
            ))
            .unwrap();
        let text = String::from_utf8(composed.bytes).unwrap();
        assert!(
            text.contains("Message-ID: <raftq.42@q.example>\r\n"),
            "{text}"
        );
        assert_eq!(composed.envelope.to()[0].to_string(), "dan@example.org");

        let looped = "X-Raftq-Loop: q.example\r\nTo: mail.out@q.example\r\n\r\nx\r\n";
        let refused = composer()
            .compose(&message(looped, &[], whole.clone()))
            .err()
            .unwrap();
        assert!(refused.0.starts_with("mail loop"), "{refused:?}");
        // The same mail to someone outside the domain is not a loop.
        assert!(
            composer()
                .compose(&message(looped, &[(MAIL_TO, "eve@example.org")], whole))
                .is_ok()
        );

        let none = composer()
            .compose(&message("x", &[], Default::default()))
            .err()
            .unwrap();
        assert!(none.0.contains("mail-to"), "{none:?}");
        let bad = composer()
            .compose(&message(
                "x",
                &[(MAIL_TO, "not an address")],
                Default::default(),
            ))
            .err()
            .unwrap();
        assert!(bad.0.contains("not an address"), "{bad:?}");
    }
}
