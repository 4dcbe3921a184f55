//! Message groups, priority, delayed delivery, time to be received, dead-lettering,
//! redrive, bad fields and selective receive: one promise per test, against the pure
//! state machine.

mod common;

use common::*;
use raftq_core::{
    Command, Delivery, MessageProperties, NewMessage, Outcome, QueueError, QueueOptions,
    StateMachine,
};

#[test]
fn a_group_has_at_most_one_message_in_flight_and_keeps_send_order() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![
            grouped("a1", "a"),
            grouped("a2", "a"),
            grouped("b1", "b"),
            body("free"),
            grouped("a3", "a"),
        ],
    );
    // However many are asked for, one per group, plus the ungrouped message.
    let first = receive(&mut sm, 2_000, 10);
    assert_eq!(bodies(&first), ["a1", "b1", "free"]);
    assert!(receive(&mut sm, 2_000, 10).is_empty());
    ack(&mut sm, 2_001, &first[0]);
    let next = receive(&mut sm, 2_002, 10);
    assert_eq!(bodies(&next), ["a2"]);
    ack(&mut sm, 2_003, &next[0]);
    assert_eq!(bodies(&receive(&mut sm, 2_004, 10)), ["a3"]);
    assert_eq!(sm.queue_info("q").unwrap().stats.groups, 2);
}

#[test]
fn a_nacked_or_expired_group_message_comes_back_at_the_head_of_its_group() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![grouped("1", "g"), grouped("2", "g"), grouped("3", "g")],
    );
    let first = receive(&mut sm, 2_000, 5);
    assert_eq!(bodies(&first), ["1"]);
    nack(&mut sm, 2_001, &first[0]);
    let again = receive(&mut sm, 2_002, 5);
    assert_eq!(bodies(&again), ["1"]);
    assert_eq!(again[0].receipt.attempt, 2);
    // The lease (1 s) runs out: still "1" first, never "2".
    let after_expiry = receive(&mut sm, 3_100, 5);
    assert_eq!(bodies(&after_expiry), ["1"]);
    ack(&mut sm, 3_101, &after_expiry[0]);
    assert_eq!(bodies(&receive(&mut sm, 3_102, 5)), ["2"]);
}

#[test]
fn higher_priority_goes_first_and_fifo_holds_within_a_level() {
    let mut sm = with_queue(QueueOptions::default());
    let with_priority = |text: &str, priority: u8| NewMessage {
        priority,
        ..body(text)
    };
    send(
        &mut sm,
        2_000,
        vec![
            with_priority("low-1", 0),
            with_priority("high-1", 7),
            with_priority("mid", 3),
            with_priority("high-2", 7),
            with_priority("low-2", 0),
        ],
    );
    assert_eq!(
        bodies(&receive(&mut sm, 2_000, 10)),
        ["high-1", "high-2", "mid", "low-1", "low-2"]
    );
}

#[test]
fn priority_never_reorders_a_group() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![
            NewMessage {
                priority: 0,
                ..grouped("g-first", "g")
            },
            NewMessage {
                priority: 7,
                ..grouped("g-second", "g")
            },
        ],
    );
    let first = receive(&mut sm, 2_000, 10);
    assert_eq!(bodies(&first), ["g-first"]);
    ack(&mut sm, 2_001, &first[0]);
    assert_eq!(bodies(&receive(&mut sm, 2_002, 10)), ["g-second"]);
}

#[test]
fn a_delayed_message_is_not_delivered_before_its_time() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![
            NewMessage {
                delay_ms: 500,
                ..body("later")
            },
            body("now"),
        ],
    );
    assert_eq!(bodies(&receive(&mut sm, 2_000, 10)), ["now"]);
    assert!(receive(&mut sm, 2_499, 10).is_empty());
    assert_eq!(bodies(&receive(&mut sm, 2_500, 10)), ["later"]);
}

#[test]
fn a_delayed_group_head_holds_back_the_rest_of_its_group() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![
            NewMessage {
                delay_ms: 500,
                ..grouped("first", "g")
            },
            grouped("second", "g"),
        ],
    );
    assert!(receive(&mut sm, 2_100, 10).is_empty());
    assert_eq!(bodies(&receive(&mut sm, 2_500, 10)), ["first"]);
}

#[test]
fn an_unreceived_message_expires_after_its_time_to_be_received() {
    let mut sm = with_queue(QueueOptions {
        default_ttl_ms: 1_000,
        ..QueueOptions::default()
    });
    send(
        &mut sm,
        2_000,
        vec![
            body("default-ttl"),
            NewMessage {
                ttl_ms: 5_000,
                ..body("own-ttl")
            },
        ],
    );
    assert_eq!(bodies(&receive(&mut sm, 3_000, 10)), ["own-ttl"]);
    let stats = sm.queue_info("q").unwrap().stats;
    assert_eq!((stats.total_expired, stats.total_discarded), (1, 1));
}

