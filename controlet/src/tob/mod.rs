//! Total-order broadcast on Lamport clocks, with views that survive failures: a sans-IO state
//! machine. `docs/architecture.md` (Replication) tells the whole story; here is the gist.
//!
//! Within a view, every message carries a fresh Lamport timestamp and links are FIFO. A
//! batch, queued under `(timestamp, sender)`, is delivered when it heads the queue and every
//! other member has reported receiving it ([`Message::Broadcast`] and [`Message::Ack`] carry
//! receipt vectors): nothing ordered before it can still arrive, and every member holds it,
//! so a view change can recover whatever any member delivered. Deliveries are numbered
//! `1, 2, 3, ...` alike on every member.
//!
//! A suspected member, a node asking to [`Message::Join`], or lost messages
//! ([`Tob::link_gap`]) start a view change: a single-decree Paxos per epoch
//! (`Prepare`, `Promise`, `Accept`, `Install`) whose [`Plan`] names the next view, the old
//! view's undelivered tail, and who is given a snapshot. A view needs a majority of the one
//! before and a delivery needs every member, so a minority refuses rather than diverges.
//!
//! Time is ticks; nothing here reads a clock or touches a socket. The driver feeds received
//! messages to [`Tob::step`], calls [`Tob::tick`] on a timer, sends what
//! [`Tob::take_messages`] returns and carries out what [`Tob::take_events`] returns, in order.
//!
//! # Layout
//!
//! - `message`: the messages, the plan and standing they carry, and the driver's events.
//! - `order`: ordering within a view: broadcasts, receipts, delivery, a joiner's backlog.
//! - `view_change`: when to change views, the acceptor's side, installing a plan.
//! - `reads`: linearizable reads confirmed by a round of the view, not ordered (ReadIndex).
//! - `coordination`: the coordinator's side of one ballot, a small state machine.
//! - [`detector`]: the failure detector.

mod coordination;
pub mod detector;
mod message;
mod order;
mod reads;
#[cfg(test)]
mod tests;
mod view_change;

use std::collections::{BTreeMap, BTreeSet};

use tailorkv_common::{NodeId, Ts};

use coordination::Coordination;
use detector::Detector;
pub use message::{
    Ballot, Batch, Delivery, Envelope, Event, Message, Plan, Standing, View, MAX_EPOCH,
};

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

