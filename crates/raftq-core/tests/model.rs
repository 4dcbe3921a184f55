//! Model-based test: random command sequences against the real state machine and a tiny
//! reference model of one queue (with message groups, priorities, delays, time to be
//! received, a delivery limit and a dead-letter queue); both must agree on every
//! observable result: deliveries and their order, ack and nack results, depth, expiries
//! and dead letters. A failure prints the minimal command sequence (proptest shrinks it).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use raftq_core::{
    BodyEffect, BodyRef, Command, NewMessage, Outcome, QueueError, QueueOptions, Receipt, Request,
    StateMachine,
};

#[derive(Debug, Clone)]
enum Op {
    Send {
        key: Option<u8>,
        group: Option<u8>,
        priority: u8,
        delay_ms: u64,
        ttl_ms: u64,
    },
    Receive {
        max: u32,
        lease_ms: u64,
    },
    Ack {
        pick: usize,
    },
    Nack {
        pick: usize,
        delay_ms: u64,
    },
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let send = (
        proptest::option::of(0u8..4),
        proptest::option::of(0u8..3),
        prop_oneof![Just(0u8), Just(1), Just(7)],
        prop_oneof![3 => Just(0u64), 1 => Just(300)],
        prop_oneof![3 => Just(0u64), 1 => Just(500), 1 => Just(2_000)],
    )
        .prop_map(|(key, group, priority, delay_ms, ttl_ms)| Op::Send {
            key,
            group,
            priority,
            delay_ms,
            ttl_ms,
        });
    prop_oneof![
        4 => send,
        3 => (1u32..4, prop_oneof![Just(100u64), Just(300), Just(1_000)])
            .prop_map(|(max, lease_ms)| Op::Receive { max, lease_ms }),
        2 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(200)])
            .prop_map(|(pick, delay_ms)| Op::Nack { pick, delay_ms }),
        2 => prop_oneof![Just(50u64), Just(150), Just(400)].prop_map(|ms| Op::Wait { ms }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Waiting until `at`; `settled` once the delivery-limit and expiry checks ran at the
    /// moment it became visible.
    Visible {
        at: u64,
        settled: bool,
    },
    Leased {
        until: u64,
    },
}

#[derive(Debug, Clone)]
struct ModelMessage {
    id: u64,
    group: Option<u8>,
    priority: u8,
    expires_at: Option<u64>,
    deliveries: u32,
    state: State,
}

/// The queue's configuration for one run.
#[derive(Debug, Clone, Copy)]
struct Config {
    max_deliveries: u32,
    dead_letter: bool,
    dead_letter_expired: bool,
}

/// The reference: a vector in send order, a dedup map and the dead-letter set; nothing
/// clever, every rule written out the long way.
#[derive(Default)]
struct Model {
    messages: Vec<ModelMessage>,
    keys: BTreeMap<u8, u64>,
    next_id: u64,
    dead_letters: BTreeSet<u64>,
    expired: u64,
    discarded: u64,
}

impl Model {
    fn drop_message(&mut self, index: usize, expired: bool, config: Config) {
        let message = self.messages.remove(index);
        if expired {
            self.expired += 1;
        }
        let dead_letter = if expired {
            config.dead_letter_expired
        } else {
            config.dead_letter
        };
        if dead_letter {
            self.dead_letters.insert(message.id);
        } else {
            self.discarded += 1;
        }
    }

