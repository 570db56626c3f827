//! The simulated network: one FIFO link per ordered pair of nodes, with random delays, delay
//! spikes, partitions that hold or drop what crosses them, and connections that break.
//!
//! A link that lost messages marks the next one it carries, and the receiver is told of the
//! gap ([`Tob::link_gap`](crate::tob::Tob::link_gap)) before that one, as the peer transport
//! numbers its messages and reports what went missing.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::RngExt;

use super::{App, Sim, Snapshot};
use crate::tob::{Incarnation, Message, NodeState};

/// What travels on a link.
pub(super) enum Wire<A: App> {
    /// A message of the order.
    Tob {
        incarnation: Incarnation,
        message: Message<A::Op>,
    },
    /// A snapshot of the source's replica.
    State(Snapshot<A>),
}

/// A message in flight: when it arrives, and whether messages before it on its link were lost.
struct Parcel<A: App> {
    at: u64,
    gap_before: bool,
    wire: Wire<A>,
}

pub(super) struct Link<A: App> {
    queue: VecDeque<Parcel<A>>,
    /// Messages were dropped: the next one sent carries a gap.
    pub pending_gap: bool,
    /// Something was ever sent on it.
    pub used: bool,
    pub spike: u64,
    pub spike_until: u64,
}

impl<A: App> Default for Link<A> {
    fn default() -> Self {
        Link {
            queue: VecDeque::new(),
            pending_gap: false,
            used: false,
            spike: 0,
            spike_until: 0,
        }
    }
}

impl<A: App> Link<A> {
    /// Loses everything in flight (the receiver crashed: its restart starts the link over).
    pub fn clear(&mut self) {
        self.queue.clear();
    }

    /// Loses all but the first `keep` messages in flight (the sender crashed).
    pub fn truncate(&mut self, keep: usize) {
        self.queue.truncate(keep);
    }

