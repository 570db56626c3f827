//! Eventual consistency: writes applied locally, propagated in the background, resolved by
//! version on every replica, and repaired by hinted handoff and anti-entropy.
//!
//! # How it works
//!
//! A write is applied to the local datalet at a fresh Lamport version `(ts, this node)` and
//! acknowledged at once. The item it left (or, for a delete, a tombstone) is then queued as an
//! [`Update`] and sent to every peer in batches by a background task. A replica receiving an
//! update moves its clock past the update's timestamp and keeps whichever of the two is newer:
//! it stores the update only if its version is higher than both the item it holds and any
//! tombstone it remembers for the key, using `cas` (or `add` when the key is absent) so that a
//! concurrent local write is never overwritten blindly. Every replica thus ends with each
//! key's highest-version write, whatever order updates arrive in.
//!
//! Deletes leave tombstones (key, version, time of the delete) in memory, so an older write
//! arriving late cannot bring a deleted key back. `touch` makes a new version of the item so
//! the new expiry travels too. `flush_all` travels with its version and is applied once per
//! replica; once it is in effect, a replica refuses peers' items older than it (it acts as a
//! tombstone for every key), so a replica that had not seen it yet cannot copy flushed items
//! back.
//!
//! # One change to a key at a time
//!
//! Every change to a key's item or tombstone on a node holds the key's lock: a client's
//! write or delete, a peer's update or delete, and anti-entropy removing a superseded item.
//! (There are 1,024 locks, each for a stripe of keys by hash, held across this node's own
//! datalet calls and never while anything waits on a peer.) So a delete removes the item and
//! records its tombstone in one step as far as a peer's update of the key can tell, and the
//! update reads the tombstone and the item and stores as one step too: a peer's older write
//! arriving during a delete cannot find the key empty and untombstoned and bring it back on
//! this replica alone. A client's write takes its version under the lock, above every version
//! stored for the key here, so each replica applies its own writes of a key in version order.
//!
//! # Writes never wait on a peer
//!
//! Updates go to each peer with [`Transport::try_send`] only. What a peer's queue cannot take
//! (the peer is down, cut off or slow) is kept for it as *hints* (hinted handoff): per peer,
//! one update per key, the highest version, and the latest flush, sent first. Hints are sent
//! as soon as the peer's queue has room again (retried every [`HINT_RETRY`]). They are
//! bounded ([`EventualOptions::hint_bytes`] per peer, by [`Update`]s' sizes): past that, the peer's hints are
//! dropped and counted, and until its queue takes a message again its updates are only
//! counted, not kept; anti-entropy repairs what they carried. Each drop is reported to the
//! transport ([`Transport::dropped`]), so the peer sees a gap where the updates were and
//! starts an anti-entropy round with this node at once.
//!
//! # Anti-entropy
//!
//! Every [`EventualOptions::antientropy_interval`], this node compares its state with one
//! peer in turn (and at once with a peer whose messages were lost, [`Incoming::Gap`]), with
//! the hashed key ranges of [`antientropy`](super::antientropy): [`Message::Summary`] (32
//! range hashes), [`Message::Buckets`] (bucket hashes of the ranges that differ),
//! [`Message::Entries`] (keys and versions of the buckets that differ) and [`Message::Repair`]
//! (the items and tombstones one side holds newer, and the keys it wants). Traffic scales
//! with the difference: replicas in sync exchange 2 small messages per round, and one
//! differing key among any number costs one bucket's keys and versions and the one entry.
//! Anti-entropy repairs whatever the hints did not carry: updates lost with a broken
//! connection, dropped hints, and a replica restarted with an empty store. A replica's digest
//! lists a key under its tombstone when the tombstone is at or above the item's version, so
//! the replica removes such an item as it takes its snapshot (else no round would find the
//! item it still served). The summary also carries the sender's clock and last flush, so a
//! restarted replica's clock moves past the versions in use and a missed flush is applied.
//!
//! Each round scans the local store ([`Datalet::scan`]): local work is proportional to the
//! data, traffic to the difference. A round repairs about [`ROUND_ENTRIES`] entries each way
//! at most, starting at a different bucket each time, so a replica that missed much (or
//! restarted empty) is repaired a slice per round with bounded memory and bursts. A node does
//! not start a new round with a peer while its last one is unanswered (for up to a few
//! intervals), so a peer that is away does not come back to a pile of stale rounds. An entry
//! may travel twice: when updates are still in flight as a round compares, or when two peers
//! repair the same replica at once; receivers keep the higher version either way.
//!
//! The costs are counted: [`Eventual::antientropy_rounds`],
//! [`Eventual::antientropy_messages_sent`], [`Eventual::antientropy_entries_sent`],
//! [`Eventual::hints_queued`], [`Eventual::hints_dropped`] and [`Eventual::hints_pending`].
//!
//! # Tombstones are collected
//!
//! A tombstone is dropped once it is older than [`EventualOptions::tombstone_grace`] (one
//! hour by default), counted from the delete by the clock of the node that made it, so every
//! replica drops it at about the same time (nodes' clocks are assumed to agree to within
//! seconds) and anti-entropy does not bring it back. **A replica cut off from the others for
//! longer than the grace period can resurrect deleted keys**: once the tombstones are gone
//! everywhere, anti-entropy copies the items it still holds back to the others.
//!
//! # Limits
//!
//! - Tombstones, hints and the last flush live in memory: a restarted node forgets them (its
//!   peers still hold theirs and repair it, within the grace period).
//! - The clock is a hybrid logical clock: never below the wall clock (64 timestamps per
//!   millisecond, [`wall_floor`]), so a node restarted with an empty memory does not reissue
//!   its old versions unless it had run more than 64 writes per millisecond ahead of the wall
//!   clock. It moves past the cluster's as soon as a peer's update or summary arrives; until
//!   then a write on a freshly restarted node can lose to an older write made on a node
//!   whose clock had run ahead.
//! - `flush_all` is repaired as one flush point (the latest), not as a history: a replica
//!   that missed a flush gets it from a summary and applies it then, which also removes what
//!   it stored since; anti-entropy brings back whatever of that the others hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Clock, Expiry, NodeId, Ts, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, Item, Mutation, Outcome};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::antientropy::{bucket_of, Entry, Snapshot};
use crate::peer::{new_session, Incoming, LinkConfig, Transport};