    /// Applies what the passage of time to `now` does: ended leases and delays make
    /// messages visible (or dead letters, past the delivery limit), and unleased messages
    /// past their time to be received expire.
    fn settle(&mut self, now: u64, config: Config) {
        let mut i = 0;
        while i < self.messages.len() {
            let m = &mut self.messages[i];
            let returning = match m.state {
                State::Leased { until } => until <= now,
                State::Visible { at, settled } => !settled && at <= now,
            };
            if returning {
                if config.max_deliveries > 0 && m.deliveries >= config.max_deliveries {
                    self.drop_message(i, false, config);
                    continue;
                }
                m.state = State::Visible {
                    at: now,
                    settled: true,
                };
            }
            let leased = matches!(m.state, State::Leased { .. });
            if !leased && m.expires_at.is_some_and(|at| at <= now) {
                self.drop_message(i, true, config);
                continue;
            }
            i += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        now: u64,
        key: Option<u8>,
        group: Option<u8>,
        priority: u8,
        delay_ms: u64,
        ttl_ms: u64,
    ) -> u64 {
        if let Some(id) = key.and_then(|k| self.keys.get(&k)) {
            return *id;
        }
        self.next_id += 1;
        let id = self.next_id;
        if let Some(k) = key {
            self.keys.insert(k, id);
        }
        self.messages.push(ModelMessage {
            id,
            group,
            priority,
            expires_at: (ttl_ms > 0).then_some(now + ttl_ms),
            deliveries: 0,
            state: State::Visible {
                at: now + delay_ms,
                settled: delay_ms == 0,
            },
        });
        id
    }

    fn visible(m: &ModelMessage, now: u64) -> bool {
        matches!(m.state, State::Visible { at, .. } if at <= now)
    }

    fn receive(&mut self, now: u64, max: u32, lease_ms: u64) -> Vec<Receipt> {
        // Candidates: visible ungrouped messages, and each group's first message when it
        // is visible (a leased or waiting head blocks its group).
        let mut seen_groups = BTreeSet::new();
        let mut candidates: Vec<usize> = Vec::new();
        for (i, m) in self.messages.iter().enumerate() {
            match m.group {
                None => {
                    if Self::visible(m, now) {
                        candidates.push(i);
                    }
                }
                Some(g) => {
                    if seen_groups.insert(g) && Self::visible(m, now) {
                        candidates.push(i);
                    }
                }
            }
        }
        // Higher priority first, then send order.
        candidates.sort_by_key(|&i| (std::cmp::Reverse(self.messages[i].priority), i));
        candidates.truncate(max as usize);
        candidates
            .into_iter()
            .map(|i| {
                let m = &mut self.messages[i];
                m.deliveries += 1;
                m.state = State::Leased {
                    until: now + lease_ms,
                };
                Receipt {
                    message_id: m.id,
                    attempt: m.deliveries,
                }
            })
            .collect()
    }

    fn position(&self, receipt: Receipt, now: u64) -> Option<usize> {
        self.messages.iter().position(|m| {
            m.id == receipt.message_id
                && m.deliveries == receipt.attempt
                && matches!(m.state, State::Leased { until } if until > now)
        })
    }
}

/// Every request applied, with its outcome, and the final state.
type History = (Vec<(Request, Result<Outcome, QueueError>)>, StateMachine);

fn run(config: Config, ops: Vec<Op>) -> Result<History, TestCaseError> {
    let mut history = Vec::new();
    let mut sm = StateMachine::default();
    let mut now = 1_000u64;
    let create = Command::CreateQueue {
        name: "q".into(),
        options: QueueOptions {
            dedup_window_ms: 1_000_000,
            max_delivery_count: config.max_deliveries,
            dead_letter_queue: if config.dead_letter || config.dead_letter_expired {
                "dlq".into()
            } else {
                String::new()
            },
            dead_letter_expired: config.dead_letter_expired,
            ..QueueOptions::default()
        },
    };
    let request = Request {
        now_ms: now,
        command: create,
    };
    let created = sm.apply(request.clone());
    prop_assert!(created.is_ok());
    history.push((request, created));
    // With a dead-letter queue, max-delivery dead letters go there too.
    let config = Config {
        dead_letter: config.dead_letter || config.dead_letter_expired,
        ..config
    };
    let mut model = Model::default();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut acked_receipts: Vec<Receipt> = Vec::new();
    let mut bodies: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let body = format!("body of step {step}").into_bytes();
        let command = match &op {
            Op::Wait { ms } => {
                now += ms;
                continue;
            }
            Op::Send {
                key,
                group,
                priority,
                delay_ms,
                ttl_ms,
            } => Command::Send {
                queue: "q".into(),
                messages: vec![NewMessage {
                    body: body.clone(),
                    idempotency_key: key.map(|k| format!("k{k}")).unwrap_or_default(),
                    group: group.map(|g| format!("g{g}")).unwrap_or_default(),
                    priority: *priority,
                    delay_ms: *delay_ms,
                    ttl_ms: *ttl_ms,
                    ..NewMessage::default()
                }],
            },
            Op::Receive { max, lease_ms } => Command::Receive {
                queue: "q".into(),
                max_messages: *max,
                lease_ms: *lease_ms,
            },
            Op::Ack { .. } | Op::Nack { .. } if receipts.is_empty() => continue,
            Op::Ack { pick } => Command::Ack {
                queue: "q".into(),
                receipt: receipts[pick % receipts.len()],
            },
            Op::Nack { pick, delay_ms } => Command::Nack {
                queue: "q".into(),
                receipt: receipts[pick % receipts.len()],
                delay_ms: *delay_ms,
            },
        };
        let request = Request {
            now_ms: now,
            command: command.clone(),
        };
        let outcome = sm.apply(request.clone());
        history.push((request, outcome.clone()));
        model.settle(now, config);
        match (op, outcome) {
            (
                Op::Send {
                    key,
                    group,
                    priority,
                    delay_ms,
                    ttl_ms,
                },
                Ok(Outcome::Sent(results)),
            ) => {
                let id = model.send(now, key, group, priority, delay_ms, ttl_ms);
                prop_assert_eq!(results[0].message_id, id);
                bodies.entry(id).or_insert(body);
            }
            (Op::Receive { max, lease_ms }, Ok(Outcome::Received(deliveries))) => {
                for delivery in &deliveries {
                    prop_assert_eq!(Some(&delivery.body), bodies.get(&delivery.message_id));
                }
                let got: Vec<Receipt> = deliveries.iter().map(|d| d.receipt).collect();
                let want = model.receive(now, max, lease_ms);
                prop_assert_eq!(&got, &want);
                receipts.extend(got);
            }
            (Op::Ack { .. }, result) => {
                let Command::Ack { receipt, .. } = command else {
                    unreachable!()
                };
                match model.position(receipt, now) {
                    Some(i) => {
                        prop_assert!(
                            matches!(
                                result,
                                Ok(Outcome::Acked {
                                    already_acked: false
                                })
                            ),
                            "{result:?}"
                        );
                        let removed = model.messages.remove(i);
                        prop_assert!(!acked.contains(&removed.id), "acked twice");
                        acked.push(removed.id);
                        acked_receipts.push(receipt);
                    }
                    None if acked_receipts.contains(&receipt) => {
                        // A retried ack of the very receipt that acked the message succeeds
                        // again and is not counted twice.
                        prop_assert!(
                            matches!(
                                result,
                                Ok(Outcome::Acked {
                                    already_acked: true
                                })
                            ),
                            "{result:?}"
                        );
                    }
                    None => prop_assert!(result.is_err(), "stale ack accepted: {result:?}"),
                }
            }
            (Op::Nack { delay_ms, .. }, result) => {
                let Command::Nack { receipt, .. } = command else {
                    unreachable!()
                };
                match model.position(receipt, now) {
                    Some(i) => {
                        prop_assert!(result.is_ok(), "{result:?}");
                        model.messages[i].state = State::Visible {
                            at: now + delay_ms,
                            settled: false,
                        };
                        model.settle(now, config);
                    }
                    None => prop_assert!(result.is_err(), "stale nack accepted"),
                }
            }
            (op, other) => prop_assert!(false, "{op:?} gave {other:?}"),
        }
        let stats = sm.queue_info("q").unwrap().stats;
        prop_assert_eq!(stats.depth, model.messages.len() as u64);
        prop_assert_eq!(stats.total_acked, acked.len() as u64);
        prop_assert_eq!(stats.total_expired, model.expired);
        prop_assert_eq!(stats.total_discarded, model.discarded);
        prop_assert_eq!(stats.total_dead_lettered, model.dead_letters.len() as u64);
        let dead: BTreeSet<u64> = sm
            .peek("dlq", 0, 1_000)
            .map(|messages| messages.iter().map(|m| m.message_id).collect())
            .unwrap_or_default();
        prop_assert_eq!(&dead, &model.dead_letters);
        if let Err(problem) = sm.check_bodies() {
            prop_assert!(false, "{}", problem);
        }
    }
    Ok((history, sm))
}

