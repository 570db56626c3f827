//! The controlet as a server: pipelining, many connections, slow and vanishing clients,
//! connection and memory limits, and expiry under a clock moved by hand.

use std::sync::Arc;
use std::time::Duration;

use tailorkv_common::ManualClock;
use tailorkv_tests::{Controlet, RawClient};

const END: &[u8] = b"END\r\n";

fn stat(addr: std::net::SocketAddr, name: &str) -> u64 {
    let reply = RawClient::connect(addr).call(b"stats\r\n", END);
    let text = String::from_utf8(reply).unwrap();
    let prefix = format!("STAT {name} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in stats:\n{text}"));
    line[prefix.len()..].parse().unwrap()
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = Controlet::start();
    let mut client = RawClient::connect(server.addr);
    let mut request = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500 {
        request.extend(
            format!(
                "set key{i} {i} 0 {}\r\nvalue{i}\r\n",
                5 + i.to_string().len()
            )
            .bytes(),
        );
        expected.extend(b"STORED\r\n");
    }
    for i in (0..500).rev() {
        request.extend(format!("get key{i}\r\n").bytes());
        let v = format!("value{i}");
        expected.extend(format!("VALUE key{i} {i} {}\r\n{v}\r\nEND\r\n", v.len()).bytes());
    }
    request.extend(b"incr nope 1\r\ndelete key0\r\nget key0\r\n");
    expected.extend(b"NOT_FOUND\r\nDELETED\r\nEND\r\n");
    let reply = client.call(&request, b"DELETED\r\nEND\r\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&expected)
    );
}

#[test]
fn noreply_writes_are_applied_silently() {
    let server = Controlet::start();
    let mut client = RawClient::connect(server.addr);
    let mut request = Vec::new();
    for i in 0..1000 {
        request.extend(format!("set n{i} 0 0 1 noreply\r\n{}\r\n", i % 10).bytes());
    }
    request.extend(b"incr n7 5 noreply\r\nget n7 n999\r\n");
    let reply = client.call(&request, END);
    assert_eq!(
        reply,
        b"VALUE n7 0 2\r\n12\r\nVALUE n999 0 1\r\n9\r\nEND\r\n"
    );
}

