//! Ordering within a view: proposals and broadcasts, receipts and acks, delivery, and the
//! backlog a node catching up holds.
//!
//! A batch is queued under its key `(timestamp, sender)` and delivered when it heads the
//! queue and every other member reported receiving it: by FIFO links and the clock rule
//! nothing ordered before it can still arrive, and every member holds it (stability).

use tailorkv_common::{NodeId, Ts};

use super::message::{Delivery, Event, Message};
use super::{Incarnation, Status, Tob, EARLY_BYTES};
use crate::weigh::Weigh;

impl<Op: Clone + Weigh> Tob<Op> {
    /// Buffers an operation for the next broadcast.
    pub fn propose(&mut self, op: Op) {
        self.own_bytes += op.weight();
        self.proposed.push(op);
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

    /// Operations proposed and not yet broadcast.
    pub fn proposed_len(&self) -> usize {
        self.proposed.len()
    }

    /// Counts [`Tob::own_bytes`] afresh, after operations were dropped wholesale.
    pub(super) fn recount_own(&mut self) {
        let queued: usize = self
            .queue
            .iter()
            .filter(|((_, origin), _)| *origin == self.id)
            .flat_map(|(_, ops)| ops.iter())
            .map(Weigh::weight)
            .sum();
        self.own_bytes = queued + self.proposed.iter().map(Weigh::weight).sum::<usize>();
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

    /// Pays owed acks now: the driver calls this after handling a burst of messages, so a
    /// broadcast is acknowledged at once, with one ack for the whole burst.
    pub fn ack(&mut self) {
        if self.owe_ack && self.sends_acks() {
            self.send_ack();
        }
    }

    /// A broadcast of this node's epoch from member `from`.
    pub(super) fn on_broadcast(
        &mut self,
        from: NodeId,
        ts: Ts,
        received: Vec<(NodeId, Ts)>,
        ops: Vec<Op>,
    ) {
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

    /// An ack of this node's epoch from member `from`.
    pub(super) fn on_ack(
        &mut self,
        from: NodeId,
        ts: Ts,
        received: Vec<(NodeId, Ts)>,
        synced: bool,
    ) {
        self.clock = self.clock.max(ts);
        if synced {
            self.synced_members.insert(from);
        } else {
            self.synced_members.remove(&from);
        }
        self.acked.insert(from, received.into_iter().collect());
        self.maybe_deliver();
    }

    /// On a tick: a member acks what it owes, or heartbeats after a quiet spell; a node that
    /// sends no acks says it is alive to every node.
    pub(super) fn heartbeat(&mut self) {
        if self.sends_acks() {
            if self.owe_ack || self.ticks_quiet >= self.timing.heartbeat {
                self.send_ack();
            }
        } else if self.ticks_quiet >= self.timing.heartbeat {
            self.ticks_quiet = 0;
            let epoch = self.view.epoch;
            self.send_others(Message::Alive { epoch });
        }
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
    pub(super) fn release_backlog(&mut self) {
        self.backlog_bytes = 0;
        if self.held_receipts.take().is_some() {
            self.owe_ack = true;
        }
    }

    pub(super) fn send_ack(&mut self) {
        let epoch = self.view.epoch;
        let ts = self.next_ts();
        let received = self.receipts();
        let synced = self.status == Status::Normal;
        self.send_members(Message::Ack {
            epoch,
            ts,
            received,
            synced,
        });
    }

    /// Delivers every queued batch that every other member reported receiving.
    pub(super) fn maybe_deliver(&mut self) {
        if self.status != Status::Normal || self.view.epoch == 0 {
            return;
        }
        while let Some(head) = self.queue.first_entry() {
            let (ts, origin) = *head.key();
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
                break;
            }
            let (key, ops) = head.remove_entry();
            self.deliver(key, ops);
        }
        self.release_reads();
    }

    pub(super) fn deliver(&mut self, key: (Ts, NodeId), ops: Vec<Op>) {
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

    /// A broadcast or ack that does not count in this node's epoch: one of a later epoch
    /// waits for it, one of an earlier epoch tells its sender where we are.
    pub(super) fn out_of_epoch(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        message: Message<Op>,
    ) {
        let Some(epoch) = message.ordering_epoch() else {
            return;
        };
        if epoch > self.view.epoch {
            self.keep_early(from, incarnation, epoch, message);
        } else {
            self.compare_epochs(from, epoch);
        }
    }

    /// Keeps a message of a later epoch for when we install it, and asks its sender where
    /// it is. Past [`EARLY_BYTES`], the sender's link counts as broken.
    fn keep_early(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        epoch: u64,
        message: Message<Op>,
    ) {
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

    /// Steps again the messages kept for the epoch just installed (and later ones); the
    /// senders whose early messages did not all fit count as damaged.
    pub(super) fn replay_early(&mut self) {
        for (from, through) in std::mem::take(&mut self.early_lost) {
            self.damage(from, through);
        }
        let early = std::mem::take(&mut self.early);
        self.early_bytes = 0;
        for (from, incarnation, message) in early {
            if message
                .ordering_epoch()
                .is_some_and(|epoch| epoch >= self.view.epoch)
            {
                self.step(from, incarnation, message);
            }
        }
    }

    /// Messages from `from` were lost; the driver says so before stepping the next message
    /// from it. The lost messages belong to epochs up to that next message's: nothing of
    /// those epochs is taken from `from` any more, and a view holding it in one is changed.
    pub fn link_gap(&mut self, from: NodeId) {
        self.gap_pending.insert(from);
    }

    pub(super) fn damage(&mut self, from: NodeId, through: u64) {
        let entry = self.damaged.entry(from).or_insert(through);
        *entry = (*entry).max(through);
    }

    pub(super) fn is_damaged(&self, node: NodeId) -> bool {
        self.damaged
            .get(&node)
            .is_some_and(|&through| through >= self.view.epoch)
    }
}
