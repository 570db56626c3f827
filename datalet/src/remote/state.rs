//! What the pool's connection tasks share: the address and options, the limits, the last
//! flush point, the last saved clock, and the counters behind [`crate::Datalet::stats`].

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tailorkv_common::codec::item_fits;
use tailorkv_common::{Ts, UnixSecs};

use super::header::HEADER_LEN;
use super::RemoteOptions;
use crate::{DataletStats, Limits};

pub struct Shared {
    /// `host:port`, resolved at each connect.
    pub addr: String,
    pub options: RemoteOptions,
    item_size_max: usize,
    memory_limit: AtomicUsize,
    /// The last flush point (0: none), as [`crate::mutate::dead`] takes it. Items stored at or
    /// before it are hidden once the caller's clock reaches it.
    flush_at: AtomicU64,
    /// The highest clock reservation saved, put back after anything that may have erased it.
    clock_saved: AtomicU64,
    /// Set while a stats refresh asked for by [`Shared::stats`] is queued.
    pub refreshing: AtomicBool,
    total_items: AtomicU64,
    get_expired: AtomicU64,
    get_flushed: AtomicU64,
    /// The remote server's own counters, from its last `stats`.
    remote_curr_items: AtomicU64,
    remote_bytes: AtomicU64,
    remote_reclaimed: AtomicU64,
    /// The remote server's `evictions` as last seen; `u64::MAX` before the first `stats`.
    remote_evictions: AtomicU64,
    /// The remote server lost items since the last reset: it restarted empty (the clock
    /// reservation was gone at a reconnect) or evicted.
    lost: AtomicBool,
}

/// What a replica is told once its remote store lost items.
pub const LOST: &str = "the remote store lost items (it restarted, or evicted); this replica \
                        must be refilled";

/// Counters this datalet keeps itself.
#[derive(Clone, Copy, Debug)]
pub enum Counter {
    TotalItems,
    GetExpired,
    GetFlushed,
}

impl Shared {
    pub fn new(addr: String, limits: Limits, options: RemoteOptions) -> Self {
        Shared {
            addr,
            options,
            item_size_max: limits.item_size_max,
            memory_limit: AtomicUsize::new(limits.memory_limit_bytes),
            flush_at: AtomicU64::new(0),
            clock_saved: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            total_items: AtomicU64::new(0),
            get_expired: AtomicU64::new(0),
            get_flushed: AtomicU64::new(0),
            remote_curr_items: AtomicU64::new(0),
            remote_bytes: AtomicU64::new(0),
            remote_reclaimed: AtomicU64::new(0),
            remote_evictions: AtomicU64::new(u64::MAX),
            lost: AtomicBool::new(false),
        }
    }

    /// Records that the remote server lost items, and why.
    pub fn lost_items(&self, why: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(remote = %self.addr, "{why}");
        }
    }

    pub fn has_lost_items(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Whether reads and writes are refused: a replica whose store lost items serves nothing
    /// until it is reset and refilled.
    pub fn refuses(&self) -> bool {
        self.options.replica && self.has_lost_items()
    }

    /// After a reset the store holds exactly what is written to it from then on.
    pub fn reset_done(&self) {
        self.lost.store(false, Ordering::Release);
    }

    /// Whether a value of `len` bytes fits the item size limit once the header is in front of
    /// it: what fits here fits in a remote server whose limit is the same.
    pub fn fits(&self, key: &[u8], flags: u32, len: usize) -> bool {
        item_fits(key.len(), flags, HEADER_LEN + len, self.item_size_max)
    }

    /// The limit to give [`crate::mutate::decide`], whose size check knows nothing of the
    /// header.
    pub fn decide_limit(&self) -> usize {
        self.item_size_max.saturating_sub(HEADER_LEN)
    }

    pub fn flush_at(&self) -> UnixSecs {
        self.flush_at.load(Ordering::Acquire)
    }

    pub fn set_flush_at(&self, at: UnixSecs) {
        self.flush_at.store(at, Ordering::Release);
    }

    pub fn clock_saved(&self) -> Ts {
        self.clock_saved.load(Ordering::Acquire)
    }

    pub fn clock_was_saved(&self, ts: Ts) {
        self.clock_saved.fetch_max(ts, Ordering::AcqRel);
    }

    pub fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    pub fn count(&self, counter: Counter) {
        let c = match counter {
            Counter::TotalItems => &self.total_items,
            Counter::GetExpired => &self.get_expired,
            Counter::GetFlushed => &self.get_flushed,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counters that only the remote server knows from its `stats` reply.
    pub fn absorb_remote_stats(&self, stats: &[(String, String)]) {
        for (name, value) in stats {
            if name == "evictions" {
                if let Ok(now) = value.parse::<u64>() {
                    let before = self.remote_evictions.swap(now, Ordering::AcqRel);
                    if before != u64::MAX && now > before {
                        self.lost_items("the remote server evicted items");
                    }
                }
                continue;
            }
            let target = match name.as_str() {
                "curr_items" => &self.remote_curr_items,
                "bytes" => &self.remote_bytes,
                "reclaimed" => &self.remote_reclaimed,
                _ => continue,
            };
            if let Ok(v) = value.parse() {
                target.store(v, Ordering::Relaxed);
            }
        }
    }

    pub fn stats(&self) -> DataletStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DataletStats {
            curr_items: get(&self.remote_curr_items),
            total_items: get(&self.total_items),
            bytes: get(&self.remote_bytes),
            limit_maxbytes: self.memory_limit.load(Ordering::Relaxed) as u64,
            get_expired: get(&self.get_expired),
            get_flushed: get(&self.get_flushed),
            reclaimed: get(&self.remote_reclaimed),
            // The remote server's own evictions, as it last reported them.
            evictions: match get(&self.remote_evictions) {
                u64::MAX => 0,
                n => n,
            },
            ..DataletStats::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(evictions: &str) -> Vec<(String, String)> {
        vec![
            ("curr_items".into(), "5".into()),
            ("evictions".into(), evictions.into()),
        ]
    }

    #[test]
    fn rising_evictions_mean_lost_items_and_a_replica_refuses_until_reset() {
        let options = RemoteOptions {
            replica: true,
            ..RemoteOptions::default()
        };
        let s = Shared::new("127.0.0.1:1".into(), Limits::default(), options);
        // The first reading is the baseline, whatever it is.
        s.absorb_remote_stats(&stats("7"));
        s.absorb_remote_stats(&stats("7"));
        assert!(!s.has_lost_items() && !s.refuses());
        s.absorb_remote_stats(&stats("8"));
        assert!(s.has_lost_items() && s.refuses());
        s.reset_done();
        assert!(!s.refuses());
        s.absorb_remote_stats(&stats("8"));
        assert!(!s.has_lost_items(), "no new eviction since the reset");

        // A lone node's store notes the loss but keeps serving, as a cache.
        let lone = Shared::new(
            "127.0.0.1:1".into(),
            Limits::default(),
            RemoteOptions::default(),
        );
        lone.absorb_remote_stats(&stats("0"));
        lone.absorb_remote_stats(&stats("3"));
        assert!(lone.has_lost_items() && !lone.refuses());
    }
}
