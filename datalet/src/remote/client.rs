//! The memcached text protocol, client side: requests to bytes, bytes to replies. Pure: no
//! I/O, no clock.
//!
//! # Wire formats
//!
//! Requests ([`Request::encode`]):
//! - `gets <key>\r\n`, or `gets <key> <key> ...\r\n` for many keys at once
//! - `set|add <key> <flags> <exptime> <bytes>\r\n<data>\r\n`
//! - `cas <key> <flags> <exptime> <bytes> <cas unique>\r\n<data>\r\n`
//! - `delete <key>\r\n`, `flush_all [<delay>]\r\n`, `cache_memlimit <megabytes>\r\n`,
//!   `stats\r\n`
//!
//! Replies ([`decode`]) have one of three shapes, chosen by the request ([`Expect`]):
//! - a status line: `STORED`, `NOT_STORED`, `EXISTS`, `NOT_FOUND`, `DELETED`, `OK`, or any
//!   other line (`MEMLIMIT_TOO_SMALL ...`);
//! - a retrieval: `VALUE <key> <flags> <bytes> [<cas unique>]\r\n<data>\r\n` per hit, then
//!   `END\r\n`: for a one-key `gets` at most one hit ([`Expect::Value`]), for a many-key
//!   `gets` one per key found, in the order the keys were asked ([`Expect::Values`]);
//! - statistics: `STAT <name> <value>\r\n` per counter, then `END\r\n`.
//!
//! `ERROR`, `CLIENT_ERROR <message>` and `SERVER_ERROR <message>` may come instead of any of
//! them. [`decode`] consumes nothing until a whole reply is buffered, so a reply split across
//! reads decodes once the last piece arrives.

use bytes::{BufMut, Bytes, BytesMut};

use tailorkv_common::codec::strtoull;

/// A reply line longer than this without a line ending is a broken server, not a slow one.
pub const MAX_REPLY_LINE_BYTES: usize = 8 * 1024;

/// The longest `gets` line with many keys this client sends, its line ending included: within
/// the 2048 bytes that memcached and every server modelled on it accept for any line.
pub const MAX_GETS_LINE_BYTES: usize = 2048;

/// One request, borrowed from the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Gets {
        key: &'a [u8],
    },
    /// One `gets` for all of `keys`, which must be distinct (a server answers a repeated key
    /// once for each time it is asked) and fit in [`MAX_GETS_LINE_BYTES`].
    GetsMany {
        keys: &'a [Bytes],
    },
    /// `set`, `add`, or `cas` when `cas` is given. The data is `head` then `body`: the item
    /// header and the client's value, sent without first joining them.
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
}

/// The storage commands a remote datalet sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreCommand {
    Set,
    Add,
    Cas(u64),
}

impl Request<'_> {
    /// Appends the request's bytes to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match *self {
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
                let name: &[u8] = match command {
                    StoreCommand::Set => b"set ",
                    StoreCommand::Add => b"add ",
                    StoreCommand::Cas(_) => b"cas ",
                };
                let len = head.len() + body.len();
                out.reserve(key.len() + len + 64);
                out.put_slice(name);
                out.put_slice(key);
                out.put_slice(format!(" {flags} {exptime} {len}").as_bytes());
                if let StoreCommand::Cas(unique) = command {
                    out.put_slice(format!(" {unique}").as_bytes());
                }
                out.put_slice(b"\r\n");
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
        }
    }

    /// The shape of the reply this request gets.
    pub fn expect(&self) -> Expect {
        match self {
            Request::Gets { .. } => Expect::Value,
            Request::GetsMany { .. } => Expect::Values,
            Request::Stats => Expect::Stats,
            _ => Expect::Status,
        }
    }
}

fn line(out: &mut BytesMut, parts: &[&[u8]]) {
    for part in parts {
        out.put_slice(part);
    }
    out.put_slice(b"\r\n");
}

