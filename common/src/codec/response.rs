//! Replies, as bytes on the wire.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

/// A one-line reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Stored,
    NotStored,
    Exists,
    NotFound,
    Deleted,
    Touched,
    Ok,
    Reset,
    End,
    /// `ERROR`: an unknown command or a wrong number of tokens.
    Error,
    /// `CLIENT_ERROR <message>`: the client sent something malformed.
    ClientError(&'static str),
    /// `SERVER_ERROR <message>`: a well-formed request the server cannot carry out.
    ServerError(&'static str),
    /// The result of `incr`/`decr`.
    Number(u64),
    /// `VERSION <version>`.
    Version(&'static str),
    /// A line memcached answers with its own wording (`MEMLIMIT_TOO_SMALL ...`).
    Line(&'static str),
}

pub const CLIENT_ERROR_BAD_FORMAT: &str = "bad command line format";
pub const CLIENT_ERROR_BAD_CHUNK: &str = "bad data chunk";
pub const SERVER_ERROR_TOO_LARGE: &str = "object too large for cache";
pub const SERVER_ERROR_OUT_OF_MEMORY: &str = "out of memory storing object";

impl Response {
    /// Appends the reply line, with its `\r\n`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Response::Stored => out.put_slice(b"STORED\r\n"),
            Response::NotStored => out.put_slice(b"NOT_STORED\r\n"),
            Response::Exists => out.put_slice(b"EXISTS\r\n"),
            Response::NotFound => out.put_slice(b"NOT_FOUND\r\n"),
            Response::Deleted => out.put_slice(b"DELETED\r\n"),
            Response::Touched => out.put_slice(b"TOUCHED\r\n"),
            Response::Ok => out.put_slice(b"OK\r\n"),
            Response::Reset => out.put_slice(b"RESET\r\n"),
            Response::End => out.put_slice(b"END\r\n"),
            Response::Error => out.put_slice(b"ERROR\r\n"),
            Response::ClientError(msg) => line(out, &["CLIENT_ERROR ", msg]),
            Response::ServerError(msg) => line(out, &["SERVER_ERROR ", msg]),
            Response::Number(n) => {
                let _ = write!(out, "{n}\r\n");
            }
            Response::Version(v) => line(out, &["VERSION ", v]),
            Response::Line(text) => line(out, &[text]),
        }
    }
}

fn line(out: &mut BytesMut, parts: &[&str]) {
    for part in parts {
        out.put_slice(part.as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// Appends one VALUE block of a `get`: `VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n`.
pub fn encode_value(out: &mut BytesMut, key: &[u8], flags: u32, data: &[u8], cas: Option<u64>) {
    out.reserve(key.len() + data.len() + 48);
    out.put_slice(b"VALUE ");
    out.put_slice(key);
    let _ = write!(out, " {flags} {}", data.len());
    if let Some(cas) = cas {
        let _ = write!(out, " {cas}");
    }
    out.put_slice(b"\r\n");
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

/// Appends one `STAT <name> <value>` line.
pub fn encode_stat(out: &mut BytesMut, name: &str, value: impl std::fmt::Display) {
    let _ = write!(out, "STAT {name} {value}\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(r: Response) -> BytesMut {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        out
    }

    #[test]
    fn replies_are_memcached_lines() {
        assert_eq!(&encoded(Response::Stored)[..], b"STORED\r\n");
        assert_eq!(&encoded(Response::Number(42))[..], b"42\r\n");
        assert_eq!(
            &encoded(Response::ClientError(CLIENT_ERROR_BAD_CHUNK))[..],
            b"CLIENT_ERROR bad data chunk\r\n"
        );
        assert_eq!(
            &encoded(Response::Version("1.6.0"))[..],
            b"VERSION 1.6.0\r\n"
        );
    }

    #[test]
    fn value_blocks_carry_cas_only_when_asked() {
        let mut out = BytesMut::new();
        encode_value(&mut out, b"k", 5, b"hello", None);
        encode_value(&mut out, b"k", 0, b"", Some(7));
        assert_eq!(&out[..], b"VALUE k 5 5\r\nhello\r\nVALUE k 0 0 7\r\n\r\n");
    }
}
