//! What one connection saw, merged across connections at the end.
//!
//! Only *measured* requests (sent after warmup, within the duration or request budget) and only
//! correct replies count as operations and have their latency recorded: a fast wrong answer adds
//! to the errors, never to throughput. Errors are counted over the whole run, preload and warmup
//! included, since a wrong reply is wrong whenever it comes.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::reply::Op;

/// Latencies are recorded in nanoseconds, from 1 µs (coarser below) to a minute, with three
/// significant digits.
const LOWEST_NS: u64 = 1_000;
const HIGHEST_NS: u64 = 60_000_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Error samples kept for the report: enough to diagnose, bounded however bad the run is.
pub const MAX_SAMPLES: usize = 10;

/// Requests that went wrong, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Errors {
    /// A value that this run could not have written for the key (see `verify`).
    pub wrong_value: u64,
    /// A reply refusing the request (`SERVER_ERROR`, `CLIENT_ERROR`, `ERROR`, `NOT_STORED`..).
    pub server_error: u64,
    /// Bytes that were no reply to the request: the connection was given up.
    pub protocol: u64,
    /// No reply within --request-timeout: the connection was given up.
    pub timeout: u64,
    /// The connection failed or closed with requests outstanding.
    pub io: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.wrong_value + self.server_error + self.protocol + self.timeout + self.io
    }

    fn add(&mut self, other: &Errors) {
        self.wrong_value += other.wrong_value;
        self.server_error += other.server_error;
        self.protocol += other.protocol;
        self.timeout += other.timeout;
        self.io += other.io;
    }
}

/// Requests answered, by operation, over the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Answered {
    pub gets: u64,
    pub sets: u64,
}

impl Answered {
    pub fn count(&mut self, op: Op) {
        match op {
            Op::Get => self.gets += 1,
            Op::Set => self.sets += 1,
        }
    }
}

/// One connection's counts and latencies, or the merge of many.
#[derive(Clone, Debug)]
pub struct Stats {
    pub get_latency: Histogram<u64>,
    pub set_latency: Histogram<u64>,
    pub hits: u64,
    pub misses: u64,
    /// Hits on a value left by another loadgen run (counted in `hits` too).
    pub foreign: u64,
    /// Hits whose body was compared byte for byte (counted in `hits` too).
    pub verified: u64,
    pub sets: u64,
    /// Sets of the preload phase answered `STORED`.
    pub preloaded: u64,
    /// Every reply received, of every phase (preload and warmup too) and every kind (errors
    /// too): what the server was asked to carry out and answered. Its own counters
    /// (`cmd_get`, `cmd_set`) over the whole run must account for these.
    pub answered: Answered,
    pub errors: Errors,
    /// The first few errors, described.
    pub samples: Vec<String>,
    /// When the last measured reply arrived: the end of the measured interval.
    pub last_measured: Option<Instant>,
}

impl Default for Stats {
    fn default() -> Self {
        let histogram = || {
            Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant histogram bounds are valid")
        };
        Stats {
            get_latency: histogram(),
            set_latency: histogram(),
            hits: 0,
            misses: 0,
            foreign: 0,
            verified: 0,
            sets: 0,
            preloaded: 0,
            answered: Answered::default(),
            errors: Errors::default(),
            samples: Vec::new(),
            last_measured: None,
        }
    }
}

impl Stats {
    /// Operations that count toward throughput: correct, measured replies.
    pub fn ops(&self) -> u64 {
        self.hits + self.misses + self.sets
    }

    /// Records a correct, measured reply to `op` sent `latency` before `at`.
    pub fn record(&mut self, op: Op, latency: Duration, at: Instant) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        match op {
            Op::Get => self.get_latency.saturating_record(ns),
            Op::Set => self.set_latency.saturating_record(ns),
        }
        self.last_measured = self.last_measured.max(Some(at));
    }

    /// Keeps `describe()` as a sample if there is room and it says something new.
    pub fn sample(&mut self, describe: impl FnOnce() -> String) {
        if self.samples.len() < MAX_SAMPLES {
            let sample = describe();
            if !self.samples.contains(&sample) {
                self.samples.push(sample);
            }
        }
    }

    /// Both op types' latencies together.
    pub fn all_latency(&self) -> Histogram<u64> {
        let mut all = self.get_latency.clone();
        all.add(&self.set_latency)
            .expect("histograms of equal bounds add");
        all
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Stats) {
        self.get_latency
            .add(&other.get_latency)
            .expect("histograms of equal bounds add");
        self.set_latency
            .add(&other.set_latency)
            .expect("histograms of equal bounds add");
        self.hits += other.hits;
        self.misses += other.misses;
        self.foreign += other.foreign;
        self.verified += other.verified;
        self.sets += other.sets;
        self.preloaded += other.preloaded;
        self.answered.gets += other.answered.gets;
        self.answered.sets += other.answered.sets;
        self.errors.add(&other.errors);
        for sample in &other.samples {
            self.sample(|| sample.clone());
        }
        self.last_measured = self.last_measured.max(other.last_measured);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_latencies() {
        let now = Instant::now();
        let mut a = Stats {
            hits: 2,
            ..Stats::default()
        };
        a.record(Op::Get, Duration::from_micros(10), now);
        a.record(Op::Get, Duration::from_micros(20), now);
        let mut b = Stats {
            sets: 1,
            errors: Errors {
                timeout: 3,
                ..Errors::default()
            },
            ..Stats::default()
        };
        b.record(
            Op::Set,
            Duration::from_millis(1),
            now + Duration::from_secs(1),
        );
        a.merge(&b);
        assert_eq!((a.ops(), a.errors.total()), (3, 3));
        assert_eq!(a.all_latency().len(), 3);
        assert!(a.all_latency().max() >= 999_000);
        assert_eq!(a.last_measured, Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn samples_are_bounded() {
        let mut stats = Stats::default();
        for i in 0..MAX_SAMPLES + 5 {
            stats.sample(|| format!("error {i}"));
        }
        stats.sample(|| "error 0".into());
        assert_eq!(stats.samples.len(), MAX_SAMPLES);
        let mut merged = Stats::default();
        merged.sample(|| "error 0".into());
        merged.sample(|| "other".into());
        merged.merge(&stats);
        assert_eq!(merged.samples.len(), MAX_SAMPLES);
        assert_eq!(merged.samples[..2], ["error 0", "other"]);
    }
}
