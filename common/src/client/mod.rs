//! The memcached text protocol and its meta commands, client side: requests to bytes, bytes
//! to replies. Pure: no I/O, no clock. Every tailorkv program that talks to a
//! memcached-compatible server (the remote datalet, the load generator) speaks through this
//! one codec, so a reply is read the same way everywhere.
//!
//! # Wire formats
//!
//! Requests ([`Request::encode`], [`encode_store_line`]):
//! - `get <key>\r\n`, `gets <key>\r\n`, or `gets <key> <key> ...\r\n` for many keys at once
//! - `set|add <key> <flags> <exptime> <bytes>\r\n<data>\r\n`
//! - `cas <key> <flags> <exptime> <bytes> <cas unique>\r\n<data>\r\n`
//! - `delete <key>\r\n`, `flush_all [<delay>]\r\n`, `cache_memlimit <megabytes>\r\n`,
//!   `stats\r\n`
//! - meta commands ([`encode_meta_set_line`]): `mg <key> <flags>*\r\n`,
//!   `ms <key> <bytes> <flags>*\r\n<data>\r\n`, the flags as the caller spells them
//!
//! Replies ([`decode`]) have one of four shapes, chosen by the request ([`Expect`]):
//! - a status line: `STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`, `DELETED`, `OK`, or any
//!   other line (`MEMLIMIT_TOO_SMALL ...`);
//! - a retrieval: `VALUE <key> <flags> <bytes> [<cas unique>]\r\n<data>\r\n` per hit, then
//!   `END\r\n`: for a one-key `get` or `gets` at most one hit ([`Expect::Get`],
//!   [`Expect::Gets`]), for a many-key `gets` one per key found, in the order the keys were
//!   asked ([`Expect::GetsMany`]);
//! - statistics: `STAT <name> <value>\r\n` per counter, then `END\r\n`;
//! - a meta reply ([`Expect::Meta`]): one line `<code> <flags>*\r\n`, where the code is
//!   `HD`, `EN`, `NS`, `EX`, `NF` or `MN`, or a hit with its data,
//!   `VA <bytes> <flags>*\r\n<data>\r\n`. The flags are what the request asked back (`k<key>`,
//!   `c<cas unique>`, ...) and marks the server adds (`W`, `X`, `Z`): [`Meta::flag`] reads one.
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
//! reply may; a `VALUE` or `VA` may announce no more than [`MAX_VALUE_BYTES`]. `me`'s reply
//! (`ME <key> <name>=<value>*`) is no meta reply of this shape and is not decoded; neither is
//! the silence of a quiet (`q`) meta command, which leaves no reply to match.

mod request;
mod scan;

use bytes::{Bytes, BytesMut};

use crate::codec::strtoull;

pub use request::{encode_meta_set_line, encode_store_line, Request, StoreCommand};

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
    /// The reply to a meta command with a reply line of the common shape: `mg`, `ms`, `md`,
    /// `ma`, `mn`.
    Meta,
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
    /// The reply to a meta command.
    Meta(Meta),
    /// `ERROR` (or `ERROR <message>`): the server does not know the command.
    Error,
    ClientError(String),
    ServerError(String),
}

impl Reply {
    /// The status line this reply was decoded from, without its line ending (an error's
    /// message trimmed as decoded): for a report. `None` for a retrieval or statistics, a
    /// meta `VA` among them.
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
            Reply::Meta(meta) => return meta.status_line(),
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

/// A meta reply's two-letter return code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaCode {
    /// `VA`: a hit, its data after the line.
    Value,
    /// `HD`: done: stored, deleted, or a hit whose value was not asked for.
    Done,
    /// `EN`: a miss.
    Miss,
    /// `NS`: not stored, as `NOT_STORED`.
    NotStored,
    /// `EX`: the CAS unique did not match, as `EXISTS`.
    Exists,
    /// `NF`: no such item, as `NOT_FOUND`.
    NotFound,
    /// `MN`: the answer to `mn`, which marks the end of a pipeline of quiet commands.
    NoOp,
}

impl MetaCode {
    /// The code of a reply line's first word, if it is one.
    fn parse(word: &[u8]) -> Option<Self> {
        Some(match word {
            b"VA" => MetaCode::Value,
            b"HD" => MetaCode::Done,
            b"EN" => MetaCode::Miss,
            b"NS" => MetaCode::NotStored,
            b"EX" => MetaCode::Exists,
            b"NF" => MetaCode::NotFound,
            b"MN" => MetaCode::NoOp,
            _ => return None,
        })
    }

    /// The code as it is on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaCode::Value => "VA",
            MetaCode::Done => "HD",
            MetaCode::Miss => "EN",
            MetaCode::NotStored => "NS",
            MetaCode::Exists => "EX",
            MetaCode::NotFound => "NF",
            MetaCode::NoOp => "MN",
        }
    }
}

/// A meta reply. Its flags are kept as they came and read on demand ([`Meta::flag`]): most
/// callers want one or two of them, and the key among them is a slice of the read buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub code: MetaCode,
    /// The returned flags as the line carried them: words, each a flag letter and its token
    /// (`k<key>`, `c<cas unique>`, a bare `W`).
    pub flags: Bytes,
    /// A `VA` reply's data; `None` for every other code.
    pub data: Option<Bytes>,
}

impl Meta {
    /// The token of the first returned flag `letter` (empty for a flag that has none, `W`),
    /// or `None` if the reply does not carry it.
    pub fn flag(&self, letter: u8) -> Option<Bytes> {
        self.flags
            .split(|&b| b == b' ')
            .find(|word| word.first() == Some(&letter))
            .map(|word| self.flags.slice_ref(&word[1..]))
    }

    /// A `VA` reply as the [`Hit`] a `VALUE` block would be: its key the `k` flag's token (as
    /// sent: base64 if the reply carries `b` too), its client flags the `f` flag's and its CAS
    /// unique the `c` flag's, each 0 when not asked back (memcached returns only the flags
    /// asked for). An error for a reply with no data, no key, or a bad number.
    pub fn hit(&self) -> Result<Hit, ProtocolError> {
        let bad = || ProtocolError::BadMetaLine(self.line());
        let (Some(data), Some(key)) = (&self.data, self.flag(b'k')) else {
            return Err(bad());
        };
        let number = |letter| match self.flag(letter) {
            None => Some(0),
            Some(token) => strtoull(&token),
        };
        let flags = number(b'f').and_then(|f| u32::try_from(f).ok());
        let (Some(flags), Some(cas)) = (flags, number(b'c')) else {
            return Err(bad());
        };
        Ok(Hit {
            key,
            flags,
            cas,
            data: data.clone(),
        })
    }

    /// The reply line without its line ending, for a report; `None` for a `VA`, whose line
    /// is not all of the reply.
    fn status_line(&self) -> Option<String> {
        self.data.is_none().then(|| self.line())
    }

    /// The reply line as it came (but for spacing), without its line ending.
    fn line(&self) -> String {
        let mut line = self.code.as_str().to_string();
        if let Some(data) = &self.data {
            line.push_str(&format!(" {}", data.len()));
        }
        if !self.flags.is_empty() {
            line.push(' ');
            line.push_str(&String::from_utf8_lossy(&self.flags));
        }
        line
    }
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
    /// A meta reply line that is not `<code> <flags>*` (`VA <bytes> <flags>*`), or a `VA`
    /// without what its caller needs of it ([`Meta::hit`]).
    #[error("bad meta reply line {0:?}")]
    BadMetaLine(String),
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
