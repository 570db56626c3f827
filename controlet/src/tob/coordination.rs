//! The coordinator's side of a view change: one ballot of a single-decree Paxos for the next
//! epoch.
//!
//! A [`Coordination`] collects promises, makes a [`Plan`] once a quorum of the view being
//! changed promised (and the other nodes had a short while to), and counts who accepted it.
//! It sends nothing itself: [`Coordination::advance`] says what the coordinator does next.

use std::collections::BTreeMap;
use std::ops::Bound;

use tailorkv_common::{NodeId, Ts};

use super::detector::Detector;
use super::message::{Ballot, Batch, Plan, Standing, View};
use super::Incarnation;

/// Who votes on the next view: the view being changed, read with the operator's word.
pub(super) struct Electorate<'a> {
    /// The view being changed (epoch 0: no view yet, the configured nodes).
    pub view: &'a View,
    /// Every node heard from.
    pub universe: &'a [NodeId],
    /// The members the group should have ([`super::Tob::set_target`]).
    pub target: &'a [NodeId],
    /// The operator let any majority of the nodes form the next view
    /// ([`super::Tob::force_next_view`]).
    pub forced: bool,
}

impl Electorate<'_> {
    /// Whether a promise (or acceptance) counts toward a quorum of the view, and if so whether
    /// it comes from a run of the node that was in the view (`true`, it remembers what it
    /// promised and accepted) or from a later run of a member (`false`, it forgot).
    pub fn vote<Op>(
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

    /// The nodes whose promise counts toward a majority of the view.
    fn is_voter<Op>(
        &self,
        node: NodeId,
        incarnation: Incarnation,
        standing: &Standing<Op>,
    ) -> bool {
        self.vote(node, incarnation, standing) == Some(true)
    }

    /// How many votes a quorum takes. A first view needs every configured node: nodes at
    /// epoch 0 may have restarted with their memory gone (or with only what their disks saved)
    /// while another node, out of their sight for now, still serves the cluster's last view
    /// and holds writes they lack; a view of only some of them would start the cluster over
    /// beside it. The operator, who knows whether such a node exists, can let a majority go on.
    fn need(&self) -> usize {
        if self.view.epoch == 0 && !self.forced {
            self.universe.len()
        } else if self.view.epoch == 0 {
            self.universe.len() / 2 + 1
        } else {
            self.view.majority()
        }
    }

    /// Whether these votes (each a node and `true` for runs that were in the view) make a
    /// quorum of the view. A majority of the members by id, of which at least
    /// `n - majority + 1` are runs that were in the view: then every majority that may have
    /// accepted a plan before shares a member with these that remembers it (Paxos's
    /// intersection), even though restarted members forgot. This lets a two-member view whose
    /// other member restarted change again, where counting only remembering runs would stop it
    /// for good. Or, once the agreed membership has dropped members of the view from its target
    /// ([`Electorate::target_quorum`]), every member it keeps.
    fn is_quorum(&self, votes: impl Iterator<Item = (NodeId, bool)>) -> bool {
        let votes: Vec<(NodeId, bool)> = votes.collect();
        let need = self.need();
        let all = votes.len();
        let remembering = votes.iter().filter(|(_, r)| *r).count();
        if self.forced {
            return all >= need;
        }
        if self.view.epoch == 0 {
            return remembering >= need;
        }
        let n = self.view.members.len();
        (all >= need && remembering >= n + 1 - need) || self.target_quorum(&votes)
    }

    /// A view some of whose members the agreed membership has removed (they are not in the
    /// target: dead, or handed over) may change with the votes of every member it keeps, runs
    /// that were in the view, when those are at least `n - majority + 1`: so this quorum meets
    /// every majority of the view, which is what the removed members could still form, and
    /// any other such quorum (a later target keeps a subset of these members, since removed
    /// nodes never come back under the same run). This is what lets a group of two whose
    /// other member died take a replacement, which a majority of two cannot.
    fn target_quorum(&self, votes: &[(NodeId, bool)]) -> bool {
        if self.target.is_empty() {
            return false;
        }
        let kept: Vec<NodeId> = self
            .view
            .ids()
            .filter(|m| self.target.contains(m))
            .collect();
        let n = self.view.members.len();
        if kept.is_empty() || kept.len() == n || kept.len() < n + 1 - self.view.majority() {
            return false;
        }
        kept.iter()
            .all(|k| votes.iter().any(|&(v, remembers)| v == *k && remembers))
    }
}

/// What the coordinator does next.
pub(super) enum Next<Op> {
    /// Nothing, until more answers come or time passes.
    Wait,
    /// The plan is made: the coordinator accepts it and asks these voters to.
    Propose {
        ballot: Ballot,
        plan: Plan<Op>,
        voters: Vec<NodeId>,
    },
    /// A quorum accepted the plan: it is chosen, to be installed everywhere.
    Install(Plan<Op>),
}

/// One ballot led by this node, from its `Prepare` to the chosen plan.
#[derive(Debug)]
pub(super) struct Coordination<Op> {
    ballot: Ballot,
    started: u64,
    /// The promises of this ballot, the coordinator's own included.
    promises: BTreeMap<NodeId, (Incarnation, Standing<Op>)>,
    /// When the promises first made a quorum.
    majority_at: Option<u64>,
    plan: Option<Plan<Op>>,
    /// Who accepted the plan, and whether each is a run that was in the view (see
    /// [`Electorate::vote`]).
    accepted_by: BTreeMap<NodeId, bool>,
}