#[test]
fn a_leased_message_past_its_ttl_can_still_be_acked_but_expires_if_released() {
    let mut sm = with_queue(QueueOptions::default());
    send(
        &mut sm,
        2_000,
        vec![
            NewMessage {
                ttl_ms: 500,
                ..body("kept")
            },
            NewMessage {
                ttl_ms: 500,
                ..body("released")
            },
        ],
    );
    let got = receive(&mut sm, 2_100, 10);
    assert_eq!(got[0].expires_at_ms, 2_500);
    ack(&mut sm, 2_900, &got[0]);
    nack(&mut sm, 2_900, &got[1]);
    assert!(receive(&mut sm, 2_901, 10).is_empty());
    let stats = sm.queue_info("q").unwrap().stats;
    assert_eq!((stats.total_acked, stats.total_expired), (1, 1));
}

#[test]
fn after_max_deliveries_a_message_moves_to_the_dead_letter_queue_with_its_reason() {
    let mut sm = with_queue(QueueOptions {
        max_delivery_count: 2,
        dead_letter_queue: "q.dlq".into(),
        ..QueueOptions::default()
    });
    let ids = send(
        &mut sm,
        2_000,
        vec![NewMessage {
            properties: MessageProperties {
                label: "order 7".into(),
                ..MessageProperties::default()
            },
            ..body("poison")
        }],
    );
    for now in [2_000, 2_001] {
        let got = receive(&mut sm, now, 1);
        nack(&mut sm, now, &got[0]);
    }
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 0);
    assert_eq!(sm.queue_info("q").unwrap().stats.total_dead_lettered, 1);
    // The dead-letter queue was created on demand.
    let dead = receive_from(&mut sm, 2_002, "q.dlq", 10);
    assert_eq!(bodies(&dead), ["poison"]);
    assert_eq!(dead[0].message_id, ids[0]);
    assert_eq!(
        dead[0].headers["raftq-dead-letter-reason"],
        "max-deliveries"
    );
    assert_eq!(dead[0].headers["raftq-dead-letter-source"], "q");
    assert_eq!(dead[0].headers["raftq-delivery-count"], "2");
    assert_eq!(dead[0].properties.label, "order 7");
}

#[test]
fn expired_messages_are_dead_lettered_when_the_queue_asks_for_it() {
    let mut sm = with_queue(QueueOptions {
        dead_letter_queue: "q.dlq".into(),
        dead_letter_expired: true,
        ..QueueOptions::default()
    });
    send(
        &mut sm,
        2_000,
        vec![NewMessage {
            ttl_ms: 100,
            ..body("stale")
        }],
    );
    assert!(receive(&mut sm, 2_200, 10).is_empty());
    let dead = receive_from(&mut sm, 2_200, "q.dlq", 10);
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "expired");
}

#[test]
fn redrive_moves_dead_letters_back_by_id_or_all_and_they_are_delivered_afresh() {
    let mut sm = with_queue(QueueOptions {
        max_delivery_count: 1,
        dead_letter_queue: "q.dlq".into(),
        ..QueueOptions::default()
    });
    let ids = send(&mut sm, 2_000, vec![body("a"), body("b"), body("c")]);
    for delivery in receive(&mut sm, 2_000, 10) {
        nack(&mut sm, 2_000, &delivery);
    }
    assert_eq!(sm.queue_info("q.dlq").unwrap().stats.depth, 3);
    let by_id = sm.apply(at(
        2_100,
        Command::Redrive {
            queue: "q.dlq".into(),
            message_ids: vec![ids[1]],
            max: 0,
            to: String::new(),
        },
    ));
    assert_eq!(by_id, Ok(Outcome::Redriven { moved: 1 }));
    let back = receive(&mut sm, 2_100, 10);
    assert_eq!(bodies(&back), ["b"]);
    assert_eq!(back[0].receipt.attempt, 1);
    assert!(!back[0].headers.contains_key("raftq-dead-letter-reason"));
    let all = sm.apply(at(
        2_200,
        Command::Redrive {
            queue: "q.dlq".into(),
            message_ids: vec![],
            max: 100,
            to: String::new(),
        },
    ));
    assert_eq!(all, Ok(Outcome::Redriven { moved: 2 }));
    assert_eq!(sm.queue_info("q.dlq").unwrap().stats.depth, 0);
}

#[test]
fn a_refused_redrive_moves_nothing() {
    let mut sm = with_queue(QueueOptions {
        max_delivery_count: 1,
        dead_letter_queue: "q.dlq".into(),
        ..QueueOptions::default()
    });
    let ids = send(&mut sm, 2_000, vec![body("a")]);
    let got = receive(&mut sm, 2_000, 1);
    nack(&mut sm, 2_000, &got[0]);
    let before = sm.clone();
    let cases = [
        (vec![ids[0], 999], 0, "", "unknown id"),
        (vec![], 0, "", "neither ids nor max"),
        (vec![ids[0]], 0, "missing", "unknown destination"),
    ];
    for (message_ids, max, to, what) in cases {
        let result = sm.apply(at(
            2_000,
            Command::Redrive {
                queue: "q.dlq".into(),
                message_ids,
                max,
                to: to.into(),
            },
        ));
        assert!(result.is_err(), "{what}: {result:?}");
        assert_eq!(sm, before, "{what} changed the state");
    }
    // The source queue is gone: a redrive to "where it came from" is refused whole.
    sm.apply(at(2_000, Command::DeleteQueue { name: "q".into() }))
        .unwrap();
    let result = sm.apply(at(
        2_000,
        Command::Redrive {
            queue: "q.dlq".into(),
            message_ids: vec![],
            max: 10,
            to: String::new(),
        },
    ));
    assert!(
        matches!(result, Err(QueueError::QueueNotFound { ref name }) if name == "q"),
        "{result:?}"
    );
}

