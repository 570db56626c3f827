//! A recorded client workload for fault tests, on the blocking [`McConn`] client.
//!
//! [`Workload::start`] runs `clients` threads, client `k` talking to node `k % n + 1` on a
//! connection of its own, doing random `set`s (unique values), `get`s, `delete`s and `add`s
//! on a few keys until [`Workload::stop`]. Every op goes into a [`Recorder`]: a reply is
//! recorded with [`Recorder::complete`]; no reply within the op timeout, a broken connection
//! or a `SERVER_ERROR` with [`Recorder::fail`] (indeterminate), after which the client opens a
//! new connection to the same node. A client whose node refuses connections retries with a
//! short backoff, recording nothing meanwhile. Each connection is a client of its own in the
//! history (a new [`ClientId`]): a session does not survive its connection.
//!
//! Besides the history, a workload keeps every acknowledged write with the node it went
//! through and when it was invoked and completed (to measure when writes resume after a
//! fault), and, for the eventual mode's convergence check, every write with the version it
//! was stored at when [`WorkloadConfig::learn_versions`] asks (a `gets` on the same
//! connection right after each write; reads there are local).
//!
//! `incr` is left out: with the many indeterminate ops of a fault test, which `incr`s took
//! effect is a subset-sum question the checker may not settle within budget. `cas` has no
//! model in the checker.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tailorkv_common::Version;

use crate::checker::{ClientId, History, OpKind, OpResult, Recorder, Value, Write};
use crate::client::{Failure, McConn};

/// Does `kind` on `key` through `conn`, recorded as an op of `client`: completed with the
/// reply, or failed (indeterminate) on any [`Failure`].
pub fn recorded(
    recorder: &Recorder,
    client: ClientId,
    conn: &mut McConn,
    key: &str,
    kind: OpKind,
) -> Result<OpResult, Failure> {
    let id = recorder.invoke(client, key, kind.clone());
    let result = match &kind {
        OpKind::Set(v) => conn.set(key, &v.0),
        OpKind::Add(v) => conn.add(key, &v.0),
        OpKind::Get => conn.get(key),
        OpKind::Delete => conn.delete(key),
        OpKind::Incr(_) => unimplemented!("incr: not in the fault workloads"),
    };
    match &result {
        Ok(r) => recorder.complete(id, r.clone()),
        Err(_) => recorder.fail(id),
    }
    result
}

/// What a [`Workload`] does.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Client threads; client `k` talks to node `k % nodes + 1`.
    pub clients: usize,
    /// Keys `k0`, `k1`, ...
    pub keys: usize,
    /// Seeds each client's choice of ops and keys.
    pub seed: u64,
    /// How long a request may wait for its reply before it is indeterminate.
    pub op_timeout: Duration,
    /// Pause after each op, to keep histories checkable.
    pub think: Duration,
    /// After each acknowledged `set`/`add`, read the key back on the same connection to learn
    /// the write's version (eventual mode: reads are local).
    pub learn_versions: bool,
    /// Values are padded to this many bytes (at least their name, `w<client>-<seq>`), so
    /// faults meet large items as well as small ones.
    pub value_size: usize,
}

impl WorkloadConfig {
    /// `clients` clients on 8 keys, 3 s op timeout, 5 ms think time: a few hundred ops a
    /// second per client, enough to exercise every fault window while leaving the CPU (and
    /// so the timing checks) to the cluster.
    pub fn new(clients: usize, seed: u64) -> Self {
        WorkloadConfig {
            clients,
            keys: 8,
            seed,
            op_timeout: Duration::from_secs(3),
            think: Duration::from_millis(5),
            learn_versions: false,
            value_size: 0,
        }
    }
}

/// An acknowledged write of a workload.
#[derive(Clone, Debug)]
pub struct WriteAck {
    /// The node (1-based) it went through.
    pub node: usize,
    pub client: ClientId,
    pub key: String,
    pub invoked: Instant,
    pub completed: Instant,
}

/// What one node's clients saw.
#[derive(Clone, Debug, Default)]
pub struct NodeStats {
    pub ok: u64,
    pub server_errors: u64,
    pub timeouts: u64,
    pub broken: u64,
    pub unexpected: u64,
    pub connects: u64,
    pub refused: u64,
}

