//! What a connection sends next: a [`Source`] yields [`Request`]s until its phase is over.
//!
//! - [`Preload`]: connection `c` of `n` sets keys `c, c + n, c + 2n, ..`, so together the
//!   connections set every key once.
//! - [`Mix`]: the measured load. Each request is a get with probability --get-ratio, else a set,
//!   to a key drawn from the key space; a get's body is verified with probability
//!   --verify-ratio. Requests are free during warmup; after it each takes one from the
//!   `--requests` budget, and none is sent past --duration.

use std::time::Instant;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::reply::Op;
use crate::run::Run;

/// Which part of the run a request belongs to: only [`Phase::Measured`] ones count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Preload,
    Warmup,
    Measured,
}

/// One request to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Index of the key in the key space.
    pub key: u64,
    pub phase: Phase,
    /// For a get: compare the whole value, not only its header.
    pub check_body: bool,
}

/// The requests of one phase on one connection.
pub trait Source {
    /// The next request, or `None` when the phase is over for this connection.
    fn next(&mut self) -> Option<Request>;
}

/// Sets every key of this connection's share once.
pub struct Preload {
    next: u64,
    step: u64,
    end: u64,
}

impl Preload {
    /// The share of connection `conn` of `conns`, over `keys` keys.
    pub fn new(conn: u32, conns: u32, keys: u64) -> Self {
        Preload {
            next: conn.into(),
            step: conns.into(),
            end: keys,
        }
    }
}

impl Source for Preload {
    fn next(&mut self) -> Option<Request> {
        let key = self.next;
        (key < self.end).then(|| {
            self.next += self.step;
            Request {
                op: Op::Set,
                key,
                phase: Phase::Preload,
                check_body: false,
            }
        })
    }
}

/// The measured get/set mix.
pub struct Mix<'a> {
    run: &'a Run,
    rng: SmallRng,
}

impl<'a> Mix<'a> {
    /// The mix of connection `conn`: its own random stream from the run's seed.
    pub fn new(run: &'a Run, conn: u32) -> Self {
        let seed = run.seed ^ u64::from(conn).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Mix {
            run,
            rng: SmallRng::seed_from_u64(seed),
        }
    }
}

impl Source for Mix<'_> {
    fn next(&mut self) -> Option<Request> {
        let schedule = self.run.schedule();
        let now = Instant::now();
        if schedule.measure_end.is_some_and(|end| now >= end) {
            return None;
        }
        let phase = match now >= schedule.measure_start {
            true if !self.run.claim() => return None,
            true => Phase::Measured,
            false => Phase::Warmup,
        };
        let args = &self.run.args;
        let op = match self.rng.random_bool(args.get_ratio) {
            true => Op::Get,
            false => Op::Set,
        };
        let key = self.run.keys.sample(&mut self.rng);
        let check_body = op == Op::Get && self.rng.random_bool(args.verify_ratio);
        Some(Request {
            op,
            key,
            phase,
            check_body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Args;
    use crate::keys::{KeyDist, KeySpace};
    use clap::Parser;

    #[test]
    fn preload_shares_cover_every_key_once() {
        let mut keys: Vec<u64> = (0..3)
            .flat_map(|conn| {
                std::iter::from_fn({
                    let mut share = Preload::new(conn, 3, 10);
                    move || share.next()
                })
            })
            .map(|request| request.key)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn the_mix_follows_the_ratios_and_the_budget() {
        let args = Args::parse_from([
            "loadgen",
            "--requests",
            "10000",
            "--get-ratio",
            "0.75",
            "--verify-ratio",
            "1",
        ]);
        let keys = KeySpace::new("k", 50, KeyDist::Uniform, 0.0).unwrap();
        let run = Run::new(args, keys, 1, 42);
        let requests: Vec<Request> = std::iter::from_fn({
            let mut mix = Mix::new(&run, 0);
            move || mix.next()
        })
        .collect();
        assert_eq!(requests.len(), 10_000);
        let gets = requests.iter().filter(|r| r.op == Op::Get).count();
        assert!((7_000..8_000).contains(&gets), "{gets} gets");
        assert!(requests
            .iter()
            .all(|r| r.phase == Phase::Measured && r.key < 50));
        assert!(requests.iter().all(|r| r.check_body == (r.op == Op::Get)));
    }
}
