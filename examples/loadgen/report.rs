//! The end-of-run report: built from the merged [`Stats`], printed as text or as one JSON
//! object (`--json`) whose field names are stable, so scripts can build tables from it.
//!
//! Latencies are in microseconds. `ops` counts correct replies to measured requests, and
//! `ops_per_sec` divides them by `measured_secs`: from the start of measurement to the last
//! measured reply. `answered` counts every reply of the whole run, so a script can check it
//! against the server's own `stats` taken before and after the loadgen process.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Args;
use crate::cpu::CpuReport;
use crate::keys::KeyDist;
use crate::reply::Protocol;
use crate::stats::{Answered, Errors, Stats};

#[derive(Debug, Serialize)]
pub struct Report {
    /// This run's id, as it appears in the values it wrote (hex).
    pub run_id: String,
    pub seed: u64,
    pub config: Config,
    /// Present with --preload.
    pub preload: Option<Preload>,
    pub measured_secs: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub gets: u64,
    pub hits: u64,
    pub misses: u64,
    /// Hits on values left by another loadgen run (not errors; see `verify`).
    pub foreign: u64,
    /// Hits whose whole value was compared.
    pub verified: u64,
    pub sets: u64,
    /// Every request answered over the whole run (preload and warmup included, errors too):
    /// what the server's own counters must account for.
    pub answered: Answered,
    pub errors: ErrorReport,
    pub error_samples: Vec<String>,
    pub latency_us: Latencies,
    pub targets: Vec<TargetReport>,
    /// With --cpu-of: the CPU each process used while measuring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<CpuReport>,
}

/// The settings that shape the load.
#[derive(Debug, Serialize)]
pub struct Config {
    pub targets: Vec<String>,
    pub protocol: Protocol,
    pub connections: u32,
    pub pipeline: u32,
    pub keys: u64,
    /// With --keys-held-by or --keys-not-held-by: how many of the keys the run used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys_kept: Option<u64>,
    pub key_dist: KeyDist,
    pub zipf_theta: f64,
    pub key_prefix: String,
    pub value_size: usize,
    pub get_ratio: f64,
    pub verify_ratio: f64,
    pub warmup_secs: f64,
    pub duration_secs: Option<f64>,
    pub requests: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Preload {
    pub sets: u64,
    pub secs: f64,
}

#[derive(Debug, Serialize)]
pub struct ErrorReport {
    pub total: u64,
    pub wrong_value: u64,
    pub server_error: u64,
    pub protocol: u64,
    pub timeout: u64,
    pub io: u64,
}

#[derive(Debug, Serialize)]
pub struct Latencies {
    pub all: Percentiles,
    pub get: Percentiles,
    pub set: Percentiles,
}

/// One latency distribution, in microseconds.
#[derive(Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// What one target served.
#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub target: String,
    pub connections: u32,
    pub ops: u64,
    pub errors: u64,
}