/// Applies the same requests again, with runs of requests of equal time put together
/// into `Batch` entries of up to `chunk` commands: every result and the final state must
/// be exactly those of one entry per command.
fn replay_batched(history: History, chunk: usize) -> Result<(), TestCaseError> {
    let (history, expected_state) = history;
    let mut sm = StateMachine::default();
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
fn replay_with_bodies_outside(history: History) -> Result<(), TestCaseError> {
    let (history, inline_state) = history;
    let mut sm = StateMachine::default();
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
fn replay_through_a_snapshot(history: History, cut: usize) -> Result<(), TestCaseError> {
    let (history, expected_state) = history;
    let cut = cut.min(history.len());
    let mut sm = StateMachine::default();
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

fn config() -> impl Strategy<Value = Config> {
    (
        prop_oneof![Just(0u32), Just(1), Just(2)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(max_deliveries, dead_letter, dead_letter_expired)| Config {
                max_deliveries,
                dead_letter,
                dead_letter_expired,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_reference_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        run(config, ops)?;
    }

    #[test]
    fn batched_commands_give_the_same_results_and_state_as_single_entries(
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
        chunk in 1usize..8,
    ) {
        replay_batched(run(config, ops)?, chunk)?;
    }

    #[test]
    fn a_state_restored_from_its_snapshot_encoding_goes_on_as_the_original(
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
        cut in 0usize..100,
    ) {
        replay_through_a_snapshot(run(config, ops)?, cut)?;
    }

    #[test]
    fn bodies_kept_outside_give_the_same_results_and_bodies_as_kept_inside(
        config in config(),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        replay_with_bodies_outside(run(config, ops)?)?;
    }
}
