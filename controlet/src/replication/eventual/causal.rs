//! The causal mode: causal+ consistency in the manner of COPS (Lloyd et al., SOSP 2011), on
//! the eventual mode's replicas.
//!
//! A write is applied locally and acknowledged at once, as in the eventual mode, but it also
//! gets a number in its node's stream (a *dot*: the node's run and a sequence number) and
//! carries its *dependencies*: the context this replica had made visible when the write was
//! made (per origin, a prefix of its stream). Each node sends its own stream to every peer in
//! order, from a log it keeps until each peer has acknowledged it; a replica makes a peer's
//! write visible only once it follows that origin's last visible write and everything it
//! depends on is visible here. So what a replica shows is causally closed at every moment:
//! a client reading from one node never sees an effect before its cause, and since a
//! replica's state only grows, its reads never go back in time either. Concurrent writes of
//! a key converge as in the eventual mode: the highest version wins everywhere, and versions
//! respect causality (a node's clock passes every version it applies).
//!
//! What the log cannot give a peer (a peer restarted with a new run, or one away so long its
//! part of the log was dropped past [`LOG_BYTES`]) it gets as a *refill*: the sender's whole
//! state, read while no write is half done (the gate below), with the context it covers;
//! the receiver merges it as one step, by version, while it answers nothing, and takes the
//! stream again after the context. A union of causally closed states is causally closed, so
//! the merge keeps the guarantee. A node restarted on a store that kept its items (disk)
//! counts them as the first write of its new run, which only a refill carries: every peer is
//! sent one, and what a peer writes after merging it depends on it, so no third replica shows
//! such a write before those items.
//!
//! A client's session is its connection, bound to one node. A client moving between nodes
//! carries a [`Context`] as a token (the meta protocol's `Y` flag): a node serves a request
//! with a token only once it has made the token's context visible.
//!
//! # The gate
//!
//! Local writes, peers' writes being applied, and reads hold the gate shared; a refill being
//! merged or taken holds it alone, so no one sees half a merge and a refill's snapshot holds
//! no write half done.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tokio::sync::{Notify, OwnedRwLockReadGuard, RwLock};

use super::Update;

/// Bytes of its own writes a node keeps for peers that have not acknowledged them, at most;
/// a peer that falls further behind is sent a refill instead.
pub const LOG_BYTES: usize = 64 << 20;
/// Bytes of peers' writes waiting for their dependencies, at most; past it, what arrives is
/// dropped and sent again later (it is not acknowledged).
pub const PENDING_BYTES: usize = 64 << 20;
/// How long a stream may go unacknowledged before the sender goes back to the last
/// acknowledged write and sends again.
pub const RETRANSMIT: Duration = Duration::from_millis(1000);
/// How long a sent refill may go unacknowledged before it is sent again, for an empty one:
/// its parts are all in the peer's queue when it counts as sent, so what is left is the
/// queue's drain and the merge. (A refill lost with a connection, say to a peer restarting
/// again, is sent again after this: 10 s before, which made a restarted node's catch-up take
/// up to 10 s.)
pub const REFILL_RETRY: Duration = Duration::from_secs(2);
/// Bytes of a refill allowed per second on top of [`REFILL_RETRY`], for its merge.
pub const REFILL_RETRY_RATE: u64 = 16 << 20;
/// How long after a refill could not be sent (the peer unreachable, or its queue full) it is
/// tried again.
pub const REFILL_BACKOFF: Duration = Duration::from_secs(1);
/// How long a peer that keeps acknowledging may leave this node's stream unacknowledged
/// (waiting, say, for a write that only a run now gone had sent it) before it is sent a
/// refill, which covers whatever it waits for that this node has.
pub const STALLED: Duration = Duration::from_secs(10);
/// How often a node acknowledges what it has made visible of each peer's stream (at once
/// when it changed, at least this often to show its run).
pub const ACK_EVERY: Duration = Duration::from_millis(200);
/// Entries in a context, at most, in a token (a context grows by one entry per node run).
pub const TOKEN_ENTRIES: usize = 256;

/// One run of one node: the source of a numbered stream of writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub node: NodeId,
    pub run: u64,
}

