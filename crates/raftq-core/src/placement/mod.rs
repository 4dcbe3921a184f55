//! Where data lives when a cluster runs several Raft groups: each data group's replicas
//! (the nodes that run it) and the group each queue lives in. The metadata group (group 1)
//! holds it and changes it only through its log, so every node agrees on it. A queue that
//! was never placed lives in group 1, as every queue did before there were data groups.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{GroupId, Limits, QueueError, quote, validate_queue_name};

mod rebalance;

/// The group that holds the placement itself, and every queue not placed elsewhere.
pub const METADATA_GROUP: GroupId = 1;
/// Most data groups a cluster runs.
pub const MAX_GROUPS: usize = 4_096;
/// Most replicas one group has.
pub const MAX_REPLICAS: usize = 7;

/// A node's id, as Raft numbers it.
pub type NodeId = u64;

/// One data group and the nodes that run it. The first replica forms the group and is
/// the leader it starts with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPlan {
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Every data group's replicas, the first one its founder.
    groups: BTreeMap<GroupId, Vec<NodeId>>,
    /// The queues placed in a data group.
    queues: BTreeMap<String, GroupId>,
    /// Nodes being drained before they leave: a rebalance moves every replica off them.
    /// Kept in snapshots as a part of its own after the placement (see
    /// [`Placement::draining`]), so that a placement written before it existed still reads.
    #[serde(skip)]
    draining: BTreeSet<NodeId>,
}

