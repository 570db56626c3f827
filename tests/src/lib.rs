//! Harness for whole-system tests: servers on free loopback ports, clients that speak the
//! memcached text protocol over real TCP, recorded workloads and their checkers.
//!
//! Everything here fails loudly: a missing `memcached` binary is a test failure with a message
//! saying how to install it, never a skipped test.
//!
//! # Layout
//!
//! - [`Controlet`] and [`Cluster`] (here): controlets started in-process, each on its own
//!   runtime thread; a cluster of them on loopback.
//! - [`server`]: servers as child processes: a real memcached, or this build's `controlet`
//!   or `datalet` binary ([`ServerProcess`]).
//! - [`procs`]: clusters of `controlet` processes, and network faults between them.
//! - [`client`]: blocking clients: [`RawClient`] (raw bytes), [`client::McConn`] (typed
//!   requests with deadlines), and [`client::probe_version`].
//! - [`ports`]: free ports, below the kernel's ephemeral range.
//! - [`workload`]: a recorded random workload on many client threads, for fault tests.
//! - [`checker`]: consistency checkers for recorded histories.

pub mod checker;
pub mod client;
pub mod ports;
pub mod procs;
pub mod script;
pub mod server;
pub mod workload;

pub use client::RawClient;
pub use ports::free_port;
pub use server::ServerProcess;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

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

/// An in-process cluster of controlets on loopback, in one consistency mode. Dropping it
/// stops every node.
pub struct Cluster {
    pub nodes: Vec<Controlet>,
}

impl Cluster {
    /// `n` nodes in `consistency`, each holding every key; `tweak` adjusts every node's
    /// configuration (`replicas` for shards).
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
                    c.replicas = Some(usize::from(n));
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