/// One replicated change: the item a write left, a delete's tombstone, or a flush.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    Item {
        key: Bytes,
        value: Bytes,
        flags: u32,
        expiry: Expiry,
        version: Version,
    },
    Deleted {
        key: Bytes,
        version: Version,
        /// When the delete was made, by its node's clock: tombstones are collected by it.
        deleted_at: UnixSecs,
    },
    Flush {
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    },
}

impl Update {
    fn version(&self) -> Version {
        match self {
            Update::Item { version, .. }
            | Update::Deleted { version, .. }
            | Update::Flush { version, .. } => *version,
        }
    }

    /// Roughly how many bytes it takes on the wire.
    fn size(&self) -> usize {
        match self {
            Update::Item { key, value, .. } => key.len() + value.len() + 32,
            Update::Deleted { key, .. } => key.len() + 24,
            Update::Flush { .. } => 32,
        }
    }
}

/// What eventual-mode peers send each other.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Local writes, or hints, on their way to every replica.
    Updates(Vec<Update>),
    /// Anti-entropy, step 1: the sender's range hashes, clock and last flush.
    Summary {
        round: u64,
        clock: Ts,
        flush: Option<Update>,
        ranges: Vec<u64>,
    },
    /// Step 2: the answer to summary `round`: the bucket hashes of each range that differs;
    /// none when the two agree.
    Buckets {
        round: u64,
        ranges: Vec<(u16, Vec<u64>)>,
    },
    /// Step 3: the sender's keys and versions in buckets that differ.
    Entries { buckets: Vec<(u16, Vec<Entry>)> },
    /// Step 4: items and tombstones the receiver lacks or holds older, and keys the sender
    /// wants in return.
    Repair {
        updates: Vec<Update>,
        want: Vec<Bytes>,
    },
}

impl crate::weigh::Weigh for Message {
    fn weight(&self) -> usize {
        let updates = |u: &[Update]| u.iter().map(Update::size).sum::<usize>();
        let data = match self {
            Message::Updates(u) => updates(u),
            Message::Summary { ranges, .. } => 8 * ranges.len() + 40,
            Message::Buckets { ranges, .. } => {
                ranges.iter().map(|(_, b)| 8 * b.len() + 10).sum::<usize>()
            }
            Message::Entries { buckets } => buckets
                .iter()
                .flat_map(|(_, entries)| entries)
                .map(|e| e.key.len() + 24)
                .sum(),
            Message::Repair { updates: u, want } => {
                updates(u) + want.iter().map(|k| k.len() + 8).sum::<usize>()
            }
        };
        data + 16
    }
}

/// Timestamps per millisecond of wall-clock time in [`wall_floor`].
const TS_PER_MS: Ts = 64;

/// The wall clock as a timestamp floor: milliseconds since the epoch times [`TS_PER_MS`]
/// (below [`tailorkv_common::MAX_TS`] until the year 2109). A node's clock runs ahead of the
/// floor only while it issues more than 64 versions per millisecond on average (or hears of
/// a peer that did); a restart within such a lead could reissue a version, so the floor makes
/// that need a sustained 64,000 writes a second and a crash in the same moment.
fn wall_floor() -> Ts {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Ts);
    ms * TS_PER_MS
}

/// Updates queued for the propagation task, at most, before writers wait for it (it never
/// waits on a peer, so they wait only for this node's own work).
const OUTGOING_QUEUE: usize = 64 * 1024;
/// Updates sent in one peer message, at most.
const BATCH: usize = 512;
/// Keys and versions sent in one anti-entropy message, at most.
const ENTRIES_BATCH: usize = 8192;
/// Bytes of updates in one peer message, at most (far below the transport's frame limit).
const MESSAGE_BYTES: usize = 4 << 20;
/// How often hints are retried while a peer's queue is full.
pub const HINT_RETRY: Duration = Duration::from_millis(20);
/// Entries one anti-entropy round repairs in each direction, about, at most: a larger
/// difference takes several rounds, so that a round's memory and burst of messages stay
/// bounded.
pub const ROUND_ENTRIES: usize = 16 * 1024;
/// Anti-entropy messages received and waiting to be handled, at most; more are dropped.
const REPAIR_QUEUE: usize = 1024;
/// Stripes of per-key locks: changes to keys of one stripe wait for each other.
const KEY_LOCKS: usize = 1024;

