//! Behaviour of the queue state machine, one promise per test.

use std::collections::BTreeMap;

use raftq_core::{
    Command, NewMessage, Outcome, QueueError, QueueOptions, Receipt, Request, StateMachine,
};

fn at(now_ms: u64, command: Command) -> Request {
    Request { now_ms, command }
}

fn message(body: &str, key: &str) -> NewMessage {
    NewMessage {
        body: body.as_bytes().to_vec(),
        headers: BTreeMap::new(),
        idempotency_key: key.to_string(),
        ..NewMessage::default()
    }
}

fn with_queue(options: QueueOptions) -> StateMachine {
    let mut sm = StateMachine::default();
    sm.apply(at(
        1_000,
        Command::CreateQueue {
            name: "q".into(),
            options,
        },
    ))
    .expect("create");
    sm
}

fn send(sm: &mut StateMachine, now: u64, body: &str, key: &str) -> (u64, bool) {
    match sm.apply(at(
        now,
        Command::Send {
            queue: "q".into(),
            messages: vec![message(body, key)],
        },
    )) {
        Ok(Outcome::Sent(results)) => (results[0].message_id, results[0].duplicate),
        other => panic!("send failed: {other:?}"),
    }
}

fn receive(sm: &mut StateMachine, now: u64, max: u32, lease_ms: u64) -> Vec<(String, Receipt)> {
    match sm.apply(at(
        now,
        Command::Receive {
            queue: "q".into(),
            max_messages: max,
            lease_ms,
        },
    )) {
        Ok(Outcome::Received(deliveries)) => deliveries
            .into_iter()
            .map(|d| (String::from_utf8(d.body).unwrap(), d.receipt))
            .collect(),
        other => panic!("receive failed: {other:?}"),
    }
}

fn ack(sm: &mut StateMachine, now: u64, receipt: Receipt) -> Result<Outcome, QueueError> {
    sm.apply(at(
        now,
        Command::Ack {
            queue: "q".into(),
            receipt,
        },
    ))
}

#[test]
fn messages_are_delivered_in_send_order() {
    let mut sm = with_queue(QueueOptions::default());
    for i in 0..10 {
        send(&mut sm, 2_000 + i, &format!("m{i}"), "");
    }
    let got: Vec<_> = receive(&mut sm, 3_000, 4, 0)
        .into_iter()
        .chain(receive(&mut sm, 3_001, 100, 0))
        .map(|(body, _)| body)
        .collect();
    let want: Vec<_> = (0..10).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn same_idempotency_key_returns_original_id_and_stores_once() {
    let mut sm = with_queue(QueueOptions::default());
    let (first, dup1) = send(&mut sm, 2_000, "a", "key-1");
    let (second, dup2) = send(&mut sm, 2_500, "a", "key-1");
    assert_eq!(first, second);
    assert!(!dup1 && dup2);
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 1);
}

#[test]
fn idempotency_key_is_forgotten_after_the_dedup_window() {
    let mut sm = with_queue(QueueOptions {
        dedup_window_ms: 1_000,
        ..QueueOptions::default()
    });
    let (first, _) = send(&mut sm, 2_000, "a", "k");
    let (second, duplicate) = send(&mut sm, 3_001, "a", "k");
    assert_ne!(first, second);
    assert!(!duplicate);
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 2);
}

#[test]
fn ack_records_of_consecutive_messages_are_kept_for_the_window_then_forgotten() {
    let mut sm = with_queue(QueueOptions {
        dedup_window_ms: 1_000,
        ..QueueOptions::default()
    });
    for body in ["a", "b", "c"] {
        send(&mut sm, 2_000, body, "");
    }
    let receipts: Vec<Receipt> = receive(&mut sm, 2_000, 3, 0)
        .into_iter()
        .map(|(_, receipt)| receipt)
        .collect();
    assert_eq!(receipts.len(), 3);
    // Acked together: consecutive ids with the same forget time.
    for receipt in &receipts {
        ack(&mut sm, 2_100, *receipt).unwrap();
    }
    for receipt in &receipts {
        assert_eq!(
            ack(&mut sm, 3_099, *receipt),
            Ok(Outcome::Acked {
                already_acked: true
            })
        );
    }
    for receipt in &receipts {
        assert!(matches!(
            ack(&mut sm, 3_100, *receipt),
            Err(QueueError::StaleReceipt { .. })
        ));
    }
}

