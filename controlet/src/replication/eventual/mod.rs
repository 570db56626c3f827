//! The eventual mode: writes applied locally and acknowledged at once, propagated in the
//! background, resolved by version on every replica, and repaired by hinted handoff and
//! anti-entropy.
//!
//! A client never waits on a peer, and replicas converge whatever order updates arrive in:
//! every write carries a hybrid-logical-clock version `(ts, node)`, and each replica keeps,
//! per key, the highest version it has seen, of an item or of a tombstone (deletes leave
//! tombstones, so a late older write cannot bring a key back; a flush travels with its
//! version and acts as a tombstone for every key). What propagation loses (a peer down or
//! slow, a broken link, a replica restarted empty) anti-entropy finds and repairs, with
//! traffic in proportion to the difference.
//!
//! # Layout
//!
//! - this file: the node, [`Eventual`]: its clock, per-key locks, tombstones and last flush,
//!   and a client's writes.
//! - `message.rs`: [`Update`] and [`Message`], what peers send each other.
//! - `receive.rs`: what peers send: an update is stored only if it is newer than what the
//!   key holds; anti-entropy messages go on to the repairer.
//! - `propagate.rs`: the task that sends updates to every peer without ever waiting on one,
//!   keeping *hints* for a peer whose queue is full.
//! - `repair.rs`: the anti-entropy task, and the entries this replica compares.
//!
//! # One change to a key at a time
//!
//! Every change to a key's item or tombstone holds the key's lock (`KEY_LOCKS` stripes,
//! never held while waiting on a peer): so a delete and its tombstone are one step to a
//! peer's update of the key, which cannot find the key empty and untombstoned and bring an
//! older write back; and a client's write takes its version under the lock, so each replica
//! applies its own writes of a key in version order.
//!
//! # Caveats
//!
//! A replica cut off for longer than [`EventualOptions::tombstone_grace`] can resurrect
//! deleted keys. Tombstones, hints and the last flush live in memory. Until a peer's update
//! or summary arrives, a write on a freshly restarted node can lose to an older write from a
//! node whose clock ran ahead. The whole story, with the anti-entropy steps, is in
//! `docs/architecture.md`.

pub mod causal;
mod causal_io;
mod message;
mod propagate;
pub mod quorum;
mod receive;
mod repair;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Clock, Expiry, NodeId, Ts, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, Item, MetaGet, MetaSet, Mutation, Outcome};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::antientropy::bucket_of;
use crate::peer::{new_session, LinkConfig, Transport};
use crate::placement::GroupId;
use crate::shard::mux::{self, GroupInbox, GroupLink, Groups, Wire};
use propagate::{Hints, Propagator};
use repair::Repairer;

pub use message::{Message, Update};

/// Timestamps per millisecond of wall-clock time in [`wall_floor`].
const TS_PER_MS: Ts = 64;

/// The wall clock as a timestamp floor: milliseconds since the epoch times [`TS_PER_MS`]
/// (below [`tailorkv_common::version::MAX_TS`] until the year 2109). A node's clock runs
/// ahead of the floor only while it issues more than 64 versions per millisecond on average
/// (or hears of a peer that did); a restart within such a lead could reissue a version, so
/// the floor makes that need a sustained 64,000 writes a second and a crash in the same
/// moment.
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
/// Rounds of evictions a write that does not fit may make before it is refused.
const EVICTION_ROUNDS: usize = 8;
/// How long an eviction's tombstone is kept, at most: long enough for its delete to reach
/// every replica by propagation or the next anti-entropy rounds, short enough that a cache
/// evicting all the time does not fill with tombstones. An item a replica cut off for longer
/// still holds may come back; it is an item that was written, and the full replica evicts
/// again.
const EVICTION_TOMBSTONE_SECS: UnixSecs = 60;

