//! The fault-test harness itself, apart from the replication protocol: `Net` cuts plain TCP
//! between the peer addresses `127.0.0.11` and `127.0.0.12` and heals it, and removes its
//! iptables chain when dropped; `ProcCluster` starts, kills, restarts, pauses and terminates
//! real `controlet` processes.
//!
//! These tests need iptables and root: they fail (never skip) without them, saying to run
//! `scripts/test`, which installs iptables.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use tailorkv_tests::checker::{OpResult, Value};
use tailorkv_tests::client::{probe_version, McConn};
use tailorkv_tests::procs::{connect_from, peer_ip, Net, ProcCluster};

fn ip(i: usize) -> IpAddr {
    peer_ip(i).into()
}

/// A listener on node `i`'s peer address that echoes one line per connection.
fn echo_listener(i: usize) -> SocketAddr {
    let listener = TcpListener::bind((peer_ip(i), 0)).expect("bind on the peer address");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Sends `msg` and reads the echo within `within`.
fn echo(stream: &mut TcpStream, msg: &[u8], within: Duration) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(within))?;
    stream.write_all(msg)?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while got.len() < msg.len() {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

fn connects(from: usize, to: SocketAddr) -> bool {
    match connect_from(ip(from), to, Duration::from_millis(700)) {
        Ok(mut s) => echo(&mut s, b"ping", Duration::from_secs(2)).is_ok(),
        Err(_) => false,
    }
}

fn listed(chain: &str) -> bool {
    let out = std::process::Command::new("iptables")
        .args(["-w", "-S"])
        .output()
        .expect("iptables -S");
    String::from_utf8_lossy(&out.stdout).contains(chain)
}

#[test]
fn net_partitions_and_heals_plain_tcp_between_peer_addresses() {
    Net::available();
    let to_2 = echo_listener(2);
    let to_1 = echo_listener(1);

    // Before any fault: .11 -> .12 connects and echoes, from the right source address.
    let mut established = connect_from(ip(1), to_2, Duration::from_secs(2)).expect("connect");
    assert_eq!(established.local_addr().unwrap().ip(), ip(1));
    assert_eq!(
        echo(&mut established, b"hello", Duration::from_secs(2)).unwrap(),
        b"hello"
    );
    let chain;
    {
        let net = Net::new();
        chain = net.chain().to_string();
        assert!(listed(&chain), "chain {chain} not in iptables -S");

        net.partition(&[&[1], &[2]]);
        eprintln!("rules during the partition:\n{}", net.rules());
        let started = Instant::now();
        let err = connect_from(ip(1), to_2, Duration::from_secs(1)).expect_err("partitioned");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "not a timeout: {err}"
        );
        assert!(!connects(2, to_1), ".12 -> .11 must be cut too");
        // An established connection is not reset: its data just does not arrive.
        established.write_all(b"lost?").unwrap();
        let mut buf = [0u8; 16];
        established
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        assert!(
            established.read(&mut buf).is_err(),
            "data crossed the partition"
        );
        // Client traffic on 127.0.0.1 is untouched.
        let local = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(TcpStream::connect(local.local_addr().unwrap()).is_ok());

        net.heal();
        assert!(connects(1, to_2), "healed, yet .11 cannot reach .12");
        assert!(connects(2, to_1), "healed, yet .12 cannot reach .11");
        // The held-back data arrives once TCP retransmits.
        established
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            let n = established
                .read(&mut buf)
                .expect("retransmitted data after heal");
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"lost?");

        // One way at the packet level: .11 -> .12 dropped. On TCP that breaks connecting
        // both ways (the SYN-ACK of .11 is dropped), and nodes other than 1 and 2 are free.
        net.one_way(1, 2);
        assert!(!connects(1, to_2));
        assert!(!connects(2, to_1), "the SYN-ACK from .11 to .12 is dropped");
        assert!(connects(3, to_2) && connects(3, to_1));
        net.heal();

        // One way at the connection level: connections .11 opens to .12 die, those .12
        // opens to .11 work.
        net.block_connections(1, 2);
        assert!(!connects(1, to_2));
        assert!(connects(2, to_1), "connections from .12 must work");
        net.heal();

        // Isolation cuts a node from everyone.
        net.isolate(2);
        assert!(!connects(1, to_2) && !connects(3, to_2) && !connects(2, to_1));
        assert!(connects(3, to_1));
        net.heal();

        // Loss: about half the SYNs from .11 are dropped; a dropped SYN is resent only after
        // a second, so a 300 ms connect fails.
        net.loss(1, 0.5);
        assert!(net.rules().contains("statistic"), "{}", net.rules());
        let mut ok = 0;
        for _ in 0..30 {
            if connect_from(ip(1), to_2, Duration::from_millis(300)).is_ok() {
                ok += 1;
            }
        }
        assert!(
            (1..30).contains(&ok),
            "{ok} of 30 connects went through at 50% loss"
        );
        eprintln!("50% loss: {ok} of 30 connects went through");
    }
    assert!(!listed(&chain), "chain {chain} still there after Drop");
    assert!(connects(1, to_2), "dropping the Net must remove its faults");
}