#[test]
fn expired_lease_redelivers_and_the_old_receipt_is_stale() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, "a", "");
    let (_, first) = receive(&mut sm, 2_000, 1, 500).remove(0);
    assert!(receive(&mut sm, 2_400, 1, 500).is_empty(), "still leased");
    let (body, second) = receive(&mut sm, 2_600, 1, 500).remove(0);
    assert_eq!(body, "a");
    assert_eq!(second.attempt, first.attempt + 1);
    let before = sm.clone();
    assert!(matches!(
        ack(&mut sm, 2_600, first),
        Err(QueueError::StaleReceipt { .. })
    ));
    assert_eq!(sm, before, "a refused ack changes nothing");
    assert_eq!(
        ack(&mut sm, 2_700, second),
        Ok(Outcome::Acked {
            already_acked: false
        })
    );
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 0);
}

#[test]
fn ack_after_lease_expiry_is_refused_even_before_redelivery() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, "a", "");
    let (_, receipt) = receive(&mut sm, 2_000, 1, 500).remove(0);
    assert!(matches!(
        ack(&mut sm, 2_501, receipt),
        Err(QueueError::StaleReceipt { .. })
    ));
    assert_eq!(sm.queue_info("q").unwrap().stats.depth, 1);
}

#[test]
fn retried_ack_of_the_same_receipt_succeeds_without_counting_twice() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, "a", "");
    let (_, receipt) = receive(&mut sm, 2_000, 1, 0).remove(0);
    ack(&mut sm, 2_100, receipt).unwrap();
    assert_eq!(
        ack(&mut sm, 2_200, receipt),
        Ok(Outcome::Acked {
            already_acked: true
        })
    );
    assert_eq!(sm.queue_info("q").unwrap().stats.total_acked, 1);
}

#[test]
fn nack_with_delay_hides_the_message_until_the_delay_ends() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, "a", "");
    let (_, receipt) = receive(&mut sm, 2_000, 1, 0).remove(0);
    sm.apply(at(
        2_100,
        Command::Nack {
            queue: "q".into(),
            receipt,
            delay_ms: 1_000,
        },
    ))
    .unwrap();
    assert!(receive(&mut sm, 3_099, 1, 0).is_empty());
    assert_eq!(receive(&mut sm, 3_100, 1, 0).len(), 1);
}

#[test]
fn extend_lease_keeps_the_message_leased_longer() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 2_000, "a", "");
    let (_, receipt) = receive(&mut sm, 2_000, 1, 500).remove(0);
    sm.apply(at(
        2_400,
        Command::ExtendLease {
            queue: "q".into(),
            receipt,
            lease_ms: 1_000,
        },
    ))
    .unwrap();
    assert!(receive(&mut sm, 3_000, 1, 500).is_empty());
    ack(&mut sm, 3_300, receipt).unwrap();
}

#[test]
fn time_never_goes_backwards_when_a_leader_clock_is_behind() {
    let mut sm = with_queue(QueueOptions::default());
    send(&mut sm, 10_000, "a", "");
    let (_, receipt) = receive(&mut sm, 10_000, 1, 500).remove(0);
    // A new leader whose clock is 9 s behind cannot revive the expired lease: the state
    // machine's time is still at least 10_000, and the next command at 10_600 expires it.
    send(&mut sm, 1_000, "b", "");
    assert_eq!(sm.now_ms(), 10_000);
    sm.apply(at(
        10_600,
        Command::PurgeQueue {
            name: "nothing".into(),
        },
    ))
    .unwrap_err();
    assert!(matches!(
        ack(&mut sm, 2_000, receipt),
        Err(QueueError::StaleReceipt { .. })
    ));
}

#[test]
fn max_delivery_count_stops_redelivery() {
    let mut sm = with_queue(QueueOptions {
        max_delivery_count: 2,
        ..QueueOptions::default()
    });
    send(&mut sm, 2_000, "a", "");
    assert_eq!(receive(&mut sm, 2_000, 1, 100).len(), 1);
    assert_eq!(receive(&mut sm, 2_200, 1, 100).len(), 1);
    assert!(receive(&mut sm, 2_400, 1, 100).is_empty());
    let stats = sm.queue_info("q").unwrap().stats;
    assert_eq!((stats.depth, stats.total_discarded), (0, 1));
}

