//! Membership changes while serving: nodes join through a member (`--join`), leave
//! (`tailorkv-admin leave`) and are removed dead (`tailorkv-admin remove`, or
//! `--dead-after`), real `controlet` processes under a recorded client load whose history
//! the mode's checker must accept, with every acknowledged write still there at the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tailorkv_tests::checker::{check_linearizable, check_write_order, Budget, OpResult, Value};
use tailorkv_tests::client::McConn;
use tailorkv_tests::procs::ProcCluster;
use tailorkv_tests::workload::{Workload, WorkloadConfig};

const LIN: &str = "linearizable";
const SEQ: &str = "sequential";

/// How long a membership change may take to settle on these small stores.
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

fn stats(addr: SocketAddr) -> Option<BTreeMap<String, String>> {
    let mut conn = McConn::connect(addr, Duration::from_secs(5)).ok()?;
    let deadline = conn.send(b"stats\r\n").ok()?;
    let mut out = BTreeMap::new();
    loop {
        let line = conn.read_line(deadline).ok()?;
        if line == b"END" {
            return Some(out);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut words = text.splitn(3, ' ');
        if let (Some("STAT"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
        {
            out.insert(name.to_string(), value.to_string());
        }
    }
}

fn stat(addr: SocketAddr, name: &str) -> Option<u64> {
    stats(addr)?.get(name)?.parse().ok()
}

/// Waits until every node in `nodes` knows placement epoch `epoch` and none of its groups
/// has a member joining or leaving; how long that took.
fn settle(cluster: &ProcCluster, nodes: &[usize], epoch: u64, what: &str) -> Duration {
    settle_within(cluster, nodes, epoch, what, SETTLE_WITHIN)
}

/// [`settle`], allowing `within`.
fn settle_within(
    cluster: &ProcCluster,
    nodes: &[usize],
    epoch: u64,
    what: &str,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let done = nodes.iter().all(|&i| {
            let addr = cluster.addr(i);
            stat(addr, "membership_epoch") == Some(epoch)
                && stat(addr, "groups_moving") == Some(0)
                && stats(addr).is_some_and(|s| s["cluster_state"] == "serving")
        });
        if done {
            let took = started.elapsed();
            eprintln!("{what}: settled at epoch {epoch} in {took:?}");
            return took;
        }
        assert!(
            started.elapsed() < within,
            "{what}: not settled at epoch {epoch} within {within:?}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes `count` keys `m<i>` through node `via`.
fn fill(cluster: &ProcCluster, via: usize, count: usize) {
    let mut c = McConn::connect(cluster.addr(via), Duration::from_secs(5)).unwrap();
    for i in 0..count {
        let value = format!("value-{i}");
        assert_eq!(
            c.set(&format!("m{i}"), value.as_bytes()).unwrap(),
            OpResult::Stored
        );
    }
}

/// Reads the keys `fill` wrote through node `via`: every one is there.
fn check_filled(cluster: &ProcCluster, via: usize, count: usize, when: &str) {
    let mut c = McConn::connect(cluster.addr(via), Duration::from_secs(5)).unwrap();
    for i in 0..count {
        let got = c.get(&format!("m{i}")).unwrap();
        let value = format!("value-{i}");
        assert_eq!(
            got,
            OpResult::Hit(Value(value.into_bytes())),
            "{when}: key m{i} through node {via}\n{}",
            cluster.describe()
        );
    }
}

/// Under a recorded load: a 4th and a 5th node join, node 1 is killed and removed, node 2
/// leaves; each change settles (every group back to its target members, all serving); the
/// history passes the mode's checker and every key written before the changes is still there.
fn grow_and_shrink_under_load(mode: &str) {
    let mut cluster = ProcCluster::start(3, mode, &["--replicas", "3", "--groups", "6"]);
    fill(&cluster, 1, 300);
    let addrs: Vec<SocketAddr> = (1..=3).map(|i| cluster.addr(i)).collect();
    let mut load = Workload::start(&addrs, WorkloadConfig::new(6, 7));
    std::thread::sleep(Duration::from_secs(1));

    let four = cluster.join(2);
    settle(&cluster, &[1, 2, 3, four], 2, "node 4 joined");
    assert!(stat(cluster.addr(four), "groups_held").unwrap() > 0);
    let five = cluster.join(3);
    settle(&cluster, &[1, 2, 3, four, five], 3, "node 5 joined");
    check_filled(&cluster, five, 300, "after two joins");

    cluster.kill(1);
    let removed = cluster.admin(3, &["remove", "1"]).expect("remove node 1");
    assert!(removed.contains("placement epoch 4"), "{removed}");
    settle(&cluster, &[2, 3, four, five], 4, "node 1 removed");

    let left = cluster.admin(2, &["leave"]).expect("node 2 leaves");
    assert!(left.contains("placement epoch 5"), "{left}");
    let exit = cluster.await_exit(2, SETTLE_WITHIN);
    assert!(
        exit.is_some_and(|s| s.success()),
        "node 2 did not stop by itself after leaving: {exit:?}\n{}",
        cluster.describe()
    );
    settle(&cluster, &[3, four, five], 5, "node 2 left");
    std::thread::sleep(Duration::from_secs(1));
    load.stop();

    check_filled(&cluster, 3, 300, "at the end");
    check_filled(&cluster, four, 300, "at the end");
    let unexpected = load.unexpected();
    assert!(unexpected.is_empty(), "nonsense replies: {unexpected:?}");
    let history = load.history();
    eprintln!("{} ops recorded\n{}", history.len(), load.summary());
    match mode {
        LIN => {
            let verdict = check_linearizable(
                &history,
                Budget {
                    max_steps_per_key: 2_000_000,
                    max_time: Some(Duration::from_secs(30)),
                },
            );
            assert!(
                verdict.is_linearizable(),
                "{verdict}\n{}",
                cluster.describe()
            );
        }
        _ => {
            let verdict = check_write_order(&history);
            assert!(verdict.is_consistent(), "{verdict}\n{}", cluster.describe());
        }
    }
    // The nodes that stay agree on who the members are.
    let members = cluster.admin(four, &["members"]).unwrap();
    assert!(members.contains("3 nodes"), "{members}");
}

#[test]
fn linearizable_cluster_grows_and_shrinks_under_load() {
    grow_and_shrink_under_load(LIN);
}

#[test]
fn sequential_cluster_grows_and_shrinks_under_load() {
    grow_and_shrink_under_load(SEQ);
}

/// A cluster started as one node grows to three, then six, then shrinks back to three: at
/// each size every key is there through every node, and each node holds its share of the
/// groups (12 groups of 3 copies: 12 each on up to 3 nodes, 6 each on 6).
#[test]
fn one_node_grows_to_three_then_six_and_back_to_three() {
    let mut cluster = ProcCluster::start(1, LIN, &["--replicas", "3", "--groups", "12"]);
    fill(&cluster, 1, 200);
    let mut epoch = 1;
    for seed in [1, 1] {
        let node = cluster.join(seed);
        epoch += 1;
        settle(
            &cluster,
            &(1..=node).collect::<Vec<_>>(),
            epoch,
            "growing to 3",
        );
    }
    for i in 1..=3 {
        check_filled(&cluster, i, 200, "on 3 nodes");
        assert_eq!(stat(cluster.addr(i), "groups_held"), Some(12));
    }
    for seed in [2, 3, 1] {
        let node = cluster.join(seed);
        epoch += 1;
        settle(
            &cluster,
            &(1..=node).collect::<Vec<_>>(),
            epoch,
            "growing to 6",
        );
    }
    for i in 1..=6 {
        check_filled(&cluster, i, 200, "on 6 nodes");
        assert_eq!(stat(cluster.addr(i), "groups_held"), Some(6), "node {i}");
    }
    for leaving in [6, 5, 4] {
        cluster.admin(1, &["remove", &leaving.to_string()]).unwrap();
        epoch += 1;
        let exit = cluster.await_exit(leaving, SETTLE_WITHIN);
        assert!(
            exit.is_some_and(|s| s.success()),
            "node {leaving}: {exit:?}"
        );
        let stay: Vec<usize> = (1..leaving).collect();
        settle(&cluster, &stay, epoch, "shrinking");
    }
    for i in 1..=3 {
        check_filled(&cluster, i, 200, "back on 3 nodes");
        assert_eq!(stat(cluster.addr(i), "groups_held"), Some(12));
    }
}

/// Disk nodes: a 4th node joins, then every node is killed and restarted (the joiner with
/// the same `--join`, which its saved members make moot): the members, each node's groups
/// and every key survive.
#[test]
fn a_joined_disk_node_keeps_its_groups_through_a_whole_cluster_restart() {
    let args = [
        "--replicas",
        "2",
        "--groups",
        "4",
        "--datalet",
        "disk:{dir}/node-{node}",
    ];
    let mut cluster = ProcCluster::start(3, LIN, &args);
    fill(&cluster, 1, 300);
    let four = cluster.join(1);
    settle(&cluster, &[1, 2, 3, four], 2, "node 4 joined");
    let held = stat(cluster.addr(four), "groups_held").unwrap();
    assert!(held > 0);
    for i in 1..=four {
        cluster.kill(i);
    }
    for i in 1..=four {
        cluster.restart(i);
    }
    settle(
        &cluster,
        &[1, 2, 3, four],
        2,
        "after the whole cluster restarted",
    );
    assert_eq!(stat(cluster.addr(four), "groups_held"), Some(held));
    for i in 1..=four {
        check_filled(&cluster, i, 300, "after the whole cluster restarted");
    }
}

/// A joiner killed (`kill -9`) while it receives a throttled transfer: restarted, it joins
/// again and the move finishes; a node killed for good is removed by `--dead-after` and its
/// groups get their copies back on the others.
#[test]
fn a_move_survives_its_joiner_killed_mid_transfer_and_the_dead_are_replaced() {
    let args = [
        "--replicas",
        "2",
        "--groups",
        "4",
        "--rebalance-rate",
        "200000",
        "--dead-after",
        "3",
    ];
    let mut cluster = ProcCluster::start(3, LIN, &args);
    // About 8 MB, 2 MB a group: a group's transfer at 200 KB/s takes seconds.
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(5)).unwrap();
    let big = vec![b'x'; 4000];
    for i in 0..2000 {
        assert_eq!(c.set(&format!("big{i}"), &big).unwrap(), OpResult::Stored);
    }
    fill(&cluster, 1, 100);
    let four = cluster.join(1);
    std::thread::sleep(Duration::from_millis(700));
    let moving: u64 = (1..=3)
        .map(|i| stat(cluster.addr(i), "groups_moving").unwrap_or(0))
        .sum();
    assert!(
        moving > 0,
        "the transfer ended before the kill: nothing to test\n{}",
        cluster.describe()
    );
    cluster.kill(four);
    cluster.restart(four);
    // Node 4 takes two of the four groups, about 4.4 MB, at 200 KB/s: 22 s of sending by
    // the rate alone, after the budget the killed run's transfers spent is paid back. The
    // usual 30 s window leaves too little room for a loaded machine.
    settle_within(
        &cluster,
        &[1, 2, 3, four],
        2,
        "node 4 joined after its kill",
        Duration::from_secs(60),
    );
    check_filled(&cluster, four, 100, "after the interrupted move");

    let killed = Instant::now();
    cluster.kill(3);
    let started = Instant::now();
    loop {
        if stat(cluster.addr(1), "membership_epoch") == Some(3) {
            break;
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "node 3 not removed\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    settle(&cluster, &[1, 2, four], 3, "dead node 3 replaced");
    eprintln!(
        "FIGURE copies restored {:?} after node 3 was killed (--dead-after 3)",
        killed.elapsed()
    );
    for i in [1, 2, four] {
        check_filled(&cluster, i, 100, "after node 3 was replaced");
    }
}

/// Faults in the middle of moves, under a recorded load: a throttled transfer to a joining
/// node 4 loses its likely source (node 1, the lowest id: `kill -9`, restarted later), then
/// node 4 is cut off from every node for 2 s; a second move (node 5 joining) has a member of
/// every group paused (SIGSTOP of node 2 for 2 s). Each move finishes, every group ends with
/// its 3 target members serving, every key written before is there, and the history is
/// linearizable.
#[test]
fn moves_finish_through_kills_partitions_and_pauses() {
    let args = [
        "--replicas",
        "3",
        "--groups",
        "6",
        "--rebalance-rate",
        "1000000",
    ];
    let mut cluster = ProcCluster::start(3, LIN, &args);
    let net = tailorkv_tests::procs::Net::new();
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(5)).unwrap();
    let big = vec![b'y'; 4000];
    for i in 0..1500 {
        assert_eq!(c.set(&format!("big{i}"), &big).unwrap(), OpResult::Stored);
    }
    fill(&cluster, 2, 200);
    let addrs: Vec<SocketAddr> = (1..=3).map(|i| cluster.addr(i)).collect();
    let mut load = Workload::start(&addrs, WorkloadConfig::new(6, 11));
    std::thread::sleep(Duration::from_millis(500));

    let four = cluster.join(3);
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        stat(cluster.addr(2), "groups_moving").unwrap_or(0) > 0,
        "the move ended before the faults: nothing to test\n{}",
        cluster.describe()
    );
    cluster.kill(1);
    std::thread::sleep(Duration::from_millis(1500));
    net.isolate(four);
    std::thread::sleep(Duration::from_secs(2));
    net.heal();
    cluster.restart(1);
    // Every transfer, the paused and cut-off nodes' catch-ups too, shares each node's
    // 1 MB/s: allow for a few rounds of them.
    let within = Duration::from_secs(90);
    let what = "node 4 joined through a kill and a cut";
    settle_within(&cluster, &[1, 2, 3, four], 2, what, within);

    let five = cluster.join(1);
    std::thread::sleep(Duration::from_millis(500));
    cluster.stop(2);
    std::thread::sleep(Duration::from_secs(2));
    cluster.cont(2);
    let what = "node 5 joined through a pause";
    settle_within(&cluster, &[1, 2, 3, four, five], 3, what, within);
    std::thread::sleep(Duration::from_millis(500));
    load.stop();

    for i in [1, 2, 3, four, five] {
        check_filled(&cluster, i, 200, "after the faults");
    }
    let mut c = McConn::connect(cluster.addr(five), Duration::from_secs(5)).unwrap();
    for i in (0..1500).step_by(37) {
        assert_eq!(
            c.get(&format!("big{i}")).unwrap(),
            OpResult::Hit(Value(big.clone())),
            "big{i} through node 5"
        );
    }
    let unexpected = load.unexpected();
    assert!(unexpected.is_empty(), "nonsense replies: {unexpected:?}");
    let history = load.history();
    eprintln!("{} ops recorded\n{}", history.len(), load.summary());
    let verdict = check_linearizable(
        &history,
        Budget {
            max_steps_per_key: 2_000_000,
            max_time: Some(Duration::from_secs(30)),
        },
    );
    assert!(
        verdict.is_linearizable(),
        "{verdict}\n{}",
        cluster.describe()
    );
}

/// Eventual mode: writers, each on keys of its own, write through nodes 1 to 3 while node 4
/// joins (each group it enters is sent a whole copy by a member staying, and it serves a
/// group only once it has it), node 2 leaves (handing over what it held) and node 1 is killed
/// and removed. Afterwards every node answers every key with its writer's last acknowledged
/// value (or a later one it tried): no acknowledged write lost, the replicas converged.
#[test]
fn eventual_cluster_grows_and_shrinks_without_losing_a_write() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let mut cluster = ProcCluster::start(3, "eventual", &["--replicas", "2", "--groups", "6"]);
    fill(&cluster, 1, 200);
    let stop = Arc::new(AtomicBool::new(false));
    // Per key: (last acknowledged, last tried).
    let ledger: Arc<Mutex<BTreeMap<String, (u64, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let addrs: Vec<SocketAddr> = (1..=3).map(|i| cluster.addr(i)).collect();
        let (stop, ledger) = (Arc::clone(&stop), Arc::clone(&ledger));
        writers.push(std::thread::spawn(move || {
            let mut node = w % 3;
            let mut conn: Option<McConn> = None;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = format!("w{w}-k{}", seq % 40);
                if conn.is_none() {
                    node = (node + 1) % addrs.len();
                    conn = McConn::connect(addrs[node], Duration::from_secs(2)).ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                ledger.lock().unwrap().entry(key.clone()).or_default().1 = seq;
                match c.set(&key, seq.to_string().as_bytes()) {
                    Ok(OpResult::Stored) => {
                        ledger.lock().unwrap().get_mut(&key).unwrap().0 = seq;
                    }
                    _ => conn = None,
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let four = cluster.join(1);
    settle_eventual(&cluster, &[1, 2, 3, four], 2);
    cluster.admin(2, &["leave"]).expect("node 2 leaves");
    let exit = cluster.await_exit(2, SETTLE_WITHIN);
    assert!(exit.is_some_and(|s| s.success()), "node 2: {exit:?}");
    settle_eventual(&cluster, &[1, 3, four], 3);
    cluster.kill(1);
    cluster.admin(3, &["remove", "1"]).expect("remove node 1");
    settle_eventual(&cluster, &[3, four], 4);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    // Anti-entropy and the hand-overs have had their time: every node agrees.
    let ledger = ledger.lock().unwrap().clone();
    let deadline = Instant::now() + SETTLE_WITHIN;
    'nodes: for i in [3, four] {
        loop {
            let mut c = McConn::connect(cluster.addr(i), Duration::from_secs(5)).unwrap();
            let wrong: Vec<String> = ledger
                .iter()
                .filter_map(|(key, &(acked, tried))| {
                    let got: Option<u64> = match c.get(key) {
                        Ok(OpResult::Hit(Value(v))) => String::from_utf8_lossy(&v).parse().ok(),
                        _ => None,
                    };
                    match got {
                        Some(v) if v >= acked && v <= tried => None,
                        other => Some(format!(
                            "{key}: {other:?}, acknowledged {acked}, tried {tried}"
                        )),
                    }
                })
                .collect();
            if wrong.is_empty() {
                check_filled(&cluster, i, 200, "eventual, at the end");
                continue 'nodes;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} still answers wrong:\n{}\n{}",
                wrong.join("\n"),
                cluster.describe()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Waits until every node in `nodes` knows placement epoch `epoch` and serves every group it
/// holds (eventual mode: no group still being sent its copy).
fn settle_eventual(cluster: &ProcCluster, nodes: &[usize], epoch: u64) {
    let started = Instant::now();
    loop {
        let done = nodes.iter().all(|&i| {
            let addr = cluster.addr(i);
            stat(addr, "membership_epoch") == Some(epoch) && stat(addr, "groups_moving") == Some(0)
        });
        if done {
            return;
        }
        assert!(
            started.elapsed() < SETTLE_WITHIN,
            "not settled at epoch {epoch}\n{}",
            cluster.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One copy of each key (`--replicas 1`): every move hands a group's only copy over, so the
/// old member must stay until the new one holds it. Two nodes, a third joins, then the first
/// leaves: every key is still there.
#[test]
fn a_single_copy_moves_without_a_loss() {
    let mut cluster = ProcCluster::start(2, LIN, &["--replicas", "1", "--groups", "4"]);
    fill(&cluster, 1, 300);
    let three = cluster.join(2);
    settle(&cluster, &[1, 2, three], 2, "node 3 joined (1 copy)");
    assert!(stat(cluster.addr(three), "groups_held").unwrap() > 0);
    cluster.admin(1, &["leave"]).expect("node 1 leaves");
    let exit = cluster.await_exit(1, SETTLE_WITHIN);
    assert!(exit.is_some_and(|s| s.success()), "node 1: {exit:?}");
    settle(&cluster, &[2, three], 3, "node 1 left (1 copy)");
    for i in [2, three] {
        check_filled(&cluster, i, 300, "after the only copies moved");
    }
}

/// Five copies of each key on five nodes: a sixth joins and takes its share (5 of 6 groups'
/// copies are swapped to it), then a dead node is removed and its groups get the sixth back
/// to five copies each.
#[test]
fn five_copies_on_five_nodes_then_six_then_one_removed() {
    let mut cluster = ProcCluster::start(5, SEQ, &["--replicas", "5", "--groups", "6"]);
    fill(&cluster, 1, 200);
    let six = cluster.join(3);
    settle(
        &cluster,
        &[1, 2, 3, 4, 5, six],
        2,
        "node 6 joined (5 copies)",
    );
    assert_eq!(stat(cluster.addr(six), "groups_held"), Some(5));
    cluster.kill(2);
    cluster.admin(4, &["remove", "2"]).expect("remove node 2");
    settle(&cluster, &[1, 3, 4, 5, six], 3, "node 2 removed (5 copies)");
    for i in [1, 3, 4, 5, six] {
        assert_eq!(stat(cluster.addr(i), "groups_held"), Some(6), "node {i}");
        check_filled(&cluster, i, 200, "five copies");
    }
}

/// A node removed while it is cut off from every other cannot hear its removal through the
/// order; once the cut heals, it asks the members for the membership, learns it was removed,
/// and stops, and the others never take it back in.
#[test]
fn a_node_removed_while_cut_off_stops_once_the_cut_heals() {
    let mut cluster = ProcCluster::start(3, LIN, &["--replicas", "3", "--groups", "4"]);
    fill(&cluster, 1, 50);
    let four = cluster.join(1);
    settle(&cluster, &[1, 2, 3, four], 2, "growing to 4");
    let net = tailorkv_tests::procs::Net::new();
    net.isolate(four);
    cluster.admin(1, &["remove", &four.to_string()]).unwrap();
    settle(&cluster, &[1, 2, 3], 3, "node 4 removed while cut off");
    std::thread::sleep(Duration::from_secs(1));
    assert!(cluster.is_running(four), "node 4 cannot have heard yet");
    net.heal();
    let exit = cluster.await_exit(four, SETTLE_WITHIN);
    assert!(exit.is_some_and(|s| s.success()), "node 4: {exit:?}");
    settle(&cluster, &[1, 2, 3], 3, "after node 4 stopped");
    for i in 1..=3 {
        check_filled(&cluster, i, 50, "after node 4 stopped");
    }
}
