//! The model every search shares: one memcached key as a register holding an optional value.
//!
//! Searches try millions of steps, so states are small integers ([`StateId`]): `ABSENT`, an
//! index into the key's table of values (which grows while searching, since `incr` makes
//! numbers nobody wrote), `UNREAD`, or one of the *partly known* states below.
//!
//! `UNREAD` stands for every value that no completed read returned and that is not a number
//! (on a key without `incr`, numbers too), `UNREAD_NUMBER` for such numbers from which
//! increments can only reach numbers nobody was told. Values of one kind behave alike for
//! every op of the history (a `get` cannot have answered them; `add`, `delete` and `incr`
//! see a present value, numeric or not, and no `incr` can have answered what it makes), so
//! merging them changes no verdict and lets the memo see more points as equal.
//!
//! The semantics are memcached's, as the datalets implement them: `add` stores only into an
//! absent key, `delete` and `incr` of an absent key answer `NOT_FOUND`, and `incr` reads the
//! value with `strtoull`, wraps at 2^64, and pads a result shorter than the old value with
//! spaces (memcached rewrites the value in place).
//!
//! # Partly known states
//!
//! A history cut on the left (see [`shrink`](super::shrink)) starts in `UNKNOWN`: absent or
//! holding any value. Ops learn about it as they go: a `get` hit pins the value, an `add`
//! that did not store shows that *some* value is there (`PRESENT`), an `incr` shows a number
//! (a `Number` state: that number followed by any count of spaces, the padding being
//! unknown). The search then asks whether *some* starting state explains the history.
//!
//! An op whose answer is unknown (an indeterminate op) may leave several states; it leaves
//! the least known state covering them all (an `add` on `UNKNOWN` leaves `PRESENT`: its own
//! value or the old one). Covering more than the truth can only make a history look valid.

use std::collections::HashMap;

use tailorkv_common::codec::strtoull;

use super::history::{OpKind, OpResult, Value};

/// A register state: `ABSENT`, `UNKNOWN`, `PRESENT`, or an entry of the key's [`Register`].
pub(crate) type StateId = u32;

/// The key holds nothing.
pub(crate) const ABSENT: StateId = 0;
/// The key is absent or holds any value.
pub(crate) const UNKNOWN: StateId = 1;
/// The key holds some value.
pub(crate) const PRESENT: StateId = 2;
/// The key holds a value that no read of the history returned and that is not a number:
/// which one cannot matter, so all such values are this one state.
pub(crate) const UNREAD: StateId = 3;
/// The key holds a number that no read returned and from which no `incr` of the history
/// can reach a number any op was told: likewise one state.
pub(crate) const UNREAD_NUMBER: StateId = 4;
/// The first state of the key's table.
const FIRST_ENTRY: StateId = 5;

/// An op's request, with values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Set(StateId),
    Get,
    Delete,
    Add(StateId),
    Incr(u64),
}

/// An answer, with values interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    Stored,
    NotStored,
    Hit(StateId),
    Miss,
    Deleted,
    NotFound,
    Incremented(u64),
    NonNumeric,
    /// An answer no op of the history was given (`incr` of `UNREAD_NUMBER`).
    Unobservable,
}

/// An op as the searches see it: what it does, and the answer it must get (`None` for an
/// indeterminate op, which accepts any).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Step {
    pub action: Action,
    pub expect: Option<Reply>,
}

/// What a table entry holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Entry {
    Known(Value),
    /// This number followed by an unknown count of spaces.
    Number(u64),
}

/// One key's table of states and its transition function.
#[derive(Default)]
pub(crate) struct Register {
    /// The store may evict: before any op, the key may have become absent (see
    /// [`Register::accepts`]).
    pub evictions: bool,
    /// `entries[id - FIRST_ENTRY]` is state `id`.
    entries: Vec<Entry>,
    ids: HashMap<Entry, StateId>,
    /// `incr` results already computed on known values, by (state, delta).
    increments: HashMap<(StateId, u64), Option<(StateId, u64)>>,
}

/// A register state described for reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyState {
    Absent,
    Value(Value),
    /// Absent or any value: the state before a left cut.
    Unknown,
    /// Some value, not known.
    SomeValue,
    /// A value no read returned.
    Unread,
    /// This number, perhaps followed by spaces.
    Number(u64),
}

impl Register {
    /// The state holding `value`.
    pub(crate) fn intern(&mut self, value: &Value) -> StateId {
        self.entry(Entry::Known(value.clone()))
    }

