//! `get <key>*`, `gets <key>*`, `gat <exptime> <key>*`, `gats <exptime> <key>*`.
//!
//! Each hit is a `VALUE <key> <flags> <bytes>[ <cas unique>]` line and its data; the reply
//! ends with `END`. `gat`/`gats` also set each hit's expiry, and count as touches, not gets, as
//! in memcached. A datalet that fails mid-reply ends it with `SERVER_ERROR` instead of `END`.

use bytes::Bytes;
use tailorkv_common::codec::{encode_value, Response};
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, Mutation, Outcome};
use tokio::io::AsyncWrite;

use super::Context;
use crate::out::Out;
use crate::stats::Counts;

pub async fn get<D: Datalet, W: AsyncWrite + Unpin>(
    ctx: &Context<D>,
    keys: Vec<Bytes>,
    with_cas: bool,
    out: &mut Out<W>,
    counts: &mut Counts,
) -> std::io::Result<()> {
    if ctx.engine.holds_all() {
        // One key at a time, each reply written out as the buffer fills: what a connection
        // holds stays bounded by the write high-water mark, whatever the values.
        for key in &keys {
            let item = ctx.engine.get(key).await;
            if let Ok(found) = &item {
                ctx.prefixes.get(key, found.is_some());
            }
            if !answer(ctx, key, item, with_cas, out, counts)? {
                return Ok(());
            }
            out.flush_if_full().await?;
        }
    } else {
        // A window of keys at a time, every group's keys of it at once (each group's in one
        // request to an owner), hits written in the order asked, as memcached writes them.
        for window in keys.chunks(GET_WINDOW) {
            let items = ctx.engine.get_many(window).await;
            for (key, item) in window.iter().zip(items) {
                if let Ok(found) = &item {
                    ctx.prefixes.get(key, found.is_some());
                }
                if !answer(ctx, key, item, with_cas, out, counts)? {
                    return Ok(());
                }
            }
            out.flush_if_full().await?;
        }
    }
    Response::End.encode(&mut out.buf);
    Ok(())
}

/// Keys of a multi-get looked up together in a sharded cluster: what a connection holds at
/// once is at most this many items.
const GET_WINDOW: usize = 16;

/// Writes one key's answer; `false` once a failure ended the reply.
fn answer<D, W>(
    ctx: &Context<D>,
    key: &Bytes,
    item: Result<Option<tailorkv_datalet::Item>, crate::error::Error>,
    with_cas: bool,
    out: &mut Out<W>,
    counts: &mut Counts,
) -> std::io::Result<bool> {
    counts.cmd_get += 1;
    match item {
        Ok(Some(item)) => {
            counts.get_hits += 1;
            let cas = with_cas.then(|| ctx.cas(item.version));
            encode_value(&mut out.buf, key, item.flags, &item.value, cas);
        }
        Ok(None) => counts.get_misses += 1,
        Err(e) => {
            fail(out, e)?;
            return Ok(false);
        }
    }
    Ok(true)
}

pub async fn gat<D: Datalet, W: AsyncWrite + Unpin>(
    ctx: &Context<D>,
    exptime: i32,
    keys: Vec<Bytes>,
    with_cas: bool,
    out: &mut Out<W>,
    counts: &mut Counts,
) -> std::io::Result<()> {
    let expiry = Expiry::from_exptime(exptime, ctx.engine.now());
    for key in keys {
        counts.cmd_touch += 1;
        let touched = ctx.engine.apply(&key, Mutation::Touch { expiry }).await;
        if let Ok(outcome) = &touched {
            ctx.prefixes
                .get(&key, matches!(outcome, Outcome::Touched(_)));
        }
        match touched {
            Ok(Outcome::Touched(item)) => {
                counts.touch_hits += 1;
                let cas = with_cas.then(|| ctx.cas(item.version));
                encode_value(&mut out.buf, &key, item.flags, &item.value, cas);
            }
            Ok(_) => counts.touch_misses += 1,
            Err(e) => return fail(out, e),
        }
        out.flush_if_full().await?;
    }
    Response::End.encode(&mut out.buf);
    Ok(())
}

/// Ends a reply the datalet could not complete with its error instead of `END`.
fn fail<W>(out: &mut Out<W>, e: crate::error::Error) -> std::io::Result<()> {
    tracing::warn!(error = %e, "datalet failed during a read");
    super::admin::error_reply(e).encode(&mut out.buf);
    Ok(())
}
