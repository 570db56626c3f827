//! Free ports for the servers a test starts.
//!
//! A port picked by binding port 0 lies in the kernel's ephemeral range (32768 and up on
//! Linux), where any outgoing connection (a test's client, a node's peer link) may take it as
//! its local port before the server binds it, or while a server is down between a kill and a
//! restart. So ports are picked below that range instead, from a sequence that never hands
//! out a port twice in this process (even one not bound yet) and, seeded once by the pid and
//! the clock, starts elsewhere in another process.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOW: u32 = 12_000;
/// How many ports from [`LOW`] on are handed out: up to 31999, below the ephemeral range.
const SPAN: u32 = 20_000;

/// A port on `127.0.0.1` that was free a moment ago, below the ephemeral range.
pub fn free_port() -> u16 {
    free_port_on(Ipv4Addr::LOCALHOST)
}

/// A port on `ip` that was free a moment ago, below the ephemeral range, different on every
/// call in this process. Panics if none is.
pub fn free_port_on(ip: Ipv4Addr) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // One starting point per process, so successive calls walk distinct ports: a port handed
    // out but not bound yet is never handed out again by this process (taken afresh for
    // each call, two calls could land on the same port).
    static SEED: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::process::id().wrapping_mul(7_919)
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
    });
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(101)) % SPAN) as u16;
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on {ip} in {LOW}..{}", LOW + SPAN);
}
