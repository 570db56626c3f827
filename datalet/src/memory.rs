//! The embedded in-memory datalet: a `DashMap` of items.
//!
//! Concurrency comes from `DashMap`'s sharded locks: a mutation holds its key's shard for the
//! read-modify-write, so mutations of one key never interleave. Memory is charged as memcached
//! charges it: each item takes the chunk of its slab class ([`tailorkv_common::slabs`]), so
//! the same items fit in the same limit. A write that would pass the limit first reclaims
//! expired items; then, if the store evicts ([`Limits::evict`]), the least recently used items
//! make room, and otherwise it is refused with [`DataletError::OutOfMemory`]. Expired and
//! flushed items are also removed when next touched.
//!
//! Recency is memcached's: a queue in the order items were stored, where an item read at least
//! [`BUMP_AFTER_SECS`] after it took its place is marked and moved to the back when its turn
//! to be evicted comes (memcached's `ITEM_UPDATE_INTERVAL`, which spares the queue a move on
//! every read). One queue serves every slab class, so a class never starves another.
//! [`Datalet::victims`] names the items at the front; the store evicts them itself, or a
//! replicated mode orders their [`Mutation::Evict`]s so that every replica evicts the same.
//!
//! A *replica* ([`MemoryDatalet::replica`]) is changed only by mutations and
//! [`Datalet::reclaim`]: a read that finds a dead item leaves it in place. Replicas apply the
//! same mutations at the same (ordered) clock readings, but serve reads at their own clocks;
//! were a read to remove an item that a clock running ahead sees expired, a later mutation
//! read at the order's (earlier) clock would find it gone on that replica alone.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tailorkv_common::codec::{item_size, StoreMode};
use tailorkv_common::slabs::SlabClasses;
use tailorkv_common::{Expiry, Ts, UnixSecs, Version};

use crate::mutate::{dead, decide, Change, Dead};
use crate::{ClassStats, Datalet, DataletError, DataletStats, Item, Limits, Mutation, Outcome};

/// An item read this long after it took its place in the recency queue is moved to the back
/// when its turn to be evicted comes (memcached's `ITEM_UPDATE_INTERVAL`).
pub const BUMP_AFTER_SECS: UnixSecs = 60;

/// Rounds of eviction a write that does not fit may take before it is refused: others may
/// take the room freed for it meanwhile.
const EVICTION_ROUNDS: usize = 8;

/// [`Slot::marks`]: the item was read since it was stored.
const FETCHED: u8 = 1;
/// [`Slot::marks`]: the item was read [`BUMP_AFTER_SECS`] or more after it took its place.
const ACTIVE: u8 = 2;

/// An item and what the store knows of it.
#[derive(Debug)]
struct Slot {
    item: Item,
    /// The second it was last written, which delayed flushes compare against.
    stored_at: UnixSecs,
    /// Its entry in the recency queue, by that entry's tick.
    place: AtomicU64,
    /// The second it took that place.
    placed_at: AtomicU64,
    /// The second it was last read or written.
    accessed_at: AtomicU64,
    /// [`FETCHED`] and [`ACTIVE`].
    marks: AtomicU8,
}

impl Slot {
    fn new(item: Item, now: UnixSecs, place: u64) -> Self {
        Slot {
            item,
            stored_at: now,
            place: AtomicU64::new(place),
            placed_at: AtomicU64::new(now),
            accessed_at: AtomicU64::new(now),
            marks: AtomicU8::new(0),
        }
    }

    /// A read hit: marks it fetched, and active if it took its place long enough ago. Stores
    /// only what changes, so reads of a hot item do not keep writing its cache line.
    fn read(&self, now: UnixSecs) {
        if self.accessed_at.load(Ordering::Relaxed) != now {
            self.accessed_at.store(now, Ordering::Relaxed);
        }
        let mut mark = FETCHED;
        if now >= self.placed_at.load(Ordering::Relaxed) + BUMP_AFTER_SECS {
            mark |= ACTIVE;
        }
        if self.marks.load(Ordering::Relaxed) & mark != mark {
            self.marks.fetch_or(mark, Ordering::Relaxed);
        }
    }

    fn marked(&self, mark: u8) -> bool {
        self.marks.load(Ordering::Relaxed) & mark != 0
    }
}

