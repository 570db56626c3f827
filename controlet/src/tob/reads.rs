//! Linearizable reads without ordering them: a read index in the manner of Raft's ReadIndex.
//!
//! A read asked of this node ([`Tob::read`]) is answered from its replica once two things
//! hold, both learned after the read began:
//!
//! 1. **This node's view is still the group's view.** A *round* sends [`Message::ReadIndex`]
//!    to as many of the view's other members as a majority needs (those that confirmed the
//!    last round; all of them at first), and to the rest once it has waited
//!    [`READ_FALLBACK`] ticks unconfirmed: a round costs a majority's messages, not the
//!    whole view's, and a silent member delays one round. A member of the same run and
//!    epoch answers [`Message::ReadIndexOk`] only if it has promised no ballot of a later
//!    epoch. Once a majority of the view (this node included) answered, no later view was
//!    chosen before their answers: a later view needs a quorum of the view's members that
//!    remember their promises, and every such quorum (a majority of which at least
//!    `n - majority + 1` remember, or every member a new target keeps, see `coordination`)
//!    shares a member with any majority of the view's runs. So every write acknowledged
//!    before the read began was delivered in this view or an earlier one.
//! 2. **This node delivered everything it had received when the round started** (the round's
//!    *index*, the largest key in its queue). A write is delivered at its proposer only once
//!    every member of the view reported holding it, so a write acknowledged in this view
//!    before the read began was in this node's queue by then, or delivered.
//!
//! One round serves every read waiting when it starts; reads asked meanwhile wait for the
//! next, so a node sends at most one round per round trip however many reads it serves. A
//! round that is not confirmed within [`super::Timing::view_change`] ticks is sent again. A
//! view change starts the waiting reads over in the new view if this node is a synced member
//! of it, and drops them otherwise (the driver refuses them when told it is catching up or
//! outside). A view the operator forced ([`Tob::force_next_view`]) gives up this guarantee,
//! as it gives up others.

use tailorkv_common::{NodeId, Ts};

use super::message::{Event, Message};
use super::{Status, Tob};
use crate::weigh::Weigh;

/// The reads of this node waiting for their view to be confirmed or their index delivered.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// Rounds sent so far; the current round's number.
    rounds: u64,
    /// The round in flight, if any.
    round: Option<Round>,
    /// Reads asked since the round in flight started: the next round's.
    queued: Vec<u64>,
    /// Confirmed reads of the current view, waiting for delivery to pass their index.
    confirmed: Vec<((Ts, NodeId), Vec<u64>)>,
    /// The members that confirmed the last round, first to answer first: a round asks only
    /// as many of them as a majority needs, and the others once it has waited
    /// [`READ_FALLBACK`] ticks.
    preferred: Vec<NodeId>,
    /// A planted bug, for the simulation to catch: reads are answered at once, from the
    /// replica as it stands, with neither confirmation nor index.
    #[cfg(test)]
    pub(super) unconfirmed: bool,
}

#[derive(Debug)]
struct Round {
    number: u64,
    epoch: u64,
    started: u64,
    index: (Ts, NodeId),
    reads: Vec<u64>,
    /// Members asked to confirm it.
    asked: Vec<NodeId>,
    /// Members that confirmed, this node included, in the order they answered.
    confirmed_by: Vec<NodeId>,
}

/// Ticks a round waits for the members it asked before it asks every other member too.
pub(super) const READ_FALLBACK: u64 = 3;

impl Reads {
    /// Every read waiting, in the order asked.
    fn take_all(&mut self) -> Vec<u64> {
        let mut all = Vec::new();
        if let Some(round) = self.round.take() {
            all.extend(round.reads);
        }
        for (_, reads) in self.confirmed.drain(..) {
            all.extend(reads);
        }
        all.append(&mut self.queued);
        all
    }
}

#[cfg(test)]
impl<Op> Tob<Op> {
    /// Plants the bug of answering reads without confirming the view or waiting for the index.
    pub(super) fn sabotage_reads(&mut self) {
        self.reads.unconfirmed = true;
    }

    /// Reads asked and not yet ready.
    pub(super) fn reads_waiting(&self) -> usize {
        let reads = &self.reads;
        reads.round.as_ref().map_or(0, |r| r.reads.len())
            + reads.queued.len()
            + reads.confirmed.iter().map(|(_, r)| r.len()).sum::<usize>()
    }
}

impl<Op: Clone + Weigh> Tob<Op> {
    /// Asks for a linearizable read, named `id` by the driver: [`Event::ReadReady`] says when
    /// the replica may answer it (after every event before it is carried out). A read asked
    /// of a node that is not a synced member of a view waits until it is one (or is dropped
    /// by the next view change that leaves it catching up or outside).
    pub fn read(&mut self, id: u64) {
        #[cfg(test)]
        if self.reads.unconfirmed {
            self.events.push(Event::ReadReady { id });
            return;
        }
        self.reads.queued.push(id);
        if self.reads.round.is_none() {
            self.start_read_round();
        }
    }

