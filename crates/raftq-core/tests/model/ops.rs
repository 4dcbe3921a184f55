//! The steps and queue options of a model run, as proptest generates, shrinks and prints them.

use std::fmt;

use proptest::prelude::*;
use raftq_core::{Overflow, QueueOptions};

/// The queues steps may name: two queues with messages of their own, the dead-letter queue
/// both use, the journal of `a`, and a queue that never exists.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Q {
    A,
    B,
    Dlq,
    Journal,
    Nowhere,
}

impl Q {
    pub fn name(self) -> &'static str {
        match self {
            Q::A => "a",
            Q::B => "b",
            Q::Dlq => "dlq",
            Q::Journal => "a.journal",
            Q::Nowhere => "nowhere",
        }
    }
}

impl fmt::Debug for Q {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Time to reach the queue: none, exactly at the limit, or one millisecond late.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Any,
    JustInTime,
    TooLate,
}

/// A message to send; absent fields are left at their defaults.
#[derive(Clone)]
pub struct Msg {
    pub key: Option<u8>,
    pub group: Option<u8>,
    pub correlation: Option<u8>,
    pub priority: u8,
    pub delay_ms: u64,
    pub ttl_ms: u64,
    pub reach: Reach,
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msg(")?;
        let mut parts = Vec::new();
        if let Some(k) = self.key {
            parts.push(format!("key k{k}"));
        }
        if let Some(g) = self.group {
            parts.push(format!("group g{g}"));
        }
        if let Some(c) = self.correlation {
            parts.push(format!("correlation c{c}"));
        }
        if self.priority != 0 {
            parts.push(format!("priority {}", self.priority));
        }
        if self.delay_ms != 0 {
            parts.push(format!("delay {}", self.delay_ms));
        }
        if self.ttl_ms != 0 {
            parts.push(format!("ttl {}", self.ttl_ms));
        }
        if self.reach != Reach::Any {
            parts.push(format!("{:?}", self.reach));
        }
        write!(f, "{})", parts.join(", "))
    }
}

/// One step. `receipt` and `id` fields pick the n-th latest (0: the latest) receipt handed
/// out, or message id seen, so far.
#[derive(Debug, Clone)]
pub enum Op {
    Send {
        queue: Q,
        messages: Vec<Msg>,
    },
    Receive {
        queue: Q,
        max: u32,
        lease_ms: u64,
    },
    ReceiveSelected {
        queue: Q,
        id: Option<usize>,
        correlation: Option<u8>,
        max: u32,
        lease_ms: u64,
    },
    /// On the receipt's own queue unless `queue` names another.
    Ack {
        receipt: usize,
        queue: Option<Q>,
    },
    /// On the first receipt's queue.
    AckBatch {
        receipts: Vec<usize>,
    },
    Nack {
        receipt: usize,
        delay_ms: u64,
    },
    ExtendLease {
        receipt: usize,
        lease_ms: u64,
    },
    Purge {
        queue: Q,
    },
    /// By ids when `ids` is not empty, else up to `max` from the head.
    Redrive {
        queue: Q,
        ids: Vec<usize>,
        max: u32,
        to: Option<Q>,
    },
    Commit {
        transaction: u8,
        acks: Vec<usize>,
        sends: Vec<(Q, Msg)>,
    },
    Tick,
    /// The leader's clock moves on.
    Wait {
        ms: u64,
    },
    /// A new leader whose clock is behind: its stamps are lower until it catches up.
    ClockBehind {
        ms: u64,
    },
}

fn queue() -> impl Strategy<Value = Q> {
    prop_oneof![
        8 => Just(Q::A),
        4 => Just(Q::B),
        3 => Just(Q::Dlq),
        2 => Just(Q::Journal),
        1 => Just(Q::Nowhere),
    ]
}

