//! The causal mode on real clusters: histories recorded from clients bound to nodes and from
//! clients that move between nodes with a causal token, checked by [`check_causal`]; a write
//! held back while what it depends on cannot arrive (a partition), and the planted bug that
//! shows it anyway, caught; a token that a cut-off node refuses rather than answer from
//! before it; restarted nodes (memory and disk) caught up by refills. The nemesis run in
//! `faults.rs` (`nemesis_causal`) adds kill -9, pauses, isolation and loss.
//!
//! Randomized runs are seeded; a failure prints its seed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tailorkv_controlet::config::Consistency;
use tailorkv_tests::checker::{check_causal, OpKind, OpResult, Recorder, Value};
use tailorkv_tests::client::{Failure, McConn};
use tailorkv_tests::procs::{Net, ProcCluster};
use tailorkv_tests::workload::{key_range, random_client, recorded};
use tailorkv_tests::Cluster;

fn connect(addr: SocketAddr) -> McConn {
    McConn::connect(addr, Duration::from_secs(10)).expect("connect")
}

/// A session that moves to a random node before every op, carrying its causal token: sets
/// and gets through the meta protocol's `Y` flag, recorded as one client.
fn traveling_client(
    addrs: &[SocketAddr],
    client: u32,
    ops: usize,
    keys: usize,
    seed: u64,
    rec: &Recorder,
) {
    let mut conns: Vec<McConn> = addrs.iter().map(|&a| connect(a)).collect();
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(u64::from(client)));
    let mut token: Option<String> = None;
    for i in 0..ops {
        let conn = &mut conns[rng.random_range(0..addrs.len())];
        let key = format!("k{}", rng.random_range(0..keys));
        let (id, result) = if rng.random_bool(0.4) {
            let value = format!("t{client}-{i}").into_bytes();
            let kind = OpKind::Set(Value(value.clone()));
            let id = rec.invoke(client, key.as_str(), kind.clone());
            (id, conn.set_causal(&key, &value, token.as_deref()))
        } else {
            let id = rec.invoke(client, key.as_str(), OpKind::Get);
            (id, conn.get_causal(&key, token.as_deref()))
        };
        match result {
            Ok((got, next)) => {
                rec.complete(id, got);
                token = Some(next);
            }
            Err(e) => panic!("traveling client {client}: {e}"),
        }
    }
}

/// Every node's `gets` of `keys`, once all nodes agree or after 10 s.
fn replica_states(addrs: &[SocketAddr], keys: usize) -> Vec<BTreeMap<String, Vec<u8>>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let states: Vec<BTreeMap<String, Vec<u8>>> = addrs
            .iter()
            .map(|&addr| {
                let mut c = connect(addr);
                (0..keys)
                    .filter_map(|k| {
                        let key = format!("k{k}");
                        let (value, _) = c.gets(&key).unwrap()?;
                        Some((key, value))
                    })
                    .collect()
            })
            .collect();
        if states.iter().all(|s| s == &states[0]) || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn causal_mode_histories_are_causal_and_replicas_converge() {
    let keys = 5;
    for seed in 1..=3 {
        let cluster = Cluster::start(3, Consistency::Causal, |_| {});
        let addrs = cluster.addrs();
        let recorder = Recorder::new();
        let names = key_range(keys);
        std::thread::scope(|s| {
            for (n, &addr) in addrs.iter().enumerate() {
                for k in 0..2 {
                    let client = (n * 2 + k) as u32;
                    let rec = &recorder;
                    let names = &names;
                    s.spawn(move || random_client(addr, client, 200, names, seed, rec));
                }
            }
            for t in 0..2 {
                let (rec, addrs) = (&recorder, &addrs);
                s.spawn(move || traveling_client(addrs, 100 + t, 150, keys, seed, rec));
            }
        });
        let history = recorder.history();
        let verdict = check_causal(&history);
        assert!(
            verdict.is_consistent(),
            "seed {seed}: {} ops: {verdict}",
            history.len()
        );
        let states = replica_states(&addrs, keys);
        assert!(
            states.iter().all(|s| s == &states[0]),
            "seed {seed}: replicas differ: {states:?}"
        );
    }
}