impl Placement {
    /// The data groups and their replicas, in group order.
    pub fn groups(&self) -> impl Iterator<Item = GroupPlan> + '_ {
        self.groups.iter().map(|(group, replicas)| GroupPlan {
            group: *group,
            replicas: replicas.clone(),
        })
    }

    /// The nodes that run `group`, the founder first; `None` for a group that is not a
    /// data group.
    pub fn replicas(&self, group: GroupId) -> Option<&[NodeId]> {
        self.groups.get(&group).map(Vec::as_slice)
    }

    /// The data groups `node` runs a replica of, in order.
    pub fn groups_on(&self, node: NodeId) -> Vec<GroupId> {
        self.groups
            .iter()
            .filter(|(_, replicas)| replicas.contains(&node))
            .map(|(group, _)| *group)
            .collect()
    }

    /// The group `queue` lives in.
    pub fn group_of(&self, queue: &str) -> GroupId {
        self.queues.get(queue).copied().unwrap_or(METADATA_GROUP)
    }

    /// How many queues are placed in each data group (every data group listed).
    pub fn queue_counts(&self) -> BTreeMap<GroupId, usize> {
        let mut counts: BTreeMap<GroupId, usize> =
            self.groups.keys().map(|group| (*group, 0)).collect();
        for group in self.queues.values() {
            *counts.entry(*group).or_default() += 1;
        }
        counts
    }

    /// Adds data groups. Refused, changing nothing, when a group is group 0 or 1 or exists
    /// already, has no replica, more than [`MAX_REPLICAS`] or one twice, or when the
    /// cluster would run more than [`MAX_GROUPS`].
    pub fn add_groups(&mut self, plans: &[GroupPlan]) -> Result<(), QueueError> {
        self.check_groups(plans)?;
        for plan in plans {
            self.groups.insert(plan.group, plan.replicas.clone());
        }
        Ok(())
    }

    /// Why [`Placement::add_groups`] would refuse `plans`, if it would.
    pub fn check_groups(&self, plans: &[GroupPlan]) -> Result<(), QueueError> {
        if self.groups.len() + plans.len() > MAX_GROUPS {
            return Err(QueueError::invalid(
                "groups",
                format!(
                    "{} groups and {} more exceed the limit of {MAX_GROUPS}",
                    self.groups.len(),
                    plans.len()
                ),
            ));
        }
        for (at, plan) in plans.iter().enumerate() {
            let refuse = |reason: String| Err(QueueError::invalid("groups", reason));
            let group = plan.group;
            if group <= METADATA_GROUP {
                return refuse(format!("group {group} cannot be a data group"));
            }
            if self.groups.contains_key(&group) || plans[..at].iter().any(|p| p.group == group) {
                return refuse(format!("group {group} exists already"));
            }
            if plan.replicas.is_empty() || plan.replicas.len() > MAX_REPLICAS {
                return refuse(format!(
                    "group {group} has {} replicas; it takes 1 to {MAX_REPLICAS}",
                    plan.replicas.len()
                ));
            }
            let mut sorted = plan.replicas.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != plan.replicas.len() {
                return refuse(format!("group {group} names a node twice"));
            }
        }
        Ok(())
    }

    /// Places `queue` and returns its group: where it is already, the group of
    /// `colocate_with` when given, or else the data group holding the fewest queues
    /// (the lowest-numbered among equals); group 1 when there are no data groups.
    pub fn place(
        &mut self,
        queue: &str,
        colocate_with: Option<&str>,
        limits: &Limits,
    ) -> Result<GroupId, QueueError> {
        check_place(queue, colocate_with, limits)?;
        if let Some(group) = self.queues.get(queue) {
            return Ok(*group);
        }
        let group = match colocate_with {
            Some(other) => self.group_of(other),
            None => {
                let counts = self.queue_counts();
                let least = counts
                    .iter()
                    .min_by_key(|(group, count)| (**count, **group));
                least.map_or(METADATA_GROUP, |(group, _)| *group)
            }
        };
        if group != METADATA_GROUP {
            self.queues.insert(queue.to_string(), group);
        }
        Ok(group)
    }

    /// Gives existing data groups new replicas (a rebalance's moves). Refused, changing
    /// nothing, for a group that does not exist, and for replicas [`Placement::add_groups`]
    /// would refuse.
    pub fn move_replicas(&mut self, plans: &[GroupPlan]) -> Result<(), QueueError> {
        self.check_moves(plans)?;
        for plan in plans {
            self.groups.insert(plan.group, plan.replicas.clone());
        }
        Ok(())
    }

    /// Why [`Placement::move_replicas`] would refuse `plans`, if it would.
    pub fn check_moves(&self, plans: &[GroupPlan]) -> Result<(), QueueError> {
        let others = Placement::default();
        for (at, plan) in plans.iter().enumerate() {
            if !self.groups.contains_key(&plan.group) {
                return Err(QueueError::invalid(
                    "groups",
                    format!("group {} is not a data group", plan.group),
                ));
            }
            others
                .check_groups(std::slice::from_ref(plan))
                .and_then(|()| {
                    if plans[..at].iter().any(|p| p.group == plan.group) {
                        Err(QueueError::invalid(
                            "groups",
                            format!("group {} is moved twice", plan.group),
                        ))
                    } else {
                        Ok(())
                    }
                })?;
        }
        Ok(())
    }

    /// Marks `node` as draining (its replicas are to move elsewhere before it leaves), or
    /// not any more.
    pub fn set_draining(&mut self, node: NodeId, draining: bool) {
        if draining {
            self.draining.insert(node);
        } else {
            self.draining.remove(&node);
        }
    }

    /// The nodes being drained.
    pub fn draining(&self) -> &BTreeSet<NodeId> {
        &self.draining
    }

    /// Restores the draining nodes a snapshot kept beside the placement.
    pub fn restore_draining(&mut self, draining: BTreeSet<NodeId>) {
        self.draining = draining;
    }

    /// Forgets where `queue` lives (it was deleted); returns the group it was in.
    pub fn unplace(&mut self, queue: &str) -> GroupId {
        self.queues.remove(queue).unwrap_or(METADATA_GROUP)
    }

    /// Plans `count` new data groups, numbered after the highest there is, over `nodes`:
    /// each on `replication` of them (all, when there are fewer), chosen so that every
    /// node runs, counting the groups there are, within one as many replicas as any
    /// other, and founds (so first leads) within one as many groups.
    pub fn plan_groups(
        &self,
        nodes: &[NodeId],
        count: usize,
        replication: usize,
    ) -> Vec<GroupPlan> {
        let mut nodes: Vec<NodeId> = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        let replication = replication.clamp(1, MAX_REPLICAS).min(nodes.len());
        if replication == 0 {
            return Vec::new();
        }
        // Per node: (replicas, groups founded).
        let mut load: BTreeMap<NodeId, (usize, usize)> =
            nodes.iter().map(|node| (*node, (0, 0))).collect();
        for replicas in self.groups.values() {
            for (at, node) in replicas.iter().enumerate() {
                if let Some(load) = load.get_mut(node) {
                    load.0 += 1;
                    load.1 += usize::from(at == 0);
                }
            }
        }
        let first = self
            .groups
            .keys()
            .next_back()
            .copied()
            .unwrap_or(METADATA_GROUP)
            + 1;
        let mut plans = Vec::with_capacity(count);
        for group in (first..).take(count) {
            let mut by_replicas: Vec<NodeId> = nodes.clone();
            by_replicas.sort_by_key(|node| (load[node].0, *node));
            // The founder: of the nodes that may take a replica (as few as the least
            // loaded `replication` run), the one that founded the fewest groups.
            let most = load[&by_replicas[replication - 1]].0;
            let founder = by_replicas
                .iter()
                .filter(|node| load[*node].0 <= most)
                .min_by_key(|node| (load[*node].1, load[*node].0, **node))
                .copied()
                .expect("the least loaded node may take a replica");
            let mut chosen = vec![founder];
            chosen.extend(
                by_replicas
                    .iter()
                    .filter(|node| **node != founder)
                    .take(replication - 1),
            );
            for (at, node) in chosen.iter().enumerate() {
                let load = load.get_mut(node).expect("a chosen node has a load");
                load.0 += 1;
                load.1 += usize::from(at == 0);
            }
            plans.push(GroupPlan {
                group,
                replicas: chosen,
            });
        }
        plans
    }
}

