//! How much memory the replicated state takes per message, measured alone (no RocksDB, no
//! Raft): fills one queue with 1 KiB messages, each with a client idempotency key as the
//! raftq client sends it, then receives and acknowledges every one, and prints the heap the
//! state holds after each phase. Bodies are kept outside the state, as a server keeps them.
//!
//! cargo run --release -p raftq-core --example state_memory [-- MESSAGES]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use raftq_core::{
    Command, Limits, NewMessage, Outcome, QueueOptions, Receipt, Request, StateMachine,
};

/// The system allocator, counting the bytes in use.
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        IN_USE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        IN_USE.fetch_add(new_size, Ordering::Relaxed);
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const BATCH: usize = 100;

fn apply(state: &mut StateMachine, now_ms: u64, command: Command) -> Outcome {
    let outcome = state
        .apply(Request { now_ms, command })
        .expect("command applies");
    // A server writes these to RocksDB; here they are dropped.
    drop(state.take_body_effects());
    outcome
}

fn report(phase: &str, messages: u64, base: usize) {
    let bytes = IN_USE.load(Ordering::Relaxed).saturating_sub(base);
    println!(
        "{phase}: {:.1} MiB of state, {:.0} bytes per message",
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / messages.max(1) as f64
    );
}

fn main() {
    let messages: u64 = std::env::args()
        .nth(1)
        .map(|arg| arg.parse().expect("MESSAGES is a number"))
        .unwrap_or(1_000_000);
    let base = IN_USE.load(Ordering::Relaxed);
    let mut state = StateMachine::new(Limits::default());
    state.keep_bodies_outside();
    let now_ms = 1_700_000_000_000;
    let options = QueueOptions {
        max_depth: messages.max(1),
        ..QueueOptions::default()
    };
    apply(
        &mut state,
        now_ms,
        Command::CreateQueue {
            name: "q".into(),
            options,
        },
    );
    let body = vec![7u8; 1024];
    let mut sent = 0u64;
    while sent < messages {
        let batch: Vec<NewMessage> = (sent..(sent + BATCH as u64).min(messages))
            .map(|i| NewMessage {
                body: body.clone(),
                // The shape of the raftq client's keys: a 36-character UUID.
                idempotency_key: format!("0190c1a2-7b3c-7def-8{i:03x}-{i:012x}"),
                ..NewMessage::default()
            })
            .collect();
        sent += batch.len() as u64;
        apply(
            &mut state,
            now_ms,
            Command::Send {
                queue: "q".into(),
                messages: batch,
            },
        );
    }
    report("filled", messages, base);

    let mut acked = 0u64;
    loop {
        let Outcome::Received(deliveries) = apply(
            &mut state,
            now_ms,
            Command::Receive {
                queue: "q".into(),
                max_messages: BATCH as u32,
                lease_ms: 0,
            },
        ) else {
            panic!("a receive answers with deliveries");
        };
        if deliveries.is_empty() {
            break;
        }
        let receipts: Vec<Receipt> = deliveries.iter().map(|d| d.receipt).collect();
        acked += receipts.len() as u64;
        apply(
            &mut state,
            now_ms,
            Command::AckBatch {
                queue: "q".into(),
                receipts,
            },
        );
    }
    assert_eq!(acked, messages);
    report(
        "drained (dedup and ack records of every message remain for the window)",
        messages,
        base,
    );
}