#[test]
fn two_thousand_concurrent_connections_are_served() {
    let server = Controlet::start_with(|c| c.max_connections = 4096);
    let mut clients: Vec<RawClient> = (0..2000).map(|_| RawClient::connect(server.addr)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(format!("set c{i} 0 0 {}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    for client in clients.iter_mut() {
        assert_eq!(client.read_until(b"\r\n"), b"STORED\r\n");
    }
    assert_eq!(stat(server.addr, "curr_connections"), 2001);
    for (i, client) in clients.iter_mut().enumerate().rev() {
        let reply = client.call(format!("get c{i}\r\n").as_bytes(), END);
        assert_eq!(
            reply,
            format!("VALUE c{i} 0 {}\r\n{i}\r\nEND\r\n", i.to_string().len()).as_bytes()
        );
    }
}

#[test]
fn an_idle_or_slow_client_does_not_stall_the_others() {
    let server = Controlet::start();
    // One client stops halfway through a request and waits.
    let mut idle = RawClient::connect(server.addr);
    idle.send(b"set half 0 0 10\r\nabc");
    // Another pipelines requests for a large value and never reads the replies.
    let mut setter = RawClient::connect(server.addr);
    let big = vec![b'x'; 500_000];
    let mut set = format!("set big 0 0 {}\r\n", big.len()).into_bytes();
    set.extend(&big);
    set.extend(b"\r\n");
    assert_eq!(setter.call(&set, b"\r\n"), b"STORED\r\n");
    let mut hog = RawClient::connect(server.addr);
    hog.send(&b"get big\r\n".repeat(200));
    // Everyone else is served promptly meanwhile.
    for i in 0..50 {
        let mut c = RawClient::connect(server.addr);
        assert_eq!(
            c.call(format!("set k{i} 0 0 1\r\nv\r\n").as_bytes(), b"\r\n"),
            b"STORED\r\n"
        );
    }
    // And the idle client's request completes when it resumes.
    assert_eq!(idle.call(b"defghij\r\n", b"\r\n"), b"STORED\r\n");
}

#[test]
fn a_client_that_vanishes_mid_request_leaves_nothing_behind() {
    let server = Controlet::start();
    for _ in 0..20 {
        let mut c = RawClient::connect(server.addr);
        c.send(b"set ghost 0 0 100\r\nonly part of the value");
        drop(c);
    }
    let mut c = RawClient::connect(server.addr);
    assert_eq!(c.call(b"get ghost\r\n", END), END);
    drop(c);
    // Only the connection asking for stats is left.
    for _ in 0..100 {
        if stat(server.addr, "curr_connections") == 1 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("connections of vanished clients are still open");
}

#[test]
fn connections_past_the_limit_are_refused_as_memcached_does() {
    let server = Controlet::start_with(|c| c.max_connections = 2);
    let mut a = RawClient::connect(server.addr);
    let mut b = RawClient::connect(server.addr);
    assert_eq!(a.call(b"version\r\n", b"\r\n")[..8], *b"VERSION ");
    assert_eq!(b.call(b"version\r\n", b"\r\n")[..8], *b"VERSION ");
    let third = RawClient::connect(server.addr);
    assert_eq!(
        third.send_all_and_close(b""),
        b"ERROR Too many open connections\r\n"
    );
    drop(a);
    std::thread::sleep(Duration::from_millis(100));
    let mut c = RawClient::connect(server.addr);
    assert_eq!(
        c.call(b"get x\r\n", END),
        END,
        "a freed slot is usable again"
    );
    let reply = String::from_utf8(b.call(b"stats\r\n", END)).unwrap();
    assert!(reply.contains("STAT rejected_connections 1\r\n"), "{reply}");
}

/// memcached's default: a full store evicts the least recently used items, counted in
/// `stats`, and every write is stored.
#[test]
fn a_full_store_evicts_the_oldest_items() {
    let server = Controlet::start_with(|c| c.memory_limit = 1);
    let mut client = RawClient::connect(server.addr);
    let value = vec![b'v'; 10_000];
    for i in 0..300 {
        let mut req = format!("set full{i} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend(&value);
        req.extend(b"\r\n");
        assert_eq!(client.call(&req, b"\r\n"), b"STORED\r\n", "set full{i}");
    }
    // 10 KB items take 11,104-byte chunks: 94 fit in 1 MiB.
    let evictions = stat(server.addr, "evictions");
    assert_eq!(evictions, 300 - 94);
    assert_eq!(stat(server.addr, "curr_items"), 94);
    assert_eq!(stat(server.addr, "evicted_unfetched"), evictions);
    for i in 0..300 {
        let reply = client.call(format!("get full{i}\r\n").as_bytes(), END);
        assert_eq!(reply.len() > END.len(), i >= 300 - 94, "full{i}");
    }
}

#[test]
fn a_full_store_refuses_writes_and_keeps_every_stored_value() {
    let server = Controlet::start_with(|c| {
        c.memory_limit = 1;
        c.disable_evictions = true;
    });
    let mut client = RawClient::connect(server.addr);
    let value = vec![b'v'; 10_000];
    let mut stored = 0;
    loop {
        let mut req = format!("set full{stored} 0 0 {}\r\n", value.len()).into_bytes();
        req.extend(&value);
        req.extend(b"\r\n");
        let reply = client.call(&req, b"\r\n");
        if reply == b"SERVER_ERROR out of memory storing object\r\n" {
            break;
        }
        assert_eq!(reply, b"STORED\r\n");
        stored += 1;
        assert!(stored < 200, "1 MiB limit not enforced");
    }
    assert!(stored >= 90, "only {stored} x 10 kB fit in 1 MiB");
    // The refused key was never stored, every earlier one is intact, the connection lives.
    assert_eq!(
        client.call(format!("get full{stored}\r\n").as_bytes(), END),
        END
    );
    for i in 0..stored {
        let reply = client.call(format!("get full{i}\r\n").as_bytes(), END);
        assert_eq!(
            reply.len(),
            format!("VALUE full{i} 0 10000\r\n").len() + 10_002 + 5
        );
    }
    // Raising the limit at run time makes room.
    assert_eq!(client.call(b"cache_memlimit 8\r\n", b"\r\n"), b"OK\r\n");
    let mut req = format!("set more 0 0 {}\r\n", value.len()).into_bytes();
    req.extend(&value);
    req.extend(b"\r\n");
    assert_eq!(client.call(&req, b"\r\n"), b"STORED\r\n");
    assert_eq!(stat(server.addr, "store_no_memory"), 1);
}

#[test]
fn items_expire_when_the_clock_says_so() {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let server = Controlet::start_with_clock(clock.clone());
    let mut c = RawClient::connect(server.addr);
    let setup = b"set short 0 10 1\r\na\r\nset never 0 0 1\r\nb\r\nset abs 0 1700000100 1\r\nc\r\n\
                  set gone 0 -1 1\r\nd\r\nset touched 0 10 1\r\ne\r\n";
    assert_eq!(
        c.call(setup, b"STORED\r\nSTORED\r\nSTORED\r\nSTORED\r\nSTORED\r\n")
            .len(),
        40
    );
    assert_eq!(c.call(b"get gone\r\n", END), END);
    assert_eq!(c.call(b"touch touched 100\r\n", b"\r\n"), b"TOUCHED\r\n");
    clock.advance(9);
    assert_eq!(
        c.call(b"get short\r\n", END),
        b"VALUE short 0 1\r\na\r\nEND\r\n"
    );
    clock.advance(1);
    assert_eq!(
        c.call(b"get short\r\n", END),
        END,
        "expired at its tenth second"
    );
    assert_eq!(
        c.call(b"gat 0 touched\r\n", END),
        b"VALUE touched 0 1\r\ne\r\nEND\r\n"
    );
    clock.advance(90);
    assert_eq!(
        c.call(b"get abs\r\n", END),
        END,
        "an absolute exptime is a unix time"
    );
    assert_eq!(
        c.call(b"get never touched\r\n", END),
        b"VALUE never 0 1\r\nb\r\nVALUE touched 0 1\r\ne\r\nEND\r\n",
        "gat 0 made `touched` permanent"
    );
    assert!(stat(server.addr, "get_expired") >= 2);
}

#[test]
fn a_delayed_flush_takes_effect_when_its_time_comes() {
    let clock = Arc::new(ManualClock::new(1_700_000_000));
    let server = Controlet::start_with_clock(clock.clone());
    let mut c = RawClient::connect(server.addr);
    c.call(b"set old 0 0 1\r\no\r\n", b"\r\n");
    assert_eq!(c.call(b"flush_all 5\r\n", b"\r\n"), b"OK\r\n");
    // As in memcached, which sets `oldest_live = realtime(5) - 1`, the flush takes effect
    // 4 seconds later.
    clock.advance(3);
    assert_eq!(
        c.call(b"get old\r\n", END),
        b"VALUE old 0 1\r\no\r\nEND\r\n"
    );
    clock.advance(1);
    assert_eq!(
        c.call(b"get old\r\n", END),
        END,
        "flushed at its flush point"
    );
    // As in memcached, what is stored during the flush point's second is flushed too;
    // what is stored after it stays.
    c.call(b"set during 0 0 1\r\nd\r\n", b"\r\n");
    clock.advance(1);
    c.call(b"set new 0 0 1\r\nn\r\n", b"\r\n");
    assert_eq!(
        c.call(b"get old during new\r\n", END),
        b"VALUE new 0 1\r\nn\r\nEND\r\n"
    );
}

#[test]
fn stats_report_the_server_and_its_counters() {
    let server = Controlet::start();
    let mut c = RawClient::connect(server.addr);
    c.call(
        b"set a 0 0 1\r\n1\r\nget a b\r\nincr a 1\r\ndecr zz 1\r\n",
        b"NOT_FOUND\r\n",
    );
    let text = String::from_utf8(c.call(b"stats\r\n", END)).unwrap();
    for expected in [
        "STAT cmd_get 2\r\n",
        "STAT get_hits 1\r\n",
        "STAT get_misses 1\r\n",
        "STAT cmd_set 1\r\n",
        "STAT incr_hits 1\r\n",
        "STAT decr_misses 1\r\n",
        "STAT curr_items 1\r\n",
        "STAT curr_connections 1\r\n",
        "STAT limit_maxbytes 67108864\r\n",
        "STAT threads ",
        "STAT pid ",
        "STAT uptime ",
        "STAT time ",
        "STAT version 1.6.18-tailorkv-",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    assert_eq!(c.call(b"stats reset\r\n", b"\r\n"), b"RESET\r\n");
    let text = String::from_utf8(c.call(b"stats\r\n", END)).unwrap();
    assert!(text.contains("STAT cmd_get 0\r\n"), "{text}");
    let settings = String::from_utf8(c.call(b"stats settings\r\n", END)).unwrap();
    assert!(
        settings.contains("STAT item_size_max 1048576\r\n"),
        "{settings}"
    );
    assert!(settings.contains("STAT maxconns 1024\r\n"), "{settings}");
}

/// A client that stops halfway through a request is closed after
/// `--partial-request-timeout`, freeing what its request held; nothing of it is stored, and
/// an idle connection (no request begun) stays while `--idle-timeout` is 0.
#[test]
fn a_request_left_half_sent_times_out_and_an_idle_connection_stays() {
    let server = Controlet::start_with(|c| {
        c.partial_request_timeout = 1;
        // Long enough not to matter; memcached shows `idle_kicks` only with it set.
        c.idle_timeout = 3_600;
    });
    let mut idle = RawClient::connect(server.addr);
    let mut half_line = RawClient::connect(server.addr);
    half_line.send(b"set half 0 0");
    let mut half_value = RawClient::connect(server.addr);
    half_value.send(b"set k 0 0 10\r\nabc");
    assert!(half_line.is_closed_within(Duration::from_secs(3)));
    assert!(half_value.is_closed_within(Duration::from_secs(3)));
    assert_eq!(stat(server.addr, "idle_kicks"), 2);
    assert!(!idle.is_closed_within(Duration::from_millis(200)));
    assert_eq!(idle.call(b"get k\r\n", END), END, "nothing was stored");
}

/// `--idle-timeout`, as memcached's `-o idle_timeout`: a connection silent that long is
/// closed.
#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let server = Controlet::start_with(|c| c.idle_timeout = 1);
    let mut idle = RawClient::connect(server.addr);
    assert!(idle
        .call(
            b"version
",
            b"
"
        )
        .starts_with(b"VERSION"));
    assert!(idle.is_closed_within(Duration::from_secs(3)));
    assert_eq!(stat(server.addr, "idle_kicks"), 1);
}
