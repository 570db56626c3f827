//! The driver task: owns the [`Tob`], the peer transport, the apply loop and state transfer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, NodeId, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, Mutation, Snapshot};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Counters, Health, Op, Proposal, Replicator, Reply, Request, REQUEST_QUEUE};
use crate::peer::{new_session, Incoming, LinkConfig, Transport};
use crate::placement::GroupId;
use crate::shard::mux::{self, GroupInbox, GroupLink, Groups, Wire};
use crate::tob::{Event, Incarnation, Message, NodeState, Timing, Tob};

/// How often the TOB is ticked: one tick of [`Timing`].
pub const TICK: Duration = Duration::from_millis(1);
/// How long a client request waits for the cluster before it is refused.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a node catching up logs how far it is.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// Bytes of items per state-transfer message (a larger item goes alone).
pub const STATE_CHUNK_BYTES: usize = 1 << 20;
/// State-transfer chunks read and queued at most per turn of the driver's loop (it turns at
/// least every [`TICK`]), so a transfer never keeps it from the order's messages for long.
const STATE_CHUNKS_PER_PUMP: usize = 4;
/// Bytes of operations proposed here and not yet delivered past which the driver takes no
/// new client requests. It bounds what a view change carries: every member's undelivered
/// batches come from some member's proposals, so a `Promise` or `Install` holds at most this
/// (plus one operation) per member, twice over (its pending batches and an accepted plan).
pub const IN_FLIGHT_BYTES: usize = 8 << 20;
/// What a proposal adds to its operation's key and value on the wire, at most.
const PROPOSAL_OVERHEAD: usize = 64;

/// Refused before it was proposed: nothing happened.
pub(crate) const CUT_OFF: &str = "no quorum: this node is not in the cluster's current view";
/// A local read waited for this node to catch up, in vain.
pub(crate) const READ_CATCHING_UP: &str = "no quorum: this node is catching up";
/// A local read waited for a settled view, in vain.
pub(crate) const READ_TIMED_OUT: &str = "no quorum: timed out waiting for the cluster";
/// Proposed, then this node was left out of the view: it may have been ordered without it.
pub(crate) const EXCLUDED: &str =
    "no quorum: this node was left out of the cluster's view; the outcome is unknown";
/// Proposed, and not known to be ordered: it may yet take effect.
pub(crate) const TIMED_OUT: &str =
    "no quorum: timed out waiting for the cluster; the outcome is unknown";
/// Refused while a snapshot is installed: a request taken before that may have been ordered.
pub(crate) const CATCHING_UP: &str = "no quorum: this node is catching up; the outcome is unknown";
/// Ordered, but this node could not apply it and is catching up: the others applied it.
pub(crate) const NOT_APPLIED: &str =
    "this node failed to apply the operation and is catching up; the outcome is unknown";

/// The largest frame a peer link of a strong-mode cluster of `members` nodes carries, for
/// items up to `item_size_max`: a view change's `Promise` (pending batches and an accepted
/// plan) or `Install` (the plan's tail), each bounded through [`IN_FLIGHT_BYTES`]; broadcasts
/// and state chunks are smaller. At least [`crate::peer::MAX_FRAME_BYTES`].
pub fn max_frame_bytes(members: usize, item_size_max: usize) -> usize {
    let op = item_size_max + tailorkv_common::codec::KEY_MAX_BYTES + PROPOSAL_OVERHEAD;
    let per_member = IN_FLIGHT_BYTES + op;
    (2 * members.max(1) * per_member + (1 << 20)).max(crate::peer::MAX_FRAME_BYTES)
}

impl crate::weigh::Weigh for PeerMsg {
    fn weight(&self) -> usize {
        match self {
            PeerMsg::Tob { message, .. } => message.weight() + 8,
            PeerMsg::State(chunk) => {
                let items = chunk.items.iter();
                items
                    .map(|i| i.key.len() + i.value.len() + 40)
                    .sum::<usize>()
                    + 32
            }
        }
    }
}

impl crate::tob::Weigh for Proposal {
    fn weight(&self) -> usize {
        let data = match &self.op {
            Op::Mutate { key, mutation } => key.len() + mutation_bytes(mutation),
            Op::Read => 0,
            Op::Flush { .. } | Op::Clock => 0,
        };
        data + PROPOSAL_OVERHEAD
    }
}

fn mutation_bytes(mutation: &Mutation) -> usize {
    match mutation {
        Mutation::Store { value, .. } => value.len(),
        _ => 0,
    }
}

/// This member and the whole group.
#[derive(Clone, Debug)]
pub struct Members {
    pub me: NodeId,
    /// Every configured node, this one included, with its peer address.
    pub all: Vec<(NodeId, SocketAddr)>,
    /// The cluster's name and frame limit on peer links.
    pub link: LinkConfig,
}

