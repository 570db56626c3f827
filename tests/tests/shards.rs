//! Sharded clusters: 6 nodes, 3 copies of each key. Clients on every node use keys of every
//! group, so most requests are forwarded to an owner; each mode's history goes to its
//! checker, replicas are read on the owners themselves, and a client sees exactly a single
//! memcached's replies. Each run is seeded; a failure prints its seed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tailorkv_common::{NodeId, Version};
use tailorkv_controlet::config::Consistency;
use tailorkv_controlet::placement::{partition_of, Placement};
use tailorkv_tests::checker::{
    check_converged, check_linearizable, check_write_order, Budget, Recorder, ReplicaState, Value,
};
use tailorkv_tests::client::McConn;
use tailorkv_tests::workload::{eventual_writes, key_range, random_client};
use tailorkv_tests::{Cluster, RawClient};

const NODES: u16 = 6;
const REPLICAS: usize = 3;
const CLIENTS_PER_NODE: usize = 2;

fn sharded(mode: Consistency) -> Cluster {
    Cluster::start(NODES, mode, |c| c.replicas = Some(REPLICAS))
}

fn placement() -> Placement {
    let ids: Vec<NodeId> = (1..=NODES).map(NodeId).collect();
    Placement::new(&ids, REPLICAS)
}

/// The nodes (from 0) holding `key`.
fn owners(key: &str) -> Vec<usize> {
    let p = placement();
    p.owners(partition_of(key.as_bytes()))
        .iter()
        .map(|n| usize::from(n.0) - 1)
        .collect()
}

fn connect(addr: SocketAddr) -> McConn {
    McConn::connect(addr, Duration::from_secs(10)).expect("connect")
}

