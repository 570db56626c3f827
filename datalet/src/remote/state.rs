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
}

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
        }
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
        }
    }
}
