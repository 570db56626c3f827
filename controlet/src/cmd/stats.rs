//! `stats`, `stats settings`, `stats reset`, and the groups that have no counterpart here.
//!
//! The general group reports memcached's counters under memcached's names and in its order,
//! leaving out those about memcached's own internals (slabs, LRU, hash table).

use bytes::BytesMut;
use tailorkv_common::codec::{encode_stat, Response, StatsGroup};
use tailorkv_common::NodeId;
use tailorkv_datalet::Datalet;

use super::admin::VERSION;
use super::Context;
use crate::stats::Counts;

pub async fn stats<D: Datalet>(
    ctx: &Context<D>,
    group: StatsGroup,
    mine: &mut Counts,
    out: &mut BytesMut,
) {
    match group {
        StatsGroup::General => {
            // This connection's own requests so far count too.
            ctx.counts.absorb(mine);
            general(ctx, out).await;
        }
        StatsGroup::Settings => settings(ctx, out),
        StatsGroup::Placement => placement(ctx, out),
        StatsGroup::Detail(on) => {
            ctx.prefixes.set_enabled(on);
            Response::Ok.encode(out);
            return;
        }
        StatsGroup::DetailDump => {
            ctx.prefixes.dump(out);
            return;
        }
        StatsGroup::Reset => {
            *mine = Counts::default();
            ctx.counts.reset();
            ctx.engine.reset_stats();
            ctx.prefixes.clear();
            Response::Reset.encode(out);
            return;
        }
        StatsGroup::Sizes => encode_stat(out, "sizes_status", "disabled"),
        StatsGroup::Conns => ctx.conns.encode(out),
        StatsGroup::Items => items(ctx, out),
        StatsGroup::Slabs => slabs(ctx, out),
        StatsGroup::Empty => {}
    }
    Response::End.encode(out);
}

