//! Producer sessions against the pure state machine: numbered sends and commits applied
//! once, repeats answered, the sequence kept through refusals, idle producers forgotten.

use raftq_core::{
    Command, NewMessage, Outcome, QueueError, QueueOptions, Request, StateMachine, TransactionSend,
};

const DAY: u64 = 24 * 60 * 60 * 1000;

fn at(now_ms: u64, command: Command) -> Request {
    Request { now_ms, command }
}

fn machine() -> (StateMachine, u64) {
    let mut sm = StateMachine::default();
    for name in ["orders", "small"] {
        let options = QueueOptions {
            max_depth: if name == "small" { 1 } else { 1_000 },
            dedup_window_ms: 1_000,
            ..QueueOptions::default()
        };
        sm.apply(at(
            0,
            Command::CreateQueue {
                name: name.into(),
                options,
            },
        ))
        .expect("create");
    }
    let id = match sm.apply(at(
        0,
        Command::RegisterProducer {
            name: "till".into(),
            idle_expiry_ms: 2 * DAY,
            max_producers: 100,
        },
    )) {
        Ok(Outcome::ProducerRegistered { producer_id, .. }) => producer_id,
        other => panic!("register: {other:?}"),
    };
    (sm, id)
}

fn keyed(text: &str) -> NewMessage {
    NewMessage {
        body: text.as_bytes().to_vec(),
        idempotency_key: text.into(),
        ..NewMessage::default()
    }
}

fn send(queue: &str, producer: u64, first: u64, bodies: &[&str]) -> Command {
    Command::ProducerSend {
        producer,
        first_sequence: first,
        max_sessions: 100,
        queue: queue.into(),
        messages: bodies.iter().map(|body| keyed(body)).collect(),
    }
}

fn depth(sm: &StateMachine, queue: &str) -> u64 {
    sm.queue_info(queue).expect("queue").stats.depth
}

#[test]
fn a_repeat_a_day_later_is_answered_and_stores_nothing_though_the_keys_are_forgotten() {
    let (mut sm, id) = machine();
    let first = sm.apply(at(1, send("orders", id, 1, &["a", "b"]))).unwrap();
    let repeat = sm
        .apply(at(DAY, send("orders", id, 1, &["a", "b"])))
        .unwrap();
    let (Outcome::Sent(first), Outcome::Sent(repeat)) = (first, repeat) else {
        panic!("not sends");
    };
    assert!(repeat.iter().all(|result| result.duplicate));
    assert_eq!(
        first.iter().map(|r| r.message_id).collect::<Vec<_>>(),
        repeat.iter().map(|r| r.message_id).collect::<Vec<_>>()
    );
    assert_eq!(depth(&sm, "orders"), 2);
    // A plain send of the same keys a day later is stored again: the window passed.
    sm.apply(at(
        DAY,
        Command::Send {
            queue: "orders".into(),
            messages: vec![keyed("a")],
        },
    ))
    .unwrap();
    assert_eq!(depth(&sm, "orders"), 3);
}

#[test]
fn a_refused_send_takes_no_number_and_the_next_message_takes_it() {
    let (mut sm, id) = machine();
    sm.apply(at(1, send("small", id, 1, &["a"]))).unwrap();
    let full = sm.apply(at(2, send("small", id, 2, &["b"])));
    assert!(
        matches!(full, Err(QueueError::QueueFull { .. })),
        "{full:?}"
    );
    assert!(sm.precheck(&send("small", id, 2, &["b"]), 2).is_err());
    // Room again: number 2 is still the next.
    let delivered = match sm.apply(at(
        3,
        Command::Receive {
            queue: "small".into(),
            max_messages: 1,
            lease_ms: 1_000,
        },
    )) {
        Ok(Outcome::Received(delivered)) => delivered,
        other => panic!("receive: {other:?}"),
    };
    sm.apply(at(
        4,
        Command::Ack {
            queue: "small".into(),
            receipt: delivered[0].receipt,
        },
    ))
    .unwrap();
    assert!(sm.precheck(&send("small", id, 2, &["b"]), 5).is_ok());
    sm.apply(at(5, send("small", id, 2, &["b"]))).unwrap();
    assert_eq!(depth(&sm, "small"), 1);
}

#[test]
fn precheck_refuses_what_apply_refuses_and_passes_a_repeat() {
    let (mut sm, id) = machine();
    sm.apply(at(1, send("orders", id, 1, &["a"]))).unwrap();
    assert!(sm.precheck(&send("orders", id, 1, &["a"]), 2).is_ok());
    assert!(matches!(
        sm.precheck(&send("orders", id, 3, &["c"]), 2),
        Err(QueueError::SequenceGap { expected: 2, .. })
    ));
    assert!(matches!(
        sm.precheck(&send("nowhere", id, 1, &["c"]), 2),
        Err(QueueError::QueueNotFound { .. })
    ));
    assert!(matches!(
        sm.precheck(&send("orders", id + 1, 1, &["c"]), 2),
        Err(QueueError::InvalidArgument { .. })
    ));
}

#[test]
fn a_producers_commits_are_numbered_apart_from_its_sends() {
    let (mut sm, id) = machine();
    let commit = |sequence: u64, transaction_id: &str| Command::ProducerCommit {
        producer: id,
        sequence,
        transaction_id: transaction_id.into(),
        acks: vec![],
        sends: vec![TransactionSend {
            queue: "orders".into(),
            message: keyed(transaction_id),
        }],
    };
    sm.apply(at(1, send("orders", id, 1, &["a"]))).unwrap();
    let first = sm.apply(at(2, commit(1, "t1"))).unwrap();
    assert!(matches!(
        first,
        Outcome::Committed {
            already_committed: false,
            ..
        }
    ));
    // Past the transaction window, under another id: still the same commit.
    let repeat = sm.apply(at(DAY, commit(1, "t1-again"))).unwrap();
    assert!(matches!(
        repeat,
        Outcome::Committed {
            already_committed: true,
            ..
        }
    ));
    assert_eq!(depth(&sm, "orders"), 2);
    sm.apply(at(DAY, commit(2, "t2"))).unwrap();
    assert_eq!(depth(&sm, "orders"), 3);
}

#[test]
fn an_idle_producer_is_forgotten_and_refused_as_expired() {
    let (mut sm, id) = machine();
    sm.apply(at(1, send("orders", id, 1, &["a"]))).unwrap();
    assert_eq!(sm.usage().dedup_records, 1 + 2);
    // Active a day later: the expiry counts from then.
    sm.apply(at(DAY, send("orders", id, 2, &["b"]))).unwrap();
    sm.apply(at(3 * DAY - 1, Command::Tick)).unwrap();
    assert_eq!(sm.producers().len(), 1);
    sm.apply(at(3 * DAY, Command::Tick)).unwrap();
    assert_eq!(sm.producers().len(), 0);
    assert_eq!(sm.usage().dedup_records, 0);
    assert_eq!(
        sm.apply(at(3 * DAY, send("orders", id, 3, &["c"]))),
        Err(QueueError::ProducerExpired { producer: id })
    );
    assert_eq!(depth(&sm, "orders"), 2);
}
