//! Message groups, priority, delayed delivery, time to be received, dead-lettering and
//! redrive: one promise per test, against the pure state machine.

use raftq_core::{
    Command, Delivery, MessageProperties, NewMessage, Outcome, QueueError, QueueOptions, Receipt,
    Request, StateMachine, TransactionAck, TransactionSend,
};

fn at(now_ms: u64, command: Command) -> Request {
    Request { now_ms, command }
}

fn create(sm: &mut StateMachine, name: &str, options: QueueOptions) {
    sm.apply(at(
        1_000,
        Command::CreateQueue {
            name: name.into(),
            options,
        },
    ))
    .expect("create");
}

fn with_queue(options: QueueOptions) -> StateMachine {
    let mut sm = StateMachine::default();
    create(&mut sm, "q", options);
    sm
}

fn body(text: &str) -> NewMessage {
    NewMessage {
        body: text.as_bytes().to_vec(),
        ..NewMessage::default()
    }
}

fn grouped(text: &str, group: &str) -> NewMessage {
    NewMessage {
        group: group.into(),
        ..body(text)
    }
}

fn send_to(sm: &mut StateMachine, now: u64, queue: &str, messages: Vec<NewMessage>) -> Vec<u64> {
    match sm.apply(at(
        now,
        Command::Send {
            queue: queue.into(),
            messages,
        },
    )) {
        Ok(Outcome::Sent(results)) => results.iter().map(|r| r.message_id).collect(),
        other => panic!("send failed: {other:?}"),
    }
}

fn send(sm: &mut StateMachine, now: u64, messages: Vec<NewMessage>) -> Vec<u64> {
    send_to(sm, now, "q", messages)
}

fn receive_from(sm: &mut StateMachine, now: u64, queue: &str, max: u32) -> Vec<Delivery> {
    match sm.apply(at(
        now,
        Command::Receive {
            queue: queue.into(),
            max_messages: max,
            lease_ms: 1_000,
        },
    )) {
        Ok(Outcome::Received(deliveries)) => deliveries,
        other => panic!("receive failed: {other:?}"),
    }
}

fn receive(sm: &mut StateMachine, now: u64, max: u32) -> Vec<Delivery> {
    receive_from(sm, now, "q", max)
}

fn bodies(deliveries: &[Delivery]) -> Vec<String> {
    deliveries
        .iter()
        .map(|d| String::from_utf8(d.body.clone()).unwrap())
        .collect()
}

fn ack(sm: &mut StateMachine, now: u64, delivery: &Delivery) {
    sm.apply(at(
        now,
        Command::Ack {
            queue: "q".into(),
            receipt: delivery.receipt,
        },
    ))
    .expect("ack");
}

fn nack(sm: &mut StateMachine, now: u64, delivery: &Delivery) {
    sm.apply(at(
        now,
        Command::Nack {
            queue: "q".into(),
            receipt: delivery.receipt,
            delay_ms: 0,
        },
    ))
    .expect("nack");
}

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

fn commit(
    sm: &mut StateMachine,
    now: u64,
    id: &str,
    acks: Vec<(&str, Receipt)>,
    sends: Vec<(&str, NewMessage)>,
) -> Result<Outcome, QueueError> {
    sm.apply(at(
        now,
        Command::Commit {
            transaction_id: id.into(),
            acks: acks
                .into_iter()
                .map(|(queue, receipt)| TransactionAck {
                    queue: queue.into(),
                    receipt,
                })
                .collect(),
            sends: sends
                .into_iter()
                .map(|(queue, message)| TransactionSend {
                    queue: queue.into(),
                    message,
                })
                .collect(),
        },
    ))
}

