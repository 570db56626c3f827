//! `set`, `add`, `replace`, `append`, `prepend` and `cas`: `STORED`, `NOT_STORED`, `EXISTS`
//! (cas unique changed) or `NOT_FOUND` (cas on a missing key).
//!
//! A store that would pass the memory limit (with nothing left to evict, or eviction off) is
//! refused with `SERVER_ERROR out of memory storing object`. A `set` refused so, or for a
//! value too large, also deletes the key's old value, as memcached does: a reader must not
//! see the value the writer meant to replace. Other modes keep it.

use bytes::Bytes;
use tailorkv_common::codec::{Response, StoreMode, SERVER_ERROR_OUT_OF_MEMORY};
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, DataletError, Mutation, Outcome};

use super::Context;
use crate::error::Error;
use crate::stats::Counts;

/// Deletes what `key` holds after a `set` of it was refused. The refusal is the answer
/// whatever this does; a failure is logged.
pub async fn drop_old_value<D: Datalet>(ctx: &Context<D>, key: &Bytes) {
    if let Err(e) = ctx.engine.apply(key, Mutation::Delete).await {
        tracing::debug!(error = %e, "could not drop the old value of a refused set");
    }
}

pub async fn store<D: Datalet>(
    ctx: &Context<D>,
    mode: StoreMode,
    key: Bytes,
    flags: u32,
    exptime: i32,
    value: Bytes,
    counts: &mut Counts,
) -> Response {
    counts.cmd_set += 1;
    ctx.prefixes.set(&key);
    let expiry = Expiry::from_exptime(exptime, ctx.engine.now());
    let mode = match mode {
        // memcached's `cas` with CAS off: the item's unique is 0, which no request matches.
        StoreMode::Cas(_) if ctx.config.disable_cas => {
            StoreMode::Cas(tailorkv_common::version::NO_MATCH_CAS)
        }
        mode => mode,
    };
    let mutation = Mutation::Store {
        mode,
        flags,
        expiry,
        value,
    };
    let outcome = match ctx.engine.apply(&key, mutation).await {
        Ok(outcome) => outcome,
        Err(Error::Datalet(DataletError::OutOfMemory)) => {
            counts.store_no_memory += 1;
            if mode == StoreMode::Set {
                drop_old_value(ctx, &key).await;
            }
            return Response::ServerError(SERVER_ERROR_OUT_OF_MEMORY);
        }
        Err(e) => return super::admin::error_reply(e),
    };
    let is_cas = matches!(mode, StoreMode::Cas(_));
    match outcome {
        Outcome::Stored => {
            if is_cas {
                counts.cas_hits += 1;
            }
            Response::Stored
        }
        Outcome::Exists => {
            counts.cas_badval += 1;
            Response::Exists
        }
        Outcome::NotFound => {
            counts.cas_misses += 1;
            Response::NotFound
        }
        _ => Response::NotStored,
    }
}
