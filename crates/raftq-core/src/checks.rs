//! Checks a request must pass on its own, whatever the state: made by the server before
//! it proposes a command (so a refused request writes nothing) and again by the state
//! machine when it applies one. One definition serves both.

use crate::{Limits, NewMessage, QueueError, validate_queue_name};

/// The longest detail a consumer may give when it rejects a message.
pub const MAX_REJECT_DETAIL: usize = 1_024;

impl Limits {
    pub fn check_lease(&self, field: &str, lease_ms: u64) -> Result<(), QueueError> {
        if lease_ms < self.min_lease_ms || lease_ms > self.max_lease_ms {
            return Err(QueueError::invalid(
                field,
                format!(
                    "{lease_ms} ms is outside {}..={} ms",
                    self.min_lease_ms, self.max_lease_ms
                ),
            ));
        }
        Ok(())
    }

    /// Checks what a message must satisfy on any queue: its size, header count and size,
    /// key length.
    pub fn check_message(&self, message: &NewMessage) -> Result<(), QueueError> {
        if message.size() > self.max_message_bytes {
            return Err(QueueError::MessageTooLarge {
                size: message.size(),
                limit: self.max_message_bytes,
            });
        }
        if message.headers.len() > self.max_headers {
            return Err(QueueError::invalid(
                "headers",
                format!(
                    "{} headers exceed the limit of {}",
                    message.headers.len(),
                    self.max_headers
                ),
            ));
        }
        if message.headers.keys().any(String::is_empty) {
            return Err(QueueError::invalid(
                "headers",
                "header names must not be empty",
            ));
        }
        let header_bytes: usize = message.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > self.max_header_bytes {
            return Err(QueueError::invalid(
                "headers",
                format!(
                    "{header_bytes} bytes of headers exceed the limit of {}",
                    self.max_header_bytes
                ),
            ));
        }
        if message.idempotency_key.len() > self.max_idempotency_key_len {
            return Err(QueueError::invalid(
                "idempotency_key",
                format!("longer than {} bytes", self.max_idempotency_key_len),
            ));
        }
        if message.group.len() > self.max_group_len {
            return Err(QueueError::invalid(
                "group",
                format!("longer than {} bytes", self.max_group_len),
            ));
        }
        if message.priority > self.max_priority {
            return Err(QueueError::invalid(
                "priority",
                format!("{} is outside 0..={}", message.priority, self.max_priority),
            ));
        }
        if message.delay_ms > self.max_delay_ms {
            return Err(QueueError::invalid(
                "delay_ms",
                format!("must be at most {} ms", self.max_delay_ms),
            ));
        }
        if message.time_to_reach_ms > self.max_ttl_ms {
            return Err(QueueError::invalid(
                "time_to_reach_ms",
                format!("must be at most {} ms", self.max_ttl_ms),
            ));
        }
        if message.ttl_ms > self.max_ttl_ms {
            return Err(QueueError::invalid(
                "ttl_ms",
                format!("must be at most {} ms", self.max_ttl_ms),
            ));
        }
        let properties = &message.properties;
        for (field, value) in [
            ("label", &properties.label),
            ("correlation_id", &properties.correlation_id),
            ("content_type", &properties.content_type),
        ] {
            if value.len() > self.max_property_len {
                return Err(QueueError::invalid(
                    field,
                    format!("longer than {} bytes", self.max_property_len),
                ));
            }
        }
        let acknowledgement = &message.acknowledgement;
        if !acknowledgement.queue.is_empty() {
            validate_queue_name(&acknowledgement.queue, self).map_err(|error| {
                QueueError::invalid("ack_queue", format!("not a queue name: {error}"))
            })?;
            if !acknowledgement.positive && !acknowledgement.negative {
                return Err(QueueError::invalid(
                    "ack_queue",
                    "ask for positive and/or negative acknowledgements",
                ));
            }
        } else if acknowledgement.positive || acknowledgement.negative {
            return Err(QueueError::invalid(
                "ack_queue",
                "acknowledgements need a queue to go to",
            ));
        }
        if !properties.reply_to.is_empty() {
            validate_queue_name(&properties.reply_to, self).map_err(|error| {
                QueueError::invalid("reply_to", format!("not a queue name: {error}"))
            })?;
        }
        Ok(())
    }
}

