//! The checks every application on the order shares, as the history unfolds, and the
//! counters of what the network and the faults did.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use tailorkv_common::NodeId;

use crate::tob::Incarnation;

/// What every node applied, installed and was told, against what the others were: one
/// operation per sequence number (across nodes, incarnations and snapshots), no operation
/// twice, sequence numbers without holes, one view per epoch, one starting sequence number
/// per epoch.
#[derive(Debug)]
pub struct Agreement {
    /// What failures call an operation's uid.
    noun: &'static str,
    /// The operation (uid) at each sequence number (index `seq - 1`), as first applied
    /// anywhere.
    order: Vec<u64>,
    /// Where each operation is in `order`.
    position: HashMap<u64, usize>,
    /// The view of each epoch, as first installed anywhere.
    views: BTreeMap<u64, Vec<(NodeId, Incarnation)>>,
    /// The sequence number each epoch starts at.
    starts: BTreeMap<u64, u64>,
    /// Views proposed (in an `Accept` or `Install` sent), by epoch: they may be installed later.
    plans: BTreeMap<u64, Vec<Vec<(NodeId, Incarnation)>>>,
}

impl Agreement {
    /// Nothing applied yet; failures call operations `noun` ("op 7").
    pub fn new(noun: &'static str) -> Self {
        Agreement {
            noun,
            order: Vec::new(),
            position: HashMap::new(),
            views: BTreeMap::new(),
            starts: BTreeMap::new(),
            plans: BTreeMap::new(),
        }
    }

    /// The operations at sequence numbers 1, 2, ... as first applied anywhere.
    pub fn order(&self) -> &[u64] {
        &self.order
    }

    /// Where operation `uid` is in [`Agreement::order`], if it was applied anywhere.
    pub fn position(&self, uid: u64) -> Option<usize> {
        self.position.get(&uid).copied()
    }

    /// `who` applied operation `uid` at `seq`, by a delivery or in a snapshot.
    pub fn applied(&mut self, who: &dyn fmt::Display, seq: u64, uid: u64) -> Result<(), String> {
        let noun = self.noun;
        if seq == 0 {
            return Err(format!("{who} applied {noun} {uid} at seq 0"));
        }
        let i = (seq - 1) as usize;
        if let Some(&first) = self.order.get(i) {
            if first != uid {
                return Err(format!(
                    "agreement: {who} applied {noun} {uid} at seq {seq}, where {noun} {first} was applied before"
                ));
            }
            return Ok(());
        }
        if i != self.order.len() {
            return Err(format!(
                "{who} applied {noun} {uid} at seq {seq}, past the longest sequence so far ({})",
                self.order.len()
            ));
        }
        if let Some(&at) = self.position.get(&uid) {
            return Err(format!(
                "duplicate: {who} applied {noun} {uid} at seq {seq}; it is already at seq {}",
                at + 1
            ));
        }
        self.position.insert(uid, i);
        self.order.push(uid);
        Ok(())
    }

    /// `who` installed `members` as the view of `epoch`.
    pub fn view(
        &mut self,
        who: &dyn fmt::Display,
        epoch: u64,
        members: &[(NodeId, Incarnation)],
    ) -> Result<(), String> {
        match self.views.get(&epoch) {
            Some(first) if first != members => Err(format!(
                "two views of epoch {epoch}: {first:?}, and {members:?} at {who}"
            )),
            Some(_) => Ok(()),
            None => {
                self.views.insert(epoch, members.to_vec());
                Ok(())
            }
        }
    }

    /// `who` was told that `epoch` starts at `seq`.
    pub fn start(&mut self, who: &dyn fmt::Display, epoch: u64, seq: u64) -> Result<(), String> {
        match self.starts.get(&epoch) {
            Some(&first) if first != seq => Err(format!(
                "epoch {epoch} starts at seq {first}, and at seq {seq} for {who}"
            )),
            Some(_) => Ok(()),
            None => {
                self.starts.insert(epoch, seq);
                Ok(())
            }
        }
    }

    /// A node proposed `members` as the view of `epoch`.
    pub fn planned(&mut self, epoch: u64, members: &[(NodeId, Incarnation)]) {
        let views = self.plans.entry(epoch).or_default();
        if !views.iter().any(|v| v == members) {
            views.push(members.to_vec());
        }
    }

    /// The latest view installed, and every view proposed for a later epoch: views that
    /// must keep a majority of their members up.
    pub fn views_at_stake(&self) -> impl Iterator<Item = &Vec<(NodeId, Incarnation)>> {
        let installed = self.views.last_key_value();
        let latest = installed.map_or(0, |(&e, _)| e);
        installed
            .map(|(_, v)| v)
            .into_iter()
            .chain(self.plans.range(latest + 1..).flat_map(|(_, vs)| vs))
    }
}

/// What the network and the faults did in a run, or in many.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Nodes crashed.
    pub crashes: u64,
    /// Connections broken.
    pub breaks: u64,
    /// Partitions.
    pub partitions: u64,
    /// Partitions that began with every node serving in one view of all of them.
    pub full_view_partitions: u64,
    /// Nodes paused.
    pub pauses: u64,
    /// Delay spikes.
    pub spikes: u64,
    /// Messages lost.
    pub dropped: u64,
    /// Snapshots installed.
    pub snapshots: u64,
    /// The highest epoch installed.
    pub max_epoch: u64,
    /// Ticks run.
    pub ticks: u64,
}

impl Stats {
    /// Adds another run's counts (`max_epoch` is the highest of the two).
    pub fn add(&mut self, o: &Stats) {
        self.crashes += o.crashes;
        self.breaks += o.breaks;
        self.partitions += o.partitions;
        self.full_view_partitions += o.full_view_partitions;
        self.pauses += o.pauses;
        self.spikes += o.spikes;
        self.dropped += o.dropped;
        self.snapshots += o.snapshots;
        self.max_epoch = self.max_epoch.max(o.max_epoch);
        self.ticks += o.ticks;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Who(&'static str);

    impl fmt::Display for Who {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    /// Agreement, duplicates, and views and starts of an epoch are also checked by
    /// `tob::tests::simulation::the_checker_catches_a_disagreeing_history`.
    #[test]
    fn a_hole_in_the_sequence_is_caught() {
        let mut c = Agreement::new("op");
        let a = Who("a");
        c.applied(&a, 1, 10).unwrap();
        let e = c.applied(&a, 3, 12).unwrap_err();
        assert!(e.contains("past the longest sequence"), "{e}");
        assert!(c.applied(&a, 0, 13).is_err(), "seq 0");
        c.applied(&a, 2, 11).unwrap();
        assert_eq!(c.order(), [10, 11]);
        assert_eq!(c.position(11), Some(1));
    }

    #[test]
    fn views_at_stake_are_the_latest_and_those_planned_after_it() {
        let mut c = Agreement::new("op");
        let one = [(NodeId(1), 1), (NodeId(2), 1), (NodeId(3), 1)];
        let two = [(NodeId(1), 1), (NodeId(2), 1)];
        c.planned(1, &one);
        c.view(&Who("a"), 1, &one).unwrap();
        c.planned(2, &two);
        c.planned(2, &two);
        let at_stake: Vec<_> = c.views_at_stake().collect();
        assert_eq!(at_stake, [&one.to_vec(), &two.to_vec()]);
    }
}
