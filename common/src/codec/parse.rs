//! One request line to a [`Parsed`] request, following memcached's `process_command_ascii`.
//!
//! The line is split on spaces (runs of spaces count as one; tabs are not separators), and at
//! most 23 tokens are looked at, as memcached does. Token counts below are memcached's
//! `ntokens`: the real tokens plus one. A wrong count answers `ERROR` before `noreply` is
//! looked at; after that, `noreply` (the last token) silences every reply, errors included.

use bytes::Bytes;

use super::number::{strtol_i32, strtoul_u32, strtoull};
use super::response::{CLIENT_ERROR_BAD_FORMAT, SERVER_ERROR_TOO_LARGE};
use super::{Command, DecodeError, Request, Response, StatsGroup, StoreMode};

/// The longest key memcached accepts.
pub const KEY_MAX_BYTES: usize = 250;

/// memcached's `MAX_TOKENS`: 23 tokens and a terminator.
const MAX_TOKENS: usize = 24;

/// What a line turned into.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A complete request.
    Done(Request),
    /// A storage command waiting for its data block.
    NeedData(PendingStore),
    /// A reply, after which this many bytes (a rejected data block) are discarded.
    Swallow(Request, usize),
}

/// A storage command whose line has been parsed.
#[derive(Debug)]
pub(crate) struct PendingStore {
    pub mode: StoreMode,
    pub key: Bytes,
    pub flags: u32,
    pub exptime: i32,
    pub len: usize,
    pub noreply: bool,
}

/// A key is at most 250 bytes and has no control characters. (memcached itself lets control
/// characters through in the text protocol; the protocol forbids them, and so do we.)
pub fn valid_key(key: &[u8]) -> bool {
    key.len() <= KEY_MAX_BYTES && !key.iter().any(|&b| b < 0x20 || b == 0x7f)
}

/// Whether an item fits in `item_size_max`, counted as memcached counts it: a 48-byte header,
/// an 8-byte CAS, 4 bytes of flags when they are not 0, the key and a NUL, the data and its
/// `\r\n`. The same values fit here as in memcached.
pub fn item_fits(key_len: usize, flags: u32, value_len: usize, item_size_max: usize) -> bool {
    let flags_len = if flags == 0 { 0 } else { 4 };
    48 + 8 + flags_len + key_len + 1 + value_len + 2 <= item_size_max
}

struct Tokens<'a> {
    toks: [&'a [u8]; MAX_TOKENS - 1],
    n: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut toks: [&[u8]; MAX_TOKENS - 1] = [&[]; MAX_TOKENS - 1];
        let mut n = 0;
        for tok in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            if n == toks.len() {
                break;
            }
            toks[n] = tok;
            n += 1;
        }
        Tokens { toks, n }
    }

    /// memcached's `ntokens`: the tokens plus the terminator.
    fn ntokens(&self) -> usize {
        self.n + 1
    }

    /// memcached's `set_noreply_maybe`: the last token is `noreply`.
    fn noreply(&self) -> bool {
        self.toks[self.n - 1] == b"noreply"
    }
}

fn done(command: Command, noreply: bool) -> Result<Parsed, DecodeError> {
    Ok(Parsed::Done(Request { command, noreply }))
}

fn reply(response: Response, noreply: bool) -> Result<Parsed, DecodeError> {
    done(Command::Reply(response), noreply)
}

fn error() -> Result<Parsed, DecodeError> {
    reply(Response::Error, false)
}

/// Parses one request line (without its line ending).
pub(crate) fn parse_line(line: &[u8], item_size_max: usize) -> Result<Parsed, DecodeError> {
    let t = Tokens::new(line);
    if t.n == 0 || t.toks[0].len() < 2 {
        return error();
    }
    let nt = t.ntokens();
    let want = |ok: bool| if ok { Ok(()) } else { Err(()) };
    let checked = match t.toks[0] {
        b"get" | b"bget" | b"gets" | b"gat" | b"gats" => {
            want(nt >= 3).map(|_| retrieval(line, t.toks[0]))
        }
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => {
            want(nt == 6 || nt == 7).map(|_| storage(&t, false, item_size_max))
        }
        b"cas" => want(nt == 7 || nt == 8).map(|_| storage(&t, true, item_size_max)),
        b"incr" | b"decr" => want(nt == 4 || nt == 5).map(|_| arithmetic(&t)),
        b"delete" => want((3..=5).contains(&nt)).map(|_| delete(&t)),
        b"touch" => want(nt == 4 || nt == 5).map(|_| touch(&t)),
        b"flush_all" => want((2..=4).contains(&nt)).map(|_| flush_all(&t)),
        b"verbosity" => want(nt == 3 || nt == 4).map(|_| verbosity(&t)),
        b"cache_memlimit" => want(nt == 3 || nt == 4).map(|_| cache_memlimit(&t)),
        b"stats" => Ok(stats(&t)),
        b"version" => Ok(done(Command::Version, false)),
        b"quit" => Ok(done(Command::Quit, false)),
        b"shutdown" => Ok(reply(Response::Line("ERROR: shutdown not enabled"), false)),
        _ => Ok(unknown(&t)),
    };
    checked.unwrap_or_else(|()| error())
}

