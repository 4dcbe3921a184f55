//! Tests of `StateMachineStore`: bodies across restarts and installs, and the old layout.

use openraft::entry::RaftEntry;
use raftq_core::{Command, NewMessage, QueueOptions, Request};

use openraft::RaftSnapshotBuilder;

use super::bodies::flush_bodies;
use super::*;
use crate::db::{CF_BODIES, body_key};
use crate::{Entry, OpenOptions};

fn entry(index: u64, command: Command) -> Entry {
    let leader = openraft::impls::leader_id_adv::LeaderId {
        term: 1,
        node_id: 1,
    };
    let request = Request {
        now_ms: 1_000 + index,
        command,
    };
    Entry::new_normal(openraft::LogId::new(leader, index), request)
}

/// Creates queue `q` at index 1, then sends each batch of bodies at the next index.
fn create_and_send(batches: &[&[&str]]) -> Vec<Entry> {
    let create = Command::CreateQueue {
        name: "q".into(),
        options: QueueOptions::default(),
    };
    let sends = batches.iter().map(|bodies| Command::Send {
        queue: "q".into(),
        messages: bodies
            .iter()
            .map(|text| NewMessage {
                body: text.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect(),
    });
    std::iter::once(create)
        .chain(sends)
        .enumerate()
        .map(|(i, command)| entry(i as u64 + 1, command))
        .collect()
}

async fn apply_all(sm: &mut StateMachineStore, entries: Vec<Entry>) {
    let entries: Vec<_> = entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(futures::stream::iter(entries)).await.unwrap();
}

fn peeked(sm: &StateMachineStore) -> Vec<(u64, String)> {
    sm.shared()
        .peek("q", 0, 10, u64::MAX, 0, "")
        .unwrap()
        .into_iter()
        .map(|(message, body)| (message.body.key, String::from_utf8(body).unwrap()))
        .collect()
}

fn bodies_in_memtable(db: &Db) -> u64 {
    db.inner
        .property_int_value_cf(db.cf(CF_BODIES), "rocksdb.num-entries-active-mem-table")
        .unwrap()
        .unwrap()
}

fn texts(peeked: &[(u64, String)]) -> Vec<&str> {
    peeked.iter().map(|(_, text)| text.as_str()).collect()
}

#[tokio::test]
async fn applying_the_log_again_on_start_rewrites_no_body_already_on_disk() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = create_and_send(&[&["a", "b"], &["c"], &["d"]]);
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
        apply_all(&mut sm, log.clone()).await;
        flush_bodies(&db).unwrap();
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
    // Message ids, and so body keys, are 1 to 4.
    assert_eq!(sm.bodies_on_disk_through, 4);
    // No snapshot: the whole log is applied again, and its bodies are already there.
    apply_all(&mut sm, log).await;
    assert_eq!(bodies_in_memtable(&db), 0);
    assert_eq!(texts(&peeked(&sm)), ["a", "b", "c", "d"]);
    // A new entry writes its bodies.
    apply_all(
        &mut sm,
        create_and_send(&[&[], &[], &[], &["e"]]).split_off(4),
    )
    .await;
    assert_eq!(bodies_in_memtable(&db), 1);
    assert_eq!(sm.shared.bodies.highest_key().unwrap(), 5);
    assert_eq!(texts(&peeked(&sm)), ["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn bodies_lost_with_the_write_buffer_are_written_again_on_start() {
    let dir = tempfile::TempDir::new().unwrap();
    let log = create_and_send(&[&["a", "b"], &["c"]]);
    {
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
        apply_all(&mut sm, log[..2].to_vec()).await;
        flush_bodies(&db).unwrap();
        apply_all(&mut sm, log[2..].to_vec()).await;
        // As a crash leaves it: the last entry's write never reached the table files.
        let (key, _) = peeked(&sm)[2].clone();
        db.inner
            .delete_cf(db.cf(CF_BODIES), body_key(1, key))
            .unwrap();
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db, 1).unwrap();
    assert_eq!(sm.bodies_on_disk_through, 2);
    apply_all(&mut sm, log).await;
    assert_eq!(texts(&peeked(&sm)), ["a", "b", "c"]);
    assert_eq!(sm.shared.bodies.highest_key().unwrap(), 3);
}

#[tokio::test]
async fn after_an_install_every_entry_writes_its_bodies_whatever_was_on_disk_before() {
    let (source_dir, dir) = (
        tempfile::TempDir::new().unwrap(),
        tempfile::TempDir::new().unwrap(),
    );
    let db = Db::open(source_dir.path(), &OpenOptions::default()).unwrap();
    let mut source = StateMachineStore::open(db, 1).unwrap();
    let log = create_and_send(&[&["a"], &["b"]]);
    apply_all(&mut source, log.clone()).await;
    let snapshot = source
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    {
        // This node had bodies of higher keys before (as no committed log would leave
        // it: the test is of the rule, that an install forgets what was on disk).
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
        apply_all(&mut sm, create_and_send(&[&["x"], &["y"], &["z"], &["w"]])).await;
        flush_bodies(&db).unwrap();
    }
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
    assert_eq!(sm.bodies_on_disk_through, 4);
    sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .unwrap();
    assert_eq!(sm.bodies_on_disk_through, 0);
    apply_all(&mut sm, create_and_send(&[&[], &[], &["c"]]).split_off(3)).await;
    assert_eq!(texts(&peeked(&sm)), ["a", "b", "c"]);
    drop(sm);
    let sm = StateMachineStore::open(db, 1).unwrap();
    assert_eq!(sm.bodies_on_disk_through, 3);
}

#[tokio::test]
async fn a_peek_answers_no_more_bytes_of_bodies_than_asked_but_always_the_first_message() {
    let dir = tempfile::TempDir::new().unwrap();
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    let mut sm = StateMachineStore::open(db.clone(), 1).unwrap();
    apply_all(&mut sm, create_and_send(&[&["aaaa", "bbbb", "cccc"]])).await;
    let bodies = |max_bytes| {
        sm.shared()
            .peek("q", 0, 10, max_bytes, 0, "")
            .unwrap()
            .into_iter()
            .map(|(_, body)| String::from_utf8(body).unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(bodies(u64::MAX), ["aaaa", "bbbb", "cccc"]);
    assert_eq!(bodies(8), ["aaaa", "bbbb"]);
    assert_eq!(bodies(7), ["aaaa"]);
    assert_eq!(
        bodies(1),
        ["aaaa"],
        "the first message comes whatever its size"
    );
}

#[test]
fn a_data_directory_with_a_snapshot_of_the_old_layout_is_refused_not_misread() {
    let dir = tempfile::TempDir::new().unwrap();
    let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
    db.inner
        .put_cf(db.cf(CF_STATE), meta_key(1, OLD_SNAPSHOT_KEY), b"old")
        .unwrap();
    let error = StateMachineStore::open(db, 1).err().expect("opened");
    assert!(matches!(error, StoreError::OldLayout { .. }), "{error}");
}
