//! Cluster tests against real `raftq` processes. Each test names the promise it checks.

mod bad_input;
mod cli;
mod consume;
mod delivery;
mod failures;
mod features;
mod membership;
mod observability;
mod transactions;
