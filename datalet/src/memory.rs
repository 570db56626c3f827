//! The embedded in-memory datalet: a `DashMap` of items.
//!
//! Concurrency comes from `DashMap`'s sharded locks: a mutation holds its key's shard for the
//! read-modify-write, so mutations of one key never interleave. Memory is accounted per item
//! (key, value and a fixed overhead); a write that would pass the limit is refused with
//! [`DataletError::OutOfMemory`] after expired items are reclaimed. Nothing live is ever
//! evicted. Expired and flushed items are removed when next touched, and in bulk when memory
//! runs short.
//!
//! A *replica* ([`MemoryDatalet::replica`]) is changed only by mutations and
//! [`Datalet::reclaim`]: a read that finds a dead item leaves it in place. Replicas apply the
//! same mutations at the same (ordered) clock readings, but serve reads at their own clocks;
//! were a read to remove an item that a clock running ahead sees expired, a later mutation
//! read at the order's (earlier) clock would find it gone on that replica alone.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tailorkv_common::{Ts, UnixSecs, Version};

use crate::mutate::{dead, decide, item_bytes, Change, Dead};
use crate::{Datalet, DataletError, DataletStats, Item, Limits, Mutation, Outcome};

/// An item and the second it was last written, which delayed flushes compare against.
#[derive(Clone, Debug)]
struct Slot {
    item: Item,
    stored_at: UnixSecs,
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryDatalet {
    map: DashMap<Bytes, Slot>,
    item_size_max: usize,
    memory_limit: AtomicUsize,
    used_bytes: AtomicUsize,
    /// The last flush point: items stored at or before this second are gone once the clock
    /// reaches it. 0 when there has been no flush.
    flush_at: AtomicU64,
    /// The last second a bulk reclaim ran, so a full store does not rescan on every write.
    last_reclaim: AtomicU64,
    total_items: AtomicU64,
    get_expired: AtomicU64,
    get_flushed: AtomicU64,
    reclaimed: AtomicU64,
    /// Reads leave dead items in place (see the module's documentation).
    replica: bool,
}

impl MemoryDatalet {
    pub fn new(limits: Limits) -> Self {
        MemoryDatalet {
            replica: false,
            map: DashMap::new(),
            item_size_max: limits.item_size_max,
            memory_limit: AtomicUsize::new(limits.memory_limit_bytes),
            used_bytes: AtomicUsize::new(0),
            flush_at: AtomicU64::new(0),
            last_reclaim: AtomicU64::new(0),
            total_items: AtomicU64::new(0),
            get_expired: AtomicU64::new(0),
            get_flushed: AtomicU64::new(0),
            reclaimed: AtomicU64::new(0),
        }
    }

    /// A store that only mutations and [`Datalet::reclaim`] change: for a replica of a
    /// replicated mode.
    pub fn replica(limits: Limits) -> Self {
        MemoryDatalet {
            replica: true,
            ..MemoryDatalet::new(limits)
        }
    }

    fn dead(&self, slot: &Slot, now: UnixSecs) -> Option<Dead> {
        let flush_at = self.flush_at.load(Ordering::Acquire);
        dead(&slot.item, slot.stored_at, flush_at, now)
    }

