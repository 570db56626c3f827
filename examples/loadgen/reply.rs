//! What a reply means to loadgen: the two requests it sends ([`Op`]) and the [`Answer`]s it
//! accepts for them. The bytes are read by `tailorkv_common::client`, the protocol's client
//! side, not by the server's (`tailorkv_common::codec`): a reply is checked by other code than
//! the code that wrote it.
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
//! [`take`] is pure: it is handed the bytes buffered so far and the [`Op`] the oldest
//! outstanding request was, since a reply only makes sense against its request (replies come
//! back in request order, and carry no request id). A partial reply is `Ok(None)` and nothing
//! is consumed: read more and call again. Bytes that fit no reply to that request are a
//! [`ProtocolError`]; after one, the reply stream cannot be matched to requests any more and
//! the connection is given up.
//!
//! Caveat: a server may answer `set` with `NOT_STORED`, `EXISTS` or `NOT_FOUND` (not for plain
//! `set` in memcached, but a proxy might); those are [`Answer::Failed`] like the error lines.

use bytes::BytesMut;
use tailorkv_common::client::{self, Expect, Hit, ProtocolError, Reply};

/// Which request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

impl Op {
    /// The shape of the reply to this op's request.
    fn expect(self) -> Expect {
        match self {
            Op::Get => Expect::Get,
            Op::Set => Expect::Status,
        }
    }
}

/// One whole reply, as loadgen counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `STORED`: a set took effect.
    Stored,
    /// A `VALUE` block then `END`: a get found the item.
    Hit(Hit),
    /// A bare `END`: a get found nothing.
    Miss,
    /// The server refused the request and kept the connection (`ERROR`, `CLIENT_ERROR ..`,
    /// `SERVER_ERROR ..`, or a set answered `NOT_STORED`/`EXISTS`/`NOT_FOUND`): the line.
    Failed(String),
}

/// Takes the reply to `op` off the front of `buf`, or returns `Ok(None)` and consumes nothing
/// if the reply is not all buffered yet.
pub fn take(buf: &mut BytesMut, op: Op) -> Result<Option<Answer>, ProtocolError> {
    let Some(reply) = client::decode(buf, op.expect())? else {
        return Ok(None);
    };
    answer(op, reply).map(Some)
}

/// What `reply` is as an answer to `op`: an error for a reply no such request gets.
fn answer(op: Op, reply: Reply) -> Result<Answer, ProtocolError> {
    match (op, reply) {
        (Op::Set, Reply::Stored) => Ok(Answer::Stored),
        (Op::Get, Reply::Value(None)) => Ok(Answer::Miss),
        (Op::Get, Reply::Value(Some(hit))) => Ok(Answer::Hit(hit)),
        (_, reply @ (Reply::Error | Reply::ClientError(_) | Reply::ServerError(_)))
        | (Op::Set, reply @ (Reply::NotStored | Reply::Exists | Reply::NotFound)) => {
            Ok(Answer::Failed(line(&reply)))
        }
        (_, other) => Err(ProtocolError::Unexpected(line(&other))),
    }
}

/// The reply as the line it came as, for a report.
fn line(reply: &Reply) -> String {
    reply.status_line().unwrap_or_else(|| format!("{reply:?}"))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn hit(key: &'static [u8], cas: u64, data: &'static [u8]) -> Answer {
        Answer::Hit(Hit {
            key: Bytes::from_static(key),
            flags: 0,
            cas,
            data: Bytes::from_static(data),
        })
    }

    /// The answer to `op` in `bytes`, which it must take whole.
    fn taken(bytes: &[u8], op: Op) -> Result<Option<Answer>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let answer = take(&mut buf, op);
        if let Ok(Some(_)) = answer {
            assert!(buf.is_empty(), "left over: {buf:?}");
        }
        answer
    }

    #[test]
    fn whole_replies_are_taken_whole() {
        let cases: [(&[u8], Op, Answer); 5] = [
            (b"STORED\r\n", Op::Set, Answer::Stored),
            (b"END\r\n", Op::Get, Answer::Miss),
            (
                b"VALUE k 0 2\r\nhi\r\nEND\r\n",
                Op::Get,
                hit(b"k", 0, b"hi"),
            ),
            (
                b"VALUE k 0 2 77\r\nhi\r\nEND\r\n",
                Op::Get,
                hit(b"k", 77, b"hi"),
            ),
            (
                b"SERVER_ERROR out of memory storing object\r\n",
                Op::Set,
                Answer::Failed("SERVER_ERROR out of memory storing object".into()),
            ),
        ];
        for (bytes, op, want) in cases {
            assert_eq!(taken(bytes, op), Ok(Some(want)), "{bytes:?}");
        }
    }

    #[test]
    fn every_prefix_of_a_reply_is_partial_and_left_alone() {
        let bytes = b"VALUE key 0 5\r\nhello\r\nEND\r\n";
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(take(&mut buf, Op::Get), Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let mut buf = BytesMut::from(&b"END\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"[..]);
        let first = take(&mut buf, Op::Get).unwrap();
        let second = take(&mut buf, Op::Set).unwrap();
        let third = take(&mut buf, Op::Get).unwrap();
        assert_eq!(
            (first, second, third),
            (
                Some(Answer::Miss),
                Some(Answer::Stored),
                Some(hit(b"a", 0, b"x"))
            )
        );
        assert!(buf.is_empty(), "left over: {buf:?}");
    }

    #[test]
    fn refusals_keep_the_connection() {
        for line in ["ERROR", "CLIENT_ERROR bad data chunk", "NOT_STORED"] {
            let bytes = format!("{line}\r\n");
            let got = taken(bytes.as_bytes(), Op::Set);
            assert_eq!(got, Ok(Some(Answer::Failed(line.into()))));
        }
        let got = taken(b"SERVER_ERROR busy\r\n", Op::Get);
        assert_eq!(got, Ok(Some(Answer::Failed("SERVER_ERROR busy".into()))));
    }

    /// Malformed `VALUE` blocks are the codec's to refuse, and its tests' to show.
    #[test]
    fn replies_that_fit_no_request_are_protocol_errors() {
        let cases: [(&[u8], Op); 6] = [
            (b"STORED\r\n", Op::Get),
            (b"NOT_STORED\r\n", Op::Get),
            (b"END\r\n", Op::Set),
            (b"DELETED\r\n", Op::Set),
            (b"VALUE k 0 2\r\nhi\r\nEND\r\n", Op::Set),
            (b"VALUE k 0 2\r\nhiXX", Op::Get),
        ];
        for (bytes, op) in cases {
            assert!(taken(bytes, op).is_err(), "{bytes:?} accepted for {op:?}");
        }
        assert_eq!(
            taken(b"END\r\n", Op::Set),
            Err(ProtocolError::Unexpected("END".into()))
        );
    }
}
