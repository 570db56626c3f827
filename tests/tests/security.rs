//! Peer authentication (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`, or
//! `--peer-secret-file`), with real `controlet` processes: a stranger who knows the protocol
//! can disturb a cluster whose peer links are plain, and cannot disturb one whose links need
//! a certificate of the cluster's CA or proof of its secret.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tailorkv_tests::checker::OpResult;
use tailorkv_tests::client::McConn;
use tailorkv_tests::ports::free_port;
use tailorkv_tests::procs::{output_of, ProcCluster};
use tailorkv_tests::server::binary;

/// A fresh directory for a test's certificates.
fn cert_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailorkv-certs-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `tailorkv-admin certs --dir DIR --nodes ...`: a CA in `dir` and the nodes' certificates.
fn make_certs(dir: &Path, nodes: &str) {
    let mut certs = Command::new(binary("tailorkv-admin"));
    certs
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--nodes", nodes]);
    if let Err(e) = output_of(&mut certs) {
        panic!("tailorkv-admin certs failed: {e}");
    }
}

/// The arguments that give node `{node}` its TLS from `dir`.
fn tls_args(dir: &Path) -> Vec<String> {
    let d = dir.display();
    vec![
        "--peer-tls-cert".into(),
        format!("{d}/node-{{node}}.pem"),
        "--peer-tls-key".into(),
        format!("{d}/node-{{node}}-key.pem"),
        "--peer-tls-ca".into(),
        format!("{d}/ca.pem"),
    ]
}

