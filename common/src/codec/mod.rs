//! The memcached text protocol, server side.
//!
//! # How it works
//!
//! [`Decoder::decode`] looks at the connection's read buffer and either returns one
//! [`Request`], returns `Ok(None)` when the buffer does not hold a whole request yet, or fails
//! with a [`DecodeError`] that closes the connection. It first finds a line ending (`\n`, with
//! an optional `\r` before it) and parses the line; a storage command then waits until its
//! `<bytes> + 2` data bytes are buffered. Nothing is consumed until it can be answered, so
//! requests split across reads and many requests in one read both work.
//!
//! Bad input is answered the way memcached answers it, and the connection lives on:
//! - an unknown command or a wrong number of tokens is `ERROR`;
//! - a malformed line is `CLIENT_ERROR ...`; its data block, if any, is then read as commands,
//!   exactly as memcached does;
//! - a data block not ended by `\r\n` is `CLIENT_ERROR bad data chunk`;
//! - a value too large for `item_size_max` is `SERVER_ERROR object too large for cache`, and its
//!   data block is discarded as it arrives, without being buffered.
//!
//! A line longer than 2048 bytes without a line ending closes the connection, as in memcached,
//! except for `get`/`gets` lines (many keys), which may grow to
//! [`MAX_RETRIEVAL_LINE_BYTES`]. So no client can make the server buffer without bound.

mod base64;
pub mod binary;
mod meta;
mod number;
mod parse;
mod request;
mod response;

use bytes::{Buf, Bytes, BytesMut};

pub use base64::{decode as base64_decode, encode as base64_encode};
pub use meta::{MetaCommand, MetaRequest, MAX_OPAQUE_BYTES};
pub use number::{strtol_i32, strtoul_u32, strtoull};
pub use parse::{item_fits, item_size, sendable_key, valid_key, KEY_MAX_BYTES};
pub use request::{Command, Request, StatsGroup, StoreMode};
pub use response::{
    encode_stat, encode_value, MetadumpLine, Response, CLIENT_ERROR_BAD_CHUNK,
    CLIENT_ERROR_BAD_FORMAT, CLIENT_ERROR_FLUSH_DISABLED, SERVER_ERROR_OUT_OF_MEMORY,
    SERVER_ERROR_TOO_LARGE,
};

use parse::{parse_line, Parsed, PendingStore};

/// A line without a line ending may be this long before the connection is closed.
pub const MAX_LINE_BYTES: usize = 2048;

/// A `get`/`gets` line may be this long (about 4,000 keys of 250 bytes).
pub const MAX_RETRIEVAL_LINE_BYTES: usize = 1 << 20;

/// memcached's default `item_size_max`: 1 MiB.
pub const DEFAULT_ITEM_SIZE_MAX: usize = 1 << 20;

/// Input after which the connection must be closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("request line longer than allowed without a line ending")]
    LineTooLong,
    #[error("an HTTP request on the memcached port")]
    Http,
    #[error("a binary request without the request magic byte")]
    BadMagic,
}

/// Turns a connection's bytes into requests. One per connection: it remembers a storage
/// command waiting for its data and a rejected data block still being discarded.
#[derive(Debug)]
pub struct Decoder {
    item_size_max: usize,
    /// `flush_all` is carried out (else refused, as memcached's `-F` has it).
    flush_enabled: bool,
    /// Bytes of a rejected data block still to be discarded.
    swallow: usize,
    /// A storage command whose line is parsed, waiting for its data block.
    pending: Option<PendingStore>,
}

impl Decoder {
    pub fn new(item_size_max: usize) -> Self {
        Decoder {
            item_size_max,
            flush_enabled: true,
            swallow: 0,
            pending: None,
        }
    }

    /// A decoder that answers `flush_all` with memcached's `CLIENT_ERROR flush_all not
    /// allowed`, as memcached does with `-F`.
    pub fn without_flush_all(mut self) -> Self {
        self.flush_enabled = false;
        self
    }

    /// Whether a request has begun and not ended: bytes of a refused value are still to be
    /// discarded. (Bytes buffered and not yet decoded are the caller's to see.)
    pub fn is_mid_request(&self) -> bool {
        self.swallow > 0
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Request>, DecodeError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            buf.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Ok(None);
            }
        }
        if self.pending.is_some() {
            return Ok(self.take_data(buf));
        }
        let Some(newline) = buf.iter().position(|&b| b == b'\n') else {
            return check_partial_line(buf).map(|()| None);
        };
        let mut end = newline;
        if newline > 1 && buf[newline - 1] == b'\r' {
            end -= 1;
        }
        let parsed = parse_line(&buf[..end], self.item_size_max, self.flush_enabled);
        buf.advance(newline + 1);
        match parsed? {
            Parsed::Done(request) => Ok(Some(request)),
            Parsed::NeedData(pending) => {
                let wanted = pending.len + 2;
                if buf.len() < wanted {
                    buf.reserve(wanted - buf.len());
                }
                self.pending = Some(pending);
                Ok(self.take_data(buf))
            }
            Parsed::Swallow(request, n) => {
                let now = n.min(buf.len());
                buf.advance(now);
                self.swallow = n - now;
                Ok(Some(request))
            }
        }
    }

    /// The data block of a pending storage command, once all of it is buffered.
    fn take_data(&mut self, buf: &mut BytesMut) -> Option<Request> {
        let len = self.pending.as_ref()?.len;
        if buf.len() < len + 2 {
            return None;
        }
        let p = self.pending.take()?;
        let good = &buf[len..len + 2] == b"\r\n";
        let command = if let (true, Some(mut meta)) = (good, p.meta) {
            meta.data = Bytes::copy_from_slice(&buf[..len]);
            Command::Meta(MetaCommand::Set, meta)
        } else if good {
            Command::Store {
                mode: p.mode,
                key: p.key,
                flags: p.flags,
                exptime: p.exptime,
                value: Bytes::copy_from_slice(&buf[..len]),
            }
        } else {
            Command::Reply(Response::ClientError(CLIENT_ERROR_BAD_CHUNK))
        };
        buf.advance(len + 2);
        Some(Request {
            command,
            noreply: p.noreply,
        })
    }
}

/// A line with no ending yet: refuse it once it is longer than any valid one can be.
fn check_partial_line(buf: &[u8]) -> Result<(), DecodeError> {
    if buf.len() <= MAX_LINE_BYTES {
        return Ok(());
    }
    let spaces = buf.iter().take_while(|&&b| b == b' ').count();
    let rest = &buf[spaces..];
    let multiget = spaces <= 100 && (rest.starts_with(b"get ") || rest.starts_with(b"gets "));
    if multiget && buf.len() <= MAX_RETRIEVAL_LINE_BYTES {
        Ok(())
    } else {
        Err(DecodeError::LineTooLong)
    }
}

#[cfg(test)]
mod tests;
