//! The meta protocol in every consistency mode, on 3-node clusters over TCP.
//!
//! - Every node of every mode answers a script of meta commands as a single node does.
//! - In the strong modes, a win token (`W`: the right to recache a missing or stale item) goes
//!   to exactly one client in the cluster, however many ask at once through different nodes:
//!   the read that hands it out is ordered like a write. In the eventual mode each node hands
//!   it out on its own, so at most one client per node wins (stated in the README).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Barrier};

use tailorkv_controlet::config::Consistency;
use tailorkv_tests::{Cluster, Controlet, RawClient};

/// Sends `request` and reads replies until `mn`'s `MN`, with CAS uniques renamed `c1`, `c2`,
/// ... in order of first appearance and the key prefix `prefix` taken out.
fn transcript(addr: SocketAddr, request: &str, prefix: &str) -> String {
    let mut raw = RawClient::connect(addr);
    let request = request.replace("{p}", prefix);
    let reply = raw.call(format!("{request}mn\r\n").as_bytes(), b"MN\r\n");
    let reply = String::from_utf8(reply).expect("text").replace(prefix, "");
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut rename = |unique: &str| {
        let n = names.len() + 1;
        names
            .entry(unique.to_string())
            .or_insert_with(|| format!("c{n}"))
            .clone()
    };
    reply
        .split("\r\n")
        .map(|line| {
            line.split(' ')
                .map(|word| match word.strip_prefix("cas=") {
                    Some(u) if u.chars().all(|c| c.is_ascii_digit()) => {
                        format!("cas={}", rename(u))
                    }
                    _ => match word.strip_prefix('c') {
                        Some(u) if !u.is_empty() && u.chars().all(|c| c.is_ascii_digit()) => {
                            rename(u)
                        }
                        _ => word.to_string(),
                    },
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Asserts `got` is `expected` but for the seconds a transcript reports (`t<n>`, `exp=<n>`,
/// `la=<n>`), which may differ by one: a second may turn between two requests of a script.
fn assert_same(got: &str, expected: &str, what: &str) {
    let seconds = |word: &str| -> Option<(String, i64)> {
        for prefix in ["exp=", "la=", "t"] {
            if let Some(n) = word.strip_prefix(prefix).and_then(|n| n.parse().ok()) {
                return Some((prefix.to_string(), n));
            }
        }
        None
    };
    let words = |s: &str| {
        s.split([' ', '\r', '\n'])
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (g, e) = (words(got), words(expected));
    let close = g.len() == e.len()
        && g.iter()
            .zip(&e)
            .all(|(a, b)| match (seconds(a), seconds(b)) {
                (Some((pa, na)), Some((pb, nb))) => pa == pb && (na - nb).abs() <= 1,
                _ => a == b,
            });
    assert!(
        close,
        "{what}:\n  got:      {got:?}\n  expected: {expected:?}"
    );
}

/// Every meta command, its modifying flags included; `{p}` prefixes each key.
const SCRIPT: &str = "ms {p}a 5 T100 F7 c k\r\nhello\r\n\
    mg {p}a v c f t s k O1\r\n\
    ms {p}a 3 MA C0\r\nabc\r\n\
    mg {p}a v c\r\n\
    md {p}a I T30\r\n\
    mg {p}a v c t\r\n\
    mg {p}a v c\r\n\
    mg {p}lease N30 c t\r\n\
    mg {p}lease c t\r\n\
    ms {p}lease 4 I C1\r\nlate\r\n\
    mg {p}lease v\r\n\
    ma {p}n N0 J10 v c\r\n\
    ma {p}n MD D3 v t\r\n\
    ma {p}n C1 q\r\n\
    md {p}n q\r\n\
    md {p}n\r\n\
    mg {p}n q k\r\n\
    mg {p}n k O2\r\n\
    me {p}lease\r\n";

#[test]
fn every_meta_command_answers_as_on_a_single_node_in_every_mode() {
    let single = Controlet::start();
    // Prefixes of one length, so that items are of one size everywhere.
    let expected = transcript(single.addr, SCRIPT, "solo0_");
    assert!(expected.contains(" X W\r\n"), "sanity: {expected}");
    assert!(expected.contains("EN k"), "sanity: {expected}");
    for mode in [
        Consistency::Linearizable,
        Consistency::Sequential,
        Consistency::Eventual,
    ] {
        let cluster = Cluster::start(3, mode, |_| {});
        for (i, &addr) in cluster.addrs().iter().enumerate() {
            // Each node's own keys: in the eventual mode another node's writes arrive later.
            let prefix = format!("node{i}_");
            assert_same(
                &transcript(addr, SCRIPT, &prefix),
                &expected,
                &format!("{mode:?}, node {i} at {addr}"),
            );
        }
    }
}

/// The script without `me` (whose `fetch=`/`la=` are the answering node's view of its own
/// replica, and so differ for a key another group holds).
fn script_without_me() -> String {
    SCRIPT
        .split("\r\n")
        .filter(|line| !line.starts_with("me "))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[test]
fn meta_commands_reach_the_owner_of_their_key_in_a_sharded_cluster() {
    let script = script_without_me();
    let single = Controlet::start();
    let expected = transcript(single.addr, &script, "solo0_");
    for mode in [Consistency::Linearizable, Consistency::Eventual] {
        // Three groups of one: most keys live on another node than the one asked.
        let cluster = Cluster::start(3, mode, |c| c.replicas = Some(1));
        for (i, &addr) in cluster.addrs().iter().enumerate() {
            let prefix = format!("node{i}_");
            assert_same(
                &transcript(addr, &script, &prefix),
                &expected,
                &format!("{mode:?}, node {i} at {addr}"),
            );
        }
    }
}

/// `clients` clients spread over the nodes send `request` at once; the first reply line of
/// each, with the node it went to.
fn at_once(addrs: &[SocketAddr], clients: usize, request: &str) -> Vec<(usize, String)> {
    let barrier = Arc::new(Barrier::new(clients));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let node = c % addrs.len();
            let addr = addrs[node];
            let barrier = Arc::clone(&barrier);
            let request = request.to_string();
            std::thread::spawn(move || {
                let mut raw = RawClient::connect(addr);
                barrier.wait();
                let reply = raw.call(request.as_bytes(), b"\r\n");
                let reply = String::from_utf8(reply).expect("text");
                let first = reply.split("\r\n").next().unwrap_or_default();
                (node, first.to_string())
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// How many replies carry `W`, in all and on the busiest node.
fn winners(replies: &[(usize, String)]) -> (usize, usize) {
    let won: Vec<usize> = replies
        .iter()
        .filter(|(_, line)| line.split(' ').any(|w| w == "W"))
        .map(|&(node, _)| node)
        .collect();
    let per_node = (0..3)
        .map(|n| won.iter().filter(|&&w| w == n).count())
        .max()
        .unwrap_or(0);
    (won.len(), per_node)
}

const CLIENTS: usize = 9;
const ROUNDS: usize = 15;

#[test]
fn a_win_token_goes_to_exactly_one_client_in_the_strong_modes() {
    for mode in [Consistency::Linearizable, Consistency::Sequential] {
        let cluster = Cluster::start(3, mode, |_| {});
        let addrs = cluster.addrs();
        for round in 0..ROUNDS {
            // A missing item: every client asks to create it.
            let lease = at_once(&addrs, CLIENTS, &format!("mg lease{round} N30 c\r\n"));
            assert!(
                lease.iter().all(|(_, l)| l.starts_with("HD c")),
                "{lease:?}"
            );
            assert_eq!(winners(&lease).0, 1, "{mode:?} round {round}: {lease:?}");
            let others = lease.iter().filter(|(_, l)| l.ends_with(" Z")).count();
            assert_eq!(others, CLIENTS - 1, "{mode:?} round {round}: {lease:?}");

            // A stale item: every client reads it.
            let key = format!("stale{round}");
            let mut raw = RawClient::connect(addrs[round % 3]);
            let set = format!("ms {key} 1\r\nx\r\nmd {key} I\r\n");
            assert_eq!(raw.call(set.as_bytes(), b"HD\r\nHD\r\n"), b"HD\r\nHD\r\n");
            let stale = at_once(&addrs, CLIENTS, &format!("mg {key} v\r\n"));
            let (won, _) = winners(&stale);
            assert_eq!(won, 1, "{mode:?} round {round}: {stale:?}");
            // Linearizable: every reader is told it is stale. Sequential: a reader through
            // another node may still see the item as it was before (its replica has not
            // applied the invalidation yet), which that mode allows; the node that took the
            // invalidation has.
            let here = |node: usize| mode == Consistency::Linearizable || node == round % 3;
            let must = if mode == Consistency::Linearizable {
                CLIENTS
            } else {
                CLIENTS / 3
            };
            let told_here = stale
                .iter()
                .filter(|(node, line)| here(*node) && line.contains(" X"))
                .count();
            assert_eq!(told_here, must, "{mode:?} round {round}: {stale:?}");
            // A sequential replica behind may not even hold the item yet.
            for (_, line) in &stale {
                let behind = line == "VA 1" || line == "EN";
                assert!(behind || line.contains(" X"), "{mode:?}: {stale:?}");
            }
        }
    }
}

#[test]
fn in_the_eventual_mode_each_node_hands_out_a_win_token_at_most_once() {
    let cluster = Cluster::start(3, Consistency::Eventual, |_| {});
    let addrs = cluster.addrs();
    for round in 0..ROUNDS {
        let lease = at_once(&addrs, CLIENTS, &format!("mg lease{round} N30 c\r\n"));
        let (won, per_node) = winners(&lease);
        assert!((1..=3).contains(&won), "round {round}: {lease:?}");
        assert_eq!(per_node, 1, "one node handed out two: {lease:?}");
    }
}
