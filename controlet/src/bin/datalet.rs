//! `datalet`: one store served over the memcached text protocol, so the data plane can run as
//! its own process or on its own host, behind a controlet started with
//! `--datalet memcached://HOST:PORT`. `datalet --help` explains every flag.

use std::net::SocketAddr;

use clap::Parser;
use tailorkv_controlet::config::DataletSpec;
use tailorkv_controlet::process::{init_logging, serve_until_signal};
use tailorkv_controlet::Config;

/// Serves one tailorkv datalet (a single-node store) over the memcached text protocol.
#[derive(Debug, Parser)]
#[command(
    about = "Serves one tailorkv datalet (a single-node store) over the memcached text protocol"
)]
#[command(name = "datalet", version, long_about = None)]
struct Args {
    /// Address to serve on.
    #[arg(long, default_value = "127.0.0.1:11311")]
    listen: SocketAddr,

    /// The store: `memory` (lost on exit) or `disk:DIR` (durable).
    #[arg(long, default_value = "memory")]
    store: DataletSpec,

    /// Memory for items, in MiB; when full, writes are refused, nothing is evicted (a
    /// controlet's replica behind this store would take an eviction for lost items).
    #[arg(long, default_value_t = 1024)]
    memory_limit: usize,

    /// Largest item, as memcached counts it: bytes, or with a k or m suffix. Larger than the
    /// controlet's default, so an item a controlet accepts still fits with its version header.
    #[arg(long, default_value = "2m", value_parser = tailorkv_controlet::config::parse_size)]
    item_size_max: usize,

    /// Most client connections open at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,

    /// Worker threads. Default: one per CPU core.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !matches!(args.store, DataletSpec::Memory | DataletSpec::Disk(_)) {
        anyhow::bail!("a datalet serves a local store: `memory` or `disk:DIR`");
    }
    let mut config = Config::local(args.listen);
    config.datalet = args.store;
    config.memory_limit = args.memory_limit;
    config.evict = Some(tailorkv_controlet::config::Evict::None);
    config.item_size_max = args.item_size_max;
    config.max_connections = args.max_connections;
    if let Some(threads) = args.threads {
        config.threads = threads;
    }
    init_logging(tailorkv_controlet::config::LogFormat::Text, "info");
    serve_until_signal(config, "datalet")
}
