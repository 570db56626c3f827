//! The `controlet` and `datalet` binaries: their command lines, serving, and shutdown on
//! signals.

use std::process::Command;
use std::time::Duration;

use tailorkv_tests::server::binary;
use tailorkv_tests::{RawClient, ServerProcess};

#[test]
fn help_explains_every_flag() {
    let out = Command::new(binary("controlet"))
        .arg("--help")
        .output()
        .unwrap();
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
        // memcached's flags, where tailorkv cannot do what they ask.
        &["-U", "11211"],
        &["-o", "no_such_option"],
        &["-o", "idle_timeout=soon"],
        &["-l", "127.0.0.1,127.0.0.2"],
        &["-l", "no.such.host.invalid"],
        &["-t", "0"],
        // memcached's rule: an item may take at most half the memory.
        &["-I", "256m"],
        &["--item-size-max", "33m", "--memory-limit", "64"],
        &["-B", "json"],
        // memcached refuses no connections at all.
        &["-c", "0"],
    ] {
        let out = Command::new(binary("controlet"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!out.stderr.is_empty(), "{args:?} failed silently");
    }
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(binary("controlet"))
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
        let mut server = ServerProcess::controlet(&[]);
        let mut conn = RawClient::connect(server.addr);
        let reply = conn.call(b"set k 0 0 2\r\nhi\r\nget k\r\n", b"END\r\n");
        assert_eq!(reply, b"STORED\r\nVALUE k 0 2\r\nhi\r\nEND\r\n");
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(10));
        assert!(status.success(), "exit after signal {signal}: {status}");
        // The open client connection was closed by the shutdown.
        assert_eq!(conn.read_to_close(), b"");
        let log = server.log();
        assert!(
            log.contains("shutting down") && log.contains("controlet stopped"),
            "{log}"
        );
    }
}

#[test]
fn the_datalet_binary_explains_itself_and_refuses_a_remote_store() {
    let out = Command::new(binary("datalet"))
        .arg("--help")
        .output()
        .unwrap();
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
    let out = Command::new(binary("datalet"))
        .args(["--store", "tape"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn the_datalet_binary_serves_a_disk_store_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("disk:{}", dir.path().display());
    let mut datalet = ServerProcess::datalet(&["--store", &store]);
    let reply =
        RawClient::connect(datalet.addr).call(b"set k 5 0 3\r\nabc\r\nget k\r\n", b"END\r\n");
    assert_eq!(reply, b"STORED\r\nVALUE k 5 3\r\nabc\r\nEND\r\n");
    datalet.signal(libc::SIGTERM);
    assert!(datalet.wait_exit(Duration::from_secs(10)).success());

    let datalet = ServerProcess::datalet(&["--store", &store]);
    let reply = RawClient::connect(datalet.addr).call(b"get k\r\n", b"END\r\n");
    assert_eq!(
        reply, b"VALUE k 5 3\r\nabc\r\nEND\r\n",
        "the disk store kept the item"
    );
}
