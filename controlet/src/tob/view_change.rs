//! Changing views: when to ask for one, the acceptor's side of the Paxos for the next epoch
//! (the coordinator's is [`Coordination`]), and installing the chosen plan.
//!
//! A member that promises freezes: it stops sending, taking and delivering broadcasts of its
//! view, so that what the promises report stays true until the plan is installed. Synced
//! members deliver the plan's tail and serve on; the others wait for a snapshot.

use tailorkv_common::NodeId;

use super::coordination::{Coordination, Electorate, Next};
use super::message::{Ballot, Batch, Event, Message, Plan, Standing, View};
use super::{Incarnation, Status, Tob};
use crate::weigh::Weigh;

impl<Op: Clone + Weigh> Tob<Op> {
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

    /// A node asks to be let in (or is ahead of us and asks where we are).
    pub(super) fn on_join(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        member: bool,
        epoch: u64,
    ) {
        if epoch > self.view.epoch {
            let mine = self.view.epoch;
            self.send_to(from, Message::Join { epoch: mine });
            return;
        }
        self.send_plan(from, true);
        if !member && self.view.epoch > 0 && self.status != Status::Outside {
            self.joiners.insert(from, incarnation);
        }
    }

    /// Outside the view, on a tick: asks every node to be let in, now and then.
    pub(super) fn ask_to_join(&mut self) {
        if self.now >= self.last_join + self.timing.join_interval {
            self.last_join = self.now;
            let epoch = self.view.epoch;
            self.send_others(Message::Join { epoch });
        }
    }

    /// A message of another epoch: tell a node behind us where we are, or ask one ahead.
    pub(super) fn compare_epochs(&mut self, from: NodeId, epoch: u64) {
        if epoch < self.view.epoch {
            self.send_plan(from, false);
        } else if epoch > self.view.epoch && self.now >= self.last_join + self.timing.heartbeat {
            self.last_join = self.now;
            let mine = self.view.epoch;
            self.send_to(from, Message::Join { epoch: mine });
        }
    }

    /// Sends our latest plan to `to` (at most once per heartbeat unless `now`).
    pub(super) fn send_plan(&mut self, to: NodeId, now: bool) {
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
            .is_some_and(|c| c.ballot() < ballot)
        {
            self.coordination = None;
        }
        true
    }

