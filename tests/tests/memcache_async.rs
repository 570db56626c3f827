//! The `memcache-async` crate (0.10), an async Rust memcached client, against a controlet:
//! every method of its `ascii::Protocol`, with hits, misses and errors.
//!
//! memcache-async speaks over futures' `AsyncRead + AsyncWrite`; a tokio `TcpStream` is
//! adapted with `tokio_util::compat`. Its `set`, `append` and `delete` send `noreply` and
//! return without a reply, so their effect is checked with a later read on the same connection,
//! which also shows the connection stayed in step.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::{Error, ErrorKind};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use memcache_async::ascii::Protocol;
use tailorkv_tests::Controlet;
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncReadCompatExt};

type Client = Protocol<Compat<TcpStream>>;

const VERSION: &str = concat!("1.6.18-tailorkv-", env!("CARGO_PKG_VERSION"));
const MIB: usize = 1024 * 1024;

async fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the controlet");
    stream.set_nodelay(true).unwrap();
    Protocol::new(stream.compat())
}

/// `result` must be an error of `kind` whose text contains `text`.
fn expect_err<T: Debug>(result: Result<T, Error>, kind: ErrorKind, text: &str, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected a {kind:?} error, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.kind(), kind, "{what}: error kind of {e:?}");
            assert!(
                e.to_string().contains(text),
                "{what}: expected the error to mention {text:?}, got {e:?}"
            );
        }
    }
}

async fn expect_missing(c: &mut Client, key: &str, what: &str) {
    expect_err(c.get(key).await, ErrorKind::NotFound, "", what);
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

#[tokio::test]
async fn set_get_and_misses() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    expect_missing(&mut c, "missing", "get of a missing key").await;
    c.set("k", b"value-1", 0).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), b"value-1");
    c.set("k", b"value-2", 0).await.unwrap();
    assert_eq!(c.get("k").await.unwrap(), b"value-2", "set overwrites");

    let binary: Vec<u8> = (0..=255u8).chain(*b"\r\nEND\r\nVALUE x 0 1\r\n").collect();
    c.set("binary", &binary, 0).await.unwrap();
    assert_eq!(c.get("binary").await.unwrap(), binary, "binary value");
    c.set("empty", b"", 0).await.unwrap();
    assert_eq!(c.get("empty").await.unwrap(), b"", "empty value");

    let key250 = "k".repeat(250);
    c.set(&key250, b"longest key", 0).await.unwrap();
    assert_eq!(c.get(&key250).await.unwrap(), b"longest key");
    expect_err(
        c.get("k".repeat(251)).await,
        ErrorKind::Other,
        "CLIENT_ERROR bad command line format",
        "get with a 251-byte key",
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        b"value-2",
        "in step after the error"
    );

    // Expiry: an absolute time in the past hides the item at once; one an hour away does not.
    c.set("past", b"p", unix_now() - 100).await.unwrap();
    expect_missing(&mut c, "past", "set with an absolute time in the past").await;
    c.set("future", b"f", unix_now() + 3600).await.unwrap();
    assert_eq!(c.get("future").await.unwrap(), b"f");
    c.set("relative", b"r", 3600).await.unwrap();
    assert_eq!(c.get("relative").await.unwrap(), b"r");

    // Another connection sees the same data.
    let mut other = connect(server.addr).await;
    assert_eq!(other.get("k").await.unwrap(), b"value-2");
}

#[tokio::test]
async fn get_multi_hits_and_misses() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    let mut want = HashMap::new();
    for i in 0..200 {
        let key = format!("m:{i:03}");
        let value = format!("VALUE {key} 0 1\r\nEND\r\n{i}").repeat(1 + i % 5);
        c.set(&key, value.as_bytes(), 0).await.unwrap();
        want.insert(key, value.into_bytes());
    }
    let mut keys: Vec<String> = want.keys().cloned().collect();
    keys.push("m:missing-1".into());
    keys.push("m:missing-2".into());
    let got = c.get_multi(&keys).await.unwrap();
    assert_eq!(got.len(), 200, "hits only: {:?}", got.keys());
    assert_eq!(got, want);

    let none: &[&str] = &[];
    assert!(c.get_multi(none).await.unwrap().is_empty(), "no keys");
    assert!(
        c.get_multi(&["m:missing-1"]).await.unwrap().is_empty(),
        "only misses"
    );
    let one = c.get_multi(&["m:007"]).await.unwrap();
    assert_eq!(one.get("m:007"), want.get("m:007"), "one key");

    // A long multi-get with a big reply, written by the server in several pieces.
    let big = vec![b'x'; 100 * 1024];
    for i in 0..30 {
        c.set(format!("big:{i}"), &big, 0).await.unwrap();
    }
    let keys: Vec<String> = (0..30).map(|i| format!("big:{i}")).collect();
    let got = c.get_multi(&keys).await.unwrap();
    assert_eq!(got.len(), 30);
    assert!(
        got.values().all(|v| *v == big),
        "every 100 KiB value intact"
    );
}