/// One slab class's counters.
#[derive(Debug, Default)]
struct ClassCounters {
    number: AtomicU64,
    requested: AtomicU64,
    evicted: AtomicU64,
    evicted_nonzero: AtomicU64,
    evicted_time: AtomicU64,
    evicted_unfetched: AtomicU64,
    evicted_active: AtomicU64,
    expired_unfetched: AtomicU64,
    reclaimed: AtomicU64,
    outofmemory: AtomicU64,
    /// Chunks beyond one per item, of items larger than the largest chunk.
    extra_chunks: AtomicU64,
    get_hits: AtomicU64,
    cmd_set: AtomicU64,
    delete_hits: AtomicU64,
    incr_hits: AtomicU64,
    decr_hits: AtomicU64,
    cas_hits: AtomicU64,
    cas_badval: AtomicU64,
    touch_hits: AtomicU64,
}

impl ClassCounters {
    /// Zeroes what `stats reset` zeroes: all but the items held.
    fn reset(&self) {
        for counter in [
            &self.evicted,
            &self.evicted_nonzero,
            &self.evicted_time,
            &self.evicted_unfetched,
            &self.evicted_active,
            &self.expired_unfetched,
            &self.reclaimed,
            &self.outofmemory,
            &self.get_hits,
            &self.cmd_set,
            &self.delete_hits,
            &self.incr_hits,
            &self.decr_hits,
            &self.cas_hits,
            &self.cas_badval,
            &self.touch_hits,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// The recency queue: keys in the order they took their places, each entry stamped with a
/// tick. An entry whose key's slot holds another tick (or no slot) is stale and skipped.
/// Its mutex may be taken while a shard of the map is held, never the other way round; a
/// write takes its tick under its shard and pushes after releasing it, so the queue is in
/// tick order but for writes racing each other.
#[derive(Debug, Default)]
struct Recency {
    tick: AtomicU64,
    queue: Mutex<Queue>,
    /// A compaction is under way.
    compacting: AtomicBool,
}

#[derive(Debug, Default)]
struct Queue {
    entries: VecDeque<(u64, Bytes)>,
}

impl Recency {
    fn tick(&self) -> u64 {
        self.tick.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Puts `key` at the back with `tick`; how long the queue is now.
    fn push_at(&self, tick: u64, key: Bytes) -> usize {
        let mut queue = self.queue.lock().unwrap();
        queue.entries.push_back((tick, key));
        queue.entries.len()
    }

    /// Puts `key` at the back: its new tick.
    fn push(&self, key: Bytes) -> (u64, usize) {
        let tick = self.tick();
        (tick, self.push_at(tick, key))
    }

    fn pop(&self) -> Option<(u64, Bytes)> {
        self.queue.lock().unwrap().entries.pop_front()
    }
}

/// The in-memory store.
#[derive(Debug)]
pub struct MemoryDatalet {
    map: DashMap<Bytes, Slot>,
    item_size_max: usize,
    memory_limit: AtomicUsize,
    /// What the items are charged against the limit: their chunks.
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
    evictions: AtomicU64,
    evicted_unfetched: AtomicU64,
    expired_unfetched: AtomicU64,
    slabs: SlabClasses,
    classes: Vec<ClassCounters>,
    recency: Recency,
    /// A write that does not fit evicts to make room (else it is refused).
    evict: bool,
    /// Reads leave dead items in place (see the module's documentation).
    replica: bool,
}

impl MemoryDatalet {
    pub fn new(limits: Limits) -> Self {
        let slabs = SlabClasses::new();
        MemoryDatalet {
            replica: false,
            evict: limits.evict,
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
            evictions: AtomicU64::new(0),
            evicted_unfetched: AtomicU64::new(0),
            expired_unfetched: AtomicU64::new(0),
            classes: (0..slabs.len()).map(|_| ClassCounters::default()).collect(),
            slabs,
            recency: Recency::default(),
        }
    }

    /// A store that only mutations and [`Datalet::reclaim`] change: for a replica of a
    /// replicated mode. It never evicts by itself; the mode evicts through its order.
    pub fn replica(limits: Limits) -> Self {
        MemoryDatalet {
            replica: true,
            evict: false,
            ..MemoryDatalet::new(limits)
        }
    }

    fn dead(&self, slot: &Slot, now: UnixSecs) -> Option<Dead> {
        let flush_at = self.flush_at.load(Ordering::Acquire);
        dead(&slot.item, slot.stored_at, flush_at, now)
    }

    fn size(key: &[u8], item: &Item) -> usize {
        item_size(key.len(), item.flags, item.value.len())
    }

    fn class(&self, size: usize) -> &ClassCounters {
        &self.classes[self.slabs.class_of(size) - 1]
    }

    /// Reserves `bytes` more of the memory limit.
    fn reserve(&self, bytes: usize) -> bool {
        let limit = self.memory_limit.load(Ordering::Relaxed);
        self.used_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used.saturating_add(bytes) <= limit).then_some(used + bytes)
            })
            .is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Counts an item of `size` in (`sign` 1) or out (`sign` -1) of its class.
    fn count(&self, size: usize, sign: i64) {
        let class = self.class(size);
        let add = |counter: &AtomicU64, n: u64| {
            counter.fetch_add((n as i64 * sign) as u64, Ordering::Relaxed);
        };
        add(&class.number, 1);
        add(&class.requested, size as u64);
        let extra = self.extra_chunks(size);
        if extra > 0 {
            add(&class.extra_chunks, extra);
        }
    }

    /// Counts an item of `size` in, in place of one of `old` (if any): nothing to change when
    /// the size is the same, the bytes alone when the class is.
    fn recount(&self, old: Option<usize>, size: usize) {
        match old {
            Some(old) if old == size => {}
            Some(old) if self.slabs.class_of(old) == self.slabs.class_of(size) => {
                let class = self.class(size);
                if size > old {
                    class
                        .requested
                        .fetch_add((size - old) as u64, Ordering::Relaxed);
                } else {
                    class
                        .requested
                        .fetch_sub((old - size) as u64, Ordering::Relaxed);
                }
                let extra = self.extra_chunks(size) as i64 - self.extra_chunks(old) as i64;
                if extra != 0 {
                    class
                        .extra_chunks
                        .fetch_add(extra as u64, Ordering::Relaxed);
                }
            }
            old => {
                if let Some(old) = old {
                    self.count(old, -1);
                }
                self.count(size, 1);
            }
        }
    }

    /// The chunks an item of `size` takes beyond one (an item larger than the largest
    /// chunk takes several).
    fn extra_chunks(&self, size: usize) -> u64 {
        let class = self.slabs.class_of(size);
        (self.slabs.charge(size) / self.slabs.chunk_size(class)) as u64 - 1
    }

    /// Counts a request's hit in the class of the item it found or left.
    fn hit(&self, key: &[u8], item: &Item, counter: impl Fn(&ClassCounters) -> &AtomicU64) {
        counter(self.class(Self::size(key, item))).fetch_add(1, Ordering::Relaxed);
    }

    /// Gives back what a removed slot held.
    fn removed(&self, key: &[u8], slot: &Slot) {
        let size = Self::size(key, &slot.item);
        self.release(self.slabs.charge(size));
        self.count(size, -1);
    }

    /// Counts the eviction of `slot` at `now`.
    fn evicted(&self, key: &[u8], slot: &Slot, now: UnixSecs) {
        let class = self.class(Self::size(key, &slot.item));
        self.evictions.fetch_add(1, Ordering::Relaxed);
        class.evicted.fetch_add(1, Ordering::Relaxed);
        if slot.item.expiry != Expiry::Never {
            class.evicted_nonzero.fetch_add(1, Ordering::Relaxed);
        }
        if !slot.marked(FETCHED) {
            self.evicted_unfetched.fetch_add(1, Ordering::Relaxed);
            class.evicted_unfetched.fetch_add(1, Ordering::Relaxed);
        }
        if slot.marked(ACTIVE) {
            class.evicted_active.fetch_add(1, Ordering::Relaxed);
        }
        let idle = now.saturating_sub(slot.accessed_at.load(Ordering::Relaxed));
        class.evicted_time.store(idle, Ordering::Relaxed);
    }

    /// Counts the reclaim of the dead `slot`.
    fn reclaimed_one(&self, key: &[u8], slot: &Slot) {
        let class = self.class(Self::size(key, &slot.item));
        class.reclaimed.fetch_add(1, Ordering::Relaxed);
        if !slot.marked(FETCHED) {
            self.expired_unfetched.fetch_add(1, Ordering::Relaxed);
            class.expired_unfetched.fetch_add(1, Ordering::Relaxed);
        }
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
            self.reclaimed_one(key, slot);
            self.removed(key, slot);
            removed += 1;
            false
        });
        self.reclaimed.fetch_add(removed, Ordering::Relaxed);
        removed
    }