    /// Reserves `bytes` more of the memory limit.
    fn reserve(&self, bytes: usize) -> bool {
        let limit = self.memory_limit.load(Ordering::Relaxed);
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + bytes <= limit).then_some(used + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Removes every expired or flushed item; at most once a second.
    fn sweep(&self, now: UnixSecs) -> u64 {
        if self.last_reclaim.swap(now, Ordering::AcqRel) == now {
            return 0;
        }
        let mut removed = 0;
        self.map.retain(|key, slot| {
            if self.dead(slot, now).is_none() {
                return true;
            }
            self.release(item_bytes(key, &slot.item));
            removed += 1;
            false
        });
        self.reclaimed.fetch_add(removed, Ordering::Relaxed);
        removed
    }

    fn try_apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        let entry = self.map.entry(key.clone());
        let (old_bytes, live) = match &entry {
            Entry::Occupied(e) => {
                let slot = e.get();
                let live = self.dead(slot, now).is_none().then_some(&slot.item);
                (item_bytes(key, &slot.item), live)
            }
            Entry::Vacant(_) => (0, None),
        };
        let dead_slot = matches!(entry, Entry::Occupied(_)) && live.is_none();
        let (change, outcome) = decide(key, live, mutation, version, self.item_size_max);
        match (change, entry) {
            (Change::Put(item), entry) => {
                let new_bytes = item_bytes(key, &item);
                if new_bytes > old_bytes && !self.reserve(new_bytes - old_bytes) {
                    return Err(DataletError::OutOfMemory);
                }
                if new_bytes < old_bytes {
                    self.release(old_bytes - new_bytes);
                }
                if !matches!(outcome, Outcome::Touched(_)) {
                    self.total_items.fetch_add(1, Ordering::Relaxed);
                }
                entry.insert(Slot {
                    item,
                    stored_at: now,
                });
            }
            // A dead item is removed whatever the mutation decided.
            (change, Entry::Occupied(e)) if change == Change::Remove || dead_slot => {
                e.remove();
                self.release(old_bytes);
            }
            _ => {}
        }
        Ok(outcome)
    }
}

impl Datalet for MemoryDatalet {
    async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        let dead = match self.map.get(key) {
            None => return Ok(None),
            Some(slot) => match self.dead(&slot, now) {
                None => return Ok(Some(slot.item.clone())),
                Some(dead) => dead,
            },
        };
        let counter = match dead {
            Dead::Expired => &self.get_expired,
            Dead::Flushed => &self.get_flushed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.replica {
            return Ok(None);
        }
        if let Some((key, slot)) = self
            .map
            .remove_if(key, |_, slot| self.dead(slot, now).is_some())
        {
            self.release(item_bytes(&key, &slot.item));
        }
        Ok(None)
    }

    /// Each shard is read under its lock, so every item is as it was at some moment of the
    /// scan; a write made while it runs may or may not be seen. Dead items are skipped but
    /// left in place, and not counted as expired or flushed reads: a scan is not a client's.
    async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
        Ok(self
            .map
            .iter()
            .filter(|entry| self.dead(entry.value(), now).is_none())
            .map(|entry| (entry.key().clone(), entry.value().item.clone()))
            .collect())
    }

