//! `set`, `add`, `replace`, `append`, `prepend` and `cas`: `STORED`, `NOT_STORED`, `EXISTS`
//! (cas unique changed) or `NOT_FOUND` (cas on a missing key).
//!
//! A store that would pass the memory limit is refused with
//! `SERVER_ERROR out of memory storing object`, and the key keeps the value it had. (memcached
//! also deletes the old value of a `set` it cannot store; we never drop stored data.)

use bytes::Bytes;
use tailorkv_common::codec::{Response, StoreMode, SERVER_ERROR_OUT_OF_MEMORY};
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, DataletError, Mutation, Outcome};

use super::Context;
use crate::error::Error;
use crate::stats::Counts;

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
    let expiry = Expiry::from_exptime(exptime, ctx.engine.now());
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
