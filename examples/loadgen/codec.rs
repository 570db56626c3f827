//! The client half of memcached's classic text protocol: the two requests loadgen sends and
//! the replies it accepts for them.
//!
//! # Wire format
//!
//! ```text
//! get <key>\r\n                        -> VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\nEND\r\n
//!                                     -> END\r\n                                 (a miss)
//! set <key> 0 0 <bytes>\r\n<data>\r\n  -> STORED\r\n
//! either                              -> ERROR\r\n | CLIENT_ERROR <msg>\r\n | SERVER_ERROR <msg>\r\n
//! ```
//!
//! # How it works
//!
//! [`parse`] is pure: it is handed the bytes buffered so far and the [`Op`] the oldest
//! outstanding request was, since a reply only makes sense against its request (replies come
//! back in request order, and carry no request id). A partial reply is `Ok(None)`: read more and
//! call again. Bytes that fit no reply to that request are a [`ProtocolError`]; after one, the
//! reply stream cannot be matched to requests any more and the connection is given up.
//!
//! Caveat: a server may answer `set` with `NOT_STORED`, `EXISTS` or `NOT_FOUND` (not for plain
//! `set` in memcached, but a proxy might); those are [`Reply::Failed`] like the error lines.

use std::io::Write;

use thiserror::Error;

/// The longest reply line accepted (memcached keys are at most 250 bytes, so any `VALUE` line
/// is far shorter). A longer line means the stream is out of step.
pub const MAX_LINE_BYTES: usize = 2048;

/// The largest value a `VALUE` line may announce: memcached's own ceiling for an item.
pub const MAX_VALUE_BYTES: usize = 1 << 30;

/// Which request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

/// One whole reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `STORED`: a set took effect.
    Stored,
    /// A `VALUE` block then `END`: a get found the item.
    Hit {
        key: Vec<u8>,
        flags: u32,
        data: Vec<u8>,
    },
    /// A bare `END`: a get found nothing.
    Miss,
    /// The server refused the request and kept the connection (`ERROR`, `CLIENT_ERROR ..`,
    /// `SERVER_ERROR ..`, or a set answered `NOT_STORED`/`EXISTS`/`NOT_FOUND`): the whole line.
    Failed(String),
}

/// Bytes that are no reply to the request they should answer.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("reply line longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong,
    #[error("unexpected reply to {op:?}: {line:?}")]
    Unexpected { op: Op, line: String },
    #[error("malformed VALUE line: {0:?}")]
    BadValueLine(String),
    #[error("value data not followed by \\r\\n")]
    DataNotTerminated,
    #[error("VALUE block not followed by END: {0:?}")]
    MissingEnd(String),
}

/// Appends `get <key>\r\n`.
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// Appends the command line of a set, `set <key> 0 0 <bytes>\r\n`; the caller appends the
/// `bytes` of data and then [`end_set`].
pub fn begin_set(out: &mut Vec<u8>, key: &[u8], bytes: usize) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    // Writing to a Vec cannot fail.
    let _ = write!(out, " 0 0 {bytes}\r\n");
}

/// Appends the `\r\n` that closes a set's data block.
pub fn end_set(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// Parses the reply to `op` at the start of `buf`: `Ok(Some((reply, bytes consumed)))`, or
/// `Ok(None)` if the reply is not all buffered yet.
pub fn parse(buf: &[u8], op: Op) -> Result<Option<(Reply, usize)>, ProtocolError> {
    let Some((line, mut used)) = take_line(buf)? else {
        return Ok(None);
    };
    if let Some(failed) = failure(line, op) {
        return Ok(Some((Reply::Failed(failed), used)));
    }
    match op {
        Op::Set if line == b"STORED" => Ok(Some((Reply::Stored, used))),
        Op::Get if line == b"END" => Ok(Some((Reply::Miss, used))),
        Op::Get if line.starts_with(b"VALUE ") => {
            let (key, flags, bytes) = parse_value_line(line)?;
            let Some(rest) = buf[used..].get(..bytes + 2) else {
                return Ok(None);
            };
            if &rest[bytes..] != b"\r\n" {
                return Err(ProtocolError::DataNotTerminated);
            }
            let data = rest[..bytes].to_vec();
            used += bytes + 2;
            let Some((end, end_used)) = take_line(&buf[used..])? else {
                return Ok(None);
            };
            if end != b"END" {
                return Err(ProtocolError::MissingEnd(lossy(end)));
            }
            let reply = Reply::Hit { key, flags, data };
            Ok(Some((reply, used + end_used)))
        }
        _ => Err(ProtocolError::Unexpected {
            op,
            line: lossy(line),
        }),
    }
}

/// The line at the start of `buf` without its `\r\n`, and the bytes it takes with it.
fn take_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let window = &buf[..buf.len().min(MAX_LINE_BYTES + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some((&buf[..at], at + 2))),
        None if window.len() > MAX_LINE_BYTES => Err(ProtocolError::LineTooLong),
        None => Ok(None),
    }
}

