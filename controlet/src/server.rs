//! The accept loop.
//!
//! [`run`] takes a bound listener, so tests start a server on port 0 and read its address.
//! Each connection is its own task, so an idle or slow client never stalls another. At most
//! `max_connections` are served at once; one more is told `ERROR Too many open connections`
//! and closed, as memcached does. On shutdown the loop stops accepting, every connection
//! finishes the requests it has read and writes their replies, and `run` returns.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailorkv_common::{Clock, NodeId, SystemClock};
use tailorkv_datalet::{
    Datalet, DiskDatalet, DiskOptions, Limits, MemoryDatalet, RemoteDatalet, RemoteOptions,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::SignalKind;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd::Context;
use crate::config::{Config, Consistency, DataletSpec};
use crate::connection::serve;
use crate::engine::{serve_forwarded, Cluster, Engine, FORWARD_READ_BYTES};
use crate::membership::node::{
    start_meta, EventualGround, Follower, Groundwork, GroupKind, Order, Stores,
};
use crate::membership::{Members, Membership};
use crate::peer::{cluster_digest, new_session, LinkConfig, Transport};
use crate::placement::{GroupId, Placement};
use crate::replication::eventual::{self, EventualOptions};
use crate::replication::{max_frame_bytes, PeerMsg};
use crate::shard::forward::{ForwardLink, Forwarder};
use crate::shard::mux::{self, Groups, Wire};
use crate::stats::Counts;
use crate::stats::SharedCounts;
use crate::status::Sources;
use crate::tob::Timing;

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The datalet limits a configuration asks for. A local store of a cluster has no memory
/// limit of its own, and never evicts by itself: the engine checks the limit (and evicts,
/// through the order or as versioned deletes) before a write is carried out, and a replica
/// must apply everything the order or its peers deliver (see `Local::replicated` and
/// `Eventual::set_memory_limit`).
pub fn limits(config: &Config) -> Limits {
    let replicated =
        config.is_cluster() && matches!(config.datalet, DataletSpec::Memory | DataletSpec::Disk(_));
    let memory_limit_bytes = match replicated {
        true => usize::MAX,
        false => config.memory_limit * 1024 * 1024,
    };
    Limits {
        memory_limit_bytes,
        item_size_max: config.item_size_max,
        evict: !config.is_cluster() && config.evicts(),
    }
}

/// A cluster in the linearizable or sequential mode: its replicas apply one order.
fn is_strong_cluster(config: &Config) -> bool {
    config.is_cluster()
        && !matches!(
            config.consistency,
            Consistency::Eventual | Consistency::Causal
        )
}

/// The largest peer frame a configuration may need: within what a 4-byte length holds, with
/// room to spare.
const FRAME_CAP_BYTES: usize = 2 << 30;

/// What names a cluster on its peer links: the mode and the item size limit, which every
/// member must share. (The members themselves are the metadata's to say: a node joining
/// knows none of them yet.)
pub fn link_config(config: &Config, max_frame_bytes: usize) -> LinkConfig {
    let mode = format!("{:?}", config.consistency);
    let item = config.item_size_max.to_string();
    let parts = [mode.as_bytes(), item.as_bytes()];
    LinkConfig {
        cluster: cluster_digest(parts),
        max_frame_bytes,
        delay: std::time::Duration::from_millis(config.fault_peer_delay_ms),
        ..LinkConfig::default()
    }
}

/// The client port's TLS (`--tls-cert`, `--tls-key`, `--tls-ca`), if asked for.
fn client_tls(config: &Config) -> std::io::Result<Option<Arc<crate::tls::ClientTls>>> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let files = crate::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: config.tls_ca.clone(),
    };
    crate::tls::ClientTls::load(files).map(Some).map_err(|e| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("client TLS: {e}"))
    })
}