/// Node `i`'s `cluster_epoch` (the view of its one group), or why it could not be read.
fn epoch(cluster: &ProcCluster, i: usize) -> Result<u64, String> {
    let mut c =
        McConn::connect(cluster.addr(i), Duration::from_secs(5)).map_err(|e| e.to_string())?;
    let deadline = c.send(b"stats\r\n").map_err(|e| format!("{e:?}"))?;
    let mut epoch = None;
    loop {
        let line = c.read_line(deadline).map_err(|e| format!("{e:?}"))?;
        if line == b"END" {
            return epoch.ok_or_else(|| format!("node {i} has no cluster_epoch"));
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if let Some(v) = line.strip_prefix("STAT cluster_epoch ") {
            epoch = v.parse().ok();
        }
    }
}

/// Every node's `cluster_epoch`.
fn epochs(cluster: &ProcCluster) -> Vec<u64> {
    (1..=cluster.len())
        .map(|i| epoch(cluster, i).unwrap_or_else(|e| panic!("node {i}: {e}")))
        .collect()
}

/// The value of the sample `name` in the node's `/metrics` at `http`.
fn metric(http: SocketAddr, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http).expect("connect to /metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A process that claims to be node 2 of `cluster`: a controlet of the same mode and item
/// size, named node 2 in a member list of the cluster's own peer addresses but its own, with
/// `extra` arguments. Its log goes to `log`.
fn impostor(cluster: &ProcCluster, extra: &[String], log: &Path) -> Child {
    let own = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let peers = format!(
        "1@{},2@{own},3@{}",
        cluster.peer_addr(1),
        cluster.peer_addr(3)
    );
    let log = std::fs::File::create(log).unwrap();
    Command::new(binary("controlet"))
        .args([
            "--id",
            "2",
            "--consistency",
            "linearizable",
            "--replicas",
            "3",
        ])
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--peers", &peers])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the impostor")
}

/// Writes through node 1 for `how_long`; every write must be acknowledged (a view change
/// may hold one up, never lose it).
fn write_for(cluster: &ProcCluster, how_long: Duration) -> u64 {
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(10)).unwrap();
    let end = Instant::now() + how_long;
    let mut n = 0;
    while Instant::now() < end {
        assert_eq!(
            c.set(&format!("w{n}"), b"v").unwrap(),
            OpResult::Stored,
            "write {n}"
        );
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    n
}

/// Writes through node 1 for 4 s while `strangers` keep trying to get in, then stops them:
/// each must still have been trying, every write must be acknowledged, and the view must be
/// `before`.
fn strangers_change_nothing(cluster: &ProcCluster, mut strangers: [Child; 2], before: &[u64]) {
    let written = write_for(cluster, Duration::from_secs(4));
    for s in &mut strangers {
        assert!(
            s.try_wait().unwrap().is_none(),
            "a stranger stopped: it must keep trying for the test to mean anything"
        );
        let _ = s.kill();
        let _ = s.wait();
    }
    assert!(written > 50, "only {written} writes in 4 s");
    assert_eq!(
        epochs(cluster),
        before,
        "a stranger changed the view\n{}",
        cluster.describe()
    );
}

/// The control: with plain peer links, a process that knows the mode and the item size and
/// calls itself node 2 is taken for a new run of node 2, and the members change views to
/// let "it" back in. This is the attack peer TLS stops; if this test ever fails, the one
/// below proves nothing.
#[test]
fn without_peer_tls_a_stranger_calling_itself_a_member_forces_a_view_change() {
    let cluster = ProcCluster::start(3, "linearizable", &[]);
    write_for(&cluster, Duration::from_millis(200));
    let before = epochs(&cluster);
    let log = cluster.dir().join("impostor.log");
    let mut stranger = impostor(&cluster, &[], &log);
    let deadline = Instant::now() + Duration::from_secs(15);
    // While views change, `stats` may wait on the cluster: a node that cannot answer in
    // time is asked again.
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = epoch(&cluster, 1);
        if now.as_ref().is_ok_and(|&e| e > before[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stranger changed nothing (epochs {before:?}, node 1 now {now:?}): the control failed"
        );
    }
    let _ = stranger.kill();
    let _ = stranger.wait();
}

/// With peer TLS, neither a stranger without a certificate nor one with a certificate of
/// another CA (for node 2, even) gets a message to a member: the view stays as it was, every
/// write is acknowledged, and the members log why they refused. The cluster itself runs
/// over TLS: writes through node 1 are read through node 3.
#[test]
fn with_peer_tls_strangers_cannot_change_the_view() {
    let certs = cert_dir("strangers");
    make_certs(&certs, "1,2,3");
    let args = tls_args(&certs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = ProcCluster::start(3, "linearizable", &args);
    write_for(&cluster, Duration::from_millis(200));
    let mut c3 = McConn::connect(cluster.addr(3), Duration::from_secs(10)).unwrap();
    assert_eq!(
        c3.gets("w0").unwrap().map(|(v, _)| v),
        Some(b"v".to_vec()),
        "replicated over TLS"
    );
    let before = epochs(&cluster);

    let plain = impostor(&cluster, &[], &cluster.dir().join("plain.log"));
    let other_ca = cert_dir("other-ca");
    make_certs(&other_ca, "2");
    let own = tls_args(&other_ca)
        .into_iter()
        .map(|a| a.replace("{node}", "2"))
        .collect::<Vec<_>>();
    let forged = impostor(&cluster, &own, &cluster.dir().join("other-ca.log"));
    strangers_change_nothing(&cluster, [plain, forged], &before);
    // Refusals are counted, and logged at most once a second whatever their number.
    let refused = metric(
        cluster.http_addr(1),
        "tailorkv_peer_connections_refused_total",
    );
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    let logged = log
        .lines()
        .filter(|l| l.contains("refused a peer connection: TLS handshake failed"))
        .count();
    assert!(logged >= 1, "node 1 does not say it refused the strangers");
    assert!(
        refused >= 10.0 && (logged as f64) < refused && logged <= 10,
        "{refused} connections refused, {logged} log lines about them"
    );
    let _ = std::fs::remove_dir_all(&certs);
    let _ = std::fs::remove_dir_all(&other_ca);
}

/// With a shared secret (`--peer-secret-file`) and no TLS, neither a stranger without the
/// secret nor one with another secret gets a message to a member: the view stays as it was,
/// every write is acknowledged and replicated, and the members log why they refused.
#[test]
fn with_a_peer_secret_strangers_cannot_change_the_view() {
    let dir = cert_dir("secret");
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "kLq1m0sZ3u+9Vb2pYw8RcT4xNe7aJhGd\n").unwrap();
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "an entirely different secret, 33B\n").unwrap();
    let flag = |path: &Path| vec!["--peer-secret-file".to_string(), path.display().to_string()];
    let args = flag(&secret);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cluster = ProcCluster::start(3, "linearizable", &args);
    write_for(&cluster, Duration::from_millis(200));
    let mut c3 = McConn::connect(cluster.addr(3), Duration::from_secs(10)).unwrap();
    assert_eq!(
        c3.gets("w0").unwrap().map(|(v, _)| v),
        Some(b"v".to_vec()),
        "replicated over links that proved the secret"
    );
    let before = epochs(&cluster);
    let plain = impostor(&cluster, &[], &cluster.dir().join("plain.log"));
    let forged = impostor(&cluster, &flag(&wrong), &cluster.dir().join("wrong.log"));
    strangers_change_nothing(&cluster, [plain, forged], &before);
    let refused = metric(
        cluster.http_addr(1),
        "tailorkv_peer_connections_refused_total",
    );
    assert!(refused >= 2.0, "only {refused} connections refused");
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(
        log.contains("refused a peer connection: it did not prove it holds the cluster secret"),
        "node 1 does not say why it refused the strangers"
    );
    let wrong_log = std::fs::read_to_string(cluster.dir().join("wrong.log")).unwrap();
    assert!(
        wrong_log.contains("peer handshake failed")
            && wrong_log.contains("the peer closed the connection on our hello"),
        "the node with the wrong secret does not say why it cannot talk"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node with a certificate of the cluster's CA joins a TLS cluster and takes a copy.
#[test]
fn a_node_with_a_certificate_joins_a_tls_cluster() {
    let certs = cert_dir("join");
    make_certs(&certs, "1,2,3,4");
    let mut args = tls_args(&certs);
    args.extend(["--groups", "6"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster = ProcCluster::start(3, "linearizable", &args);
    let mut c = McConn::connect(cluster.addr(1), Duration::from_secs(10)).unwrap();
    for i in 0..100 {
        assert_eq!(c.set(&format!("k{i}"), b"v").unwrap(), OpResult::Stored);
    }
    let four = cluster.join(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let members = cluster.admin(1, &["members", "--json"]).unwrap();
        let settled = cluster
            .admin(four, &["status", "--json"])
            .is_ok_and(|s| s.contains("\"groups\"") && !s.contains("\"settled\":false"));
        if members.contains("\"epoch\":2") && settled {
            break;
        }
        assert!(Instant::now() < deadline, "node 4 never joined: {members}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut c4 = McConn::connect(cluster.addr(four), Duration::from_secs(10)).unwrap();
    for i in 0..100 {
        assert_eq!(
            c4.gets(&format!("k{i}")).unwrap().map(|(v, _)| v),
            Some(b"v".to_vec())
        );
    }
    let _ = std::fs::remove_dir_all(&certs);
}

// ---------------------------------------------------------------- TLS on the client port

/// Certificates for the client port, written to a fresh directory: a CA, a server
/// certificate for 127.0.0.1 and localhost, and a client certificate.
struct ClientCerts {
    dir: PathBuf,
}

impl ClientCerts {
    fn new(test: &str) -> Self {
        let dir = cert_dir(test);
        std::fs::create_dir_all(&dir).unwrap();
        let certs = ClientCerts { dir };
        certs.issue("", 0);
        certs
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A CA and its certificates, under file names starting with `prefix`; `generation`
    /// tells apart the CAs of successive calls.
    fn issue(&self, prefix: &str, generation: u32) {
        use tailorkv_controlet::peer::tls::Certs;
        let ca = Certs::new_ca().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(self.path(&format!("{prefix}{name}")), text).unwrap();
        };
        write("ca.pem", &ca.ca_cert_pem().unwrap());
        let (cert, key) = ca
            .server(&["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
        write("server.pem", &cert);
        write("server-key.pem", &key);
        let (cert, key) = ca.client(&format!("client-{generation}")).unwrap();
        write("client.pem", &cert);
        write("client-key.pem", &key);
    }
}

impl Drop for ClientCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A controlet in this process serving TLS with `certs`' server certificate; `verify` also
/// requires client certificates of the CA.
fn tls_node(certs: &ClientCerts, verify: bool) -> tailorkv_tests::Controlet {
    tailorkv_tests::Controlet::start_with(|c| {
        c.tls_cert = Some(certs.path("server.pem"));
        c.tls_key = Some(certs.path("server-key.pem"));
        c.tls_ca = verify.then(|| certs.path("ca.pem"));
    })
}

/// Runs `code` in Python with pymemcache, `PORT` and `DIR` set; its output, or why it failed.
fn pymemcache(port: u16, dir: &Path, code: &str) -> Result<String, String> {
    let script = format!(
        "import ssl, sys\nfrom pymemcache.client.base import Client\nPORT = {port}\nDIR = {dir:?}\n{code}\n",
        dir = dir.display().to_string()
    );
    output_of(Command::new("python3").args(["-c", &script]))
}

/// A pymemcache client over TLS, trusting the CA in `DIR/<prefix>ca.pem`.
const CLIENT: &str = r#"
def client(prefix="", cert=None):
    ctx = ssl.create_default_context(cafile=f"{DIR}/{prefix}ca.pem")
    if cert is not None:
        ctx.load_cert_chain(f"{DIR}/{cert}client.pem", f"{DIR}/{cert}client-key.pem")
    return Client(("127.0.0.1", PORT), tls_context=ctx, connect_timeout=5, timeout=5)
"#;

/// pymemcache with an `ssl.SSLContext` that checks the server's certificate (and its
/// name, 127.0.0.1) stores and reads over TLS; a client that trusts another CA is refused
/// by its own check, and a plain client gets nothing from the TLS port.
#[test]
fn pymemcache_over_tls_and_a_wrong_certificate_is_refused() {
    let certs = ClientCerts::new("client-tls");
    certs.issue("other-", 1);
    let node = tls_node(&certs, false);
    let port = node.addr.port();
    let ok = pymemcache(
        port,
        &certs.dir,
        &format!(
            "{CLIENT}\nc = client()\nc.set('k', b'over tls')\nprint(c.get('k').decode())\nprint(c.stats()[b'ssl_handshake_errors'])"
        ),
    )
    .unwrap();
    assert_eq!(ok, "over tls\n0\n");
    let wrong = pymemcache(
        port,
        &certs.dir,
        &format!("{CLIENT}\nclient('other-').get('k')"),
    );
    let why = wrong.expect_err("a client trusting another CA was served");
    assert!(why.contains("CERTIFICATE_VERIFY_FAILED"), "{why}");
    let plain = pymemcache(
        port,
        &certs.dir,
        "Client(('127.0.0.1', PORT), connect_timeout=5, timeout=2).get('k')",
    );
    assert!(plain.is_err(), "a plain client was served: {plain:?}");
    let errors = pymemcache(
        port,
        &certs.dir,
        &format!("{CLIENT}\nprint(client().stats()[b'ssl_handshake_errors'])"),
    )
    .unwrap();
    assert_eq!(errors.trim(), "2", "both refused handshakes are counted");
}

/// With `--tls-ca`, a client must present a certificate of that CA.
#[test]
fn client_certificates_are_required_with_a_client_ca() {
    let certs = ClientCerts::new("client-ca");
    certs.issue("other-", 1);
    let node = tls_node(&certs, true);
    let port = node.addr.port();
    let with = pymemcache(
        port,
        &certs.dir,
        &format!("{CLIENT}\nc = client(cert='')\nc.set('k', b'v')\nprint(c.get('k').decode())"),
    );
    assert_eq!(with.unwrap(), "v\n");
    let without = pymemcache(port, &certs.dir, &format!("{CLIENT}\nclient().get('k')"));
    assert!(
        without.is_err(),
        "a client without a certificate was served"
    );
    let foreign = pymemcache(
        port,
        &certs.dir,
        &format!("{CLIENT}\nclient(cert='other-').get('k')"),
    );
    assert!(
        foreign.is_err(),
        "a client with another CA's certificate was served"
    );
}

/// SIGHUP reads the client TLS files again, as `refresh_certs` does: a controlet process
/// serving one CA's certificate serves the next CA's once signalled.
#[test]
fn sighup_takes_new_certificates_without_a_restart() {
    let certs = ClientCerts::new("sighup");
    let port = free_port();
    let mut node = Command::new(binary("controlet"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(certs.path("server.pem"))
        .arg("--tls-key")
        .arg(certs.path("server-key.pem"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a controlet");
    let served = |prefix: &str| {
        let code = format!("{CLIENT}\nclient(\"{prefix}\").set('k', b'v')");
        pymemcache(port, &certs.dir, &code).is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !served("") {
        assert!(Instant::now() < deadline, "the node never served TLS");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::copy(certs.path("ca.pem"), certs.path("first-ca.pem")).unwrap();
    certs.issue("", 2);
    assert!(
        served("first-"),
        "the files changed on disk, and the node goes on as it was"
    );
    // SAFETY: kill only sends a signal to the child started above.
    assert_eq!(unsafe { libc::kill(node.id() as i32, libc::SIGHUP) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served("") {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not load the new certificate"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!served("first-"), "the old certificate is still served");
    let _ = node.kill();
    let _ = node.wait();
}

/// `refresh_certs` reads the files again: once they hold a new CA's certificate, new
/// connections get it and old ones go on; files that do not load leave the last good ones in
/// use and the command says why.
#[test]
fn refresh_certs_takes_new_certificates_without_a_restart() {
    let certs = ClientCerts::new("refresh");
    let node = tls_node(&certs, false);
    let port = node.addr.port();
    // The node has read its files once it serves TLS with them.
    let first = pymemcache(
        port,
        &certs.dir,
        &format!("{CLIENT}\nprint(client().version())"),
    );
    assert!(first.is_ok(), "{first:?}");
    // Keep the first CA under another name, then put a new CA's files in place.
    std::fs::copy(certs.path("ca.pem"), certs.path("first-ca.pem")).unwrap();
    certs.issue("", 2);
    let script = format!(
        r#"{CLIENT}
old = client("first-")
old.set('k', b'1')
print(client("first-").get('k').decode())
print(old.raw_command(b'refresh_certs', b'\r\n').decode())
print(client().get('k').decode())
try:
    client("first-").get('k')
    print("old CA still accepted")
except ssl.SSLError:
    print("old CA refused")
print(old.get('k').decode())
open(f"{{DIR}}/server.pem", "w").write("not a certificate")
from pymemcache.exceptions import MemcacheClientError
try:
    old.raw_command(b'refresh_certs', b'\r\n')
except MemcacheClientError as e:
    print("CLIENT_ERROR " + e.args[0].decode().split(':')[0])
print(client().get('k').decode())
"#
    );
    let out = pymemcache(port, &certs.dir, &script).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "1",
            "OK",
            "1",
            "old CA refused",
            "1",
            "CLIENT_ERROR Error loading the certificates",
            "1"
        ],
        "{out}"
    );
}

// ---------------------------------------------------------------- limits

/// Raises this process's soft limit on open files to `want`, or to its hard limit if that is
/// lower; the limit now. (Child processes, the node among them, inherit it.)
fn raise_open_files(want: u64) -> u64 {
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
        limit.rlim_cur
    }
}

/// 10,000 connections opened as fast as the node accepts them: past `--max-connections`
/// each is told `ERROR Too many open connections` and closed, the node's connections stay
/// at the limit, a client connected before the flood is served throughout (no request
/// waits a second), and once the flood ends new clients are served again.
#[test]
fn a_flood_of_10_000_connections_leaves_the_node_serving_its_clients() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let files = raise_open_files(12_000);
    assert!(
        files >= 10_500,
        "the flood needs 10,500 open files and this process may have {files}"
    );
    let node = tailorkv_tests::ServerProcess::controlet(&["--max-connections", "1000"]);
    let addr = node.addr;
    let mut client = McConn::connect(addr, Duration::from_secs(5)).unwrap();
    assert_eq!(client.set("k", b"v").unwrap(), OpResult::Stored);
    let stop = AtomicBool::new(false);
    let (slowest, served, flood_opened) = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let (mut slowest, mut served) = (Duration::ZERO, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                assert_eq!(client.set("k", b"v").unwrap(), OpResult::Stored);
                assert_eq!(
                    client.gets("k").unwrap().map(|(v, _)| v),
                    Some(b"v".to_vec())
                );
                slowest = slowest.max(started.elapsed());
                served += 1;
                // A client at its own pace, not one taking every cycle the node has.
                std::thread::sleep(Duration::from_millis(5));
            }
            (slowest, served)
        });
        // Eight openers at once: a connection whose first SYN the kernel drops waits a second
        // for its retry, and the others go on meanwhile.
        let flooding = Instant::now();
        let openers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(move || {
                    (0..1_250)
                        .filter_map(|_| {
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let flood: Vec<_> = openers
            .into_iter()
            .flat_map(|o| o.join().unwrap())
            .collect();
        let opened = flood.len();
        eprintln!(
            "FIGURE flood_connections={opened} flood_ms={}",
            flooding.elapsed().as_millis()
        );
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
        let (slowest, served) = worker.join().unwrap();
        drop(flood);
        (slowest, served, opened)
    });
    assert!(
        flood_opened >= 9_000,
        "only {flood_opened} connections opened"
    );
    assert!(
        served > 10,
        "the client was served only {served} times during the flood"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a request of the client connected before the flood took {slowest:?}"
    );
    let stats = |name: &str| -> u64 {
        let mut c = McConn::connect(addr, Duration::from_secs(5)).unwrap();
        let deadline = c.send(b"stats\r\n").unwrap();
        loop {
            let line = String::from_utf8(c.read_line(deadline).unwrap()).unwrap();
            if let Some(v) = line.strip_prefix(&format!("STAT {name} ")) {
                return v.parse().unwrap();
            }
            assert_ne!(line, "END", "no {name} in stats");
        }
    };
    // The flood's connections close; the node's count falls back, and new clients are served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats("curr_connections") > 2 {
        assert!(
            Instant::now() < deadline,
            "connections never went back down"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rejected = stats("rejected_connections");
    assert!(
        (9_000..=10_000).contains(&rejected),
        "{rejected} connections rejected of 10,000"
    );
    let mut fresh = McConn::connect(addr, Duration::from_secs(5)).unwrap();
    assert_eq!(
        fresh.gets("k").unwrap().map(|(v, _)| v),
        Some(b"v".to_vec())
    );
}

/// Peer input is checked even from a node that passes the hello: a message no correct
/// member sends (here an `Alive` naming an epoch past any real one, from a node that has the
/// cluster's settings but is not a member) is dropped, counted on `/metrics`, and changes
/// no view.
#[test]
fn a_malformed_order_message_is_counted_and_changes_nothing() {
    use clap::Parser;
    use tailorkv_common::NodeId;
    use tailorkv_controlet::peer::{new_session, Transport};
    use tailorkv_controlet::placement::GroupId;
    use tailorkv_controlet::replication::PeerMsg;
    use tailorkv_controlet::shard::mux::Wire;
    use tailorkv_controlet::tob::Message;

    let cluster = ProcCluster::start(3, "linearizable", &[]);
    write_for(&cluster, Duration::from_millis(200));
    let before = epochs(&cluster);
    let rejected = "tailorkv_group_messages_rejected_total{group=\"0\"}";
    assert_eq!(metric(cluster.http_addr(1), rejected), 0.0);
    let config =
        tailorkv_controlet::Config::try_parse_from(["controlet", "--consistency", "linearizable"])
            .unwrap();
    let link = tailorkv_controlet::server::link_config(&config, 64 << 20);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (node9, _inbox) = Transport::<Wire<PeerMsg>>::start(
            NodeId(9),
            new_session(),
            listener,
            &[(NodeId(1), cluster.peer_addr(1))],
            link,
            shutdown.clone(),
        );
        for _ in 0..3 {
            let alive = Message::Alive { epoch: u64::MAX };
            let wire = Wire::Group {
                group: GroupId(0),
                message: PeerMsg::Tob {
                    incarnation: 1,
                    message: alive,
                },
            };
            node9.send(NodeId(1), wire).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        shutdown.cancel();
    });
    assert_eq!(metric(cluster.http_addr(1), rejected), 3.0);
    write_for(&cluster, Duration::from_millis(200));
    assert_eq!(epochs(&cluster), before, "{}", cluster.describe());
    let log = std::fs::read_to_string(cluster.log_path(1)).unwrap();
    assert!(
        log.contains("dropped a malformed order message: an epoch past the largest allowed"),
        "node 1 does not say what it dropped"
    );
}
