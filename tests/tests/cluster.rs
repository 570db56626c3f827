//! Real 3-node clusters over TCP, one per consistency mode, with concurrent clients bound to
//! different nodes. Every client records what it asked and was told; the history is then
//! checked by the checker of the mode's guarantee. A planted bug (linearizable reads served
//! from the local replica) shows the checks have teeth. Each run is seeded; a failure prints
//! its seed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tailorkv_common::Version;
use tailorkv_controlet::config::Consistency;
use tailorkv_tests::checker::{
    check_converged, check_linearizable, check_write_order, Budget, OpKind, Recorder, ReplicaState,
    Value,
};
use tailorkv_tests::client::McConn;
use tailorkv_tests::procs::ProcCluster;
use tailorkv_tests::workload::{eventual_writes, key_range, random_client};
use tailorkv_tests::{Cluster, RawClient};

const CLIENTS_PER_NODE: usize = 2;

/// A client of `addr` that waits up to 10 s for each reply.
fn connect(addr: SocketAddr) -> McConn {
    McConn::connect(addr, Duration::from_secs(10)).expect("connect")
}

/// Runs `random_client` from every client of a cluster at once; returns the history.
fn run_clients(cluster: &Cluster, ops: usize, keys: usize, seed: u64) -> Recorder {
    let recorder = Recorder::new();
    let keys = &key_range(keys);
    std::thread::scope(|s| {
        for (n, addr) in cluster.addrs().into_iter().enumerate() {
            for k in 0..CLIENTS_PER_NODE {
                let client = (n * CLIENTS_PER_NODE + k) as u32;
                let recorder = &recorder;
                s.spawn(move || random_client(addr, client, ops, keys, seed, recorder));
            }
        }
    });
    recorder
}

#[test]
fn linearizable_mode_is_linearizable() {
    for seed in 1..=3 {
        let cluster = Cluster::start(3, Consistency::Linearizable, |_| {});
        let history = run_clients(&cluster, 150, 4, seed).history();
        let verdict = check_linearizable(&history, Budget::default());
        assert!(verdict.is_linearizable(), "seed {seed}: {verdict}");
    }
}

/// A writer on node 1 and readers on the other nodes race on one key; with reads served
/// locally, a read that starts after a write finished can still return the older value.
fn stale_read_race(cluster: &Cluster, rounds: usize) -> Recorder {
    let recorder = Recorder::new();
    let addrs = cluster.addrs();
    std::thread::scope(|s| {
        let rec = &recorder;
        let writer_addr = addrs[0];
        let reader_addrs = addrs[1..].to_vec();
        s.spawn(move || {
            let mut w = connect(writer_addr);
            // The writer reads on the other nodes right after each of its writes.
            let mut readers: Vec<McConn> = reader_addrs.iter().map(|&a| connect(a)).collect();
            for i in 0..rounds {
                let value = format!("v{i}").into_bytes();
                let id = rec.invoke(0, "x", OpKind::Set(Value(value.clone())));
                let r = w.set("x", &value).unwrap();
                rec.complete(id, r);
                for r in readers.iter_mut() {
                    let id = rec.invoke(0, "x", OpKind::Get);
                    let got = r.get("x").unwrap();
                    rec.complete(id, got);
                }
            }
        });
        for (n, &addr) in addrs[1..].iter().enumerate() {
            s.spawn(move || {
                let mut c = connect(addr);
                for _ in 0..rounds {
                    let id = rec.invoke(n as u32 + 1, "x", OpKind::Get);
                    let got = c.get("x").unwrap();
                    rec.complete(id, got);
                }
            });
        }
    });
    recorder
}

#[test]
fn the_checker_catches_linearizable_reads_served_locally() {
    // The planted bug: reads answered from the local replica.
    let mut caught = None;
    for attempt in 0..5 {
        let cluster = Cluster::start(3, Consistency::Linearizable, |c| {
            c.unsafe_local_reads = true
        });
        let history = stale_read_race(&cluster, 400).history();
        let verdict = check_linearizable(&history, Budget::default());
        if !verdict.is_linearizable() {
            caught = Some((attempt, verdict));
            break;
        }
    }
    let (attempt, verdict) = caught.expect("5 runs with local reads and no violation found");
    eprintln!("violation found on attempt {attempt}: {verdict}");
    // The same race against the correct mode passes.
    let cluster = Cluster::start(3, Consistency::Linearizable, |_| {});
    let history = stale_read_race(&cluster, 400).history();
    let verdict = check_linearizable(&history, Budget::default());
    assert!(verdict.is_linearizable(), "{verdict}");
}

