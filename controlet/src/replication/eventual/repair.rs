//! Anti-entropy: every [`EventualOptions::antientropy_interval`](super::EventualOptions),
//! this node compares its state with one peer in turn (and at once with a peer whose messages
//! were lost, [`Incoming::Gap`](crate::peer::Incoming)) by the hashed key ranges of
//! [`antientropy`](crate::replication::antientropy): [`Message::Summary`],
//! [`Message::Buckets`], [`Message::Entries`], [`Message::Repair`]. A round repairs about
//! [`ROUND_ENTRIES`] entries each way at most, so a large difference is repaired a slice per
//! round with bounded memory and bursts.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tailorkv_common::{NodeId, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{
    bump, deleted, item_update, Eventual, Message, Update, BATCH, ENTRIES_BATCH, MESSAGE_BYTES,
    ROUND_ENTRIES,
};
use crate::replication::antientropy::{Entry, Snapshot, BUCKETS};
use crate::shard::mux::GroupLink;

impl<D: Datalet> Eventual<D> {
    /// Drops tombstones past their grace period.
    pub(super) fn collect_tombstones(&self, now: UnixSecs) {
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
    pub(super) async fn current(&self, key: &Bytes) -> Result<Option<Update>, DataletError> {
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
    pub(super) async fn current_all(&self, keys: impl IntoIterator<Item = Bytes>) -> Vec<Update> {
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

/// The anti-entropy task: starts rounds with each peer in turn and answers theirs.
pub(super) struct Repairer<D> {
    node: Arc<Eventual<D>>,
    transport: GroupLink<Message>,
    peers: Vec<NodeId>,
    /// The group's other members, as the membership changes them.
    members: tokio::sync::watch::Receiver<Vec<NodeId>>,
    /// The next peer to start a round with.
    next: usize,
    round: u64,
    /// Per peer, the round started with it and not answered yet, and when it started.
    waiting: HashMap<NodeId, (u64, Instant)>,
    /// The last snapshot of this replica, reused for a moment by the steps of a round.
    snapshot: Option<(Instant, Arc<Snapshot>)>,
    /// Per peer this replica differs from, when that was last logged.
    logged: HashMap<NodeId, Instant>,
}

/// How often a repair under way is logged, at most, per peer.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

impl<D: Datalet> Repairer<D> {
    pub(super) fn new(
        node: Arc<Eventual<D>>,
        transport: GroupLink<Message>,
        mut members: tokio::sync::watch::Receiver<Vec<NodeId>>,
    ) -> Self {
        let peers = members.borrow_and_update().clone();
        Repairer {
            node,
            transport,
            peers,
            members,
            next: 0,
            round: 0,
            waiting: HashMap::new(),
            snapshot: None,
            logged: HashMap::new(),
        }
    }

    fn interval(&self) -> Duration {
        self.node.options.antientropy_interval
    }

    /// How long an unanswered round holds back the next one with the same peer.
    fn round_timeout(&self) -> Duration {
        (self.interval() * 4).max(Duration::from_secs(1))
    }

    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::Receiver<(NodeId, Option<Message>)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is at once; let the links come up first
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.node.collect_tombstones(self.node.clock_source.now());
                    self.start_next().await;
                }
                Ok(()) = self.members.changed() => {
                    self.peers = self.members.borrow_and_update().clone();
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
        if self.peers.is_empty() {
            return;
        }
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
                let (snapshot, mut differing) = if ranges.is_empty() {
                    (None, Vec::new())
                } else {
                    let Some(snapshot) = self.snapshot().await else {
                        return;
                    };
                    let differing = snapshot.differing_buckets(&ranges);
                    (Some(snapshot), differing)
                };
                self.progress(peer, differing.len());
                let Some(snapshot) = snapshot.filter(|_| !differing.is_empty()) else {
                    // In sync with a member: a node new to the group has all it needs.
                    if self.node.filling.swap(false, Ordering::AcqRel) {
                        tracing::info!(
                            peer = peer.0,
                            "in sync with a member of a group: serving it"
                        );
                    }
                    return;
                };
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
                    bump(
                        &self.node.counters.antientropy_entries_received,
                        updates.len(),
                    );
                    self.node.receive_all(updates).await;
                    self.snapshot = None;
                }
                if !want.is_empty() {
                    let updates = self.node.current_all(want).await;
                    self.repair(peer, updates, Vec::new());
                }
            }
            Message::Filled
            | Message::Offer
            | Message::Ready
            | Message::CausalWrites { .. }
            | Message::CausalAck { .. }
            | Message::Refill { .. }
            | Message::QuorumWrite { .. }
            | Message::QuorumAck { .. }
            | Message::QuorumRead { .. }
            | Message::QuorumEntry { .. } => {}
        }
    }

    /// Records how far this replica is from `peer`'s, and says so in the log when a repair
    /// starts, every [`PROGRESS_EVERY`] while it goes on, and when it ends.
    fn progress(&mut self, peer: NodeId, buckets: usize) {
        let before = self.node.measured(peer, buckets);
        let group = self.transport.group().0;
        if buckets == 0 {
            if before.is_some_and(|b| b > 0) {
                tracing::info!(
                    group,
                    peer = peer.0,
                    "anti-entropy: in sync with a peer again"
                );
            }
            self.logged.remove(&peer);
            return;
        }
        let due = self
            .logged
            .get(&peer)
            .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
        if due {
            self.logged.insert(peer, Instant::now());
            tracing::info!(
                group,
                peer = peer.0,
                buckets_differing = buckets,
                of = BUCKETS,
                entries_sent = self.node.antientropy_entries_sent(),
                entries_received = self.node.antientropy_entries_received(),
                "anti-entropy: repairing a replica that differs from a peer's"
            );
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
