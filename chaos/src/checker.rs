//! Reads a history (workload, nemesis and final drain) and decides whether raftq kept its
//! promises: nothing acknowledged lost, nothing consumed twice, nothing invented, producer
//! order kept; and how long sends were unavailable while a majority was up.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use crate::history::{Event, Op, Outcome};
use crate::unavailability::{self, FaultSpan, KindUnavailability};

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub operations: usize,
    pub sends_ok: usize,
    pub sends_unknown: usize,
    pub sends_failed: usize,
    pub acks_ok: usize,
    pub faults: usize,
    /// Sends acknowledged as ok that nobody consumed.
    pub lost: Vec<String>,
    /// Values acknowledged (consumed) more than once.
    pub duplicates: Vec<String>,
    /// Values delivered or acked that no send produced.
    pub phantoms: Vec<String>,
    /// Sends with unknown outcome that were consumed more than once.
    pub unknown_consumed_twice: Vec<String>,
    pub order_violations: Vec<String>,
    /// Longest stretch without a successful send, not counting time when a majority of
    /// nodes was down.
    pub longest_unavailable_ms: u64,
    /// The longest of those stretches put down to each fault kind, and to none (see
    /// [`unavailability::by_fault_kind`]).
    pub unavailable_by_fault: Vec<KindUnavailability>,
    pub valid: bool,
}

impl Verdict {
    pub fn counts_line(&self) -> String {
        format!(
            "operations={} sends_ok={} sends_unknown={} acks_ok={} faults={} lost={} duplicates={} phantoms={} order_violations={} longest_unavailable={:.1}s",
            self.operations,
            self.sends_ok,
            self.sends_unknown,
            self.acks_ok,
            self.faults,
            self.lost.len(),
            self.duplicates.len(),
            self.phantoms.len(),
            self.order_violations.len(),
            self.longest_unavailable_ms as f64 / 1000.0
        )
    }

    /// The longest unavailable stretch after each fault kind, as a table.
    pub fn unavailability_table(&self) -> String {
        unavailability::table(&self.unavailable_by_fault)
    }
}

struct FirstDelivery {
    start_ms: u64,
    end_ms: u64,
    attempt: u32,
}