struct Shared {
    recorder: Recorder,
    stop: AtomicBool,
    next_client: AtomicU32,
    acks: Mutex<Vec<WriteAck>>,
    writes: Mutex<Vec<Write>>,
    stats: Mutex<Vec<NodeStats>>,
    unexpected: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Client threads running a recorded random workload against a cluster. Dropping it stops
/// them.
pub struct Workload {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    config: WorkloadConfig,
    nodes: usize,
}

impl Workload {
    /// Starts `config.clients` clients spread over the nodes at `addrs` (node 1 first).
    pub fn start(addrs: &[SocketAddr], config: WorkloadConfig) -> Workload {
        assert!(!addrs.is_empty());
        let shared = Arc::new(Shared {
            recorder: Recorder::new(),
            stop: AtomicBool::new(false),
            next_client: AtomicU32::new(0),
            acks: Mutex::new(Vec::new()),
            writes: Mutex::new(Vec::new()),
            stats: Mutex::new(vec![NodeStats::default(); addrs.len()]),
            unexpected: Mutex::new(Vec::new()),
        });
        let threads = (0..config.clients)
            .map(|k| {
                let node = k % addrs.len() + 1;
                let addr = addrs[node - 1];
                let shared = Arc::clone(&shared);
                let config = config.clone();
                std::thread::Builder::new()
                    .name(format!("workload-{k}-node-{node}"))
                    .spawn(move || client_loop(&shared, &config, k, node, addr))
                    .expect("spawn workload client")
            })
            .collect();
        Workload {
            shared,
            threads,
            config,
            nodes: addrs.len(),
        }
    }

    /// The keys the clients use.
    pub fn keys(&self) -> Vec<String> {
        (0..self.config.keys).map(|k| format!("k{k}")).collect()
    }

    /// The recorder every op goes to; a test records its own ops here too, under
    /// [`new_client`](Self::new_client) ids, so the checkers see them.
    pub fn recorder(&self) -> &Recorder {
        &self.shared.recorder
    }

