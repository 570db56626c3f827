//! `flush_all [delay] [noreply]`: `OK`. Without a delay every item is gone at once; with one,
//! items stored before that moment are gone once it comes.

use tailorkv_common::codec::Response;
use tailorkv_datalet::Datalet;

use super::Context;
use crate::stats::Counts;

pub async fn flush_all<D: Datalet>(ctx: &Context<D>, delay: i32, counts: &mut Counts) -> Response {
    counts.cmd_flush += 1;
    match ctx.engine.flush_all(delay).await {
        Ok(()) => Response::Ok,
        Err(e) => super::admin::error_reply(e),
    }
}
