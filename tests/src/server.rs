//! Servers as child processes, one each on a free loopback port: a real memcached, or this
//! build's `controlet` or `datalet` binary.
//!
//! [`ServerProcess`] starts one and waits until it answers `version` as the right server
//! would: a memcached must not call itself tailorkv, our binaries must. A server that exits
//! at start (another process took its port first) is started again on another port. Its
//! output goes to a log file, removed with it unless the test panicked.
//!
//! The binaries are the ones of this build profile, built on first use by [`binary`] (cargo
//! builds another package's binaries for no test of this package, nor of `examples`). A
//! missing `memcached` fails the test, saying how to install it; it never skips it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::probe_version_as;
use crate::ports::free_port;

/// How long a server may take to answer `version` after it is started.
const START_WITHIN: Duration = Duration::from_secs(20);

/// Which server a [`ServerProcess`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `memcached`, from the system.
    Memcached,
    /// This build's `controlet` binary.
    Controlet,
    /// This build's `controlet` binary, started with memcached's own flags (`-p`, `-U`,
    /// `-l`, `-t`) where [`Kind::Controlet`] gets `--listen`: a controlet in memcached's place.
    ControletAsMemcached,
    /// This build's `datalet` binary.
    Datalet,
}

/// A server process on `127.0.0.1`. Dropping it kills it.
pub struct ServerProcess {
    /// Where it serves clients.
    pub addr: SocketAddr,
    kind: Kind,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    /// `user password`, for a server that wants clients to authenticate (`-Y`).
    login: Option<String>,
}

impl ServerProcess {
    /// A `kind` server with `args` whose clients authenticate (`-Y`, `--auth-file`) as
    /// `login` (`user password`): the harness does so to see it answer.
    pub fn start_with_login(kind: Kind, args: &[&str], login: &str) -> ServerProcess {
        Self::start_as(kind, args, Some(login.to_string()))
    }

    /// memcached with two threads, UDP off, and `args` added.
    pub fn memcached(args: &[&str]) -> ServerProcess {
        Self::start(Kind::Memcached, args)
    }

    /// A `controlet` with `args` added to `--listen`.
    pub fn controlet(args: &[&str]) -> ServerProcess {
        Self::start(Kind::Controlet, args)
    }

    /// A `datalet` with `args` added to `--listen`.
    pub fn datalet(args: &[&str]) -> ServerProcess {
        Self::start(Kind::Datalet, args)
    }

    /// A `kind` server with `args`, on the first free port it gets to keep.
    pub fn start(kind: Kind, args: &[&str]) -> ServerProcess {
        Self::start_as(kind, args, None)
    }