/// A causal context: per origin, the prefix of its stream (writes `1..=n`) it covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context(BTreeMap<Origin, u64>);

impl Context {
    /// How many of `origin`'s writes it covers.
    pub fn get(&self, origin: Origin) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Covers `origin`'s writes up to `seq` (and keeps more if it covered more).
    pub fn raise(&mut self, origin: Origin, seq: u64) {
        if seq > 0 {
            let at = self.0.entry(origin).or_insert(0);
            *at = (*at).max(seq);
        }
    }

    /// Whether it covers everything `other` does.
    pub fn covers(&self, other: &Context) -> bool {
        other.0.iter().all(|(&o, &n)| self.get(o) >= n)
    }

    /// Covers what `other` covers too.
    pub fn merge(&mut self, other: &Context) {
        for (&o, &n) in &other.0 {
            self.raise(o, n);
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn without(&self, origin: Origin) -> Context {
        let mut c = self.clone();
        c.0.remove(&origin);
        c
    }

    /// The context as a token: `node.run.seq` per origin (run in hex), joined by commas;
    /// `-` when empty.
    pub fn to_token(&self) -> String {
        if self.0.is_empty() {
            return "-".to_string();
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(o, n)| format!("{}.{:x}.{n}", o.node.0, o.run))
            .collect();
        parts.join(",")
    }

    /// Reads a token [`Context::to_token`] wrote.
    pub fn from_token(token: &[u8]) -> Option<Context> {
        let text = std::str::from_utf8(token).ok()?;
        let mut context = Context::default();
        if text == "-" {
            return Some(context);
        }
        for part in text.split(',') {
            let mut fields = part.split('.');
            let node = fields.next()?.parse().ok()?;
            let run = u64::from_str_radix(fields.next()?, 16).ok()?;
            let seq = fields.next()?.parse().ok()?;
            if fields.next().is_some() || context.0.len() >= TOKEN_ENTRIES {
                return None;
            }
            context.raise(
                Origin {
                    node: NodeId(node),
                    run,
                },
                seq,
            );
        }
        Some(context)
    }
}

/// One write of a node's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub seq: u64,
    /// What was visible where it was made (its own origin left out: that is `seq - 1`).
    pub deps: Context,
    /// What it left, to apply as the eventual mode does; none for a write that changed
    /// nothing (its number is used all the same, so the stream has no holes).
    pub update: Option<Update>,
}

impl Write {
    /// Roughly how many bytes it takes on the wire.
    pub fn size(&self) -> usize {
        self.update.as_ref().map_or(0, Update::size) + 24 * self.deps.len() + 16
    }
}

/// A local write between its number and its effect: holds the gate shared.
pub struct Ticket {
    seq: u64,
    deps: Context,
    _gate: OwnedRwLockReadGuard<()>,
}

/// What the sender does next for one peer.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Send these writes of this node's stream.
    Send(Vec<Write>),
    /// Send the whole state: the log no longer holds what the peer needs, or it is a new run.
    Refill,
    Nothing,
}

/// This node's stream as one peer takes it.
#[derive(Debug)]
struct Stream {
    /// The peer's run, once heard: a new run starts from nothing and is sent a refill.
    run: Option<u64>,
    /// The peer has made this node's writes up to here visible.
    acked: u64,
    /// The next write to send it.
    next: u64,
    /// When `acked` last moved (or the stream last went back).
    progress: Instant,
    refill: bool,
    /// A refill sent, covering this node's writes up to the number, and when it is sent
    /// again if not acknowledged by then.
    refill_sent: Option<(u64, Instant)>,
    /// No refill is tried before this (one could not be sent).
    refill_after: Option<Instant>,
    /// When `acked` last moved (a resend does not count).
    acked_at: Instant,
    /// When the peer was last heard acknowledging.
    heard_at: Instant,
}

