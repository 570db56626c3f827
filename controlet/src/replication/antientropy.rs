//! Anti-entropy, sans-IO: digests of a replica's keys in hashed ranges, and what two replicas
//! must send each other to agree, so that repair traffic scales with the difference between
//! them, not with the data.
//!
//! # The digest
//!
//! A replica's state is a set of [`Entry`]s: per key, the version of its live item or of its
//! tombstone, whichever is higher (a tombstone wins a tie). The key space is split into
//! [`BUCKETS`] = 1024 buckets by a stable hash of the key (FNV-1a 64 with a final avalanche
//! step: the same in every process, unlike std's `DefaultHasher`). A bucket's hash is the XOR
//! of its entries' hashes, each a 64-bit hash of (key, version, tombstone), so it does not
//! depend on the order entries are listed in. The buckets form a two-level tree: [`RANGES`] =
//! 32 ranges of [`BUCKETS_PER_RANGE`] = 32 consecutive buckets, each range's hash the XOR of its
//! buckets'. Two replicas holding the same entries have the same digest; a replica that
//! differs in one entry differs in exactly one bucket (and one range), except with
//! probability about 2^-64 per differing bucket.
//!
//! An item that its key's tombstone supersedes does not show in the digest, so no exchange
//! can find it: the replica holding one must remove it itself (the eventual mode does as it
//! takes the snapshot), or it serves an item that its digest, like every other replica's,
//! calls deleted.
//!
//! # The exchange
//!
//! With a [`Snapshot`] of its entries each, replica A and replica B agree in at most four
//! steps, each a function here (the messages carrying them are the caller's):
//!
//! 1. A sends its [`Snapshot::summary`]: the 32 range hashes (256 bytes).
//! 2. B answers with [`Snapshot::range_hashes`] of the [`Snapshot::differing_ranges`]: 32
//!    bucket hashes per range that differs (nothing when they agree: the round ends there).
//! 3. A finds the [`Snapshot::differing_buckets`] and sends [`Snapshot::entries_in`] them:
//!    keys and versions, no values.
//! 4. B [`Snapshot::reconcile`]s them with its own: it sends the entries it holds at a higher
//!    version or that A lacks (values and all, read from its store), and asks A for the keys
//!    A holds at a higher version or that B lacks; A sends those.
//!
//! Receivers apply what they get with the usual rule, keeping the higher version, so an
//! exchange with a snapshot that is a moment stale costs a little extra traffic at worst.
//! The hashes are not cryptographic: peers are trusted.

use std::collections::HashMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::Version;

/// Top-level ranges of the digest.
pub const RANGES: usize = 32;
/// Buckets in each range.
pub const BUCKETS_PER_RANGE: usize = 32;
/// Buckets the key space is split into.
pub const BUCKETS: usize = RANGES * BUCKETS_PER_RANGE;

/// What a replica holds for one key: the version of its item, or of its tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    pub key: Bytes,
    pub version: Version,
    pub tombstone: bool,
}

impl Entry {
    /// Whether this entry wins over `other` for the same key: the higher version, and the
    /// tombstone when the versions are equal.
    pub fn supersedes(&self, other: &Entry) -> bool {
        (self.version, self.tombstone) > (other.version, other.tombstone)
    }

    /// The entry's hash in its bucket.
    pub fn hash(&self) -> u64 {
        tailorkv_common::hash::hash_parts([
            &self.key[..],
            &self.version.ts.to_le_bytes(),
            &self.version.node.0.to_le_bytes(),
            &[u8::from(self.tombstone)],
        ])
    }
}

/// The bucket `key` falls in: the same in every process and on every platform.
pub fn bucket_of(key: &[u8]) -> usize {
    (tailorkv_common::hash::key_hash(key) % BUCKETS as u64) as usize
}

/// The range a bucket belongs to.
pub fn range_of(bucket: usize) -> usize {
    bucket / BUCKETS_PER_RANGE
}

/// A replica's entries, by bucket, with the digest over them.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Per bucket: the XOR of its entries' hashes.
    hashes: Vec<u64>,
    /// Per bucket: its entries, sorted by key.
    buckets: Vec<Vec<Entry>>,
    len: usize,
}

