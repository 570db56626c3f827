//! The Wing & Gong linearizability search with Lowe's improvements (WGL), for one key.
//!
//! # How it works
//!
//! Every required op (see [`key_history`](super::key_history)) becomes two entries, its call
//! at its invocation and its return at its deadline, in one doubly linked list sorted by time
//! (calls before returns at equal times, so touching ops are concurrent). The search walks
//! the list from the front:
//!
//! - At a **call**, it tries to linearize that op now: if the register gives the op the
//!   answer it got, and the memo has not seen the resulting point, it pushes the op and the
//!   state before it on a stack, *lifts* the op's two entries out of the list, and starts
//!   again from the front.
//! - At a **return**, that op had to be linearized already and was not: every op whose call
//!   precedes it has been tried at this point. Before giving up on the point, the search
//!   tries each **optional** op invoked by then, the same way (they are not in the list).
//!   Then it pops the last linearized op, puts its entries back (*unlifts* them), restores
//!   the state, and moves on to the next candidate after that op. An empty stack means no
//!   linearization exists.
//!
//! Ops are thus linearized "just in time": only ops invoked before the earliest pending
//! deadline are candidates, which is exactly real-time order. The search succeeds once every
//! required op is linearized: optional ops left over are linearized last, or never, which
//! is the same thing, since their results are unconstrained.
//!
//! Lifting and unlifting are the "dancing links" trick: an unlinked entry keeps its own
//! pointers, so it can be relinked in O(1) as long as entries are relinked in the reverse
//! order of their unlinking, which the stack guarantees.

use super::budget::Meter;
use super::entry_list::{Entry, EntryList};
use super::history::Time;
use super::key_history::KeyHistory;
use super::memo::{Bits, Memo};
use super::register::{Action, StateId};
use super::search::{Deepest, SearchOutcome};

/// Where the search goes on.
#[derive(Clone, Copy, Debug)]
enum Cursor {
    /// At this list entry.
    Entry(usize),
    /// Stuck at return entry `ret`: trying optional ops, from the `next`-th on.
    Optional { ret: usize, next: usize },
}

/// How a linearized op was placed, to undo it.
#[derive(Clone, Copy, Debug)]
enum Placed {
    Listed { call: usize, ret: usize },
    Optional { ret: usize, index: usize },
}

/// A linearized op on the search stack.
struct Linearized {
    placed: Placed,
    op: usize,
    /// The register state before the op.
    before: StateId,
}

/// The search's position: what is linearized, and the state after it.
struct Point {
    required: Bits,
    optional: Bits,
    state: StateId,
    stack: Vec<Linearized>,
}

