//! Faults against real `controlet` processes: kill -9, SIGSTOP, partitions, packet loss,
//! restarts. Each test runs a recorded workload (`tailorkv_tests::workload`) while it
//! injects a fault, then checks the history with the checker of the mode's guarantee and
//! the replicas' final state, and measures how fast the cluster recovers.
//!
//! What they expect, for 3 nodes (and 5 where named):
//!
//! - a dead, paused or partitioned minority stops nothing: writes through the majority
//!   resume within 2 s of the fault, and keep flowing (no gap over 1 s) from then on; a
//!   write or two slipping through at the moment of the fault do not count;
//! - in the strong modes a node cut off from the majority refuses (`SERVER_ERROR`, within
//!   about 3 s) rather than hang or, in the linearizable mode, answer from a stale copy;
//! - in the eventual mode both sides of a partition keep accepting writes;
//! - a node back from the fault (restarted empty, continued, healed) serves the latest values
//!   within 10 s;
//! - every history passes its checker, and the replicas end identical (eventual: converged
//!   to each key's highest-version write).
//!
//! Measured times are printed as `FIGURE <name>_ms=<n> ...` lines (run with `--nocapture`
//! and `grep FIGURE`; a failing test shows them anyway).
//!
//! Randomness is seeded from `TAILORKV_SEED`, or the clock; every test prints its seed.
//! `TAILORKV_SOAK=1` makes `restart_catch_up_100k` write 100,000 keys instead of 20,000.
//! The network faults need iptables and root: without them the tests fail, saying to run
//! `scripts/test`. Fault tests run one at a time (the harness holds a lock).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tailorkv_common::Version;
use tailorkv_tests::checker::{
    check_causal, check_converged, check_converged_evicting, check_linearizable, check_sequential,
    check_write_order, Budget, History, Op, OpKind, OpResult, Recorder, ReplicaState,
    SequentialVerdict, Value, Write,
};
use tailorkv_tests::client::{Failure, McConn};
use tailorkv_tests::procs::{Net, ProcCluster};
use tailorkv_tests::workload::{learn_version, recorded, Workload, WorkloadConfig};

const LIN: &str = "linearizable";
const SEQ: &str = "sequential";
const EVENTUAL: &str = "eventual";
const CAUSAL: &str = "causal";

/// How soon after a fault writes through the majority must be acknowledged again.
const RESUME_WITHIN: Duration = Duration::from_secs(2);
/// How soon a node back from a fault must serve the latest values.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(10);
/// Writes have resumed when acknowledgements come with no gap longer than this.
const MAX_GAP: Duration = Duration::from_secs(1);
/// How long after a fault writes must be flowing (from within [`RESUME_WITHIN`] on).
const HORIZON: Duration = Duration::from_secs(4);
/// How long a cut-off node may take to refuse a request.
const REFUSE_WITHIN: Duration = Duration::from_millis(3_500);

