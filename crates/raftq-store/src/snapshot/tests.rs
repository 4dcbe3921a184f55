//! Snapshot files written and read back: slices, trailing state parts, damage.

use super::*;

/// `state` written to a snapshot file in `dir` with no bodies, and its state read back.
fn written_and_read_back(dir: &Path, state: &StateMachine) -> StateMachine {
    let writer = SnapshotWriter::create(dir, 1, 7, state).unwrap();
    let name = writer.finish().unwrap();
    SnapshotReader::open(&dir.join(name))
        .unwrap()
        .state()
        .unwrap()
}

#[test]
fn a_snapshot_written_out_in_slices_reads_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let state = StateMachine::default();
    let mut writer = SnapshotWriter::create(dir.path(), 1, 7, &state).unwrap();
    // Three times the slice: the file is synced twice on the way and once at the end.
    let body = |key: u64| vec![key as u8; 1024 * 1024];
    let count = 3 * SYNC_EVERY_BYTES / (1024 * 1024);
    for key in 0..count {
        writer.body(key, &body(key)).unwrap();
        assert!(writer.unsynced < SYNC_EVERY_BYTES);
    }
    let name = writer.finish().unwrap();
    let mut reader = SnapshotReader::open(&dir.path().join(name)).unwrap();
    assert_eq!(reader.state().unwrap(), state);
    for key in 0..count {
        assert_eq!(reader.next_body().unwrap(), Some((key, body(key))));
    }
    assert_eq!(reader.next_body().unwrap(), None);
}

#[test]
fn the_placement_of_groups_and_queues_survives_a_snapshot() {
    use raftq_core::{Command, Outcome, Request};
    let dir = tempfile::tempdir().unwrap();
    let mut state = StateMachine::default();
    let groups = state.placement().plan_groups(&[1, 2, 3], 4, 3);
    state
        .apply(Request {
            now_ms: 1,
            command: Command::PlaceGroups { groups },
        })
        .unwrap();
    let placed = state.apply(Request {
        now_ms: 2,
        command: Command::PlaceQueue {
            queue: "orders".into(),
            colocate_with: None,
        },
    });
    assert_eq!(placed, Ok(Outcome::Placed { group: 2 }));
    state
        .apply(Request {
            now_ms: 3,
            command: Command::DrainNode {
                node: 3,
                draining: true,
            },
        })
        .unwrap();
    let read = written_and_read_back(dir.path(), &state);
    assert_eq!(read, state);
    assert_eq!(read.placement().group_of("orders"), 2);
    assert_eq!(read.placement().groups().count(), 4);
    assert!(
        read.placement().draining().contains(&3),
        "the draining nodes are kept too"
    );
}

#[test]
fn principals_and_grants_survive_a_snapshot() {
    use raftq_core::access::{Action, Actions};
    use raftq_core::{Command, Request};
    let dir = tempfile::tempdir().unwrap();
    let mut state = StateMachine::default();
    for command in [
        Command::CreatePrincipal {
            name: "orders-app".into(),
            token_hash: [7; 32],
        },
        Command::Grant {
            principal: "orders-app".into(),
            pattern: "orders*".into(),
            actions: Actions::of([Action::Send, Action::Receive]),
        },
    ] {
        state.apply(Request { now_ms: 1, command }).unwrap();
    }
    let read = written_and_read_back(dir.path(), &state);
    assert_eq!(read, state);
    assert_eq!(read.access().authenticate(&[7; 32]), Some("orders-app"));
    assert!(
        read.access()
            .allows("orders-app", Action::Send, Some("orders.eu"))
    );
    assert!(
        !read
            .access()
            .allows("orders-app", Action::Manage, Some("orders"))
    );
}

#[test]
fn producers_and_their_sequences_survive_a_snapshot() {
    use raftq_core::{Command, NewMessage, Outcome, QueueOptions, Request};
    let dir = tempfile::tempdir().unwrap();
    let mut state = StateMachine::default();
    let send = || Command::ProducerSend {
        producer: 1,
        first_sequence: 1,
        max_sessions: 10,
        queue: "orders".into(),
        messages: vec![NewMessage::default()],
    };
    for command in [
        Command::CreateQueue {
            name: "orders".into(),
            options: QueueOptions::default(),
        },
        Command::RegisterProducer {
            name: "till".into(),
            idle_expiry_ms: 60_000,
            max_producers: 10,
        },
        send(),
    ] {
        state.apply(Request { now_ms: 1, command }).unwrap();
    }
    let writer = SnapshotWriter::create(dir.path(), 1, 7, &state).unwrap();
    let name = writer.finish().unwrap();
    let mut read = SnapshotReader::open(&dir.path().join(name))
        .unwrap()
        .state()
        .unwrap();
    assert_eq!(read, state);
    assert_eq!(read.producers().len(), 1);
    let repeat = read.apply(Request {
        now_ms: 2,
        command: send(),
    });
    assert!(
        matches!(&repeat, Ok(Outcome::Sent(results)) if results[0].duplicate),
        "{repeat:?}"
    );
}

