//! Names on both sides of the bridge: mail addresses and queues, the Message-IDs the
//! bridge gives outbound mail, the idempotency key of an inbound mail, and the trace
//! header that stops a mail from going round.

use sha2::{Digest, Sha256};

/// The trace header the bridge puts on every mail it takes in; a mail that carries one
/// with the bridge's own domain has been here before (a loop).
pub const LOOP_HEADER: &str = "X-Raftq-Loop";

/// `local@domain`, from an address with or without angle brackets; `None` when it is not
/// one.
pub fn parse_address(text: &str) -> Option<(String, String)> {
    let text = text.trim();
    let text = text
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(text);
    let (local, domain) = text.rsplit_once('@')?;
    if local.is_empty()
        || domain.is_empty()
        || text.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',')
    {
        return None;
    }
    Some((local.to_string(), domain.to_ascii_lowercase()))
}

/// The Message-ID of the mail made from message `message_id` (with its angle brackets):
/// the same on every delivery attempt, so a receiver can drop a resend.
pub fn outbound_message_id(message_id: u64, domain: &str) -> String {
    format!("<raftq.{message_id}@{domain}>")
}

/// The raftq message id inside a Message-ID the bridge made (`In-Reply-To` of a reply).
pub fn message_id_of(reference: &str, domain: &str) -> Option<u64> {
    let inner = reference
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>');
    let (local, at) = inner.rsplit_once('@')?;
    if !at.eq_ignore_ascii_case(domain) {
        return None;
    }
    local.strip_prefix("raftq.")?.parse().ok()
}

/// The idempotency key of an inbound mail: its Message-ID, or a digest of its bytes when it
/// has none, so that a mail sent again is stored once. Long ones are digested to fit the
/// 256-byte limit.
pub fn idempotency_key(message_id: Option<&str>, raw: &[u8]) -> String {
    match message_id {
        Some(id) if !id.trim().is_empty() && id.len() <= 200 => format!("mail:<{}>", id.trim()),
        Some(id) if !id.trim().is_empty() => {
            format!(
                "mail-id-sha256:{}",
                hex(&Sha256::digest(id.trim().as_bytes()))
            )
        }
        _ => format!("mail-sha256:{}", hex(&Sha256::digest(raw))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_message_ids_and_keys() {
        assert_eq!(
            parse_address("<Orders@Queues.Example.org>"),
            Some(("Orders".into(), "queues.example.org".into()))
        );
        assert_eq!(parse_address("<>"), None);
        assert_eq!(parse_address("a b@c"), None);
        let id = outbound_message_id(42, "q.example");
        assert_eq!(id, "<raftq.42@q.example>");
        assert_eq!(message_id_of(&id, "Q.EXAMPLE"), Some(42));
        assert_eq!(message_id_of("raftq.42@elsewhere", "q.example"), None);
        assert_eq!(message_id_of("<x.42@q.example>", "q.example"), None);
        assert_eq!(idempotency_key(Some("a@b"), b"x"), "mail:<a@b>");
        let long = "x".repeat(300);
        assert!(idempotency_key(Some(&long), b"x").len() < 100);
        assert_ne!(idempotency_key(None, b"one"), idempotency_key(None, b"two"));
        assert_eq!(
            idempotency_key(None, b"one"),
            idempotency_key(Some(" "), b"one")
        );
    }
}