    pub(super) fn on_prepare(&mut self, from: NodeId, ballot: Ballot) {
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

    pub(super) fn on_promise(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
        standing: Standing<Op>,
    ) {
        if self
            .coordination
            .as_mut()
            .is_some_and(|c| c.promised(from, incarnation, ballot, standing))
        {
            self.coordinate();
        }
    }

    pub(super) fn on_reject(&mut self, ballot: Ballot, promised: Ballot) {
        if self
            .coordination
            .as_ref()
            .is_none_or(|c| c.ballot() != ballot)
        {
            return;
        }
        self.coordination = None;
        if promised > self.promised && promised.epoch == self.view.epoch + 1 {
            // Give the coordinator of the higher ballot its time.
            self.promised = promised;
            self.frozen_at = Some(self.now);
        }
    }

    pub(super) fn on_accept(&mut self, from: NodeId, ballot: Ballot, plan: Plan<Op>) {
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

    pub(super) fn on_accepted(&mut self, from: NodeId, incarnation: Incarnation, ballot: Ballot) {
        let electorate = Electorate {
            view: &self.view,
            universe: &self.universe,
            target: &self.target,
            forced: self.forced,
        };
        if self
            .coordination
            .as_mut()
            .is_some_and(|c| c.accepted(&electorate, from, incarnation, ballot))
        {
            self.coordinate();
        }
    }

    pub(super) fn on_install(&mut self, plan: Plan<Op>) {
        if plan.view.epoch > self.view.epoch {
            self.install(plan);
        }
    }

    /// On a tick: leads a view change when one is wanted and it is this node's turn (the
    /// lowest-numbered node it does not suspect goes first, the others after a wait staggered
    /// by rank), when told to go on, or when the change it waits for is stuck.
    pub(super) fn drive_view_change(&mut self) {
        let members: Vec<NodeId> = self.view.ids().filter(|&m| m != self.id).collect();
        let catching_up_too_long = matches!(self.status,
            Status::CatchingUp { since } if self.now > since + self.timing.state_timeout);
        let wanted = self.view.epoch == 0
            || members.iter().any(|&m| self.detector.is_suspected(m))
            || !self.joiners.is_empty()
            || members.iter().any(|&m| self.is_damaged(m))
            || catching_up_too_long
            || self.resync_wanted
            || self.wants_reshape();
        let may_lead = self.status != Status::Outside || self.view.epoch == 0;
        if self.forced && self.coordination.is_none() && may_lead {
            // Told to go on: lead now, rather than wait behind a coordinator that cannot.
            self.start_coordination();
            return;
        }
        if let Some(c) = &self.coordination {
            if self.now > c.started() + self.timing.view_change {
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
            round = round.max(c.ballot().round + 1);
        }
        let ballot = Ballot {
            epoch,
            round,
            node: self.id,
        };
        self.promised = ballot;
        self.frozen_at = Some(self.now);
        let standing = self.standing();
        self.coordination = Some(Coordination::new(
            ballot,
            self.now,
            self.id,
            self.incarnation,
            standing,
        ));
        self.send_others(Message::Prepare { ballot });
        self.coordinate();
    }

    /// Moves the coordination on: makes the plan once enough promises are in, installs it
    /// once a quorum accepted it.
    fn coordinate(&mut self) {
        loop {
            let electorate = Electorate {
                view: &self.view,
                universe: &self.universe,
                target: &self.target,
                forced: self.forced,
            };
            let Some(c) = self.coordination.as_mut() else {
                return;
            };
            let (me, now, collect) = (self.id, self.now, self.timing.collect);
            match c.advance(&electorate, me, now, collect, &self.detector) {
                Next::Wait => return,
                Next::Propose {
                    ballot,
                    plan,
                    voters,
                } => {
                    self.accepted = Some((ballot, plan.clone()));
                    for to in voters {
                        let plan = plan.clone();
                        self.send_to(to, Message::Accept { ballot, plan });
                    }
                }
                Next::Install(plan) => {
                    self.send_others(Message::Install { plan: plan.clone() });
                    self.install(plan);
                    return;
                }
            }
        }
    }

    /// Ends the current view and enters the plan's: as a synced member, a joiner waiting for
    /// its state, or not at all.
    fn install(&mut self, plan: Plan<Op>) {
        let me_in = plan.view.incarnation_of(self.id) == Some(self.incarnation);
        let synced = me_in
            && plan.synced.contains(&self.id)
            && self.view.epoch + 1 == plan.view.epoch
            && (self.status == Status::Normal || self.view.epoch == 0);
        let up_to_date = synced && self.deliver_tail(&plan);
        // A synced member the plan leaves out (a membership change dropped it, say) still
        // delivers the end of the view it was in, when the tail continues exactly from what
        // it delivered: it then holds what the members hold where the new view starts,
        // including the change that removed it (which is how a node removed from the
        // metadata group learns it was), and its proposals in the tail get their outcomes.
        let leaving = !me_in
            && self.status == Status::Normal
            && self.view.epoch > 0
            && self.view.epoch + 1 == plan.view.epoch;
        if leaving && self.tail_fits(&plan) {
            self.deliver_tail(&plan);
        }
        self.enter(&plan.view);
        self.synced_members = plan.synced.iter().copied().collect();
        self.recompute_universe();
        self.take_part(&plan, me_in, up_to_date);
        self.restart_reads(up_to_date);
        self.last_plan = Some(plan);
        if self.status != Status::Outside {
            // Announce ourselves in the new view at once.
            self.send_ack();
        }
        if self.status == Status::Normal {
            self.flush();
        }
        self.recount_own();
        self.replay_early();
    }

    /// Whether the plan's tail, after what this node delivered, leads exactly to where the
    /// plan says the view starts. Members deliver one sequence, so what this node delivered
    /// is a prefix of it; the tail's batches after that prefix add up to the missing part
    /// only if the tail holds every one of them.
    fn tail_fits(&self, plan: &Plan<Op>) -> bool {
        let after: u64 = plan
            .tail
            .iter()
            .filter(|b| b.key() > self.last_delivered)
            .map(|b| b.ops.len() as u64)
            .sum();
        self.delivered_seq + after == plan.start_seq
    }

    /// Delivers what this synced member has not delivered of the tail; whether that leaves
    /// it where the plan says the view starts.
    fn deliver_tail(&mut self, plan: &Plan<Op>) -> bool {
        for batch in &plan.tail {
            if batch.key() > self.last_delivered {
                self.deliver(batch.key(), batch.ops.clone());
            }
        }
        let consistent = self.delivered_seq == plan.start_seq;
        if !consistent {
            // Only a plan that does not fit what this member delivered gets here (a member's
            // bug, or a forged message): it is not up to date, and catches up by a snapshot.
            tracing::error!(
                id = self.id.0,
                delivered = self.delivered_seq,
                plan_start = plan.start_seq,
                "a plan's tail does not lead to where the plan says the view starts"
            );
        }
        consistent
    }

    /// Drops the old view's state: its queue, receipts, coordination and wishes.
    fn enter(&mut self, view: &View) {
        self.view = view.clone();
        self.joining = false;
        self.queue.clear();
        self.release_backlog();
        self.received.clear();
        self.acked.clear();
        self.damaged.retain(|_, &mut through| through >= view.epoch);
        self.coordination = None;
        self.accepted = None;
        self.frozen_at = None;
        self.wanted_since = None;
        self.resync_wanted = false;
        self.forced = false;
        self.last_delivered = (0, NodeId(0));
        // A joiner is still waiting only if the view does not hold it or holds an older run.
        self.joiners
            .retain(|&n, &mut inc| view.incarnation_of(n).is_none_or(|held| held < inc));
    }

    /// Takes this node's part in the plan's view, and tells the driver.
    fn take_part(&mut self, plan: &Plan<Op>, me_in: bool, up_to_date: bool) {
        let epoch = plan.view.epoch;
        if up_to_date {
            self.status = Status::Normal;
            self.events.push(Event::Serving { epoch });
            let to: Vec<NodeId> = plan
                .view
                .ids()
                .filter(|n| !plan.synced.contains(n))
                .collect();
            if plan.source == self.id && !to.is_empty() {
                self.events.push(Event::SendState {
                    epoch,
                    seq: plan.start_seq,
                    to,
                });
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
    }
}
