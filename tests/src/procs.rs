//! Clusters of real `controlet` processes, and network faults between them.
//!
//! - [`ProcCluster`] starts `n` controlet processes on loopback. Node `i` (1-based) serves
//!   clients on `127.0.0.1:<port>` and its peers on `127.0.0.(10+i):<port>`, so every node's
//!   peer traffic has its own IP address and can be cut off by address. Nodes can be killed
//!   (`SIGKILL`), restarted with the same arguments and ports, paused (`SIGSTOP`/`SIGCONT`) or
//!   terminated (`SIGTERM`). Each node logs (stdout and stderr, `RUST_LOG` passed through) to
//!   its own file under a fresh directory; a test that panics prints the paths and the end of
//!   every log, and keeps the directory.
//! - [`Net`] drops peer packets between those addresses with `iptables` rules in a chain of
//!   its own, hooked from `INPUT`. On loopback every packet goes through `OUTPUT` and then
//!   `INPUT`, so one hook sees them all; dropping on `INPUT` means the sender's send
//!   succeeds and the packet is lost on the way, as on a real network (a `DROP` on `OUTPUT`
//!   would fail the send at once with `EPERM` instead). Dropping a [`Net`] removes its chain,
//!   also when the test panics; chains left behind by a test process that died (SIGKILL) are
//!   removed by the next [`Net::new`].
//!
//! Both hold a lock, per thread and across processes, while they live: the fault tests of
//! one machine run one at a time. The addresses `127.0.0.11`, `127.0.0.12`, ... are shared,
//! so two tests partitioning them at once would cut each other's clusters, and the timing
//! figures the tests measure mean nothing on a machine busy with another cluster. One test
//! (one thread) may hold any number of clusters and nets.
//!
//! The `controlet` binary is the one of this build profile, built on first use
//! ([`binary`]); `TAILORKV_CONTROLET` names another one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crate::client::probe_version;
use crate::ports::{free_port, free_port_on};
use crate::server::binary;

/// The peer IP address of node `i` (1-based): `127.0.0.(10+i)`.
pub fn peer_ip(i: usize) -> Ipv4Addr {
    assert!(
        (1..=240).contains(&i),
        "node {i}: nodes are numbered 1 to 240"
    );
    Ipv4Addr::new(127, 0, 0, 10 + i as u8)
}

/// One controlet process of a [`ProcCluster`].
struct Node {
    client: SocketAddr,
    peer: SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    /// How many times it was started.
    starts: u32,
    /// Arguments this node alone gets, after the cluster's.
    own_args: Vec<String>,
    /// Its HTTP address (`--http-listen`), unless the test gives one itself.
    http: Option<SocketAddr>,
    /// The cluster's arguments for this node, when not the shared ones: a node that joins
    /// names a member instead of `--peers`.
    base: Option<Vec<String>>,
}

/// A cluster of `controlet` processes on loopback. Dropping it kills every node still
/// running.
pub struct ProcCluster {
    nodes: Vec<Node>,
    dir: PathBuf,
    args: Vec<String>,
    /// The mode and the test's own arguments, for nodes that join later.
    consistency: String,
    extra: Vec<String>,
    _exclusive: Exclusive,
}

impl ProcCluster {
    /// Starts `n` nodes in `consistency` (`linearizable`, `sequential` or `eventual`), each
    /// with `extra_args` added to its command line, and waits until every one answers
    /// `version`. In `extra_args`, `{node}` stands for the node's id and `{dir}` for the
    /// cluster's directory: `--datalet disk:{dir}/node-{node}` gives each node its own store.
    /// Every node holds every key (`--replicas n`) unless `extra_args` says `--replicas`.
    pub fn start(n: usize, consistency: &str, extra_args: &[&str]) -> ProcCluster {
        Self::start_with(n, consistency, extra_args, |_| Vec::new())
    }

