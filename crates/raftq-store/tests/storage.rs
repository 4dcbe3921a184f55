//! RocksDB storage: openraft's conformance suite, and recovery after the store is dropped
//! and reopened (as after a crash).

use std::collections::BTreeMap;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{RaftLogReader, RaftSnapshotBuilder, StorageError};
use raftq_core::{Command, Outcome, QueueError, QueueOptions, Request};
use raftq_store::{
    Db, Entry, LogId, LogStore, OpenOptions, SharedState, StateMachineStore, StoreError,
    TypeConfig, Vote,
};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let db = Db::open(dir.path(), &OpenOptions::default())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let log = LogStore::new(db.clone(), 1)
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let sm = StateMachineStore::open(db, 1)
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn rocksdb_store_passes_the_openraft_storage_suite() {
    TypeConfig::run(async {
        Suite::test_all(Builder).await.expect("storage suite");
    });
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::LogId::new(
        openraft::impls::leader_id_adv::LeaderId { term, node_id: 1 },
        index,
    )
}

fn create(name: &str, index: u64) -> Entry {
    Entry::new_normal(
        log_id(1, index),
        Request {
            now_ms: 1_000 + index,
            command: Command::CreateQueue {
                name: name.to_string(),
                options: QueueOptions::default(),
            },
        },
    )
}

async fn append_synced(log: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("flush callback").expect("flushed");
}

#[tokio::test]
async fn appended_log_and_vote_survive_reopen() {
    let dir = TempDir::new().unwrap();
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut log = LogStore::new(db, 7).unwrap();
        append_synced(
            &mut log,
            (1..=5).map(|i| create(&format!("q{i}"), i)).collect(),
        )
        .await;
        log.save_vote(&Vote::new(3, 2)).await.unwrap();
        log.truncate_after(Some(log_id(1, 4))).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        append_synced(&mut log, vec![create("q5b", 5)]).await;
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut log = LogStore::new(db.clone(), 7).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 5)));
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id().index).collect();
    assert_eq!(indexes, vec![3, 4, 5], "no hole, nothing purged comes back");
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
    // Another group in the same RocksDB is untouched.
    let mut other = LogStore::new(db, 8).unwrap();
    assert!(other.try_get_log_entries(0..100).await.unwrap().is_empty());
}

#[tokio::test]
async fn replication_and_apply_read_the_log_a_bounded_page_at_a_time() {
    use futures::StreamExt;
    let dir = TempDir::new().unwrap();
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut log = LogStore::new(db, 1).unwrap();
    // Twenty entries of about 1 MiB each: more than one read's budget (8 MiB).
    let big = |index: u64| create(&"q".repeat(1 << 20), index);
    append_synced(&mut log, (1..=20).map(big).collect()).await;
    let page = log.limited_get_log_entries(1, 21).await.unwrap();
    let indexes: Vec<u64> = page.iter().map(|e| e.log_id().index).collect();
    assert!(
        (8..20).contains(&indexes.len()),
        "a page stops after about 8 MiB: {} entries",
        indexes.len()
    );
    assert_eq!(indexes, (1..=indexes.len() as u64).collect::<Vec<_>>());
    // A range within the budget comes whole, and a page is never empty.
    assert_eq!(log.limited_get_log_entries(3, 6).await.unwrap().len(), 3);
    assert_eq!(log.limited_get_log_entries(20, 21).await.unwrap().len(), 1);
    // Applying streams every entry of the range, in order, across pages.
    let streamed: Vec<u64> = log
        .entries_stream(2..=20)
        .await
        .map(|entry| entry.expect("entry").log_id().index)
        .collect()
        .await;
    assert_eq!(streamed, (2..=20).collect::<Vec<_>>());
}