    async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        match self.try_apply(key, mutation.clone(), version, now) {
            Err(DataletError::OutOfMemory) => {
                self.sweep(now);
                self.try_apply(key, mutation, version, now)
            }
            done => done,
        }
    }

    async fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        _version: Version,
    ) -> Result<(), DataletError> {
        // What a due flush point hid goes before a new point replaces it, so a later point
        // never brings it back (on one replica and not another).
        let due = self.flush_at.load(Ordering::Acquire);
        if due != 0 && due <= now {
            self.map.retain(|key, slot| {
                if slot.stored_at > due {
                    return true;
                }
                self.release(item_bytes(key, &slot.item));
                false
            });
        }
        self.flush_at.store(at, Ordering::Release);
        if at <= now {
            self.map.retain(|key, slot| {
                self.release(item_bytes(key, &slot.item));
                false
            });
        }
        Ok(())
    }

    /// Each item removed gives back its own bytes, so the accounting stays exact even if a
    /// write races the reset (it may or may not survive it). The flush point is cleared after
    /// the items are gone, so no flushed item shows again meanwhile.
    async fn reset(&self) -> Result<(), DataletError> {
        self.map.retain(|key, slot| {
            self.release(item_bytes(key, &slot.item));
            false
        });
        self.flush_at.store(0, Ordering::Release);
        Ok(())
    }

    /// Nothing survives a restart of the memory store, so there is no clock to resume.
    async fn load_clock(&self) -> Result<Ts, DataletError> {
        Ok(0)
    }

    async fn save_clock(&self, _ts: Ts) -> Result<(), DataletError> {
        Ok(())
    }

    fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    async fn reclaim(&self, now: UnixSecs) -> u64 {
        self.sweep(now)
    }

    fn stats(&self) -> DataletStats {
        DataletStats {
            curr_items: self.map.len() as u64,
            total_items: self.total_items.load(Ordering::Relaxed),
            bytes: self.used_bytes.load(Ordering::Relaxed) as u64,
            limit_maxbytes: self.memory_limit.load(Ordering::Relaxed) as u64,
            get_expired: self.get_expired.load(Ordering::Relaxed),
            get_flushed: self.get_flushed.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::conformance_tests!(MemoryDatalet::new);

    mod replica {
        use super::*;

        crate::conformance_tests!(MemoryDatalet::replica);
    }

    fn set(value: &'static [u8], expiry: tailorkv_common::Expiry) -> Mutation {
        Mutation::Store {
            mode: tailorkv_common::codec::StoreMode::Set,
            flags: 0,
            expiry,
            value: Bytes::from_static(value),
        }
    }

    #[tokio::test]
    async fn a_new_flush_point_does_not_bring_back_what_a_due_one_hid() {
        let store = MemoryDatalet::replica(Limits::default());
        let v = Version::new(1, tailorkv_common::NodeId(0));
        let key = Bytes::from_static(b"a");
        store
            .apply(&key, set(b"1", tailorkv_common::Expiry::Never), v, 1_000)
            .await
            .unwrap();
        store.flush_all(1_005, 1_000, v).await.unwrap();
        assert_eq!(store.get(b"a", 1_006).await.unwrap(), None);
        store.flush_all(1_100, 1_006, v).await.unwrap();
        assert_eq!(store.get(b"a", 1_007).await.unwrap(), None, "it came back");
        assert_eq!(store.stats().curr_items, 0);
    }

    #[tokio::test]
    async fn a_replica_keeps_dead_items_until_a_mutation_or_a_reclaim() {
        use tailorkv_common::{Expiry, NodeId};
        for replica in [false, true] {
            let store = if replica {
                MemoryDatalet::replica(Limits::default())
            } else {
                MemoryDatalet::new(Limits::default())
            };
            let key = Bytes::from_static(b"k");
            let version = Version::new(1, NodeId(0));
            store
                .apply(&key, set(b"v", Expiry::At(100)), version, 50)
                .await
                .unwrap();
            // Read past its expiry: gone for the reader either way.
            assert_eq!(store.get(b"k", 200).await.unwrap(), None);
            // A replica still holds it, so a mutation read at an earlier clock finds it.
            let kept = store.stats().curr_items;
            assert_eq!(kept, u64::from(replica), "replica={replica}");
            let appended = store
                .apply(
                    &key,
                    Mutation::Store {
                        mode: tailorkv_common::codec::StoreMode::Append,
                        flags: 0,
                        expiry: Expiry::Never,
                        value: Bytes::from_static(b"w"),
                    },
                    Version::new(2, NodeId(0)),
                    99,
                )
                .await
                .unwrap();
            let want = if replica {
                Outcome::Stored
            } else {
                Outcome::NotStored
            };
            assert_eq!(appended, want, "replica={replica}");
        }
        let store = MemoryDatalet::replica(Limits::default());
        let version = Version::new(1, NodeId(0));
        for i in 0..10u8 {
            let key = Bytes::from(vec![b'k', i]);
            store
                .apply(&key, set(b"v", Expiry::At(100)), version, 50)
                .await
                .unwrap();
        }
        assert_eq!(store.reclaim(99).await, 0, "nothing is dead yet");
        assert_eq!(store.reclaim(100).await, 10);
        assert_eq!((store.stats().curr_items, store.stats().bytes), (0, 0));
    }
}
