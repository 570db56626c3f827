//! The meta commands `mg`, `ms`, `md`, `ma` and `me` (`mn` is answered by the parser), with
//! memcached 1.6.18's replies byte for byte: `VA <size> <flags>*`/`HD <flags>*` with its data
//! for a hit, `EN` for a miss, `NS`/`EX`/`NF` for what was not done, each returned flag in the
//! order the request gave it.
//!
//! What changes an item goes through the engine as one [`Mutation`], so every consistency mode
//! orders it like any write: a win token (`W`) is handed out by the mutation that marks the
//! item, so in the strong modes exactly one client in the cluster wins it. A plain `mg` is a
//! read; one that finds a stale item no one has won yet is carried out again as a mutation, so
//! that the win is decided in the order too.

use std::fmt::Write as _;

use bytes::{BufMut, Bytes, BytesMut};
use tailorkv_common::codec::{
    base64_encode, item_size, MetaCommand, MetaRequest, Response, SERVER_ERROR_OUT_OF_MEMORY,
};
use tailorkv_common::{Expiry, UnixSecs};
use tailorkv_datalet::{
    Counted, Datalet, DataletError, Fetched, Marks, MetaArith, MetaDelete, MetaGet, MetaSet,
    Mutation, Outcome,
};

use super::Context;
use crate::error::Error;
use crate::replication::Bump;
use crate::stats::Counts;

/// Carries out `mg`, `ms`, `md` or `ma`, appending its reply (nothing for a quiet nominal
/// one) to `out`.
pub async fn meta<D: Datalet>(
    ctx: &Context<D>,
    which: MetaCommand,
    request: &MetaRequest,
    out: &mut BytesMut,
    counts: &mut Counts,
) {
    if let Some(token) = &request.causal {
        if !ctx.engine.is_causal() {
            // As memcached answers a flag it does not know.
            Response::ClientError("invalid flag").encode(out);
            return;
        }
        if !token.is_empty() {
            if let Err(e) = ctx.engine.reach_token(token).await {
                let reply = match e {
                    Error::Refused(why) if why == crate::engine::BAD_TOKEN => {
                        Response::ClientError(why)
                    }
                    e => super::admin::error_reply(e),
                };
                reply.encode(out);
                return;
            }
        }
    }
    let start = out.len();
    let result = match which {
        MetaCommand::Get => get(ctx, request, out, counts).await,
        MetaCommand::Set => set(ctx, request, out, counts).await,
        MetaCommand::Delete => delete(ctx, request, out, counts).await,
        MetaCommand::Arith => arith(ctx, request, out, counts).await,
    };
    if let Err(e) = result {
        super::admin::error_reply(e).encode(out);
        return;
    }
    if request.causal.is_some() {
        put_causal_token(ctx, out, start);
    }
}

/// ` Y<token>` at the end of the reply's first line (if it sent one): this node's causal
/// context after the request, which covers everything the request saw or did.
fn put_causal_token<D: Datalet>(ctx: &Context<D>, out: &mut BytesMut, start: usize) {
    let Some(token) = ctx.engine.causal_token() else {
        return;
    };
    let Some(end) = out[start..].windows(2).position(|w| w == b"\r\n") else {
        return; // a quiet reply: nothing sent
    };
    let at = start + end;
    let tail = out.split_off(at);
    out.put_slice(b" Y");
    out.put_slice(token.as_bytes());
    out.unsplit(tail);
}

/// What a time-to-live token sets, as memcached reads an exptime.
fn expiry(ttl: i32, now: UnixSecs) -> Expiry {
    Expiry::from_exptime(ttl, now)
}

/// The expiry an item created on a miss ends with: memcached sets `T` and `N` in the order
/// they came, so the later wins.
fn created_expiry(request: &MetaRequest, now: UnixSecs) -> Expiry {
    let mut shown = Expiry::Never;
    for &code in &request.flags {
        match (code, request.ttl, request.vivify) {
            (b'T', Some(ttl), _) | (b'N', _, Some(ttl)) => shown = expiry(ttl, now),
            _ => {}
        }
    }
    shown
}

/// ` k<key>`, in base64 with ` b` after it for a binary key.
fn put_key(out: &mut BytesMut, key: &[u8], base64: bool) {
    out.put_slice(b" k");
    if base64 {
        let mut encoded = Vec::with_capacity(key.len().div_ceil(3) * 4);
        base64_encode(key, &mut encoded);
        out.put_slice(&encoded);
        out.put_slice(b" b");
    } else {
        out.put_slice(key);
    }
}

