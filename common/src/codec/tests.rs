use super::*;

const MAX: usize = DEFAULT_ITEM_SIZE_MAX;

/// Decodes everything in `input`, fed one chunk at a time.
fn decode_chunks(chunks: &[&[u8]]) -> (Vec<Request>, Result<(), DecodeError>, usize) {
    let mut decoder = Decoder::new(MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => break,
                Err(e) => return (out, Err(e), buf.len()),
            }
        }
    }
    (out, Ok(()), buf.len())
}

fn decode_all(input: &[u8]) -> Vec<Request> {
    let (reqs, res, left) = decode_chunks(&[input]);
    res.unwrap();
    assert_eq!(left, 0, "undecoded bytes left");
    reqs
}

fn reply(r: Response) -> Request {
    Request {
        command: Command::Reply(r),
        noreply: false,
    }
}

fn set(key: &str, value: &str) -> Command {
    Command::Store {
        mode: StoreMode::Set,
        key: Bytes::copy_from_slice(key.as_bytes()),
        flags: 0,
        exptime: 0,
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

#[test]
fn a_request_split_anywhere_decodes_the_same() {
    let input = b"set k 0 0 5\r\nhello\r\nget k\r\n";
    let whole = decode_all(input);
    assert_eq!(whole.len(), 2);
    assert_eq!(whole[0].command, set("k", "hello"));
    for cut in 1..input.len() {
        let (reqs, res, left) = decode_chunks(&[&input[..cut], &input[cut..]]);
        res.unwrap();
        assert_eq!((reqs, left), (whole.clone(), 0), "cut at {cut}");
    }
}

#[test]
fn pipelined_requests_come_out_in_order() {
    let reqs = decode_all(b"get a b\r\ndelete a\r\nincr n 5\nversion\r\n");
    let cmds: Vec<_> = reqs.into_iter().map(|r| r.command).collect();
    assert!(matches!(&cmds[0], Command::Get { keys, with_cas: false } if keys.len() == 2));
    assert!(matches!(&cmds[1], Command::Delete { key } if &key[..] == b"a"));
    assert!(matches!(&cmds[2], Command::Incr { delta: 5, .. }));
    assert_eq!(cmds[3], Command::Version);
}

#[test]
fn wrong_token_counts_are_error_even_with_noreply() {
    for line in [
        &b"set k 0 0\r\n"[..],
        b"set k 0 0 1 noreply x\r\n",
        b"get\r\n",
        b"incr\r\n",
        b"x\r\n",
        b"\r\n",
    ] {
        let reqs = decode_all(line);
        assert_eq!(reqs, vec![reply(Response::Error)], "{:?}", line);
    }
}

#[test]
fn a_malformed_storage_line_leaves_its_data_to_be_read_as_a_command() {
    let reqs = decode_all(b"set k abc 0 1\r\nx\r\n");
    assert_eq!(
        reqs,
        vec![
            reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT)),
            reply(Response::Error)
        ]
    );
}

#[test]
fn a_data_block_without_crlf_is_a_bad_chunk() {
    let reqs = decode_all(b"set k 0 0 3\r\nabcde\r\n");
    assert_eq!(
        reqs,
        vec![
            reply(Response::ClientError(CLIENT_ERROR_BAD_CHUNK)),
            reply(Response::Error)
        ]
    );
}

#[test]
fn noreply_silences_errors_after_the_token_count_check() {
    let reqs = decode_all(b"set k 0 0 3 noreply\r\nabcde\r\n");
    assert!(reqs[0].noreply);
    assert_eq!(reqs[1], reply(Response::Error));
    let reqs = decode_all(b"delete k noreply\r\n");
    assert!(reqs[0].noreply);
}