#[test]
fn bad_message_fields_are_refused_precisely() {
    let mut sm = with_queue(QueueOptions::default());
    let before = sm.clone();
    let cases: Vec<(NewMessage, &str)> = vec![
        (
            NewMessage {
                priority: 8,
                ..body("x")
            },
            "priority",
        ),
        (
            NewMessage {
                group: "g".repeat(257),
                ..body("x")
            },
            "group",
        ),
        (
            NewMessage {
                delay_ms: 8 * 24 * 60 * 60 * 1000,
                ..body("x")
            },
            "delay_ms",
        ),
        (
            NewMessage {
                ttl_ms: 31 * 24 * 60 * 60 * 1000,
                ..body("x")
            },
            "ttl_ms",
        ),
        (
            NewMessage {
                properties: MessageProperties {
                    reply_to: "not a queue".into(),
                    ..MessageProperties::default()
                },
                ..body("x")
            },
            "reply_to",
        ),
    ];
    for (message, field) in cases {
        let error = sm
            .apply(at(
                1_000,
                Command::Send {
                    queue: "q".into(),
                    messages: vec![message],
                },
            ))
            .expect_err(field);
        assert!(
            matches!(&error, QueueError::InvalidArgument { field: f, .. } if f == field),
            "{field}: {error:?}"
        );
        assert_eq!(sm, before);
    }
    let own_dlq = sm.apply(at(
        2_000,
        Command::CreateQueue {
            name: "self".into(),
            options: QueueOptions {
                dead_letter_queue: "self".into(),
                ..QueueOptions::default()
            },
        },
    ));
    assert!(matches!(own_dlq, Err(QueueError::InvalidArgument { .. })));
}

fn correlated(text: &str, correlation_id: &str) -> NewMessage {
    NewMessage {
        properties: MessageProperties {
            correlation_id: correlation_id.into(),
            ..MessageProperties::default()
        },
        ..body(text)
    }
}

fn receive_selected(
    sm: &mut StateMachine,
    now: u64,
    message_id: u64,
    correlation_id: &str,
) -> Vec<Delivery> {
    match sm.apply(at(
        now,
        Command::ReceiveSelected {
            queue: "q".into(),
            message_id,
            correlation_id: correlation_id.into(),
            max_messages: 10,
            lease_ms: 1_000,
        },
    )) {
        Ok(Outcome::Received(deliveries)) => deliveries,
        other => panic!("selective receive failed: {other:?}"),
    }
}

#[test]
fn selective_receive_takes_only_the_named_messages() {
    let mut sm = with_queue(QueueOptions::default());
    let ids = send(
        &mut sm,
        2_000,
        vec![
            correlated("reply-a-1", "a"),
            correlated("reply-b", "b"),
            body("plain"),
            correlated("reply-a-2", "a"),
        ],
    );
    assert_eq!(
        bodies(&receive_selected(&mut sm, 2_000, 0, "a")),
        ["reply-a-1", "reply-a-2"]
    );
    assert_eq!(
        bodies(&receive_selected(&mut sm, 2_000, ids[2], "")),
        ["plain"]
    );
    // Id and correlation id together must both match.
    assert!(receive_selected(&mut sm, 2_000, ids[1], "a").is_empty());
    // Leased messages are not handed out again.
    assert!(receive_selected(&mut sm, 2_000, 0, "a").is_empty());
    assert_eq!(bodies(&receive(&mut sm, 2_000, 10)), ["reply-b"]);
    // Peek by correlation id shows them without leasing.
    let peeked = sm.peek_selected("q", 0, 10, 0, "a").unwrap();
    assert_eq!(peeked.len(), 2);
    // Naming nothing is refused.
    let refused = sm.apply(at(
        2_000,
        Command::ReceiveSelected {
            queue: "q".into(),
            message_id: 0,
            correlation_id: String::new(),
            max_messages: 1,
            lease_ms: 0,
        },
    ));
    assert!(matches!(refused, Err(QueueError::InvalidArgument { .. })));
}

#[test]
fn selective_receive_respects_group_order() {
    let mut sm = with_queue(QueueOptions::default());
    let ids = send(&mut sm, 2_000, vec![grouped("1", "g"), grouped("2", "g")]);
    // The second message of a group cannot be taken before the first.
    assert!(receive_selected(&mut sm, 2_000, ids[1], "").is_empty());
    assert_eq!(bodies(&receive_selected(&mut sm, 2_000, ids[0], "")), ["1"]);
}