/// ` t<seconds left>`, `-1` for an item that does not expire. Like memcached, a time already
/// past wraps as an unsigned 32-bit number.
fn put_ttl(out: &mut BytesMut, expiry: Expiry, now: UnixSecs) {
    match expiry {
        Expiry::Never => out.put_slice(b" t-1"),
        Expiry::At(at) => {
            let _ = write!(out, " t{}", at.wrapping_sub(now) as u32);
        }
    }
}

/// The opaque and key flags of a reply that has no item: a miss, `NF`, `EX`, `NS`.
fn put_echo(out: &mut BytesMut, request: &MetaRequest) {
    for &code in &request.flags {
        match code {
            b'O' => put_opaque(out, request),
            b'k' => put_key(out, &request.key, request.base64),
            _ => {}
        }
    }
}

fn put_opaque(out: &mut BytesMut, request: &MetaRequest) {
    if let Some(opaque) = &request.opaque {
        out.put_u8(b' ');
        out.put_slice(opaque);
    }
}

/// `mg <key> <flags>*`.
async fn get<D: Datalet>(
    ctx: &Context<D>,
    request: &MetaRequest,
    out: &mut BytesMut,
    counts: &mut Counts,
) -> Result<(), Error> {
    let key = &request.key;
    let now = ctx.engine.now();
    // `h` and `l` report the item's use before this read.
    let access = (request.has(b'h') || request.has(b'l'))
        .then(|| ctx.engine.access(key))
        .flatten();
    let bump = !request.no_bump;
    let modifies = request.vivify.is_some() || request.recache.is_some() || request.ttl.is_some();
    let touching = request.ttl.is_some();
    let mutation = || {
        let touch_at = request.flags.iter().position(|&c| c == b'T');
        let recache_at = request.flags.iter().position(|&c| c == b'R');
        Mutation::MetaGet(MetaGet {
            vivify: request.vivify.map(|_| created_expiry(request, now)),
            recache: request.recache.map(|ttl| expiry(ttl, now)),
            touch: request.ttl.map(|ttl| expiry(ttl, now)),
            touch_first: touch_at < recache_at,
            bump,
        })
    };
    let fetched = if modifies {
        match ctx.engine.apply(key, mutation()).await? {
            Outcome::Fetched(fetched) => Some(*fetched),
            _ => None,
        }
    } else {
        let bump = if bump { Bump::Yes } else { Bump::No };
        match ctx.engine.read(key, bump).await? {
            // A stale item no one has won: whether this reader wins is decided in the order.
            Some(item) if item.marks.contains(Marks::STALE) && !item.marks.contains(Marks::WON) => {
                match ctx.engine.apply(key, mutation()).await? {
                    Outcome::Fetched(fetched) => Some(*fetched),
                    _ => None,
                }
            }
            Some(item) => Some(Fetched {
                marks_before: item.marks,
                expiry_before: item.expiry,
                item,
                created: false,
                won: false,
            }),
            None => None,
        }
    };
    let Some(f) = fetched else {
        // memcached counts a miss as a get, `T` or not.
        counts.cmd_get += 1;
        counts.get_misses += 1;
        if !request.quiet {
            out.put_slice(b"EN");
            put_echo(out, request);
            out.put_slice(b"\r\n");
        }
        return Ok(());
    };
    if touching {
        counts.cmd_touch += 1;
        counts.touch_hits += 1;
    } else {
        // An item created on a miss counts as a hit, as in memcached.
        counts.cmd_get += 1;
        counts.get_hits += 1;
    }
    let item = &f.item;
    out.reserve(item.value.len() + key.len() + 64);
    if request.value {
        let _ = write!(out, "VA {}", item.value.len());
    } else {
        out.put_slice(b"HD");
    }
    let mut shown = if f.created {
        Expiry::Never
    } else {
        f.expiry_before
    };
    for &code in &request.flags {
        match code {
            b'T' => shown = request.ttl.map_or(shown, |ttl| expiry(ttl, now)),
            b'N' if f.created => shown = request.vivify.map_or(shown, |ttl| expiry(ttl, now)),
            b's' => {
                let _ = write!(out, " s{}", item.value.len());
            }
            b't' => put_ttl(out, shown, now),
            b'c' => {
                let _ = write!(out, " c{}", ctx.cas(item.version));
            }
            b'f' => {
                let _ = write!(out, " f{}", item.flags);
            }
            b'l' => {
                let last = access.map_or(now, |a| a.last);
                let _ = write!(out, " l{}", now.saturating_sub(last));
            }
            b'h' => {
                let fetched = access.is_some_and(|a| a.fetched) && !f.created;
                out.put_slice(if fetched { b" h1" } else { b" h0" });
            }
            b'O' => put_opaque(out, request),
            b'k' => put_key(out, key, item.marks.contains(Marks::BINARY_KEY)),
            _ => {}
        }
    }
    if f.marks_before.contains(Marks::WON) {
        out.put_slice(b" Z");
    }
    if item.marks.contains(Marks::STALE) {
        out.put_slice(b" X");
    }
    if f.won {
        out.put_slice(b" W");
    }
    out.put_slice(b"\r\n");
    if request.value {
        out.put_slice(&item.value);
        out.put_slice(b"\r\n");
    }
    Ok(())
}

