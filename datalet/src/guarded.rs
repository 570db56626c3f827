//! A datalet bundled with something that must live as long as it: a temporary directory, a
//! server process. For tests, where a constructor returns one value.

use std::any::Any;

use bytes::Bytes;
use tailorkv_common::{Ts, UnixSecs, Version};

use crate::{Datalet, DataletError, DataletStats, Item, Mutation, Outcome};

/// `inner`, with `guard` dropped after it.
pub struct Guarded<D> {
    pub inner: D,
    _guard: Box<dyn Any + Send + Sync>,
}

impl<D> Guarded<D> {
    pub fn new(inner: D, guard: impl Any + Send + Sync) -> Self {
        Guarded {
            inner,
            _guard: Box::new(guard),
        }
    }
}

impl<D: Datalet> Datalet for Guarded<D> {
    async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        self.inner.get(key, now).await
    }

    async fn peek(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        self.inner.peek(key, now).await
    }

    async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
        self.inner.scan(now).await
    }

    async fn snapshot(&self, now: UnixSecs) -> Result<Box<dyn crate::Snapshot>, DataletError> {
        self.inner.snapshot(now).await
    }

    async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        self.inner.apply(key, mutation, version, now).await
    }

    async fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    ) -> Result<(), DataletError> {
        self.inner.flush_all(at, now, version).await
    }

    async fn reclaim(&self, now: UnixSecs) -> u64 {
        self.inner.reclaim(now).await
    }

    fn lost_items(&self) -> bool {
        self.inner.lost_items()
    }

    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }

    async fn reset(&self) -> Result<(), DataletError> {
        self.inner.reset().await
    }

    async fn load_clock(&self) -> Result<Ts, DataletError> {
        self.inner.load_clock().await
    }

    async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
        self.inner.save_clock(ts).await
    }

    fn set_memory_limit(&self, bytes: usize) {
        self.inner.set_memory_limit(bytes)
    }

    fn stats(&self) -> DataletStats {
        self.inner.stats()
    }

    fn victims(&self, bytes: usize, now: UnixSecs) -> Vec<(Bytes, Version)> {
        self.inner.victims(bytes, now)
    }

    fn item_classes(&self, now: UnixSecs) -> Vec<crate::ClassStats> {
        self.inner.item_classes(now)
    }

    fn reset_stats(&self) {
        self.inner.reset_stats()
    }

    fn access(&self, key: &[u8]) -> Option<crate::Access> {
        self.inner.access(key)
    }
}