/// Searches for a linearization of one key's ops.
pub(crate) fn search(history: &mut KeyHistory, meter: &mut Meter) -> SearchOutcome {
    let mut list = EntryList::new(history);
    let optional: Vec<usize> = (history.required..history.len()).collect();
    let mut memo = Memo::default();
    let mut deepest = Deepest::new(history.initial, list.candidates());
    let mut at = Point {
        required: Bits::new(history.required),
        optional: Bits::new(optional.len()),
        state: history.initial,
        stack: Vec::new(),
    };
    let mut pending = history.required;
    let mut cursor = Cursor::Entry(list.first());
    while pending > 0 {
        if let Err(reason) = meter.step() {
            return SearchOutcome::Exhausted(reason);
        }
        cursor = match cursor {
            Cursor::Entry(e) => match list.entries[e] {
                Entry::Call { op, ret } => {
                    let placed = Placed::Listed { call: e, ret };
                    if try_place(history, &mut memo, &mut at, op, placed) {
                        list.lift(e, ret);
                        pending -= 1;
                        let depth = history.required - pending;
                        let prefix = || at.stack.iter().map(|l| l.op).collect();
                        deepest.offer(depth, prefix, at.state, || list.candidates());
                        Cursor::Entry(list.first())
                    } else {
                        Cursor::Entry(list.next[e])
                    }
                }
                Entry::Return { .. } => Cursor::Optional { ret: e, next: 0 },
                Entry::Head => unreachable!("the head is never after another entry"),
            },
            Cursor::Optional { ret, next } => {
                let Entry::Return { at: by } = list.entries[ret] else {
                    unreachable!("optional ops are tried at a return");
                };
                let untried = next_optional(history, &list, &memo, &mut at, &optional, next, by);
                match untried {
                    Some(index) => {
                        let placed = Placed::Optional { ret, index };
                        if try_place(history, &mut memo, &mut at, optional[index], placed) {
                            Cursor::Entry(list.first())
                        } else {
                            Cursor::Optional {
                                ret,
                                next: index + 1,
                            }
                        }
                    }
                    None => {
                        let Some(last) = at.stack.pop() else {
                            return SearchOutcome::Failed(deepest.into_failure());
                        };
                        at.state = last.before;
                        match last.placed {
                            Placed::Listed { call, ret } => {
                                at.mark(last.placed, last.op, false);
                                list.unlift(call, ret);
                                pending += 1;
                                Cursor::Entry(list.next[call])
                            }
                            Placed::Optional { ret, index } => {
                                at.mark(last.placed, last.op, false);
                                Cursor::Optional {
                                    ret,
                                    next: index + 1,
                                }
                            }
                        }
                    }
                }
            }
        };
    }
    SearchOutcome::Found
}

/// Linearizes `op` at point `at` if the register gives it its answer and the memo has not
/// seen the point it leads to; `false` (and `at` unchanged) otherwise.
fn try_place(
    history: &mut KeyHistory,
    memo: &mut Memo,
    at: &mut Point,
    op: usize,
    placed: Placed,
) -> bool {
    let Some(next) = history.register.accepts(at.state, &history.steps[op]) else {
        return false;
    };
    at.mark(placed, op, true);
    if !memo.insert(&at.required, &at.optional, next) {
        at.mark(placed, op, false);
        return false;
    }
    at.stack.push(Linearized {
        placed,
        op,
        before: at.state,
    });
    at.state = next;
    true
}

/// The next optional op worth trying at a stuck point (its index in `optional`), from the
/// `next`-th on: invoked by `by`, not placed yet, and able to lead somewhere new. Each rule
/// skips only ops whose branch would be pruned or stuck at once:
///
/// - A *blind* op (`set`, `delete`: it leaves the same state whatever the state was) is not
///   tried right after another optional op. The pair leaves the state the blind op alone
///   leaves, with one optional op more, and the blind op alone is tried at the same point
///   too (before or after, by index order), so its branch covers the pair's.
/// - An op that leaves the state as it was is not tried: the memo would prune it.
/// - Of optional ops with the same action (after values no read returned are merged, see
///   [`register`](super::register)), only the first open one is tried: the others are open
///   now and stay open, so any branch using one of them has a twin using the first.
/// - An op is tried only if [`leads_on`] from the state it leaves.
fn next_optional(
    history: &mut KeyHistory,
    list: &EntryList,
    memo: &Memo,
    at: &mut Point,
    optional: &[usize],
    next: usize,
    by: Time,
) -> Option<usize> {
    let after_optional = at
        .stack
        .last()
        .is_some_and(|l| matches!(l.placed, Placed::Optional { .. }));
    let open: Vec<usize> = (0..optional.len())
        .take_while(|&i| history.ops[optional[i]].invoked <= by)
        .filter(|&i| !at.optional.contains(i))
        .collect();
    if open.last().is_none_or(|&i| i < next) {
        return None;
    }
    let mut look = Lookahead {
        base: at.state,
        candidates: list.candidates(),
        open,
        optional,
    };
    for k in 0..look.open.len() {
        let i = look.open[k];
        if i < next
            || (after_optional && is_blind(history, optional[i]))
            || !look.first_of_kind(history, at, i)
        {
            continue;
        }
        let state = history
            .register
            .effect(at.state, history.steps[optional[i]].action);
        if state != at.state && look.leads_on(history, memo, at, i, state, 0) {
            return Some(i);
        }
    }
    None
}

