//! `cluster`: starts an N-node tailorkv cluster on loopback in one command, prints the
//! address clients connect to on each node, and stops every node on Ctrl-C (or SIGTERM).
//!
//! ```text
//! cargo run --release -p tailorkv-controlet --bin cluster -- --nodes 3 --consistency linearizable
//! cargo run --release -p tailorkv-controlet --bin cluster -- --nodes 6 --replicas 3
//! ```
//!
//! Each node is a `controlet` process (the binary next to this one) with the same `--peers`
//! list. Node `i` serves clients on `--client-port + i - 1` and its peers on
//! `--peer-port + i - 1`.
//!
//! `--faults latency=5ms,loss=1%,crash-every=30s` makes the network and the nodes misbehave
//! while the cluster serves, so anyone can watch what each mode does then (see [`Faults`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Starts a local tailorkv cluster.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "cluster",
    version,
    about = "Starts a tailorkv cluster on loopback"
)]
struct Args {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,

    /// Copies of each key: each key is held by a replica group of this many nodes, and any
    /// node serves any key. Default: 3, or every node when there are fewer.
    #[arg(long)]
    replicas: Option<u16>,

    /// linearizable, sequential, causal or eventual.
    #[arg(long, default_value = "linearizable")]
    consistency: String,

    /// Client port of node 1; node i uses this + i - 1.
    #[arg(long, default_value_t = 11211)]
    client_port: u16,

    /// Peer port of node 1; node i uses this + i - 1.
    #[arg(long, default_value_t = 7101)]
    peer_port: u16,

    /// HTTP port of node 1 (Prometheus metrics at /metrics); node i uses this + i - 1. Off
    /// unless given.
    #[arg(long)]
    http_port: Option<u16>,

    /// `memory`, or `disk:DIR` (node i stores in DIR/node-i).
    #[arg(long, default_value = "memory")]
    datalet: String,

    /// Faults to inject while serving, comma-separated: `latency=5ms` (every peer message
    /// is held this long before its receiver acts on it), `loss=1%` (that share of the
    /// packets between nodes is dropped, by iptables: needs root), `crash-every=30s` (every
    /// 30 s one node, each in turn, is killed with SIGKILL and restarted `down=2s` later).
    /// Clients' traffic is never touched.
    #[arg(long, value_parser = Faults::parse)]
    faults: Option<Faults>,

    /// More flags for every controlet, after `--` (e.g. `-- --memory-limit 1024`).
    #[arg(last = true)]
    extra: Vec<String>,
}

/// What `--faults` asks for.
#[derive(Clone, Debug, Default, PartialEq)]
struct Faults {
    latency: Option<Duration>,
    /// Percent of peer packets dropped, in (0, 100], as the user wrote it.
    loss: Option<f64>,
    crash_every: Option<Duration>,
    /// How long a crashed node stays down.
    down: Duration,
}

impl Faults {
    fn parse(spec: &str) -> Result<Faults, String> {
        let mut faults = Faults {
            down: Duration::from_secs(2),
            ..Faults::default()
        };
        for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("`{item}`: expected NAME=VALUE"))?;
            match name {
                "latency" => faults.latency = Some(duration(value)?),
                "loss" => {
                    let percent: f64 = value
                        .strip_suffix('%')
                        .ok_or_else(|| format!("loss `{value}`: a percentage, like 1%"))?
                        .parse()
                        .map_err(|_| format!("loss `{value}`: not a number"))?;
                    if !(percent > 0.0 && percent <= 100.0) {
                        return Err(format!("loss `{value}`: must be above 0% and at most 100%"));
                    }
                    faults.loss = Some(percent);
                }
                "crash-every" => faults.crash_every = Some(duration(value)?),
                "down" => faults.down = duration(value)?,
                _ => {
                    return Err(format!(
                        "unknown fault `{name}`: latency, loss, crash-every or down"
                    ))
                }
            }
        }
        if faults.latency.is_some_and(|l| l > Duration::from_secs(60)) {
            return Err("latency: at most 60s".into());
        }
        if faults.crash_every.is_some_and(|e| e.is_zero()) {
            return Err("crash-every: must be above 0".into());
        }
        Ok(faults)
    }
}

