//! What the order's members say to each other, and what the order tells its driver.
//!
//! [`Message`] travels between nodes in an [`Envelope`]; [`Event`]s go to the driver, in the
//! order it must carry them out. The view-change messages carry [`Standing`]s and [`Plan`]s,
//! which hold [`Batch`]es: everything here is weighed ([`Weigh`]) so that every queue of
//! them can be bounded in bytes.

use serde::{Deserialize, Serialize};
use tailorkv_common::{NodeId, Ts};

use super::Incarnation;
use crate::weigh::Weigh;

/// A numbered set of members.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// The view's number; 0 before the first view, the configured nodes.
    pub epoch: u64,
    /// Members with their incarnations, by id.
    pub members: Vec<(NodeId, Incarnation)>,
}

impl View {
    /// The run of `id` the view holds, if it holds one.
    pub fn incarnation_of(&self, id: NodeId) -> Option<Incarnation> {
        self.members
            .iter()
            .find(|&&(m, _)| m == id)
            .map(|&(_, inc)| inc)
    }

    /// The members' ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|&(id, _)| id)
    }

    pub(super) fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// A view-change ballot: ordered by the epoch it would start, then round, then node.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// The epoch of the view it would install.
    pub epoch: u64,
    /// Attempts at that epoch, from 1.
    pub round: u64,
    /// The coordinator.
    pub node: NodeId,
}

/// Operations broadcast together, under their key `(ts, origin)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch<Op> {
    /// The broadcast's timestamp.
    pub ts: Ts,
    /// The member that broadcast it.
    pub origin: NodeId,
    /// Its operations, in the order proposed.
    pub ops: Vec<Op>,
}

impl<Op> Batch<Op> {
    pub(super) fn key(&self) -> (Ts, NodeId) {
        (self.ts, self.origin)
    }
}

/// The agreed transition to a new view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan<Op> {
    /// The new view.
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
    /// The epoch of the node's view.
    pub epoch: u64,
    /// Up to date in its view (not waiting for, or missing, a snapshot).
    pub synced: bool,
    /// Operations it delivered (or installed by snapshot).
    pub delivered: u64,
    /// Key of the last batch delivered in this epoch.
    pub last: (Ts, NodeId),
    /// Batches of this epoch received and not delivered.
    pub pending: Vec<Batch<Op>>,
    /// The plan it accepted for the next epoch, if any, with its ballot.
    pub accepted: Option<(Ballot, Plan<Op>)>,
}

/// A message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<Op> {
    /// Operations to order, with the sender's receipt vector.
    Broadcast {
        /// The sender's epoch.
        epoch: u64,
        /// The batch's timestamp, fresh from the sender's clock.
        ts: Ts,
        /// Per member, the timestamp of the last broadcast the sender received from it.
        received: Vec<(NodeId, Ts)>,
        /// The batch.
        ops: Vec<Op>,
    },
    /// The sender's receipt vector; also a heartbeat.
    Ack {
        /// The sender's epoch.
        epoch: u64,
        /// A fresh timestamp: every receipt it reports was received before it.
        ts: Ts,
        /// Per member, the timestamp of the last broadcast the sender received from it.
        received: Vec<(NodeId, Ts)>,
        /// The sender is up to date (not waiting for, or installing, a snapshot): what lets
        /// the members tell when a group's new members can stand in for the ones it drops
        /// ([`super::Tob::set_target`]).
        synced: bool,
    },
    /// A heartbeat from a node that is not sending acks (frozen, outside, booting).
    Alive {
        /// The sender's epoch.
        epoch: u64,
    },
    /// A coordinator asks every node to promise `ballot`.
    Prepare {
        /// The ballot to promise.
        ballot: Ballot,
    },
    /// The sender promised `ballot` (and froze); its standing feeds the plan.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Where the sender stands.
        standing: Standing<Op>,
    },
    /// The ballot is lower than one already promised.
    Reject {
        /// The ballot refused.
        ballot: Ballot,
        /// The higher ballot the sender promised.
        promised: Ballot,
    },
    /// The coordinator asks the voters to accept its plan.
    Accept {
        /// The coordinator's ballot.
        ballot: Ballot,
        /// The plan to accept.
        plan: Plan<Op>,
    },
    /// The sender accepted the plan of `ballot`.
    Accepted {
        /// The ballot whose plan was accepted.
        ballot: Ballot,
    },
    /// A chosen plan; also sent to nodes found to be behind.
    Install {
        /// The plan to install.
        plan: Plan<Op>,
    },
    /// A node outside the view (or behind it) asks to be let in.
    Join {
        /// The sender's epoch.
        epoch: u64,
    },
    /// A member asks the view's members to confirm that `epoch` is still the group's view,
    /// for the linearizable reads of its round `round` (see `reads`).
    ReadIndex {
        /// The sender's epoch.
        epoch: u64,
        /// The sender's round.
        round: u64,
    },
    /// The sender is in `epoch` and has promised no ballot of a later one.
    ReadIndexOk {
        /// The sender's epoch.
        epoch: u64,
        /// The round confirmed.
        round: u64,
    },
}