/// Which shape of reply to decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Status,
    /// The reply to a one-key `gets`.
    Value,
    /// The reply to a many-key `gets`.
    Values,
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
    /// The reply to a one-key `gets`: the hit, if any.
    Value(Option<RemoteValue>),
    /// The reply to a many-key `gets`: each hit with its key, in the order they came.
    Values(Vec<(Bytes, RemoteValue)>),
    /// `STAT` lines as `(name, value)`.
    Stats(Vec<(String, String)>),
    /// `ERROR`: the server does not know the command.
    Error,
    ClientError(String),
    ServerError(String),
}

/// A value as the remote server holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteValue {
    pub flags: u32,
    /// The remote server's own CAS unique, for a conditional write back.
    pub cas: u64,
    pub data: Bytes,
}

/// A reply no memcached server sends: the connection cannot be trusted after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed reply from the remote server: {0}")]
pub struct ProtocolError(pub String);

/// Takes one whole reply off the front of `buf`, or returns `Ok(None)` and consumes nothing
/// when more bytes are needed.
pub fn decode(buf: &mut BytesMut, expect: Expect) -> Result<Option<Reply>, ProtocolError> {
    let Some((len, shape)) = scan(buf, expect)? else {
        return Ok(None);
    };
    let frame = buf.split_to(len).freeze();
    Ok(Some(shape.into_reply(&frame)))
}

/// What [`scan`] found, by byte ranges into the frame.
enum Shape {
    Line(usize),
    Value(Option<ValueAt>),
    Values(Vec<ValueAt>),
    Stats(Vec<(usize, usize)>),
}

struct ValueAt {
    key: std::ops::Range<usize>,
    flags: u32,
    cas: u64,
    data: std::ops::Range<usize>,
}

impl Shape {
    fn into_reply(self, frame: &Bytes) -> Reply {
        match self {
            Shape::Line(end) => status(&frame[..end]),
            Shape::Value(hit) => Reply::Value(hit.map(|v| v.value(frame))),
            Shape::Values(hits) => Reply::Values(
                hits.into_iter()
                    .map(|v| (frame.slice(v.key.clone()), v.value(frame)))
                    .collect(),
            ),
            Shape::Stats(lines) => Reply::Stats(
                lines
                    .into_iter()
                    .filter_map(|(start, end)| stat(&frame[start..end]))
                    .collect(),
            ),
        }
    }
}

impl ValueAt {
    fn value(self, frame: &Bytes) -> RemoteValue {
        RemoteValue {
            flags: self.flags,
            cas: self.cas,
            data: frame.slice(self.data),
        }
    }
}

/// The next line from `start`: `(end of its text, start of the line after)`.
fn next_line(buf: &[u8], start: usize) -> Result<Option<(usize, usize)>, ProtocolError> {
    let rest = &buf[start..];
    match rest.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let end = if nl > 0 && rest[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            Ok(Some((start + end, start + nl + 1)))
        }
        None if rest.len() > MAX_REPLY_LINE_BYTES => Err(ProtocolError(format!(
            "a line of more than {MAX_REPLY_LINE_BYTES} bytes"
        ))),
        None => Ok(None),
    }
}

/// Finds the end of a whole reply without consuming it.
fn scan(buf: &[u8], expect: Expect) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let Some((end, next)) = next_line(buf, 0)? else {
        return Ok(None);
    };
    let first = &buf[..end];
    if expect == Expect::Status || is_error(first) {
        return Ok(Some((next, Shape::Line(end))));
    }
    match expect {
        Expect::Value => scan_value(buf, end, next),
        Expect::Values => scan_values(buf, end, next),
        _ => scan_stats(buf, end, next),
    }
}

fn is_error(line: &[u8]) -> bool {
    line == b"ERROR" || line.starts_with(b"CLIENT_ERROR") || line.starts_with(b"SERVER_ERROR")
}

/// `END`, or one `VALUE` block and then `END`.
fn scan_value(
    buf: &[u8],
    end: usize,
    next: usize,
) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let found = scan_hits(buf, 0, end, next, 1)?;
    Ok(found.map(|(after, mut hits)| (after, Shape::Value(hits.pop()))))
}

