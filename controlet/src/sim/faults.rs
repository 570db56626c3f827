//! The faults a seed injects, and the healing after them.

use rand::RngExt;

use super::net::Cut;
use super::{App, Node, Sim, SIM_TIMING};
use crate::tob::Tob;

/// The kind of faults a run injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Crashes and restarts.
    Crash,
    /// Partitions that hold what crosses them until they heal.
    PartitionHold,
    /// Partitions that lose what crosses them, and connections that break.
    PartitionDrop,
    /// Nodes that stop taking turns for a while.
    Pause,
    /// Links whose delays grow for a while.
    Spike,
    /// All of these, each half as often.
    Mixed,
}

/// Every kind of fault, in the order seeds cycle through them.
pub const FAULTS: [Fault; 6] = [
    Fault::Crash,
    Fault::PartitionHold,
    Fault::PartitionDrop,
    Fault::Pause,
    Fault::Spike,
    Fault::Mixed,
];

impl<A: App> Sim<A> {
    /// Restarts what is due and heals what is over, then injects new faults at random.
    pub(super) fn inject(&mut self, app: &mut A) {
        for i in 0..self.n {
            if self.nodes[i].restart_at.is_some_and(|t| t <= self.now) {
                self.restart(i);
            }
        }
        if self.partition.as_ref().is_some_and(|p| p.until <= self.now) {
            self.heal();
        }
        let fault = self.fault;
        let mixed = fault == Fault::Mixed;
        let rate = if mixed { 1.0 / 200.0 } else { 1.0 / 100.0 };
        if matches!(fault, Fault::Crash | Fault::Mixed) && self.rng.random_bool(rate) {
            let i = self.rng.random_range(0..self.n);
            self.crash(app, i);
        }
        let partitions = matches!(
            fault,
            Fault::PartitionHold | Fault::PartitionDrop | Fault::Mixed
        );
        if partitions && self.partition.is_none() && self.rng.random_bool(rate) {
            let mode = match fault {
                Fault::PartitionHold => Cut::Hold,
                Fault::PartitionDrop => {
                    Cut::Drop(if self.rng.random_bool(0.5) { 1.0 } else { 0.5 })
                }
                _ if self.rng.random_bool(0.5) => Cut::Hold,
                _ => Cut::Drop(1.0),
            };
            self.split(mode);
        }
        // TCP connections that break, losing what they carried, are more frequent.
        if matches!(fault, Fault::PartitionDrop | Fault::Mixed) && self.rng.random_bool(2.5 * rate)
        {
            let from = self.rng.random_range(0..self.n);
            let to = (from + self.rng.random_range(1..self.n)) % self.n;
            self.break_link(from, to);
        }
        if matches!(fault, Fault::Pause | Fault::Mixed) && self.rng.random_bool(rate) {
            let i = self.rng.random_range(0..self.n);
            let d = self.rng.random_range(10..=150);
            if self.active(i) {
                self.stats.pauses += 1;
                self.nodes[i].paused_until = self.now + d;
                self.log(1, || format!("node {} pauses for {d} ticks", i + 1));
            }
        }
        if matches!(fault, Fault::Spike | Fault::Mixed) && self.rng.random_bool(rate) {
            self.spike();
        }
    }

    /// The links of a random node, or one of them, are slower for a while.
    fn spike(&mut self) {
        self.stats.spikes += 1;
        let extra = self.rng.random_range(10..=80);
        let d = self.rng.random_range(20..=200);
        let i = self.rng.random_range(0..self.n);
        let n = self.n;
        let links: Vec<usize> = if self.rng.random_bool(0.5) {
            (0..n).flat_map(|j| [i * n + j, j * n + i]).collect()
        } else {
            let j = (i + self.rng.random_range(1..n)) % n;
            vec![i * n + j]
        };
        self.log(1, || {
            format!("delay spike of {extra} ticks for {d} ticks on links {links:?}")
        });
        for l in links {
            self.links[l].spike = extra;
            self.links[l].spike_until = self.now + d;
        }
    }

    /// Whether crashing node `i` could lose a majority of the latest view, or of a view
    /// proposed for a later epoch, or leave a majority of the nodes without state (a cluster
    /// that loses a majority at once stops, by design, or starts over from nothing).
    fn may_crash(&self, i: usize) -> bool {
        if self.nodes[i].tob.is_none() {
            return false;
        }
        let f = (self.n - 1) / 2;
        let stateless = (0..self.n)
            .filter(|&j| j == i || self.nodes[j].tob.is_none() || !self.nodes[j].synced_once)
            .count();
        if stateless > f {
            return false;
        }
        self.check.views_at_stake().all(|members| {
            let alive = members
                .iter()
                .filter(|&&(id, inc)| {
                    let j = id.0 as usize - 1;
                    j != i && self.nodes[j].tob.is_some() && self.nodes[j].incarnation == inc
                })
                .count();
            alive > members.len() / 2
        })
    }

    /// Crashes node `i` for a random while, if that is safe ([`Sim::may_crash`]): it loses its
    /// state and what was in flight to it, and a random suffix of what it sent.
    fn crash(&mut self, app: &mut A, i: usize) {
        if !self.may_crash(i) {
            return;
        }
        self.stats.crashes += 1;
        let down = self.rng.random_range(20..=300);
        self.log(1, || {
            format!(
                "node {} (incarnation {}) crashes for {down} ticks",
                i + 1,
                self.nodes[i].incarnation
            )
        });
        app.crashed(self, i);
        let node = &mut self.nodes[i];
        node.tob = None;
        node.replica = A::Replica::default();
        node.awaiting = None;
        node.early.clear();
        node.paused_until = 0;
        node.restart_at = Some(self.now + down);
        let n = self.n;
        for j in 0..n {
            // Messages in flight to it are lost; of those from it, a suffix may be.
            self.links[j * n + i].clear();
            if self.rng.random_bool(0.5) {
                let link = &mut self.links[i * n + j];
                let keep = self.rng.random_range(0..=link.len());
                link.truncate(keep);
            }
        }
    }

    /// Node `i` comes back as a new run, empty.
    fn restart(&mut self, i: usize) {
        let incarnation = self.nodes[i].incarnation + 1;
        let tob = Tob::new(self.universe[i], incarnation, &self.universe, 0, SIM_TIMING);
        self.nodes[i] = Node::new(tob, incarnation);
        self.log(1, || {
            format!("node {} restarts as incarnation {incarnation}", i + 1)
        });
        let n = self.n;
        for j in 0..n {
            // A new receiver sees the senders' numbering past 1: a gap. A new sender starts a
            // new numbering: no gap.
            let into = &mut self.links[j * n + i];
            into.pending_gap = into.used;
            self.links[i * n + j].pending_gap = false;
        }
    }

    /// Ends every fault: heals the partition, restarts the nodes that are down, ends pauses
    /// and delay spikes. [`Sim::run_until`] counts its ticks from here.
    pub fn heal_all(&mut self) {
        self.heal();
        for i in 0..self.n {
            if self.nodes[i].tob.is_none() {
                self.restart(i);
            }
            self.nodes[i].paused_until = 0;
        }
        for link in &mut self.links {
            link.spike_until = 0;
        }
        self.log(1, || "everything heals".to_string());
        self.healed_at = self.now;
    }
}
