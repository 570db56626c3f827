//! What a reply means to loadgen: the two requests it sends ([`Op`]) in either [`Protocol`],
//! and the [`Answer`]s it accepts for them. The bytes are read by `tailorkv_common::client`,
//! the protocol's client side, not by the server's (`tailorkv_common::codec`): a reply is
//! checked by other code than the code that wrote it.
//!
//! ```text
//! --protocol text (the default):
//! get <key>\r\n                        -> VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\nEND\r\n
//!                                     -> END\r\n                                 (a miss)
//! set <key> 0 0 <bytes>\r\n<data>\r\n  -> STORED\r\n
//!
//! --protocol meta (memcached 1.6's meta commands):
//! mg <key> k v\r\n                     -> VA <bytes> k<key>\r\n<data>\r\n
//!                                     -> EN\r\n                                  (a miss)
//! ms <key> <bytes> T0\r\n<data>\r\n    -> HD\r\n
//!
//! either, in either protocol          -> ERROR\r\n | CLIENT_ERROR <msg>\r\n | SERVER_ERROR <msg>\r\n
//! ```
//!
//! Both protocols carry the same load: the same self-describing values, set with flags 0 and
//! no expiry (`T0`), read back one key at a time. A meta hit becomes the same [`Hit`] a
//! `VALUE` block does, its key from the `k` flag and its flags 0 (none are asked back), and
//! goes through the same verification: `k` is asked for so that a hit names its key, as a
//! `VALUE` line does, and a value read from another key is caught.
//!
//! # How it works
//!
//! [`take`] is pure: it is handed the bytes buffered so far, the [`Protocol`], and the [`Op`]
//! the oldest outstanding request was, since a reply only makes sense against its request
//! (replies come back in request order, and carry no request id). A partial reply is `Ok(None)` and nothing
//! is consumed: read more and call again. Bytes that fit no reply to that request are a
//! [`ProtocolError`]; after one, the reply stream cannot be matched to requests any more and
//! the connection is given up.
//!
//! Caveat: a server may answer `set` with `NOT_STORED`, `EXISTS` or `NOT_FOUND` (not for plain
//! `set` in memcached, but a proxy might), or `ms` with their meta codes `NS`, `EX`, `NF`;
//! those are [`Answer::Failed`] like the error lines.

use bytes::BytesMut;
use clap::ValueEnum;
use serde::Serialize;
use tailorkv_common::client::{self, Expect, Hit, Meta, MetaCode, ProtocolError, Reply};

/// Which of memcached's protocols the requests are sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// The classic text protocol: `get` and `set`.
    Text,
    /// memcached 1.6's meta commands: `mg` and `ms`.
    Meta,
}

impl Protocol {
    /// The name the command line and the report use.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Text => "text",
            Protocol::Meta => "meta",
        }
    }
}

/// Which request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Get,
    Set,
}

impl Op {
    /// The shape of the reply to this op's request in `protocol`.
    fn expect(self, protocol: Protocol) -> Expect {
        match (protocol, self) {
            (Protocol::Text, Op::Get) => Expect::Get,
            (Protocol::Text, Op::Set) => Expect::Status,
            (Protocol::Meta, _) => Expect::Meta,
        }
    }
}

/// One whole reply, as loadgen counts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// `STORED` (`HD`): a set took effect.
    Stored,
    /// A `VALUE` block then `END` (`VA` and its data): a get found the item.
    Hit(Hit),
    /// A bare `END` (`EN`): a get found nothing.
    Miss,
    /// The server refused the request and kept the connection (`ERROR`, `CLIENT_ERROR ..`,
    /// `SERVER_ERROR ..`, or a set answered `NOT_STORED`/`EXISTS`/`NOT_FOUND`, `NS`/`EX`/`NF`):
    /// the line.
    Failed(String),
}

/// Takes the reply to `op`, sent in `protocol`, off the front of `buf`, or returns `Ok(None)`
/// and consumes nothing if the reply is not all buffered yet.
pub fn take(
    buf: &mut BytesMut,
    protocol: Protocol,
    op: Op,
) -> Result<Option<Answer>, ProtocolError> {
    let Some(reply) = client::decode(buf, op.expect(protocol))? else {
        return Ok(None);
    };
    answer(op, reply).map(Some)
}