/// Any number of `VALUE` blocks, then `END`.
fn scan_values(
    buf: &[u8],
    end: usize,
    next: usize,
) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let found = scan_hits(buf, 0, end, next, usize::MAX)?;
    Ok(found.map(|(after, hits)| (after, Shape::Values(hits))))
}

/// The `VALUE` blocks from the line `start..end` (whose successor starts at `next`) up to
/// `END`, at most `most` of them: where the reply ends, and each block.
fn scan_hits(
    buf: &[u8],
    mut start: usize,
    mut end: usize,
    mut next: usize,
    most: usize,
) -> Result<Option<(usize, Vec<ValueAt>)>, ProtocolError> {
    let mut hits = Vec::new();
    loop {
        let line = &buf[start..end];
        if line == b"END" {
            return Ok(Some((next, hits)));
        }
        if hits.len() == most {
            return Err(ProtocolError(format!(
                "more than {most} VALUE for the keys asked"
            )));
        }
        let (key, flags, len, cas) = value_line(line)?;
        let data = next..next + len;
        if buf.len() < data.end + 2 {
            return Ok(None);
        }
        if &buf[data.end..data.end + 2] != b"\r\n" {
            return Err(ProtocolError("a data block not ended by \\r\\n".into()));
        }
        let key = start + key.start..start + key.end;
        hits.push(ValueAt {
            key,
            flags,
            cas,
            data,
        });
        start = next + len + 2;
        match next_line(buf, start)? {
            Some((e, n)) => (end, next) = (e, n),
            None => return Ok(None),
        }
    }
}

/// `VALUE <key> <flags> <bytes> <cas>`: where the key is in the line, the flags, the data
/// length and the CAS unique.
fn value_line(line: &[u8]) -> Result<(std::ops::Range<usize>, u32, usize, u64), ProtocolError> {
    let bad = || {
        ProtocolError(format!(
            "bad VALUE line {:?}",
            String::from_utf8_lossy(line)
        ))
    };
    let mut words = Vec::with_capacity(5);
    let mut at = 0;
    while at < line.len() {
        if line[at] == b' ' {
            at += 1;
            continue;
        }
        let from = at;
        while at < line.len() && line[at] != b' ' {
            at += 1;
        }
        words.push(from..at);
    }
    let [verb, key, flags, len, cas] = &words[..] else {
        return Err(bad());
    };
    if &line[verb.clone()] != b"VALUE" {
        return Err(bad());
    }
    let flags = strtoull(&line[flags.clone()]).and_then(|f| u32::try_from(f).ok());
    let len = strtoull(&line[len.clone()]).and_then(|l| usize::try_from(l).ok());
    match (flags, len, strtoull(&line[cas.clone()])) {
        (Some(flags), Some(len), Some(cas)) => Ok((key.clone(), flags, len, cas)),
        _ => Err(bad()),
    }
}

/// `STAT` lines up to `END`.
fn scan_stats(
    buf: &[u8],
    mut end: usize,
    mut next: usize,
) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let mut lines = Vec::new();
    let mut start = 0;
    loop {
        let line = &buf[start..end];
        if line == b"END" {
            return Ok(Some((next, Shape::Stats(lines))));
        }
        if !line.starts_with(b"STAT ") {
            return Err(ProtocolError(format!(
                "bad stats line {:?}",
                String::from_utf8_lossy(line)
            )));
        }
        lines.push((start, end));
        start = next;
        match next_line(buf, start)? {
            Some((e, n)) => (end, next) = (e, n),
            None => return Ok(None),
        }
    }
}

fn status(line: &[u8]) -> Reply {
    let text = |prefix: usize| String::from_utf8_lossy(&line[prefix..]).trim().to_string();
    match line {
        b"STORED" => Reply::Stored,
        b"NOT_STORED" => Reply::NotStored,
        b"EXISTS" => Reply::Exists,
        b"NOT_FOUND" => Reply::NotFound,
        b"DELETED" => Reply::Deleted,
        b"OK" => Reply::Ok,
        b"ERROR" => Reply::Error,
        _ if line.starts_with(b"CLIENT_ERROR") => Reply::ClientError(text(12)),
        _ if line.starts_with(b"SERVER_ERROR") => Reply::ServerError(text(12)),
        _ => Reply::Line(text(0)),
    }
}

