//! The node's identity on disk: which cluster and node a data directory belongs to, and
//! whether the Raft log in it may be trusted with a vote.
//!
//! Raft counts on every voter keeping what it promised (its vote, the entries it
//! acknowledged). A node restarted on an empty data directory with its old id (a pod whose
//! volume was lost) remembers none of it; were it to vote, a candidate lacking
//! acknowledged entries could win with its help and those entries would be gone. So a data
//! directory records, in the same RocksDB as the log and synced, the node it belongs to and
//! whether its log has caught up with a leader since it was created. A node whose data
//! directory does not say so grants no vote.

use std::collections::BTreeSet;

use raftq_core::GroupId;
use rocksdb::WriteOptions;
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::db::{CF_META, Db, StoreError, group_of_key};

/// The key of the identity record in the meta column family: group 0 (no Raft group has
/// that id), so it belongs to the node rather than to one of its groups.
const IDENTITY_KEY: &[u8] = b"\0\0\0\0\0\0\0\0identity";

/// What a data directory says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The cluster the directory belongs to: named when the cluster was formed, recorded
    /// when the node formed or joined it. `None` on a directory that has joined no cluster
    /// yet (or was written before cluster ids were recorded). A node refuses Raft messages
    /// and membership from another cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// The node the directory belongs to; another node id refuses to start on it.
    pub node_id: NodeId,
    /// Whether the directory holds a log of group 1 that may vote: the node formed the
    /// cluster with it, held Raft state before identities were recorded, or caught up with
    /// a leader after starting on an empty directory.
    pub voting: bool,
    /// The other groups whose log here may vote, by the same rule: the replica founded the
    /// group, or caught up with the group's leader after it started empty.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub voting_groups: BTreeSet<GroupId>,
}

impl NodeIdentity {
    /// Whether this directory's log of `group` may vote.
    pub fn votes_in(&self, group: GroupId) -> bool {
        if group == 1 {
            self.voting
        } else {
            self.voting_groups.contains(&group)
        }
    }

    /// Records whether this directory's log of `group` may vote.
    pub fn set_voting(&mut self, group: GroupId, voting: bool) {
        if group == 1 {
            self.voting = voting;
        } else if voting {
            self.voting_groups.insert(group);
        } else {
            self.voting_groups.remove(&group);
        }
    }
}

impl Db {
    /// The identity recorded in this data directory, if any.
    pub fn identity(&self) -> Result<Option<NodeIdentity>, StoreError> {
        let Some(bytes) = self.inner.get_cf(self.cf(CF_META), IDENTITY_KEY)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StoreError::Corrupt {
                what: "the node identity",
                reason: error.to_string(),
            })
    }

    /// The Raft groups this directory holds a vote record of: those its node has taken
    /// part in (a restored copy of a directory votes in each of them again).
    pub fn groups_with_votes(&self) -> Result<BTreeSet<GroupId>, StoreError> {
        let mut groups = BTreeSet::new();
        for item in self
            .inner
            .iterator_cf(self.cf(CF_META), rocksdb::IteratorMode::Start)
        {
            let (key, _) = item?;
            if key.get(8..) == Some(b"vote".as_slice())
                && let Some(group) = group_of_key(&key)
                && group > 0
            {
                groups.insert(group);
            }
        }
        Ok(groups)
    }

    /// Records `identity`, synced to disk before this returns.
    pub fn record_identity(&self, identity: &NodeIdentity) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(identity).map_err(|error| StoreError::Corrupt {
            what: "the node identity",
            reason: error.to_string(),
        })?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        self.inner
            .put_cf_opt(self.cf(CF_META), IDENTITY_KEY, bytes, &options)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::NodeIdentity;
    use crate::{Db, OpenOptions};

    #[test]
    fn an_identity_survives_reopening_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let identity = NodeIdentity {
            cluster_id: Some("0190c1e2-7f00-7000-8000-000000000001".into()),
            node_id: 3,
            voting: false,
            voting_groups: [2, 7].into(),
        };
        {
            let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
            assert_eq!(db.identity().unwrap(), None);
            db.record_identity(&identity).unwrap();
        }
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        assert_eq!(db.identity().unwrap(), Some(identity));
    }

    #[test]
    fn the_groups_with_a_vote_record_are_those_the_directory_took_part_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &OpenOptions::default()).unwrap();
        let meta = db.cf(crate::db::CF_META);
        for (group, name) in [
            (1, "vote"),
            (3, "vote"),
            (3, "committed"),
            (5, "last_purged"),
        ] {
            db.inner
                .put_cf(meta, crate::db::meta_key(group, name), b"x")
                .unwrap();
        }
        db.record_identity(&NodeIdentity {
            cluster_id: None,
            node_id: 1,
            voting: true,
            voting_groups: Default::default(),
        })
        .unwrap();
        assert_eq!(db.groups_with_votes().unwrap(), [1, 3].into());
    }
}

#[cfg(test)]
mod format {
    use super::NodeIdentity;

    #[test]
    fn an_identity_written_before_cluster_ids_reads_as_belonging_to_no_cluster() {
        let old: NodeIdentity = serde_json::from_str(r#"{"node_id":2,"voting":true}"#).unwrap();
        assert_eq!(
            old,
            NodeIdentity {
                cluster_id: None,
                node_id: 2,
                voting: true,
                voting_groups: Default::default(),
            }
        );
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"node_id":2,"voting":true}"#
        );
    }

    #[test]
    fn each_group_records_its_own_vote() {
        let mut identity: NodeIdentity =
            serde_json::from_str(r#"{"node_id":2,"voting":false}"#).unwrap();
        identity.set_voting(3, true);
        assert!(identity.votes_in(3) && !identity.votes_in(1) && !identity.votes_in(2));
        identity.set_voting(1, true);
        identity.set_voting(3, false);
        assert!(identity.votes_in(1) && !identity.votes_in(3));
        identity.set_voting(4, true);
        assert_eq!(
            serde_json::to_string(&identity).unwrap(),
            r#"{"node_id":2,"voting":true,"voting_groups":[4]}"#
        );
    }
}