/// `5ms`, `2s`: a whole number of milliseconds or seconds.
fn duration(value: &str) -> Result<Duration, String> {
    let parse = |n: &str| {
        n.parse::<u64>()
            .map_err(|_| format!("`{value}`: a whole number with ms or s, like 5ms or 2s"))
    };
    if let Some(ms) = value.strip_suffix("ms") {
        Ok(Duration::from_millis(parse(ms)?))
    } else if let Some(s) = value.strip_suffix('s') {
        Ok(Duration::from_secs(parse(s)?))
    } else {
        Err(format!("`{value}`: give a unit, like 5ms or 2s"))
    }
}

fn controlet_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("controlet");
    if !bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release -p tailorkv-controlet)",
            bin.display()
        );
    }
    Ok(bin)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let replicas = args.replicas.unwrap_or(args.nodes.min(3));
    if replicas == 0 || replicas > args.nodes {
        bail!("--replicas must be between 1 and --nodes");
    }
    let bin = controlet_binary()?;
    let faults = args.faults.clone().unwrap_or_default();
    // Installed before any node starts, and removed when this returns (by its drop).
    let _loss = match faults.loss {
        Some(percent) => Some(LossRules::install(&args, percent / 100.0)?),
        None => None,
    };
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=args.nodes {
        let child = node_command(&args, &bin, replicas, i)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        children.push(child);
    }
    let result = wait_ready(&args, &mut children);
    let children = Arc::new(Mutex::new(children));
    let stop = Arc::new(AtomicBool::new(false));
    let mut crasher = None;
    if result.is_ok() {
        println!(
            "tailorkv cluster: {} nodes, {replicas} copies of each key, {} consistency",
            args.nodes, args.consistency
        );
        for i in 1..=args.nodes {
            let metrics = args.http_port.map_or(String::new(), |port| {
                format!(", metrics at http://127.0.0.1:{}/metrics", port + i - 1)
            });
            println!(
                "  node {i}: clients at 127.0.0.1:{}{metrics}",
                args.client_port + i - 1
            );
        }
        if let Some(spec) = &args.faults {
            println!("faults: {}", describe(spec));
        }
        println!("Ctrl-C stops every node.");
        if let Some(every) = faults.crash_every {
            let (children, stop) = (Arc::clone(&children), Arc::clone(&stop));
            let (args, bin) = (args.clone(), bin.clone());
            crasher = Some(std::thread::spawn(move || {
                crash_in_turn(&args, &bin, replicas, every, faults.down, &children, &stop)
            }));
        }
        wait_for_signal();
    }
    stop.store(true, Ordering::Release);
    if let Some(crasher) = crasher {
        let _ = crasher.join();
    }
    let mut children = children.lock().unwrap_or_else(|e| e.into_inner());
    for child in children.iter_mut() {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for child in children.iter_mut() {
        let _ = child.wait();
    }
    result
}

/// The command that starts node `i`.
fn node_command(args: &Args, bin: &Path, replicas: u16, i: u16) -> Command {
    let peers: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}@127.0.0.1:{}", args.peer_port + i - 1))
        .collect();
    let datalet = match args.datalet.strip_prefix("disk:") {
        Some(dir) => format!("disk:{dir}/node-{i}"),
        None => args.datalet.clone(),
    };
    let mut command = Command::new(bin);
    if let Some(port) = args.http_port {
        command.args(["--http-listen", &format!("127.0.0.1:{}", port + i - 1)]);
    }
    if let Some(latency) = args.faults.as_ref().and_then(|f| f.latency) {
        command.args(["--fault-peer-delay-ms", &latency.as_millis().to_string()]);
    }
    command
        .args(["--id", &i.to_string()])
        .args([
            "--listen",
            &format!("127.0.0.1:{}", args.client_port + i - 1),
        ])
        .args(["--peers", &peers.join(",")])
        .args(["--consistency", &args.consistency])
        .args(["--replicas", &replicas.to_string()])
        .args(["--datalet", &datalet])
        .args(&args.extra);
    command
}

