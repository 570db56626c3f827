//! The controlet's command line.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::Parser;
use tailorkv_common::NodeId;

pub use crate::engine::Consistency;

/// A memcached-compatible server that stores into a datalet.
#[derive(Clone, Debug, Parser)]
#[command(name = "controlet", version, about, long_about = None)]
// A flag given twice keeps its last value: the command line overrides a `--config` file.
#[command(args_override_self = true)]
pub struct Config {
    /// A TOML file of settings: each key a flag's long name (`memory-limit = 1024`,
    /// `peers = ["1@127.0.0.1:7101", "2@127.0.0.1:7102"]`). Flags on the command line override
    /// it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Where to serve HTTP: Prometheus metrics at `/metrics`. Off unless given; loopback
    /// addresses keep it to this host.
    #[arg(long, value_name = "ADDR")]
    pub http_listen: Option<SocketAddr>,

    /// How log lines are written to stderr: `text`, or `json` (one object per line).
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Address to serve memcached clients on. Loopback by default, like a fresh memcached
    /// should be: pass 0.0.0.0:11211 to serve other hosts.
    #[arg(long, default_value = "127.0.0.1:11211")]
    pub listen: SocketAddr,

    /// memcached's `-p`: the client port, on the address of `--listen` (or `-l`).
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,

    /// memcached's `-l`: the address to serve clients on, `ADDR` (with the port of `-p` or
    /// `--listen`) or `ADDR:PORT`. One address; memcached's lists are refused.
    #[arg(short = 'l', value_name = "ADDR")]
    pub interface: Option<String>,

    /// memcached's `-U`: UDP is not served, so only 0 (off, memcached's default) is taken.
    #[arg(short = 'U', long, default_value_t = 0, value_parser = udp_off)]
    pub udp_port: u16,

    /// memcached's `-v`: `-v` logs as by default (info), `-vv` adds debug lines, `-vvv`
    /// traces. `RUST_LOG`, if set, decides instead. `stats settings` shows it as `verbosity`.
    #[arg(short = 'v', long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// memcached's `-M`: refuse writes when memory is full instead of evicting; the same as
    /// `--evict none`.
    #[arg(short = 'M', long)]
    pub disable_evictions: bool,

    /// What a full store does with a write: `lru` evicts the least recently used items to
    /// make room, as memcached does (in a cluster, through the order or as versioned
    /// deletes, so replicas stay alike); `none` refuses it with `SERVER_ERROR out of memory
    /// storing object`, as memcached's `-M`. Default: `lru` on the memory datalet, `none` on
    /// the disk datalet (a durable store keeps what it acknowledged); a `memcached://`
    /// datalet's server evicts by its own rules.
    #[arg(long, value_enum, value_name = "POLICY")]
    pub evict: Option<Evict>,

    /// memcached's `-A`: the `shutdown` command (and `shutdown graceful`) stops the server, as
    /// SIGINT does. Without it, `shutdown` is answered `ERROR: shutdown not enabled`.
    #[arg(short = 'A', long)]
    pub enable_shutdown: bool,

    /// memcached's `-F`: refuse `flush_all` (`CLIENT_ERROR flush_all not allowed`).
    #[arg(short = 'F', long)]
    pub disable_flush_all: bool,

    /// memcached's `-C`: no CAS uniques. Items report 0 (`gets`, `mg c`, binary responses,
    /// `me`, `metadump`), and a compare-and-swap against anything but 0 fails, as against an
    /// item whose unique is 0. Replication keeps its versions; only clients stop seeing them.
    #[arg(short = 'C', long)]
    pub disable_cas: bool,

    /// memcached's `-R`: how many requests of one connection memcached serves before turning
    /// to the next. Each connection here is a task of its own, so this changes nothing; it is
    /// taken with a warning.
    #[arg(short = 'R', long, value_name = "N")]
    pub max_reqs_per_event: Option<u32>,

