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
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cmd::Context;
use crate::config::{Config, Consistency, DataletSpec};
use crate::connection::serve;
use crate::engine::{serve_forwarded, Cluster, Engine, Local, Locals, FORWARD_READ_BYTES};
use crate::peer::{cluster_digest, new_session, LinkConfig, Transport};
use crate::placement::{GroupId, Placement};
use crate::replication::eventual::{self, EventualOptions};
use crate::replication::{max_frame_bytes, Eventual, GroupDriver, PeerMsg};
use crate::shard::forward::{ForwardLink, Forwarder};
use crate::shard::mux::{self, GroupLink, Groups, Wire};
use crate::stats::Counts;
use crate::stats::SharedCounts;
use crate::status::Sources;
use crate::tob::Timing;

/// How long shutdown waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The datalet limits a configuration asks for. A local store of a strong-mode cluster has
/// no memory limit of its own: the engine checks the limit before a write is proposed, and a
/// replica must apply everything the order delivers (see `Engine::replicated`).
pub fn limits(config: &Config) -> Limits {
    let memory_limit_bytes = match config.datalet {
        DataletSpec::Memory | DataletSpec::Disk(_) if is_strong_cluster(config) => usize::MAX,
        _ => config.memory_limit * 1024 * 1024,
    };
    Limits {
        memory_limit_bytes,
        item_size_max: config.item_size_max,
    }
}

/// A cluster in the linearizable or sequential mode: its replicas apply one order.
fn is_strong_cluster(config: &Config) -> bool {
    !config.peers.is_empty() && config.consistency != Consistency::Eventual
}

/// The largest peer frame a configuration may need: within what a 4-byte length holds, with
/// room to spare.
const FRAME_CAP_BYTES: usize = 2 << 30;

