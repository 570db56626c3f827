//! The key space: `count` keys named `<prefix><index>`, and how requests pick among them.
//!
//! Uniform picks every index equally. Zipfian picks index `i` with probability proportional to
//! `1 / (i + 1)^theta` (rand_distr's `Zipf`, rejection-sampled), so index 0 is the hottest key:
//! theta 0.99 is YCSB's default skew. Hot keys are the low indices, not scattered; servers hash
//! keys, so where they land does not depend on their names.
//!
//! A key space may keep only some of its names ([`KeySpace::filtered`]): with
//! `--keys-held-by`/`--keys-not-held-by`, the keys a given node of a sharded tailorkv cluster
//! holds a copy of, or does not ([`Owners`]). The kept names are numbered 0.. in order, so
//! preload, the mix and the ledger see a smaller key space of the same shape.

use std::io::Write;

use clap::ValueEnum;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use tailorkv_common::NodeId;
use tailorkv_controlet::placement::{partition_of, Placement};

/// How requests pick keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyDist {
    Uniform,
    Zipfian,
}

impl KeyDist {
    /// The name the command line and the report use.
    pub fn name(self) -> &'static str {
        match self {
            KeyDist::Uniform => "uniform",
            KeyDist::Zipfian => "zipfian",
        }
    }
}

/// The keys of a run.
#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: String,
    count: u64,
    zipf: Option<Zipf<f64>>,
    /// With a filter: the number in each kept key's name, by index.
    names: Option<Vec<u64>>,
}

impl KeySpace {
    /// `count >= 1` keys; `theta >= 0` is used for [`KeyDist::Zipfian`] only.
    pub fn new(prefix: &str, count: u64, dist: KeyDist, theta: f64) -> Result<Self, String> {
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipfian => {
                Some(Zipf::new(count as f64, theta).map_err(|e| format!("zipfian keys: {e}"))?)
            }
        };
        Ok(KeySpace {
            prefix: prefix.to_string(),
            count,
            zipf,
            names: None,
        })
    }

    /// The keys of [`KeySpace::new`] that `keep` accepts (by name), indexed 0.. in the order
    /// of their names' numbers; the distribution is over the kept keys.
    pub fn filtered(
        prefix: &str,
        count: u64,
        dist: KeyDist,
        theta: f64,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Result<Self, String> {
        let all = KeySpace::new(prefix, count, KeyDist::Uniform, 0.0)?;
        let mut name = Vec::new();
        let names: Vec<u64> = (0..count)
            .filter(|&i| {
                name.clear();
                all.write_key(i, &mut name);
                keep(&name)
            })
            .collect();
        if names.is_empty() {
            return Err(format!("the filter keeps none of the {count} keys"));
        }
        let mut space = KeySpace::new(prefix, names.len() as u64, dist, theta)?;
        space.names = Some(names);
        Ok(space)
    }

    /// How many keys there are.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// A key index, drawn from the distribution.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match &self.zipf {
            None => rng.random_range(0..self.count),
            // Zipf draws ranks 1..=count as floats.
            Some(zipf) => (zipf.sample(rng) as u64).clamp(1, self.count) - 1,
        }
    }

    /// Appends the name of key `index`.
    pub fn write_key(&self, index: u64, out: &mut Vec<u8>) {
        let number = match &self.names {
            None => index,
            Some(names) => names[index as usize],
        };
        out.extend_from_slice(self.prefix.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{number}");
    }

    /// The name of key `index`.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_key(index, &mut out);
        out
    }
}

/// The keys a node of a sharded tailorkv cluster holds a copy of (`held`), or does not: the
/// cluster's placement computed as its nodes compute it, from the member ids alone.
#[derive(Clone, Debug)]
pub struct Owners {
    placement: Placement,
    node: NodeId,
    held: bool,
}

impl Owners {
    /// For node `node` of a cluster of nodes `1..=nodes` with `replicas` copies of each key.
    pub fn new(nodes: u16, replicas: usize, node: u16, held: bool) -> Result<Self, String> {
        if !(1..=nodes).contains(&node) {
            return Err(format!("node {node} is not one of the nodes 1..={nodes}"));
        }
        let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
        Ok(Owners {
            placement: Placement::new(&ids, replicas),
            node: NodeId(node),
            held,
        })
    }

