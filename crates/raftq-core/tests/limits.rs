//! Queue limits against the pure state machine: a full queue refuses by count and bytes,
//! dead-letter-oldest makes room, a key repeated within a batch needs room once.

mod common;

use common::*;
use raftq_core::{Command, NewMessage, QueueError, QueueOptions};

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