/// Judges `events`; availability is measured from 0 to `producing_end_ms`.
pub fn check(events: &[Event], producing_end_ms: u64) -> Verdict {
    let mut verdict = Verdict {
        operations: events.len(),
        ..Verdict::default()
    };
    let mut sent: HashMap<&str, Outcome> = HashMap::new();
    let mut sends_by_producer: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut ok_acks: HashMap<&str, usize> = HashMap::new();
    let mut unknown_acks: HashSet<&str> = HashSet::new();
    let mut sequence_of: HashMap<&str, u64> = HashMap::new();
    let mut first_delivery: HashMap<&str, FirstDelivery> = HashMap::new();
    let mut delivered: HashSet<&str> = HashSet::new();
    let mut outages: Vec<(u64, u64)> = Vec::new();
    let mut faults: Vec<FaultSpan> = Vec::new();
    let mut send_successes: Vec<u64> = Vec::new();
    // Every send (any outcome) of each producer, in invocation order: a grouped producer's
    // send order is its group's order.
    let mut all_sends: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut group_deliveries: BTreeMap<&str, Vec<(u64, u64, &str)>> = BTreeMap::new();

    let mut receives: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e.op, Op::Receive { .. }))
        .collect();
    receives.sort_by_key(|e| e.start_ms);
    for event in events {
        match &event.op {
            Op::Send { value } => {
                sent.insert(value, event.outcome);
                all_sends.entry(&event.process).or_default().push(event);
                match event.outcome {
                    Outcome::Ok => {
                        verdict.sends_ok += 1;
                        if reaches_cluster(&event.process) {
                            send_successes.push(event.end_ms);
                        }
                        sends_by_producer
                            .entry(&event.process)
                            .or_default()
                            .push(event);
                    }
                    Outcome::Unknown => verdict.sends_unknown += 1,
                    Outcome::Failed => verdict.sends_failed += 1,
                }
            }
            Op::Ack { value } => match event.outcome {
                Outcome::Ok => {
                    verdict.acks_ok += 1;
                    *ok_acks.entry(value).or_default() += 1;
                }
                Outcome::Unknown => {
                    unknown_acks.insert(value);
                }
                Outcome::Failed => {}
            },
            Op::Receive { .. } => {}
            Op::Fault {
                kind,
                majority_down,
                ..
            } => {
                verdict.faults += 1;
                faults.push(FaultSpan {
                    kind,
                    start_ms: event.start_ms,
                    end_ms: event.end_ms,
                });
                if *majority_down {
                    outages.push((event.start_ms, event.end_ms));
                }
            }
        }
    }
    for event in &receives {
        let Op::Receive { delivered: batch } = &event.op else {
            continue;
        };
        for pair in batch.windows(2) {
            if pair[0].sequence >= pair[1].sequence {
                verdict.order_violations.push(format!(
                    "{} received sequence {} before {} in one response at {} ms",
                    event.process, pair[0].sequence, pair[1].sequence, event.start_ms
                ));
            }
        }
        for message in batch {
            delivered.insert(&message.value);
            if !message.group.is_empty() {
                group_deliveries.entry(&message.group).or_default().push((
                    event.start_ms,
                    event.end_ms,
                    &message.value,
                ));
            }
            sequence_of
                .entry(&message.value)
                .or_insert(message.sequence);
            first_delivery
                .entry(&message.value)
                .or_insert(FirstDelivery {
                    start_ms: event.start_ms,
                    end_ms: event.end_ms,
                    attempt: message.attempt,
                });
        }
    }

    for (value, outcome) in &sent {
        let acks = ok_acks.get(value).copied().unwrap_or(0);
        if *outcome == Outcome::Ok && acks == 0 && !unknown_acks.contains(value) {
            verdict.lost.push(value.to_string());
        }
        if acks > 1 {
            verdict.duplicates.push(value.to_string());
            if *outcome == Outcome::Unknown {
                verdict.unknown_consumed_twice.push(value.to_string());
            }
        }
    }
    for value in delivered.iter().chain(ok_acks.keys()) {
        if !sent.contains_key(value) && !verdict.phantoms.iter().any(|p| p == value) {
            verdict.phantoms.push(value.to_string());
        }
    }

    // Values sent in a message group are handed out in order within their group only:
    // the producer-wide first-delivery order does not apply to them.
    let grouped: HashSet<&str> = group_deliveries
        .values()
        .flat_map(|deliveries| deliveries.iter().map(|(_, _, value)| *value))
        .collect();
    let ungrouped_first: HashMap<&str, FirstDelivery> = first_delivery
        .into_iter()
        .filter(|(value, _)| !grouped.contains(value))
        .collect();
    for (producer, sends) in &sends_by_producer {
        check_producer_order(
            producer,
            sends,
            &sequence_of,
            &ungrouped_first,
            &mut verdict.order_violations,
        );
    }

    let mut send_index: HashMap<&str, usize> = HashMap::new();
    for sends in all_sends.values_mut() {
        sends.sort_by_key(|e| e.start_ms);
        for (index, send) in sends.iter().enumerate() {
            if let Op::Send { value } = &send.op {
                send_index.insert(value, index);
            }
        }
    }
    for (group, deliveries) in &group_deliveries {
        check_group_order(
            group,
            deliveries,
            &send_index,
            &mut verdict.order_violations,
        );
    }

    let windows = unavailability::windows(send_successes, &outages, producing_end_ms);
    verdict.longest_unavailable_ms = windows
        .iter()
        .map(|window| window.unavailable_ms)
        .max()
        .unwrap_or(0);
    verdict.unavailable_by_fault = unavailability::by_fault_kind(&windows, &faults);
    verdict.lost.sort();
    verdict.duplicates.sort();
    verdict.phantoms.sort();
    verdict.unknown_consumed_twice.sort();
    verdict.valid = verdict.lost.is_empty()
        && verdict.duplicates.is_empty()
        && verdict.phantoms.is_empty()
        && verdict.order_violations.is_empty();
    verdict
}

/// Whether a producer's sends are answered by the cluster itself: the outbox producers
/// ("o*") and the agent producers ("a*") are answered from a local disk, the PostgreSQL
/// producers ("d*") by the database, so their sends go on while the cluster is unavailable
/// and do not count towards its availability.
fn reaches_cluster(process: &str) -> bool {
    !(process.starts_with('o') || process.starts_with('a') || process.starts_with('d'))
}

