//! Remote servers for the remote datalet's tests: a real memcached, our `datalet` binary, or
//! a `controlet` binary serving as a plain memcached, each a child process on a loopback port, configured with the
//! limits of the datalet's `Limits`. A missing `memcached` binary fails the tests; it never
//! skips them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailorkv_datalet::Limits;

const CONTROLET: &str = env!("CARGO_BIN_EXE_controlet");
const DATALET: &str = env!("CARGO_BIN_EXE_datalet");

/// Which server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Memcached,
    Controlet,
    Datalet,
}

/// A server process. Dropping it kills it.
pub struct Server {
    pub addr: SocketAddr,
    kind: Kind,
    args: Vec<String>,
    child: Option<Child>,
}

impl Server {
    /// memcached 1.6 with `limits`: `-M` (refuse rather than evict), `-m` and `-I`.
    pub fn memcached(limits: Limits) -> Server {
        Server::start(Kind::Memcached, memcached_args(limits))
    }

    /// A controlet on its memory datalet with `limits`.
    pub fn controlet(limits: Limits) -> Server {
        let mib = limits.memory_limit_bytes.div_ceil(1 << 20).to_string();
        let item = limits.item_size_max.to_string();
        let args = [
            "--memory-limit",
            &mib,
            "--item-size-max",
            &item,
            "--threads",
            "2",
        ];
        Server::start(Kind::Controlet, args.map(String::from).to_vec())
    }

    /// Our `datalet` binary serving its memory store, with `limits`.
    pub fn datalet(limits: Limits) -> Server {
        let mib = limits.memory_limit_bytes.div_ceil(1 << 20).to_string();
        let item = limits.item_size_max.to_string();
        let args = [
            "--store",
            "memory",
            "--memory-limit",
            &mib,
            "--item-size-max",
            &item,
        ];
        Server::start(Kind::Datalet, args.map(String::from).to_vec())
    }

    fn start(kind: Kind, args: Vec<String>) -> Server {
        for _ in 0..20 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_low_port()));
            let mut server = Server {
                addr,
                kind,
                args: args.clone(),
                child: None,
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("{kind:?} did not start: every port tried was taken");
    }

    /// Kills the server; its port stays reserved for [`Server::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        assert!(
            self.spawn(),
            "{:?} did not restart on {}",
            self.kind,
            self.addr
        );
    }

    /// Starts the process and waits until it answers `version`; false if it exited, or
    /// something else answers on its port.
    fn spawn(&mut self) -> bool {
        let mut cmd = match self.kind {
            Kind::Memcached => {
                let mut cmd = Command::new("memcached");
                let port = self.addr.port().to_string();
                cmd.args(["-p", &port, "-U", "0", "-l", "127.0.0.1", "-t", "2"]);
                // SAFETY: getuid has no preconditions. memcached refuses root without -u.
                if unsafe { libc::getuid() } == 0 {
                    cmd.args(["-u", "root"]);
                }
                cmd
            }
            Kind::Controlet | Kind::Datalet => {
                let bin = if self.kind == Kind::Controlet {
                    CONTROLET
                } else {
                    DATALET
                };
                let mut cmd = Command::new(bin);
                cmd.args(["--listen", &self.addr.to_string()]);
                cmd
            }
        };
        cmd.args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {:?} ({e}); memcached comes from `apt-get install memcached` \
                 (scripts/test installs it)",
                self.kind
            )
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.exited() {
                self.kill();
                return false;
            }
            if let Some(version) = probe_version(self.addr) {
                let ours = version.windows(8).any(|w| w == b"tailorkv");
                std::thread::sleep(Duration::from_millis(20));
                let right_server = ours == (self.kind != Kind::Memcached);
                if !right_server || self.exited() {
                    self.kill();
                    return false;
                }
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not answering on {} after 10 s",
                self.kind,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("spawned");
        child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// memcached's flags for `limits`. memcached wants a power-of-two slab chunk size no larger
/// than its item size limit, and memory for at least two of its largest items.
fn memcached_args(limits: Limits) -> Vec<String> {
    let item = limits.item_size_max;
    let mib = limits.memory_limit_bytes.max(2 * item).div_ceil(1 << 20);
    let chunk = (item / 2).min(512 * 1024);
    let chunk = 1usize << chunk.ilog2();
    let args = [
        "-M".to_string(),
        "-m".to_string(),
        mib.to_string(),
        "-I".to_string(),
        item.to_string(),
        "-o".to_string(),
        format!("slab_chunk_max={chunk}"),
    ];
    args.to_vec()
}

/// A port below the ephemeral range (32768 and up on Linux) that is free now and different
/// on each call in this process: no client socket or port-0 listener can take it meanwhile.
fn free_low_port() -> u16 {
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
    let reply = Raw::try_connect(addr)?.try_call(b"version\r\n", b"\r\n")?;
    reply.starts_with(b"VERSION 1.").then_some(reply)
}

/// A blocking client speaking raw protocol bytes.
pub struct Raw {
    stream: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::try_connect(addr).unwrap_or_else(|| panic!("cannot connect to {addr}"))
    }

    fn try_connect(addr: SocketAddr) -> Option<Raw> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_nodelay(true).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(Raw { stream })
    }

    /// Sends `request` and reads the reply through `terminator`.
    pub fn call(&mut self, request: &[u8], terminator: &[u8]) -> Vec<u8> {
        self.try_call(request, terminator).unwrap_or_else(|| {
            panic!(
                "no reply ending in {:?} to {:?}",
                String::from_utf8_lossy(terminator),
                String::from_utf8_lossy(request)
            )
        })
    }

    fn try_call(&mut self, request: &[u8], terminator: &[u8]) -> Option<Vec<u8>> {
        self.stream.write_all(request).ok()?;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while !got.ends_with(terminator) {
            let n = self.stream.read(&mut buf).ok()?;
            if n == 0 {
                return None;
            }
            got.extend_from_slice(&buf[..n]);
        }
        Some(got)
    }
}

