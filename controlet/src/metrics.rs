//! The HTTP endpoint (`--http-listen`): Prometheus metrics at `/metrics`, the status page at
//! `/`, this node's status as JSON at `/status` and the whole cluster's at `/cluster`.
//!
//! Nothing is counted for it on the request path: each scrape reads the counters `stats`
//! reads (the connections' commands, the datalets, the replication of every group this node
//! holds) into a fresh registry of `prometheus-client` and encodes it in the OpenMetrics text
//! format. Names follow memcached_exporter's where they mean the same (`memcached_*`); what
//! only a tailorkv node has is `tailorkv_*`, per replica group where it is the group's.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tailorkv_datalet::Datalet;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cmd::Context;

/// The status page: one file, built into the binary; it polls `/cluster`.
const PAGE: &str = include_str!("status.html");
const JSON: &str = "application/json";
/// How long `/cluster` waits for a peer's status.
const PEER_STATUS_WAIT: Duration = Duration::from_millis(700);

/// Every node's status, asked of the peers at once over the peer link; a node that does not
/// answer in time is listed as down.
pub async fn cluster<D: Datalet>(ctx: &Context<D>) -> crate::status::ClusterStatus {
    let me = ctx.status.read();
    let (Some(cluster), Some(p)) = (ctx.engine.cluster(), ctx.engine.placement()) else {
        return crate::status::ClusterStatus {
            from: me.id,
            replicas: 1,
            partitions: crate::placement::PARTITIONS,
            nodes: vec![me],
        };
    };
    let me = &me;
    let asks = p.nodes().iter().map(|&node| async move {
        if node.0 == me.id {
            return me.clone();
        }
        let answer = cluster.forwarder.status_of(node, PEER_STATUS_WAIT).await;
        answer.unwrap_or(crate::status::NodeStatus {
            id: node.0,
            ..Default::default()
        })
    });
    let nodes = futures_util::future::join_all(asks).await;
    crate::status::ClusterStatus {
        from: ctx.status.me.0,
        replicas: p.replicas(),
        partitions: crate::placement::PARTITIONS,
        nodes,
    }
}

