//! Placement: which replica group holds each key, and which nodes form each group.
//!
//! The key space is split into [`PARTITIONS`] partitions by a stable hash of the key
//! ([`partition_of`]). A cluster of M nodes with N replicas has replica groups of N nodes;
//! each partition is held by one group, and every node of the group holds a full copy of it.
//! A group runs the cluster's consistency mode on its own: one total order (or one set of
//! eventual peers) per group, however many partitions it holds.
//!
//! The placement is derived from the member list alone, so every node that knows the same
//! members computes the same placement, with no agreement protocol of its own:
//!
//! - **Groups** are windows on the ring of nodes sorted by id: group `i` is the node at
//!   position `i` and the N - 1 after it, wrapping around (Dynamo's preference lists with one
//!   position per node). With N < M there are M groups and every node is in exactly N of
//!   them; with N = M there is one group of every node (full replication). A node added with
//!   the highest id changes N - 1 groups (each swaps one member for it) and adds one.
//! - **Partitions** are dealt to groups so every group holds `P / G` of them, rounded up or
//!   down ([`assign`]): the table for G groups is the table for G - 1 with the new group taking
//!   its share from the fullest groups. So growing from G to G + 1 groups moves exactly the new
//!   group's share and nothing else, and every node holds at most `N * ceil(P / G)`
//!   partitions: within `1 + G / P` of the mean (1.01 for 10 nodes).

use tailorkv_common::NodeId;

/// Partitions of the key space. Fixed for the life of a cluster: every node must agree.
pub const PARTITIONS: usize = 1024;

/// A replica group: its position on the ring of nodes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct GroupId(pub u16);

/// The partition `key` belongs to.
pub fn partition_of(key: &[u8]) -> usize {
    // The high half of the hash: the anti-entropy buckets use the low bits, so a group's
    // keys still spread over every bucket.
    ((tailorkv_common::hash::key_hash(key) >> 32) % PARTITIONS as u64) as usize
}

/// Where every key lives in one cluster: the nodes, the replica groups they form, and the
/// partitions each group holds. The placement a cluster starts with is derived from its
/// member list ([`Placement::new`]); from then on it changes one node at a time
/// ([`Placement::add_node`], [`Placement::remove_node`]), each change a new epoch agreed
/// through the cluster's metadata ([`crate::membership`]). Groups never change their
/// partitions: a membership change moves group members, and a group's new member is given
/// the group's data by its total order (a snapshot, then the order's own catch-up).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    /// Changes since the cluster started: 1 for its first placement.
    epoch: u64,
    /// Copies of each partition wanted: a group has this many members once the cluster has
    /// that many nodes.
    replicas: usize,
    /// The nodes, sorted by id.
    nodes: Vec<NodeId>,
    /// Each group's members, by group id, each list sorted.
    groups: Vec<Vec<NodeId>>,
    /// Each partition's group.
    table: Vec<GroupId>,
}

impl Placement {
    /// The placement of `nodes` (any order, no repeats) with `replicas` copies of each
    /// partition (while there are that many nodes): one group per node (windows on the
    /// ring), or one group of every node when the replicas cover them all.
    pub fn new(nodes: &[NodeId], replicas: usize) -> Self {
        let m = nodes.len().max(1);
        let groups = if replicas >= m { 1 } else { m };
        Self::with_groups(nodes, replicas, groups)
    }

    /// The placement of `nodes` with `replicas` copies and `groups` replica groups, fixed for
    /// the life of the cluster: group `g` starts as the window of nodes on the ring beginning
    /// at position `g mod M`. More groups than nodes is what lets a cluster grow: a node that
    /// joins takes whole groups' copies from the others.
    pub fn with_groups(nodes: &[NodeId], replicas: usize, groups: usize) -> Self {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        assert!(!nodes.is_empty(), "a placement needs a node");
        let replicas = replicas.max(1);
        let groups = groups.clamp(1, PARTITIONS);
        let m = nodes.len();
        let n = replicas.min(m);
        let members = (0..groups)
            .map(|start| {
                let mut g: Vec<NodeId> = (0..n).map(|i| nodes[(start + i) % m]).collect();
                g.sort();
                g
            })
            .collect();
        let table = assign(PARTITIONS, groups)
            .into_iter()
            .map(|g| GroupId(g as u16))
            .collect();
        Placement {
            epoch: 1,
            replicas,
            nodes,
            groups: members,
            table,
        }
    }

