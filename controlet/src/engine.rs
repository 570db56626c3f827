//! The engine: where a command's effect on data is carried out.
//!
//! On a single node it stamps each mutation with the next version from a local counter and
//! applies it to the datalet at once. In a cluster in a strong mode, every mutation (and
//! `flush_all`) is ordered through the total-order broadcast by a [`Replicator`] and applied
//! in that order on every member; reads go through the order too in the linearizable mode
//! and are served from the local replica in the sequential mode. In the eventual mode,
//! writes are applied locally and propagated by [`Eventual`], and reads are served from the
//! local replica. Commands talk only to this interface.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::{Clock, Expiry, NodeId, Ts, UnixSecs, Version};
use tailorkv_datalet::mutate::ITEM_OVERHEAD_BYTES;
use tailorkv_datalet::{Datalet, DataletError, DataletStats, Item, Mutation, Outcome};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::replication::{Eventual, Replicator};

/// Timestamps are reserved in the datalet this many at a time: one `save_clock` per million
/// writes, and a restart resumes past every timestamp that may have been issued.
const CLOCK_RESERVATION: Ts = 1 << 20;

/// The consistency a cluster offers, chosen at launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Every operation, reads included, goes through the total order; a reply is sent when
    /// the operation is delivered at the node the client asked.
    Linearizable,
    /// Writes go through the total order and are acknowledged once applied locally; reads
    /// are served from the local replica.
    Sequential,
    /// Writes are applied locally and propagated in the background; replicas converge.
    Eventual,
}

/// How operations are ordered in a cluster.
struct Ordered {
    replicator: Replicator,
    /// Serve reads from the local replica instead of through the order.
    local_reads: bool,
    /// The memory limit, in bytes. A replica must never fail to apply what the order
    /// delivered, or it would diverge from the others; so the limit is enforced here, before
    /// an operation is proposed, against this replica's memory, and the datalet itself has
    /// none. A write refused here was never ordered: nothing anywhere stored it. Replicas may
    /// pass the limit by what is in flight at once.
    memory_limit: AtomicUsize,
}

/// Where a node's reads and writes go: which mode it runs in, and what that mode needs.
enum Mode<D> {
    /// A single node: each mutation gets the next version of a local clock.
    Single(LocalClock),
    /// A cluster in a strong mode: operations are ordered through the total order.
    Ordered(Ordered),
    /// A cluster in the eventual mode: writes are applied locally and propagated.
    Eventual(Arc<Eventual<D>>),
}

/// A single node's versions: a counter whose timestamps are reserved in the datalet ahead of
/// use, so that a restart never issues one twice.
struct LocalClock {
    node: NodeId,
    /// The last timestamp issued.
    last_ts: AtomicU64,
    /// Timestamps up to this one are reserved in the datalet.
    reserved: AtomicU64,
    /// Held while a new reservation is saved.
    reserving: Mutex<()>,
}

impl LocalClock {
    /// A clock resuming past `resume`, the reservation a previous run saved.
    fn resume(resume: Ts) -> Self {
        LocalClock {
            node: NodeId(0),
            last_ts: AtomicU64::new(resume),
            reserved: AtomicU64::new(resume),
            reserving: Mutex::new(()),
        }
    }

    /// The next version, reserving more timestamps in `datalet` first when they run out.
    async fn next_version<D: Datalet>(&self, datalet: &D) -> Result<Version, DataletError> {
        let ts = self.last_ts.fetch_add(1, Ordering::Relaxed) + 1;
        if ts > self.reserved.load(Ordering::Acquire) {
            let _guard = self.reserving.lock().await;
            if ts > self.reserved.load(Ordering::Acquire) {
                let upto = ts + CLOCK_RESERVATION;
                datalet.save_clock(upto).await?;
                self.reserved.store(upto, Ordering::Release);
            }
        }
        Ok(Version::new(ts, self.node))
    }
}

/// Carries out commands' effects on data, in the node's mode.
pub struct Engine<D> {
    datalet: Arc<D>,
    mode: Mode<D>,
    clock: Arc<dyn Clock>,
}

impl<D: Datalet> Engine<D> {
    /// An engine over `datalet` on a single node, resuming its clock past every timestamp a
    /// previous run may have issued.
    pub async fn start(datalet: Arc<D>, clock: Arc<dyn Clock>) -> Result<Self, DataletError> {
        let resume = datalet.load_clock().await?;
        Ok(Engine {
            datalet,
            mode: Mode::Single(LocalClock::resume(resume)),
            clock,
        })
    }