/// An unknown command: `ERROR`, except that what looks like an HTTP request closes the
/// connection, as in memcached. memcached only looks for HTTP on lines whose first letter
/// does not start one of its common commands.
fn unknown(t: &Tokens) -> Result<Parsed, DecodeError> {
    let first = t.toks[0][0];
    let meta = first == b'm' && t.toks[0].len() == 2;
    if !meta && !b"gsacidt".contains(&first) && t.toks[t.n - 1].starts_with(b"HTTP/") {
        return Err(DecodeError::Http);
    }
    error()
}

/// `get`/`gets`/`gat`/`gats`: every key on the line, however many.
fn retrieval(line: &[u8], name: &[u8]) -> Result<Parsed, DecodeError> {
    let touch = name.starts_with(b"gat");
    let with_cas = name.ends_with(b"s");
    let mut words = line.split(|&b| b == b' ').filter(|t| !t.is_empty()).skip(1);
    let exptime = if touch {
        match words.next().and_then(strtol_i32) {
            Some(e) => e,
            None => return reply(Response::ClientError("invalid exptime argument"), false),
        }
    } else {
        0
    };
    let mut keys = Vec::new();
    for key in words {
        if !valid_key(key) {
            return reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), false);
        }
        keys.push(Bytes::copy_from_slice(key));
    }
    let command = if touch {
        Command::GetAndTouch {
            exptime,
            keys,
            with_cas,
        }
    } else {
        Command::Get { keys, with_cas }
    };
    done(command, false)
}

/// `set|add|replace|append|prepend <key> <flags> <exptime> <bytes> [noreply]` and
/// `cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]`.
fn storage(t: &Tokens, is_cas: bool, item_size_max: usize) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    let bad = || reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), noreply);
    let key = t.toks[1];
    if !valid_key(key) {
        return bad();
    }
    let (Some(flags), Some(exptime), Some(len)) = (
        strtoul_u32(t.toks[2]),
        strtol_i32(t.toks[3]),
        strtol_i32(t.toks[4]),
    ) else {
        return bad();
    };
    let mode = if is_cas {
        match strtoull(t.toks[5]) {
            Some(unique) => StoreMode::Cas(unique),
            None => return bad(),
        }
    } else {
        match t.toks[0] {
            b"set" => StoreMode::Set,
            b"add" => StoreMode::Add,
            b"replace" => StoreMode::Replace,
            b"append" => StoreMode::Append,
            _ => StoreMode::Prepend,
        }
    };
    // memcached refuses lengths above INT_MAX - 2, where adding the `\r\n` would overflow.
    if !(0..=i32::MAX - 2).contains(&len) {
        return bad();
    }
    let len = len as usize;
    if !item_fits(key.len(), flags, len, item_size_max) {
        let request = Request {
            command: Command::Reply(Response::ServerError(SERVER_ERROR_TOO_LARGE)),
            noreply,
        };
        return Ok(Parsed::Swallow(request, len + 2));
    }
    Ok(Parsed::NeedData(PendingStore {
        mode,
        key: Bytes::copy_from_slice(key),
        flags,
        exptime,
        len,
        noreply,
    }))
}

/// `incr|decr <key> <delta> [noreply]`.
fn arithmetic(t: &Tokens) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    let key = t.toks[1];
    if !valid_key(key) {
        return reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), noreply);
    }
    let Some(delta) = strtoull(t.toks[2]) else {
        return reply(
            Response::ClientError("invalid numeric delta argument"),
            noreply,
        );
    };
    let key = Bytes::copy_from_slice(key);
    if t.toks[0] == b"incr" {
        done(Command::Incr { key, delta }, noreply)
    } else {
        done(Command::Decr { key, delta }, noreply)
    }
}