    /// Takes `key`'s new place at the back of the recency queue (with no shard lock held),
    /// compacting the queue when stale entries have piled up.
    fn compact_if_stale(&self, (tick, len): (u64, usize)) {
        if tick.is_multiple_of(1024) && len > 2 * self.map.len() + 1024 {
            self.compact();
        }
    }

    /// Drops the queue's stale entries, keeping the order of the others; if the queue ran
    /// dry while items remain (named as victims and not evicted), every item gets a place
    /// again, in the order of the places it had.
    fn compact(&self) {
        if self.recency.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let old = std::mem::take(&mut self.recency.queue.lock().unwrap().entries);
        let mut kept: VecDeque<(u64, Bytes)> = if old.is_empty() {
            let mut all: Vec<(u64, Bytes)> = self
                .map
                .iter()
                .map(|e| (e.value().place.load(Ordering::Relaxed), e.key().clone()))
                .collect();
            all.sort_unstable();
            all.into()
        } else {
            old.into_iter()
                .filter(|(tick, key)| {
                    self.map
                        .get(key)
                        .is_some_and(|slot| slot.place.load(Ordering::Relaxed) == *tick)
                })
                .collect()
        };
        let mut queue = self.recency.queue.lock().unwrap();
        kept.extend(queue.entries.drain(..));
        queue.entries = kept;
        drop(queue);
        self.recency.compacting.store(false, Ordering::Release);
    }