/// How the eventual mode repairs replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// A full replica evicts its least recently used items to make room (`--evict lru`), as
    /// versioned deletes every replica carries out; else a write that does not fit is
    /// refused.
    pub evict: bool,
    /// The causal mode ([`causal`]): writes carry their dependencies and are made visible
    /// only after them, streamed from a log instead of hints and anti-entropy.
    pub causal: bool,
    /// Tests only: in the causal mode, make peers' writes visible without waiting for their
    /// dependencies (the bug the causal checker must catch).
    pub unsafe_skip_dependencies: bool,
    /// Replicas a read asks, this one included (`--read-quorum`, R); 1: this one only.
    pub read_quorum: usize,
    /// Replicas that hold a client's write before it is acknowledged, this one included
    /// (`--write-quorum`, W); 1: this one only.
    pub write_quorum: usize,
}

/// The largest frame an eventual-mode link carries for items up to `item_size_max`: a batch
/// of updates or a repair is cut at `MESSAGE_BYTES` (4 MiB) plus the one entry that passed it.
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
            evict: false,
            causal: false,
            unsafe_skip_dependencies: false,
            read_quorum: 1,
            write_quorum: 1,
        }
    }
}

/// What repair costs, for `stats`.
#[derive(Debug, Default)]
struct Counters {
    antientropy_rounds: AtomicU64,
    antientropy_messages_sent: AtomicU64,
    antientropy_entries_sent: AtomicU64,
    antientropy_entries_received: AtomicU64,
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

    /// Waits for every key's lock (in stripe order, as no one else takes two): no change to
    /// any key is under way while they are held.
    async fn lock_all(&self) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut guards = Vec::with_capacity(self.0.len());
        for stripe in &self.0 {
            guards.push(stripe.lock().await);
        }
        guards
    }
}

