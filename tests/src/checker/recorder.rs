//! Recording a history from concurrent test clients.
//!
//! A client calls [`Recorder::invoke`] just before it sends a request and
//! [`Recorder::complete`] just after the reply arrives, or [`Recorder::fail`] when none will
//! (timeout, broken connection, `SERVER_ERROR`). Times are monotonic nanoseconds since the
//! recorder was made, taken under the recorder's lock and made strictly increasing, so the
//! recorded order of events is the order in which the lock saw them: an invocation recorded
//! after a completion really happened after it.
//!
//! ```
//! use tailorkv_tests::checker::{OpKind, OpResult, Recorder};
//!
//! let recorder = Recorder::new();
//! let id = recorder.invoke(1, "k", OpKind::Set("a".into()));
//! // ... send `set k 0 0 1\r\na\r\n`, read `STORED\r\n` ...
//! recorder.complete(id, OpResult::Stored);
//! let history = recorder.history();
//! assert_eq!(history.len(), 1);
//! ```

use std::sync::Mutex;
use std::time::Instant;

use super::history::{ClientId, History, Key, Op, OpId, OpKind, OpResult, Outcome, Time};

/// A thread-safe log of ops; share it by reference (or in an `Arc`) between client threads.
pub struct Recorder {
    start: Instant,
    inner: Mutex<Inner>,
}

struct Inner {
    ops: Vec<Op>,
    /// Whether each op still awaits `complete` or `fail`.
    pending: Vec<bool>,
    last: Time,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            inner: Mutex::new(Inner {
                ops: Vec::new(),
                pending: Vec::new(),
                last: 0,
            }),
        }
    }

    /// Records that `client` is about to send `kind` for `key`.
    pub fn invoke(&self, client: ClientId, key: impl Into<Key>, kind: OpKind) -> OpId {
        let mut inner = self.lock();
        let invoked = self.now(&mut inner);
        let id = inner.ops.len();
        inner.ops.push(Op {
            id,
            client,
            key: key.into(),
            kind,
            invoked,
            outcome: Outcome::Indeterminate,
        });
        inner.pending.push(true);
        id
    }

    /// Records the reply to op `id`. Panics if `id` was already settled or if its kind cannot
    /// answer `result`.
    pub fn complete(&self, id: OpId, result: OpResult) {
        let mut inner = self.lock();
        let at = self.now(&mut inner);
        Self::settle(&mut inner, id);
        let op = &mut inner.ops[id];
        assert!(
            op.kind.admits(&result),
            "op {op}: a {:?} cannot answer {result:?}",
            op.kind
        );
        op.outcome = Outcome::Completed { at, result };
    }

    /// Records that op `id` will get no reply: its effect is unknown.
    pub fn fail(&self, id: OpId) {
        Self::settle(&mut self.lock(), id);
    }

    /// Everything recorded so far; ops still awaiting a reply are indeterminate.
    pub fn history(&self) -> History {
        History::from_ops(self.lock().ops.clone())
    }

    fn settle(inner: &mut Inner, id: OpId) {
        assert!(id < inner.ops.len(), "op #{id} was never invoked");
        assert!(inner.pending[id], "op #{id} settled twice");
        inner.pending[id] = false;
    }

    /// Nanoseconds since `start`, strictly after every time handed out before.
    fn now(&self, inner: &mut Inner) -> Time {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        inner.last = elapsed.max(inner.last + 1);
        inner.last
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A client thread that panicked mid-record leaves consistent data behind.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
