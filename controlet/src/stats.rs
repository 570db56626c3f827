//! Server-wide counters, as memcached's `stats` reports them.
//!
//! Each connection counts into a plain [`Counts`] and adds it to the shared [`SharedCounts`]
//! once per batch of requests, before the batch's replies are written: a client that has its
//! replies sees counters that include its requests, and the hot path takes no atomic per
//! request.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        /// One connection's counts since it last added them to the shared ones.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct Counts {
            $(pub $name: u64,)*
        }

        /// The server's counts.
        #[derive(Debug, Default)]
        pub struct SharedCounts {
            $($name: AtomicU64,)*
        }

        impl SharedCounts {
            /// Adds `counts` to the shared counts and zeroes them.
            pub fn absorb(&self, counts: &mut Counts) {
                $(if counts.$name != 0 {
                    self.$name.fetch_add(counts.$name, Relaxed);
                })*
                *counts = Counts::default();
            }

            pub fn snapshot(&self) -> Counts {
                Counts { $($name: self.$name.load(Relaxed),)* }
            }

            /// `stats reset`.
            pub fn reset(&self) {
                $(self.$name.store(0, Relaxed);)*
            }
        }
    };
}

counters!(
    cmd_get,
    cmd_set,
    cmd_flush,
    cmd_touch,
    cmd_meta,
    get_hits,
    get_misses,
    delete_misses,
    delete_hits,
    incr_misses,
    incr_hits,
    decr_misses,
    decr_hits,
    cas_misses,
    cas_hits,
    cas_badval,
    touch_hits,
    touch_misses,
    store_too_large,
    store_no_memory,
    bytes_read,
    bytes_written,
    total_connections,
    rejected_connections,
    timed_out_connections,
    auth_cmds,
    auth_errors,
);

/// Upper bounds of the latency buckets, in µs: 50 µs to 5 s, then everything above.
pub const LATENCY_BOUNDS_US: [u64; 14] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    5_000_000,
];
const BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// The kinds of command whose latencies are kept apart: retrievals, stores, and the rest.
pub const LATENCY_KINDS: [&str; 3] = ["get", "set", "other"];

/// One connection's command latencies since it last added them to the shared ones: from a
/// request decoded to its reply made, per kind, in buckets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Latencies {
    pub buckets: [[u64; BUCKETS]; 3],
    pub sum_us: [u64; 3],
}

impl Latencies {
    /// Counts a command of kind `kind` (an index of [`LATENCY_KINDS`]) that took `us`.
    pub fn record(&mut self, kind: usize, us: u64) {
        let bucket = LATENCY_BOUNDS_US.partition_point(|&bound| bound < us);
        self.buckets[kind][bucket] += 1;
        self.sum_us[kind] += us;
    }
}

/// The server's latencies, added to once per batch like [`SharedCounts`].
#[derive(Debug, Default)]
pub struct SharedLatencies {
    buckets: [[AtomicU64; BUCKETS]; 3],
    sum_us: [AtomicU64; 3],
}

impl SharedLatencies {
    /// Adds `latencies` and zeroes them.
    pub fn absorb(&self, latencies: &mut Latencies) {
        for kind in 0..3 {
            for (shared, &n) in self.buckets[kind].iter().zip(&latencies.buckets[kind]) {
                if n != 0 {
                    shared.fetch_add(n, Relaxed);
                }
            }
            if latencies.sum_us[kind] != 0 {
                self.sum_us[kind].fetch_add(latencies.sum_us[kind], Relaxed);
            }
        }
        *latencies = Latencies::default();
    }

