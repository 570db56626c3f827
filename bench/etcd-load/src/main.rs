//! etcd-load: a closed-loop load generator for etcd's v3 API, shaped like `loadgen` so that
//! `scripts/bench-etcd` can put a 3-member etcd beside tailorkv with the same clients, key
//! space and value size.
//!
//! It speaks gRPC through the `etcd-client` crate, as etcd's own clients do (etcd's
//! `benchmark` tool is not packaged by Debian). `--connections` gRPC channels, spread over
//! the endpoints, each with one request outstanding at a time; each request is a `Put` or,
//! with probability `--get-ratio`, a `Range` of one key (linearizable, etcd's default; or
//! serializable with `--serializable`), the key picked uniformly among `--keys`. Every key is
//! put once first (`--preload`). A value names its key and is `--value-size` bytes; every
//! `Range` must find its key with such a value, or it counts as an error, not an operation.
//!
//! Prints one JSON object: operations per second over the measured run, how many puts and
//! ranges were answered over the whole run (preload included, to check against etcd's own
//! `grpc_server_handled_total`), errors, and latency percentiles in microseconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etcd_client::{Client, GetOptions, KvClient};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::sync::{watch, Barrier};

#[derive(Parser, Debug)]
struct Args {
    /// etcd client URLs, comma-separated (e.g. http://127.0.0.1:2379).
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value_t = 0.9)]
    get_ratio: f64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long)]
    preload: bool,
    /// Seconds measured.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    #[arg(long, default_value = "")]
    key_prefix: String,
    /// Serializable ranges (served by the member asked, possibly stale) instead of
    /// linearizable ones.
    #[arg(long)]
    serializable: bool,
}

#[derive(Default)]
struct Tally {
    /// Answered, over the whole run (preload included).
    puts: u64,
    gets: u64,
    errors: u64,
    /// Requests of the measured run, answered or not.
    measured: u64,
    first_error: Option<String>,
    latency: Option<Histogram<u64>>,
}

fn key(args: &Args, k: usize) -> Vec<u8> {
    format!("{}key:{k}", args.key_prefix).into_bytes()
}

fn value(args: &Args, k: usize, n: u64) -> Vec<u8> {
    let mut v = format!("{}key:{k}={n}|", args.key_prefix).into_bytes();
    v.resize(args.value_size.max(v.len()), b'.');
    v
}

/// Whether `v` is a value written for key `k`.
fn valid(args: &Args, k: usize, v: &[u8]) -> bool {
    let head = format!("{}key:{k}=", args.key_prefix);
    v.starts_with(head.as_bytes()) && v.len() >= args.value_size
}

async fn connect(args: &Args, i: usize) -> Result<KvClient> {
    let endpoint = &args.endpoints[i % args.endpoints.len()];
    let client = Client::connect([endpoint.as_str()], None)
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    Ok(client.kv_client())
}

/// One connection: puts its share of the keys, waits at `loaded` for the others, then runs
/// from the start to the end `times` gives it.
async fn worker(
    args: Arc<Args>,
    mut kv: KvClient,
    id: usize,
    preload: std::ops::Range<usize>,
    loaded: Arc<Barrier>,
    mut times: watch::Receiver<Option<(Instant, Instant)>>,
) -> Tally {
    let mut tally = Tally::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut n = (id as u64) << 40;
    let fail = |tally: &mut Tally, why: String| {
        tally.errors += 1;
        tally.first_error.get_or_insert(why);
    };
    for k in preload {
        n += 1;
        match kv.put(key(&args, k), value(&args, k, n), None).await {
            Ok(_) => tally.puts += 1,
            Err(e) => fail(&mut tally, format!("preload put: {e}")),
        }
    }
    loaded.wait().await;
    let Ok((start, end)) = times
        .wait_for(Option::is_some)
        .await
        .map(|t| t.expect("waited for"))
    else {
        return tally;
    };
    tokio::time::sleep_until(start.into()).await;
    let options = || {
        args.serializable
            .then(|| GetOptions::new().with_serializable())
    };
    loop {
        let began = Instant::now();
        if began >= end {
            break;
        }
        let k = rng.random_range(0..args.keys);
        if rng.random_bool(args.get_ratio) {
            match kv.get(key(&args, k), options()).await {
                Ok(r) => match r.kvs().first() {
                    Some(item) if valid(&args, k, item.value()) => tally.gets += 1,
                    Some(_) => fail(&mut tally, format!("key {k}: a value not written for it")),
                    None => fail(&mut tally, format!("key {k}: missing")),
                },
                Err(e) => fail(&mut tally, format!("range: {e}")),
            }
        } else {
            n += 1;
            match kv.put(key(&args, k), value(&args, k, n), None).await {
                Ok(_) => tally.puts += 1,
                Err(e) => fail(&mut tally, format!("put: {e}")),
            }
        }
        tally.measured += 1;
        latency.saturating_record((began.elapsed().as_micros() as u64).max(1));
    }
    tally.latency = Some(latency);
    tally
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    if args.connections == 0 || args.keys == 0 {
        bail!("--connections and --keys must be at least 1");
    }
    let per = args.keys.div_ceil(args.connections);
    let loaded = Arc::new(Barrier::new(args.connections + 1));
    let (set_times, times) = watch::channel(None);
    let mut workers = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let kv = connect(&args, i).await?;
        let preload = if args.preload {
            (i * per).min(args.keys)..((i + 1) * per).min(args.keys)
        } else {
            0..0
        };
        let run = worker(
            Arc::clone(&args),
            kv,
            i,
            preload,
            Arc::clone(&loaded),
            times.clone(),
        );
        workers.push(tokio::spawn(run));
    }
    loaded.wait().await;
    let start = Instant::now() + Duration::from_millis(50);
    let _ = set_times.send(Some((start, start + Duration::from_secs(args.duration))));
    let mut total = Tally::default();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    for w in workers {
        let t = w.await.context("a worker failed")?;
        total.puts += t.puts;
        total.gets += t.gets;
        total.errors += t.errors;
        total.measured += t.measured;
        if total.first_error.is_none() {
            total.first_error = t.first_error;
        }
        if let Some(l) = t.latency {
            latency.add(&l).expect("same bounds");
        }
    }
    let good = total.measured.saturating_sub(total.errors);
    let report = serde_json::json!({
        "ops_per_sec": good as f64 / args.duration as f64,
        "answered": { "puts": total.puts, "ranges": total.gets },
        "errors": total.errors,
        "first_error": total.first_error,
        "latency_us": { "all": {
            "p50": latency.value_at_quantile(0.5),
            "p99": latency.value_at_quantile(0.99),
            "p999": latency.value_at_quantile(0.999),
        }},
    });
    println!("{report}");
    if total.errors > 0 {
        std::process::exit(2);
    }
    Ok(())
}
