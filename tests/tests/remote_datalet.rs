//! The remote datalet against real servers: the whole conformance suite on a real memcached
//! and on a controlet serving as a plain memcached; its header as the remote server holds it;
//! per-key order and lost-update freedom under concurrency; outages, timeouts and
//! reconnection; and a controlet binary in front of a memcached, end to end.

mod remote_support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_support::{controlet_with, datalet_with, memcached_with, Proxy};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, NodeId, Version};
use tailorkv_datalet::remote::header::Header;
use tailorkv_datalet::remote::pool::worker_for;
use tailorkv_datalet::{
    Datalet, DataletError, Guarded, Limits, Mutation, Outcome, RemoteDatalet, RemoteOptions,
};
use tailorkv_tests::{free_port, RawClient, ServerProcess};

const NOW: u64 = 1_700_000_000;
/// The version a test's `flush_all` is applied at.
const FLUSH_VERSION: Version = Version::new(1, NodeId(0));

/// A remote datalet on `server`, which lives as long as it.
fn on(server: ServerProcess, limits: Limits) -> Guarded<RemoteDatalet> {
    let datalet = RemoteDatalet::new(server.addr.to_string(), limits, RemoteOptions::default());
    Guarded::new(datalet, server)
}

mod conformance_on_memcached {
    use super::*;
    tailorkv_datalet::conformance_tests!(|limits| on(memcached_with(limits), limits));
}

mod conformance_on_controlet {
    use super::*;
    tailorkv_datalet::conformance_tests!(|limits| on(controlet_with(limits), limits));
}

mod conformance_on_datalet_binary {
    use super::*;
    tailorkv_datalet::conformance_tests!(|limits| on(datalet_with(limits), limits));
}

fn v(ts: u64) -> Version {
    Version::new(ts, NodeId(3))
}

use tailorkv_datalet::conformance::{key, set, store};

fn remote(addr: SocketAddr) -> RemoteDatalet {
    RemoteDatalet::new(
        addr.to_string(),
        Limits::default(),
        RemoteOptions::default(),
    )
}