    /// memcached's `-B`: the protocol, `auto` (the default: a connection whose first byte is
    /// the binary request magic speaks binary, any other text), `ascii` or `binary`.
    #[arg(short = 'B', long, value_name = "PROTOCOL", value_parser = protocol)]
    pub protocol: Option<String>,

    /// memcached's `-o`: extended options, separated by commas. `idle_timeout=N` sets
    /// `--idle-timeout`; options that tune memcached's own internals (its LRU, slab
    /// rebalancer, hash table, crawler...) are accepted with a warning and change nothing;
    /// any other is refused.
    #[arg(short = 'o', long, value_delimiter = ',', value_name = "OPTION")]
    pub extended: Vec<String>,

    /// The `-o` options accepted and ignored, for a warning once logging is up.
    #[arg(skip)]
    pub ignored_extended: Vec<String>,

    /// Where items are stored. `memory`: in this process, lost on exit. `disk:DIR`: in a
    /// database file in DIR, durable: a write is acknowledged once it is on disk.
    /// `memcached://HOST:PORT`: in a memcached (or any memcached-protocol server) there, each
    /// value with a 31-byte header holding its version and expiry; give that server an item
    /// size limit of at least --item-size-max.
    #[arg(long, default_value = "memory")]
    pub datalet: DataletSpec,

    /// With a disk datalet: the most writes one commit (one fsync) may carry. Concurrent
    /// writes share a commit; 1 gives every write its own fsync.
    #[arg(long, default_value_t = tailorkv_datalet::disk::DEFAULT_MAX_BATCH)]
    pub disk_max_batch: usize,

    /// With a `memcached://` datalet: connections to that server. Keys are spread over them
    /// by hash; each carries many requests at once, gets queued together go out as one `gets`
    /// of many keys, and the read-modify-writes of a batch share two round trips. Fewer
    /// connections carry more per request, which costs the server less. Default: one per
    /// worker thread (--threads).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub datalet_connections: Option<usize>,

    /// Most client connections open at once; a connection past this is answered
    /// `ERROR Too many open connections` and closed. At least 1, as memcached requires.
    #[arg(short = 'c', long, alias = "conn-limit", default_value_t = 1024, value_parser = at_least_one)]
    pub max_connections: usize,

    /// Largest item (key, value and about 60 bytes of overhead, counted as memcached counts
    /// it). Bytes, or with a k or m suffix: 512k, 1m, 2m. Larger values are refused with
    /// `SERVER_ERROR object too large for cache`.
    #[arg(short = 'I', long, alias = "max-item-size", default_value = "1m", value_parser = parse_size)]
    pub item_size_max: usize,

    /// Memory for items, in MiB (memcached's `-m`), each item charged the chunk memcached
    /// would give it. When it is full, `--evict` says what a write does.
    #[arg(short = 'm', long, default_value_t = 64)]
    pub memory_limit: usize,

    /// Seconds a client connection may stay silent before it is closed, as memcached's
    /// `-o idle_timeout`; 0 never closes an idle connection. A connection silent in the middle
    /// of a request is closed after --partial-request-timeout whatever this says.
    #[arg(long, default_value_t = 0)]
    pub idle_timeout: u64,

    /// Seconds a client may leave a request half sent (a command line without its end, a
    /// value short of its length) before the connection is closed, freeing what it holds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub partial_request_timeout: u64,

    /// Worker threads serving connections (memcached's `-t`). Default: one per CPU core.
    #[arg(short = 't', long, default_value_t = default_threads(),
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub threads: usize,

    /// This node's id among `--peers`.
    #[arg(long, default_value_t = 1)]
    pub id: u16,

    /// Every member of the cluster, this one included, as `ID@HOST:PORT` peer addresses
    /// separated by commas; the same list on every member. Without it, a single node.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<Member>,

    /// Copies of each key (with `--peers`): the key space is split into 1024 partitions, each
    /// held by a replica group of this many nodes, and any node serves any key, forwarding to
    /// an owner. Default: 3, or every node when there are fewer. Every member must be given
    /// the same number.
    #[arg(long)]
    pub replicas: Option<usize>,

