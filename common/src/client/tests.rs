use bytes::{Bytes, BytesMut};

use super::*;

fn encoded(r: Request) -> Vec<u8> {
    let mut out = BytesMut::new();
    r.encode(&mut out);
    out.to_vec()
}

/// Decodes a buffer holding `bytes`: a whole reply must take all of them, a partial one none.
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

fn hit(key: &'static [u8], flags: u32, cas: u64, data: &'static [u8]) -> Hit {
    Hit {
        key: Bytes::from_static(key),
        flags,
        cas,
        data: Bytes::from_static(data),
    }
}

#[test]
fn requests_are_memcached_lines() {
    assert_eq!(encoded(Request::Get { key: b"k" }), b"get k\r\n");
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
fn requests_batch_into_a_vec_and_a_store_line_takes_its_data_after() {
    let mut out = Vec::new();
    Request::Get { key: b"k1" }.encode(&mut out);
    encode_store_line(&mut out, StoreCommand::Set, b"k2", 0, 0, 5);
    out.extend_from_slice(b"hello");
    out.extend_from_slice(b"\r\n");
    assert_eq!(out, b"get k1\r\nset k2 0 0 5\r\nhello\r\n");
}

#[test]
fn each_request_expects_its_reply() {
    let keys = [Bytes::from_static(b"a")];
    for (request, expect) in [
        (Request::Get { key: b"k" }, Expect::Get),
        (Request::Gets { key: b"k" }, Expect::Gets),
        (Request::GetsMany { keys: &keys }, Expect::GetsMany),
        (Request::Stats, Expect::Stats),
        (Request::Delete { key: b"k" }, Expect::Status),
        (Request::FlushAll { delay: None }, Expect::Status),
    ] {
        assert_eq!(request.expect(), expect, "{request:?}");
    }
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
        let text = String::from_utf8_lossy(&line[..line.len() - 2]).into_owned();
        assert_eq!(reply.status_line(), Some(text), "{reply:?}");
        assert_eq!(decoded(line, Expect::Status), Some(reply));
    }
    assert_eq!(
        decoded(b"ERROR unknown command\r\n", Expect::Status),
        Some(Reply::Error)
    );
    assert_eq!(Reply::Value(None).status_line(), None);
}

#[test]
fn a_gets_reply_decodes_with_its_data_and_cas() {
    assert_eq!(decoded(b"END\r\n", Expect::Gets), Some(Reply::Value(None)));
    let reply = decoded(b"VALUE k 5 4 77\r\na\r\nb\r\nEND\r\n", Expect::Gets);
    assert_eq!(reply, Some(Reply::Value(Some(hit(b"k", 5, 77, b"a\r\nb")))));
    assert_eq!(
        decoded(b"SERVER_ERROR datalet unavailable\r\n", Expect::Gets),
        Some(Reply::ServerError("datalet unavailable".into()))
    );
}

#[test]
fn a_get_reply_decodes_with_or_without_cas() {
    for (bytes, want) in [
        (&b"END\r\n"[..], None),
        (
            b"VALUE k 0 2\r\nhi\r\nEND\r\n",
            Some(hit(b"k", 0, 0, b"hi")),
        ),
        (
            b"VALUE k 0 2 77\r\nhi\r\nEND\r\n",
            Some(hit(b"k", 0, 77, b"hi")),
        ),
    ] {
        assert_eq!(decoded(bytes, Expect::Get), Some(Reply::Value(want)));
    }
    assert_eq!(
        decoded(b"SERVER_ERROR out of memory\r\n", Expect::Get),
        Some(Reply::ServerError("out of memory".into()))
    );
}

#[test]
fn data_may_hold_crlf_and_the_length_decides() {
    let reply = decoded(b"VALUE k 3 4\r\n\r\nEN\r\nEND\r\n", Expect::Get);
    assert_eq!(reply, Some(Reply::Value(Some(hit(b"k", 3, 0, b"\r\nEN")))));
}

