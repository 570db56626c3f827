//! What the searches ([`wgl`](super::wgl), [`sequential_search`](super::sequential_search))
//! have in common: their outcome, and the record of the deepest point they reached, which is
//! the explanation of a failure.

use super::budget::UnknownReason;
use super::register::StateId;

/// How a search of one key ended.
pub(crate) enum SearchOutcome {
    /// Every determinate op fits into one order.
    Found,
    /// No order exists; the deepest point reached says where every attempt got stuck.
    Failed(Failure),
    /// The budget ran out first.
    Exhausted(UnknownReason),
}

/// The deepest point of a failed search: the first point reached with the most required ops
/// placed. Every required op that could come next there fails outright: one that fitted
/// would have led deeper, or been pruned only because a point as deep was seen before.
#[derive(Clone, Debug)]
pub(crate) struct Failure {
    /// Positions of the ops of the longest order found, in that order.
    pub prefix: Vec<usize>,
    /// The register after them.
    pub state: StateId,
    /// Positions of the ops that could have come next.
    pub stuck: Vec<usize>,
}

/// Tracks the deepest point of a search.
pub(crate) struct Deepest {
    failure: Failure,
    depth: usize,
}

impl Deepest {
    /// Starts at the root, in state `initial`, where `stuck` are the ops that may come first.
    pub(crate) fn new(initial: StateId, stuck: Vec<usize>) -> Self {
        Deepest {
            failure: Failure {
                prefix: Vec::new(),
                state: initial,
                stuck,
            },
            depth: 0,
        }
    }

    /// Records the point reached with `depth` required ops placed if it is deeper than any
    /// before. The closures list the ops placed, in order, and the required ops that may come
    /// next; they are only called for a new deepest point.
    pub(crate) fn offer(
        &mut self,
        depth: usize,
        prefix: impl FnOnce() -> Vec<usize>,
        state: StateId,
        stuck: impl FnOnce() -> Vec<usize>,
    ) {
        if depth > self.depth {
            self.depth = depth;
            self.failure = Failure {
                prefix: prefix(),
                state,
                stuck: stuck(),
            };
        }
    }

    pub(crate) fn into_failure(self) -> Failure {
        self.failure
    }
}