/// The seed of this test: `TAILORKV_SEED`, or the clock. Printed.
fn seed(test: &str) -> u64 {
    let seed = match std::env::var("TAILORKV_SEED") {
        Ok(s) => s.parse().expect("TAILORKV_SEED must be a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    eprintln!("{test}: seed {seed} (TAILORKV_SEED={seed} repeats it)");
    seed
}

fn figure(name: &str, value: Option<Duration>, rest: &str) {
    match value {
        Some(d) => eprintln!("FIGURE {name}_ms={} {rest}", d.as_millis()),
        None => eprintln!("FIGURE {name}_ms=never {rest}"),
    }
}

/// One test's cluster, workload and what it needs to explain a failure.
struct Run {
    test: String,
    seed: u64,
    mode: &'static str,
    n: usize,
    /// The store evicts: the checkers allow any key to become absent.
    evictions: bool,
    // Field order is drop order: the clients stop first, then the faults go, then the nodes.
    workload: Workload,
    net: Option<Net>,
    cluster: ProcCluster,
}

impl Run {
    /// `n` nodes in `mode`, a fault injector if `with_net`, and the workload running.
    fn start(test: &str, n: usize, mode: &'static str, with_net: bool) -> Run {
        Self::start_with(test, n, mode, with_net, &[], 0)
    }

    /// [`Run::start`] with `extra_args` for every node and values of `value_size` bytes.
    fn start_with(
        test: &str,
        n: usize,
        mode: &'static str,
        with_net: bool,
        extra_args: &[&str],
        value_size: usize,
    ) -> Run {
        if with_net {
            Net::available();
        }
        let seed = seed(test);
        let cluster = ProcCluster::start(n, mode, extra_args);
        let net = with_net.then(Net::new);
        let mut config = WorkloadConfig::new(if n <= 3 { 6 } else { 5 }, seed);
        config.learn_versions = mode == EVENTUAL;
        config.value_size = value_size;
        let workload = Workload::start(&cluster.addrs(), config);
        Run {
            evictions: false,
            test: test.to_string(),
            seed,
            mode,
            n,
            workload,
            net,
            cluster,
        }
    }

    fn net(&self) -> &Net {
        self.net.as_ref().expect("started with a Net")
    }

    /// Everything a failure message needs: the test, seed, nodes and logs, client counts.
    fn context(&self) -> String {
        format!(
            "{} ({} nodes, {}), seed {} (TAILORKV_SEED={} repeats it)\n{}\nclients:\n{}",
            self.test,
            self.n,
            self.mode,
            self.seed,
            self.seed,
            self.cluster.describe(),
            self.workload.summary()
        )
    }

    /// `FIGURE` suffix: nodes and mode.
    fn tags(&self) -> String {
        format!("nodes={} mode={}", self.n, self.mode)
    }

    /// Lets the workload run for `d`.
    fn run_for(&self, d: Duration) {
        std::thread::sleep(d);
    }

    /// Checks the workload got writes acknowledged before any fault: a cluster that cannot
    /// serve when healthy makes every later check meaningless.
    fn assert_healthy_start(&self) {
        let acks = self.workload.acks().len();
        assert!(
            acks > 0,
            "no write acknowledged in the first second, before any fault\n{}",
            self.context()
        );
    }

    /// Checks that writes through `nodes` resumed for good within [`RESUME_WITHIN`] of the
    /// fault at `since`, and stayed up (no gap over [`MAX_GAP`]) until `since + horizon`;
    /// prints the figure (and when the first write after the fault was acknowledged).
    fn assert_writes_resume(&self, name: &str, since: Instant, nodes: &[usize], horizon: Duration) {
        let resumed = self.workload.resumed_after(since, nodes, horizon, MAX_GAP);
        let first = self.workload.first_write_after(since, nodes);
        let first = first.map_or("never".into(), |d| d.as_millis().to_string());
        figure(
            name,
            resumed,
            &format!("{} first_write_ms={first}", self.tags()),
        );
        match resumed {
            Some(d) => assert!(
                d <= RESUME_WITHIN,
                "{name}: writes through nodes {nodes:?} resumed for good only after {d:?} \
                 (limit {RESUME_WITHIN:?})\n{}",
                self.context()
            ),
            None => panic!(
                "{name}: writes through nodes {nodes:?} had not resumed for good {horizon:?} \
                 after the fault (first write acknowledged after it: {first} ms)\n{}",
                self.context()
            ),
        }
    }

    /// Writes a fresh marker key through `node` (recorded), retrying for up to 5 s; returns
    /// the key and value. Its version goes to the convergence writes.
    fn write_marker(&self, name: &str, node: usize) -> (String, Value) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let rec = self.workload.recorder();
        for attempt in 0.. {
            // A fresh key per attempt: an attempt without a reply may still land later.
            let key = format!("{name}-{attempt}");
            let value = Value(format!("{name}-{attempt}-{}", self.seed).into_bytes());
            let client = self.workload.new_client();
            let mut outcome = None;
            if let Ok(mut conn) = McConn::connect(self.cluster.addr(node), Duration::from_secs(2)) {
                match recorded(rec, client, &mut conn, &key, OpKind::Set(value.clone())) {
                    Ok(_) => {
                        let version =
                            learn_version(rec, client, &mut conn, &key, &value).unwrap_or(None);
                        self.workload.add_write(Write {
                            key: key.clone(),
                            value: Some(value.clone()),
                            version,
                        });
                        return (key, value);
                    }
                    Err(f) => outcome = Some(f),
                }
            }
            self.workload.add_write(Write {
                key,
                value: Some(value),
                version: None,
            });
            assert!(
                Instant::now() < deadline,
                "could not write {name} through node {node} within 5 s (last: {})\n{}",
                outcome.map_or("connection refused".into(), |f| f.to_string()),
                self.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unreachable!()
    }

    /// Polls node `node` (recorded reads) until it returns `value` for `key`, within
    /// [`CATCH_UP_WITHIN`] of `since`; returns how long after `since` it did.
    fn await_serves(&self, node: usize, key: &str, value: &Value, since: Instant) -> Duration {
        let deadline = since + CATCH_UP_WITHIN;
        let rec = self.workload.recorder();
        let mut seen = Vec::new();
        loop {
            let client = self.workload.new_client();
            if let Ok(mut conn) = McConn::connect(self.cluster.addr(node), Duration::from_secs(2)) {
                loop {
                    match recorded(rec, client, &mut conn, key, OpKind::Get) {
                        Ok(OpResult::Hit(v)) if v == *value => return since.elapsed(),
                        Ok(other) => note(&mut seen, since, format!("{other:?}")),
                        Err(f) => {
                            note(&mut seen, since, f.to_string());
                            break;
                        }
                    }
                    if Instant::now() > deadline {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                note(&mut seen, since, "connection refused".into());
            }
            assert!(
                Instant::now() < deadline,
                "node {node} did not serve {key} = {value} within {CATCH_UP_WITHIN:?}; it \
                 answered (first time each):\n{}\n{}",
                seen.join("\n"),
                self.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's items (recorded `gets` of the workload's keys and `extra`), once all
    /// nodes agree, within 10 s: the workload must be stopped. Panics, with the states, if
    /// they never agree.
    fn converged_states(&self, extra: &[String]) -> Vec<BTreeMap<String, (Vec<u8>, u64)>> {
        let mut keys = self.workload.keys();
        keys.extend(extra.iter().cloned());
        let started = Instant::now();
        let deadline = started + CATCH_UP_WITHIN;
        loop {
            let states: Vec<Result<_, String>> = (1..=self.n)
                .map(|i| {
                    read_state(
                        self.workload.recorder(),
                        &self.workload,
                        self.cluster.addr(i),
                        &keys,
                    )
                })
                .collect();
            let agreed = states.iter().all(|s| s.is_ok() && s == &states[0]);
            if agreed {
                figure(
                    "converge_after_quiet",
                    Some(started.elapsed()),
                    &self.tags(),
                );
                return states.into_iter().map(Result::unwrap).collect();
            }
            if Instant::now() > deadline {
                let shown: Vec<String> = states
                    .iter()
                    .enumerate()
                    .map(|(i, s)| format!("node {}: {}", i + 1, show_state(s)))
                    .collect();
                panic!(
                    "replicas still differ {CATCH_UP_WITHIN:?} after the workload stopped:\n{}\n{}",
                    shown.join("\n"),
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the workload, waits for the replicas to agree, and checks the final state and
    /// the history by the mode's checkers.
    fn finish(mut self, extra_keys: &[String]) {
        self.workload.stop();
        let states = self.converged_states(extra_keys);
        let unexpected = self.workload.unexpected();
        assert!(
            unexpected.is_empty(),
            "replies that make no sense:\n{}\n{}",
            unexpected.join("\n"),
            self.context()
        );
        let mut history = self.workload.history();
        if self.evictions {
            history.allow_evictions();
        }
        let indeterminate = history
            .ops()
            .iter()
            .filter(|o| o.is_indeterminate())
            .count();
        eprintln!(
            "{}: {} ops recorded, {indeterminate} without a reply\n{}",
            self.test,
            history.len(),
            self.workload.summary()
        );
        match self.mode {
            LIN => {
                let started = Instant::now();
                let verdict = check_linearizable(
                    &history,
                    Budget {
                        max_steps_per_key: 2_000_000,
                        max_time: Some(Duration::from_secs(30)),
                    },
                );
                eprintln!("linearizability checked in {:?}", started.elapsed());
                assert!(verdict.is_linearizable(), "{verdict}\n{}", self.context());
            }
            SEQ => {
                let verdict = check_write_order(&history);
                assert!(verdict.is_consistent(), "{verdict}\n{}", self.context());
                // The exhaustive check is for small histories: the keys with few ops (the
                // test's own markers and probes).
                let small: Vec<Op> = history
                    .by_key()
                    .into_values()
                    .filter(|ops| ops.len() <= 60)
                    .flatten()
                    .cloned()
                    .collect();
                let mut small = History::from_ops(small);
                if self.evictions {
                    small.allow_evictions();
                }
                let started = Instant::now();
                let verdict = check_sequential(
                    &small,
                    Budget {
                        max_steps_per_key: 200_000,
                        max_time: Some(Duration::from_secs(10)),
                    },
                );
                eprintln!(
                    "check_sequential of the {} ops of small keys: {verdict} ({:?})",
                    small.len(),
                    started.elapsed()
                );
                // Running out of budget is no verdict; only a proven violation fails.
                assert!(
                    !matches!(verdict, SequentialVerdict::NotSequentiallyConsistent(_)),
                    "{verdict}\n{}",
                    self.context()
                );
            }
            EVENTUAL => {
                let replicas: Vec<ReplicaState> = states
                    .iter()
                    .map(|s| {
                        s.iter()
                            .map(|(k, (v, cas))| {
                                (k.clone(), (Value(v.clone()), Version::from_cas(*cas)))
                            })
                            .collect()
                    })
                    .collect();
                let writes = self.workload.writes();
                let known = writes.iter().filter(|w| w.version.is_some()).count();
                eprintln!("{} writes, {known} with a known version", writes.len());
                assert_versions_unique(&writes, &self.context());
                let converged = match self.evictions {
                    true => check_converged_evicting(&replicas, &writes),
                    false => check_converged(&replicas, &writes),
                };
                if let Err(divergence) = converged {
                    panic!("{divergence}\n{}", self.context());
                }
            }
            CAUSAL => {
                let started = Instant::now();
                let verdict = check_causal(&history);
                eprintln!("causality checked in {:?}", started.elapsed());
                assert!(verdict.is_consistent(), "{verdict}\n{}", self.context());
            }
            other => unreachable!("mode {other}"),
        }
    }
}

/// Panics if two different writes of a key were stored at the same version: last writer
/// wins needs versions that name one write (a node restarted with its clock reset would
/// hand out versions again).
fn assert_versions_unique(writes: &[Write], context: &str) {
    let mut seen: BTreeMap<(&str, Version), &Option<Value>> = BTreeMap::new();
    for w in writes {
        let Some(version) = w.version else { continue };
        if let Some(other) = seen.insert((w.key.as_str(), version), &w.value) {
            panic!(
                "key {:?}: two writes stored at the same version {version:?}: {other:?} and \
                 {:?}; versions must name one write (does a restarted node reuse its \
                 clock?)\n{context}",
                w.key, w.value
            );
        }
    }
}

/// Adds `what` to `seen` unless it is there already, with the time it was first seen.
fn note(seen: &mut Vec<String>, since: Instant, what: String) {
    if !seen.iter().any(|s| s.ends_with(&format!(": {what}"))) {
        seen.push(format!("+{}ms: {what}", since.elapsed().as_millis()));
    }
}

fn show_state(state: &Result<BTreeMap<String, (Vec<u8>, u64)>, String>) -> String {
    match state {
        Ok(items) => items
            .iter()
            .map(|(k, (v, cas))| format!("{k}={}@{cas}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
            .join(" "),
        Err(e) => format!("unreadable: {e}"),
    }
}

/// `gets` of every key through `addr`, each recorded as a read of a new client.
fn read_state(
    rec: &Recorder,
    workload: &Workload,
    addr: SocketAddr,
    keys: &[String],
) -> Result<BTreeMap<String, (Vec<u8>, u64)>, String> {
    let client = workload.new_client();
    let mut conn = McConn::connect(addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
    let mut items = BTreeMap::new();
    for key in keys {
        let id = rec.invoke(client, key.as_str(), OpKind::Get);
        match conn.gets(key) {
            Ok(Some((v, cas))) => {
                rec.complete(id, OpResult::Hit(Value(v.clone())));
                items.insert(key.clone(), (v, cas));
            }
            Ok(None) => rec.complete(id, OpResult::Miss),
            Err(f) => {
                rec.fail(id);
                return Err(format!("{key}: {f}"));
            }
        }
    }
    Ok(items)
}

// ---------------------------------------------------------------------------------------
// kill -9 of a minority

/// Kills the first `(n-1)/2` nodes under load; writes through the others must resume
/// within 2 s; the killed nodes restart (empty: memory datalet) and must serve a key written
/// after their death within 10 s; the history passes the mode's checker and the replicas end
/// identical.
fn kill9_minority(n: usize, mode: &'static str) {
    let test = format!("kill9_minority_{mode}_{n}");
    let mut run = Run::start(&test, n, mode, false);
    let victims: Vec<usize> = (1..=(n - 1) / 2).collect();
    let survivors: Vec<usize> = (victims.len() + 1..=n).collect();
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();

    let killed = Instant::now();
    for &v in &victims {
        run.cluster.kill(v);
    }
    eprintln!("{test}: killed nodes {victims:?}");
    run.assert_writes_resume("resume_after_kill", killed, &survivors, HORIZON);

    let (key, value) = run.write_marker("after-kill", survivors[0]);
    let restarted = Instant::now();
    for &v in &victims {
        run.cluster.restart(v);
    }
    for &v in &victims {
        let took = run.await_serves(v, &key, &value, restarted);
        figure(
            "rejoin_after_restart",
            Some(took),
            &format!("node={v} {}", run.tags()),
        );
    }
    run.run_for(Duration::from_secs(1));
    run.finish(&[key]);
}

#[test]
fn kill9_minority_linearizable_3() {
    kill9_minority(3, LIN);
}

#[test]
fn kill9_minority_linearizable_5() {
    kill9_minority(5, LIN);
}

#[test]
fn kill9_minority_sequential_3() {
    kill9_minority(3, SEQ);
}

#[test]
fn kill9_minority_sequential_5() {
    kill9_minority(5, SEQ);
}

#[test]
fn kill9_minority_eventual_3() {
    kill9_minority(3, EVENTUAL);
}

#[test]
fn kill9_minority_eventual_5() {
    kill9_minority(5, EVENTUAL);
}

// ---------------------------------------------------------------------------------------
// Shards: 6 nodes, 3 copies of each key

/// A key of every replica group of a 6-node, 3-replica cluster: `prefix-g-i` for group g.
fn key_per_group(prefix: &str) -> Vec<String> {
    let ids: Vec<tailorkv_common::NodeId> = (1..=6).map(tailorkv_common::NodeId).collect();
    let placement = tailorkv_controlet::placement::Placement::new(&ids, 3);
    placement
        .groups()
        .map(|group| {
            (0..)
                .map(|i| format!("{prefix}-{}-{i}", group.0))
                .find(|k| placement.group_of(k.as_bytes()) == group)
                .expect("some key falls in every group")
        })
        .collect()
}

/// Checks that every group's keys are served through `via` within 5 s: a recorded write of
/// a key of each group is acknowledged and read back.
fn every_group_serves(run: &Run, name: &str, via: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for key in key_per_group(name) {
        let value = Value(format!("{key}-{}", run.seed).into_bytes());
        let mut seen = Vec::new();
        loop {
            let (set, _) = probe(run, via, &key, OpKind::Set(value.clone()));
            if matches!(set, Ok(OpResult::Stored)) {
                let (got, _) = probe(run, via, &key, OpKind::Get);
                if matches!(&got, Ok(OpResult::Hit(v)) if *v == value) {
                    break;
                }
                seen.push(format!("get: {got:?}"));
            } else {
                seen.push(format!("set: {set:?}"));
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {key} was not served through node {via} within 5 s: {seen:?}\n{}",
                run.context()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// In a strong mode, waits (up to 10 s) until every node is serving in every group it holds
/// with all three members back in the group's view: the next fault then hits whole groups.
fn await_whole_groups(run: &Run, name: &str) {
    if run.mode == EVENTUAL {
        return;
    }
    let deadline = Instant::now() + CATCH_UP_WITHIN;
    for node in 1..=run.n {
        loop {
            let mut raw = match tailorkv_tests::RawClient::try_connect(
                run.cluster.addr(node),
                Duration::from_secs(1),
            ) {
                Ok(raw) => raw,
                Err(e) => panic!("{name}: node {node}: {e}\n{}", run.context()),
            };
            let stats = String::from_utf8(raw.call(b"stats\r\n", b"END\r\n")).unwrap();
            let whole = stats.lines().any(|l| l == "STAT cluster_state serving")
                && stats
                    .lines()
                    .filter(|l| l.starts_with("STAT group_") && l.contains("_members "))
                    .all(|l| l.ends_with(" 3"));
            if whole {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: node {node} is not back in all its groups:\n{stats}\n{}",
                run.context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Six nodes with three copies of each key, clients on every node (most requests forwarded
/// to an owner): kill -9 of node 1 (a member of three groups), SIGSTOP of node 4 for 3 s, and
/// node 6 cut off from every other node. After each, writes through the other nodes resume
/// within 2 s and every group's keys are served through them (each group that lost a member
/// goes on with its other two, and forwarders turn to those); the node back serves a key
/// written meanwhile; the history passes the mode's checker.
fn shards_faults(mode: &'static str) {
    let test = format!("shards_faults_{mode}");
    let mut run = Run::start_with(&test, 6, mode, true, &["--replicas", "3"], 0);
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();
    let mut markers = Vec::new();

    let killed = Instant::now();
    run.cluster.kill(1);
    run.assert_writes_resume(
        "shards_resume_after_kill",
        killed,
        &[2, 3, 4, 5, 6],
        HORIZON,
    );
    every_group_serves(&run, "killed-1", 3);
    let (key, value) = run.write_marker("after-kill", 2);
    let restarted = Instant::now();
    run.cluster.restart(1);
    let took = run.await_serves(1, &key, &value, restarted);
    figure("shards_rejoin_after_restart", Some(took), &run.tags());
    markers.push(key);
    await_whole_groups(&run, "after restart");

    let stopped = Instant::now();
    run.cluster.stop(4);
    let paused = Duration::from_secs(3);
    run.assert_writes_resume(
        "shards_resume_after_sigstop",
        stopped,
        &[1, 2, 5, 6],
        paused,
    );
    every_group_serves(&run, "stopped-4", 6);
    std::thread::sleep((stopped + paused).saturating_duration_since(Instant::now()));
    run.cluster.cont(4);
    let continued = Instant::now();
    let (key, value) = run.write_marker("after-sigcont", 5);
    let took = run.await_serves(4, &key, &value, continued);
    figure("shards_rejoin_after_sigcont", Some(took), &run.tags());
    markers.push(key);
    await_whole_groups(&run, "after SIGCONT");

    let cut = Instant::now();
    run.net().isolate(6);
    eprintln!("{test}: node 6 cut off");
    run.assert_writes_resume(
        "shards_resume_after_isolation",
        cut,
        &[1, 2, 3, 4, 5],
        HORIZON,
    );
    every_group_serves(&run, "isolated-6", 2);
    run.net().heal();
    let healed = Instant::now();
    let (key, value) = run.write_marker("after-heal", 1);
    let took = run.await_serves(6, &key, &value, healed);
    figure("shards_rejoin_after_heal", Some(took), &run.tags());
    markers.push(key);

    run.run_for(Duration::from_secs(1));
    run.finish(&markers);
}

#[test]
fn shards_faults_linearizable() {
    shards_faults(LIN);
}

#[test]
fn shards_faults_sequential() {
    shards_faults(SEQ);
}

#[test]
fn shards_faults_eventual() {
    shards_faults(EVENTUAL);
}

// ---------------------------------------------------------------------------------------
// SIGSTOP

/// Pauses node 1 for 3 s under load: the others keep serving (writes resume within 2 s),
/// node 1 serves a key written after it continued within 10 s, and everything checks.
fn sigstop_pause(mode: &'static str) {
    let test = format!("sigstop_pause_{mode}");
    let run = Run::start(&test, 3, mode, false);
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();

    let stopped = Instant::now();
    run.cluster.stop(1);
    let paused = Duration::from_secs(3);
    run.assert_writes_resume("resume_after_sigstop", stopped, &[2, 3], paused);
    std::thread::sleep(
        (stopped + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
    );
    run.cluster.cont(1);
    let continued = Instant::now();
    let (key, value) = run.write_marker("after-sigcont", 2);
    let took = run.await_serves(1, &key, &value, continued);
    figure("rejoin_after_sigcont", Some(took), &run.tags());
    run.run_for(Duration::from_secs(1));
    run.finish(&[key]);
}

#[test]
fn sigstop_pause_linearizable() {
    sigstop_pause(LIN);
}

#[test]
fn sigstop_pause_sequential() {
    sigstop_pause(SEQ);
}

#[test]
fn sigstop_pause_eventual() {
    sigstop_pause(EVENTUAL);
}

// ---------------------------------------------------------------------------------------
// A full store

/// The store full all along: 3 nodes of 2 MiB (memcached's default eviction), the workload's
/// 2 KB values and an unrecorded filler writing 20 KB values under fresh keys through every
/// node, so the store evicts all the time, the workload's keys too; node 2 is paused for a
/// second meanwhile. The history passes the mode's checker for a store that evicts, the
/// replicas end identical, every node counts evictions, and none passed its limit by more
/// than what was in flight.
fn evicting(mode: &'static str) {
    let test = format!("evicting_{mode}");
    let mut run = Run::start_with(&test, 3, mode, false, &["--memory-limit", "2"], 2_000);
    run.evictions = true;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let filled = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for node in 1..=3 {
            let (run, stop, filled) = (&run, &stop, &filled);
            s.spawn(move || {
                let value = vec![b'f'; 20_000];
                let mut conn = None;
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => {
                            match McConn::connect(run.cluster.addr(node), Duration::from_secs(2)) {
                                Ok(c) => conn.insert(c),
                                Err(_) => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            }
                        }
                    };
                    match c.set(&format!("fill-{node}-{i}"), &value) {
                        Ok(_) => {
                            filled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(_) => conn = None,
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        run.run_for(Duration::from_secs(2));
        run.assert_healthy_start();
        run.cluster.stop(2);
        run.run_for(Duration::from_secs(1));
        run.cluster.cont(2);
        run.run_for(Duration::from_secs(3));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let filled = filled.into_inner();
    let evictions: Vec<u64> = (1..=3)
        .map(|node| stat(run.cluster.addr(node), "evictions"))
        .collect();
    let bytes: Vec<u64> = (1..=3)
        .map(|node| stat(run.cluster.addr(node), "bytes"))
        .collect();
    figure(
        "evicting",
        None,
        &format!(
            "{} filler_writes={filled} evictions={evictions:?} bytes={bytes:?}",
            run.tags()
        ),
    );
    assert!(
        filled > 300,
        "the filler wrote only {filled} values\n{}",
        run.context()
    );
    assert!(
        evictions.iter().all(|&e| e > 0),
        "every node must have evicted: {evictions:?}\n{}",
        run.context()
    );
    // 2 MiB, and in flight at most a few writes of 20 KB per client.
    assert!(
        bytes.iter().all(|&b| b <= 2 * 1024 * 1024 + 1024 * 1024),
        "a node holds far more than its limit: {bytes:?}\n{}",
        run.context()
    );
    run.finish(&[]);
}

/// A `stats` counter of the node at `addr`.
fn stat(addr: SocketAddr, name: &str) -> u64 {
    let mut conn = McConn::connect(addr, Duration::from_secs(5)).expect("connect for stats");
    let stats = conn.stats().expect("stats");
    stats
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats: {stats:?}"))
}

#[test]
fn evicting_linearizable() {
    evicting(LIN);
}

#[test]
fn evicting_sequential() {
    evicting(SEQ);
}

#[test]
fn evicting_eventual() {
    evicting(EVENTUAL);
}

// ---------------------------------------------------------------------------------------
// Partitions

/// Sends one recorded request through `node` and says how it ended and how long it took.
fn probe(run: &Run, node: usize, key: &str, kind: OpKind) -> (Result<OpResult, Failure>, Duration) {
    let client = run.workload.new_client();
    let started = Instant::now();
    let result = match McConn::connect(run.cluster.addr(node), Duration::from_secs(5)) {
        Ok(mut conn) => recorded(run.workload.recorder(), client, &mut conn, key, kind),
        Err(e) => Err(Failure::Io(e)),
    };
    (result, started.elapsed())
}

/// Partitions the first `(n-1)/2` nodes from the rest, in a strong mode: the majority
/// writes again within 2 s; the minority refuses writes (and, linearizable, reads) with
/// `SERVER_ERROR` within about 3 s, acknowledges no write, and after the heal serves the
/// latest value within 10 s.
fn partition_minority_refuses(n: usize, mode: &'static str) {
    let test = format!("partition_minority_refuses_{mode}_{n}");
    let run = Run::start(&test, n, mode, true);
    let minority: Vec<usize> = (1..=(n - 1) / 2).collect();
    let majority: Vec<usize> = (minority.len() + 1..=n).collect();
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();

    let cut = Instant::now();
    run.net().partition(&[&minority, &majority]);
    eprintln!("{test}: partitioned {minority:?} | {majority:?}");
    run.assert_writes_resume("resume_after_partition", cut, &majority, HORIZON);

    for &m in &minority {
        let value = Value(format!("minority-{m}-{}", run.seed).into_bytes());
        let (result, took) = probe(&run, m, "probe", OpKind::Set(value));
        eprintln!("{test}: set through cut-off node {m}: {result:?} after {took:?}");
        match result {
            Err(Failure::ServerError(_)) if took <= REFUSE_WITHIN => {}
            Ok(r) => panic!(
                "node {m}, cut off from the majority, acknowledged a write: {r:?} (if the \
                 partition cut nothing: does the peer transport bind the source address of \
                 its connections to the IP of --peer-listen?)\n{}",
                run.context()
            ),
            other => panic!(
                "node {m}, cut off from the majority, answered a write with {other:?} after \
                 {took:?}, not SERVER_ERROR within {REFUSE_WITHIN:?}\n{}",
                run.context()
            ),
        }
        let (result, took) = probe(&run, m, "k0", OpKind::Get);
        eprintln!("{test}: get through cut-off node {m}: {result:?} after {took:?}");
        match (&result, mode) {
            (Err(Failure::ServerError(_)), _) if took <= REFUSE_WITHIN => {}
            // Sequential reads are local: a cut-off node may answer them from its copy (the
            // checker judges the answer), but must not hang.
            (Ok(_), SEQ) => {}
            _ => panic!(
                "node {m}, cut off from the majority, answered a read with {result:?} after \
                 {took:?}, not SERVER_ERROR within {REFUSE_WITHIN:?}\n{}",
                run.context()
            ),
        }
        let acked = run
            .workload
            .writes_through_since(m, cut + Duration::from_millis(500));
        assert_eq!(
            acked,
            0,
            "node {m} acknowledged {acked} writes invoked well after it was cut off\n{}",
            run.context()
        );
    }

    run.net().heal();
    let healed = Instant::now();
    eprintln!("{test}: healed");
    let (key, value) = run.write_marker("after-heal", majority[0]);
    for &m in &minority {
        let took = run.await_serves(m, &key, &value, healed);
        figure(
            "rejoin_after_heal",
            Some(took),
            &format!("node={m} {}", run.tags()),
        );
    }
    // The healed minority takes writes again.
    let (key2, _) = run.write_marker("minority-after-heal", minority[0]);
    run.run_for(Duration::from_secs(1));
    run.finish(&[key, key2]);
}

#[test]
fn partition_minority_refuses_linearizable_3() {
    partition_minority_refuses(3, LIN);
}

#[test]
fn partition_minority_refuses_linearizable_5() {
    partition_minority_refuses(5, LIN);
}

#[test]
fn partition_minority_refuses_sequential_3() {
    partition_minority_refuses(3, SEQ);
}

#[test]
fn partition_minority_refuses_sequential_5() {
    partition_minority_refuses(5, SEQ);
}

/// Eventual mode, {1} | {2,3}: both sides keep accepting writes, each side reads its own
/// (the partition holds), and after the heal every replica converges within 10 s to each
/// key's highest-version write.
#[test]
fn partition_eventual_available() {
    let test = "partition_eventual_available";
    let run = Run::start(test, 3, EVENTUAL, true);
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();

    let cut = Instant::now();
    run.net().partition(&[&[1], &[2, 3]]);
    run.run_for(Duration::from_millis(500));
    // One key written on both sides: each side must see its own write.
    let (split_1, _) = run.write_marker("split-minority", 1);
    let (split_2, _) = run.write_marker("split-majority", 2);
    for (node, other) in [(1, &split_2), (2, &split_1)] {
        let (result, _) = probe(&run, node, other, OpKind::Get);
        assert!(
            matches!(result, Ok(OpResult::Miss)),
            "node {node} read {other} from across the partition ({result:?}): the partition \
             does not hold; does the peer transport bind the source address of its \
             connections to the IP of --peer-listen?\n{}",
            run.context()
        );
    }
    let (key, value_1) = ("split".to_string(), Value(b"minority-side".to_vec()));
    let value_2 = Value(b"majority-side".to_vec());
    for (node, value) in [(1, &value_1), (2, &value_2)] {
        let (result, took) = probe(&run, node, &key, OpKind::Set(value.clone()));
        assert!(
            matches!(result, Ok(OpResult::Stored)) && took < Duration::from_secs(1),
            "eventual mode: node {node} must accept a write during the partition, got \
             {result:?} after {took:?}\n{}",
            run.context()
        );
    }
    for (node, value) in [(1, &value_1), (2, &value_2)] {
        let client = run.workload.new_client();
        let mut conn = McConn::connect(run.cluster.addr(node), Duration::from_secs(2)).unwrap();
        let version =
            learn_version(run.workload.recorder(), client, &mut conn, &key, value).unwrap_or(None);
        assert!(
            version.is_some(),
            "node {node} does not read its own write of {key} during the partition\n{}",
            run.context()
        );
        run.workload.add_write(Write {
            key: key.clone(),
            value: Some(value.clone()),
            version,
        });
    }
    run.run_for(Duration::from_secs(2));
    for node in 1..=3 {
        let acked = run.workload.writes_through_since(node, cut);
        assert!(
            acked > 0,
            "eventual mode: no write acknowledged through node {node} during the \
             partition\n{}",
            run.context()
        );
    }

    run.net().heal();
    eprintln!("{test}: healed");
    run.run_for(Duration::from_secs(1));
    run.finish(&[key, split_1, split_2]);
}

// ---------------------------------------------------------------------------------------
// Packet loss

/// 10% of node 1's peer packets dropped for 5 s under load, linearizable: the cluster keeps
/// acknowledging writes, the history is linearizable (so no acknowledged write is lost: a
/// later read would miss it), and the replicas end identical.
#[test]
fn packet_loss() {
    let test = "packet_loss";
    let run = Run::start(test, 3, LIN, true);
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();

    let lossy = Instant::now();
    run.net().loss(1, 0.1);
    run.run_for(Duration::from_secs(5));
    run.net().heal();
    let counts: Vec<usize> = (1..=3)
        .map(|node| run.workload.writes_through_since(node, lossy))
        .collect();
    eprintln!("{test}: writes acknowledged during the loss, by node: {counts:?}");
    assert!(
        counts[1] > 0 && counts[2] > 0,
        "no writes through the healthy nodes during 10% loss on node 1: {counts:?}\n{}",
        run.context()
    );
    run.run_for(Duration::from_secs(1));
    run.finish(&[]);
}

// ---------------------------------------------------------------------------------------
// A mixed nemesis

/// How long a nemesis run injects faults: 8 s (the five runs keep the test command inside
/// its 20 minutes; about 5 faults each), or 5 minutes with `TAILORKV_SOAK=1`.
fn nemesis_duration() -> Duration {
    if std::env::var("TAILORKV_SOAK").is_ok_and(|v| v == "1") {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(8)
    }
}

/// One fault of a nemesis run.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9`, then a restart: an empty memory store, or the disk store as it was.
    Kill(usize),
    /// SIGSTOP, then SIGCONT.
    Pause(usize),
    /// Cut off from both others by the firewall, then healed.
    Isolate(usize),
    /// 10% of its peer packets dropped.
    Loss(usize),
    /// Two of the three nodes paused at once: no majority anywhere.
    MajorityPause(usize, usize),
    /// Two of the three nodes killed at once and restarted (memory datalets: empty), while
    /// the third holds every acknowledged write. As the README says, the survivor is then
    /// told to go on (`kill -USR1`) in the strong modes: the restarted runs forgot what they
    /// promised, so only the operator can know no other view was formed.
    MajorityKill(usize, usize),
}

/// Faults one at a time, chosen and timed by the seed, for [`nemesis_duration`], under the
/// recorded workload: kill -9 and restart, pauses, a node cut off, packet loss, and a
/// majority paused or killed at once. After each fault is undone every node must serve a
/// fresh write (through each node in turn) within [`CATCH_UP_WITHIN`]; at the end the
/// history passes the mode's checker and the replicas agree. With `value_size`, the recorded
/// values have that size, and values of 1 MB are written beside them ([`LargeWrites`]).
fn nemesis(mode: &'static str, disk: bool, value_size: usize) {
    let test = format!(
        "nemesis_{mode}{}{}",
        if disk { "_disk" } else { "" },
        if value_size > 0 { "_large" } else { "" }
    );
    let extra: &[&str] = if disk {
        &["--datalet", "disk:{dir}/node-{node}"]
    } else {
        &[]
    };
    let mut run = Run::start_with(&test, 3, mode, true, extra, value_size);
    run.run_for(Duration::from_secs(1));
    run.assert_healthy_start();
    let large = (value_size > 0).then(|| LargeWrites::start(&run.cluster.addrs()));
    let mut rng = StdRng::seed_from_u64(run.seed);
    let end = Instant::now() + nemesis_duration();
    let mut markers: Vec<(String, Value)> = Vec::new();
    let mut round = 0;
    while Instant::now() < end {
        round += 1;
        let node = rng.random_range(1..=3);
        let hold = Duration::from_millis(rng.random_range(300..2_000));
        let fault = match rng.random_range(0..6) {
            0 => Fault::Kill(node),
            1 => Fault::Pause(node),
            2 => Fault::Isolate(node),
            3 => Fault::Loss(node),
            4 => Fault::MajorityPause(node, node % 3 + 1),
            _ => Fault::MajorityKill(node, node % 3 + 1),
        };
        eprintln!("{test}: round {round}: {fault:?} for {hold:?}");
        match fault {
            Fault::Kill(i) => {
                run.cluster.kill(i);
                std::thread::sleep(hold);
                run.cluster.restart(i);
            }
            Fault::Pause(i) => {
                run.cluster.stop(i);
                std::thread::sleep(hold);
                run.cluster.cont(i);
            }
            Fault::Isolate(i) => {
                run.net().isolate(i);
                std::thread::sleep(hold);
                run.net().heal();
            }
            Fault::Loss(i) => {
                run.net().loss(i, 0.1);
                std::thread::sleep(hold);
                run.net().heal();
            }
            Fault::MajorityPause(a, b) => {
                run.cluster.stop(a);
                run.cluster.stop(b);
                std::thread::sleep(hold);
                run.cluster.cont(a);
                run.cluster.cont(b);
            }
            Fault::MajorityKill(a, b) => {
                run.cluster.kill(a);
                run.cluster.kill(b);
                std::thread::sleep(hold);
                run.cluster.restart(a);
                run.cluster.restart(b);
                if mode != EVENTUAL && mode != CAUSAL {
                    run.cluster.force_quorum(6 - a - b);
                }
            }
        }
        let undone = Instant::now();
        let (key, value) = run.write_marker(&format!("nemesis-{round}"), round % 3 + 1);
        let mut slowest = Duration::ZERO;
        for i in 1..=3 {
            slowest = slowest.max(run.await_serves(i, &key, &value, undone));
        }
        figure(
            "serving_after_fault",
            Some(slowest),
            &format!("fault={fault:?} {}", run.tags()),
        );
        let weak = mode == EVENTUAL || mode == CAUSAL;
        if weak && matches!(fault, Fault::Kill(_) | Fault::MajorityKill(..)) {
            // A node restarted empty serves at once and is refilled (by anti-entropy, or the
            // causal mode's refills). Until it
            // is, the data it lost lives on the others only, and the next fault could take
            // every copy: so the next fault waits for the refill, which must come within
            // CATCH_UP_WITHIN.
            for (earlier, value) in &markers {
                for i in 1..=3 {
                    run.await_serves(i, earlier, value, undone);
                }
            }
        }
        markers.push((key, value));
    }
    eprintln!("{test}: {round} faults");
    run.run_for(Duration::from_secs(1));
    if let Some(large) = large {
        large.finish(&run);
    }
    let markers: Vec<String> = markers.into_iter().map(|(key, _)| key).collect();
    run.finish(&markers);
}

/// Values of [`LARGE_VALUE`] bytes written beside a nemesis's workload, to keys of their own,
/// through each node in turn, one at a time. They stay out of the recorded history (whose
/// checkers copy values as they search); instead, at the end every replica must hold the same
/// item for each key, and it must be the last acknowledged write of that key or one tried
/// after it: an acknowledged write is never lost, nor replaced by an earlier one.
struct LargeWrites {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<LargeWrite>>,
}

/// One write of a large value: `n` names its value ([`large_value`]).
struct LargeWrite {
    key: String,
    n: u64,
    acked: bool,
}

/// 1 MB: the largest value a default item size limit (1 MiB, key and header included) takes.
const LARGE_VALUE: usize = 1_000_000;
const LARGE_KEYS: u64 = 4;

fn large_value(key: &str, n: u64) -> Vec<u8> {
    let mut value = format!("{key}-{n}.").into_bytes();
    value.resize(LARGE_VALUE, b'a' + (n % 26) as u8);
    value
}

impl LargeWrites {
    fn start(addrs: &[SocketAddr]) -> LargeWrites {
        use std::sync::atomic::Ordering::Relaxed;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let addrs = addrs.to_vec();
        let stopped = std::sync::Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut writes = Vec::new();
            let mut conns: Vec<Option<McConn>> = addrs.iter().map(|_| None).collect();
            for n in 0.. {
                if stopped.load(Relaxed) {
                    break;
                }
                let i = n as usize % addrs.len();
                let key = format!("large{}", n % LARGE_KEYS);
                let conn = match &mut conns[i] {
                    Some(conn) => conn,
                    slot => match McConn::connect(addrs[i], Duration::from_secs(3)) {
                        Ok(conn) => slot.insert(conn),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    },
                };
                let result = conn.set(&key, &large_value(&key, n));
                let acked = matches!(result, Ok(OpResult::Stored));
                if matches!(result, Err(Failure::Timeout | Failure::Io(_))) {
                    conns[i] = None;
                }
                writes.push(LargeWrite { key, n, acked });
                std::thread::sleep(Duration::from_millis(50));
            }
            writes
        });
        LargeWrites { stop, thread }
    }

    /// Stops the writes and checks what the replicas hold, once they agree (within
    /// [`CATCH_UP_WITHIN`]).
    fn finish(self, run: &Run) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let writes = self.thread.join().expect("the large-value writer");
        let acked = writes.iter().filter(|w| w.acked).count();
        eprintln!(
            "{}: {} writes of {LARGE_VALUE} bytes, {acked} acknowledged",
            run.test,
            writes.len()
        );
        assert!(
            acked > 0,
            "no large write was acknowledged
{}",
            run.context()
        );
        for k in 0..LARGE_KEYS {
            let key = format!("large{k}");
            let tried: Vec<&LargeWrite> = writes.iter().filter(|w| w.key == key).collect();
            let last_acked = tried.iter().filter(|w| w.acked).map(|w| w.n).max();
            let deadline = Instant::now() + CATCH_UP_WITHIN;
            let held = loop {
                let held: Vec<Option<(Vec<u8>, u64)>> = (1..=run.n)
                    .map(|i| {
                        McConn::connect(run.cluster.addr(i), Duration::from_secs(5))
                            .ok()
                            .and_then(|mut c| c.gets(&key).ok())
                            .flatten()
                    })
                    .collect();
                if held.iter().all(|h| h == &held[0]) {
                    break held.into_iter().next().flatten();
                }
                assert!(
                    Instant::now() < deadline,
                    "replicas hold different {key} (first bytes: {:?})
{}",
                    held.iter()
                        .map(|h| h
                            .as_ref()
                            .map(|(v, cas)| (String::from_utf8_lossy(&v[..24]).into_owned(), *cas)))
                        .collect::<Vec<_>>(),
                    run.context()
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            let Some((value, _)) = held else {
                assert!(
                    last_acked.is_none(),
                    "{key}: write {last_acked:?} was acknowledged, and no replica holds the key
{}",
                    run.context()
                );
                continue;
            };
            let n = tried
                .iter()
                .map(|w| w.n)
                .find(|&n| large_value(&key, n) == value)
                .unwrap_or_else(|| {
                    panic!(
                        "{key}: the replicas hold a value never written
{}",
                        run.context()
                    )
                });
            assert!(
                last_acked.is_none_or(|last| n >= last),
                "{key}: the replicas hold write {n}, older than acknowledged write {last_acked:?}
{}",
                run.context()
            );
        }
    }
}

#[test]
fn nemesis_linearizable_large_values() {
    nemesis(LIN, false, 5_000);
}

#[test]
fn nemesis_linearizable_disk() {
    nemesis(LIN, true, 0);
}

#[test]
fn nemesis_sequential() {
    nemesis(SEQ, false, 0);
}

#[test]
fn nemesis_eventual_large_values() {
    nemesis(EVENTUAL, false, 5_000);
}

#[test]
fn nemesis_causal() {
    nemesis(CAUSAL, false, 0);
}

// ---------------------------------------------------------------------------------------
// Restart and catch-up of a large store

/// Writes N keys through node 1 (100,000 with `TAILORKV_SOAK=1`; 20,000 otherwise, to keep
/// CI short), kills node 3, restarts it empty, and measures how long until its linearizable
/// reads return the last key and a sample of 500 keys correctly. A wrong answer meanwhile (a miss, an old value)
/// fails the test: a linearizable read must refuse or wait, never answer from a copy that
/// has not caught up.
#[test]
fn restart_catch_up_100k() {
    let test = "restart_catch_up_100k";
    let seed = seed(test);
    let keys: usize = if std::env::var("TAILORKV_SOAK").is_ok_and(|v| v == "1") {
        100_000
    } else {
        20_000
    };
    let mut cluster = ProcCluster::start(3, LIN, &[]);
    let context = |cluster: &ProcCluster| {
        format!(
            "{test}, {keys} keys, seed {seed} (TAILORKV_SEED={seed} repeats it)\n{}",
            cluster.describe()
        )
    };
    let value = |i: usize| format!("v{i}-{seed}-{}", "x".repeat(i % 50));

    // Load: pipelined noreply sets in big batches on a few connections (key i on connection
    // i % LOADERS), each ended by a get of its own last key: a connection's commands are
    // served in order, so once that answers, all its sets are in.
    const LOADERS: usize = 4;
    let load_timeout = Duration::from_secs(if keys > 20_000 { 300 } else { 60 });
    let catch_up_timeout = Duration::from_secs(if keys > 20_000 { 150 } else { 30 });
    let started = Instant::now();
    std::thread::scope(|s| {
        for c in 0..LOADERS {
            let (addr, value, cluster) = (cluster.addr(1), &value, &cluster);
            s.spawn(move || {
                let mut conn = McConn::connect(addr, load_timeout).expect("connect node 1");
                let mine: Vec<usize> = (c..keys).step_by(LOADERS).collect();
                for batch in mine.chunks(1_000) {
                    let mut req = Vec::with_capacity(batch.len() * 80);
                    for &i in batch {
                        let v = value(i);
                        write!(req, "set ck{i} 0 0 {} noreply\r\n{v}\r\n", v.len()).unwrap();
                    }
                    if let Err(f) = conn.send(&req) {
                        panic!("loading node 1: {f}\n{}", context(cluster));
                    }
                }
                let Some(&last) = mine.last() else { return };
                match conn.get(&format!("ck{last}")) {
                    Ok(OpResult::Hit(v)) if v.0 == value(last).as_bytes() => {}
                    other => panic!(
                        "loading node 1: get ck{last} after its sets -> {other:?}\n{}",
                        context(cluster)
                    ),
                }
            });
        }
    });
    let last = format!("ck{}", keys - 1);
    let mut conn = McConn::connect(cluster.addr(1), load_timeout).expect("connect node 1");
    figure("load", Some(started.elapsed()), &format!("keys={keys}"));

    let mut rng = StdRng::seed_from_u64(seed);
    let sample: Vec<usize> = (0..500).map(|_| rng.random_range(0..keys)).collect();
    let check_sample = |conn: &mut McConn| -> Result<(), String> {
        for chunk in sample.chunks(100) {
            let names: Vec<String> = chunk.iter().map(|i| format!("ck{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let got = conn.gets_many(&refs).map_err(|f| format!("retry: {f}"))?;
            for (&i, name) in chunk.iter().zip(&names) {
                let want = value(i);
                match got.get(name) {
                    Some((v, _)) if v == want.as_bytes() => {}
                    other => {
                        return Err(format!(
                            "{name}: wanted {want:?}, got {:?}",
                            other.map(|(v, _)| String::from_utf8_lossy(v))
                        ))
                    }
                }
            }
        }
        Ok(())
    };
    if let Err(e) = check_sample(&mut conn) {
        panic!("node 1 lost loaded keys: {e}\n{}", context(&cluster));
    }

    cluster.kill(3);
    let restarted = Instant::now();
    cluster.restart(3);
    let deadline = restarted + catch_up_timeout;
    let mut refusals = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up within {catch_up_timeout:?} ({refusals} refused or timed-out \
             reads)\n{}",
            context(&cluster)
        );
        let Ok(mut conn) = McConn::connect(cluster.addr(3), Duration::from_secs(5)) else {
            refusals += 1;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        match conn.get(&last) {
            Ok(OpResult::Hit(v)) if v.0 == value(keys - 1).as_bytes() => {}
            Ok(other) => panic!(
                "node 3, restarted, answered a linearizable read of {last} with {other:?}: a \
                 stale read\n{}",
                context(&cluster)
            ),
            Err(_) => {
                refusals += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        match check_sample(&mut conn) {
            Ok(()) => break,
            Err(e) if e.starts_with("retry") => refusals += 1,
            Err(e) => panic!(
                "node 3 serves {last} but a stale value elsewhere: {e}\n{}",
                context(&cluster)
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = restarted.elapsed();
    eprintln!("{test}: node 3 caught up after {took:?}, {refusals} refused reads on the way");
    figure("catch_up", Some(took), &format!("keys={keys}"));
}
