//! Finding where a whole reply ends without consuming it: [`scan`] walks the buffered bytes,
//! records where each part of the reply is, and says `None` until the last byte is there.
//! Only then does [`super::decode`] take the frame off the buffer and slice it into a reply.

use std::ops::Range;

use bytes::Bytes;

use super::{
    Expect, Hit, Meta, MetaCode, ProtocolError, Reply, MAX_REPLY_LINE_BYTES, MAX_VALUE_BYTES,
};
use crate::codec::strtoull;

/// What [`scan`] found, by byte ranges into the frame.
pub(super) enum Shape {
    Line(usize),
    Value(Option<HitAt>),
    Values(Vec<HitAt>),
    Stats(Vec<Range<usize>>),
    Meta(MetaAt),
}

/// Where one `VALUE` block's parts are.
pub(super) struct HitAt {
    key: Range<usize>,
    flags: u32,
    cas: u64,
    data: Range<usize>,
}

/// Where one meta reply's parts are.
pub(super) struct MetaAt {
    code: MetaCode,
    flags: Range<usize>,
    data: Option<Range<usize>>,
}

impl Shape {
    /// The reply, its key and data slices of `frame`.
    pub(super) fn into_reply(self, frame: &Bytes) -> Reply {
        match self {
            Shape::Line(end) => status(&frame[..end]),
            Shape::Value(hit) => Reply::Value(hit.map(|h| h.hit(frame))),
            Shape::Values(hits) => Reply::Values(hits.into_iter().map(|h| h.hit(frame)).collect()),
            Shape::Stats(lines) => Reply::Stats(
                lines
                    .into_iter()
                    .filter_map(|line| stat(&frame[line]))
                    .collect(),
            ),
            Shape::Meta(meta) => Reply::Meta(Meta {
                code: meta.code,
                flags: frame.slice(meta.flags),
                data: meta.data.map(|data| frame.slice(data)),
            }),
        }
    }
}

impl HitAt {
    fn hit(self, frame: &Bytes) -> Hit {
        Hit {
            key: frame.slice(self.key),
            flags: self.flags,
            cas: self.cas,
            data: frame.slice(self.data),
        }
    }
}

/// Finds the end of the whole reply at the front of `buf`: its length and its parts.
pub(super) fn scan(buf: &[u8], expect: Expect) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let Some((end, next)) = next_line(buf, 0)? else {
        return Ok(None);
    };
    let hits = |most, cas| scan_hits(buf, end, next, most, cas);
    Ok(match expect {
        _ if is_error(&buf[..end]) => Some((next, Shape::Line(end))),
        Expect::Status => Some((next, Shape::Line(end))),
        Expect::Get => hits(1, false)?.map(|(len, mut h)| (len, Shape::Value(h.pop()))),
        Expect::Gets => hits(1, true)?.map(|(len, mut h)| (len, Shape::Value(h.pop()))),
        Expect::GetsMany => hits(usize::MAX, true)?.map(|(len, h)| (len, Shape::Values(h))),
        Expect::Stats => scan_stats(buf, end, next)?,
        Expect::Meta => scan_meta(buf, end, next)?,
    })
}

/// The next line from `start`: `(end of its text, start of the line after)`. A line ends at
/// `\n`, with an optional `\r` before it.
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
        None if rest.len() > MAX_REPLY_LINE_BYTES => Err(ProtocolError::LineTooLong),
        None => Ok(None),
    }
}

/// The lines any request may get instead of its reply.
fn is_error(line: &[u8]) -> bool {
    line == b"ERROR"
        || line.starts_with(b"ERROR ")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
}

/// The `VALUE` blocks from the first line (ending at `end`, its successor starting at `next`)
/// up to `END`, at most `most` of them, each with a CAS unique if `cas`: where the reply ends,
/// and each block.
fn scan_hits(
    buf: &[u8],
    mut end: usize,
    mut next: usize,
    most: usize,
    cas: bool,
) -> Result<Option<(usize, Vec<HitAt>)>, ProtocolError> {
    let mut hits = Vec::new();
    let mut start = 0;
    loop {
        let line = &buf[start..end];
        if line == b"END" {
            return Ok(Some((next, hits)));
        }
        let value = value_line(line, cas)?;
        if hits.len() == most {
            return Err(ProtocolError::TooManyValues);
        }
        let Some(data) = data_block(buf, next, value.len)? else {
            return Ok(None);
        };
        let key = start + value.key.start..start + value.key.end;
        start = data.end + 2;
        hits.push(HitAt {
            key,
            flags: value.flags,
            cas: value.cas,
            data,
        });
        match next_line(buf, start)? {
            Some((e, n)) => (end, next) = (e, n),
            None => return Ok(None),
        }
    }
}