/// The eventual-consistency side of a node: applies local writes, propagates them, applies
/// its peers' updates, and repairs replicas.
pub struct Eventual<D> {
    datalet: Arc<D>,
    clock_source: Arc<dyn Clock>,
    me: NodeId,
    /// The Lamport clock: the last timestamp issued or seen.
    clock: Arc<AtomicU64>,
    tombstones: Mutex<HashMap<Bytes, Tombstone>>,
    /// Held by every change to a key's item or tombstone (see the module documentation).
    locks: KeyLocks,
    /// The highest-version flush made or received (an [`Update::Flush`]).
    flushed: Mutex<Option<Update>>,
    outgoing: mpsc::Sender<Update>,
    options: EventualOptions,
    counters: Arc<Counters>,
    /// The group's members as the membership last named them (this node among them while it
    /// is one).
    target: Mutex<Vec<NodeId>>,
    /// This replica's memory limit in bytes. The datalet has none of its own (it must take
    /// every peer's update): a client's write is checked here, and a replica past its limit
    /// evicts (with `options.evict`).
    memory_limit: std::sync::atomic::AtomicUsize,
    /// The other members, to propagate to and repair with; the propagator and the repairer
    /// follow it. A node leaving the group keeps the members it hands its copy to.
    peers: tokio::sync::watch::Sender<Vec<NodeId>>,
    /// This node is new to the group and has not been sent a whole copy yet (nor found
    /// itself in sync with a member): it does not serve the group.
    filling: AtomicBool,
    /// This node is no longer a member and has handed over what it held.
    left: AtomicBool,
    /// The group's side of the node's transport, for handing a copy over.
    link: GroupLink<Message>,
    /// New members that answered an offer of a copy: their group runs, so it can take one.
    ready: Mutex<std::collections::HashSet<NodeId>>,
    /// The node's budget for handing copies over (`--rebalance-rate`).
    rate: Mutex<Option<Arc<crate::rate::RateLimit>>>,
    /// The causal mode's stream and context, in that mode.
    causal: Option<Arc<causal::Causal>>,
    /// Read and write quorums, when either is above 1.
    quorums: Option<quorum::Quorums>,
    /// Per peer, how far this replica is from the peer's: the buckets (of
    /// [`super::antientropy::BUCKETS`]) found differing in the last anti-entropy round this
    /// node started with it (0 when in sync).
    divergence: Mutex<BTreeMap<NodeId, usize>>,
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
        let (transport, inbox) = Transport::<Wire<Message>>::start(
            me,
            new_session(),
            listener,
            peers,
            options.link.clone(),
            shutdown.clone(),
        );
        let groups = Groups::default();
        let group = GroupId(0);
        let members = peers.iter().map(|&(id, _)| id).chain([me]).collect();
        let group_inbox = groups.add(group, members);
        let (forwarded, _) = mpsc::unbounded_channel();
        let (joins, _) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(mux::run(
            inbox,
            groups,
            Groups::default(),
            forwarded,
            joins,
            shutdown.clone(),
        ));
        let targets: Vec<NodeId> = peers.iter().map(|&(id, _)| id).collect();
        let link = GroupLink::new(transport, group);
        Self::start_in(
            me,
            datalet,
            (clock_source, Arc::default()),
            (link, group_inbox),
            &targets,
            shutdown,
            options,
        )
    }

    /// Starts a group's eventual replication on its side of the node's transport, with the
    /// group's other members `peers`. `lamport` is the node's Lamport clock, which every group
    /// it holds shares, so no two of its writes, in any group, get one version (nor one CAS
    /// unique).
    pub fn start_in(
        me: NodeId,
        datalet: Arc<D>,
        (clock_source, lamport): (Arc<dyn Clock>, Arc<AtomicU64>),
        (transport, inbox): (GroupLink<Message>, GroupInbox<Message>),
        peers: &[NodeId],
        shutdown: CancellationToken,
        options: EventualOptions,
    ) -> Arc<Self> {
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let hint_bytes = options.hint_bytes;
        let counters = Arc::new(Counters::default());
        let (peers_tx, peers_rx) = tokio::sync::watch::channel(peers.to_vec());
        let mut target = peers.to_vec();
        target.push(me);
        target.sort();
        let causal = options.causal.then(|| {
            let origin = causal::Origin {
                node: me,
                run: new_session(),
            };
            let restored = datalet.stats().curr_items > 0;
            Arc::new(causal::Causal::new(
                origin,
                peers,
                options.unsafe_skip_dependencies,
                restored,
            ))
        });
        let quorums = (options.read_quorum > 1 || options.write_quorum > 1)
            .then(|| quorum::Quorums::new(options.read_quorum, options.write_quorum));
        let node = Arc::new(Eventual {
            quorums,
            causal: causal.clone(),
            target: Mutex::new(target),
            memory_limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
            peers: peers_tx,
            filling: AtomicBool::new(false),
            left: AtomicBool::new(false),
            link: transport.clone(),
            ready: Mutex::default(),
            rate: Mutex::default(),
            divergence: Mutex::default(),
            datalet,
            clock_source,
            me,
            clock: lamport,
            tombstones: Mutex::new(HashMap::new()),
            locks: KeyLocks::new(),
            flushed: Mutex::new(None),
            outgoing,
            options,
            counters: counters.clone(),
        });
        let (repairs, repair_queue) = mpsc::channel(REPAIR_QUEUE);
        if let Some(causal) = causal {
            // The stream replaces hints and anti-entropy: it loses nothing, and what it
            // cannot give, a refill does.
            drop((queue, repair_queue));
            tokio::spawn(Arc::clone(&node).send_stream(causal, peers_rx, shutdown.clone()));
        } else {
            let propagator = Propagator {
                transport: transport.clone(),
                peers: peers.iter().map(|&p| (p, Hints::default())).collect(),
                limit: hint_bytes,
                counters,
                members: peers_rx.clone(),
            };
            tokio::spawn(propagator.run(queue, shutdown.clone()));
            let repairer = Repairer::new(Arc::clone(&node), transport, peers_rx);
            tokio::spawn(repairer.run(repair_queue, shutdown.clone()));
        }
        tokio::spawn(Arc::clone(&node).take_inbox(inbox, repairs, shutdown));
        node
    }

    /// Hands copies over within `rate`, the node's budget (`--rebalance-rate`).
    pub fn set_rebalance_rate(&self, rate: Option<Arc<crate::rate::RateLimit>>) {
        *self.rate.lock().unwrap() = rate;
    }

    /// This node has just been named a member of the group: it does not serve the group
    /// until a member has sent it a whole copy (or it finds itself in sync with one).
    pub fn begin_filling(&self) {
        self.filling.store(true, Ordering::Release);
    }

    /// Not serving the group yet: still being sent a copy.
    pub fn is_filling(&self) -> bool {
        self.filling.load(Ordering::Acquire)
    }

    /// A copy is moving in or out: this node is being sent one, or is handing its own over.
    pub fn is_moving(&self) -> bool {
        self.is_filling() || (!self.target.lock().unwrap().contains(&self.me) && !self.has_left())
    }

    /// This node has left the group and handed over what it held.
    pub fn has_left(&self) -> bool {
        self.left.load(Ordering::Acquire)
    }

    /// The group's members from now on (a membership change; `target` sorted or not). The
    /// new members are each sent a whole copy by one node: the lowest-numbered member
    /// staying, or, if none stays, the lowest-numbered one leaving. A node leaving keeps
    /// propagating to the members until everything it held has gone out (its copy, if it
    /// sends one, and its hints), and then has left.
    pub fn retarget(self: &Arc<Self>, target: &[NodeId]) {
        let mut target = target.to_vec();
        target.sort();
        let before = {
            let mut current = self.target.lock().unwrap();
            if *current == target {
                return;
            }
            std::mem::replace(&mut *current, target.clone())
        };
        let me = self.me;
        let peers: Vec<NodeId> = target.iter().copied().filter(|&n| n != me).collect();
        self.peers.send_replace(peers);
        let new: Vec<NodeId> = target
            .iter()
            .copied()
            .filter(|n| !before.contains(n))
            .collect();
        let staying = before.iter().copied().filter(|n| target.contains(n)).min();
        let sender = staying.or_else(|| before.iter().copied().min());
        let leaving = !target.contains(&me);
        let node = Arc::clone(self);
        // In the causal mode a new member is sent refills by every member as soon as it is
        // heard, so nothing is handed over here.
        if sender == Some(me) && !new.is_empty() && self.causal.is_none() {
            tokio::spawn(async move {
                for to in new {
                    node.hand_over(to).await;
                }
                if leaving {
                    node.finish_leaving().await;
                }
            });
        } else if leaving {
            tokio::spawn(async move { node.finish_leaving().await });
        }
    }

    /// Sends `to` everything this replica holds (items and tombstones, as updates it keeps
    /// if newer), then tells it the copy is whole.
    async fn hand_over(&self, to: NodeId) {
        // The new member may not run the group yet (it learns of the change on its own): offer
        // until it answers, for as long as it is a member.
        self.ready.lock().unwrap().remove(&to);
        loop {
            if !self.target.lock().unwrap().contains(&to) {
                return;
            }
            let _ = self.link.try_send(to, Message::Offer);
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.ready.lock().unwrap().remove(&to) {
                break;
            }
        }
        let started = std::time::Instant::now();
        let now = self.clock_source.now();
        let mut keys: Vec<Bytes> = match self.datalet.scan(now).await {
            Ok(items) => items.into_iter().map(|(k, _)| k).collect(),
            Err(e) => {
                tracing::error!(error = %e, "cannot read the store to hand a copy over");
                return;
            }
        };
        keys.extend(self.tombstones.lock().unwrap().keys().cloned());
        let mut sent_bytes = 0u64;
        let mut items = 0usize;
        for chunk in keys.chunks(BATCH) {
            let updates = self.current_all(chunk.iter().cloned()).await;
            items += updates.len();
            sent_bytes += updates.iter().map(|u| u.size() as u64).sum::<u64>();
            let bytes: u64 = updates.iter().map(|u| u.size() as u64).sum();
            self.send_reliably(to, Message::Updates(updates)).await;
            let rate = self.rate.lock().unwrap().clone();
            if let Some(rate) = rate {
                rate.spend(bytes);
                tokio::time::sleep(rate.wait()).await;
            }
        }
        if let Some(flush) = self.flushed.lock().unwrap().clone() {
            let _ = self.link.try_send(to, Message::Updates(vec![flush]));
        }
        self.send_reliably(to, Message::Filled).await;
        tracing::info!(
            to = to.0,
            items,
            bytes = sent_bytes,
            ms = started.elapsed().as_millis() as u64,
            "copy handed over"
        );
    }

    /// Queues `message` for `to`, waiting while its queue is full.
    async fn send_reliably(&self, to: NodeId, mut message: Message) {
        loop {
            match self.link.try_send(to, message) {
                Ok(()) => return,
                Err(back) => {
                    message = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// A node leaving: once its hints are gone and its queues have emptied (everything it
    /// held has gone out to the members), it has left.
    async fn finish_leaving(&self) {
        loop {
            let peers = self.peers.borrow().clone();
            let drained = self.hints_pending() == 0
                && peers
                    .iter()
                    .all(|&p| self.link.room(p) >= self.link.queue_bytes());
            if drained {
                self.left.store(true, Ordering::Release);
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

    /// Items and tombstones received from peers repairing this replica (each applied unless
    /// this replica already held a newer version).
    pub fn antientropy_entries_received(&self) -> u64 {
        self.counters
            .antientropy_entries_received
            .load(Ordering::Relaxed)
    }

    /// Per peer still in the group, the buckets that differed at the last round with it.
    pub fn divergence(&self) -> Vec<(NodeId, usize)> {
        let peers = self.peers.borrow().clone();
        let mut divergence = self.divergence.lock().unwrap();
        divergence.retain(|p, _| peers.contains(p));
        divergence.iter().map(|(&p, &b)| (p, b)).collect()
    }

    /// Records the buckets found differing with `peer`; returns what was recorded before.
    fn measured(&self, peer: NodeId, buckets: usize) -> Option<usize> {
        self.divergence.lock().unwrap().insert(peer, buckets)
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

    /// The memory limit of this replica (`-m`, `cache_memlimit`).
    pub fn set_memory_limit(&self, bytes: usize) {
        self.memory_limit.store(bytes, Ordering::Relaxed);
    }

    pub fn memory_limit(&self) -> usize {
        self.memory_limit.load(Ordering::Relaxed)
    }

    /// Makes room for `grows` more bytes: frees what dead items hold, then, if this replica
    /// evicts, evicts its least recently used items, each as a delete at the version it
    /// holds, which every replica carries out and which loses to any later write. Whether
    /// there is room now.
    async fn make_room(&self, grows: usize, now: UnixSecs) -> Result<bool, DataletError> {
        let limit = self.memory_limit();
        let fits = || (self.datalet.used_bytes() as usize).saturating_add(grows) <= limit;
        if fits() {
            return Ok(true);
        }
        self.datalet.reclaim(now).await;
        if fits() || !self.options.evict {
            return Ok(fits());
        }
        for _ in 0..EVICTION_ROUNDS {
            let used = self.datalet.used_bytes() as usize;
            let need = used.saturating_add(grows).saturating_sub(limit);
            let victims = self.datalet.victims(need, now);
            if victims.is_empty() {
                break;
            }
            for (key, version) in victims {
                self.evict(key, version, now).await?;
            }
            if fits() {
                return Ok(true);
            }
        }
        Ok(fits())
    }

    /// Evicts `key`'s item if it is still the one at `version`: it goes, and a tombstone at
    /// its version goes to the peers, so they drop that item (and no later one) and repair
    /// does not bring it back. The tombstone is dated so that it is kept for
    /// [`EVICTION_TOMBSTONE_SECS`] (see there).
    async fn evict(&self, key: Bytes, version: Version, now: UnixSecs) -> Result<(), DataletError> {
        let ticket = self.begin().await;
        let result = async {
            let _key = self.locks.lock(&key).await;
            let evict = Mutation::Evict { version };
            if self.datalet.apply(&key, evict, version, now).await? != Outcome::Deleted {
                return Ok(((), None));
            }
            let deleted_at = (now + EVICTION_TOMBSTONE_SECS).saturating_sub(self.grace_secs());
            self.remember_tombstone(&key, version, deleted_at, now);
            let update = Update::Deleted {
                key,
                version,
                deleted_at,
            };
            Ok(((), Some(update)))
        }
        .await;
        self.finish(ticket, result).await
    }

    /// Evicts down to the memory limit, if this replica evicts and peers' updates took it
    /// past.
    pub(super) async fn evict_to_limit(&self) {
        if !self.options.evict {
            return;
        }
        let now = self.clock_source.now();
        if let Err(e) = self.make_room(0, now).await {
            tracing::warn!(error = %e, "could not evict to the memory limit");
        }
    }

    /// Applies a client's mutation locally, then queues what it left for the peers.
    pub async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<Outcome, crate::error::Error> {
        let grows = mutation.growth(key);
        if grows > 0 && !self.make_room(grows, now).await? {
            return Err(DataletError::OutOfMemory.into());
        }
        let plain_set = matches!(
            mutation,
            Mutation::Store {
                mode: StoreMode::Set,
                ..
            }
        );
        if !plain_set && self.causal.is_none() {
            // A write decided on what the key holds (add, cas, incr, append, delete, touch)
            // first brings this replica the newest entry of R replicas, as a read would.
            self.read_quorum(key).await?;
        }
        let ticket = self.begin().await;
        let result = async {
            let _key = self.locks.lock(key).await;
            match mutation {
                Mutation::Touch { expiry } => self.touch(key, expiry, now).await,
                Mutation::Delete => self.delete(key, Mutation::Delete, now).await,
                Mutation::MetaDelete(d) if !d.invalidate => {
                    self.delete(key, Mutation::MetaDelete(d), now).await
                }
                Mutation::MetaGet(get) => self.fetch(key, get, now).await,
                other => self.store(key, other, now).await,
            }
        }
        .await;
        if ticket.is_none() && self.quorums.as_ref().is_some_and(|q| q.write > 1) {
            // Acknowledged once W replicas hold it.
            let (outcome, update) = result?;
            if let Some(update) = update {
                self.write_quorum(key, update).await?;
            }
            return Ok(outcome);
        }
        Ok(self.finish(ticket, result).await?)
    }

    /// In the causal mode, numbers the local write about to be made ([`causal::Causal::begin`]).
    async fn begin(&self) -> Option<causal::Ticket> {
        match &self.causal {
            Some(causal) => Some(causal.begin().await),
            None => None,
        }
    }

    /// A local write is done: what it left goes to the peers (in the causal mode, into its
    /// numbered place in the stream, an empty one if it failed or changed nothing).
    async fn finish<T>(
        &self,
        ticket: Option<causal::Ticket>,
        result: Result<(T, Option<Update>), DataletError>,
    ) -> Result<T, DataletError> {
        match (&self.causal, ticket) {
            (Some(causal), Some(ticket)) => {
                let (outcome, update) = match result {
                    Ok((outcome, update)) => (Ok(outcome), update),
                    Err(e) => (Err(e), None),
                };
                causal.end(ticket, update);
                outcome
            }
            _ => {
                let (outcome, update) = result?;
                if let Some(update) = update {
                    self.send(update).await;
                }
                Ok(outcome)
            }
        }
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
        let item = self.datalet.peek(key, now).await?;
        // Only what this write left goes to the peers, not an item it did not change.
        let update = item
            .filter(|item| item.version == version)
            .map(|item| item_update(key, item));
        Ok((outcome, update))
    }

    /// `mg` with flags that may change the item, with the key locked. It is decided here: a
    /// win token is handed out once per node, not once in the cluster (there is no order to
    /// agree in), and it stays on this node until the item is next written. A new expiry
    /// (`T`) goes to the peers as a `touch` does, as a new version.
    async fn fetch(
        &self,
        key: &Bytes,
        get: MetaGet,
        now: UnixSecs,
    ) -> Result<(Outcome, Option<Update>), DataletError> {
        let (mut outcome, update) = self.store(key, Mutation::MetaGet(get), now).await?;
        let Some(expiry) = get.touch else {
            return Ok((outcome, update));
        };
        if let Outcome::Fetched(fetched) = &mut outcome {
            if !fetched.created {
                if let (Outcome::Touched(item), update) = self.touch(key, expiry, now).await? {
                    fetched.item.version = item.version;
                    return Ok((outcome, update));
                }
            }
        }
        Ok((outcome, update))
    }

    /// A client's `delete`, with the key locked: the item goes and its tombstone is recorded
    /// in one step as far as a peer's update of the key can tell, since that takes the lock
    /// too. The version is issued under the lock, so it is above every version stored here.
    async fn delete(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<(Outcome, Option<Update>), DataletError> {
        let version = self.next_version();
        let outcome = self.datalet.apply(key, mutation, version, now).await?;
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
            let mutation = Mutation::MetaSet(MetaSet {
                mode: StoreMode::Set,
                compare: Some(item.version.cas()),
                invalidate: false,
                flags: item.flags,
                expiry,
                value: item.value.clone(),
                marks: item.marks,
            });
            let version = self.next_version();
            let outcome = self.datalet.apply(key, mutation, version, now).await?;
            if outcome == Outcome::StoredAt(version) {
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
        let ticket = self.begin().await;
        let result = async {
            // Every write that took a version below the flush's is stored once the locks
            // are held, and every later one takes a version above it.
            let _all = self.locks.lock_all().await;
            let version = self.next_version();
            let flush = Update::Flush { at, now, version };
            {
                let mut flushed = self.flushed.lock().unwrap();
                if flushed.as_ref().is_none_or(|f| f.version() < version) {
                    *flushed = Some(flush.clone());
                }
            }
            self.flush_locked(at, now, version).await?;
            Ok(((), Some(flush)))
        }
        .await;
        self.finish(ticket, result).await
    }

    /// Carries out a flush at `version`, made here or by a peer, with every key's lock held.
    /// An immediate flush removes exactly the items older than it, so a write that follows it
    /// in version order survives it on every replica: on the node that made it and on one
    /// that hears of it after storing newer writes alike. (It reads the whole store, holding
    /// every write back meanwhile: `flush_all` is rare.) A delayed flush sets the datalet's
    /// flush point, which hides what is stored until its moment, on every replica by its own
    /// clock.
    pub(super) async fn flush_locked(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    ) -> Result<(), DataletError> {
        let local_now = self.clock_source.now();
        if at > local_now {
            return self.datalet.flush_all(at, now, version).await;
        }
        let items = match self.datalet.scan(local_now).await {
            Ok(items) => items,
            // A store that cannot list its items (a remote server without `lru_crawler
            // metadump`) is flushed whole, newer writes too; anti-entropy brings those back.
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the store's items; flushing it whole");
                return self.datalet.flush_all(at, now, version).await;
            }
        };
        for (key, item) in items {
            if item.version < version {
                self.remove_older(&key, version).await?;
            }
        }
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
}

fn item_update(key: &Bytes, item: Item) -> Update {
    Update::Item {
        key: key.clone(),
        value: item.value,
        flags: item.flags,
        expiry: item.expiry,
        version: item.version,
        marks: item.marks,
    }
}

fn deleted(key: &Bytes, t: Tombstone) -> Update {
    Update::Deleted {
        key: key.clone(),
        version: t.version,
        deleted_at: t.deleted_at,
    }
}
