//! `loadgen`: a load generator for memcached-compatible servers, tailorkv's controlet among
//! them. It speaks the classic text protocol, or memcached 1.6's meta commands with
//! `--protocol meta`, through `tailorkv_common::client`, the protocol's client side, and
//! shares no code with the server's side of it, so it measures the server and not a shared
//! bug.
//!
//! ```text
//! loadgen --target 127.0.0.1:11211 --connections 50 --get-ratio 0.9 --preload --duration 10
//! loadgen --target 127.0.0.1:7001,127.0.0.1:7002 --pipeline 16 --key-dist zipfian --json
//! loadgen --target 127.0.0.1:11211 --tls-ca certs/ca.pem   # a TLS client port
//! loadgen --target 127.0.0.1:11211 --protocol meta         # mg and ms instead of get and set
//! ```
//!
//! # Layout
//!
//! - `cli`: the command line.
//! - `reply`: the two requests loadgen sends, the two protocols it can send them in, and what
//!   their replies mean to it.
//! - `keys`: the key space and its uniform or zipfian distribution, and the filter that keeps
//!   the keys a node of a sharded cluster holds (or does not).
//! - `value`: self-describing values: each names the write that made it.
//! - `verify`: the run's [`verify::Ledger`], which judges whether a value read back could have
//!   been written by this run.
//! - `run`: what connections share: settings, ledger, request budget, schedule.
//! - `source`: what a connection sends next (preload, then the get/set mix).
//! - `conn`: one connection's pipelined driver.
//! - `stats`, `report`: counting, HDR latency histograms, and the text or JSON report.
//!
//! # Run
//!
//! All connections are opened first (connection `i` to target `i mod targets`); failing to
//! open one ends the run before any load. Each connection is one task: it preloads its share of
//! keys (with --preload), waits at a barrier for the others, then sends the mix until the
//! duration or the request budget runs out, and waits for its last replies. The tasks'
//! statistics are merged at the end.
//!
//! Caveat: loadgen is closed-loop: a connection sends only when a reply frees a pipeline slot,
//! so a stalled server also slows the offered load, and tail latencies under overload are
//! understated (coordinated omission).

mod cli;
mod conn;
mod cpu;
mod keys;
mod reply;
mod report;
mod run;
mod source;
mod stats;
mod value;
mod verify;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::Parser;
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio_util::either::Either;

use crate::cli::Args;
use crate::conn::Conn;
use crate::keys::KeySpace;
use crate::report::Report;
use crate::run::Run;
use crate::source::{Mix, Preload};
use crate::stats::Stats;

/// Exit status when the run finished but some request failed or some value was wrong.
const EXIT_ERRORS: u8 = 2;

/// How long opening one connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads as usize);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(anyhow!(error).context("cannot start the runtime")),
    };
    let json = args.json;
    match runtime.block_on(run(args)) {
        Ok(report) => {
            match json {
                true => println!("{}", report.to_json()),
                false => print!("{}", report.to_text()),
            }
            match report.errors.total {
                0 => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_ERRORS),
            }
        }
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("loadgen: {error:#}");
    ExitCode::FAILURE
}