/// `--faults` as the user wrote it, spelled out.
fn describe(spec: &Faults) -> String {
    let mut parts = Vec::new();
    if let Some(l) = spec.latency {
        parts.push(format!("every peer message held {l:?}"));
    }
    if let Some(percent) = spec.loss {
        parts.push(format!("{percent}% of peer packets dropped"));
    }
    if let Some(e) = spec.crash_every {
        parts.push(format!(
            "a node killed (SIGKILL) every {e:?}, each in turn, restarted {:?} later",
            spec.down
        ));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

/// Every `every`, kills the next node with SIGKILL and restarts it `down` later, until
/// `stop`.
fn crash_in_turn(
    args: &Args,
    bin: &Path,
    replicas: u16,
    every: Duration,
    down: Duration,
    children: &Mutex<Vec<Child>>,
    stop: &AtomicBool,
) {
    // Sleeps up to `d`; whether to go on.
    let sleep = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if stop.load(Ordering::Acquire) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
        }
        !stop.load(Ordering::Acquire)
    };
    for i in (1..=args.nodes).cycle() {
        if !sleep(every) {
            return;
        }
        let index = usize::from(i - 1);
        {
            let mut children = children.lock().unwrap_or_else(|e| e.into_inner());
            let _ = children[index].kill();
            let _ = children[index].wait();
        }
        println!("faults: node {i} killed (SIGKILL); restarting it in {down:?}");
        if !sleep(down) {
            return;
        }
        match node_command(args, bin, replicas, i).spawn() {
            Ok(child) => {
                children.lock().unwrap_or_else(|e| e.into_inner())[index] = child;
                println!("faults: node {i} restarted");
            }
            Err(e) => eprintln!("faults: node {i} could not be restarted: {e}"),
        }
    }
}

/// iptables rules that drop a share of the packets to and from the peer ports, in a chain of
/// their own hooked first in `INPUT` (loopback traffic passes `INPUT` once per packet);
/// removed on drop.
struct LossRules {
    chain: String,
}

impl LossRules {
    fn install(args: &Args, probability: f64) -> anyhow::Result<LossRules> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("--faults loss=... drops packets with iptables, which needs root");
        }
        let chain = format!("tailorkv-loss-{}", std::process::id());
        let ports = format!("{}:{}", args.peer_port, args.peer_port + args.nodes - 1);
        let p = format!("{probability}");
        let rules = LossRules { chain };
        rules.iptables(&["-N", &rules.chain])?;
        for side in ["--dport", "--sport"] {
            rules.iptables(&[
                "-A",
                &rules.chain,
                "-p",
                "tcp",
                side,
                &ports,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ])?;
        }
        rules.iptables(&["-I", "INPUT", "-j", &rules.chain])?;
        Ok(rules)
    }

    fn iptables(&self, rule: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("iptables")
            .arg("-w")
            .args(rule)
            .output()
            .context("--faults loss=... needs iptables (apt-get install iptables)")?;
        if !out.status.success() {
            bail!(
                "iptables {}: {}",
                rule.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for LossRules {
    fn drop(&mut self) {
        let _ = self.iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = self.iptables(&["-F", &self.chain]);
        let _ = self.iptables(&["-X", &self.chain]);
    }
}

/// Waits until every node accepts clients, or one of them exits.
fn wait_ready(args: &Args, children: &mut [Child]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, child) in (1..=args.nodes).zip(children.iter_mut()) {
        let addr = ("127.0.0.1", args.client_port + i - 1);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("node {i} exited ({status}) before serving");
            }
            if Instant::now() > deadline {
                bail!("node {i} is not serving after 20 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    });
}
