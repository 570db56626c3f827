//! One key's ops, prepared for a search: each op is *required*, *optional* or dropped.
//!
//! - **Required** ops must be linearized, each by its *deadline*: a completed op by its
//!   completion; an indeterminate `set`/`add` whose value a completed `get` returned, by the
//!   earliest such `get`'s completion. (It surely took effect, before every read that saw
//!   it, when its value names it: no other op writes that value and no `incr` can make it.)
//! - **Optional** ops are the other indeterminate ops: each may take effect at any moment
//!   after its invocation, or never. Searches try them last and prune points that used more
//!   of them than a point already seen (see [`memo`](super::memo)).
//! - **Dropped** ops cannot matter, and each one left in would only cost search time.
//!   Dropping op `x` is sound when the history with `x` has a valid order if and only if the
//!   history without it does. "If": put `x` last; its result is unconstrained and nothing
//!   follows it. "Only if": remove `x` from the order; nothing else may change its answer.
//!   That holds for an indeterminate `get` (it changes nothing) and, on a key whose ops are
//!   all `set`s and `get`s, for an indeterminate `set` whose value no completed `get`
//!   returned (the ops between it and the next `set` can only be `get`s, none of which saw
//!   it).
//!
//! Written values that no completed `get` returned are merged into the register's `UNREAD`
//! or `UNREAD_NUMBER` state (see [`register`](super::register)): the searches then see, say,
//! every pending unread `set` as the same action, and the memo as the same state.
//!
//! Ops are indexed required first, by invocation time, then optional: every linearized
//! prefix of a search is then mostly a run of low positions, which keeps memo keys short.

use std::collections::{BTreeSet, HashMap};

use tailorkv_common::codec::strtoull;

use super::history::{Op, OpKind, OpResult, Time, Value};
use super::register::{Register, StateId, Step, ABSENT, UNREAD, UNREAD_NUMBER};

/// A key's ops, their search steps and its register.
pub(crate) struct KeyHistory<'a> {
    /// Required ops by invocation time, then optional ones.
    pub ops: Vec<&'a Op>,
    /// `steps[i]` is `ops[i]` as the register sees it.
    pub steps: Vec<Step>,
    pub register: Register,
    /// `ops[..required]` are the required ops.
    pub required: usize,
    /// `deadlines[i]`: when required op `i` has surely taken effect.
    pub deadlines: Vec<Time>,
    /// The state before any op: `ABSENT`, or `UNKNOWN` for a history cut on the left.
    pub initial: StateId,
}

/// What a search makes of an op.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Required { deadline: Time },
    Optional,
    Dropped,
}

impl<'a> KeyHistory<'a> {
    pub(crate) fn new(ops: &[&'a Op]) -> Self {
        let facts = Facts::new(ops);
        let mut required = Vec::new();
        let mut optional = Vec::new();
        for &op in ops {
            match facts.role(op) {
                Role::Required { deadline } => required.push((op, deadline)),
                Role::Optional => optional.push(op),
                Role::Dropped => {}
            }
        }
        required.sort_by_key(|&(op, deadline)| (op.invoked, deadline, op.id));
        optional.sort_by_key(|op| (op.invoked, op.id));
        let deadlines = required.iter().map(|&(_, deadline)| deadline).collect();
        let count = required.len();
        let ops: Vec<&Op> = required
            .into_iter()
            .map(|(op, _)| op)
            .chain(optional)
            .collect();
        let mut register = Register::default();
        let steps = ops
            .iter()
            .map(|op| register.prepare(&op.kind, op.result(), |v| facts.merged(v)))
            .collect();
        KeyHistory {
            ops,
            steps,
            register,
            required: count,
            deadlines,
            initial: ABSENT,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(crate) fn is_required(&self, index: usize) -> bool {
        index < self.required
    }
}

/// What the key's ops reveal about its values.
struct Facts<'a> {
    only_sets_and_gets: bool,
    has_incr: bool,
    /// How many `set`s and `add`s carry each value.
    writers: HashMap<&'a Value, usize>,
    /// The earliest completion of a `get` that returned each value.
    first_read: HashMap<&'a Value, Time>,
    /// The numbers ops were told: `incr` results and numbers `get`s returned.
    numbers: BTreeSet<u64>,
    /// The sum of every `incr`'s delta (saturating).
    total_delta: u64,
}

impl<'a> Facts<'a> {
    fn new(ops: &[&'a Op]) -> Self {
        let mut writers = HashMap::new();
        let mut first_read = HashMap::new();
        let mut numbers = BTreeSet::new();
        let mut total_delta: u64 = 0;
        for op in ops {
            match (&op.kind, op.result()) {
                (_, Some(OpResult::Incremented(n))) => _ = numbers.insert(*n),
                (_, Some(OpResult::Hit(v))) => numbers.extend(strtoull(&v.0)),
                _ => {}
            }
            if let OpKind::Incr(delta) = op.kind {
                total_delta = total_delta.saturating_add(delta);
            }
            if let OpKind::Set(v) | OpKind::Add(v) = &op.kind {
                *writers.entry(v).or_insert(0) += 1;
            }
            if let (Some(OpResult::Hit(v)), Some(at)) = (op.result(), op.completed()) {
                let first = first_read.entry(v).or_insert(at);
                *first = at.min(*first);
            }
        }
        Facts {
            only_sets_and_gets: ops
                .iter()
                .all(|op| matches!(op.kind, OpKind::Set(_) | OpKind::Get)),
            has_incr: ops.iter().any(|op| matches!(op.kind, OpKind::Incr(_))),
            writers,
            first_read,
            numbers,
            total_delta,
        }
    }

    fn role(&self, op: &Op) -> Role {
        if let Some(deadline) = op.completed() {
            return Role::Required { deadline };
        }
        match &op.kind {
            OpKind::Get => Role::Dropped,
            OpKind::Set(v) if self.only_sets_and_gets && !self.first_read.contains_key(v) => {
                Role::Dropped
            }
            OpKind::Set(v) | OpKind::Add(v) => match self.first_read.get(v) {
                Some(&deadline) if self.names_one_write(v) && deadline >= op.invoked => {
                    Role::Required { deadline }
                }
                _ => Role::Optional,
            },
            _ => Role::Optional,
        }
    }

    /// The register state standing for written value `v` if it is one no completed read
    /// returned: `UNREAD`, or on a key with `incr` and for a number, `UNREAD_NUMBER` if no
    /// number any op was told is within reach of increments from it.
    fn merged(&self, v: &Value) -> Option<StateId> {
        if self.first_read.contains_key(v) {
            return None;
        }
        match strtoull(&v.0).filter(|_| self.has_incr) {
            None => Some(UNREAD),
            Some(n) => {
                let reach = n.checked_add(self.total_delta)?;
                let told = self.numbers.range(n..=reach).next();
                told.is_none().then_some(UNREAD_NUMBER)
            }
        }
    }

    /// Whether a read of `v` can only have seen the one op that writes it.
    fn names_one_write(&self, v: &Value) -> bool {
        self.writers.get(v) == Some(&1) && !(self.has_incr && strtoull(&v.0).is_some())
    }
}