/// What travels between drivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    Tob {
        incarnation: Incarnation,
        message: Message<Proposal>,
    },
    /// Part of a snapshot for a joining member.
    State(StateChunk),
}

/// A part of the datalet's state at sequence number `seq`, for the view `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChunk {
    pub epoch: u64,
    pub seq: u64,
    /// The order's clock at `seq` (see `Driver::order_now`): the joiner continues from it, so
    /// every replica decides expiry at the same moments.
    pub now: UnixSecs,
    pub items: Vec<StateItem>,
    /// The snapshot is complete with this chunk.
    pub last: bool,
    /// About how many items the whole snapshot holds (the source's count when it began), for
    /// the joiner's progress reports.
    pub total: u64,
}

/// One item of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateItem {
    pub key: Bytes,
    pub value: Bytes,
    pub flags: u32,
    pub expiry: Expiry,
    pub version: Version,
    /// The meta protocol's marks.
    pub marks: tailorkv_datalet::Marks,
}

/// Starts the driver on `listener` (this member's peer address); returns the handle commands
/// use.
///
/// `delivered` is the sequence number the datalet's state reflects (what it saved with
/// `save_clock` in an earlier run, 0 for an empty store): it decides which node's state the
/// first view starts from when every node restarts.
pub fn spawn_driver<D: Datalet>(
    members: Members,
    listener: TcpListener,
    datalet: Arc<D>,
    timing: Timing,
    delivered: u64,
    shutdown: CancellationToken,
) -> Replicator {
    let ids: Vec<NodeId> = members.all.iter().map(|&(id, _)| id).collect();
    let peers: Vec<(NodeId, SocketAddr)> = members
        .all
        .iter()
        .copied()
        .filter(|&(id, _)| id != members.me)
        .collect();
    let incarnation = new_session();
    let (transport, inbox) = Transport::<Wire<PeerMsg>>::start(
        members.me,
        incarnation,
        listener,
        &peers,
        members.link,
        shutdown.clone(),
    );
    let groups = Groups::default();
    let group = GroupId(0);
    let group_inbox = groups.add(group, ids.clone());
    let (forwarded, _) = mpsc::unbounded_channel();
    let (joins, _) = mpsc::unbounded_channel();
    tokio::spawn(mux::run(
        inbox,
        groups,
        Groups::default(),
        forwarded,
        joins,
        shutdown.clone(),
    ));
    let driver = GroupDriver {
        me: members.me,
        incarnation,
        group,
        members: ids,
        rebalance_rate: None,
        joining: false,
    };
    driver.spawn(
        GroupLink::new(transport, group),
        group_inbox,
        datalet,
        timing,
        delivered,
        shutdown,
    )
}

/// Who runs one group's order on this node.
pub struct GroupDriver {
    pub me: NodeId,
    /// This run of the process (see [`new_session`]).
    pub incarnation: Incarnation,
    pub group: GroupId,
    /// The group's members, this node included.
    pub members: Vec<NodeId>,
    /// The node's budget for sending snapshots (`--rebalance-rate`), shared by its groups;
    /// `None`: as fast as the joiners take them.
    pub rebalance_rate: Option<Arc<crate::rate::RateLimit>>,
    /// This node is new to the group, which already runs (see [`Tob::set_joining`]).
    pub joining: bool,
}

impl GroupDriver {
    /// Starts the group's driver on its side of the node's transport; returns the handle
    /// commands use. See [`spawn_driver`] for `delivered`.
    pub fn spawn<D: Datalet>(
        self,
        link: impl crate::shard::mux::OrderLink,
        inbox: GroupInbox<PeerMsg>,
        datalet: Arc<D>,
        timing: Timing,
        delivered: u64,
        shutdown: CancellationToken,
    ) -> Replicator {
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        let counters = Arc::new(Counters::default());
        let health = Arc::new(Health::default());
        let driver = Driver {
            counters: Arc::clone(&counters),
            health: Arc::clone(&health),
            me: self.me,
            group: self.group,
            tob: {
                let mut tob = Tob::new(self.me, self.incarnation, &self.members, delivered, timing);
                if self.joining {
                    tob.set_joining();
                }
                tob
            },
            saved: delivered,
            transport: Box::new(link),
            datalet,
            waiting: HashMap::new(),
            unread: Vec::new(),
            unread_now: 0,
            clock_proposed: 0,
            deadlines: VecDeque::new(),
            next_request: 0,
            overflow: BTreeMap::new(),
            receiving: None,
            sending: None,
            early_chunks: Vec::new(),
            order_now: 0,
            diverged: false,
            rate: self.rebalance_rate,
        };
        tokio::spawn(driver.run(requests_rx, inbox, shutdown));
        Replicator {
            requests,
            counters,
            health,
        }
    }
}