    fn start_as(kind: Kind, args: &[&str], login: Option<String>) -> ServerProcess {
        static N: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "tailorkv-{kind:?}-{}-{}.log",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut server = ServerProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kind,
            args: args.iter().map(|a| a.to_string()).collect(),
            child: None,
            log,
            login,
        };
        for _ in 0..20 {
            server.addr.set_port(free_port());
            if server.spawn() {
                return server;
            }
        }
        panic!("{kind:?} did not start: every port tried was taken");
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `SIGKILL`s it and waits until it is gone; its port stays its own for
    /// [`restart`](Self::restart).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (if it runs) and starts it again on the same port with the same arguments,
    /// as a restarted server would be: a memcached or memory store comes back empty.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "{:?} did not restart on {}",
                self.kind,
                self.addr
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends it `signal`.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.pid().expect("the server is not running");
        // SAFETY: signalling our own child, which we have not reaped: the pid is still ours.
        let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits until it exits, for up to `within` (then the test fails); how it exited.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("the server is not running");
            if let Some(status) = child.try_wait().expect("wait for the server") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} did not exit within {within:?}",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it printed (stdout and stderr), over all its starts.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Starts the process on `self.addr` and waits until it answers `version`; false (and
    /// the process killed) if it exited, or another server answers on its port.
    fn spawn(&mut self) -> bool {
        let mut cmd = match self.kind {
            Kind::Memcached => {
                let mut cmd = Command::new("memcached");
                let port = self.addr.port().to_string();
                cmd.args(["-p", &port, "-U", "0", "-l", "127.0.0.1", "-t", "2"]);
                // SAFETY: getuid has no preconditions. memcached refuses root without -u.
                if unsafe { libc::getuid() } == 0 {
                    cmd.args(["-u", "root"]);
                }
                cmd
            }
            Kind::ControletAsMemcached => {
                let mut cmd = Command::new(binary("controlet"));
                let port = self.addr.port().to_string();
                cmd.args(["-p", &port, "-U", "0", "-l", "127.0.0.1", "-t", "2"]);
                cmd
            }
            Kind::Controlet | Kind::Datalet => {
                let name = if self.kind == Kind::Controlet {
                    "controlet"
                } else {
                    "datalet"
                };
                let mut cmd = Command::new(binary(name));
                cmd.args(["--listen", &self.addr.to_string()]);
                cmd
            }
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        let stderr = log.try_clone().expect("clone the log file");
        let child = cmd
            .args(&self.args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {:?} ({e}); memcached comes from `apt-get install \
                     memcached`: run `bash scripts/test`, which installs it",
                    self.kind
                )
            });
        self.child = Some(child);
        if self.ready() {
            return true;
        }
        self.kill();
        false
    }

    /// Whether the process came up answering `version` as a server of its kind.
    fn ready(&mut self) -> bool {
        let deadline = Instant::now() + START_WITHIN;
        let version = loop {
            if self.exited() {
                return false;
            }
            let login = self.login.as_deref();
            if let Some(version) = probe_version_as(self.addr, Duration::from_secs(2), login) {
                break version;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} not answering on {} after {START_WITHIN:?}; its log:\n{}",
                self.kind,
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        // A memcached that lost the port to another server exits right after failing to bind.
        std::thread::sleep(Duration::from_millis(20));
        let ours = version.windows(8).any(|w| w == b"tailorkv");
        let right_server =
            version.starts_with(b"VERSION 1.") && ours == (self.kind != Kind::Memcached);
        right_server && !self.exited()
    }

    fn exited(&mut self) -> bool {
        let child = self.child.as_mut().expect("spawned");
        child.try_wait().ok().flatten().is_some()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "{:?} on {} logged to {}",
                self.kind,
                self.addr,
                self.log.display()
            );
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// This build profile's `name` binary of the `tailorkv-controlet` package (`controlet`,
/// `datalet`), built on first use with `cargo build -p tailorkv-controlet --bin <name>`; or
/// the one `TAILORKV_<NAME>` names (`TAILORKV_CONTROLET`, `TAILORKV_DATALET`).
pub fn binary(name: &str) -> &'static Path {
    static BINARIES: Mutex<BTreeMap<String, &'static Path>> = Mutex::new(BTreeMap::new());
    let mut binaries = BINARIES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = binaries.get(name) {
        return path;
    }
    let path: &'static Path = Box::leak(locate(name).into_boxed_path());
    binaries.insert(name.to_string(), path);
    path
}

/// Where `name` is: as [`binary`] says, building it if need be.
fn locate(name: &str) -> PathBuf {
    let var = format!("TAILORKV_{}", name.to_uppercase());
    if let Some(path) = std::env::var_os(&var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{var}={} is not a file", path.display());
        return path;
    }
    // A test runs from <target>/<profile>/deps/; binaries go to <target>/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "-p",
            "tailorkv-controlet",
            "--bin",
            name,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let out = build.output().expect("run cargo build");
    assert!(
        out.status.success(),
        "cargo build -p tailorkv-controlet --bin {name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let binary = profile_dir.join(name);
    assert!(
        binary.is_file(),
        "{} missing after cargo build",
        binary.display()
    );
    binary
}