/// Runs the whole load and reports it.
async fn run(args: Args) -> anyhow::Result<Report> {
    let keys = match args.owners().map_err(|e| anyhow!(e))? {
        None => KeySpace::new(&args.key_prefix, args.keys, args.key_dist, args.zipf_theta),
        Some(owners) => KeySpace::filtered(
            &args.key_prefix,
            args.keys,
            args.key_dist,
            args.zipf_theta,
            |key| owners.keeps(key),
        ),
    }
    .map_err(|e| anyhow!(e))?;
    cpu::check(&args.cpu_of).map_err(|e| anyhow!(e).context("--cpu-of"))?;
    let addrs = resolve(&args.targets).await?;
    let tls = match &args.tls_ca {
        Some(ca) => Some(tls_connector(ca)?),
        None => None,
    };
    let conns = connect_all(&addrs, args.connections, tls.as_ref()).await?;
    let run_id: u32 = rand::random();
    let seed = args.seed.unwrap_or_else(rand::random);
    let run = Arc::new(Run::new(args, keys, run_id, seed));

    let started = Instant::now();
    let barrier = Arc::new(Barrier::new(conns.len()));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(connection(conn, run.clone(), barrier.clone())))
        .collect();
    let mut total = Stats::default();
    let mut per_target: Vec<(u32, Stats)> = vec![(0, Stats::default()); addrs.len()];
    for task in tasks {
        let (target, stats) = task.await.context("a connection task failed")?;
        total.merge(&stats);
        per_target[target].0 += 1;
        per_target[target].1.merge(&stats);
    }
    let cpu_end = cpu::Snapshot::take(&run.args.cpu_of);

    let schedule = run.schedule();
    let preload_secs = (schedule.load_start - started).as_secs_f64();
    let measured_secs = total
        .last_measured
        .map_or(0.0, |end| (end - schedule.measure_start).as_secs_f64());
    let identity = (run_id, seed);
    let mut report = Report::new(
        &run.args,
        identity,
        &total,
        &per_target,
        preload_secs,
        measured_secs,
    );
    if run.keys.count() != run.args.keys {
        report.config.keys_kept = Some(run.keys.count());
    }
    if !run.args.cpu_of.is_empty() {
        let start = run
            .cpu_start
            .get()
            .ok_or_else(|| anyhow!("the measured window never started"))?;
        report.cpu = Some(start.until(&cpu_end, report.ops).map_err(|e| anyhow!(e))?);
    }
    Ok(report)
}

/// One connection's whole run: preload its share, wait for the others, load, and hand back
/// its target and statistics.
async fn connection(mut conn: Conn, run: Arc<Run>, barrier: Arc<Barrier>) -> (usize, Stats) {
    let mut stats = Stats::default();
    if run.args.preload {
        let mut share = Preload::new(conn.id, run.args.connections, run.keys.count());
        conn.drive(&mut share, &run, &mut stats).await;
    }
    let leader = barrier.wait().await.is_leader();
    // The first connection past the barrier starts the clock.
    let measure_start = run.schedule().measure_start;
    if leader && !run.args.cpu_of.is_empty() {
        if Instant::now() >= measure_start {
            let _ = run.cpu_start.set(cpu::Snapshot::take(&run.args.cpu_of));
        } else {
            // After the warmup.
            let run = Arc::clone(&run);
            tokio::spawn(async move {
                tokio::time::sleep_until(measure_start.into()).await;
                let _ = run.cpu_start.set(cpu::Snapshot::take(&run.args.cpu_of));
            });
        }
    }
    let mut mix = Mix::new(&run, conn.id);
    conn.drive(&mut mix, &run, &mut stats).await;
    (conn.target, stats)
}

/// The address of each `HOST:PORT` target.
async fn resolve(targets: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(targets.len());
    for target in targets {
        let addr = tokio::net::lookup_host(target.as_str())
            .await
            .with_context(|| format!("cannot resolve target {target:?} (HOST:PORT)"))?
            .next()
            .ok_or_else(|| anyhow!("target {target:?} has no address"))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

/// A TLS client trusting the CA in `ca`.
fn tls_connector(ca: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use tailorkv_controlet::peer::tls::{certs_from_pem, provider};
    let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(&pem, &ca.display().to_string())? {
        roots.add(cert)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Opens `count` connections, connection `i` to `addrs[i % addrs.len()]`, over TLS with `tls`.
async fn connect_all(
    addrs: &[SocketAddr],
    count: u32,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> anyhow::Result<Vec<Conn>> {
    let mut conns = Vec::with_capacity(count as usize);
    for id in 0..count {
        let target = id as usize % addrs.len();
        let addr = addrs[target];
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connecting to {addr} timed out"))?
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream = match tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::from(addr.ip());
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, stream))
                    .await
                    .map_err(|_| anyhow!("TLS handshake with {addr} timed out"))?
                    .with_context(|| format!("TLS handshake with {addr}"))?;
                Either::Right(stream)
            }
            None => Either::Left(stream),
        };
        conns.push(Conn::new(id, target, stream));
    }
    Ok(conns)
}