/// The `len` bytes of data from `start`, and the `\r\n` that must end them: where the data
/// is, or `None` until all of it and its line ending are buffered.
fn data_block(buf: &[u8], start: usize, len: usize) -> Result<Option<Range<usize>>, ProtocolError> {
    let data = start..start + len;
    if buf.len() < data.end + 2 {
        return Ok(None);
    }
    if &buf[data.end..data.end + 2] != b"\r\n" {
        return Err(ProtocolError::DataNotTerminated);
    }
    Ok(Some(data))
}

/// A meta reply from its line (ending at `end`, its successor starting at `next`): the line
/// alone, or for `VA` the line and its data block.
fn scan_meta(buf: &[u8], end: usize, next: usize) -> Result<Option<(usize, Shape)>, ProtocolError> {
    let (code, size, flags) = meta_line(&buf[..end])?;
    let data = match size {
        None => None,
        Some(len) => match data_block(buf, next, len)? {
            Some(data) => Some(data),
            None => return Ok(None),
        },
    };
    let len = data.as_ref().map_or(next, |data| data.end + 2);
    Ok(Some((len, Shape::Meta(MetaAt { code, flags, data }))))
}

/// `<code> <flags>*`, or `VA <bytes> <flags>*`: the code, a `VA`'s data length, and where the
/// flags are in the line. Each flag is a word that starts with a letter, its token after it.
fn meta_line(line: &[u8]) -> Result<(MetaCode, Option<usize>, Range<usize>), ProtocolError> {
    let words = words(line);
    let code = words
        .first()
        .and_then(|w| MetaCode::parse(&line[w.clone()]));
    let Some(code) = code else {
        return Err(ProtocolError::Unexpected(lossy(line)));
    };
    let bad = || ProtocolError::BadMetaLine(lossy(line));
    let (size, flags) = match code {
        MetaCode::Value => {
            let size = words.get(1).and_then(|w| strtoull(&line[w.clone()]));
            let size = size.and_then(|n| usize::try_from(n).ok());
            match size {
                Some(size) if size <= MAX_VALUE_BYTES => (Some(size), &words[2..]),
                _ => return Err(bad()),
            }
        }
        _ => (None, &words[1..]),
    };
    if !flags.iter().all(|w| line[w.start].is_ascii_alphabetic()) {
        return Err(bad());
    }
    let at = match (flags.first(), flags.last()) {
        (Some(first), Some(last)) => first.start..last.end,
        _ => line.len()..line.len(),
    };
    Ok((code, size, at))
}

/// A parsed `VALUE` line; `key` is a range into the line.
struct ValueLine {
    key: Range<usize>,
    flags: u32,
    len: usize,
    cas: u64,
}

/// `VALUE <key> <flags> <bytes> <cas unique>`, the CAS unique optional unless `cas`. Words are
/// separated by one space or more.
fn value_line(line: &[u8], cas: bool) -> Result<ValueLine, ProtocolError> {
    let words = words(line);
    if words.first().map(|w| &line[w.clone()]) != Some(b"VALUE") {
        return Err(ProtocolError::Unexpected(lossy(line)));
    }
    let bad = || ProtocolError::BadValueLine(lossy(line));
    let (key, flags, len, unique) = match &words[1..] {
        [key, flags, len, unique] => (key, flags, len, Some(unique)),
        [key, flags, len] if !cas => (key, flags, len, None),
        _ => return Err(bad()),
    };
    let number = |word: &Range<usize>| strtoull(&line[word.clone()]).ok_or_else(bad);
    let flags = u32::try_from(number(flags)?).map_err(|_| bad())?;
    let len = usize::try_from(number(len)?).map_err(|_| bad())?;
    if len > MAX_VALUE_BYTES {
        return Err(bad());
    }
    let cas = match unique {
        Some(word) => number(word)?,
        None => 0,
    };
    Ok(ValueLine {
        key: key.clone(),
        flags,
        len,
        cas,
    })
}

/// Where each space-separated word of `line` is.
fn words(line: &[u8]) -> Vec<Range<usize>> {
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
    words
}

/// `STAT` lines from the first line (ending at `end`, its successor starting at `next`) up to
/// `END`.
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
            return Err(ProtocolError::Unexpected(lossy(line)));
        }
        lines.push(start..end);
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
        _ if line == b"ERROR" || line.starts_with(b"ERROR ") => Reply::Error,
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

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
