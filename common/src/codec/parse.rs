//! One request line to a [`Parsed`] request, following memcached's `process_command_ascii`.
//!
//! The line ends at its first NUL byte, as memcached reads it (a C string: what follows a NUL
//! is never looked at). It is split on spaces alone (runs of spaces count as one; tabs and
//! other control characters are not separators), and at most 23 tokens are looked at, as
//! memcached does. Token counts below are memcached's `ntokens`: the real tokens plus one. A
//! wrong count answers `ERROR` before `noreply` is looked at; after that, `noreply` (the last
//! token) silences every reply, errors included.
//!
//! So a key is any run of bytes other than space, NUL and `\n`, of at most 250 bytes:
//! control characters, `\r` inside a key, DEL and bytes above 0x7f included, exactly what
//! memcached 1.6 stores in its text protocol.

use bytes::Bytes;

use super::meta::MetaRequest;
use super::number::{strtol_i32, strtoul_u32, strtoull};
use super::response::{
    CLIENT_ERROR_BAD_FORMAT, CLIENT_ERROR_FLUSH_DISABLED, SERVER_ERROR_TOO_LARGE,
};
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
    /// An `ms`: the data completes this request.
    pub meta: Option<Box<MetaRequest>>,
}

/// Whether a key token is accepted: at most 250 bytes, whatever they are. This is memcached
/// 1.6's only check in the text protocol; the tokenizer has already kept spaces, NUL and `\n`
/// out of every token. (`protocol.txt` says keys hold no control characters, but memcached
/// stores them, and clients such as memcaslap send them.)
pub fn valid_key(key: &[u8]) -> bool {
    key.len() <= KEY_MAX_BYTES
}

/// Whether `key` can be sent in a request line and read back by a memcached-protocol server
/// as this same key: not empty, at most 250 bytes, and no byte that ends a token or the line
/// (space, NUL, `\n`). Every key a client can send passes; the check is for code that sends
/// keys it did not parse itself (the remote datalet).
pub fn sendable_key(key: &[u8]) -> bool {
    !key.is_empty() && valid_key(key) && !key.iter().any(|&b| matches!(b, b' ' | b'\n' | 0))
}

/// Whether an item fits in `item_size_max`, counted as memcached counts it: a 48-byte header,
/// an 8-byte CAS, 4 bytes of flags when they are not 0, the key and a NUL, the data and its
/// `\r\n`. The same values fit here as in memcached.
pub fn item_fits(key_len: usize, flags: u32, value_len: usize, item_size_max: usize) -> bool {
    item_size(key_len, flags, value_len) <= item_size_max
}

/// An item's size as memcached counts it (its `ITEM_ntotal`, which `lru_crawler metadump`
/// reports as `size=`): a 48-byte header, an 8-byte CAS, 4 bytes of flags when they are not 0,
/// the key and a NUL, the data and its `\r\n`.
pub fn item_size(key_len: usize, flags: u32, value_len: usize) -> usize {
    let flags_len = if flags == 0 { 0 } else { 4 };
    48 + 8 + flags_len + key_len + 1 + value_len + 2
}

