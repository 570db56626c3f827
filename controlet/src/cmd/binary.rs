//! The binary protocol's requests, carried out with the same engine operations as the text
//! protocol's and answered as memcached 1.6.18's `proto_bin.c` answers them.
//!
//! Quiet forms send nothing for a nominal outcome; errors are always sent, and a `GETQ`,
//! `GETKQ`, `GATQ` or `GATKQ` hit is sent too. A response carries the request's opcode and
//! opaque, and the CAS unique of the item it stored or found (0 otherwise). SASL offers one
//! mechanism, `PLAIN`, checked against the `--auth-file` users.

use bytes::{Bytes, BytesMut};
use tailorkv_common::codec::binary::{
    encode_error, BinCommand, BinRequest, BinResponse, BinStore, Status,
};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, UnixSecs};
use tailorkv_datalet::{
    Datalet, DataletError, Marks, MetaArith, MetaDelete, MetaSet, Mutation, Outcome,
};

use super::{Context, Flow};
use crate::error::Error;
use crate::stats::Counts;

/// A binary connection's state besides its decoder.
#[derive(Debug, Default)]
pub struct Session {
    /// A SASL exchange has authenticated this connection.
    pub authenticated: bool,
    /// A `PLAIN` exchange began without its message, which a step brings.
    pub awaiting_plain: bool,
}