    /// Evicts to free `bytes`; how many items it named (some may have been written since,
    /// and stay).
    fn evict_for(&self, bytes: usize, now: UnixSecs) -> usize {
        let victims = self.victims(bytes, now);
        for (key, version) in &victims {
            let gone = self
                .map
                .remove_if(key, |_, slot| slot.item.version == *version);
            match gone {
                Some((key, slot)) => {
                    self.evicted(&key, &slot, now);
                    self.removed(&key, &slot);
                }
                None => self.place_again(key, now),
            }
        }
        victims.len()
    }

    /// Gives `key`'s item, named as a victim and left in place (its version changed since),
    /// a place at the back again: naming it took its place.
    fn place_again(&self, key: &Bytes, now: UnixSecs) {
        if let Some(slot) = self.map.get(key) {
            let (tick, _) = self.recency.push(key.clone());
            slot.place.store(tick, Ordering::Relaxed);
            slot.placed_at.store(now, Ordering::Relaxed);
        }
    }

    /// Carries out `mutation`, or reports how many bytes more it needs than the limit
    /// leaves (charged, with nothing changed).
    fn try_apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, usize> {
        let evicting = matches!(mutation, Mutation::Evict { .. });
        let entry = self.map.entry(key.clone());
        let (old_size, live) = match &entry {
            Entry::Occupied(e) => {
                let slot = e.get();
                let live = self.dead(slot, now).is_none().then_some(&slot.item);
                (Some(Self::size(key, &slot.item)), live)
            }
            Entry::Vacant(_) => (None, None),
        };
        let dead_slot = old_size.is_some() && live.is_none();
        let cas = matches!(
            mutation,
            Mutation::Store {
                mode: tailorkv_common::codec::StoreMode::Cas(_),
                ..
            }
        );
        let incr = matches!(
            mutation,
            Mutation::Incr(_) | Mutation::MetaArith(crate::MetaArith { incr: true, .. })
        );
        let cas = cas
            || matches!(&mutation, Mutation::MetaSet(s) if s.compare.is_some()
                && matches!(s.mode, StoreMode::Set | StoreMode::Replace));
        let (touching, bump) = match &mutation {
            Mutation::MetaGet(get) => (get.touch.is_some(), get.bump),
            _ => (false, true),
        };
        // An eviction named an item written since: it stays, and takes a place again (under
        // its shard, which the entry holds).
        if let (Mutation::Evict { version }, Some(live)) = (&mutation, live) {
            if live.version != *version {
                if let Entry::Occupied(e) = &entry {
                    let (tick, _) = self.recency.push(key.clone());
                    e.get().place.store(tick, Ordering::Relaxed);
                    e.get().placed_at.store(now, Ordering::Relaxed);
                }
            }
        }
        let (change, outcome) = decide(key, live, mutation, version, self.item_size_max);
        match (&outcome, live) {
            (Outcome::Exists, Some(live)) if cas => self.hit(key, live, |c| &c.cas_badval),
            (Outcome::Deleted, Some(live)) if !evicting => self.hit(key, live, |c| &c.delete_hits),
            _ => {}
        }
        let old_charge = old_size.map_or(0, |size| self.slabs.charge(size));
        let mut placed = None;
        match (change, entry) {
            (Change::Put(item), entry) => {
                let size = Self::size(key, &item);
                let charge = self.slabs.charge(size);
                if charge > old_charge && !self.reserve(charge - old_charge) {
                    self.class(size).outofmemory.fetch_add(1, Ordering::Relaxed);
                    return Err(charge - old_charge);
                }
                if charge < old_charge {
                    self.release(old_charge - charge);
                }
                // A write over an expired or flushed item reclaims it, as memcached counts
                // the dead item it finds and replaces.
                if let (true, Entry::Occupied(e)) = (dead_slot, &entry) {
                    self.reclaimed_one(key, e.get());
                    self.reclaimed.fetch_add(1, Ordering::Relaxed);
                }
                self.recount(old_size, size);
                let class = self.class(size);
                let counter = match &outcome {
                    Outcome::Touched(_) => Some(&class.touch_hits),
                    Outcome::Fetched(f) if f.created => None,
                    Outcome::Fetched(_) if touching => Some(&class.touch_hits),
                    Outcome::Fetched(_) => Some(&class.get_hits),
                    Outcome::Counted(c) if c.created => None,
                    Outcome::Number(_) | Outcome::Counted(_) if incr => Some(&class.incr_hits),
                    Outcome::Number(_) | Outcome::Counted(_) => Some(&class.decr_hits),
                    _ if cas => old_size.map(|size| &self.class(size).cas_hits),
                    _ => None,
                };
                if let Some(counter) = counter {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                // memcached changes these items where they are: a touch, a meta read that
                // hands out a win token or sets the expiry, `md ... I`, `ma` of an existing
                // number. Each keeps its place; only the reads count as an access.
                let (in_place, read) = match &outcome {
                    Outcome::Touched(_) => (true, true),
                    Outcome::Fetched(f) => (!f.created, bump),
                    Outcome::Counted(c) => (!c.created, false),
                    Outcome::Invalidated => (true, false),
                    _ => (false, false),
                };
                if !in_place {
                    self.total_items.fetch_add(1, Ordering::Relaxed);
                }
                match entry {
                    Entry::Occupied(mut e) if in_place => {
                        let slot = e.get_mut();
                        slot.item = item;
                        slot.stored_at = now;
                        if read {
                            slot.read(now);
                        }
                    }
                    entry => {
                        let tick = self.recency.tick();
                        entry.insert(Slot::new(item, now, tick));
                        placed = Some(tick);
                    }
                }
            }
            // A meta read that changed nothing is still a read.
            (Change::Keep, Entry::Occupied(e)) if matches!(outcome, Outcome::Fetched(_)) => {
                let slot = e.get();
                if bump {
                    slot.read(now);
                }
                let class = self.class(Self::size(key, &slot.item));
                let counter = if touching {
                    &class.touch_hits
                } else {
                    &class.get_hits
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
            // A dead item is removed whatever the mutation decided.
            (change, Entry::Occupied(e)) if change == Change::Remove || dead_slot => {
                let (key, slot) = e.remove_entry();
                if evicting && change == Change::Remove {
                    self.evicted(&key, &slot, now);
                }
                self.removed(&key, &slot);
            }
            _ => {}
        }
        if let Some(tick) = placed {
            let len = self.recency.push_at(tick, key.clone());
            self.compact_if_stale((tick, len));
        }
        Ok(outcome)
    }
}

impl MemoryDatalet {
    /// [`Datalet::get`], marking the item read if `bump`.
    fn lookup(&self, key: &[u8], now: UnixSecs, bump: bool) -> Option<Item> {
        let dead = match self.map.get(key) {
            None => return None,
            Some(slot) => match self.dead(&slot, now) {
                None => {
                    if bump {
                        slot.read(now);
                    }
                    self.hit(key, &slot.item, |c| &c.get_hits);
                    return Some(slot.item.clone());
                }
                Some(dead) => dead,
            },
        };
        let counter = match dead {
            Dead::Expired => &self.get_expired,
            Dead::Flushed => &self.get_flushed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if self.replica {
            return None;
        }
        if let Some((key, slot)) = self
            .map
            .remove_if(key, |_, slot| self.dead(slot, now).is_some())
        {
            self.removed(&key, &slot);
        }
        None
    }
}

impl Datalet for MemoryDatalet {
    async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        Ok(self.lookup(key, now, true))
    }

    async fn peek(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        Ok(self.lookup(key, now, false))
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
        // As memcached: every storage command is counted in the class of the item its own data
        // makes, whatever becomes of it.
        let data = match &mutation {
            Mutation::Store { flags, value, .. } => Some((*flags, value.len())),
            Mutation::MetaSet(set) => Some((set.flags, set.value.len())),
            _ => None,
        };
        if let Some((flags, len)) = data {
            let size = item_size(key.len(), flags, len);
            self.class(size).cmd_set.fetch_add(1, Ordering::Relaxed);
        }
        let mut swept = false;
        let mut rounds = 0;
        loop {
            let need = match self.try_apply(key, mutation.clone(), version, now) {
                Ok(outcome) => return Ok(outcome),
                Err(need) => need,
            };
            if !swept {
                swept = true;
                if self.sweep(now) > 0 {
                    continue;
                }
            }
            rounds += 1;
            if !self.evict || rounds > EVICTION_ROUNDS || self.evict_for(need, now) == 0 {
                return Err(DataletError::OutOfMemory);
            }
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
                self.removed(key, slot);
                false
            });
        }
        self.flush_at.store(at, Ordering::Release);
        if at <= now {
            self.map.retain(|key, slot| {
                self.removed(key, slot);
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
            self.removed(key, slot);
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
            bytes: self
                .classes
                .iter()
                .map(|c| c.requested.load(Ordering::Relaxed))
                .sum(),
            limit_maxbytes: self.memory_limit.load(Ordering::Relaxed) as u64,
            get_expired: self.get_expired.load(Ordering::Relaxed),
            get_flushed: self.get_flushed.load(Ordering::Relaxed),
            reclaimed: self.reclaimed.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            evicted_unfetched: self.evicted_unfetched.load(Ordering::Relaxed),
            expired_unfetched: self.expired_unfetched.load(Ordering::Relaxed),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed) as u64
    }

    /// Pops the front of the recency queue: an active item is moved to the back instead (its
    /// mark cleared), a stale entry dropped, and the rest named, until their chunks add up to
    /// `bytes`. An item named and then not evicted has lost its place; it gets one back when
    /// the queue next runs dry.
    fn victims(&self, bytes: usize, now: UnixSecs) -> Vec<(Bytes, Version)> {
        let mut victims = Vec::new();
        let mut freed = 0;
        let mut refilled = false;
        while freed < bytes.max(1) {
            let Some((tick, key)) = self.recency.pop() else {
                if refilled || !victims.is_empty() || self.map.is_empty() {
                    break;
                }
                refilled = true;
                self.compact();
                continue;
            };
            {
                let Some(slot) = self.map.get(&key) else {
                    continue;
                };
                if slot.place.load(Ordering::Relaxed) != tick {
                    continue;
                }
                if slot.marks.fetch_and(!ACTIVE, Ordering::Relaxed) & ACTIVE != 0 {
                    // Under the slot's shard, so no compaction sees it between places.
                    let (tick, _) = self.recency.push(key.clone());
                    slot.place.store(tick, Ordering::Relaxed);
                    slot.placed_at.store(now, Ordering::Relaxed);
                } else {
                    freed += self.slabs.charge(Self::size(&key, &slot.item));
                    victims.push((key.clone(), slot.item.version));
                }
            }
        }
        victims
    }

    fn item_classes(&self, now: UnixSecs) -> Vec<ClassStats> {
        let mut oldest = vec![UnixSecs::MAX; self.classes.len()];
        for entry in self.map.iter() {
            let size = Self::size(entry.key(), &entry.value().item);
            let class = &mut oldest[self.slabs.class_of(size) - 1];
            *class = (*class).min(entry.value().placed_at.load(Ordering::Relaxed));
        }
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        self.classes
            .iter()
            .enumerate()
            .map(|(i, c)| ClassStats {
                class: i + 1,
                number: load(&c.number),
                requested: load(&c.requested),
                age: match oldest[i] {
                    UnixSecs::MAX => 0,
                    placed => now.saturating_sub(placed),
                },
                evicted: load(&c.evicted),
                evicted_nonzero: load(&c.evicted_nonzero),
                evicted_time: load(&c.evicted_time),
                evicted_unfetched: load(&c.evicted_unfetched),
                evicted_active: load(&c.evicted_active),
                expired_unfetched: load(&c.expired_unfetched),
                reclaimed: load(&c.reclaimed),
                outofmemory: load(&c.outofmemory),
                chunks: load(&c.number) + load(&c.extra_chunks),
                get_hits: load(&c.get_hits),
                cmd_set: load(&c.cmd_set),
                delete_hits: load(&c.delete_hits),
                incr_hits: load(&c.incr_hits),
                decr_hits: load(&c.decr_hits),
                cas_hits: load(&c.cas_hits),
                cas_badval: load(&c.cas_badval),
                touch_hits: load(&c.touch_hits),
            })
            .filter(|c| {
                *c != ClassStats {
                    class: c.class,
                    ..ClassStats::default()
                }
            })
            .collect()
    }

    fn access(&self, key: &[u8]) -> Option<crate::Access> {
        let slot = self.map.get(key)?;
        Some(crate::Access {
            last: slot.accessed_at.load(Ordering::Relaxed),
            fetched: slot.marked(FETCHED),
        })
    }

    fn reset_stats(&self) {
        for counter in [
            &self.total_items,
            &self.get_expired,
            &self.get_flushed,
            &self.reclaimed,
            &self.evictions,
            &self.evicted_unfetched,
            &self.expired_unfetched,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        for class in &self.classes {
            class.reset();
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

    /// memcached's `t/issue_163.t`: a write over an expired item, or one a delayed
    /// `flush_all` hid, counts it as reclaimed, in the general and the class counters. (A
    /// `flush_all` due at once empties the store there and then.)
    #[tokio::test]
    async fn a_write_over_a_dead_item_reclaims_it() {
        use tailorkv_common::{Expiry, NodeId};
        let store = MemoryDatalet::new(Limits::default());
        let key = Bytes::from_static(b"k");
        let v = |ts| Version::new(ts, NodeId(0));
        store
            .apply(&key, set(b"v", Expiry::At(100)), v(1), 50)
            .await
            .unwrap();
        store
            .apply(&key, set(b"w", Expiry::Never), v(2), 100)
            .await
            .unwrap();
        let stats = store.stats();
        assert_eq!((stats.reclaimed, stats.expired_unfetched), (1, 1));
        let classes = store.item_classes(100);
        assert_eq!(classes.iter().map(|c| c.reclaimed).sum::<u64>(), 1);
        // Hidden by a delayed flush, then written again: reclaimed too.
        store.flush_all(105, 100, v(3)).await.unwrap();
        store
            .apply(&key, set(b"x", Expiry::Never), v(4), 106)
            .await
            .unwrap();
        assert_eq!(store.stats().reclaimed, 2);
        // A live item overwritten is not.
        store
            .apply(&key, set(b"y", Expiry::Never), v(5), 106)
            .await
            .unwrap();
        assert_eq!(store.stats().reclaimed, 2);
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

    fn evicting(memory_limit_bytes: usize) -> MemoryDatalet {
        MemoryDatalet::new(Limits {
            memory_limit_bytes,
            evict: true,
            ..Limits::default()
        })
    }

    async fn put(store: &MemoryDatalet, key: &str, value: &[u8], ts: u64, now: UnixSecs) {
        let version = Version::new(ts, tailorkv_common::NodeId(0));
        let mutation = Mutation::Store {
            mode: tailorkv_common::codec::StoreMode::Set,
            flags: 0,
            expiry: tailorkv_common::Expiry::Never,
            value: Bytes::copy_from_slice(value),
        };
        let key = Bytes::copy_from_slice(key.as_bytes());
        let outcome = store.apply(&key, mutation, version, now);
        assert_eq!(outcome.await, Ok(Outcome::Stored), "set {key:?}");
    }

    async fn has(store: &MemoryDatalet, key: &str, now: UnixSecs) -> bool {
        store.get(key.as_bytes(), now).await.unwrap().is_some()
    }

    /// memcached's `t/issue_22.t`: with `-m 3`, items of 66,560 bytes take 82,792-byte chunks
    /// of class 31, so 37 fit; each write past that evicts the oldest, counted in its class.
    #[tokio::test]
    async fn a_full_store_evicts_the_oldest_items_as_memcached_does() {
        let store = evicting(3 << 20);
        let value = vec![b'B'; 66_560];
        for i in 0..40 {
            put(&store, &format!("key{i}"), &value, i + 1, 1_000).await;
        }
        let stats = store.stats();
        assert_eq!((stats.curr_items, stats.evictions), (37, 3));
        assert_eq!(stats.evicted_unfetched, 3);
        assert!(store.used_bytes() <= 3 << 20);
        for i in 0..3 {
            assert!(
                !has(&store, &format!("key{i}"), 1_000).await,
                "key{i} stayed"
            );
        }
        for i in 3..40 {
            assert!(has(&store, &format!("key{i}"), 1_000).await, "key{i} went");
        }
        let class = store.item_classes(1_000);
        assert_eq!(class.len(), 1);
        assert_eq!(
            (class[0].class, class[0].number, class[0].evicted),
            (31, 37, 3)
        );
        // The reads above marked key3..key39 fetched: of the next 40 evictions, the last
        // three (key40..key42) are unfetched.
        for i in 40..80 {
            put(&store, &format!("key{i}"), &value, i + 1, 1_001).await;
        }
        let stats = store.stats();
        assert_eq!((stats.evictions, stats.evicted_unfetched), (43, 6));
    }

    /// An item read a minute or more after it took its place is moved to the back when its
    /// turn comes; one read sooner is not (memcached's `ITEM_UPDATE_INTERVAL`).
    #[tokio::test]
    async fn an_item_read_after_a_minute_outlives_the_others() {
        let value = vec![b'v'; 1_000];
        let store = evicting(20 * 1_184);
        for i in 0..20 {
            put(&store, &format!("k{i}"), &value, i + 1, 1_000).await;
        }
        assert!(has(&store, "k0", 1_000 + BUMP_AFTER_SECS).await);
        assert!(has(&store, "k1", 1_000 + BUMP_AFTER_SECS - 1).await);
        for i in 20..25 {
            put(&store, &format!("k{i}"), &value, i + 1, 1_100).await;
        }
        assert!(
            has(&store, "k0", 1_100).await,
            "the item read a minute on was evicted"
        );
        for i in 1..6 {
            assert!(
                !has(&store, &format!("k{i}"), 1_100).await,
                "k{i} outlived k0"
            );
        }
        assert_eq!(store.stats().evictions, 5);
        assert_eq!(store.item_classes(1_100)[0].evicted_active, 0);
    }

    /// Without eviction a full store refuses, and counts the refusal in the class.
    #[tokio::test]
    async fn without_eviction_a_full_store_refuses() {
        let store = MemoryDatalet::new(Limits {
            memory_limit_bytes: 2 * 1_184,
            ..Limits::default()
        });
        let value = vec![b'v'; 1_000];
        put(&store, "a", &value, 1, 1_000).await;
        put(&store, "b", &value, 2, 1_000).await;
        let mutation = Mutation::Store {
            mode: tailorkv_common::codec::StoreMode::Set,
            flags: 0,
            expiry: tailorkv_common::Expiry::Never,
            value: Bytes::from(value),
        };
        let version = Version::new(3, tailorkv_common::NodeId(0));
        let c = Bytes::from_static(b"c");
        let refused = store.apply(&c, mutation, version, 1_000);
        assert_eq!(refused.await, Err(DataletError::OutOfMemory));
        assert_eq!(store.stats().evictions, 0);
        assert_eq!(store.item_classes(1_000)[0].outofmemory, 1);
    }

    /// A replica never evicts by itself: it names victims, and an `Evict` removes an item
    /// only if it still holds the version named.
    #[tokio::test]
    async fn a_replica_evicts_only_the_versions_it_is_told_to() {
        let store = MemoryDatalet::replica(Limits::default());
        let value = vec![b'v'; 1_000];
        for i in 0..4 {
            put(&store, &format!("k{i}"), &value, i + 1, 1_000).await;
        }
        let victims = store.victims(2 * 1_184, 1_000);
        let keys: Vec<&[u8]> = victims.iter().map(|(k, _)| &k[..]).collect();
        assert_eq!(keys, [&b"k0"[..], b"k1"]);
        assert!(
            store.victims(1, 1_000)[0].0 == "k2",
            "a named item is named again"
        );
        // k1 is written again before its eviction is applied: it stays.
        put(&store, "k1", b"new", 10, 1_000).await;
        for (key, version) in victims {
            let evict = Mutation::Evict { version };
            let v = Version::new(11, tailorkv_common::NodeId(0));
            let outcome = store.apply(&key, evict, v, 1_000).await.unwrap();
            let want = if key == "k0" {
                Outcome::Deleted
            } else {
                Outcome::NotFound
            };
            assert_eq!(outcome, want, "{key:?}");
        }
        assert!(!has(&store, "k0", 1_000).await);
        assert!(has(&store, "k1", 1_000).await);
        assert_eq!(store.stats().evictions, 1);
        // k1, named and spared, has a place again, at the back.
        let named: Vec<Bytes> = store
            .victims(usize::MAX, 1_000)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            named,
            [Bytes::from_static(b"k3"), Bytes::from_static(b"k1")]
        );
    }

    /// Writes of the same keys over and over leave stale queue entries; they are dropped, so
    /// the queue stays in proportion to the items. Items whose places were lost (named and
    /// not evicted) get them back when the queue runs dry.
    #[tokio::test]
    async fn the_recency_queue_stays_in_proportion_to_the_items() {
        let store = evicting(64 << 20);
        for round in 0..200u64 {
            for k in 0..50 {
                put(&store, &format!("k{k}"), b"v", round * 50 + k + 1, 1_000).await;
            }
        }
        let len = store.recency.queue.lock().unwrap().entries.len();
        assert!(len <= 2 * 50 + 1024 + 1024, "the queue holds {len} entries");
        let all = store.victims(usize::MAX, 1_000);
        assert_eq!(all.len(), 50);
        assert_eq!(store.victims(1, 1_000).len(), 1, "lost places come back");
    }
}