/// A producer sends one value after another. The cluster must give a later value a later
/// queue sequence, and must not hand out a later value for the first time before an
/// earlier one was first handed out (the earlier one was ready, so FIFO would pick it).
/// Only first deliveries seen with attempt 1 count: an unobserved earlier delivery (a
/// receive whose answer was lost) says nothing about order.
fn check_producer_order(
    producer: &str,
    sends: &[&Event],
    sequence_of: &HashMap<&str, u64>,
    first_delivery: &HashMap<&str, FirstDelivery>,
    violations: &mut Vec<String>,
) {
    let mut ordered: Vec<&Event> = sends.to_vec();
    ordered.sort_by_key(|e| e.start_ms);
    let mut previous: Option<(&str, u64, u64)> = None; // value, sequence, end_ms of its send
    let mut latest_first_start: Option<(&str, u64)> = None;
    for send in ordered {
        let Op::Send { value } = &send.op else {
            continue;
        };
        if let Some(&sequence) = sequence_of.get(value.as_str()) {
            if let Some((before, before_sequence, before_end)) = previous
                && before_end <= send.start_ms
                && before_sequence >= sequence
            {
                violations.push(format!(
                    "{producer}: {value} (sequence {sequence}) was sent after {before} (sequence {before_sequence})"
                ));
            }
            previous = Some((value, sequence, send.end_ms));
        }
        if let Some(delivery) = first_delivery
            .get(value.as_str())
            .filter(|d| d.attempt == 1)
        {
            if let Some((earlier, earlier_start)) = latest_first_start
                && delivery.end_ms < earlier_start
            {
                violations.push(format!(
                    "{producer}: {value} was first delivered (by {} ms) before the earlier {earlier} was first handed out ({earlier_start} ms)",
                    delivery.end_ms
                ));
            }
            if latest_first_start.is_none_or(|(_, start)| delivery.start_ms > start) {
                latest_first_start = Some((value, delivery.start_ms));
            }
        }
    }
}