#[test]
fn bad_input_is_refused_with_a_precise_error_and_changes_nothing() {
    let mut sm = with_queue(QueueOptions {
        max_message_bytes: 10,
        max_depth: 2,
        ..QueueOptions::default()
    });
    send(&mut sm, 2_000, "a", "");
    let before = sm.clone();
    type Expectation = fn(&QueueError) -> bool;
    let cases: Vec<(Command, Expectation)> = vec![
        (
            Command::CreateQueue {
                name: "q".into(),
                options: QueueOptions::default(),
            },
            |e| matches!(e, QueueError::QueueAlreadyExists { .. }),
        ),
        (
            Command::CreateQueue {
                name: "bad name".into(),
                options: QueueOptions::default(),
            },
            |e| matches!(e, QueueError::InvalidQueueName { .. }),
        ),
        (
            Command::Send {
                queue: "missing".into(),
                messages: vec![message("x", "")],
            },
            |e| matches!(e, QueueError::QueueNotFound { .. }),
        ),
        (
            Command::Send {
                queue: "q".into(),
                messages: vec![],
            },
            |e| matches!(e, QueueError::InvalidArgument { .. }),
        ),
        (
            Command::Send {
                queue: "q".into(),
                messages: vec![message("ok", ""), message("this is far too long", "")],
            },
            |e| {
                matches!(
                    e,
                    QueueError::MessageTooLarge {
                        size: 20,
                        limit: 10
                    }
                )
            },
        ),
        (
            Command::Send {
                queue: "q".into(),
                messages: vec![message("1", ""), message("2", "")],
            },
            |e| matches!(e, QueueError::QueueFull { .. }),
        ),
        (
            Command::Receive {
                queue: "q".into(),
                max_messages: 0,
                lease_ms: 0,
            },
            |e| matches!(e, QueueError::InvalidArgument { .. }),
        ),
        (
            Command::Receive {
                queue: "q".into(),
                max_messages: 1,
                lease_ms: 1,
            },
            |e| matches!(e, QueueError::InvalidArgument { .. }),
        ),
        (
            Command::Ack {
                queue: "q".into(),
                receipt: Receipt {
                    message_id: 999,
                    attempt: 1,
                },
            },
            |e| matches!(e, QueueError::StaleReceipt { .. }),
        ),
    ];
    for (command, expected) in cases {
        let kind = command.kind();
        let error = sm.apply(at(2_000, command)).expect_err(kind);
        assert!(expected(&error), "{kind}: unexpected {error:?}");
        assert_eq!(sm, before, "{kind} changed the state");
    }
}

#[test]
fn what_a_leader_refuses_before_proposing_is_what_applying_would_refuse() {
    let receipt = Receipt {
        message_id: 1,
        attempt: 1,
    };
    let refused = [
        Command::Send {
            queue: "missing".into(),
            messages: vec![message("x", "")],
        },
        Command::Receive {
            queue: "missing".into(),
            max_messages: 1,
            lease_ms: 0,
        },
        Command::Ack {
            queue: "missing".into(),
            receipt,
        },
        Command::Nack {
            queue: "missing".into(),
            receipt,
            delay_ms: 0,
        },
        Command::PurgeQueue {
            name: "missing".into(),
        },
        Command::Redrive {
            queue: "q".into(),
            message_ids: Vec::new(),
            max: 0,
            to: String::new(),
        },
        Command::CreateQueue {
            name: "q".into(),
            options: QueueOptions::default(),
        },
        Command::DeletePrincipal {
            name: "nobody".into(),
        },
    ];
    // A queue of one message, full: a send to it is refused before the log too.
    let mut sm = with_queue(QueueOptions {
        max_depth: 1,
        ..QueueOptions::default()
    });
    send(&mut sm, 1_000, "one", "");
    let full = Command::Send {
        queue: "q".into(),
        messages: vec![message("two", "")],
    };
    for command in refused.into_iter().chain([full]) {
        let before = sm.clone();
        let checked = sm
            .precheck(&command, 2_000)
            .expect_err(&format!("{command:?} is refused before the log"));
        let applied = sm
            .apply(at(2_000, command.clone()))
            .expect_err("and when applied");
        assert_eq!(checked, applied, "{command:?}");
        assert_eq!(sm.queue_info("q"), before.queue_info("q"));
    }
    // What only applying can tell is not refused before.
    sm.precheck(
        &Command::Ack {
            queue: "q".into(),
            receipt: Receipt {
                message_id: 999,
                attempt: 1,
            },
        },
        2_000,
    )
    .expect("a stale receipt is the log's to refuse");
}