    /// Replica groups (with `--peers`), fixed for the life of the cluster: every partition
    /// belongs to one group for good, and nodes that join or leave move whole groups' copies.
    /// A cluster meant to grow needs more groups than nodes (for example 12, or 4 per node of
    /// the largest size planned). Default: one per node, or one group of every node when
    /// `--replicas` covers them all.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub groups: Option<u16>,

    /// Join a running cluster (any mode) through this member's peer address (`HOST:PORT`),
    /// instead of naming the members with `--peers`. Needs `--id` (unused in the cluster) and
    /// `--peer-listen` (the address the others reach this node at).
    #[arg(long, conflicts_with = "peers")]
    pub join: Option<SocketAddr>,

    /// Most bytes per second this node sends to move data, all its groups together: snapshots
    /// for members joining a group's view (a node added, replacing another, or restarted) and
    /// copies for new members in the eventual mode. Bounds what moving data takes from the
    /// foreground load. Default: unthrottled.
    #[arg(long)]
    pub rebalance_rate: Option<u64>,

    /// Seconds after which a node that the others cannot reach is removed from the cluster,
    /// its groups given a replacement member so every partition is back to `--replicas`
    /// copies. Default: never (an operator removes a dead node with `tailorkv-admin remove`).
    #[arg(long)]
    pub dead_after: Option<u64>,

    /// Where this node listens for its peers. Default: its own entry in `--peers`.
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,

    /// Connections the kernel queues for the client port before they are accepted, as
    /// memcached's `-b` (the kernel caps it at `net.core.somaxconn`).
    #[arg(short = 'b', long, default_value_t = 1024)]
    pub listen_backlog: u32,

    /// Clients must authenticate with a user and password from this file of `user:password`
    /// lines before any other command, as with memcached's `-Y`: the first command is a
    /// `set` (any key) whose data is `user password`.
    #[arg(short = 'Y', long, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    /// TLS on the client port: the server's certificate chain (PEM), as memcached's `-Z -o
    /// ssl_chain_cert=FILE`. With it the port speaks only TLS. `refresh_certs` or SIGHUP reads
    /// the files again.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM), as memcached's `ssl_key`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Clients must present a certificate signed by this CA (PEM), as memcached's
    /// `ssl_ca_cert` with `ssl_verify_mode=3`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS on peer links: this node's certificate (PEM, its own first), which must
    /// carry the DNS name `node-<id>.tailorkv` (`tailorkv-admin certs` makes a CA and such
    /// certificates). With `--peer-tls-key` and `--peer-tls-ca`, a member hears only nodes
    /// with a certificate from that CA, each as the node its certificate names, and sends
    /// only to the node it means. Every member must use TLS, or none.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub peer_tls_cert: Option<PathBuf>,

    /// This node's private key for `--peer-tls-cert` (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_ca"])]
    pub peer_tls_key: Option<PathBuf>,

    /// The cluster's CA certificate (PEM) that every member's certificate is signed by.
    #[arg(long, value_name = "FILE", requires_all = ["peer_tls_cert", "peer_tls_key"])]
    pub peer_tls_ca: Option<PathBuf>,

    /// A file holding a secret every member shares (at least 16 bytes; surrounding
    /// whitespace is ignored): peer connections then open with a challenge-response both
    /// ways, and a node that cannot prove it holds the secret is not heard. For clusters
    /// without `--peer-tls-*`; it proves membership, not which member, and does not encrypt.
    #[arg(long, value_name = "FILE")]
    pub peer_secret_file: Option<PathBuf>,

    /// The consistency the cluster offers (with `--peers`).
    #[arg(long, value_enum, default_value = "linearizable")]
    pub consistency: Consistency,

    /// Milliseconds of silence after which a peer is suspected to have failed (strong modes).
    /// Each wrong suspicion of a peer adds half this to its timeout.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub failure_timeout_ms: u64,

