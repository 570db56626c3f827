//! The history model: what each client asked of which key, when, and what it was told.
//!
//! An [`Op`] is one request: its client, key and [`OpKind`], the time it was invoked, and its
//! [`Outcome`]. A completed op has a completion time and an [`OpResult`]. An indeterminate op
//! (a timeout, a broken connection, a `SERVER_ERROR`) has neither: it may or may not have taken
//! effect, at any moment after its invocation, so the checkers treat its completion as +∞ and
//! its result as unconstrained.
//!
//! Times are any `u64` that orders events: the [`Recorder`](super::Recorder) uses monotonic
//! nanoseconds, hand-written tests use small integers. An op invoked at the very moment another
//! completes counts as concurrent with it (the lenient reading, so a tie never makes a correct
//! history look wrong).

use std::collections::BTreeMap;
use std::fmt;

/// A client, i.e. one connection: its ops are sequential.
pub type ClientId = u32;
/// A moment, in whatever unit the history's recorder uses.
pub type Time = u64;
/// An op's index in its [`History`].
pub type OpId = usize;
/// A memcached key.
pub type Key = String;

/// A stored value: bytes, shown as text when they are UTF-8.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value(pub Vec<u8>);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value(s.into_bytes())
    }
}

impl From<&[u8]> for Value {
    fn from(b: &[u8]) -> Self {
        Value(b.to_vec())
    }
}

/// A number, written in decimal as `incr` reads and writes it.
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value(n.to_string().into_bytes())
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "{:?}", self.0),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What an op asks of its key, with memcached's meaning.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `set`: store the value. Always [`OpResult::Stored`].
    Set(Value),
    /// `get`: [`OpResult::Hit`] or [`OpResult::Miss`].
    Get,
    /// `delete`: [`OpResult::Deleted`], or [`OpResult::NotFound`] when absent.
    Delete,
    /// `add`: store only if absent: [`OpResult::Stored`] or [`OpResult::NotStored`].
    Add(Value),
    /// `incr`: add to the decimal number stored: [`OpResult::Incremented`] with the new number,
    /// [`OpResult::NotFound`] when absent, [`OpResult::NonNumeric`] when not a number.
    Incr(u64),
}

/// What an op was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    Stored,
    NotStored,
    Hit(Value),
    Miss,
    Deleted,
    NotFound,
    Incremented(u64),
    NonNumeric,
}

impl OpKind {
    /// Whether `result` is a possible answer to this kind of op.
    pub fn admits(&self, result: &OpResult) -> bool {
        use OpResult as R;
        match self {
            OpKind::Set(_) => matches!(result, R::Stored),
            OpKind::Get => matches!(result, R::Hit(_) | R::Miss),
            OpKind::Delete => matches!(result, R::Deleted | R::NotFound),
            OpKind::Add(_) => matches!(result, R::Stored | R::NotStored),
            OpKind::Incr(_) => matches!(result, R::Incremented(_) | R::NotFound | R::NonNumeric),
        }
    }
}

/// How an op ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client got `result` at time `at`.
    Completed { at: Time, result: OpResult },
    /// No answer: the op may have taken effect, at any time after its invocation, or never.
    Indeterminate,
}

/// One request of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub id: OpId,
    pub client: ClientId,
    pub key: Key,
    pub kind: OpKind,
    pub invoked: Time,
    pub outcome: Outcome,
}

impl Op {
    /// When the answer came, if one did.
    pub fn completed(&self) -> Option<Time> {
        match self.outcome {
            Outcome::Completed { at, .. } => Some(at),
            Outcome::Indeterminate => None,
        }
    }

