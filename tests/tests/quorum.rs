//! Read and write quorums in the eventual mode (`--read-quorum R --write-quorum W`, N =
//! `--replicas`) on real processes: with R + W > N a read after an acknowledged write never
//! misses it, even when the node that took the write is killed with SIGKILL right after
//! acknowledging it; with R + W <= N a replica cut off from the writes serves stale reads,
//! which stop once the partition heals, while R + W > N refuses there rather than answer
//! stale; concurrent writes of one key are found by version vectors, counted, and settled
//! the same way on every replica. The staleness curves per (R, W) are in
//! `examples/tests/faults_and_staleness.rs` and BENCHMARKS.md.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tailorkv_tests::checker::OpResult;
use tailorkv_tests::client::{Failure, McConn};
use tailorkv_tests::procs::{Net, ProcCluster};

fn connect(addr: SocketAddr) -> McConn {
    McConn::connect(addr, Duration::from_secs(5)).expect("connect")
}

fn hit(v: &str) -> OpResult {
    OpResult::Hit(v.into())
}

/// Node `i`'s log, without terminal colours.
fn plain_log(cluster: &ProcCluster, i: usize) -> String {
    let raw = std::fs::read_to_string(cluster.log_path(i)).unwrap();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An escape sequence: up to its final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn stat(addr: SocketAddr, name: &str) -> u64 {
    let stats = connect(addr).stats().unwrap();
    stats
        .get(name)
        .unwrap_or_else(|| panic!("no stat {name}"))
        .parse()
        .unwrap()
}

#[test]
fn with_r_plus_w_over_n_a_read_never_misses_an_acknowledged_write_under_kill_9() {
    // N = 3, W = 2, R = 2; disk stores, so a killed node keeps what it acknowledged.
    let mut cluster = ProcCluster::start(
        3,
        "eventual",
        &[
            "--read-quorum",
            "2",
            "--write-quorum",
            "2",
            "--datalet",
            "disk:{dir}/node-{node}",
        ],
    );
    let mut checked = 0;
    for round in 0..6 {
        // The node the write goes through, or another, is killed (N - W = 1) as soon as the
        // write is acknowledged; the two left are read at once.
        let through = round % 3 + 1;
        let victim = if round < 3 { through } else { through % 3 + 1 };
        let key = format!("q{round}");
        let value = format!("v{round}");
        let mut writer = connect(cluster.addr(through));
        for i in 0..20 {
            let v = format!("{value}-{i}");
            assert_eq!(writer.set(&key, v.as_bytes()).unwrap(), OpResult::Stored);
        }
        let last = format!("{value}-19");
        cluster.kill(victim);
        for node in (1..=3).filter(|&n| n != victim) {
            let got = connect(cluster.addr(node)).get(&key).unwrap();
            assert_eq!(
                got,
                hit(&last),
                "round {round}: node {node} missed the write acknowledged through node \
                 {through} after node {victim} was killed"
            );
            checked += 1;
        }
        // Writes and reads go on through the two left.
        let left: Vec<usize> = (1..=3).filter(|&n| n != victim).collect();
        let mut w = connect(cluster.addr(left[0]));
        let mut r = connect(cluster.addr(left[1]));
        for i in 0..10 {
            let (k, v) = (format!("{key}-after"), format!("a{i}"));
            assert_eq!(w.set(&k, v.as_bytes()).unwrap(), OpResult::Stored);
            assert_eq!(
                r.get(&k).unwrap(),
                hit(&v),
                "round {round}: read after write"
            );
            checked += 1;
        }
        cluster.restart(victim);
        // The restarted node answers reads with the others' help at once.
        let got = connect(cluster.addr(victim))
            .get(&format!("{key}-after"))
            .unwrap();
        assert_eq!(got, hit("a9"), "round {round}: restarted node {victim}");
    }
    eprintln!("{checked} reads after acknowledged writes, none missed");
}

#[test]
fn with_r_plus_w_at_most_n_a_cut_off_replica_reads_stale_until_healed() {
    Net::available();
    // R = W = 1 (R + W <= N): node 3, cut off, serves what it has.
    let cluster = ProcCluster::start(3, "eventual", &[]);
    let net = Net::new();
    let mut on1 = connect(cluster.addr(1));
    let mut on3 = connect(cluster.addr(3));
    assert_eq!(on1.set("s", b"old").unwrap(), OpResult::Stored);
    let deadline = Instant::now() + Duration::from_secs(5);
    while on3.get("s").unwrap() != hit("old") {
        assert!(
            Instant::now() < deadline,
            "node 3 never saw the first write"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    net.isolate(3);
    assert_eq!(on1.set("s", b"new").unwrap(), OpResult::Stored);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(on3.get("s").unwrap(), hit("old"), "stale while cut off");
    net.heal();
    let healed = Instant::now();
    while on3.get("s").unwrap() != hit("new") {
        assert!(
            healed.elapsed() < Duration::from_secs(10),
            "node 3 still stale 10 s after healing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "FIGURE quorum_stale_until_ms={} r=1 w=1",
        healed.elapsed().as_millis()
    );
    drop((net, cluster));

    // R = W = 2 (R + W > N): node 3, cut off, refuses; the others serve the new value.
    let cluster = ProcCluster::start(
        3,
        "eventual",
        &["--read-quorum", "2", "--write-quorum", "2"],
    );
    let net = Net::new();
    let mut on1 = connect(cluster.addr(1));
    let mut on2 = connect(cluster.addr(2));
    let mut on3 = connect(cluster.addr(3));
    assert_eq!(on1.set("s", b"old").unwrap(), OpResult::Stored);
    assert_eq!(on3.get("s").unwrap(), hit("old"));
    net.isolate(3);
    assert_eq!(on1.set("s", b"new").unwrap(), OpResult::Stored);
    assert_eq!(on2.get("s").unwrap(), hit("new"));
    match on3.get("s") {
        Err(Failure::ServerError(why)) => assert!(why.contains("read quorum"), "{why}"),
        other => panic!("a cut-off node answered a quorum read: {other:?}"),
    }
    // A write there is refused too, though stored where it was taken.
    match on3.set("t", b"cut-off") {
        Err(Failure::ServerError(why)) => assert!(why.contains("write quorum"), "{why}"),
        other => panic!("a cut-off node acknowledged a quorum write: {other:?}"),
    }
    assert!(stat(cluster.addr(3), "quorum_refused") >= 2);
    net.heal();
    let healed = Instant::now();
    let mut on3 = connect(cluster.addr(3));
    loop {
        match on3.get("s") {
            Ok(got) => {
                assert_eq!(
                    got,
                    hit("new"),
                    "a quorum read answered stale after healing"
                );
                break;
            }
            Err(Failure::ServerError(_)) if healed.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn concurrent_writes_are_found_counted_and_settled_alike_everywhere() {
    let cluster = ProcCluster::start(
        3,
        "eventual",
        &["--read-quorum", "1", "--write-quorum", "3"],
    );
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for node in [1, 2] {
            let (barrier, addr) = (&barrier, cluster.addr(node));
            s.spawn(move || {
                let mut c = connect(addr);
                for i in 0..200 {
                    barrier.wait();
                    let v = format!("n{node}-{i}");
                    assert_eq!(c.set("race", v.as_bytes()).unwrap(), OpResult::Stored);
                }
            });
        }
    });
    let conflicts: u64 = (1..=3)
        .map(|n| stat(cluster.addr(n), "eventual_conflicts"))
        .sum();
    assert!(
        conflicts > 0,
        "200 simultaneous pairs of writes, no conflict found"
    );
    eprintln!("FIGURE quorum_conflicts={conflicts} pairs=200");
    // W = N: every replica held each write before it was acknowledged, so they agree now.
    let values: Vec<OpResult> = (1..=3)
        .map(|n| connect(cluster.addr(n)).get("race").unwrap())
        .collect();
    assert!(
        values.iter().all(|v| v == &values[0]),
        "replicas settled differently: {values:?}"
    );
}

#[test]
fn a_node_outside_the_group_stands_in_for_owners_that_are_down_and_hands_their_writes_back() {
    use tailorkv_common::NodeId;
    use tailorkv_controlet::placement::{partition_of, Placement};
    // 4 nodes, 3 copies of each key, W = 2: a key's owners are 3 of the 4 nodes.
    let mut cluster =
        ProcCluster::start(4, "eventual", &["--replicas", "3", "--write-quorum", "2"]);
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let placement = Placement::new(&ids, 3);
    let key = "sloppy";
    let owners: Vec<usize> = placement
        .owners(partition_of(key.as_bytes()))
        .iter()
        .map(|n| usize::from(n.0))
        .collect();
    let outside = (1..=4).find(|n| !owners.contains(n)).unwrap();
    let (through, down) = (owners[0], &owners[1..]);
    assert_eq!(
        connect(cluster.addr(through)).set(key, b"before").unwrap(),
        OpResult::Stored
    );
    for &n in down {
        cluster.kill(n);
    }
    // Two of three owners down: a strict quorum of 2 cannot be had; the node outside the
    // group stands in (it holds the write for both, and counts once).
    let mut c = connect(cluster.addr(through));
    assert_eq!(c.set(key, b"while-down").unwrap(), OpResult::Stored);
    let log = plain_log(&cluster, outside);
    assert!(
        log.contains("holding writes for a node that did not answer"),
        "node {outside} took no write to hold:\n{log}"
    );
    // One write held for each owner down, counted on both sides.
    assert_eq!(stat(cluster.addr(outside), "stand_in_taken"), 2);
    assert_eq!(stat(cluster.addr(outside), "stand_in_held"), 2);
    assert_eq!(stat(cluster.addr(through), "quorum_stand_ins"), 2);
    assert_eq!(stat(cluster.addr(through), "stand_in_taken"), 0);
    // The owners come back empty (memory stores): the held write is handed back to them.
    for &n in down {
        cluster.restart(n);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = plain_log(&cluster, outside);
        let handed = down
            .iter()
            .all(|n| log.contains(&format!("held writes handed back owner={n}")));
        if handed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {outside} did not hand the held writes back to {down:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for &n in down {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = connect(cluster.addr(n));
        while c.get(key).unwrap() != hit("while-down") {
            assert!(Instant::now() < deadline, "owner {n} never got the write");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(stat(cluster.addr(outside), "stand_in_handed_back"), 2);
    assert_eq!(stat(cluster.addr(outside), "stand_in_held"), 0);
}
