//! Linearizability of a history of memcached ops, key by key.
//!
//! A history is linearizable when each op can be given one moment between its invocation and
//! its completion (any moment after invocation, or none, for an indeterminate op) so that the
//! ops, taken in the order of those moments, get the answers a single memcached would give.
//!
//! Each key is a separate register and linearizability is compositional (Herlihy & Wing): a
//! history is linearizable exactly when each key's sub-history is. So each key is checked on
//! its own by the [`wgl`](super::wgl) search, with its own step budget, which keeps searches
//! small and lets a failure name one key.
//!
//! The verdict is [`Verdict::Linearizable`] only when every key's search succeeded. A key
//! whose search ran out of budget makes the verdict [`Verdict::Unknown`], never a pass; a key
//! that has no linearization makes it [`Verdict::NotLinearizable`] (which wins over unknowns,
//! since it is a definite finding), with an [`Explanation`] shrunk to a small core.

use super::budget::Deadline;
use std::collections::HashMap;
use std::fmt;

use super::budget::{Budget, Meter, UnknownReason};
use super::explanation::Explanation;
use super::history::{History, Key, Op};
use super::key_history::KeyHistory;
use super::register::UNKNOWN;
use super::search::{Failure, SearchOutcome};
use super::shrink::Trial;
use super::{shrink, wgl};

/// The answer of [`check_linearizable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's ops have a linearization.
    Linearizable,
    /// This key's ops have none.
    NotLinearizable(Box<Explanation>),
    /// No key failed, but this one could not be decided.
    Unknown { key: Key, reason: UnknownReason },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        *self == Verdict::Linearizable
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable(why) => write!(f, "NOT linearizable: {why}"),
            Verdict::Unknown { key, reason } => {
                write!(f, "unknown whether linearizable: key {key:?}: {reason}")
            }
        }
    }
}

/// Checks `history` key by key within `budget`.
///
/// ```
/// use tailorkv_tests::checker::{check_linearizable, Budget, History, OpKind, OpResult};
///
/// let mut h = History::new();
/// h.push_completed(1, "k", OpKind::Set("a".into()), (0, 10), OpResult::Stored);
/// h.push_completed(2, "k", OpKind::Get, (20, 30), OpResult::Miss); // stale: `a` was stored
/// assert!(!check_linearizable(&h, Budget::default()).is_linearizable());
/// ```
pub fn check_linearizable(history: &History, budget: Budget) -> Verdict {
    let deadline = budget.deadline();
    let mut unknown = None;
    for (key, ops) in history.by_key() {
        let mut key_history = KeyHistory::new(&ops);
        key_history.register.evictions = history.evictions();
        let (outcome, steps) = search(&mut key_history, budget.max_steps_per_key, deadline);
        match outcome {
            SearchOutcome::Found => {}
            SearchOutcome::Failed(failure) => {
                let pool = SHRINK_STEPS_PER_STEP * steps + SHRINK_STEPS;
                let why = explain(key, &mut key_history, failure, pool, deadline);
                return Verdict::NotLinearizable(Box::new(why));
            }
            SearchOutcome::Exhausted(reason) => {
                unknown.get_or_insert(Verdict::Unknown {
                    key: key.to_string(),
                    reason,
                });
            }
        }
    }
    unknown.unwrap_or(Verdict::Linearizable)
}

/// Shrinking a failure may take this many steps for each step the search that found it took,
/// plus [`SHRINK_STEPS`]: a failure costs a few times its finding, at most.
const SHRINK_STEPS_PER_STEP: u64 = 4;
const SHRINK_STEPS: u64 = 200_000;

/// Searches one key's ops within `max_steps`; also says how many steps it took.
fn search(
    history: &mut KeyHistory,
    max_steps: u64,
    deadline: Option<Deadline>,
) -> (SearchOutcome, u64) {
    let mut meter = Meter::new(max_steps, deadline);
    let outcome = wgl::search(history, &mut meter);
    (outcome, meter.steps())
}

/// The explanation of `history`'s `failure`: shrunk (within `pool` search steps) when
/// shrinking can show it still fails, else the failure as found.
fn explain(
    key: &str,
    history: &mut KeyHistory,
    failure: Failure,
    mut pool: u64,
    deadline: Option<Deadline>,
) -> Explanation {
    let ops: Vec<&Op> = history.ops.clone();
    let evictions = history.register.evictions;
    let guess = failure
        .stuck
        .iter()
        .filter_map(|&i| history.ops[i].completed())
        .min();
    // The explanation of the last trial that failed, with the ids of its ops.
    let mut last: Option<(Vec<usize>, Explanation)> = None;
    let fails = |trial: &Trial| {
        let ops: Vec<&Op> = trial.ops.iter().collect();
        let mut history = KeyHistory::new(&ops);
        history.register.evictions = evictions;
        if trial.from.is_some() {
            history.initial = UNKNOWN;
        }
        let (outcome, steps) = search(&mut history, pool, deadline);
        pool = pool.saturating_sub(steps);
        let SearchOutcome::Failed(failure) = outcome else {
            return false;
        };
        let ids = trial.ops.iter().map(|op| op.id).collect();
        last = Some((ids, Explanation::new(key, &mut history, &failure)));
        true
    };
    let shrunk = shrink::shrink(&ops, guess, fails);
    let originals: HashMap<usize, &Op> = ops.iter().map(|&op| (op.id, op)).collect();
    match (shrunk, last) {
        (Some(shrunk), Some((ids, mut why)))
            if shrunk
                .trial
                .ops
                .iter()
                .map(|op| op.id)
                .eq(ids.iter().copied()) =>
        {
            why.culprit = Some(shrunk.culprit);
            why.cut = Some(shrunk.cut);
            why.from = shrunk.trial.from;
            with_original_outcomes(why, &originals)
        }
        _ => Explanation::new(key, history, &failure),
    }
}

/// `why` with each op as recorded (the cut made some indeterminate).
fn with_original_outcomes(mut why: Explanation, originals: &HashMap<usize, &Op>) -> Explanation {
    let original = |op: &mut Op| *op = originals[&op.id].clone();
    why.core.iter_mut().for_each(original);
    why.longest_prefix.iter_mut().for_each(original);
    why.stuck.iter_mut().for_each(|(op, _)| original(op));
    why.culprit.iter_mut().for_each(original);
    why
}