/// Every node's `gets` of `keys`, once all nodes agree or after 5 s.
fn replica_states(cluster: &Cluster, keys: usize) -> Vec<ReplicaState> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let states: Vec<ReplicaState> = cluster
            .addrs()
            .into_iter()
            .map(|addr| {
                let mut c = connect(addr);
                (0..keys)
                    .filter_map(|k| {
                        let key = format!("k{k}");
                        let (value, cas) = c.gets(&key).unwrap()?;
                        Some((key, (Value(value), Version::from_cas(cas))))
                    })
                    .collect::<BTreeMap<_, _>>()
            })
            .collect();
        if states.iter().all(|s| s == &states[0]) || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sequential_mode_keeps_one_write_order_and_replicas_end_identical() {
    for seed in 1..=3 {
        let cluster = Cluster::start(3, Consistency::Sequential, |_| {});
        let history = run_clients(&cluster, 200, 4, seed).history();
        let verdict = check_write_order(&history);
        assert!(verdict.is_consistent(), "seed {seed}: {verdict:?}");
        let states = replica_states(&cluster, 4);
        assert!(
            states.iter().all(|s| s == &states[0]),
            "seed {seed}: replicas differ: {states:?}"
        );
    }
}

#[test]
fn eventual_mode_converges_to_the_highest_version_on_every_node() {
    for seed in 1..=3 {
        let cluster = Cluster::start(3, Consistency::Eventual, |_| {});
        let keys = 5;
        let names: Vec<String> = (0..keys).map(|k| format!("k{k}")).collect();
        let writes = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (n, addr) in cluster.addrs().into_iter().enumerate() {
                for k in 0..CLIENTS_PER_NODE {
                    let (writes, names) = (&writes, &names);
                    let client = n * CLIENTS_PER_NODE + k;
                    s.spawn(move || eventual_writes(addr, client, names, 150, seed, writes));
                }
            }
        });
        let states = replica_states(&cluster, keys);
        let writes = writes.into_inner().unwrap();
        let known = writes.iter().filter(|w| w.version.is_some()).count();
        assert!(
            known * 2 > writes.len(),
            "seed {seed}: too few versions known ({known})"
        );
        if let Err(divergence) = check_converged(&states, &writes) {
            panic!("seed {seed}: {divergence:?}");
        }
    }
}

/// Every command, good and bad, in one packet; `version` last marks the end of the replies.
const SCRIPT: &[u8] = b"set a 5 0 5\r\nhello\r\nget a\r\ngets a\r\nappend a 0 0 2\r\n!!\r\n\
prepend a 0 0 2\r\n<<\r\nget a\r\nadd a 0 0 1\r\nx\r\nadd b 7 0 1\r\nb\r\nreplace c 0 0 1\r\nc\r\n\
replace a 9 0 1\r\nA\r\nincr n 1\r\nset n 0 0 2\r\n10\r\nincr n 5\r\ndecr n 100\r\nget n\r\n\
incr a 1\r\ntouch a 100\r\ntouch zz 1\r\ngat 100 a b\r\ngats 0 a zz\r\ndelete b\r\ndelete b\r\n\
cas a 0 0 1 1\r\nq\r\nset e 0 -1 1\r\nx\r\nget e\r\nset q 0 0 1 noreply\r\nq\r\n\
incr q 1 noreply\r\nget q a n\r\nverbosity 1\r\nbogus\r\nset k 0 0 3\r\nabcde\r\n\
flush_all\r\nget a n q\r\nversion\r\n";