/// Does `action` at every signal `kind` (named `name` in the log) until `shutdown`.
async fn on_signal(
    kind: SignalKind,
    name: &str,
    shutdown: CancellationToken,
    mut action: impl FnMut(),
) {
    let Ok(mut signals) = tokio::signal::unix::signal(kind) else {
        tracing::warn!("cannot listen for {name}");
        return;
    };
    loop {
        tokio::select! {
            got = signals.recv() => match got {
                Some(()) => action(),
                None => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

/// The peer links' TLS (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`), if asked for.
fn peer_tls(config: &Config) -> std::io::Result<Option<Arc<crate::peer::tls::PeerTls>>> {
    let (Some(cert), Some(key), Some(ca)) = (
        &config.peer_tls_cert,
        &config.peer_tls_key,
        &config.peer_tls_ca,
    ) else {
        return Ok(None);
    };
    crate::peer::tls::PeerTls::load(NodeId(config.id), cert, key, ca)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// The peer links' shared secret (`--peer-secret-file`), if asked for.
fn peer_secret(config: &Config) -> std::io::Result<Option<Arc<crate::peer::secret::PeerSecret>>> {
    let Some(path) = &config.peer_secret_file else {
        return Ok(None);
    };
    crate::peer::secret::PeerSecret::load(path)
        .map(|secret| Some(Arc::new(secret)))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// Serves on `listener` with the datalet `config` names, until `shutdown` is cancelled. A
/// node of a sharded cluster has one datalet per replica group it holds: `disk:DIR` keeps
/// group `g`'s in `DIR/group-g` (in `DIR` itself while the cluster has one group).
pub async fn run_configured(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let clock = Arc::new(SystemClock);
    // A node that joins learns the groups later: it keeps each in a directory of its own.
    let sharded = config.join.is_some() || placement(&config)?.groups().count() > 1;
    let quorums = config.read_quorum > 1 || config.write_quorum > 1;
    if quorums && (config.consistency != Consistency::Eventual || !config.is_cluster()) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--read-quorum and --write-quorum are for clusters in the eventual mode",
        ));
    }
    if quorums && config.join.is_none() {
        let replicas = placement(&config)?.replicas();
        let most = usize::from(config.read_quorum.max(config.write_quorum));
        if most > replicas {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "--read-quorum and --write-quorum must be at most the copies of each key \
                     (--replicas, {replicas} here)"
                ),
            ));
        }
    }
    if sharded && config.consistency == Consistency::Causal {
        // Dependencies are tracked within one replica group: across groups, a write could
        // be shown before one in another group it depends on.
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "--consistency causal needs one replica group of every node: give --replicas the \
             number of nodes (or leave it out with 3 nodes or fewer), no --groups above 1, and \
             no --join",
        ));
    }
    match config.datalet {
        DataletSpec::Memory => {
            let stores = MemoryStores {
                strong: is_strong_cluster(&config),
                limits: limits(&config),
            };
            let meta = Some(Arc::new(MemoryDatalet::replica(limits(&config))));
            serve_with(listener, config, Arc::new(stores), meta, clock, shutdown).await
        }
        DataletSpec::Disk(ref dir) => {
            let stores = DiskStores {
                dir: dir.clone(),
                sharded,
                limits: limits(&config),
                options: DiskOptions {
                    max_batch: config.disk_max_batch,
                    ..DiskOptions::default()
                },
            };
            let meta = match config.is_cluster() {
                true => Some(stores.open(crate::membership::META)?),
                false => None,
            };
            serve_with(
                listener,
                config.clone(),
                Arc::new(stores),
                meta,
                clock,
                shutdown,
            )
            .await
        }
        DataletSpec::Memcached(ref addr) => {
            // A node that joins learns the groups when it joins: it can hold the one group
            // of a cluster that has one (another would find no datalet to open).
            if config.join.is_none() && sharded {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a memcached:// datalet holds one replica group: give --replicas the number \
                     of nodes in --peers (every node holds every key)",
                ));
            }
            // Connects on first use; the engine loads the clock from it first, so a server
            // that is down makes the start fail.
            let options = RemoteOptions {
                connections: config.datalet_connections.unwrap_or(config.threads.max(1)),
                replica: is_strong_cluster(&config),
                ..RemoteOptions::default()
            };
            let datalet = Arc::new(RemoteDatalet::new(addr.clone(), limits(&config), options));
            run(listener, config, datalet, clock, shutdown).await
        }
    }
}

