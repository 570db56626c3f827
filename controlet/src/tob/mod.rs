//! Total-order broadcast on Lamport clocks: a sans-IO state machine.
//!
//! # How it works
//!
//! Every member keeps a Lamport clock. Every message a member sends, to anyone, carries a
//! fresh timestamp from it (the clock ticks on every send), and every message received moves
//! the clock past the timestamp it carries. Links are FIFO (TCP), so once member `q` has been
//! heard from with timestamp `t`, every later message from `q` carries a timestamp above `t`.
//!
//! - [`Tob::propose`] buffers an operation; [`Tob::flush`] sends every buffered operation in
//!   one [`Message::Broadcast`] to all other members and queues it locally, keyed by its
//!   `(timestamp, sender)`. Under load, one broadcast carries many operations, so peer
//!   messages per operation fall as load rises.
//! - A member receiving a broadcast queues it and owes every other member a message with a
//!   later timestamp: [`Tob::ack`] (called after each burst of received messages), the next
//!   broadcast, or [`Tob::tick`] pays that debt with a [`Message::Ack`]. Acks also go out as heartbeats when a member has been quiet, so an idle
//!   member never holds up delivery for long.
//! - The batch at the head of the queue (the smallest `(timestamp, sender)`) is delivered once
//!   every other member has been heard from with a timestamp at least as large: by FIFO and the
//!   clock rule, every later message of a member carries a larger timestamp than any heard
//!   from it, so nothing ordered before the head can arrive any more. So every member delivers every
//!   batch exactly once, in the same order. Each delivered operation gets the next sequence
//!   number, `1, 2, 3, ...`, identical on every member: the strong modes use it as the
//!   operation's version, and so as its CAS unique.
//!
//! Time is ticks; nothing here reads a clock or touches a socket. The driver feeds received
//! messages to [`Tob::step`], calls [`Tob::tick`] on a timer, sends what
//! [`Tob::take_messages`] returns and applies what [`Tob::take_deliveries`] returns.
//!
//! Caveat: membership is fixed. A member that stops sending stops delivery everywhere; failure
//! detection and view changes are what make the order survive a crash.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tailorkv_common::{NodeId, Ts};

/// A message between members. Every message carries the sender's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message<Op> {
    /// Operations to order, stamped with the timestamp that orders them.
    Broadcast { ts: Ts, ops: Vec<Op> },
    /// Nothing to order: proves the sender's clock has passed `ts`, acknowledging broadcasts
    /// it has received and serving as a heartbeat.
    Ack { ts: Ts },
}

impl<Op> Message<Op> {
    pub fn ts(&self) -> Ts {
        match self {
            Message::Broadcast { ts, .. } | Message::Ack { ts } => *ts,
        }
    }
}

/// A message with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<Op> {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message<Op>,
}

/// An operation in the total order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery<Op> {
    /// Position in the total order, from 1; the same on every member.
    pub seq: u64,
    /// The member that proposed it.
    pub origin: NodeId,
    pub op: Op,
}

/// Ticks of silence after which a member sends a heartbeat.
pub const HEARTBEAT_TICKS: u64 = 10;

/// One member's state.
#[derive(Debug)]
pub struct Tob<Op> {
    id: NodeId,
    /// The other members.
    peers: Vec<NodeId>,
    clock: Ts,
    /// The largest timestamp heard from each other member.
    heard: BTreeMap<NodeId, Ts>,
    /// Broadcasts received or sent, not yet delivered, by `(timestamp, sender)`.
    queue: BTreeMap<(Ts, NodeId), Vec<Op>>,
    /// Proposed, not yet broadcast.
    proposed: Vec<Op>,
    /// A broadcast arrived since we last sent to everyone: we owe them a later timestamp.
    owe_ack: bool,
    ticks_quiet: u64,
    delivered_seq: u64,
    outbox: Vec<Envelope<Op>>,
    deliveries: Vec<Delivery<Op>>,
}