    /// The placement's version: a digest of all of it (epoch, nodes, groups, partitions), the
    /// same on every node that holds the same placement.
    pub fn version(&self) -> u64 {
        let bytes = postcard::to_allocvec(self).expect("a placement serializes");
        tailorkv_common::hash::hash_parts([&bytes[..]])
    }

    /// Changes since the cluster started (1 for its first placement).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Copies of each partition, as the groups stand (fewer than asked while the cluster has
    /// fewer nodes).
    pub fn replicas(&self) -> usize {
        self.groups.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Copies of each partition asked for (`--replicas`).
    pub fn replicas_wanted(&self) -> usize {
        self.replicas
    }

    /// Every group's id.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        (0..self.groups.len()).map(|g| GroupId(g as u16))
    }

    /// How many groups there are.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The members of `group`, sorted.
    pub fn members(&self, group: GroupId) -> &[NodeId] {
        &self.groups[usize::from(group.0)]
    }

    /// The groups `node` is a member of.
    pub fn groups_of(&self, node: NodeId) -> Vec<GroupId> {
        self.groups()
            .filter(|&g| self.members(g).contains(&node))
            .collect()
    }

    /// The group holding partition `partition`.
    pub fn group_of_partition(&self, partition: usize) -> GroupId {
        self.table[partition]
    }

    /// The group holding `key`.
    pub fn group_of(&self, key: &[u8]) -> GroupId {
        self.table[partition_of(key)]
    }

