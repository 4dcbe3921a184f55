//! Rebalancing: when nodes join or leave, the data groups' replicas move so that every
//! node runs within one replica and within one first replica (preferred leader) of even,
//! moving as few replicas as that takes. Only the plan is computed here; each group's
//! leader carries its moves out (a new replica joins and catches up before an old one is
//! removed), see `raftq-cluster`'s `groups` module.

use std::collections::BTreeMap;

use super::{GroupPlan, MAX_REPLICAS, NodeId, Placement};
use crate::GroupId;

impl Placement {
    /// The groups whose replicas change to spread them over `nodes` (the metadata group's
    /// voters; draining nodes are left out here), `replication` per group (all nodes when
    /// there are fewer): each replica on a node that is not among them moves to the node
    /// that runs fewest; then single replicas move from the nodes that run most to those
    /// that run fewest until all are within one; then first replicas trade places within
    /// their groups until every node leads within one as many groups (that moves no
    /// data). A node only gains replicas or only loses them, never both. Empty when the
    /// placement is balanced already, so calling it again after applying its plans
    /// changes nothing.
    pub fn rebalance(&self, nodes: &[NodeId], replication: usize) -> Vec<GroupPlan> {
        let mut nodes: Vec<NodeId> = nodes
            .iter()
            .copied()
            .filter(|node| !self.draining.contains(node))
            .collect();
        nodes.sort_unstable();
        nodes.dedup();
        if nodes.is_empty() || self.groups.is_empty() {
            return Vec::new();
        }
        let want = replication.clamp(1, MAX_REPLICAS).min(nodes.len());
        let mut groups: BTreeMap<GroupId, Vec<NodeId>> = self.groups.clone();
        let mut load: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (*node, 0)).collect();
        for replicas in groups.values_mut() {
            replicas.retain(|node| load.contains_key(node));
            for node in replicas.iter() {
                *load.get_mut(node).expect("kept replicas are on the nodes") += 1;
            }
        }
        // Groups that lost replicas (or have too few, or too many): fill from, or give
        // back to, the nodes running fewest.
        for replicas in groups.values_mut() {
            while replicas.len() < want {
                let node = least_loaded(&load, |node| !replicas.contains(node))
                    .expect("a group has fewer replicas than there are nodes");
                replicas.push(node);
                *load.get_mut(&node).expect("chosen among the nodes") += 1;
            }
            while replicas.len() > want {
                let (at, node) = replicas
                    .iter()
                    .enumerate()
                    .skip(1)
                    .max_by_key(|(_, node)| (load[*node], **node))
                    .map(|(at, node)| (at, *node))
                    .expect("a group with more than one replica");
                replicas.remove(at);
                *load.get_mut(&node).expect("a replica's node") -= 1;
            }
        }
        spread_replicas(&mut groups, &mut load);
        spread_first_replicas(&mut groups, &nodes);
        groups
            .into_iter()
            .filter(|(group, replicas)| self.groups.get(group) != Some(replicas))
            .map(|(group, replicas)| GroupPlan { group, replicas })
            .collect()
    }
}

/// The node running fewest replicas among those `allowed` (the lowest id among equals).
fn least_loaded(
    load: &BTreeMap<NodeId, usize>,
    allowed: impl Fn(&NodeId) -> bool,
) -> Option<NodeId> {
    load.iter()
        .filter(|(node, _)| allowed(node))
        .min_by_key(|(node, count)| (**count, **node))
        .map(|(node, _)| *node)
}

