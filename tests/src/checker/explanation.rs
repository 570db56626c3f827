//! Why a key's history has no valid order, in terms a person can check by hand.
//!
//! A failed search reports its deepest point: the longest order of ops it could build, the
//! value the key held after it, and the ops that could have come next, each with the answer
//! the key would have given it instead of the one the client got. Together with a small
//! `core` of ops (see [`shrink`](super::shrink)) this is usually the whole story: "after
//! `set a`, `set b` completed, a `get` that started later returned `a`".

use std::fmt;

use super::history::{Key, Op, OpResult, ResultText, Time};
use super::key_history::KeyHistory;
use super::register::{KeyState, Register, StateId};
use super::search::Failure;

/// Why one key's history admits no valid order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub key: Key,
    /// A small sub-history that already admits no valid order, by invocation time. Each op
    /// keeps its recorded outcome; those that completed after `cut` were treated as
    /// indeterminate (`shrink.rs` says why that is sound).
    pub core: Vec<Op>,
    /// The op whose completion first left the history without a valid order (linearizability
    /// only).
    pub culprit: Option<Op>,
    /// The culprit's completion time.
    pub cut: Option<Time>,
    /// The longest order of `core` ops the search built, first op first.
    pub longest_prefix: Vec<Op>,
    /// Where `core` starts: ops that completed before this time were dropped, and the key
    /// then held an unknown value (see `shrink.rs`). `None`: the key starts absent.
    pub from: Option<Time>,
    /// What the key held after `longest_prefix`.
    pub state_after_prefix: KeyState,
    /// The ops that could have come next, each with the answer the key would have given
    /// (when its state determines one). None of them can get the answer it got.
    pub stuck: Vec<(Op, Option<OpResult>)>,
}

impl Explanation {
    /// The explanation of `failure`, a failed search of `history`. The state after the
    /// longest order is found again by replaying it with every value kept apart (the search
    /// merges values no read returned, see `register.rs`), so it names the value.
    pub(crate) fn new(key: &str, history: &mut KeyHistory, failure: &Failure) -> Self {
        let mut core: Vec<Op> = history.ops.iter().map(|&op| op.clone()).collect();
        core.sort_by_key(|op| (op.invoked, op.id));
        let ops = |positions: &[usize]| -> Vec<Op> {
            positions.iter().map(|&i| history.ops[i].clone()).collect()
        };
        let longest_prefix = ops(&failure.prefix);
        let mut stuck: Vec<(Op, Option<OpResult>)> = ops(&failure.stuck)
            .into_iter()
            .map(|op| (op, None))
            .collect();
        let replayed = replay(history.initial, &longest_prefix, history.register.evictions);
        debug_assert!(replayed.is_some(), "the longest order does not replay");
        let state_after_prefix = match replayed {
            Some((mut register, state)) => {
                for (op, answer) in &mut stuck {
                    let step = register.prepare(&op.kind, None, |_| None);
                    *answer = register.answer(state, step.action);
                }
                register.describe(state)
            }
            None => history.register.describe(failure.state),
        };
        Explanation {
            key: key.to_string(),
            core,
            culprit: None,
            cut: None,
            from: None,
            longest_prefix,
            state_after_prefix,
            stuck,
        }
    }
}

/// The register and state after `ops` in order from `initial`, every value kept apart;
/// `None` if an op cannot get its answer (it could in the search, so that is a bug).
fn replay(initial: StateId, ops: &[Op], evictions: bool) -> Option<(Register, StateId)> {
    let mut register = Register::default();
    register.evictions = evictions;
    let mut state = initial;
    for op in ops {
        let step = register.prepare(&op.kind, op.result(), |_| None);
        state = register.accepts(state, &step)?;
    }
    Some((register, state))
}

/// Shows this many ops at most of each list.
const SHOWN_OPS: usize = 40;

impl Explanation {
    /// Why `op` (of `core`) was judged without its recorded answer, if it was.
    fn note(&self, op: &Op) -> &'static str {
        if op.is_indeterminate() {
            return "";
        }
        if self.from.is_some_and(|from| op.invoked < from) {
            return "  (invoked before the left cut: treated as unknown)";
        }
        match (op.completed(), self.cut) {
            (Some(at), Some(cut)) if at > cut => "  (completed after the right cut: unknown)",
            _ => "",
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "key {:?} admits no valid order", self.key)?;
        if let Some(culprit) = &self.culprit {
            writeln!(f, "  first unexplainable once this op completed: {culprit}")?;
        }
        // Indeterminate ops from before the left cut: they may take effect at any time.
        let (old, recent): (Vec<&Op>, Vec<&Op>) = self
            .core
            .iter()
            .partition(|op| op.is_indeterminate() && self.from.is_some_and(|f| op.invoked < f));
        match self.from {
            Some(from) => writeln!(
                f,
                "  core of {} ops from time {from} on, when the key's value is unknown:",
                recent.len()
            )?,
            None => writeln!(f, "  core of {} ops:", recent.len())?,
        }
        for op in &recent[recent.len().saturating_sub(SHOWN_OPS)..] {
            writeln!(f, "    {op}{}", self.note(op))?;
        }
        if !old.is_empty() {
            let ids: Vec<String> = old.iter().map(|op| format!("#{}", op.id)).collect();
            writeln!(
                f,
                "  and {} earlier ops without a reply, which may take effect any time: {}",
                old.len(),
                ids.join(" ")
            )?;
        }
        let prefix = &self.longest_prefix;
        writeln!(
            f,
            "  longest valid order found ({} ops), last ones:",
            prefix.len()
        )?;
        for op in &prefix[prefix.len().saturating_sub(SHOWN_OPS)..] {
            writeln!(f, "    {op}")?;
        }
        writeln!(f, "  after which the key {}", self.state_after_prefix)?;
        writeln!(f, "  and no op can come next:")?;
        for (op, answer) in &self.stuck {
            match answer {
                Some(answer) => writeln!(
                    f,
                    "    {op}, but the key would answer {}",
                    ResultText(answer)
                )?,
                None => writeln!(f, "    {op}, which the key cannot answer so")?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyState::Absent => write!(f, "is absent"),
            KeyState::Value(v) => write!(f, "holds {v}"),
            KeyState::Unknown => write!(f, "is absent or holds any value"),
            KeyState::SomeValue => write!(f, "holds some value"),
            KeyState::Unread => write!(f, "holds a value no read returned"),
            KeyState::Number(n) => write!(f, "holds {n}, perhaps followed by spaces"),
        }
    }
}