#[tokio::test]
async fn snapshot_restores_the_queue_state_after_reopen() {
    let dir = TempDir::new().unwrap();
    let expected;
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db, 1).unwrap();
        let entries: Vec<_> = (1..=3)
            .map(|i| Ok((create(&format!("q{i}"), i), None)))
            .collect();
        sm.apply(futures::stream::iter(entries)).await.unwrap();
        let mut builder = sm.get_snapshot_builder().await;
        builder.build_snapshot().await.unwrap();
        expected = sm.shared().read().list_queues("", 10);
        assert_eq!(expected.len(), 3);
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db, 1).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 3)));
    assert_eq!(sm.shared().read().list_queues("", 10), expected);
    let names: BTreeMap<_, _> = expected
        .iter()
        .map(|q| (q.name.clone(), q.created_at_ms))
        .collect();
    assert_eq!(
        names["q2"], 1_002,
        "log time, not a clock, is what the state saw"
    );
}

fn entry(index: u64, command: Command) -> Entry {
    Entry::new_normal(
        log_id(1, index),
        Request {
            now_ms: 1_000 + index,
            command,
        },
    )
}

async fn apply_all(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let entries: Vec<_> = entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(futures::stream::iter(entries)).await.unwrap();
}

fn peeked_bodies(sm: &StateMachineStore) -> Vec<String> {
    sm.shared()
        .peek("q", 0, 10, u64::MAX, 0, "")
        .expect("peek")
        .into_iter()
        .map(|(_, body)| String::from_utf8(body).unwrap())
        .collect()
}

/// Sends one message per body to queue `q`.
fn send(bodies: &[&str]) -> Command {
    Command::Send {
        queue: "q".into(),
        messages: bodies
            .iter()
            .map(|text| raftq_core::NewMessage {
                body: text.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    }
}

fn ack(index: u64, message_id: u64) -> Entry {
    entry(
        index,
        Command::Ack {
            queue: "q".into(),
            receipt: raftq_core::Receipt {
                message_id,
                attempt: 1,
            },
        },
    )
}

#[tokio::test]
async fn bodies_live_in_rocksdb_through_snapshots_restarts_and_installs() {
    let dir = TempDir::new().unwrap();
    let elsewhere = TempDir::new().unwrap();
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db, 1).unwrap();
        let send = send(&["a", "b", "c"]);
        let receive = Command::Receive {
            queue: "q".into(),
            max_messages: 10,
            lease_ms: 60_000,
        };
        apply_all(&mut sm, vec![create("q", 1), entry(2, send)]).await;
        assert!(sm.shared().read().bodies_kept_outside());
        assert_eq!(peeked_bodies(&sm), ["a", "b", "c"]);
        apply_all(&mut sm, vec![entry(3, receive), ack(4, 1)]).await;
        assert_eq!(peeked_bodies(&sm), ["b", "c"]);
        let snapshot = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();

        // Another node installs the snapshot: the bodies travel in it.
        let db = Db::open(elsewhere.path(), &OpenOptions::default()).unwrap();
        let mut other = StateMachineStore::open(db, 1).unwrap();
        other
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(peeked_bodies(&other), ["b", "c"]);

        apply_all(&mut sm, vec![ack(5, 2)]).await;
        assert_eq!(peeked_bodies(&sm), ["c"]);
    }
    // After a crash the state is the snapshot's again, and so are its bodies (the ack
    // after it comes back when the log is applied again).
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db, 1).unwrap();
    assert_eq!(peeked_bodies(&sm), ["b", "c"]);
    apply_all(&mut sm, vec![ack(5, 2)]).await;
    assert_eq!(peeked_bodies(&sm), ["c"]);
    // The installed copy survives a restart too.
    let db = Db::open(elsewhere.path(), &OpenOptions::default()).unwrap();
    let other = StateMachineStore::open(db, 1).unwrap();
    assert_eq!(peeked_bodies(&other), ["b", "c"]);
}

/// A delivery as the proposing node's apply leaves it: the body still to be read.
fn unread(message: &raftq_core::StoredMessage) -> raftq_core::Delivery {
    raftq_core::Delivery {
        message_id: message.message_id,
        sequence: message.sequence,
        body: Vec::new(),
        body_ref: message.body,
        headers: BTreeMap::new(),
        properties: Default::default(),
        group: String::new(),
        priority: 0,
        receipt: raftq_core::Receipt {
            message_id: message.message_id,
            attempt: 1,
        },
        enqueued_at_ms: 0,
        lease_expires_at_ms: 0,
        expires_at_ms: 0,
    }
}

