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
);

#[cfg(test)]
mod tests {
    use super::*;

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