/// `ms <key> <datalen> <flags>*` and its data.
async fn set<D: Datalet>(
    ctx: &Context<D>,
    request: &MetaRequest,
    out: &mut BytesMut,
    counts: &mut Counts,
) -> Result<(), Error> {
    counts.cmd_set += 1;
    let now = ctx.engine.now();
    let mode = request.store_mode();
    let is_cas = request.compare.is_some()
        && matches!(
            mode,
            tailorkv_common::codec::StoreMode::Set | tailorkv_common::codec::StoreMode::Replace
        );
    // With CAS off memcached cannot note the unique on the new item: a `set` or `replace`
    // with `C` is a compare with nothing that fails, and the other modes ignore it.
    let compare = match mode {
        _ if !ctx.config.disable_cas => request.compare,
        tailorkv_common::codec::StoreMode::Set | tailorkv_common::codec::StoreMode::Replace => {
            request
                .compare
                .map(|_| tailorkv_common::version::NO_MATCH_CAS)
        }
        _ => None,
    };
    let mutation = Mutation::MetaSet(MetaSet {
        mode,
        compare,
        invalidate: request.invalidate,
        flags: request.client_flags,
        expiry: expiry(request.ttl.unwrap_or(0), now),
        value: request.data.clone(),
        marks: if request.base64 {
            Marks::BINARY_KEY
        } else {
            Marks::default()
        },
    });
    let (code, cas): (&[u8], u64) = match ctx.engine.apply(&request.key, mutation).await {
        Ok(Outcome::StoredAt(version)) => {
            if is_cas {
                counts.cas_hits += 1;
            }
            (b"HD", ctx.cas(version))
        }
        Ok(Outcome::Exists) => {
            if is_cas {
                counts.cas_badval += 1;
            }
            (b"EX", 0)
        }
        Ok(Outcome::NotFound) => {
            if is_cas {
                counts.cas_misses += 1;
            }
            (b"NF", 0)
        }
        Ok(_) => (b"NS", 0),
        Err(Error::Datalet(DataletError::OutOfMemory)) => {
            counts.store_no_memory += 1;
            // memcached drops the old value of any `ms` it has no room for.
            super::store::drop_old_value(ctx, &request.key).await;
            Response::ServerError(SERVER_ERROR_OUT_OF_MEMORY).encode(out);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if request.quiet && code == b"HD" {
        return Ok(());
    }
    out.put_slice(code);
    for &flag in &request.flags {
        match flag {
            b'O' => put_opaque(out, request),
            b'k' => put_key(out, &request.key, request.base64),
            b'c' => {
                let _ = write!(out, " c{cas}");
            }
            _ => {}
        }
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// `md <key> <flags>*`.
async fn delete<D: Datalet>(
    ctx: &Context<D>,
    request: &MetaRequest,
    out: &mut BytesMut,
    counts: &mut Counts,
) -> Result<(), Error> {
    let now = ctx.engine.now();
    // With CAS off every item's unique reads as 0, so `C0` matches it.
    let compare = match request.compare {
        Some(0) if ctx.config.disable_cas => None,
        compare => compare.map(|u| ctx.compared(u)),
    };
    let mutation = Mutation::MetaDelete(MetaDelete {
        compare,
        invalidate: request.invalidate,
        touch: request
            .ttl
            .filter(|_| request.invalidate)
            .map(|ttl| expiry(ttl, now)),
    });
    let code: &[u8] = match ctx.engine.apply(&request.key, mutation).await? {
        Outcome::Deleted => {
            counts.delete_hits += 1;
            b"HD"
        }
        Outcome::Invalidated => b"HD",
        Outcome::Exists => {
            counts.delete_misses += 1;
            b"EX"
        }
        _ => {
            counts.delete_misses += 1;
            b"NF"
        }
    };
    if request.quiet && code == b"HD" {
        return Ok(());
    }
    out.put_slice(code);
    put_echo(out, request);
    out.put_slice(b"\r\n");
    Ok(())
}

/// `ma <key> <flags>*`.
async fn arith<D: Datalet>(
    ctx: &Context<D>,
    request: &MetaRequest,
    out: &mut BytesMut,
    counts: &mut Counts,
) -> Result<(), Error> {
    let now = ctx.engine.now();
    let incr = request.increments();
    let mutation = Mutation::MetaArith(MetaArith {
        incr,
        delta: request.delta,
        compare: request.compare.map(|u| ctx.compared(u)),
        vivify: request
            .vivify
            .map(|_| (created_expiry(request, now), request.initial)),
        touch: request.ttl.map(|ttl| expiry(ttl, now)),
    });
    let (hits, misses) = if incr {
        (&mut counts.incr_hits, &mut counts.incr_misses)
    } else {
        (&mut counts.decr_hits, &mut counts.decr_misses)
    };
    let outcome = match ctx.engine.apply(&request.key, mutation).await {
        Ok(outcome) => outcome,
        Err(Error::Datalet(DataletError::OutOfMemory)) => {
            Response::ServerError("out of memory").encode(out);
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let counted: Counted = match outcome {
        Outcome::Counted(counted) => *counted,
        Outcome::NonNumeric => {
            Response::ClientError("cannot increment or decrement non-numeric value").encode(out);
            return Ok(());
        }
        Outcome::Exists => {
            out.put_slice(b"EX");
            put_echo(out, request);
            out.put_slice(b"\r\n");
            return Ok(());
        }
        _ => {
            *misses += 1;
            out.put_slice(b"NF");
            put_echo(out, request);
            out.put_slice(b"\r\n");
            return Ok(());
        }
    };
    if !counted.created {
        *hits += 1;
    }
    // As memcached: `q` hides the reply to a change, not to an item `N` created.
    if request.quiet && !counted.created {
        return Ok(());
    }
    let number = counted.number.to_string();
    if request.value {
        let _ = write!(out, "VA {}", number.len());
    } else {
        out.put_slice(b"HD");
    }
    let mut shown = if counted.created {
        Expiry::Never
    } else {
        counted.expiry_before
    };
    for &code in &request.flags {
        match code {
            b'c' => {
                let _ = write!(out, " c{}", ctx.cas(counted.item.version));
            }
            b't' => put_ttl(out, shown, now),
            b'T' => shown = request.ttl.map_or(shown, |ttl| expiry(ttl, now)),
            b'N' if counted.created => shown = request.vivify.map_or(shown, |ttl| expiry(ttl, now)),
            b'O' => put_opaque(out, request),
            b'k' => put_key(out, &request.key, request.base64),
            _ => {}
        }
    }
    if request.value {
        out.put_slice(b"\r\n");
        out.put_slice(number.as_bytes());
    }
    out.put_slice(b"\r\n");
    Ok(())
}

/// `me <key> [b]`: `ME <key> exp=.. la=.. cas=.. fetch=.. cls=.. size=..` or `EN`. Not an
/// access of the item. `exp=` is memcached's: the seconds since the item's expiry, so
/// negative while it lives, `-1` when it never expires.
pub async fn debug<D: Datalet>(
    ctx: &Context<D>,
    key: &Bytes,
    out: &mut BytesMut,
    counts: &mut Counts,
) {
    counts.cmd_meta += 1;
    let now = ctx.engine.now();
    let access = ctx.engine.access(key);
    let item = match ctx.engine.read(key, Bump::No).await {
        Ok(Some(item)) => item,
        Ok(None) => {
            out.put_slice(b"EN\r\n");
            return;
        }
        Err(e) => {
            super::admin::error_reply(e).encode(out);
            return;
        }
    };
    out.put_slice(b"ME ");
    if item.marks.contains(Marks::BINARY_KEY) {
        let mut encoded = Vec::new();
        base64_encode(key, &mut encoded);
        out.put_slice(&encoded);
    } else {
        out.put_slice(key);
    }
    let exp = match item.expiry {
        Expiry::Never => -1,
        Expiry::At(at) => now as i64 - at as i64,
    };
    let size = item_size(key.len(), item.flags, item.value.len());
    let _ = write!(
        out,
        " exp={exp} la={} cas={} fetch={} cls={} size={size}\r\n",
        now.saturating_sub(access.map_or(now, |a| a.last)),
        ctx.cas(item.version),
        if access.is_some_and(|a| a.fetched) {
            "yes"
        } else {
            "no"
        },
        tailorkv_common::slabs::classes().class_of(size),
    );
}