/// Sends `request`, reads through the `VERSION` reply, and renames CAS uniques `c1`, `c2`, ...
/// in order of appearance, so replies compare across servers.
fn transcript(addr: SocketAddr, request: &[u8]) -> String {
    let mut raw = RawClient::connect(addr);
    raw.send(request);
    let reply = String::from_utf8(raw.read_until(b"\r\n")).unwrap();
    let mut reply = reply;
    while !reply.contains("VERSION ") {
        let more = raw.read_until(b"\r\n");
        reply.push_str(std::str::from_utf8(&more).unwrap());
    }
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    reply
        .split("\r\n")
        .map(|line| {
            let words: Vec<&str> = line.split(' ').collect();
            if words[0] == "VALUE" && words.len() == 5 {
                let n = names.len() + 1;
                let name = names.entry(words[4].to_string()).or_insert(format!("c{n}"));
                format!(
                    "{} {} {} {} {}",
                    words[0], words[1], words[2], words[3], name
                )
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn every_command_answers_as_on_a_single_node_in_every_mode() {
    let single = tailorkv_tests::Controlet::start();
    let expected = transcript(single.addr, SCRIPT);
    assert!(expected.contains("VALUE a 9 1 c"), "sanity: {expected}");
    for mode in [
        Consistency::Linearizable,
        Consistency::Sequential,
        Consistency::Eventual,
    ] {
        let cluster = Cluster::start(3, mode, |_| {});
        let addrs = cluster.addrs();
        for (i, &addr) in addrs.iter().enumerate() {
            assert_eq!(transcript(addr, SCRIPT), expected, "{mode:?} at {addr}");
            if mode == Consistency::Eventual {
                // The script's writes and its closing `flush_all` reach the other nodes a
                // moment later, and each node's own answers are what this test checks: the
                // next node starts once they have arrived. A marker written after the flush
                // travels behind it on every link, so a node that holds the marker has
                // applied the flush. (Waiting for the script's keys to read as absent was
                // not enough: they also read so before the writes arrive, which then landed
                // in the middle of the next node's script.)
                let marker = format!("marker{i}");
                let mut raw = RawClient::connect(addr);
                let set = format!("set {marker} 0 0 1\r\nx\r\n");
                assert_eq!(raw.call(set.as_bytes(), b"\r\n"), b"STORED\r\n");
                for &other in &addrs {
                    let mut raw = RawClient::connect(other);
                    let get = format!("get {marker}\r\n");
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while raw.call(get.as_bytes(), b"END\r\n") == b"END\r\n" {
                        assert!(Instant::now() < deadline, "{marker} never reached {other}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
    }
}

#[test]
fn in_the_strong_modes_cas_uniques_and_counters_agree_across_nodes() {
    for mode in [Consistency::Linearizable, Consistency::Sequential] {
        let cluster = Cluster::start(3, mode, |_| {});
        let addrs = cluster.addrs();
        let mut n1 = connect(addrs[0]);
        let mut n2 = connect(addrs[1]);
        let mut n3 = connect(addrs[2]);
        n1.set("k", b"v1").unwrap();
        let (_, unique) = n1.gets("k").unwrap().unwrap();
        // A unique from one node is good on another: the versions come from the total order.
        let mut raw = RawClient::connect(addrs[1]);
        let cas = format!("cas k 0 0 2 {unique}\r\nv2\r\n");
        assert_eq!(raw.call(cas.as_bytes(), b"\r\n"), b"STORED\r\n", "{mode:?}");
        assert_eq!(raw.call(cas.as_bytes(), b"\r\n"), b"EXISTS\r\n", "{mode:?}");
        // incr through every node: one sequence of results, and one final value everywhere.
        n3.set("n", b"0").unwrap();
        let mut results = Vec::new();
        let mut raws: Vec<RawClient> = addrs.iter().map(|&a| RawClient::connect(a)).collect();
        for _ in 0..10 {
            for raw in raws.iter_mut() {
                let reply = String::from_utf8(raw.call(b"incr n 1\r\n", b"\r\n")).unwrap();
                results.push(reply.trim_end().parse::<u64>().unwrap());
            }
        }
        results.sort_unstable();
        assert_eq!(results, (1..=30).collect::<Vec<u64>>(), "{mode:?}");
        // flush_all is ordered like a write: a later read through the order sees it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let states: Vec<_> = [&mut n1, &mut n2, &mut n3]
                .into_iter()
                .map(|c| c.gets("n").unwrap())
                .collect();
            if states.iter().all(|s| s == &states[0]) {
                assert_eq!(states[0].as_ref().unwrap().0, b"30", "{mode:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{mode:?}: replicas disagree: {states:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut raw = RawClient::connect(addrs[2]);
        assert_eq!(raw.call(b"flush_all\r\n", b"\r\n"), b"OK\r\n");
        if mode == Consistency::Linearizable {
            assert_eq!(
                n1.gets("k").unwrap(),
                None,
                "a read after the flush sees it"
            );
        }
    }
}

/// Writes to the same keys from every node at the same moment, round after round: the
/// replicas must settle on the same value for each key, the last round's, at the highest
/// version, however the concurrent updates cross on the way. Each of the 20 keys is a
/// separate chance for crossing updates to expose a replica that keeps the wrong one.
#[test]
fn eventual_mode_settles_concurrent_writes_by_version() {
    const KEYS: usize = 20;
    const ROUNDS: usize = 10;
    let cluster = Cluster::start(3, Consistency::Eventual, |_| {});
    let addrs = cluster.addrs();
    let clients = addrs.len() * CLIENTS_PER_NODE;
    let barrier = std::sync::Barrier::new(clients);
    std::thread::scope(|s| {
        for client in 0..clients {
            let (barrier, addr) = (&barrier, addrs[client % addrs.len()]);
            s.spawn(move || {
                let mut c = connect(addr);
                for round in 0..ROUNDS {
                    barrier.wait();
                    for k in 0..KEYS {
                        let key = format!("hot{}", (k + client * 7) % KEYS);
                        c.set(&key, format!("r{round}-c{client}").as_bytes())
                            .unwrap();
                    }
                }
            });
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in 0..KEYS {
        let key = format!("hot{k}");
        let states = loop {
            let states: Vec<Option<(Vec<u8>, u64)>> = addrs
                .iter()
                .map(|&a| connect(a).gets(&key).unwrap())
                .collect();
            if states.iter().all(|s| s == &states[0]) || Instant::now() > deadline {
                break states;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            states.iter().all(|s| s == &states[0]),
            "{key}: replicas differ: {states:?}"
        );
        let (value, _) = states[0].clone().expect("the key is set");
        let last = format!("r{}-", ROUNDS - 1);
        assert!(
            value.starts_with(last.as_bytes()),
            "{key}: the last round must win"
        );
    }
}

/// Keys a client can send hold any bytes but space, NUL and `\n` (memcached stores control
/// characters; memcaslap's keys start with them). In every mode such keys go through the
/// replication path to every node, through the catch-up of a node restarted empty (a
/// snapshot in the strong modes, hints and anti-entropy in eventual mode), and out of
/// `lru_crawler metadump` URL-encoded.
#[test]
fn keys_with_control_characters_reach_every_node_and_a_restarted_one() {
    let keys: [&[u8]; 4] = [
        b"\x10\x10\x10\x10\x10\x10\x10\x10QHYg2vgu",
        b"tab\there\x01",
        b"cr\rdel\x7f",
        b"high\x80\xff",
    ];
    let serves = |addr: SocketAddr, key: &[u8], value: &[u8]| -> bool {
        // Read to the close: a node catching up answers `SERVER_ERROR`, not `END`.
        let reply = RawClient::connect(addr).send_all_and_close(&[b"get ", key, b"\r\n"].concat());
        let len = value.len().to_string();
        let hit = [
            b"VALUE ",
            key,
            b" 0 ",
            len.as_bytes(),
            b"\r\n",
            value,
            b"\r\nEND\r\n",
        ];
        reply == hit.concat()
    };
    let await_serves = |addr: SocketAddr, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        for (i, key) in keys.iter().enumerate() {
            let value = format!("value{i}");
            while !serves(addr, key, value.as_bytes()) {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {addr} never served {key:?}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    for mode in ["linearizable", "sequential", "eventual"] {
        let mut cluster = ProcCluster::start(3, mode, &[]);
        let mut raw = RawClient::connect(cluster.addr(1));
        for (i, key) in keys.iter().enumerate() {
            let value = format!("value{i}");
            let rest = format!(" 0 0 {}\r\n{value}\r\n", value.len());
            let set = [b"set ", *key, rest.as_bytes()];
            assert_eq!(
                raw.call(&set.concat(), b"\r\n"),
                b"STORED\r\n",
                "{mode}: {key:?}"
            );
        }
        for addr in cluster.addrs() {
            await_serves(addr, mode);
        }
        cluster.kill(3);
        cluster.restart(3);
        await_serves(cluster.addr(3), &format!("{mode}, node 3 restarted"));
        let dump =
            RawClient::connect(cluster.addr(3)).call(b"lru_crawler metadump all\r\n", b"END\r\n");
        let dump = String::from_utf8(dump).unwrap();
        for listed in [
            "key=%10%10%10%10%10%10%10%10QHYg2vgu ",
            "key=tab%09here%01 ",
            "key=cr%0Ddel%7F ",
            "key=high%80%FF ",
        ] {
            assert!(
                dump.contains(listed),
                "{mode}: {listed:?} not in the dump {dump:?}"
            );
        }
    }
}

/// Linearizable reads are answered at the order's clock, which only ordered operations move:
/// with nothing written after an item's expiry, a read must still find it gone, on every
/// node (the node reading orders a clock reading first), and once gone it stays gone.
#[test]
fn an_expired_item_reads_as_gone_on_every_node_with_no_write_since() {
    let cluster = Cluster::start(3, Consistency::Linearizable, |_| {});
    let addrs = cluster.addrs();
    let mut writer = RawClient::connect(addrs[0]);
    // Two seconds: an item set near the end of a second with one would be gone within
    // milliseconds, before the reads below.
    assert_eq!(
        writer.call(b"set brief 0 2 2\r\nhi\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    for &addr in &addrs {
        let mut raw = RawClient::connect(addr);
        assert_eq!(
            raw.call(b"get brief\r\n", b"END\r\n"),
            b"VALUE brief 0 2\r\nhi\r\nEND\r\n",
            "{addr}"
        );
    }
    // Past the expiry by every clock's whole second.
    std::thread::sleep(Duration::from_millis(3_100));
    for &addr in addrs.iter().rev() {
        let mut raw = RawClient::connect(addr);
        assert_eq!(raw.call(b"get brief\r\n", b"END\r\n"), b"END\r\n", "{addr}");
    }
    for &addr in &addrs {
        let mut raw = RawClient::connect(addr);
        assert_eq!(raw.call(b"get brief\r\n", b"END\r\n"), b"END\r\n", "{addr}");
    }
}