    /// The partitions `group` holds.
    pub fn partitions_of(&self, group: GroupId) -> impl Iterator<Item = usize> + '_ {
        (0..self.table.len()).filter(move |&p| self.table[p] == group)
    }

    /// How many partitions `node` holds a copy of.
    pub fn share(&self, node: NodeId) -> usize {
        self.groups_of(node)
            .into_iter()
            .map(|g| self.partitions_of(g).count())
            .sum()
    }

    /// The nodes holding partition `partition`.
    pub fn owners(&self, partition: usize) -> &[NodeId] {
        self.members(self.table[partition])
    }

    /// Groups each node is a member of.
    fn loads(&self) -> std::collections::BTreeMap<NodeId, usize> {
        let mut loads: std::collections::BTreeMap<NodeId, usize> =
            self.nodes.iter().map(|&n| (n, 0)).collect();
        for g in &self.groups {
            for n in g {
                *loads.entry(*n).or_default() += 1;
            }
        }
        loads
    }

    /// The next placement, with `node` added: it first fills the groups short of members,
    /// then takes the place of the busiest member of other groups, one at a time, until it
    /// holds its share (`groups * copies / nodes`, rounded down). Only the groups it enters
    /// change, each by one member, so the copies that move are the new node's share. An
    /// error if `node` is already a member.
    pub fn add_node(&self, node: NodeId) -> Result<Placement, String> {
        if self.nodes.contains(&node) {
            return Err(format!("node {} is already a member", node.0));
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.nodes.push(node);
        next.nodes.sort();
        let m = next.nodes.len();
        let n = next.replicas.min(m);
        for g in next.groups.iter_mut() {
            if g.len() < n {
                g.push(node);
                g.sort();
            }
        }
        let share = next.groups.len() * n / m;
        loop {
            let loads = next.loads();
            if loads[&node] >= share {
                break;
            }
            // The group whose busiest member is the busiest (the lowest group on a tie).
            let best = next
                .groups
                .iter()
                .enumerate()
                .filter(|(_, g)| !g.contains(&node))
                .filter_map(|(i, g)| {
                    let busiest = g.iter().max_by_key(|m| (loads[*m], **m))?;
                    Some((loads[busiest], std::cmp::Reverse(i), *busiest))
                })
                .max();
            match best {
                Some((load, std::cmp::Reverse(i), busiest)) if load > loads[&node] + 1 => {
                    let g = &mut next.groups[i];
                    g.retain(|&x| x != busiest);
                    g.push(node);
                    g.sort();
                }
                _ => break,
            }
        }
        Ok(next)
    }

    /// The next placement, without `node`: in each group it was in, the least busy node not
    /// in that group takes its place (the lowest id on a tie), while there are enough nodes.
    /// An error if `node` is not a member, or is the last one.
    pub fn remove_node(&self, node: NodeId) -> Result<Placement, String> {
        if !self.nodes.contains(&node) {
            return Err(format!("node {} is not a member", node.0));
        }
        if self.nodes.len() == 1 {
            return Err("the last node of a cluster cannot be removed".into());
        }
        let mut next = self.clone();
        next.epoch += 1;
        next.nodes.retain(|&x| x != node);
        let n = next.replicas.min(next.nodes.len());
        for i in 0..next.groups.len() {
            if !next.groups[i].contains(&node) {
                continue;
            }
            next.groups[i].retain(|&x| x != node);
            if next.groups[i].len() < n {
                let loads = next.loads();
                let group = &next.groups[i];
                let pick = next
                    .nodes
                    .iter()
                    .filter(|c| !group.contains(c))
                    .min_by_key(|c| (loads[*c], **c))
                    .copied();
                if let Some(pick) = pick {
                    next.groups[i].push(pick);
                    next.groups[i].sort();
                }
            }
        }
        next.even_out();
        Ok(next)
    }

    /// Moves a copy from a busiest node to a least busy one while their loads differ by more
    /// than 2 (a removal can leave the least busy nodes already in the groups that lost a
    /// member): each step is one more group's copy to move, so only as many as it takes.
    fn even_out(&mut self) {
        loop {
            let loads = self.loads();
            let Some((&lo_node, &lo)) = loads.iter().min_by_key(|(n, l)| (**l, **n)) else {
                return;
            };
            let hi = loads.values().copied().max().unwrap_or(0);
            if hi <= lo + 2 {
                return;
            }
            let found = self
                .groups
                .iter()
                .position(|g| !g.contains(&lo_node) && g.iter().any(|m| loads[m] == hi));
            let Some(i) = found else { return };
            let busiest = *self.groups[i]
                .iter()
                .filter(|m| loads[*m] == hi)
                .max()
                .expect("a busiest member");
            let g = &mut self.groups[i];
            g.retain(|&x| x != busiest);
            g.push(lo_node);
            g.sort();
        }
    }
}