    /// The answer, if one came.
    pub fn result(&self) -> Option<&OpResult> {
        match &self.outcome {
            Outcome::Completed { result, .. } => Some(result),
            Outcome::Indeterminate => None,
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        self.outcome == Outcome::Indeterminate
    }

    /// Panics unless the op is well formed: a result its kind admits, completed no earlier
    /// than invoked.
    fn validate(&self) {
        if let Outcome::Completed { at, result } = &self.outcome {
            assert!(
                self.kind.admits(result),
                "op {self}: a {:?} cannot answer {result:?}",
                self.kind
            );
            assert!(*at >= self.invoked, "op {self}: completed before invoked");
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{} c{} [{}, ", self.id, self.client, self.invoked)?;
        match self.completed() {
            Some(at) => write!(f, "{at}]")?,
            None => write!(f, "?]")?,
        }
        match &self.kind {
            OpKind::Set(v) => write!(f, " set {:?} {v}", self.key)?,
            OpKind::Get => write!(f, " get {:?}", self.key)?,
            OpKind::Delete => write!(f, " delete {:?}", self.key)?,
            OpKind::Add(v) => write!(f, " add {:?} {v}", self.key)?,
            OpKind::Incr(d) => write!(f, " incr {:?} {d}", self.key)?,
        }
        match self.result() {
            Some(result) => write!(f, " -> {}", ResultText(result)),
            None => write!(f, " -> indeterminate"),
        }
    }
}

/// An [`OpResult`] as a short text: `Stored`, `Hit("a")`, `Miss`, ...
pub(crate) struct ResultText<'a>(pub &'a OpResult);

impl fmt::Display for ResultText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            OpResult::Hit(v) => write!(f, "Hit({v})"),
            OpResult::Incremented(n) => write!(f, "Incremented({n})"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// Every op of a test run, in the order they were invoked or added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    ops: Vec<Op>,
    /// The store may evict: any key may become absent between ops (see
    /// [`History::allow_evictions`]).
    evictions: bool,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Checks this history against a store that evicts: a memcached key may become absent
    /// at any point, on its own, as a full cache evicts it. The checkers then accept a miss
    /// (or an `add` that stores, a `delete` or `incr` that finds nothing) where the key held
    /// a value; what they still refuse is a value coming back after a miss, or any value no
    /// write left, or (linearizable) an order that real time forbids.
    pub fn allow_evictions(&mut self) {
        self.evictions = true;
    }

    /// Whether [`History::allow_evictions`] was called.
    pub fn evictions(&self) -> bool {
        self.evictions
    }

    /// A history of `ops`, renumbered by position. Panics on a malformed op.
    pub fn from_ops(mut ops: Vec<Op>) -> Self {
        for (id, op) in ops.iter_mut().enumerate() {
            op.id = id;
            op.validate();
        }
        History {
            ops,
            evictions: false,
        }
    }

    /// Adds an op and returns its id. Panics on a malformed op.
    pub fn push(
        &mut self,
        client: ClientId,
        key: impl Into<Key>,
        kind: OpKind,
        invoked: Time,
        outcome: Outcome,
    ) -> OpId {
        let op = Op {
            id: self.ops.len(),
            client,
            key: key.into(),
            kind,
            invoked,
            outcome,
        };
        op.validate();
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Adds an op that completed at `completed` with `result`.
    pub fn push_completed(
        &mut self,
        client: ClientId,
        key: impl Into<Key>,
        kind: OpKind,
        (invoked, completed): (Time, Time),
        result: OpResult,
    ) -> OpId {
        let outcome = Outcome::Completed {
            at: completed,
            result,
        };
        self.push(client, key, kind, invoked, outcome)
    }

    /// Adds an op that got no answer.
    pub fn push_indeterminate(
        &mut self,
        client: ClientId,
        key: impl Into<Key>,
        kind: OpKind,
        invoked: Time,
    ) -> OpId {
        self.push(client, key, kind, invoked, Outcome::Indeterminate)
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops of each key, keys in order, each key's ops in history order.
    pub fn by_key(&self) -> BTreeMap<&str, Vec<&Op>> {
        let mut keys: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
        for op in &self.ops {
            keys.entry(op.key.as_str()).or_default().push(op);
        }
        keys
    }
}