    fn entry(&mut self, entry: Entry) -> StateId {
        if let Some(&id) = self.ids.get(&entry) {
            return id;
        }
        self.entries.push(entry.clone());
        let id = StateId::try_from(self.entries.len() - 1).expect("fewer than 2^32 states")
            + FIRST_ENTRY;
        self.ids.insert(entry, id);
        id
    }

    fn get(&self, state: StateId) -> Option<&Entry> {
        let index = state.checked_sub(FIRST_ENTRY)?;
        self.entries.get(index as usize)
    }

    /// What `state` is, for reports.
    pub(crate) fn describe(&self, state: StateId) -> KeyState {
        match (state, self.get(state)) {
            (ABSENT, _) => KeyState::Absent,
            (UNKNOWN, _) => KeyState::Unknown,
            (PRESENT, _) => KeyState::SomeValue,
            (UNREAD | UNREAD_NUMBER, _) => KeyState::Unread,
            (_, Some(Entry::Known(v))) => KeyState::Value(v.clone()),
            (_, Some(Entry::Number(n))) => KeyState::Number(*n),
            (_, None) => unreachable!("state {state} is not in the table"),
        }
    }

    /// An op's kind and result as a search step; `merged` says which written values are
    /// `UNREAD` or `UNREAD_NUMBER`.
    pub(crate) fn prepare(
        &mut self,
        kind: &OpKind,
        result: Option<&OpResult>,
        merged: impl Fn(&Value) -> Option<StateId>,
    ) -> Step {
        let mut written = |v: &Value| merged(v).unwrap_or_else(|| self.intern(v));
        let action = match kind {
            OpKind::Set(v) => Action::Set(written(v)),
            OpKind::Get => Action::Get,
            OpKind::Delete => Action::Delete,
            OpKind::Add(v) => Action::Add(written(v)),
            OpKind::Incr(delta) => Action::Incr(*delta),
        };
        let expect = result.map(|r| match r {
            OpResult::Stored => Reply::Stored,
            OpResult::NotStored => Reply::NotStored,
            OpResult::Hit(v) => Reply::Hit(self.intern(v)),
            OpResult::Miss => Reply::Miss,
            OpResult::Deleted => Reply::Deleted,
            OpResult::NotFound => Reply::NotFound,
            OpResult::Incremented(n) => Reply::Incremented(*n),
            OpResult::NonNumeric => Reply::NonNumeric,
        });
        Step { action, expect }
    }

    /// The state after `step` in `state`, if the step can get its expected answer there.
    ///
    /// With evictions, the key may also have been evicted just before the step: the step is
    /// tried on `ABSENT` too. A step with an answer is accepted by at most one of the two
    /// (each answer tells present from absent) or leaves the same state (`set`). An
    /// indeterminate step may leave two states: when the evicted one is `ABSENT`, an eviction
    /// just after the step covers it (the next step tries `ABSENT`); otherwise (an `add` that
    /// stores only because the key was evicted) the two are covered by `PRESENT`.
    pub(crate) fn accepts(&mut self, state: StateId, step: &Step) -> Option<StateId> {
        let plain = self.accepts_here(state, step);
        if !self.evictions || state == ABSENT || state == UNKNOWN {
            return plain;
        }
        let evicted = self.accepts_here(ABSENT, step);
        match (plain, evicted) {
            (plain, None) => plain,
            (None, evicted) => evicted,
            (Some(p), Some(e)) if e == p || e == ABSENT => Some(p),
            (Some(ABSENT), Some(_)) => Some(UNKNOWN),
            (Some(_), Some(_)) => Some(PRESENT),
        }
    }

    /// [`Register::accepts`] without evictions.
    fn accepts_here(&mut self, state: StateId, step: &Step) -> Option<StateId> {
        match step.expect {
            None => Some(self.effect(state, step.action)),
            Some(expected) if self.is_known(state) => {
                let (next, reply) = self.apply(state, step.action);
                (reply == expected).then_some(next)
            }
            Some(expected) => self.learn(state, step.action, expected),
        }
    }

    /// The state `action` leaves in `state` whatever its answer: for a partly known state,
    /// the least known state covering every possibility.
    pub(crate) fn effect(&mut self, state: StateId, action: Action) -> StateId {
        if self.is_known(state) {
            return self.apply(state, action).0;
        }
        match (action, self.get(state)) {
            (Action::Set(v), _) => v,
            (Action::Delete, _) => ABSENT,
            (Action::Add(_), _) if state == UNKNOWN => PRESENT,
            (Action::Incr(delta), Some(&Entry::Number(n))) => {
                self.entry(Entry::Number(n.wrapping_add(delta)))
            }
            _ => state,
        }
    }

