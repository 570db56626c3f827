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

/// Where every key lives in one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The nodes, sorted by id.
    nodes: Vec<NodeId>,
    /// Each group's members, by group id.
    groups: Vec<Vec<NodeId>>,
    /// Each partition's group.
    table: Vec<GroupId>,
}

impl Placement {
    /// The placement of `nodes` (any order, no repeats) with `replicas` copies of each
    /// partition (clamped to 1..=nodes).
    pub fn new(nodes: &[NodeId], replicas: usize) -> Self {
        let mut nodes = nodes.to_vec();
        nodes.sort();
        nodes.dedup();
        assert!(!nodes.is_empty(), "a placement needs a node");
        let m = nodes.len();
        let n = replicas.clamp(1, m);
        let count = if n == m { 1 } else { m };
        let groups = (0..count)
            .map(|start| (0..n).map(|i| nodes[(start + i) % m]).collect())
            .collect();
        let table = assign(PARTITIONS, count)
            .into_iter()
            .map(|g| GroupId(g as u16))
            .collect();
        Placement {
            nodes,
            groups,
            table,
        }
    }

    /// The placement's version: a digest of what it is derived from (the nodes, the replicas
    /// and the partition count), the same on every node that computes the same placement.
    pub fn version(&self) -> u64 {
        let nodes: Vec<u8> = self.nodes.iter().flat_map(|n| n.0.to_le_bytes()).collect();
        let replicas = (self.replicas() as u64).to_le_bytes();
        let partitions = (self.table.len() as u64).to_le_bytes();
        tailorkv_common::hash::hash_parts([&nodes[..], &replicas[..], &partitions[..]])
    }

    /// The nodes, sorted by id.
    pub fn nodes(&self) -> &[NodeId] {
        &self.nodes
    }

    /// Copies of each partition.
    pub fn replicas(&self) -> usize {
        self.groups[0].len()
    }

    /// Every group's id.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        (0..self.groups.len()).map(|g| GroupId(g as u16))
    }

    /// The members of `group`.
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
            &[NodeId(9), NodeId(1), NodeId(3)]
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