/// Who waits for a proposal of this node.
enum Waiter {
    /// The client whose operation it is.
    One(oneshot::Sender<Reply>),
    /// The linearizable reads of one read round ([`Tob::read`]).
    Reads(Vec<oneshot::Sender<Reply>>),
}

impl Waiter {
    fn refuse(self, why: &'static str) {
        match self {
            Waiter::One(reply) => {
                let _ = reply.send(Reply::Refused(why));
            }
            Waiter::Reads(reads) => {
                for reply in reads {
                    let _ = reply.send(Reply::Refused(why));
                }
            }
        }
    }
}

/// A snapshot being sent, a chunk at a time as the joiners' queues take them: read from the
/// datalet's [`Snapshot`] as it goes, so what is in memory is a chunk per joiner, not the
/// store.
struct Sending {
    epoch: u64,
    seq: u64,
    now: UnixSecs,
    /// `None` once read to the end (or failed).
    snapshot: Option<Box<dyn Snapshot>>,
    /// A chunk read and held back by `--rebalance-rate` until the node's budget allows it.
    throttled: Option<StateChunk>,
    /// The joiners, each with the chunk its queue has not taken yet.
    to: Vec<(NodeId, Option<StateChunk>)>,
    started: Instant,
    items: u64,
    /// About how many items the snapshot holds.
    total: u64,
    /// Bytes of keys and values read so far.
    bytes: u64,
}

impl Sending {
    /// The next chunk to send: the one the budget held back, else the next one read from the
    /// snapshot (under `rate`, a quarter second's budget of it, so the rate holds over short
    /// spans too). `None` when the transfer ends: read to its end, or unreadable (the joiners
    /// then time out waiting and ask for another view change).
    async fn next_chunk(&mut self, rate: Option<&crate::rate::RateLimit>) -> Option<StateChunk> {
        if let Some(chunk) = self.throttled.take() {
            return Some(chunk);
        }
        let Some(mut snapshot) = self.snapshot.take() else {
            tracing::info!(
                epoch = self.epoch,
                seq = self.seq,
                items = self.items,
                ms = self.started.elapsed().as_millis() as u64,
                "state sent"
            );
            return None;
        };
        let (epoch, seq, now) = (self.epoch, self.seq, self.now);
        let max_bytes = rate.map_or(STATE_CHUNK_BYTES, |r| r.chunk_bytes(STATE_CHUNK_BYTES));
        let read = tokio::task::spawn_blocking(move || {
            let chunk = next_chunk(&mut *snapshot, epoch, seq, now, max_bytes);
            (snapshot, chunk)
        })
        .await;
        match read {
            Ok((snapshot, Ok(chunk))) => {
                if !chunk.last {
                    self.snapshot = Some(snapshot);
                }
                Some(chunk)
            }
            Ok((_, Err(e))) => {
                tracing::error!(error = %e, "could not read the datalet for a state transfer");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "the state transfer's reader failed");
                None
            }
        }
    }
}

/// A snapshot being received.
struct Receiving {
    epoch: u64,
    seq: u64,
    started: Instant,
    items: u64,
    /// When progress was last logged.
    logged: Instant,
    /// An item could not be stored: the snapshot is not installed.
    failed: bool,
}

struct Driver<D> {
    counters: Arc<Counters>,
    health: Arc<Health>,
    me: NodeId,
    /// The replica group whose order this is: its id is the node part of every version the
    /// group applies, so CAS uniques of different groups never collide.
    group: GroupId,
    tob: Tob<Proposal>,
    transport: Box<dyn crate::shard::mux::OrderLink>,
    datalet: Arc<D>,
    /// Replies owed to this member's clients, by request id.
    waiting: HashMap<u64, Waiter>,
    /// Linearizable reads taken in this turn of the loop: one read of the order
    /// ([`Tob::read`]) covers them.
    unread: Vec<oneshot::Sender<Reply>>,
    /// The latest clock reading among `unread`.
    unread_now: UnixSecs,
    /// The clock reading of the last [`Op::Clock`] proposed for reads.
    clock_proposed: UnixSecs,
    /// Request ids by arrival, with the moment each is refused if still waiting.
    deadlines: VecDeque<(Instant, u64)>,
    next_request: u64,
    /// Messages a full peer queue could not take yet, per peer, in order.
    overflow: BTreeMap<NodeId, VecDeque<PeerMsg>>,
    receiving: Option<Receiving>,
    sending: Option<Sending>,
    /// The sequence number last saved in the datalet.
    saved: u64,
    /// Snapshot chunks that arrived before the view that asks for them.
    early_chunks: Vec<StateChunk>,
    /// The order's clock: the latest proposer's clock reading among the operations applied
    /// so far. Every operation is applied at `max(order_now, its proposer's reading)`, so
    /// expiry is decided by a clock that never goes back and is the same on every replica;
    /// an item dead at `order_now` is dead for every operation still to come, which is what
    /// lets a snapshot, or a reclaim of memory, drop it on one replica alone.
    order_now: UnixSecs,
    /// This node failed to apply a delivered operation: it applies nothing more until it
    /// has installed a snapshot.
    diverged: bool,
    /// The node's budget for sending snapshots (`--rebalance-rate`).
    rate: Option<Arc<crate::rate::RateLimit>>,
}