#[test]
fn a_too_large_value_is_refused_and_discarded_as_it_arrives() {
    let len = MAX;
    let header = format!("set k 0 0 {len}\r\n");
    let data = vec![b'x'; len];
    let (reqs, res, left) = decode_chunks(&[
        header.as_bytes(),
        &data[..1000],
        &data[1000..],
        b"\r\nget k\r\n",
    ]);
    res.unwrap();
    assert_eq!(left, 0);
    // A `set` also drops the key's old value, as memcached does; other modes only refuse.
    assert_eq!(
        reqs[0].command,
        Command::SetTooLarge {
            key: Bytes::from_static(b"k"),
            causal_flag: false,
        }
    );
    assert!(matches!(reqs[1].command, Command::Get { .. }));
    let header = format!("add k 0 0 {len}\r\n");
    let (reqs, res, _) = decode_chunks(&[header.as_bytes(), &data, b"\r\n"]);
    res.unwrap();
    assert_eq!(
        reqs[0],
        reply(Response::ServerError(SERVER_ERROR_TOO_LARGE))
    );
}

#[test]
fn item_size_counts_like_memcached() {
    // Measured against memcached 1.6: with a 1-byte key, 1048516 bytes fit and 1048517 do not.
    assert!(item_fits(1, 0, 1_048_516, MAX));
    assert!(!item_fits(1, 0, 1_048_517, MAX));
    assert!(item_fits(100, 0, 1_048_417, MAX));
    assert!(!item_fits(100, 0, 1_048_418, MAX));
}

#[test]
fn item_size_is_memcacheds_item_ntotal() {
    // As memcached 1.6.18's `lru_crawler metadump` reported these items' sizes.
    assert_eq!(item_size(1, 0, 1), 61);
    assert_eq!(item_size(5, 5, 3), 71);
    assert_eq!(item_size(1, 0, 0), 60);
    assert_eq!(item_size(3, 1, 16_000), 16_066);
    assert_eq!(item_size(3, 0, 600_000), 600_062);
}

#[test]
fn keys_over_250_bytes_are_refused() {
    let long = "a".repeat(251);
    for line in [
        format!("get a {long}\r\n"),
        format!("delete {long}\r\n"),
        format!("touch {long} 1\r\n"),
        format!("incr {long} 1\r\n"),
    ] {
        let reqs = decode_all(line.as_bytes());
        assert_eq!(
            reqs,
            vec![reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT))],
            "{line:?}"
        );
    }
    assert!(valid_key("a".repeat(250).as_bytes()));
    assert!(valid_key(&[0x10; 250]));
    assert!(!valid_key(&[0x10; 251]));
}

/// memcached 1.6.18 stores a key of any bytes but the ones that end a token or the line, as
/// measured against it: control characters, tab, DEL, `\r` inside a key and high bytes.
#[test]
fn keys_hold_any_byte_but_space_nul_and_newline() {
    let keys: [&[u8]; 8] = [
        b"\x10\x10\x10\x10QHYg2vgu",
        b"a\x01b",
        b"t\tab",
        b"\x7f",
        b"h\x80\xff",
        b"r\rs",
        b"\x1b\x0b\x0c",
        &[0x10; 250],
    ];
    for key in keys {
        let line = |cmd: &str, rest: &str| [cmd.as_bytes(), key, rest.as_bytes()].concat();
        let input = [
            line("set ", " 0 0 1\r\nx\r\n"),
            line("get ", "\r\n"),
            line("incr ", " 1\r\n"),
            line("delete ", "\r\n"),
        ]
        .concat();
        let cmds: Vec<Command> = decode_all(&input).into_iter().map(|r| r.command).collect();
        let k = Bytes::copy_from_slice(key);
        assert!(
            matches!(&cmds[0], Command::Store { key, .. } if *key == k),
            "{key:?}: {cmds:?}"
        );
        assert_eq!(
            cmds[1..],
            [
                Command::Get {
                    keys: vec![k.clone()],
                    with_cas: false
                },
                Command::Incr {
                    key: k.clone(),
                    delta: 1
                },
                Command::Delete { key: k },
            ],
            "{key:?}"
        );
    }
    // A tab separates nothing: `get a\tb` asks for one key.
    let reqs = decode_all(b"get a\tb c\r\n");
    assert!(matches!(&reqs[0].command, Command::Get { keys, .. } if keys.len() == 2));
    // A key may end in `\r` when the line ends in `\r\r\n`: one `\r` belongs to the line end.
    let reqs = decode_all(b"get k\r\r\n");
    assert!(matches!(&reqs[0].command, Command::Get { keys, .. } if &keys[0][..] == b"k\r"));
}