/// `delete <key> [0] [noreply]`: the old hold time is accepted only as `0`.
fn delete(t: &Tokens) -> Result<Parsed, DecodeError> {
    let nt = t.ntokens();
    let mut noreply = false;
    if nt > 3 {
        let hold_is_zero = t.toks[2] == b"0";
        noreply = t.noreply();
        let valid = (nt == 4 && (hold_is_zero || noreply)) || (nt == 5 && hold_is_zero && noreply);
        if !valid {
            return reply(
                Response::ClientError("bad command line format.  Usage: delete <key> [noreply]"),
                noreply,
            );
        }
    }
    let key = t.toks[1];
    if !valid_key(key) {
        return reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), noreply);
    }
    let key = Bytes::copy_from_slice(key);
    done(Command::Delete { key }, noreply)
}

/// `touch <key> <exptime> [noreply]`.
fn touch(t: &Tokens) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    let key = t.toks[1];
    if !valid_key(key) {
        return reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), noreply);
    }
    let Some(exptime) = strtol_i32(t.toks[2]) else {
        return reply(Response::ClientError("invalid exptime argument"), noreply);
    };
    let key = Bytes::copy_from_slice(key);
    done(Command::Touch { key, exptime }, noreply)
}

/// `flush_all [delay] [noreply]`.
fn flush_all(t: &Tokens) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    let mut delay = 0;
    if t.ntokens() != if noreply { 3 } else { 2 } {
        match strtol_i32(t.toks[1]) {
            Some(d) => delay = d,
            None => return reply(Response::ClientError("invalid exptime argument"), noreply),
        }
    }
    done(Command::FlushAll { delay }, noreply)
}

/// `verbosity <level> [noreply]`: there are no verbosity levels here; logging is set with
/// `RUST_LOG`. The level must still be a number.
fn verbosity(t: &Tokens) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    match strtoul_u32(t.toks[1]) {
        Some(_) => done(Command::Verbosity, noreply),
        None => reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), noreply),
    }
}

/// `cache_memlimit <megabytes> [noreply]`, with memcached's bounds and wording.
fn cache_memlimit(t: &Tokens) -> Result<Parsed, DecodeError> {
    let noreply = t.noreply();
    match strtoul_u32(t.toks[1]) {
        None => reply(Response::Error, noreply),
        Some(mb) if mb < 8 => reply(
            Response::Line("MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"),
            noreply,
        ),
        Some(mb) if mb > 1_000_000_000 => reply(
            Response::Line("MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes"),
            noreply,
        ),
        Some(megabytes) => done(Command::CacheMemlimit { megabytes }, noreply),
    }
}

/// `stats [group]`.
fn stats(t: &Tokens) -> Result<Parsed, DecodeError> {
    if t.n == 1 {
        return done(Command::Stats(StatsGroup::General), false);
    }
    let group = match t.toks[1] {
        b"reset" => StatsGroup::Reset,
        b"settings" => StatsGroup::Settings,
        b"items" | b"slabs" | b"sizes" | b"conns" => StatsGroup::Empty,
        b"cachedump" => return cachedump(t),
        b"detail" => {
            return match t.toks.get(2).filter(|_| t.n >= 3).copied() {
                Some(b"on") | Some(b"off") => reply(Response::Ok, false),
                Some(b"dump") => reply(Response::End, false),
                _ => reply(
                    Response::ClientError("usage: stats detail on|off|dump"),
                    false,
                ),
            };
        }
        _ => return error(),
    };
    done(Command::Stats(group), false)
}

/// memcached's `MAX_NUMBER_OF_SLAB_CLASSES`: `stats cachedump` refuses class ids from here up.
const SLAB_CLASSES: u32 = 64;

/// `stats cachedump <class> <limit>`: there are no slab classes here, so a valid request lists
/// nothing; the arguments are still checked as memcached checks them.
fn cachedump(t: &Tokens) -> Result<Parsed, DecodeError> {
    if t.ntokens() < 5 {
        return reply(Response::ClientError("bad command line"), false);
    }
    match (strtoul_u32(t.toks[2]), strtoul_u32(t.toks[3])) {
        (Some(id), Some(_)) if id >= SLAB_CLASSES => {
            reply(Response::ClientError("Illegal slab id"), false)
        }
        (Some(_), Some(_)) => done(Command::Stats(StatsGroup::Empty), false),
        _ => reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), false),
    }
}