/// How the eventual mode repairs replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventualOptions {
    /// How often an anti-entropy round starts, with the next peer in turn.
    pub antientropy_interval: Duration,
    /// How long a tombstone is kept after its delete. A replica cut off for longer can
    /// resurrect deleted keys.
    pub tombstone_grace: Duration,
    /// Bytes of updates kept per peer while its queue is full, at most.
    pub hint_bytes: usize,
    /// The cluster's name and frame limit on peer links.
    pub link: LinkConfig,
}

/// The largest frame an eventual-mode link carries for items up to `item_size_max`: a batch
/// of updates or a repair is cut at [`MESSAGE_BYTES`] plus the one entry that passed it.
pub fn max_frame_bytes(item_size_max: usize) -> usize {
    (MESSAGE_BYTES + item_size_max + (1 << 20)).max(crate::peer::MAX_FRAME_BYTES)
}

impl Default for EventualOptions {
    fn default() -> Self {
        EventualOptions {
            antientropy_interval: Duration::from_secs(2),
            tombstone_grace: Duration::from_secs(3600),
            hint_bytes: 64 << 20,
            link: LinkConfig::default(),
        }
    }
}

/// What repair costs, for `stats`.
#[derive(Debug, Default)]
struct Counters {
    antientropy_rounds: AtomicU64,
    antientropy_messages_sent: AtomicU64,
    antientropy_entries_sent: AtomicU64,
    hints_queued: AtomicU64,
    hints_dropped: AtomicU64,
    hints_pending: AtomicU64,
}

fn bump(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

#[derive(Clone, Copy, Debug)]
struct Tombstone {
    version: Version,
    deleted_at: UnixSecs,
}

/// Per-key exclusion: one lock per stripe of keys ([`KEY_LOCKS`] stripes, by [`bucket_of`]).
struct KeyLocks(Vec<tokio::sync::Mutex<()>>);

impl KeyLocks {
    fn new() -> Self {
        KeyLocks((0..KEY_LOCKS).map(|_| Default::default()).collect())
    }

    /// Waits for `key`'s lock, which the other keys of its stripe share.
    async fn lock(&self, key: &[u8]) -> tokio::sync::MutexGuard<'_, ()> {
        self.0[bucket_of(key) % KEY_LOCKS].lock().await
    }
}

/// The eventual-consistency side of a node: applies local writes, propagates them, applies
/// its peers' updates, and repairs replicas.
pub struct Eventual<D> {
    datalet: Arc<D>,
    clock_source: Arc<dyn Clock>,
    me: NodeId,
    /// The Lamport clock: the last timestamp issued or seen.
    clock: AtomicU64,
    tombstones: Mutex<HashMap<Bytes, Tombstone>>,
    /// Held by every change to a key's item or tombstone (see the module documentation).
    locks: KeyLocks,
    /// The highest-version flush made or received (an [`Update::Flush`]).
    flushed: Mutex<Option<Update>>,
    outgoing: mpsc::Sender<Update>,
    options: EventualOptions,
    counters: Arc<Counters>,
}

impl<D: Datalet> Eventual<D> {
    /// Starts propagating to `peers` and receiving on `listener`, with the default
    /// [`EventualOptions`].
    pub fn start(
        me: NodeId,
        datalet: Arc<D>,
        clock_source: Arc<dyn Clock>,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let options = EventualOptions::default();
        Self::start_with(
            me,
            datalet,
            clock_source,
            listener,
            peers,
            shutdown,
            options,
        )
    }