/// The error lines any request may get, and the refusals a set may get.
fn failure(line: &[u8], op: Op) -> Option<String> {
    let is_error = line == b"ERROR"
        || line.starts_with(b"ERROR ")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR");
    let is_refusal = op == Op::Set && matches!(line, b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND");
    (is_error || is_refusal).then(|| lossy(line))
}

/// `VALUE <key> <flags> <bytes>[ <cas>]` into its key, flags and byte count.
fn parse_value_line(line: &[u8]) -> Result<(Vec<u8>, u32, usize), ProtocolError> {
    let bad = || ProtocolError::BadValueLine(lossy(line));
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let fields: Vec<&str> = text.split(' ').collect();
    if !(4..=5).contains(&fields.len()) || fields[1].is_empty() {
        return Err(bad());
    }
    let flags = fields[2].parse().map_err(|_| bad())?;
    let bytes: usize = fields[3].parse().map_err(|_| bad())?;
    if bytes > MAX_VALUE_BYTES {
        return Err(bad());
    }
    Ok((fields[1].as_bytes().to_vec(), flags, bytes))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(key: &str, data: &[u8]) -> Reply {
        Reply::Hit {
            key: key.as_bytes().to_vec(),
            flags: 0,
            data: data.to_vec(),
        }
    }

    #[test]
    fn requests_are_encoded_as_memcached_expects() {
        let mut out = Vec::new();
        encode_get(&mut out, b"k1");
        begin_set(&mut out, b"k2", 5);
        out.extend_from_slice(b"hello");
        end_set(&mut out);
        assert_eq!(out, b"get k1\r\nset k2 0 0 5\r\nhello\r\n");
    }

    #[test]
    fn whole_replies_parse_and_report_their_length() {
        let cases: [(&[u8], Op, Reply); 5] = [
            (b"STORED\r\n", Op::Set, Reply::Stored),
            (b"END\r\n", Op::Get, Reply::Miss),
            (b"VALUE k 0 2\r\nhi\r\nEND\r\n", Op::Get, hit("k", b"hi")),
            (b"VALUE k 0 2 77\r\nhi\r\nEND\r\n", Op::Get, hit("k", b"hi")),
            (
                b"SERVER_ERROR out of memory storing object\r\n",
                Op::Set,
                Reply::Failed("SERVER_ERROR out of memory storing object".into()),
            ),
        ];
        for (bytes, op, want) in cases {
            assert_eq!(parse(bytes, op), Ok(Some((want, bytes.len()))), "{bytes:?}");
        }
    }

    #[test]
    fn data_may_hold_crlf_and_the_length_decides() {
        let bytes = b"VALUE k 3 4\r\n\r\nEN\r\nEND\r\n";
        let want = Reply::Hit {
            key: b"k".to_vec(),
            flags: 3,
            data: b"\r\nEN".to_vec(),
        };
        assert_eq!(parse(bytes, Op::Get), Ok(Some((want, bytes.len()))));
    }

    #[test]
    fn every_prefix_of_a_reply_is_partial() {
        let bytes = b"VALUE key 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut], Op::Get), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let buf = b"END\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n";
        let (first, n1) = parse(buf, Op::Get).unwrap().unwrap();
        let (second, n2) = parse(&buf[n1..], Op::Set).unwrap().unwrap();
        let (third, n3) = parse(&buf[n1 + n2..], Op::Get).unwrap().unwrap();
        assert_eq!(
            (first, second, third),
            (Reply::Miss, Reply::Stored, hit("a", b"x"))
        );
        assert_eq!(n1 + n2 + n3, buf.len());
    }

    #[test]
    fn refusals_keep_the_connection() {
        for line in ["ERROR", "CLIENT_ERROR bad data chunk", "NOT_STORED"] {
            let bytes = format!("{line}\r\n");
            let got = parse(bytes.as_bytes(), Op::Set).unwrap().unwrap();
            assert_eq!(got, (Reply::Failed(line.into()), bytes.len()));
        }
    }

    #[test]
    fn replies_that_fit_no_request_are_protocol_errors() {
        let cases: [(&[u8], Op); 7] = [
            (b"STORED\r\n", Op::Get),
            (b"END\r\n", Op::Set),
            (b"NOT_STORED\r\n", Op::Get),
            (b"VALUE k 0 2\r\nhi\r\nEND\r\n", Op::Set),
            (b"VALUE k 0 x\r\n", Op::Get),
            (b"VALUE k 0 2\r\nhiXX", Op::Get),
            (
                b"VALUE k 0 2\r\nhi\r\nVALUE k 0 2\r\nhi\r\nEND\r\n",
                Op::Get,
            ),
        ];
        for (bytes, op) in cases {
            assert!(parse(bytes, op).is_err(), "{bytes:?} accepted for {op:?}");
        }
    }

    #[test]
    fn an_endless_line_is_refused_not_awaited() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        assert_eq!(parse(&long, Op::Get), Err(ProtocolError::LineTooLong));
        assert_eq!(parse(&long[..MAX_LINE_BYTES], Op::Get), Ok(None));
    }
}