async fn general<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = ctx.counts.snapshot();
    let d = ctx.engine.datalet_stats();
    // Items and bytes as memcached means them: what the cache holds, here the whole cluster,
    // each group's keys counted once.
    let (cluster, missing) = ctx.engine.cluster_stats().await;
    let (user, system) = rusage();
    let now = ctx.engine.now();
    let s = |out: &mut BytesMut, name: &str, value: u64| encode_stat(out, name, value);
    s(out, "pid", u64::from(std::process::id()));
    s(out, "uptime", ctx.started.elapsed().as_secs());
    s(out, "time", now);
    encode_stat(out, "version", VERSION);
    s(out, "pointer_size", usize::BITS as u64);
    encode_stat(out, "rusage_user", format_args!("{user:.6}"));
    encode_stat(out, "rusage_system", format_args!("{system:.6}"));
    s(out, "max_connections", ctx.config.max_connections as u64);
    s(out, "curr_connections", ctx.curr_connections.load(Relaxed));
    s(out, "total_connections", c.total_connections);
    s(out, "rejected_connections", c.rejected_connections);
    // As memcached: shown only with TLS on.
    if let Some(tls) = &ctx.tls {
        s(out, "ssl_handshake_errors", tls.handshake_errors());
        s(out, "time_since_server_cert_refresh", tls.since_refresh());
    }
    // As memcached: shown only with an idle timeout set.
    if ctx.config.idle_timeout > 0 {
        s(out, "idle_kicks", c.timed_out_connections);
    }
    for (name, value) in [
        ("cmd_get", c.cmd_get),
        ("cmd_set", c.cmd_set),
        ("cmd_flush", c.cmd_flush),
        ("cmd_touch", c.cmd_touch),
        ("cmd_meta", c.cmd_meta),
        ("get_hits", c.get_hits),
        ("get_misses", c.get_misses),
        ("get_expired", d.get_expired),
        ("get_flushed", d.get_flushed),
        ("delete_misses", c.delete_misses),
        ("delete_hits", c.delete_hits),
        ("incr_misses", c.incr_misses),
        ("incr_hits", c.incr_hits),
        ("decr_misses", c.decr_misses),
        ("decr_hits", c.decr_hits),
        ("cas_misses", c.cas_misses),
        ("cas_hits", c.cas_hits),
        ("cas_badval", c.cas_badval),
        ("touch_hits", c.touch_hits),
        ("touch_misses", c.touch_misses),
        ("store_too_large", c.store_too_large),
        ("store_no_memory", c.store_no_memory),
        ("auth_cmds", c.auth_cmds),
        ("auth_errors", c.auth_errors),
        ("bytes_read", c.bytes_read),
        ("bytes_written", c.bytes_written),
        ("limit_maxbytes", d.limit_maxbytes),
        ("accepting_conns", 1),
        ("threads", ctx.config.threads as u64),
        ("bytes", cluster.bytes),
        ("curr_items", cluster.curr_items),
        ("total_items", cluster.total_items),
        ("evictions", d.evictions),
        ("reclaimed", d.reclaimed),
        ("evicted_unfetched", d.evicted_unfetched),
        ("expired_unfetched", d.expired_unfetched),
    ] {
        s(out, name, value);
    }
    if let Some(r) = ctx.engine.replication_counters() {
        s(out, "peer_messages_sent", r.peer_messages_sent);
        s(out, "ops_proposed", r.ops_proposed);
        s(out, "ops_applied", r.ops_applied);
        s(out, "apply_failures", r.apply_failures);
        s(out, "state_bytes_sent", r.state_bytes_sent);
    }
    if let Some(e) = ctx.engine.repair_counters() {
        s(out, "antientropy_rounds", e.antientropy_rounds);
        s(out, "antientropy_entries_sent", e.antientropy_entries_sent);
        s(
            out,
            "antientropy_entries_received",
            e.antientropy_entries_received,
        );
        s(
            out,
            "antientropy_buckets_differing",
            e.antientropy_buckets_differing,
        );
        s(out, "hints_queued", e.hints_queued);
        s(out, "hints_dropped", e.hints_dropped);
        s(out, "hints_pending", e.hints_pending);
        s(out, "tombstones", e.tombstones);
        s(out, "eventual_conflicts", e.conflicts);
        s(out, "quorum_read_repairs", e.read_repairs);
        s(out, "quorum_refused", e.quorum_refused);
        s(out, "quorum_stand_ins", e.quorum_stand_ins);
        s(out, "causal_pending", e.causal_pending);
        s(out, "causal_refills_sent", e.causal_refills_sent);
        s(out, "causal_refills_merged", e.causal_refills_merged);
    }
    if let Some((taken, handed_back, held)) = ctx.engine.stand_in_counts() {
        s(out, "stand_in_taken", taken);
        s(out, "stand_in_handed_back", handed_back);
        s(out, "stand_in_held", held);
    }
    let groups = ctx.engine.cluster_health();
    // The node as a whole: as ready as its least ready group.
    if let Some((_, first)) = groups.iter().min_by_key(|(_, h)| readiness(h.state())) {
        encode_stat(out, "cluster_state", first.state().name());
        s(out, "cluster_epoch", first.epoch());
        s(out, "cluster_members", first.members());
    }
    if let (Some(cluster), Some(placement)) = (ctx.engine.cluster(), ctx.engine.placement()) {
        s(out, "node_curr_items", d.curr_items);
        s(out, "node_bytes", d.bytes);
        s(out, "cluster_groups_unreachable", missing as u64);
        s(out, "groups_held", ctx.engine.locals().len() as u64);
        s(
            out,
            "partitions_held",
            placement.share(NodeId(ctx.config.id)) as u64,
        );
        // Membership: the placement's epoch, and the groups held here whose view is not
        // yet their target (a member joining or leaving: data moving).
        s(out, "membership_epoch", placement.epoch());
        s(out, "groups_moving", ctx.engine.groups_moving() as u64);
        let f = &cluster.forwarder;
        s(out, "forwarded", f.sent.load(Relaxed));
        s(out, "forward_retries", f.retried.load(Relaxed));
        if groups.len() > 1 {
            for (group, h) in &groups {
                let name = |what: &str| format!("group_{}_{what}", group.0);
                encode_stat(out, &name("state"), h.state().name());
                s(out, &name("epoch"), h.epoch());
                s(out, &name("members"), h.members());
            }
        }
    }
}

/// Orders node states from the least ready (cut off) to serving.
fn readiness(state: crate::tob::NodeState) -> u8 {
    use crate::tob::NodeState::*;
    match state {
        Outside => 0,
        Booting => 1,
        CatchingUp => 2,
        Changing => 3,
        Serving => 4,
    }
}