/// The memory datalets of a node's groups.
struct MemoryStores {
    strong: bool,
    limits: Limits,
}

impl Stores<MemoryDatalet> for MemoryStores {
    fn open(&self, _: GroupId) -> std::io::Result<Arc<MemoryDatalet>> {
        Ok(Arc::new(match self.strong {
            true => MemoryDatalet::replica(self.limits),
            false => MemoryDatalet::new(self.limits),
        }))
    }

    fn discard(&self, _: GroupId) {}
}

/// The disk datalets of a node's groups: group `g`'s in `DIR/group-g` (in `DIR` itself while
/// the cluster has one group), the metadata group's in `DIR/meta`.
struct DiskStores {
    dir: std::path::PathBuf,
    sharded: bool,
    limits: Limits,
    options: DiskOptions,
}

impl DiskStores {
    fn dir_of(&self, group: GroupId) -> std::path::PathBuf {
        if group == crate::membership::META {
            self.dir.join("meta")
        } else if self.sharded {
            self.dir.join(format!("group-{}", group.0))
        } else {
            self.dir.clone()
        }
    }
}

impl Stores<DiskDatalet> for DiskStores {
    fn open(&self, group: GroupId) -> std::io::Result<Arc<DiskDatalet>> {
        let datalet = DiskDatalet::open(&self.dir_of(group), self.limits, self.options.clone())
            .map_err(std::io::Error::other)?;
        Ok(Arc::new(datalet))
    }

    fn discard(&self, group: GroupId) {
        let dir = self.dir_of(group);
        if dir != self.dir {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove a group's store");
            }
        }
    }
}

/// A datalet given whole to [`run`]: the one group a node holds; another group cannot be
/// opened.
struct GivenStore<D>(std::sync::Mutex<Option<Arc<D>>>);

impl<D: Datalet> Stores<D> for GivenStore<D> {
    fn open(&self, _: GroupId) -> std::io::Result<Arc<D>> {
        self.0.lock().unwrap().take().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "this node holds more than one replica group and was given one datalet",
            )
        })
    }

    fn discard(&self, _: GroupId) {}
}

/// Serves memcached clients on `listener`, storing into `datalet`, until `shutdown` is
/// cancelled. A node that holds more than one replica group needs a datalet for each: see
/// [`run_configured`].
pub async fn run<D: Datalet>(
    listener: TcpListener,
    config: Config,
    datalet: Arc<D>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stores = Arc::new(GivenStore(std::sync::Mutex::new(Some(datalet))));
    // The metadata group of a node on a given datalet lives in memory.
    let meta = Some(Arc::new(MemoryDatalet::replica(Limits::default())));
    serve_with(listener, config, stores, meta, clock, shutdown).await
}