/// What reconciling a peer's entries with ours calls for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Our entries the peer lacks or holds at a lower version: send it these.
    pub send: Vec<Entry>,
    /// Keys the peer holds at a higher version, or that we lack: ask it for these.
    pub want: Vec<Bytes>,
}

impl Snapshot {
    /// The snapshot of `entries`, in any order. Of several entries for one key, the one that
    /// [supersedes](Entry::supersedes) the others counts.
    pub fn new(entries: impl IntoIterator<Item = Entry>) -> Self {
        let mut buckets: Vec<Vec<Entry>> = vec![Vec::new(); BUCKETS];
        for entry in entries {
            buckets[bucket_of(&entry.key)].push(entry);
        }
        let mut hashes = vec![0u64; BUCKETS];
        let mut len = 0;
        for (bucket, hash) in buckets.iter_mut().zip(&mut hashes) {
            // By key, the superseding entry first; then only the first of each key stays.
            bucket.sort_unstable_by(|a, b| {
                a.key
                    .cmp(&b.key)
                    .then_with(|| (b.version, b.tombstone).cmp(&(a.version, a.tombstone)))
            });
            bucket.dedup_by(|later, first| later.key == first.key);
            *hash = bucket.iter().fold(0, |acc, e| acc ^ e.hash());
            len += bucket.len();
        }
        Snapshot {
            hashes,
            buckets,
            len,
        }
    }

