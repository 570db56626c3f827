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

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tailorkv_tests::Controlet;

/// The script needs about 3 s; this leaves room for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/meta_client.py")
}

/// Runs `python3 args...` with a time limit, capturing its output.
fn python(args: &[&str]) -> Output {
    let mut child = Command::new("python3")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3, then run `bash scripts/test`")
        });
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for python3") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "python3 {args:?} still running after {SCRIPT_TIMEOUT:?}; killed it.\n\
                 stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.join().unwrap()),
                String::from_utf8_lossy(&err.join().unwrap()),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
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
