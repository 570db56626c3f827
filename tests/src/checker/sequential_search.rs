//! Sequential consistency of small histories, key by key, by exhaustive search.
//!
//! A key's history is sequentially consistent when its ops can be put in one order that
//! keeps each client's ops in the client's order and gives every op the answer it got.
//! Real time is ignored: a read may be ordered before a write that completed long before it.
//! An indeterminate op must come after its client's earlier ops (it was sent after their
//! replies) but need not come before the client's later ones (its connection died, the next
//! op went out on a new one), and it may also never take effect.
//!
//! The search is a depth-first search over orders with the same memo as WGL: a point of the
//! search is the set of ops placed and the register state. Without real time to narrow the
//! candidates, the search space is far larger than for linearizability, so this is for small
//! histories (tens of ops per key); [`check_write_order`](super::check_write_order) is the
//! scalable check for the sequential mode.
//!
//! Caveat: unlike linearizability, sequential consistency is not compositional. A history
//! whose every key passes may still have no single order across keys; this checks each key.

use std::collections::BTreeMap;
use std::fmt;

use super::budget::{Budget, Meter, UnknownReason};
use super::explanation::Explanation;
use super::history::{ClientId, History, Key, Op};
use super::key_history::KeyHistory;
use super::memo::{Bits, Memo};
use super::register::StateId;
use super::search::{Deepest, SearchOutcome};

/// The answer of [`check_sequential`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SequentialVerdict {
    /// Every key's ops have an order that respects each client's order.
    SequentiallyConsistent,
    /// This key's ops have none.
    NotSequentiallyConsistent(Box<Explanation>),
    /// No key failed, but this one could not be decided.
    Unknown { key: Key, reason: UnknownReason },
}

impl SequentialVerdict {
    pub fn is_consistent(&self) -> bool {
        *self == SequentialVerdict::SequentiallyConsistent
    }
}

impl fmt::Display for SequentialVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SequentialVerdict::SequentiallyConsistent => write!(f, "sequentially consistent"),
            SequentialVerdict::NotSequentiallyConsistent(why) => {
                write!(f, "NOT sequentially consistent: {why}")
            }
            SequentialVerdict::Unknown { key, reason } => {
                write!(
                    f,
                    "unknown whether sequentially consistent: key {key:?}: {reason}"
                )
            }
        }
    }
}

/// Checks each key of `history` for sequential consistency within `budget`.
pub fn check_sequential(history: &History, budget: Budget) -> SequentialVerdict {
    let deadline = budget.deadline();
    let mut unknown = None;
    for (key, ops) in history.by_key() {
        let mut key_history = KeyHistory::new(&ops);
        key_history.register.evictions = history.evictions();
        match search(
            &mut key_history,
            &mut Meter::new(budget.max_steps_per_key, deadline),
        ) {
            SearchOutcome::Found => {}
            SearchOutcome::Failed(failure) => {
                let why = Explanation::new(key, &mut key_history, &failure);
                return SequentialVerdict::NotSequentiallyConsistent(Box::new(why));
            }
            SearchOutcome::Exhausted(reason) => {
                unknown.get_or_insert(SequentialVerdict::Unknown {
                    key: key.to_string(),
                    reason,
                });
            }
        }
    }
    unknown.unwrap_or(SequentialVerdict::SequentiallyConsistent)
}

/// A point of the depth-first search.
struct Frame {
    state: StateId,
    /// Ops that may be placed next here: required ones first, optional ones last.
    candidates: Vec<usize>,
    /// The next candidate to try.
    next: usize,
    /// The op placed to reach this point (none at the root).
    placed: Option<usize>,
}

/// The ops placed so far: required ones, and optional ones (numbered from 0).
struct Placed {
    required: Bits,
    optional: Bits,
    boundary: usize,
}

impl Placed {
    fn contains(&self, op: usize) -> bool {
        match op.checked_sub(self.boundary) {
            None => self.required.contains(op),
            Some(i) => self.optional.contains(i),
        }
    }

    fn mark(&mut self, op: usize, member: bool) {
        let (set, i) = match op.checked_sub(self.boundary) {
            None => (&mut self.required, op),
            Some(i) => (&mut self.optional, i),
        };
        if member {
            set.insert(i);
        } else {
            set.remove(i);
        }
    }
}

fn search(history: &mut KeyHistory, meter: &mut Meter) -> SearchOutcome {
    let after = program_order(&history.ops);
    let required = history.required;
    let mut placed = Placed {
        required: Bits::new(required),
        optional: Bits::new(history.len() - required),
        boundary: required,
    };
    let mut memo = Memo::default();
    let root = candidates(&after, &placed);
    let mut deepest = Deepest::new(history.initial, only_required(&root, required));
    let mut stack = vec![Frame {
        state: history.initial,
        candidates: root,
        next: 0,
        placed: None,
    }];
    let mut pending = required;
    while pending > 0 {
        if let Err(reason) = meter.step() {
            return SearchOutcome::Exhausted(reason);
        }
        let frame = stack
            .last_mut()
            .expect("the root stays until the search fails");
        if let Some(&op) = frame.candidates.get(frame.next) {
            frame.next += 1;
            let state = frame.state;
            let Some(next) = history.register.accepts(state, &history.steps[op]) else {
                continue;
            };
            placed.mark(op, true);
            if !memo.insert(&placed.required, &placed.optional, next) {
                placed.mark(op, false);
                continue;
            }
            pending -= usize::from(history.is_required(op));
            stack.push(Frame {
                state: next,
                candidates: candidates(&after, &placed),
                next: 0,
                placed: Some(op),
            });
            let order = || stack.iter().filter_map(|f| f.placed).collect();
            let stuck = || only_required(&stack.last().expect("just pushed").candidates, required);
            deepest.offer(required - pending, order, next, stuck);
        } else {
            let done = stack.pop().expect("the root stays until the search fails");
            let Some(op) = done.placed else {
                return SearchOutcome::Failed(deepest.into_failure());
            };
            placed.mark(op, false);
            pending += usize::from(history.is_required(op));
        }
    }
    SearchOutcome::Found
}

/// For each op, the client's latest determinate op invoked before it: it must be placed
/// first.
fn program_order(ops: &[&Op]) -> Vec<Option<usize>> {
    let mut by_client: BTreeMap<ClientId, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_client.entry(op.client).or_default().push(i);
    }
    let mut after = vec![None; ops.len()];
    for mut mine in by_client.into_values() {
        mine.sort_by_key(|&i| (ops[i].invoked, ops[i].id));
        let mut last_determinate = None;
        for i in mine {
            after[i] = last_determinate;
            if !ops[i].is_indeterminate() {
                last_determinate = Some(i);
            }
        }
    }
    after
}

/// The unplaced ops whose client's earlier determinate ops are all placed, in index order:
/// required ones first.
fn candidates(after: &[Option<usize>], placed: &Placed) -> Vec<usize> {
    (0..after.len())
        .filter(|&i| !placed.contains(i) && after[i].is_none_or(|p| placed.contains(p)))
        .collect()
}

fn only_required(candidates: &[usize], required: usize) -> Vec<usize> {
    candidates
        .iter()
        .copied()
        .filter(|&i| i < required)
        .collect()
}
