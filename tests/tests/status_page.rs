//! The status page in a real browser: headless Chromium (Debian's `chromium`, which
//! `bash scripts/test` installs) loads node 1's page of a 3-node cluster, node 3 is killed,
//! and the page shows it down within 5 s. The DOM is checked; a screenshot is saved as a test
//! artifact. `tailorkv-admin status` shows the same. Without Chromium this test fails, it does
//! not skip.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tailorkv_tests::ports::free_port;
use tailorkv_tests::procs::ProcCluster;

/// Chromium, headless, as the machine allows it (root, no network beyond loopback).
fn chromium(profile: &Path, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // Lets the page's script fetch and render before the DOM is read.
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run chromium ({e}): `bash scripts/test` installs it with apt-get")
        });
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The state the page shows for each node, by node id: from `data-state` of its row.
fn node_states(dom: &str) -> Vec<(u16, String)> {
    let mut states = Vec::new();
    for part in dom.split("id=\"node-").skip(1) {
        let id: u16 = part[..part.find('"').unwrap()].parse().unwrap();
        let state = part
            .split("data-state=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        states.push((id, state));
    }
    states
}

#[test]
fn the_status_page_shows_a_killed_node_down_within_5_s() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let mut cluster = ProcCluster::start_with(3, "linearizable", &[], |i| {
        vec![
            "--http-listen".into(),
            format!("127.0.0.1:{}", ports[i - 1]),
        ]
    });
    let page = format!(
        "http://{}/",
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports[0])
    );
    let profiles = tempfile::tempdir().unwrap();
    let profile = |n: usize| profiles.path().join(format!("profile-{n}"));

    // All three nodes serving, once every node has formed its first view.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let dom = chromium(&profile(attempt), &["--dump-dom", &page]);
        let states = node_states(&dom);
        if states.len() == 3 && states.iter().all(|(_, s)| s == "serving") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed 3 serving nodes: {states:?}\n{dom}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    cluster.kill(3);
    let killed = Instant::now();
    let shown = loop {
        attempt += 1;
        let dom = chromium(&profile(attempt), &["--dump-dom", &page]);
        let states = node_states(&dom);
        if states.contains(&(3, "down".to_string())) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "5 s after node 3 was killed the page still shows {states:?}\n{dom}"
        );
    };
    eprintln!("FIGURE status_page_shows_down_ms={}", shown.as_millis());
    let dom = chromium(&profile(attempt + 1), &["--dump-dom", &page]);
    let states = node_states(&dom);
    assert!(
        states.contains(&(1, "serving".into())) && states.contains(&(2, "serving".into())),
        "the others are serving: {states:?}"
    );

    // The admin tool prints the same from the same endpoint.
    let admin = Command::new(tailorkv_tests::server::binary("tailorkv-admin"))
        .args(["--node", &format!("127.0.0.1:{}", ports[0]), "status"])
        .output()
        .expect("run tailorkv-admin");
    let table = String::from_utf8_lossy(&admin.stdout);
    assert!(
        admin.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    // A node's row, after the summary line (which starts with the node count).
    let row = |id: &str| {
        let mut rows = table.lines().skip(1);
        rows.find(|l| l.split_whitespace().next() == Some(id))
    };
    assert!(
        table.starts_with("3 nodes, 3 copies of each key"),
        "{table}"
    );
    assert!(row("1").is_some_and(|l| l.contains("serving")), "{table}");
    assert!(row("3").is_some_and(|l| l.contains("down")), "{table}");

    let shot = artifact("status-page.png");
    chromium(
        &profile(attempt + 2),
        &[
            "--window-size=1300,1000",
            &format!("--screenshot={}", shot.display()),
            &page,
        ],
    );
    let png = std::fs::read(&shot).expect("the screenshot was written");
    assert!(png.starts_with(b"\x89PNG"), "a PNG at {}", shot.display());
    eprintln!("screenshot of the status page: {}", shot.display());
}

/// Where a test artifact goes: the target directory's tmp, kept after the run.
fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}