impl Stream {
    fn new(now: Instant) -> Self {
        Stream {
            run: None,
            acked: 0,
            next: 1,
            progress: now,
            refill: false,
            refill_sent: None,
            refill_after: None,
            acked_at: now,
            heard_at: now,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Writes made visible or being made so: local writes once numbered, peers' writes once
    /// taken to apply. A local write's dependencies are read here, so they cover whatever a
    /// client could have seen.
    claimed: Context,
    /// Writes whose effects are in the store.
    visible: Context,
    /// The last number given to a local write.
    last_seq: u64,
    /// Local writes done, by number, kept for peers that have not acknowledged them.
    log: BTreeMap<u64, Write>,
    log_bytes: usize,
    /// Every local write numbered below it has left the log.
    log_start: u64,
    streams: BTreeMap<NodeId, Stream>,
    /// Peers' writes waiting for their turn or their dependencies, per origin by number.
    pending: BTreeMap<Origin, BTreeMap<u64, Write>>,
    pending_bytes: usize,
    /// Each peer's current run, as its messages say.
    runs: BTreeMap<NodeId, u64>,
    /// Each peer's stream as last acknowledged to it.
    acked_to: BTreeMap<NodeId, (u64, u64)>,
    /// Refills being received, per peer.
    refills: HashMap<NodeId, Vec<Update>>,
}

/// Counters for `stats`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CausalStats {
    /// Peers' writes waiting for their dependencies now.
    pub pending: usize,
    /// Local writes held for peers now.
    pub log: usize,
    pub refills_sent: u64,
    pub refills_merged: u64,
    /// Writes sent again after a stream went unacknowledged.
    pub resent: u64,
}

/// The causal side of a replica: its stream, its context, and what waits for dependencies.
pub struct Causal {
    pub me: Origin,
    state: Mutex<State>,
    gate: std::sync::Arc<RwLock<()>>,
    /// Rung whenever the visible context grows.
    advanced: Notify,
    /// Rung when there is something to send.
    pub(super) wake: Notify,
    /// A planted bug for tests: peers' writes are made visible without waiting for their
    /// dependencies (in order per origin still).
    skip_dependencies: bool,
    stats: Mutex<CausalStats>,
}

impl Causal {
    /// The causal side of a replica that starts as run `me`, streaming to `peers`.
    /// `restored`: the store holds items from before (a disk store reopened), which no
    /// context names: they count as this run's first write, which no log holds, so every
    /// peer is sent a refill of them, and every write made after it there depends on it.
    pub fn new(me: Origin, peers: &[NodeId], skip_dependencies: bool, restored: bool) -> Self {
        let now = Instant::now();
        let mut state = State {
            log_start: 1,
            streams: peers.iter().map(|&p| (p, Stream::new(now))).collect(),
            ..State::default()
        };
        if restored {
            state.last_seq = 1;
            state.log_start = 2;
            state.claimed.raise(me, 1);
            state.visible.raise(me, 1);
        }
        Causal {
            me,
            state: Mutex::new(state),
            gate: Default::default(),
            advanced: Notify::new(),
            wake: Notify::new(),
            skip_dependencies,
            stats: Mutex::default(),
        }
    }

    /// Shared hold of the gate, for a read.
    pub async fn read_gate(&self) -> OwnedRwLockReadGuard<()> {
        std::sync::Arc::clone(&self.gate).read_owned().await
    }

    /// Sole hold of the gate: no write is half done and no read under way while it is held.
    pub async fn exclusive(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        std::sync::Arc::clone(&self.gate).write_owned().await
    }

    /// What this replica shows now.
    pub fn visible(&self) -> Context {
        self.state.lock().unwrap().visible.clone()
    }

    /// What a client that was served here may have seen: everything visible or being made
    /// visible.
    pub fn context(&self) -> Context {
        self.state.lock().unwrap().claimed.clone()
    }

    /// Whether every node `context` names is this one or one of its peers: a token that
    /// names any other node was never given by this cluster.
    pub fn names_only_members(&self, context: &Context) -> bool {
        let s = self.state.lock().unwrap();
        context
            .0
            .keys()
            .all(|o| o.node == self.me.node || s.streams.contains_key(&o.node))
    }

    /// Waits until `context` is visible here, for up to `within`; whether it is.
    pub async fn reach(&self, context: &Context, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            advanced.as_mut().enable();
            if self.state.lock().unwrap().visible.covers(context) {
                return true;
            }
            if tokio::time::timeout_at(deadline, advanced).await.is_err() {
                return self.state.lock().unwrap().visible.covers(context);
            }
        }
    }