    pub fn snapshot(&self) -> Latencies {
        let mut l = Latencies::default();
        for kind in 0..3 {
            for (i, n) in self.buckets[kind].iter().enumerate() {
                l.buckets[kind][i] = n.load(Relaxed);
            }
            l.sum_us[kind] = self.sum_us[kind].load(Relaxed);
        }
        l
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_their_buckets_and_add_up() {
        let mut mine = Latencies::default();
        mine.record(0, 10);
        mine.record(0, 50);
        mine.record(0, 51);
        mine.record(2, 10_000_000);
        assert_eq!(mine.buckets[0][0], 2, "up to 50 µs");
        assert_eq!(mine.buckets[0][1], 1, "51 µs is in the 100 µs bucket");
        assert_eq!(mine.buckets[2][LATENCY_BOUNDS_US.len()], 1, "past 5 s");
        let shared = SharedLatencies::default();
        shared.absorb(&mut mine);
        assert_eq!(mine, Latencies::default());
        let l = shared.snapshot();
        assert_eq!((l.sum_us[0], l.sum_us[2]), (111, 10_000_000));
    }

    #[test]
    fn absorb_adds_and_zeroes() {
        let shared = SharedCounts::default();
        let mut mine = Counts {
            cmd_get: 3,
            get_hits: 2,
            ..Counts::default()
        };
        shared.absorb(&mut mine);
        assert_eq!(mine, Counts::default());
        mine.cmd_get = 1;
        shared.absorb(&mut mine);
        let snap = shared.snapshot();
        assert_eq!((snap.cmd_get, snap.get_hits), (4, 2));
        shared.reset();
        assert_eq!(shared.snapshot(), Counts::default());
    }
}

/// memcached's per-prefix statistics (`stats detail on|off|dump`): while on, each `get`,
/// storage command and `delete` of a key with a prefix (the bytes before its first `:`) is
/// counted under that prefix. Off by default; `stats reset` forgets them.
#[derive(Debug, Default)]
pub struct Prefixes {
    enabled: std::sync::atomic::AtomicBool,
    counts: std::sync::Mutex<std::collections::BTreeMap<Vec<u8>, PrefixCounts>>,
}

/// One prefix's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PrefixCounts {
    gets: u64,
    hits: u64,
    sets: u64,
    deletes: u64,
}

/// What separates a key's prefix from the rest (memcached's default `-D`).
const PREFIX_DELIMITER: u8 = b':';

impl Prefixes {
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Counts a read of `key`, found or not.
    pub fn get(&self, key: &[u8], hit: bool) {
        self.record(key, |c| {
            c.gets += 1;
            c.hits += u64::from(hit);
        });
    }

    /// Counts a storage command of `key`, whatever became of it.
    pub fn set(&self, key: &[u8]) {
        self.record(key, |c| c.sets += 1);
    }

    /// Counts a delete of `key`, found or not.
    pub fn delete(&self, key: &[u8]) {
        self.record(key, |c| c.deletes += 1);
    }

    fn record(&self, key: &[u8], count: impl FnOnce(&mut PrefixCounts)) {
        if !self.enabled() {
            return;
        }
        // As memcached: the prefix ends at the delimiter; a key without one (or with a NUL
        // before it) has none and is not counted.
        let Some(end) = key
            .iter()
            .take_while(|&&b| b != 0)
            .position(|&b| b == PREFIX_DELIMITER)
        else {
            return;
        };
        let mut counts = self.counts.lock().expect("prefix counts");
        count(counts.entry(key[..end].to_vec()).or_default());
    }

    /// `stats detail dump`: `PREFIX <prefix> get <n> hit <n> set <n> del <n>` per prefix, in
    /// byte order, then `END`.
    pub fn dump(&self, out: &mut bytes::BytesMut) {
        use std::fmt::Write as _;
        let counts = self.counts.lock().expect("prefix counts");
        for (prefix, c) in counts.iter() {
            out.extend_from_slice(b"PREFIX ");
            out.extend_from_slice(prefix);
            let _ = write!(
                out,
                " get {} hit {} set {} del {}\r\n",
                c.gets, c.hits, c.sets, c.deletes
            );
        }
        out.extend_from_slice(b"END\r\n");
    }

    /// `stats reset`.
    pub fn clear(&self) {
        self.counts.lock().expect("prefix counts").clear();
    }
}

#[cfg(test)]
mod prefix_tests {
    use super::*;

    fn dumped(p: &Prefixes) -> String {
        let mut out = bytes::BytesMut::new();
        p.dump(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn prefixes_are_counted_only_while_on_as_memcached_counts_them() {
        let p = Prefixes::default();
        p.set(b"foo:1");
        assert_eq!(dumped(&p), "END\r\n", "off by default");
        p.set_enabled(true);
        p.set(b"foo:1");
        p.get(b"foo:1", true);
        p.get(b"foo:2", false);
        p.delete(b"foo:3");
        p.get(b"bar:x:y", false);
        p.get(b"plain", true);
        p.get(b"nul\0:x", true);
        assert_eq!(
            dumped(&p),
            "PREFIX bar get 1 hit 0 set 0 del 0\r\nPREFIX foo get 2 hit 1 set 1 del 1\r\nEND\r\n"
        );
        p.set_enabled(false);
        p.get(b"foo:1", true);
        assert!(dumped(&p).contains("PREFIX foo get 2 "), "off again");
        p.clear();
        assert_eq!(dumped(&p), "END\r\n");
    }
}