/// Transactions send mostly to the two queues with messages of their own.
fn commit_queue() -> impl Strategy<Value = Q> {
    prop_oneof![4 => Just(Q::A), 4 => Just(Q::B), 1 => queue()]
}

fn msg() -> impl Strategy<Value = Msg> {
    (
        proptest::option::weighted(0.3, 0u8..4),
        proptest::option::weighted(0.4, 0u8..3),
        proptest::option::weighted(0.4, 0u8..3),
        prop_oneof![24 => Just(0u8), 6 => Just(1), 6 => Just(7), 1 => Just(9)],
        prop_oneof![6 => Just(0u64), 1 => Just(300)],
        prop_oneof![6 => Just(0u64), 1 => Just(500), 1 => Just(2_000)],
        prop_oneof![10 => Just(Reach::Any), 1 => Just(Reach::JustInTime), 1 => Just(Reach::TooLate)],
    )
        .prop_map(
            |(key, group, correlation, priority, delay_ms, ttl_ms, reach)| Msg {
                key,
                group,
                correlation,
                priority,
                delay_ms,
                ttl_ms,
                reach,
            },
        )
}

/// Mostly valid leases (0: the queue's default), now and then one too short.
fn lease() -> impl Strategy<Value = u64> {
    prop_oneof![6 => Just(0u64), 6 => Just(100), 6 => Just(300), 4 => Just(1_000), 1 => Just(50)]
}

fn max() -> impl Strategy<Value = u32> {
    prop_oneof![1 => Just(0u32), 40 => 1u32..4]
}

pub fn op() -> impl Strategy<Value = Op> {
    // The n-th latest receipt or id: 0, the latest, is what most steps are about.
    let pick = || 0usize..6;
    prop_oneof![
        10 => (queue(), proptest::collection::vec(msg(), 1..3))
            .prop_map(|(queue, messages)| Op::Send { queue, messages }),
        8 => (queue(), max(), lease())
            .prop_map(|(queue, max, lease_ms)| Op::Receive { queue, max, lease_ms }),
        4 => (
            prop_oneof![3 => Just(Q::A), 1 => queue()],
            prop_oneof![
                4 => pick().prop_map(|id| (Some(id), None)),
                4 => (0u8..3).prop_map(|c| (None, Some(c))),
                1 => (pick(), 0u8..3).prop_map(|(id, c)| (Some(id), Some(c))),
                1 => Just((None, None)),
            ],
            max(),
            lease(),
        )
            .prop_map(|(queue, (id, correlation), max, lease_ms)| Op::ReceiveSelected {
                queue,
                id,
                correlation,
                max,
                lease_ms,
            }),
        5 => (pick(), proptest::option::weighted(0.1, queue()))
            .prop_map(|(receipt, queue)| Op::Ack { receipt, queue }),
        2 => proptest::collection::vec(pick(), 1..4).prop_map(|receipts| Op::AckBatch { receipts }),
        2 => (pick(), prop_oneof![Just(0u64), Just(200)])
            .prop_map(|(receipt, delay_ms)| Op::Nack { receipt, delay_ms }),
        2 => (pick(), prop_oneof![3 => Just(100u64), 2 => Just(600), 1 => Just(50)])
            .prop_map(|(receipt, lease_ms)| Op::ExtendLease { receipt, lease_ms }),
        1 => queue().prop_map(|queue| Op::Purge { queue }),
        2 => (
            prop_oneof![4 => Just(Q::Dlq), 1 => queue()],
            prop_oneof![Just(vec![]), proptest::collection::vec(pick(), 1..3)],
            prop_oneof![1 => Just(0u32), 6 => 1u32..4],
            proptest::option::weighted(0.2, queue()),
        )
            .prop_map(|(queue, ids, max, to)| Op::Redrive { queue, ids, max, to }),
        3 => (
            0u8..4,
            proptest::collection::vec(pick(), 0..3),
            prop_oneof![
                1 => Just(vec![]),
                4 => proptest::collection::vec((commit_queue(), msg()), 1..3),
            ],
        )
            .prop_map(|(transaction, acks, sends)| Op::Commit { transaction, acks, sends }),
        2 => Just(Op::Tick),
        5 => prop_oneof![Just(50u64), Just(150), Just(400), Just(1_000)].prop_map(|ms| Op::Wait { ms }),
        1 => prop_oneof![Just(100u64), Just(600)].prop_map(|ms| Op::ClockBehind { ms }),
    ]
}

