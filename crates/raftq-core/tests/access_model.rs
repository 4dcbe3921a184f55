//! Model-based test of principals and grants: random runs of the four principal commands
//! through `StateMachine::apply` against a reference model written the plain way, with
//! every answer, every token and every (principal, action, queue) decision compared after
//! each step, and the state carried through its snapshot encoding.

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftq_core::access::{Access, Action, Actions};
use raftq_core::{Command, Outcome, QueueError, Request, StateMachine};

const NAMES: [&str; 3] = ["app", "billing", "ops"];
const PATTERNS: [&str; 6] = [
    "orders",
    "orders*",
    "orders.eu*",
    "payments",
    "*",
    "orders.dlq",
];
const QUEUES: [&str; 7] = [
    "orders",
    "orders.eu.1",
    "orders.dlq",
    "orders.journal",
    "payments",
    "payments.dlq",
    "other",
];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Delete(usize),
    Grant(usize, usize, u8),
    Revoke(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..NAMES.len()).prop_map(Op::Create),
        (0..NAMES.len()).prop_map(Op::Delete),
        (0..NAMES.len(), 0..PATTERNS.len(), 1..32u8)
            .prop_map(|(name, pattern, bits)| Op::Grant(name, pattern, bits)),
        (0..NAMES.len(), 0..PATTERNS.len()).prop_map(|(name, pattern)| Op::Revoke(name, pattern)),
    ]
}

fn actions(bits: u8) -> Actions {
    Actions::of(
        Action::ALL
            .into_iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, action)| action),
    )
}

/// The reference: principals by name, each with its token and grants.
#[derive(Default)]
struct Model {
    principals: BTreeMap<&'static str, ([u8; 32], BTreeMap<&'static str, Actions>)>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Result<Outcome, QueueError> {
        let changed = |changed| Ok(Outcome::AccessChanged { changed });
        match *op {
            Op::Create(name) => {
                let token = token_of(name);
                let name = NAMES[name];
                if self.principals.contains_key(name) {
                    return Err(QueueError::PrincipalAlreadyExists { name: name.into() });
                }
                self.principals.insert(name, (token, BTreeMap::new()));
                changed(true)
            }
            Op::Delete(name) => match self.principals.remove(NAMES[name]) {
                Some(_) => changed(true),
                None => Err(not_found(NAMES[name])),
            },
            Op::Grant(name, pattern, bits) => match self.principals.get_mut(NAMES[name]) {
                Some((_, grants)) => {
                    grants.insert(PATTERNS[pattern], actions(bits));
                    changed(true)
                }
                None => Err(not_found(NAMES[name])),
            },
            Op::Revoke(name, pattern) => match self.principals.get_mut(NAMES[name]) {
                Some((_, grants)) => changed(grants.remove(PATTERNS[pattern]).is_some()),
                None => Err(not_found(NAMES[name])),
            },
        }
    }

    /// The plain rule: the exact name, else the longest matching prefix; a `.dlq` or
    /// `.journal` queue with no grant of its own goes by its queue's.
    fn allows(&self, name: &str, action: Action, queue: &str) -> bool {
        let Some((_, grants)) = self.principals.get(name) else {
            return false;
        };
        let decide = |queue: &str| -> Option<Actions> {
            if let Some(actions) = grants.get(queue) {
                return Some(*actions);
            }
            let mut best: Option<(usize, Actions)> = None;
            for (pattern, actions) in grants {
                if let Some(prefix) = pattern.strip_suffix('*')
                    && queue.starts_with(prefix)
                    && best.is_none_or(|(length, _)| prefix.len() > length)
                {
                    best = Some((prefix.len(), *actions));
                }
            }
            best.map(|(_, actions)| actions)
        };
        if let Some(actions) = decide(queue) {
            return actions.contains(action);
        }
        let base = queue
            .strip_suffix(".dlq")
            .or_else(|| queue.strip_suffix(".journal"));
        base.and_then(decide)
            .is_some_and(|actions| actions.contains(action))
    }
}

/// The token hash of principal `NAMES[index]` (each its own, as random tokens are).
fn token_of(index: usize) -> [u8; 32] {
    [index as u8 + 1; 32]
}

fn not_found(name: &str) -> QueueError {
    QueueError::PrincipalNotFound { name: name.into() }
}

fn command(op: &Op) -> Command {
    match *op {
        Op::Create(name) => Command::CreatePrincipal {
            name: NAMES[name].into(),
            token_hash: token_of(name),
        },
        Op::Delete(name) => Command::DeletePrincipal {
            name: NAMES[name].into(),
        },
        Op::Grant(name, pattern, bits) => Command::Grant {
            principal: NAMES[name].into(),
            pattern: PATTERNS[pattern].into(),
            actions: actions(bits),
        },
        Op::Revoke(name, pattern) => Command::Revoke {
            principal: NAMES[name].into(),
            pattern: PATTERNS[pattern].into(),
        },
    }
}

/// Every decision and token of `access` against the model.
fn agree(access: &Access, model: &Model) -> Result<(), TestCaseError> {
    for name in NAMES {
        for queue in QUEUES {
            for action in Action::ALL {
                prop_assert_eq!(
                    access.allows(name, action, Some(queue)),
                    model.allows(name, action, queue),
                    "{} {:?} {}",
                    name,
                    action,
                    queue
                );
            }
        }
    }
    for (index, name) in NAMES.iter().enumerate() {
        let holder = model.principals.contains_key(name).then_some(*name);
        prop_assert_eq!(access.authenticate(&token_of(index)), holder);
    }
    Ok(())
}

proptest! {
    #[test]
    fn principal_commands_agree_with_the_reference_model(
        ops in proptest::collection::vec(op(), 1..60),
        cut in 0usize..60,
    ) {
        let mut state = StateMachine::default();
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let got = state.apply(Request { now_ms: step as u64, command: command(op) });
            prop_assert_eq!(got, model.apply(op), "step {}: {:?}", step, op);
            agree(state.access(), &model)?;
            if step == cut {
                // Through the snapshot encoding: the state, then its principals.
                let bytes = bincode::serialize(&state).unwrap();
                let access = bincode::serialize(state.access()).unwrap();
                let mut restored: StateMachine = bincode::deserialize(&bytes).unwrap();
                restored.restore_access(bincode::deserialize(&access).unwrap());
                prop_assert_eq!(&restored, &state);
                state = restored;
                agree(state.access(), &model)?;
            }
        }
    }
}