    /// A client id no one has used.
    pub fn new_client(&self) -> ClientId {
        self.shared.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Every acknowledged write so far.
    pub fn acks(&self) -> Vec<WriteAck> {
        lock(&self.shared.acks).clone()
    }

    /// How long after `since` the first acknowledged write invoked after `since` through one
    /// of `nodes` completed, if one did.
    pub fn first_write_after(&self, since: Instant, nodes: &[usize]) -> Option<Duration> {
        lock(&self.shared.acks)
            .iter()
            .filter(|a| a.invoked >= since && nodes.contains(&a.node))
            .map(|a| a.completed.duration_since(since))
            .min()
    }

    /// Waits up to `within` (from now) for [`first_write_after`](Self::first_write_after).
    pub fn wait_for_write_after(
        &self,
        since: Instant,
        nodes: &[usize],
        within: Duration,
    ) -> Option<Duration> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(d) = self.first_write_after(since, nodes) {
                return Some(d);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// When writes through `nodes` resumed for good after `since`: the completion (as time
    /// after `since`) of the first write invoked after `since` from which on writes through
    /// `nodes` kept being acknowledged, no gap between acknowledgements (nor before
    /// `since + horizon`) longer than `max_gap`. Waits until `since + horizon`. `None` if they
    /// did not. A write or two that slip through at the moment of a fault, on messages
    /// already on their way, are not a resumption: the cluster must keep writing.
    pub fn resumed_after(
        &self,
        since: Instant,
        nodes: &[usize],
        horizon: Duration,
        max_gap: Duration,
    ) -> Option<Duration> {
        let end = since + horizon;
        std::thread::sleep(end.saturating_duration_since(Instant::now()));
        let mut done: Vec<Instant> = lock(&self.shared.acks)
            .iter()
            .filter(|a| a.invoked >= since && nodes.contains(&a.node) && a.completed <= end)
            .map(|a| a.completed)
            .collect();
        done.sort();
        if end.duration_since(*done.last()?) > max_gap {
            return None;
        }
        // The first completion after the last gap that was too long.
        let mut start = done[0];
        for pair in done.windows(2) {
            if pair[1].duration_since(pair[0]) > max_gap {
                start = pair[1];
            }
        }
        Some(start.duration_since(since))
    }

    /// How many writes were acknowledged through `node` after `since`.
    pub fn writes_through_since(&self, node: usize, since: Instant) -> usize {
        lock(&self.shared.acks)
            .iter()
            .filter(|a| a.node == node && a.invoked >= since)
            .count()
    }

    /// Every write made, for [`check_converged`](crate::checker::check_converged): with its
    /// version when learned, `None` otherwise (indeterminate, overwritten before the read
    /// back, deletes, or versions not asked for).
    pub fn writes(&self) -> Vec<Write> {
        lock(&self.shared.writes).clone()
    }

    /// Adds a write the test made itself.
    pub fn add_write(&self, write: Write) {
        lock(&self.shared.writes).push(write);
    }

    /// Replies that made no sense (protocol bugs), one line each.
    pub fn unexpected(&self) -> Vec<String> {
        lock(&self.shared.unexpected).clone()
    }

    /// The history so far; ops still in flight are indeterminate.
    pub fn history(&self) -> History {
        self.shared.recorder.history()
    }

    /// Per node: ops answered, failures by kind, connections.
    pub fn summary(&self) -> String {
        lock(&self.shared.stats)
            .iter()
            .enumerate()
            .map(|(n, s)| {
                format!(
                    "node {}: {} ok, {} SERVER_ERROR, {} timeouts, {} broken, {} unexpected, \
                     {} connections, {} refused",
                    n + 1,
                    s.ok,
                    s.server_errors,
                    s.timeouts,
                    s.broken,
                    s.unexpected,
                    s.connects,
                    s.refused
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// How many nodes the workload spreads over.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Stops the clients and waits for them (up to the op timeout). Idempotent.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client_loop(shared: &Shared, config: &WorkloadConfig, k: usize, node: usize, addr: SocketAddr) {
    let mut rng =
        StdRng::seed_from_u64(config.seed ^ (k as u64 + 1).wrapping_mul(0x51_7CC1_B727_220A));
    let mut conn: Option<(McConn, ClientId)> = None;
    let mut backoff = Duration::from_millis(20);
    let mut seq = 0u64;
    let stat = |f: &dyn Fn(&mut NodeStats)| f(&mut lock(&shared.stats)[node - 1]);
    while !shared.stop.load(Ordering::Relaxed) {
        let Some((c, client)) = conn.as_mut() else {
            match McConn::connect(addr, config.op_timeout) {
                Ok(c) => {
                    let client = shared.next_client.fetch_add(1, Ordering::Relaxed);
                    conn = Some((c, client));
                    backoff = Duration::from_millis(20);
                    stat(&|s| s.connects += 1);
                }
                Err(_) => {
                    stat(&|s| s.refused += 1);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_millis(300));
                }
            }
            continue;
        };
        let client = *client;
        seq += 1;
        let key = format!("k{}", rng.random_range(0..config.keys));
        let mut value = format!("w{k}-{seq}").into_bytes();
        if value.len() < config.value_size {
            value.push(b'.');
            value.resize(config.value_size, b'a' + (seq % 26) as u8);
        }
        let value = Value(value);
        let kind = match rng.random_range(0..20) {
            0..=6 => OpKind::Set(value.clone()),
            7..=15 => OpKind::Get,
            16..=17 => OpKind::Delete,
            _ => OpKind::Add(value.clone()),
        };
        let invoked = Instant::now();
        let result = recorded(&shared.recorder, client, c, &key, kind.clone());
        let completed = Instant::now();
        let is_write = !matches!(kind, OpKind::Get);
        let mut conn_broken = false;
        match result {
            Ok(r) => {
                stat(&|s| s.ok += 1);
                let stored = matches!(r, OpResult::Stored);
                if is_write && (stored || matches!(kind, OpKind::Delete)) {
                    lock(&shared.acks).push(WriteAck {
                        node,
                        client,
                        key: key.clone(),
                        invoked,
                        completed,
                    });
                }
                match &kind {
                    OpKind::Delete => lock(&shared.writes).push(Write {
                        key: key.clone(),
                        value: None,
                        version: None,
                    }),
                    OpKind::Set(_) | OpKind::Add(_) if stored => {
                        let version = if config.learn_versions {
                            match learn_version(&shared.recorder, client, c, &key, &value) {
                                Ok(version) => version,
                                Err(_) => {
                                    conn_broken = true;
                                    None
                                }
                            }
                        } else {
                            None
                        };
                        lock(&shared.writes).push(Write {
                            key: key.clone(),
                            value: Some(value),
                            version,
                        });
                    }
                    _ => {}
                }
            }
            Err(failure) => {
                match &failure {
                    Failure::Timeout => stat(&|s| s.timeouts += 1),
                    Failure::ServerError(_) => stat(&|s| s.server_errors += 1),
                    Failure::Io(_) => stat(&|s| s.broken += 1),
                    Failure::Unexpected(m) => {
                        stat(&|s| s.unexpected += 1);
                        lock(&shared.unexpected).push(format!("node {node}: {m}"));
                    }
                }
                if is_write {
                    let value = match &kind {
                        OpKind::Set(v) | OpKind::Add(v) => Some(v.clone()),
                        _ => None,
                    };
                    lock(&shared.writes).push(Write {
                        key: key.clone(),
                        value,
                        version: None,
                    });
                }
                // A node that refuses refuses fast: do not hammer it.
                conn = None;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        if conn_broken {
            conn = None;
        }
        if !config.think.is_zero() {
            std::thread::sleep(config.think);
        }
    }
}

/// Reads `key` back on `conn`, recorded as a read of `client`, right after writing `value`
/// there: the version `value` was stored at, if it is still there (reads in the eventual
/// mode are local, so the node that took the write holds it unless a newer write replaced
/// it); a [`Failure`] if the read got no reply and the connection must go.
pub fn learn_version(
    recorder: &Recorder,
    client: ClientId,
    conn: &mut McConn,
    key: &str,
    value: &Value,
) -> Result<Option<Version>, Failure> {
    let id = recorder.invoke(client, key, OpKind::Get);
    match conn.gets(key) {
        Ok(Some((v, cas))) => {
            let hit = v == value.0;
            recorder.complete(id, OpResult::Hit(Value(v)));
            Ok(hit.then(|| Version::from_cas(cas)))
        }
        Ok(None) => {
            recorder.complete(id, OpResult::Miss);
            Ok(None)
        }
        Err(failure) => {
            recorder.fail(id);
            Err(failure)
        }
    }
}

/// One eventual-mode client for a convergence check: `ops` random sets (unique values) and
/// deletes (one in ten) of `keys` through `addr`, each recorded in `writes`. After each set
/// it reads the key back through the same node, which answers from the replica that took the
/// write (its own, or the one owner it forwards the key's group to), and records the version
/// when the value is still its own.
pub fn eventual_writes(
    addr: SocketAddr,
    client: usize,
    keys: &[String],
    ops: usize,
    seed: u64,
    writes: &Mutex<Vec<Write>>,
) {
    let mut rng = StdRng::seed_from_u64(seed * 1000 + client as u64);
    let mut c = McConn::connect(addr, Duration::from_secs(10)).expect("connect");
    for i in 0..ops {
        let key = keys[rng.random_range(0..keys.len())].clone();
        if rng.random_range(0..10) == 0 {
            c.delete(&key).unwrap();
            let (value, version) = (None, None);
            lock(writes).push(Write {
                key,
                value,
                version,
            });
            continue;
        }
        let value = format!("c{client}-{i}").into_bytes();
        c.set(&key, &value).unwrap();
        let version = match c.gets(&key).unwrap() {
            Some((v, cas)) if v == value => Some(Version::from_cas(cas)),
            _ => None,
        };
        lock(writes).push(Write {
            key,
            value: Some(Value(value)),
            version,
        });
    }
}

/// Random sets (unique values), gets, deletes and adds of `keys` through `addr`, each
/// recorded as client `client`: four in ten sets, four gets, one delete, one add.
pub fn random_client(
    addr: SocketAddr,
    client: u32,
    ops: usize,
    keys: &[String],
    seed: u64,
    rec: &Recorder,
) {
    let mut c = McConn::connect(addr, Duration::from_secs(10)).expect("connect");
    let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1000).wrapping_add(u64::from(client)));
    for i in 0..ops {
        let key = &keys[rng.random_range(0..keys.len())];
        let value = format!("c{client}-{i}").into_bytes();
        let kind = match rng.random_range(0..10) {
            0..=3 => OpKind::Set(Value(value)),
            4..=7 => OpKind::Get,
            8 => OpKind::Delete,
            _ => OpKind::Add(Value(value)),
        };
        recorded(rec, client, &mut c, key, kind).unwrap();
    }
}

/// Keys `k0` to `k{n-1}`.
pub fn key_range(n: usize) -> Vec<String> {
    (0..n).map(|k| format!("k{k}")).collect()
}