/// Why [`Placement::place`] would refuse these names, if it would.
pub fn check_place(
    queue: &str,
    colocate_with: Option<&str>,
    limits: &Limits,
) -> Result<(), QueueError> {
    validate_queue_name(queue, limits)?;
    if let Some(other) = colocate_with {
        validate_queue_name(other, limits).map_err(|_| {
            QueueError::invalid(
                "colocate_with",
                format!("{} is not a queue name", quote(other)),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use std::collections::BTreeMap;

    use super::{GroupPlan, METADATA_GROUP, NodeId, Placement};
    use crate::Limits;

    /// Per node: replicas run and groups founded.
    pub(super) fn loads(placement: &Placement) -> BTreeMap<NodeId, (usize, usize)> {
        let mut loads = BTreeMap::new();
        for plan in placement.groups() {
            for (at, node) in plan.replicas.iter().enumerate() {
                let load: &mut (usize, usize) = loads.entry(*node).or_default();
                load.0 += 1;
                load.1 += usize::from(at == 0);
            }
        }
        loads
    }

    fn spread(values: impl Iterator<Item = usize> + Clone) -> usize {
        values.clone().max().unwrap() - values.min().unwrap()
    }

    #[test]
    fn groups_spread_over_the_nodes_within_one_replica_and_one_founder_of_even() {
        for nodes in 1..=9u64 {
            for count in [1, 2, 3, 5, 7, 16, 31] {
                for replication in [1, 3, 5] {
                    let ids: Vec<NodeId> = (1..=nodes).collect();
                    let mut placement = Placement::default();
                    let plans = placement.plan_groups(&ids, count, replication);
                    assert_eq!(plans.len(), count);
                    assert_eq!(plans[0].group, 2, "data groups start after group 1");
                    placement.add_groups(&plans).unwrap();
                    for plan in &plans {
                        assert_eq!(plan.replicas.len(), replication.min(nodes as usize));
                    }
                    let loads = loads(&placement);
                    let case = format!("{nodes} nodes, {count} groups, {replication} replicas");
                    if count * replication.min(nodes as usize) >= nodes as usize {
                        assert_eq!(loads.len(), nodes as usize, "{case}: every node used");
                    }
                    let all = (1..=nodes).map(|node| loads.get(&node).copied().unwrap_or_default());
                    assert!(spread(all.clone().map(|l| l.0)) <= 1, "{case}: {loads:?}");
                    assert!(spread(all.map(|l| l.1)) <= 1, "{case}: {loads:?}");
                }
            }
        }
    }

    #[test]
    fn groups_added_later_go_to_the_nodes_that_run_fewest() {
        let mut placement = Placement::default();
        let first = placement.plan_groups(&[1, 2, 3], 6, 3);
        placement.add_groups(&first).unwrap();
        // Two new nodes: the next groups go to them first.
        let more = placement.plan_groups(&[1, 2, 3, 4, 5], 4, 3);
        assert_eq!(more[0].group, 8);
        for plan in &more[..2] {
            assert!(
                plan.replicas.contains(&4) && plan.replicas.contains(&5),
                "{more:?}"
            );
            assert!([4, 5].contains(&plan.replicas[0]), "a new node founds it");
        }
    }

    #[test]
    fn a_queue_goes_to_the_group_holding_fewest_queues_or_beside_another() {
        let mut placement = Placement::default();
        assert_eq!(
            placement.place("early", None, &Limits::default()).unwrap(),
            METADATA_GROUP
        );
        let plans = placement.plan_groups(&[1, 2, 3], 3, 3);
        placement.add_groups(&plans).unwrap();
        let groups: Vec<u64> = (0..6)
            .map(|i| {
                placement
                    .place(&format!("q{i}"), None, &Limits::default())
                    .unwrap()
            })
            .collect();
        assert_eq!(groups, [2, 3, 4, 2, 3, 4]);
        assert_eq!(
            placement.place("q1", None, &Limits::default()).unwrap(),
            3,
            "placed once"
        );
        assert_eq!(
            placement
                .place("q1.dlq", Some("q1"), &Limits::default())
                .unwrap(),
            3
        );
        assert_eq!(
            placement
                .place("beside-early", Some("early"), &Limits::default())
                .unwrap(),
            1
        );
        assert_eq!(placement.group_of("early"), METADATA_GROUP);
        assert_eq!(placement.queue_counts()[&3], 3);
        assert_eq!(placement.unplace("q1"), 3);
        assert_eq!(placement.group_of("q1"), METADATA_GROUP);
        assert!(
            placement
                .place("bad name!", None, &Limits::default())
                .is_err()
        );
        assert!(
            placement
                .place("ok", Some("bad name!"), &Limits::default())
                .is_err()
        );
    }

    #[test]
    fn a_bad_group_plan_is_refused_whole() {
        let mut placement = Placement::default();
        let plan = |group, replicas: &[NodeId]| GroupPlan {
            group,
            replicas: replicas.to_vec(),
        };
        for bad in [
            vec![plan(1, &[1])],
            vec![plan(0, &[1])],
            vec![plan(2, &[])],
            vec![plan(2, &[1, 1])],
            vec![plan(2, &[1, 2, 3, 4, 5, 6, 7, 8])],
            vec![plan(2, &[1]), plan(2, &[2])],
            vec![plan(3, &[1]), plan(1, &[2])],
        ] {
            assert!(placement.add_groups(&bad).is_err(), "{bad:?}");
            assert_eq!(placement, Placement::default(), "{bad:?} changed nothing");
        }
        placement.add_groups(&[plan(2, &[1, 2])]).unwrap();
        assert!(placement.add_groups(&[plan(2, &[3])]).is_err(), "exists");
        assert_eq!(placement.groups_on(2), vec![2]);
        assert_eq!(placement.replicas(2), Some(&[1, 2][..]));
        assert_eq!(placement.replicas(1), None);
    }
}