impl Limits {
    /// A send's batch: 1 to `max_batch_messages` messages, each within the limits every
    /// queue has.
    pub fn check_send_batch(&self, messages: &[NewMessage]) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Err(QueueError::invalid("messages", "the batch is empty"));
        }
        if messages.len() > self.max_batch_messages {
            return Err(QueueError::invalid(
                "messages",
                format!(
                    "{} messages exceed the batch limit of {}",
                    messages.len(),
                    self.max_batch_messages
                ),
            ));
        }
        messages
            .iter()
            .try_for_each(|message| self.check_message(message))
    }

    /// How many messages one receive may ask for.
    pub fn check_receive_size(&self, max_messages: u32) -> Result<(), QueueError> {
        if max_messages == 0 || max_messages > self.max_receive_messages {
            return Err(QueueError::invalid(
                "max_messages",
                format!("must be in 1..={}", self.max_receive_messages),
            ));
        }
        Ok(())
    }

    /// A list of receipts to settle at once, at most `max_batch_messages` (none is allowed
    /// where the receipts ride along with another request).
    pub fn check_receipts(&self, field: &str, count: usize) -> Result<(), QueueError> {
        if count > self.max_batch_messages {
            return Err(QueueError::invalid(
                field,
                format!("must hold at most {} receipts", self.max_batch_messages),
            ));
        }
        Ok(())
    }

    /// How long a nacked message may stay invisible.
    pub fn check_nack_delay(&self, field: &str, delay_ms: u64) -> Result<(), QueueError> {
        if delay_ms > self.max_nack_delay_ms {
            return Err(QueueError::invalid(
                field,
                format!("must be at most {} ms", self.max_nack_delay_ms),
            ));
        }
        Ok(())
    }

    /// A rejection's detail: at most [`MAX_REJECT_DETAIL`] bytes.
    pub fn check_reject_detail(&self, detail: &str) -> Result<(), QueueError> {
        if detail.len() > MAX_REJECT_DETAIL {
            return Err(QueueError::invalid(
                "detail",
                format!("must be at most {MAX_REJECT_DETAIL} bytes"),
            ));
        }
        Ok(())
    }

    /// An `AckBatch`: 1 to `max_batch_messages` receipts.
    pub fn check_ack_batch(&self, count: usize) -> Result<(), QueueError> {
        if count == 0 || count > self.max_batch_messages {
            return Err(QueueError::invalid(
                "receipts",
                format!("must hold 1 to {} receipts", self.max_batch_messages),
            ));
        }
        Ok(())
    }

    /// A transaction's id: 1 to `max_idempotency_key_len` bytes.
    pub fn check_transaction_id(&self, transaction_id: &str) -> Result<(), QueueError> {
        if transaction_id.is_empty() || transaction_id.len() > self.max_idempotency_key_len {
            return Err(QueueError::invalid(
                "transaction_id",
                format!("must be 1..={} bytes", self.max_idempotency_key_len),
            ));
        }
        Ok(())
    }

    /// A transaction's parts: 1 to `max_batch_messages` acks and sends in all, each sent
    /// message within the limits every queue has.
    pub fn check_transaction_parts<'a>(
        &self,
        acks: usize,
        sends: impl ExactSizeIterator<Item = &'a NewMessage>,
    ) -> Result<(), QueueError> {
        let parts = acks + sends.len();
        if parts == 0 || parts > self.max_batch_messages {
            return Err(QueueError::invalid(
                "transaction",
                format!("must hold 1..={} acks and sends", self.max_batch_messages),
            ));
        }
        sends
            .into_iter()
            .try_for_each(|message| self.check_message(message))
    }
}