/// memcached reads a line as a C string: a NUL ends it, and what follows is never looked at.
#[test]
fn a_nul_byte_ends_the_line() {
    let reqs = decode_all(b"get a\x00b c\r\n");
    assert!(
        matches!(&reqs[0].command, Command::Get { keys, .. } if keys == &[Bytes::from_static(b"a")])
    );
    // `set n` alone has too few tokens; its data line is then an unknown command.
    let reqs = decode_all(b"set n\x00m 0 0 1\r\nx\r\n");
    assert_eq!(reqs, vec![reply(Response::Error), reply(Response::Error)]);
    // What follows the NUL, `noreply` too, is not seen.
    let reqs = decode_all(b"set k 0 0 1 no\x00reply\r\nx\r\n");
    assert!(!reqs[0].noreply);
    assert!(matches!(&reqs[0].command, Command::Store { .. }));
    assert_eq!(decode_all(b"\x00\r\n"), vec![reply(Response::Error)]);
    assert!(sendable_key(b"a\x01\rb"));
    for unsendable in [&b""[..], b"a b", b"a\x00", b"a\nb", &[b'k'; 251]] {
        assert!(!sendable_key(unsendable), "{unsendable:?}");
    }
}

#[test]
fn an_over_long_line_closes_but_a_long_multiget_may_continue() {
    let (_, res, _) = decode_chunks(&[&[b'x'; MAX_LINE_BYTES + 1]]);
    assert_eq!(res, Err(DecodeError::LineTooLong));

    let mut get = b"get ".to_vec();
    get.extend(std::iter::repeat_n(&b"key "[..], 1000).flatten());
    let (reqs, res, _) = decode_chunks(&[&get, b"\r\n"]);
    res.unwrap();
    assert!(matches!(&reqs[0].command, Command::Get { keys, .. } if keys.len() == 1000));

    let endless = vec![b'k'; MAX_RETRIEVAL_LINE_BYTES];
    let (_, res, _) = decode_chunks(&[b"get ", &endless]);
    assert_eq!(res, Err(DecodeError::LineTooLong));
}

#[test]
fn http_on_the_memcached_port_closes() {
    let (_, res, _) = decode_chunks(&[b"GET / HTTP/1.1\r\n"]);
    assert_eq!(res, Err(DecodeError::Http));
}

#[test]
fn cas_and_touch_arguments_are_parsed() {
    let reqs = decode_all(b"cas k 1 2 1 99 noreply\r\nx\r\ngats 10 a b\r\ntouch a -1\r\n");
    assert!(reqs[0].noreply);
    assert!(matches!(
        reqs[0].command,
        Command::Store {
            mode: StoreMode::Cas(99),
            flags: 1,
            exptime: 2,
            ..
        }
    ));
    assert!(matches!(
        &reqs[1].command,
        Command::GetAndTouch { exptime: 10, keys, with_cas: true } if keys.len() == 2
    ));
    assert!(matches!(
        reqs[2].command,
        Command::Touch { exptime: -1, .. }
    ));
}

#[test]
fn flush_all_verbosity_and_memlimit_follow_memcached() {
    let reqs = decode_all(
        b"flush_all\r\nflush_all 10 noreply\r\nflush_all abc\r\nverbosity abc\r\n\
          cache_memlimit 2\r\ncache_memlimit 64\r\nstats detail\r\nstats foo\r\n",
    );
    let cmds: Vec<_> = reqs.iter().map(|r| r.command.clone()).collect();
    assert_eq!(cmds[0], Command::FlushAll { delay: 0 });
    assert_eq!(cmds[1], Command::FlushAll { delay: 10 });
    assert!(reqs[1].noreply);
    assert_eq!(
        cmds[2],
        Command::Reply(Response::ClientError("invalid exptime argument"))
    );
    assert_eq!(
        cmds[3],
        Command::Reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT))
    );
    assert!(matches!(cmds[4], Command::Reply(Response::Line(_))));
    assert_eq!(cmds[5], Command::CacheMemlimit { megabytes: 64 });
    assert!(matches!(cmds[6], Command::Reply(Response::ClientError(_))));
    assert_eq!(cmds[7], Command::Reply(Response::Error));
}

