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

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Starts a local tailorkv cluster.
#[derive(Debug, Parser)]
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

    /// linearizable, sequential or eventual.
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

    /// More flags for every controlet, after `--` (e.g. `-- --memory-limit 1024`).
    #[arg(last = true)]
    extra: Vec<String>,
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
    let peers: Vec<String> = (1..=args.nodes)
        .map(|i| format!("{i}@127.0.0.1:{}", args.peer_port + i - 1))
        .collect();
    let peers = peers.join(",");
    let mut children: Vec<Child> = Vec::new();
    for i in 1..=args.nodes {
        let datalet = match args.datalet.strip_prefix("disk:") {
            Some(dir) => format!("disk:{dir}/node-{i}"),
            None => args.datalet.clone(),
        };
        let mut command = Command::new(&bin);
        if let Some(port) = args.http_port {
            command.args(["--http-listen", &format!("127.0.0.1:{}", port + i - 1)]);
        }
        let child = command
            .args(["--id", &i.to_string()])
            .args([
                "--listen",
                &format!("127.0.0.1:{}", args.client_port + i - 1),
            ])
            .args(["--peers", &peers])
            .args(["--consistency", &args.consistency])
            .args(["--replicas", &replicas.to_string()])
            .args(["--datalet", &datalet])
            .args(&args.extra)
            .spawn()
            .with_context(|| format!("starting node {i}"))?;
        children.push(child);
    }
    let result = wait_ready(&args, &mut children);
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
        println!("Ctrl-C stops every node.");
        wait_for_signal();
    }
    for child in &mut children {
        // SAFETY: signalling our own children.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for child in &mut children {
        let _ = child.wait();
    }
    result
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