fn stat(line: &[u8]) -> Option<(String, String)> {
    let text = String::from_utf8_lossy(line.strip_prefix(b"STAT ")?);
    let (name, value) = text.split_once(' ')?;
    Some((name.to_string(), value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(r: Request) -> Vec<u8> {
        let mut out = BytesMut::new();
        r.encode(&mut out);
        out.to_vec()
    }

    fn decoded(bytes: &[u8], expect: Expect) -> Option<Reply> {
        let mut buf = BytesMut::from(bytes);
        let reply = decode(&mut buf, expect).unwrap();
        if reply.is_some() {
            assert!(buf.is_empty(), "left over: {buf:?}");
        } else {
            assert_eq!(&buf[..], bytes, "a partial reply must not be consumed");
        }
        reply
    }

    #[test]
    fn requests_are_memcached_lines() {
        assert_eq!(encoded(Request::Gets { key: b"k" }), b"gets k\r\n");
        let store = |command| Request::Store {
            command,
            key: b"k",
            flags: 7,
            exptime: 1_800_000_000,
            head: b"HD",
            body: b"val",
        };
        assert_eq!(
            encoded(store(StoreCommand::Set)),
            b"set k 7 1800000000 5\r\nHDval\r\n"
        );
        assert_eq!(
            encoded(store(StoreCommand::Add)),
            b"add k 7 1800000000 5\r\nHDval\r\n"
        );
        assert_eq!(
            encoded(store(StoreCommand::Cas(99))),
            b"cas k 7 1800000000 5 99\r\nHDval\r\n"
        );
        assert_eq!(encoded(Request::Delete { key: b"k" }), b"delete k\r\n");
        assert_eq!(encoded(Request::FlushAll { delay: None }), b"flush_all\r\n");
        assert_eq!(
            encoded(Request::FlushAll { delay: Some(9) }),
            b"flush_all 9\r\n"
        );
        assert_eq!(
            encoded(Request::CacheMemlimit { megabytes: 16 }),
            b"cache_memlimit 16\r\n"
        );
        assert_eq!(encoded(Request::Stats), b"stats\r\n");
    }

    #[test]
    fn status_lines_decode() {
        for (line, reply) in [
            (&b"STORED\r\n"[..], Reply::Stored),
            (b"NOT_STORED\r\n", Reply::NotStored),
            (b"EXISTS\r\n", Reply::Exists),
            (b"NOT_FOUND\r\n", Reply::NotFound),
            (b"DELETED\r\n", Reply::Deleted),
            (b"OK\r\n", Reply::Ok),
            (b"ERROR\r\n", Reply::Error),
            (
                b"SERVER_ERROR out of memory storing object\r\n",
                Reply::ServerError("out of memory storing object".into()),
            ),
            (
                b"CLIENT_ERROR bad data chunk\r\n",
                Reply::ClientError("bad data chunk".into()),
            ),
            (
                b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n",
                Reply::Line("MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m".into()),
            ),
        ] {
            assert_eq!(decoded(line, Expect::Status), Some(reply));
        }
    }

    #[test]
    fn a_gets_reply_decodes_with_its_data_and_cas() {
        assert_eq!(decoded(b"END\r\n", Expect::Value), Some(Reply::Value(None)));
        let reply = decoded(b"VALUE k 5 4 77\r\na\r\nb\r\nEND\r\n", Expect::Value);
        let hit = RemoteValue {
            flags: 5,
            cas: 77,
            data: Bytes::from_static(b"a\r\nb"),
        };
        assert_eq!(reply, Some(Reply::Value(Some(hit))));
        assert_eq!(
            decoded(b"SERVER_ERROR datalet unavailable\r\n", Expect::Value),
            Some(Reply::ServerError("datalet unavailable".into()))
        );
    }

    #[test]
    fn a_reply_split_anywhere_decodes_once_whole() {
        let whole = b"VALUE key 4294967295 3 18446744073709551615\r\nabc\r\nEND\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decoded(&whole[..cut], Expect::Value), None, "cut at {cut}");
        }
        let mut buf = BytesMut::from(&whole[..]);
        buf.extend_from_slice(b"STORED\r\n");
        let Some(Reply::Value(Some(v))) = decode(&mut buf, Expect::Value).unwrap() else {
            panic!("expected a hit");
        };
        assert_eq!(
            (v.flags, v.cas, &v.data[..]),
            (u32::MAX, u64::MAX, &b"abc"[..])
        );
        assert_eq!(
            decode(&mut buf, Expect::Status).unwrap(),
            Some(Reply::Stored)
        );
    }

    #[test]
    fn many_keys_go_in_one_gets_and_their_hits_decode_with_their_keys() {
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"bb")];
        assert_eq!(encoded(Request::GetsMany { keys: &keys }), b"gets a bb\r\n");
        assert_eq!(Request::GetsMany { keys: &keys }.expect(), Expect::Values);
        assert_eq!(
            decoded(b"END\r\n", Expect::Values),
            Some(Reply::Values(vec![]))
        );
        let whole = b"VALUE a 1 2 7\r\nxy\r\nVALUE  bb 0 0 8\r\n\r\nEND\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decoded(&whole[..cut], Expect::Values), None, "cut at {cut}");
        }
        let hit = |flags, cas, data: &'static [u8]| RemoteValue {
            flags,
            cas,
            data: Bytes::from_static(data),
        };
        assert_eq!(
            decoded(whole, Expect::Values),
            Some(Reply::Values(vec![
                (keys[0].clone(), hit(1, 7, b"xy")),
                (keys[1].clone(), hit(0, 8, b"")),
            ]))
        );
        // An error comes instead of the whole reply.
        assert_eq!(
            decoded(b"SERVER_ERROR busy\r\n", Expect::Values),
            Some(Reply::ServerError("busy".into()))
        );
        // One reply at a time: what follows `END` is the next reply's.
        let mut buf = BytesMut::from(&b"VALUE a 0 1 1\r\nx\r\nEND\r\nSTORED\r\n"[..]);
        let Some(Reply::Values(hits)) = decode(&mut buf, Expect::Values).unwrap() else {
            panic!("no values");
        };
        assert_eq!(hits.len(), 1);
        assert_eq!(&buf[..], b"STORED\r\n");
    }

    #[test]
    fn stats_decode_to_names_and_values() {
        let whole = b"STAT pid 12\r\nSTAT version 1.6.18\r\nEND\r\n";
        for cut in 0..whole.len() {
            assert_eq!(decoded(&whole[..cut], Expect::Stats), None, "cut at {cut}");
        }
        let stats = vec![
            ("pid".to_string(), "12".to_string()),
            ("version".to_string(), "1.6.18".to_string()),
        ];
        assert_eq!(decoded(whole, Expect::Stats), Some(Reply::Stats(stats)));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for (bytes, expect) in [
            (&b"VALUE k x 1 1\r\na\r\nEND\r\n"[..], Expect::Value),
            (b"VALUE k 0 1\r\na\r\nEND\r\n", Expect::Value),
            (b"VALUE k 0 1 1\r\naXXEND\r\n", Expect::Value),
            (b"VALUE k 0 1 1\r\na\r\nVALUE k 0 1 1\r\n", Expect::Value),
            (b"VALUE k 0 1 1\r\na\r\nVALUE k 0 1\r\n", Expect::Values),
            (b"VALUE k 0 1 1\r\naXXEND\r\n", Expect::Values),
            (b"STORED\r\n", Expect::Values),
            (b"STORED\r\n", Expect::Stats),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(decode(&mut buf, expect).is_err(), "{bytes:?} accepted");
        }
        let mut endless = BytesMut::from(&[b'x'; MAX_REPLY_LINE_BYTES + 1][..]);
        assert!(decode(&mut endless, Expect::Status).is_err());
    }
}