    /// Fault injection, to watch the modes behave on a slow network: hold every message
    /// received from a peer this many milliseconds before acting on it (a one-way delay on
    /// each link, so a round trip between two nodes takes twice this). 0: none. Leave it at 0
    /// in production. `cluster --faults latency=5ms` sets it on every node.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub fault_peer_delay_ms: u64,

    /// Eventual mode: replicas a read asks, the node asked included (R of Dynamo's N, R, W;
    /// N is `--replicas`). The newest entry among them is returned, and those that answered
    /// older are repaired. 1: the node's own replica only. With R + W > N a read never
    /// misses a write acknowledged before it began, whichever N - W replicas are down. A
    /// read whose quorum does not answer within 1 s is refused.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub read_quorum: u16,

    /// Eventual mode: replicas that hold a client's write before it is acknowledged, the node
    /// asked included (W). 1: acknowledged once stored on the node asked. A write whose
    /// quorum does not answer within 1 s is refused (`SERVER_ERROR`); it stays where it was
    /// stored and may still spread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub write_quorum: u16,

    /// Tests only, never from the command line: serve linearizable reads from the local
    /// replica. This is the classic bug of total-order systems, planted so the tests can show
    /// the checker catches it.
    #[arg(skip)]
    pub unsafe_local_reads: bool,

    /// Tests only: in the causal mode, make peers' writes visible without waiting for what
    /// they depend on. The bug the causal checker must catch, planted for the fault tests,
    /// which run real processes; hidden from `--help`.
    #[arg(long, hide = true)]
    pub unsafe_causal_skip_dependencies: bool,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// A node of a cluster: `--peers` names the members, or `--join` a member to join through.
    pub fn is_cluster(&self) -> bool {
        !self.peers.is_empty() || self.join.is_some()
    }

    /// Parses `args` (the program name first), with the settings of the `--config` file it
    /// names, if any, in front of them: a flag on the command line overrides the file.
    pub fn from_args(args: Vec<std::ffi::OsString>) -> anyhow::Result<Config> {
        let mut rest = args.iter().skip(1);
        let mut file = None;
        while let Some(arg) = rest.next() {
            let arg = arg.to_string_lossy();
            if arg == "--config" {
                file = rest.next().map(PathBuf::from);
            } else if let Some(path) = arg.strip_prefix("--config=") {
                file = Some(PathBuf::from(path));
            }
        }
        let mut all = args[..1.min(args.len())].to_vec();
        if let Some(file) = file {
            all.extend(config_file_args(&file)?);
        }
        all.extend(args.into_iter().skip(1));
        let mut config = Config::try_parse_from(all)?;
        config.take_memcached_flags()?;
        Ok(config)
    }

    /// Whether a full store evicts to make room for a write (`--evict`, `-M`).
    pub fn evicts(&self) -> bool {
        match (self.disable_evictions, self.evict) {
            (true, _) | (_, Some(Evict::None)) => false,
            (false, Some(Evict::Lru)) => true,
            (false, None) => self.datalet == DataletSpec::Memory,
        }
    }