impl<Op> Message<Op> {
    /// The epoch its sender was in when it sent it.
    pub(super) fn sender_epoch(&self) -> u64 {
        match self {
            Message::Broadcast { epoch, .. }
            | Message::Ack { epoch, .. }
            | Message::Alive { epoch }
            | Message::Join { epoch }
            | Message::ReadIndex { epoch, .. }
            | Message::ReadIndexOk { epoch, .. } => *epoch,
            Message::Prepare { ballot }
            | Message::Accept { ballot, .. }
            | Message::Accepted { ballot }
            | Message::Reject { ballot, .. } => ballot.epoch.saturating_sub(1),
            Message::Promise { standing, .. } => standing.epoch,
            Message::Install { plan } => plan.view.epoch,
        }
    }

    /// The epoch of a broadcast or an ack: the messages that count only within that epoch.
    pub(super) fn ordering_epoch(&self) -> Option<u64> {
        match self {
            Message::Broadcast { epoch, .. } | Message::Ack { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

/// The largest epoch a message may name. No group changes views 2^62 times, and every epoch
/// a node computes from one it heard (`epoch + 1`) stays far from overflowing.
pub const MAX_EPOCH: u64 = 1 << 62;

impl<Op> Message<Op> {
    /// Why this message, said to come from `from`, cannot have been sent by a correct member,
    /// if it cannot. Only what holds of every message a member sends, whatever this node
    /// knows or when it hears it, is checked: epochs within [`MAX_EPOCH`]; receipts and
    /// pending batches in strictly increasing order, as members build them; a `Prepare` or
    /// `Accept` under the sender's own ballot, as only a coordinator sends them; plans
    /// well formed ([`Plan::malformed`]). What depends on this node's state (a plan's epoch
    /// against its own, a ballot against its promise) is the protocol's to weigh.
    pub fn malformed(&self, from: NodeId) -> Option<&'static str> {
        let too_late = |epoch: u64| epoch > MAX_EPOCH;
        match self {
            Message::Broadcast {
                epoch, received, ..
            }
            | Message::Ack {
                epoch, received, ..
            } => {
                if too_late(*epoch) {
                    return Some("an epoch past the largest allowed");
                }
                if !strictly_increasing(received.iter().map(|&(n, _)| n)) {
                    return Some("receipts not in order of node");
                }
                None
            }
            Message::Alive { epoch }
            | Message::Join { epoch }
            | Message::ReadIndex { epoch, .. }
            | Message::ReadIndexOk { epoch, .. } => {
                too_late(*epoch).then_some("an epoch past the largest allowed")
            }
            Message::Prepare { ballot } | Message::Accept { ballot, .. } if ballot.node != from => {
                Some("a ballot of another coordinator")
            }
            Message::Prepare { ballot } => ballot.malformed(),
            Message::Accept { ballot, plan } => ballot.malformed().or_else(|| plan.malformed()),
            Message::Accepted { ballot } => ballot.malformed(),
            Message::Reject { ballot, promised } => {
                ballot.malformed().or_else(|| promised.malformed())
            }
            Message::Promise { ballot, standing } => {
                ballot.malformed().or_else(|| standing.malformed())
            }
            Message::Install { plan } => plan.malformed(),
        }
    }
}

impl Ballot {
    /// Why no coordinator would have made this ballot, if none would.
    pub fn malformed(&self) -> Option<&'static str> {
        if self.epoch == 0 || self.epoch > MAX_EPOCH {
            Some("a ballot's epoch out of range")
        } else if self.round == 0 {
            Some("a ballot of round 0")
        } else {
            None
        }
    }
}

impl<Op> Plan<Op> {
    /// Why no coordinator would have made this plan, if none would: one has an epoch from 1
    /// to [`MAX_EPOCH`], members in strictly increasing order of id, synced members that are
    /// members (at least one), a source among them, and a tail in strictly increasing order
    /// of key.
    pub fn malformed(&self) -> Option<&'static str> {
        let members = || self.view.ids();
        if self.view.epoch == 0 || self.view.epoch > MAX_EPOCH {
            Some("a plan's epoch out of range")
        } else if self.view.members.is_empty() || !strictly_increasing(members()) {
            Some("a plan's members empty or out of order")
        } else if self.synced.is_empty()
            || !strictly_increasing(self.synced.iter().copied())
            || !self.synced.iter().all(|s| members().any(|m| m == *s))
        {
            Some("a plan's synced members empty, out of order, or not members")
        } else if !self.synced.contains(&self.source) {
            Some("a plan's source not among its synced members")
        } else if !strictly_increasing(self.tail.iter().map(Batch::key)) {
            Some("a plan's tail out of order")
        } else {
            None
        }
    }
}

impl<Op> Standing<Op> {
    /// Why no member would report this standing, if none would.
    fn malformed(&self) -> Option<&'static str> {
        if self.epoch > MAX_EPOCH {
            return Some("a standing's epoch past the largest allowed");
        }
        if !strictly_increasing(self.pending.iter().map(Batch::key)) {
            return Some("a standing's pending batches out of order");
        }
        let (ballot, plan) = self.accepted.as_ref()?;
        ballot.malformed().or_else(|| plan.malformed())
    }
}

