//! `touch <key> <exptime> [noreply]`: `TOUCHED` or `NOT_FOUND`.

use bytes::Bytes;
use tailorkv_common::codec::Response;
use tailorkv_common::Expiry;
use tailorkv_datalet::{Datalet, Mutation, Outcome};

use super::Context;
use crate::stats::Counts;

pub async fn touch<D: Datalet>(
    ctx: &Context<D>,
    key: Bytes,
    exptime: i32,
    counts: &mut Counts,
) -> Response {
    counts.cmd_touch += 1;
    let expiry = Expiry::from_exptime(exptime, ctx.engine.now());
    match ctx.engine.apply(&key, Mutation::Touch { expiry }).await {
        Ok(Outcome::Touched(_)) => {
            counts.touch_hits += 1;
            Response::Touched
        }
        Ok(_) => {
            counts.touch_misses += 1;
            Response::NotFound
        }
        Err(e) => super::admin::error_reply(e),
    }
}
