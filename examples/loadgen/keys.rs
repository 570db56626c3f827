//! The key space: `count` keys named `<prefix><index>`, and how requests pick among them.
//!
//! Uniform picks every index equally. Zipfian picks index `i` with probability proportional to
//! `1 / (i + 1)^theta` (rand_distr's `Zipf`, rejection-sampled), so index 0 is the hottest key:
//! theta 0.99 is YCSB's default skew. Hot keys are the low indices, not scattered; servers hash
//! keys, so where they land does not depend on their names.

use std::io::Write;

use clap::ValueEnum;
use rand::{Rng, RngExt};
use rand_distr::{Distribution, Zipf};
use serde::Serialize;

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
        })
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
        out.extend_from_slice(self.prefix.as_bytes());
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{index}");
    }

    /// The name of key `index`.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_key(index, &mut out);
        out
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
    fn a_negative_theta_is_refused() {
        assert!(KeySpace::new("k", 10, KeyDist::Zipfian, -1.0).is_err());
    }
}