fn strictly_increasing<T: Ord>(mut items: impl Iterator<Item = T>) -> bool {
    let Some(mut last) = items.next() else {
        return true;
    };
    for item in items {
        if item <= last {
            return false;
        }
        last = item;
    }
    true
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
            | Message::Join { .. }
            | Message::ReadIndex { .. }
            | Message::ReadIndexOk { .. } => 0,
        };
        data + 32
    }
}

/// A message with its addresses and the sender's incarnation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<Op> {
    /// The sender.
    pub from: NodeId,
    /// The addressee.
    pub to: NodeId,
    /// The sender's run.
    pub incarnation: Incarnation,
    /// What it says.
    pub message: Message<Op>,
}

/// An operation in the total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<Op> {
    /// Position in the total order, from 1; the same on every member.
    pub seq: u64,
    /// The node that proposed it.
    pub origin: NodeId,
    /// The operation.
    pub op: Op,
}

/// What the driver must do, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<Op> {
    /// Apply this operation.
    Deliver(Delivery<Op>),
    /// A view was installed with this node as a synced member: it serves again.
    Serving {
        /// The view's epoch.
        epoch: u64,
    },
    /// Send a snapshot of the datalet, as it is now (after everything delivered so far and
    /// before anything delivered later), to these members.
    SendState {
        /// The view the snapshot starts.
        epoch: u64,
        /// The sequence number the snapshot holds everything up to.
        seq: u64,
        /// The members to send it to.
        to: Vec<NodeId>,
    },
    /// This node is in the new view but must be given its state: drop the local state and
    /// wait for a snapshot from `source` at `seq`. Operations proposed here and not yet
    /// delivered will not be answered here.
    AwaitState {
        /// The view the snapshot starts.
        epoch: u64,
        /// The member that sends it.
        source: NodeId,
        /// The sequence number it holds everything up to.
        seq: u64,
    },
    /// This node is not in the current view; operations proposed here will not be answered.
    Excluded {
        /// The view it is not in.
        epoch: u64,
    },
    /// The linearizable read `id` ([`super::Tob::read`]) may be answered from the replica
    /// now, after every event before this one is carried out.
    ReadReady {
        /// The driver's name for the read.
        id: u64,
    },
}
