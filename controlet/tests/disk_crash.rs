//! A controlet on the disk datalet is killed with SIGKILL while clients write; after a
//! restart every acknowledged write reads back, with its flags, and expiry and versions
//! survived too.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_controlet");
const WRITERS: usize = 4;
const KEYS_PER_WRITER: usize = 300;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a controlet on the disk datalet in `dir`; returns it and how long it took to accept
/// connections.
fn start(dir: &Path, port: u16) -> (Child, Duration) {
    let started = Instant::now();
    let child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--datalet")
        .arg(format!("disk:{}", dir.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start controlet");
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "controlet did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, started.elapsed())
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Conn {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(line)
    }

    fn set(&mut self, key: &str, flags: u32, exptime: u32, value: &str) -> std::io::Result<bool> {
        let req = format!("set {key} {flags} {exptime} {}\r\n{value}\r\n", value.len());
        self.writer.write_all(req.as_bytes())?;
        Ok(self.line()? == "STORED\r\n")
    }

    /// `(value, flags, cas)` of a key, or `None`.
    fn gets(&mut self, key: &str) -> Option<(String, u32, u64)> {
        self.writer
            .write_all(format!("gets {key}\r\n").as_bytes())
            .unwrap();
        let header = self.line().unwrap();
        if header == "END\r\n" {
            return None;
        }
        let parts: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(parts[0], "VALUE", "{header}");
        let value = self.line().unwrap().trim_end().to_string();
        assert_eq!(self.line().unwrap(), "END\r\n");
        Some((value, parts[2].parse().unwrap(), parts[4].parse().unwrap()))
    }
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

fn writer(port: u16, w: usize, stop: Arc<AtomicBool>) -> Ledger {
    let mut conn = Conn::open(port);
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
        match conn.set(&key, flags, exptime, &value) {
            Ok(true) => {
                ledger.in_flight = None;
                ledger.writes += 1;
                if exptime > 0 {
                    ledger.short_lived.push(key);
                } else {
                    ledger.acked.insert(key, (value, flags));
                }
            }
            Ok(false) => panic!("a write was refused"),
            Err(_) => break, // the server died
        }
    }
    ledger
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut server, _) = start(dir.path(), port);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || writer(port, w, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    server.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
    let killed_at = Instant::now();
    server.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let ledgers: Vec<Ledger> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = ledgers.iter().map(|l| l.writes).sum();
    assert!(
        total > 100,
        "only {total} writes acknowledged before the kill"
    );

    let port = free_port();
    let (mut server, restart) = start(dir.path(), port);
    let mut conn = Conn::open(port);
    let mut max_cas = 0;
    for ledger in &ledgers {
        for (key, (value, flags)) in &ledger.acked {
            let got = conn.gets(key);
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
    assert!(conn.set("after-restart", 0, 0, "new").unwrap());
    let (_, _, cas) = conn.gets("after-restart").unwrap();
    assert!(
        cas > max_cas,
        "new cas {cas} is not above the recovered {max_cas}"
    );
    // Expiry survived: short-lived items are gone once their 2 seconds are up.
    let wait = Duration::from_millis(3200).saturating_sub(killed_at.elapsed());
    std::thread::sleep(wait);
    for ledger in &ledgers {
        for key in &ledger.short_lived {
            assert_eq!(conn.gets(key), None, "{key} outlived its exptime");
        }
    }
    eprintln!(
        "{total} acknowledged writes by {WRITERS} clients before SIGKILL; restart took {restart:?}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