/// What `reply` is as an answer to `op`: an error for a reply no such request gets. Which
/// protocol was spoken needs no checking here: the decoder only yields meta replies for a
/// meta request, and text ones for a text request.
fn answer(op: Op, reply: Reply) -> Result<Answer, ProtocolError> {
    match (op, reply) {
        (op, Reply::Meta(meta)) => meta_answer(op, meta),
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

/// What a meta reply is as an answer to `op`, as its text counterpart would be. A hit must
/// carry its key (`k`), which the check of the value needs.
fn meta_answer(op: Op, meta: Meta) -> Result<Answer, ProtocolError> {
    match (op, meta.code) {
        (Op::Set, MetaCode::Done) => Ok(Answer::Stored),
        (Op::Get, MetaCode::Miss) => Ok(Answer::Miss),
        (Op::Get, MetaCode::Value) => meta.hit().map(Answer::Hit),
        (Op::Set, MetaCode::NotStored | MetaCode::Exists | MetaCode::NotFound) => {
            Ok(Answer::Failed(line(&Reply::Meta(meta))))
        }
        _ => Err(ProtocolError::Unexpected(line(&Reply::Meta(meta)))),
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

    /// The answer to `op`, sent in the text protocol, in `bytes`, which it must take whole.
    fn taken(bytes: &[u8], op: Op) -> Result<Option<Answer>, ProtocolError> {
        taken_in(Protocol::Text, bytes, op)
    }

    /// The answer to `op`, sent in `protocol`, in `bytes`, which it must take whole.
    fn taken_in(protocol: Protocol, bytes: &[u8], op: Op) -> Result<Option<Answer>, ProtocolError> {
        let mut buf = BytesMut::from(bytes);
        let answer = take(&mut buf, protocol, op);
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
            assert_eq!(
                take(&mut buf, Protocol::Text, Op::Get),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(&buf[..], &bytes[..cut]);
        }
    }

    #[test]
    fn pipelined_replies_are_taken_one_at_a_time() {
        let mut buf = BytesMut::from(&b"END\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"[..]);
        let mut next = |op| take(&mut buf, Protocol::Text, op).unwrap();
        let (first, second, third) = (next(Op::Get), next(Op::Set), next(Op::Get));
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

    #[test]
    fn whole_meta_replies_are_taken_whole() {
        let cases: [(&[u8], Op, Answer); 8] = [
            (b"HD\r\n", Op::Set, Answer::Stored),
            (b"EN\r\n", Op::Get, Answer::Miss),
            // memcached 1.6.18 returns the key asked for on a miss too.
            (b"EN kk\r\n", Op::Get, Answer::Miss),
            (b"VA 2 kk\r\nhi\r\n", Op::Get, hit(b"k", 0, b"hi")),
            (b"VA 2 kk c77\r\nhi\r\n", Op::Get, hit(b"k", 77, b"hi")),
            (b"NS\r\n", Op::Set, Answer::Failed("NS".into())),
            (b"EX\r\n", Op::Set, Answer::Failed("EX".into())),
            (
                b"SERVER_ERROR out of memory storing object\r\n",
                Op::Set,
                Answer::Failed("SERVER_ERROR out of memory storing object".into()),
            ),
        ];
        for (bytes, op, want) in cases {
            assert_eq!(
                taken_in(Protocol::Meta, bytes, op),
                Ok(Some(want)),
                "{bytes:?}"
            );
        }
        let got = taken_in(Protocol::Meta, b"CLIENT_ERROR bad data chunk\r\n", Op::Get);
        assert_eq!(
            got,
            Ok(Some(Answer::Failed("CLIENT_ERROR bad data chunk".into())))
        );
    }

    #[test]
    fn meta_replies_wait_for_their_last_byte_and_come_one_at_a_time() {
        let bytes = b"VA 5 kkey\r\nhello\r\n";
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            let got = take(&mut buf, Protocol::Meta, Op::Get);
            assert_eq!(got, Ok(None), "cut at {cut}");
            assert_eq!(&buf[..], &bytes[..cut]);
        }
        let mut buf = BytesMut::from(&b"EN\r\nHD\r\nVA 1 ka\r\nx\r\nNF\r\n"[..]);
        let mut next = |op| take(&mut buf, Protocol::Meta, op).unwrap();
        assert_eq!(next(Op::Get), Some(Answer::Miss));
        assert_eq!(next(Op::Set), Some(Answer::Stored));
        assert_eq!(next(Op::Get), Some(hit(b"a", 0, b"x")));
        assert_eq!(next(Op::Set), Some(Answer::Failed("NF".into())));
        assert!(buf.is_empty(), "left over: {buf:?}");
    }

    /// A reply of the other protocol is no reply at all: a server that answers `mg` with
    /// `VALUE`, or `set` with `HD`, is not speaking the protocol loadgen does.
    #[test]
    fn meta_replies_that_fit_no_request_are_protocol_errors() {
        let cases: [(Protocol, &[u8], Op); 11] = [
            (Protocol::Meta, b"HD\r\n", Op::Get),
            (Protocol::Meta, b"NS\r\n", Op::Get),
            (Protocol::Meta, b"EN\r\n", Op::Set),
            (Protocol::Meta, b"MN\r\n", Op::Set),
            (Protocol::Meta, b"VA 2 kk\r\nhi\r\n", Op::Set),
            (Protocol::Meta, b"VA 2\r\nhi\r\n", Op::Get),
            (Protocol::Meta, b"VA 2 kk\r\nhiXX", Op::Get),
            (Protocol::Meta, b"STORED\r\n", Op::Set),
            (Protocol::Meta, b"VALUE k 0 2\r\nhi\r\nEND\r\n", Op::Get),
            (Protocol::Text, b"HD\r\n", Op::Set),
            (Protocol::Text, b"EN\r\n", Op::Get),
        ];
        for (protocol, bytes, op) in cases {
            let got = taken_in(protocol, bytes, op);
            assert!(
                got.is_err(),
                "{bytes:?} accepted for {op:?} in {protocol:?}"
            );
        }
        assert_eq!(
            taken_in(Protocol::Meta, b"HD\r\n", Op::Get),
            Err(ProtocolError::Unexpected("HD".into()))
        );
        assert_eq!(
            taken_in(Protocol::Meta, b"VA 2\r\nhi\r\n", Op::Get),
            Err(ProtocolError::BadMetaLine("VA 2".into()))
        );
    }
}