    /// Messages in flight.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

/// How a partition treats what crosses it.
#[derive(Clone, Copy, Debug)]
pub enum Cut {
    /// Messages across the cut wait for it to heal.
    Hold,
    /// Each message across the cut is lost with this probability.
    Drop(f64),
}

/// A partition in progress.
pub struct Partition {
    /// Partitions are numbered from 1 in a run.
    pub id: usize,
    /// Per node: on the cut side.
    pub cut: Vec<bool>,
    /// What happens to messages across the cut.
    pub mode: Cut,
    /// The tick it heals at.
    pub until: u64,
    /// At its start, every node was serving in one view of all of them.
    pub full_view: bool,
    /// The side (a value of `cut`) without a majority of the nodes.
    pub minority: bool,
}

impl<A: App> Sim<A> {
    /// Whether messages from `from` to `to` cross the partition in progress.
    fn crossing(&self, from: usize, to: usize) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|p| p.cut[from] != p.cut[to])
    }

    /// Puts `wire` on the link from `from` to `to`, after a random delay (and the link's
    /// spike), never before what is already on it.
    pub(super) fn send(&mut self, from: usize, to: usize, wire: Wire<A>) {
        let n = self.n;
        let crossing = self.crossing(from, to);
        let mode = self.partition.as_ref().map(|p| p.mode);
        let delay = self.rng.random_range(1..=self.max_delay);
        let drop = match mode {
            Some(Cut::Drop(p)) if crossing => self.rng.random_bool(p),
            _ => false,
        };
        let now = self.now;
        let receiver_down = self.nodes[to].tob.is_none();
        let link = &mut self.links[from * n + to];
        link.used = true;
        if receiver_down {
            return; // its restart starts the link over, with a gap
        }
        if drop {
            link.pending_gap = true;
            self.stats.dropped += 1;
            return;
        }
        let extra = if now < link.spike_until {
            link.spike
        } else {
            0
        };
        let at = (now + delay + extra).max(link.queue.back().map_or(0, |p| p.at));
        let gap_before = std::mem::take(&mut link.pending_gap);
        link.queue.push_back(Parcel {
            at,
            gap_before,
            wire,
        });
    }

    /// Takes what arrived for node `i`, interleaving its links at random (each stays FIFO),
    /// then pays owed acks, as the driver does after a burst.
    pub(super) fn receive(&mut self, app: &mut A, i: usize) {
        let n = self.n;
        let mut arrived: Vec<(usize, Parcel<A>)> = Vec::new();
        for j in 0..n {
            if j == i || self.crossing(j, i) {
                continue;
            }
            let queue = &mut self.links[j * n + i].queue;
            let due = queue.iter().take_while(|p| p.at <= self.now).count();
            arrived.extend(queue.drain(..due).map(|parcel| (j, parcel)));
        }
        if arrived.len() > 1 {
            // A random interleaving that keeps each link's order.
            let mut keys: Vec<u64> = arrived.iter().map(|_| self.rng.random()).collect();
            let mut last: Vec<u64> = vec![0; n];
            for (k, (j, _)) in keys.iter_mut().zip(&arrived) {
                *k = (*k >> 8).max(last[*j] + 1);
                last[*j] = *k;
            }
            let mut keyed: Vec<(u64, (usize, Parcel<A>))> = keys.into_iter().zip(arrived).collect();
            keyed.sort_by_key(|(k, _)| *k);
            arrived = keyed.into_iter().map(|(_, a)| a).collect();
        }
        for (j, parcel) in arrived {
            let from = self.universe[j];
            let Some(tob) = self.nodes[i].tob.as_mut() else {
                return;
            };
            if parcel.gap_before {
                tob.link_gap(from);
                self.log(1, || {
                    format!("node {} told of a gap from node {}", i + 1, j + 1)
                });
                self.carry_out(app, i);
            }
            match parcel.wire {
                Wire::Tob {
                    incarnation,
                    message,
                } => {
                    if self.trace >= 2 {
                        println!(
                            "[{:>6}] {} <- {} (inc {incarnation}): {message:?}",
                            self.now,
                            i + 1,
                            j + 1
                        );
                    }
                    if let Some(why) = message.malformed(from) {
                        // The core drops such messages; a correct node must never send one.
                        let what = format!(
                            "node {} sent a malformed message ({why}): {message:?}",
                            j + 1
                        );
                        self.fail(super::Kind::Safety, what);
                    }
                    if let Some(tob) = self.nodes[i].tob.as_mut() {
                        tob.step(from, incarnation, message);
                    }
                }
                Wire::State(snapshot) => self.receive_state(app, i, j, snapshot),
            }
            self.carry_out(app, i);
            if self.failure.is_some() {
                return;
            }
        }
        if let Some(tob) = self.nodes[i].tob.as_mut() {
            tob.ack();
        }
        self.carry_out(app, i);
    }

    /// The TCP connection from `from` to `to` breaks: what it carried is lost, and the
    /// receiver is told of the gap before the next message.
    pub(super) fn break_link(&mut self, from: usize, to: usize) {
        self.stats.breaks += 1;
        let n = self.n;
        let link = &mut self.links[from * n + to];
        let lost = link.queue.len();
        if lost > 0 {
            link.queue.clear();
            link.pending_gap = true;
            self.stats.dropped += lost as u64;
        }
        self.log(1, || {
            format!(
                "the link from node {} to node {} breaks: {lost} messages lost",
                from + 1,
                to + 1
            )
        });
    }

    /// Starts a partition that cuts a random set of nodes off the others, for a random while.
    pub(super) fn split(&mut self, mode: Cut) {
        let n = self.n;
        let size = self.rng.random_range(1..n);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut self.rng);
        let mut cut = vec![false; n];
        for &i in &order[..size] {
            cut[i] = true;
        }
        let d = self.rng.random_range(20..=300);
        let full_view = self.nodes.iter().all(|node| {
            node.tob.as_ref().is_some_and(|t| {
                t.state() == NodeState::Serving
                    && t.view().epoch == self.nodes[0].epoch
                    && self.holds_every_node(t)
            })
        });
        let majority = n / 2 + 1;
        let minority = size < majority;
        let id = self.stats.partitions as usize + 1;
        self.stats.partitions += 1;
        self.stats.full_view_partitions += full_view as u64;
        self.log(1, || {
            format!("partition {id} ({mode:?}) for {d} ticks: {cut:?} (full view: {full_view})")
        });
        if let Cut::Drop(p) = mode {
            // The connections across the cut break: what they carried may be lost.
            for from in 0..n {
                for to in 0..n {
                    if cut[from] != cut[to] {
                        self.drop_some(from, to, p);
                    }
                }
            }
        }
        self.partition = Some(Partition {
            id,
            cut,
            mode,
            until: self.now + d,
            full_view,
            minority,
        });
    }

    /// Loses each message in flight from `from` to `to` with probability `p`; the next one
    /// kept, or sent, carries the gap.
    fn drop_some(&mut self, from: usize, to: usize, p: f64) {
        let link = &mut self.links[from * self.n + to];
        let mut kept = VecDeque::new();
        let mut gap = false;
        for mut parcel in std::mem::take(&mut link.queue) {
            if self.rng.random_bool(p) {
                gap = true;
                self.stats.dropped += 1;
            } else {
                parcel.gap_before |= std::mem::take(&mut gap);
                kept.push_back(parcel);
            }
        }
        link.queue = kept;
        link.pending_gap |= gap;
    }

    /// Ends the partition in progress.
    pub(super) fn heal(&mut self) {
        if let Some(p) = self.partition.take() {
            self.log(1, || format!("partition {} heals", p.id));
        }
    }
}
