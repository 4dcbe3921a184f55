//! One model run: each step applied to the state machine and the model, then compared.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use raftq_core::{
    Command, Limits, NewMessage, Outcome, QueueError, Receipt, Request, StateMachine,
    TransactionAck, TransactionSend,
};

use crate::machine::Machine;
use crate::observe::{blank, same_state};
use crate::ops::{Config, Msg, Op, Q, Reach};

/// Every request applied, with its answer, and the final state.
pub type History = (Vec<(Request, Result<Outcome, QueueError>)>, StateMachine);

/// The cluster limits of a run: a short transaction window, so runs see ids forgotten.
pub fn limits() -> Limits {
    Limits {
        transaction_window_ms: 3_000,
        ..Limits::default()
    }
}

/// What the run has seen so far, for steps to pick from.
#[derive(Default)]
struct Seen {
    receipts: Vec<(Q, Receipt)>,
    ids: Vec<u64>,
}

impl Seen {
    /// The `pick`-th latest receipt (counting round when there are fewer).
    fn receipt(&self, pick: usize) -> Option<(Q, Receipt)> {
        let count = self.receipts.len();
        (count > 0).then(|| self.receipts[count - 1 - pick % count])
    }

    /// The `pick`-th latest message id (0 when none was seen).
    fn id(&self, pick: usize) -> u64 {
        match self.ids.len() {
            0 => 0,
            count => self.ids[count - 1 - pick % count],
        }
    }

    fn learn(&mut self, queue: Option<Q>, outcome: &Result<Outcome, QueueError>) {
        let mut note = |id: u64| {
            if !self.ids.contains(&id) {
                self.ids.push(id);
            }
        };
        match outcome {
            Ok(Outcome::Sent(sent)) | Ok(Outcome::Committed { sent, .. }) => {
                sent.iter().for_each(|s| note(s.message_id));
            }
            Ok(Outcome::Received(deliveries)) => {
                deliveries.iter().for_each(|d| note(d.message_id));
                let queue = queue.expect("a receive names its queue");
                self.receipts
                    .extend(deliveries.iter().map(|d| (queue, d.receipt)));
            }
            _ => {}
        }
    }
}

fn message(msg: &Msg, body: String, now: u64) -> NewMessage {
    let (time_to_reach_ms, sent_at_ms) = match msg.reach {
        Reach::Any => (0, 0),
        Reach::JustInTime => (100, now - 100),
        Reach::TooLate => (100, now - 101),
    };
    NewMessage {
        body: body.into_bytes(),
        idempotency_key: msg.key.map(|k| format!("k{k}")).unwrap_or_default(),
        group: msg.group.map(|g| format!("g{g}")).unwrap_or_default(),
        properties: raftq_core::MessageProperties {
            correlation_id: msg.correlation.map(|c| format!("c{c}")).unwrap_or_default(),
            ..Default::default()
        },
        priority: msg.priority,
        delay_ms: msg.delay_ms,
        ttl_ms: msg.ttl_ms,
        time_to_reach_ms,
        sent_at_ms,
        ..NewMessage::default()
    }
}