#[tokio::test]
async fn delivered_bodies_are_read_after_apply_from_table_files_and_a_missing_one_is_an_error() {
    let dir = TempDir::new().unwrap();
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db, 1).unwrap();
    apply_all(
        &mut sm,
        vec![create("q", 1), entry(2, send(&["a", "", "c"]))],
    )
    .await;
    // Taking a snapshot writes the bodies family out to its table files.
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let shared = sm.shared();
    let stored: Vec<_> = shared
        .peek("q", 0, 10, u64::MAX, 0, "")
        .unwrap()
        .into_iter()
        .map(|(message, _)| message)
        .collect();

    let mut outcome = Ok(Outcome::Batch(vec![
        Ok(Outcome::Acked {
            already_acked: false,
        }),
        Ok(Outcome::Received(stored.iter().map(unread).collect())),
    ]));
    assert!(SharedState::needs_bodies(&outcome));
    shared.fill_bodies(&mut outcome).unwrap();
    let Ok(Outcome::Batch(outcomes)) = outcome else {
        panic!("not a batch: {outcome:?}")
    };
    let Ok(Outcome::Received(filled)) = &outcomes[1] else {
        panic!("not a delivery: {:?}", outcomes[1])
    };
    let bodies: Vec<&[u8]> = filled.iter().map(|d| d.body.as_slice()).collect();
    assert_eq!(bodies, [b"a".as_slice(), b"", b"c"]);

    // Nothing to read: an empty body, a refusal.
    assert!(!SharedState::needs_bodies(&Ok(Outcome::Received(vec![
        unread(&stored[1])
    ]))));
    assert!(!SharedState::needs_bodies(&Err(
        QueueError::QueueNotFound { name: "q".into() }
    )));

    // A body that is not there is an error, not an empty message.
    let mut gone = stored[0].clone();
    gone.body.key = 1_000;
    let mut outcome = Ok(Outcome::Received(vec![unread(&gone)]));
    let error = shared.fill_bodies(&mut outcome).unwrap_err();
    assert!(
        matches!(error, StoreError::MissingBody { key: 1_000 }),
        "{error}"
    );
}

