//! pymemcache, a widely used Python memcached client, against two controlets: every command
//! its `Client` offers, `PooledClient` from 8 threads, and `HashClient` spreading keys over
//! both servers. The checks themselves are in `tests/python/pymemcache_client.py`, which also
//! passes against a real memcached 1.6.
//!
//! pymemcache must be installed (`bash scripts/test` pip-installs it): without it this test
//! fails, it does not skip.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tailorkv_tests::Controlet;

/// What the controlet answers to `version`.
const VERSION: &str = concat!("1.6.18-tailorkv-", env!("CARGO_PKG_VERSION"));

/// The script needs about 8 s; this leaves room for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `python3 args...` with [`SCRIPT_TIMEOUT`], capturing its output.
fn python(args: &[&str]) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tailorkv_tests::script::run("python3", args, &dir, SCRIPT_TIMEOUT)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/pymemcache_client.py")
}

fn require_pymemcache() {
    let probe = python(&["-c", "import pymemcache; print(pymemcache.__version__)"]);
    assert!(
        probe.status.success(),
        "pymemcache is not installed for python3, so the pymemcache client test cannot run. \
         Run `bash scripts/test`, which pip-installs it (or `python3 -m pip install pymemcache`).\n\
         python3 said:\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

#[test]
fn pymemcache_client_commands_pool_and_hashing() {
    require_pymemcache();
    let first = Controlet::start();
    let second = Controlet::start();
    let script = script();
    let (a, b) = (first.addr.to_string(), second.addr.to_string());
    let args = [
        script.to_str().unwrap(),
        &a,
        &b,
        "--expect-version",
        VERSION,
    ];
    let out = python(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pymemcache_client.py failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    // The script ends with a summary: make sure it got that far and checked something.
    let summary = stdout.lines().last().unwrap_or("");
    assert!(
        summary.starts_with("pymemcache ") && summary.contains(" checks passed "),
        "unexpected output from pymemcache_client.py:\n{stdout}\n{stderr}"
    );
    let checks: usize = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(checks > 500, "only {checks} checks ran: {summary}");
    assert!(
        summary.contains("hash_client"),
        "HashClient did not run: {summary}"
    );
    println!("{summary}");
}

/// pymemcache's `HashClient` over a 6-node cluster with 3 copies of each key: it picks a node
/// per key by its own hashing, which knows nothing of the cluster's placement, and every key
/// still lands in its group (most are forwarded); then a plain `Client` on each node reads
/// every key, and sees the deletes made through the others.
#[test]
fn hash_client_on_a_sharded_cluster() {
    require_pymemcache();
    let cluster = tailorkv_tests::Cluster::start(
        6,
        tailorkv_controlet::config::Consistency::Linearizable,
        |c| c.replicas = Some(3),
    );
    let code = r#"
import sys
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
servers = [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in sys.argv[1:]]
hashed = HashClient(servers, connect_timeout=5, timeout=10)
keys = ["hk%d" % i for i in range(300)]
for k in keys:
    assert hashed.set(k, ("v-" + k).encode(), noreply=False), k
got = hashed.get_many(keys)
assert got == {k: ("v-" + k).encode() for k in keys}, "get_many through HashClient"
for k in keys[::2]:
    assert hashed.delete(k, noreply=False), k
checked = 0
for server in servers:
    plain = Client(server, connect_timeout=5, timeout=10)
    seen = plain.get_many(keys)
    expected = {k: ("v-" + k).encode() for k in keys[1::2]}
    assert seen == expected, (server, len(seen))
    checked += len(keys)
print("ok", checked)
"#;
    let addrs: Vec<String> = cluster.addrs().iter().map(|a| a.to_string()).collect();
    let mut args = vec!["-c", code];
    args.extend(addrs.iter().map(String::as_str));
    let out = python(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.trim() == "ok 1800",
        "HashClient on a sharded cluster failed ({}).\n{stdout}\n{stderr}",
        out.status
    );
}