pub(crate) struct Tokens<'a> {
    pub toks: [&'a [u8]; MAX_TOKENS - 1],
    pub n: usize,
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
    pub fn ntokens(&self) -> usize {
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
pub(crate) fn parse_line(
    line: &[u8],
    item_size_max: usize,
    flush_enabled: bool,
) -> Result<Parsed, DecodeError> {
    let line = until_nul(line);
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
        // With `-F`, memcached refuses before it reads the arguments.
        b"flush_all" if !flush_enabled => want((2..=4).contains(&nt)).map(|_| {
            reply(
                Response::ClientError(CLIENT_ERROR_FLUSH_DISABLED),
                t.noreply(),
            )
        }),
        b"flush_all" => want((2..=4).contains(&nt)).map(|_| flush_all(&t)),
        b"verbosity" => want(nt == 3 || nt == 4).map(|_| verbosity(&t)),
        b"cache_memlimit" => want(nt == 3 || nt == 4).map(|_| cache_memlimit(&t)),
        b"stats" => Ok(stats(&t)),
        b"lru_crawler" => Ok(lru_crawler(&t)),
        b"slabs" => Ok(slabs(&t)),
        // memcached honours `noreply` only with TLS on: the executor knows.
        b"refresh_certs" => Ok(done(
            Command::RefreshCerts {
                noreply: t.noreply(),
            },
            false,
        )),
        b"version" => Ok(done(Command::Version, false)),
        b"quit" => Ok(done(Command::Quit, false)),
        b"shutdown" => Ok(done(
            Command::Shutdown {
                valid: nt == 2 || (nt == 3 && t.toks[1] == b"graceful"),
            },
            false,
        )),
        [b'm', _] => Ok(super::meta::meta(&t, item_size_max)),
        _ => Ok(unknown(&t)),
    };
    checked.unwrap_or_else(|()| error())
}

/// The line up to its first NUL byte, where memcached's `strlen` stops reading it.
fn until_nul(line: &[u8]) -> &[u8] {
    match line.iter().position(|&b| b == 0) {
        Some(nul) => &line[..nul],
        None => line,
    }
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
        // memcached drops the old value of a `set` it cannot store, so that no reader sees
        // what the writer meant to replace.
        let command = match mode {
            StoreMode::Set => Command::SetTooLarge {
                key: Bytes::copy_from_slice(key),
                causal_flag: false,
            },
            _ => Command::Reply(Response::ServerError(SERVER_ERROR_TOO_LARGE)),
        };
        let request = Request { command, noreply };
        return Ok(Parsed::Swallow(request, len + 2));
    }
    Ok(Parsed::NeedData(PendingStore {
        mode,
        key: Bytes::copy_from_slice(key),
        flags,
        exptime,
        len,
        noreply,
        meta: None,
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
        b"placement" => StatsGroup::Placement,
        b"sizes" => StatsGroup::Sizes,
        b"conns" => StatsGroup::Conns,
        b"items" => StatsGroup::Items,
        b"slabs" => StatsGroup::Slabs,
        b"cachedump" => return cachedump(t),
        b"detail" => match t.toks.get(2).filter(|_| t.n >= 3).copied() {
            Some(b"on") => StatsGroup::Detail(true),
            Some(b"off") => StatsGroup::Detail(false),
            Some(b"dump") => StatsGroup::DetailDump,
            _ => {
                return reply(
                    Response::ClientError("usage: stats detail on|off|dump"),
                    false,
                )
            }
        },
        _ => return error(),
    };
    done(Command::Stats(group), false)
}

/// The largest slab class id memcached 1.6 has with its defaults (growth factor 1.25, chunks
/// from 96 bytes to 512 KiB: classes 1 to 39); `slabs reassign` takes ids from 0 (its global
/// page pool) to this.
const LARGEST_SLAB_CLASS: i32 = 39;

/// `slabs reassign <src> <dst>` and `slabs automove <level>|ratio <r>`, answered as
/// memcached 1.6.18 answers them. There are no slab pages here to move between classes: a
/// valid reassignment answers memcached's `NOSPARE source class has no spare pages`, and an
/// automove setting is taken (`OK`) and changes nothing. `reassign` has no `noreply`;
/// `automove` has.
fn slabs(t: &Tokens) -> Result<Parsed, DecodeError> {
    let nt = t.ntokens();
    let line = |text: &'static str| reply(Response::Line(text), false);
    if nt == 5 && t.toks[1] == b"reassign" {
        let (Some(src), Some(dst)) = (strtol_i32(t.toks[2]), strtol_i32(t.toks[3])) else {
            return reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), false);
        };
        let class = 0..=LARGEST_SLAB_CLASS;
        return if src == dst {
            line("SAME src and dst class are identical")
        } else if !class.contains(&src) || !class.contains(&dst) {
            // (A source of -1 asks memcached to pick a class with spare pages: there is none.)
            line("BADCLASS invalid src or dst class id")
        } else {
            line("NOSPARE source class has no spare pages")
        };
    }
    if nt >= 4 && t.toks[1] == b"automove" {
        let noreply = t.noreply();
        if t.toks[2] == b"ratio" {
            let ratio = t
                .toks
                .get(3)
                .filter(|_| nt >= 5)
                .and_then(|r| std::str::from_utf8(r).ok()?.parse::<f64>().ok());
            let answer = if ratio.is_some() {
                Response::Ok
            } else {
                Response::Error
            };
            return reply(answer, noreply);
        }
        let answer = match strtoul_u32(t.toks[2]) {
            None => Response::ClientError(CLIENT_ERROR_BAD_FORMAT),
            Some(0..=2) => Response::Ok,
            Some(_) => Response::Error,
        };
        return reply(answer, noreply);
    }
    error()
}

