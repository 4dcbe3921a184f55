//! Fuzzing on stable Rust (proptest): whatever bytes reach a decoder — a log entry read
//! back, a snapshot, a Raft message from a peer — decoding answers a value or an error;
//! it never panics, never allocates what a length prefix merely claims, never recurses
//! without bound. Random bytes, and valid encodings damaged at random (truncated, bytes
//! changed), which get much further into the decoders.
//!
//! `PROPTEST_CASES` sets the number of runs (the default in `scripts/test`; see
//! docs/reliability.md for the longer run).

use std::collections::BTreeMap;

use proptest::prelude::*;
use raftq_core::{Command, NewMessage, QueueOptions, Receipt, Request, StateMachine};
use raftq_store::TypeConfig;
use raftq_store::codec::decode_within;

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(default)
}

/// Every kind of thing raftq decodes from bytes it did not just write itself.
fn decode_everything(bytes: &[u8]) {
    let _ = decode_within::<Request>(bytes);
    let _ = decode_within::<raftq_store::Entry>(bytes);
    let _ = decode_within::<Vec<raftq_store::Entry>>(bytes);
    let _ = decode_within::<StateMachine>(bytes);
    let _ = decode_within::<openraft::raft::AppendEntriesRequest<TypeConfig>>(bytes);
    let _ = decode_within::<openraft::raft::VoteRequest<TypeConfig>>(bytes);
    let _ = decode_within::<openraft::raft::TransferLeaderRequest<TypeConfig>>(bytes);
    // A snapshot stream's header: the sender's vote, the snapshot's meta and its size.
    let _ = decode_within::<(raftq_store::Vote, raftq_store::SnapshotMeta, u64)>(bytes);
}

/// A valid log entry's request: a batch of sends, acks and a commit.
fn sample_request() -> Vec<u8> {
    let message = NewMessage {
        body: b"body".to_vec(),
        headers: BTreeMap::from([("h".to_string(), "v".to_string())]),
        idempotency_key: "key".into(),
        ..NewMessage::default()
    };
    let receipt = Receipt {
        message_id: 7,
        attempt: 2,
    };
    let command = Command::Batch(vec![
        Command::CreateQueue {
            name: "q".into(),
            options: QueueOptions::default(),
        },
        Command::Send {
            queue: "q".into(),
            messages: vec![message.clone(), message.clone()],
        },
        Command::AckBatch {
            queue: "q".into(),
            receipts: vec![receipt, receipt],
        },
        Command::Commit {
            transaction_id: "t".into(),
            acks: vec![raftq_core::TransactionAck {
                queue: "q".into(),
                receipt,
            }],
            sends: vec![raftq_core::TransactionSend {
                queue: "q".into(),
                message,
            }],
        },
    ]);
    bincode::serialize(&Request {
        now_ms: 1_000,
        command,
    })
    .expect("encodes")
}

/// A valid state, as a snapshot holds it.
fn sample_state() -> Vec<u8> {
    let mut state = StateMachine::default();
    let request = bincode::deserialize::<Request>(&sample_request()).expect("decodes");
    state.apply(request).expect("applies");
    bincode::serialize(&state).expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(2_000), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_decode_to_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..2_048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn damaged_log_entries_decode_to_a_value_or_an_error(
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = sample_request();
        for (at, value) in changes {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        decode_everything(&bytes);
        let cut = cut.index(bytes.len());
        decode_everything(&bytes[..cut]);
    }

    #[test]
    fn damaged_snapshots_decode_to_a_value_or_an_error(
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = sample_state();
        for (at, value) in changes {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let _ = decode_within::<StateMachine>(&bytes);
    }
}

/// Found going through the decoders for these runs (random bytes rarely nest this deep): a
/// batch holding a batch holding a batch... twelve bytes per level, so 100,000 levels fit
/// in a 1.2 MB message, and decoding recursed until the stack ran out (an abort, not an
/// error). Kept as a regression case.
#[test]
fn batches_nested_deep_are_refused_not_a_stack_overflow() {
    let tick = bincode::serialize(&Command::Tick).expect("encodes");
    let batch_of_one = bincode::serialize(&Command::Batch(vec![Command::Tick])).expect("encodes");
    // The batch's prefix: its variant and a length of 1, then its one command.
    let prefix = &batch_of_one[..batch_of_one.len() - tick.len()];
    let mut bytes = 1_000u64.to_le_bytes().to_vec(); // the request's now_ms
    for _ in 0..100_000 {
        bytes.extend_from_slice(prefix);
    }
    bytes.extend_from_slice(&tick);
    let error = decode_within::<Request>(&bytes).expect_err("a nested batch is refused");
    assert!(
        error
            .to_string()
            .contains("a batch cannot hold another batch"),
        "{error}"
    );
    // One level is what a leader writes: still read.
    let mut one = 1_000u64.to_le_bytes().to_vec();
    one.extend_from_slice(&batch_of_one);
    let request: Request = decode_within(&one).expect("a batch decodes");
    assert_eq!(request.command, Command::Batch(vec![Command::Tick]));
    // And the mark is reset: a batch decodes after a refused one.
    let again: Request = decode_within(&one).expect("a batch decodes again");
    assert_eq!(again.command, request.command);
}
