//! What a user does with `cluster --faults` and the `staleness` observer: a local cluster on
//! a slow, lossy, crashing network, watched as the modes behave.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tailorkv_tests::checker::OpResult;
use tailorkv_tests::client::McConn;
use tailorkv_tests::free_port;
use tailorkv_tests::server::binary;

/// One cluster at a time: these tests time what they see, on two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// `n` consecutive free ports.
fn free_ports(n: u16) -> u16 {
    loop {
        let base = free_port();
        if base.checked_add(n).is_some()
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
}

/// A `cluster` process and the lines it prints.
struct Cluster {
    child: Child,
    lines: Receiver<String>,
    client_port: u16,
    peer_port: u16,
}

impl Cluster {
    fn start(mode: &str, faults: Option<&str>) -> Cluster {
        Self::start_with(mode, faults, &[])
    }

    /// [`Cluster::start`] with `extra` flags for every node.
    fn start_with(mode: &str, faults: Option<&str>, extra: &[&str]) -> Cluster {
        binary("controlet"); // `cluster` starts the one next to it
        let (client_port, peer_port) = (free_ports(3), free_ports(3));
        let mut command = Command::new(binary("cluster"));
        command
            .args(["--nodes", "3", "--consistency", mode])
            .args(["--client-port", &client_port.to_string()])
            .args(["--peer-port", &peer_port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(faults) = faults {
            command.args(["--faults", faults]);
        }
        if !extra.is_empty() {
            command.arg("--").args(extra);
        }
        let mut child = command.spawn().expect("start cluster");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let cluster = Cluster {
            child,
            lines,
            client_port,
            peer_port,
        };
        cluster.expect_line("Ctrl-C stops every node", Duration::from_secs(30));
        cluster
    }

    fn addr(&self, node: u16) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.client_port + node - 1).into()
    }

    /// Waits for a line containing `text`; the lines before it.
    fn expect_line(&self, text: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return seen,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {text:?} within {within:?}; saw {seen:?}"),
            }
        }
    }

    /// Stops it as Ctrl-C would.
    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "cluster exited {status}");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The observer's JSON report against `cluster`: writes through node 1, reads through 2 and 3.
fn observe(cluster: &Cluster, trials: u64, delays: &str) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_staleness"))
        .args(["--write", &cluster.addr(1).to_string()])
        .args([
            "--read",
            &format!("{},{}", cluster.addr(2), cluster.addr(3)),
        ])
        .args(["--trials", &trials.to_string(), "--delays", delays])
        .args(["--threads", "2", "--json"])
        .output()
        .expect("run staleness");
    assert!(
        out.status.success(),
        "staleness failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("staleness JSON")
}

