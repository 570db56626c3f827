//! The engine: where a command's effect on data is carried out.
//!
//! This is the single-node engine: it stamps each mutation with the next version from a local
//! counter and applies it to the datalet at once. The replicated engines will order mutations
//! through the total-order broadcast before applying them; commands talk only to this
//! interface.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::{Clock, Expiry, NodeId, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, DataletStats, Item, Mutation, Outcome};

pub struct Engine<D> {
    datalet: Arc<D>,
    clock: Arc<dyn Clock>,
    node: NodeId,
    /// The last timestamp issued.
    last_ts: AtomicU64,
}

impl<D: Datalet> Engine<D> {
    pub fn new(datalet: Arc<D>, clock: Arc<dyn Clock>) -> Self {
        Engine {
            datalet,
            clock,
            node: NodeId(0),
            last_ts: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }

    fn next_version(&self) -> Version {
        let ts = self.last_ts.fetch_add(1, Ordering::Relaxed) + 1;
        Version::new(ts, self.node)
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>, DataletError> {
        self.datalet.get(key, self.now()).await
    }

    pub async fn apply(&self, key: &Bytes, mutation: Mutation) -> Result<Outcome, DataletError> {
        let version = self.next_version();
        self.datalet.apply(key, mutation, version, self.now()).await
    }

    /// `flush_all [delay]`, with memcached's timing: the flush point is one second before the
    /// delay's exptime (memcached sets `oldest_live = realtime(exptime) - 1`), so
    /// `flush_all 10` takes effect after 9 seconds, and `flush_all 1` flushes at once and also
    /// hides items stored during the rest of this second. Without a delay the flush point is
    /// the second before now: everything stored so far goes, later writes stay.
    pub async fn flush_all(&self, delay: i32) -> Result<(), DataletError> {
        let now = self.now();
        let at = match Expiry::from_exptime(delay, now) {
            Expiry::At(at) if delay > 0 => at,
            _ => now,
        };
        self.datalet.flush_all(at.saturating_sub(1), now).await
    }

    pub fn set_memory_limit(&self, bytes: usize) {
        self.datalet.set_memory_limit(bytes);
    }

    pub fn datalet_stats(&self) -> DataletStats {
        self.datalet.stats()
    }
}