    /// Applies memcached's `-p`, `-l` and `-o` to the settings they stand for, and refuses
    /// what memcached refuses: an item size limit above half the memory limit.
    pub fn take_memcached_flags(&mut self) -> anyhow::Result<()> {
        let memory = self.memory_limit.saturating_mul(1 << 20);
        if memory > 0 && self.item_size_max > memory / 2 {
            anyhow::bail!(
                "--item-size-max (-I) {} is more than half of --memory-limit (-m) {} MiB; \
                 memcached refuses that too",
                self.item_size_max,
                self.memory_limit
            );
        }
        match (&self.datalet, self.evict) {
            (DataletSpec::Disk(_), Some(Evict::Lru)) => anyhow::bail!(
                "--evict lru: the disk datalet keeps what it acknowledged and does not evict"
            ),
            (DataletSpec::Memcached(_), Some(Evict::Lru)) => anyhow::bail!(
                "--evict lru: a memcached:// datalet's server evicts by its own rules (start it \
                 without -M)"
            ),
            _ => {}
        }
        if let Some(port) = self.port {
            self.listen.set_port(port);
        }
        if let Some(interface) = &self.interface {
            self.listen = interface_addr(interface, self.listen.port())?;
        }
        if let Some(n) = self.max_reqs_per_event {
            self.ignored_extended.push(format!("-R {n}"));
        }
        for option in &self.extended {
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (option.as_str(), None),
            };
            match (name, value) {
                ("idle_timeout", Some(secs)) => {
                    self.idle_timeout = secs.parse().map_err(|_| {
                        anyhow::anyhow!("-o idle_timeout={secs}: not a number of seconds")
                    })?;
                }
                _ if MEMCACHED_INTERNALS.contains(&name) => {
                    self.ignored_extended.push(option.clone());
                }
                _ => anyhow::bail!(
                    "-o {option}: not an extended option tailorkv takes (idle_timeout=N is; \
                     those tuning memcached's own internals are accepted and ignored)"
                ),
            }
        }
        Ok(())
    }

    /// The log filter `-v`, `-vv`, `-vvv` stand for.
    pub fn log_level(&self) -> &'static str {
        match self.verbose {
            0 | 1 => "info",
            2 => "debug",
            _ => "trace",
        }
    }

    /// The defaults, listening on `listen`: what tests start.
    pub fn local(listen: SocketAddr) -> Self {
        let mut config = Config::parse_from(["controlet"]);
        config.listen = listen;
        config
    }
}

/// The flags a TOML config file stands for: `key = value` becomes `--key value` (an array
/// its items joined by commas, `true` the bare flag, `false` nothing).
pub fn config_file_args(file: &std::path::Path) -> anyhow::Result<Vec<std::ffi::OsString>> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read the config file {}", file.display()))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not a TOML file", file.display()))?;
    let mut args = Vec::new();
    for (key, value) in table {
        let flag = format!("--{key}");
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(true) => {
                args.push(flag.into());
                continue;
            }
            toml::Value::Boolean(false) => continue,
            toml::Value::Array(items) => {
                let items: Vec<String> = items
                    .into_iter()
                    .map(|item| match item {
                        toml::Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                items.join(",")
            }
            other => anyhow::bail!(
                "{}: `{key}` is a {}; settings are strings, numbers, booleans or arrays",
                file.display(),
                other.type_str()
            ),
        };
        args.push(flag.into());
        args.push(text.into());
    }
    Ok(args)
}

/// memcached's `-o` options that tune its own internals, which have no counterpart here.
const MEMCACHED_INTERNALS: &[&str] = &[
    "maxconns_fast",
    "no_maxconns_fast",
    "hashpower",
    "tail_repair_time",
    "hash_algorithm",
    "lru_crawler",
    "no_lru_crawler",
    "lru_crawler_sleep",
    "lru_crawler_tocrawl",
    "read_buf_mem_limit",
    "lru_maintainer",
    "no_lru_maintainer",
    "hot_lru_pct",
    "warm_lru_pct",
    "hot_max_factor",
    "warm_max_factor",
    "temporary_ttl",
    "slab_chunk_max",
    "slab_reassign",
    "slab_automove",
    "slab_automove_ratio",
    "slab_automove_window",
    "slab_automove_freeratio",
    "modern",
    "no_modern",
    "watcher_logbuf_size",
    "worker_logbuf_size",
    "track_sizes",
    "no_hashexpand",
    "inline_ascii_resp",
    "no_inline_ascii_resp",
    "lru_segmented",
    "no_lru_segmented",
    "large_memory_pages",
    "relaxed_privileges",
    "drop_privileges",
    "no_drop_privileges",
];

