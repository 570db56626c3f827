//! loadgen's command line.

use std::time::Duration;

use clap::{ArgGroup, Parser};

use crate::keys::{KeyDist, Owners};
use crate::reply::Protocol;
use crate::value::HEADER_LEN;

/// Load generator for memcached-compatible servers (get and set, in the classic text protocol
/// or as memcached 1.6's meta commands).
///
/// Opens `--connections` connections, spread round-robin over the `--target`s, and keeps
/// `--pipeline` requests in flight on each until `--duration` or `--requests` runs out. Every
/// value names the write that made it, so values read back are checked (see `--verify-ratio`).
/// Exits 0 after a clean run, 2 if any request failed or any value read back was wrong, and 1
/// if the run could not start.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version)]
#[command(group(ArgGroup::new("owner_filter").args(["keys_held_by", "keys_not_held_by"])))]
pub struct Args {
    /// Server to load, HOST:PORT; repeat the flag or separate with commas for a cluster.
    /// Connection i goes to target i mod (number of targets).
    #[arg(
        long = "target",
        value_name = "HOST:PORT",
        value_delimiter = ',',
        default_value = "127.0.0.1:11211"
    )]
    pub targets: Vec<String>,

    /// Connections, one task each.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub connections: u32,

    /// Connect over TLS, trusting the CA certificate in this PEM file (the server's name is
    /// the target's host, a name or an IP address its certificate must carry).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// How requests are sent: `get`/`set` (text), or `mg <key> k v`/`ms <key> <bytes> T0`
    /// (meta). The load and the checks of what comes back are the same either way.
    #[arg(long, value_enum, default_value_t = Protocol::Text)]
    pub protocol: Protocol,

    /// Requests kept in flight per connection; replies are matched to requests in order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub pipeline: u32,

    /// Number of distinct keys.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub keys: u64,

    /// How requests pick keys.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    pub key_dist: KeyDist,

    /// Skew of --key-dist zipfian: key of rank r is picked with weight 1/r^theta.
    #[arg(long, default_value_t = 0.99, value_parser = parse_theta)]
    pub zipf_theta: f64,

    /// Prefix of every key name (the rest is the key's index). Use distinct prefixes for
    /// loadgen runs that share a server at the same time.
    #[arg(long, default_value = "loadgen:", value_parser = parse_prefix)]
    pub key_prefix: String,

    /// Use only the keys (of --keys, named with --key-prefix) that this node of a sharded
    /// tailorkv cluster holds a copy of, per --placement: preload and load alike.
    #[arg(long, value_name = "NODE", requires = "placement")]
    pub keys_held_by: Option<u16>,

    /// Use only the keys this node does not hold a copy of, per --placement.
    #[arg(long, value_name = "NODE", requires = "placement")]
    pub keys_not_held_by: Option<u16>,

    /// The cluster --keys-held-by and --keys-not-held-by refer to: nodes with ids 1..=NODES
    /// and REPLICAS copies of each key (the controlets' --replicas).
    #[arg(long, value_name = "NODES:REPLICAS", value_parser = parse_placement, requires = "owner_filter")]
    pub placement: Option<(u16, usize)>,

    /// Bytes per value; at least 40 (the header that names the write).
    #[arg(long, default_value_t = 100, value_parser = parse_value_size)]
    pub value_size: usize,

    /// Fraction of requests that are gets; the rest are sets.
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio)]
    pub get_ratio: f64,

    /// Set every key once before measuring, so gets hit.
    #[arg(long)]
    pub preload: bool,

    /// Seconds to measure for (default 10 if --requests is not given either).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub duration: Option<Duration>,

    /// Requests to measure; with --duration too, whichever ends first.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Seconds of load before measuring starts; not counted.
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_warmup)]
    pub warmup: Duration,

    /// Fraction of gets whose value is compared byte for byte with what its header says was
    /// written (1 checks every get). The 40-byte header is checked on every hit regardless.
    #[arg(long, default_value_t = 0.01, value_parser = parse_ratio)]
    pub verify_ratio: f64,

    /// Seconds a reply may take before its connection is given up as stuck.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_seconds)]
    pub request_timeout: Duration,

    /// Seed for key and operation choices (default: random; the report shows it).
    #[arg(long)]
    pub seed: Option<u64>,

    /// Worker threads of loadgen's runtime (default: one per CPU core).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,

    /// Also report the CPU time these processes (the servers under load, by pid) and loadgen
    /// itself used while measuring, per operation. Linux only: read from /proc.
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub cpu_of: Vec<u32>,

    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The measuring time when neither --duration nor --requests is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