    /// The answer `action` gets in `state`, if the state determines it.
    pub(crate) fn answer(&mut self, state: StateId, action: Action) -> Option<OpResult> {
        if !self.is_known(state) {
            return None;
        }
        let (_, reply) = self.apply(state, action);
        Some(match reply {
            Reply::Stored => OpResult::Stored,
            Reply::NotStored => OpResult::NotStored,
            Reply::Hit(s) => match self.get(s) {
                Some(Entry::Known(v)) => OpResult::Hit(v.clone()),
                _ => return None,
            },
            Reply::Miss => OpResult::Miss,
            Reply::Deleted => OpResult::Deleted,
            Reply::NotFound => OpResult::NotFound,
            Reply::Incremented(n) => OpResult::Incremented(n),
            Reply::NonNumeric => OpResult::NonNumeric,
            Reply::Unobservable => return None,
        })
    }

    /// Whether `state` is absent or a known value (`UNREAD`s count: they act as one).
    fn is_known(&self, state: StateId) -> bool {
        matches!(state, ABSENT | UNREAD | UNREAD_NUMBER)
            || matches!(self.get(state), Some(Entry::Known(_)))
    }

    /// What `action` does in a known state: the next state and the answer.
    fn apply(&mut self, state: StateId, action: Action) -> (StateId, Reply) {
        match (action, state) {
            (Action::Set(v), _) => (v, Reply::Stored),
            (Action::Get, ABSENT) => (ABSENT, Reply::Miss),
            (Action::Get, s) => (s, Reply::Hit(s)),
            (Action::Delete, ABSENT) => (ABSENT, Reply::NotFound),
            (Action::Delete, _) => (ABSENT, Reply::Deleted),
            (Action::Add(v), ABSENT) => (v, Reply::Stored),
            (Action::Add(_), s) => (s, Reply::NotStored),
            (Action::Incr(_), ABSENT) => (ABSENT, Reply::NotFound),
            (Action::Incr(_), UNREAD_NUMBER) => (UNREAD_NUMBER, Reply::Unobservable),
            (Action::Incr(delta), s) => match self.increment(s, delta) {
                Some((next, n)) => (next, Reply::Incremented(n)),
                None => (s, Reply::NonNumeric),
            },
        }
    }

    /// `incr` of a known present value: the new state and number, or `None` if not a number.
    fn increment(&mut self, state: StateId, delta: u64) -> Option<(StateId, u64)> {
        if state == UNREAD {
            return None;
        }
        if let Some(&done) = self.increments.get(&(state, delta)) {
            return done;
        }
        let Some(Entry::Known(old)) = self.get(state) else {
            unreachable!("incr of a known value");
        };
        let old = old.0.clone();
        let done = strtoull(&old).map(|n| {
            let n = n.wrapping_add(delta);
            let mut text = n.to_string().into_bytes();
            if text.len() < old.len() {
                text.resize(old.len(), b' ');
            }
            (self.intern(&Value(text)), n)
        });
        self.increments.insert((state, delta), done);
        done
    }

    /// The state after `action` answered `expected` in a partly known `state`, if it could.
    fn learn(&mut self, state: StateId, action: Action, expected: Reply) -> Option<StateId> {
        let maybe_absent = state == UNKNOWN;
        let number = match self.get(state) {
            Some(&Entry::Number(n)) => Some(n),
            _ => None,
        };
        match (action, expected) {
            (Action::Set(v), Reply::Stored) => Some(v),
            (Action::Get, Reply::Miss)
            | (Action::Delete, Reply::NotFound)
            | (Action::Incr(_), Reply::NotFound) => maybe_absent.then_some(ABSENT),
            (Action::Get, Reply::Hit(v)) => match number {
                Some(n) => self.pads(v, n).then_some(v),
                None => Some(v),
            },
            (Action::Delete, Reply::Deleted) => Some(ABSENT),
            (Action::Add(v), Reply::Stored) => maybe_absent.then_some(v),
            (Action::Add(_), Reply::NotStored) => Some(if maybe_absent { PRESENT } else { state }),
            (Action::Incr(delta), Reply::Incremented(n)) => match number {
                Some(m) if m.wrapping_add(delta) != n => None,
                _ => Some(self.entry(Entry::Number(n))),
            },
            (Action::Incr(_), Reply::NonNumeric) => match number {
                Some(_) => None,
                None => Some(PRESENT),
            },
            _ => None,
        }
    }

