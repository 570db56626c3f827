//! `incr|decr <key> <delta> [noreply]`: the new value, `NOT_FOUND`, or
//! `CLIENT_ERROR cannot increment or decrement non-numeric value`. `incr` wraps at 2^64;
//! `decr` stops at 0.

use bytes::Bytes;
use tailorkv_common::codec::Response;
use tailorkv_datalet::{Datalet, DataletError, Mutation, Outcome};

use super::Context;
use crate::error::Error;
use crate::stats::Counts;

/// Which way a command moves the number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// `incr`: adds the delta, wrapping at 2^64.
    Incr,
    /// `decr`: subtracts the delta, stopping at 0.
    Decr,
}

/// `incr` or `decr` of `key` by `delta`, as `op` says.
pub async fn arith<D: Datalet>(
    ctx: &Context<D>,
    op: Arith,
    key: Bytes,
    delta: u64,
    counts: &mut Counts,
) -> Response {
    let (mutation, hits, misses) = match op {
        Arith::Incr => (
            Mutation::Incr(delta),
            &mut counts.incr_hits,
            &mut counts.incr_misses,
        ),
        Arith::Decr => (
            Mutation::Decr(delta),
            &mut counts.decr_hits,
            &mut counts.decr_misses,
        ),
    };
    match ctx.engine.apply(&key, mutation).await {
        Ok(Outcome::Number(n)) => {
            *hits += 1;
            Response::Number(n)
        }
        Ok(Outcome::NonNumeric) => {
            Response::ClientError("cannot increment or decrement non-numeric value")
        }
        Ok(_) => {
            *misses += 1;
            Response::NotFound
        }
        Err(Error::Datalet(DataletError::OutOfMemory)) => Response::ServerError("out of memory"),
        Err(e) => super::admin::error_reply(e),
    }
}