    /// How many keys the snapshot holds entries for.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entry for `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&Entry> {
        let bucket = &self.buckets[bucket_of(key)];
        bucket
            .binary_search_by(|e| e.key.as_ref().cmp(key))
            .ok()
            .map(|i| &bucket[i])
    }

    /// Step 1: the hash of every range.
    pub fn summary(&self) -> Vec<u64> {
        self.hashes
            .chunks(BUCKETS_PER_RANGE)
            .map(|range| range.iter().fold(0, |acc, h| acc ^ h))
            .collect()
    }

    /// The ranges whose hash differs from the peer's `summary`. A summary of the wrong shape
    /// differs everywhere.
    pub fn differing_ranges(&self, summary: &[u64]) -> Vec<u16> {
        let mine = self.summary();
        (0..RANGES)
            .filter(|&r| summary.len() != RANGES || summary[r] != mine[r])
            .map(|r| r as u16)
            .collect()
    }

    /// Step 2: the bucket hashes of each of `ranges`.
    pub fn range_hashes(&self, ranges: &[u16]) -> Vec<(u16, Vec<u64>)> {
        ranges
            .iter()
            .filter(|&&r| usize::from(r) < RANGES)
            .map(|&r| {
                let start = usize::from(r) * BUCKETS_PER_RANGE;
                (r, self.hashes[start..start + BUCKETS_PER_RANGE].to_vec())
            })
            .collect()
    }

    /// Step 3: the buckets whose hash differs from the peer's, given its hashes per range.
    pub fn differing_buckets(&self, theirs: &[(u16, Vec<u64>)]) -> Vec<u16> {
        let mut differing = Vec::new();
        for (range, hashes) in theirs {
            let range = usize::from(*range);
            if range >= RANGES {
                continue;
            }
            let start = range * BUCKETS_PER_RANGE;
            for i in 0..BUCKETS_PER_RANGE {
                if hashes.get(i) != Some(&self.hashes[start + i]) {
                    differing.push((start + i) as u16);
                }
            }
        }
        differing
    }

    /// Step 3: our entries in each of `buckets` (keys and versions), empty buckets included.
    pub fn entries_in(&self, buckets: &[u16]) -> Vec<(u16, Vec<Entry>)> {
        buckets
            .iter()
            .filter(|&&b| usize::from(b) < BUCKETS)
            .map(|&b| (b, self.buckets[usize::from(b)].clone()))
            .collect()
    }

    /// Step 4: compares the peer's entries of some buckets with ours.
    pub fn reconcile(&self, theirs: &[(u16, Vec<Entry>)]) -> Reconciled {
        let mut out = Reconciled::default();
        for (bucket, their_entries) in theirs {
            let Some(mine) = self.buckets.get(usize::from(*bucket)) else {
                continue;
            };
            let their_map: HashMap<&Bytes, &Entry> =
                their_entries.iter().map(|e| (&e.key, e)).collect();
            for entry in mine {
                match their_map.get(&entry.key) {
                    Some(their) if !entry.supersedes(their) => {}
                    _ => out.send.push(entry.clone()),
                }
            }
            for their in their_entries {
                match self.get(&their.key) {
                    Some(entry) if !their.supersedes(entry) => {}
                    _ => out.want.push(their.key.clone()),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};
    use tailorkv_common::NodeId;

    use super::*;

    fn entry(key: &str, ts: u64, tombstone: bool) -> Entry {
        Entry {
            key: Bytes::from(key.to_string()),
            version: Version::new(ts, NodeId(1)),
            tombstone,
        }
    }

    fn many(n: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| entry(&format!("key-{i}"), i as u64 + 1, i % 7 == 0))
            .collect()
    }

    /// A replica in the simulation: per key, its entry; applying keeps the superseding one.
    #[derive(Clone, Debug, Default, PartialEq, Eq)]
    struct Replica {
        entries: BTreeMap<Bytes, Entry>,
    }

    impl Replica {
        fn apply(&mut self, entry: Entry) {
            match self.entries.get(&entry.key) {
                Some(held) if !entry.supersedes(held) => {}
                _ => {
                    self.entries.insert(entry.key.clone(), entry);
                }
            }
        }

        fn snapshot(&self) -> Snapshot {
            Snapshot::new(self.entries.values().cloned())
        }
    }

    /// One anti-entropy round from `a` to `b`, through the four steps; returns the entries
    /// sent (with values, in a real exchange) both ways.
    fn round(a: &mut Replica, b: &mut Replica) -> usize {
        let (sa, sb) = (a.snapshot(), b.snapshot());
        let ranges = sb.differing_ranges(&sa.summary());
        if ranges.is_empty() {
            return 0;
        }
        let buckets = sa.differing_buckets(&sb.range_hashes(&ranges));
        let reconciled = sb.reconcile(&sa.entries_in(&buckets));
        let mut sent = 0;
        for e in reconciled.send {
            let e = b.entries[&e.key].clone();
            a.apply(e);
            sent += 1;
        }
        for key in reconciled.want {
            if let Some(e) = a.entries.get(&key).cloned() {
                b.apply(e);
                sent += 1;
            }
        }
        sent
    }

    #[test]
    fn equal_sets_have_equal_digests_whatever_the_order() {
        let entries = many(5000);
        let mut shuffled = entries.clone();
        shuffled.reverse();
        shuffled.swap(3, 4000);
        let (a, b) = (Snapshot::new(entries), Snapshot::new(shuffled));
        assert_eq!(a.summary(), b.summary());
        assert!(a.differing_ranges(&b.summary()).is_empty());
        assert_eq!(a.len(), 5000);
        // Superseded duplicates do not count.
        let mut with_old = many(5000);
        with_old.push(entry("key-10", 1, false));
        assert_eq!(Snapshot::new(with_old).summary(), a.summary());
    }

    #[test]
    fn the_bucket_hash_is_stable_across_processes() {
        // Fixed values: a change here would make replicas of different builds disagree.
        assert_eq!(bucket_of(b""), bucket_of(b""));
        let spread: std::collections::HashSet<usize> = (0..10_000)
            .map(|i| bucket_of(format!("k{i}").as_bytes()))
            .collect();
        assert_eq!(spread.len(), BUCKETS, "10,000 keys reach every bucket");
    }

    #[test]
    fn one_differing_entry_makes_exactly_one_differing_bucket() {
        let entries = many(10_000);
        for (i, change) in [
            |e: &mut Entry| e.version.ts += 1,
            |e: &mut Entry| e.tombstone = !e.tombstone,
            |e: &mut Entry| e.version.node = NodeId(9),
        ]
        .iter()
        .enumerate()
        {
            let mut other = entries.clone();
            change(&mut other[1234]);
            let (a, b) = (Snapshot::new(entries.clone()), Snapshot::new(other));
            let ranges = a.differing_ranges(&b.summary());
            assert_eq!(ranges.len(), 1, "change {i}");
            let buckets = b.differing_buckets(&a.range_hashes(&ranges));
            assert_eq!(
                buckets,
                vec![bucket_of(&entries[1234].key) as u16],
                "change {i}"
            );
        }
        // A missing entry too.
        let mut fewer = entries.clone();
        let gone = fewer.remove(77);
        let (a, b) = (Snapshot::new(entries), Snapshot::new(fewer));
        let buckets = b.differing_buckets(&a.range_hashes(&a.differing_ranges(&b.summary())));
        assert_eq!(buckets, vec![bucket_of(&gone.key) as u16]);
    }

    #[test]
    fn reconcile_sends_what_the_peer_lacks_or_holds_older_and_asks_for_the_rest() {
        let mine = Snapshot::new([
            entry("same", 5, false),
            entry("only-mine", 3, false),
            entry("mine-newer", 9, false),
            entry("theirs-newer", 2, false),
            entry("deleted-here", 8, true),
            entry("deleted-there", 4, false),
            entry("tie", 6, false),
        ]);
        let theirs = [
            entry("same", 5, false),
            entry("only-theirs", 1, true),
            entry("mine-newer", 7, false),
            entry("theirs-newer", 3, false),
            entry("deleted-here", 6, false),
            entry("deleted-there", 5, true),
            entry("tie", 6, true),
        ];
        let mut by_bucket: BTreeMap<u16, Vec<Entry>> = BTreeMap::new();
        for e in theirs {
            by_bucket
                .entry(bucket_of(&e.key) as u16)
                .or_default()
                .push(e);
        }
        // Buckets where we hold keys the peer does not list are compared too.
        by_bucket.entry(bucket_of(b"only-mine") as u16).or_default();
        let by_bucket: Vec<_> = by_bucket.into_iter().collect();
        let r = mine.reconcile(&by_bucket);
        let mut send: Vec<_> = r.send.iter().map(|e| e.key.clone()).collect();
        let mut want = r.want.clone();
        send.sort();
        want.sort();
        let keys = |ks: &[&str]| {
            ks.iter()
                .map(|k| Bytes::from(k.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(send, keys(&["deleted-here", "mine-newer", "only-mine"]));
        assert_eq!(
            want,
            keys(&["deleted-there", "only-theirs", "theirs-newer", "tie"])
        );
    }

    #[test]
    fn a_round_repairs_missing_items_lower_versions_and_tombstones() {
        let mut a = Replica::default();
        let mut b = Replica::default();
        for e in many(2000) {
            a.apply(e.clone());
            b.apply(e);
        }
        a.apply(entry("missing-at-b", 5, false)); // an item b lacks
        b.apply(entry("missing-at-a", 6, false)); // an item a lacks
        a.apply(entry("key-1", 100, false)); // b holds key-1 at a lower version
        b.apply(entry("key-2", 100, true)); // a delete a missed
        a.apply(entry("gone", 50, true)); // a tombstone b lacks...
        b.apply(entry("gone", 40, false)); // ...over b's older write, which must not return
        let sent = round(&mut a, &mut b);
        assert_eq!(a, b);
        assert_eq!(sent, 5);
        assert!(a.entries[&Bytes::from("gone")].tombstone);
        assert!(b.entries[&Bytes::from("key-2")].tombstone);
        assert_eq!(b.entries[&Bytes::from("key-1")].version.ts, 100);
        assert_eq!(round(&mut a, &mut b), 0, "in sync: nothing more to send");
    }

    #[test]
    fn one_difference_among_10_000_costs_a_constant_handful_of_entries() {
        let entries = many(10_000);
        let a = Snapshot::new(entries.clone());
        let mut other = entries.clone();
        other[4321].version.ts += 1;
        let b = Snapshot::new(other);
        let ranges = b.differing_ranges(&a.summary());
        let bucket_hashes = b.range_hashes(&ranges);
        let buckets = a.differing_buckets(&bucket_hashes);
        let listed = a.entries_in(&buckets);
        let reconciled = b.reconcile(&listed);
        assert_eq!(ranges.len(), 1);
        assert_eq!(
            bucket_hashes.iter().map(|(_, h)| h.len()).sum::<usize>(),
            32
        );
        assert_eq!(buckets.len(), 1);
        let keys_listed: usize = listed.iter().map(|(_, e)| e.len()).sum();
        assert!(
            keys_listed < 40,
            "a bucket holds about 10 of 10,000 keys: {keys_listed}"
        );
        assert_eq!(
            reconciled.send.len(),
            1,
            "only the newer entry travels with its value"
        );
        assert!(reconciled.want.is_empty());
    }

    /// Three replicas take random writes and deletes at random versions; each update reaches
    /// each other replica only when no partition is in the way. Rounds of anti-entropy must
    /// then bring all three to the same state: every key at its highest version, a tombstone
    /// winning over every lower version.
    #[test]
    fn seeded_simulation_converges_after_partitions() {
        let mut diverged = 0;
        for seed in 0..250u64 {
            match simulate(seed) {
                Ok(repaired) => diverged += usize::from(repaired),
                Err(why) => panic!("seed {seed}: {why}"),
            }
        }
        assert!(
            diverged > 200,
            "partitions left replicas apart in {diverged} runs only"
        );
    }

    /// One run; whether the replicas differed before anti-entropy.
    fn simulate(seed: u64) -> Result<bool, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut replicas = vec![Replica::default(); 3];
        let mut expected: HashMap<Bytes, Entry> = HashMap::new();
        let keys = rng.random_range(1..200);
        let writes = rng.random_range(0..600);
        let mut cut = [[false; 3]; 3];
        for ts in 1..=writes {
            if rng.random_range(0..20) == 0 {
                // Change the partition: each link is up or down.
                for (i, row) in cut.iter_mut().enumerate() {
                    for (j, link) in row.iter_mut().enumerate() {
                        *link = i != j && rng.random_range(0..3) == 0;
                    }
                }
            }
            let origin = rng.random_range(0..3usize);
            // Random versions: timestamps need not grow, ties are broken by node.
            let version = Version::new(rng.random_range(1..=ts), NodeId(origin as u16));
            let key = Bytes::from(format!("k{}", rng.random_range(0..keys)));
            let e = Entry {
                key: key.clone(),
                version,
                tombstone: rng.random_range(0..4) == 0,
            };
            match expected.get(&key) {
                Some(held) if !e.supersedes(held) => {}
                _ => {
                    expected.insert(key, e.clone());
                }
            }
            for (to, replica) in replicas.iter_mut().enumerate() {
                if to == origin || (!cut[origin][to] && rng.random_range(0..10) != 0) {
                    replica.apply(e.clone());
                }
            }
        }
        let diverged = replicas.iter().any(|r| r != &replicas[0]);
        let pairs = [(0, 1), (1, 2), (2, 0), (1, 0), (2, 1), (0, 2)];
        for _ in 0..3 {
            let (i, j) = pairs[rng.random_range(0..pairs.len())];
            let (a, b) = two(&mut replicas, i, j);
            round(a, b);
        }
        // Then every pair in turn, as each node does with each peer.
        for &(i, j) in &pairs {
            let (a, b) = two(&mut replicas, i, j);
            round(a, b);
        }
        let expected = Replica {
            entries: expected.into_iter().collect(),
        };
        for (i, replica) in replicas.iter().enumerate() {
            if replica != &expected {
                let wrong = expected
                    .entries
                    .iter()
                    .find(|(k, e)| replica.entries.get(*k) != Some(e))
                    .map(|(k, e)| (k, e, replica.entries.get(k)));
                return Err(format!(
                    "replica {i} differs from the highest versions; first: {wrong:?}"
                ));
            }
        }
        Ok(diverged)
    }

    fn two(replicas: &mut [Replica], i: usize, j: usize) -> (&mut Replica, &mut Replica) {
        assert_ne!(i, j);
        if i < j {
            let (left, right) = replicas.split_at_mut(j);
            (&mut left[i], &mut right[0])
        } else {
            let (left, right) = replicas.split_at_mut(i);
            (&mut right[0], &mut left[j])
        }
    }
}
