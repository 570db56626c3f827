//! Shrinking a non-linearizable key history to a small core that is still not linearizable,
//! so a failure names a handful of ops instead of thousands.
//!
//! Only reductions that are sound are used: if the reduced history has no linearization,
//! neither has the original. (Removing a `set` is not one of them: a read of its value would
//! become unexplainable and the "core" would blame a correct history.) In order:
//!
//! 1. **Cut on the right at time `T`.** Keep the ops invoked by `T`; those that completed
//!    after `T` become indeterminate. If the original has a linearization, its determinate
//!    ops completed by `T` all come before every dropped op (invoked after `T`), so the same
//!    order, restricted, linearizes the cut history: the ops it keeps see the same states,
//!    and those turned indeterminate may answer anything. Cutting later keeps more, so
//!    failing is monotone in `T`, and a binary search over completion times (starting with
//!    a guess from the failed search) finds the earliest failing cut. The op completing then
//!    is the *culprit*: the history was explainable until it answered.
//! 2. **Cut on the left at time `F`.** Drop the ops that completed before `F`; those invoked
//!    before `F` and still kept become indeterminate; the key starts `UNKNOWN` (absent or
//!    any value, see [`register`](super::register)) and the search asks whether *some*
//!    starting state explains the rest. If the original has a linearization, take the state
//!    right after its last dropped op: every kept determinate op was invoked after `F`, so
//!    after every dropped op completed, so it comes after that point, and the rest of the
//!    order explains the kept ops from that state (kept ops placed before the point are
//!    indeterminate now, and "never" happening is allowed). Failing is monotone in `F` too:
//!    a binary search finds the latest failing left cut (before the culprit's invocation).
//! 3. **Drop effect-free ops** (a `get`, an `add` that did not store, a `delete` or `incr`
//!    that found nothing or no number). A linearization of the original, minus such an op, is
//!    one of the rest: nobody's state changes. Ops are dropped in halving chunks (all at
//!    once first) while the rest still fails.
//!
//! A search that runs out of budget counts as "not known to fail", so shrinking never turns
//! an unknown into a claim; the caller bounds the steps all searches may take together, and
//! at most [`MAX_CHECKS`] searches run.

use std::cell::Cell;

use super::history::{Op, OpKind, OpResult, Outcome, Time};

/// The most searches one shrink runs.
pub(crate) const MAX_CHECKS: usize = 128;

/// A reduced history to check.
#[derive(Clone, Debug)]
pub(crate) struct Trial {
    /// The kept ops, with the outcomes the cuts gave them.
    pub ops: Vec<Op>,
    /// The left cut: ops completed before it were dropped and the key starts unknown.
    pub from: Option<Time>,
}

/// A smaller history that still fails.
pub(crate) struct Shrunk {
    pub trial: Trial,
    /// The right cut: ops completed after it are indeterminate in `trial`.
    pub cut: Time,
    pub culprit: Op,
}

/// Shrinks `ops`, known to fail (from an absent key), with `fails` saying whether a trial
/// surely fails (`false` when unsure, e.g. out of budget). `guess` is a likely culprit
/// completion time, checked first.
///
/// Searches near the culprit are cheap and far-reaching ones dear (a failing search explores
/// everything before the failure), so the cuts are found from the culprit outwards: first a
/// left cut just before the guessed culprit, then ever earlier ones (doubling the window)
/// until one fails; then the earliest right cut and the latest left cut, each by a binary
/// search within what is known to fail.
pub(crate) fn shrink(
    ops: &[&Op],
    guess: Option<Time>,
    mut fails: impl FnMut(&Trial) -> bool,
) -> Option<Shrunk> {
    let checks = Cell::new(0);
    let mut fails = |trial: &Trial| {
        checks.set(checks.get() + 1);
        checks.get() <= MAX_CHECKS && fails(trial)
    };
    let ends = completion_times(ops.iter().copied(), Time::MAX);
    let last = ends.len().checked_sub(1)?;
    let start = guess.map_or(last, |g| ends.partition_point(|&t| t < g).min(last));
    let (mut at, mut from) = match window(ops, ends[start], &mut fails) {
        Some(from) => (start, from),
        // The last right cut drops only indeterminate ops invoked after every completion,
        // which could all go last in any order: it fails because `ops` does.
        None if start == last => (last, None),
        None => {
            let at = earliest_right(ops, &ends, start + 1, last, None, &mut fails);
            (at, window(ops, ends[at], &mut fails).flatten())
        }
    };
    let first = from.map_or(0, |f| ends.partition_point(|&t| t < f));
    at = earliest_right(ops, &ends, first, at, from, &mut fails);
    let culprit = culprit(ops, ends[at], from);
    from = latest_left(ops, ends[at], &culprit, from, &mut fails);
    let mut trial = cut(ops, ends[at], from);
    drop_effect_free(&mut trial, culprit.id, &mut fails);
    Some(Shrunk {
        trial,
        cut: ends[at],
        culprit,
    })
}

/// The distinct completion times of `ops` before `before`, in order.
fn completion_times<'a>(ops: impl Iterator<Item = &'a Op>, before: Time) -> Vec<Time> {
    let mut times: Vec<Time> = ops
        .filter_map(|op| op.completed())
        .filter(|&t| t < before)
        .collect();
    times.sort_unstable();
    times.dedup();
    times
}

/// `ops` cut on the right at `at` and, if `from` is some, on the left at `from`.
pub(crate) fn cut(ops: &[&Op], at: Time, from: Option<Time>) -> Trial {
    let ops = right(ops, at);
    match from {
        Some(from) => Trial {
            ops: left(&ops, from),
            from: Some(from),
        },
        None => Trial { ops, from: None },
    }
}