/// The queues' options for one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub a_max_deliveries: u32,
    pub a_dead_letter: bool,
    pub a_dead_letter_expired: bool,
    pub a_default_ttl_ms: u64,
    pub a_default_lease_ms: u64,
    pub a_journal: bool,
    pub journal_max_messages: u64,
    pub journal_retention_ms: u64,
    pub b_max_depth: u64,
    pub b_overflow: Overflow,
    pub b_dead_letter: bool,
    pub b_max_deliveries: u32,
    pub dedup_window_ms: u64,
    /// The dead-letter queue exists from the start with options of its own, instead of
    /// being created on demand with the defaults.
    pub dlq_created: bool,
}

impl Config {
    /// The queues to create before the steps, in order.
    pub fn queues(&self) -> Vec<(&'static str, QueueOptions)> {
        let dlq = |on: bool| if on { "dlq".into() } else { String::new() };
        let mut queues = vec![
            (
                "a",
                QueueOptions {
                    dedup_window_ms: self.dedup_window_ms,
                    default_lease_ms: self.a_default_lease_ms,
                    max_delivery_count: self.a_max_deliveries,
                    dead_letter_queue: dlq(self.a_dead_letter || self.a_dead_letter_expired),
                    dead_letter_expired: self.a_dead_letter_expired,
                    default_ttl_ms: self.a_default_ttl_ms,
                    journal: self.a_journal,
                    journal_max_messages: self.journal_max_messages,
                    journal_retention_ms: self.journal_retention_ms,
                    ..QueueOptions::default()
                },
            ),
            (
                "b",
                QueueOptions {
                    dedup_window_ms: self.dedup_window_ms,
                    max_delivery_count: self.b_max_deliveries,
                    dead_letter_queue: dlq(self.b_dead_letter),
                    max_depth: self.b_max_depth,
                    overflow: self.b_overflow,
                    ..QueueOptions::default()
                },
            ),
        ];
        if self.dlq_created {
            queues.push((
                "dlq",
                QueueOptions {
                    default_lease_ms: 400,
                    max_delivery_count: 2,
                    ..QueueOptions::default()
                },
            ));
        }
        queues
    }
}

pub fn config() -> impl Strategy<Value = Config> {
    (
        (
            0u32..3,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), Just(700)],
            prop_oneof![Just(30_000u64), Just(400)],
            any::<bool>(),
            prop_oneof![Just(2u64), Just(100)],
            prop_oneof![Just(900u64), Just(1_000_000)],
        ),
        (
            prop_oneof![Just(3u64), Just(1_000)],
            prop_oneof![Just(Overflow::Reject), Just(Overflow::DeadLetterOldest)],
            any::<bool>(),
            0u32..2,
            prop_oneof![Just(1_200u64), Just(1_000_000)],
            any::<bool>(),
        ),
    )
        .prop_map(|(a, b)| Config {
            a_max_deliveries: a.0,
            a_dead_letter: a.1,
            a_dead_letter_expired: a.2,
            a_default_ttl_ms: a.3,
            a_default_lease_ms: a.4,
            a_journal: a.5,
            journal_max_messages: a.6,
            journal_retention_ms: a.7,
            b_max_depth: b.0,
            b_overflow: b.1,
            b_dead_letter: b.2,
            b_max_deliveries: b.3,
            dedup_window_ms: b.4,
            dlq_created: b.5,
        })
}
