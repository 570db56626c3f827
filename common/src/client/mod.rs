//! The memcached text protocol, client side: requests to bytes, bytes to replies. Pure: no
//! I/O, no clock. Every tailorkv program that talks to a memcached-compatible server (the
//! remote datalet, the load generator) speaks through this one codec, so a reply is read the
//! same way everywhere.
//!
//! # Wire formats
//!
//! Requests ([`Request::encode`], [`encode_store_line`]):
//! - `get <key>\r\n`, `gets <key>\r\n`, or `gets <key> <key> ...\r\n` for many keys at once
//! - `set|add <key> <flags> <exptime> <bytes>\r\n<data>\r\n`
//! - `cas <key> <flags> <exptime> <bytes> <cas unique>\r\n<data>\r\n`
//! - `delete <key>\r\n`, `flush_all [<delay>]\r\n`, `cache_memlimit <megabytes>\r\n`,
//!   `stats\r\n`
//!
//! Replies ([`decode`]) have one of three shapes, chosen by the request ([`Expect`]):
//! - a status line: `STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`, `DELETED`, `OK`, or any
//!   other line (`MEMLIMIT_TOO_SMALL ...`);
//! - a retrieval: `VALUE <key> <flags> <bytes> [<cas unique>]\r\n<data>\r\n` per hit, then
//!   `END\r\n`: for a one-key `get` or `gets` at most one hit ([`Expect::Get`],
//!   [`Expect::Gets`]), for a many-key `gets` one per key found, in the order the keys were
//!   asked ([`Expect::GetsMany`]);
//! - statistics: `STAT <name> <value>\r\n` per counter, then `END\r\n`.
//!
//! `ERROR` (or `ERROR <message>`), `CLIENT_ERROR <message>` and `SERVER_ERROR <message>` may
//! come instead of any of them.
//!
//! # How it works
//!
//! [`decode`] is handed the bytes buffered so far and the shape of the oldest outstanding
//! request's reply: replies come back in request order and carry no request id, so a reply
//! only makes sense against its request. It consumes nothing until a whole reply is buffered
//! (`Ok(None)`: read more and call again), so a reply split across reads decodes once the last
//! piece arrives, and pipelined replies are taken one at a time. A hit's key and data are
//! slices of the read buffer, not copies.
//!
//! Bytes that fit no reply to the request are a [`ProtocolError`]; after one, the reply
//! stream cannot be matched to requests any more, and the connection must be given up.
//!
//! Caveats: a line may end with `\n` alone; a `gets` reply must carry CAS uniques, a `get`
//! reply may; a `VALUE` may announce no more than [`MAX_VALUE_BYTES`].

mod request;
mod scan;

use bytes::{Bytes, BytesMut};

pub use request::{encode_store_line, Request, StoreCommand};

/// A reply line longer than this without a line ending is a broken server, not a slow one.
pub const MAX_REPLY_LINE_BYTES: usize = 8 * 1024;

/// The longest `gets` line with many keys a client should send, its line ending included:
/// within the 2048 bytes that memcached and every server modelled on it accept for any line.
pub const MAX_GETS_LINE_BYTES: usize = 2048;

/// The largest value a `VALUE` line may announce: memcached's own ceiling for an item (1 GiB).
pub const MAX_VALUE_BYTES: usize = 1 << 30;

/// Which shape of reply to decode: the request's ([`Request::expect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// A status line: the reply to a storage command, `delete`, `flush_all`,
    /// `cache_memlimit`.
    Status,
    /// The reply to a one-key `get`: at most one hit, its CAS unique optional.
    Get,
    /// The reply to a one-key `gets`: at most one hit, with its CAS unique.
    Gets,
    /// The reply to a many-key `gets`: any number of hits, each with its CAS unique.
    GetsMany,
    Stats,
}

/// A decoded reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Ok,
    /// A status line with no variant of its own, without its line ending.
    Line(String),
    /// The reply to a one-key `get` or `gets`: the hit, if any.
    Value(Option<Hit>),
    /// The reply to a many-key `gets`: each hit, in the order they came.
    Values(Vec<Hit>),
    /// `STAT` lines as `(name, value)`.
    Stats(Vec<(String, String)>),
    /// `ERROR` (or `ERROR <message>`): the server does not know the command.
    Error,
    ClientError(String),
    ServerError(String),
}

impl Reply {
    /// The status line this reply was decoded from, without its line ending (an error's
    /// message trimmed as decoded): for a report. `None` for a retrieval or statistics.
    pub fn status_line(&self) -> Option<String> {
        let fixed = match self {
            Reply::Stored => "STORED",
            Reply::NotStored => "NOT_STORED",
            Reply::Exists => "EXISTS",
            Reply::NotFound => "NOT_FOUND",
            Reply::Deleted => "DELETED",
            Reply::Ok => "OK",
            Reply::Error => "ERROR",
            Reply::Line(line) => return Some(line.clone()),
            Reply::ClientError(msg) => return Some(format!("CLIENT_ERROR {msg}")),
            Reply::ServerError(msg) => return Some(format!("SERVER_ERROR {msg}")),
            Reply::Value(_) | Reply::Values(_) | Reply::Stats(_) => return None,
        };
        Some(fixed.to_string())
    }
}

/// One `VALUE` block: an item the server holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hit {
    pub key: Bytes,
    pub flags: u32,
    /// The server's CAS unique, for a conditional write back; 0 when the reply carries none
    /// (a `get`'s), as memcached shows it when CAS is disabled.
    pub cas: u64,
    pub data: Bytes,
}

/// Bytes that are no reply to the request they should answer: the connection cannot be
/// trusted after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("a reply line of more than {MAX_REPLY_LINE_BYTES} bytes")]
    LineTooLong,
    /// A reply that does not answer the request sent: its status line, or the line that
    /// should have been part of it.
    #[error("unexpected reply {0:?}")]
    Unexpected(String),
    #[error("bad VALUE line {0:?}")]
    BadValueLine(String),
    #[error("a data block not ended by \\r\\n")]
    DataNotTerminated,
    #[error("more than one VALUE for the one key asked")]
    TooManyValues,
    /// A hit of a many-key `gets` for a key not asked, or out of the order asked in: found by
    /// the caller, who knows the keys.
    #[error("a VALUE for {0:?}, not asked for or out of order")]
    ValueNotAsked(String),
}

/// Takes one whole reply of shape `expect` off the front of `buf`, or returns `Ok(None)` and
/// consumes nothing when more bytes are needed.
pub fn decode(buf: &mut BytesMut, expect: Expect) -> Result<Option<Reply>, ProtocolError> {
    let Some((len, shape)) = scan::scan(buf, expect)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    Ok(Some(shape.into_reply(&frame)))
}

#[cfg(test)]
mod tests;