/// Writes a snapshot of `bodies` one-KiB bodies; returns its path.
fn written(dir: &Path, bodies: u64) -> PathBuf {
    let mut writer = SnapshotWriter::create(dir, 1, 7, &StateMachine::default()).unwrap();
    for key in 0..bodies {
        writer.body(key, &[key as u8; 1024]).unwrap();
    }
    dir.join(writer.finish().unwrap())
}

/// Reads the whole snapshot, as installing it does.
fn read_all(path: &Path) -> Result<u64, StoreError> {
    let mut reader = SnapshotReader::open(path)?;
    reader.state()?;
    let mut bodies = 0;
    while reader.next_body()?.is_some() {
        bodies += 1;
    }
    Ok(bodies)
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_anywhere_in_a_snapshot_is_found_before_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path(), 8);
    assert_eq!(read_all(&path).unwrap(), 8);
    let size = fs::metadata(&path).unwrap().len();
    // The magic, the state length, the state, its checksum, a body, each part of the
    // end record.
    let state_length = {
        let mut file = File::open(&path).unwrap();
        file.seek(SeekFrom::Start(8)).unwrap();
        read_u64(&mut file).unwrap()
    };
    let offsets = [
        3,
        9,
        16,
        16 + state_length + 5,
        16 + state_length + 32 + 16 + 100,
        size - 70,
        size - 40,
        size - 5,
    ];
    for offset in offsets {
        let copy = dir.path().join(format!("flipped-{offset}"));
        fs::copy(&path, &copy).unwrap();
        flip_bit(&copy, offset);
        assert!(
            read_all(&copy).is_err(),
            "a flipped bit at byte {offset} of {size} went unnoticed"
        );
    }
}

#[test]
fn a_snapshot_of_the_first_layout_without_checksums_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let state = bincode::serialize(&StateMachine::default()).unwrap();
    let mut bytes = MAGIC_UNCHECKED.to_vec();
    bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&state);
    for part in [7u64.to_le_bytes(), 3u64.to_le_bytes()] {
        bytes.extend_from_slice(&part);
    }
    bytes.extend_from_slice(b"abc");
    bytes.extend_from_slice(&END.to_le_bytes());
    bytes.extend_from_slice(&1u64.to_le_bytes());
    let path = dir.path().join("old.snap");
    fs::write(&path, bytes).unwrap();
    let mut reader = SnapshotReader::open(&path).unwrap();
    assert_eq!(reader.state().unwrap(), StateMachine::default());
    assert_eq!(reader.next_body().unwrap(), Some((7, b"abc".to_vec())));
    assert_eq!(reader.next_body().unwrap(), None);
}

#[test]
fn a_truncated_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path(), 4);
    let size = fs::metadata(&path).unwrap().len();
    for keep in [0, 10, size / 2, size - 1] {
        let bytes = fs::read(&path).unwrap();
        let copy = dir.path().join(format!("truncated-{keep}"));
        fs::write(&copy, &bytes[..keep as usize]).unwrap();
        assert!(read_all(&copy).is_err(), "kept {keep} of {size} bytes");
    }
}

#[test]
fn a_received_snapshot_is_synced_in_slices_and_kept_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut incoming = IncomingSnapshot::create(dir.path(), 1).unwrap();
    let chunk = |n: u64| vec![n as u8; 1024 * 1024];
    let count = 3 * SYNC_EVERY_BYTES / (1024 * 1024);
    for n in 0..count {
        incoming.write(&chunk(n)).unwrap();
        assert!(incoming.unsynced < SYNC_EVERY_BYTES);
    }
    assert_eq!(incoming.written(), count * 1024 * 1024);
    let data = incoming.finish().unwrap();
    let bytes = fs::read(data.path()).unwrap();
    let expected: Vec<u8> = (0..count).flat_map(chunk).collect();
    assert!(bytes == expected, "the file holds every chunk in order");
}
