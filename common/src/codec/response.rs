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

/// memcached's answer to `flush_all` when it was started with `-F`.
pub const CLIENT_ERROR_FLUSH_DISABLED: &str = "flush_all not allowed";
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

/// One item's line in the reply to `lru_crawler metadump`, in memcached 1.6.18's format:
///
/// ```text
/// key=<key, URL-encoded> exp=<unix time, or -1> la=<unix time> cas=<unique> fetch=<yes|no> cls=<slab class> size=<bytes>
/// ```
///
/// ended by `\n` alone (memcached writes these lines raw); the dump then ends with `END\r\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetadumpLine<'a> {
    pub key: &'a [u8],
    /// When the item expires; `None` (printed `-1`) when it does not.
    pub exp: Option<u64>,
    /// When the item was last accessed.
    pub last_access: u64,
    pub cas: u64,
    /// Whether the item has been read since it was stored.
    pub fetched: bool,
    pub class: u32,
    /// Its size as memcached counts it ([`super::item_size`]).
    pub size: usize,
}

impl MetadumpLine<'_> {
    /// Appends the line, with its `\n`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(self.key.len() * 3 + 96);
        out.put_slice(b"key=");
        url_encode(out, self.key);
        match self.exp {
            Some(exp) => {
                let _ = write!(out, " exp={exp}");
            }
            None => out.put_slice(b" exp=-1"),
        }
        let fetch = if self.fetched { "yes" } else { "no" };
        // `\n` alone, as memcached ends these lines.
        let _ = writeln!(
            out,
            " la={} cas={} fetch={fetch} cls={} size={}",
            self.last_access, self.cas, self.class, self.size
        );
    }
}

/// memcached's `uriencode`: ASCII letters, digits and `-._~` stay; every other byte is `%XX`,
/// in upper-case hex.
fn url_encode(out: &mut BytesMut, key: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in key {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.put_u8(b);
        } else {
            out.put_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
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

    #[test]
    fn metadump_lines_are_memcached_lines() {
        let mut out = BytesMut::new();
        let line = |key, exp, fetched, size| MetadumpLine {
            key,
            exp,
            last_access: 1795247220,
            cas: 1,
            fetched,
            class: 1,
            size,
        };
        line(&b"a"[..], None, true, 61).encode(&mut out);
        line(&b"b%20c"[..], Some(1795248221), false, 71).encode(&mut out);
        assert_eq!(
            &out[..],
            &b"key=a exp=-1 la=1795247220 cas=1 fetch=yes cls=1 size=61\n\
               key=b%2520c exp=1795248221 la=1795247220 cas=1 fetch=no cls=1 size=71\n"[..]
        );
    }

    #[test]
    fn metadump_keys_are_url_encoded_like_memcached() {
        // As memcached 1.6.18 printed these keys.
        let mut out = BytesMut::new();
        url_encode(&mut out, b"a/b:c!~-._*()+=&?#@$,;[]{}|^`'\"<>\\\\");
        assert_eq!(
            &out[..],
            &b"a%2Fb%3Ac%21~-._%2A%28%29%2B%3D%26%3F%23%40%24%2C%3B%5B%5D%7B%7D%7C%5E%60%27%22%3C%3E%5C%5C"[..]
        );
        out.clear();
        url_encode(&mut out, "k\u{e9}y\x7f\x01Z09".as_bytes());
        assert_eq!(&out[..], b"k%C3%A9y%7F%01Z09");
    }
}
