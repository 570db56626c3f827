//! `version`, `verbosity`, `cache_memlimit`, and the reply to a request that failed.

use tailorkv_common::codec::{Response, SERVER_ERROR_OUT_OF_MEMORY};
use tailorkv_datalet::{Datalet, DataletError};

use super::Context;
use crate::error::Error;

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

/// `refresh_certs`: reads the TLS files again, as memcached does. If they do not load, the
/// old ones stay in use and the reply says why (`CLIENT_ERROR`, as memcached's); without TLS
/// the reply is memcached's: `Error TLS not enabled`.
/// Returns whether TLS is on.
pub fn refresh_certs<D: Datalet>(ctx: &Context<D>, out: &mut bytes::BytesMut) -> bool {
    let Some(tls) = &ctx.tls else {
        Response::Line("Error TLS not enabled").encode(out);
        return false;
    };
    match tls.refresh() {
        Ok(()) => Response::Ok.encode(out),
        Err(e) => {
            tracing::warn!(error = %e, "refresh_certs: the TLS files did not load; the old ones stay");
            let why: String = e
                .to_string()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            out.extend_from_slice(b"CLIENT_ERROR Error loading the certificates: ");
            out.extend_from_slice(why.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    true
}

/// `cache_memlimit <megabytes>`: changes the datalet's memory limit. The parser has already
/// refused values memcached refuses.
pub fn cache_memlimit<D: Datalet>(ctx: &Context<D>, megabytes: u32) -> Response {
    ctx.engine
        .set_memory_limit(megabytes as usize * 1024 * 1024);
    Response::Ok
}

/// The `SERVER_ERROR` a client is given for a request that failed: memcached's text for a
/// full store, `datalet unavailable` (the cause is logged, not sent), or the cluster's
/// reason for refusing.
pub fn error_reply(e: Error) -> Response {
    match e {
        Error::Datalet(DataletError::OutOfMemory) => {
            Response::ServerError(SERVER_ERROR_OUT_OF_MEMORY)
        }
        Error::Datalet(DataletError::Unavailable(why)) => {
            tracing::warn!(%why, "datalet unavailable");
            Response::ServerError("datalet unavailable")
        }
        Error::Refused(why) => Response::ServerError(why),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;

    fn encoded(e: Error) -> String {
        let mut out = BytesMut::new();
        error_reply(e).encode(&mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn each_error_is_its_server_error_line() {
        assert_eq!(
            encoded(DataletError::OutOfMemory.into()),
            "SERVER_ERROR out of memory storing object\r\n"
        );
        assert_eq!(
            encoded(DataletError::Unavailable("connection reset".into()).into()),
            "SERVER_ERROR datalet unavailable\r\n"
        );
        assert_eq!(
            encoded(Error::Refused("no quorum: this node is catching up")),
            "SERVER_ERROR no quorum: this node is catching up\r\n"
        );
    }
}
