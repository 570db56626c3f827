//! How much work a search may do before it gives up and answers "unknown".
//!
//! Deciding linearizability is NP-complete, so every search runs on a [`Budget`]: a number of
//! search steps per key and, optionally, a wall-clock limit for the whole check. A search
//! that runs out answers `Unknown`, never a pass.

use std::fmt;
use std::time::{Duration, Instant};

/// Limits on a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Search steps allowed for each key (one step tries one op at one point of a search).
    /// Memory grows with steps too: each step may remember one visited search state.
    pub max_steps_per_key: u64,
    /// Wall-clock time allowed for the whole check, all keys together.
    pub max_time: Option<Duration>,
}

impl Default for Budget {
    /// Two million steps per key and 60 seconds in all: far more than a history of a few
    /// thousand ops per key with a handful of clients needs.
    fn default() -> Self {
        Budget {
            max_steps_per_key: 2_000_000,
            max_time: Some(Duration::from_secs(60)),
        }
    }
}

impl Budget {
    /// A budget of `steps` per key and no time limit: deterministic, for tests.
    pub fn steps(steps: u64) -> Self {
        Budget {
            max_steps_per_key: steps,
            max_time: None,
        }
    }

    /// When a check started now must stop.
    pub(crate) fn deadline(&self) -> Option<Deadline> {
        self.max_time.map(|limit| Deadline {
            at: Instant::now() + limit,
            limit,
        })
    }
}

/// Why a check could not decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnknownReason {
    /// The search of one key took all its steps.
    StepBudget { steps: u64 },
    /// The check ran out of time.
    TimeBudget { limit: Duration },
    /// The history lies outside what the checker can judge.
    Unsupported(String),
}

impl fmt::Display for UnknownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnknownReason::StepBudget { steps } => {
                write!(f, "search gave up after {steps} steps (step budget)")
            }
            UnknownReason::TimeBudget { limit } => {
                write!(f, "search gave up after {limit:?} (time budget)")
            }
            UnknownReason::Unsupported(why) => write!(f, "cannot check: {why}"),
        }
    }
}

/// Counts one search's steps against its budget.
pub(crate) struct Meter {
    steps: u64,
    max_steps: u64,
    deadline: Option<Deadline>,
}

/// When a check must stop, and the time limit that set it (for reports).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub limit: Duration,
}

/// How many steps pass between two looks at the clock.
const CLOCK_EVERY_STEPS: u64 = 1024;

impl Meter {
    /// A meter for one key's search of at most `max_steps`, which must stop at `deadline`
    /// (shared by the whole check).
    pub(crate) fn new(max_steps: u64, deadline: Option<Deadline>) -> Self {
        Meter {
            steps: 0,
            max_steps,
            deadline,
        }
    }

    /// Takes one step, or says why none is left.
    pub(crate) fn step(&mut self) -> Result<(), UnknownReason> {
        if self.steps >= self.max_steps {
            return Err(UnknownReason::StepBudget { steps: self.steps });
        }
        if self.steps.is_multiple_of(CLOCK_EVERY_STEPS) {
            if let Some(deadline) = self.deadline.filter(|d| Instant::now() >= d.at) {
                return Err(UnknownReason::TimeBudget {
                    limit: deadline.limit,
                });
            }
        }
        self.steps += 1;
        Ok(())
    }

    /// The steps taken so far.
    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }
}