/// What names a cluster on its peer links: the members, the mode, the item size limit and the
/// replicas, which every member must share.
fn link_config(config: &Config, max_frame_bytes: usize) -> LinkConfig {
    let mut members: Vec<String> = config
        .peers
        .iter()
        .map(|m| format!("{}@{}", m.id.0, m.addr))
        .collect();
    members.sort();
    let mode = format!("{:?}", config.consistency);
    let item = config.item_size_max.to_string();
    let replicas = placement(config).map_or(0, |p| p.replicas()).to_string();
    let parts = members.iter().map(String::as_bytes).chain([
        mode.as_bytes(),
        item.as_bytes(),
        replicas.as_bytes(),
    ]);
    LinkConfig {
        cluster: cluster_digest(parts),
        max_frame_bytes,
        ..LinkConfig::default()
    }
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
    let sharded = placement(&config)?.groups().count() > 1;
    match config.datalet {
        DataletSpec::Memory => {
            let strong = is_strong_cluster(&config);
            let open = |_: GroupId, held: usize| {
                let limits = limits_shared(&config, held);
                Ok(Arc::new(if strong {
                    MemoryDatalet::replica(limits)
                } else {
                    MemoryDatalet::new(limits)
                }))
            };
            serve_with(listener, config.clone(), open, clock, shutdown).await
        }
        DataletSpec::Disk(ref dir) => {
            let options = DiskOptions {
                max_batch: config.disk_max_batch,
                ..DiskOptions::default()
            };
            let open = |group: GroupId, held: usize| {
                let dir = match sharded {
                    true => dir.join(format!("group-{}", group.0)),
                    false => dir.clone(),
                };
                let options = options.clone();
                let datalet = DiskDatalet::open(&dir, limits_shared(&config, held), options)
                    .map_err(std::io::Error::other)?;
                Ok(Arc::new(datalet))
            };
            serve_with(listener, config.clone(), open, clock, shutdown).await
        }
        DataletSpec::Memcached(ref addr) => {
            if sharded {
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

/// [`limits`] for one of `held` replica groups on a node: the node's memory limit is shared
/// equally by the groups it holds.
fn limits_shared(config: &Config, held: usize) -> Limits {
    let mut limits = limits(config);
    if limits.memory_limit_bytes != usize::MAX {
        limits.memory_limit_bytes /= held.max(1);
    }
    limits
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
    let mut one = Some(datalet);
    let open = move |_: GroupId, _: usize| {
        one.take().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "this node holds more than one replica group and was given one datalet",
            )
        })
    };
    serve_with(listener, config, open, clock, shutdown).await
}

/// Serves on `listener`, opening the datalet of each replica group this node holds with
/// `open(group, groups held)`.
async fn serve_with<D: Datalet>(
    listener: TcpListener,
    config: Config,
    mut open: impl FnMut(GroupId, usize) -> std::io::Result<Arc<D>>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let shared = NodeShared {
        counts: Arc::default(),
        latencies: Arc::default(),
        connections: Arc::default(),
        started: Instant::now(),
        consistency: match config.peers.is_empty() {
            true => "single".into(),
            false => format!("{:?}", config.consistency).to_lowercase(),
        },
    };
    let (engine, status) = if config.peers.is_empty() {
        let engine = Engine::start(open(GroupId(0), 1)?, clock)
            .await
            .map_err(std::io::Error::other)?;
        let status = shared.sources(NodeId(config.id), &engine, None);
        (engine, status)
    } else {
        join_cluster(&config, &mut open, clock, &shared, &shutdown).await?
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
        status,
    });
    if let Some(http) = http {
        tracing::info!(http = %http.local_addr()?, "serving metrics at /metrics");
        tokio::spawn(crate::metrics::serve(
            http,
            Arc::clone(&ctx),
            shutdown.clone(),
        ));
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
    if config.peers.is_empty() {
        // A single node holds everything, whatever --replicas says.
        return Ok(Placement::new(&[NodeId(config.id)], 1));
    }
    let ids: Vec<NodeId> = config.peers.iter().map(|m| m.id).collect();
    let replicas = config.replicas.unwrap_or(DEFAULT_REPLICAS.min(ids.len()));
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

/// Joins the cluster `config.peers` names: binds the peer address, starts the replication of
/// every replica group this node holds in the cluster's mode, and the forwarding of requests
/// for the keys it does not hold.
async fn join_cluster<D: Datalet>(
    config: &Config,
    open: &mut impl FnMut(GroupId, usize) -> std::io::Result<Arc<D>>,
    clock: Arc<dyn Clock>,
    shared: &NodeShared,
    shutdown: &CancellationToken,
) -> std::io::Result<(Engine<D>, Arc<Sources<D>>)> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let me = NodeId(config.id);
    let own = config
        .peers
        .iter()
        .find(|m| m.id == me)
        .ok_or_else(|| invalid(format!("--id {} is not in --peers", config.id)))?;
    let listen = config.peer_listen.unwrap_or(own.addr);
    let listener = TcpListener::bind(listen).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen for peers on {listen}: {e}"),
        )
    })?;
    let placement = Arc::new(placement(config)?);
    let held = placement.groups_of(me);
    let peers: Vec<(NodeId, SocketAddr)> = config
        .peers
        .iter()
        .filter(|m| m.id != me)
        .map(|m| (m.id, m.addr))
        .collect();
    tracing::info!(
        id = config.id,
        nodes = placement.nodes().len(),
        replicas = placement.replicas(),
        groups = ?held,
        partitions = placement.share(me),
        consistency = ?config.consistency,
        "joining the cluster"
    );
    let session = new_session();
    let mut locals = BTreeMap::new();
    let memory_share = config.memory_limit * 1024 * 1024 / held.len();
    let local_reads = match config.consistency {
        Consistency::Linearizable => config.unsafe_local_reads,
        Consistency::Sequential => true,
        Consistency::Eventual => {
            let options = EventualOptions {
                link: link_config(config, eventual::max_frame_bytes(config.item_size_max)),
                ..EventualOptions::default()
            };
            let (transport, inbox) = Transport::<Wire<eventual::Message>>::start(
                me,
                session,
                listener,
                &peers,
                options.link,
                shutdown.clone(),
            );
            let mut groups = Groups::default();
            let lamport = Arc::default();
            for &group in &held {
                let members = placement.members(group).to_vec();
                let group_inbox = groups.add(group, members.clone());
                let others: Vec<NodeId> = members.into_iter().filter(|&m| m != me).collect();
                let datalet = open(group, held.len())?;
                let link = GroupLink::new(transport.clone(), group);
                let node = Eventual::start_in(
                    me,
                    Arc::clone(&datalet),
                    (Arc::clone(&clock), Arc::clone(&lamport)),
                    (link, group_inbox),
                    &others,
                    shutdown.clone(),
                    options,
                );
                let local = Local::start(datalet, Arc::clone(&clock))
                    .await
                    .map_err(std::io::Error::other)?;
                locals.insert(group, local.eventual(node));
            }
            let node = Node {
                me,
                transport,
                inbox,
                groups,
                placement,
            };
            return Ok(node.serve(config.item_size_max, locals, clock, shared, shutdown));
        }
    };
    let replicas = placement.replicas();
    let frame = max_frame_bytes(replicas, config.item_size_max);
    if frame > FRAME_CAP_BYTES {
        return Err(invalid(format!(
            "--item-size-max {} is too large for {replicas} replicas in this mode: a view change \
             may carry {} MiB in one message, over the {} MiB a peer frame may hold",
            config.item_size_max,
            frame >> 20,
            FRAME_CAP_BYTES >> 20
        )));
    }
    let (transport, inbox) = Transport::<Wire<PeerMsg>>::start(
        me,
        session,
        listener,
        &peers,
        link_config(config, frame),
        shutdown.clone(),
    );
    let timing = Timing {
        suspect_after: config.failure_timeout_ms,
        suspect_increment: config.failure_timeout_ms / 2,
        view_change: (config.failure_timeout_ms * 5 / 8).max(10),
        ..Timing::default()
    };
    let mut groups = Groups::default();
    let mut replicators = Vec::new();
    for &group in &held {
        let members = placement.members(group).to_vec();
        let group_inbox = groups.add(group, members.clone());
        let datalet = open(group, held.len())?;
        let delivered = datalet.load_clock().await.map_err(std::io::Error::other)?;
        let driver = GroupDriver {
            me,
            incarnation: session,
            group,
            members,
        };
        let link = GroupLink::new(transport.clone(), group);
        let replicator = driver.spawn(
            link,
            group_inbox,
            Arc::clone(&datalet),
            timing,
            delivered,
            shutdown.clone(),
        );
        replicators.push(replicator.clone());
        let local = Local::start(datalet, Arc::clone(&clock))
            .await
            .map_err(std::io::Error::other)?;
        locals.insert(
            group,
            local.replicated(replicator, local_reads, memory_share),
        );
    }
    tokio::spawn(force_on_signal(replicators, shutdown.clone()));
    let node = Node {
        me,
        transport,
        inbox,
        groups,
        placement,
    };
    Ok(node.serve(config.item_size_max, locals, clock, shared, shutdown))
}

