//! Model-based test: random command sequences against the real state machine and a tiny
//! reference model of one queue; both must agree on every observable result.
//! A failure prints the minimal command sequence (proptest shrinks it) and its seed.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftq_core::{Command, NewMessage, Outcome, QueueOptions, Receipt, Request, StateMachine};

#[derive(Debug, Clone)]
enum Op {
    Send { key: Option<u8> },
    Receive { max: u32, lease_ms: u64 },
    Ack { pick: usize },
    Nack { pick: usize, delay_ms: u64 },
    Wait { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => proptest::option::of(0u8..4).prop_map(|key| Op::Send { key }),
        3 => (1u32..4, prop_oneof![Just(100u64), Just(300), Just(1_000)])
            .prop_map(|(max, lease_ms)| Op::Receive { max, lease_ms }),
        2 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        1 => (any::<usize>(), prop_oneof![Just(0u64), Just(200)])
            .prop_map(|(pick, delay_ms)| Op::Nack { pick, delay_ms }),
        2 => prop_oneof![Just(50u64), Just(150), Just(400)].prop_map(|ms| Op::Wait { ms }),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Visible { at: u64 },
    Leased { until: u64 },
}

#[derive(Debug, Clone)]
struct ModelMessage {
    id: u64,
    deliveries: u32,
    state: State,
}

/// The reference: a vector in send order and a dedup map; nothing clever.
#[derive(Default)]
struct Model {
    messages: Vec<ModelMessage>,
    keys: BTreeMap<u8, u64>,
    next_id: u64,
}

impl Model {
    fn send(&mut self, key: Option<u8>) -> u64 {
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
            deliveries: 0,
            state: State::Visible { at: 0 },
        });
        id
    }

    fn receive(&mut self, now: u64, max: u32, lease_ms: u64) -> Vec<Receipt> {
        let mut out = Vec::new();
        for m in &mut self.messages {
            if out.len() == max as usize {
                break;
            }
            let visible = match m.state {
                State::Visible { at } => at <= now,
                State::Leased { until } => until <= now,
            };
            if visible {
                m.deliveries += 1;
                m.state = State::Leased {
                    until: now + lease_ms,
                };
                out.push(Receipt {
                    message_id: m.id,
                    attempt: m.deliveries,
                });
            }
        }
        out
    }

    fn position(&self, receipt: Receipt, now: u64) -> Option<usize> {
        self.messages.iter().position(|m| {
            m.id == receipt.message_id
                && m.deliveries == receipt.attempt
                && matches!(m.state, State::Leased { until } if until > now)
        })
    }
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut sm = StateMachine::default();
    let mut now = 1_000u64;
    let create = Command::CreateQueue {
        name: "q".into(),
        options: QueueOptions {
            dedup_window_ms: 1_000_000,
            ..QueueOptions::default()
        },
    };
    sm.apply(Request {
        now_ms: now,
        command: create,
    })
    .unwrap();
    let mut model = Model::default();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut acked: Vec<u64> = Vec::new();
    let mut acked_receipts: Vec<Receipt> = Vec::new();
    for op in ops {
        let command = match &op {
            Op::Wait { ms } => {
                now += ms;
                continue;
            }
            Op::Send { key } => Command::Send {
                queue: "q".into(),
                messages: vec![NewMessage {
                    body: vec![1],
                    headers: BTreeMap::new(),
                    idempotency_key: key.map(|k| format!("k{k}")).unwrap_or_default(),
                }],
            },
            Op::Receive { max, lease_ms } => Command::Receive {
                queue: "q".into(),
                max_messages: *max,
                lease_ms: *lease_ms,
            },
            Op::Ack { pick } | Op::Nack { pick, .. } if receipts.is_empty() => {
                let _ = pick;
                continue;
            }
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
        let outcome = sm.apply(Request {
            now_ms: now,
            command: command.clone(),
        });
        match (op, outcome) {
            (Op::Send { key }, Ok(Outcome::Sent(results))) => {
                prop_assert_eq!(results[0].message_id, model.send(key));
            }
            (Op::Receive { max, lease_ms }, Ok(Outcome::Received(deliveries))) => {
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
                        model.messages[i].state = State::Visible { at: now + delay_ms };
                    }
                    None => prop_assert!(result.is_err(), "stale nack accepted"),
                }
            }
            (op, other) => prop_assert!(false, "{op:?} gave {other:?}"),
        }
        let stats = sm.queue_info("q").unwrap().stats;
        prop_assert_eq!(stats.depth, model.messages.len() as u64);
        prop_assert_eq!(stats.total_acked, acked.len() as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
