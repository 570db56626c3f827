//! What all connections of a run share: the settings, the key space, the [`Ledger`], the
//! request budget, and the [`Schedule`] that splits time into warmup and measurement.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::cli::Args;
use crate::keys::KeySpace;
use crate::verify::Ledger;

/// When load starts and what part of it is measured. Fixed by the first connection to finish
/// preloading (all connections pass a barrier first), so no phase overlaps the preload.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    /// Load (warmup first) begins.
    pub load_start: Instant,
    /// Requests sent from here on are measured.
    pub measure_start: Instant,
    /// No request is sent from here on; `None` if only --requests bounds the run.
    pub measure_end: Option<Instant>,
}

impl Schedule {
    pub fn starting(at: Instant, warmup: Duration, duration: Option<Duration>) -> Self {
        let measure_start = at + warmup;
        Schedule {
            load_start: at,
            measure_start,
            measure_end: duration.map(|d| measure_start + d),
        }
    }
}

/// The state of one loadgen run, shared by its connections.
pub struct Run {
    pub args: Args,
    pub keys: KeySpace,
    pub ledger: Ledger,
    /// Seed of the per-connection random streams.
    pub seed: u64,
    /// Measured requests left to send, if --requests bounds the run.
    budget: Option<AtomicU64>,
    schedule: OnceLock<Schedule>,
    /// With --cpu-of: the processes' CPU time when measuring started.
    pub cpu_start: OnceLock<crate::cpu::Snapshot>,
}

impl Run {
    pub fn new(args: Args, keys: KeySpace, run_id: u32, seed: u64) -> Self {
        let ledger = Ledger::new(run_id, args.connections, keys.count(), args.value_size);
        Run {
            budget: args.requests.map(AtomicU64::new),
            args,
            keys,
            ledger,
            seed,
            schedule: OnceLock::new(),
            cpu_start: OnceLock::new(),
        }
    }

    /// The schedule, fixed now by the first caller. Call once preloading is over.
    pub fn schedule(&self) -> &Schedule {
        self.schedule.get_or_init(|| {
            Schedule::starting(Instant::now(), self.args.warmup, self.args.duration_limit())
        })
    }

    /// Takes one measured request from the budget: false once --requests are all sent.
    pub fn claim(&self) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        budget
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyDist;
    use clap::Parser;

    fn run(extra: &[&str]) -> Run {
        let args = Args::parse_from(["loadgen"].iter().chain(extra));
        let keys = KeySpace::new("k", 10, KeyDist::Uniform, 0.0).unwrap();
        Run::new(args, keys, 1, 2)
    }

    #[test]
    fn the_budget_hands_out_exactly_the_requests() {
        let run = run(&["--requests", "3"]);
        let claimed = (0..10).filter(|_| run.claim()).count();
        assert_eq!(claimed, 3);
        assert!((0..10).all(|_| self::run(&[]).claim()));
    }

    #[test]
    fn the_schedule_is_fixed_once_and_measures_after_warmup() {
        let run = run(&["--warmup", "1", "--duration", "2"]);
        let first = *run.schedule();
        let again = *run.schedule();
        assert_eq!(first.load_start, again.load_start);
        assert_eq!(
            first.measure_start - first.load_start,
            Duration::from_secs(1)
        );
        assert_eq!(
            first.measure_end,
            Some(first.measure_start + Duration::from_secs(2))
        );
    }
}
