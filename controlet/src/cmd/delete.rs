//! `delete <key> [noreply]`: `DELETED` or `NOT_FOUND`.

use bytes::Bytes;
use tailorkv_common::codec::Response;
use tailorkv_datalet::{Datalet, Mutation, Outcome};

use super::Context;
use crate::stats::Counts;

pub async fn delete<D: Datalet>(ctx: &Context<D>, key: Bytes, counts: &mut Counts) -> Response {
    ctx.prefixes.delete(&key);
    match ctx.engine.apply(&key, Mutation::Delete).await {
        Ok(Outcome::Deleted) => {
            counts.delete_hits += 1;
            Response::Deleted
        }
        Ok(_) => {
            counts.delete_misses += 1;
            Response::NotFound
        }
        Err(e) => super::admin::error_reply(e),
    }
}
