//! Transactions against the pure state machine: acks and sends across queues at once, or
//! nothing.

mod common;

use common::*;
use raftq_core::{
    Command, NewMessage, Outcome, QueueError, QueueOptions, Receipt, StateMachine, TransactionAck,
    TransactionSend,
};

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