/// A TCP proxy in front of a server, for the remote datalet's pipelining tests: it counts
/// the writes its clients make, can hold the server's replies back for a while, and can cut
/// every connection through it at once. Runs on the current tokio runtime.
pub struct Proxy {
    pub addr: SocketAddr,
    state: std::sync::Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    /// Reads the proxy made from its clients: an upper bound on their writes.
    client_reads: std::sync::atomic::AtomicU64,
    /// Every byte its clients sent.
    client_bytes: std::sync::Mutex<Vec<u8>>,
    /// How long each chunk of replies is held before it is passed on.
    delay: std::sync::Mutex<Duration>,
    /// The tasks of the connections through the proxy; aborting one closes both its sockets.
    links: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(ProxyState::default());
        let shared = std::sync::Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = std::sync::Arc::clone(&shared);
                let link = tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    relay(client, server, state).await;
                });
                shared.links.lock().unwrap().push(link);
            }
        });
        Proxy { addr, state }
    }

    /// Holds each chunk of replies for `delay` before passing it on.
    pub fn delay_replies(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }

    /// The reads made from clients so far: each client write is one read or more.
    pub fn client_reads(&self) -> u64 {
        self.state
            .client_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every byte its clients sent so far, all connections together.
    pub fn client_bytes(&self) -> Vec<u8> {
        self.state.client_bytes.lock().unwrap().clone()
    }

    /// Closes every connection through the proxy, both ways.
    pub fn cut(&self) {
        for link in self.state.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    state: std::sync::Arc<ProxyState>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let requests = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = client_in.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            state.client_reads.fetch_add(1, Ordering::Relaxed);
            state
                .client_bytes
                .lock()
                .unwrap()
                .extend_from_slice(&buf[..n]);
            if server_out.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    let replies = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = server_in.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            let delay = *state.delay.lock().unwrap();
            tokio::time::sleep(delay).await;
            if client_out.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
    }
}