impl Args {
    /// How long to measure: --duration, or [`DEFAULT_DURATION`] if no limit was given at all.
    pub fn duration_limit(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (None, None) => Some(DEFAULT_DURATION),
            (duration, _) => duration,
        }
    }

    /// The keys --keys-held-by or --keys-not-held-by keep, if either is given.
    pub fn owners(&self) -> Result<Option<Owners>, String> {
        let (node, held) = match (self.keys_held_by, self.keys_not_held_by) {
            (Some(node), _) => (node, true),
            (None, Some(node)) => (node, false),
            (None, None) => return Ok(None),
        };
        // clap requires --placement with either flag.
        let (nodes, replicas) = self.placement.ok_or("--placement is missing")?;
        Owners::new(nodes, replicas, node, held).map(Some)
    }
}

/// The longest key memcached accepts.
const MAX_KEY_BYTES: usize = 250;
/// The largest --value-size: memcached's ceiling for an item.
const MAX_VALUE_SIZE: usize = 1 << 30;

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a fraction between 0 and 1")),
    }
}

fn parse_theta(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t.is_finite() && t >= 0.0 => Ok(t),
        _ => Err(format!("{s:?} is not a non-negative number")),
    }
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    match parse_warmup(s)? {
        d if d.is_zero() => Err("must be more than 0 seconds".into()),
        d => Ok(d),
    }
}

fn parse_warmup(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

fn parse_prefix(s: &str) -> Result<String, String> {
    // The index takes up to 10 digits (at most 2^32 keys).
    if s.len() + 10 > MAX_KEY_BYTES {
        return Err(format!(
            "prefix too long: keys are at most {MAX_KEY_BYTES} bytes"
        ));
    }
    if s.bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err("a key prefix may not hold spaces or control characters".into());
    }
    Ok(s.to_string())
}

fn parse_placement(s: &str) -> Result<(u16, usize), String> {
    let parsed = s
        .split_once(':')
        .and_then(|(nodes, replicas)| Some((nodes.parse().ok()?, replicas.parse().ok()?)));
    match parsed {
        Some((nodes, replicas)) if nodes >= 1 && replicas >= 1 => Ok((nodes, replicas)),
        _ => Err(format!(
            "{s:?} is not NODES:REPLICAS (two positive numbers)"
        )),
    }
}

fn parse_value_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (HEADER_LEN..=MAX_VALUE_SIZE).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?}: values are {HEADER_LEN} to {MAX_VALUE_SIZE} bytes"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let args = parse(&[]).unwrap();
        assert_eq!(args.targets, ["127.0.0.1:11211"]);
        assert_eq!(
            (args.connections, args.pipeline, args.keys),
            (50, 1, 100_000)
        );
        assert_eq!(
            (args.value_size, args.get_ratio, args.verify_ratio),
            (100, 0.9, 0.01)
        );
        assert_eq!(args.key_dist, KeyDist::Uniform);
        assert_eq!(args.protocol, Protocol::Text);
        assert_eq!(args.duration_limit(), Some(DEFAULT_DURATION));
    }

    #[test]
    fn the_protocol_is_text_or_meta() {
        let meta = parse(&["--protocol", "meta"]).unwrap();
        assert_eq!(meta.protocol, Protocol::Meta);
        let text = parse(&["--protocol", "text"]).unwrap();
        assert_eq!(text.protocol, Protocol::Text);
    }

    #[test]
    fn targets_repeat_and_split_on_commas() {
        let args = parse(&["--target", "a:1,b:2", "--target", "c:3"]).unwrap();
        assert_eq!(args.targets, ["a:1", "b:2", "c:3"]);
    }

    #[test]
    fn requests_alone_means_no_time_limit() {
        let args = parse(&["--requests", "10"]).unwrap();
        assert_eq!(args.duration_limit(), None);
        let both = parse(&["--requests", "10", "--duration", "0.5"]).unwrap();
        assert_eq!(both.duration_limit(), Some(Duration::from_millis(500)));
    }

    #[test]
    fn an_owner_filter_needs_a_placement_and_a_node_in_it() {
        let none = parse(&[]).unwrap();
        assert!(none.owners().unwrap().is_none());
        let held = parse(&["--keys-held-by", "2", "--placement", "6:3"]).unwrap();
        assert_eq!((held.keys_held_by, held.placement), (Some(2), Some((6, 3))));
        assert!(held.owners().unwrap().is_some());
        let outside = parse(&["--keys-not-held-by", "7", "--placement", "6:3"]).unwrap();
        assert!(outside.owners().is_err());
    }

    #[test]
    fn nonsense_is_refused() {
        for bad in [
            &["--get-ratio", "1.5"][..],
            &["--value-size", "39"],
            &["--duration", "0"],
            &["--duration", "-1"],
            &["--connections", "0"],
            &["--key-prefix", "a b"],
            &["--zipf-theta", "-0.5"],
            &["--key-dist", "gaussian"],
            &["--protocol", "binary"],
            &["--keys-held-by", "1"],
            &["--placement", "6:3"],
            &[
                "--keys-held-by",
                "1",
                "--keys-not-held-by",
                "2",
                "--placement",
                "6:3",
            ],
            &["--keys-held-by", "1", "--placement", "6"],
            &["--keys-held-by", "1", "--placement", "0:3"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