#[test]
fn a_transaction_acks_and_sends_across_queues_at_once() {
    let mut sm = with_queue(QueueOptions::default());
    create(&mut sm, "out", QueueOptions::default());
    send(&mut sm, 2_000, vec![body("in-1"), body("in-2")]);
    let got = receive(&mut sm, 2_000, 2);
    let outcome = commit(
        &mut sm,
        2_001,
        "tx-1",
        vec![("q", got[0].receipt), ("q", got[1].receipt)],
        vec![("out", body("out-1")), ("out", body("out-2"))],
    )
    .expect("commit");
    let Outcome::Committed {
        sent,
        already_committed,
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(!already_committed);
    assert_eq!(sent.len(), 2);
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 0);
    assert_eq!(
        bodies(&receive_from(&mut sm, 2_002, "out", 10)),
        ["out-1", "out-2"]
    );
    // A retried commit is answered with the first outcome and changes nothing.
    let before = sm.clone();
    let again = commit(&mut sm, 2_002, "tx-1", vec![], vec![("out", body("x"))]);
    assert_eq!(
        again,
        Ok(Outcome::Committed {
            sent,
            already_committed: true
        })
    );
    assert_eq!(sm, before);
    // A new transaction over a receipt that already acknowledged its message is refused:
    // otherwise its sends would happen twice.
    let again = commit(
        &mut sm,
        2_002,
        "tx-2",
        vec![("q", got[0].receipt)],
        vec![("out", body("out-1 again"))],
    );
    assert!(
        matches!(again, Err(QueueError::StaleReceipt { .. })),
        "{again:?}"
    );
    assert_eq!(sm, before);
}

#[test]
fn a_transaction_with_one_bad_part_changes_nothing() {
    let mut sm = with_queue(QueueOptions::default());
    create(
        &mut sm,
        "small",
        QueueOptions {
            max_depth: 1,
            ..QueueOptions::default()
        },
    );
    send(&mut sm, 2_000, vec![body("in-1"), body("in-2")]);
    let got = receive(&mut sm, 2_000, 2);
    let stale = raftq_core::Receipt {
        message_id: got[1].receipt.message_id,
        attempt: 7,
    };
    let before = sm.clone();
    type Expectation = fn(&QueueError) -> bool;
    type Acks<'a> = Vec<(&'a str, Receipt)>;
    type Sends<'a> = Vec<(&'a str, NewMessage)>;
    let cases: Vec<(Acks, Sends, Expectation)> = vec![
        (
            vec![("q", got[0].receipt), ("q", stale)],
            vec![("small", body("x"))],
            |e| matches!(e, QueueError::StaleReceipt { .. }),
        ),
        (
            vec![("q", got[0].receipt)],
            vec![("small", body("x")), ("missing", body("y"))],
            |e| matches!(e, QueueError::QueueNotFound { .. }),
        ),
        (
            vec![("q", got[0].receipt)],
            vec![("small", body("x")), ("small", body("y"))],
            |e| matches!(e, QueueError::QueueFull { .. }),
        ),
        (
            vec![("q", got[0].receipt)],
            vec![(
                "small",
                NewMessage {
                    priority: 9,
                    ..body("x")
                },
            )],
            |e| matches!(e, QueueError::InvalidArgument { .. }),
        ),
        (vec![], vec![], |e| {
            matches!(e, QueueError::InvalidArgument { .. })
        }),
    ];
    for (acks, sends, expected) in cases {
        let error = commit(&mut sm, 2_000, "tx", acks, sends).expect_err("refused");
        assert!(expected(&error), "unexpected {error:?}");
        assert_eq!(sm, before, "a refused commit changed the state ({error})");
    }
    // After the lease ran out, the receipt is stale: the transaction aborts whole, and
    // the message is delivered again.
    let late = commit(
        &mut sm,
        3_500,
        "tx-late",
        vec![("q", got[0].receipt)],
        vec![("small", body("x"))],
    );
    assert!(matches!(late, Err(QueueError::StaleReceipt { .. })));
    assert_eq!(sm.queue_info("small").unwrap().stats.depth, 0);
    assert_eq!(receive(&mut sm, 3_500, 10).len(), 2);
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

#[test]
fn a_full_queue_rejects_by_count_and_by_bytes_and_keeps_what_it_holds() {
    let mut sm = with_queue(QueueOptions {
        max_depth: 3,
        max_bytes: 10,
        ..QueueOptions::default()
    });
    send(&mut sm, 2_000, vec![body("aaaa"), body("bbbb")]);
    let before = sm.clone();
    let too_many_bytes = sm.apply(at(
        1_000,
        Command::Send {
            queue: "q".into(),
            messages: vec![body("ccc")],
        },
    ));
    assert!(matches!(too_many_bytes, Err(QueueError::QueueFull { .. })));
    assert_eq!(sm, before);
    send(&mut sm, 2_000, vec![body("cc")]);
    let too_many = sm.apply(at(
        2_000,
        Command::Send {
            queue: "q".into(),
            messages: vec![body("")],
        },
    ));
    assert!(matches!(too_many, Err(QueueError::QueueFull { .. })));
    assert_eq!(sm.queue_info("q").unwrap().stats.bytes, 10);
}

