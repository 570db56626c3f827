//! The accept loop.
//!
//! [`run`] takes a bound listener, so tests start a server on port 0 and read its address.
//! Each connection is its own task, so an idle or slow client never stalls another. At most
//! `max_connections` are served at once; one more is told `ERROR Too many open connections`
//! and closed, as memcached does. On shutdown the loop stops accepting, every connection
//! finishes the requests it has read and writes their replies, and `run` returns.

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
use crate::engine::Engine;
use crate::peer::{cluster_digest, LinkConfig};
use crate::replication::eventual::{self, EventualOptions};
use crate::replication::{max_frame_bytes, spawn_driver, Eventual, Members};
use crate::stats::Counts;
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

/// What names a cluster on its peer links: the members, the mode and the item size limit,
/// which every member must share.
fn link_config(config: &Config, max_frame_bytes: usize) -> LinkConfig {
    let mut members: Vec<String> = config
        .peers
        .iter()
        .map(|m| format!("{}@{}", m.id.0, m.addr))
        .collect();
    members.sort();
    let mode = format!("{:?}", config.consistency);
    let item = config.item_size_max.to_string();
    let parts = members
        .iter()
        .map(String::as_bytes)
        .chain([mode.as_bytes(), item.as_bytes()]);
    LinkConfig {
        cluster: cluster_digest(parts),
        max_frame_bytes,
        ..LinkConfig::default()
    }
}

/// Serves on `listener` with the datalet `config` names, until `shutdown` is cancelled.
pub async fn run_configured(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    match config.datalet {
        DataletSpec::Memory => {
            let datalet = if is_strong_cluster(&config) {
                MemoryDatalet::replica(limits(&config))
            } else {
                MemoryDatalet::new(limits(&config))
            };
            let datalet = Arc::new(datalet);
            run(listener, config, datalet, Arc::new(SystemClock), shutdown).await
        }
        DataletSpec::Disk(ref dir) => {
            let options = DiskOptions {
                max_batch: config.disk_max_batch,
                ..DiskOptions::default()
            };
            let datalet =
                DiskDatalet::open(dir, limits(&config), options).map_err(std::io::Error::other)?;
            run(
                listener,
                config,
                Arc::new(datalet),
                Arc::new(SystemClock),
                shutdown,
            )
            .await
        }
        DataletSpec::Memcached(ref addr) => {
            // Connects on first use; `run` loads the clock from it first, so a server that is
            // down makes the start fail.
            let options = RemoteOptions {
                connections: config.datalet_connections.unwrap_or(config.threads.max(1)),
                replica: is_strong_cluster(&config),
                ..RemoteOptions::default()
            };
            let datalet = RemoteDatalet::new(addr.clone(), limits(&config), options);
            let clock = Arc::new(SystemClock);
            run(listener, config, Arc::new(datalet), clock, shutdown).await
        }
    }
}

/// Serves memcached clients on `listener`, storing into `datalet`, until `shutdown` is
/// cancelled.
pub async fn run<D: Datalet>(
    listener: TcpListener,
    config: Config,
    datalet: Arc<D>,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let clock_for_cluster = Arc::clone(&clock);
    let mut engine = Engine::start(datalet.clone(), clock)
        .await
        .map_err(std::io::Error::other)?;
    if !config.peers.is_empty() {
        engine = join_cluster(&config, engine, datalet, clock_for_cluster, &shutdown).await?;
    }
    let ctx = Arc::new(Context {
        engine,
        counts: Default::default(),
        config,
        started: Instant::now(),
        curr_connections: AtomicU64::new(0),
    });
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

/// Joins the cluster `config.peers` names: binds the peer address and starts the
/// replication its consistency mode needs.
async fn join_cluster<D: Datalet>(
    config: &Config,
    engine: Engine<D>,
    datalet: Arc<D>,
    clock: Arc<dyn Clock>,
    shutdown: &CancellationToken,
) -> std::io::Result<Engine<D>> {
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
    let all: Vec<(NodeId, SocketAddr)> = config.peers.iter().map(|m| (m.id, m.addr)).collect();
    tracing::info!(
        id = config.id,
        members = all.len(),
        consistency = ?config.consistency,
        "joining the cluster"
    );
    let local_reads = match config.consistency {
        Consistency::Linearizable => config.unsafe_local_reads,
        Consistency::Sequential => true,
        Consistency::Eventual => {
            let peers: Vec<_> = all.iter().copied().filter(|&(id, _)| id != me).collect();
            let options = EventualOptions {
                link: link_config(config, eventual::max_frame_bytes(config.item_size_max)),
                ..EventualOptions::default()
            };
            let node = Eventual::start_with(
                me,
                datalet,
                clock,
                listener,
                &peers,
                shutdown.clone(),
                options,
            );
            return Ok(engine.eventual(node));
        }
    };
    let frame = max_frame_bytes(all.len(), config.item_size_max);
    if frame > FRAME_CAP_BYTES {
        return Err(invalid(format!(
            "--item-size-max {} is too large for a {}-node cluster in this mode: a view change \
             may carry {} MiB in one message, over the {} MiB a peer frame may hold",
            config.item_size_max,
            all.len(),
            frame >> 20,
            FRAME_CAP_BYTES >> 20
        )));
    }
    let link = link_config(config, frame);
    let members = Members { me, all, link };
    let delivered = datalet.load_clock().await.map_err(std::io::Error::other)?;
    let replicator = spawn_driver(
        members,
        listener,
        datalet,
        Timing {
            suspect_after: config.failure_timeout_ms,
            suspect_increment: config.failure_timeout_ms / 2,
            view_change: (config.failure_timeout_ms * 5 / 8).max(10),
            ..Timing::default()
        },
        delivered,
        shutdown.clone(),
    );
    tokio::spawn(force_on_signal(replicator.clone(), shutdown.clone()));
    let memory_limit = config.memory_limit * 1024 * 1024;
    Ok(engine.replicated(replicator, local_reads, memory_limit))
}

/// SIGUSR1 tells a strong-mode node to form the next view from any majority of the nodes:
/// the way back from a lost majority (see [`crate::tob::Tob::force_next_view`]).
async fn force_on_signal(replicator: crate::replication::Replicator, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot listen for SIGUSR1");
        return;
    };
    loop {
        tokio::select! {
            got = usr1.recv() => match got {
                Some(()) => replicator.health().request_force(),
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
