//! Fuzzing on stable Rust (proptest): any request a client can send — every field of the
//! wire messages at any value — goes through its proto -> domain conversion and then the
//! state machine's checks (the leader's precheck and apply) without a panic: it is taken
//! or refused with an error. And any text is a receipt or an error.
//!
//! `PROPTEST_CASES` sets the number of runs.

use proptest::prelude::*;
use raftq_core::{Command, QueueOptions, Request, StateMachine};
use raftq_proto::{commit, new_message, pb, queue_options, receipt, receipts};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("q".to_string()),
        "[a-z.*]{1,12}",
        ".{0,40}",
    ]
}

fn number() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX), any::<u64>()]
}

fn outgoing() -> impl Strategy<Value = pb::OutgoingMessage> {
    (
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::hash_map(text(), text(), 0..3),
        (text(), text(), any::<u32>()),
        (number(), number(), number(), number()),
        (text(), any::<bool>(), any::<bool>()),
        proptest::option::of((text(), text(), text(), text())),
    )
        .prop_map(
            |(body, headers, (idempotency_key, group, priority), times, ack, properties)| {
                let (delay_ms, ttl_ms, time_to_reach_ms, sent_at_ms) = times;
                pb::OutgoingMessage {
                    body,
                    headers,
                    idempotency_key,
                    group,
                    priority,
                    delay_ms,
                    ttl_ms,
                    time_to_reach_ms,
                    sent_at_ms,
                    ack_queue: ack.0,
                    ack_positive: ack.1,
                    ack_negative: ack.2,
                    properties: properties.map(
                        |(label, correlation_id, reply_to, content_type)| pb::MessageProperties {
                            label,
                            correlation_id,
                            reply_to,
                            content_type,
                        },
                    ),
                }
            },
        )
}

fn options() -> impl Strategy<Value = pb::QueueOptions> {
    (
        (number(), number(), number(), number()),
        (number(), number(), any::<i32>(), any::<bool>()),
        (text(), any::<u32>(), number()),
    )
        .prop_map(|(a, b, c)| pb::QueueOptions {
            max_depth: a.0,
            max_bytes: a.1,
            max_message_bytes: a.2,
            default_lease_ms: a.3,
            dedup_window_ms: b.0,
            default_ttl_ms: b.1,
            overflow: b.2,
            journal: b.3,
            dead_letter_queue: c.0,
            max_delivery_count: c.1,
            journal_retention_ms: c.2,
            ..pb::QueueOptions::default()
        })
}

/// A state with queue `q` (and its dead-letter queue) holding a message, so commands on
/// it get past "no such queue".
fn state() -> StateMachine {
    let mut state = StateMachine::default();
    for (name, dead_letter_queue) in [("q.dlq", ""), ("q", "q.dlq")] {
        state
            .apply(Request {
                now_ms: 1_000,
                command: Command::CreateQueue {
                    name: name.into(),
                    options: QueueOptions {
                        dead_letter_queue: dead_letter_queue.into(),
                        ..QueueOptions::default()
                    },
                },
            })
            .expect("create");
    }
    state
}

/// The leader's precheck, then apply, at `now_ms`: neither may panic.
fn check_and_apply(state: &mut StateMachine, command: Command, now_ms: u64) {
    let _ = state.precheck(&command, now_ms);
    let _ = state.apply(Request { now_ms, command });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1_000), ..ProptestConfig::default() })]

    #[test]
    fn any_text_is_a_receipt_or_an_error(text in ".{0,40}", digits in "[0-9:]{0,30}") {
        let _ = receipt(&text);
        if let Ok(parsed) = receipt(&digits) {
            prop_assert_eq!(receipt(&parsed.to_string()).ok(), Some(parsed));
        }
        let _ = receipts(&[text, digits]);
    }

    #[test]
    fn any_sent_messages_are_taken_or_refused(
        queue in text(),
        messages in proptest::collection::vec(outgoing(), 0..4),
        now_ms in number(),
    ) {
        let messages = messages.into_iter().map(new_message).collect();
        check_and_apply(&mut state(), Command::Send { queue, messages }, now_ms);
    }

    #[test]
    fn any_queue_options_are_taken_or_refused(name in text(), options in proptest::option::of(options()), now_ms in number()) {
        if let Ok(options) = queue_options(options) {
            check_and_apply(&mut state(), Command::CreateQueue { name, options }, now_ms);
        }
    }

    #[test]
    fn any_commit_is_taken_or_refused(
        transaction_id in text(),
        acks in proptest::collection::vec((text(), "[0-9:]{0,12}"), 0..3),
        sends in proptest::collection::vec((text(), proptest::option::of(outgoing())), 0..3),
        now_ms in number(),
    ) {
        let request = pb::CommitRequest {
            transaction_id,
            acks: acks
                .into_iter()
                .map(|(queue, receipt)| pb::TransactionAck { queue, receipt })
                .collect(),
            sends: sends
                .into_iter()
                .map(|(queue, message)| pb::TransactionSend { queue, message })
                .collect(),
            producer: None,
        };
        if let Ok(command) = commit(request) {
            check_and_apply(&mut state(), command, now_ms);
        }
    }

    #[test]
    fn any_receive_ack_nack_extend_or_redrive_is_taken_or_refused(
        queue in text(),
        max in any::<u32>(),
        (lease_ms, delay_ms, now_ms) in (number(), number(), number()),
        receipt_text in "[0-9:]{0,12}",
        ids in proptest::collection::vec(number(), 0..4),
        to in text(),
    ) {
        let mut state = state();
        let receipt = receipt(&receipt_text).unwrap_or(raftq_core::Receipt { message_id: 1, attempt: 1 });
        let commands = [
            Command::Receive { queue: queue.clone(), max_messages: max, lease_ms },
            Command::ReceiveSelected { queue: queue.clone(), message_id: ids.first().copied().unwrap_or(0), correlation_id: to.clone(), max_messages: max, lease_ms },
            Command::Ack { queue: queue.clone(), receipt },
            Command::AckBatch { queue: queue.clone(), receipts: vec![receipt; (max % 4) as usize] },
            Command::Nack { queue: queue.clone(), receipt, delay_ms },
            Command::ExtendLease { queue: queue.clone(), receipt, lease_ms },
            Command::Redrive { queue, message_ids: ids, max, to },
            Command::Tick,
        ];
        for command in commands {
            check_and_apply(&mut state, command, now_ms);
        }
    }
}
