//! Queues on the wire: options (with their defaults and enums checked), stats and info.

use raftq_core::{Overflow, QueueError, QueueInfo, QueueOptions, QueueStats};

use crate::pb;

/// Proto options to domain options: a field left at 0 takes the domain default. An enum
/// value this version does not define is refused, not read as the default.
pub fn queue_options(options: Option<pb::QueueOptions>) -> Result<QueueOptions, QueueError> {
    let defaults = QueueOptions::default();
    let Some(options) = options else {
        return Ok(defaults);
    };
    let or = |value: u64, default: u64| if value == 0 { default } else { value };
    let overflow = match pb::OverflowPolicy::try_from(options.overflow) {
        Ok(pb::OverflowPolicy::Reject) => Overflow::Reject,
        Ok(pb::OverflowPolicy::DeadLetterOldest) => Overflow::DeadLetterOldest,
        Err(_) => {
            return Err(QueueError::invalid(
                "overflow",
                format!("{} is not an overflow policy", options.overflow),
            ));
        }
    };
    Ok(QueueOptions {
        dedup_window_ms: or(options.dedup_window_ms, defaults.dedup_window_ms),
        default_lease_ms: or(options.default_lease_ms, defaults.default_lease_ms),
        max_delivery_count: options.max_delivery_count,
        max_message_bytes: or(options.max_message_bytes, defaults.max_message_bytes),
        max_depth: or(options.max_depth, defaults.max_depth),
        dead_letter_queue: options.dead_letter_queue,
        dead_letter_expired: options.dead_letter_expired,
        default_ttl_ms: options.default_ttl_ms,
        max_bytes: options.max_bytes,
        overflow,
        journal: options.journal,
        journal_retention_ms: or(options.journal_retention_ms, defaults.journal_retention_ms),
        journal_max_messages: or(options.journal_max_messages, defaults.journal_max_messages),
    })
}

impl From<QueueOptions> for pb::QueueOptions {
    fn from(options: QueueOptions) -> Self {
        pb::QueueOptions {
            dedup_window_ms: options.dedup_window_ms,
            default_lease_ms: options.default_lease_ms,
            max_delivery_count: options.max_delivery_count,
            max_message_bytes: options.max_message_bytes,
            max_depth: options.max_depth,
            dead_letter_queue: options.dead_letter_queue,
            dead_letter_expired: options.dead_letter_expired,
            default_ttl_ms: options.default_ttl_ms,
            max_bytes: options.max_bytes,
            overflow: match options.overflow {
                Overflow::Reject => pb::OverflowPolicy::Reject,
                Overflow::DeadLetterOldest => pb::OverflowPolicy::DeadLetterOldest,
            } as i32,
            journal: options.journal,
            journal_retention_ms: options.journal_retention_ms,
            journal_max_messages: options.journal_max_messages,
        }
    }
}

impl From<QueueStats> for pb::QueueStats {
    fn from(stats: QueueStats) -> Self {
        pb::QueueStats {
            depth: stats.depth,
            in_flight: stats.in_flight,
            delayed: stats.delayed,
            total_sent: stats.total_sent,
            total_acked: stats.total_acked,
            total_deliveries: stats.total_deliveries,
            total_discarded: stats.total_discarded,
            total_expired: stats.total_expired,
            total_dead_lettered: stats.total_dead_lettered,
            groups: stats.groups,
            bytes: stats.bytes,
        }
    }
}

/// A queue as the API shows it, with the Raft group that holds it.
pub fn queue_in_group(info: QueueInfo, group: u64) -> pb::Queue {
    pb::Queue {
        raft_group: group,
        ..info.into()
    }
}

impl From<QueueInfo> for pb::Queue {
    fn from(info: QueueInfo) -> Self {
        pb::Queue {
            name: info.name,
            options: Some(info.options.into()),
            created_at_ms: info.created_at_ms,
            stats: Some(info.stats.into()),
            // The state does not know its group; the server names it.
            raft_group: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn zero_fields_take_the_defaults() {
        let options = queue_options(Some(pb::QueueOptions {
            max_depth: 7,
            ..pb::QueueOptions::default()
        }))
        .unwrap();
        assert_eq!(
            options,
            QueueOptions {
                max_depth: 7,
                ..QueueOptions::default()
            }
        );
        assert_eq!(queue_options(None).unwrap(), QueueOptions::default());
    }

    #[test]
    fn an_undefined_overflow_policy_is_refused() {
        let refused = queue_options(Some(pb::QueueOptions {
            overflow: 99,
            ..pb::QueueOptions::default()
        }));
        assert!(
            matches!(&refused, Err(QueueError::InvalidArgument { field, .. }) if field == "overflow"),
            "{refused:?}"
        );
    }

    /// Frozen bytes: the wire form of a queue's options must not drift.
    #[test]
    fn queue_options_wire_format_is_frozen() {
        let bytes = pb::QueueOptions::from(QueueOptions::default()).encode_to_vec();
        assert_eq!(
            bytes,
            [
                0x08, 0xe0, 0xa7, 0x12, 0x10, 0xb0, 0xea, 0x01, 0x20, 0x80, 0x80, 0x40, 0x28, 0xc0,
                0x84, 0x3d, // fields 1..5, unchanged since they were first frozen
                0x60, 0x80, 0xb8, 0x99, 0x29, // 12: journal_retention_ms 86400000
                0x68, 0xa0, 0x8d, 0x06, // 13: journal_max_messages 100000
            ]
        );
    }
}
