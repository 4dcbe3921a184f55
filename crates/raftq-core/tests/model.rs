//! Model-based test of the state machine: all queue commands over several queues vs a model.

// Random runs over two queues (with dead-letter, delivery-limit, depth and overflow options),
// their dead-letter queue and a journal, of send, receive, selective receive, ack, ack batch,
// nack, extend lease, purge, redrive, commit and tick, with time moving (and a leader's clock
// behind). The real state machine and the reference model must agree on every answer and on
// the whole visible state after every step. A failure prints the minimal run (proptest
// shrinks it). `PROPTEST_CASES` sets the number of runs.

#[path = "model/harness.rs"]
mod harness;
#[path = "model/machine.rs"]
mod machine;
#[path = "model/observe.rs"]
mod observe;
#[path = "model/ops.rs"]
mod ops;
#[path = "model/queue.rs"]
mod queue;
#[path = "model/replay.rs"]
mod replay;

use proptest::prelude::*;

use crate::harness::run;
use crate::ops::{config, op};
use crate::replay::{
    replay_batched, replay_through_a_snapshot, replay_with_bodies_outside, replay_with_prechecks,
};

/// Runs per property: `PROPTEST_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(5_000), ..ProptestConfig::default() })]

    #[test]
    fn state_machine_agrees_with_the_reference_model(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        run(&config, &ops)?;
    }
}

// The same runs, replayed other ways: fewer, as each also runs the model.
proptest! {
    #![proptest_config(ProptestConfig { cases: cases(500), ..ProptestConfig::default() })]

    #[test]
    fn batched_commands_give_the_same_results_and_state_as_single_entries(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
        chunk in 1usize..8,
    ) {
        replay_batched(run(&config, &ops)?, chunk)?;
    }

    #[test]
    fn a_state_restored_from_its_snapshot_encoding_goes_on_as_the_original(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
        cut in 0usize..120,
    ) {
        replay_through_a_snapshot(run(&config, &ops)?, cut)?;
    }

    #[test]
    fn bodies_kept_outside_give_the_same_results_and_bodies_as_kept_inside(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        replay_with_bodies_outside(run(&config, &ops)?)?;
    }

    #[test]
    fn what_a_leader_refuses_before_proposing_the_log_would_refuse_alike(
        config in config(),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        replay_with_prechecks(run(&config, &ops)?)?;
    }
}