/// Serves on `listener`, opening the datalet of each replica group this node holds from
/// `stores` (`meta`: the metadata group's, in a strong-mode cluster; a single node's own
/// store otherwise, when it is the same kind).
async fn serve_with<D: Datalet, M: Datalet>(
    listener: TcpListener,
    config: Config,
    stores: Arc<dyn Stores<D>>,
    meta: Option<Arc<M>>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let tls = client_tls(&config)?;
    let auth = match &config.auth_file {
        Some(path) => Some(Arc::new(
            crate::auth::AuthFile::load(path)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        )),
        None => None,
    };
    let shared = NodeShared {
        counts: Arc::default(),
        latencies: Arc::default(),
        connections: Arc::default(),
        started: Instant::now(),
        consistency: match config.is_cluster() {
            false => "single".into(),
            true => format!("{:?}", config.consistency).to_lowercase(),
        },
    };
    let (engine, status) = if !config.is_cluster() {
        let engine = Engine::start(stores.open(GroupId(0))?, clock)
            .await
            .map_err(std::io::Error::other)?;
        let status = shared.sources(NodeId(config.id), &engine, None, None);
        (engine, status)
    } else {
        let meta = meta.expect("a cluster node has a metadata store");
        cluster_node(&config, stores, meta, clock, &shared, &shutdown).await?
    };
    let http = match config.http_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}"))
        })?),
        None => None,
    };
    let ctx = Arc::new(Context {
        engine,
        counts: shared.counts,
        latencies: shared.latencies,
        config,
        started: shared.started,
        curr_connections: shared.connections,
        conns: Arc::default(),
        prefixes: Arc::default(),
        status,
        tls,
        auth,
    });
    if let Some(tls) = ctx.tls.clone() {
        // SIGHUP reads the client TLS files again, as `refresh_certs` does.
        let hangup = SignalKind::hangup();
        tokio::spawn(on_signal(hangup, "SIGHUP", shutdown.clone(), move || {
            if let Err(e) = tls.refresh() {
                tracing::warn!(error = %e, "SIGHUP: the TLS files did not load; the old ones stay");
            }
        }));
    }
    if let Some(http) = http {
        tracing::info!(http = %http.local_addr()?, "serving metrics at /metrics");
        tokio::spawn(crate::metrics::serve(
            http,
            Arc::clone(&ctx),
            shutdown.clone(),
        ));
    }
    {
        use std::os::fd::AsRawFd;
        ctx.conns
            .listening(listener.as_raw_fd(), listener.local_addr()?);
    }
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut counts = Counts {
            total_connections: 1,
            ..Counts::default()
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                // Counted before the connection is served, so its own `stats` includes it.
                ctx.counts.absorb(&mut counts);
                let ctx = Arc::clone(&ctx);
                let shutdown = shutdown.clone();
                ctx.curr_connections.fetch_add(1, Ordering::Relaxed);
                tracker.spawn(async move {
                    serve(stream, Arc::clone(&ctx), shutdown).await;
                    ctx.curr_connections.fetch_sub(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
            Err(_) => {
                counts.rejected_connections = 1;
                ctx.counts.absorb(&mut counts);
                tracker.spawn(refuse(stream));
            }
        }
    }
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the shutdown grace period");
    }
    Ok(())
}

/// The cluster's placement: its nodes and `--replicas` (default 3, or every node when fewer).
pub fn placement(config: &Config) -> std::io::Result<Placement> {
    if !config.is_cluster() {
        // A single node holds everything, whatever --replicas says.
        return Ok(Placement::new(&[NodeId(config.id)], 1));
    }
    let ids: Vec<NodeId> = config.peers.iter().map(|m| m.id).collect();
    let replicas = config.replicas.unwrap_or(DEFAULT_REPLICAS.min(ids.len()));
    if let Some(groups) = config.groups {
        // A cluster meant to grow may ask for more copies than it has nodes yet.
        if replicas == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--replicas must be at least 1",
            ));
        }
        return Ok(Placement::with_groups(&ids, replicas, usize::from(groups)));
    }
    if replicas == 0 || replicas > ids.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--replicas {replicas} must be between 1 and the number of nodes ({})",
                ids.len()
            ),
        ));
    }
    Ok(Placement::new(&ids, replicas))
}

/// Copies of each key when `--replicas` is not given (or every node, when fewer).
pub const DEFAULT_REPLICAS: usize = 3;

/// This node's peer address and where it listens for peers: its entry in `--peers`, or
/// `--peer-listen` (what a node joining with `--join` is reached at).
fn peer_addresses(config: &Config) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let me = NodeId(config.id);
    let own = match config.peers.iter().find(|m| m.id == me) {
        Some(own) => own.addr,
        None if config.join.is_some() => {
            let addr = config.peer_listen.ok_or_else(|| {
                invalid(
                    "--join needs --peer-listen: the address the members reach this node at".into(),
                )
            })?;
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(invalid(format!(
                    "--peer-listen {addr} is not an address the members can reach: name the host and port"
                )));
            }
            addr
        }
        None => return Err(invalid(format!("--id {} is not in --peers", config.id))),
    };
    Ok((own, config.peer_listen.unwrap_or(own)))
}

async fn bind_peers(listen: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for peers on {listen}: {e}"),
        )
    })
}