/// The socket address memcached's `-l ADDR` means: `ADDR:PORT`, `[V6]:PORT`, or an address
/// or host name alone, on `port`.
fn interface_addr(interface: &str, port: u16) -> anyhow::Result<SocketAddr> {
    use std::net::{IpAddr, ToSocketAddrs};
    if interface.contains(',') {
        anyhow::bail!(
            "-l {interface}: one address only (memcached takes a list; tailorkv does not)"
        );
    }
    let interface = interface.strip_prefix("notls:").unwrap_or(interface);
    if let Ok(addr) = interface.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = interface.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (host, port) = match interface.rsplit_once(':') {
        Some((host, p)) if p.parse::<u16>().is_ok() => (host, p.parse().unwrap_or(port)),
        _ => (interface, port),
    };
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| anyhow::anyhow!("-l {interface}: not an address or a known host name"))
}

fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn protocol(s: &str) -> Result<String, String> {
    match s {
        "ascii" | "binary" | "auto" => Ok(s.to_string()),
        _ => Err("the protocol is one of ascii, binary or auto".into()),
    }
}

fn udp_off(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(0) => Ok(0),
        Ok(_) => Err("UDP is not served; only -U 0 (off, as memcached's default) is taken".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get())
}

/// The smallest and largest `--item-size-max`, as memcached allows.
const ITEM_SIZE_MIN: usize = 1024;
const ITEM_SIZE_LIMIT: usize = 1 << 30;

pub fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.to_ascii_lowercase().as_bytes().last() {
        Some(b'k') => (&s[..s.len() - 1], 1024),
        Some(b'm') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use bytes, or a number with k or m"))?;
    let bytes = n.checked_mul(unit).ok_or("size too large")?;
    if !(ITEM_SIZE_MIN..=ITEM_SIZE_LIMIT).contains(&bytes) {
        return Err(format!("item size must be between 1k and 1024m, not {s}"));
    }
    Ok(bytes)
}

/// A cluster member: `ID@HOST:PORT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    pub addr: SocketAddr,
}

impl FromStr for Member {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a member: use ID@HOST:PORT, e.g. 1@127.0.0.1:7101");
        let (id, addr) = s.split_once('@').ok_or_else(bad)?;
        Ok(Member {
            id: NodeId(id.parse().map_err(|_| bad())?),
            addr: addr.parse().map_err(|_| bad())?,
        })
    }
}

/// `--evict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Evict {
    /// Evict the least recently used items.
    Lru,
    /// Refuse the write.
    None,
}

/// The choice of datalet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataletSpec {
    Memory,
    /// `disk:DIR`.
    Disk(PathBuf),
    /// `memcached://HOST:PORT`: any memcached-protocol server; holds `HOST:PORT`.
    Memcached(String),
}

/// `HOST:PORT` of a `memcached://` spec, if it is one: a host, and a port that is a number.
fn memcached_addr(s: &str) -> Option<&str> {
    let addr = s.strip_prefix("memcached://")?;
    let (host, port) = addr.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then_some(addr)
}

impl FromStr for DataletSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = memcached_addr(s) {
            return Ok(DataletSpec::Memcached(addr.to_string()));
        }
        match s {
            "memory" => Ok(DataletSpec::Memory),
            s if s.starts_with("disk:") && s.len() > "disk:".len() => {
                Ok(DataletSpec::Disk(PathBuf::from(&s["disk:".len()..])))
            }
            other => Err(format!(
                "unknown datalet {other:?}: use `memory`, `disk:DIR` or `memcached://HOST:PORT`"
            )),
        }
    }
}