/// Carries out one request, appending its response (if any) to `out`.
pub async fn execute<D: Datalet>(
    ctx: &Context<D>,
    request: BinRequest,
    session: &mut Session,
    out: &mut BytesMut,
    counts: &mut Counts,
) -> Flow {
    let BinRequest {
        command,
        opcode,
        opaque,
        quiet,
    } = request;
    let reply = Reply {
        opcode,
        opaque,
        quiet,
    };
    let now = ctx.engine.now();
    match command {
        BinCommand::Get { key, with_key } => {
            counts.cmd_get += 1;
            let found = ctx.engine.get(&key).await;
            if let Ok(item) = &found {
                ctx.prefixes.get(&key, item.is_some());
            }
            match found {
                Ok(Some(item)) => {
                    counts.get_hits += 1;
                    let shown: &[u8] = if with_key { &key } else { &[] };
                    reply.item(out, item.flags, ctx.cas(item.version), shown, &item.value);
                }
                Ok(None) => {
                    counts.get_misses += 1;
                    reply.miss(out, with_key.then_some(&key));
                }
                Err(e) => reply.failed(out, e),
            }
        }
        BinCommand::Touch { key, exptime } | BinCommand::Gat { key, exptime, .. } => {
            let (touch_only, with_key) = match &command_kind(opcode) {
                Kind::Touch => (true, false),
                Kind::GatK => (false, true),
                Kind::Other => (false, false),
            };
            counts.cmd_touch += 1;
            let expiry = expiry(exptime, now);
            let touched = ctx.engine.apply(&key, Mutation::Touch { expiry }).await;
            if let Ok(outcome) = &touched {
                ctx.prefixes
                    .get(&key, matches!(outcome, Outcome::Touched(_)));
            }
            match touched {
                Ok(Outcome::Touched(item)) => {
                    counts.touch_hits += 1;
                    let shown: &[u8] = if with_key { &key } else { &[] };
                    let value: &[u8] = if touch_only { &[] } else { &item.value };
                    reply.item(out, item.flags, ctx.cas(item.version), shown, value);
                }
                Ok(_) => {
                    counts.touch_misses += 1;
                    reply.miss(out, with_key.then_some(&key));
                }
                Err(e) => reply.failed(out, e),
            }
        }
        BinCommand::Store {
            mode,
            key,
            flags,
            exptime,
            cas,
            value,
        } => {
            store(
                ctx,
                reply,
                mode,
                key,
                flags,
                expiry(exptime, now),
                cas,
                value,
                out,
                counts,
            )
            .await
        }
        BinCommand::TooLarge { key, set } => {
            counts.store_too_large += 1;
            ctx.prefixes.set(&key);
            if set {
                super::store::drop_old_value(ctx, &key).await;
            }
            reply.error(out, Status::TooLarge);
        }
        BinCommand::Delete { key, cas } => {
            ctx.prefixes.delete(&key);
            let mutation = Mutation::MetaDelete(MetaDelete {
                compare: (cas != 0).then(|| ctx.compared(cas)),
                invalidate: false,
                touch: None,
            });
            match ctx.engine.apply(&key, mutation).await {
                Ok(Outcome::Deleted) => {
                    counts.delete_hits += 1;
                    reply.ok(out, 0, &[]);
                }
                Ok(Outcome::Exists) => reply.error(out, Status::KeyExists),
                Ok(_) => {
                    counts.delete_misses += 1;
                    reply.error(out, Status::KeyNotFound);
                }
                Err(e) => reply.failed(out, e),
            }
        }
        BinCommand::Arith {
            incr,
            key,
            delta,
            initial,
            exptime,
            cas,
        } => {
            let mutation = Mutation::MetaArith(MetaArith {
                incr,
                delta,
                compare: (cas != 0).then(|| ctx.compared(cas)),
                vivify: (exptime != u32::MAX).then(|| (expiry(exptime, now), initial)),
                touch: None,
            });
            let (hits, misses) = if incr {
                (&mut counts.incr_hits, &mut counts.incr_misses)
            } else {
                (&mut counts.decr_hits, &mut counts.decr_misses)
            };
            match ctx.engine.apply(&key, mutation).await {
                Ok(Outcome::Counted(counted)) => {
                    if !counted.created {
                        *hits += 1;
                    }
                    let number = counted.number.to_be_bytes();
                    reply.ok(out, ctx.cas(counted.item.version), &number);
                }
                Ok(Outcome::NonNumeric) => reply.error(out, Status::DeltaBadValue),
                Ok(Outcome::Exists) => reply.error(out, Status::KeyExists),
                Ok(_) => {
                    *misses += 1;
                    reply.error(out, Status::KeyNotFound);
                }
                Err(Error::Datalet(DataletError::OutOfMemory)) => {
                    reply.error_text(out, Status::OutOfMemory, "Out of memory incrementing value")
                }
                Err(e) => reply.failed(out, e),
            }
        }
        BinCommand::Flush { delay } => {
            if ctx.config.disable_flush_all {
                // memcached's `-F` answer; unlike the text protocol's, not counted.
                reply.error(out, Status::AuthError);
            } else {
                let delay = i32::try_from(delay).unwrap_or(i32::MAX);
                match super::flush::flush_all(ctx, delay, counts).await {
                    tailorkv_common::codec::Response::Ok => reply.ok(out, 0, &[]),
                    _ => reply.error_text(out, Status::TemporaryFailure, "flush failed"),
                }
            }
        }
        BinCommand::Noop => reply.ok(out, 0, &[]),
        BinCommand::Version => reply.ok(out, 0, super::admin::VERSION.as_bytes()),
        BinCommand::Quit => {
            reply.ok(out, 0, &[]);
            return Flow::Close;
        }
        BinCommand::Stat { group } => stats(ctx, reply, &group, out, counts).await,
        BinCommand::SaslListMechs => match &ctx.auth {
            Some(_) => reply.ok(out, 0, b"PLAIN"),
            None => reply.error(out, Status::UnknownCommand),
        },
        BinCommand::SaslAuth {
            mechanism,
            data,
            step,
        } => {
            let plain = &mechanism[..] == b"PLAIN";
            // `PLAIN` without its message asks for it: the client sends it in a step.
            if plain && !step && data.is_empty() {
                session.awaiting_plain = true;
                BinResponse::status(opcode, opaque, Status::AuthContinue).encode(out);
                return Flow::Continue;
            }
            counts.auth_cmds += 1;
            let started = !step || std::mem::take(&mut session.awaiting_plain);
            let admitted = plain
                && started
                && ctx
                    .auth
                    .as_ref()
                    .is_some_and(|file| file.admits_plain(&data));
            if admitted {
                session.authenticated = true;
                reply.ok(out, 0, b"Authenticated");
            } else {
                counts.auth_errors += 1;
                reply.error(out, Status::AuthError);
            }
        }
        BinCommand::Error { status, close } => {
            encode_error(out, opcode, opaque, status, status.text());
            if close {
                return Flow::Close;
            }
        }
    }
    Flow::Continue
}

