//! Total-order broadcast on Lamport clocks, with views that survive failures: a sans-IO state
//! machine.
//!
//! # Ordering within a view
//!
//! A *view* is a numbered set of members (each with its *incarnation*, a number that changes
//! when its process restarts). Every member keeps a Lamport clock; every message it sends
//! carries a fresh timestamp (the clock ticks on every send) and every message received moves
//! the clock past the timestamp it carries. Links are FIFO (TCP; the transport reports lost
//! messages rather than hide them).
//!
//! - [`Tob::propose`] buffers an operation; [`Tob::flush`] sends every buffered operation in
//!   one [`Message::Broadcast`] to the other members and queues it locally under its key
//!   `(timestamp, sender)`.
//! - Every broadcast and every [`Message::Ack`] carries the sender's *receipt vector*: for each
//!   member, the timestamp of the last broadcast received from it. A member owes an ack after
//!   receiving broadcasts ([`Tob::ack`] pays it at once for a whole burst); quiet members
//!   send acks as heartbeats.
//! - The batch at the head of the queue (the smallest key) is delivered once every other
//!   member of the view has reported receiving it. That one rule gives both order and
//!   stability. Order: a member `q` that reports receiving a batch with timestamp `t` sent
//!   that report after its clock passed `t`, so by FIFO every broadcast of `q` with a smaller
//!   timestamp arrived before the report; so nothing ordered before the head can still
//!   arrive. Stability: a delivered batch is held by every member of the view, which is what
//!   lets a view change recover everything any member delivered.
//! - Delivered operations are numbered `1, 2, 3, ...` identically on every member: the strong
//!   modes use that number as the version, and so as the CAS unique.
//!
//! # Changing views
//!
//! A [`detector::Detector`] watches every node; every message is a sign of life and quiet
//! members send heartbeats. When a member of the view is suspected, when a node asks to
//! [`Message::Join`], or when messages from a member were lost, the members agree on the next
//! view with a single-decree Paxos per epoch, led by a coordinator:
//!
//! 1. **Prepare.** The coordinator (the lowest-numbered member it does not suspect, or any
//!    member whose wait ran out) picks a ballot `(next epoch, round, its id)` and sends
//!    [`Message::Prepare`] to every node.
//! 2. **Promise.** A member of the current view that has not promised a higher ballot
//!    promises this one and *freezes*: it stops sending, receiving and delivering broadcasts
//!    of the current view. Its [`Message::Promise`] carries its [`Standing`]: how far it
//!    delivered, the batches it holds undelivered, and any plan it accepted earlier. Nodes
//!    outside the view (restarted, excluded, booting) answer too, as candidates to join.
//! 3. **Accept.** With promises from a majority of the current view (and after a short wait for
//!    the rest), the coordinator makes a [`Plan`]: if any promise carries an accepted plan,
//!    the one with the highest ballot, unchanged (Paxos); otherwise the next view has every
//!    node that promised, and its *tail* is the union of the batches the voters hold
//!    undelivered, in key order. Every batch any member delivered was held by every member,
//!    so by every voter: each voter's deliveries are a prefix of its tail order, and
//!    delivering the rest of the tail leaves every survivor at the same sequence number.
//!    A majority of the current view must accept the plan.
//! 4. **Install.** The coordinator sends [`Message::Install`] to every node. Members that
//!    promised as up-to-date members of the old view (*synced*) deliver the rest of the tail
//!    and continue in the new view. The others (joiners) drop their state and wait for a
//!    snapshot of the datalet at the view's starting sequence number, which the plan's
//!    *source* sends as soon as it has delivered the tail ([`Event::SendState`]); until it
//!    is installed ([`Tob::state_installed`]) a joiner acknowledges the new view's
//!    broadcasts but delivers nothing. A node left out learns so ([`Event::Excluded`]) and
//!    asks to join again.
//!
//! A member that cannot gather a majority never delivers: every delivery needs every member
//! of its view, and a view needs a majority of the previous one, so two sides of a partition
//! can never both make progress, and a minority refuses rather than diverges. Nodes that are
//! behind learn the current plan from any node ahead of them. The first view (epoch 1) is
//! formed the same way from the configured nodes (epoch 0); when they restart with saved state
//! (`delivered` > 0, a durable datalet), it waits for every configured node and starts from the
//! furthest. Losing a majority of a view at once stops the strong modes until enough of those
//! members return.
//!
//! Lost messages: the driver calls [`Tob::link_gap`] before the next message from a sender
//! whose messages were lost; the lost ones belong to epochs up to that next message's, so
//! nothing of those epochs is taken from the sender any more, and a view holding it in such
//! an epoch is changed. Nobody can have delivered a lost batch without this node's receipt, so
//! the node's own state stays consistent.
//!
//! Time is ticks; nothing here reads a clock or touches a socket. The driver feeds received
//! messages to [`Tob::step`], calls [`Tob::tick`] on a timer, sends what
//! [`Tob::take_messages`] returns and carries out what [`Tob::take_events`] returns, in order.

pub mod detector;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tailorkv_common::{NodeId, Ts};

use detector::Detector;

/// Names one run of a node's process; a restart picks a larger one.
pub type Incarnation = u64;

/// An operation's size in bytes as it travels. A broadcast carries operations up to
/// [`Tob::set_batch_bytes`] in total (at least one), and [`Tob::own_bytes`] counts what this
/// node proposed and has not delivered yet, so the driver can bound what any one message, and
/// any view change (whose messages carry undelivered batches), may hold.
pub use crate::weigh::Weigh;

/// The default most bytes of operations a node catching up holds (everything broadcast while
/// it waits for its snapshot) before it stops reporting receipts; see [`Tob::set_catch_up_bytes`].
pub const CATCH_UP_BYTES: usize = 128 << 20;

/// The default most bytes of operations in one broadcast.
pub const BATCH_BYTES: usize = 1 << 20;

/// A numbered set of members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    /// Members with their incarnations, by id.
    pub members: Vec<(NodeId, Incarnation)>,
}

impl View {
    pub fn incarnation_of(&self, id: NodeId) -> Option<Incarnation> {
        self.members
            .iter()
            .find(|&&(m, _)| m == id)
            .map(|&(_, inc)| inc)
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|&(id, _)| id)
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// A view-change ballot: ordered by the epoch it would start, then round, then node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    pub epoch: u64,
    pub round: u64,
    pub node: NodeId,
}