    /// Whether known state `v` is number `n` followed by spaces only.
    fn pads(&self, v: StateId, n: u64) -> bool {
        let Some(Entry::Known(value)) = self.get(v) else {
            return false;
        };
        let digits = n.to_string();
        value.0.starts_with(digits.as_bytes()) && value.0[digits.len()..].iter().all(|&b| b == b' ')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(action: Action, expect: Reply) -> Step {
        Step {
            action,
            expect: Some(expect),
        }
    }

    #[test]
    fn incr_wraps_and_pads_like_memcached() {
        let mut r = Register::default();
        let max = r.intern(&Value::from(u64::MAX));
        let (next, reply) = r.apply(max, Action::Incr(2));
        assert_eq!(reply, Reply::Incremented(1));
        assert_eq!(
            r.describe(next),
            KeyState::Value("1                   ".into())
        );
        let word = r.intern(&Value::from("abc"));
        assert_eq!(r.apply(word, Action::Incr(1)), (word, Reply::NonNumeric));
        assert_eq!(r.apply(ABSENT, Action::Incr(1)), (ABSENT, Reply::NotFound));
    }

    #[test]
    fn add_and_delete_depend_on_presence() {
        let mut r = Register::default();
        let a = r.intern(&Value::from("a"));
        let b = r.intern(&Value::from("b"));
        assert_eq!(r.apply(ABSENT, Action::Add(a)), (a, Reply::Stored));
        assert_eq!(r.apply(a, Action::Add(b)), (a, Reply::NotStored));
        assert_eq!(r.apply(a, Action::Delete), (ABSENT, Reply::Deleted));
        assert_eq!(r.apply(ABSENT, Action::Delete), (ABSENT, Reply::NotFound));
    }

    #[test]
    fn an_unknown_start_is_learned_op_by_op() {
        let mut r = Register::default();
        let a = r.intern(&Value::from("a"));
        let padded = r.intern(&Value::from("7  "));
        assert_eq!(
            r.accepts(UNKNOWN, &step(Action::Get, Reply::Miss)),
            Some(ABSENT)
        );
        assert_eq!(r.accepts(PRESENT, &step(Action::Get, Reply::Miss)), None);
        let present = r.accepts(UNKNOWN, &step(Action::Add(a), Reply::NotStored));
        assert_eq!(present, Some(PRESENT));
        assert_eq!(
            r.accepts(PRESENT, &step(Action::Get, Reply::Hit(a))),
            Some(a)
        );
        let five = r.accepts(PRESENT, &step(Action::Incr(2), Reply::Incremented(5)));
        let five = five.expect("some number was there");
        assert_eq!(r.describe(five), KeyState::Number(5));
        let seven = r.accepts(five, &step(Action::Incr(2), Reply::Incremented(7)));
        assert_eq!(
            r.accepts(five, &step(Action::Incr(2), Reply::Incremented(8))),
            None
        );
        let seven = seven.expect("5 + 2");
        assert_eq!(
            r.accepts(seven, &step(Action::Get, Reply::Hit(padded))),
            Some(padded)
        );
        assert_eq!(r.accepts(seven, &step(Action::Get, Reply::Hit(a))), None);
        assert_eq!(r.effect(UNKNOWN, Action::Add(a)), PRESENT);
        assert_eq!(r.effect(UNKNOWN, Action::Incr(1)), UNKNOWN);
        assert_eq!(r.answer(UNKNOWN, Action::Get), None);
    }

    #[test]
    fn unread_values_are_present_non_numbers_no_read_returns() {
        let mut r = Register::default();
        let a = r.intern(&Value::from("a"));
        assert_eq!(r.accepts(UNREAD, &step(Action::Get, Reply::Hit(a))), None);
        assert_eq!(r.accepts(UNREAD, &step(Action::Get, Reply::Miss)), None);
        assert_eq!(r.apply(UNREAD, Action::Add(a)), (UNREAD, Reply::NotStored));
        assert_eq!(
            r.apply(UNREAD, Action::Incr(1)),
            (UNREAD, Reply::NonNumeric)
        );
        assert_eq!(r.apply(UNREAD, Action::Delete), (ABSENT, Reply::Deleted));
        assert_eq!(
            r.apply(ABSENT, Action::Add(UNREAD)),
            (UNREAD, Reply::Stored)
        );
        let number = r.apply(UNREAD_NUMBER, Action::Incr(1));
        assert_eq!(number, (UNREAD_NUMBER, Reply::Unobservable));
        let told = step(Action::Incr(1), Reply::Incremented(5));
        assert_eq!(r.accepts(UNREAD_NUMBER, &told), None);
    }
}
