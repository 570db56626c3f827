//! Harness for whole-system tests: a controlet started in-process on a free port, a real
//! memcached started as a child process, and a raw TCP client.
//!
//! Everything here fails loudly: a missing `memcached` binary is a test failure with a message
//! saying how to install it, never a skipped test.

pub mod checker;
pub mod procs;
pub mod workload;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tailorkv_common::ManualClock;
use tailorkv_controlet::server::limits;
use tailorkv_controlet::{run, run_configured, Config};
use tailorkv_datalet::MemoryDatalet;
use tokio_util::sync::CancellationToken;

/// A controlet serving on a free loopback port, on its own runtime thread. Dropping it shuts
/// it down.
pub struct Controlet {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Controlet {
    /// A controlet with the default configuration.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// A controlet whose configuration `tweak` adjusts (its `listen` is set afterwards).
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_inner(tweak, None)
    }

    /// A controlet on the memory datalet whose time is `clock`: tests move it by hand.
    pub fn start_with_clock(clock: Arc<ManualClock>) -> Self {
        Self::start_inner(|_| {}, Some(clock))
    }

    fn start_inner(tweak: impl FnOnce(&mut Config), clock: Option<Arc<ManualClock>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut config = Config::local(addr);
        tweak(&mut config);
        config.listen = addr;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                match clock {
                    None => run_configured(listener, config, token).await,
                    Some(clock) => {
                        let datalet = Arc::new(MemoryDatalet::new(limits(&config)));
                        run(listener, config, datalet, clock, token).await
                    }
                }
                .expect("controlet run");
            });
        });
        Controlet {
            addr,
            shutdown,
            thread: Some(thread),
        }
    }
}

impl Drop for Controlet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A real memcached on a free loopback port. Dropping it kills it.
pub struct Memcached {
    pub addr: SocketAddr,
    child: Child,
    args: Vec<String>,
}

impl Memcached {
    /// memcached 1.6 with two threads and default settings.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// memcached with extra command-line arguments.
    ///
    /// Its port is taken below the kernel's ephemeral range, so no client socket or port-0
    /// listener can take it first (nor can a probe connect to itself there). Should memcached
    /// still lose the port, it exits, and another port is tried.
    pub fn start_with(args: &[&str]) -> Self {
        for _ in 0..20 {
            let port = unclaimed_port();
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            if let Some(memcached) = Self::spawn(port, args) {
                return memcached;
            }
        }
        panic!("memcached did not start: every port tried was taken");
    }

    /// Kills this memcached and starts a new, empty one on the same port with the same
    /// arguments, as a restarted server would be.
    pub fn restart_empty(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(fresh) = Self::spawn(self.addr.port(), self.args.clone()) {
                *self = fresh;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "memcached did not restart on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// memcached on `port`, once it answers; `None` if it did not take the port.
    fn spawn(port: u16, args: Vec<String>) -> Option<Self> {
        {
            let mut cmd = Command::new("memcached");
            cmd.args([
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-t",
                "2",
            ])
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
            // SAFETY: getuid has no preconditions. memcached refuses to run as root without -u.
            if unsafe { libc::getuid() } == 0 {
                cmd.args(["-u", "root"]);
            }
            let child = cmd.spawn().unwrap_or_else(|e| {
                panic!(
                    "cannot start memcached ({e}); the differential tests need it: \
                     run `bash scripts/test`, which installs it with apt-get"
                )
            });
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            Self::ready(Memcached { addr, child, args })
        }
    }

    /// `memcached` once it answers `version` on its port; `None` (and the child killed) if it
    /// exited, or if another server answers there.
    fn ready(mut memcached: Memcached) -> Option<Memcached> {
        let addr = memcached.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        let version = loop {
            if memcached.child.try_wait().ok().flatten().is_some() {
                return None;
            }
            if let Some(version) = probe_version(addr) {
                break version;
            }
            assert!(
                Instant::now() < deadline,
                "memcached not answering on {addr} after 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // A memcached that lost the port to another one exits right after failing to bind.
        std::thread::sleep(Duration::from_millis(20));
        let alive = memcached.child.try_wait().ok().flatten().is_none();
        let is_memcached = !version.windows(8).any(|w| w == b"tailorkv");
        (alive && is_memcached).then_some(memcached)
    }
}

/// A port below the ephemeral range (32768 and up on Linux) that is free now, different on
/// each call in this process and unlikely to be another process's pick.
fn unclaimed_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    let seed = std::process::id().wrapping_mul(7_919)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + seed.wrapping_add(n.wrapping_mul(101)) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The reply to `version` from whatever listens on `addr`, if it answers like a memcached.
fn probe_version(addr: SocketAddr) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"version\r\n").ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got.starts_with(b"VERSION 1.").then_some(got)
}

impl Drop for Memcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago, below the kernel's ephemeral range: a port picked by
/// binding port 0 is in that range, where any outgoing connection (a test's client, a node's
/// peer link) may take it as its local port before the server binds it.
pub fn free_port() -> u16 {
    unclaimed_port()
}

/// Waits until something accepts connections on `addr`, for up to 10 seconds.
pub fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} after 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A blocking client that speaks raw bytes.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawClient { stream }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Reads until the bytes received end with `terminator`; panics after 10 s.
    pub fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while !got.ends_with(terminator) {
            let n = self.stream.read(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "waiting for {:?}, got {:?}: {e}",
                    String::from_utf8_lossy(terminator),
                    String::from_utf8_lossy(&got)
                )
            });
            assert!(
                n > 0,
                "connection closed; got {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Sends `request` and reads the reply through `terminator`.
    pub fn call(&mut self, request: &[u8], terminator: &[u8]) -> Vec<u8> {
        self.send(request);
        self.read_until(terminator)
    }

    /// Sends `request`, closes the sending side, and reads everything until the server closes
    /// the connection: every reply to `request`, whatever their shape.
    pub fn send_all_and_close(mut self, request: &[u8]) -> Vec<u8> {
        self.send(request);
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::new();
        self.stream.read_to_end(&mut got).expect("read to end");
        got
    }

    /// Whether the server has closed the connection (reads EOF within `wait`).
    pub fn is_closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + wait;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) if Instant::now() >= deadline => return false,
                Err(_) => continue,
            }
        }
    }
}

/// An in-process cluster of controlets on loopback, in one consistency mode. Dropping it
/// stops every node.
pub struct Cluster {
    pub nodes: Vec<Controlet>,
}

impl Cluster {
    /// `n` nodes in `consistency`; `tweak` adjusts every node's configuration.
    pub fn start(
        n: u16,
        consistency: tailorkv_controlet::config::Consistency,
        tweak: impl Fn(&mut Config),
    ) -> Cluster {
        let peers: Vec<tailorkv_controlet::config::Member> = (1..=n)
            .map(|id| tailorkv_controlet::config::Member {
                id: tailorkv_common::NodeId(id),
                addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            })
            .collect();
        let nodes = (1..=n)
            .map(|id| {
                Controlet::start_with(|c| {
                    c.id = id;
                    c.peers = peers.clone();
                    c.consistency = consistency;
                    tweak(c);
                })
            })
            .collect();
        Cluster { nodes }
    }

    /// The client address of every node.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }
}