    /// Numbers a local write about to be applied, with what is visible here as its
    /// dependencies. Hold the ticket until the write is done, then [`Causal::end`] it.
    pub async fn begin(&self) -> Ticket {
        let gate = self.read_gate().await;
        let mut s = self.state.lock().unwrap();
        s.last_seq += 1;
        let seq = s.last_seq;
        let deps = s.claimed.without(self.me);
        s.claimed.raise(self.me, seq);
        Ticket {
            seq,
            deps,
            _gate: gate,
        }
    }

    /// A local write is done, having left `update` (none if it changed nothing): it joins
    /// the log, and the stream's visible prefix grows over every write done.
    pub fn end(&self, ticket: Ticket, update: Option<Update>) {
        let write = Write {
            seq: ticket.seq,
            deps: ticket.deps,
            update,
        };
        {
            let mut s = self.state.lock().unwrap();
            s.log_bytes += write.size();
            s.log.insert(write.seq, write);
            let mut visible = s.visible.get(self.me);
            while s.log.contains_key(&(visible + 1)) {
                visible += 1;
            }
            s.visible.raise(self.me, visible);
            self.trim(&mut s);
        }
        self.advanced.notify_waiters();
        self.wake.notify_one();
    }

    /// Drops from the log what every peer has acknowledged, and the oldest writes past
    /// [`LOG_BYTES`] (peers that still need them get refills).
    fn trim(&self, s: &mut State) {
        let everyone = s
            .streams
            .values()
            .map(|st| if st.run.is_some() { st.acked } else { 0 })
            .min()
            .unwrap_or(u64::MAX);
        let done = s.visible.get(self.me);
        while let Some((&seq, _)) = s.log.first_key_value() {
            if seq > done || (seq > everyone && s.log_bytes <= LOG_BYTES) {
                break;
            }
            let (_, write) = s.log.pop_first().unwrap();
            s.log_bytes -= write.size();
            s.log_start = seq + 1;
        }
    }

    /// Writes from `from` (its run `run`), in its stream's order: kept until they may be
    /// made visible.
    pub fn receive(&self, from: NodeId, run: u64, writes: Vec<Write>) {
        let origin = Origin { node: from, run };
        let mut s = self.state.lock().unwrap();
        let current = s.runs.entry(from).or_insert(run);
        *current = (*current).max(run);
        let visible = s.visible.get(origin);
        for write in writes {
            if write.seq <= visible {
                continue;
            }
            // The next write of an origin is always taken: past the bound, writes waiting
            // on it could otherwise never be released.
            if s.pending_bytes + write.size() > PENDING_BYTES && write.seq != visible + 1 {
                break;
            }
            s.pending_bytes += write.size();
            let queue = s.pending.entry(origin).or_default();
            if let Some(old) = queue.insert(write.seq, write) {
                s.pending_bytes -= old.size();
            }
        }
    }

    /// The next peer's write that may be made visible, taken to apply: the one after its
    /// origin's last visible write, once everything it depends on is visible. Apply it, then
    /// call [`Causal::applied`].
    pub fn next_ready(&self) -> Option<(Origin, Write)> {
        let mut s = self.state.lock().unwrap();
        let State {
            pending,
            visible,
            claimed,
            pending_bytes,
            ..
        } = &mut *s;
        for (&origin, queue) in pending.iter_mut() {
            let shown = visible.get(origin);
            if claimed.get(origin) != shown {
                continue; // one of its writes is being applied
            }
            while let Some(entry) = queue.first_entry() {
                if *entry.key() > shown {
                    break;
                }
                *pending_bytes -= entry.remove().size();
            }
            let Some(entry) = queue.first_entry() else {
                continue;
            };
            if *entry.key() != shown + 1
                || !(self.skip_dependencies || visible.covers(&entry.get().deps))
            {
                continue;
            }
            let write = entry.remove();
            *pending_bytes -= write.size();
            claimed.raise(origin, write.seq);
            return Some((origin, write));
        }
        pending.retain(|_, q| !q.is_empty());
        None
    }