/// A request's expiry, as memcached's `realtime` reads the binary protocol's unsigned field:
/// a relative time up to 30 days, else a Unix time.
fn expiry(exptime: u32, now: UnixSecs) -> Expiry {
    match i32::try_from(exptime) {
        Ok(exptime) => Expiry::from_exptime(exptime, now),
        Err(_) => Expiry::At(u64::from(exptime)),
    }
}

/// Which touch command an opcode is (its reply's shape).
enum Kind {
    Touch,
    GatK,
    Other,
}

fn command_kind(opcode: u8) -> Kind {
    use tailorkv_common::codec::binary::op;
    match opcode {
        op::TOUCH => Kind::Touch,
        op::GATK | op::GATKQ => Kind::GatK,
        _ => Kind::Other,
    }
}

/// How to answer one request.
#[derive(Clone, Copy)]
struct Reply {
    opcode: u8,
    opaque: u32,
    quiet: bool,
}

impl Reply {
    /// A success: sent unless the request was quiet.
    fn ok(self, out: &mut BytesMut, cas: u64, value: &[u8]) {
        if self.quiet {
            return;
        }
        BinResponse {
            cas,
            value,
            ..BinResponse::status(self.opcode, self.opaque, Status::Ok)
        }
        .encode(out);
    }

    /// An item found: its flags as extras, the key if asked, its value. Sent even when
    /// quiet.
    fn item(self, out: &mut BytesMut, flags: u32, cas: u64, key: &[u8], value: &[u8]) {
        BinResponse {
            cas,
            extras: &flags.to_be_bytes(),
            key,
            value,
            ..BinResponse::status(self.opcode, self.opaque, Status::Ok)
        }
        .encode(out);
    }

    /// A miss: `Not found`, or for the `K` forms the key; nothing when quiet.
    fn miss(self, out: &mut BytesMut, key: Option<&Bytes>) {
        if self.quiet {
            return;
        }
        match key {
            // The key is the whole body, without memcached's `Not found`.
            Some(key) => BinResponse {
                key,
                ..BinResponse::status(self.opcode, self.opaque, Status::KeyNotFound)
            }
            .encode(out),
            None => self.error(out, Status::KeyNotFound),
        }
    }

    fn error(self, out: &mut BytesMut, status: Status) {
        self.error_text(out, status, status.text());
    }

    fn error_text(self, out: &mut BytesMut, status: Status, text: &str) {
        encode_error(out, self.opcode, self.opaque, status, text);
    }

    /// What the engine could not do: out of memory, or refused (the text protocol's
    /// `SERVER_ERROR <why>`).
    fn failed(self, out: &mut BytesMut, e: Error) {
        match e {
            Error::Datalet(DataletError::OutOfMemory) => self.error(out, Status::OutOfMemory),
            Error::Datalet(DataletError::Unavailable(why)) => {
                tracing::warn!(%why, "datalet unavailable");
                self.error_text(out, Status::TemporaryFailure, "datalet unavailable");
            }
            Error::Refused(why) => self.error_text(out, Status::TemporaryFailure, why),
        }
    }
}