/// Moves one replica at a time from the node running most to the node running fewest,
/// until they are within one: each move takes a group the busiest node runs and the
/// idlest does not, preferring one the busiest does not lead.
fn spread_replicas(
    groups: &mut BTreeMap<GroupId, Vec<NodeId>>,
    load: &mut BTreeMap<NodeId, usize>,
) {
    // Each move lowers the spread's excess; the total of replicas bounds the moves.
    let bound: usize = load.values().sum();
    for _ in 0..bound {
        let Some((&busiest, &most)) = load.iter().max_by_key(|(node, count)| (**count, **node))
        else {
            return;
        };
        let Some(idlest) = least_loaded(load, |_| true) else {
            return;
        };
        if most <= load[&idlest] + 1 {
            return;
        }
        let candidate = groups
            .iter()
            .filter(|(_, replicas)| replicas.contains(&busiest) && !replicas.contains(&idlest))
            .min_by_key(|(group, replicas)| (replicas[0] == busiest, **group))
            .map(|(group, _)| *group);
        let Some(group) = candidate else {
            return;
        };
        let replicas = groups.get_mut(&group).expect("a group just found");
        let at = replicas
            .iter()
            .position(|node| *node == busiest)
            .expect("the busiest node runs the group");
        if at == 0 {
            // The new node is not the group's first replica: one that holds the group's
            // data is, and the first replicas are spread afterwards.
            replicas.remove(0);
            replicas.push(idlest);
        } else {
            replicas[at] = idlest;
        }
        *load.get_mut(&busiest).expect("a node") -= 1;
        *load.get_mut(&idlest).expect("a node") += 1;
    }
}