/// How far [`Lookahead::leads_on`] follows chains of optional ops before assuming they lead
/// somewhere.
const LOOKAHEAD_DEPTH: usize = 2;

/// What may follow an optional op at a stuck point.
struct Lookahead<'a> {
    /// The state at the stuck point.
    base: StateId,
    /// The required ops that may come next.
    candidates: Vec<usize>,
    /// Indices (in `optional`) of the optional ops invoked by now and not placed.
    open: Vec<usize>,
    optional: &'a [usize],
}

impl Lookahead<'_> {
    /// Whether open optional op `i` is the first open one (not placed at `at`) with its
    /// action. The others are open now and stay open, so a branch using one of them has a
    /// twin using the first.
    fn first_of_kind(&self, history: &KeyHistory, at: &Point, i: usize) -> bool {
        let action = history.steps[self.optional[i]].action;
        !self
            .open
            .iter()
            .take_while(|&&j| j < i)
            .any(|&j| !at.optional.contains(j) && history.steps[self.optional[j]].action == action)
    }

    /// Whether, with optional op `i` just placed (leaving `state`), something could follow:
    /// a required candidate that fits `state` and leads to a point the memo does not cover,
    /// or another optional op, not blind, that changes `state` and itself leads on (followed
    /// up to [`LOOKAHEAD_DEPTH`] ops deep, beyond which it is assumed to). Otherwise every
    /// move after `i` is refused, pruned, or a blind op right after an optional one.
    fn leads_on(
        &mut self,
        history: &mut KeyHistory,
        memo: &Memo,
        at: &mut Point,
        i: usize,
        state: StateId,
        depth: usize,
    ) -> bool {
        at.optional.insert(i);
        let mut fits = false;
        for &c in &self.candidates {
            let after = history.register.accepts(state, &history.steps[c]);
            // The candidate was tried at the stuck point: if it led to the same state from
            // there, the memo covers this point already (it has fewer optional ops).
            let base = history.register.accepts(self.base, &history.steps[c]);
            if let Some(after) = after.filter(|&after| base != Some(after)) {
                at.required.insert(c);
                fits = !memo.covers(&at.required, &at.optional, after);
                at.required.remove(c);
                if fits {
                    break;
                }
            }
        }
        let leads =
            fits || depth == LOOKAHEAD_DEPTH || self.chains_on(history, memo, at, state, depth);
        at.optional.remove(i);
        leads
    }

    /// Whether an open optional op, not blind, changes `state` and leads on from there.
    fn chains_on(
        &mut self,
        history: &mut KeyHistory,
        memo: &Memo,
        at: &mut Point,
        state: StateId,
        depth: usize,
    ) -> bool {
        for k in 0..self.open.len() {
            let j = self.open[k];
            let op = self.optional[j];
            if at.optional.contains(j)
                || is_blind(history, op)
                || !self.first_of_kind(history, at, j)
            {
                continue;
            }
            let next = history.register.effect(state, history.steps[op].action);
            if next != state && self.leads_on(history, memo, at, j, next, depth + 1) {
                return true;
            }
        }
        false
    }
}

/// Whether `op` leaves the same state whatever the state was: a `set` or a `delete`.
fn is_blind(history: &KeyHistory, op: usize) -> bool {
    matches!(history.steps[op].action, Action::Set(_) | Action::Delete)
}

impl Point {
    /// Adds `op` to, or removes it from, the linearized set.
    fn mark(&mut self, placed: Placed, op: usize, member: bool) {
        let (set, i) = match placed {
            Placed::Listed { .. } => (&mut self.required, op),
            Placed::Optional { index, .. } => (&mut self.optional, index),
        };
        if member {
            set.insert(i);
        } else {
            set.remove(i);
        }
    }
}