#[test]
fn stats_cachedump_checks_its_arguments_like_memcached() {
    let cmds: Vec<_> = decode_all(
        b"stats cachedump\r\nstats cachedump 1 x\r\nstats cachedump 64 0\r\nstats cachedump 63 0\r\n",
    )
    .into_iter()
    .map(|r| r.command)
    .collect();
    assert_eq!(
        cmds,
        vec![
            Command::Reply(Response::ClientError("bad command line")),
            Command::Reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT)),
            Command::Reply(Response::ClientError("Illegal slab id")),
            Command::Stats(StatsGroup::Empty),
        ]
    );
}

/// Each `lru_crawler` line and what memcached 1.6.18 (crawler running) answers it.
#[test]
fn lru_crawler_is_answered_like_memcached() {
    let dump = |classes| Command::Metadump { classes };
    let (all, one, one_two) = (u64::MAX, 1u64 << 1, (1u64 << 1) | (1 << 2));
    let line = |text| Command::Reply(Response::Line(text));
    let bad_class = line("BADCLASS invalid class id");
    let not_started = line("NOTSTARTED no items to crawl");
    let ok = Command::Reply(Response::Ok);
    let error = Command::Reply(Response::Error);
    let bad_format = Command::Reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT));
    let cases: Vec<(&str, Command)> = vec![
        ("lru_crawler metadump all", dump(all)),
        ("lru_crawler metadump hash", dump(all)),
        ("lru_crawler   metadump  hash  ", dump(all)),
        ("lru_crawler metadump 1", dump(one)),
        ("lru_crawler metadump 2,1", dump(one_two)),
        ("lru_crawler metadump ,,1,", dump(one)),
        ("lru_crawler metadump +1", dump(one)),
        ("lru_crawler metadump 4294967297", dump(one)),
        ("lru_crawler metadump 2", dump(1 << 2)),
        ("lru_crawler metadump 63", dump(1 << 63)),
        ("lru_crawler metadump 0", bad_class.clone()),
        ("lru_crawler metadump 64", bad_class.clone()),
        ("lru_crawler metadump 1,x", bad_class.clone()),
        ("lru_crawler metadump -1", bad_class.clone()),
        ("lru_crawler metadump HASH", bad_class.clone()),
        ("lru_crawler metadump ALL", bad_class.clone()),
        ("lru_crawler metadump ,", not_started.clone()),
        ("lru_crawler metadump", error.clone()),
        ("lru_crawler metadump all noreply", error.clone()),
        ("lru_crawler", error.clone()),
        ("lru_crawler mgdump all", error.clone()),
        ("lru_crawler mgdump hash", error.clone()),
        ("lru_crawler foo", error.clone()),
        ("lru_crawler foo bar", error.clone()),
        ("lru_crawler foo bar baz", error.clone()),
        ("lru_crawler crawl", error.clone()),
        ("lru_crawler crawl all", ok.clone()),
        ("lru_crawler crawl 1,2", ok.clone()),
        (
            "lru_crawler crawl hash",
            line("ERROR an unknown error happened"),
        ),
        ("lru_crawler crawl 0", bad_class.clone()),
        ("lru_crawler crawl ,", not_started.clone()),
        ("lru_crawler tocrawl 5", ok.clone()),
        ("lru_crawler tocrawl x", bad_format.clone()),
        ("lru_crawler tocrawl -1", bad_format.clone()),
        ("lru_crawler sleep 1000000", ok.clone()),
        ("lru_crawler sleep 4294967297", ok.clone()),
        (
            "lru_crawler sleep 1000001",
            Command::Reply(Response::ClientError("sleep must be one second or less")),
        ),
        ("lru_crawler sleep x", bad_format.clone()),
        (
            "lru_crawler enable",
            line("ERROR failed to start lru crawler thread"),
        ),
        ("lru_crawler enable x", error.clone()),
        (
            "lru_crawler disable",
            line("ERROR failed to stop lru crawler thread"),
        ),
    ];
    for (text, expected) in cases {
        let reqs = decode_all(format!("{text}\r\n").as_bytes());
        let expected = Request {
            command: expected,
            noreply: false,
        };
        assert_eq!(reqs, vec![expected], "{text:?}");
    }
}