/// Swaps first replicas within groups until every node is the first replica of within one
/// as many groups as any other node (as far as the replicas allow).
fn spread_first_replicas(groups: &mut BTreeMap<GroupId, Vec<NodeId>>, nodes: &[NodeId]) {
    let bound = groups.len() * nodes.len();
    for _ in 0..bound {
        let mut firsts: BTreeMap<NodeId, usize> = nodes.iter().map(|node| (*node, 0)).collect();
        for replicas in groups.values() {
            if let Some(count) = replicas.first().and_then(|node| firsts.get_mut(node)) {
                *count += 1;
            }
        }
        // The best swap: from a node leading most, to a replica of one of its groups that
        // leads at least two fewer, as few as possible.
        let best = groups
            .iter()
            .filter_map(|(group, replicas)| {
                let leader = *replicas.first()?;
                let (at, node) = replicas
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter(|(_, node)| firsts[*node] + 1 < firsts[&leader])
                    .min_by_key(|(_, node)| (firsts[*node], **node))?;
                Some((
                    (std::cmp::Reverse(firsts[&leader]), firsts[node], *group),
                    at,
                ))
            })
            .min_by_key(|(key, _)| *key);
        let Some(((_, _, group), at)) = best else {
            return;
        };
        groups
            .get_mut(&group)
            .expect("a group just found")
            .swap(0, at);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::tests::loads;
    use super::super::{GroupPlan, NodeId, Placement};

    fn placed(nodes: &[NodeId], groups: usize, replication: usize) -> Placement {
        let mut placement = Placement::default();
        let plans = placement.plan_groups(nodes, groups, replication);
        placement.add_groups(&plans).unwrap();
        placement
    }

    #[test]
    fn joining_and_leaving_nodes_end_within_one_of_even_and_no_node_both_gains_and_loses() {
        let cases: &[(&[NodeId], &[NodeId])] = &[
            (&[1, 2, 3], &[1, 2, 3, 4, 5]),
            (&[1, 2, 3, 4, 5], &[1, 2, 3]),
            (&[1, 2, 3], &[1, 2, 3, 4, 5, 6, 7, 8, 9]),
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9], &[1, 2, 3]),
            (&[1, 2, 3, 4, 5], &[1, 2, 4, 5, 6]),
            (&[1, 2, 3], &[1, 2]),
            (&[1], &[1, 2, 3]),
        ];
        for (before, after) in cases {
            for groups in [1, 4, 6, 16, 31] {
                for replication in [1, 3, 5] {
                    let case = format!("{before:?} -> {after:?}, {groups} groups, {replication}");
                    let mut placement = placed(before, groups, replication);
                    let was = loads(&placement);
                    let plans = placement.rebalance(after, replication);
                    placement.move_replicas(&plans).unwrap();
                    let now = loads(&placement);
                    let want = replication.min(after.len());
                    for plan in placement.groups() {
                        assert_eq!(plan.replicas.len(), want, "{case}: {plan:?}");
                        assert!(
                            plan.replicas.iter().all(|node| after.contains(node)),
                            "{case}: {plan:?}"
                        );
                    }
                    let all = |pick: fn(&(usize, usize)) -> usize| {
                        let counts: Vec<usize> = after
                            .iter()
                            .map(|node| now.get(node).map_or(0, pick))
                            .collect();
                        counts.iter().max().unwrap() - counts.iter().min().unwrap()
                    };
                    assert!(all(|load| load.0) <= 1, "{case}: replicas {now:?}");
                    if groups >= after.len() || replication > 1 {
                        assert!(all(|load| load.1) <= 1, "{case}: first replicas {now:?}");
                    }
                    // Fewest moves: no node both gains a replica and loses one.
                    let original = placed(before, groups, replication);
                    let mut gains: BTreeMap<NodeId, (usize, usize)> = BTreeMap::new();
                    for plan in &plans {
                        let old = original.replicas(plan.group).unwrap();
                        for node in plan.replicas.iter().filter(|n| !old.contains(n)) {
                            gains.entry(*node).or_default().0 += 1;
                        }
                        for node in old.iter().filter(|n| !plan.replicas.contains(n)) {
                            gains.entry(*node).or_default().1 += 1;
                        }
                    }
                    for (node, (gained, lost)) in &gains {
                        assert!(
                            *gained == 0 || *lost == 0,
                            "{case}: node {node} gained {gained} and lost {lost}; was {was:?}"
                        );
                    }
                    assert!(
                        placement.rebalance(after, replication).is_empty(),
                        "{case}: a second rebalance moves nothing"
                    );
                }
            }
        }
    }

    #[test]
    fn a_balanced_placement_moves_nothing() {
        let placement = placed(&[1, 2, 3, 4, 5], 16, 3);
        assert!(placement.rebalance(&[1, 2, 3, 4, 5], 3).is_empty());
        assert!(placement.rebalance(&[5, 4, 3, 2, 1, 1], 3).is_empty());
        assert!(Placement::default().rebalance(&[1, 2], 3).is_empty());
        assert!(placement.rebalance(&[], 3).is_empty());
    }

    #[test]
    fn a_draining_node_is_left_without_replicas_while_still_a_voter() {
        let mut placement = placed(&[1, 2, 3, 4], 8, 3);
        placement.set_draining(4, true);
        let plans = placement.rebalance(&[1, 2, 3, 4], 3);
        placement.move_replicas(&plans).unwrap();
        assert!(placement.groups_on(4).is_empty(), "{placement:?}");
        assert_eq!(loads(&placement).len(), 3);
        placement.set_draining(4, false);
        assert!(
            !placement.rebalance(&[1, 2, 3, 4], 3).is_empty(),
            "once it is not draining, it takes replicas again"
        );
    }

    #[test]
    fn moving_replicas_is_refused_whole_for_an_unknown_group_or_a_bad_plan() {
        let mut placement = placed(&[1, 2, 3], 2, 3);
        let before = placement.clone();
        let plan = |group, replicas: &[NodeId]| GroupPlan {
            group,
            replicas: replicas.to_vec(),
        };
        for bad in [
            vec![plan(9, &[1])],
            vec![plan(2, &[])],
            vec![plan(2, &[1, 1])],
            vec![plan(2, &[1]), plan(2, &[2])],
            vec![plan(2, &[4]), plan(1, &[2])],
        ] {
            assert!(placement.move_replicas(&bad).is_err(), "{bad:?}");
            assert_eq!(placement, before, "{bad:?} changed nothing");
        }
        placement.move_replicas(&[plan(2, &[3, 4])]).unwrap();
        assert_eq!(placement.replicas(2), Some(&[3, 4][..]));
    }
}