    /// [`Eventual::start`] with `options`.
    pub fn start_with(
        me: NodeId,
        datalet: Arc<D>,
        clock_source: Arc<dyn Clock>,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        shutdown: CancellationToken,
        options: EventualOptions,
    ) -> Arc<Self> {
        let (transport, mut inbox) = Transport::<Message>::start(
            me,
            new_session(),
            listener,
            peers,
            options.link,
            shutdown.clone(),
        );
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let counters = Arc::new(Counters::default());
        let node = Arc::new(Eventual {
            datalet,
            clock_source,
            me,
            clock: Default::default(),
            tombstones: Mutex::new(HashMap::new()),
            locks: KeyLocks::new(),
            flushed: Mutex::new(None),
            outgoing,
            options,
            counters: counters.clone(),
        });
        let targets: Vec<NodeId> = peers.iter().map(|&(id, _)| id).collect();
        let propagator = Propagator {
            transport: transport.clone(),
            peers: targets.iter().map(|&p| (p, Hints::default())).collect(),
            limit: options.hint_bytes,
            counters,
        };
        tokio::spawn(propagator.run(queue, shutdown.clone()));
        let (repairs, repair_queue) = mpsc::channel(REPAIR_QUEUE);
        let repairer = Repairer::new(Arc::clone(&node), transport, targets);
        tokio::spawn(repairer.run(repair_queue, shutdown.clone()));
        let receiver = Arc::clone(&node);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    b = inbox.recv() => b,
                    () = shutdown.cancelled() => return,
                };
                let Some((from, event)) = batch else { return };
                let message = match event {
                    Incoming::Message(Message::Updates(updates)) => {
                        receiver.receive_all(updates).await;
                        continue;
                    }
                    Incoming::Message(other) => Some(other),
                    // Updates from this peer were lost: compare with it now.
                    Incoming::Gap => None,
                };
                if repairs.try_send((from, message)).is_err() {
                    tracing::debug!(peer = ?from, "anti-entropy busy; dropping a message");
                }
            }
        });
        node
    }

    /// Anti-entropy rounds this node started.
    pub fn antientropy_rounds(&self) -> u64 {
        self.counters.antientropy_rounds.load(Ordering::Relaxed)
    }

    /// Anti-entropy messages this node sent (every step, both as initiator and as answerer).
    pub fn antientropy_messages_sent(&self) -> u64 {
        self.counters
            .antientropy_messages_sent
            .load(Ordering::Relaxed)
    }

    /// Items and tombstones this node sent to repair a peer.
    pub fn antientropy_entries_sent(&self) -> u64 {
        self.counters
            .antientropy_entries_sent
            .load(Ordering::Relaxed)
    }

    /// Updates kept as hints because a peer's queue was full (counted per peer).
    pub fn hints_queued(&self) -> u64 {
        self.counters.hints_queued.load(Ordering::Relaxed)
    }

    /// Hinted updates dropped over the bound, left for anti-entropy (counted per peer).
    pub fn hints_dropped(&self) -> u64 {
        self.counters.hints_dropped.load(Ordering::Relaxed)
    }

    /// Hints waiting for their peers now, over all peers.
    pub fn hints_pending(&self) -> u64 {
        self.counters.hints_pending.load(Ordering::Relaxed)
    }

    /// Tombstones held now.
    pub fn tombstones(&self) -> usize {
        self.tombstones.lock().unwrap().len()
    }

    /// The next version: past every timestamp issued or seen here, and past
    /// [`wall_floor`], so that a node restarted with an empty memory does not issue a
    /// timestamp it issued before its restart (a hybrid logical clock).
    fn next_version(&self) -> Version {
        let floor = wall_floor();
        let mut current = self.clock.load(Ordering::Acquire);
        loop {
            let ts = (current + 1).max(floor);
            match self
                .clock
                .compare_exchange_weak(current, ts, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Version::new(ts, self.me),
                Err(seen) => current = seen,
            }
        }
    }

    fn observe(&self, ts: Ts) {
        self.clock.fetch_max(ts, Ordering::AcqRel);
    }

    fn grace_secs(&self) -> u64 {
        self.options.tombstone_grace.as_secs()
    }

    /// Whether a tombstone of a delete made at `deleted_at` is past its grace period.
    fn collectable(&self, deleted_at: UnixSecs, now: UnixSecs) -> bool {
        deleted_at.saturating_add(self.grace_secs()) <= now
    }

    /// Applies a client's mutation locally, then queues what it left for the peers.
    pub async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        let (outcome, update) = {
            let _key = self.locks.lock(key).await;
            match mutation {
                Mutation::Touch { expiry } => self.touch(key, expiry, now).await?,
                Mutation::Delete => self.delete(key, now).await?,
                other => self.store(key, other, now).await?,
            }
        };
        if let Some(update) = update {
            self.send(update).await;
        }
        Ok(outcome)
    }

    /// A client's write other than `touch` and `delete`, with the key locked; the item it
    /// left, to send.
    async fn store(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<(Outcome, Option<Update>), DataletError> {
        let version = self.next_version();
        let outcome = self.datalet.apply(key, mutation, version, now).await?;
        let item = self.datalet.get(key, now).await?;
        Ok((outcome, item.map(|item| item_update(key, item))))
    }

    /// A client's `delete`, with the key locked: the item goes and its tombstone is recorded
    /// in one step as far as a peer's update of the key can tell, since that takes the lock
    /// too. The version is issued under the lock, so it is above every version stored here.
    async fn delete(
        &self,
        key: &Bytes,
        now: UnixSecs,
    ) -> Result<(Outcome, Option<Update>), DataletError> {
        let version = self.next_version();
        let outcome = self
            .datalet
            .apply(key, Mutation::Delete, version, now)
            .await?;
        if outcome != Outcome::Deleted {
            return Ok((outcome, None));
        }
        self.remember_tombstone(key, version, now, now);
        let update = Update::Deleted {
            key: key.clone(),
            version,
            deleted_at: now,
        };
        Ok((outcome, Some(update)))
    }

    /// `touch` as a new version of the item, so that the new expiry propagates; with the key
    /// locked.
    async fn touch(
        &self,
        key: &Bytes,
        expiry: Expiry,
        now: UnixSecs,
    ) -> Result<(Outcome, Option<Update>), DataletError> {
        loop {
            let Some(item) = self.datalet.get(key, now).await? else {
                return Ok((Outcome::NotFound, None));
            };
            let mutation = Mutation::Store {
                mode: StoreMode::Cas(item.version.cas()),
                flags: item.flags,
                expiry,
                value: item.value.clone(),
            };
            let version = self.next_version();
            if self.datalet.apply(key, mutation, version, now).await? == Outcome::Stored {
                let touched = Item {
                    expiry,
                    version,
                    ..item
                };
                let update = item_update(key, touched.clone());
                return Ok((Outcome::Touched(touched), Some(update)));
            }
        }
    }

    pub async fn flush(&self, at: UnixSecs, now: UnixSecs) -> Result<(), DataletError> {
        let version = self.next_version();
        self.datalet.flush_all(at, now, version).await?;
        let flush = Update::Flush { at, now, version };
        {
            let mut flushed = self.flushed.lock().unwrap();
            if flushed.as_ref().is_none_or(|f| f.version() < version) {
                *flushed = Some(flush.clone());
            }
        }
        self.send(flush).await;
        Ok(())
    }

    async fn send(&self, update: Update) {
        // Fails only at shutdown.
        let _ = self.outgoing.send(update).await;
    }

    fn remember_tombstone(&self, key: &Bytes, version: Version, deleted_at: UnixSecs, now: u64) {
        if self.collectable(deleted_at, now) {
            return;
        }
        let stone = Tombstone {
            version,
            deleted_at,
        };
        self.tombstones
            .lock()
            .unwrap()
            .entry(key.clone())
            .and_modify(|t| {
                if t.version < version {
                    *t = stone;
                }
            })
            .or_insert(stone);
    }

    async fn receive_all(&self, updates: Vec<Update>) {
        for update in updates {
            if let Err(e) = self.receive(update).await {
                tracing::warn!(error = %e, "could not apply a peer's update");
            }
        }
    }

    /// Applies a peer's update if it is newer than what this replica holds.
    pub(super) async fn receive(&self, update: Update) -> Result<(), DataletError> {
        self.observe(update.version().ts);
        match update {
            Update::Flush { at, now, version } => {
                {
                    let mut flushed = self.flushed.lock().unwrap();
                    if flushed.as_ref().is_some_and(|f| f.version() >= version) {
                        return Ok(()); // seen already, or superseded
                    }
                    *flushed = Some(Update::Flush { at, now, version });
                }
                self.datalet.flush_all(at, now, version).await
            }
            Update::Item {
                key,
                value,
                flags,
                expiry,
                version,
            } => {
                let mutation = |mode| Mutation::Store {
                    mode,
                    flags,
                    expiry,
                    value: value.clone(),
                };
                let _key = self.locks.lock(&key).await;
                self.replace_if_newer(&key, version, mutation).await
            }
            Update::Deleted {
                key,
                version,
                deleted_at,
            } => {
                let _key = self.locks.lock(&key).await;
                self.remember_tombstone(&key, version, deleted_at, self.clock_source.now());
                self.remove_older(&key, version).await
            }
        }
    }

    /// Removes the item under `key` if its version is not above `version`; with the key
    /// locked.
    async fn remove_older(&self, key: &Bytes, version: Version) -> Result<(), DataletError> {
        loop {
            let now = self.clock_source.now();
            let Some(item) = self.datalet.get(key, now).await? else {
                return Ok(());
            };
            if item.version > version {
                return Ok(());
            }
            let cas = Mutation::Store {
                mode: StoreMode::Cas(item.version.cas()),
                flags: 0,
                expiry: Expiry::At(0),
                value: Bytes::new(),
            };
            // Storing an already-expired item removes it, version-checked by cas.
            if self.datalet.apply(key, cas, version, now).await? == Outcome::Stored {
                return Ok(());
            }
        }
    }

    /// Whether an item at `version` was flushed by a flush in effect at `now`.
    fn flushed_out(&self, version: Version, now: UnixSecs) -> bool {
        match &*self.flushed.lock().unwrap() {
            Some(Update::Flush { at, version: f, .. }) => *at <= now && version < *f,
            _ => false,
        }
    }

    /// Whether this replica holds a tombstone for `key` at or above `version`.
    fn deleted_since(&self, key: &[u8], version: Version) -> bool {
        let tombstones = self.tombstones.lock().unwrap();
        tombstones.get(key).is_some_and(|t| t.version >= version)
    }

    /// Stores `mutation(mode)` at `version` unless the key holds a newer item or tombstone;
    /// with the key locked. Every try reads the tombstone again with the item.
    async fn replace_if_newer(
        &self,
        key: &Bytes,
        version: Version,
        mutation: impl Fn(StoreMode) -> Mutation,
    ) -> Result<(), DataletError> {
        loop {
            // An expired item is as good as absent.
            let now = self.clock_source.now();
            if self.flushed_out(version, now) || self.deleted_since(key, version) {
                return Ok(());
            }
            let mode = match self.datalet.get(key, now).await? {
                Some(item) if item.version >= version => return Ok(()),
                Some(item) => StoreMode::Cas(item.version.cas()),
                None => StoreMode::Add,
            };
            match self
                .datalet
                .apply(key, mutation(mode), version, now)
                .await?
            {
                Outcome::Stored => return Ok(()),
                // Changed meanwhile (an item expired, or the store was written behind this
                // node's back): look again.
                _ => continue,
            }
        }
    }

    /// Drops tombstones past their grace period.
    fn collect_tombstones(&self, now: UnixSecs) {
        self.tombstones
            .lock()
            .unwrap()
            .retain(|_, t| !self.collectable(t.deleted_at, now));
    }

    /// This replica's entries: every live item, and every tombstone in its grace period.
    /// An item that a tombstone here, or the flush, supersedes is removed instead of listed:
    /// the digest would list its key as deleted, as the other replicas do, and no round would
    /// find the item this replica still served.
    pub(super) async fn snapshot(&self) -> Result<Snapshot, DataletError> {
        let now = self.clock_source.now();
        let items = self.datalet.scan(now).await?;
        let stones: HashMap<Bytes, Version> = self
            .tombstones
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| !self.collectable(t.deleted_at, now))
            .map(|(key, t)| (key.clone(), t.version))
            .collect();
        let flush = self.flushed.lock().unwrap().as_ref().map(Update::version);
        let mut entries = Vec::with_capacity(items.len() + stones.len());
        for (key, item) in items {
            // Written here at a version below a flush, concurrently with it: the flush
            // removes it on every other replica, so here too.
            let flushed = flush.filter(|_| self.flushed_out(item.version, now));
            // Under a tombstone at or above it: deleted everywhere else. No change made
            // through this node leaves one (each holds the key's lock), but a store changed
            // behind its back can.
            let deleted = stones.get(&key).copied().filter(|&t| t >= item.version);
            if let Some(above) = flushed.max(deleted) {
                let _key = self.locks.lock(&key).await;
                self.remove_older(&key, above).await?;
                continue;
            }
            entries.push(Entry {
                key,
                version: item.version,
                tombstone: false,
            });
        }
        entries.extend(stones.into_iter().map(|(key, version)| Entry {
            key,
            version,
            tombstone: true,
        }));
        Ok(Snapshot::new(entries))
    }

    /// What this replica holds for `key` now, as an update: its item or its tombstone,
    /// whichever is newer.
    async fn current(&self, key: &Bytes) -> Result<Option<Update>, DataletError> {
        let now = self.clock_source.now();
        let stone = self
            .tombstones
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .filter(|t| !self.collectable(t.deleted_at, now));
        let item = self.datalet.get(key, now).await?;
        Ok(match (item, stone) {
            (Some(item), Some(t)) if t.version >= item.version => Some(deleted(key, t)),
            (Some(item), _) => Some(item_update(key, item)),
            (None, Some(t)) => Some(deleted(key, t)),
            (None, None) => None,
        })
    }

    /// The current updates for `keys`, skipping keys that hold nothing any more.
    async fn current_all(&self, keys: impl IntoIterator<Item = Bytes>) -> Vec<Update> {
        let mut updates = Vec::new();
        for key in keys {
            match self.current(&key).await {
                Ok(Some(update)) => updates.push(update),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not read an entry to repair"),
            }
        }
        updates
    }
}