impl Report {
    /// The report of a run with `args`: `stats` merged over all connections, `per_target` the
    /// merge per target with its connection count.
    pub fn new(
        args: &Args,
        identity: (u32, u64),
        stats: &Stats,
        per_target: &[(u32, Stats)],
        preload_secs: f64,
        measured_secs: f64,
    ) -> Self {
        let ops = stats.ops();
        let ops_per_sec = match measured_secs > 0.0 {
            true => ops as f64 / measured_secs,
            false => 0.0,
        };
        let targets = args
            .targets
            .iter()
            .zip(per_target)
            .map(|(target, (connections, stats))| TargetReport {
                target: target.clone(),
                connections: *connections,
                ops: stats.ops(),
                errors: stats.errors.total(),
            })
            .collect();
        Report {
            run_id: format!("{:08x}", identity.0),
            seed: identity.1,
            config: Config::new(args),
            preload: args.preload.then_some(Preload {
                sets: stats.preloaded,
                secs: preload_secs,
            }),
            measured_secs,
            ops,
            ops_per_sec,
            gets: stats.hits + stats.misses,
            hits: stats.hits,
            misses: stats.misses,
            foreign: stats.foreign,
            verified: stats.verified,
            sets: stats.sets,
            answered: stats.answered,
            errors: ErrorReport::new(&stats.errors),
            error_samples: stats.samples.clone(),
            latency_us: Latencies {
                all: Percentiles::of(&stats.all_latency()),
                get: Percentiles::of(&stats.get_latency),
                set: Percentiles::of(&stats.set_latency),
            },
            targets,
            cpu: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The report for a person.
    pub fn to_text(&self) -> String {
        let c = &self.config;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "loadgen run {} (seed {}): {} connections to {}, pipeline {}, {} protocol",
            self.run_id,
            self.seed,
            c.connections,
            c.targets.join(","),
            c.pipeline,
            c.protocol.name()
        );
        let keys = match c.keys_kept {
            None => c.keys.to_string(),
            Some(kept) => format!("{kept} of {}", c.keys),
        };
        let _ = writeln!(
            out,
            "  {} keys ({}), {}-byte values, {:.0}% gets, verify {}%",
            keys,
            c.key_dist.name(),
            c.value_size,
            c.get_ratio * 100.0,
            c.verify_ratio * 100.0
        );
        if let Some(preload) = &self.preload {
            let _ = writeln!(
                out,
                "preload     {} sets in {:.2} s",
                preload.sets, preload.secs
            );
        }
        self.write_counts(&mut out);
        self.write_latencies(&mut out);
        out
    }

    fn write_counts(&self, out: &mut String) {
        let e = &self.errors;
        let _ = writeln!(
            out,
            "throughput  {:.0} ops/s ({} ops in {:.2} s)",
            self.ops_per_sec, self.ops, self.measured_secs
        );
        let _ = writeln!(
            out,
            "gets        {} (hits {}, misses {}, foreign {}, verified {})",
            self.gets, self.hits, self.misses, self.foreign, self.verified
        );
        let _ = writeln!(out, "sets        {}", self.sets);
        let _ = writeln!(
            out,
            "answered    {} gets, {} sets over the whole run (preload, warmup, errors too)",
            self.answered.gets, self.answered.sets
        );
        let _ = writeln!(
            out,
            "errors      {} (wrong value {}, server error {}, protocol {}, timeout {}, io {})",
            e.total, e.wrong_value, e.server_error, e.protocol, e.timeout, e.io
        );
        for sample in &self.error_samples {
            let _ = writeln!(out, "  ! {sample}");
        }
        if let Some(cpu) = &self.cpu {
            for p in std::iter::once(&cpu.loadgen).chain(&cpu.processes) {
                let _ = writeln!(
                    out,
                    "cpu         {} (pid {}): {:.2} s, {:.2} µs per op",
                    p.name, p.pid, p.cpu_secs, p.us_per_op
                );
            }
        }
        if self.targets.len() > 1 {
            for t in &self.targets {
                let (target, conns, ops) = (&t.target, t.connections, t.ops);
                let _ = writeln!(
                    out,
                    "  {target}: {conns} connections, {ops} ops, {} errors",
                    t.errors
                );
            }
        }
    }

    fn write_latencies(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "latency µs  {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let l = &self.latency_us;
        for (name, p) in [("all", &l.all), ("get", &l.get), ("set", &l.set)] {
            let _ = writeln!(
                out,
                "  {name:<9} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                p.count, p.mean, p.p50, p.p90, p.p99, p.p999, p.max
            );
        }
    }
}

impl Config {
    fn new(args: &Args) -> Self {
        Config {
            targets: args.targets.clone(),
            protocol: args.protocol,
            connections: args.connections,
            pipeline: args.pipeline,
            keys: args.keys,
            keys_kept: None,
            key_dist: args.key_dist,
            zipf_theta: args.zipf_theta,
            key_prefix: args.key_prefix.clone(),
            value_size: args.value_size,
            get_ratio: args.get_ratio,
            verify_ratio: args.verify_ratio,
            warmup_secs: args.warmup.as_secs_f64(),
            duration_secs: args.duration_limit().map(|d| d.as_secs_f64()),
            requests: args.requests,
        }
    }
}

impl ErrorReport {
    fn new(e: &Errors) -> Self {
        ErrorReport {
            total: e.total(),
            wrong_value: e.wrong_value,
            server_error: e.server_error,
            protocol: e.protocol,
            timeout: e.timeout,
            io: e.io,
        }
    }
}

impl Percentiles {
    /// The distribution of a histogram of nanoseconds, in microseconds; zeros if empty.
    fn of(h: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.5)),
            p90: us(h.value_at_quantile(0.9)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Op;
    use clap::Parser;
    use std::time::{Duration, Instant};

    #[test]
    fn the_json_report_has_the_documented_fields() {
        let args = Args::parse_from(["loadgen", "--target", "a:1,b:2", "--preload"]);
        let mut stats = Stats {
            hits: 3,
            sets: 1,
            answered: Answered { gets: 5, sets: 2 },
            errors: Errors {
                wrong_value: 2,
                ..Errors::default()
            },
            ..Stats::default()
        };
        for ms in [1, 2, 3] {
            stats.record(Op::Get, Duration::from_millis(ms), Instant::now());
        }
        let per_target = [(1, stats.clone()), (1, Stats::default())];
        let report = Report::new(&args, (0xab, 7), &stats, &per_target, 0.5, 2.0);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["run_id"], "000000ab");
        assert_eq!(json["ops"], 4);
        assert_eq!(json["ops_per_sec"], 2.0);
        assert_eq!(json["errors"]["total"], 2);
        assert_eq!(json["latency_us"]["get"]["count"], 3);
        assert_eq!(json["latency_us"]["set"]["count"], 0);
        assert!((json["latency_us"]["all"]["max"].as_f64().unwrap() - 3000.0).abs() < 5.0);
        assert_eq!(json["targets"][1]["target"], "b:2");
        assert_eq!(json["preload"]["secs"], 0.5);
        assert_eq!(
            (
                json["answered"]["gets"].as_u64(),
                json["answered"]["sets"].as_u64()
            ),
            (Some(5), Some(2))
        );
        assert_eq!(json["config"]["key_dist"], "uniform");
        assert_eq!(json["config"]["protocol"], "text");
        assert!(report.to_text().contains("wrong value 2"));
        assert!(report.to_text().contains("pipeline 1, text protocol"));
    }
}