    /// Orders operations through `replicator`; `local_reads` serves reads from the local
    /// replica (the sequential mode). `memory_limit` (bytes) is checked before a write is
    /// proposed; the datalet must have been opened without a limit of its own
    /// (`server::limits` sees to that), so it never refuses what the order delivers.
    pub fn replicated(
        mut self,
        replicator: Replicator,
        local_reads: bool,
        memory_limit: usize,
    ) -> Self {
        self.mode = Mode::Ordered(Ordered {
            replicator,
            local_reads,
            memory_limit: AtomicUsize::new(memory_limit),
        });
        self
    }

    /// Applies writes locally and propagates them through `eventual` (the eventual mode).
    pub fn eventual(mut self, eventual: Arc<Eventual<D>>) -> Self {
        self.mode = Mode::Eventual(eventual);
        self
    }

    /// The time now, by the engine's clock.
    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }

    /// The live item under `key`: through the order in the linearizable mode, else from the
    /// local datalet (in the sequential mode once that is sound, see
    /// [`Replicator::read_locally`]).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>, Error> {
        match &self.mode {
            Mode::Ordered(o) if !o.local_reads => o.replicator.read(key, self.now()).await,
            Mode::Ordered(o) => {
                let read = || self.datalet.get(key, self.now());
                o.replicator.read_locally(read).await
            }
            Mode::Single(_) | Mode::Eventual(_) => Ok(self.datalet.get(key, self.now()).await?),
        }
    }

    /// Carries out a client's `mutation` of `key` as the node's mode says.
    pub async fn apply(&self, key: &Bytes, mutation: Mutation) -> Result<Outcome, Error> {
        match &self.mode {
            Mode::Ordered(o) => {
                self.admit(o, key, &mutation).await?;
                o.replicator.mutate(key, mutation, self.now()).await
            }
            Mode::Eventual(e) => Ok(e.apply(key, mutation, self.now()).await?),
            Mode::Single(local) => {
                let version = local.next_version(&*self.datalet).await?;
                Ok(self
                    .datalet
                    .apply(key, mutation, version, self.now())
                    .await?)
            }
        }
    }

    /// Refuses a write that could take this replica past its memory limit, after freeing
    /// what items dead at the order's clock hold. Deletes and touches never grow an item;
    /// `incr` may by up to 20 digits.
    async fn admit(&self, o: &Ordered, key: &Bytes, mutation: &Mutation) -> Result<(), Error> {
        let grows = match mutation {
            Mutation::Store { value, .. } => key.len() + value.len() + ITEM_OVERHEAD_BYTES,
            Mutation::Incr(_) | Mutation::Decr(_) => 20,
            Mutation::Delete | Mutation::Touch { .. } => return Ok(()),
        };
        let limit = o.memory_limit.load(Ordering::Relaxed);
        let fits = || (self.datalet.used_bytes() as usize).saturating_add(grows) <= limit;
        if fits() {
            return Ok(());
        }
        // What is dead may be reclaimed only at the order's clock; bring it up to now first
        // (in the sequential mode reads do not move it, and refused writes are not ordered).
        let health = o.replicator.health();
        if health.order_now() < self.now() {
            let _ = o.replicator.advance_clock(self.now()).await;
        }
        self.datalet.reclaim(health.order_now()).await;
        if fits() {
            Ok(())
        } else {
            Err(Error::Datalet(DataletError::OutOfMemory))
        }
    }

    /// `flush_all [delay]`, with memcached's timing: the flush point is one second before the
    /// delay's exptime (memcached sets `oldest_live = realtime(exptime) - 1`), so
    /// `flush_all 10` takes effect after 9 seconds, and `flush_all 1` flushes at once and also
    /// hides items stored during the rest of this second. Without a delay the flush point is
    /// the second before now: everything stored so far goes, later writes stay.
    pub async fn flush_all(&self, delay: i32) -> Result<(), Error> {
        let now = self.now();
        let at = match Expiry::from_exptime(delay, now) {
            Expiry::At(at) if delay > 0 => at,
            _ => now,
        };
        let at = at.saturating_sub(1);
        match &self.mode {
            Mode::Ordered(o) => o.replicator.flush(at, now).await,
            Mode::Eventual(e) => Ok(e.flush(at, now).await?),
            Mode::Single(local) => {
                let version = local.next_version(&*self.datalet).await?;
                Ok(self.datalet.flush_all(at, now, version).await?)
            }
        }
    }

    /// The total order's counters, in a strong-mode cluster.
    pub fn replication_counters(&self) -> Option<&crate::replication::Counters> {
        self.ordered().map(|o| o.replicator.counters())
    }

    /// The eventual-consistency side of this node, in the eventual mode.
    pub fn eventual_node(&self) -> Option<&Eventual<D>> {
        match &self.mode {
            Mode::Eventual(e) => Some(e),
            Mode::Single(_) | Mode::Ordered(_) => None,
        }
    }

    /// Where this node stands in its cluster, in a strong mode.
    pub fn cluster_health(&self) -> Option<&crate::replication::Health> {
        self.ordered().map(|o| o.replicator.health())
    }

    /// `cache_memlimit`. In a strong-mode cluster it changes this node's limit on what it
    /// proposes, never what the replicas apply, so nodes with different limits stay identical.
    pub fn set_memory_limit(&self, bytes: usize) {
        match self.ordered() {
            Some(o) => o.memory_limit.store(bytes, Ordering::Relaxed),
            None => self.datalet.set_memory_limit(bytes),
        }
    }

    /// The datalet's counters for `stats`, with this node's memory limit in a strong mode.
    pub fn datalet_stats(&self) -> DataletStats {
        let mut stats = self.datalet.stats();
        if let Some(o) = self.ordered() {
            stats.limit_maxbytes = o.memory_limit.load(Ordering::Relaxed) as u64;
        }
        stats
    }

    /// How operations are ordered, in a strong-mode cluster.
    fn ordered(&self) -> Option<&Ordered> {
        match &self.mode {
            Mode::Ordered(o) => Some(o),
            Mode::Single(_) | Mode::Eventual(_) => None,
        }
    }

    /// Every live item of the local datalet, for `lru_crawler metadump`. In a cluster this is
    /// the local replica as it stands, not read through the order.
    pub async fn scan(&self) -> Result<Vec<(Bytes, Item)>, Error> {
        Ok(self.datalet.scan(self.now()).await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use tailorkv_common::codec::StoreMode;
    use tailorkv_common::{ManualClock, SystemClock};
    use tailorkv_datalet::{Limits, MemoryDatalet};

    use super::*;

    /// A memory datalet whose clock reservations are remembered, as a durable store would.
    struct Remembering {
        inner: MemoryDatalet,
        saved: StdMutex<Vec<Ts>>,
        resume: Ts,
    }

    impl Datalet for Remembering {
        async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
            self.inner.get(key, now).await
        }
        async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
            self.inner.scan(now).await
        }
        async fn apply(
            &self,
            key: &Bytes,
            m: Mutation,
            v: Version,
            now: UnixSecs,
        ) -> Result<Outcome, DataletError> {
            self.inner.apply(key, m, v, now).await
        }
        async fn flush_all(
            &self,
            at: UnixSecs,
            now: UnixSecs,
            version: Version,
        ) -> Result<(), DataletError> {
            self.inner.flush_all(at, now, version).await
        }
        async fn reset(&self) -> Result<(), DataletError> {
            self.inner.reset().await
        }
        async fn load_clock(&self) -> Result<Ts, DataletError> {
            Ok(self.resume)
        }
        async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
            self.saved.lock().unwrap().push(ts);
            Ok(())
        }
        fn set_memory_limit(&self, bytes: usize) {
            self.inner.set_memory_limit(bytes)
        }
        fn stats(&self) -> DataletStats {
            self.inner.stats()
        }
    }

    fn set(v: &str) -> Mutation {
        Mutation::Store {
            mode: StoreMode::Set,
            flags: 0,
            expiry: Expiry::Never,
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    #[tokio::test]
    async fn versions_resume_past_the_saved_reservation() {
        let datalet = Arc::new(Remembering {
            inner: MemoryDatalet::new(Limits::default()),
            saved: StdMutex::new(Vec::new()),
            resume: 5_000_000,
        });
        let engine = Engine::start(datalet.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        let key = Bytes::from_static(b"k");
        let mut last = 0;
        for i in 0..100 {
            engine.apply(&key, set(&i.to_string())).await.unwrap();
            let version = engine.get(&key).await.unwrap().unwrap().version;
            assert!(version.ts > 5_000_000, "a version below the resumed clock");
            assert!(version.ts > last, "versions must increase");
            last = version.ts;
        }
        let saved = datalet.saved.lock().unwrap().clone();
        assert_eq!(
            saved,
            vec![5_000_001 + CLOCK_RESERVATION],
            "one reservation, saved first"
        );
    }

    #[tokio::test]
    async fn a_delayed_flush_point_is_a_second_before_its_delay() {
        let clock = Arc::new(ManualClock::new(1_000));
        let datalet = Arc::new(MemoryDatalet::new(Limits::default()));
        let engine = Engine::start(datalet, clock.clone()).await.unwrap();
        let key = Bytes::from_static(b"k");
        engine.apply(&key, set("v")).await.unwrap();
        engine.flush_all(3).await.unwrap();
        clock.advance(1);
        assert!(engine.get(&key).await.unwrap().is_some());
        clock.advance(1);
        assert_eq!(engine.get(&key).await.unwrap(), None);
    }
}