#[test]
fn a_net_is_removed_even_when_the_test_panics() {
    Net::available();
    let chain = std::panic::catch_unwind(|| {
        let net = Net::new();
        net.partition(&[&[1], &[2, 3]]);
        assert!(listed(net.chain()));
        std::panic::panic_any(net.chain().to_string());
    })
    .expect_err("panicked")
    .downcast::<String>()
    .expect("the chain's name");
    assert!(
        !listed(&chain),
        "chain {chain} left behind by a panicking test"
    );
}

fn set_get(conn: &mut McConn, key: &str, value: &str) {
    assert_eq!(conn.set(key, value.as_bytes()).unwrap(), OpResult::Stored);
    assert_eq!(
        conn.get(key).unwrap(),
        OpResult::Hit(Value(value.as_bytes().to_vec()))
    );
}

#[test]
fn proc_cluster_starts_kills_restarts_pauses_and_terminates_nodes() {
    let mut cluster = ProcCluster::start(3, "linearizable", &[]);
    eprintln!("{}", cluster.describe());
    assert_eq!(cluster.len(), 3);
    for i in 1..=3 {
        assert_eq!(cluster.addr(i).ip().to_string(), "127.0.0.1");
        assert_eq!(cluster.peer_addr(i).ip(), ip(i));
        assert!(cluster.log_path(i).exists());
    }
    let timeout = Duration::from_secs(10);
    let mut conns: Vec<McConn> = cluster
        .addrs()
        .into_iter()
        .map(|a| McConn::connect(a, timeout).unwrap())
        .collect();
    for (n, conn) in conns.iter_mut().enumerate() {
        set_get(conn, &format!("key{n}"), &format!("value{n}"));
    }
    // Every node reads what every node wrote.
    for conn in conns.iter_mut() {
        for n in 0..3 {
            assert_eq!(
                conn.get(&format!("key{n}")).unwrap(),
                OpResult::Hit(Value(format!("value{n}").into_bytes()))
            );
        }
    }
    drop(conns);

    let addr2 = cluster.addr(2);
    let pid2 = cluster.pid(2).unwrap();
    cluster.kill(2);
    assert!(!cluster.is_running(2));
    assert!(cluster.pid(2).is_none());
    assert!(
        TcpStream::connect(addr2).is_err(),
        "killed node still accepts"
    );
    cluster.restart(2);
    assert!(cluster.is_running(2));
    assert_eq!(cluster.addr(2), addr2, "same port after restart");
    assert_ne!(cluster.pid(2), Some(pid2));
    assert!(probe_version(addr2, Duration::from_secs(2)).is_some());
    let log = std::fs::read_to_string(cluster.log_path(2)).unwrap();
    assert!(log.contains("start #2 of node 2"), "{log}");
    assert!(log.contains("--peer-listen 127.0.0.12:"), "{log}");

    // A paused node accepts connections (the kernel does) but answers nothing.
    cluster.stop(1);
    assert!(probe_version(cluster.addr(1), Duration::from_millis(500)).is_none());
    assert!(cluster.is_running(1), "a stopped node is alive");
    cluster.cont(1);
    assert!(probe_version(cluster.addr(1), Duration::from_secs(2)).is_some());

    let status = cluster.terminate(3);
    assert!(status.success(), "SIGTERM exit: {status}");
    assert!(!cluster.is_running(3));
    cluster.restart(3);
    assert!(probe_version(cluster.addr(3), Duration::from_secs(2)).is_some());
}

#[test]
fn proc_cluster_substitutes_node_and_dir_in_arguments() {
    let cluster = ProcCluster::start(2, "eventual", &["--datalet", "disk:{dir}/node-{node}"]);
    for i in 1..=2 {
        assert!(
            cluster.dir().join(format!("node-{i}")).is_dir(),
            "node {i} has no store of its own"
        );
    }
    let mut conn = McConn::connect(cluster.addr(1), Duration::from_secs(10)).unwrap();
    set_get(&mut conn, "k", "v");
}
