//! The cluster-wide `Limits` (replicated with the state) and a queue's `QueueOptions`
//! with their defaults and validation; request checks against the limits are in `checks`.

use serde::{Deserialize, Serialize};

use crate::QueueError;

/// Cluster-wide hard limits. Every value is explicit; per-queue options must stay inside them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_queue_name_len: usize,
    pub max_queues: u64,
    /// Upper bound for any queue's `max_message_bytes` (body plus headers).
    pub max_message_bytes: u64,
    pub max_batch_messages: usize,
    pub max_receive_messages: u32,
    /// A receive stops adding messages once their bodies reach this many bytes (it always
    /// returns at least one message when one is ready).
    pub max_receive_bytes: u64,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_idempotency_key_len: usize,
    pub min_lease_ms: u64,
    pub max_lease_ms: u64,
    pub max_dedup_window_ms: u64,
    pub max_nack_delay_ms: u64,
    pub max_queue_depth: u64,
    pub max_delivery_count: u32,
    pub max_priority: u8,
    /// Longest group key and longest property value (label, correlation id, content type).
    pub max_group_len: usize,
    pub max_property_len: usize,
    /// Longest delay before first delivery, and longest time to be received.
    pub max_delay_ms: u64,
    pub max_ttl_ms: u64,
    /// How long a committed transaction id is remembered, so a retried commit is answered
    /// with the first outcome instead of being applied again.
    pub transaction_window_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue_name_len: 128,
            max_queues: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            max_batch_messages: 1_000,
            max_receive_messages: 1_000,
            max_receive_bytes: 16 * 1024 * 1024,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_idempotency_key_len: 256,
            min_lease_ms: 100,
            max_lease_ms: 12 * 60 * 60 * 1000,
            max_dedup_window_ms: 24 * 60 * 60 * 1000,
            max_nack_delay_ms: 12 * 60 * 60 * 1000,
            max_queue_depth: 100_000_000,
            max_delivery_count: 10_000,
            max_priority: 7,
            max_group_len: 256,
            max_property_len: 1024,
            max_delay_ms: 7 * 24 * 60 * 60 * 1000,
            max_ttl_ms: 30 * 24 * 60 * 60 * 1000,
            transaction_window_ms: 5 * 60 * 1000,
        }
    }
}

/// Options fixed when a queue is created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueOptions {
    /// How long an idempotency key is remembered after its send.
    pub dedup_window_ms: u64,
    /// Lease (visibility timeout) used when a receive names none.
    pub default_lease_ms: u64,
    /// Deliveries after which a message is no longer handed out; 0 means unlimited.
    pub max_delivery_count: u32,
    /// Largest accepted message: body plus header keys and values.
    pub max_message_bytes: u64,
    /// Most messages the queue holds (ready, delayed and in flight).
    pub max_depth: u64,
    /// Where messages go after `max_delivery_count` deliveries (and, with
    /// `dead_letter_expired`, when they expire); created with default options when first
    /// needed. Empty: such messages are discarded and counted.
    pub dead_letter_queue: String,
    pub dead_letter_expired: bool,
    /// Time to be received for messages that name none (0: they never expire).
    pub default_ttl_ms: u64,
    /// Most bytes (body, headers, group and properties) the queue holds; 0: no byte limit.
    pub max_bytes: u64,
    /// What a send that would pass `max_depth` or `max_bytes` does.
    pub overflow: Overflow,
    /// Keep a copy of every consumed (acked) message in the queue `<name>.journal`
    /// (created on demand) for `journal_retention_ms`, at most `journal_max_messages`
    /// (the oldest copies make room).
    pub journal: bool,
    pub journal_retention_ms: u64,
    pub journal_max_messages: u64,
}

/// The journal queue of a queue.
pub fn journal_queue_name(queue: &str) -> String {
    format!("{queue}.journal")
}