    /// `origin`'s write `seq` is in the store.
    pub fn applied(&self, origin: Origin, seq: u64) {
        self.state.lock().unwrap().visible.raise(origin, seq);
        self.advanced.notify_waiters();
        self.wake.notify_one();
    }

    /// A refill from `from` (part of it; `last` ends it): the whole of it once it is all
    /// here.
    pub fn refill_part(
        &self,
        from: NodeId,
        updates: Vec<Update>,
        first: bool,
        last: bool,
    ) -> Option<Vec<Update>> {
        let mut s = self.state.lock().unwrap();
        if first {
            s.refills.remove(&from);
        } else if !s.refills.contains_key(&from) {
            return None; // the start of this refill was lost; it comes again whole
        }
        let parts = s.refills.entry(from).or_default();
        parts.extend(updates);
        if last {
            s.refills.remove(&from)
        } else {
            None
        }
    }

    /// A refill covering `context` has been merged into the store (with the gate held).
    pub fn merged(&self, from: NodeId, run: u64, context: &Context) {
        {
            let mut s = self.state.lock().unwrap();
            let current = s.runs.entry(from).or_insert(run);
            *current = (*current).max(run);
            s.claimed.merge(context);
            s.visible.merge(context);
        }
        self.stats.lock().unwrap().refills_merged += 1;
        self.advanced.notify_waiters();
        self.wake.notify_one();
    }