#[test]
fn dead_letter_oldest_makes_room_from_the_head_but_never_takes_a_leased_message() {
    let mut sm = with_queue(QueueOptions {
        max_depth: 3,
        overflow: raftq_core::Overflow::DeadLetterOldest,
        dead_letter_queue: "q.dlq".into(),
        ..QueueOptions::default()
    });
    send(&mut sm, 2_000, vec![body("1"), body("2"), body("3")]);
    let leased = receive(&mut sm, 2_000, 1);
    assert_eq!(bodies(&leased), ["1"]);
    // "1" is in flight: "2" makes room for "4".
    send(&mut sm, 2_001, vec![body("4")]);
    let dead = receive_from(&mut sm, 2_002, "q.dlq", 10);
    assert_eq!(bodies(&dead), ["2"]);
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "overflow");
    ack(&mut sm, 2_003, &leased[0]);
    assert_eq!(bodies(&receive(&mut sm, 2_004, 10)), ["3", "4"]);
    // A batch bigger than the whole queue never fits.
    let refused = sm.apply(at(
        2_005,
        Command::Send {
            queue: "q".into(),
            messages: vec![body("a"), body("b"), body("c"), body("d")],
        },
    ));
    assert!(matches!(refused, Err(QueueError::QueueFull { .. })));
}

/// A batch that repeats a new idempotency key stores it once, so it needs room for one:
/// it must not be refused as full, nor make room by dead-lettering twice.
#[test]
fn a_key_repeated_within_a_batch_needs_room_for_one_message() {
    let keyed = |text: &str, key: &str| NewMessage {
        idempotency_key: key.into(),
        ..body(text)
    };
    let mut sm = with_queue(QueueOptions {
        max_depth: 3,
        ..QueueOptions::default()
    });
    send(&mut sm, 2_000, vec![body("1"), body("2")]);
    let ids = send(&mut sm, 2_001, vec![keyed("3", "k"), keyed("3", "k")]);
    assert_eq!(ids[0], ids[1], "the repeat is the first message");
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 3);

    create(
        &mut sm,
        "oldest",
        QueueOptions {
            max_depth: 3,
            overflow: raftq_core::Overflow::DeadLetterOldest,
            dead_letter_queue: "oldest.dlq".into(),
            ..QueueOptions::default()
        },
    );
    send_to(
        &mut sm,
        2_002,
        "oldest",
        vec![body("1"), body("2"), body("3")],
    );
    send_to(
        &mut sm,
        2_003,
        "oldest",
        vec![keyed("4", "k"), keyed("4", "k")],
    );
    assert_eq!(sm.queue_info("oldest").unwrap().stats.depth, 3);
    assert_eq!(
        bodies(&receive_from(&mut sm, 2_004, "oldest.dlq", 10)),
        ["1"]
    );
}

