//! The `controlet` binary: its command line, serving, and shutdown on signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_controlet");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(port: u16) -> Child {
    let child = Command::new(BIN)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start controlet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "controlet did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "controlet did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--datalet",
        "--max-connections",
        "--item-size-max",
        "--memory-limit",
        "--threads",
        "127.0.0.1:11211",
    ] {
        assert!(
            help.contains(flag),
            "--help does not mention {flag}:\n{help}"
        );
    }
}

#[test]
fn bad_flags_are_refused_with_a_message() {
    for args in [
        &["--datalet", "tape"][..],
        &["--item-size-max", "2g"],
        &["--listen", "nowhere"],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!out.stderr.is_empty(), "{args:?} failed silently");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn serves_and_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let port = free_port();
        let mut child = start(port);
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        conn.write_all(b"set k 0 0 2\r\nhi\r\nget k\r\n").unwrap();
        let mut reply = Vec::new();
        let mut buf = [0u8; 256];
        while !reply.ends_with(b"END\r\n") {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0);
            reply.extend_from_slice(&buf[..n]);
        }
        assert_eq!(reply, b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n");
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        assert!(status.success(), "exit after signal {signal}: {status}");
        // The open client connection was closed by the shutdown.
        assert_eq!(conn.read(&mut buf).unwrap_or(0), 0);
        let mut log = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        assert!(
            log.contains("shutting down") && log.contains("controlet stopped"),
            "{log}"
        );
    }
}

const DATALET: &str = env!("CARGO_BIN_EXE_datalet");

fn roundtrip(port: u16, request: &[u8], terminator: &[u8]) -> Vec<u8> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    conn.write_all(request).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.ends_with(terminator) {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&reply));
        reply.extend_from_slice(&buf[..n]);
    }
    reply
}

fn start_datalet(args: &[&str], port: u16) -> Child {
    let child = Command::new(DATALET)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start datalet");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "datalet did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[test]
fn the_datalet_binary_explains_itself_and_refuses_a_remote_store() {
    let out = Command::new(DATALET).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--store",
        "--memory-limit",
        "--item-size-max",
        "disk:DIR",
    ] {
        assert!(
            help.contains(flag),
            "datalet --help does not mention {flag}:\n{help}"
        );
    }
    let out = Command::new(DATALET)
        .args(["--store", "tape"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_datalet_binary_serves_a_disk_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("disk:{}", dir.path().display());
    let port = free_port();
    let mut datalet = start_datalet(&["--store", &store], port);
    let reply = roundtrip(port, b"set k 5 0 3\r\nabc\r\nget k\r\n", b"END\r\n");
    assert_eq!(reply, b"STORED\r\nVALUE k 5 3\r\nabc\r\nEND\r\n");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(datalet.id() as i32, libc::SIGTERM) }, 0);
    assert!(wait_exit(&mut datalet, Duration::from_secs(10)).success());

    let port = free_port();
    let mut datalet = start_datalet(&["--store", &store], port);
    let reply = roundtrip(port, b"get k\r\n", b"END\r\n");
    assert_eq!(
        reply, b"VALUE k 5 3\r\nabc\r\nEND\r\n",
        "the disk store kept the item"
    );
    datalet.kill().unwrap();
    datalet.wait().unwrap();
}
