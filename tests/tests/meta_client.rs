//! meta-memcache, RevenueCat's Python client for memcached's META protocol (`mg`, `ms`, `md`,
//! `ma`, `mn`), against two controlets: get/set with its serializer's client flags, CAS,
//! delete, touch and TTLs, meta arithmetic, stale-while-revalidate (`md I`, the win and
//! stale flags, recache with the token), early recache (`mg R`), leases (`mg N`), base64 and
//! hashed keys (`b`), values of 0 bytes to 900 KB, multi-get and quiet (`q` + `mn`)
//! pipelining, 8 threads sharing a client, expiry, and its consistent hashing over both
//! servers. The checks themselves are in `tests/python/meta_client.py`, which also passes
//! against a real memcached 1.6.18.
//!
//! meta-memcache must be installed (`bash scripts/test` pip-installs it): without it this test
//! fails, it does not skip.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use tailorkv_tests::Controlet;

/// The script needs about 3 s; this leaves room for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `python3 args...` with [`SCRIPT_TIMEOUT`], capturing its output.
fn python(args: &[&str]) -> Output {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tailorkv_tests::script::run("python3", args, &dir, SCRIPT_TIMEOUT)
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/meta_client.py")
}

fn require_meta_memcache() {
    let probe = python(&[
        "-c",
        "import meta_memcache; print(meta_memcache.__version__)",
    ]);
    assert!(
        probe.status.success(),
        "meta-memcache is not installed for python3, so the meta protocol client test cannot \
         run. Run `bash scripts/test`, which pip-installs it (or \
         `python3 -m pip install meta-memcache`).\npython3 said:\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
}

#[test]
fn meta_memcache_client_commands_and_hashing() {
    require_meta_memcache();
    let first = Controlet::start();
    let second = Controlet::start();
    let script = script();
    let (a, b) = (first.addr.to_string(), second.addr.to_string());
    let out = python(&[script.to_str().unwrap(), &a, &b]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "meta_client.py failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    // The script ends with a summary: make sure it got that far and checked something.
    let summary = stdout.lines().last().unwrap_or("");
    assert!(
        summary.starts_with("meta-memcache ") && summary.contains(" checks passed "),
        "unexpected output from meta_client.py:\n{stdout}\n{stderr}"
    );
    let checks: usize = summary
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(checks > 600, "only {checks} checks ran: {summary}");
    for section in ["stale_while_revalidate", "lease", "timed", "hash_ring"] {
        assert!(
            summary.contains(section),
            "section {section} did not run: {summary}"
        );
    }
    println!("{summary}");
}
