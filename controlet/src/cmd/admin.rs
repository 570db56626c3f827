//! `version`, `verbosity`, `cache_memlimit`, and the reply to a datalet failure.

use tailorkv_common::codec::{Response, SERVER_ERROR_OUT_OF_MEMORY};
use tailorkv_datalet::{Datalet, DataletError};

use super::Context;

/// The version reported to clients: the memcached protocol version spoken, then ours. Client
/// libraries parse the leading `major.minor.patch`.
pub const VERSION: &str = concat!("1.6.18-tailorkv-", env!("CARGO_PKG_VERSION"));

pub fn version() -> Response {
    Response::Version(VERSION)
}

/// `verbosity <level>`: accepted for compatibility; log levels are set with `RUST_LOG`.
pub fn verbosity() -> Response {
    Response::Ok
}

/// `cache_memlimit <megabytes>`: changes the datalet's memory limit. The parser has already
/// refused values memcached refuses.
pub fn cache_memlimit<D: Datalet>(ctx: &Context<D>, megabytes: u32) -> Response {
    ctx.engine
        .set_memory_limit(megabytes as usize * 1024 * 1024);
    Response::Ok
}

pub fn datalet_error(e: DataletError) -> Response {
    match e {
        DataletError::OutOfMemory => Response::ServerError(SERVER_ERROR_OUT_OF_MEMORY),
        DataletError::Unavailable(why) => {
            tracing::warn!(%why, "datalet unavailable");
            Response::ServerError("datalet unavailable")
        }
        DataletError::Refused(why) => Response::ServerError(why),
    }
}
