//! The searches' memory of where they have been: Lowe's memoization, extended for
//! indeterminate ops.
//!
//! Two points of a search that have linearized the same set of ops and left the register in
//! the same state have the same future, so a search that reaches a (set, state) pair it has
//! seen before need not go on from it. This cache is what makes the WGL search practical: it
//! turns an exploration of orders into one of sets.
//!
//! **Optional ops** (indeterminate ops that may never take effect) get a stronger rule. A
//! point that has linearized the same required ops, reached the same state, but used *more*
//! optional ops has fewer options than one seen before: every continuation open to it is
//! open to the other too (an optional op left unused may simply never happen). So it is
//! pruned too: the memo keeps, per (required set, state), the optional sets seen, and a new
//! point is new only if no optional set seen is a subset of its own. Searches try optional
//! ops last, so the points without them come first and prune those with them. Without this,
//! each indeterminate op still pending could double the states to explore.
//!
//! A set is a bitset over the key's ops. Stored as-is, a set of 2,000 ops costs 256 bytes, and
//! a search may store millions. But required ops are numbered by invocation time, so their
//! sets are a long run of ones and then a few scattered bits; the memo stores them as the
//! number of leading all-ones words and then (index, word) for each non-zero word after those.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::register::StateId;

/// A set of op positions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    pub(crate) fn new(len: usize) -> Self {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub(crate) fn insert(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    pub(crate) fn remove(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    pub(crate) fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
    }

    fn is_subset(&self, other: &Bits) -> bool {
        self.words
            .iter()
            .zip(&other.words)
            .all(|(a, b)| a & !b == 0)
    }

    /// The compact form described in the module docs.
    fn compact(&self) -> Box<[u64]> {
        let lead = self.words.iter().take_while(|&&w| w == u64::MAX).count();
        let mut key = vec![lead as u64];
        for (index, &word) in self.words.iter().enumerate().skip(lead) {
            if word != 0 {
                key.push(index as u64);
                key.push(word);
            }
        }
        key.into_boxed_slice()
    }
}

/// The points a search has visited: (required set, state) and the optional sets seen with it.
#[derive(Default)]
pub(crate) struct Memo {
    seen: HashMap<Key, Vec<Bits>, BuildHasherDefault<WordHasher>>,
}

/// A compact required set and a state.
type Key = (Box<[u64]>, StateId);

/// A fast non-cryptographic hash of words (the multiply-rotate of rustc's FxHasher): the
/// memo hashes a key per search step, and nothing here is adversarial.
#[derive(Default)]
pub(crate) struct WordHasher(u64);

impl WordHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Memo {
    /// Whether a point at least as free as this one was seen.
    pub(crate) fn covers(&self, required: &Bits, optional: &Bits, state: StateId) -> bool {
        self.seen
            .get(&(required.compact(), state))
            .is_some_and(|seen| seen.iter().any(|s| s.is_subset(optional)))
    }

    /// Remembers the point; `false` if a point at least as free was already seen.
    pub(crate) fn insert(&mut self, required: &Bits, optional: &Bits, state: StateId) -> bool {
        let seen = self.seen.entry((required.compact(), state)).or_default();
        if seen.iter().any(|s| s.is_subset(optional)) {
            return false;
        }
        seen.retain(|s| !optional.is_subset(s));
        seen.push(optional.clone());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_sets_compact_equally_and_different_ones_do_not() {
        let mut a = Bits::new(200);
        let mut b = Bits::new(200);
        for i in 0..70 {
            a.insert(i);
            b.insert(69 - i);
        }
        a.insert(150);
        b.insert(150);
        assert_eq!(a.compact(), b.compact());
        b.remove(3);
        assert_ne!(a.compact(), b.compact());
        assert!(a.contains(150) && !b.contains(3));
    }

    #[test]
    fn points_with_more_optional_ops_are_not_new() {
        let required = Bits::new(10);
        let none = Bits::new(3);
        let mut one = Bits::new(3);
        one.insert(1);
        let mut memo = Memo::default();
        assert!(memo.insert(&required, &one, 1));
        assert!(!memo.insert(&required, &one, 1));
        assert!(memo.insert(&required, &one, 2), "another state");
        assert!(memo.insert(&required, &none, 1), "fewer optional ops");
        assert!(!memo.insert(&required, &one, 1));
        assert_eq!(memo.seen[&(required.compact(), 1)], vec![none]);
    }
}