/// A `stats` value of node `addr`.
fn stat(addr: SocketAddr, name: &str) -> u64 {
    let mut raw = RawClient::connect(addr);
    let reply = String::from_utf8(raw.call(b"stats\r\n", b"END\r\n")).unwrap();
    let line = reply
        .lines()
        .find(|l| l.starts_with(&format!("STAT {name} ")))
        .unwrap_or_else(|| panic!("no {name} in {reply}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// `keys` keys, spread over every group, each with nodes that do not hold it.
fn key_names(keys: usize) -> Vec<String> {
    let names = key_range(keys);
    let groups: std::collections::BTreeSet<Vec<usize>> = names.iter().map(|k| owners(k)).collect();
    assert!(
        groups.len() >= 4,
        "the keys reach too few groups: {groups:?}"
    );
    names
}

/// Random sets (unique values), gets, deletes and adds from every client of `cluster`.
fn run_clients(cluster: &Cluster, ops: usize, keys: &[String], seed: u64) -> Recorder {
    let recorder = Recorder::new();
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

/// What each key's owners hold, read on the owners themselves (their local replicas in the
/// sequential and eventual modes): replica `r` is, for every key, its `r`-th owner's copy.
/// Waits up to 5 s for the owners of every key to agree.
fn owner_states(cluster: &Cluster, keys: &[String]) -> Vec<ReplicaState> {
    let addrs = cluster.addrs();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut states = vec![ReplicaState::new(); REPLICAS];
        for key in keys {
            for (r, &node) in owners(key).iter().enumerate() {
                if let Some((value, cas)) = connect(addrs[node]).gets(key).unwrap() {
                    states[r].insert(key.clone(), (Value(value), Version::from_cas(cas)));
                }
            }
        }
        if states.iter().all(|s| s == &states[0]) || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn forwarded(cluster: &Cluster) -> u64 {
    cluster.addrs().iter().map(|&a| stat(a, "forwarded")).sum()
}

#[test]
fn linearizable_mode_is_linearizable_on_6_nodes_with_3_replicas() {
    let keys = key_names(12);
    for seed in 1..=2 {
        let cluster = sharded(Consistency::Linearizable);
        let history = run_clients(&cluster, 120, &keys, seed).history();
        let verdict = check_linearizable(&history, Budget::default());
        assert!(verdict.is_linearizable(), "seed {seed}: {verdict}");
        assert!(
            forwarded(&cluster) > 100,
            "seed {seed}: few requests were forwarded"
        );
    }
}

#[test]
fn sequential_mode_keeps_one_write_order_and_owners_end_identical() {
    let keys = key_names(12);
    for seed in 1..=2 {
        let cluster = sharded(Consistency::Sequential);
        let history = run_clients(&cluster, 150, &keys, seed).history();
        let verdict = check_write_order(&history);
        assert!(verdict.is_consistent(), "seed {seed}: {verdict:?}");
        let states = owner_states(&cluster, &keys);
        assert!(
            states.iter().all(|s| s == &states[0]),
            "seed {seed}: owners differ: {states:?}"
        );
    }
}

#[test]
fn eventual_mode_converges_on_every_owner() {
    let keys = key_names(12);
    for seed in 1..=2 {
        let cluster = sharded(Consistency::Eventual);
        let writes = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for (n, addr) in cluster.addrs().into_iter().enumerate() {
                for k in 0..CLIENTS_PER_NODE {
                    let (writes, keys) = (&writes, &keys);
                    let client = n * CLIENTS_PER_NODE + k;
                    s.spawn(move || eventual_writes(addr, client, keys, 120, seed, writes));
                }
            }
        });
        let states = owner_states(&cluster, &keys);
        let writes = writes.into_inner().unwrap();
        let known = writes.iter().filter(|w| w.version.is_some()).count();
        assert!(known * 2 > writes.len(), "seed {seed}: few versions known");
        if let Err(divergence) = check_converged(&states, &writes) {
            panic!("seed {seed}: {divergence:?}");
        }
    }
}

/// Every command of a script, through a node that holds none of its keys, answers as one
/// memcached would (a single node's transcript), in every mode.
#[test]
fn a_node_that_holds_none_of_the_keys_answers_as_a_single_node() {
    // Keys none of whose owners is node 1 (index 0).
    let away: Vec<String> = (0..)
        .map(|i| format!("x{i}"))
        .filter(|k| !owners(k).contains(&0))
        .take(4)
        .collect();
    let script = format!(
        "set {a} 5 0 5\r\nhello\r\nget {a}\r\nappend {a} 0 0 2\r\n!!\r\nprepend {a} 0 0 2\r\n<<\r\n\
         add {a} 0 0 1\r\nx\r\nadd {b} 7 0 1\r\nb\r\nreplace {c} 0 0 1\r\nc\r\nincr {d} 1\r\n\
         set {d} 0 0 2\r\n10\r\nincr {d} 5\r\ndecr {d} 100\r\ntouch {a} 100\r\ngat 100 {a} {b}\r\n\
         get {a} {b} {c} {d}\r\ndelete {b}\r\ndelete {b}\r\ncas {a} 0 0 1 1\r\nq\r\n\
         set {c} 0 0 1 noreply\r\nq\r\nincr {c} 1 noreply\r\nget {c} {a} {d}\r\nflush_all\r\n\
         get {a} {c} {d}\r\nversion\r\n",
        a = away[0],
        b = away[1],
        c = away[2],
        d = away[3]
    );
    let single = tailorkv_tests::Controlet::start();
    let expected = transcript(single.addr, script.as_bytes());
    for mode in [
        Consistency::Linearizable,
        Consistency::Sequential,
        Consistency::Eventual,
    ] {
        let cluster = sharded(mode);
        let got = transcript(cluster.addrs()[0], script.as_bytes());
        assert_eq!(got, expected, "{mode:?}");
        assert!(stat(cluster.addrs()[0], "forwarded") > 10, "{mode:?}");
    }
}

/// Sends `request`, reads through `VERSION`, and drops the version's text.
fn transcript(addr: SocketAddr, request: &[u8]) -> String {
    let mut raw = RawClient::connect(addr);
    raw.send(request);
    let mut reply = String::new();
    while !reply.contains("VERSION ") {
        reply.push_str(std::str::from_utf8(&raw.read_until(b"\r\n")).unwrap());
    }
    reply[..reply.find("VERSION ").unwrap()].to_string()
}

/// A multi-get through one node, over keys of every group with misses between them, comes
/// back in the order asked; CAS uniques of keys of different groups differ; `stats` counts
/// the whole cluster's items on every node; `flush_all` reaches every group.
#[test]
fn multi_get_order_cas_uniques_stats_and_flush_span_every_group() {
    for mode in [Consistency::Linearizable, Consistency::Eventual] {
        let cluster = sharded(mode);
        let addrs = cluster.addrs();
        let stored: Vec<String> = (0..60).map(|i| format!("m{i}")).collect();
        for (i, key) in stored.iter().enumerate() {
            let mut c = connect(addrs[i % addrs.len()]);
            assert!(c.set(key, key.as_bytes()).is_ok());
        }
        let mut asked = Vec::new();
        for (i, key) in stored.iter().enumerate() {
            asked.push(key.clone());
            if i % 3 == 0 {
                asked.push(format!("missing{i}"));
            }
        }
        let mut raw = RawClient::connect(addrs[2]);
        let request = format!("gets {}\r\n", asked.join(" "));
        // Eventual: node 3 may ask another owner than the writer did, which the write reaches
        // a moment later.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (got, uniques) = loop {
            let reply = String::from_utf8(raw.call(request.as_bytes(), b"END\r\n")).unwrap();
            let mut got = Vec::new();
            let mut uniques = std::collections::BTreeSet::new();
            for line in reply.lines().filter(|l| l.starts_with("VALUE ")) {
                let parts: Vec<&str> = line.split(' ').collect();
                got.push(parts[1].to_string());
                uniques.insert(parts[4].to_string());
            }
            if got == stored || mode != Consistency::Eventual || Instant::now() > deadline {
                break (got, uniques);
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            got, stored,
            "{mode:?}: hits in the order asked, misses left out"
        );
        assert_eq!(
            uniques.len(),
            stored.len(),
            "{mode:?}: a CAS unique repeats"
        );
        for &addr in &addrs {
            // Eventual: the copies may still be on their way to the last owners.
            let deadline = Instant::now() + Duration::from_secs(5);
            while stat(addr, "curr_items") != 60 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(
                stat(addr, "curr_items"),
                60,
                "{mode:?}: the cluster's items"
            );
            assert!(
                stat(addr, "node_curr_items") < 60,
                "{mode:?}: a node holds a share"
            );
        }
        assert_eq!(raw.call(b"flush_all\r\n", b"\r\n"), b"OK\r\n");
        let reply = raw.call(request.as_bytes(), b"END\r\n");
        assert_eq!(reply, b"END\r\n", "{mode:?}: the flush reached every group");
    }
}

/// `stats placement` lists every group's members and partitions as the placement computes
/// them, so a client can find a key's owners itself.
#[test]
fn stats_placement_names_every_groups_members_and_partitions() {
    let cluster = sharded(Consistency::Linearizable);
    let mut raw = RawClient::connect(cluster.addrs()[4]);
    let reply = String::from_utf8(raw.call(b"stats placement\r\n", b"END\r\n")).unwrap();
    let stats: BTreeMap<&str, &str> = reply
        .lines()
        .filter_map(|l| l.strip_prefix("STAT "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    assert_eq!(stats["partitions"], "1024");
    assert_eq!(stats["replicas"], "3");
    assert_eq!(stats["groups"], "6");
    let p = placement();
    assert_eq!(stats["version"], format!("{:016x}", p.version()));
    let mut owner_of = vec![None; 1024];
    for group in p.groups() {
        let line = stats[format!("group_{}", group.0).as_str()];
        let (members, partitions) = line.split_once(' ').unwrap();
        let members: Vec<u16> = members["members=".len()..]
            .split(',')
            .map(|m| m.parse().unwrap())
            .collect();
        let expected: Vec<u16> = p.members(group).iter().map(|n| n.0).collect();
        assert_eq!(members, expected);
        for span in partitions["partitions=".len()..].split(',') {
            let (a, b) = span.split_once('-').unwrap_or((span, span));
            let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
            for (q, owner) in owner_of.iter_mut().enumerate().take(b + 1).skip(a) {
                assert_eq!(owner.replace(group), None, "partition {q} twice");
            }
        }
    }
    for (q, group) in owner_of.into_iter().enumerate() {
        assert_eq!(group, Some(p.group_of_partition(q)), "partition {q}");
    }
}

/// Capacity grows with nodes: at the same memory limit per node, 6 nodes with 3 copies hold
/// about twice what 3 nodes with 3 copies hold. Counted by filling until writes are refused
/// (`-M`: with eviction, writes never are).
#[test]
fn six_nodes_with_three_replicas_hold_twice_what_three_do() {
    fn fill(cluster: &Cluster) -> usize {
        let addrs = cluster.addrs();
        let mut conns: Vec<McConn> = addrs.iter().map(|&a| connect(a)).collect();
        let value = vec![b'v'; 200];
        let (mut stored, mut refused_in_a_row) = (0, 0);
        for i in 0.. {
            let c = &mut conns[i % addrs.len()];
            match c.set(&format!("fill:{i}"), &value) {
                Ok(_) => {
                    stored += 1;
                    refused_in_a_row = 0;
                }
                Err(_) => refused_in_a_row += 1,
            }
            if refused_in_a_row == 300 {
                break;
            }
        }
        stored
    }
    let three = Cluster::start(3, Consistency::Linearizable, |c| {
        c.memory_limit = 1;
        c.disable_evictions = true;
    });
    let held3 = fill(&three);
    drop(three);
    let six = Cluster::start(NODES, Consistency::Linearizable, |c| {
        c.replicas = Some(REPLICAS);
        c.memory_limit = 1;
        c.disable_evictions = true;
    });
    let held6 = fill(&six);
    let ratio = held6 as f64 / held3 as f64;
    eprintln!("FIGURE capacity 3 nodes={held3} 6 nodes={held6} ratio={ratio:.2}");
    assert!(
        (1.8..=2.2).contains(&ratio),
        "6 nodes held {held6} items, 3 nodes {held3}: {ratio:.2}x"
    );
}

/// Disk datalets on 6 nodes with 3 replicas, each group in its own directory: every node
/// killed at once (twice) and restarted keeps every acknowledged write, read through every
/// node.
#[test]
fn disk_shards_keep_every_write_through_whole_cluster_kills() {
    use tailorkv_tests::procs::ProcCluster;
    let args = ["--replicas", "3", "--datalet", "disk:{dir}/node-{node}"];
    let mut cluster = ProcCluster::start(6, "linearizable", &args);
    let mut written = Vec::new();
    for round in 0..3 {
        let mut conns: Vec<McConn> = cluster.addrs().into_iter().map(connect).collect();
        for i in 0..100 {
            let key = format!("d{round}-{i}");
            let value = format!("{key}-value").into_bytes();
            let nodes = conns.len();
            let c = &mut conns[i % nodes];
            let deadline = Instant::now() + Duration::from_secs(20);
            // Right after a restart the groups' first views may still be forming.
            while c.set(&key, &value).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "round {round}: {key} never stored"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            written.push((key, value));
        }
        for (n, addr) in cluster.addrs().into_iter().enumerate() {
            let mut c = connect(addr);
            for (key, value) in &written {
                let deadline = Instant::now() + Duration::from_secs(20);
                let got = loop {
                    match c.gets(key) {
                        Ok(got) => break got,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "node {}: {key}: {e}", n + 1);
                            std::thread::sleep(Duration::from_millis(50));
                            c = connect(addr);
                        }
                    }
                };
                let got = got.map(|(v, _)| v);
                assert_eq!(
                    got.as_ref(),
                    Some(value),
                    "round {round}, node {}: {key}",
                    n + 1
                );
            }
        }
        if round < 2 {
            for i in 1..=6 {
                cluster.kill(i);
            }
            for i in 1..=6 {
                cluster.restart(i);
            }
        }
    }
    for node in 1..=6 {
        for group in placement().groups_of(NodeId(node)) {
            let dir = cluster.dir().join(format!("node-{node}/group-{}", group.0));
            assert!(dir.is_dir(), "{} is missing", dir.display());
        }
    }
}

/// A multi-get of many large values held by other nodes comes back whole and in order: the
/// keys a node forwards to one group go in requests whose answers fit in a peer frame (16 MiB
/// of the largest items each: with `--item-size-max 8m`, two keys a request).
#[test]
fn a_multi_get_of_large_values_through_a_non_owner_comes_back_whole() {
    let cluster = Cluster::start(NODES, Consistency::Linearizable, |c| {
        c.replicas = Some(REPLICAS);
        c.item_size_max = 8 << 20;
    });
    let addrs = cluster.addrs();
    // 90 keys of 900 KB, about half of them in groups node 1 does not hold.
    let keys: Vec<String> = (0..90).map(|i| format!("big{i}")).collect();
    let value = |k: &str| {
        let mut v = vec![b'x'; 900 * 1024];
        v[..k.len()].copy_from_slice(k.as_bytes());
        v
    };
    let mut c = connect(addrs[1]);
    for k in &keys {
        assert!(c.set(k, &value(k)).is_ok(), "{k}");
    }
    let mut raw = RawClient::connect(addrs[0]);
    let reply = raw.call(format!("get {}\r\n", keys.join(" ")).as_bytes(), b"END\r\n");
    let mut expected = Vec::new();
    for k in &keys {
        let v = value(k);
        expected.extend_from_slice(format!("VALUE {k} 0 {}\r\n", v.len()).as_bytes());
        expected.extend_from_slice(&v);
        expected.extend_from_slice(b"\r\n");
    }
    expected.extend_from_slice(b"END\r\n");
    assert!(
        reply == expected,
        "the reply differs ({} bytes, expected {})",
        reply.len(),
        expected.len()
    );
    let far = keys.iter().filter(|k| !owners(k).contains(&0)).count();
    let forwarded = stat(addrs[0], "forwarded");
    assert!(
        forwarded as usize >= far / 2,
        "{far} keys held elsewhere went in {forwarded} requests, not two a request"
    );
}