/// A node's peer links and the groups it holds, before it serves.
struct Node<M> {
    me: NodeId,
    transport: Transport<Wire<M>>,
    inbox: crate::peer::Inbox<Wire<M>>,
    groups: Groups<M>,
    placement: Arc<Placement>,
}

impl<M> Node<M>
where
    M: serde::Serialize + serde::de::DeserializeOwned + crate::peer::Weigh + Send + Sync + 'static,
{
    /// Starts handing peer messages to the groups and serving forwarded requests; the engine
    /// over the groups `locals`.
    fn serve<D: Datalet>(
        self,
        item_size_max: usize,
        locals: Locals<D>,
        clock: Arc<dyn Clock>,
        shared: &NodeShared,
        shutdown: &CancellationToken,
    ) -> (Engine<D>, Arc<Sources<D>>) {
        let (forwarded, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(mux::run(
            self.inbox,
            self.groups,
            forwarded,
            shutdown.clone(),
        ));
        let link: Arc<dyn ForwardLink> = Arc::new(self.transport);
        let forwarder = Arc::new(Forwarder::new(self.me, Arc::clone(&link)));
        let cluster = Cluster {
            placement: Arc::clone(&self.placement),
            forwarder: Arc::clone(&forwarder),
            keys_per_forward: (FORWARD_READ_BYTES / item_size_max).max(1),
        };
        let engine = Engine::new(locals, Some(cluster), clock);
        let cluster_parts = (self.placement, link, Arc::clone(&forwarder));
        let status = shared.sources(self.me, &engine, Some(cluster_parts));
        tokio::spawn(serve_forwarded(
            Arc::clone(&status),
            forwarder,
            incoming,
            shutdown.clone(),
        ));
        (engine, status)
    }
}

/// A cluster node's placement, peer links and forwarder, for its status.
type ClusterParts = (Arc<Placement>, Arc<dyn ForwardLink>, Arc<Forwarder>);

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
    /// Where `me`'s status is read from; in a cluster, with its placement, peer links and
    /// forwarder.
    fn sources<D: Datalet>(
        &self,
        me: NodeId,
        engine: &Engine<D>,
        cluster: Option<ClusterParts>,
    ) -> Arc<Sources<D>> {
        let (placement, link, forwarder) = match cluster {
            Some((p, l, f)) => (Some(p), Some(l), Some(f)),
            None => (None, None, None),
        };
        Arc::new(Sources {
            me,
            consistency: self.consistency.clone(),
            started: self.started,
            counts: Arc::clone(&self.counts),
            latencies: Arc::clone(&self.latencies),
            connections: Arc::clone(&self.connections),
            locals: Arc::clone(engine.locals()),
            placement,
            link,
            forwarder,
        })
    }
}

/// SIGUSR1 tells a strong-mode node to form the next view from any majority of the nodes:
/// the way back from a lost majority (see [`crate::tob::Tob::force_next_view`]).
async fn force_on_signal(
    replicators: Vec<crate::replication::Replicator>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1");
        return;
    };
    loop {
        tokio::select! {
            got = usr1.recv() => match got {
                Some(()) => {
                    for replicator in &replicators {
                        replicator.health().request_force();
                    }
                }
                None => return,
            },
            () = shutdown.cancelled() => return,
        }
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream
        .write_all(b"ERROR Too many open connections\r\n")
        .await;
    let _ = stream.shutdown().await;
}