/// `(reads, stale)` at each delay of a report.
fn points(report: &Value) -> Vec<(u64, u64, u64)> {
    report["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["delay_ms"].as_u64().unwrap(),
                p["reads"].as_u64().unwrap(),
                p["stale"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn assert_no_errors(report: &Value) {
    assert_eq!(report["write_errors"], 0, "{report}");
    assert_eq!(report["read_errors"], 0, "{report}");
}

/// Milliseconds a `set` through node 1 takes, the median of 7.
fn set_ms(cluster: &Cluster) -> f64 {
    let mut conn = McConn::connect(cluster.addr(1), Duration::from_secs(5)).unwrap();
    let mut times: Vec<f64> = (0..7)
        .map(|i| {
            let started = Instant::now();
            let reply = conn.set(&format!("timed{i}"), b"v").unwrap();
            assert_eq!(reply, OpResult::Stored);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[3]
}

/// With 30 ms injected on every peer link, eventual mode acknowledges a write at once and the
/// other nodes learn it later: the observer sees most reads at 0 ms stale and none at 150 ms.
/// Linearizable mode pays the latency in every write and shows no stale read at all.
#[test]
fn injected_latency_shows_in_stale_reads_of_eventual_mode_and_never_in_linearizable() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let eventual = Cluster::start("eventual", Some("latency=30ms"));
    let fast = set_ms(&eventual);
    assert!(
        fast < 30.0,
        "an eventual write waited {fast} ms for its peers"
    );
    let report = observe(&eventual, 40, "0,150");
    assert_no_errors(&report);
    let seen = points(&report);
    let (_, reads0, stale0) = seen[0];
    assert_eq!(reads0, 40);
    assert!(
        stale0 * 2 >= reads0,
        "only {stale0} of {reads0} reads right after the write were stale: {report}"
    );
    assert_eq!(seen[1], (150, 40, 0), "stale 150 ms after: {report}");
    eventual.stop();

    let linearizable = Cluster::start("linearizable", Some("latency=30ms"));
    let slow = set_ms(&linearizable);
    assert!(
        slow >= 30.0,
        "a linearizable write took {slow} ms with 30 ms on every peer link"
    );
    let report = observe(&linearizable, 20, "0");
    assert_no_errors(&report);
    assert_eq!(points(&report), vec![(0, 20, 0)], "{report}");
    linearizable.stop();
}

/// Quorums in the eventual mode, N = 3, with 30 ms on every peer link: R = W = 2 (R + W > N)
/// pays a round trip in each write and read and shows no stale read, where R = W = 1 (the
/// test above) shows most reads right after a write stale.
#[test]
fn quorums_over_n_show_no_stale_read_under_latency() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let quorum = Cluster::start_with(
        "eventual",
        Some("latency=30ms"),
        &["--read-quorum", "2", "--write-quorum", "2"],
    );
    let slow = set_ms(&quorum);
    assert!(
        slow >= 55.0,
        "a write with W = 2 took {slow} ms with 30 ms each way on every peer link"
    );
    let report = observe(&quorum, 20, "0");
    assert_no_errors(&report);
    assert_eq!(points(&report), vec![(0, 20, 0)], "{report}");
    quorum.stop();
}

/// `crash-every` kills each node in turn and restarts it; the cluster keeps its data and
/// every node serves again.
#[test]
fn crash_every_kills_and_restarts_each_node_in_turn_and_the_cluster_goes_on() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start("linearizable", Some("crash-every=1s,down=500ms"));
    let mut conn = McConn::connect(cluster.addr(3), Duration::from_secs(5)).unwrap();
    assert_eq!(conn.set("kept", b"before").unwrap(), OpResult::Stored);
    for node in [1, 2] {
        cluster.expect_line(&format!("node {node} killed"), Duration::from_secs(5));
        cluster.expect_line(&format!("node {node} restarted"), Duration::from_secs(5));
    }
    // Node 3 is killed next; read through nodes 1 and 2, restarted, once they serve.
    for node in [1, 2] {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = McConn::connect(cluster.addr(node), Duration::from_secs(2))
                .ok()
                .and_then(|mut c| c.gets("kept").ok().flatten())
                .map(|(value, _)| value);
            if got.as_deref() == Some(b"before".as_slice()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restarted node {node} does not serve the write made before: {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    cluster.stop();
}

/// `loss=` drops peer packets with iptables rules of the cluster's own, which it removes on
/// exit; the cluster keeps serving writes (TCP resends what was lost; a write that meets a
/// view change may be refused, and is tried again).
#[test]
fn loss_installs_iptables_rules_for_the_peer_ports_and_removes_them_on_exit() {
    tailorkv_tests::procs::Net::available();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start("linearizable", Some("loss=3%"));
    let chain = format!("tailorkv-loss-{}", cluster.child.id());
    let rules = |chain: &str| {
        let out = Command::new("iptables")
            .args(["-w", "-S", chain])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = rules(&chain);
    let ports = format!("{}:{}", cluster.peer_port, cluster.peer_port + 2);
    for side in ["--dport", "--sport"] {
        let rule = listed
            .lines()
            .find(|rule| rule.contains(&format!("{side} {ports} ")))
            .unwrap_or_else(|| panic!("no {side} rule for {ports}: {listed}"));
        // iptables prints the probability as a float: 0.02999999980.
        let p: f64 = rule
            .split("--probability ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no probability in {rule}"));
        assert!((p - 0.03).abs() < 1e-6, "{rule}");
        assert!(rule.ends_with("-j DROP"), "{rule}");
    }
    let mut conn = McConn::connect(cluster.addr(1), Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0;
    for i in 0..20 {
        loop {
            match conn.set(&format!("k{i}"), b"v") {
                Ok(OpResult::Stored) => break,
                other => {
                    refused += 1;
                    assert!(
                        Instant::now() < deadline,
                        "20 writes not stored within 30 s at 3% loss: {other:?}"
                    );
                }
            }
        }
    }
    eprintln!("20 writes at 3% loss; {refused} refused and tried again");
    cluster.stop();
    assert_eq!(rules(&chain), "", "the chain outlived the cluster");
}
