//! A controlet on the disk datalet is killed with SIGKILL while clients write; after a
//! restart every acknowledged write reads back, with its flags, and expiry and versions
//! survived too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailorkv_tests::checker::OpResult;
use tailorkv_tests::client::{Failure, McConn};
use tailorkv_tests::ServerProcess;

const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 300;

/// Starts a controlet on the disk datalet in `dir`; returns it and how long it took to answer.
fn start(dir: &Path) -> (ServerProcess, Duration) {
    let started = Instant::now();
    let store = format!("disk:{}", dir.display());
    let server = ServerProcess::controlet(&["--datalet", &store]);
    (server, started.elapsed())
}

fn open(addr: SocketAddr) -> McConn {
    McConn::connect(addr, Duration::from_secs(10)).unwrap()
}

/// `(value, flags, cas)` of a key, or `None`.
fn gets(conn: &mut McConn, key: &str) -> Option<(String, u32, u64)> {
    let item = conn.gets_item(key).unwrap()?;
    let value = String::from_utf8(item.value).unwrap();
    Some((value, item.flags, item.cas))
}

/// What one writer knows: per key, the last acknowledged write and an unacknowledged one
/// that may or may not have been applied.
#[derive(Default)]
struct Ledger {
    acked: HashMap<String, (String, u32)>,
    in_flight: Option<(String, String, u32)>,
    short_lived: Vec<String>,
    writes: usize,
}

fn writer(addr: SocketAddr, w: usize, stop: Arc<AtomicBool>, acks: Arc<AtomicUsize>) -> Ledger {
    let mut conn = open(addr);
    let mut ledger = Ledger::default();
    for i in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let (key, exptime) = if i % 10 == 9 {
            (format!("short-{w}-{i}"), 2)
        } else {
            (format!("w{w}-k{}", i % KEYS_PER_WRITER), 0)
        };
        let value = format!("w{w}-i{i}");
        let flags = i as u32;
        ledger.in_flight = Some((key.clone(), value.clone(), flags));
        match conn.set_with(&key, flags, exptime, value.as_bytes()) {
            Ok(OpResult::Stored) => {
                ledger.in_flight = None;
                ledger.writes += 1;
                acks.fetch_add(1, Ordering::Relaxed);
                if exptime > 0 {
                    ledger.short_lived.push(key);
                } else {
                    ledger.acked.insert(key, (value, flags));
                }
            }
            Ok(_) | Err(Failure::ServerError(_) | Failure::Unexpected(_)) => {
                panic!("a write was refused")
            }
            Err(Failure::Timeout | Failure::Io(_)) => break, // the server died
        }
    }
    ledger
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _) = start(dir.path());
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (stop, acks) = (Arc::clone(&stop), Arc::clone(&acks));
            std::thread::spawn(move || writer(addr, w, stop, acks))
        })
        .collect();
    // At least 1.5 s and 500 acknowledged writes (a busy machine's fsyncs are slow), at most
    // 30 s.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500)
        || (acks.load(Ordering::Relaxed) < 500 && started.elapsed() < Duration::from_secs(30))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let killed_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let ledgers: Vec<Ledger> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = ledgers.iter().map(|l| l.writes).sum();
    assert!(
        total > 100,
        "only {total} writes acknowledged before the kill"
    );

    let (server, restart) = start(dir.path());
    let mut conn = open(server.addr);
    let mut max_cas = 0;
    for ledger in &ledgers {
        for (key, (value, flags)) in &ledger.acked {
            let got = gets(&mut conn, key);
            let acked = Some((value.clone(), *flags));
            let pending = ledger
                .in_flight
                .as_ref()
                .filter(|(k, _, _)| k == key)
                .map(|(_, v, f)| (v.clone(), *f));
            let got_vf = got.as_ref().map(|(v, f, _)| (v.clone(), *f));
            assert!(
                got_vf == acked || (pending.is_some() && got_vf == pending),
                "{key}: acknowledged {acked:?}, read back {got:?}"
            );
            max_cas = max_cas.max(got.unwrap().2);
        }
    }
    // Versions survived, and the clock resumed past them: a new write gets a greater CAS.
    assert_eq!(conn.set("after-restart", b"new").unwrap(), OpResult::Stored);
    let (_, _, cas) = gets(&mut conn, "after-restart").unwrap();
    assert!(
        cas > max_cas,
        "new cas {cas} is not above the recovered {max_cas}"
    );
    // Expiry survived: short-lived items are gone once their 2 seconds are up.
    let wait = Duration::from_millis(3200).saturating_sub(killed_at.elapsed());
    std::thread::sleep(wait);
    for ledger in &ledgers {
        for key in &ledger.short_lived {
            assert_eq!(gets(&mut conn, key), None, "{key} outlived its exptime");
        }
    }
    eprintln!(
        "{total} acknowledged writes by {WRITERS} clients before SIGKILL; restart took {restart:?}"
    );
}