impl fmt::Display for DataletSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataletSpec::Memory => f.write_str("memory"),
            DataletSpec::Disk(dir) => write!(f, "disk:{}", dir.display()),
            DataletSpec::Memcached(addr) => write!(f, "memcached://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_flags_parse() {
        let c = Config::parse_from([
            "controlet",
            "--id",
            "2",
            "--peers",
            "1@127.0.0.1:7101,2@127.0.0.1:7102,3@127.0.0.1:7103",
            "--consistency",
            "sequential",
        ]);
        assert_eq!(c.id, 2);
        assert_eq!(c.peers.len(), 3);
        assert_eq!(c.peers[1].addr, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(c.consistency, Consistency::Sequential);
        assert!(!c.unsafe_local_reads);
        assert!(Config::try_parse_from(["controlet", "--peers", "x@y"]).is_err());
        assert!(Config::try_parse_from(["controlet", "--consistency", "causl"]).is_err());
        let c = Config::parse_from(["controlet", "--consistency", "causal"]);
        assert_eq!(c.consistency, Consistency::Causal);
    }

    #[test]
    fn a_config_file_sets_flags_and_the_command_line_overrides_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node.toml");
        std::fs::write(
            &file,
            "id = 2\nmemory-limit = 512\nconsistency = \"sequential\"\n\
             peers = [\"1@127.0.0.1:7101\", \"2@127.0.0.1:7102\"]\n\
             http-listen = \"127.0.0.1:9150\"\nlog-format = \"json\"\n",
        )
        .unwrap();
        let args = |extra: &[&str]| {
            let mut args: Vec<std::ffi::OsString> = vec!["controlet".into()];
            args.push("--config".into());
            args.push(file.clone().into());
            args.extend(extra.iter().map(|a| a.into()));
            args
        };
        let c = Config::from_args(args(&[])).unwrap();
        assert_eq!((c.id, c.memory_limit, c.peers.len()), (2, 512, 2));
        assert_eq!(c.consistency, Consistency::Sequential);
        assert_eq!(c.http_listen, Some("127.0.0.1:9150".parse().unwrap()));
        assert_eq!(c.log_format, LogFormat::Json);
        let c = Config::from_args(args(&["--memory-limit", "64", "--id", "1"])).unwrap();
        assert_eq!((c.id, c.memory_limit), (1, 64), "the command line wins");
        std::fs::write(&file, "memory-limt = 1\n").unwrap();
        let e = Config::from_args(args(&[])).unwrap_err().to_string();
        assert!(e.contains("memory-limt"), "an unknown key is named: {e}");
        std::fs::write(&file, "[section]\nx = 1\n").unwrap();
        assert!(Config::from_args(args(&[])).is_err());
    }

    /// The README's config file example means what it says.
    #[test]
    fn the_readme_config_example_parses() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("## Operating it").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("node1.toml");
        std::fs::write(&file, example).unwrap();
        let args = vec!["controlet".into(), "--config".into(), file.into()];
        let c = Config::from_args(args).unwrap();
        assert_eq!((c.id, c.peers.len(), c.replicas), (1, 3, Some(3)));
        assert_eq!(c.http_listen, Some("127.0.0.1:9150".parse().unwrap()));
    }

    #[test]
    fn sizes_take_memcached_suffixes_and_bounds() {
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2048"), Ok(2048));
        assert!(parse_size("12").is_err());
        assert!(parse_size("2g").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn defaults_match_memcached() {
        let c = Config::parse_from(["controlet"]);
        assert_eq!(c.listen, "127.0.0.1:11211".parse().unwrap());
        assert_eq!(
            (c.max_connections, c.item_size_max, c.memory_limit),
            (1024, 1 << 20, 64)
        );
        assert_eq!(c.datalet, DataletSpec::Memory);
        assert!(Config::try_parse_from(["controlet", "--datalet", "tape"]).is_err());
    }

    #[test]
    fn a_memcached_datalet_names_host_and_port_and_round_trips() {
        for spec in [
            "memcached://127.0.0.1:11211",
            "memcached://cache.local:1",
            "memcached://[::1]:11211",
        ] {
            let parsed: DataletSpec = spec.parse().unwrap();
            assert_eq!(parsed.to_string(), spec);
        }
        assert_eq!(
            "memcached://h:7".parse(),
            Ok(DataletSpec::Memcached("h:7".into()))
        );
        for bad in [
            "memcached://",
            "memcached://host",
            "memcached://:11211",
            "memcached://h:port",
            "memcached://h:70000",
        ] {
            assert!(bad.parse::<DataletSpec>().is_err(), "{bad} accepted");
        }
    }
}