/// `SET`, `ADD`, `REPLACE`, `APPEND`, `PREPEND`: memcached's `do_store_item`, with a CAS
/// unique making `SET`, `ADD` and `REPLACE` a compare-and-swap.
#[allow(clippy::too_many_arguments)]
async fn store<D: Datalet>(
    ctx: &Context<D>,
    reply: Reply,
    mode: BinStore,
    key: Bytes,
    flags: u32,
    expiry: Expiry,
    cas: u64,
    value: Bytes,
    out: &mut BytesMut,
    counts: &mut Counts,
) {
    counts.cmd_set += 1;
    ctx.prefixes.set(&key);
    // With CAS off memcached cannot even note the request's unique on the new item, so a
    // storage command ignores it.
    let compare = (cas != 0 && !ctx.config.disable_cas).then_some(cas);
    let is_cas =
        compare.is_some() && matches!(mode, BinStore::Set | BinStore::Add | BinStore::Replace);
    let store_mode = match mode {
        // With a unique, memcached makes any of these a `cas`.
        _ if is_cas => StoreMode::Set,
        BinStore::Set => StoreMode::Set,
        BinStore::Add => StoreMode::Add,
        BinStore::Replace => StoreMode::Replace,
        BinStore::Append => StoreMode::Append,
        BinStore::Prepend => StoreMode::Prepend,
    };
    let mutation = Mutation::MetaSet(MetaSet {
        mode: store_mode,
        compare,
        invalidate: false,
        flags,
        expiry,
        value,
        marks: Marks::default(),
    });
    match ctx.engine.apply(&key, mutation).await {
        Ok(Outcome::StoredAt(version)) => {
            if is_cas {
                counts.cas_hits += 1;
            }
            reply.ok(out, ctx.cas(version), &[]);
        }
        Ok(Outcome::Exists) => {
            if is_cas {
                counts.cas_badval += 1;
            }
            reply.error(out, Status::KeyExists);
        }
        Ok(Outcome::NotFound) => {
            if is_cas {
                counts.cas_misses += 1;
            }
            reply.error(out, Status::KeyNotFound);
        }
        Ok(_) => reply.error(
            out,
            match mode {
                BinStore::Add => Status::KeyExists,
                BinStore::Replace => Status::KeyNotFound,
                _ => Status::NotStored,
            },
        ),
        Err(Error::Datalet(DataletError::OutOfMemory)) => {
            counts.store_no_memory += 1;
            if mode == BinStore::Set {
                super::store::drop_old_value(ctx, &key).await;
            }
            reply.error_text(out, Status::OutOfMemory, "Out of memory allocating item");
        }
        Err(e) => reply.failed(out, e),
    }
}

/// `STAT <group>`: a packet per statistic (its name as the key, its value as the value), then
/// an empty one. The statistics are the text protocol's, read from its reply.
async fn stats<D: Datalet>(
    ctx: &Context<D>,
    reply: Reply,
    group: &[u8],
    out: &mut BytesMut,
    counts: &mut Counts,
) {
    use tailorkv_common::codec::StatsGroup;
    let group = match group {
        b"" => Some(StatsGroup::General),
        g if g.starts_with(b"reset") => Some(StatsGroup::Reset),
        g if g.starts_with(b"settings") => Some(StatsGroup::Settings),
        g if g.starts_with(b"detail") => {
            match &g[6..] {
                rest if rest.starts_with(b" on") => ctx.prefixes.set_enabled(true),
                rest if rest.starts_with(b" off") => ctx.prefixes.set_enabled(false),
                rest if rest.starts_with(b" dump") => {
                    // memcached sends the text dump as the value of one statistic.
                    let mut dump = BytesMut::new();
                    ctx.prefixes.dump(&mut dump);
                    BinResponse {
                        key: b"detailed",
                        value: &dump,
                        ..BinResponse::status(reply.opcode, reply.opaque, Status::Ok)
                    }
                    .encode(out);
                }
                _ => {
                    reply.error(out, Status::KeyNotFound);
                    return;
                }
            }
            None
        }
        b"items" => Some(StatsGroup::Items),
        b"slabs" => Some(StatsGroup::Slabs),
        b"sizes" => Some(StatsGroup::Sizes),
        // `conns` too is unknown here: memcached lists connections to text clients only.
        _ => {
            reply.error(out, Status::KeyNotFound);
            return;
        }
    };
    let mut text = BytesMut::new();
    if let Some(group) = group {
        super::stats::stats(ctx, group, counts, &mut text).await;
    }
    for line in text[..].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(stat) = line.strip_prefix(b"STAT ") else {
            continue;
        };
        let (name, value) = match stat.iter().position(|&b| b == b' ') {
            Some(space) => (&stat[..space], &stat[space + 1..]),
            None => (stat, &b""[..]),
        };
        BinResponse {
            key: name,
            value,
            ..BinResponse::status(reply.opcode, reply.opaque, Status::Ok)
        }
        .encode(out);
    }
    BinResponse::status(reply.opcode, reply.opaque, Status::Ok).encode(out);
}