    /// Starts a round for every queued read, if this node is a synced member not in the
    /// middle of a view change.
    fn start_read_round(&mut self) {
        if self.reads.queued.is_empty()
            || self.status != Status::Normal
            || self.view.epoch == 0
            || self.frozen_at.is_some()
        {
            return;
        }
        self.reads.rounds += 1;
        let number = self.reads.rounds;
        let epoch = self.view.epoch;
        // The queue holds only what is not delivered yet: its last key is past the last
        // delivered one.
        let index = self
            .queue
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.last_delivered);
        // Ask only as many members as a majority needs, those that answered the last round
        // first; a round they leave unconfirmed asks the others too (`drive_reads`).
        let others: Vec<NodeId> = self.view.ids().filter(|&m| m != self.id).collect();
        let needed = self.view.majority() - 1;
        let mut asked: Vec<NodeId> = self
            .reads
            .preferred
            .iter()
            .copied()
            .filter(|p| others.contains(p))
            .take(needed)
            .collect();
        if asked.len() < needed {
            asked = others;
        }
        self.ask_read_index(&asked, epoch, number);
        self.reads.round = Some(Round {
            number,
            epoch,
            started: self.now,
            index,
            reads: std::mem::take(&mut self.reads.queued),
            asked,
            confirmed_by: vec![self.id],
        });
        self.read_round_confirmed();
    }

    /// Asks `members` to confirm round `round` of epoch `epoch`.
    fn ask_read_index(&mut self, members: &[NodeId], epoch: u64, round: u64) {
        for &to in members {
            self.send_to(to, Message::ReadIndex { epoch, round });
        }
    }

    /// A member asks whether this node is still in its view: yes, if it is in that epoch and
    /// has promised no ballot of a later one.
    pub(super) fn on_read_index(&mut self, from: NodeId, member: bool, epoch: u64, round: u64) {
        if member
            && epoch == self.view.epoch
            && self.frozen_at.is_none()
            && self.promised.epoch <= self.view.epoch
        {
            self.send_to(from, Message::ReadIndexOk { epoch, round });
        }
    }

    /// A member confirmed the round `round` of epoch `epoch`.
    pub(super) fn on_read_index_ok(&mut self, from: NodeId, member: bool, epoch: u64, round: u64) {
        let Some(current) = self.reads.round.as_mut() else {
            return;
        };
        if !member
            || current.number != round
            || current.epoch != epoch
            || epoch != self.view.epoch
            || current.confirmed_by.contains(&from)
        {
            return;
        }
        current.confirmed_by.push(from);
        self.read_round_confirmed();
    }

    /// Moves the round in flight to the confirmed reads once a majority of the view
    /// confirmed it, and starts the next.
    fn read_round_confirmed(&mut self) {
        let Some(round) = &self.reads.round else {
            return;
        };
        if round.confirmed_by.len() < self.view.majority() {
            return;
        }
        let round = self.reads.round.take().expect("checked");
        self.reads.preferred = round.confirmed_by[1..].to_vec();
        self.reads.confirmed.push((round.index, round.reads));
        self.release_reads();
        self.start_read_round();
    }

    /// Tells the driver which confirmed reads the delivered operations have caught up with.
    pub(super) fn release_reads(&mut self) {
        if self.status != Status::Normal || self.reads.confirmed.is_empty() {
            return;
        }
        let delivered = self.last_delivered;
        let mut ready = Vec::new();
        self.reads.confirmed.retain_mut(|(index, reads)| {
            if *index <= delivered {
                ready.append(reads);
                false
            } else {
                true
            }
        });
        for id in ready {
            self.events.push(Event::ReadReady { id });
        }
    }

    /// On a tick: sends again a round unconfirmed for too long (an answer was lost, or the
    /// view is changing), or one that waited for this node to serve.
    pub(super) fn drive_reads(&mut self) {
        let stale = self
            .reads
            .round
            .as_ref()
            .is_some_and(|r| self.now > r.started + self.timing.view_change);
        if stale {
            let round = self.reads.round.take().expect("checked");
            let mut reads = round.reads;
            reads.append(&mut self.reads.queued);
            self.reads.queued = reads;
        }
        let now = self.now;
        let slow = self
            .reads
            .round
            .as_mut()
            .filter(|r| now >= r.started + READ_FALLBACK)
            .map(|round| {
                let rest: Vec<NodeId> = self
                    .view
                    .ids()
                    .filter(|&m| m != self.id && !round.asked.contains(&m))
                    .collect();
                round.asked.extend(&rest);
                (rest, round.epoch, round.number)
            });
        if let Some((rest, epoch, round)) = slow {
            self.ask_read_index(&rest, epoch, round);
        }
        if self.reads.round.is_none() {
            self.start_read_round();
        }
    }

    /// A view was installed: a synced member starts its waiting reads over in it (this node
    /// delivered the old view's tail, so a fresh index covers everything it had received);
    /// any other node drops them.
    pub(super) fn restart_reads(&mut self, up_to_date: bool) {
        let all = self.reads.take_all();
        if up_to_date {
            self.reads.queued = all;
            self.start_read_round();
        }
    }
}