#[test]
fn acknowledgement_messages_report_consumption_and_expiry_with_the_original_id() {
    let mut sm = with_queue(QueueOptions::default());
    create(&mut sm, "acks", QueueOptions::default());
    let ask = |positive, negative| raftq_core::AcknowledgementRequest {
        queue: "acks".into(),
        positive,
        negative,
    };
    let ids = send(
        &mut sm,
        2_000,
        vec![
            NewMessage {
                acknowledgement: ask(true, true),
                properties: MessageProperties {
                    label: "order 1".into(),
                    ..MessageProperties::default()
                },
                ..body("consumed")
            },
            NewMessage {
                acknowledgement: ask(true, true),
                ttl_ms: 100,
                ..body("expires")
            },
            NewMessage {
                acknowledgement: ask(false, true),
                ..body("no positive")
            },
        ],
    );
    let got = receive(&mut sm, 2_000, 1);
    ack(&mut sm, 2_001, &got[0]);
    let later = receive(&mut sm, 2_200, 1);
    ack(&mut sm, 2_201, &later[0]);
    let notices = receive_from(&mut sm, 2_300, "acks", 10);
    let summary: Vec<(String, String, String)> = notices
        .iter()
        .map(|n| {
            (
                n.properties.correlation_id.clone(),
                n.headers["raftq-ack-kind"].clone(),
                n.properties.label.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (ids[0].to_string(), "consumed".into(), "order 1".into()),
            (ids[1].to_string(), "expired".into(), String::new()),
        ]
    );
    assert_eq!(notices[1].headers["raftq-dead-lettered"], "false");
    // The acknowledgement queue must exist when the message is sent.
    let missing = sm.apply(at(
        2_400,
        Command::Send {
            queue: "q".into(),
            messages: vec![NewMessage {
                acknowledgement: raftq_core::AcknowledgementRequest {
                    queue: "nowhere".into(),
                    positive: true,
                    negative: false,
                },
                ..body("x")
            }],
        },
    ));
    assert!(matches!(missing, Err(QueueError::QueueNotFound { .. })));
}

#[test]
fn the_journal_keeps_a_copy_of_each_consumed_message_within_its_bounds() {
    let mut sm = with_queue(QueueOptions {
        journal: true,
        journal_retention_ms: 1_000,
        journal_max_messages: 2,
        ..QueueOptions::default()
    });
    let ids = send(&mut sm, 2_000, vec![body("a"), body("b"), body("c")]);
    let got = receive(&mut sm, 2_000, 3);
    for delivery in &got {
        ack(&mut sm, 2_001, delivery);
    }
    // Three consumed, the journal keeps the newest two.
    let kept = sm.peek("q.journal", 0, 10).unwrap();
    let kept: Vec<(Vec<u8>, &str)> = kept
        .iter()
        .map(|m| {
            (
                sm.body(m.body).expect("the state keeps bodies"),
                m.headers["raftq-original-message-id"].as_str(),
            )
        })
        .collect();
    sm.check_bodies().unwrap();
    let (b, c) = (ids[1].to_string(), ids[2].to_string());
    assert_eq!(
        kept,
        [(b"b".to_vec(), b.as_str()), (b"c".to_vec(), c.as_str())]
    );
    // Past the retention the copies expire.
    receive_from(&mut sm, 3_100, "q.journal", 1);
    assert_eq!(sm.queue_info("q.journal").unwrap().stats.depth, 0);
}

#[test]
fn a_message_that_reaches_the_queue_too_late_expires_on_arrival() {
    let mut sm = with_queue(QueueOptions {
        dead_letter_queue: "q.dlq".into(),
        dead_letter_expired: true,
        ..QueueOptions::default()
    });
    let in_time = NewMessage {
        sent_at_ms: 1_800,
        time_to_reach_ms: 500,
        ..body("in time")
    };
    let too_late = NewMessage {
        sent_at_ms: 1_000,
        time_to_reach_ms: 500,
        idempotency_key: "late".into(),
        ..body("too late")
    };
    let outcome = sm.apply(at(
        2_000,
        Command::Send {
            queue: "q".into(),
            messages: vec![in_time, too_late.clone()],
        },
    ));
    let Ok(Outcome::Sent(results)) = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        results.iter().map(|r| r.expired).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(bodies(&receive(&mut sm, 2_000, 10)), ["in time"]);
    let dead = receive_from(&mut sm, 2_000, "q.dlq", 10);
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "not-reached");
    // A retry of the late send is a duplicate, not a second dead letter.
    let retry = send(&mut sm, 2_100, vec![too_late]);
    assert_eq!(retry, [results[1].message_id]);
    assert_eq!(sm.queue_info("q.dlq").unwrap().stats.total_sent, 1);
}

#[test]
fn an_ack_batch_acks_each_receipt_on_its_own_and_reports_each_result() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, vec![body("a"), body("b"), body("c")]);
    let deliveries = receive(&mut sm, 2_000, 3);
    assert_eq!(deliveries.len(), 3);
    let stale = Receipt {
        attempt: deliveries[2].receipt.attempt + 1,
        ..deliveries[2].receipt
    };
    let batch = |sm: &mut StateMachine, receipts: Vec<Receipt>| match sm.apply(at(
        2_100,
        Command::AckBatch {
            queue: "q".into(),
            receipts,
        },
    )) {
        Ok(Outcome::AckedBatch(results)) => results,
        other => panic!("ack batch failed: {other:?}"),
    };
    let results = batch(
        &mut sm,
        vec![deliveries[0].receipt, deliveries[1].receipt, stale],
    );
    assert_eq!(results[0], Ok(false));
    assert_eq!(results[1], Ok(false));
    assert!(
        results[2].is_err(),
        "a stale receipt is refused: {results:?}"
    );
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 1);
    // Retried: the first two report already acked; the third message is still leased.
    let again = batch(&mut sm, vec![deliveries[0].receipt, deliveries[1].receipt]);
    assert_eq!(again, vec![Ok(true), Ok(true)]);
    // Empty or unknown queue: refused as a whole.
    let empty = sm.apply(at(
        2_200,
        Command::AckBatch {
            queue: "q".into(),
            receipts: vec![],
        },
    ));
    assert!(
        matches!(empty, Err(QueueError::InvalidArgument { .. })),
        "{empty:?}"
    );
    let unknown = sm.apply(at(
        2_200,
        Command::AckBatch {
            queue: "nope".into(),
            receipts: vec![deliveries[2].receipt],
        },
    ));
    assert!(
        matches!(unknown, Err(QueueError::QueueNotFound { .. })),
        "{unknown:?}"
    );
}