impl<Op: Clone> Coordination<Op> {
    /// Ballot `ballot`, started at tick `now` by node `me` (run `incarnation`), which
    /// promises it at once with `standing`.
    pub fn new(
        ballot: Ballot,
        now: u64,
        me: NodeId,
        incarnation: Incarnation,
        standing: Standing<Op>,
    ) -> Self {
        Coordination {
            ballot,
            started: now,
            promises: BTreeMap::from([(me, (incarnation, standing))]),
            majority_at: None,
            plan: None,
            accepted_by: BTreeMap::new(),
        }
    }

    /// The ballot it leads.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The tick it started at.
    pub fn started(&self) -> u64 {
        self.started
    }

    /// Takes a promise; false if it is of another ballot.
    pub fn promised(
        &mut self,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
        standing: Standing<Op>,
    ) -> bool {
        if ballot != self.ballot {
            return false;
        }
        self.promises.insert(from, (incarnation, standing));
        true
    }

    /// Takes an acceptance of the plan; false if it does not count: of another ballot,
    /// before any plan, or from a node (or run) whose promise is not a vote.
    pub fn accepted(
        &mut self,
        electorate: &Electorate,
        from: NodeId,
        incarnation: Incarnation,
        ballot: Ballot,
    ) -> bool {
        let vote = match self.promises.get(&from) {
            Some((inc, s)) if *inc == incarnation => electorate.vote(from, *inc, s),
            _ => None,
        };
        match vote {
            Some(remembers) if ballot == self.ballot && self.plan.is_some() => {
                self.accepted_by.insert(from, remembers);
                true
            }
            _ => false,
        }
    }

    /// Moves on at tick `now`: makes the plan once enough promises are in (a quorum, and
    /// every node not suspected or `collect` ticks since the quorum), and says it is chosen
    /// once a quorum accepted it.
    pub fn advance(
        &mut self,
        electorate: &Electorate,
        me: NodeId,
        now: u64,
        collect: u64,
        detector: &Detector,
    ) -> Next<Op> {
        if let Some(plan) = &self.plan {
            let votes = self
                .accepted_by
                .iter()
                .map(|(&n, &r)| (n, r))
                .chain([(me, true)]);
            return if electorate.is_quorum(votes) {
                Next::Install(plan.clone())
            } else {
                Next::Wait
            };
        }
        let votes = self
            .promises
            .iter()
            .filter_map(|(&n, (inc, s))| Some((n, electorate.vote(n, *inc, s)?)));
        if !electorate.is_quorum(votes) {
            return Next::Wait;
        }
        let majority_at = self.majority_at.unwrap_or(now);
        let all_in = electorate
            .universe
            .iter()
            .all(|&n| self.promises.contains_key(&n) || detector.is_suspected(n));
        if !all_in && now < majority_at + collect {
            self.majority_at = Some(majority_at);
            return Next::Wait;
        }
        let Some(plan) = self.make_plan(electorate, me) else {
            return Next::Wait;
        };
        let voters = self
            .promises
            .iter()
            .filter(|(&n, (inc, s))| n != me && electorate.vote(n, *inc, s).is_some())
            .map(|(&n, _)| n)
            .collect();
        self.plan = Some(plan.clone());
        Next::Propose {
            ballot: self.ballot,
            plan,
            voters,
        }
    }

    /// The plan: the accepted plan of the highest ballot among the voters' promises, if any
    /// (Paxos); otherwise every node that promised, with the union of the voters' undelivered
    /// batches as the tail, the synced voters, and a source among them (`me` if it can).
    fn make_plan(&self, electorate: &Electorate, me: NodeId) -> Option<Plan<Op>> {
        let voters: Vec<(NodeId, &Standing<Op>)> = self
            .promises
            .iter()
            .filter(|(&n, (inc, s))| electorate.is_voter(n, *inc, s))
            .map(|(&n, (_, s))| (n, s))
            .collect();
        if let Some((_, plan)) = self
            .promises
            .iter()
            .filter(|(&n, (inc, s))| electorate.vote(n, *inc, s).is_some())
            .filter_map(|(_, (_, s))| s.accepted.as_ref())
            .max_by_key(|(b, _)| *b)
        {
            return Some(plan.clone());
        }
        let synced: Vec<(NodeId, &Standing<Op>)> = if electorate.view.epoch == 0 {
            let best = voters.iter().map(|(_, s)| s.delivered).max()?;
            voters
                .iter()
                .copied()
                .filter(|(_, s)| s.delivered == best)
                .collect()
        } else {
            voters.iter().copied().filter(|(_, s)| s.synced).collect()
        };
        // Once every target member promised up to date, the others are left out: the
        // target's copies are complete without them.
        let reshape = !electorate.target.is_empty()
            && electorate
                .target
                .iter()
                .all(|t| synced.iter().any(|(n, _)| n == t));
        let kept = |n: &NodeId| !reshape || electorate.target.contains(n);
        let synced: Vec<(NodeId, &Standing<Op>)> =
            synced.into_iter().filter(|(n, _)| kept(n)).collect();
        let &(first, first_standing) = synced.first()?;
        let mut tail: BTreeMap<(Ts, NodeId), Vec<Op>> = BTreeMap::new();
        for (_, s) in &voters {
            for b in &s.pending {
                tail.entry(b.key()).or_insert_with(|| b.ops.clone());
            }
        }
        let start_seq = first_standing.delivered
            + tail
                .range((Bound::Excluded(first_standing.last), Bound::Unbounded))
                .map(|(_, ops)| ops.len() as u64)
                .sum::<u64>();
        let synced_ids: Vec<NodeId> = synced.iter().map(|&(n, _)| n).collect();
        let source = if synced_ids.contains(&me) { me } else { first };
        let members = self
            .promises
            .iter()
            .filter(|(n, _)| kept(n))
            .map(|(&n, &(inc, _))| (n, inc))
            .collect();
        Some(Plan {
            view: View {
                epoch: electorate.view.epoch + 1,
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
}