/// Operations broadcast together, under their key `(ts, origin)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch<Op> {
    pub ts: Ts,
    pub origin: NodeId,
    pub ops: Vec<Op>,
}

impl<Op> Batch<Op> {
    fn key(&self) -> (Ts, NodeId) {
        (self.ts, self.origin)
    }
}

/// The agreed transition to a new view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan<Op> {
    pub view: View,
    /// Batches of the previous view still to deliver, in key order.
    pub tail: Vec<Batch<Op>>,
    /// Members that deliver the tail themselves; the others receive a snapshot.
    pub synced: Vec<NodeId>,
    /// The synced member that sends the snapshot.
    pub source: NodeId,
    /// The sequence number the view starts at, after the tail.
    pub start_seq: u64,
}

/// What a node reports when it promises.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing<Op> {
    pub epoch: u64,
    /// Up to date in its view (not waiting for, or missing, a snapshot).
    pub synced: bool,
    pub delivered: u64,
    /// Key of the last batch delivered in this epoch.
    pub last: (Ts, NodeId),
    /// Batches of this epoch received and not delivered.
    pub pending: Vec<Batch<Op>>,
    pub accepted: Option<(Ballot, Plan<Op>)>,
}

/// A message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<Op> {
    /// Operations to order, with the sender's receipt vector.
    Broadcast {
        epoch: u64,
        ts: Ts,
        received: Vec<(NodeId, Ts)>,
        ops: Vec<Op>,
    },
    /// The sender's receipt vector; also a heartbeat.
    Ack {
        epoch: u64,
        ts: Ts,
        received: Vec<(NodeId, Ts)>,
    },
    /// A heartbeat from a node that is not sending acks (frozen, outside, booting).
    Alive {
        epoch: u64,
    },
    Prepare {
        ballot: Ballot,
    },
    Promise {
        ballot: Ballot,
        standing: Standing<Op>,
    },
    /// The ballot is lower than one already promised.
    Reject {
        ballot: Ballot,
        promised: Ballot,
    },
    Accept {
        ballot: Ballot,
        plan: Plan<Op>,
    },
    Accepted {
        ballot: Ballot,
    },
    /// A chosen plan; also sent to nodes found to be behind.
    Install {
        plan: Plan<Op>,
    },
    /// A node outside the view (or behind it) asks to be let in.
    Join {
        epoch: u64,
    },
}

impl<Op: Weigh> Weigh for Batch<Op> {
    fn weight(&self) -> usize {
        self.ops.weight() + 24
    }
}

impl<Op: Weigh> Weigh for Plan<Op> {
    fn weight(&self) -> usize {
        self.tail.weight() + 16 * (self.view.members.len() + self.synced.len()) + 32
    }
}

impl<Op: Weigh> Weigh for Message<Op> {
    fn weight(&self) -> usize {
        let data = match self {
            Message::Broadcast { received, ops, .. } => 16 * received.len() + ops.weight(),
            Message::Ack { received, .. } => 16 * received.len(),
            Message::Promise { standing, .. } => {
                standing.pending.weight()
                    + standing.accepted.as_ref().map_or(0, |(_, p)| p.weight())
            }
            Message::Accept { plan, .. } | Message::Install { plan } => plan.weight(),
            Message::Alive { .. }
            | Message::Prepare { .. }
            | Message::Reject { .. }
            | Message::Accepted { .. }
            | Message::Join { .. } => 0,
        };
        data + 32
    }
}

/// A message with its addresses and the sender's incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<Op> {
    pub from: NodeId,
    pub to: NodeId,
    pub incarnation: Incarnation,
    pub message: Message<Op>,
}

/// An operation in the total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<Op> {
    /// Position in the total order, from 1; the same on every member.
    pub seq: u64,
    /// The node that proposed it.
    pub origin: NodeId,
    pub op: Op,
}

/// What the driver must do, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<Op> {
    /// Apply this operation.
    Deliver(Delivery<Op>),
    /// A view was installed with this node as a synced member: it serves again.
    Serving { epoch: u64 },
    /// Send a snapshot of the datalet, as it is now (after everything delivered so far and
    /// before anything delivered later), to these members.
    SendState {
        epoch: u64,
        seq: u64,
        to: Vec<NodeId>,
    },
    /// This node is in the new view but must be given its state: drop the local state and
    /// wait for a snapshot from `source` at `seq`. Operations proposed here and not yet
    /// delivered will not be answered here.
    AwaitState {
        epoch: u64,
        source: NodeId,
        seq: u64,
    },
    /// This node is not in the current view; operations proposed here will not be answered.
    Excluded { epoch: u64 },
}

/// The epoch its sender was in when it sent `message`.
fn sender_epoch<Op>(message: &Message<Op>) -> u64 {
    match message {
        Message::Broadcast { epoch, .. }
        | Message::Ack { epoch, .. }
        | Message::Alive { epoch }
        | Message::Join { epoch } => *epoch,
        Message::Prepare { ballot }
        | Message::Accept { ballot, .. }
        | Message::Accepted { ballot }
        | Message::Reject { ballot, .. } => ballot.epoch.saturating_sub(1),
        Message::Promise { standing, .. } => standing.epoch,
        Message::Install { plan } => plan.view.epoch,
    }
}

/// Bytes of messages of a later epoch kept, at most, until this node installs that epoch
/// (by [`Weigh`]). What arrives early is bounded anyway: a member's broadcasts cannot run
/// ahead of this node's receipts by more than the driver lets it have undelivered.
pub const EARLY_BYTES: usize = 64 << 20;

/// Timing, in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Silence after which a member sends a heartbeat.
    pub heartbeat: u64,
    /// Silence after which a node is suspected, at first.
    pub suspect_after: u64,
    /// Added to a node's timeout each time it was suspected wrongly.
    pub suspect_increment: u64,
    /// How long a coordinator with a majority waits for the other nodes' promises.
    pub collect: u64,
    /// How long a frozen member waits for a view before leading a change itself; also how
    /// long a member waits for the lowest-numbered member to lead.
    pub view_change: u64,
    /// How often a node outside the view asks to join.
    pub join_interval: u64,
    /// How long a joiner waits for its snapshot before asking for another view change.
    pub state_timeout: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: 10,
            suspect_after: 400,
            suspect_increment: 200,
            collect: 30,
            view_change: 250,
            join_interval: 100,
            state_timeout: 30_000,
        }
    }
}

