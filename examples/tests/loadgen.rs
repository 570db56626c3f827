//! `loadgen` against real `controlet` processes on loopback: a clean run has operations and no
//! errors, values damaged behind its back are caught and not counted, `--requests` is exact,
//! connections spread over every target, and an unreachable target fails fast.
//!
//! The controlet is another package's binary, which cargo does not build for this one's tests:
//! the first test to need it runs `cargo build -p tailorkv-controlet` into the same target
//! directory (a no-op when it is up to date), through `tailorkv_tests::server::binary`.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tailorkv_tests::{free_port, RawClient, ServerProcess};

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

/// A controlet process on a free loopback port, killed when dropped.
struct Controlet {
    server: ServerProcess,
    /// Its address, as loadgen's `--target` takes it.
    addr: String,
}

impl Controlet {
    fn start() -> Self {
        let server = ServerProcess::controlet(&["--threads", "2"]);
        let addr = server.addr.to_string();
        Controlet { server, addr }
    }

    /// Sends `request` and reads until the reply ends with `end`.
    fn raw(&self, request: &[u8], end: &[u8]) -> Vec<u8> {
        RawClient::connect(self.server.addr).call(request, end)
    }

    /// The data of `key`, which must exist.
    fn get(&self, key: &str) -> Vec<u8> {
        let reply = self.raw(format!("get {key}\r\n").as_bytes(), b"END\r\n");
        let header_end = reply.windows(2).position(|w| w == b"\r\n").unwrap();
        reply[header_end + 2..reply.len() - b"\r\nEND\r\n".len()].to_vec()
    }

    /// A counter from `stats`.
    fn stat(&self, name: &str) -> u64 {
        let reply = self.raw(b"stats\r\n", b"END\r\n");
        let text = String::from_utf8(reply).expect("ASCII stats");
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("STAT {name} ")))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {text:?}"))
    }

    fn set(&self, key: &str, data: &[u8]) {
        let mut request = format!("set {key} 0 0 {}\r\n", data.len()).into_bytes();
        request.extend_from_slice(data);
        request.extend_from_slice(b"\r\n");
        assert_eq!(self.raw(&request, b"\r\n"), b"STORED\r\n");
    }
}

/// Runs loadgen with `args` and `--json`: its exit code and report.
fn loadgen(args: &[&str]) -> (i32, Value) {
    let out = loadgen_output(&[args, &["--json"]].concat());
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().expect("exit code"), report)
}

fn loadgen_output(args: &[&str]) -> Output {
    Command::new(LOADGEN)
        .args(args)
        .output()
        .expect("run loadgen")
}

fn u64_at(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing from {report:#}"))
}

/// A clean run: operations, no errors, and the server's own counters account for every
/// request loadgen says was answered, preload and warmup included.
#[test]
fn a_clean_run_has_ops_and_no_errors() {
    let server = Controlet::start();
    let (code, report) = loadgen(&[
        "--target",
        &server.addr,
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--keys",
        "2000",
        "--preload",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--verify-ratio",
        "1",
    ]);
    assert_eq!(code, 0, "{report:#}");
    let answered = (
        u64_at(&report, "/answered/gets"),
        u64_at(&report, "/answered/sets"),
    );
    assert_eq!(answered, (server.stat("cmd_get"), server.stat("cmd_set")));
    let measured = u64_at(&report, "/gets") + u64_at(&report, "/sets") + 2000;
    assert!(
        answered.0 + answered.1 > measured,
        "warmup counts: {report:#}"
    );
    let ops = u64_at(&report, "/ops");
    assert!(ops > 0, "{report:#}");
    assert_eq!(u64_at(&report, "/errors/total"), 0, "{report:#}");
    assert_eq!(u64_at(&report, "/preload/sets"), 2000);
    // Every key was preloaded, so every get hits, and every hit was compared in full.
    assert_eq!(u64_at(&report, "/misses"), 0);
    assert_eq!(u64_at(&report, "/verified"), u64_at(&report, "/hits"));
    assert_eq!(u64_at(&report, "/latency_us/all/count"), ops);
    assert!(u64_at(&report, "/sets") > 0);
}

#[test]
fn wrong_values_are_detected_and_not_counted() {
    let server = Controlet::start();
    let common = [
        "--target",
        &server.addr,
        "--key-prefix",
        "t:",
        "--keys",
        "10",
    ];
    // A first run leaves real loadgen values under every key.
    let (code, _) = loadgen(&[&common[..], &["--preload", "--requests", "20"]].concat());
    assert_eq!(code, 0);
    // Damage two keys behind loadgen's back: garbage, and a real value moved to another key.
    server.set("t:3", b"garbage");
    let moved = server.get("t:1");
    assert_eq!(moved.len(), 100);
    server.set("t:2", &moved);

    let (code, report) = loadgen(
        &[
            &common[..],
            &[
                "--connections",
                "2",
                "--get-ratio",
                "1",
                "--verify-ratio",
                "1",
                "--duration",
                "1",
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 2, "errors must fail the run: {report:#}");
    assert!(u64_at(&report, "/errors/wrong_value") > 0, "{report:#}");
    assert_eq!(
        u64_at(&report, "/errors/total"),
        u64_at(&report, "/errors/wrong_value")
    );
    let samples = report["error_samples"].to_string();
    assert!(samples.contains("get t:3: wrong value"), "{samples}");
    assert!(
        samples.contains("get t:2: wrong value: check word"),
        "{samples}"
    );
    // The first run's intact values are another run's: foreign, not errors.
    assert!(u64_at(&report, "/foreign") > 0, "{report:#}");
    // Wrong answers are neither operations nor latencies.
    assert_eq!(u64_at(&report, "/ops"), u64_at(&report, "/hits"));
    assert_eq!(
        u64_at(&report, "/latency_us/all/count"),
        u64_at(&report, "/ops")
    );
}

#[test]
fn requests_bound_the_run_exactly() {
    let server = Controlet::start();
    let (code, report) = loadgen(&[
        "--target",
        &server.addr,
        "--connections",
        "5",
        "--pipeline",
        "4",
        "--requests",
        "500",
        "--warmup",
        "0.2",
    ]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(u64_at(&report, "/ops"), 500);
    assert_eq!(u64_at(&report, "/gets") + u64_at(&report, "/sets"), 500);
}

#[test]
fn connections_spread_over_every_target() {
    let (a, b) = (Controlet::start(), Controlet::start());
    let targets = format!("{},{}", a.addr, b.addr);
    let (code, report) = loadgen(&[
        "--target",
        &targets,
        "--connections",
        "4",
        "--duration",
        "1",
        "--keys",
        "100",
    ]);
    assert_eq!(code, 0, "{report:#}");
    for target in 0..2 {
        assert_eq!(
            u64_at(&report, &format!("/targets/{target}/connections")),
            2
        );
        assert!(u64_at(&report, &format!("/targets/{target}/ops")) > 0);
    }
}

#[test]
fn an_unreachable_target_fails_fast() {
    // A port that was free a moment ago: nothing listens there.
    let port = free_port();
    let started = Instant::now();
    let out = loadgen_output(&["--target", &format!("127.0.0.1:{port}"), "--duration", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