/// Writes entries 1..=20, each synced on its own (one write-ahead-log record each), and
/// returns the write-ahead-log file that holds them.
async fn log_in_one_wal_file(dir: &std::path::Path) -> std::path::PathBuf {
    let db = Db::open(dir, &OpenOptions::default()).unwrap();
    let mut log = LogStore::new(db, 1).unwrap();
    for i in 1..=20 {
        append_synced(&mut log, vec![create(&format!("queue-{i:02}"), i)]).await;
    }
    drop(log);
    // The syncer records the last synced index just after it answers the append.
    synced_index_reaches(dir, 1, 20).await;
    let mut wal: Vec<_> = std::fs::read_dir(dir.join("rocksdb"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
        .collect();
    wal.sort();
    wal.pop().expect("a write-ahead-log file")
}

async fn indexes_after_reopen(dir: &std::path::Path) -> Result<Vec<u64>, StoreError> {
    let db = Db::open(dir, &OpenOptions::default())?;
    let mut log = LogStore::new(db, 1).unwrap();
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    Ok(entries.iter().map(|e| e.log_id().index).collect())
}

#[tokio::test]
async fn a_damaged_record_inside_the_write_ahead_log_is_an_error_not_a_shorter_log() {
    let dir = TempDir::new().unwrap();
    let wal = log_in_one_wal_file(dir.path()).await;
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&wal, bytes).unwrap();
    match indexes_after_reopen(dir.path()).await {
        Err(error) => assert!(error.to_string().contains("Corruption"), "{error}"),
        Ok(indexes) => panic!("opened with a damaged log, holding {indexes:?}"),
    }
}

/// The last synced index recorded in `dir` for `group`, once it reaches `want`.
async fn synced_index_reaches(dir: &std::path::Path, group: u64, want: u64) {
    let watermark = dir.join(format!("log-synced-{group}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let recorded = std::fs::read(&watermark).ok().and_then(|bytes| {
            bytes
                .get(..8)
                .map(|index| u64::from_le_bytes(index.try_into().unwrap()))
        });
        if recorded == Some(want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "group {group}'s synced index reaches {want} (it is {recorded:?})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn groups_appending_at_once_each_have_their_entries_synced_and_their_own_index_recorded() {
    let dir = TempDir::new().unwrap();
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut seven = LogStore::new(db.clone(), 7).unwrap();
        let mut eight = LogStore::new(db, 8).unwrap();
        for i in 1..=12 {
            let to_seven = append_synced(&mut seven, vec![create(&format!("s{i}"), i)]);
            let to_eight = async {
                if i <= 5 {
                    append_synced(&mut eight, vec![create(&format!("e{i}"), i)]).await;
                }
            };
            tokio::join!(to_seven, to_eight);
        }
        synced_index_reaches(dir.path(), 7, 12).await;
        synced_index_reaches(dir.path(), 8, 5).await;
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    for (group, last) in [(7, 12), (8, 5)] {
        let mut log = LogStore::new(db.clone(), group).unwrap();
        assert_eq!(log.lost_synced_entries(), None);
        let entries = log.try_get_log_entries(0..100).await.unwrap();
        let indexes: Vec<u64> = entries.iter().map(|e| e.log_id().index).collect();
        assert_eq!(indexes, (1..=last).collect::<Vec<u64>>(), "group {group}");
    }
}

/// Whether the log in `dir`, opened again, says it lost entries it had synced.
fn lost_after_reopen(dir: &std::path::Path) -> Option<(u64, u64)> {
    let db = Db::open(dir, &OpenOptions::default()).unwrap();
    LogStore::new(db, 1).unwrap().lost_synced_entries()
}

#[tokio::test]
async fn a_cut_last_record_of_the_write_ahead_log_is_dropped_and_noticed_when_it_was_synced() {
    let intact = TempDir::new().unwrap();
    log_in_one_wal_file(intact.path()).await;
    assert_eq!(lost_after_reopen(intact.path()), None);

    let dir = TempDir::new().unwrap();
    let wal = log_in_one_wal_file(dir.path()).await;
    let length = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(length - 10)
        .unwrap();
    // RocksDB takes the cut record for a torn write and drops it...
    let indexes = indexes_after_reopen(dir.path()).await.expect("reopen");
    assert_eq!(indexes, (1..=19).collect::<Vec<u64>>());
    // ...but entry 20 had been synced (and acknowledged): the log store notices.
    assert_eq!(lost_after_reopen(dir.path()), Some((20, 19)));
    // Once a copy is adopted, what the watermark said is forgotten.
    raftq_store::forget_synced_watermarks(dir.path()).unwrap();
    assert_eq!(lost_after_reopen(dir.path()), None);
}

#[tokio::test]
async fn dropping_a_group_removes_its_log_vote_and_files_and_leaves_the_others_whole() {
    let dir = TempDir::new().unwrap();
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    for group in [7, 8] {
        let mut log = LogStore::new(db.clone(), group).unwrap();
        append_synced(
            &mut log,
            (1..=3)
                .map(|i| create(&format!("g{group}q{i}"), i))
                .collect(),
        )
        .await;
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        synced_index_reaches(dir.path(), group, 3).await;
    }
    // A snapshot file of each group (the names the state machine gives them).
    for group in [7, 8] {
        std::fs::write(
            db.snapshot_dir().join(format!("g{group}-i3-1-0.snap")),
            b"s",
        )
        .unwrap();
    }
    db.drop_group(7).unwrap();
    assert!(db.drop_group(0).is_err(), "the node's identity stays");

    let mut dropped = LogStore::new(db.clone(), 7).unwrap();
    assert!(!dropped.holds_state().unwrap());
    assert!(
        dropped
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(dropped.read_vote().await.unwrap(), None);
    assert!(!db.snapshot_dir().join("g7-i3-1-0.snap").exists());
    drop(dropped);

    let mut kept = LogStore::new(db.clone(), 8).unwrap();
    let entries = kept.try_get_log_entries(0..100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.log_id().index).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(kept.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
    assert_eq!(kept.lost_synced_entries(), None);
    assert!(db.snapshot_dir().join("g8-i3-1-0.snap").exists());
    assert!(dir.path().join("log-synced-8").exists());
}