/// Where a node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// No view formed yet.
    Booting,
    /// In a view, up to date, and ordering.
    Serving,
    /// Up to date, while the members agree on the next view.
    Changing,
    /// In the view, waiting for a snapshot.
    CatchingUp,
    /// Not in the current view.
    Outside,
}

impl NodeState {
    /// The name `stats` shows.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Booting => "booting",
            NodeState::Serving => "serving",
            NodeState::Changing => "changing-view",
            NodeState::CatchingUp => "catching-up",
            NodeState::Outside => "outside",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Not in the current view (or booting, at epoch 0).
    Outside,
    /// In the view, waiting for a snapshot.
    CatchingUp { since: u64 },
    /// In the view and up to date.
    Normal,
}

#[derive(Debug)]
struct Coordination<Op> {
    ballot: Ballot,
    started: u64,
    promises: BTreeMap<NodeId, (Incarnation, Standing<Op>)>,
    majority_at: Option<u64>,
    plan: Option<Plan<Op>>,
    /// Who accepted the plan, and whether each is a run that was in the view (see
    /// [`Tob::vote`]).
    accepted_by: BTreeMap<NodeId, bool>,
}

/// One node's state.
#[derive(Debug)]
pub struct Tob<Op> {
    id: NodeId,
    incarnation: Incarnation,
    /// Every configured node, this one included.
    universe: Vec<NodeId>,
    timing: Timing,
    now: u64,
    clock: Ts,
    view: View,
    status: Status,
    last_plan: Option<Plan<Op>>,
    /// Per member, its last receipt vector.
    acked: BTreeMap<NodeId, BTreeMap<NodeId, Ts>>,
    /// Per member, the timestamp of the last broadcast received from it (ours included).
    received: BTreeMap<NodeId, Ts>,
    /// Broadcasts received or sent in this epoch, not yet delivered.
    queue: BTreeMap<(Ts, NodeId), Vec<Op>>,
    /// Bytes of operations received while catching up (held in `queue` until the snapshot
    /// is installed).
    backlog_bytes: usize,
    /// Most of `backlog_bytes` before this node stops reporting further receipts.
    catch_up_bytes: usize,
    /// The receipts reported while the backlog is past `catch_up_bytes`: those of the moment
    /// it passed it.
    held_receipts: Option<BTreeMap<NodeId, Ts>>,
    proposed: Vec<Op>,
    /// Most bytes of operations in one broadcast (a larger operation goes alone).
    batch_bytes: usize,
    /// Bytes of the operations this node proposed that are not delivered yet: buffered, or
    /// broadcast and still queued.
    own_bytes: usize,
    /// This node failed to apply what it delivered: it delivers nothing more and wants a
    /// view change that gives it a snapshot.
    resync_wanted: bool,
    /// The operator said the next view may be formed by any majority of the nodes, whether
    /// or not they remember the last view ([`Tob::force_next_view`]).
    forced: bool,
    owe_ack: bool,
    ticks_quiet: u64,
    delivered_seq: u64,
    last_delivered: (Ts, NodeId),
    detector: Detector,
    promised: Ballot,
    accepted: Option<(Ballot, Plan<Op>)>,
    /// When this node promised a ballot of the next epoch, if it has.
    frozen_at: Option<u64>,
    coordination: Option<Coordination<Op>>,
    /// Since when a view change has been wanted.
    wanted_since: Option<u64>,
    /// Nodes outside the view that asked to join, with their incarnations.
    joiners: BTreeMap<NodeId, Incarnation>,
    /// Nodes some of whose messages were lost, with the last epoch those messages may belong
    /// to: nothing of that epoch or earlier is taken from them, and a view that holds them in
    /// such an epoch is changed.
    damaged: BTreeMap<NodeId, u64>,
    /// Nodes whose messages were lost, told before their next message (whose epoch bounds
    /// the epochs of the lost ones).
    gap_pending: BTreeSet<NodeId>,
    last_join: u64,
    /// Broadcasts and acks of a later epoch, from nodes that installed it before we did:
    /// stepped again once we install it (a member may hear a new view's first broadcasts
    /// before the coordinator's `Install`, over another link).
    early: Vec<(NodeId, Incarnation, Message<Op>)>,
    /// What `early` weighs.
    early_bytes: usize,
    /// Senders whose early messages did not all fit, with the latest epoch dropped.
    early_lost: BTreeMap<NodeId, u64>,
    /// When each node was last sent our plan, to send it at most once per heartbeat.
    plan_sent: BTreeMap<NodeId, u64>,
    outbox: Vec<Envelope<Op>>,
    events: Vec<Event<Op>>,
}