/// The other members `--peers` names, with their peer addresses.
fn other_peers(config: &Config) -> Vec<(NodeId, SocketAddr)> {
    config
        .peers
        .iter()
        .filter(|m| m.id != NodeId(config.id))
        .map(|m| (m.id, m.addr))
        .collect()
}

/// A node of a cluster: binds the peer address, learns the members (saved on disk by an
/// earlier run, asked of a member with `--join`, or from `--peers`), runs the metadata group
/// and every replica group the placement gives it in the cluster's mode, and follows each
/// membership change ([`crate::membership`]).
async fn cluster_node<D: Datalet, M: Datalet>(
    config: &Config,
    stores: Arc<dyn Stores<D>>,
    meta_store: Arc<M>,
    clock: Arc<dyn Clock>,
    shared: &NodeShared,
    shutdown: &CancellationToken,
) -> std::io::Result<(Engine<D>, Arc<Sources<D>>)> {
    let replicas = config
        .replicas
        .unwrap_or(DEFAULT_REPLICAS)
        .max(DEFAULT_REPLICAS);
    let frame = match config.consistency {
        Consistency::Eventual | Consistency::Causal => {
            eventual::max_frame_bytes(config.item_size_max).max(max_frame_bytes(replicas, 64 << 10))
        }
        _ => max_frame_bytes(replicas, config.item_size_max),
    };
    if frame > FRAME_CAP_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "--item-size-max {} is too large for {replicas} replicas in this mode: a view \
                 change may carry {} MiB in one message, over the {} MiB a peer frame may hold",
                config.item_size_max,
                frame >> 20,
                FRAME_CAP_BYTES >> 20
            ),
        ));
    }
    // One budget for every transfer this node sends (`--rebalance-rate`).
    let rebalance = config.rebalance_rate.map(|rate| {
        Arc::new(crate::rate::RateLimit::new(
            rate,
            crate::replication::STATE_CHUNK_BYTES,
        ))
    });
    match config.consistency {
        Consistency::Eventual | Consistency::Causal => {
            let make = |transport, groups| EventualGround {
                me: NodeId(config.id),
                transport,
                groups,
                stores: Arc::clone(&stores),
                clock: Arc::clone(&clock),
                lamport: Arc::default(),
                options: EventualOptions {
                    link: link_config(config, frame),
                    evict: config.evicts(),
                    causal: config.consistency == Consistency::Causal,
                    unsafe_skip_dependencies: config.unsafe_causal_skip_dependencies,
                    read_quorum: usize::from(config.read_quorum),
                    write_quorum: usize::from(config.write_quorum),
                    ..EventualOptions::default()
                },
                rebalance_rate: rebalance.clone(),
                shutdown: shutdown.clone(),
            };
            run_cluster(
                config,
                meta_store,
                clock.clone(),
                shared,
                shutdown,
                frame,
                make,
            )
            .await
        }
        _ => {
            let make = |transport: Transport<Wire<PeerMsg>>, groups| Groundwork {
                me: NodeId(config.id),
                session: transport.session(),
                transport,
                groups,
                stores: Arc::clone(&stores),
                clock: Arc::clone(&clock),
                timing: timing(config),
                local_reads: match config.consistency {
                    Consistency::Linearizable => config.unsafe_local_reads,
                    Consistency::Sequential | Consistency::Eventual | Consistency::Causal => true,
                },
                memory_limit: config.memory_limit * 1024 * 1024,
                evict: config.evicts(),
                rebalance_rate: rebalance.clone(),
                shutdown: shutdown.clone(),
            };
            run_cluster(
                config,
                meta_store,
                clock.clone(),
                shared,
                shutdown,
                frame,
                make,
            )
            .await
        }
    }
}

/// The strong modes' timing, from `--failure-timeout-ms`.
fn timing(config: &Config) -> Timing {
    Timing {
        suspect_after: config.failure_timeout_ms,
        suspect_increment: config.failure_timeout_ms / 2,
        view_change: (config.failure_timeout_ms * 5 / 8).max(10),
        ..Timing::default()
    }
}