#[test]
fn a_reply_split_anywhere_decodes_once_whole() {
    let whole = b"VALUE key 4294967295 3 18446744073709551615\r\nabc\r\nEND\r\n";
    for cut in 0..whole.len() {
        assert_eq!(decoded(&whole[..cut], Expect::Gets), None, "cut at {cut}");
    }
    let whole = b"VALUE key 0 5\r\nhello\r\nEND\r\n";
    for cut in 0..whole.len() {
        assert_eq!(decoded(&whole[..cut], Expect::Get), None, "cut at {cut}");
    }
    let mut buf =
        BytesMut::from(&b"VALUE key 4294967295 3 18446744073709551615\r\nabc\r\nEND\r\n"[..]);
    buf.extend_from_slice(b"STORED\r\n");
    let Some(Reply::Value(Some(v))) = decode(&mut buf, Expect::Gets).unwrap() else {
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
fn pipelined_replies_are_taken_one_at_a_time() {
    let mut buf = BytesMut::from(&b"END\r\nSTORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"[..]);
    let first = decode(&mut buf, Expect::Get).unwrap();
    assert_eq!(&buf[..], b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n");
    let second = decode(&mut buf, Expect::Status).unwrap();
    assert_eq!(&buf[..], b"VALUE a 0 1\r\nx\r\nEND\r\n");
    let third = decode(&mut buf, Expect::Get).unwrap();
    assert!(buf.is_empty(), "left over: {buf:?}");
    assert_eq!(
        (first, second, third),
        (
            Some(Reply::Value(None)),
            Some(Reply::Stored),
            Some(Reply::Value(Some(hit(b"a", 0, 0, b"x"))))
        )
    );
}

#[test]
fn many_keys_go_in_one_gets_and_their_hits_decode_with_their_keys() {
    let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"bb")];
    assert_eq!(encoded(Request::GetsMany { keys: &keys }), b"gets a bb\r\n");
    assert_eq!(
        decoded(b"END\r\n", Expect::GetsMany),
        Some(Reply::Values(vec![]))
    );
    let whole = b"VALUE a 1 2 7\r\nxy\r\nVALUE  bb 0 0 8\r\n\r\nEND\r\n";
    for cut in 0..whole.len() {
        assert_eq!(
            decoded(&whole[..cut], Expect::GetsMany),
            None,
            "cut at {cut}"
        );
    }
    assert_eq!(
        decoded(whole, Expect::GetsMany),
        Some(Reply::Values(vec![
            hit(b"a", 1, 7, b"xy"),
            hit(b"bb", 0, 8, b""),
        ]))
    );
    // An error comes instead of the whole reply.
    assert_eq!(
        decoded(b"SERVER_ERROR busy\r\n", Expect::GetsMany),
        Some(Reply::ServerError("busy".into()))
    );
    // One reply at a time: what follows `END` is the next reply's.
    let mut buf = BytesMut::from(&b"VALUE a 0 1 1\r\nx\r\nEND\r\nSTORED\r\n"[..]);
    let Some(Reply::Values(hits)) = decode(&mut buf, Expect::GetsMany).unwrap() else {
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
    let too_big = format!("VALUE k 0 {}\r\n", MAX_VALUE_BYTES + 1);
    for (bytes, expect) in [
        (&b"VALUE k x 1 1\r\na\r\nEND\r\n"[..], Expect::Gets),
        (b"VALUE k 0 1\r\na\r\nEND\r\n", Expect::Gets),
        (b"VALUE k 0 1 1\r\naXXEND\r\n", Expect::Gets),
        (b"VALUE k 0 1 1\r\na\r\nVALUE k 0 1 1\r\n", Expect::Gets),
        (b"VALUE k 0 1 1\r\na\r\nVALUE k 0 1\r\n", Expect::GetsMany),
        (b"VALUE k 0 1 1\r\naXXEND\r\n", Expect::GetsMany),
        (b"STORED\r\n", Expect::GetsMany),
        (b"STORED\r\n", Expect::Stats),
        (b"STORED\r\n", Expect::Get),
        (b"NOT_STORED\r\n", Expect::Get),
        (b"VALUE k 0 x\r\n", Expect::Get),
        (b"VALUE k 0 2 x\r\n", Expect::Get),
        (b"VALUE k 0\r\n", Expect::Get),
        (b"VALUE k 0 2\r\nhiXX", Expect::Get),
        (
            b"VALUE k 0 2\r\nhi\r\nVALUE k 0 2\r\nhi\r\nEND\r\n",
            Expect::Get,
        ),
        (b"VALUE k 0 2\r\nhi\r\nFOO\r\n", Expect::Get),
        (too_big.as_bytes(), Expect::Get),
    ] {
        let mut buf = BytesMut::from(bytes);
        assert!(decode(&mut buf, expect).is_err(), "{bytes:?} accepted");
    }
}

#[test]
fn malformed_replies_say_what_is_wrong() {
    let error = |bytes: &[u8], expect| decode(&mut BytesMut::from(bytes), expect).unwrap_err();
    assert_eq!(
        error(b"STORED\r\n", Expect::Get),
        ProtocolError::Unexpected("STORED".into())
    );
    assert_eq!(
        error(b"VALUE k 0 x\r\n", Expect::Get),
        ProtocolError::BadValueLine("VALUE k 0 x".into())
    );
    assert_eq!(
        error(b"VALUE k 0 2\r\nhiXX", Expect::Get),
        ProtocolError::DataNotTerminated
    );
    assert_eq!(
        error(b"VALUE k 0 2\r\nhi\r\nVALUE k 0 2\r\n", Expect::Get),
        ProtocolError::TooManyValues
    );
}

#[test]
fn an_endless_line_is_refused_not_awaited() {
    let long = vec![b'x'; MAX_REPLY_LINE_BYTES + 10];
    for expect in [Expect::Status, Expect::Get, Expect::Stats, Expect::Meta] {
        let mut endless = BytesMut::from(&long[..]);
        assert_eq!(
            decode(&mut endless, expect),
            Err(ProtocolError::LineTooLong)
        );
        let mut partial = BytesMut::from(&long[..MAX_REPLY_LINE_BYTES]);
        assert_eq!(decode(&mut partial, expect), Ok(None));
    }
}

fn meta(code: MetaCode, flags: &'static [u8], data: Option<&'static [u8]>) -> Reply {
    Reply::Meta(Meta {
        code,
        flags: Bytes::from_static(flags),
        data: data.map(Bytes::from_static),
    })
}

#[test]
fn meta_requests_are_meta_lines_and_expect_a_meta_reply() {
    let get = Request::MetaGet {
        key: b"k",
        flags: "k v",
    };
    assert_eq!(encoded(get), b"mg k k v\r\n");
    let bare = Request::MetaGet {
        key: b"k",
        flags: "",
    };
    assert_eq!(encoded(bare), b"mg k\r\n");
    let set = Request::MetaSet {
        key: b"k",
        flags: "T0",
        head: b"HD",
        body: b"val",
    };
    assert_eq!(encoded(set), b"ms k 5 T0\r\nHDval\r\n");
    let mut out = Vec::new();
    encode_meta_set_line(&mut out, b"k2", 0, "");
    out.extend_from_slice(b"\r\n");
    assert_eq!(out, b"ms k2 0\r\n\r\n");
    for request in [get, bare, set] {
        assert_eq!(request.expect(), Expect::Meta, "{request:?}");
    }
}

#[test]
fn meta_replies_decode_with_their_code_and_flags() {
    for (bytes, reply) in [
        (&b"HD\r\n"[..], meta(MetaCode::Done, b"", None)),
        (b"HD c77 kk\r\n", meta(MetaCode::Done, b"c77 kk", None)),
        (b"EN\r\n", meta(MetaCode::Miss, b"", None)),
        (b"NS\r\n", meta(MetaCode::NotStored, b"", None)),
        (b"EX\r\n", meta(MetaCode::Exists, b"", None)),
        (b"NF Oop\r\n", meta(MetaCode::NotFound, b"Oop", None)),
        (b"MN\r\n", meta(MetaCode::NoOp, b"", None)),
        (
            b"VA 2 kk\r\nhi\r\n",
            meta(MetaCode::Value, b"kk", Some(b"hi")),
        ),
        (b"VA 0\r\n\r\n", meta(MetaCode::Value, b"", Some(b""))),
        // The length decides, not a \r\n inside the data.
        (
            b"VA 4 kk\r\n\r\nEN\r\n",
            meta(MetaCode::Value, b"kk", Some(b"\r\nEN")),
        ),
        (b"SERVER_ERROR busy\r\n", Reply::ServerError("busy".into())),
        (b"ERROR\r\n", Reply::Error),
    ] {
        assert_eq!(decoded(bytes, Expect::Meta), Some(reply), "{bytes:?}");
    }
    let status = |bytes| decoded(bytes, Expect::Meta).unwrap().status_line();
    assert_eq!(status(b"NS\r\n").as_deref(), Some("NS"));
    assert_eq!(status(b"HD  c7 kk\r\n").as_deref(), Some("HD c7 kk"));
    assert_eq!(status(b"VA 1 kk\r\nx\r\n"), None);
}

#[test]
fn a_meta_hit_reads_as_a_value_hit_with_its_flags() {
    let Some(Reply::Meta(hit_reply)) = decoded(b"VA 2 f5 kkey c9 W\r\nhi\r\n", Expect::Meta) else {
        panic!("no meta reply");
    };
    assert_eq!(hit_reply.hit(), Ok(hit(b"key", 5, 9, b"hi")));
    assert_eq!(hit_reply.flag(b'k').as_deref(), Some(&b"key"[..]));
    assert_eq!(hit_reply.flag(b'W').as_deref(), Some(&b""[..]));
    assert_eq!(hit_reply.flag(b'X'), None);
    let Some(Reply::Meta(plain)) = decoded(b"VA 1 kk\r\nx\r\n", Expect::Meta) else {
        panic!("no meta reply");
    };
    assert_eq!(plain.hit(), Ok(hit(b"k", 0, 0, b"x")));
    for (bytes, line) in [
        (&b"VA 1\r\nx\r\n"[..], "VA 1"),
        (b"VA 1 fx kk\r\nx\r\n", "VA 1 fx kk"),
        (b"VA 1 f4294967296 kk\r\nx\r\n", "VA 1 f4294967296 kk"),
        (b"VA 1 kk c-\r\nx\r\n", "VA 1 kk c-"),
        (b"HD kk\r\n", "HD kk"),
    ] {
        let Some(Reply::Meta(reply)) = decoded(bytes, Expect::Meta) else {
            panic!("no meta reply in {bytes:?}");
        };
        let want = ProtocolError::BadMetaLine(line.into());
        assert_eq!(reply.hit(), Err(want), "{bytes:?}");
    }
}

#[test]
fn a_meta_reply_split_anywhere_decodes_once_whole_and_one_at_a_time() {
    let whole = b"VA 5 kkey\r\nhello\r\n";
    for cut in 0..whole.len() {
        assert_eq!(decoded(&whole[..cut], Expect::Meta), None, "cut at {cut}");
    }
    let mut buf = BytesMut::from(&b"EN\r\nHD\r\nVA 1 ka\r\nx\r\nNS\r\n"[..]);
    let mut next = || decode(&mut buf, Expect::Meta).unwrap();
    assert_eq!(next(), Some(meta(MetaCode::Miss, b"", None)));
    assert_eq!(next(), Some(meta(MetaCode::Done, b"", None)));
    assert_eq!(next(), Some(meta(MetaCode::Value, b"ka", Some(b"x"))));
    assert_eq!(next(), Some(meta(MetaCode::NotStored, b"", None)));
    assert_eq!(next(), None);
}

#[test]
fn malformed_meta_replies_are_errors() {
    let too_big = format!("VA {} kk\r\n", MAX_VALUE_BYTES + 1);
    let error = |bytes: &[u8]| decode(&mut BytesMut::from(bytes), Expect::Meta).unwrap_err();
    for (bytes, want) in [
        (
            &b"STORED\r\n"[..],
            ProtocolError::Unexpected("STORED".into()),
        ),
        (b"END\r\n", ProtocolError::Unexpected("END".into())),
        (
            b"VALUE k 0 1\r\n",
            ProtocolError::Unexpected("VALUE k 0 1".into()),
        ),
        (
            b"ME k exp=-1\r\n",
            ProtocolError::Unexpected("ME k exp=-1".into()),
        ),
        (b"\r\n", ProtocolError::Unexpected("".into())),
        (b"VA\r\n", ProtocolError::BadMetaLine("VA".into())),
        (b"VA x kk\r\n", ProtocolError::BadMetaLine("VA x kk".into())),
        (b"VA kk\r\n", ProtocolError::BadMetaLine("VA kk".into())),
        (b"HD 5\r\n", ProtocolError::BadMetaLine("HD 5".into())),
        (b"EN =\r\n", ProtocolError::BadMetaLine("EN =".into())),
        (b"VA 2 kk\r\nhiXX", ProtocolError::DataNotTerminated),
        (
            too_big.as_bytes(),
            ProtocolError::BadMetaLine(too_big.trim_end().into()),
        ),
    ] {
        assert_eq!(error(bytes), want, "{bytes:?}");
    }
}