#[tokio::test]
async fn add_new_and_existing() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    c.add("a", b"first", 0).await.unwrap();
    expect_err(
        c.add("a", b"second", 0).await,
        ErrorKind::AlreadyExists,
        "",
        "add of an existing key",
    );
    assert_eq!(
        c.get("a").await.unwrap(),
        b"first",
        "a refused add keeps the value"
    );
    c.delete("a").await.unwrap();
    c.add("a", b"third", 0).await.unwrap();
    assert_eq!(c.get("a").await.unwrap(), b"third", "add after delete");

    // An expired item no longer blocks an add.
    c.set("expired", b"old", unix_now() - 100).await.unwrap();
    c.add("expired", b"new", 0).await.unwrap();
    assert_eq!(c.get("expired").await.unwrap(), b"new");

    expect_err(
        c.add("huge", &vec![b'h'; MIB + 1], 0).await,
        ErrorKind::Other,
        "SERVER_ERROR object too large for cache",
        "add of 1 MiB + 1 byte",
    );
    expect_missing(&mut c, "huge", "a value too large is not stored").await;
}

#[tokio::test]
async fn delete_and_append() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    c.set("d", b"x", 0).await.unwrap();
    c.delete("d").await.unwrap();
    expect_missing(&mut c, "d", "get after delete").await;
    // delete of a missing key: no reply under noreply, and the connection stays in step.
    c.delete("d").await.unwrap();
    assert_eq!(
        c.version().await.unwrap(),
        VERSION,
        "in step after deleting a missing key"
    );

    c.set("cat", b"head", 0).await.unwrap();
    c.append("cat", b"-tail").await.unwrap();
    c.append("cat", b"!").await.unwrap();
    assert_eq!(c.get("cat").await.unwrap(), b"head-tail!", "appended");
    c.append("nothing", b"x").await.unwrap();
    expect_missing(&mut c, "nothing", "append to a missing key stores nothing").await;

    // An append past the item size limit is refused (silently, under noreply).
    let largest = MIB - (48 + 8 + 1 + 2) - "cat".len();
    c.set("cat", &vec![b'c'; largest], 0).await.unwrap();
    assert_eq!(
        c.get("cat").await.unwrap().len(),
        largest,
        "largest value fits"
    );
    c.append("cat", b"x").await.unwrap();
    assert_eq!(
        c.get("cat").await.unwrap().len(),
        largest,
        "an append past item_size_max leaves the value"
    );
}

#[tokio::test]
async fn increment_and_decrement() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    expect_err(
        c.increment("n", 1).await,
        ErrorKind::NotFound,
        "",
        "incr of a missing key",
    );
    expect_err(
        c.decrement("n", 1).await,
        ErrorKind::NotFound,
        "",
        "decr of a missing key",
    );
    expect_missing(&mut c, "n", "incr/decr create nothing").await;

    c.set("n", b"10", 0).await.unwrap();
    assert_eq!(c.increment("n", 5).await.unwrap(), 15);
    assert_eq!(c.decrement("n", 3).await.unwrap(), 12);
    assert_eq!(c.decrement("n", 100).await.unwrap(), 0, "decr stops at 0");
    // memcached rewrites the number in place and pads a shorter one with spaces.
    assert_eq!(c.get("n").await.unwrap(), b"0 ");
    assert_eq!(c.increment("n", 123).await.unwrap(), 123);
    assert_eq!(c.get("n").await.unwrap(), b"123");

    c.increment_noreply("n", 7).await.unwrap();
    assert_eq!(
        c.get("n").await.unwrap(),
        b"130",
        "increment_noreply took effect"
    );
    c.increment_noreply("missing", 7).await.unwrap();
    expect_missing(&mut c, "missing", "increment_noreply of a missing key").await;

    c.set("max", u64::MAX.to_string().as_bytes(), 0)
        .await
        .unwrap();
    assert_eq!(
        c.increment("max", 1).await.unwrap(),
        0,
        "incr wraps at 2^64"
    );
    assert_eq!(c.increment("max", u64::MAX).await.unwrap(), u64::MAX);
    assert_eq!(c.increment("max", 2).await.unwrap(), 1, "wraps again");

    c.set("text", b"abc", 0).await.unwrap();
    for (result, what) in [
        (c.increment("text", 1).await, "incr of a non-numeric value"),
        (c.decrement("text", 1).await, "decr of a non-numeric value"),
    ] {
        expect_err(
            result,
            ErrorKind::Other,
            "CLIENT_ERROR cannot increment or decrement non-numeric value",
            what,
        );
    }
    c.increment_noreply("text", 1).await.unwrap();
    assert_eq!(
        c.get("text").await.unwrap(),
        b"abc",
        "noreply error is silent"
    );
    expect_err(
        c.increment("k".repeat(251), 1).await,
        ErrorKind::Other,
        "CLIENT_ERROR",
        "incr with a 251-byte key",
    );
    assert_eq!(
        c.increment("n", 1).await.unwrap(),
        131,
        "in step after errors"
    );
}