/// The op completing at `at` (invoked by `from`, so still determinate), the culprit.
fn culprit(ops: &[&Op], at: Time, from: Option<Time>) -> Op {
    let completing = || ops.iter().filter(|op| op.completed() == Some(at));
    let kept = completing().find(|op| from.is_none_or(|f| op.invoked >= f));
    (*kept
        .or_else(|| completing().next())
        .expect("an op completes then"))
    .clone()
}

/// The left cuts to try with a right cut at `at`: just after each completion before the
/// culprit's invocation, latest first.
fn left_cuts(ops: &[&Op], at: Time) -> Vec<Time> {
    let invoked = culprit(ops, at, None).invoked;
    let mut cuts = completion_times(ops.iter().copied(), invoked);
    cuts.reverse();
    cuts.iter_mut().for_each(|t| *t += 1);
    cuts
}

/// A left cut with which the right cut at `at` fails, trying windows of 1, 2, 4, ...
/// completions before the culprit, and at last no left cut (`Some(None)`); `None` if none
/// fails.
fn window(ops: &[&Op], at: Time, fails: &mut impl FnMut(&Trial) -> bool) -> Option<Option<Time>> {
    let cuts = left_cuts(ops, at);
    let mut width = 1;
    while width <= cuts.len() {
        if fails(&cut(ops, at, Some(cuts[width - 1]))) {
            return Some(Some(cuts[width - 1]));
        }
        width *= 2;
    }
    fails(&cut(ops, at, None)).then_some(None)
}

/// The earliest index in `lo..=hi` of `ends` whose right cut (with left cut `from`) fails,
/// knowing that `hi`'s does.
fn earliest_right(
    ops: &[&Op],
    ends: &[Time],
    mut lo: usize,
    mut hi: usize,
    from: Option<Time>,
    fails: &mut impl FnMut(&Trial) -> bool,
) -> usize {
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&cut(ops, ends[mid], from)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    hi
}

/// The latest left cut before the culprit with which the right cut at `at` fails, knowing
/// that `from` fails.
fn latest_left(
    ops: &[&Op],
    at: Time,
    culprit: &Op,
    from: Option<Time>,
    fails: &mut impl FnMut(&Trial) -> bool,
) -> Option<Time> {
    // Latest first: cuts[..known] are later than `from`, and cuts[known] is `from`.
    let cuts: Vec<Time> = left_cuts(ops, at)
        .into_iter()
        .filter(|&t| t <= culprit.invoked)
        .collect();
    let known = match from {
        Some(from) => cuts.partition_point(|&t| t > from),
        None => cuts.len(),
    };
    // The earliest position in cuts[..known] (latest cut) that fails, if any.
    let (mut lo, mut hi) = (0, known);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if fails(&cut(ops, at, Some(cuts[mid]))) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    cuts.get(lo).copied().filter(|_| lo < known).or(from)
}

/// Drops effect-free ops (but the culprit) while the trial still fails.
fn drop_effect_free(trial: &mut Trial, culprit: usize, fails: &mut impl FnMut(&Trial) -> bool) {
    let mut chunk = droppable(&trial.ops, culprit).len();
    while chunk > 0 {
        let mut start = 0;
        loop {
            let positions = droppable(&trial.ops, culprit);
            if start >= positions.len() {
                break;
            }
            let chunk_positions = &positions[start..(start + chunk).min(positions.len())];
            let smaller = Trial {
                ops: without(&trial.ops, chunk_positions),
                from: trial.from,
            };
            if fails(&smaller) {
                *trial = smaller;
            } else {
                start += chunk;
            }
        }
        chunk /= 2;
    }
}

/// The history cut on the right at `at`: ops invoked by then, those completed later made
/// indeterminate.
fn right(ops: &[&Op], at: Time) -> Vec<Op> {
    ops.iter()
        .filter(|op| op.invoked <= at)
        .map(|&op| {
            let mut op = op.clone();
            if op.completed().is_some_and(|done| done > at) {
                op.outcome = Outcome::Indeterminate;
            }
            op
        })
        .collect()
}

/// The history cut on the left at `from`: ops completed before it dropped, those invoked
/// before it made indeterminate.
fn left(ops: &[Op], from: Time) -> Vec<Op> {
    ops.iter()
        .filter(|op| op.completed().is_none_or(|done| done >= from))
        .map(|op| {
            let mut op = op.clone();
            if op.invoked < from {
                op.outcome = Outcome::Indeterminate;
            }
            op
        })
        .collect()
}

/// Positions in `ops` of completed ops that changed nothing, except the culprit.
fn droppable(ops: &[Op], culprit: usize) -> Vec<usize> {
    ops.iter()
        .enumerate()
        .filter(|(_, op)| op.id != culprit && is_effect_free(op))
        .map(|(i, _)| i)
        .collect()
}

fn is_effect_free(op: &Op) -> bool {
    use OpResult as R;
    matches!(
        (&op.kind, op.result()),
        (OpKind::Get, Some(_))
            | (OpKind::Add(_), Some(R::NotStored))
            | (OpKind::Delete, Some(R::NotFound))
            | (OpKind::Incr(_), Some(R::NotFound | R::NonNumeric))
    )
}

/// `ops` without the ops at `positions` (sorted).
fn without(ops: &[Op], positions: &[usize]) -> Vec<Op> {
    ops.iter()
        .enumerate()
        .filter(|(i, _)| positions.binary_search(i).is_err())
        .map(|(_, op)| op.clone())
        .collect()
}