fn item_update(key: &Bytes, item: Item) -> Update {
    Update::Item {
        key: key.clone(),
        value: item.value,
        flags: item.flags,
        expiry: item.expiry,
        version: item.version,
    }
}

fn deleted(key: &Bytes, t: Tombstone) -> Update {
    Update::Deleted {
        key: key.clone(),
        version: t.version,
        deleted_at: t.deleted_at,
    }
}

/// Splits `items` into chunks of at most `max` items and about `max_bytes` bytes.
fn chunks<T>(
    items: Vec<T>,
    max: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for item in items {
        let n = size(&item);
        if !chunk.is_empty() && (chunk.len() >= max || bytes + n > max_bytes) {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += n;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// Updates one peer's queue could not take, waiting for it.
#[derive(Debug, Default)]
struct Hints {
    /// The newest flush, sent before the updates (which it must not hide if they are newer).
    flush: Option<Update>,
    /// Per key, the highest-version update.
    updates: HashMap<Bytes, Update>,
    /// What the flush and the updates weigh ([`Update::size`]).
    bytes: usize,
    /// The peer's queue was full at the last try: until the next retry, updates go straight
    /// to the hints (trying to send them would cost a full batch of hints each time).
    blocked: bool,
    /// Hints overflowed and were dropped: until the peer's queue takes a message again, its
    /// updates are dropped too (anti-entropy carries them).
    overflowed: bool,
}

impl Hints {
    fn len(&self) -> usize {
        self.updates.len() + usize::from(self.flush.is_some())
    }

    fn is_empty(&self) -> bool {
        self.flush.is_none() && self.updates.is_empty()
    }

    /// Keeps `update` unless a newer one for the same key (or a newer flush) is kept already.
    fn keep(&mut self, update: Update) {
        match &update {
            Update::Flush { version, .. } => {
                if self.flush.as_ref().is_none_or(|f| f.version() < *version) {
                    self.bytes += update.size();
                    let old = self.flush.replace(update);
                    self.bytes -= old.map_or(0, |u| u.size());
                }
            }
            Update::Item { key, version, .. } | Update::Deleted { key, version, .. } => {
                match self.updates.get(key) {
                    Some(held) if held.version() >= *version => {}
                    _ => {
                        self.bytes += update.size();
                        let old = self.updates.insert(key.clone(), update);
                        self.bytes -= old.map_or(0, |u| u.size());
                    }
                }
            }
        }
    }

    /// Takes the next message's worth of hints: the flush first.
    fn take(&mut self) -> Vec<Update> {
        let mut batch: Vec<Update> = self.flush.take().into_iter().collect();
        let mut bytes = 0;
        let keys: Vec<Bytes> = self
            .updates
            .iter()
            .take_while(|(_, u)| {
                bytes += u.size();
                batch.len() < BATCH && bytes <= MESSAGE_BYTES
            })
            .map(|(k, _)| k.clone())
            .collect();
        // At least one, however large.
        let keys = if keys.is_empty() {
            self.updates.keys().take(1).cloned().collect()
        } else {
            keys
        };
        batch.extend(keys.iter().filter_map(|k| self.updates.remove(k)));
        self.bytes -= batch.iter().map(Update::size).sum::<usize>();
        batch
    }
}

/// Sends local updates to every peer without ever waiting for one, keeping hints.
struct Propagator {
    transport: Transport<Message>,
    peers: Vec<(NodeId, Hints)>,
    limit: usize,
    counters: Arc<Counters>,
}

impl Propagator {
    async fn run(mut self, mut queue: mpsc::Receiver<Update>, shutdown: CancellationToken) {
        loop {
            let hinting = self.peers.iter().any(|(_, h)| h.blocked || !h.is_empty());
            let first = tokio::select! {
                u = queue.recv() => match u {
                    Some(u) => Some(u),
                    None => return,
                },
                () = tokio::time::sleep(HINT_RETRY), if hinting => None,
                () = shutdown.cancelled() => return,
            };
            let Some(first) = first else {
                for i in 0..self.peers.len() {
                    self.peers[i].1.blocked = false;
                    self.drain(i);
                }
                self.gauge();
                continue;
            };
            let mut bytes = first.size();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < MESSAGE_BYTES {
                match queue.try_recv() {
                    Ok(u) => {
                        bytes += u.size();
                        batch.push(u);
                    }
                    Err(_) => break,
                }
            }
            for i in 0..self.peers.len() {
                self.deliver(i, batch.clone());
            }
            self.gauge();
        }
    }

    fn gauge(&self) {
        let pending: usize = self.peers.iter().map(|(_, h)| h.len()).sum();
        self.counters
            .hints_pending
            .store(pending as u64, Ordering::Relaxed);
    }

    /// Sends hints to peer `i` while its queue takes them; whether they are all gone.
    fn drain(&mut self, i: usize) -> bool {
        let (peer, hints) = &mut self.peers[i];
        if hints.blocked {
            return hints.is_empty();
        }
        while !hints.is_empty() {
            let batch = hints.take();
            if let Err(Message::Updates(batch)) =
                self.transport.try_send(*peer, Message::Updates(batch))
            {
                for update in batch {
                    hints.keep(update);
                }
                hints.blocked = true;
                return false;
            }
        }
        true
    }

    /// Sends `batch` to peer `i`, after its hints; keeps it as hints if its queue is full.
    fn deliver(&mut self, i: usize, batch: Vec<Update>) {
        if self.peers[i].1.blocked || !self.drain(i) {
            self.hint(i, batch);
            return;
        }
        let (peer, hints) = &mut self.peers[i];
        match self.transport.try_send(*peer, Message::Updates(batch)) {
            Ok(()) => hints.overflowed = false,
            Err(Message::Updates(batch)) => {
                hints.blocked = true;
                self.hint(i, batch);
            }
            Err(_) => unreachable!("try_send gives back the message it was given"),
        }
    }

    fn hint(&mut self, i: usize, batch: Vec<Update>) {
        let (peer, hints) = &mut self.peers[i];
        if hints.overflowed {
            bump(&self.counters.hints_dropped, batch.len());
            // The peer sees a gap here, and repairs by anti-entropy at once.
            self.transport.dropped(*peer);
            return;
        }
        bump(&self.counters.hints_queued, batch.len());
        for update in batch {
            hints.keep(update);
        }
        if hints.bytes > self.limit {
            tracing::debug!(peer = ?peer, hints = hints.len(), bytes = hints.bytes, "too many hints; dropping them");
            bump(&self.counters.hints_dropped, hints.len());
            self.transport.dropped(*peer);
            *hints = Hints {
                blocked: true,
                overflowed: true,
                ..Hints::default()
            };
        }
    }
}

/// The anti-entropy task: starts rounds with each peer in turn and answers theirs.
struct Repairer<D> {
    node: Arc<Eventual<D>>,
    transport: Transport<Message>,
    peers: Vec<NodeId>,
    /// The next peer to start a round with.
    next: usize,
    round: u64,
    /// Per peer, the round started with it and not answered yet, and when it started.
    waiting: HashMap<NodeId, (u64, Instant)>,
    /// The last snapshot of this replica, reused for a moment by the steps of a round.
    snapshot: Option<(Instant, Arc<Snapshot>)>,
}

impl<D: Datalet> Repairer<D> {
    fn new(node: Arc<Eventual<D>>, transport: Transport<Message>, peers: Vec<NodeId>) -> Self {
        Repairer {
            node,
            transport,
            peers,
            next: 0,
            round: 0,
            waiting: HashMap::new(),
            snapshot: None,
        }
    }

    fn interval(&self) -> Duration {
        self.node.options.antientropy_interval
    }

    /// How long an unanswered round holds back the next one with the same peer.
    fn round_timeout(&self) -> Duration {
        (self.interval() * 4).max(Duration::from_secs(1))
    }

    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<(NodeId, Option<Message>)>,
        shutdown: CancellationToken,
    ) {
        if self.peers.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is at once; let the links come up first
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.node.collect_tombstones(self.node.clock_source.now());
                    self.start_next().await;
                }
                m = inbox.recv() => match m {
                    Some((peer, None)) => {
                        self.waiting.remove(&peer);
                        self.start(peer).await;
                    }
                    Some((peer, Some(message))) => self.handle(peer, message).await,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// This replica's snapshot, a fresh one unless the last is younger than half an
    /// interval (so the steps of one round, and many rounds at once, share one scan).
    async fn snapshot(&mut self) -> Option<Arc<Snapshot>> {
        let max_age = (self.interval() / 2).min(Duration::from_secs(1));
        if let Some((taken, snapshot)) = &self.snapshot {
            if taken.elapsed() < max_age {
                return Some(Arc::clone(snapshot));
            }
        }
        match self.node.snapshot().await {
            Ok(snapshot) => {
                let snapshot = Arc::new(snapshot);
                self.snapshot = Some((Instant::now(), Arc::clone(&snapshot)));
                Some(snapshot)
            }
            Err(e) => {
                tracing::warn!(error = %e, "anti-entropy could not scan the store");
                None
            }
        }
    }

    fn send(&self, peer: NodeId, message: Message) -> bool {
        let sent = self.transport.try_send(peer, message).is_ok();
        if sent {
            bump(&self.node.counters.antientropy_messages_sent, 1);
        }
        sent
    }

    /// Starts a round with the next peer that is not still answering an earlier one.
    async fn start_next(&mut self) {
        let timeout = self.round_timeout();
        self.waiting
            .retain(|_, (_, started)| started.elapsed() < timeout);
        for _ in 0..self.peers.len() {
            let peer = self.peers[self.next % self.peers.len()];
            self.next = self.next.wrapping_add(1);
            if !self.waiting.contains_key(&peer) {
                self.start(peer).await;
                return;
            }
        }
    }

    async fn start(&mut self, peer: NodeId) {
        // A fresh snapshot: the last one may predate repairs.
        self.snapshot = None;
        let Some(snapshot) = self.snapshot().await else {
            return;
        };
        self.round += 1;
        let summary = Message::Summary {
            round: self.round,
            clock: self.node.clock.load(Ordering::Acquire),
            flush: self.node.flushed.lock().unwrap().clone(),
            ranges: snapshot.summary(),
        };
        if self.send(peer, summary) {
            self.waiting.insert(peer, (self.round, Instant::now()));
            bump(&self.node.counters.antientropy_rounds, 1);
        }
    }

    async fn handle(&mut self, peer: NodeId, message: Message) {
        match message {
            Message::Updates(updates) => self.node.receive_all(updates).await,
            Message::Summary {
                round,
                clock,
                flush,
                ranges,
            } => {
                self.node.observe(clock);
                let theirs = flush.as_ref().map(Update::version);
                if let Some(flush) = flush {
                    self.node.receive_all(vec![flush]).await;
                }
                let mine = self.node.flushed.lock().unwrap().clone();
                if let Some(mine) = mine.filter(|m| theirs.is_none_or(|t| t < m.version())) {
                    self.send(
                        peer,
                        Message::Repair {
                            updates: vec![mine],
                            want: Vec::new(),
                        },
                    );
                }
                let Some(snapshot) = self.snapshot().await else {
                    return;
                };
                let differing = snapshot.differing_ranges(&ranges);
                let ranges = snapshot.range_hashes(&differing);
                self.send(peer, Message::Buckets { round, ranges });
            }
            Message::Buckets { round, ranges } => {
                if self.waiting.get(&peer).map(|&(r, _)| r) != Some(round) {
                    return; // an answer to an earlier round, superseded
                }
                self.waiting.remove(&peer);
                if ranges.is_empty() {
                    return; // in sync
                }
                let Some(snapshot) = self.snapshot().await else {
                    return;
                };
                let mut differing = snapshot.differing_buckets(&ranges);
                // Over many rounds, and from several peers at once, start at different
                // buckets: a large difference is repaired a slice at a time.
                let start = (round as usize).wrapping_mul(7919) + usize::from(self.node.me.0);
                let len = differing.len();
                differing.rotate_left(start % len.max(1));
                let mut budget = ROUND_ENTRIES;
                let buckets: Vec<_> = snapshot
                    .entries_in(&differing)
                    .into_iter()
                    .take_while(|(_, entries)| {
                        let more = budget > 0;
                        budget = budget.saturating_sub(entries.len().max(1));
                        more
                    })
                    .collect();
                let size = |(_, entries): &(u16, Vec<Entry>)| {
                    entries.iter().map(|e| e.key.len() + 16).sum::<usize>() + 8
                };
                for buckets in chunks(buckets, ENTRIES_BATCH, MESSAGE_BYTES, size) {
                    if !self.send(peer, Message::Entries { buckets }) {
                        return; // the peer is behind: the next round goes on
                    }
                }
            }
            Message::Entries { buckets } => {
                let Some(snapshot) = self.snapshot().await else {
                    return;
                };
                let mut reconciled = snapshot.reconcile(&buckets);
                reconciled.send.truncate(ROUND_ENTRIES);
                reconciled.want.truncate(ROUND_ENTRIES);
                let updates = self
                    .node
                    .current_all(reconciled.send.into_iter().map(|e| e.key))
                    .await;
                self.repair(peer, updates, reconciled.want);
            }
            Message::Repair { updates, want } => {
                if !updates.is_empty() {
                    self.node.receive_all(updates).await;
                    self.snapshot = None;
                }
                if !want.is_empty() {
                    let updates = self.node.current_all(want).await;
                    self.repair(peer, updates, Vec::new());
                }
            }
        }
    }

    /// Sends `updates` to `peer` in messages of a reasonable size, asking for `want`.
    fn repair(&self, peer: NodeId, updates: Vec<Update>, want: Vec<Bytes>) {
        let mut messages: Vec<Message> =
            chunks(want, ENTRIES_BATCH, MESSAGE_BYTES, |k| k.len() + 4)
                .into_iter()
                .map(|want| Message::Repair {
                    updates: Vec::new(),
                    want,
                })
                .collect();
        messages.extend(
            chunks(updates, BATCH, MESSAGE_BYTES, Update::size)
                .into_iter()
                .map(|updates| Message::Repair {
                    updates,
                    want: Vec::new(),
                }),
        );
        for message in messages {
            let entries = match &message {
                Message::Repair { updates, .. } => updates.len(),
                _ => 0,
            };
            if !self.send(peer, message) {
                return; // the peer is behind: the next round goes on
            }
            bump(&self.node.counters.antientropy_entries_sent, entries);
        }
    }
}