/// memcached's `MAX_NUMBER_OF_SLAB_CLASSES`: `stats cachedump` refuses class ids from here up,
/// and `lru_crawler` takes ids from 1 up to below it.
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

/// `lru_crawler <subcommand> [<arg>]`, answered as memcached 1.6.18 answers it with its LRU
/// crawler running (its default), word for word:
///
/// - `metadump all|hash|<class ids>` lists the items ([`Command::Metadump`]). Class ids are a
///   comma-separated list of numbers from 1 to 63; anything else is `BADCLASS invalid class
///   id`, and a list with no id at all (`,`) is `NOTSTARTED no items to crawl`.
/// - `crawl <class ids>|all` asks memcached to reclaim expired items. Here an expired item is
///   never served and the datalet reclaims it on its own, so a valid request does nothing and
///   answers `OK`; the ids are checked as for `metadump`, and `crawl hash` is refused with
///   memcached's `ERROR an unknown error happened`.
/// - `tocrawl <n>` and `sleep <microseconds>` tune memcached's crawler; there is none to tune:
///   the number is checked as memcached checks it and `OK` answered.
/// - `enable` answers what memcached answers when its crawler already runs, `ERROR failed to
///   start lru crawler thread`; `disable` cannot stop a dump that is always available and
///   answers memcached's failure to stop, `ERROR failed to stop lru crawler thread`.
/// - Anything else (`mgdump` came after 1.6.18), or a wrong token count, is `ERROR`. There is
///   no `noreply`.
fn lru_crawler(t: &Tokens) -> Result<Parsed, DecodeError> {
    let line = |text: &'static str| reply(Response::Line(text), false);
    let nt = t.ntokens();
    if nt == 3 {
        return match t.toks[1] {
            b"enable" => line("ERROR failed to start lru crawler thread"),
            b"disable" => line("ERROR failed to stop lru crawler thread"),
            _ => error(),
        };
    }
    if nt != 4 {
        return error();
    }
    let arg = t.toks[2];
    let bad_format = || reply(Response::ClientError(CLIENT_ERROR_BAD_FORMAT), false);
    let nothing = |classes| match classes {
        Classes::NoIds => line("NOTSTARTED no items to crawl"),
        _ => line("BADCLASS invalid class id"),
    };
    match t.toks[1] {
        b"metadump" => match crawl_classes(arg) {
            Classes::Hash => done(Command::Metadump { classes: u64::MAX }, false),
            Classes::Listed(classes) => done(Command::Metadump { classes }, false),
            other => nothing(other),
        },
        b"crawl" => match crawl_classes(arg) {
            Classes::Hash => line("ERROR an unknown error happened"),
            Classes::Listed(_) => reply(Response::Ok, false),
            other => nothing(other),
        },
        b"tocrawl" => match strtoul_u32(arg) {
            Some(_) => reply(Response::Ok, false),
            None => bad_format(),
        },
        b"sleep" => match strtoul_u32(arg) {
            Some(micros) if micros > 1_000_000 => reply(
                Response::ClientError("sleep must be one second or less"),
                false,
            ),
            Some(_) => reply(Response::Ok, false),
            None => bad_format(),
        },
        _ => error(),
    }
}

/// What the argument of `lru_crawler metadump|crawl` selects.
enum Classes {
    /// `hash`: a walk of the hash table.
    Hash,
    /// `all`, or a list of valid class ids: bit `i` set for class `i`.
    Listed(u64),
    /// Only commas: nothing to crawl.
    NoIds,
    /// An id that is not a number from 1 to 63.
    Bad,
}

/// Reads the argument of `lru_crawler metadump|crawl` as memcached's `lru_crawler_crawl`
/// does: `all`, `hash`, or ids split on commas (empty pieces skipped, as `strtok_r` skips
/// them), each read with `safe_strtoul` (so `+1` and `4294967297` are class 1).
fn crawl_classes(arg: &[u8]) -> Classes {
    match arg {
        b"all" => return Classes::Listed(u64::MAX),
        b"hash" => return Classes::Hash,
        _ => {}
    }
    let mut classes = 0u64;
    for id in arg.split(|&b| b == b',').filter(|p| !p.is_empty()) {
        match strtoul_u32(id) {
            Some(id) if (1..SLAB_CLASSES).contains(&id) => classes |= 1 << id,
            _ => return Classes::Bad,
        }
    }
    if classes != 0 {
        Classes::Listed(classes)
    } else {
        Classes::NoIds
    }
}
