//! `tailorkv-admin`: a running cluster's state, as a table, from any node's HTTP endpoint
//! (`controlet --http-listen`).
//!
//! ```text
//! tailorkv-admin --node 127.0.0.1:9150 status
//! tailorkv-admin --node 127.0.0.1:9150 status --json
//! tailorkv-admin --node 127.0.0.1:9150 members
//! tailorkv-admin --node 127.0.0.1:9150 remove 4
//! tailorkv-admin --node 127.0.0.1:9154 leave
//! tailorkv-admin certs --dir certs --nodes 1,2,3
//! ```
//!
//! A node joins with `controlet --join` (see the README); `remove` and `leave` go through
//! any node of a linearizable or sequential cluster.

use std::net::SocketAddr;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tailorkv_controlet::status::{ClusterStatus, MembersStatus, NodeStatus};

/// Shows a tailorkv cluster's state.
#[derive(Debug, Parser)]
#[command(name = "tailorkv-admin", version, about)]
struct Args {
    /// A node's HTTP address (its `--http-listen`).
    #[arg(long, default_value = "127.0.0.1:9150")]
    node: SocketAddr,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Every node: its state, groups, items, memory, connections, links; then every group's
    /// view as its members see it.
    Status {
        /// The raw JSON (`/cluster`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's members and replica groups, as its metadata says (the placement epoch,
    /// every node's peer address, every group's members).
    Members {
        /// The raw JSON (`/members`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Removes a node (dead or alive) from the cluster: each of its groups gets another
    /// member, which is given the group's data, and then the node is dropped from it.
    Remove {
        /// The node's id.
        id: u16,
    },
    /// The node `--node` names leaves the cluster: it hands its groups to other members and
    /// stops once they hold them.
    Leave,
    /// Makes a cluster CA in DIR (unless DIR has one already) and, for each node named, a
    /// certificate and key it signs, for `controlet --peer-tls-cert DIR/node-N.pem
    /// --peer-tls-key DIR/node-N-key.pem --peer-tls-ca DIR/ca.pem`. Keep DIR/ca-key.pem off
    /// the nodes: whoever holds it can make members.
    Certs {
        /// Where the files go (made if missing).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The nodes' ids, separated by commas: peer certificates `node-N.pem`.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u16>,
        /// Also a certificate for the client port (`--tls-cert DIR/server.pem --tls-key
        /// DIR/server-key.pem`), valid for these host names or IP addresses.
        #[arg(long, value_delimiter = ',')]
        server: Vec<String>,
        /// Also a client certificate for NAME (`client-NAME.pem`), for `--tls-ca DIR/ca.pem`.
        #[arg(long, value_name = "NAME")]
        client: Vec<String>,
    },
}

/// Writes `text` to `path`, readable by its owner alone if `secret`.
fn write_file(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// `certs`: the CA (made or read back) and each node's certificate and key.
fn certs(
    dir: &std::path::Path,
    nodes: &[u16],
    server: &[String],
    clients: &[String],
) -> anyhow::Result<()> {
    use tailorkv_controlet::peer::tls::Certs;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let ca_key = dir.join("ca-key.pem");
    let ca = if ca_key.exists() {
        let pem = std::fs::read_to_string(&ca_key)?;
        println!("using the CA in {}", dir.display());
        Certs::from_ca_key(&pem).context("ca-key.pem is not a key")?
    } else {
        let ca = Certs::new_ca()?;
        write_file(&ca_key, &ca.ca_key_pem(), true)?;
        write_file(&dir.join("ca.pem"), &ca.ca_cert_pem()?, false)?;
        println!("made a CA: {}", dir.join("ca.pem").display());
        ca
    };
    for &id in nodes {
        let (cert, key) = ca.node(tailorkv_common::NodeId(id))?;
        write_file(&dir.join(format!("node-{id}.pem")), &cert, false)?;
        write_file(&dir.join(format!("node-{id}-key.pem")), &key, true)?;
        println!(
            "node {id}: --peer-tls-cert {0}/node-{id}.pem --peer-tls-key {0}/node-{id}-key.pem --peer-tls-ca {0}/ca.pem",
            dir.display()
        );
    }
    if !server.is_empty() {
        let (cert, key) = ca.server(server)?;
        write_file(&dir.join("server.pem"), &cert, false)?;
        write_file(&dir.join("server-key.pem"), &key, true)?;
        println!(
            "client port: --tls-cert {0}/server.pem --tls-key {0}/server-key.pem (for {1})",
            dir.display(),
            server.join(", ")
        );
    }
    for name in clients {
        let (cert, key) = ca.client(name)?;
        write_file(&dir.join(format!("client-{name}.pem")), &cert, false)?;
        write_file(&dir.join(format!("client-{name}-key.pem")), &key, true)?;
        println!(
            "client {name}: {0}/client-{name}.pem, {0}/client-{name}-key.pem (servers: --tls-ca {0}/ca.pem)",
            dir.display()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let get = |method: &str, path: &str| -> anyhow::Result<String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(call(args.node, method, path))
    };
    let (body, json) = match &args.command {
        Cmd::Certs {
            dir,
            nodes,
            server,
            client,
        } => return certs(dir, nodes, server, client),
        Cmd::Status { json } => {
            let body = get("GET", "/cluster")?;
            if *json {
                println!("{body}");
                return Ok(());
            }
            let cluster: ClusterStatus = serde_json::from_str(&body)
                .context("the node's /cluster is not a cluster status")?;
            print!("{}", table(&cluster));
            return Ok(());
        }
        Cmd::Members { json } => (get("GET", "/members")?, *json),
        Cmd::Remove { id } => (get("POST", &format!("/members/remove/{id}"))?, false),
        Cmd::Leave => (get("POST", "/members/leave")?, false),
    };
    if json {
        println!("{body}");
        return Ok(());
    }
    let members: MembersStatus =
        serde_json::from_str(&body).context("the node's /members is not a member list")?;
    print!("{}", members_table(&members));
    Ok(())
}

/// The tables `members` (and `remove`, `leave`, with the members after the change) print.
fn members_table(m: &MembersStatus) -> String {
    let mut out = format!(
        "placement epoch {}, {} nodes, {} copies of each key wanted\n\nnode  peer address\n",
        m.epoch,
        m.nodes.len(),
        m.replicas
    );
    for (id, addr) in &m.nodes {
        out += &format!("{id:<5} {addr}\n");
    }
    out += "\ngroup  partitions  members\n";
    for (id, members, partitions) in &m.groups {
        let members: Vec<String> = members.iter().map(u16::to_string).collect();
        out += &format!("{id:<6} {partitions:<11} {}\n", members.join(","));
    }
    out
}

/// `method path` at `addr`; the body.
async fn call(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    .with_context(|| format!("{addr} did not answer"))?
    .with_context(|| format!("cannot connect to {addr} (is it a node's --http-listen?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake")?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await.context("HTTP request")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    if !status.is_success() {
        bail!("{addr}{path}: {status}: {body}");
    }
    Ok(body)
}

fn state(n: &NodeStatus) -> &str {
    if !n.up {
        return "down";
    }
    let order = ["outside", "booting", "catching-up", "changing-view"];
    order
        .into_iter()
        .find(|s| n.groups.iter().any(|g| g.state == *s))
        .or_else(|| n.groups.first().map(|g| g.state.as_str()))
        .unwrap_or("-")
}

/// The tables `status` prints.
fn table(c: &ClusterStatus) -> String {
    let mut out = format!(
        "{} nodes, {} copies of each key, {} partitions (from node {})\n\n",
        c.nodes.len(),
        c.replicas,
        c.partitions,
        c.from
    );
    out += &format!(
        "{:<6} {:<14} {:<10} {:>10} {:>12} {:>6} {:>12} {:>10}  {}\n",
        "node", "state", "groups", "items", "bytes", "conns", "commands", "forwarded", "links down"
    );
    for n in &c.nodes {
        let groups: Vec<String> = n.groups.iter().map(|g| g.id.to_string()).collect();
        let down: Vec<String> = n
            .peers
            .iter()
            .filter(|(_, up)| !up)
            .map(|(p, _)| p.to_string())
            .collect();
        if !n.up {
            out += &format!("{:<6} {:<14}\n", n.id, "down");
            continue;
        }
        out += &format!(
            "{:<6} {:<14} {:<10} {:>10} {:>12} {:>6} {:>12} {:>10}  {}\n",
            n.id,
            state(n),
            groups.join(","),
            n.items,
            n.bytes,
            n.connections,
            n.gets + n.writes,
            n.forwarded,
            if down.is_empty() {
                "-".into()
            } else {
                down.join(",")
            }
        );
    }
    out += &format!(
        "\n{:<6} {:<10} {:>10}  {}\n",
        "group", "members", "partitions", "state per member"
    );
    let mut groups: Vec<(u16, Vec<u16>, u64, Vec<String>)> = Vec::new();
    for n in c.nodes.iter().filter(|n| n.up) {
        for g in &n.groups {
            let mut progress = match g.catch_up {
                Some((items, total)) => format!(" {items} of about {total} items"),
                None => String::new(),
            };
            for (peer, buckets) in g.repair.iter().filter(|r| r.1 > 0) {
                progress += &format!(" repairing: {buckets} of 1024 buckets differ from {peer}");
            }
            let seen = format!(
                "{}: {}{progress} (view {}, {} members)",
                n.id, g.state, g.epoch, g.view_members
            );
            match groups.iter_mut().find(|(id, ..)| *id == g.id) {
                Some(entry) => entry.3.push(seen),
                None => groups.push((g.id, g.members.clone(), g.partitions, vec![seen])),
            }
        }
    }
    groups.sort();
    for (id, members, partitions, seen) in groups {
        let members: Vec<String> = members.iter().map(u16::to_string).collect();
        out += &format!(
            "{:<6} {:<10} {:>10}  {}\n",
            id,
            members.join(","),
            partitions,
            seen.join("; ")
        );
    }
    out
}
