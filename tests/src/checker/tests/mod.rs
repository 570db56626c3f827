//! The checkers' own tests: hand-written histories whose verdict is known, randomized
//! histories from simulated correct systems (which must pass) and their mutants (which must
//! fail), budgets, and timings.
//!
//! Hand-written histories use [`Script`]: ops on the current key (`"k"` unless
//! [`Script::key`] switched it), each with its client and `(invoked, completed)` times.

mod causal;
mod causal_random;
mod causal_reference;
mod causal_sim;
mod convergence;
mod gen;
mod linearizable;
mod perf;
mod random;
mod recorder;
mod sequential;

use std::sync::{Mutex, MutexGuard};

use super::{ClientId, History, OpKind, OpResult, Time, Value};

/// Serializes the CPU-heavy tests, so the timed ones measure the checker, not contention.
pub(super) fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

/// A history written op by op.
pub(super) struct Script {
    history: History,
    key: String,
}

impl Script {
    pub(super) fn new() -> Self {
        Script {
            history: History::new(),
            key: "k".to_string(),
        }
    }

    /// Later ops are on `key`.
    pub(super) fn key(mut self, key: &str) -> Self {
        self.key = key.to_string();
        self
    }

    fn done(mut self, c: ClientId, kind: OpKind, at: (Time, Time), result: OpResult) -> Self {
        let key = self.key.clone();
        self.history.push_completed(c, key, kind, at, result);
        self
    }

    fn unknown(mut self, c: ClientId, kind: OpKind, invoked: Time) -> Self {
        let key = self.key.clone();
        self.history.push_indeterminate(c, key, kind, invoked);
        self
    }

    pub(super) fn set(self, c: ClientId, v: &str, at: (Time, Time)) -> Self {
        self.done(c, OpKind::Set(v.into()), at, OpResult::Stored)
    }

    pub(super) fn set_unknown(self, c: ClientId, v: &str, invoked: Time) -> Self {
        self.unknown(c, OpKind::Set(v.into()), invoked)
    }

    /// A `get` that returned `seen` (`None`: a miss).
    pub(super) fn get(self, c: ClientId, at: (Time, Time), seen: Option<&str>) -> Self {
        let result = match seen {
            Some(v) => OpResult::Hit(Value::from(v)),
            None => OpResult::Miss,
        };
        self.done(c, OpKind::Get, at, result)
    }

    pub(super) fn get_unknown(self, c: ClientId, invoked: Time) -> Self {
        self.unknown(c, OpKind::Get, invoked)
    }

    pub(super) fn delete(self, c: ClientId, at: (Time, Time), found: bool) -> Self {
        let result = if found {
            OpResult::Deleted
        } else {
            OpResult::NotFound
        };
        self.done(c, OpKind::Delete, at, result)
    }

    pub(super) fn delete_unknown(self, c: ClientId, invoked: Time) -> Self {
        self.unknown(c, OpKind::Delete, invoked)
    }

    pub(super) fn add(self, c: ClientId, v: &str, at: (Time, Time), stored: bool) -> Self {
        let result = if stored {
            OpResult::Stored
        } else {
            OpResult::NotStored
        };
        self.done(c, OpKind::Add(v.into()), at, result)
    }

    /// An `incr` that returned `now` (`None`: not found).
    pub(super) fn incr(self, c: ClientId, delta: u64, at: (Time, Time), now: Option<u64>) -> Self {
        let result = now.map_or(OpResult::NotFound, OpResult::Incremented);
        self.done(c, OpKind::Incr(delta), at, result)
    }

    pub(super) fn incr_non_numeric(self, c: ClientId, delta: u64, at: (Time, Time)) -> Self {
        self.done(c, OpKind::Incr(delta), at, OpResult::NonNumeric)
    }

    pub(super) fn incr_unknown(self, c: ClientId, delta: u64, invoked: Time) -> Self {
        self.unknown(c, OpKind::Incr(delta), invoked)
    }

    /// An `add` whose reply never came.
    pub(super) fn add_unknown(self, c: ClientId, v: &str, invoked: Time) -> Self {
        self.unknown(c, OpKind::Add(v.into()), invoked)
    }

    pub(super) fn build(self) -> History {
        self.history
    }

    /// The history, checked as one from a store that evicts.
    pub(super) fn build_evicting(self) -> History {
        let mut history = self.history;
        history.allow_evictions();
        history
    }
}

/// A history, one op per line.
pub(super) fn show(history: &History) -> String {
    history.ops().iter().map(|op| format!("  {op}\n")).collect()
}