impl<Op: Clone> Tob<Op> {
    /// A member `id` of the group `members` (which includes `id`).
    pub fn new(id: NodeId, members: &[NodeId]) -> Self {
        assert!(members.contains(&id), "{id:?} is not among the members");
        let peers: Vec<NodeId> = members.iter().copied().filter(|&m| m != id).collect();
        Tob {
            id,
            heard: peers.iter().map(|&p| (p, 0)).collect(),
            peers,
            clock: 0,
            queue: BTreeMap::new(),
            proposed: Vec::new(),
            owe_ack: false,
            ticks_quiet: 0,
            delivered_seq: 0,
            outbox: Vec::new(),
            deliveries: Vec::new(),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn clock(&self) -> Ts {
        self.clock
    }

    /// Operations delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered_seq
    }

    /// Buffers an operation for the next broadcast.
    pub fn propose(&mut self, op: Op) {
        self.proposed.push(op);
    }

    /// Broadcasts every buffered operation as one batch.
    pub fn flush(&mut self) {
        if self.proposed.is_empty() {
            return;
        }
        let ops = std::mem::take(&mut self.proposed);
        let ts = self.send_all(|ts| Message::Broadcast {
            ts,
            ops: ops.clone(),
        });
        self.queue.insert((ts, self.id), ops);
        self.maybe_deliver();
    }

    /// Handles a message from member `from`.
    pub fn step(&mut self, from: NodeId, message: Message<Op>) {
        let Some(heard) = self.heard.get_mut(&from) else {
            return; // not a member: ignore
        };
        let ts = message.ts();
        debug_assert!(
            ts > *heard,
            "{from:?} went back in time: FIFO or the clock rule broke"
        );
        *heard = (*heard).max(ts);
        self.clock = self.clock.max(ts);
        if let Message::Broadcast { ts, ops } = message {
            self.queue.insert((ts, from), ops);
            self.owe_ack = true;
        }
        self.maybe_deliver();
    }

    /// Pays owed acks now: the driver calls this after handling a burst of messages, so a
    /// broadcast is acknowledged at once, with one ack for the whole burst.
    pub fn ack(&mut self) {
        if self.owe_ack {
            self.send_all(|ts| Message::Ack { ts });
        }
    }

    /// Advances time by one tick: pays owed acks, sends heartbeats after a quiet spell.
    pub fn tick(&mut self) {
        self.ticks_quiet += 1;
        if self.owe_ack || self.ticks_quiet >= HEARTBEAT_TICKS {
            self.send_all(|ts| Message::Ack { ts });
        }
    }

    /// Messages to send, in order; per destination, they must be sent in this order.
    pub fn take_messages(&mut self) -> Vec<Envelope<Op>> {
        std::mem::take(&mut self.outbox)
    }

    /// Operations delivered since the last call, in the total order.
    pub fn take_deliveries(&mut self) -> Vec<Delivery<Op>> {
        std::mem::take(&mut self.deliveries)
    }

    /// Sends a message with a fresh timestamp to every other member; returns the timestamp.
    fn send_all(&mut self, make: impl Fn(Ts) -> Message<Op>) -> Ts {
        self.clock += 1;
        let ts = self.clock;
        for &to in &self.peers {
            self.outbox.push(Envelope {
                from: self.id,
                to,
                message: make(ts),
            });
        }
        self.owe_ack = false;
        self.ticks_quiet = 0;
        ts
    }

    /// Delivers every queued batch that nothing smaller can precede any more.
    fn maybe_deliver(&mut self) {
        while let Some((&(ts, origin), _)) = self.queue.first_key_value() {
            // Every later message of a member carries a timestamp above the largest heard from
            // it, and ours above our clock, which is at least `ts`: so once each member has
            // been heard at `ts` or later, no batch ordered before this one can still arrive.
            let settled = self.heard.values().all(|&heard| heard >= ts);
            if !settled {
                return;
            }
            let (_, ops) = self.queue.pop_first().expect("non-empty queue");
            for op in ops {
                self.delivered_seq += 1;
                self.deliveries.push(Delivery {
                    seq: self.delivered_seq,
                    origin,
                    op,
                });
            }
        }
    }
}
