//! The HTTP endpoint's Prometheus metrics (`--http-listen`), scraped while clients run and
//! read with the Prometheus project's own parser (the `prometheus_client` Python package's
//! OpenMetrics parser, which `bash scripts/test` pip-installs): the text parses, and the
//! counters move as the commands are served.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tailorkv_controlet::config::Consistency;
use tailorkv_tests::client::McConn;
use tailorkv_tests::ports::free_port;
use tailorkv_tests::Cluster;

/// `GET path` over HTTP/1.1; the status line and the body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    // The node binds its HTTP port as it starts: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect(addr) {
            Ok(stream) => break stream,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot connect to the HTTP endpoint {addr}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("a header and a body");
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

/// Every sample of an OpenMetrics text, parsed by `prometheus_client`'s parser: `name{labels}`
/// (labels sorted, comma-separated) to value. Panics if the text does not parse.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let code = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s{%s} %r" % (s.name, labels, s.value))
"#;
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the metrics do not parse (is prometheus-client installed? `bash scripts/test` \
         installs it):\n{}\n---\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (name, value) = line.rsplit_once(' ').unwrap();
            (name.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_parse_and_count_what_is_served_under_load() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let cluster = Cluster::start(3, Consistency::Linearizable, |c| {
        c.http_listen = Some(SocketAddr::from((
            [127, 0, 0, 1],
            ports[usize::from(c.id) - 1],
        )));
    });
    let http = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let (status, body) = http_get(http, "/metrics");
    assert!(status.contains("200"), "{status}");
    let before = parse(&body);
    let get_hits = "memcached_commands_total{command=get,status=hit}";
    let sets = "memcached_commands_total{command=set,status=hit}";
    assert_eq!(before[get_hits], 0.0);

    // Clients on node 1 while the endpoint is scraped.
    let stop = AtomicBool::new(false);
    let scrapes = std::thread::scope(|s| {
        let (addr, stop) = (cluster.addrs()[0], &stop);
        let writer = s.spawn(move || {
            let mut c = McConn::connect(addr, Duration::from_secs(10)).unwrap();
            for i in 0..300 {
                c.set(&format!("m{i}"), b"value").unwrap();
                assert!(c.get(&format!("m{i}")).is_ok());
            }
            stop.store(true, Ordering::Relaxed);
        });
        let mut scrapes = 0;
        while !stop.load(Ordering::Relaxed) {
            let (status, body) = http_get(http, "/metrics");
            assert!(status.contains("200"), "{status}");
            parse(&body);
            scrapes += 1;
        }
        writer.join().unwrap();
        scrapes
    });
    assert!(scrapes > 0);

    let after = parse(&http_get(http, "/metrics").1);
    assert_eq!(after[sets] - before[sets], 300.0, "sets counted");
    assert_eq!(
        after[get_hits] - before[get_hits],
        300.0,
        "get hits counted"
    );
    assert_eq!(after["memcached_current_items{}"], 300.0);
    assert_eq!(after["tailorkv_group_state{group=0,state=serving}"], 1.0);
    assert_eq!(after["tailorkv_group_members{group=0}"], 3.0);
    // No snapshot is being installed.
    assert_eq!(after["tailorkv_group_catch_up_items{group=0}"], 0.0);
    assert_eq!(after["tailorkv_group_catch_up_total_items{group=0}"], 0.0);
    assert!(after["tailorkv_ops_applied_total{}"] >= 300.0);
    assert!(after["memcached_read_bytes_total{}"] > before["memcached_read_bytes_total{}"]);
    // Latencies: every set and get of the load counted once, in some bucket.
    let count = |kind: &str| {
        let name = format!("tailorkv_command_duration_seconds_count{{command={kind}}}");
        after[&name] - before.get(&name).copied().unwrap_or(0.0)
    };
    assert_eq!(count("set"), 300.0);
    assert!(count("get") >= 300.0, "gets counted: {}", count("get"));
    let inf = "tailorkv_command_duration_seconds_bucket{command=set,le=+Inf}";
    assert_eq!(
        after[inf],
        after["tailorkv_command_duration_seconds_count{command=set}"]
    );
    assert!(after["tailorkv_command_duration_seconds_sum{command=set}"] > 0.0);
    // Node 2 applied the same writes for its peers, but served no client of its own.
    let node2 = parse(&http_get(SocketAddr::from(([127, 0, 0, 1], ports[1])), "/metrics").1);
    assert_eq!(node2[sets], 0.0);
    assert_eq!(node2["tailorkv_node_items{}"], 300.0);

    let (status, _) = http_get(http, "/nothing-here");
    assert!(status.contains("404"), "{status}");
}

