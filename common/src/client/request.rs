//! Requests to bytes. Encoding appends to any [`BufMut`] (a `BytesMut` write buffer, a
//! `Vec<u8>`), so a caller batches many requests into one buffer and writes it once.

use bytes::{BufMut, Bytes};

use super::Expect;

/// One request, borrowed from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Get {
        key: &'a [u8],
    },
    Gets {
        key: &'a [u8],
    },
    /// One `gets` for all of `keys`, which must be distinct (a server answers a repeated key
    /// once for each time it is asked) and fit in [`super::MAX_GETS_LINE_BYTES`].
    GetsMany {
        keys: &'a [Bytes],
    },
    /// `set`, `add`, or `cas` when `cas` is given. The data is `head` then `body`: for
    /// example an item header and the client's value, sent without first joining them.
    Store {
        command: StoreCommand,
        key: &'a [u8],
        flags: u32,
        exptime: i64,
        head: &'a [u8],
        body: &'a [u8],
    },
    Delete {
        key: &'a [u8],
    },
    /// `flush_all`, with a delay in seconds when given.
    FlushAll {
        delay: Option<u64>,
    },
    CacheMemlimit {
        megabytes: u64,
    },
    Stats,
    /// `mg <key> <flags>`: a meta get, `flags` as the line carries them (`k v`, or empty).
    MetaGet {
        key: &'a [u8],
        flags: &'a str,
    },
    /// `ms <key> <bytes> <flags>`: a meta set of `head` then `body`, as [`Request::Store`].
    MetaSet {
        key: &'a [u8],
        flags: &'a str,
        head: &'a [u8],
        body: &'a [u8],
    },
}

/// The storage commands a client sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCommand {
    Set,
    Add,
    /// `cas` with the CAS unique the item must still have.
    Cas(u64),
}

impl Request<'_> {
    /// Appends the request's bytes to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        match *self {
            Request::Get { key } => line(out, &[b"get ", key]),
            Request::Gets { key } => line(out, &[b"gets ", key]),
            Request::GetsMany { keys } => {
                out.put_slice(b"gets");
                for key in keys {
                    out.put_u8(b' ');
                    out.put_slice(key);
                }
                out.put_slice(b"\r\n");
            }
            Request::Store {
                command,
                key,
                flags,
                exptime,
                head,
                body,
            } => {
                encode_store_line(out, command, key, flags, exptime, head.len() + body.len());
                out.put_slice(head);
                out.put_slice(body);
                out.put_slice(b"\r\n");
            }
            Request::Delete { key } => line(out, &[b"delete ", key]),
            Request::FlushAll { delay: None } => line(out, &[b"flush_all"]),
            Request::FlushAll { delay: Some(d) } => {
                line(out, &[b"flush_all ", d.to_string().as_bytes()])
            }
            Request::CacheMemlimit { megabytes } => {
                line(out, &[b"cache_memlimit ", megabytes.to_string().as_bytes()])
            }
            Request::Stats => line(out, &[b"stats"]),
            Request::MetaGet { key, flags } => meta_line(out, b"mg ", key, None, flags),
            Request::MetaSet {
                key,
                flags,
                head,
                body,
            } => {
                encode_meta_set_line(out, key, head.len() + body.len(), flags);
                out.put_slice(head);
                out.put_slice(body);
                out.put_slice(b"\r\n");
            }
        }
    }

    /// The shape of the reply this request gets.
    pub fn expect(&self) -> Expect {
        match self {
            Request::Get { .. } => Expect::Get,
            Request::Gets { .. } => Expect::Gets,
            Request::GetsMany { .. } => Expect::GetsMany,
            Request::Stats => Expect::Stats,
            Request::MetaGet { .. } | Request::MetaSet { .. } => Expect::Meta,
            _ => Expect::Status,
        }
    }
}

/// Appends a storage command's line, `<command> <key> <flags> <exptime> <len>[ <cas
/// unique>]\r\n`. The caller then appends the `len` bytes of data and `\r\n`: for data made
/// straight into the write buffer. ([`Request::Store`] does all three.)
pub fn encode_store_line(
    out: &mut impl BufMut,
    command: StoreCommand,
    key: &[u8],
    flags: u32,
    exptime: i64,
    len: usize,
) {
    let name: &[u8] = match command {
        StoreCommand::Set => b"set ",
        StoreCommand::Add => b"add ",
        StoreCommand::Cas(_) => b"cas ",
    };
    out.put_slice(name);
    out.put_slice(key);
    out.put_slice(format!(" {flags} {exptime} {len}").as_bytes());
    if let StoreCommand::Cas(unique) = command {
        out.put_slice(format!(" {unique}").as_bytes());
    }
    out.put_slice(b"\r\n");
}

/// Appends a meta set's line, `ms <key> <len> <flags>\r\n`; the caller then appends the
/// `len` bytes of data and `\r\n`, as after [`encode_store_line`].
pub fn encode_meta_set_line(out: &mut impl BufMut, key: &[u8], len: usize, flags: &str) {
    meta_line(out, b"ms ", key, Some(len), flags);
}

/// `<command><key>[ <len>][ <flags>]\r\n`: no space is left dangling when there are no flags.
fn meta_line(out: &mut impl BufMut, command: &[u8], key: &[u8], len: Option<usize>, flags: &str) {
    out.put_slice(command);
    out.put_slice(key);
    if let Some(len) = len {
        out.put_slice(format!(" {len}").as_bytes());
    }
    if !flags.is_empty() {
        out.put_u8(b' ');
        out.put_slice(flags.as_bytes());
    }
    out.put_slice(b"\r\n");
}

fn line(out: &mut impl BufMut, parts: &[&[u8]]) {
    for part in parts {
        out.put_slice(part);
    }
    out.put_slice(b"\r\n");
}