    /// Whether the filter keeps `key`.
    pub fn keeps(&self, key: &[u8]) -> bool {
        let owners = self.placement.owners(partition_of(key));
        owners.contains(&self.node) == self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn counts(space: &KeySpace, draws: usize) -> Vec<u64> {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = vec![0; space.count() as usize];
        for _ in 0..draws {
            counts[space.sample(&mut rng) as usize] += 1;
        }
        counts
    }

    #[test]
    fn keys_are_prefix_and_index() {
        let space = KeySpace::new("lg:", 10, KeyDist::Uniform, 0.0).unwrap();
        assert_eq!(space.key(7), b"lg:7");
    }

    #[test]
    fn uniform_covers_the_space_evenly() {
        let space = KeySpace::new("k", 10, KeyDist::Uniform, 0.0).unwrap();
        let counts = counts(&space, 100_000);
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn zipfian_stays_in_range_and_favours_low_indices() {
        let space = KeySpace::new("k", 1000, KeyDist::Zipfian, 0.99).unwrap();
        let counts = counts(&space, 100_000);
        assert_eq!(counts.iter().sum::<u64>(), 100_000);
        // Rank 1 is drawn about twice as often as rank 2, and far more than the tail.
        assert!(counts[0] > counts[1] * 3 / 2, "{:?}", &counts[..4]);
        assert!(counts[0] > 50 * counts[999].max(1));
    }

    #[test]
    fn an_owner_filter_keeps_the_keys_a_node_holds_or_the_others() {
        let held = Owners::new(6, 3, 1, true).unwrap();
        let not_held = Owners::new(6, 3, 1, false).unwrap();
        let kept = KeySpace::filtered("k", 1000, KeyDist::Uniform, 0.0, |k| held.keeps(k)).unwrap();
        let rest =
            KeySpace::filtered("k", 1000, KeyDist::Uniform, 0.0, |k| not_held.keeps(k)).unwrap();
        // Node 1 is in 3 of the 6 groups: it holds about half the keys.
        assert_eq!(kept.count() + rest.count(), 1000);
        assert!((400..600).contains(&kept.count()), "{}", kept.count());
        let ids: Vec<NodeId> = (1..=6).map(NodeId).collect();
        let placement = Placement::new(&ids, 3);
        let holds = |key: &[u8]| placement.owners(partition_of(key)).contains(&NodeId(1));
        let mut names = Vec::new();
        for i in 0..kept.count() {
            assert!(holds(&kept.key(i)));
            names.push(kept.key(i));
        }
        for i in 0..rest.count() {
            assert!(!holds(&rest.key(i)));
            names.push(rest.key(i));
        }
        // Every key of the range lands in exactly one of the two, under its own name.
        names.sort();
        let mut all: Vec<Vec<u8>> = (0..1000).map(|i| format!("k{i}").into_bytes()).collect();
        all.sort();
        assert_eq!(names, all);
        // Indices stay dense, in the order of the names' numbers.
        let mut rng = SmallRng::seed_from_u64(3);
        assert!((0..1000).all(|_| kept.sample(&mut rng) < kept.count()));
        let first = (0..1000)
            .map(|i| format!("k{i}").into_bytes())
            .find(|k| holds(k));
        assert_eq!(Some(kept.key(0)), first);
    }

    #[test]
    fn an_owner_filter_refuses_a_node_outside_the_cluster_and_an_empty_result() {
        assert!(Owners::new(6, 3, 7, true).is_err());
        assert!(Owners::new(6, 3, 0, true).is_err());
        // With every node holding every key, none is "not held".
        let everything = Owners::new(3, 3, 2, false).unwrap();
        assert!(
            KeySpace::filtered("k", 100, KeyDist::Uniform, 0.0, |k| everything.keeps(k)).is_err()
        );
    }

    #[test]
    fn a_negative_theta_is_refused() {
        assert!(KeySpace::new("k", 10, KeyDist::Zipfian, -1.0).is_err());
    }
}