/// `/status` and `/cluster` on a sharded cluster: a node's own groups, counters and links, and
/// every node's status gathered from any node.
#[test]
fn status_and_cluster_json_describe_the_nodes() {
    use tailorkv_controlet::status::{ClusterStatus, NodeStatus};
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let cluster = Cluster::start(6, Consistency::Linearizable, |c| {
        c.replicas = Some(3);
        c.http_listen = Some(SocketAddr::from((
            [127, 0, 0, 1],
            ports[usize::from(c.id) - 1],
        )));
    });
    let mut c = McConn::connect(cluster.addrs()[0], Duration::from_secs(10)).unwrap();
    for i in 0..60 {
        c.set(&format!("s{i}"), b"v").unwrap();
    }
    let http = SocketAddr::from(([127, 0, 0, 1], ports[0]));
    let (status, body) = http_get(http, "/status");
    assert!(status.contains("200"), "{status}");
    let me: NodeStatus = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (me.id, me.up, me.consistency.as_str()),
        (1, true, "linearizable")
    );
    let groups: Vec<u16> = me.groups.iter().map(|g| g.id).collect();
    assert_eq!(groups, vec![0, 4, 5], "node 1's groups");
    assert!(me
        .groups
        .iter()
        .all(|g| g.state == "serving" && g.view_members == 3 && g.catch_up.is_none()));
    assert_eq!(me.writes, 60);
    assert!(
        me.forwarded > 0 && me.forwarded < 60,
        "about half forwarded: {}",
        me.forwarded
    );
    assert!(me.timed >= 60 && me.time_us > 0);
    assert_eq!(me.peers.len(), 5);
    assert!(me
        .events
        .iter()
        .any(|e| e.what.starts_with("serving in view 1")));

    let all: ClusterStatus = serde_json::from_str(&http_get(http, "/cluster").1).unwrap();
    assert_eq!((all.from, all.replicas, all.nodes.len()), (1, 3, 6));
    assert!(all.nodes.iter().all(|n| n.up && n.groups.len() == 3));
    let copies: u64 = all.nodes.iter().map(|n| n.items).sum();
    assert_eq!(copies, 180, "3 copies of each of 60 items");
}