/// A full queue's answer to a send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Overflow {
    /// Refuse the send (RESOURCE_EXHAUSTED); nothing stored is touched.
    #[default]
    Reject,
    /// Make room by removing the oldest messages not under a lease: to the dead-letter
    /// queue (reason `overflow`) when the queue has one, else discarded.
    DeadLetterOldest,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            dedup_window_ms: 5 * 60 * 1000,
            default_lease_ms: 30_000,
            max_delivery_count: 0,
            max_message_bytes: 1024 * 1024,
            max_depth: 1_000_000,
            dead_letter_queue: String::new(),
            dead_letter_expired: false,
            default_ttl_ms: 0,
            max_bytes: 0,
            overflow: Overflow::Reject,
            journal: false,
            journal_retention_ms: 24 * 60 * 60 * 1000,
            journal_max_messages: 100_000,
        }
    }
}

impl QueueOptions {
    pub fn validate(&self, limits: &Limits) -> Result<(), QueueError> {
        if self.dedup_window_ms > limits.max_dedup_window_ms {
            return Err(QueueError::invalid(
                "dedup_window_ms",
                format!("must be at most {} ms", limits.max_dedup_window_ms),
            ));
        }
        limits.check_lease("default_lease_ms", self.default_lease_ms)?;
        if self.max_delivery_count > limits.max_delivery_count {
            return Err(QueueError::invalid(
                "max_delivery_count",
                format!("must be at most {}", limits.max_delivery_count),
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > limits.max_message_bytes {
            return Err(QueueError::invalid(
                "max_message_bytes",
                format!("must be in 1..={}", limits.max_message_bytes),
            ));
        }
        if self.max_depth == 0 || self.max_depth > limits.max_queue_depth {
            return Err(QueueError::invalid(
                "max_depth",
                format!("must be in 1..={}", limits.max_queue_depth),
            ));
        }
        if !self.dead_letter_queue.is_empty() {
            validate_queue_name(&self.dead_letter_queue, limits).map_err(|error| {
                QueueError::invalid("dead_letter_queue", format!("not a queue name: {error}"))
            })?;
        }
        if self.dead_letter_expired && self.dead_letter_queue.is_empty() {
            return Err(QueueError::invalid(
                "dead_letter_expired",
                "needs a dead_letter_queue",
            ));
        }
        if self.journal_retention_ms == 0 || self.journal_retention_ms > limits.max_ttl_ms {
            return Err(QueueError::invalid(
                "journal_retention_ms",
                format!("must be in 1..={} ms", limits.max_ttl_ms),
            ));
        }
        if self.journal_max_messages == 0 || self.journal_max_messages > limits.max_queue_depth {
            return Err(QueueError::invalid(
                "journal_max_messages",
                format!("must be in 1..={}", limits.max_queue_depth),
            ));
        }
        if self.default_ttl_ms > limits.max_ttl_ms {
            return Err(QueueError::invalid(
                "default_ttl_ms",
                format!("must be at most {} ms", limits.max_ttl_ms),
            ));
        }
        Ok(())
    }
}

/// Queue names: 1..=max characters of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`.
pub fn validate_queue_name(name: &str, limits: &Limits) -> Result<(), QueueError> {
    let fail = |reason: &str| QueueError::InvalidQueueName {
        name: name.chars().take(200).collect(),
        reason: reason.to_string(),
    };
    if name.is_empty() {
        return Err(fail("must not be empty"));
    }
    if name.len() > limits.max_queue_name_len {
        return Err(fail(&format!(
            "longer than {} characters",
            limits.max_queue_name_len
        )));
    }
    if name.starts_with('.') || name.starts_with('-') {
        return Err(fail("must not start with '.' or '-'"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(fail(&format!(
            "character {bad:?} is not allowed (use A-Z a-z 0-9 . _ -)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_documented_rules() {
        let limits = Limits::default();
        for good in ["orders", "a", "Orders.v2", "in_flight-9"] {
            assert!(validate_queue_name(good, &limits).is_ok(), "{good}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            ".hidden",
            "-x",
            "has space",
            "slash/name",
            "colon:x",
            &long,
        ] {
            assert!(
                matches!(
                    validate_queue_name(bad, &limits),
                    Err(QueueError::InvalidQueueName { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn default_options_are_valid_and_zero_lease_is_not() {
        let limits = Limits::default();
        assert!(QueueOptions::default().validate(&limits).is_ok());
        let zero_lease = QueueOptions {
            default_lease_ms: 0,
            ..QueueOptions::default()
        };
        assert!(matches!(
            zero_lease.validate(&limits),
            Err(QueueError::InvalidArgument { field, .. }) if field == "default_lease_ms"
        ));
    }
}