/// The command a step stands for (`None`: nothing to do yet, e.g. no receipt to ack), and
/// the queue it receives from, if it does.
fn command(step: usize, op: &Op, seen: &Seen, now: u64) -> Option<(Command, Option<Q>)> {
    let body = |k: usize| format!("step {step} message {k}");
    let name = |q: Q| q.name().to_string();
    let command = match op {
        Op::Wait { .. } | Op::ClockBehind { .. } => return None,
        Op::Send { queue, messages } => Command::Send {
            queue: name(*queue),
            messages: messages
                .iter()
                .enumerate()
                .map(|(k, m)| message(m, body(k), now))
                .collect(),
        },
        Op::Receive {
            queue,
            max,
            lease_ms,
        } => {
            let command = Command::Receive {
                queue: name(*queue),
                max_messages: *max,
                lease_ms: *lease_ms,
            };
            return Some((command, Some(*queue)));
        }
        Op::ReceiveSelected {
            queue,
            id,
            correlation,
            max,
            lease_ms,
        } => {
            let command = Command::ReceiveSelected {
                queue: name(*queue),
                message_id: id.map(|pick| seen.id(pick)).unwrap_or(0),
                correlation_id: correlation.map(|c| format!("c{c}")).unwrap_or_default(),
                max_messages: *max,
                lease_ms: *lease_ms,
            };
            return Some((command, Some(*queue)));
        }
        Op::Ack { receipt, queue } => {
            let (own, receipt) = seen.receipt(*receipt)?;
            Command::Ack {
                queue: name(queue.unwrap_or(own)),
                receipt,
            }
        }
        Op::AckBatch { receipts } => {
            let picked: Vec<(Q, Receipt)> =
                receipts.iter().filter_map(|r| seen.receipt(*r)).collect();
            Command::AckBatch {
                queue: name(picked.first()?.0),
                receipts: picked.iter().map(|(_, r)| *r).collect(),
            }
        }
        Op::Nack { receipt, delay_ms } => {
            let (queue, receipt) = seen.receipt(*receipt)?;
            Command::Nack {
                queue: name(queue),
                receipt,
                delay_ms: *delay_ms,
            }
        }
        Op::ExtendLease { receipt, lease_ms } => {
            let (queue, receipt) = seen.receipt(*receipt)?;
            Command::ExtendLease {
                queue: name(queue),
                receipt,
                lease_ms: *lease_ms,
            }
        }
        Op::Purge { queue } => Command::PurgeQueue { name: name(*queue) },
        Op::Redrive {
            queue,
            ids,
            max,
            to,
        } => Command::Redrive {
            queue: name(*queue),
            message_ids: ids.iter().map(|pick| seen.id(*pick)).collect(),
            max: *max,
            to: to.map(name).unwrap_or_default(),
        },
        Op::Commit {
            transaction,
            acks,
            sends,
        } => Command::Commit {
            transaction_id: format!("tx{transaction}"),
            acks: acks
                .iter()
                .filter_map(|r| seen.receipt(*r))
                .map(|(queue, receipt)| TransactionAck {
                    queue: name(queue),
                    receipt,
                })
                .collect(),
            sends: sends
                .iter()
                .enumerate()
                .map(|(k, (queue, m))| TransactionSend {
                    queue: name(*queue),
                    message: message(m, body(k), now),
                })
                .collect(),
        },
        Op::Tick => Command::Tick,
    };
    Some((command, None))
}

/// Applies `command` to both machines and checks they agree.
fn step(
    sm: &mut StateMachine,
    model: &mut Machine,
    request: Request,
    what: &str,
) -> Result<Result<Outcome, QueueError>, TestCaseError> {
    let got = sm.apply(request.clone());
    let want = model.apply(request.now_ms, &request.command);
    prop_assert_eq!(
        blank(&got),
        want,
        "{} as {} at {}: the state machine answered (left) otherwise than the model (right)",
        what,
        request.command.kind(),
        request.now_ms
    );
    if let Err(problem) = same_state(sm, model) {
        prop_assert!(false, "after {}: {}", what, problem);
    }
    Ok(got)
}

pub fn run(config: &Config, ops: &[Op]) -> Result<History, TestCaseError> {
    let limits = limits();
    let mut sm = StateMachine::new(limits.clone());
    let mut model = Machine::new(limits.transaction_window_ms);
    let mut history = Vec::new();
    // The leader's clock; the machines' time is the latest stamp they saw.
    let mut clock = 10_000u64;
    for (name, options) in config.queues() {
        let request = Request {
            now_ms: clock,
            command: Command::CreateQueue {
                name: name.into(),
                options,
            },
        };
        let got = step(&mut sm, &mut model, request.clone(), "setup")?;
        prop_assert!(got.is_ok(), "{:?}", got);
        history.push((request, got));
    }
    let mut seen = Seen::default();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Wait { ms } => clock += ms,
            Op::ClockBehind { ms } => clock -= ms,
            _ => {}
        }
        let now = clock.max(model.now());
        let Some((command, receives_from)) = command(i, op, &seen, now) else {
            continue;
        };
        let request = Request {
            now_ms: clock,
            command,
        };
        let what = format!("step {i} {op:?}");
        let got = step(&mut sm, &mut model, request.clone(), &what)?;
        seen.learn(receives_from, &got);
        history.push((request, got));
    }
    Ok((history, sm))
}