/// One node's state.
#[derive(Debug)]
pub struct Tob<Op> {
    id: NodeId,
    incarnation: Incarnation,
    /// Every node heard from: the target, the view's members and this node.
    universe: Vec<NodeId>,
    /// The members the group should have ([`Tob::set_target`]), sorted.
    target: Vec<NodeId>,
    /// Members of the view known to be up to date: the plan's synced members, then as each
    /// member's acks say.
    synced_members: BTreeSet<NodeId>,
    /// New to a group that already runs: forms no first view ([`Tob::set_joining`]).
    joining: bool,
    /// When each target member missing from the view was last sent the plan.
    invited: BTreeMap<NodeId, u64>,
    /// A membership change has named a target other than the nodes this node started with:
    /// only then may a target member know no member of the view, and is invited.
    retargeted: bool,
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
    /// Messages dropped as malformed ([`Tob::rejected`]).
    rejected: u64,
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
    /// Linearizable reads waiting for their view to be confirmed or their index delivered.
    reads: reads::Reads,
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
            target: universe.clone(),
            synced_members: BTreeSet::new(),
            joining: false,
            invited: BTreeMap::new(),
            retargeted: false,
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
            rejected: 0,
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
            reads: reads::Reads::default(),
            outbox: Vec::new(),
            events: Vec::new(),
        }
    }

    /// The members the group should have: a membership change ([`crate::membership`]) names
    /// them. Nodes of the target are heard from and let in when they ask to join; once every
    /// one of them is in the view and up to date, a view change drops the members outside it
    /// (this node too, if it is one: it is then `Excluded`). Until then those stay, so a
    /// group never gives up a copy before the copies replacing it are complete. Members of
    /// the current view are heard from whatever the target says.
    pub fn set_target(&mut self, target: &[NodeId]) {
        let mut target = target.to_vec();
        target.sort();
        target.dedup();
        if target == self.target {
            return;
        }
        self.target = target;
        self.retargeted = true;
        if self.view.epoch == 0 {
            // No view yet: the first one is formed of the target (and this node).
            let mut first: BTreeSet<NodeId> = self.target.iter().copied().collect();
            first.insert(self.id);
            self.view.members = first.into_iter().map(|n| (n, 0)).collect();
        }
        self.recompute_universe();
    }

    /// The members the group should have.
    pub fn target(&self) -> &[NodeId] {
        &self.target
    }

    /// Whether the view is the target: every target member in it and nobody else.
    pub fn is_settled(&self) -> bool {
        self.view.epoch > 0
            && self.view.members.len() == self.target.len()
            && self
                .target
                .iter()
                .all(|&t| self.view.incarnation_of(t).is_some())
    }

    /// A snapshot being installed made progress: the joiner's wait for it starts over, so a
    /// long transfer (a large store, or one throttled by `--rebalance-rate`) is not taken for
    /// a lost one.
    pub fn state_progress(&mut self) {
        if let Status::CatchingUp { .. } = self.status {
            self.status = Status::CatchingUp { since: self.now };
        }
    }

    /// The nodes heard from: the target, the view's members, and this node.
    pub(super) fn recompute_universe(&mut self) {
        let mut universe: BTreeSet<NodeId> = self.target.iter().copied().collect();
        universe.extend(self.view.ids());
        universe.insert(self.id);
        self.universe = universe.into_iter().collect();
        // A node that asked to join while it was heard from, and is no longer (the target
        // dropped it), is not waited for: the views it would be let into leave it out, so
        // wanting it in would change the view again and again.
        let universe = &self.universe;
        self.joiners.retain(|n, _| universe.contains(n));
        let others = self.universe.iter().copied().filter(|&n| n != self.id);
        self.detector.watch_only(others);
    }

    /// Every target member is in the view and up to date, and the view holds others: time
    /// for the view change that drops them.
    pub(super) fn wants_reshape(&self) -> bool {
        self.view.epoch > 0
            && self.status == Status::Normal
            && self.frozen_at.is_none()
            && !self.target.is_empty()
            && self.view.ids().any(|m| !self.target.contains(&m))
            && self.target.iter().all(|&t| {
                self.view.incarnation_of(t).is_some()
                    && (t == self.id || self.synced_members.contains(&t))
            })
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The Lamport clock's reading.
    pub fn clock(&self) -> Ts {
        self.clock
    }

    /// Operations delivered (or installed by snapshot) so far.
    pub fn delivered(&self) -> u64 {
        self.delivered_seq
    }

    /// The view installed last (epoch 0: none yet).
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

    /// Messages dropped unread because no correct member could have sent them
    /// ([`Message::malformed`]).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// The failure detector, for `stats`.
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// Batches received and waiting to be delivered: how far delivery lags behind what has
    /// been broadcast.
    pub fn undelivered_batches(&self) -> usize {
        self.queue.len()
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

    /// Handles a message from node `from`, run `incarnation`.
    pub fn step(&mut self, from: NodeId, incarnation: Incarnation, message: Message<Op>) {
        if let Some(why) = message.malformed(from) {
            self.rejected += 1;
            // The first, then at 2, 4, 8...: a member that keeps sending them cannot flood
            // the log.
            if self.rejected.is_power_of_two() {
                tracing::error!(from = ?from, rejected = self.rejected,
                    "dropped a malformed order message: {why}");
            }
            return;
        }
        let Some(member) = self.admit(from, incarnation, &message) else {
            return;
        };
        match message {
            Message::Broadcast { .. } | Message::Ack { .. }
                if !self.counts(from, member, &message) =>
            {
                self.out_of_epoch(from, incarnation, message)
            }
            Message::Broadcast {
                ts, received, ops, ..
            } => self.on_broadcast(from, ts, received, ops),
            Message::Ack {
                ts,
                received,
                synced,
                ..
            } => self.on_ack(from, ts, received, synced),
            Message::Alive { epoch } => self.compare_epochs(from, epoch),
            Message::Join { epoch } => self.on_join(from, incarnation, member, epoch),
            Message::Prepare { ballot } => self.on_prepare(from, ballot),
            Message::Promise { ballot, standing } => {
                self.on_promise(from, incarnation, ballot, standing)
            }
            Message::Reject { ballot, promised } => self.on_reject(ballot, promised),
            Message::Accept { ballot, plan } => self.on_accept(from, ballot, plan),
            Message::Accepted { ballot } => self.on_accepted(from, incarnation, ballot),
            Message::Install { plan } => self.on_install(plan),
            Message::ReadIndex { epoch, round } => self.on_read_index(from, member, epoch, round),
            Message::ReadIndexOk { epoch, round } => {
                self.on_read_index_ok(from, member, epoch, round)
            }
        }
    }

    /// Whether a message from `from` (run `incarnation`) is taken at all, and if so whether
    /// it comes from the run of a member the view holds. Records what it shows: that its
    /// sender is alive, that a member restarted, that messages before it were lost.
    fn admit(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        message: &Message<Op>,
    ) -> Option<bool> {
        // A node new to a group hears where the group's view is from whoever tells it.
        let invited = self.joining && matches!(message, Message::Install { .. });
        if from == self.id || (!self.universe.contains(&from) && !invited) {
            return None;
        }
        let member = match self.view.incarnation_of(from) {
            _ if self.view.epoch == 0 => false,
            Some(inc) if inc == incarnation => true,
            Some(inc) if incarnation < inc => return None, // from a run that has since restarted
            Some(_) => {
                // A new run of a member: the run in the view crashed.
                self.detector.suspect(from);
                false
            }
            None => false,
        };
        if self.gap_pending.remove(&from) {
            self.damage(from, message.sender_epoch());
        }
        // A new run of a member stays suspected until a view admits it.
        let stale_member = self.view.epoch > 0 && self.view.incarnation_of(from).is_some();
        if member || !stale_member {
            self.detector.heard(from);
        }
        Some(member)
    }

    /// Whether a broadcast or ack counts: only one of this node's epoch, from a member, while
    /// this node orders (neither outside nor frozen) and the link from it is intact.
    fn counts(&self, from: NodeId, member: bool, message: &Message<Op>) -> bool {
        message.ordering_epoch() == Some(self.view.epoch)
            && member
            && self.status != Status::Outside
            && self.frozen_at.is_none()
            && !self.is_damaged(from)
    }

    /// Advances time by one tick: heartbeats, failure detection, view changes.
    pub fn tick(&mut self) {
        self.now += 1;
        self.ticks_quiet += 1;
        self.detector.tick();
        self.heartbeat();
        self.invite_target();
        if self.status == Status::Outside && (self.view.epoch > 0 || self.joining) {
            self.ask_to_join();
        } else {
            self.drive_view_change();
        }
        self.drive_reads();
    }

    /// This node is new to a group that already runs: it never forms a first view (with a
    /// target of itself alone, it could form one on its own, beside the group), it asks the
    /// group's nodes to let it in and waits for a view from them.
    pub fn set_joining(&mut self) {
        self.joining = true;
    }

    /// A serving member tells the target members missing from its view where the view is
    /// (its plan, every five join intervals each): a node new to the group may know of no member
    /// of the current view (with one replica, the member it replaces is not in the target).
    fn invite_target(&mut self) {
        if !self.retargeted
            || self.status != Status::Normal
            || self.view.epoch == 0
            || self.frozen_at.is_some()
        {
            return;
        }
        let every = self.timing.join_interval * 5;
        let now = self.now;
        let missing: Vec<NodeId> = self
            .target
            .iter()
            .copied()
            .filter(|&t| t != self.id && self.view.incarnation_of(t).is_none())
            .filter(|t| self.invited.get(t).is_none_or(|&at| now >= at + every))
            .collect();
        for t in missing {
            self.invited.insert(t, now);
            self.send_plan(t, true);
        }
    }

    /// Messages to send, in order; per destination, they must be sent in this order.
    pub fn take_messages(&mut self) -> Vec<Envelope<Op>> {
        std::mem::take(&mut self.outbox)
    }

    /// What to carry out, in order.
    pub fn take_events(&mut self) -> Vec<Event<Op>> {
        std::mem::take(&mut self.events)
    }

    fn send_to(&mut self, to: NodeId, message: Message<Op>) {
        self.outbox.push(Envelope {
            from: self.id,
            to,
            incarnation: self.incarnation,
            message,
        });
    }

    /// Sends `message` to the other members of the view.
    fn send_members(&mut self, message: Message<Op>) {
        let members: Vec<NodeId> = self.view.ids().filter(|&m| m != self.id).collect();
        for to in members {
            self.send_to(to, message.clone());
        }
    }

    /// Sends `message` to every other configured node.
    fn send_others(&mut self, message: Message<Op>) {
        let others: Vec<NodeId> = self
            .universe
            .iter()
            .copied()
            .filter(|&n| n != self.id)
            .collect();
        for to in others {
            self.send_to(to, message.clone());
        }
    }
}