/// The content type of the OpenMetrics text format, which Prometheus reads.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves HTTP on `listener` until `shutdown`: one task per connection.
pub async fn serve<D: Datalet>(
    listener: TcpListener,
    ctx: Arc<Context<D>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(respond(&ctx, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
}

async fn respond<D: Datalet>(
    ctx: &Context<D>,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", kind)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, OPENMETRICS, metrics(ctx).await),
        (&Method::GET, "/status") => {
            let status = ctx.status.read();
            let json = serde_json::to_string(&status).expect("a status encodes");
            reply(StatusCode::OK, JSON, json)
        }
        (&Method::GET, "/cluster") => {
            let json = serde_json::to_string(&cluster(ctx).await).expect("a status encodes");
            reply(StatusCode::OK, JSON, json)
        }
        (&Method::GET, "/") => reply(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
        (method, path) if path == "/members" || path.starts_with("/members/") => {
            let Some(admin) = ctx.status.membership.clone() else {
                let why = "a single node has no members to change\n";
                return reply(
                    StatusCode::CONFLICT,
                    "text/plain; charset=utf-8",
                    why.into(),
                );
            };
            let me = ctx.status.me;
            let target = match (method, path) {
                (&Method::GET, "/members") => None,
                (&Method::POST, "/members/leave") => Some(me),
                (&Method::POST, path) => match path.strip_prefix("/members/remove/") {
                    Some(id) => match id.parse::<u16>() {
                        Ok(id) => Some(tailorkv_common::NodeId(id)),
                        Err(_) => {
                            let why = format!("not a node id: {id}\n");
                            return reply(
                                StatusCode::BAD_REQUEST,
                                "text/plain; charset=utf-8",
                                why,
                            );
                        }
                    },
                    None => {
                        let why = "try POST /members/remove/ID or POST /members/leave\n";
                        return reply(
                            StatusCode::NOT_FOUND,
                            "text/plain; charset=utf-8",
                            why.into(),
                        );
                    }
                },
                _ => {
                    let why = "try GET /members\n";
                    return reply(
                        StatusCode::NOT_FOUND,
                        "text/plain; charset=utf-8",
                        why.into(),
                    );
                }
            };
            let members = match target {
                None => admin.members(),
                Some(node) => match admin.remove(node).await {
                    Ok(members) => Arc::new(members),
                    Err(why) => {
                        return reply(
                            StatusCode::CONFLICT,
                            "text/plain; charset=utf-8",
                            why + "\n",
                        )
                    }
                },
            };
            let view = crate::status::MembersStatus::of(&members);
            let json = serde_json::to_string(&view).expect("members encode");
            reply(StatusCode::OK, JSON, json)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /, /metrics, /status, /cluster or /members\n".into(),
        ),
    }
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Gauge::<i64>::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

type Labels = Vec<(&'static str, String)>;

/// Command latencies as a histogram per kind of command.
#[derive(Debug)]
struct Durations(crate::stats::Latencies);

impl prometheus_client::encoding::EncodeMetric for Durations {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        use crate::stats::{LATENCY_BOUNDS_US, LATENCY_KINDS};
        for (kind, name) in LATENCY_KINDS.iter().enumerate() {
            let counts = &self.0.buckets[kind];
            let bounds = LATENCY_BOUNDS_US
                .iter()
                .map(|&us| us as f64 / 1e6)
                .chain([f64::MAX]);
            let buckets: Vec<(f64, u64)> = bounds.zip(counts.iter().copied()).collect();
            let count = counts.iter().sum();
            let sum = self.0.sum_us[kind] as f64 / 1e6;
            let labels = [("command", *name)];
            encoder
                .encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &buckets, None,
                )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// Every metric, as the node's counters stand now.
pub async fn metrics<D: Datalet>(ctx: &Context<D>) -> String {
    let mut r = Registry::default();
    let c = ctx.counts.snapshot();
    let commands = Family::<Labels, Counter<u64>>::default();
    let command = |name: &'static str, status: &'static str, value: u64| {
        let labels = vec![
            ("command", name.to_string()),
            ("status", status.to_string()),
        ];
        commands.get_or_create(&labels).inc_by(value);
    };
    command("get", "hit", c.get_hits);
    command("get", "miss", c.get_misses);
    command("set", "hit", c.cmd_set);
    command("delete", "hit", c.delete_hits);
    command("delete", "miss", c.delete_misses);
    command("incr", "hit", c.incr_hits);
    command("incr", "miss", c.incr_misses);
    command("decr", "hit", c.decr_hits);
    command("decr", "miss", c.decr_misses);
    command("cas", "hit", c.cas_hits);
    command("cas", "miss", c.cas_misses);
    command("cas", "badval", c.cas_badval);
    command("touch", "hit", c.touch_hits);
    command("touch", "miss", c.touch_misses);
    command("flush", "hit", c.cmd_flush);
    r.register(
        "memcached_commands",
        "Commands served to this node's clients, by command and outcome",
        commands,
    );
    counter(
        &mut r,
        "memcached_read_bytes",
        "Bytes read from clients",
        c.bytes_read,
    );
    counter(
        &mut r,
        "memcached_written_bytes",
        "Bytes written to clients",
        c.bytes_written,
    );
    counter(
        &mut r,
        "memcached_connections",
        "Client connections accepted",
        c.total_connections,
    );
    counter(
        &mut r,
        "memcached_connections_rejected",
        "Client connections refused at the connection limit",
        c.rejected_connections,
    );
    gauge(
        &mut r,
        "memcached_current_connections",
        "Client connections open now",
        ctx.curr_connections.load(Relaxed),
    );
    counter(
        &mut r,
        "memcached_store_too_large",
        "Stores refused as too large",
        c.store_too_large,
    );
    counter(
        &mut r,
        "memcached_store_no_memory",
        "Stores refused for memory",
        c.store_no_memory,
    );
    let node = ctx.engine.datalet_stats();
    let (cluster, unreachable) = ctx.engine.cluster_stats().await;
    gauge(
        &mut r,
        "memcached_current_items",
        "Items the cache holds (the whole cluster's, each replica group counted once)",
        cluster.curr_items,
    );
    counter(
        &mut r,
        "memcached_items",
        "Items stored (the whole cluster's, each replica group counted once)",
        cluster.total_items,
    );
    gauge(
        &mut r,
        "memcached_current_bytes",
        "Bytes of items the cache holds (the whole cluster's, each group counted once)",
        cluster.bytes,
    );
    gauge(
        &mut r,
        "memcached_limit_bytes",
        "This node's memory limit for items",
        node.limit_maxbytes,
    );
    counter(
        &mut r,
        "memcached_items_reclaimed",
        "Expired items removed to reclaim memory on this node",
        node.reclaimed,
    );
    counter(
        &mut r,
        "memcached_items_evicted",
        "Live items evicted to make room on this node",
        node.evictions,
    );
    gauge(
        &mut r,
        "tailorkv_node_items",
        "Items this node holds copies of",
        node.curr_items,
    );
    gauge(
        &mut r,
        "tailorkv_node_bytes",
        "Bytes of items this node holds copies of",
        node.bytes,
    );
    gauge(
        &mut r,
        "tailorkv_groups_unreachable",
        "Replica groups whose counts the last scrape could not get from any owner",
        unreachable as u64,
    );
    if let (Some(_), Some(placement)) = (ctx.engine.cluster(), ctx.engine.placement()) {
        gauge(
            &mut r,
            "tailorkv_membership_epoch",
            "The placement's epoch: membership changes since the cluster started, plus one",
            placement.epoch(),
        );
        let moving = ctx.engine.groups_moving();
        gauge(
            &mut r,
            "tailorkv_groups_moving",
            "Replica groups held here whose members are changing (a copy moving in or out)",
            moving as u64,
        );
    }
    if let Some(cluster) = ctx.engine.cluster() {
        let f = &cluster.forwarder;
        counter(
            &mut r,
            "tailorkv_forwarded",
            "Requests forwarded to an owner of their key",
            f.sent.load(Relaxed),
        );
        counter(
            &mut r,
            "tailorkv_forward_retries",
            "Forwarded requests sent again to another owner",
            f.retried.load(Relaxed),
        );
    }
    if let Some(o) = ctx.engine.replication_counters() {
        counter(
            &mut r,
            "tailorkv_peer_messages_sent",
            "Messages of the total order sent to peers",
            o.peer_messages_sent,
        );
        counter(
            &mut r,
            "tailorkv_ops_proposed",
            "Operations this node proposed to its groups' orders",
            o.ops_proposed,
        );
        counter(
            &mut r,
            "tailorkv_ops_applied",
            "Ordered operations applied here",
            o.ops_applied,
        );
        counter(
            &mut r,
            "tailorkv_apply_failures",
            "Ordered operations this node's datalet failed to apply",
            o.apply_failures,
        );
        counter(
            &mut r,
            "tailorkv_state_bytes_sent",
            "Bytes of keys and values this node sent in snapshots to members joining a group's view",
            o.state_bytes_sent,
        );
    }
    let groups = ctx.engine.cluster_health();
    if !groups.is_empty() {
        let epoch = Family::<Labels, Gauge<i64>>::default();
        let members = Family::<Labels, Gauge<i64>>::default();
        let state = Family::<Labels, Gauge<i64>>::default();
        let view_changes = Family::<Labels, Counter>::default();
        let suspicions = Family::<Labels, Counter>::default();
        let rejected = Family::<Labels, Counter>::default();
        let undelivered = Family::<Labels, Gauge<i64>>::default();
        let own_bytes = Family::<Labels, Gauge<i64>>::default();
        let caught = Family::<Labels, Gauge<i64>>::default();
        let catching = Family::<Labels, Gauge<i64>>::default();
        for (group, health) in &groups {
            let (items, total) = health.catch_up().unwrap_or((0, 0));
            let g = vec![("group", group.0.to_string())];
            caught.get_or_create(&g).set(items as i64);
            let o = health.order_figures();
            view_changes.get_or_create(&g).inc_by(o.view_changes);
            suspicions.get_or_create(&g).inc_by(o.suspicions);
            rejected.get_or_create(&g).inc_by(o.rejected);
            undelivered
                .get_or_create(&g)
                .set(o.undelivered_batches as i64);
            own_bytes
                .get_or_create(&g)
                .set(o.undelivered_own_bytes as i64);
            catching.get_or_create(&g).set(total as i64);
            let g = vec![("group", group.0.to_string())];
            epoch.get_or_create(&g).set(health.epoch() as i64);
            members.get_or_create(&g).set(health.members() as i64);
            let now = health.state().name();
            for name in [
                "serving",
                "changing-view",
                "catching-up",
                "outside",
                "booting",
            ] {
                let labels = vec![("group", group.0.to_string()), ("state", name.to_string())];
                state.get_or_create(&labels).set(i64::from(name == now));
            }
        }
        r.register(
            "tailorkv_group_epoch",
            "The epoch of the group's view",
            epoch,
        );
        r.register(
            "tailorkv_group_members",
            "Members of the group's current view",
            members,
        );
        r.register(
            "tailorkv_group_state",
            "1 for this node's state in the group, 0 for the others",
            state,
        );
        r.register(
            "tailorkv_group_view_changes",
            "Views of the group this node started serving in",
            view_changes,
        );
        r.register(
            "tailorkv_group_suspicions",
            "Times this node's failure detector came to suspect a member of the group",
            suspicions,
        );
        r.register(
            "tailorkv_group_messages_rejected",
            "Order messages of the group dropped unread because no correct member sends them",
            rejected,
        );
        r.register(
            "tailorkv_group_undelivered_batches",
            "Batches of the group's order received here and not yet delivered (delivery lag)",
            undelivered,
        );
        r.register(
            "tailorkv_group_undelivered_own_bytes",
            "Bytes of operations this node proposed to the group and not yet delivered",
            own_bytes,
        );
        r.register(
            "tailorkv_group_catch_up_items",
            "Items of the snapshot being installed stored so far (0 when none is)",
            caught,
        );
        r.register(
            "tailorkv_group_catch_up_total_items",
            "About how many items the snapshot being installed holds (0 when none is)",
            catching,
        );
    }
    if let Some(link) = &ctx.status.link {
        let up = Family::<Labels, Gauge<i64>>::default();
        let queued = Family::<Labels, Gauge<i64>>::default();
        if let Some(p) = ctx.engine.placement() {
            for &n in p.nodes().iter().filter(|&&n| n != ctx.status.me) {
                let labels = vec![("peer", n.0.to_string())];
                up.get_or_create(&labels).set(i64::from(link.is_up(n)));
                queued.get_or_create(&labels).set(link.queued(n) as i64);
            }
        }
        r.register(
            "tailorkv_peer_up",
            "1 while this node's link to the peer is connected",
            up,
        );
        counter(
            &mut r,
            "tailorkv_peer_connections_refused",
            "Connections to the peer port refused before anything they carried was heard (no TLS, no hello in time, another cluster's hello, a certificate for another node)",
            link.refused(),
        );
        r.register(
            "tailorkv_peer_queue_bytes",
            "Bytes of messages queued for the peer and not yet written",
            queued,
        );
    }
    if let Some(e) = ctx.engine.repair_counters() {
        counter(
            &mut r,
            "tailorkv_antientropy_rounds",
            "Anti-entropy rounds started",
            e.antientropy_rounds,
        );
        counter(
            &mut r,
            "tailorkv_antientropy_entries_sent",
            "Entries sent by anti-entropy",
            e.antientropy_entries_sent,
        );
        counter(
            &mut r,
            "tailorkv_antientropy_entries_received",
            "Entries received from peers repairing this node's replicas",
            e.antientropy_entries_received,
        );
        let differing = Family::<Labels, Gauge<i64>>::default();
        for (group, peer, buckets) in ctx.engine.divergence() {
            let labels = vec![("group", group.0.to_string()), ("peer", peer.0.to_string())];
            differing.get_or_create(&labels).set(buckets as i64);
        }
        r.register(
            "tailorkv_antientropy_buckets_differing",
            "Buckets (of 1024) whose contents differed from the peer's at the last anti-entropy round with it: 0 when in sync",
            differing,
        );
        counter(
            &mut r,
            "tailorkv_hints_queued",
            "Hints queued",
            e.hints_queued,
        );
        counter(
            &mut r,
            "tailorkv_hints_dropped",
            "Hints dropped",
            e.hints_dropped,
        );
        gauge(
            &mut r,
            "tailorkv_hints_pending",
            "Hints waiting",
            e.hints_pending,
        );
        gauge(
            &mut r,
            "tailorkv_tombstones",
            "Tombstones held",
            e.tombstones,
        );
    }
    r.register(
        "tailorkv_command_duration_seconds",
        "Time from a command read to its reply made, by kind (get: retrievals; set: stores)",
        Durations(ctx.latencies.snapshot()),
    );
    gauge(
        &mut r,
        "memcached_uptime_seconds",
        "Seconds since this node started",
        ctx.started.elapsed().as_secs(),
    );
    let mut text = String::new();
    encode(&mut text, &r).expect("writing to a String does not fail");
    text
}
