//! The same runs replayed batched, with bodies outside, through a snapshot: same answers.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use raftq_core::{BodyEffect, BodyRef, Command, Outcome, QueueError, Request, StateMachine};

use crate::harness::{History, limits};

/// Applies the same requests again, with runs of requests of equal time put together
/// into `Batch` entries of up to `chunk` commands: every result and the final state must
/// be exactly those of one entry per command.
pub fn replay_batched(history: History, chunk: usize) -> Result<(), TestCaseError> {
    let (history, expected_state) = history;
    let mut sm = StateMachine::new(limits());
    let mut results = Vec::new();
    let mut pending: Vec<Request> = Vec::new();
    let mut flush = |sm: &mut StateMachine, pending: &mut Vec<Request>| {
        let Some(first) = pending.first() else { return };
        let now_ms = first.now_ms;
        let commands = pending.drain(..).map(|request| request.command).collect();
        match sm.apply(Request {
            now_ms,
            command: Command::Batch(commands),
        }) {
            Ok(Outcome::Batch(outcomes)) => results.extend(outcomes),
            other => panic!("a batch gave {other:?}"),
        }
    };
    for (request, _) in &history {
        if pending.len() >= chunk || pending.first().is_some_and(|p| p.now_ms != request.now_ms) {
            flush(&mut sm, &mut pending);
        }
        pending.push(request.clone());
    }
    flush(&mut sm, &mut pending);
    let expected: Vec<_> = history.into_iter().map(|(_, outcome)| outcome).collect();
    prop_assert_eq!(results, expected);
    prop_assert!(
        sm == expected_state,
        "batched application left another state"
    );
    Ok(())
}

/// Applies the same requests to a state that keeps its bodies outside, with the bodies
/// kept in a map by its effects: every outcome, once its deliveries' bodies are filled in
/// from the map, must be the one the inline state gave, and the map must hold exactly the
/// bodies the inline state holds.
pub fn replay_with_bodies_outside(history: History) -> Result<(), TestCaseError> {
    let (history, inline_state) = history;
    let mut sm = StateMachine::new(limits());
    sm.keep_bodies_outside();
    let mut kept: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (request, expected) in history {
        let mut outcome = sm.apply(request);
        for effect in sm.take_body_effects() {
            match effect {
                BodyEffect::Put { key, bytes } => {
                    prop_assert!(kept.insert(key, bytes).is_none(), "body {} put twice", key);
                }
                BodyEffect::Delete { key } => {
                    prop_assert!(kept.remove(&key).is_some(), "body {} deleted unheld", key);
                }
            }
        }
        if let Ok(Outcome::Received(deliveries)) = &mut outcome {
            for delivery in deliveries {
                prop_assert!(delivery.body.is_empty());
                if delivery.body_ref.len > 0 {
                    delivery.body = kept[&delivery.body_ref.key].clone();
                }
            }
        }
        prop_assert_eq!(outcome, expected);
        if let Err(problem) = sm.check_bodies() {
            prop_assert!(false, "{}", problem);
        }
    }
    for (key, bytes) in &kept {
        let body = BodyRef {
            key: *key,
            len: bytes.len() as u64,
        };
        let held = inline_state.body(body);
        prop_assert_eq!(held.as_ref(), Some(bytes));
    }
    Ok(())
}

/// Applies the same requests, but after `cut` of them the state goes through its snapshot
/// encoding and the rest is applied to the decoded copy: every result and the final state
/// must be those of the state that was never encoded.
pub fn replay_through_a_snapshot(history: History, cut: usize) -> Result<(), TestCaseError> {
    let (history, expected_state) = history;
    let cut = cut.min(history.len());
    let mut sm = StateMachine::new(limits());
    for (request, expected) in &history[..cut] {
        prop_assert_eq!(&sm.apply(request.clone()), expected);
    }
    let bytes = bincode::serialize(&sm).expect("the state encodes");
    let mut sm: StateMachine = bincode::deserialize(&bytes).expect("the state decodes");
    for (request, expected) in &history[cut..] {
        prop_assert_eq!(&sm.apply(request.clone()), expected);
    }
    prop_assert!(sm == expected_state, "the decoded state went elsewhere");
    prop_assert_eq!(
        bincode::serialize(&sm).expect("encodes"),
        bincode::serialize(&expected_state).expect("encodes")
    );
    Ok(())
}

/// Applies the same requests, each first put to `precheck` (what a leader asks before it
/// proposes): whatever it refuses, `apply` must refuse, and with the same error unless
/// `apply` found first what only it checks (a receipt no longer current). A precheck that
/// refused a command `apply` takes would lose a client's write.
pub fn replay_with_prechecks(history: History) -> Result<(), TestCaseError> {
    let (history, expected_state) = history;
    let mut sm = StateMachine::new(limits());
    for (request, expected) in history {
        if let Err(refused) = sm.precheck(&request.command, request.now_ms) {
            match &expected {
                Err(QueueError::StaleReceipt { .. } | QueueError::MessageNotFound { .. }) => {}
                Err(error) => prop_assert_eq!(error, &refused, "{:?}", request),
                Ok(outcome) => prop_assert!(
                    false,
                    "precheck refused {:?} ({}), apply took it: {:?}",
                    request,
                    refused,
                    outcome
                ),
            }
        }
        prop_assert_eq!(sm.apply(request), expected);
    }
    prop_assert!(sm == expected_state);
    Ok(())
}
