//! Real clients of memcached's binary protocol against the controlet: pylibmc (Python, over
//! libmemcached) with `binary=True`, and memjs (Node.js, which speaks only the binary
//! protocol). Each runs every command it offers against one controlet, and authenticates with
//! SASL PLAIN against another started with `--auth-file`. The checks themselves are in
//! `tests/python/pylibmc_client.py` and `tests/node/memjs_client.js`, which pass against a
//! real memcached 1.6.18 too (its SASL set up with a Cyrus sasldb, which these tests do not
//! need: they run SASL against the controlet alone).
//!
//! pylibmc, Node.js and memjs must be installed (`bash scripts/test` installs them: pip,
//! apt, and `npm ci` in `tests/node`): without them these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tailorkv_tests::Controlet;

/// What the controlet answers to `version`.
const VERSION: &str = concat!("1.6.18-tailorkv-", env!("CARGO_PKG_VERSION"));

/// The scripts need a few seconds; this leaves room for a loaded machine.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The user the SASL checks authenticate as.
const USER: &str = "alice";
const PASSWORD: &str = "s3cret pass";

/// [`tailorkv_tests::script::run`] with [`SCRIPT_TIMEOUT`].
fn run(program: &str, args: &[&str], dir: &Path) -> Output {
    tailorkv_tests::script::run(program, args, dir, SCRIPT_TIMEOUT)
}

fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A plain controlet, and one whose `--auth-file` holds [`USER`] (and another user), with the
/// file's directory (kept until the test ends).
fn controlets() -> (Controlet, Controlet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, format!("{USER}:{PASSWORD}\nbob:other\n")).unwrap();
    let plain = Controlet::start();
    let authenticating = Controlet::start_with(move |c| c.auth_file = Some(file));
    (plain, authenticating, dir)
}

/// Checks a script's output: it succeeded, and its last line is the summary
/// `<client> ...: N checks passed ...` with more than `min_checks` checks, naming `sasl`.
fn check_summary(name: &str, out: &Output, min_checks: usize) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {name} client checks failed ({}).\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or("");
    let checks: usize = summary
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        summary.starts_with(name) && summary.contains(" checks passed "),
        "unexpected output from the {name} checks:\n{stdout}\n{stderr}"
    );
    assert!(checks > min_checks, "only {checks} checks ran: {summary}");
    assert!(
        summary.contains("sasl"),
        "the SASL checks did not run: {summary}"
    );
    println!("{summary}");
}

/// pylibmc (libmemcached) with `binary=True`: get/set of every value kind, multi-key
/// commands, add/replace/append/prepend, gets/cas, incr/decr, touch, a 900 KB value and one
/// too large, keys with spaces, CR LF, NUL and other bytes the binary protocol allows,
/// flush_all, libmemcached's noreply mode (the quiet opcodes), a client pool on 8 threads;
/// then `username=`/`password=` (SASL PLAIN) against the controlet with `--auth-file`.
#[test]
fn pylibmc_binary_protocol_and_sasl() {
    let probe = run(
        "python3",
        &["-c", "import pylibmc; print(pylibmc.__version__)"],
        &tests_dir(),
    );
    assert!(
        probe.status.success(),
        "pylibmc is not installed for python3, so the pylibmc client test cannot run. Run \
         `bash scripts/test`, which pip-installs it (or `python3 -m pip install pylibmc==1.6.3`).\n\
         python3 said:\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let (plain, authenticating, _dir) = controlets();
    let script = tests_dir().join("python/pylibmc_client.py");
    let (a, b) = (plain.addr.to_string(), authenticating.addr.to_string());
    let args = [
        script.to_str().unwrap(),
        &a,
        "--expect-version",
        VERSION,
        "--sasl",
        &b,
        USER,
        PASSWORD,
    ];
    let out = run("python3", &args, &tests_dir());
    check_summary("pylibmc", &out, 140);
}

/// memjs, which speaks only the binary protocol: set/get of text, binary and empty values,
/// add/replace/append/prepend, delete, increment/decrement, touch, flush, stats, a 900 KB
/// value and one too large, odd keys, 300 requests in flight; then SASL PLAIN (memjs lists
/// the mechanisms first) with `username`/`password` and in `user:pass@host:port` form.
#[test]
fn memjs_binary_protocol_and_sasl() {
    let node_dir = tests_dir().join("node");
    let probe = run(
        "node",
        &["-e", "console.log(require('memjs/package.json').version)"],
        &node_dir,
    );
    assert!(
        probe.status.success(),
        "memjs is not installed in tests/node, so the memjs client test cannot run. Run \
         `bash scripts/test`, which installs Node.js and runs `npm ci` in tests/node.\n\
         node said:\n{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let (plain, authenticating, _dir) = controlets();
    let (a, b) = (plain.addr.to_string(), authenticating.addr.to_string());
    let args = [
        "memjs_client.js",
        &a,
        "--expect-version",
        VERSION,
        "--sasl",
        &b,
        USER,
        PASSWORD,
    ];
    let out = run("node", &args, &node_dir);
    check_summary("memjs", &out, 70);
}