#[tokio::test]
async fn gets_cas_and_cas() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    expect_err(
        c.gets_cas("k").await,
        ErrorKind::NotFound,
        "",
        "gets of a missing key",
    );
    // memcache-async looks for "NOT FOUND" but memcached answers "NOT_FOUND", so a cas on a
    // missing key surfaces as an error carrying the server's reply.
    expect_err(
        c.cas("k", b"v", 1, 0).await,
        ErrorKind::Other,
        "NOT_FOUND",
        "cas of a missing key",
    );
    expect_missing(&mut c, "k", "cas of a missing key stores nothing").await;

    c.set("k", b"v1", 0).await.unwrap();
    let (value, unique) = c.gets_cas("k").await.unwrap();
    assert_eq!(value, b"v1");
    assert_eq!(
        c.gets_cas("k").await.unwrap(),
        (value, unique),
        "unique stable"
    );
    assert!(
        c.cas("k", b"v2", unique, 0).await.unwrap(),
        "cas with the current unique"
    );
    assert_eq!(c.get("k").await.unwrap(), b"v2");
    assert!(
        !c.cas("k", b"v3", unique, 0).await.unwrap(),
        "cas with a stale unique"
    );
    assert_eq!(
        c.get("k").await.unwrap(),
        b"v2",
        "a stale cas keeps the value"
    );

    let (_, unique2) = c.gets_cas("k").await.unwrap();
    assert_ne!(unique2, unique, "a cas changes the unique");
    c.set("k", b"v4", 0).await.unwrap();
    let (_, unique3) = c.gets_cas("k").await.unwrap();
    assert_ne!(unique3, unique2, "a set changes the unique");
    c.append("k", b"+").await.unwrap();
    let (value, unique4) = c.gets_cas("k").await.unwrap();
    assert_eq!(value, b"v4+");
    assert_ne!(unique4, unique3, "an append changes the unique");
    assert!(c.cas("k", b"v5", unique4, 0).await.unwrap());

    // Two clients race on one unique: exactly one wins.
    let mut other = connect(server.addr).await;
    let (_, unique) = c.gets_cas("k").await.unwrap();
    let first = c.cas("k", b"mine", unique, 0).await.unwrap();
    let second = other.cas("k", b"theirs", unique, 0).await.unwrap();
    assert_eq!((first, second), (true, false));
    assert_eq!(other.get("k").await.unwrap(), b"mine");

    expect_err(
        c.cas("huge", &vec![b'h'; MIB + 1], 1, 0).await,
        ErrorKind::Other,
        "SERVER_ERROR object too large for cache",
        "cas of 1 MiB + 1 byte",
    );
}

#[tokio::test]
async fn version_and_flush() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    assert_eq!(c.version().await.unwrap(), VERSION);
    for i in 0..10 {
        c.set(format!("f:{i}"), b"x", 0).await.unwrap();
    }
    assert_eq!(c.get("f:3").await.unwrap(), b"x");
    c.flush().await.unwrap();
    expect_missing(&mut c, "f:3", "get after flush").await;
    let keys: Vec<String> = (0..10).map(|i| format!("f:{i}")).collect();
    assert!(c.get_multi(&keys).await.unwrap().is_empty(), "all flushed");
    c.set("f:after", b"y", 0).await.unwrap();
    assert_eq!(
        c.get("f:after").await.unwrap(),
        b"y",
        "a set after flush is kept"
    );
    c.flush().await.unwrap();
    c.flush().await.unwrap();
    assert_eq!(c.version().await.unwrap(), VERSION);
}

