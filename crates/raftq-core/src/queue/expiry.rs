//! Time in a queue: delays and leases that end, expiry, forgetting, and when each is due.

use super::{AckedRun, DeadLetterReason, Queue, ready_key};
use crate::TimeMs;
use crate::message::MessageState;
use crate::record::Record;

impl Queue {
    /// Brings the queue up to `now_ms`: delays that ran out and leases that expired make
    /// messages ready again; messages past their time to be received expire; dedup and ack
    /// records past their window are forgotten.
    pub(crate) fn advance(&mut self, now_ms: TimeMs) {
        while let Some(&(at, sequence)) = self.delayed.first() {
            if at > now_ms {
                break;
            }
            self.delayed.pop_first();
            self.make_ready(sequence, now_ms);
        }
        while let Some(&(at, sequence)) = self.leases.first() {
            if at > now_ms {
                break;
            }
            self.leases.pop_first();
            self.make_ready(sequence, now_ms);
        }
        while let Some(&(at, sequence)) = self.expiry.first() {
            if at > now_ms {
                break;
            }
            self.expiry.pop_first();
            // A message under a lease may still be acknowledged; it expires when its lease
            // ends without an ack (see `make_ready`).
            let leased = self.messages.get(sequence).is_none_or(Record::is_leased);
            if !leased {
                self.drop_message(sequence, DeadLetterReason::Expired);
            }
        }
        self.dedup.expire(now_ms);
        while let Some(&AckedRun { at, first, count }) = self.acked_expiry.front() {
            if at > now_ms {
                break;
            }
            self.acked_expiry.pop_front();
            for message_id in first..first + count {
                self.acked.remove(message_id);
            }
        }
    }

    /// A message whose lease or delay ended: dead-letters (or discards) it once it was
    /// delivered the maximum number of times or has expired; otherwise it may be handed
    /// out again (at the head of its group, if it has one).
    pub(super) fn make_ready(&mut self, sequence: u64, now_ms: TimeMs) {
        let max = self.options.max_delivery_count;
        let Some(message) = self.messages.get_mut(sequence) else {
            return;
        };
        if max > 0 && message.deliveries >= max {
            self.drop_message(sequence, DeadLetterReason::MaxDeliveries);
            return;
        }
        if message.expires_at_ms != 0 && message.expires_at_ms <= now_ms {
            self.drop_message(sequence, DeadLetterReason::Expired);
            return;
        }
        message.set_state(MessageState::Ready);
        let group = message.group().to_string();
        let priority = message.priority;
        if group.is_empty() {
            self.ready.insert(ready_key(priority, sequence));
        } else {
            if let Some(entry) = self.groups.get_mut(&group)
                && entry.in_flight == Some(sequence)
            {
                entry.in_flight = None;
            }
            self.offer_group(&group);
        }
    }

    /// True when a receive at `now_ms` would hand out at least one message.
    pub(crate) fn has_deliverable(&self, now_ms: TimeMs) -> bool {
        !self.ready.is_empty()
            || self.delayed.first().is_some_and(|(at, _)| *at <= now_ms)
            || self.leases.first().is_some_and(|(at, _)| *at <= now_ms)
    }

    /// Earliest time at which a delayed or leased message becomes ready again.
    pub(crate) fn next_wakeup_ms(&self) -> Option<TimeMs> {
        let delayed = self.delayed.first().map(|(at, _)| *at);
        let leased = self.leases.first().map(|(at, _)| *at);
        match (delayed, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Earliest time anything in the queue changes by itself: a delay or lease ends, a
    /// message expires, a dedup or ack record is forgotten.
    pub(crate) fn next_due_ms(&self) -> Option<TimeMs> {
        [
            self.delayed.first().map(|(at, _)| *at),
            self.leases.first().map(|(at, _)| *at),
            self.expiry.first().map(|(at, _)| *at),
            self.dedup.next_due_ms(),
            self.acked_expiry.front().map(|run| run.at),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