    /// An acknowledgement from `peer` (its run `run`): it has made this node's writes of run
    /// `of` visible up to `seq`; `resend` if it found messages lost.
    pub fn ack(&self, peer: NodeId, run: u64, of: u64, seq: u64, resend: bool) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        let me = self.me.run;
        let Some(stream) = s.streams.get_mut(&peer) else {
            return;
        };
        if stream.run != Some(run) {
            if stream.run.is_some_and(|r| r > run) {
                return; // from an older run, late
            }
            // A new run of the peer (or the first heard): it starts from what it shows, and
            // is sent the whole state, since what it shows may depend on runs gone.
            *stream = Stream::new(now);
            stream.run = Some(run);
            stream.acked = if of == me { seq } else { 0 };
            stream.refill = true;
            self.wake.notify_one();
            return;
        }
        stream.heard_at = now;
        if of != me {
            return;
        }
        if seq > stream.acked {
            stream.acked = seq;
            stream.progress = now;
            stream.acked_at = now;
            stream.next = stream.next.max(seq + 1);
        }
        if stream
            .refill_sent
            .is_some_and(|(upto, _)| stream.acked >= upto)
        {
            // The refill is merged there (it covers no more of this stream than the peer
            // now shows).
            stream.refill_sent = None;
            stream.progress = now;
        }
        if resend && stream.refill_sent.is_none() {
            stream.next = stream.acked + 1;
            stream.progress = now;
            self.wake.notify_one();
        }
        self.trim(&mut s);
    }

    /// What to send `peer` next: up to `max` writes of at most about `bytes`.
    pub fn next_for(&self, peer: NodeId, max: usize, bytes: usize) -> Next {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        let log_start = s.log_start;
        let done = s.visible.get(self.me);
        let State { streams, log, .. } = &mut *s;
        let Some(stream) = streams.get_mut(&peer) else {
            return Next::Nothing;
        };
        match stream.refill_sent {
            Some((_, retry_at)) if now > retry_at => stream.refill = true,
            Some(_) => {}
            None if stream.next > stream.acked + 1
                && now.duration_since(stream.acked_at) > STALLED
                && now.duration_since(stream.heard_at) < RETRANSMIT =>
            {
                // Heard from, yet taking nothing of the stream: it waits for something.
                stream.refill = true;
            }
            None if stream.next > stream.acked + 1
                && now.duration_since(stream.progress) > RETRANSMIT =>
            {
                stream.next = stream.acked + 1;
                stream.progress = now;
                self.stats.lock().unwrap().resent += 1;
            }
            None => {}
        }
        if stream.refill || stream.next < log_start {
            stream.refill = true;
            if stream.refill_after.is_some_and(|at| now < at) {
                return Next::Nothing;
            }
            return Next::Refill;
        }
        if stream.next > done {
            return Next::Nothing;
        }
        let mut writes = Vec::new();
        let mut size = 0;
        for (_, write) in log.range(stream.next..=done) {
            if writes.len() >= max || (size > 0 && size + write.size() > bytes) {
                break;
            }
            size += write.size();
            writes.push(write.clone());
        }
        if writes.is_empty() {
            return Next::Nothing;
        }
        Next::Send(writes)
    }

    /// `writes` went into `peer`'s queue.
    pub fn sent(&self, peer: NodeId, last: u64) {
        let mut s = self.state.lock().unwrap();
        if let Some(stream) = s.streams.get_mut(&peer) {
            if stream.next <= last {
                stream.next = last + 1;
            }
        }
    }

    /// A refill for `peer` could not be sent: it is tried again after [`REFILL_BACKOFF`].
    pub fn refill_failed(&self, peer: NodeId) {
        let mut s = self.state.lock().unwrap();
        if let Some(stream) = s.streams.get_mut(&peer) {
            stream.refill_after = Some(Instant::now() + REFILL_BACKOFF);
        }
    }

    /// Messages from `peer` were lost: a refill it was sending in parts is incomplete, and
    /// is dropped (it is sent again whole).
    pub fn lost(&self, peer: NodeId) {
        self.state.lock().unwrap().refills.remove(&peer);
    }

    /// A refill covering this node's writes up to `upto` went into `peer`'s queue: the
    /// stream goes on after it.
    /// It carried `bytes`: it is sent again if not acknowledged within [`REFILL_RETRY`] and a
    /// second per [`REFILL_RETRY_RATE`] bytes.
    pub fn refill_sent(&self, peer: NodeId, upto: u64, bytes: u64) {
        let now = Instant::now();
        {
            let mut s = self.state.lock().unwrap();
            if let Some(stream) = s.streams.get_mut(&peer) {
                stream.refill = false;
                stream.refill_after = None;
                stream.next = upto + 1;
                stream.progress = now;
                stream.acked_at = now;
                let patience = REFILL_RETRY
                    + Duration::from_millis(bytes.saturating_mul(1000) / REFILL_RETRY_RATE);
                stream.refill_sent = Some((upto, now + patience));
            }
        }
        self.stats.lock().unwrap().refills_sent += 1;
    }

    /// Peers to acknowledge now: per peer, its run and how far this replica shows its
    /// stream, when that changed or `heartbeat` says to say it again.
    pub fn acks_due(&self, heartbeat: bool) -> Vec<(NodeId, u64, u64)> {
        let mut s = self.state.lock().unwrap();
        let State {
            streams,
            runs,
            visible,
            acked_to,
            ..
        } = &mut *s;
        let mut due = Vec::new();
        for &peer in streams.keys() {
            let run = runs.get(&peer).copied().unwrap_or(0);
            let seq = visible.get(Origin { node: peer, run });
            if heartbeat || acked_to.get(&peer) != Some(&(run, seq)) {
                acked_to.insert(peer, (run, seq));
                due.push((peer, run, seq));
            }
        }
        due
    }

    /// `peer`'s current run and how far this replica shows its stream, once heard of.
    pub fn shown_of(&self, peer: NodeId) -> Option<(u64, u64)> {
        let s = self.state.lock().unwrap();
        let run = *s.runs.get(&peer)?;
        Some((run, s.visible.get(Origin { node: peer, run })))
    }

    /// The peers this node streams to from now on.
    pub fn set_peers(&self, peers: &[NodeId]) {
        let now = Instant::now();
        let mut s = self.state.lock().unwrap();
        s.streams.retain(|p, _| peers.contains(p));
        for &p in peers {
            s.streams.entry(p).or_insert_with(|| Stream::new(now));
        }
    }

    pub fn stats(&self) -> CausalStats {
        let s = self.state.lock().unwrap();
        CausalStats {
            pending: s.pending.values().map(BTreeMap::len).sum(),
            log: s.log.len(),
            ..*self.stats.lock().unwrap()
        }
    }
}

#[cfg(test)]
mod tests;