/// Eventual mode's repair reports how far it is: a node restarted with an empty store differs
/// from its peers in nearly every bucket, `/metrics` and `/status` say so while anti-entropy
/// repairs it, the log says it is repairing and then in sync, and every figure falls to 0.
#[test]
fn eventual_repair_progress_shows_in_metrics_status_and_the_log() {
    use tailorkv_controlet::status::NodeStatus;
    use tailorkv_tests::procs::ProcCluster;
    let mut cluster = ProcCluster::start(3, "eventual", &[]);
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(10)).unwrap();
    for i in 0..3000 {
        c.set(&format!("r{i}"), b"value").unwrap();
    }
    let items = |cluster: &ProcCluster, i: usize| -> f64 {
        parse(&http_get(cluster.http_addr(i), "/metrics").1)["memcached_current_items{}"]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while items(&cluster, 3) < 3000.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "node 3 never got the items"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = |cluster: &ProcCluster| {
        (1..=3).all(|i| {
            let m = parse(&http_get(cluster.http_addr(i), "/metrics").1);
            let differing: Vec<f64> = m
                .iter()
                .filter(|(k, _)| k.starts_with("tailorkv_antientropy_buckets_differing{"))
                .map(|(_, &v)| v)
                .collect();
            differing.len() == 2 && differing.iter().all(|&v| v == 0.0)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !settled(&cluster) {
        assert!(
            std::time::Instant::now() < deadline,
            "rounds never found the replicas in sync"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    cluster.kill(3);
    cluster.restart(3);
    // Sample every node while the restarted one is repaired: the most buckets any node saw
    // differing from a peer, on /metrics and on /status.
    let (mut most_metric, mut most_status) = (0.0f64, 0u64);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        for i in 1..=3 {
            let m = parse(&http_get(cluster.http_addr(i), "/metrics").1);
            for (k, &v) in &m {
                if k.starts_with("tailorkv_antientropy_buckets_differing{") {
                    most_metric = most_metric.max(v);
                }
            }
            let me: NodeStatus =
                serde_json::from_str(&http_get(cluster.http_addr(i), "/status").1).unwrap();
            for g in &me.groups {
                most_status = most_status.max(g.repair.iter().map(|r| r.1).max().unwrap_or(0));
            }
        }
        if items(&cluster, 3) >= 3000.0 && most_metric > 0.0 && settled(&cluster) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "repair did not finish: node 3 holds {} items, most buckets differing {most_metric}",
            items(&cluster, 3)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // 3000 keys leave about 55 of 1024 buckets empty: an empty replica differs in the rest.
    assert!(
        most_metric > 900.0,
        "most buckets seen differing: {most_metric}"
    );
    assert!(
        most_status > 900,
        "most buckets differing on /status: {most_status}"
    );
    let m3 = parse(&http_get(cluster.http_addr(3), "/metrics").1);
    assert!(
        m3["tailorkv_antientropy_entries_received_total{}"] >= 3000.0,
        "node 3 was sent every item by anti-entropy: {}",
        m3["tailorkv_antientropy_entries_received_total{}"]
    );
    let logs: String = (1..=3)
        .map(|i| std::fs::read_to_string(cluster.log_path(i)).unwrap())
        .collect();
    assert!(
        logs.contains("anti-entropy: repairing a replica that differs from a peer's"),
        "the repair is logged"
    );
    assert!(
        logs.contains("anti-entropy: in sync with a peer again"),
        "its end is logged"
    );
}

/// A member killed shows on a survivor's `/metrics`: its link goes down, the failure detector
/// counts a suspicion, and the group serves in one more view; the order's delivery lag and
/// the peer queues are there to read.
#[test]
fn a_killed_member_shows_as_a_suspicion_a_view_change_and_a_link_down() {
    use tailorkv_tests::procs::ProcCluster;
    let mut cluster = ProcCluster::start(3, "linearizable", &[]);
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(10)).unwrap();
    c.set("k", b"v").unwrap();
    let scrape = |cluster: &ProcCluster| parse(&http_get(cluster.http_addr(1), "/metrics").1);
    let before = scrape(&cluster);
    let views = "tailorkv_group_view_changes_total{group=0}";
    let suspicions = "tailorkv_group_suspicions_total{group=0}";
    assert!(
        before[views] >= 1.0,
        "serving in a first view: {}",
        before[views]
    );
    assert_eq!(before["tailorkv_peer_up{peer=3}"], 1.0);
    assert!(before.contains_key("tailorkv_peer_queue_bytes{peer=3}"));
    assert!(before.contains_key("tailorkv_group_undelivered_batches{group=0}"));
    assert!(before.contains_key("tailorkv_group_undelivered_own_bytes{group=0}"));

    cluster.kill(3);
    c.set("k", b"after").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = scrape(&cluster);
        if now[views] > before[views]
            && now[suspicions] > before[suspicions]
            && now["tailorkv_peer_up{peer=3}"] == 0.0
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "views {} (before {}), suspicions {} (before {}), link to 3 up: {}",
            now[views],
            before[views],
            now[suspicions],
            before[suspicions],
            now["tailorkv_peer_up{peer=3}"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