#[tokio::test]
async fn unsupported_commands_are_errors_and_meta_append_answers_as_memcached() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;
    c.set("pre:1", b"one", 0).await.unwrap();

    // `get_prefix` is no memcached command: the server answers ERROR, which this client
    // reports as a reply it cannot parse. The connection stays in step.
    let result = c.get_prefix("pre:", None).await;
    assert!(result.is_err(), "get_prefix: {result:?}");
    let result = c.get_prefix("pre:", Some(10)).await;
    assert!(result.is_err(), "get_prefix with a limit: {result:?}");
    assert_eq!(
        c.get("pre:1").await.unwrap(),
        b"one",
        "in step after get_prefix"
    );

    // `append_or_vivify` sends the meta command `ms <key> <len> MA N<ttl>`. memcached 1.6.18,
    // whose protocol is served, does not create a missing item from `ms`'s `N` (later
    // versions do): it answers `NS`, as the controlet does (a differential case checks it),
    // which this client reports as an error. On an existing item it appends.
    expect_err(
        c.append_or_vivify("pre:2", b"data", 0).await,
        ErrorKind::Other,
        "NS",
        "append_or_vivify of a missing key (meta ms MA N)",
    );
    expect_missing(&mut c, "pre:2", "ms MA stored nothing").await;
    c.append_or_vivify("pre:1", b"+more", 0).await.unwrap();
    assert_eq!(c.get("pre:1").await.unwrap(), b"one+more", "ms MA appended");
    assert_eq!(c.version().await.unwrap(), VERSION);
}

#[tokio::test]
async fn values_near_and_over_one_mib() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    let near: Vec<u8> = (0..MIB - 1024).map(|i| (i * 7 + 3) as u8).collect();
    c.set("near", &near, 0).await.unwrap();
    assert!(
        c.get("near").await.unwrap() == near,
        "1 MiB - 1 KiB read back"
    );
    let (value, _) = c.gets_cas("near").await.unwrap();
    assert!(value == near, "gets of 1 MiB - 1 KiB");

    // set sends noreply: a value too large is refused silently, and the server skips its
    // data without losing its place in the stream.
    c.set("over", &vec![b'o'; MIB + 1], 0).await.unwrap();
    expect_missing(&mut c, "over", "a set of 1 MiB + 1 byte stores nothing").await;
    c.set("over", &vec![b'o'; 4 * MIB], 0).await.unwrap();
    expect_missing(&mut c, "over", "a set of 4 MiB stores nothing").await;
    expect_err(
        c.add("over", &vec![b'o'; 2 * MIB], 0).await,
        ErrorKind::Other,
        "SERVER_ERROR object too large for cache",
        "add of 2 MiB",
    );
    assert!(
        c.get("near").await.unwrap() == near,
        "the large value is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_connections_see_their_own_writes() {
    let server = Controlet::start();
    let addr = server.addr;
    let mut c = connect(addr).await;
    // This client's set is noreply: read the counter back on the same connection, so it is
    // stored before other connections increment it.
    c.set("counter", b"0", 0).await.unwrap();
    assert_eq!(c.get("counter").await.unwrap(), b"0");

    let tasks = 16;
    let rounds = 100;
    let mut handles = Vec::new();
    for t in 0..tasks {
        handles.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let mut mine = HashMap::new();
            for i in 0..rounds {
                let key = format!("t{t}:{}", i % 10);
                let value = format!("task {t} round {i} ")
                    .repeat(1 + i % 9)
                    .into_bytes();
                c.set(&key, &value, 0).await.unwrap();
                mine.insert(key.clone(), value);
                assert_eq!(c.get(&key).await.unwrap(), mine[&key], "task {t} round {i}");
                let n = c.increment("counter", 1).await.unwrap();
                assert!(n >= 1 && n <= (tasks * rounds) as u64, "counter {n}");
            }
            let keys: Vec<&String> = mine.keys().collect();
            let got = c.get_multi(&keys).await.unwrap();
            assert_eq!(got, mine, "task {t}: final get_multi");
        }));
    }
    for h in handles {
        h.await.expect("a client task panicked");
    }
    assert_eq!(
        c.get("counter").await.unwrap(),
        (tasks * rounds).to_string().into_bytes(),
        "every increment counted once"
    );
}

#[tokio::test]
async fn pipelined_noreply_sets_then_one_get_multi() {
    let server = Controlet::start();
    let mut c = connect(server.addr).await;

    // 2,000 sets go out back to back with no reply to wait for; one get then reads them all.
    let mut want = HashMap::new();
    for i in 0..2000 {
        let key = format!("p:{i}");
        let value = format!("{i}").repeat(1 + i % 50).into_bytes();
        c.set(&key, &value, 0).await.unwrap();
        want.insert(key, value);
    }
    for i in (0..2000).step_by(2) {
        c.delete(format!("p:{i}")).await.unwrap();
        want.remove(&format!("p:{i}"));
    }
    let keys: Vec<String> = (0..2000).map(|i| format!("p:{i}")).collect();
    let got = c.get_multi(&keys).await.unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(got, want);
}