/// `stats placement`: the cluster's nodes, and for each replica group its members and the
/// partitions it holds, as ranges. A key's partition is the high 32 bits of its 64-bit
/// FNV-1a hash, passed through MurmurHash3's finalizer, modulo the partition count.
fn placement<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    let Some(p) = ctx
        .engine
        .placement()
        .filter(|_| ctx.engine.cluster().is_some())
    else {
        encode_stat(out, "partitions", 1);
        encode_stat(out, "replicas", 1);
        encode_stat(out, "groups", 1);
        return;
    };
    encode_stat(out, "partitions", crate::placement::PARTITIONS);
    encode_stat(out, "replicas", p.replicas());
    encode_stat(out, "groups", p.groups().count());
    encode_stat(out, "hash", "fnv1a64-murmur3fmix-high32");
    encode_stat(out, "version", format_args!("{:016x}", p.version()));
    for member in &ctx.config.peers {
        encode_stat(out, &format!("node_{}", member.id.0), member.addr);
    }
    for group in p.groups() {
        let members: Vec<String> = p.members(group).iter().map(|n| n.0.to_string()).collect();
        let ranges = ranges(p.partitions_of(group));
        encode_stat(
            out,
            &format!("group_{}", group.0),
            format_args!("members={} partitions={}", members.join(","), ranges),
        );
    }
}

/// `0-3,7,9-10` for 0, 1, 2, 3, 7, 9, 10.
fn ranges(sorted: impl Iterator<Item = usize>) -> String {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for p in sorted {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => spans.push((p, p)),
        }
    }
    let text: Vec<String> = spans
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    text.join(",")
}

/// `stats items`, as memcached 1.6 answers it: every class that holds items, with its
/// counters in memcached's order. The counters of memcached's segmented LRU and crawler
/// (hot, warm and cold, moves between them, tail repairs) have no counterpart in this
/// store's single recency queue: they read 0, and every item counts as cold.
fn items<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    for c in ctx.engine.item_classes().iter().filter(|c| c.number > 0) {
        let id = c.class;
        let mut s = |name: &str, value: u64| encode_stat(out, &format!("items:{id}:{name}"), value);
        s("number", c.number);
        s("number_hot", 0);
        s("number_warm", 0);
        s("number_cold", c.number);
        s("age_hot", 0);
        s("age_warm", 0);
        s("age", c.age);
        s("mem_requested", c.requested);
        s("evicted", c.evicted);
        s("evicted_nonzero", c.evicted_nonzero);
        s("evicted_time", c.evicted_time);
        s("outofmemory", c.outofmemory);
        s("tailrepairs", 0);
        s("reclaimed", c.reclaimed);
        s("expired_unfetched", c.expired_unfetched);
        s("evicted_unfetched", c.evicted_unfetched);
        s("evicted_active", c.evicted_active);
        s("crawler_reclaimed", 0);
        s("crawler_items_checked", 0);
        s("lrutail_reflocked", 0);
        s("moves_to_cold", 0);
        s("moves_to_warm", 0);
        s("moves_within_lru", 0);
        s("direct_reclaims", 0);
        s("hits_to_hot", 0);
        s("hits_to_warm", 0);
        s("hits_to_cold", c.get_hits);
        s("hits_to_temp", 0);
    }
}

/// `stats slabs`, as memcached 1.6 answers it. Items here are not cut from pages; the pages
/// shown are the fewest that would hold each class's chunks, as a memcached that never
/// freed a page would have them.
fn slabs<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    let classes = tailorkv_common::slabs::classes();
    let mut active = 0;
    let mut malloced = 0;
    for c in ctx.engine.item_classes().iter().filter(|c| c.chunks > 0) {
        let id = c.class;
        let per_page = classes.per_page(id) as u64;
        let pages = c.chunks.div_ceil(per_page);
        active += 1;
        malloced += pages * tailorkv_common::slabs::PAGE_BYTES as u64;
        let mut s = |name: &str, value: u64| encode_stat(out, &format!("{id}:{name}"), value);
        s("chunk_size", classes.chunk_size(id) as u64);
        s("chunks_per_page", per_page);
        s("total_pages", pages);
        s("total_chunks", pages * per_page);
        s("used_chunks", c.chunks);
        s("free_chunks", pages * per_page - c.chunks);
        s("free_chunks_end", 0);
        s("get_hits", c.get_hits);
        s("cmd_set", c.cmd_set);
        s("delete_hits", c.delete_hits);
        s("incr_hits", c.incr_hits);
        s("decr_hits", c.decr_hits);
        s("cas_hits", c.cas_hits);
        s("cas_badval", c.cas_badval);
        s("touch_hits", c.touch_hits);
    }
    encode_stat(out, "active_slabs", active);
    encode_stat(out, "total_malloced", malloced);
}

