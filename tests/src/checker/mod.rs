//! Consistency checkers for recorded client histories: one checker per guarantee.
//!
//! Cluster tests record what their clients asked and were told (a [`History`], via a
//! [`Recorder`]) and then check it against the guarantee of the mode under test:
//!
//! | mode | checker | question |
//! |---|---|---|
//! | linearizable | [`check_linearizable`] | is there one order of all ops, within their real-time intervals, that explains every answer? |
//! | sequential | [`check_write_order`] | is there one order of each key's writes that no client ever goes back in? |
//! | sequential (small runs) | [`check_sequential`] | is there one order per key that keeps each client's order and explains every answer? |
//! | causal | [`check_causal`] | does every read return what its causal past (session order and reads-from) allows? |
//! | eventual | [`check_converged`] | do all replicas hold the same items, each key its highest-version write? |
//!
//! A store that evicts ([`History::allow_evictions`], [`check_converged_evicting`]) may make any
//! key absent at any point: the checkers then accept misses where a value was, and still
//! refuse a value coming back after a miss, a stale or invented value, and (linearizable) an
//! order real time forbids.
//!
//! The searching checkers answer "unknown" when their [`Budget`] runs out, never "pass". A
//! failure comes with an explanation small enough to check by hand.
//!
//! # Indeterminate ops
//!
//! An op without a reply (timeout, broken connection, `SERVER_ERROR`) may have taken effect
//! at any moment after its invocation, or never: its completion is +∞ and its answer is
//! unconstrained. Record it with [`Recorder::fail`] (or leave it pending); never drop it,
//! and never record it as completed. The searches treat such ops as *optional*; those that
//! cannot matter are dropped, and a write whose value a read returned becomes *required*
//! by that read (`key_history.rs`).
//!
//! # Cost
//!
//! A few thousand ops per key from a handful of clients check in milliseconds (release) to
//! tens of milliseconds (debug); a violation costs more, since proving that no order exists
//! means exploring every order up to it. The hard case is many concurrent clients on one key
//! *and* many ops without a reply that change what later reads see, above all `incr`s on a
//! counter: which of them happened before each read is a subset-sum question. When such a
//! check comes back unknown, record fewer ops per key, spread them over more keys, or raise
//! the budget.
//!
//! # Layout
//!
//! - `history.rs`: ops, results, histories; indeterminate ops (no reply) have no completion.
//! - `recorder.rs`: a thread-safe recorder for concurrent test clients.
//! - `register.rs`: the model all searches share: a memcached key as an optional-value register.
//! - `key_history.rs`: one key's ops prepared for a search; harmless indeterminate ops dropped.
//! - `memo.rs`, `search.rs`: the searches' memo of visited (op set, state) pairs; outcomes.
//! - `wgl.rs`, `entry_list.rs`: the Wing & Gong / Lowe linearizability search for one key.
//! - `linearizable.rs`: per-key linearizability and its [`Verdict`].
//! - `shrink.rs`, `explanation.rs`: shrinking a failure to a small core, and reporting it.
//! - `sequential.rs`: the write-order check of the sequential mode.
//! - `sequential_search.rs`: exhaustive per-key sequential consistency, for small histories.
//! - `causal.rs`, `causal_graph.rs`: the causal check, on a happens-before graph with a
//!   vector clock per op.
//! - `convergence.rs`: the eventual mode's final-state check.
//! - `tests/`: known-good and known-bad histories, randomized histories, timings.
//!
//! # Example
//!
//! ```
//! use tailorkv_tests::checker::{check_linearizable, Budget, OpKind, OpResult, Recorder};
//!
//! let recorder = Recorder::new();
//! std::thread::scope(|s| {
//!     for client in 0..2 {
//!         let recorder = &recorder;
//!         s.spawn(move || {
//!             let id = recorder.invoke(client, "k", OpKind::Set(u64::from(client).into()));
//!             recorder.complete(id, OpResult::Stored); // a real test talks to a cluster here
//!             let id = recorder.invoke(client, "k", OpKind::Get);
//!             recorder.fail(id); // a timeout: indeterminate
//!         });
//!     }
//! });
//! let verdict = check_linearizable(&recorder.history(), Budget::default());
//! assert!(verdict.is_linearizable(), "{verdict}");
//! ```

mod budget;
mod causal;
mod causal_graph;
mod convergence;
mod entry_list;
mod explanation;
mod history;
mod key_history;
mod linearizable;
mod memo;
mod recorder;
mod register;
mod search;
mod sequential;
mod sequential_search;
mod shrink;
mod wgl;

#[cfg(test)]
mod tests;

pub use budget::{Budget, UnknownReason};
pub use causal::{
    check_causal, CausalLink, CausalStep, CausalVerdict, CausalViolation, Unsupported,
};
pub use convergence::{
    check_converged, check_converged_evicting, Divergence, Held, ReplicaState, Write,
};
pub use explanation::Explanation;
pub use history::{ClientId, History, Key, Op, OpId, OpKind, OpResult, Outcome, Time, Value};
pub use linearizable::{check_linearizable, Verdict};
pub use recorder::Recorder;
pub use register::KeyState;
pub use sequential::{check_write_order, OrderEdge, OrderVerdict, OrderViolation, Witness};
pub use sequential_search::{check_sequential, SequentialVerdict};