/// Applies one request to a state that keeps bodies outside, keeping them in `kept` as its
/// effects say, and checks the bookkeeping against the stored messages.
fn apply_outside(
    sm: &mut StateMachine,
    kept: &mut std::collections::BTreeMap<u64, Vec<u8>>,
    request: Request,
) -> Result<Outcome, QueueError> {
    let outcome = sm.apply(request);
    for effect in sm.take_body_effects() {
        match effect {
            raftq_core::BodyEffect::Put { key, bytes } => {
                assert!(kept.insert(key, bytes).is_none(), "body {key} put twice");
            }
            raftq_core::BodyEffect::Delete { key } => {
                assert!(kept.remove(&key).is_some(), "body {key} deleted unheld");
            }
        }
    }
    sm.check_bodies().unwrap();
    outcome
}

#[test]
fn kept_bodies_follow_messages_through_journals_dead_letters_redrive_purge_and_delete() {
    let mut sm = StateMachine::default();
    sm.keep_bodies_outside();
    let mut kept = std::collections::BTreeMap::new();
    let run = |sm: &mut StateMachine, kept: &mut _, now: u64, command: Command| {
        apply_outside(sm, kept, at(now, command)).expect("applied")
    };
    let options = QueueOptions {
        journal: true,
        max_delivery_count: 1,
        dead_letter_queue: "dlq".into(),
        ..QueueOptions::default()
    };
    run(
        &mut sm,
        &mut kept,
        1_000,
        Command::CreateQueue {
            name: "q".into(),
            options,
        },
    );
    let send = |texts: &[&str]| Command::Send {
        queue: "q".into(),
        messages: texts.iter().map(|text| body(text)).collect(),
    };
    run(&mut sm, &mut kept, 1_000, send(&["a", "b", "c", ""]));
    let receive = |queue: &str| Command::Receive {
        queue: queue.into(),
        max_messages: 10,
        lease_ms: 1_000,
    };
    let Outcome::Received(got) = run(&mut sm, &mut kept, 1_000, receive("q")) else {
        panic!("no deliveries")
    };
    assert!(got.iter().all(|d| d.body.is_empty()), "bodies are left out");
    // "a" is consumed: its body stays for the journal copy.
    run(
        &mut sm,
        &mut kept,
        1_001,
        Command::Ack {
            queue: "q".into(),
            receipt: got[0].receipt,
        },
    );
    // The rest run out of deliveries and move to the dead-letter queue with their bodies.
    run(&mut sm, &mut kept, 2_500, Command::Tick);
    assert_eq!(sm.queue_info("dlq").unwrap().stats.depth, 3);
    run(
        &mut sm,
        &mut kept,
        2_500,
        Command::Redrive {
            queue: "dlq".into(),
            message_ids: vec![got[1].message_id],
            max: 0,
            to: String::new(),
        },
    );
    let Outcome::Received(again) = run(&mut sm, &mut kept, 2_500, receive("q")) else {
        panic!("no deliveries")
    };
    assert_eq!(kept[&again[0].body_ref.key], b"b");
    let held: Vec<&[u8]> = kept.values().map(Vec::as_slice).collect();
    assert_eq!(held, [b"a".as_slice(), b"b", b"c"]);
    run(
        &mut sm,
        &mut kept,
        2_500,
        Command::PurgeQueue {
            name: "q.journal".into(),
        },
    );
    run(
        &mut sm,
        &mut kept,
        2_500,
        Command::DeleteQueue { name: "dlq".into() },
    );
    let held: Vec<&[u8]> = kept.values().map(Vec::as_slice).collect();
    assert_eq!(held, [b"b".as_slice()]);
    run(
        &mut sm,
        &mut kept,
        2_500,
        Command::DeleteQueue { name: "q".into() },
    );
    assert!(kept.is_empty(), "{kept:?}");
}