fn settings<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    let cfg = &ctx.config;
    let d = ctx.engine.datalet_stats();
    // memcached's settings that mean the same here, in its order; then this one's own.
    encode_stat(out, "maxbytes", d.limit_maxbytes);
    encode_stat(out, "maxconns", cfg.max_connections);
    encode_stat(out, "tcpport", cfg.listen.port());
    encode_stat(out, "udpport", cfg.udp_port);
    encode_stat(out, "inter", cfg.listen.ip());
    encode_stat(out, "verbosity", cfg.verbose);
    encode_stat(out, "evictions", if cfg.evicts() { "on" } else { "off" });
    // No UNIX socket is served.
    encode_stat(out, "domain_socket", "NULL");
    let shutdown = if cfg.enable_shutdown { "yes" } else { "no" };
    encode_stat(out, "shutdown_command", shutdown);
    encode_stat(out, "num_threads", cfg.threads);
    encode_stat(out, "stat_key_prefix", ":");
    let detail = if ctx.prefixes.enabled() { "yes" } else { "no" };
    encode_stat(out, "detail_enabled", detail);
    let cas = if cfg.disable_cas { "no" } else { "yes" };
    encode_stat(out, "cas_enabled", cas);
    encode_stat(out, "tcp_backlog", cfg.listen_backlog);
    let protocol = match cfg.protocol.as_deref() {
        Some("ascii") => "ascii",
        Some("binary") => "binary",
        _ => "auto-negotiate",
    };
    encode_stat(out, "binding_protocol", protocol);
    // The auth file's users sign in through SASL PLAIN on binary connections.
    let sasl = if cfg.auth_file.is_some() { "yes" } else { "no" };
    encode_stat(out, "auth_enabled_sasl", sasl);
    let ascii_auth = if cfg.auth_file.is_some() { "yes" } else { "no" };
    encode_stat(out, "auth_enabled_ascii", ascii_auth);
    encode_stat(out, "item_size_max", cfg.item_size_max);
    let flush = if cfg.disable_flush_all { "no" } else { "yes" };
    encode_stat(out, "flush_enabled", flush);
    encode_stat(out, "idle_timeout", cfg.idle_timeout);
    encode_stat(out, "datalet", &cfg.datalet);
    // memcached's TLS settings, with its words for what is unset.
    let path = |p: &Option<std::path::PathBuf>, unset: &str| {
        p.as_ref()
            .map_or(unset.to_string(), |p| p.display().to_string())
    };
    let on = if ctx.tls.is_some() { "yes" } else { "no" };
    encode_stat(out, "ssl_enabled", on);
    encode_stat(out, "ssl_chain_cert", path(&cfg.tls_cert, "(null)"));
    encode_stat(out, "ssl_key", path(&cfg.tls_key, "(null)"));
    // OpenSSL's SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT when clients must show one.
    let verify = ctx.tls.as_ref().is_some_and(|t| t.verifies_clients());
    encode_stat(out, "ssl_verify_mode", if verify { 3 } else { 0 });
    encode_stat(out, "ssl_keyformat", 1);
    encode_stat(out, "ssl_ciphers", "NULL");
    encode_stat(out, "ssl_ca_cert", path(&cfg.tls_ca, "NULL"));
    encode_stat(out, "ssl_session_cache", "no");
    encode_stat(out, "ssl_kernel_tls", "no");
    encode_stat(out, "ssl_min_version", "tlsv1.2");
}

/// CPU seconds used by this process, in user and system mode.
fn rusage() -> (f64, f64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}