/// Deals `partitions` partitions to `groups` groups: the group of each partition. Every
/// group gets `partitions / groups` of them, or one more; the table for `groups` differs from
/// the one for `groups - 1` only in the partitions the last group took, one at a time from
/// whichever group held the most (the lowest such group on a tie), its highest-numbered one.
pub fn assign(partitions: usize, groups: usize) -> Vec<usize> {
    let mut table = vec![0; partitions];
    let mut held: Vec<Vec<usize>> = vec![(0..partitions).collect()];
    for new in 1..groups {
        let share = partitions / (new + 1);
        let mut taken = Vec::with_capacity(share);
        for _ in 0..share {
            let fullest = (0..held.len())
                .max_by_key(|&g| (held[g].len(), std::cmp::Reverse(g)))
                .expect("at least one group");
            let p = held[fullest]
                .pop()
                .expect("the fullest group holds a partition");
            taken.push(p);
        }
        taken.sort_unstable();
        for &p in &taken {
            table[p] = new;
        }
        held.push(taken);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(m: u16) -> Vec<NodeId> {
        (1..=m).map(NodeId).collect()
    }

    #[test]
    fn every_group_holds_its_share_and_every_node_within_a_tenth_of_the_mean() {
        for m in 1..=32u16 {
            for n in 1..=usize::from(m).min(5) {
                let placement = Placement::new(&ids(m), n);
                let groups = placement.groups().count();
                for g in placement.groups() {
                    let held = placement.partitions_of(g).count();
                    assert!(
                        held == PARTITIONS / groups || held == PARTITIONS / groups + 1,
                        "m={m} n={n}: group {g:?} holds {held}"
                    );
                    assert_eq!(placement.members(g).len(), n);
                }
                let mean = (PARTITIONS * n) as f64 / f64::from(m);
                for &node in placement.nodes() {
                    let share = placement.share(node) as f64;
                    assert!(
                        share <= 1.1 * mean,
                        "m={m} n={n}: node {node:?} holds {share}, mean {mean}"
                    );
                }
            }
        }
    }

    #[test]
    fn groups_are_windows_on_the_ring_and_each_node_is_in_n_of_them() {
        let placement = Placement::new(&[NodeId(5), NodeId(1), NodeId(3), NodeId(9)], 3);
        assert_eq!(
            placement.nodes(),
            &[NodeId(1), NodeId(3), NodeId(5), NodeId(9)]
        );
        assert_eq!(
            placement.members(GroupId(0)),
            &[NodeId(1), NodeId(3), NodeId(5)]
        );
        assert_eq!(
            placement.members(GroupId(3)),
            &[NodeId(1), NodeId(3), NodeId(9)]
        );
        for &node in placement.nodes() {
            assert_eq!(placement.groups_of(node).len(), 3);
        }
        // Full replication is one group of every node.
        let full = Placement::new(&ids(3), 3);
        assert_eq!(full.groups().count(), 1);
        assert!((0..PARTITIONS).all(|p| full.owners(p) == ids(3)));
        // More replicas than nodes means every node holds everything.
        assert_eq!(Placement::new(&ids(2), 5).replicas(), 2);
    }

    /// Growing from M to M + 1 nodes (the new one with the highest id) moves `1 / (M + 1)` of
    /// the partitions to another group, each with all its copies, and nothing else between
    /// groups; the copies that change hands, counting the groups that swap a member for the
    /// new node, are within twice the new node's ideal share.
    #[test]
    fn adding_a_node_moves_its_share_of_partitions() {
        for n in 1..=5usize {
            for m in (n as u16 + 1)..=16 {
                let before = Placement::new(&ids(m), n);
                let after = Placement::new(&ids(m + 1), n);
                let moved = (0..PARTITIONS)
                    .filter(|&p| before.group_of_partition(p) != after.group_of_partition(p))
                    .count();
                assert_eq!(moved, PARTITIONS / (usize::from(m) + 1), "m={m} n={n}");
                let new_copies: usize = (0..PARTITIONS)
                    .map(|p| {
                        let old = before.owners(p);
                        after.owners(p).iter().filter(|o| !old.contains(o)).count()
                    })
                    .sum();
                let ideal = (PARTITIONS * n) as f64 / f64::from(m + 1);
                let ratio = new_copies as f64 / ideal;
                assert!(
                    (0.99..=2.0).contains(&ratio),
                    "m={m} n={n}: {new_copies} copies moved, {ratio:.2}x the ideal {ideal:.0}"
                );
            }
        }
    }

    /// The loads (groups per node) of a placement, checked: every group has
    /// `min(replicas, nodes)` distinct members, all of them nodes of the placement.
    fn checked_loads(p: &Placement) -> Vec<usize> {
        let n = p.replicas_wanted().min(p.nodes().len());
        for g in p.groups() {
            let members = p.members(g);
            assert_eq!(members.len(), n, "{g:?} of {p:?}");
            assert!(members.windows(2).all(|w| w[0] < w[1]), "{g:?} of {p:?}");
            assert!(members.iter().all(|m| p.nodes().contains(m)));
        }
        p.nodes().iter().map(|&m| p.groups_of(m).len()).collect()
    }

    /// Growing one node at a time from 1 to 8 and shrinking back to 2: every step is a new
    /// epoch, the groups keep their partitions, a joining node enters only whole groups (each
    /// of which changes by that one member), and the nodes' loads stay within 2 of each other.
    #[test]
    fn nodes_join_and_leave_one_at_a_time() {
        for groups in [1, 6, 12, 16] {
            for replicas in 1..=4 {
                let mut p = Placement::with_groups(&ids(1), replicas, groups);
                let table: Vec<GroupId> =
                    (0..PARTITIONS).map(|i| p.group_of_partition(i)).collect();
                for m in 2..=8u16 {
                    let next = p.add_node(NodeId(m)).unwrap();
                    assert_eq!(next.epoch(), p.epoch() + 1);
                    for g in p.groups() {
                        let (old, new) = (p.members(g), next.members(g));
                        let gone: Vec<_> = old.iter().filter(|x| !new.contains(x)).collect();
                        let came: Vec<_> = new.iter().filter(|x| !old.contains(x)).collect();
                        assert!(came.is_empty() || came == [&NodeId(m)], "{came:?}");
                        assert!(gone.len() <= 1);
                    }
                    let loads = checked_loads(&next);
                    let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                    assert!(
                        hi - lo <= 2,
                        "g={groups} n={replicas} m={m}: loads {loads:?}"
                    );
                    p = next;
                }
                assert!(p.add_node(NodeId(3)).is_err());
                for m in (3..=8u16).rev() {
                    let next = p.remove_node(NodeId(m)).unwrap();
                    assert!(next.groups_of(NodeId(m)).is_empty());
                    let loads = checked_loads(&next);
                    let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
                    assert!(
                        hi - lo <= 2,
                        "g={groups} n={replicas} down to {m}: {loads:?}"
                    );
                    p = next;
                }
                let later: Vec<GroupId> =
                    (0..PARTITIONS).map(|i| p.group_of_partition(i)).collect();
                assert_eq!(table, later, "groups never change their partitions");
                assert!(p.remove_node(NodeId(9)).is_err());
                let last = p.remove_node(NodeId(2)).unwrap();
                assert!(last.remove_node(NodeId(1)).is_err(), "the last node stays");
            }
        }
    }

    /// A 3-node cluster of 12 groups and 3 replicas grown to 4: the new node takes 9 groups'
    /// copies, exactly its share (each node then holds 9 of the 12).
    #[test]
    fn a_fourth_node_takes_exactly_its_share() {
        let p = Placement::with_groups(&ids(3), 3, 12);
        let next = p.add_node(NodeId(4)).unwrap();
        assert_eq!(checked_loads(&next), vec![9, 9, 9, 9]);
    }

    #[test]
    fn the_version_names_the_nodes_and_replicas() {
        let a = Placement::new(&ids(6), 3);
        assert_eq!(
            a.version(),
            Placement::new(
                &[
                    NodeId(6),
                    NodeId(1),
                    NodeId(2),
                    NodeId(3),
                    NodeId(4),
                    NodeId(5)
                ],
                3
            )
            .version()
        );
        assert_ne!(a.version(), Placement::new(&ids(6), 2).version());
        assert_ne!(a.version(), Placement::new(&ids(7), 3).version());
    }

    #[test]
    fn keys_spread_over_every_partition_and_the_hash_is_stable() {
        let mut seen = vec![0usize; PARTITIONS];
        for i in 0..100_000 {
            seen[partition_of(format!("key:{i}").as_bytes())] += 1;
        }
        let (min, max) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        assert!(
            *min > 50 && *max < 160,
            "partitions hold {min}..{max} of 100,000 keys"
        );
        // Pinned: a change moves every key, which a cluster of mixed builds cannot survive.
        assert_eq!(partition_of(b"foo"), 0xaf85_ea55 % PARTITIONS);
    }
}