impl<D: Datalet> Driver<D> {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut inbox: GroupInbox<PeerMsg>,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let can_accept = self.members_overflow_empty() && self.has_room();
            tokio::select! {
                Some(request) = requests.recv(), if can_accept => {
                    self.take(request);
                    while self.has_room() {
                        let Ok(request) = requests.try_recv() else { break };
                        self.take(request);
                    }
                    self.read();
                    self.tob.flush();
                }
                Some((from, event)) = inbox.recv() => {
                    self.receive(from, event).await;
                    while let Some((from, event)) = inbox.try_recv() {
                        self.receive(from, event).await;
                    }
                    self.tob.ack();
                }
                _ = ticker.tick() => {
                    if self.health.take_force() {
                        tracing::warn!(
                            "told to form the next view from any majority of the nodes (SIGUSR1)"
                        );
                        self.tob.force_next_view();
                    }
                    if let Some(target) = self.health.take_target() {
                        self.tob.set_target(&target);
                    }
                    self.tob.tick();
                    self.expire();
                }
                () = shutdown.cancelled() => return,
            }
            self.carry_out().await;
        }
    }

    /// Whether this node's undelivered proposals leave room for another request.
    fn has_room(&self) -> bool {
        self.tob.own_bytes() < IN_FLIGHT_BYTES
    }

    fn members_overflow_empty(&self) -> bool {
        let view = self.tob.view();
        self.overflow
            .iter()
            .all(|(peer, q)| q.is_empty() || view.incarnation_of(*peer).is_none())
    }

    /// Takes a client request: refused at once when this node is cut off, else proposed.
    fn take(&mut self, request: Request) {
        if self.tob.state() == NodeState::Outside {
            let _ = request.reply.send(Reply::Refused(CUT_OFF));
            return;
        }
        if let Op::Read = request.op {
            // Not ordered: see [`Driver::read`].
            self.unread.push(request.reply);
            self.unread_now = self.unread_now.max(request.now);
            return;
        }
        self.propose(request.op, request.now, Waiter::One(request.reply));
    }

    fn propose(&mut self, op: Op, now: UnixSecs, waiter: Waiter) {
        self.counters.ops_proposed.fetch_add(1, Relaxed);
        self.next_request += 1;
        let id = self.next_request;
        self.waiting.insert(id, waiter);
        self.deadlines
            .push_back((Instant::now() + REQUEST_TIMEOUT, id));
        self.tob.propose(Proposal {
            request: id,
            now,
            op,
        });
    }

    /// Asks the order for one read ([`Tob::read`]) for every linearizable read taken in this
    /// turn of the loop: they are answered from this replica once a majority of the view has
    /// confirmed it is still the group's view and this node has applied everything it had
    /// received, both after the reads began; the reads themselves travel nowhere.
    ///
    /// Reads are answered at the order's clock, which only ordered operations move: when the
    /// reads' clock reading is past it, an [`Op::Clock`] is proposed first (at most one per
    /// second of the clock), so the read waits for it and an item that expired by this node's
    /// clock reads as gone, here and, from that place in the order on, everywhere.
    fn read(&mut self) {
        if self.unread.is_empty() {
            return;
        }
        let reads = std::mem::take(&mut self.unread);
        let now = std::mem::take(&mut self.unread_now);
        if now > self.order_now.max(self.clock_proposed) {
            self.clock_proposed = now;
            let (clock_done, _) = oneshot::channel();
            self.propose(Op::Clock, now, Waiter::One(clock_done));
            self.tob.flush();
        }
        self.next_request += 1;
        let id = self.next_request;
        self.waiting.insert(id, Waiter::Reads(reads));
        self.deadlines
            .push_back((Instant::now() + REQUEST_TIMEOUT, id));
        self.tob.read(id);
    }

    /// Refuses requests that waited too long, and takes back those of them never broadcast
    /// (proposed while this node was not serving), so they neither take effect later nor
    /// hold the room new requests need.
    fn expire(&mut self) {
        let now = Instant::now();
        let mut expired = std::collections::HashSet::new();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(waiter) = self.waiting.remove(&id) {
                waiter.refuse(TIMED_OUT);
                expired.insert(id);
            }
        }
        if !expired.is_empty() && self.tob.proposed_len() > 0 {
            self.tob.withdraw(|p| expired.contains(&p.request));
        }
    }

    fn fail_all_waiting(&mut self, why: &'static str) {
        for (_, waiter) in self.waiting.drain() {
            waiter.refuse(why);
        }
        for reply in self.unread.drain(..) {
            let _ = reply.send(Reply::Refused(why));
        }
        self.deadlines.clear();
    }

    async fn receive(&mut self, from: NodeId, event: Incoming<PeerMsg>) {
        match event {
            Incoming::Gap => {
                tracing::warn!(?from, "messages from a peer were lost");
                self.tob.link_gap(from);
            }
            Incoming::Message(PeerMsg::Tob {
                incarnation,
                message,
            }) => self.tob.step(from, incarnation, message),
            Incoming::Message(PeerMsg::State(chunk)) => self.receive_state(chunk).await,
        }
    }

    /// Hands the TOB's messages to the transport without ever waiting on it. Messages for
    /// nodes outside the view are dropped when their queue is full: they are either stale or
    /// sent again.
    fn send(&mut self) {
        let messages = self.tob.take_messages();
        self.counters
            .peer_messages_sent
            .fetch_add(messages.len() as u64, Relaxed);
        for envelope in messages {
            let message = PeerMsg::Tob {
                incarnation: envelope.incarnation,
                message: envelope.message,
            };
            self.overflow
                .entry(envelope.to)
                .or_default()
                .push_back(message);
        }
        self.drain_overflow();
    }

    fn drain_overflow(&mut self) {
        let view = self.tob.view();
        for (&to, queue) in self.overflow.iter_mut() {
            let member = view.incarnation_of(to).is_some();
            while let Some(message) = queue.pop_front() {
                if let Err(message) = self.transport.try_send(to, message) {
                    if member {
                        queue.push_front(message);
                        break;
                    }
                    // Dropped: the node sees a gap here, not later messages without it.
                    self.transport.dropped(to);
                }
            }
        }
    }

    /// Carries out what the TOB decided, in order, until it has nothing more.
    async fn carry_out(&mut self) {
        loop {
            self.send();
            let events = self.tob.take_events();
            if events.is_empty() {
                break;
            }
            // Runs of delivered mutations are applied together (one transaction and one
            // fsync on the disk datalet); anything else waits for the run before it.
            let mut run = Vec::new();
            for event in events {
                match event {
                    Event::Deliver(delivery) if matches!(delivery.op.op, Op::Mutate { .. }) => {
                        run.push(delivery);
                    }
                    other => {
                        self.apply_run(std::mem::take(&mut run)).await;
                        self.carry_out_one(other).await;
                    }
                }
            }
            self.apply_run(run).await;
        }
        // A store that lost items behind our back (a remote server restarted or evicted)
        // no longer holds the order's state.
        if self.tob.is_synced() && !self.diverged && self.datalet.lost_items() {
            let seq = self.tob.delivered();
            self.diverge(
                seq,
                &DataletError::Unavailable("the datalet lost items".into()),
            );
        }
        // Record how far the datalet's state goes, once per burst, after applying it: a
        // restart then knows its position (at worst behind what it applied, never ahead).
        let delivered = self.tob.delivered();
        if delivered != self.saved && self.tob.is_synced() {
            match self.datalet.save_clock(delivered).await {
                Ok(()) => self.saved = delivered,
                Err(e) => tracing::warn!(error = %e, "could not save the applied position"),
            }
        }
        self.pump_state().await;
        let view = self.tob.view();
        self.health
            .set(self.tob.state(), view.epoch, view.members.len());
        self.health.set_order_now(self.order_now);
        self.health.set_order_figures(super::health::OrderFigures {
            view_changes: 0,
            suspicions: self.tob.detector().suspicions(),
            rejected: self.tob.rejected(),
            undelivered_batches: self.tob.undelivered_batches() as u64,
            undelivered_own_bytes: self.tob.own_bytes() as u64,
        });
        // Outside the group's view and not in its target: this node has left the group. So
        // has a node that never got into a view and holds nothing (a restarted memory node
        // whose groups moved on meanwhile: the group's members no longer hear it at all).
        let outside = view.epoch > 0 && self.tob.state() == crate::tob::NodeState::Outside;
        let empty = view.epoch == 0 && self.tob.delivered() == 0;
        let left = (outside || empty) && !self.tob.target().contains(&self.me);
        self.health
            .set_membership(view.ids().collect(), self.tob.is_settled(), left);
    }

    async fn carry_out_one(&mut self, event: Event<Proposal>) {
        match event {
            Event::Deliver(delivery) => self.apply(delivery).await,
            Event::Serving { epoch } => {
                tracing::info!(epoch, members = ?self.tob.view().members, "serving in a new view");
                let members: Vec<u16> = self.tob.view().ids().map(|id| id.0).collect();
                self.health.count_view_change();
                self.health
                    .note(format!("serving in view {epoch} of nodes {members:?}"));
            }
            // A source that failed to apply part of the tail holds no snapshot of `seq`: it
            // sends nothing, and the view change it asked for names another source.
            Event::SendState { epoch, seq, .. } if self.diverged => {
                tracing::warn!(
                    epoch,
                    seq,
                    "not sending state: this node failed to apply the tail"
                );
            }
            Event::SendState { epoch, seq, to } => self.send_state(epoch, seq, to).await,
            Event::AwaitState { epoch, source, seq } => {
                tracing::info!(epoch, ?source, seq, "joining a view: waiting for its state");
                self.health.note(format!(
                    "joining view {epoch}: catching up from node {}",
                    source.0
                ));
                self.fail_all_waiting(CATCHING_UP);
                self.diverged = false;
                // Local reads must see the node catching up before the store empties.
                self.health.begin_reset();
                let reset = self.datalet.reset().await;
                if let Err(e) = &reset {
                    tracing::error!(error = %e, "could not reset the datalet for a state transfer");
                }
                self.health.set_catch_up(Some((0, 0)));
                self.receiving = Some(Receiving {
                    epoch,
                    seq,
                    started: Instant::now(),
                    logged: Instant::now(),
                    items: 0,
                    // Items left from before would survive the install.
                    failed: reset.is_err(),
                });
                for chunk in std::mem::take(&mut self.early_chunks) {
                    if chunk.epoch == epoch {
                        Box::pin(self.receive_state(chunk)).await;
                    } else if chunk.epoch > epoch {
                        self.early_chunks.push(chunk);
                    }
                }
            }
            Event::ReadReady { id } => {
                if let Some(Waiter::Reads(reads)) = self.waiting.remove(&id) {
                    for reply in reads {
                        let _ = reply.send(match self.diverged {
                            true => Reply::Refused(NOT_APPLIED),
                            false => Reply::ReadReady,
                        });
                    }
                }
            }
            Event::Excluded { epoch } => {
                tracing::warn!(epoch, "not in the cluster's current view; asking to join");
                self.health.set_catch_up(None);
                self.health
                    .note(format!("left out of view {epoch}; asking to join"));
                self.receiving = None;
                self.fail_all_waiting(EXCLUDED);
            }
        }
    }

    /// Starts sending a snapshot of the datalet, as it is now, to the members that need it:
    /// every item live at the order's clock (not the wall clock, which may be past an item's
    /// expiry that the other replicas still hold live). [`Driver::pump_state`] sends it.
    async fn send_state(&mut self, epoch: u64, seq: u64, to: Vec<NodeId>) {
        let now = self.order_now;
        let snapshot = match self.datalet.snapshot(now).await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::error!(error = %e, "could not read the datalet for a state transfer");
                return;
            }
        };
        tracing::info!(epoch, seq, ?to, "sending state");
        let to_ids: Vec<u16> = to.iter().map(|n| n.0).collect();
        self.health
            .note(format!("sending a snapshot to nodes {to_ids:?}"));
        self.sending = Some(Sending {
            epoch,
            seq,
            now,
            snapshot: Some(snapshot),
            throttled: None,
            to: to.into_iter().map(|peer| (peer, None)).collect(),
            started: Instant::now(),
            items: 0,
            total: self.datalet.stats().curr_items,
            bytes: 0,
        });
        self.pump_state().await;
    }

    /// Sends the snapshot being sent on, a chunk of at most about [`STATE_CHUNK_BYTES`] at a
    /// time, while every joiner's queue has half its room free (the rest is for the order's
    /// own messages, so the transfer never holds them back, nor this node's clients with them).
    /// A joiner that left the view is dropped; a new view ends the transfer.
    async fn pump_state(&mut self) {
        let Some(sending) = self.sending.as_mut() else {
            return;
        };
        let view = self.tob.view();
        if view.epoch != sending.epoch {
            self.sending = None;
            return;
        }
        sending
            .to
            .retain(|(peer, _)| view.incarnation_of(*peer).is_some());
        let half = self.transport.queue_bytes() / 2;
        for _ in 0..STATE_CHUNKS_PER_PUMP {
            for (peer, held) in sending.to.iter_mut() {
                if self.transport.room(*peer) < half {
                    continue;
                }
                if let Some(chunk) = held.take() {
                    if let Err(PeerMsg::State(chunk)) =
                        self.transport.try_send(*peer, PeerMsg::State(chunk))
                    {
                        *held = Some(chunk);
                    }
                }
            }
            if sending.to.iter().any(|(_, held)| held.is_some()) {
                return;
            }
            let Some(mut chunk) = sending.next_chunk(self.rate.as_deref()).await else {
                self.sending = None;
                return;
            };
            // Throttled: a chunk with data waits until the node's budget allows it. The
            // empty chunk that ends the snapshot goes at once, so a joiner installs what it
            // was sent without waiting for the debt of another group's transfer.
            if !chunk.items.is_empty() && self.rate.as_ref().is_some_and(|r| !r.ready()) {
                sending.throttled = Some(chunk);
                return;
            }
            sending.items += chunk.items.len() as u64;
            let bytes = chunk
                .items
                .iter()
                .map(|i| (i.key.len() + i.value.len()) as u64)
                .sum::<u64>();
            sending.bytes += bytes;
            if let Some(rate) = &self.rate {
                rate.spend(bytes * sending.to.len() as u64);
            }
            // Counted once per joiner it goes to.
            self.counters
                .state_bytes_sent
                .fetch_add(bytes * sending.to.len() as u64, Relaxed);
            chunk.total = sending.total;
            for (_, held) in sending.to.iter_mut() {
                *held = Some(chunk.clone());
            }
        }
    }

    async fn receive_state(&mut self, chunk: StateChunk) {
        let expected = self.receiving.as_ref().map(|r| (r.epoch, r.seq));
        if expected != Some((chunk.epoch, chunk.seq)) {
            // The view that asks for it may be installed but not carried out yet (the
            // `AwaitState` event waits for the end of the burst), or not installed yet.
            if chunk.epoch >= self.tob.view().epoch {
                self.early_chunks.push(chunk);
            }
            return;
        }
        // Stored at the order's clock, as the source's items were applied, so a delayed flush
        // ordered meanwhile hides the same items here as there.
        self.order_now = chunk.now;
        let now = chunk.now;
        let count = chunk.items.len() as u64;
        let chunk_total = chunk.total;
        let ops = chunk
            .items
            .into_iter()
            .map(|item| tailorkv_datalet::BatchOp {
                key: item.key,
                mutation: Mutation::MetaSet(tailorkv_datalet::MetaSet {
                    mode: StoreMode::Set,
                    compare: None,
                    invalidate: false,
                    flags: item.flags,
                    expiry: item.expiry,
                    value: item.value,
                    marks: item.marks,
                }),
                version: item.version,
                now,
            })
            .collect();
        // A chunk at a time: one transaction and one fsync on the disk datalet.
        if let Some(e) = self
            .datalet
            .apply_batch(ops)
            .await
            .into_iter()
            .find_map(Result::err)
        {
            tracing::error!(error = %e, "could not store a transferred item");
            self.receiving.as_mut().expect("checked").failed = true;
        }
        let receiving = self.receiving.as_mut().expect("checked");
        receiving.items += count;
        self.tob.state_progress();
        self.health
            .set_catch_up(Some((receiving.items, chunk_total.max(receiving.items))));
        if receiving.logged.elapsed() >= PROGRESS_EVERY && !chunk.last {
            receiving.logged = Instant::now();
            tracing::info!(
                epoch = receiving.epoch,
                items = receiving.items,
                of_about = chunk_total,
                ms = receiving.started.elapsed().as_millis() as u64,
                "catching up"
            );
        }
        if chunk.last && receiving.failed {
            // Serving this copy would lie: ask for another snapshot.
            self.receiving = None;
            self.health.set_catch_up(None);
            tracing::error!("a transferred state could not be stored; asking for another");
            self.tob.resync();
        } else if chunk.last {
            let receiving = self.receiving.take().expect("checked");
            // Confirms the installed state as the store's position (a durable store reports
            // none between the reset and this, so a crash mid-transfer restarts from nothing).
            if let Err(e) = self.datalet.save_clock(receiving.seq).await {
                tracing::error!(error = %e, "could not save the installed state's position; asking for another");
                self.tob.resync();
                return;
            }
            self.saved = receiving.seq;
            self.health.set_applied(receiving.seq);
            self.health.set_catch_up(None);
            self.health.note(format!(
                "snapshot installed: {} items in {} ms",
                receiving.items,
                receiving.started.elapsed().as_millis()
            ));
            tracing::info!(
                epoch = receiving.epoch,
                seq = receiving.seq,
                items = receiving.items,
                ms = receiving.started.elapsed().as_millis() as u64,
                "state installed"
            );
            self.tob.state_installed(receiving.epoch, receiving.seq);
        }
    }

    /// Applies one delivered operation, and answers its client if it was proposed here.
    ///
    /// An operation every replica applies (a mutation, a flush) that fails here leaves this
    /// replica behind the order: it stops applying and serving, and catches up by state
    /// transfer ([`Tob::resync`]). Its client is told the outcome is unknown: the others
    /// applied it. A datalet's memory limit cannot fail an operation here: in a cluster it is
    /// enforced before an operation is proposed (see [`crate::engine`]).
    async fn apply(&mut self, delivery: crate::tob::Delivery<Proposal>) {
        let Proposal { request, now, op } = delivery.op;
        let mine = delivery.origin == self.me;
        if self.diverged {
            if mine {
                self.answer(request, Reply::Refused(NOT_APPLIED));
            }
            return;
        }
        self.counters.ops_applied.fetch_add(1, Relaxed);
        self.order_now = self.order_now.max(now);
        // Before any reply: a client that waited for this operation sees the clock it set.
        self.health.set_order_now(self.order_now);
        let now = self.order_now;
        let version = Version::new(delivery.seq, NodeId(self.group.0));
        let reply = match op {
            Op::Mutate { key, mutation } => {
                let result = self.datalet.apply(&key, mutation, version, now).await;
                if let Err(e) = &result {
                    self.diverge(delivery.seq, e);
                }
                Reply::Mutated(result)
            }
            // Never ordered: see [`Driver::read`].
            Op::Read => return,
            Op::Clock => Reply::Flushed(Ok(())),
            Op::Flush { at } => {
                let result = self.datalet.flush_all(at, now, version).await;
                if let Err(e) = &result {
                    self.diverge(delivery.seq, e);
                }
                Reply::Flushed(result)
            }
        };
        if !self.diverged {
            self.health.set_applied(delivery.seq);
        }
        if mine {
            let reply = if self.diverged {
                Reply::Refused(NOT_APPLIED)
            } else {
                reply
            };
            self.answer(request, reply);
        }
    }

    /// Applies a run of delivered mutations as one [`Datalet::apply_batch`], each at its own
    /// version and at the order's clock as it stands at its place, and answers the clients
    /// of those proposed here. The first that fails makes this replica diverge ([`Driver::diverge`]);
    /// those after it are answered as not applied.
    async fn apply_run(&mut self, run: Vec<crate::tob::Delivery<Proposal>>) {
        if run.is_empty() {
            return;
        }
        let mut ops = Vec::with_capacity(run.len());
        let mut waiting = Vec::with_capacity(run.len());
        for delivery in run {
            let Proposal { request, now, op } = delivery.op;
            let mine = delivery.origin == self.me;
            if self.diverged {
                if mine {
                    self.answer(request, Reply::Refused(NOT_APPLIED));
                }
                continue;
            }
            let Op::Mutate { key, mutation } = op else {
                unreachable!("a run holds mutations only")
            };
            self.counters.ops_applied.fetch_add(1, Relaxed);
            self.order_now = self.order_now.max(now);
            ops.push(tailorkv_datalet::BatchOp {
                key,
                mutation,
                version: Version::new(delivery.seq, NodeId(self.group.0)),
                now: self.order_now,
            });
            waiting.push((delivery.seq, mine.then_some(request)));
        }
        if ops.is_empty() {
            return;
        }
        // Before any reply: a client that waited for these operations sees the clock they set.
        self.health.set_order_now(self.order_now);
        let outcomes = self.datalet.apply_batch(ops).await;
        for ((seq, request), outcome) in waiting.into_iter().zip(outcomes) {
            if !self.diverged {
                match &outcome {
                    Ok(_) => self.health.set_applied(seq),
                    Err(e) => self.diverge(seq, e),
                }
            }
            if let Some(request) = request {
                let reply = match self.diverged {
                    true => Reply::Refused(NOT_APPLIED),
                    false => Reply::Mutated(outcome),
                };
                self.answer(request, reply);
            }
        }
    }

    fn answer(&mut self, request: u64, reply: Reply) {
        if let Some(Waiter::One(waiter)) = self.waiting.remove(&request) {
            let _ = waiter.send(reply);
        }
    }

    /// The datalet failed to apply operation `seq`: this replica no longer holds the order's
    /// state, so it stops serving and asks for a snapshot.
    fn diverge(&mut self, seq: u64, error: &DataletError) {
        tracing::error!(
            seq,
            %error,
            "could not apply an ordered operation; catching up by state transfer"
        );
        self.counters.apply_failures.fetch_add(1, Relaxed);
        self.health.note(format!(
            "could not apply operation {seq} ({error}); catching up"
        ));
        self.diverged = true;
        self.tob.resync();
    }
}

/// The next chunk of a snapshot: about `max_bytes` of items (an item larger than that goes
/// alone). The end of the snapshot is an empty chunk marked last.
pub(super) fn next_chunk(
    snapshot: &mut dyn Snapshot,
    epoch: u64,
    seq: u64,
    now: UnixSecs,
    max_bytes: usize,
) -> Result<StateChunk, DataletError> {
    let part = snapshot.next_part(max_bytes)?;
    let last = part.is_empty();
    let items = part
        .into_iter()
        .map(|(key, item)| StateItem {
            key,
            value: item.value,
            flags: item.flags,
            expiry: item.expiry,
            version: item.version,
            marks: item.marks,
        })
        .collect();
    Ok(StateChunk {
        epoch,
        seq,
        now,
        items,
        last,
        total: 0,
    })
}
