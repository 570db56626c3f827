//! `staleness`: how stale can a read be, and how often? A staleness observer for any
//! memcached-protocol cluster (Bailis et al., "Probabilistically Bounded Staleness", VLDB
//! 2012: *t-visibility*).
//!
//! Each trial writes a new version of a key through one node (`--write`) and, once the write
//! is acknowledged, reads the key through the other nodes (`--read`, in turn) at each of
//! `--delays` milliseconds after the acknowledgement. A read that returns an older version
//! (or nothing) is stale. The report gives, per delay, the reads made and the share that were
//! stale: the probability that a read `t` ms after a write's acknowledgement misses it.
//!
//! ```text
//! staleness --write 127.0.0.1:11211 --read 127.0.0.1:11212,127.0.0.1:11213 --trials 1000
//! ```
//!
//! Trials run on `--threads` threads, each with a key of its own, written only by it, so
//! versions of a key only grow and a read can be placed exactly. Every reply is checked: an
//! error reply, or a write not answered `STORED`, is counted as an error and its read is not
//! counted at all, stale or fresh.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    name = "staleness",
    version,
    about = "Measures how often a read t ms after a write's acknowledgement misses it"
)]
struct Args {
    /// The node every write goes through.
    #[arg(long)]
    write: SocketAddr,

    /// The nodes reads go through, comma-separated, used in turn.
    #[arg(long, value_delimiter = ',', required = true)]
    read: Vec<SocketAddr>,

    /// Writes to make (each read at every delay).
    #[arg(long, default_value_t = 1000)]
    trials: u64,

    /// Milliseconds after each write's acknowledgement at which it is read, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,5,10,20,50,100")]
    delays: Vec<u64>,

    /// Trials run at once, each thread on a key of its own.
    #[arg(long, default_value_t = 4)]
    threads: u64,

    /// Prefix of the keys written (default: `staleness:<pid>`).
    #[arg(long)]
    prefix: Option<String>,

    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The stale share of the reads at one delay.
#[derive(Debug, Default, Clone, Serialize)]
struct Point {
    delay_ms: u64,
    reads: u64,
    stale: u64,
    p_stale: f64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    trials: u64,
    points: Vec<Point>,
    write_errors: u64,
    read_errors: u64,
    first_error: Option<String>,
}

/// One text-protocol connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end().to_string())
    }

    /// `set`; an error unless the reply is `STORED`.
    fn set(&mut self, key: &str, value: &str) -> anyhow::Result<()> {
        write!(self.writer, "set {key} 0 0 {}\r\n{value}\r\n", value.len())?;
        match self.line()?.as_str() {
            "STORED" => Ok(()),
            other => bail!("set {key}: {other}"),
        }
    }

    /// `get`: the value, or `None` on a miss.
    fn get(&mut self, key: &str) -> anyhow::Result<Option<String>> {
        write!(self.writer, "get {key}\r\n")?;
        let header = self.line()?;
        if header == "END" {
            return Ok(None);
        }
        let mut parts = header.split(' ');
        let (Some("VALUE"), Some(_), Some(_), Some(len)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("get {key}: {header}");
        };
        let len: usize = len.parse().context("value length")?;
        let mut value = vec![0; len + 2];
        std::io::Read::read_exact(&mut self.reader, &mut value)?;
        value.truncate(len);
        let end = self.line()?;
        if end != "END" {
            bail!("get {key}: {end} after the value");
        }
        Ok(Some(String::from_utf8_lossy(&value).into_owned()))
    }
}

/// What one thread saw.
#[derive(Default)]
struct Seen {
    reads: Vec<u64>,
    stale: Vec<u64>,
    write_errors: u64,
    read_errors: u64,
    first_error: Option<String>,
}

impl Seen {
    fn error(&mut self, e: &anyhow::Error) {
        self.first_error.get_or_insert_with(|| format!("{e:#}"));
    }
}

fn observe(args: &Args, key: &str, trials: u64) -> anyhow::Result<Seen> {
    let mut writer = Conn::open(args.write)?;
    let mut readers = args
        .read
        .iter()
        .map(|&addr| Conn::open(addr))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut seen = Seen {
        reads: vec![0; args.delays.len()],
        stale: vec![0; args.delays.len()],
        ..Seen::default()
    };
    let mut delays: Vec<(usize, u64)> = args.delays.iter().copied().enumerate().collect();
    delays.sort_by_key(|&(_, d)| d);
    let mut turn = 0;
    for version in 1..=trials {
        if let Err(e) = writer.set(key, &version.to_string()) {
            seen.write_errors += 1;
            seen.error(&e);
            // A broken connection is opened again; a refused write is just counted.
            if let Ok(conn) = Conn::open(args.write) {
                writer = conn;
            }
            continue;
        }
        let acked = Instant::now();
        for &(slot, delay) in &delays {
            let at = acked + Duration::from_millis(delay);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let i = turn % readers.len();
            turn += 1;
            match readers[i].get(key) {
                Ok(value) => {
                    let got = value.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    seen.reads[slot] += 1;
                    if got < version {
                        seen.stale[slot] += 1;
                    }
                }
                Err(e) => {
                    seen.read_errors += 1;
                    seen.error(&e);
                    if let Ok(conn) = Conn::open(args.read[i]) {
                        readers[i] = conn;
                    }
                }
            }
        }
    }
    Ok(seen)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.delays.is_empty() || args.threads == 0 || args.trials == 0 {
        bail!("--delays, --threads and --trials must not be empty or 0");
    }
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("staleness:{}", std::process::id()));
    let threads = args.threads.min(args.trials);
    let seen = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let trials = args.trials / threads + u64::from(t < args.trials % threads);
                let key = format!("{prefix}:{t}");
                let args = &args;
                scope.spawn(move || observe(args, &key, trials))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("observer thread"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut report = Report {
        trials: args.trials,
        ..Report::default()
    };
    for (slot, &delay_ms) in args.delays.iter().enumerate() {
        let reads: u64 = seen.iter().map(|s| s.reads[slot]).sum();
        let stale: u64 = seen.iter().map(|s| s.stale[slot]).sum();
        report.points.push(Point {
            delay_ms,
            reads,
            stale,
            p_stale: if reads == 0 {
                0.0
            } else {
                stale as f64 / reads as f64
            },
        });
    }
    report.write_errors = seen.iter().map(|s| s.write_errors).sum();
    report.read_errors = seen.iter().map(|s| s.read_errors).sum();
    report.first_error = seen.iter().find_map(|s| s.first_error.clone());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("delay_ms  reads  stale  p_stale");
        for p in &report.points {
            println!(
                "{:>8}  {:>5}  {:>5}  {:.4}",
                p.delay_ms, p.reads, p.stale, p.p_stale
            );
        }
        println!(
            "{} trials; {} write errors, {} read errors{}",
            report.trials,
            report.write_errors,
            report.read_errors,
            report
                .first_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (first: {e})"))
        );
    }
    Ok(())
}