impl<Op: Clone + Weigh> Tob<Op> {
    /// Node `id` (run `incarnation`) of the configured nodes `universe`, booting: it has
    /// delivered `delivered` operations before (0 for an empty store).
    pub fn new(
        id: NodeId,
        incarnation: Incarnation,
        universe: &[NodeId],
        delivered: u64,
        timing: Timing,
    ) -> Self {
        assert!(universe.contains(&id), "{id:?} is not among the nodes");
        let mut universe = universe.to_vec();
        universe.sort();
        universe.dedup();
        let others = universe.iter().copied().filter(|&n| n != id);
        Tob {
            id,
            incarnation,
            detector: Detector::new(others, timing.suspect_after, timing.suspect_increment),
            view: View {
                epoch: 0,
                members: universe.iter().map(|&n| (n, 0)).collect(),
            },
            universe,
            timing,
            now: 0,
            clock: 0,
            status: Status::Outside,
            last_plan: None,
            acked: BTreeMap::new(),
            received: BTreeMap::new(),
            queue: BTreeMap::new(),
            proposed: Vec::new(),
            batch_bytes: BATCH_BYTES,
            backlog_bytes: 0,
            catch_up_bytes: CATCH_UP_BYTES,
            held_receipts: None,
            own_bytes: 0,
            resync_wanted: false,
            forced: false,
            owe_ack: false,
            ticks_quiet: 0,
            delivered_seq: delivered,
            last_delivered: (0, NodeId(0)),
            promised: Ballot::default(),
            accepted: None,
            frozen_at: None,
            coordination: None,
            wanted_since: None,
            joiners: BTreeMap::new(),
            damaged: BTreeMap::new(),
            gap_pending: BTreeSet::new(),
            last_join: 0,
            early: Vec::new(),
            early_bytes: 0,
            early_lost: BTreeMap::new(),
            plan_sent: BTreeMap::new(),
            outbox: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn clock(&self) -> Ts {
        self.clock
    }

    /// Operations delivered (or installed by snapshot) so far.
    pub fn delivered(&self) -> u64 {
        self.delivered_seq
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// In a view, up to date, and not in the middle of a view change.
    pub fn is_serving(&self) -> bool {
        self.status == Status::Normal && self.frozen_at.is_none() && self.view.epoch > 0
    }

    /// In a view and up to date (possibly frozen for a view change): local reads are sound.
    pub fn is_synced(&self) -> bool {
        self.status == Status::Normal && self.view.epoch > 0
    }

    /// Where this node stands, for the driver and for `stats`.
    pub fn state(&self) -> NodeState {
        match self.status {
            _ if self.view.epoch == 0 => NodeState::Booting,
            Status::Outside => NodeState::Outside,
            Status::CatchingUp { .. } => NodeState::CatchingUp,
            Status::Normal if self.frozen_at.is_some() => NodeState::Changing,
            Status::Normal => NodeState::Serving,
        }
    }

    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Sets the most bytes of operations one broadcast carries ([`BATCH_BYTES`] by default).
    pub fn set_batch_bytes(&mut self, bytes: usize) {
        self.batch_bytes = bytes.max(1);
    }

    /// Sets the most bytes of operations a node catching up holds before it stops reporting
    /// receipts ([`CATCH_UP_BYTES`] by default).
    pub fn set_catch_up_bytes(&mut self, bytes: usize) {
        self.catch_up_bytes = bytes;
    }

    /// Buffers an operation for the next broadcast.
    pub fn propose(&mut self, op: Op) {
        self.own_bytes += op.weight();
        self.proposed.push(op);
    }

    /// The operator's way out of a lost majority: the next view this node coordinates needs
    /// only a majority of the nodes to answer, counting restarted ones (which forgot what
    /// they promised) and, when every node restarted from its saved state, without waiting for
    /// the missing ones. Safe only if the nodes that answer hold every acknowledged write:
    /// a member that still serves does, having received every delivered batch; so does the
    /// furthest of the restarted disk nodes, unless the missing one was further. Lasts until
    /// the next view is installed.
    pub fn force_next_view(&mut self) {
        self.forced = true;
        self.wanted_since = None;
    }

    /// Takes back the buffered operations (not yet broadcast) that `gone` picks: their clients
    /// gave up waiting, and they were never sent, so they never take effect.
    pub fn withdraw(&mut self, gone: impl Fn(&Op) -> bool) {
        let before = self.proposed.len();
        self.proposed.retain(|op| !gone(op));
        if self.proposed.len() != before {
            self.recount_own();
        }
    }

    /// Bytes of the operations proposed here and not delivered yet (buffered or queued).
    pub fn own_bytes(&self) -> usize {
        self.own_bytes
    }

    /// Counts [`Tob::own_bytes`] afresh, after operations were dropped wholesale.
    fn recount_own(&mut self) {
        let queued: usize = self
            .queue
            .iter()
            .filter(|((_, origin), _)| *origin == self.id)
            .flat_map(|(_, ops)| ops.iter())
            .map(Weigh::weight)
            .sum();
        self.own_bytes = queued + self.proposed.iter().map(Weigh::weight).sum::<usize>();
    }

    /// This node could not apply an operation it delivered, so its state is no longer the
    /// order's: it stops delivering (it still receives and acknowledges broadcasts, so the
    /// others go on) and asks for a view change in which it is given a snapshot. Operations
    /// it delivered from then on are not applied here.
    /// A node already catching up (whose snapshot could not be installed) asks for another.
    pub fn resync(&mut self) {
        if self.status == Status::Outside || self.view.epoch == 0 {
            return;
        }
        if self.status == Status::Normal {
            self.status = Status::CatchingUp { since: self.now };
        }
        self.resync_wanted = true;
        self.proposed.clear();
        self.recount_own();
    }

    /// Operations proposed and not yet broadcast.
    pub fn proposed_len(&self) -> usize {
        self.proposed.len()
    }

    /// Broadcasts every buffered operation, if this node is serving: in batches of at most
    /// [`Tob::set_batch_bytes`] (an operation larger than that goes alone), in order.
    pub fn flush(&mut self) {
        if self.proposed.is_empty() || !self.is_serving() {
            return;
        }
        let mut ops = std::mem::take(&mut self.proposed).into_iter().peekable();
        while ops.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(op) =
                ops.next_if(|op| batch.is_empty() || bytes + op.weight() <= self.batch_bytes)
            {
                bytes += op.weight();
                batch.push(op);
            }
            self.broadcast(batch);
        }
        self.maybe_deliver();
    }

    fn broadcast(&mut self, ops: Vec<Op>) {
        let epoch = self.view.epoch;
        let ts = self.next_ts();
        self.received.insert(self.id, ts);
        let received = self.receipts();
        self.send_members(Message::Broadcast {
            epoch,
            ts,
            received,
            ops: ops.clone(),
        });
        self.queue.insert((ts, self.id), ops);
    }

    /// Messages from `from` were lost; the driver says so before stepping the next message
    /// from it. The lost messages belong to epochs up to that next message's: nothing of
    /// those epochs is taken from `from` any more, and a view holding it in one is changed.
    pub fn link_gap(&mut self, from: NodeId) {
        self.gap_pending.insert(from);
    }

    fn damage(&mut self, from: NodeId, through: u64) {
        let entry = self.damaged.entry(from).or_insert(through);
        *entry = (*entry).max(through);
    }

    fn is_damaged(&self, node: NodeId) -> bool {
        self.damaged
            .get(&node)
            .is_some_and(|&through| through >= self.view.epoch)
    }

    /// The snapshot for the current view has been installed in the datalet.
    pub fn state_installed(&mut self, epoch: u64, seq: u64) {
        if epoch != self.view.epoch || !matches!(self.status, Status::CatchingUp { .. }) {
            return;
        }
        self.delivered_seq = seq;
        self.status = Status::Normal;
        self.events.push(Event::Serving { epoch });
        self.maybe_deliver();
        self.release_backlog();
        self.flush();
    }

    /// Handles a message from node `from`, run `incarnation`.
    pub fn step(&mut self, from: NodeId, incarnation: Incarnation, message: Message<Op>) {
        if from == self.id || !self.universe.contains(&from) {
            return;
        }
        let member = match self.view.incarnation_of(from) {
            _ if self.view.epoch == 0 => false,
            Some(inc) if inc == incarnation => true,
            Some(inc) if incarnation < inc => return, // from a run that has since restarted
            Some(_) => {
                // A new run of a member: the run in the view crashed.
                self.detector.suspect(from);
                false
            }
            None => false,
        };
        if self.gap_pending.remove(&from) {
            self.damage(from, sender_epoch(&message));
        }
        // A new run of a member stays suspected until a view admits it.
        let stale_member = self.view.epoch > 0 && self.view.incarnation_of(from).is_some();
        if member || !stale_member {
            self.detector.heard(from);
        }
        let in_epoch = |epoch: u64, me: &Self| {
            epoch == me.view.epoch
                && member
                && me.status != Status::Outside
                && me.frozen_at.is_none()
                && !me.is_damaged(from)
        };
        // Broadcasts and acks count only in this node's epoch; a later epoch's wait for it.
        if let Message::Broadcast { epoch, .. } | Message::Ack { epoch, .. } = &message {
            let epoch = *epoch;
            if !in_epoch(epoch, self) {
                if epoch > self.view.epoch {
                    self.keep_early(from, incarnation, message);
                } else {
                    self.compare_epochs(from, epoch);
                }
                return;
            }
        }
        match message {
            Message::Broadcast {
                ts, received, ops, ..
            } => {
                self.clock = self.clock.max(ts);
                if matches!(self.status, Status::CatchingUp { .. }) {
                    self.hold_back(ops.weight());
                }
                self.queue.insert((ts, from), ops);
                self.received.insert(from, ts);
                self.acked.insert(from, received.into_iter().collect());
                self.owe_ack = true;
                self.maybe_deliver();
            }
            Message::Ack { ts, received, .. } => {
                self.clock = self.clock.max(ts);
                self.acked.insert(from, received.into_iter().collect());
                self.maybe_deliver();
            }
            Message::Alive { epoch } => self.compare_epochs(from, epoch),
            Message::Join { epoch } => {
                if epoch > self.view.epoch {
                    self.send_to(
                        from,
                        Message::Join {
                            epoch: self.view.epoch,
                        },
                    );
                    return;
                }
                self.send_plan(from, true);
                if !member && self.view.epoch > 0 && self.status != Status::Outside {
                    self.joiners.insert(from, incarnation);
                }
            }
            Message::Prepare { ballot } => self.on_prepare(from, ballot),
            Message::Promise { ballot, standing } => {
                if let Some(c) = self.coordination.as_mut() {
                    if c.ballot == ballot {
                        c.promises.insert(from, (incarnation, standing));
                        self.coordinate();
                    }
                }
            }
            Message::Reject { ballot, promised } => {
                if self
                    .coordination
                    .as_ref()
                    .is_some_and(|c| c.ballot == ballot)
                {
                    self.coordination = None;
                    if promised > self.promised && promised.epoch == self.view.epoch + 1 {
                        // Give the coordinator of the higher ballot its time.
                        self.promised = promised;
                        self.frozen_at = Some(self.now);
                    }
                }
            }
            Message::Accept { ballot, plan } => {
                if ballot.epoch != self.view.epoch + 1 {
                    if ballot.epoch <= self.view.epoch {
                        self.send_plan(from, true);
                    }
                    return;
                }
                if !self.promise(from, ballot) {
                    return;
                }
                self.accepted = Some((ballot, plan));
                self.send_to(from, Message::Accepted { ballot });
            }
            Message::Accepted { ballot } => {
                let Some(c) = self.coordination.as_ref() else {
                    return;
                };
                let vote = match c.promises.get(&from) {
                    Some((inc, s)) if *inc == incarnation => self.vote(from, *inc, s),
                    _ => None,
                };
                if let (Some(remembers), true) = (vote, c.ballot == ballot && c.plan.is_some()) {
                    let c = self.coordination.as_mut().expect("checked");
                    c.accepted_by.insert(from, remembers);
                    self.coordinate();
                }
            }
            Message::Install { plan } => {
                if plan.view.epoch > self.view.epoch {
                    self.install(plan);
                }
            }
        }
    }

    /// Pays owed acks now: the driver calls this after handling a burst of messages, so a
    /// broadcast is acknowledged at once, with one ack for the whole burst.
    pub fn ack(&mut self) {
        if self.owe_ack && self.sends_acks() {
            self.send_ack();
        }
    }

    /// Advances time by one tick: heartbeats, failure detection, view changes.
    pub fn tick(&mut self) {
        self.now += 1;
        self.ticks_quiet += 1;
        self.detector.tick();
        if self.sends_acks() {
            if self.owe_ack || self.ticks_quiet >= self.timing.heartbeat {
                self.send_ack();
            }
        } else if self.ticks_quiet >= self.timing.heartbeat {
            self.ticks_quiet = 0;
            let epoch = self.view.epoch;
            for to in self.universe.clone() {
                if to != self.id {
                    self.send_to(to, Message::Alive { epoch });
                }
            }
        }
        if self.status == Status::Outside && self.view.epoch > 0 {
            if self.now >= self.last_join + self.timing.join_interval {
                self.last_join = self.now;
                let epoch = self.view.epoch;
                for to in self.universe.clone() {
                    if to != self.id {
                        self.send_to(to, Message::Join { epoch });
                    }
                }
            }
            return;
        }
        self.drive_view_change();
    }

    /// Messages to send, in order; per destination, they must be sent in this order.
    pub fn take_messages(&mut self) -> Vec<Envelope<Op>> {
        std::mem::take(&mut self.outbox)
    }

    /// What to carry out, in order.
    pub fn take_events(&mut self) -> Vec<Event<Op>> {
        std::mem::take(&mut self.events)
    }

    fn sends_acks(&self) -> bool {
        self.view.epoch > 0 && self.status != Status::Outside && self.frozen_at.is_none()
    }

    fn next_ts(&mut self) -> Ts {
        self.clock += 1;
        self.ticks_quiet = 0;
        self.owe_ack = false;
        self.clock
    }

    fn receipts(&self) -> Vec<(NodeId, Ts)> {
        let received = self.held_receipts.as_ref().unwrap_or(&self.received);
        received.iter().map(|(&n, &ts)| (n, ts)).collect()
    }

    /// Counts a broadcast of `bytes` received while catching up. Once the backlog passes
    /// [`Tob::set_catch_up_bytes`], the receipts reported stay those of that moment: the
    /// others cannot deliver what this node has not reported, so their proposers stop at
    /// their in-flight bound until this node has installed its snapshot and delivered the
    /// backlog, and what it holds stays bounded. Reporting less than was received is always
    /// safe: it only delays deliveries.
    fn hold_back(&mut self, bytes: usize) {
        self.backlog_bytes += bytes;
        if self.backlog_bytes > self.catch_up_bytes && self.held_receipts.is_none() {
            self.held_receipts = Some(self.received.clone());
        }
    }

    /// Ends [`Tob::hold_back`]'s accounting: the backlog is delivered, or dropped.
    fn release_backlog(&mut self) {
        self.backlog_bytes = 0;
        if self.held_receipts.take().is_some() {
            self.owe_ack = true;
        }
    }

    fn send_ack(&mut self) {
        let epoch = self.view.epoch;
        let ts = self.next_ts();
        let received = self.receipts();
        self.send_members(Message::Ack {
            epoch,
            ts,
            received,
        });
    }

    fn send_to(&mut self, to: NodeId, message: Message<Op>) {
        self.outbox.push(Envelope {
            from: self.id,
            to,
            incarnation: self.incarnation,
            message,
        });
    }

    fn send_members(&mut self, message: Message<Op>) {
        let members: Vec<NodeId> = self.view.ids().filter(|&m| m != self.id).collect();
        for to in members {
            self.send_to(to, message.clone());
        }
    }

    /// Sends our latest plan to `to` (at most once per heartbeat unless `now`).
    fn send_plan(&mut self, to: NodeId, now: bool) {
        let Some(plan) = self.last_plan.clone() else {
            return;
        };
        let last = self.plan_sent.get(&to).copied();
        if !now && last.is_some_and(|t| self.now < t + self.timing.heartbeat) {
            return;
        }
        self.plan_sent.insert(to, self.now);
        self.send_to(to, Message::Install { plan });
    }

    /// Keeps a message of a later epoch for when we install it, and asks its sender where
    /// it is. Past [`EARLY_BYTES`], the sender's link counts as broken.
    fn keep_early(&mut self, from: NodeId, incarnation: Incarnation, message: Message<Op>) {
        let epoch = match &message {
            Message::Broadcast { epoch, .. } | Message::Ack { epoch, .. } => *epoch,
            _ => return,
        };
        let weight = message.weight();
        if self.early_bytes + weight <= EARLY_BYTES && !self.early_lost.contains_key(&from) {
            self.early_bytes += weight;
            self.early.push((from, incarnation, message));
        } else {
            let lost = self.early_lost.entry(from).or_insert(epoch);
            *lost = (*lost).max(epoch);
        }
        self.compare_epochs(from, epoch);
    }

    /// A message of another epoch: tell a node behind us where we are, or ask one ahead.
    fn compare_epochs(&mut self, from: NodeId, epoch: u64) {
        if epoch < self.view.epoch {
            self.send_plan(from, false);
        } else if epoch > self.view.epoch && self.now >= self.last_join + self.timing.heartbeat {
            self.last_join = self.now;
            let mine = self.view.epoch;
            self.send_to(from, Message::Join { epoch: mine });
        }
    }

    /// Delivers every queued batch that every other member reported receiving.
    fn maybe_deliver(&mut self) {
        if self.status != Status::Normal || self.view.epoch == 0 {
            return;
        }
        while let Some((&(ts, origin), _)) = self.queue.first_key_value() {
            let held_by_all = self.view.ids().all(|q| {
                q == self.id
                    || q == origin
                    || self
                        .acked
                        .get(&q)
                        .and_then(|r| r.get(&origin))
                        .is_some_and(|&t| t >= ts)
            });
            if !held_by_all {
                return;
            }
            let (key, ops) = self.queue.pop_first().expect("non-empty queue");
            self.deliver(key, ops);
        }
    }

    fn deliver(&mut self, key: (Ts, NodeId), ops: Vec<Op>) {
        if key.1 == self.id {
            let bytes: usize = ops.iter().map(Weigh::weight).sum();
            self.own_bytes = self.own_bytes.saturating_sub(bytes);
        }
        for op in ops {
            self.delivered_seq += 1;
            self.events.push(Event::Deliver(Delivery {
                seq: self.delivered_seq,
                origin: key.1,
                op,
            }));
        }
        self.last_delivered = key;
    }

    /// A node that is not synced reports no pending batches: whatever any member delivered is
    /// held by every synced voter too, so the tail needs only theirs, and a joiner's queue
    /// (everything broadcast while it waits for its snapshot) stays out of view-change
    /// messages, which are bounded through the synced members' undelivered proposals.
    fn standing(&self) -> Standing<Op> {
        let synced = self.view.epoch == 0 || self.status == Status::Normal;
        Standing {
            epoch: self.view.epoch,
            synced,
            delivered: self.delivered_seq,
            last: self.last_delivered,
            pending: self
                .queue
                .iter()
                .filter(|_| synced)
                .map(|(&(ts, origin), ops)| Batch {
                    ts,
                    origin,
                    ops: ops.clone(),
                })
                .collect(),
            accepted: self.accepted.clone(),
        }
    }

    /// The acceptor's rule for a ballot of the next epoch: refuses (and tells `from`) a
    /// ballot below the one promised; otherwise promises it, freezes, and gives up any
    /// coordination of a lower ballot. Returns whether it promised.
    fn promise(&mut self, from: NodeId, ballot: Ballot) -> bool {
        if ballot < self.promised {
            let promised = self.promised;
            self.send_to(from, Message::Reject { ballot, promised });
            return false;
        }
        if ballot > self.promised {
            // A new coordinator: wait for it afresh before leading a change ourselves.
            self.frozen_at = Some(self.now);
        }
        self.promised = ballot;
        self.frozen_at.get_or_insert(self.now);
        if self
            .coordination
            .as_ref()
            .is_some_and(|c| c.ballot < ballot)
        {
            self.coordination = None;
        }
        true
    }

    fn on_prepare(&mut self, from: NodeId, ballot: Ballot) {
        if ballot.epoch <= self.view.epoch {
            // The coordinator is behind.
            self.send_plan(from, true);
            return;
        }
        if ballot.epoch == self.view.epoch + 1 && !self.promise(from, ballot) {
            return;
        }
        // A node further behind answers as a candidate to join.
        let standing = self.standing();
        self.send_to(from, Message::Promise { ballot, standing });
    }

    /// The nodes whose promise counts toward a majority of the current view.
    fn is_voter(&self, node: NodeId, incarnation: Incarnation, standing: &Standing<Op>) -> bool {
        self.vote(node, incarnation, standing) == Some(true)
    }

    /// Whether a promise (or acceptance) counts toward a quorum of the current view, and if
    /// so whether it comes from a run of the node that was in the view (`true`, it remembers
    /// what it promised and accepted) or from a later run of a member (`false`, it forgot).
    fn vote(
        &self,
        node: NodeId,
        incarnation: Incarnation,
        standing: &Standing<Op>,
    ) -> Option<bool> {
        if standing.epoch != self.view.epoch {
            return None;
        }
        if self.view.epoch == 0 {
            return Some(true);
        }
        match self.view.incarnation_of(node) {
            Some(inc) if inc == incarnation => Some(true),
            Some(inc) if inc < incarnation => Some(false),
            _ => None,
        }
    }

    /// Whether these votes (`true` for runs that were in the view) make a quorum of the
    /// current view. A majority of the members by id, of which at least `n - majority + 1`
    /// are runs that were in the view: then every majority that may have accepted a plan
    /// before shares a member with these that remembers it (Paxos's intersection), even
    /// though restarted members forgot. This lets a two-member view whose other member
    /// restarted change again, where counting only remembering runs would stop it for good.
    fn is_quorum(&self, votes: impl Iterator<Item = bool>, need: usize) -> bool {
        let (mut all, mut remembering) = (0, 0);
        for remembers in votes {
            all += 1;
            remembering += usize::from(remembers);
        }
        if self.forced {
            return all >= need;
        }
        if self.view.epoch == 0 {
            return remembering >= need;
        }
        let n = self.view.members.len();
        all >= need && remembering >= n + 1 - need
    }

    fn drive_view_change(&mut self) {
        let members: Vec<NodeId> = self.view.ids().filter(|&m| m != self.id).collect();
        let catching_up_too_long = matches!(self.status,
            Status::CatchingUp { since } if self.now > since + self.timing.state_timeout);
        let wanted = self.view.epoch == 0
            || members.iter().any(|&m| self.detector.is_suspected(m))
            || !self.joiners.is_empty()
            || members.iter().any(|&m| self.is_damaged(m))
            || catching_up_too_long
            || self.resync_wanted;
        let may_lead = self.status != Status::Outside || self.view.epoch == 0;
        if self.forced && self.coordination.is_none() && may_lead {
            // Told to go on: lead now, rather than wait behind a coordinator that cannot.
            self.start_coordination();
            return;
        }
        if let Some(c) = &self.coordination {
            if self.now > c.started + self.timing.view_change {
                self.start_coordination(); // stuck: try again with a higher round
            } else {
                self.coordinate();
            }
            return;
        }
        if let Some(at) = self.frozen_at {
            if self.now > at + self.timing.view_change + self.stagger() {
                self.start_coordination();
            }
            return;
        }
        if !wanted {
            self.wanted_since = None;
            return;
        }
        let since = *self.wanted_since.get_or_insert(self.now);
        let candidates: Vec<NodeId> = if self.view.epoch == 0 {
            self.universe.clone()
        } else {
            self.view.ids().collect()
        };
        let first = candidates
            .iter()
            .copied()
            .find(|&n| n == self.id || !self.detector.is_suspected(n));
        if first == Some(self.id) || self.now > since + self.timing.view_change + self.stagger() {
            self.start_coordination();
        }
    }

    /// Spreads the moments at which nodes take the lead, by rank.
    fn stagger(&self) -> u64 {
        let rank = self
            .universe
            .iter()
            .position(|&n| n == self.id)
            .unwrap_or(0) as u64;
        rank * self.timing.view_change / 2
    }

    fn start_coordination(&mut self) {
        let epoch = self.view.epoch + 1;
        let mut round = 1;
        if self.promised.epoch == epoch {
            round = self.promised.round + 1;
        }
        if let Some(c) = &self.coordination {
            round = round.max(c.ballot.round + 1);
        }
        let ballot = Ballot {
            epoch,
            round,
            node: self.id,
        };
        self.promised = ballot;
        self.frozen_at = Some(self.now);
        let mut promises = BTreeMap::new();
        promises.insert(self.id, (self.incarnation, self.standing()));
        self.coordination = Some(Coordination {
            ballot,
            started: self.now,
            promises,
            majority_at: None,
            plan: None,
            accepted_by: BTreeMap::new(),
        });
        for to in self.universe.clone() {
            if to != self.id {
                self.send_to(to, Message::Prepare { ballot });
            }
        }
        self.coordinate();
    }

    fn majority(&self) -> usize {
        if self.view.epoch == 0 {
            self.universe.len() / 2 + 1
        } else {
            self.view.majority()
        }
    }

    /// Moves the coordination on: makes the plan once enough promises are in, installs it
    /// once a majority accepted it.
    fn coordinate(&mut self) {
        let mut need = self.majority();
        if self.view.epoch == 0 && !self.forced {
            // A first view needs every configured node. Nodes at epoch 0 may have restarted
            // with their memory gone (or with only what their disks saved) while another
            // node, out of their sight for now, still serves the cluster's last view and holds
            // writes they lack: a view of only some of them would start the cluster over
            // beside it. The operator, who knows whether such a node exists, can let a
            // majority go on (`force_next_view`).
            need = self.universe.len();
        }
        let Some(c) = self.coordination.as_ref() else {
            return;
        };
        if c.plan.is_some() {
            let votes = c.accepted_by.values().copied().chain([true]);
            if self.is_quorum(votes, need) {
                let plan = c.plan.clone().expect("checked");
                for to in self.universe.clone() {
                    if to != self.id {
                        self.send_to(to, Message::Install { plan: plan.clone() });
                    }
                }
                self.install(plan);
            }
            return;
        }
        let votes = c
            .promises
            .iter()
            .filter_map(|(&n, (inc, s))| self.vote(n, *inc, s));
        if !self.is_quorum(votes, need) {
            return;
        }
        let majority_at = c.majority_at.unwrap_or(self.now);
        let all_in = self
            .universe
            .iter()
            .all(|&n| c.promises.contains_key(&n) || self.detector.is_suspected(n));
        if !all_in && self.now < majority_at + self.timing.collect {
            self.coordination.as_mut().expect("checked").majority_at = Some(majority_at);
            return;
        }
        let Some(plan) = self.make_plan() else {
            return;
        };
        let c = self.coordination.as_ref().expect("checked");
        let ballot = c.ballot;
        let voters: Vec<NodeId> = c
            .promises
            .iter()
            .filter(|(&n, (inc, s))| n != self.id && self.vote(n, *inc, s).is_some())
            .map(|(&n, _)| n)
            .collect();
        self.coordination.as_mut().expect("checked").plan = Some(plan.clone());
        self.accepted = Some((ballot, plan.clone()));
        for to in voters {
            self.send_to(
                to,
                Message::Accept {
                    ballot,
                    plan: plan.clone(),
                },
            );
        }
        self.coordinate();
    }

    fn make_plan(&self) -> Option<Plan<Op>> {
        let c = self.coordination.as_ref()?;
        let voters: Vec<(NodeId, &Standing<Op>)> = c
            .promises
            .iter()
            .filter(|(&n, (inc, s))| self.is_voter(n, *inc, s))
            .map(|(&n, (_, s))| (n, s))
            .collect();
        if let Some((_, plan)) = c
            .promises
            .iter()
            .filter(|(&n, (inc, s))| self.vote(n, *inc, s).is_some())
            .filter_map(|(_, (_, s))| s.accepted.as_ref())
            .max_by_key(|(b, _)| *b)
        {
            return Some(plan.clone());
        }
        let synced: Vec<(NodeId, &Standing<Op>)> = if self.view.epoch == 0 {
            let best = voters.iter().map(|(_, s)| s.delivered).max()?;
            voters
                .iter()
                .copied()
                .filter(|(_, s)| s.delivered == best)
                .collect()
        } else {
            voters.iter().copied().filter(|(_, s)| s.synced).collect()
        };
        let &(first, first_standing) = synced.first()?;
        let mut tail: BTreeMap<(Ts, NodeId), Vec<Op>> = BTreeMap::new();
        for (_, s) in &voters {
            for b in &s.pending {
                tail.entry(b.key()).or_insert_with(|| b.ops.clone());
            }
        }
        let start_seq = first_standing.delivered
            + tail
                .range((
                    std::ops::Bound::Excluded(first_standing.last),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, ops)| ops.len() as u64)
                .sum::<u64>();
        let synced_ids: Vec<NodeId> = synced.iter().map(|&(n, _)| n).collect();
        let source = if synced_ids.contains(&self.id) {
            self.id
        } else {
            first
        };
        let members = c.promises.iter().map(|(&n, &(inc, _))| (n, inc)).collect();
        Some(Plan {
            view: View {
                epoch: self.view.epoch + 1,
                members,
            },
            tail: tail
                .into_iter()
                .map(|((ts, origin), ops)| Batch { ts, origin, ops })
                .collect(),
            synced: synced_ids,
            source,
            start_seq,
        })
    }

    fn install(&mut self, plan: Plan<Op>) {
        let epoch = plan.view.epoch;
        let me_in = plan.view.incarnation_of(self.id) == Some(self.incarnation);
        let synced = me_in
            && plan.synced.contains(&self.id)
            && self.view.epoch + 1 == epoch
            && (self.status == Status::Normal || self.view.epoch == 0);
        if synced {
            for batch in &plan.tail {
                if batch.key() > self.last_delivered {
                    self.deliver(batch.key(), batch.ops.clone());
                }
            }
        }
        let consistent = !synced || self.delivered_seq == plan.start_seq;
        debug_assert!(
            consistent,
            "{:?}: at {} after the tail, the plan says {}",
            self.id, self.delivered_seq, plan.start_seq
        );
        self.view = plan.view.clone();
        self.queue.clear();
        self.release_backlog();
        self.received.clear();
        self.acked.clear();
        self.damaged.retain(|_, &mut through| through >= epoch);
        self.coordination = None;
        self.accepted = None;
        self.frozen_at = None;
        self.wanted_since = None;
        self.resync_wanted = false;
        self.forced = false;
        self.last_delivered = (0, NodeId(0));
        // A joiner is still waiting only if the view does not hold it or holds an older run.
        self.joiners
            .retain(|&n, &mut inc| plan.view.incarnation_of(n).is_none_or(|held| held < inc));
        if synced && consistent {
            self.status = Status::Normal;
            self.events.push(Event::Serving { epoch });
            if plan.source == self.id {
                let to: Vec<NodeId> = plan
                    .view
                    .ids()
                    .filter(|n| !plan.synced.contains(n))
                    .collect();
                if !to.is_empty() {
                    self.events.push(Event::SendState {
                        epoch,
                        seq: plan.start_seq,
                        to,
                    });
                }
            }
        } else if me_in {
            self.status = Status::CatchingUp { since: self.now };
            self.proposed.clear();
            if plan.source == self.id {
                // Named the source when it promised, it has since fallen behind (it failed to
                // apply): nobody will send the view's state, so ask for another view now.
                self.resync_wanted = true;
            }
            self.events.push(Event::AwaitState {
                epoch,
                source: plan.source,
                seq: plan.start_seq,
            });
        } else {
            self.status = Status::Outside;
            self.proposed.clear();
            self.events.push(Event::Excluded { epoch });
        }
        self.last_plan = Some(plan);
        if self.status != Status::Outside {
            // Announce ourselves in the new view at once.
            self.send_ack();
        }
        if self.status == Status::Normal {
            self.flush();
        }
        self.recount_own();
        for (from, through) in std::mem::take(&mut self.early_lost) {
            self.damage(from, through);
        }
        let early = std::mem::take(&mut self.early);
        self.early_bytes = 0;
        for (from, incarnation, message) in early {
            let epoch = match &message {
                Message::Broadcast { epoch, .. } | Message::Ack { epoch, .. } => *epoch,
                _ => continue,
            };
            if epoch >= self.view.epoch {
                self.step(from, incarnation, message);
            }
        }
    }
}
