//! What a run compares besides answers: refusals minus reasons, and the whole visible state.

use raftq_core::{Outcome, QueueError, StateMachine};

use crate::machine::Machine;

fn blank_error(error: &QueueError) -> QueueError {
    match error.clone() {
        QueueError::InvalidQueueName { name, .. } => QueueError::InvalidQueueName {
            name,
            reason: String::new(),
        },
        QueueError::InvalidArgument { field, .. } => QueueError::InvalidArgument {
            field,
            reason: String::new(),
        },
        QueueError::StaleReceipt { receipt, .. } => QueueError::StaleReceipt {
            receipt,
            reason: String::new(),
        },
        other => other,
    }
}

/// An answer as the model gives it: refusals keep their kind and fields, not their reason.
pub fn blank(result: &Result<Outcome, QueueError>) -> Result<Outcome, QueueError> {
    match result {
        Ok(Outcome::AckedBatch(results)) => Ok(Outcome::AckedBatch(
            results
                .iter()
                .map(|r| r.as_ref().copied().map_err(blank_error))
                .collect(),
        )),
        Ok(outcome) => Ok(outcome.clone()),
        Err(error) => Err(blank_error(error)),
    }
}

/// The first difference between the real machine's visible state and the model's.
pub fn same_state(sm: &StateMachine, model: &Machine) -> Result<(), String> {
    if sm.now_ms() != model.now() {
        return Err(format!("time {} (model {})", sm.now_ms(), model.now()));
    }
    let real = sm.list_queues("", 1_000);
    let want = model.infos();
    let names = |infos: &[raftq_core::QueueInfo]| -> Vec<String> {
        infos.iter().map(|i| i.name.clone()).collect()
    };
    if names(&real) != names(&want) {
        return Err(format!(
            "queues {:?} (model {:?})",
            names(&real),
            names(&want)
        ));
    }
    for (real, want) in real.iter().zip(&want) {
        if real != want {
            return Err(format!(
                "queue {}: {:?}\n  model: {:?}",
                real.name, real, want
            ));
        }
        let held = sm.peek(&real.name, 0, 100_000).map_err(|e| e.to_string())?;
        let expected = model.peek(&real.name);
        if let Some(at) =
            (0..held.len().max(expected.len())).find(|&i| held.get(i) != expected.get(i))
        {
            return Err(format!(
                "queue {} holds {} messages (model {}); the one at {at} differs: {:?}\n  model: {:?}",
                real.name,
                held.len(),
                expected.len(),
                held.get(at),
                expected.get(at)
            ));
        }
    }
    sm.check_bodies()
}
