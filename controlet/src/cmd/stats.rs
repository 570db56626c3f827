//! `stats`, `stats settings`, `stats reset`, and the groups that have no counterpart here.
//!
//! The general group reports memcached's counters under memcached's names and in its order,
//! leaving out those about memcached's own internals (slabs, LRU, hash table).

use bytes::BytesMut;
use tailorkv_common::codec::{encode_stat, Response, StatsGroup};
use tailorkv_datalet::Datalet;

use super::admin::VERSION;
use super::Context;
use crate::stats::Counts;

pub fn stats<D: Datalet>(
    ctx: &Context<D>,
    group: StatsGroup,
    mine: &mut Counts,
    out: &mut BytesMut,
) {
    match group {
        StatsGroup::General => {
            // This connection's own requests so far count too.
            ctx.counts.absorb(mine);
            general(ctx, out);
        }
        StatsGroup::Settings => settings(ctx, out),
        StatsGroup::Reset => {
            *mine = Counts::default();
            ctx.counts.reset();
            Response::Reset.encode(out);
            return;
        }
        StatsGroup::Empty => {}
    }
    Response::End.encode(out);
}

fn general<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = ctx.counts.snapshot();
    let d = ctx.engine.datalet_stats();
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
    // As memcached: shown only with an idle timeout set.
    if ctx.config.idle_timeout > 0 {
        s(out, "idle_kicks", c.timed_out_connections);
    }
    for (name, value) in [
        ("cmd_get", c.cmd_get),
        ("cmd_set", c.cmd_set),
        ("cmd_flush", c.cmd_flush),
        ("cmd_touch", c.cmd_touch),
        ("cmd_meta", 0),
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
        ("auth_cmds", 0),
        ("auth_errors", 0),
        ("bytes_read", c.bytes_read),
        ("bytes_written", c.bytes_written),
        ("limit_maxbytes", d.limit_maxbytes),
        ("accepting_conns", 1),
        ("threads", ctx.config.threads as u64),
        ("bytes", d.bytes),
        ("curr_items", d.curr_items),
        ("total_items", d.total_items),
        ("evictions", 0),
        ("reclaimed", d.reclaimed),
    ] {
        s(out, name, value);
    }
    if let Some(r) = ctx.engine.replication_counters() {
        s(
            out,
            "peer_messages_sent",
            r.peer_messages_sent.load(Relaxed),
        );
        s(out, "ops_proposed", r.ops_proposed.load(Relaxed));
        s(out, "ops_applied", r.ops_applied.load(Relaxed));
        s(out, "apply_failures", r.apply_failures.load(Relaxed));
    }
    if let Some(e) = ctx.engine.eventual_node() {
        s(out, "antientropy_rounds", e.antientropy_rounds());
        s(
            out,
            "antientropy_entries_sent",
            e.antientropy_entries_sent(),
        );
        s(out, "hints_queued", e.hints_queued());
        s(out, "hints_dropped", e.hints_dropped());
        s(out, "hints_pending", e.hints_pending());
        s(out, "tombstones", e.tombstones() as u64);
    }
    if let Some(h) = ctx.engine.cluster_health() {
        encode_stat(out, "cluster_state", h.state().name());
        s(out, "cluster_epoch", h.epoch());
        s(out, "cluster_members", h.members());
    }
}

fn settings<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut) {
    let cfg = &ctx.config;
    let d = ctx.engine.datalet_stats();
    encode_stat(out, "maxbytes", d.limit_maxbytes);
    encode_stat(out, "maxconns", cfg.max_connections);
    encode_stat(out, "tcpport", cfg.listen.port());
    encode_stat(out, "inter", cfg.listen.ip());
    encode_stat(out, "evictions", "off");
    encode_stat(out, "num_threads", cfg.threads);
    encode_stat(out, "cas_enabled", "yes");
    encode_stat(out, "item_size_max", cfg.item_size_max);
    encode_stat(out, "flush_enabled", "yes");
    encode_stat(out, "datalet", &cfg.datalet);
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
