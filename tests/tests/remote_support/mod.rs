//! Remote servers for the remote datalet's tests, configured with the limits of the
//! datalet's `Limits`: a real memcached, our `datalet` binary, or a `controlet` binary
//! serving as a plain memcached, each a [`ServerProcess`]. And a TCP proxy to put in front of
//! one.

use std::net::SocketAddr;
use std::time::Duration;

use tailorkv_datalet::Limits;
use tailorkv_tests::ServerProcess;

/// memcached 1.6 with `limits`: `-M` (refuse rather than evict), `-m` and `-I`.
pub fn memcached_with(limits: Limits) -> ServerProcess {
    let args = memcached_args(limits);
    ServerProcess::memcached(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// A controlet on its memory datalet with `limits` (evicting or refusing as they say, as a
/// memcached with or without `-M`).
pub fn controlet_with(limits: Limits) -> ServerProcess {
    let mib = limits.memory_limit_bytes.div_ceil(1 << 20).to_string();
    let item = limits.item_size_max.to_string();
    let evict = if limits.evict { "lru" } else { "none" };
    ServerProcess::controlet(&[
        "--memory-limit",
        &mib,
        "--item-size-max",
        &item,
        "--threads",
        "2",
        "--evict",
        evict,
    ])
}

/// Our `datalet` binary serving its memory store, with `limits`.
pub fn datalet_with(limits: Limits) -> ServerProcess {
    let mib = limits.memory_limit_bytes.div_ceil(1 << 20).to_string();
    let item = limits.item_size_max.to_string();
    ServerProcess::datalet(&[
        "--store",
        "memory",
        "--memory-limit",
        &mib,
        "--item-size-max",
        &item,
    ])
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