/// [`cluster_node`] for data groups of kind `K`, made by `make` from the node's transport and
/// mux registry.
#[allow(clippy::too_many_arguments)]
async fn run_cluster<D, M, W, K>(
    config: &Config,
    meta_store: Arc<M>,
    clock: Arc<dyn Clock>,
    shared: &NodeShared,
    shutdown: &CancellationToken,
    frame: usize,
    make: impl FnOnce(Transport<Wire<W>>, Groups<W>) -> K,
) -> std::io::Result<(Engine<D>, Arc<Sources<D>>)>
where
    D: Datalet,
    M: Datalet,
    W: crate::membership::node::WireMessage,
    K: GroupKind<D>,
{
    let me = NodeId(config.id);
    let (own, listen) = peer_addresses(config)?;
    let listener = bind_peers(listen).await?;
    let session = new_session();
    let (transport, inbox) = Transport::<Wire<W>>::start(
        me,
        session,
        listener,
        &other_peers(config),
        LinkConfig {
            tls: peer_tls(config)?,
            secret: peer_secret(config)?,
            ..link_config(config, frame)
        },
        shutdown.clone(),
    );
    let groups = Groups::default();
    let mut stand_in = None;
    if config.consistency == Consistency::Eventual && config.write_quorum > 1 {
        // Any node may stand in for a member of a group that did not answer a quorum write.
        let held = mux::StandIn::start(transport.clone(), shutdown.clone());
        stand_in = Some(held.counts());
        groups.stand_in_with(held);
    }
    let meta_groups = Groups::<PeerMsg>::default();
    let (forwarded, incoming) = tokio::sync::mpsc::unbounded_channel();
    let (joins, mut join_answers) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(mux::run(
        inbox,
        groups.clone(),
        meta_groups.clone(),
        forwarded,
        joins,
        shutdown.clone(),
    ));
    let saved = crate::membership::saved(&*meta_store, clock.now()).await;
    let (members, joined) = match (saved, config.join) {
        (Some(saved), _) => {
            tracing::info!(epoch = saved.epoch(), "members as saved by the last run");
            (saved, false)
        }
        (None, Some(seed)) => {
            let members = crate::membership::node::ask_to_join(
                &transport,
                &mut join_answers,
                seed,
                me,
                own,
                shutdown,
            )
            .await?;
            (members, true)
        }
        (None, None) => {
            let addrs = config.peers.iter().map(|m| (m.id, m.addr)).collect();
            (Members::initial(placement(config)?, addrs), false)
        }
    };
    for (&id, &addr) in &members.addrs {
        transport.add_peer(id, addr);
    }
    let placement = Arc::new(members.placement.clone());
    let held = placement.groups_of(me);
    tracing::info!(
        id = config.id,
        epoch = members.epoch(),
        nodes = placement.nodes().len(),
        replicas = placement.replicas(),
        groups = ?held,
        partitions = placement.share(me),
        consistency = ?config.consistency,
        "joining the cluster"
    );
    let order = Order {
        me,
        session,
        clock: Arc::clone(&clock),
        timing: timing(config),
        rebalance_rate: None,
        local_reads: false,
        evict: false,
        shutdown: shutdown.clone(),
    };
    let nodes = placement.nodes().to_vec();
    let meta_local = start_meta(
        &order,
        transport.clone(),
        &meta_groups,
        (nodes, joined),
        meta_store,
    )
    .await?;
    let meta = meta_local
        .replicator()
        .expect("the metadata group is ordered")
        .clone();
    let membership = Membership::new(me, meta_local, members.clone());
    if !joined {
        let membership = Arc::clone(&membership);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // Once the first view forms: the members as `--peers` names them, unless the
            // metadata holds some already.
            while !shutdown.is_cancelled() {
                match membership.seed(&members).await {
                    Ok(()) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
    }
    tokio::spawn(Arc::clone(&membership).watch(shutdown.clone()));
    tokio::spawn(crate::membership::node::answer_joins(
        Arc::clone(&membership),
        transport.clone(),
        join_answers,
        shutdown.clone(),
    ));
    if let Some(secs) = config.dead_after {
        tokio::spawn(crate::membership::node::remove_the_dead(
            Arc::clone(&membership),
            meta.clone(),
            Duration::from_secs(secs),
            shutdown.clone(),
        ));
    }
    let memory_limit = config.memory_limit * 1024 * 1024;
    let kind = make(transport.clone(), groups);
    let share = memory_limit / held.len().max(1);
    let mut started = BTreeMap::new();
    // A node that has just joined is new to its groups: the follower starts them, one copy
    // moving in at a time. Otherwise the groups it held start now.
    for &group in held.iter().filter(|_| !joined) {
        let members = placement.members(group).to_vec();
        started.insert(group, kind.start_held(group, members, share).await?);
    }
    let locals = started
        .iter()
        .map(|(&g, (local, _))| (g, Arc::clone(local)))
        .collect();
    let link: Arc<dyn ForwardLink> = Arc::new(transport.clone());
    let forwarder = Arc::new(Forwarder::new(me, Arc::clone(&link)));
    let cluster = Cluster {
        forwarder: Arc::clone(&forwarder),
        keys_per_forward: (FORWARD_READ_BYTES / config.item_size_max).max(1),
        stand_in,
    };
    let engine = Engine::new(locals, Some(placement), Some(cluster), clock);
    let admin: Arc<dyn crate::membership::Admin> = membership.clone();
    let parts = (link, Arc::clone(&forwarder));
    let status = shared.sources(me, &engine, Some(parts), Some(admin));
    tokio::spawn(serve_forwarded(
        Arc::clone(&status),
        forwarder,
        incoming,
        shutdown.clone(),
    ));
    tokio::spawn(on_signal(
        SignalKind::user_defined1(),
        "SIGUSR1",
        shutdown.clone(),
        force_views(engine.shape_cell(), meta.clone()),
    ));
    let add_peer = Box::new(move |id, addr| transport.add_peer(id, addr));
    let follower = Follower::new(
        me,
        kind,
        add_peer,
        meta_groups,
        memory_limit,
        shutdown.clone(),
        (membership, meta),
        engine.shape_cell(),
        started,
    );
    tokio::spawn(follower.run());
    Ok((engine, status))
}

/// A cluster node's peer links and forwarder, for its status.
type ClusterParts = (Arc<dyn ForwardLink>, Arc<Forwarder>);

/// What every part of a node that reports on it shares: its client counters, open
/// connections, start time and mode.
struct NodeShared {
    counts: Arc<SharedCounts>,
    latencies: Arc<crate::stats::SharedLatencies>,
    connections: Arc<AtomicU64>,
    started: Instant,
    consistency: String,
}

impl NodeShared {
    /// Where `me`'s status is read from; in a cluster, with its peer links, forwarder and
    /// membership.
    fn sources<D: Datalet>(
        &self,
        me: NodeId,
        engine: &Engine<D>,
        cluster: Option<ClusterParts>,
        membership: Option<Arc<dyn crate::membership::Admin>>,
    ) -> Arc<Sources<D>> {
        let (link, forwarder) = match cluster {
            Some((l, f)) => (Some(l), Some(f)),
            None => (None, None),
        };
        Arc::new(Sources {
            me,
            consistency: self.consistency.clone(),
            started: self.started,
            counts: Arc::clone(&self.counts),
            latencies: Arc::clone(&self.latencies),
            connections: Arc::clone(&self.connections),
            shape: engine.shape_cell(),
            link,
            forwarder,
            membership,
        })
    }
}

/// SIGUSR1 tells a strong-mode node to form the next view from any majority of the nodes:
/// the way back from a lost majority (see [`crate::tob::Tob::force_next_view`]).
fn force_views<D: Datalet>(
    shape: crate::engine::ShapeCell<D>,
    meta: crate::replication::Replicator,
) -> impl FnMut() {
    move || {
        meta.health().request_force();
        let shape = Arc::clone(&shape.read().unwrap());
        for local in shape.locals.values() {
            if let Some(health) = local.cluster_health() {
                health.request_force();
            }
        }
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"ERROR Too many open connections\r\n")
        .await;
    let _ = stream.shutdown().await;
}
