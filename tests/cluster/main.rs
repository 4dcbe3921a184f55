//! Cluster tests against real `raftq` processes. Each test names the promise it checks.

mod admission;
mod agent;
mod auth;
mod bad_input;
mod cli;
mod clock;
mod cluster_id;
mod consume;
mod delivery;
mod failures;
mod features;
mod group_moves;
mod group_queues;
mod groups;
mod log_size;
mod lost_disk;
mod membership;
mod observability;
mod outbox;
mod ports;
mod power_loss;
mod producers;
mod tls;
mod transactions;
mod unreachable;