/// A group hands out its messages strictly in send order, one at a time: once a later
/// message of the group was delivered, an earlier one must never be delivered again. Only
/// deliveries that did not overlap in time are compared (the later receive started after
/// the earlier one had answered), so concurrency cannot produce a false alarm.
fn check_group_order(
    group: &str,
    deliveries: &[(u64, u64, &str)],
    send_index: &HashMap<&str, usize>,
    violations: &mut Vec<String>,
) {
    let indexed: Vec<(u64, u64, usize, &str)> = deliveries
        .iter()
        .filter_map(|(start, end, value)| {
            send_index
                .get(value)
                .map(|index| (*start, *end, *index, *value))
        })
        .collect();
    let mut by_start = indexed.clone();
    by_start.sort_by_key(|d| d.0);
    let mut by_end = indexed;
    by_end.sort_by_key(|d| d.1);
    let mut finished = by_end.iter().peekable();
    // The latest message (by send order) among deliveries that had answered.
    let mut latest: Option<(usize, &str)> = None;
    for (start, _, index, value) in by_start {
        while let Some(done) = finished.next_if(|d| d.1 < start) {
            if latest.is_none_or(|(i, _)| done.2 > i) {
                latest = Some((done.2, done.3));
            }
        }
        if let Some((latest_index, latest_value)) = latest
            && index < latest_index
        {
            violations.push(format!(
                "group {group}: {value} was delivered at {start} ms after the later {latest_value} had been delivered"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Delivered;

    fn send(process: &str, value: &str, start_ms: u64, outcome: Outcome) -> Event {
        Event {
            process: process.into(),
            op: Op::Send {
                value: value.into(),
            },
            start_ms,
            end_ms: start_ms + 5,
            outcome,
            error: String::new(),
        }
    }

    fn receive(process: &str, start_ms: u64, delivered: &[(&str, u64, u32)]) -> Event {
        Event {
            process: process.into(),
            op: Op::Receive {
                delivered: delivered
                    .iter()
                    .map(|(value, sequence, attempt)| Delivered {
                        value: value.to_string(),
                        sequence: *sequence,
                        attempt: *attempt,
                        group: String::new(),
                    })
                    .collect(),
            },
            start_ms,
            end_ms: start_ms + 5,
            outcome: Outcome::Ok,
            error: String::new(),
        }
    }

    fn ack(process: &str, value: &str, start_ms: u64, outcome: Outcome) -> Event {
        Event {
            process: process.into(),
            op: Op::Ack {
                value: value.into(),
            },
            start_ms,
            end_ms: start_ms + 5,
            outcome,
            error: String::new(),
        }
    }

    fn clean() -> Vec<Event> {
        vec![
            send("p1", "a", 0, Outcome::Ok),
            send("p1", "b", 10, Outcome::Ok),
            receive("c1", 20, &[("a", 1, 1), ("b", 2, 1)]),
            ack("c1", "a", 30, Outcome::Ok),
            ack("c1", "b", 40, Outcome::Ok),
        ]
    }

    fn grouped(mut event: Event, group: &str) -> Event {
        if let Op::Receive { delivered } = &mut event.op {
            for message in delivered {
                message.group = group.into();
            }
        }
        event
    }

    #[test]
    fn a_group_message_delivered_after_a_later_one_is_an_order_violation() {
        let history = vec![
            send("g1", "a", 0, Outcome::Ok),
            send("g1", "b", 10, Outcome::Ok),
            // "b" is handed out (so "a" must have been acked) ...
            grouped(receive("c1", 20, &[("b", 2, 1)]), "g1"),
            // ... and then "a" shows up again: the group's order broke.
            grouped(receive("c2", 30, &[("a", 1, 2)]), "g1"),
            ack("c1", "b", 40, Outcome::Ok),
            ack("c2", "a", 50, Outcome::Ok),
        ];
        let verdict = check(&history, 60);
        assert_eq!(verdict.order_violations.len(), 1, "{verdict:?}");
        assert!(verdict.order_violations[0].contains("group g1"));
        assert!(!verdict.valid);
    }

    #[test]
    fn a_group_redelivered_in_order_is_valid() {
        let history = vec![
            send("g1", "a", 0, Outcome::Ok),
            send("g1", "b", 10, Outcome::Ok),
            grouped(receive("c1", 20, &[("a", 1, 1)]), "g1"),
            // The lease ran out: "a" again, then "b".
            grouped(receive("c2", 30, &[("a", 1, 2)]), "g1"),
            ack("c2", "a", 40, Outcome::Ok),
            grouped(receive("c1", 50, &[("b", 2, 1)]), "g1"),
            ack("c1", "b", 60, Outcome::Ok),
        ];
        let verdict = check(&history, 70);
        assert!(verdict.valid, "{verdict:?}");
    }

    #[test]
    fn a_clean_history_is_valid() {
        let verdict = check(&clean(), 50);
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!((verdict.sends_ok, verdict.acks_ok), (2, 2));
    }

    #[test]
    fn an_acknowledged_send_nobody_consumed_is_reported_lost() {
        let mut history = clean();
        history.push(send("p1", "c", 45, Outcome::Ok));
        let verdict = check(&history, 60);
        assert_eq!(verdict.lost, vec!["c".to_string()]);
        assert!(!verdict.valid);
    }

    #[test]
    fn a_value_acknowledged_twice_is_reported_duplicate() {
        let mut history = clean();
        history.push(receive("c2", 50, &[("a", 1, 2)]));
        history.push(ack("c2", "a", 60, Outcome::Ok));
        let verdict = check(&history, 70);
        assert_eq!(verdict.duplicates, vec!["a".to_string()]);
        assert!(!verdict.valid);
    }

    #[test]
    fn a_later_value_handed_out_before_an_earlier_one_is_an_order_violation() {
        let history = vec![
            send("p1", "a", 0, Outcome::Ok),
            send("p1", "b", 10, Outcome::Ok),
            receive("c1", 20, &[("b", 2, 1)]),
            receive("c1", 40, &[("a", 1, 1)]),
            ack("c1", "a", 50, Outcome::Ok),
            ack("c1", "b", 60, Outcome::Ok),
        ];
        let verdict = check(&history, 70);
        assert_eq!(verdict.order_violations.len(), 1, "{verdict:?}");
        assert!(!verdict.valid);
    }

    #[test]
    fn a_later_send_with_a_lower_sequence_is_an_order_violation() {
        let history = vec![
            send("p1", "a", 0, Outcome::Ok),
            send("p1", "b", 10, Outcome::Ok),
            receive("c1", 20, &[("b", 1, 1), ("a", 2, 1)]),
            ack("c1", "a", 50, Outcome::Ok),
            ack("c1", "b", 60, Outcome::Ok),
        ];
        let verdict = check(&history, 70);
        assert!(!verdict.order_violations.is_empty(), "{verdict:?}");
    }

    #[test]
    fn a_value_nobody_sent_is_a_phantom() {
        let mut history = clean();
        history.push(receive("c1", 50, &[("z", 9, 1)]));
        history.push(ack("c1", "z", 60, Outcome::Ok));
        let verdict = check(&history, 70);
        assert_eq!(verdict.phantoms, vec!["z".to_string()]);
    }

    #[test]
    fn unknown_sends_may_be_consumed_once_but_not_twice() {
        let mut history = clean();
        history.push(send("p1", "u", 45, Outcome::Unknown));
        history.push(receive("c1", 50, &[("u", 3, 1)]));
        history.push(ack("c1", "u", 55, Outcome::Ok));
        assert!(check(&history, 60).valid);
        history.push(receive("c2", 70, &[("u", 3, 2)]));
        history.push(ack("c2", "u", 80, Outcome::Ok));
        let verdict = check(&history, 90);
        assert_eq!(verdict.unknown_consumed_twice, vec!["u".to_string()]);
        assert!(!verdict.valid);
    }

    #[test]
    fn a_redelivery_after_an_unobserved_first_delivery_is_not_an_order_violation() {
        let history = vec![
            send("p1", "a", 0, Outcome::Ok),
            send("p1", "b", 10, Outcome::Ok),
            receive("c1", 20, &[("b", 2, 1)]),
            receive("c1", 40, &[("a", 1, 2)]),
            ack("c1", "a", 50, Outcome::Ok),
            ack("c1", "b", 60, Outcome::Ok),
        ];
        assert!(check(&history, 70).valid);
    }

    #[test]
    fn unavailability_excludes_time_when_a_majority_was_down() {
        let mut history = vec![
            send("p1", "a", 0, Outcome::Ok),
            send("p1", "b", 1_000, Outcome::Ok),
        ];
        history.push(Event {
            process: "nemesis".into(),
            op: Op::Fault {
                kind: "restart-all".into(),
                nodes: vec![1, 2, 3],
                majority_down: true,
                detail: String::new(),
            },
            start_ms: 100,
            end_ms: 700,
            outcome: Outcome::Ok,
            error: String::new(),
        });
        history.push(receive("c1", 1_010, &[("a", 1, 1), ("b", 2, 1)]));
        history.push(ack("c1", "a", 1_020, Outcome::Ok));
        history.push(ack("c1", "b", 1_030, Outcome::Ok));
        let verdict = check(&history, 1_100);
        // 5..1005 without a send is 1000 ms, 600 of them with a majority down.
        assert_eq!(verdict.longest_unavailable_ms, 400);
        // That window began with the restart-all active; the first one, 0..5, began within
        // LEAD_MS of its injection, so no window is put down to no fault.
        let kinds: Vec<(&str, usize, u64)> = verdict
            .unavailable_by_fault
            .iter()
            .map(|row| (row.kind.as_str(), row.faults, row.longest_unavailable_ms))
            .collect();
        assert_eq!(kinds, [("restart-all", 1, 400), ("none", 0, 0)]);
    }

    #[test]
    fn sends_answered_from_a_local_disk_do_not_count_as_availability() {
        let history = vec![
            send("p1", "a", 0, Outcome::Ok),
            send("o0", "o", 300, Outcome::Ok),
            send("a0", "x", 600, Outcome::Ok),
            send("p1", "b", 1_000, Outcome::Ok),
            receive(
                "c1",
                1_010,
                &[("a", 1, 1), ("o", 2, 1), ("x", 3, 1), ("b", 4, 1)],
            ),
            ack("c1", "a", 1_020, Outcome::Ok),
            ack("c1", "o", 1_020, Outcome::Ok),
            ack("c1", "x", 1_020, Outcome::Ok),
            ack("c1", "b", 1_030, Outcome::Ok),
        ];
        let verdict = check(&history, 1_100);
        assert!(verdict.valid, "{verdict:?}");
        assert_eq!(verdict.sends_ok, 4);
        // 5..1005: the outbox's and the agent's sends in between do not end the window.
        assert_eq!(verdict.longest_unavailable_ms, 1_000);
    }
}