    /// [`ProcCluster::start`], where node `i` also gets `own_args(i)` (after `extra_args`),
    /// at every start: for clusters of unequal nodes.
    pub fn start_with(
        n: usize,
        consistency: &str,
        extra_args: &[&str],
        own_args: impl Fn(usize) -> Vec<String>,
    ) -> ProcCluster {
        assert!(n >= 1, "a cluster has at least one node");
        let exclusive = Exclusive::acquire();
        let controlet = binary("controlet");
        let dir = fresh_dir();
        let own_http = !extra_args.contains(&"--http-listen");
        let nodes: Vec<Node> = (1..=n)
            .map(|i| Node {
                client: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port()),
                peer: SocketAddr::new(peer_ip(i).into(), free_port_on(peer_ip(i))),
                log: dir.join(format!("node-{i}.log")),
                child: None,
                starts: 0,
                own_args: own_args(i),
                http: own_http.then(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port())),
                base: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .enumerate()
            .map(|(k, node)| format!("{}@{}", k + 1, node.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec![
            "--peers".to_string(),
            peers,
            "--consistency".to_string(),
            consistency.to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        // Every node holds every key unless the test asks for shards.
        if !extra_args.contains(&"--replicas") {
            args.extend(["--replicas".to_string(), n.to_string()]);
        }
        let mut cluster = ProcCluster {
            nodes,
            dir,
            args,
            consistency: consistency.to_string(),
            extra: extra_args.iter().map(|a| a.to_string()).collect(),
            _exclusive: exclusive,
        };
        eprintln!(
            "ProcCluster: {n} nodes ({consistency}) with {}; logs in {}",
            controlet.display(),
            cluster.dir.display()
        );
        for i in 1..=n {
            cluster.spawn(i);
        }
        for i in 1..=n {
            cluster.wait_ready(i);
        }
        cluster
    }

    /// Starts a new node that joins the cluster through node `seed`'s peer address
    /// (`--join`), with the test's arguments, and waits until it answers; its number.
    pub fn join(&mut self, seed: usize) -> usize {
        let i = self.nodes.len() + 1;
        let mut base = vec![
            "--join".to_string(),
            self.peer_addr(seed).to_string(),
            "--consistency".to_string(),
            self.consistency.clone(),
        ];
        base.extend(self.extra.iter().cloned());
        let own_http = !self.extra.iter().any(|a| a == "--http-listen");
        self.nodes.push(Node {
            client: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port()),
            peer: SocketAddr::new(peer_ip(i).into(), free_port_on(peer_ip(i))),
            log: self.dir.join(format!("node-{i}.log")),
            child: None,
            starts: 0,
            own_args: Vec::new(),
            http: own_http.then(|| SocketAddr::new(Ipv4Addr::LOCALHOST.into(), free_port())),
            base: Some(base),
        });
        self.spawn(i);
        self.wait_ready(i);
        i
    }

    /// Node `i`'s HTTP address (`--http-listen`, given by the harness).
    pub fn http_addr(&self, i: usize) -> SocketAddr {
        self.node(i)
            .http
            .expect("the test gave --http-listen itself")
    }

    /// Runs `tailorkv-admin --node <node i's HTTP address> args...`; its output, or the
    /// error it printed.
    pub fn admin(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let mut admin = Command::new(binary("tailorkv-admin"));
        admin
            .arg("--node")
            .arg(self.http_addr(i).to_string())
            .args(args);
        output_of(&mut admin)
    }

    /// Waits up to `within` for node `i`'s process to exit by itself; its status.
    pub fn await_exit(&mut self, i: usize, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        let node = self.node_mut(i);
        loop {
            let child = node.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for controlet") {
                node.child = None;
                note(&node.log, &format!("exited by itself: {status}"));
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`'s client address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.node(i).client
    }

    /// Every node's client address, node 1 first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.client).collect()
    }

    /// Node `i`'s peer address, `127.0.0.(10+i):<port>`.
    pub fn peer_addr(&self, i: usize) -> SocketAddr {
        self.node(i).peer
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.node(i).child.as_ref().map(Child::id)
    }

    /// Whether node `i`'s process is alive (a stopped process is alive).
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = self.node_mut(i);
        match &mut node.child {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    node.child = None;
                    false
                }
            },
            None => false,
        }
    }

    /// The directory holding the logs (and whatever `{dir}` in the arguments made).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Node `i`'s log file: everything it printed, over all its starts.
    pub fn log_path(&self, i: usize) -> &Path {
        &self.node(i).log
    }

    /// One line per node naming its addresses and log, for failure messages.
    pub fn describe(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(k, n)| {
                format!(
                    "node {}: clients {} peers {} log {}",
                    k + 1,
                    n.client,
                    n.peer,
                    n.log.display()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `SIGKILL`s node `i` and waits until it is gone.
    pub fn kill(&mut self, i: usize) {
        let node = self.node_mut(i);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("kill({i}): node {i} is not running"));
        let _ = child.kill();
        let _ = child.wait();
        note(&node.log, "killed (SIGKILL) by the test");
    }

    /// Starts node `i` again, with the same arguments and ports, and waits until it answers
    /// `version`. Panics if it is still running.
    pub fn restart(&mut self, i: usize) {
        assert!(
            !self.is_running(i),
            "restart({i}): node {i} is still running; kill or terminate it first"
        );
        self.spawn(i);
        self.wait_ready(i);
    }

    /// Pauses node `i` (`SIGSTOP`): its process keeps its sockets, the kernel keeps accepting
    /// connections and data for it, and nothing is answered.
    pub fn stop(&self, i: usize) {
        self.signal(i, libc::SIGSTOP);
        note(self.log_path(i), "stopped (SIGSTOP) by the test");
    }

    /// Tells node `i` to form the next view from any majority (`SIGUSR1`): the operator's way
    /// back from a lost majority.
    pub fn force_quorum(&self, i: usize) {
        self.signal(i, libc::SIGUSR1);
        note(
            self.log_path(i),
            "told to force a quorum (SIGUSR1) by the test",
        );
    }

    /// Resumes node `i` after [`stop`](Self::stop) (`SIGCONT`).
    pub fn cont(&self, i: usize) {
        self.signal(i, libc::SIGCONT);
        note(self.log_path(i), "continued (SIGCONT) by the test");
    }

    /// Sends node `i` `SIGTERM` and waits (up to 10 s) for it to exit; returns how it exited.
    /// A node that does not exit in time is killed, and the test fails.
    pub fn terminate(&mut self, i: usize) -> ExitStatus {
        self.signal(i, libc::SIGTERM);
        let node = self.node_mut(i);
        let mut child = node.child.take().expect("checked by signal");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("wait for controlet") {
                note(&node.log, &format!("terminated (SIGTERM): {status}"));
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {i} did not exit within 10 s of SIGTERM (killed); log {}",
                    node.log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, i: usize, signal: libc::c_int) {
        let pid = self
            .pid(i)
            .unwrap_or_else(|| panic!("node {i} is not running"));
        // SAFETY: signalling our own child, which we have not reaped: the pid is still ours.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {signal}): {}",
            std::io::Error::last_os_error()
        );
    }

    fn node(&self, i: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&i),
            "no node {i}: nodes are 1 to {}",
            self.nodes.len()
        );
        &self.nodes[i - 1]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        self.node(i);
        &mut self.nodes[i - 1]
    }

    /// Starts node `i`'s process, its output appended to its log.
    fn spawn(&mut self, i: usize) {
        let dir = self.dir.to_string_lossy().into_owned();
        let node = &self.nodes[i - 1];
        let http: Vec<String> = match node.http {
            Some(http) => vec!["--http-listen".to_string(), http.to_string()],
            None => Vec::new(),
        };
        let args: Vec<String> = [
            "--id".to_string(),
            i.to_string(),
            "--listen".to_string(),
            node.client.to_string(),
            "--peer-listen".to_string(),
            node.peer.to_string(),
        ]
        .into_iter()
        .chain(http)
        .chain(
            node.base
                .as_ref()
                .unwrap_or(&self.args)
                .iter()
                .chain(&node.own_args)
                .map(|a| a.replace("{node}", &i.to_string()).replace("{dir}", &dir)),
        )
        .collect();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let _ = writeln!(
            log,
            "===== tailorkv test harness: start #{} of node {i}: {} {}",
            node.starts + 1,
            binary("controlet").display(),
            args.join(" ")
        );
        let stderr = log.try_clone().expect("clone log file");
        let child = Command::new(binary("controlet"))
            .args(&args)
            .env("NO_COLOR", "1") // plain logs: they go to a file
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary("controlet").display()));
        let node = &mut self.nodes[i - 1];
        node.child = Some(child);
        node.starts += 1;
    }

    /// Waits until node `i` answers `version` on its client port; a node that exits first
    /// (say, its port not yet free after a kill) is started again, a few times.
    fn wait_ready(&mut self, i: usize) {
        let addr = self.addr(i);
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut exits = 0;
        loop {
            if !self.is_running(i) {
                exits += 1;
                assert!(
                    exits < 5,
                    "node {i} exited at start {exits} times; log {}:\n{}",
                    self.log_path(i).display(),
                    tail(self.log_path(i), 30)
                );
                std::thread::sleep(Duration::from_millis(300));
                self.spawn(i);
                continue;
            }
            if probe_version(addr, Duration::from_millis(500)).is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} not answering `version` on {addr} after 15 s; log {}:\n{}",
                self.log_path(i).display(),
                tail(self.log_path(i), 30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProcCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let keep = std::env::var_os("TAILORKV_KEEP_LOGS").is_some();
        if std::thread::panicking() {
            eprintln!("---- ProcCluster logs (kept in {}):", self.dir.display());
            for (k, node) in self.nodes.iter().enumerate() {
                eprintln!(
                    "---- node {} ({}, peers {}): last lines of {}:\n{}",
                    k + 1,
                    node.client,
                    node.peer,
                    node.log.display(),
                    tail(&node.log, 40)
                );
            }
        } else if keep {
            eprintln!("ProcCluster logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `command` with no input to its end: what it printed, or, if it failed, that and
/// what it printed on stderr.
pub fn output_of(command: &mut Command) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match out.status.success() {
        true => Ok(text),
        false => Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// The last `lines` lines of the file at `path`.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => return format!("(cannot read {}: {e})", path.display()),
    };
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Appends a line from the harness to a node's log, so the log shows what the test did.
fn note(log: &Path, what: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(log) {
        let _ = writeln!(f, "===== tailorkv test harness: {what}");
    }
}

/// A new directory under the system's temp dir.
fn fresh_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "tailorkv-procs-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create cluster dir");
    dir
}

/// Connects to `to` from source address `from` (any port), within `timeout`: how a test
/// sends traffic that looks like a node's peer traffic.
pub fn connect_from(from: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let socket = if from.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = tokio::time::timeout(timeout, socket.connect(to))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connect {from} -> {to}: no answer within {timeout:?}"),
                )
            })??;
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(stream)
    })
}

// ---------------------------------------------------------------------------------------
// The exclusive lock: one fault test at a time, in this process and on this machine.

struct LockState {
    owner: Option<ThreadId>,
    depth: usize,
    file: Option<File>,
}

static LOCK: Mutex<LockState> = Mutex::new(LockState {
    owner: None,
    depth: 0,
    file: None,
});
static LOCK_FREED: Condvar = Condvar::new();

/// Held while a [`ProcCluster`] or [`Net`] lives: reentrant within a thread, exclusive
/// across threads, and across processes through `flock` on a file in the temp dir (released
/// by the kernel if the process dies).
struct Exclusive;

impl Exclusive {
    fn acquire() -> Exclusive {
        let me = std::thread::current().id();
        let mut state = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            match state.owner {
                Some(owner) if owner == me => {
                    state.depth += 1;
                    return Exclusive;
                }
                Some(_) => state = LOCK_FREED.wait(state).unwrap_or_else(|e| e.into_inner()),
                None => break,
            }
        }
        state.owner = Some(me);
        state.depth = 1;
        drop(state);
        let file = lock_file();
        LOCK.lock().unwrap_or_else(|e| e.into_inner()).file = Some(file);
        Exclusive
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let mut state = LOCK.lock().unwrap_or_else(|e| e.into_inner());
        state.depth -= 1;
        if state.depth == 0 {
            state.owner = None;
            state.file = None; // closing it releases the flock
            LOCK_FREED.notify_all();
        }
    }
}

/// The machine-wide lock file, locked.
fn lock_file() -> File {
    use std::os::fd::AsRawFd;
    let path = std::env::temp_dir().join("tailorkv-fault-tests.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "waiting for another process's fault tests to finish (lock {})",
            path.display()
        );
        // SAFETY: as above.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    file
}

// ---------------------------------------------------------------------------------------
// Network faults.

/// Network faults between the peer addresses `127.0.0.(10+i)` of nodes, as `iptables` rules
/// in a chain of its own hooked from `INPUT`. Every method adds rules; [`heal`](Self::heal)
/// removes them all. Dropping it removes the chain.
///
/// Rules match addresses only: client traffic (on `127.0.0.1`) is never touched, and a
/// node's outbound peer connections are only caught if they come from its peer address
/// (the controlet binds them to the IP of `--peer-listen`; an unbound loopback connection
/// would come from `127.0.0.1`).
pub struct Net {
    chain: String,
    _exclusive: Exclusive,
}

impl Net {
    /// Panics, loudly, unless `iptables` is installed and usable (root).
    pub fn available() {
        const HOW: &str = "the fault tests need iptables and root: run `bash scripts/test` \
                           (as root, or with sudo), which installs iptables with apt-get";
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "not root (euid {euid}): {HOW}");
        match Command::new("iptables")
            .args(["-w", "-S", "INPUT"])
            .output()
        {
            Err(e) => panic!("cannot run iptables ({e}): {HOW}"),
            Ok(out) if !out.status.success() => panic!(
                "`iptables -S INPUT` failed ({}): {}\n{HOW}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => {}
        }
    }

    /// A new, empty chain, hooked first in `INPUT`.
    pub fn new() -> Net {
        Net::available();
        let exclusive = Exclusive::acquire();
        remove_stale_chains();
        static N: AtomicU32 = AtomicU32::new(0);
        let chain = format!(
            "{CHAIN_PREFIX}{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        assert!(chain.len() <= 28, "chain name {chain} too long");
        iptables(&["-N", &chain]);
        let net = Net {
            chain,
            _exclusive: exclusive,
        };
        iptables(&["-I", "INPUT", "-j", &net.chain]);
        net
    }

    /// The chain's name.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The chain's rules, as `iptables -S` prints them.
    pub fn rules(&self) -> String {
        iptables(&["-S", &self.chain])
    }

    /// Nodes in different groups exchange no packets, in either direction. Nodes in no group
    /// are not affected.
    pub fn partition(&self, groups: &[&[usize]]) {
        for (g, a) in groups.iter().enumerate() {
            for b in &groups[g + 1..] {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.drop_packets(x, y);
                        self.drop_packets(y, x);
                    }
                }
            }
        }
    }

    /// Node `i` exchanges no packets with any other address of the `127.0.0.(10+j)` kind, or
    /// indeed any address but its own.
    pub fn isolate(&self, i: usize) {
        let ip = peer_ip(i).to_string();
        self.append(&["-s", &ip, "!", "-d", &ip, "-j", "DROP"]);
        self.append(&["-d", &ip, "!", "-s", &ip, "-j", "DROP"]);
    }

    /// Drops every packet from node `from` to node `to`; the other direction is untouched.
    ///
    /// On TCP this cuts both ways for new connections: `to` cannot connect to `from` either,
    /// since `from`'s SYN-ACK is dropped, and established connections from `to` stall, their
    /// acknowledgements lost. For "messages from `from` do not reach `to`, messages from `to`
    /// reach `from`", see [`block_connections`](Self::block_connections).
    pub fn one_way(&self, from: usize, to: usize) {
        self.drop_packets(from, to);
    }

    /// Drops the packets of connections that `from` opens to `to` (conntrack's original
    /// direction), so `from` cannot send to `to` on its own outbound peer connection, while
    /// connections `to` opens to `from` keep working both ways: with one outbound connection
    /// per peer, a one-way message loss.
    pub fn block_connections(&self, from: usize, to: usize) {
        let (s, d) = (peer_ip(from).to_string(), peer_ip(to).to_string());
        self.append(&[
            "-s",
            &s,
            "-d",
            &d,
            "-m",
            "conntrack",
            "--ctdir",
            "ORIGINAL",
            "-j",
            "DROP",
        ]);
    }

    /// Drops `probability` (0 to 1) of the packets from node `i`, at random.
    pub fn loss(&self, i: usize, probability: f64) {
        assert!(
            (0.0..=1.0).contains(&probability),
            "probability {probability} not in 0..=1"
        );
        let ip = peer_ip(i).to_string();
        let p = format!("{probability}");
        self.append(&[
            "-s",
            &ip,
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ]);
    }

    /// Removes every fault: the chain is flushed (it stays hooked).
    pub fn heal(&self) {
        iptables(&["-F", &self.chain]);
    }

    fn drop_packets(&self, from: usize, to: usize) {
        let (s, d) = (peer_ip(from).to_string(), peer_ip(to).to_string());
        self.append(&["-s", &s, "-d", &d, "-j", "DROP"]);
    }

    fn append(&self, rule: &[&str]) {
        let mut args = vec!["-A", self.chain.as_str()];
        args.extend_from_slice(rule);
        iptables(&args);
    }
}

impl Default for Net {
    fn default() -> Self {
        Net::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Err(e) = remove_chain(&self.chain) {
            eprintln!("Net: cannot remove iptables chain {}: {e}", self.chain);
        }
    }
}

/// The prefix of every chain a [`Net`] makes; the rest is `<pid>_<n>`.
const CHAIN_PREFIX: &str = "TKV";

/// Runs `iptables -w ARGS`; panics, with its error output, if it fails.
fn iptables(args: &[&str]) -> String {
    try_iptables(args).unwrap_or_else(|e| panic!("{e}"))
}

fn try_iptables(args: &[&str]) -> Result<String, String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Unhooks `chain` from `INPUT` (every hook), flushes and deletes it.
fn remove_chain(chain: &str) -> Result<(), String> {
    while try_iptables(&["-D", "INPUT", "-j", chain]).is_ok() {}
    try_iptables(&["-F", chain])?;
    try_iptables(&["-X", chain])?;
    Ok(())
}

/// Removes the chains of test processes that are gone (killed before their `Net` dropped).
fn remove_stale_chains() {
    let Ok(rules) = try_iptables(&["-S"]) else {
        return;
    };
    for line in rules.lines() {
        let Some(chain) = line.strip_prefix("-N ") else {
            continue;
        };
        let Some(pid) = chain
            .strip_prefix(CHAIN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("Net: removing chain {chain} left by process {pid}, which is gone");
            if let Err(e) = remove_chain(chain) {
                eprintln!("Net: {e}");
            }
        }
    }
}