/// One key for each of the pool's connections.
fn key_per_connection() -> Vec<Bytes> {
    let n = RemoteOptions::default().connections;
    (0..n)
        .map(|w| {
            (0..)
                .map(|i| key(&format!("k{i}")))
                .find(|k| worker_for(k, n) == w)
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn values_carry_a_header_that_another_datalet_reads_back() {
    let server = memcached_with(Limits::default());
    let d = remote(server.addr);
    let m = store(StoreMode::Set, "hello", 42, Expiry::At(NOW + 100));
    assert_eq!(d.apply(&key("k"), m, v(5), NOW).await, Ok(Outcome::Stored));

    let reply = RawClient::connect(server.addr).call(b"gets k\r\n", b"END\r\n");
    let head = format!("VALUE k 42 {} ", 31 + 5);
    assert!(reply.starts_with(head.as_bytes()), "{reply:?}");
    let start = reply.iter().position(|&b| b == b'\n').unwrap() + 1;
    let data = Bytes::copy_from_slice(&reply[start..start + 36]);
    let (header, value) = Header::decode(&data).expect("a tailorkv header");
    assert_eq!(&value[..], b"hello");
    let expected = Header {
        version: v(5),
        expiry: Expiry::At(NOW + 100),
        stored_at: NOW,
        marks: tailorkv_datalet::Marks::default(),
    };
    assert_eq!(header, expected);

    // A datalet that did not write it reads the same item back.
    let other = remote(server.addr);
    let item = other.get(b"k", NOW).await.unwrap().unwrap();
    let read = (&item.value[..], item.flags, item.expiry, item.version);
    assert_eq!(read, (&b"hello"[..], 42, Expiry::At(NOW + 100), v(5)));
}

#[tokio::test]
async fn a_value_without_a_header_reads_as_absent_and_a_store_replaces_it() {
    let server = memcached_with(Limits::default());
    let mut raw = RawClient::connect(server.addr);
    assert_eq!(
        raw.call(b"set k 3 0 5\r\nhello\r\n", b"\r\n"),
        b"STORED\r\n"
    );
    let d = remote(server.addr);
    let k = key("k");
    assert_eq!(d.get(&k, NOW).await, Ok(None));
    for m in [Mutation::Delete, Mutation::Incr(1)] {
        assert_eq!(d.apply(&k, m, v(1), NOW).await, Ok(Outcome::NotFound));
    }
    let replace = store(StoreMode::Replace, "x", 0, Expiry::Never);
    assert_eq!(
        d.apply(&k, replace, v(2), NOW).await,
        Ok(Outcome::NotStored)
    );
    let untouched = raw.call(b"get k\r\n", b"END\r\n");
    assert_eq!(untouched, b"VALUE k 3 5\r\nhello\r\nEND\r\n");

    let add = store(StoreMode::Add, "mine", 0, Expiry::Never);
    assert_eq!(d.apply(&k, add, v(3), NOW).await, Ok(Outcome::Stored));
    assert_eq!(d.get(&k, NOW).await.unwrap().unwrap().value, key("mine"));
}

#[tokio::test]
async fn the_header_counts_against_the_item_size_limit() {
    let limits = Limits {
        item_size_max: 1024,
        ..Limits::default()
    };
    let d = on(memcached_with(limits), limits);
    // memcached counts 60 bytes besides a 1-byte key and the value: 964 bytes fill 1024.
    let at_limit = "x".repeat(964 - 31);
    let over = "x".repeat(964 - 30);
    let k = key("k");
    assert_eq!(
        d.apply(&k, set(&over), v(1), NOW).await,
        Ok(Outcome::NotStored)
    );
    assert_eq!(
        d.apply(&k, set(&at_limit), v(2), NOW).await,
        Ok(Outcome::Stored)
    );
    let append = store(StoreMode::Append, "y", 0, Expiry::Never);
    assert_eq!(d.apply(&k, append, v(3), NOW).await, Ok(Outcome::NotStored));
    let item = d.get(&k, NOW).await.unwrap().unwrap();
    assert_eq!((item.value, item.version), (key(&at_limit), v(2)));
}

#[tokio::test]
async fn an_item_changed_to_already_expired_leaves_the_server_only_if_unchanged() {
    let server = memcached_with(Limits::default());
    let d = remote(server.addr);
    let mut raw = RawClient::connect(server.addr);
    let k = key("k");
    d.apply(&k, set("a"), v(1), NOW).await.unwrap();
    let touch = Mutation::Touch {
        expiry: Expiry::At(NOW - 1),
    };
    let touched = d.apply(&k, touch, v(2), NOW).await;
    assert!(matches!(touched, Ok(Outcome::Touched(_))), "{touched:?}");
    assert_eq!(d.get(&k, NOW).await, Ok(None));
    assert_eq!(raw.call(b"get k\r\n", b"END\r\n"), b"END\r\n");

    // A cas to a past expiry removes the item only on a matching unique.
    d.apply(&k, set("b"), v(3), NOW).await.unwrap();
    let cas = |unique| store(StoreMode::Cas(unique), "c", 0, Expiry::At(NOW - 1));
    let stale = d.apply(&k, cas(v(1).cas()), v(4), NOW).await;
    assert_eq!(stale, Ok(Outcome::Exists));
    assert_eq!(d.get(&k, NOW).await.unwrap().unwrap().value, key("b"));
    let current = d.apply(&k, cas(v(3).cas()), v(5), NOW).await;
    assert_eq!(current, Ok(Outcome::Stored));
    assert_eq!(d.get(&k, NOW).await, Ok(None));
    assert_eq!(raw.call(b"get k\r\n", b"END\r\n"), b"END\r\n");
}

#[tokio::test]
async fn the_clock_lives_in_a_reserved_key_and_only_goes_up() {
    let server = memcached_with(Limits::default());
    let d = remote(server.addr);
    assert_eq!(d.load_clock().await, Ok(0));
    d.save_clock(5_000).await.unwrap();
    d.save_clock(3_000).await.unwrap();
    assert_eq!(remote(server.addr).load_clock().await, Ok(5_000));

    // A flush erases it on a memcached; the datalet puts it back.
    d.flush_all(NOW - 1, NOW, FLUSH_VERSION).await.unwrap();
    assert_eq!(remote(server.addr).load_clock().await, Ok(5_000));

    // Clients never see or change the reserved key.
    let clock = key("__tailorkv_clock");
    assert_eq!(d.get(&clock, NOW).await, Ok(None));
    assert_eq!(
        d.apply(&clock, set("1"), v(1), NOW).await,
        Ok(Outcome::NotStored)
    );
    assert_eq!(
        d.apply(&clock, Mutation::Delete, v(2), NOW).await,
        Ok(Outcome::NotFound)
    );
    assert_eq!(d.load_clock().await, Ok(5_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_on_one_key_keep_their_order_under_concurrency() {
    const TASKS: u64 = 16;
    const OPS: u64 = 40;
    let server = memcached_with(Limits::default());
    let d = Arc::new(remote(server.addr));
    for k in ["c0", "c1", "c2", "c3", "log0", "log1", "log2", "log3"] {
        let initial = if k.starts_with('c') { "0" } else { "" };
        d.apply(&key(k), set(initial), v(1), NOW).await.unwrap();
    }
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                for i in 0..OPS {
                    let ts = 10 + t * 1000 + i;
                    let counter = key(&format!("c{}", (t + i) % 4));
                    let incr = d.apply(&counter, Mutation::Incr(1), v(ts), NOW).await;
                    assert!(matches!(incr, Ok(Outcome::Number(_))), "{incr:?}");
                    let entry = store(StoreMode::Append, &format!("{t}:{i},"), 0, Expiry::Never);
                    let log = key(&format!("log{}", t % 4));
                    assert_eq!(d.apply(&log, entry, v(ts), NOW).await, Ok(Outcome::Stored));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    for c in 0..4 {
        let value = d
            .get(format!("c{c}").as_bytes(), NOW)
            .await
            .unwrap()
            .unwrap();
        let expected = (TASKS * OPS / 4).to_string();
        assert_eq!(value.value, key(&expected), "counter c{c}");
    }
    for l in 0..4 {
        let log = d
            .get(format!("log{l}").as_bytes(), NOW)
            .await
            .unwrap()
            .unwrap();
        let log = String::from_utf8(log.value.to_vec()).unwrap();
        let mut next = vec![0; TASKS as usize];
        for entry in log.split_terminator(',') {
            let (t, i) = entry.split_once(':').unwrap();
            let (t, i): (usize, u64) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                i, next[t],
                "task {t}'s appends out of order in log{l}: {log}"
            );
            next[t] += 1;
        }
        for (t, &n) in next.iter().enumerate() {
            let expected = if t as u64 % 4 == l { OPS } else { 0 };
            assert_eq!(n, expected, "task {t} in log{l}");
        }
    }
}

/// Runs `futures` together, polling each first in the order given, which is the order their
/// operations are queued in; returns their outputs in that order.
async fn queued_in_order<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_queued_on_one_key_take_effect_in_queue_order() {
    let server = memcached_with(Limits::default());
    let d = remote(server.addr);
    let keys = key_per_connection();
    let mut ops = Vec::new();
    let mut expected = vec![String::new(); keys.len()];
    for i in 0..400u64 {
        // Runs of three on a key, so no pool that spreads one key's operations over its
        // connections can keep them in order by luck.
        let k = (i as usize / 3) % keys.len();
        let m = if i % 5 < 2 {
            expected[k] = format!("{i}");
            set(&i.to_string())
        } else {
            expected[k].push_str(&format!(",{i}"));
            store(StoreMode::Append, &format!(",{i}"), 0, Expiry::Never)
        };
        ops.push(d.apply(&keys[k], m, v(10 + i), NOW));
    }
    for outcome in queued_in_order(ops).await {
        assert!(matches!(outcome, Ok(Outcome::Stored | Outcome::NotStored)));
    }
    for (k, expected) in keys.iter().zip(expected) {
        let value = d.get(k, NOW).await.unwrap().unwrap().value;
        assert_eq!(value, key(&expected), "operations on {k:?} were reordered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_datalets_on_one_server_never_lose_each_others_updates() {
    let server = memcached_with(Limits::default());
    let datalets = [Arc::new(remote(server.addr)), Arc::new(remote(server.addr))];
    let n = key("n");
    datalets[0].apply(&n, set("0"), v(1), NOW).await.unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let d = Arc::clone(&datalets[t as usize % 2]);
            let n = n.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let incr = d.apply(&n, Mutation::Incr(1), v(10 + t * 100 + i), NOW);
                    assert!(matches!(incr.await, Ok(Outcome::Number(_))));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let value = datalets[1].get(&n, NOW).await.unwrap().unwrap().value;
    assert_eq!(value, key("400"));
}

/// A datalet on `addr` with one connection and the given request timeout.
fn one_connection(addr: SocketAddr, request_timeout: Duration) -> RemoteDatalet {
    let options = RemoteOptions {
        connections: 1,
        request_timeout,
        ..RemoteOptions::default()
    };
    RemoteDatalet::new(addr.to_string(), Limits::default(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_and_sets_on_one_connection_are_pipelined() {
    const JOBS: u64 = 200;
    let server = memcached_with(Limits::default());
    let proxy = Proxy::start(server.addr).await;
    let d = Arc::new(one_connection(proxy.addr, Duration::from_secs(5)));
    for i in 0..JOBS {
        let k = key(&format!("r{i}"));
        d.apply(&k, set(&format!("v{i}")), v(1), NOW).await.unwrap();
    }

    // Every reply is held 50 ms: one job at a time would take 200 * 50 ms = 10 s.
    let delay = Duration::from_millis(50);
    proxy.delay_replies(delay);
    let reads_before = proxy.client_reads();
    let started = Instant::now();
    let tasks: Vec<_> = (0..JOBS)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let got = d.get(format!("r{i}").as_bytes(), NOW).await.unwrap();
                assert_eq!(got.unwrap().value, key(&format!("v{i}")));
                let w = key(&format!("w{i}"));
                let stored = d.apply(&w, set(&format!("x{i}")), v(2), NOW).await;
                assert_eq!(stored, Ok(Outcome::Stored));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let took = started.elapsed();
    let writes = proxy.client_reads() - reads_before;
    // 400 requests; a handful of round trips, so a handful of writes.
    assert!(took < Duration::from_secs(2), "400 jobs took {took:?}");
    assert!(writes <= 40, "400 requests in {writes} writes");
    proxy.delay_replies(Duration::ZERO);
    for i in 0..JOBS {
        let got = d.get(format!("w{i}").as_bytes(), NOW).await.unwrap();
        assert_eq!(got.unwrap().value, key(&format!("x{i}")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_modify_writes_queued_together_share_their_round_trips() {
    const KEYS: u64 = 100;
    let server = memcached_with(Limits::default());
    let proxy = Proxy::start(server.addr).await;
    let d = Arc::new(one_connection(proxy.addr, Duration::from_secs(5)));
    for i in 0..KEYS {
        d.apply(&key(&format!("n{i}")), set("10"), v(1), NOW)
            .await
            .unwrap();
    }

    // Every reply is held 50 ms: a read and a write each, one at a time, would take
    // 300 * 2 * 50 ms = 30 s.
    proxy.delay_replies(Duration::from_millis(50));
    let started = Instant::now();
    let tasks: Vec<_> = (0..KEYS)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let n = key(&format!("n{i}"));
                let added = d.apply(&n, Mutation::Incr(i), v(2), NOW).await;
                assert_eq!(added, Ok(Outcome::Number(10 + i)), "incr n{i}");
                let missing = key(&format!("m{i}"));
                let append = store(StoreMode::Append, "x", 0, Expiry::Never);
                let appended = d.apply(&missing, append, v(3), NOW).await;
                assert_eq!(appended, Ok(Outcome::NotStored), "append m{i}");
                let add = store(StoreMode::Add, "new", 0, Expiry::Never);
                assert_eq!(d.apply(&missing, add, v(4), NOW).await, Ok(Outcome::Stored));
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "300 read-modify-writes took {took:?}"
    );
    proxy.delay_replies(Duration::ZERO);
    for i in 0..KEYS {
        let n = d.get(format!("n{i}").as_bytes(), NOW).await.unwrap();
        assert_eq!(n.unwrap().value, key(&(10 + i).to_string()));
        let m = d.get(format!("m{i}").as_bytes(), NOW).await.unwrap();
        assert_eq!(m.unwrap().value, key("new"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gets_queued_together_share_one_request_and_each_gets_its_own_answer() {
    const KEYS: usize = 100;
    let server = memcached_with(Limits::default());
    let proxy = Proxy::start(server.addr).await;
    let d = Arc::new(one_connection(proxy.addr, Duration::from_secs(5)));
    for i in 0..KEYS {
        let k = key(&format!("g{i}"));
        d.apply(&k, set(&format!("v{i}")), v(1), NOW).await.unwrap();
    }
    let sent_before = proxy.client_bytes().len();

    // Replies are held back, so the gets queue up behind each other: every key is asked
    // twice at once, and as many keys that were never set are asked among them.
    proxy.delay_replies(Duration::from_millis(50));
    let tasks: Vec<_> = (0..3 * KEYS)
        .map(|i| {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let (asked, expected) = match i % 3 {
                    2 => (format!("none{i}"), None),
                    _ => (format!("g{}", i / 3), Some(key(&format!("v{}", i / 3)))),
                };
                let got = d.get(asked.as_bytes(), NOW).await.unwrap();
                assert_eq!(got.map(|item| item.value), expected, "{asked}");
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    proxy.delay_replies(Duration::ZERO);
    let sent = proxy.client_bytes()[sent_before..].to_vec();
    let requests: Vec<&[u8]> = sent
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    assert!(requests.iter().all(|l| l.starts_with(b"gets ")), "{sent:?}");
    let asked: Vec<&[u8]> = requests
        .iter()
        .flat_map(|l| l.trim_ascii_end().split(|&b| b == b' ').skip(1))
        .collect();
    // Two gets of one key queued together share its place in one request.
    let mut distinct = asked.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 2 * KEYS, "every key asked");
    assert!(
        asked.len() < 3 * KEYS,
        "{} keys asked for 300 gets",
        asked.len()
    );
    assert!(
        requests.len() <= 20,
        "300 gets in {} requests",
        requests.len()
    );
    for line in requests {
        let mut asked: Vec<&[u8]> = line
            .trim_ascii_end()
            .split(|&b| b == b' ')
            .skip(1)
            .collect();
        let n = asked.len();
        asked.sort();
        asked.dedup();
        assert_eq!(asked.len(), n, "a key twice in one request");
    }
}

type Step<'a> = Pin<Box<dyn Future<Output = String> + Send + 'a>>;

/// One operation as a future of its result in words, for comparing sequences.
fn step<'a>(d: &'a RemoteDatalet, k: &Bytes, m: Option<Mutation>, ts: u64) -> Step<'a> {
    let k = k.clone();
    Box::pin(async move {
        match m {
            None => match d.get(&k, NOW).await {
                Ok(Some(item)) => String::from_utf8(item.value.to_vec()).unwrap(),
                other => format!("{other:?}"),
            },
            Some(m) => format!("{:?}", d.apply(&k, m, v(ts), NOW).await),
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pipelined_and_read_modify_write_operations_on_one_key_keep_their_order() {
    const TASKS: u64 = 8;
    const ROUNDS: u64 = 25;
    let server = memcached_with(Limits::default());
    let options = RemoteOptions {
        connections: 2,
        ..RemoteOptions::default()
    };
    let d = Arc::new(RemoteDatalet::new(
        server.addr.to_string(),
        Limits::default(),
        options,
    ));
    let shared = key("shared");
    d.apply(&shared, set("0"), v(1), NOW).await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let d = Arc::clone(&d);
            let shared = shared.clone();
            tokio::spawn(async move {
                let mine = [key(&format!("t{t}a")), key(&format!("t{t}b"))];
                for i in 0..ROUNDS {
                    let ts = 10 + (t * ROUNDS + i) * 20;
                    let append = |s: &str| store(StoreMode::Append, s, 0, Expiry::Never);
                    let prepend = |s: &str| store(StoreMode::Prepend, s, 0, Expiry::Never);
                    let mut steps = Vec::new();
                    let mut expected = Vec::new();
                    // Queued all at once, gets and sets (pipelined) between increments,
                    // appends and prepends (read-modify-writes), on the same keys.
                    for (j, k) in mine.iter().enumerate() {
                        let ts = ts + j as u64 * 10;
                        let n = 100 * i + j as u64;
                        steps.push(step(&d, k, Some(set(&n.to_string())), ts));
                        expected.push("Ok(Stored)".to_string());
                        steps.push(step(&d, k, Some(Mutation::Incr(5)), ts + 1));
                        expected.push(format!("Ok(Number({}))", n + 5));
                        steps.push(step(&d, k, None, 0));
                        expected.push((n + 5).to_string());
                        steps.push(step(&d, k, Some(append("x")), ts + 2));
                        expected.push("Ok(Stored)".to_string());
                        steps.push(step(&d, &shared, Some(Mutation::Incr(1)), ts + 3));
                        expected.push(String::new());
                        steps.push(step(&d, k, None, 0));
                        expected.push(format!("{}x", n + 5));
                        steps.push(step(&d, k, Some(set(&format!("{n}y"))), ts + 4));
                        expected.push("Ok(Stored)".to_string());
                        steps.push(step(&d, k, Some(prepend("p")), ts + 5));
                        expected.push("Ok(Stored)".to_string());
                        steps.push(step(&d, k, None, 0));
                        expected.push(format!("p{n}y"));
                    }
                    let got = queued_in_order(steps).await;
                    for (got, expected) in got.iter().zip(&expected) {
                        if expected.is_empty() {
                            assert!(got.starts_with("Ok(Number("), "{got}");
                        } else {
                            assert_eq!(got, expected, "task {t} round {i}: {got:?}");
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let total = d.get(&shared, NOW).await.unwrap().unwrap().value;
    assert_eq!(total, key(&(TASKS * ROUNDS * 2).to_string()));
    for t in 0..TASKS {
        for (j, name) in ["a", "b"].iter().enumerate() {
            let k = format!("t{t}{name}");
            let value = d.get(k.as_bytes(), NOW).await.unwrap().unwrap().value;
            let last = 100 * (ROUNDS - 1) + j as u64;
            assert_eq!(value, key(&format!("p{last}y")), "{k}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_in_flight_fail_together_when_the_connection_stalls_or_drops_and_then_recover() {
    const JOBS: usize = 40;
    let server = memcached_with(Limits::default());
    let proxy = Proxy::start(server.addr).await;
    let d = Arc::new(one_connection(proxy.addr, Duration::from_millis(500)));
    d.save_clock(99).await.unwrap();
    d.apply(&key("k"), set("before"), v(1), NOW).await.unwrap();

    // Many jobs in flight on one connection, all of whose replies are held back.
    let launch = |d: &Arc<RemoteDatalet>| -> Vec<_> {
        (0..JOBS)
            .map(|i| {
                let d = Arc::clone(d);
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = if i % 2 == 0 {
                        d.get(b"k", NOW).await.map(|_| ())
                    } else {
                        let k = key(&format!("k{i}"));
                        d.apply(&k, set("lost?"), v(2), NOW).await.map(|_| ())
                    };
                    (result, started.elapsed())
                })
            })
            .collect()
    };

    // A stalled server: all of them fail at the request timeout, not one after another.
    proxy.delay_replies(Duration::from_secs(30));
    let started = Instant::now();
    for task in launch(&d) {
        let (result, _) = task.await.unwrap();
        assert!(is_unavailable(&result), "{result:?}");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "a stall took {took:?}");

    // A dropped connection fails every job in flight at once, well before the timeout.
    proxy.delay_replies(Duration::ZERO);
    let d = Arc::new(one_connection(proxy.addr, Duration::from_secs(10)));
    assert_eq!(d.load_clock().await, Ok(99));
    proxy.delay_replies(Duration::from_secs(30));
    let tasks = launch(&d);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cut_at = Instant::now();
    proxy.cut();
    for task in tasks {
        let (result, _) = task.await.unwrap();
        assert!(is_unavailable(&result), "{result:?}");
    }
    let took = cut_at.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "failing the jobs took {took:?}"
    );

    // Then the connection comes back, and the clock is put back with it.
    proxy.delay_replies(Duration::ZERO);
    let raw = RawClient::connect(server.addr).call(b"delete __tailorkv_clock\r\n", b"\r\n");
    assert_eq!(raw, b"DELETED\r\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match d.apply(&key("k"), set("after"), v(3), NOW).await {
            Ok(outcome) => break assert_eq!(outcome, Outcome::Stored),
            Err(e) => assert!(Instant::now() < deadline, "not back after 5 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = d.get(b"k", NOW).await.unwrap().unwrap();
    assert_eq!(got.value, key("after"));
    assert_eq!(remote(server.addr).load_clock().await, Ok(99));
}

fn is_unavailable<T: std::fmt::Debug>(result: &Result<T, DataletError>) -> bool {
    matches!(result, Err(DataletError::Unavailable(_)))
}

#[tokio::test]
async fn a_restarted_server_is_reconnected_and_the_outage_fails_promptly() {
    let mut server = memcached_with(Limits::default());
    let d = remote(server.addr);
    d.save_clock(77).await.unwrap();
    let keys = key_per_connection();
    for k in &keys {
        assert_eq!(
            d.apply(k, set("before"), v(1), NOW).await,
            Ok(Outcome::Stored)
        );
    }

    server.kill();
    for k in &keys {
        let started = Instant::now();
        let got = d.get(k, NOW).await;
        assert!(is_unavailable(&got), "{got:?}");
        let stored = d.apply(k, set("during"), v(2), NOW).await;
        assert!(is_unavailable(&stored), "{stored:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "an outage took {took:?}");
    }
    assert!(is_unavailable(&d.flush_all(NOW, NOW, FLUSH_VERSION).await));
    assert!(is_unavailable(&d.load_clock().await));

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    for k in &keys {
        loop {
            match d.apply(k, set("after"), v(3), NOW).await {
                Ok(outcome) => break assert_eq!(outcome, Outcome::Stored),
                Err(e) => assert!(Instant::now() < deadline, "not back after 5 s: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(d.get(k, NOW).await.unwrap().unwrap().value, key("after"));
    }
    // The restarted memcached came back empty; the reconnect put the clock back.
    assert_eq!(remote(server.addr).load_clock().await, Ok(77));
}

#[tokio::test]
async fn nothing_listening_is_unavailable_at_once() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let d = remote(addr);
    let started = Instant::now();
    assert!(is_unavailable(&d.get(b"k", NOW).await));
    assert!(is_unavailable(
        &d.apply(&key("k"), set("v"), v(1), NOW).await
    ));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_then_fails_fast() {
    // The kernel completes connections to a listener nobody accepts from; nothing answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let options = RemoteOptions {
        connections: 1,
        request_timeout: Duration::from_millis(300),
        ..RemoteOptions::default()
    };
    let addr = silent.local_addr().unwrap().to_string();
    let d = RemoteDatalet::new(addr, Limits::default(), options);
    let started = Instant::now();
    assert!(is_unavailable(&d.get(b"k", NOW).await));
    let took = started.elapsed();
    let timeout = Duration::from_millis(300)..Duration::from_millis(1500);
    assert!(timeout.contains(&took), "the request took {took:?}");
    // Right after, the pool does not wait on the same server again.
    let started = Instant::now();
    assert!(is_unavailable(&d.get(b"k", NOW).await));
    assert!(started.elapsed() < Duration::from_millis(200));
}

#[test]
fn a_controlet_on_memcached_serves_clients_and_rides_out_a_memcached_restart() {
    let mut memcached = memcached_with(Limits::default());
    let datalet = format!("memcached://{}", memcached.addr);
    let controlet = ServerProcess::controlet(&["--threads", "2", "--datalet", &datalet]);
    let mut c = RawClient::connect(controlet.addr);
    assert_eq!(c.call(b"set k 5 0 5\r\nhello\r\n", b"\r\n"), b"STORED\r\n");
    let gets = c.call(b"gets k\r\n", b"END\r\n");
    let line = String::from_utf8(gets.clone()).unwrap();
    let unique: u64 = line.split_whitespace().nth(4).unwrap().parse().unwrap();
    assert_eq!(
        gets,
        format!("VALUE k 5 5 {unique}\r\nhello\r\nEND\r\n").as_bytes()
    );
    let stale = format!("cas k 0 0 1 {}\r\nx\r\n", unique + 1);
    assert_eq!(c.call(stale.as_bytes(), b"\r\n"), b"EXISTS\r\n");
    let fresh = format!("cas k 6 0 3 {unique}\r\nbye\r\n");
    assert_eq!(c.call(fresh.as_bytes(), b"\r\n"), b"STORED\r\n");
    assert_eq!(c.call(b"append k 0 0 1\r\n!\r\n", b"\r\n"), b"STORED\r\n");
    assert_eq!(
        c.call(b"get k\r\n", b"END\r\n"),
        b"VALUE k 6 4\r\nbye!\r\nEND\r\n"
    );
    assert_eq!(c.call(b"set n 0 0 2\r\n41\r\n", b"\r\n"), b"STORED\r\n");
    assert_eq!(c.call(b"incr n 1\r\n", b"\r\n"), b"42\r\n");
    let non_numeric = c.call(b"incr k 1\r\n", b"\r\n");
    assert!(non_numeric.starts_with(b"CLIENT_ERROR"), "{non_numeric:?}");
    // memcached holds the value behind the header, the flags in its own field.
    let raw = RawClient::connect(memcached.addr).call(b"get k\r\n", b"END\r\n");
    assert!(raw.starts_with(b"VALUE k 6 35\r\nTKV\x01"), "{raw:?}");

    memcached.kill();
    let unavailable = b"SERVER_ERROR datalet unavailable\r\n";
    assert_eq!(c.call(b"get k\r\n", b"\r\n"), unavailable);
    assert_eq!(c.call(b"set k 0 0 1\r\nx\r\n", b"\r\n"), unavailable);
    assert_eq!(c.call(b"incr n 1\r\n", b"\r\n"), unavailable);

    memcached.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.call(b"set k 0 0 5\r\nagain\r\n", b"\r\n") != b"STORED\r\n" {
        assert!(Instant::now() < deadline, "no recovery after 5 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        c.call(b"get k\r\n", b"END\r\n"),
        b"VALUE k 0 5\r\nagain\r\nEND\r\n"
    );
    // The clock reservation was put back into the memcached that restarted empty.
    let clock = RawClient::connect(memcached.addr).call(b"get __tailorkv_clock\r\n", b"END\r\n");
    assert!(clock.starts_with(b"VALUE __tailorkv_clock 0 "), "{clock:?}");
}