/// Waits until every node has merged the first refill of each peer (sent when a peer's run
/// is first heard): one arriving later would carry node 2's whole state, `x` with `y`.
fn await_first_refills(cluster: &ProcCluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for node in 1..=3 {
        loop {
            let stats = connect(cluster.addr(node)).stats().unwrap();
            let merged: u64 = stats["causal_refills_merged"].parse().unwrap();
            if merged >= 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {node}: {merged} refills merged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the three sessions of [`held_back_across_a_partition`] saw.
struct Chain {
    recorder: Recorder,
    /// Whether node 3 showed `y` while cut off from node 1.
    y_seen_cut_off: bool,
}

/// Node 1 and node 3 cannot talk; node 2 hears both. Session 1 writes `x` on node 1;
/// session 2 reads it on node 2, then writes `y`; session 3 watches `y` on node 3 for
/// 1.5 s, reading `x` whenever it sees `y`. Then the partition heals and session 3 waits
/// for `y` and reads `x` again.
fn held_back_across_a_partition(cluster: &ProcCluster, net: &Net) -> Chain {
    let recorder = Recorder::new();
    let rec = &recorder;
    await_first_refills(cluster);
    net.partition(&[&[1], &[3]]);
    let mut s1 = connect(cluster.addr(1));
    let mut s2 = connect(cluster.addr(2));
    let mut s3 = connect(cluster.addr(3));
    recorded(rec, 1, &mut s1, "x", OpKind::Set(Value::from("x1"))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded(rec, 2, &mut s2, "x", OpKind::Get).unwrap() != OpResult::Hit("x1".into()) {
        assert!(Instant::now() < deadline, "node 2 never showed x");
        std::thread::sleep(Duration::from_millis(5));
    }
    recorded(rec, 2, &mut s2, "y", OpKind::Set(Value::from("y1"))).unwrap();
    let mut y_seen_cut_off = false;
    let watch = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch {
        if recorded(rec, 3, &mut s3, "y", OpKind::Get).unwrap() == OpResult::Hit("y1".into()) {
            y_seen_cut_off = true;
            recorded(rec, 3, &mut s3, "x", OpKind::Get).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    net.heal();
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorded(rec, 3, &mut s3, "y", OpKind::Get).unwrap() != OpResult::Hit("y1".into()) {
        assert!(
            Instant::now() < deadline,
            "node 3 never showed y after healing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let x = recorded(rec, 3, &mut s3, "x", OpKind::Get).unwrap();
    if y_seen_cut_off {
        // (The planted bug.) x comes in its own time.
        while recorded(rec, 3, &mut s3, "x", OpKind::Get).unwrap() != OpResult::Hit("x1".into()) {
            assert!(
                Instant::now() < deadline,
                "node 3 never showed x after healing"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        assert_eq!(
            x,
            OpResult::Hit("x1".into()),
            "y shown after healing, x not"
        );
    }
    Chain {
        recorder,
        y_seen_cut_off,
    }
}

#[test]
fn a_write_is_held_back_until_its_cause_arrives_and_the_planted_bug_is_caught() {
    Net::available();
    // The planted bug: node 3 shows y without waiting for x, which it cannot get.
    let chain = {
        let cluster = ProcCluster::start(3, "causal", &["--unsafe-causal-skip-dependencies"]);
        let net = Net::new();
        held_back_across_a_partition(&cluster, &net)
    };
    assert!(chain.y_seen_cut_off, "the planted bug did not show y early");
    let verdict = check_causal(&chain.recorder.history());
    assert!(
        !verdict.is_consistent(),
        "the checker missed y shown before x"
    );
    eprintln!("planted bug caught: {verdict}");
    // The mode itself holds y back until x can arrive.
    let chain = {
        let cluster = ProcCluster::start(3, "causal", &[]);
        let net = Net::new();
        held_back_across_a_partition(&cluster, &net)
    };
    assert!(
        !chain.y_seen_cut_off,
        "node 3 showed y before it could have x"
    );
    let verdict = check_causal(&chain.recorder.history());
    assert!(verdict.is_consistent(), "{verdict}");
}

#[test]
fn a_token_is_refused_where_its_context_cannot_arrive_and_served_once_it_has() {
    Net::available();
    let cluster = ProcCluster::start(3, "causal", &[]);
    let net = Net::new();
    // A first refill from node 2 arriving after the write would carry it to node 3: that
    // is allowed (node 2's state is causally closed), but not what this test is about.
    await_first_refills(&cluster);
    net.partition(&[&[1], &[3]]);
    let mut on1 = connect(cluster.addr(1));
    let (stored, token) = on1.set_causal("moved", b"m1", None).unwrap();
    assert_eq!(stored, OpResult::Stored);
    // Node 3 cannot have the write: it refuses, after its wait, rather than answer without it.
    let mut on3 = connect(cluster.addr(3));
    let asked = Instant::now();
    match on3.get_causal("moved", Some(&token)) {
        Err(Failure::ServerError(why)) => assert!(why.contains("causal context"), "{why}"),
        other => panic!("node 3 answered a token it cannot have reached: {other:?}"),
    }
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "refused after {waited:?}"
    );
    // A plain read there is served, from before the write: what a client without a token gets.
    assert_eq!(on3.get("moved").unwrap(), OpResult::Miss);
    // Node 2 hears node 1: it serves the token once the write is there.
    let mut on2 = connect(cluster.addr(2));
    let (got, token2) = on2.get_causal("moved", Some(&token)).unwrap();
    assert_eq!(got, OpResult::Hit("m1".into()));
    // Healed, node 3 catches up and serves the token (a client retries a refusal).
    net.heal();
    let healed = Instant::now();
    let got = loop {
        match on3.get_causal("moved", Some(&token2)) {
            Ok((got, _)) => break got,
            Err(Failure::ServerError(why)) if healed.elapsed() < Duration::from_secs(10) => {
                eprintln!("after {:?}: {why}", healed.elapsed());
            }
            Err(e) => panic!("{:?} after healing: {e}", healed.elapsed()),
        }
    };
    eprintln!(
        "FIGURE causal_token_after_heal_ms={}",
        healed.elapsed().as_millis()
    );
    assert_eq!(got, OpResult::Hit("m1".into()));
    // A bad token is a client error, and the connection goes on.
    on3.send(b"mg moved v Ynot-a-token\r\n").unwrap();
    let line = on3
        .read_line(Instant::now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(line, b"CLIENT_ERROR bad causal token");
    // So is a well-formed token naming a node this cluster does not have: at once, not after
    // the wait for a write that can never come.
    let asked = Instant::now();
    on3.send(b"mg moved v Y9.1.5\r\n").unwrap();
    let line = on3
        .read_line(Instant::now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(line, b"CLIENT_ERROR bad causal token");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(on3.get("moved").unwrap(), OpResult::Hit("m1".into()));
}

#[test]
fn the_flag_is_refused_outside_the_causal_mode_as_memcached_refuses_unknown_flags() {
    let cluster = Cluster::start(3, Consistency::Eventual, |_| {});
    let mut c = connect(cluster.addrs()[0]);
    c.send(b"mg k v Y\r\n").unwrap();
    let line = c
        .read_line(Instant::now() + Duration::from_secs(5))
        .unwrap();
    assert_eq!(line, b"CLIENT_ERROR invalid flag");
}

/// Writes `count` keys `<prefix><i>` through `addr`.
fn write_keys(addr: SocketAddr, prefix: &str, count: usize) {
    let mut c = connect(addr);
    for i in 0..count {
        let key = format!("{prefix}{i}");
        assert_eq!(c.set(&key, key.as_bytes()).unwrap(), OpResult::Stored);
    }
}

/// Waits until `addr` serves every key `<prefix><i>`, `i < count`; how long that took.
fn await_keys(addr: SocketAddr, prefix: &str, count: usize, within: Duration) -> Duration {
    let started = Instant::now();
    let mut c = connect(addr);
    let mut i = 0;
    while i < count {
        let key = format!("{prefix}{i}");
        match c.get(&key).unwrap() {
            OpResult::Hit(v) if v.0 == key.as_bytes() => i += 1,
            other => {
                assert!(
                    started.elapsed() < within,
                    "{addr} still answers {other:?} for {key} after {within:?}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    started.elapsed()
}

#[test]
fn a_restarted_node_is_refilled_and_a_disk_node_hands_on_what_only_it_held() {
    Net::available();
    // Memory: node 3 restarts empty and is refilled by the others.
    {
        let mut cluster = ProcCluster::start(3, "causal", &[]);
        write_keys(cluster.addr(1), "m", 2000);
        await_keys(cluster.addr(3), "m", 2000, Duration::from_secs(10));
        cluster.kill(3);
        cluster.restart(3);
        let took = await_keys(cluster.addr(3), "m", 2000, Duration::from_secs(10));
        eprintln!("FIGURE causal_refill_ms={} items=2000", took.as_millis());
        write_keys(cluster.addr(3), "after", 10);
        await_keys(cluster.addr(1), "after", 10, Duration::from_secs(10));
    }
    // Disk: node 3, cut off, takes writes no one else has, and is killed; restarted, its
    // store's items count as the first write of its new run and reach the others.
    let mut cluster = ProcCluster::start(3, "causal", &["--datalet", "disk:{dir}/node-{node}"]);
    write_keys(cluster.addr(1), "d", 100);
    await_keys(cluster.addr(3), "d", 100, Duration::from_secs(10));
    let net = Net::new();
    net.isolate(3);
    write_keys(cluster.addr(3), "only3-", 50);
    cluster.kill(3);
    net.heal();
    cluster.restart(3);
    for node in [1, 2] {
        await_keys(cluster.addr(node), "only3-", 50, Duration::from_secs(10));
    }
    await_keys(cluster.addr(3), "d", 100, Duration::from_secs(10));
}
