//! Acknowledgement messages, journals, time to reach the queue, ack batches, and message
//! bodies kept outside the state, against the pure state machine.

mod common;

use common::*;
use raftq_core::{
    Command, MessageProperties, NewMessage, Outcome, QueueError, QueueOptions, Receipt, Request,
    StateMachine,
};

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

#[test]
fn a_rejected_message_is_dead_lettered_with_its_detail_and_reported_as_rejected() {
    let mut sm = with_queue(QueueOptions {
        dead_letter_queue: "q.dlq".into(),
        ..QueueOptions::default()
    });
    create(&mut sm, "acks", QueueOptions::default());
    create(&mut sm, "plain", QueueOptions::default());
    let asked = NewMessage {
        acknowledgement: raftq_core::AcknowledgementRequest {
            queue: "acks".into(),
            positive: true,
            negative: true,
        },
        ..body("bounce me")
    };
    let ids = send(&mut sm, 2_000, vec![asked, body("next")]);
    let got = receive(&mut sm, 2_000, 1);
    let reject = |sm: &mut StateMachine, now, queue: &str, receipt, detail: &str| {
        sm.apply(at(
            now,
            Command::Reject {
                queue: queue.into(),
                receipt,
                detail: detail.into(),
            },
        ))
    };
    let detail = "550 5.1.1 <nobody@example.org>: Recipient address rejected";
    let outcome = reject(&mut sm, 2_001, "q", got[0].receipt, detail);
    assert_eq!(
        outcome,
        Ok(Outcome::Rejected {
            dead_lettered: true
        })
    );
    // The receipt is spent: a second reject changes nothing.
    let again = reject(&mut sm, 2_002, "q", got[0].receipt, detail);
    assert!(matches!(again, Err(QueueError::StaleReceipt { .. })));
    let dead = receive_from(&mut sm, 2_010, "q.dlq", 10);
    assert_eq!(bodies(&dead), ["bounce me"]);
    assert_eq!(dead[0].headers["raftq-dead-letter-reason"], "rejected");
    assert_eq!(dead[0].headers["raftq-dead-letter-detail"], detail);
    assert_eq!(dead[0].headers["raftq-dead-letter-source"], "q");
    let notices = receive_from(&mut sm, 2_010, "acks", 10);
    assert_eq!(notices.len(), 1, "one notice, and no `consumed` one");
    assert_eq!(notices[0].properties.correlation_id, ids[0].to_string());
    assert_eq!(notices[0].headers["raftq-ack-kind"], "rejected");
    assert_eq!(notices[0].headers["raftq-dead-lettered"], "true");
    assert_eq!(notices[0].headers["raftq-dead-letter-detail"], detail);
    // The next message is delivered as usual.
    assert_eq!(bodies(&receive(&mut sm, 2_020, 1)), ["next"]);

    // Without a dead-letter queue the message is discarded and counted.
    send_to(&mut sm, 3_000, "plain", vec![body("gone")]);
    let got = receive_from(&mut sm, 3_000, "plain", 1);
    let outcome = reject(&mut sm, 3_001, "plain", got[0].receipt, "");
    assert_eq!(
        outcome,
        Ok(Outcome::Rejected {
            dead_lettered: false
        })
    );
    let Ok(Outcome::Received(left)) = sm.apply(at(
        3_100,
        Command::Receive {
            queue: "plain".into(),
            max_messages: 10,
            lease_ms: 0,
        },
    )) else {
        panic!("receive");
    };
    assert!(left.is_empty());
    assert_eq!(sm.queue_info("plain").unwrap().stats.total_discarded, 1);
    // A detail past the limit is refused and the message stays leased.
    send_to(&mut sm, 4_000, "plain", vec![body("kept")]);
    let got = receive_from(&mut sm, 4_000, "plain", 1);
    let long = "x".repeat(raftq_core::MAX_REJECT_DETAIL + 1);
    let refused = reject(&mut sm, 4_001, "plain", got[0].receipt, &long);
    assert!(matches!(refused, Err(QueueError::InvalidArgument { .. })));
    assert_eq!(sm.queue_info("plain").unwrap().stats.in_flight, 1);
}
