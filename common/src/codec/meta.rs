//! The meta commands (`mg`, `ms`, `md`, `ma`, `mn`, `me`), parsed as memcached 1.6.18's
//! `proto_text.c` parses them: the same checks in the same order, with the same error lines.
//!
//! A flag is a token whose first byte names it; the rest of the token is its argument. Each
//! flag may appear once. `b` decodes the key from base64 where it appears among the flags.
//! Errors are always answered, whatever `q` says; `q` only hides the nominal replies, and the
//! executor applies it (see [`MetaRequest::quiet`]).

use bytes::Bytes;

use super::base64;
use super::number::{strtol_i32, strtoul_u32, strtoull};
use super::parse::{item_fits, Parsed, PendingStore, Tokens, KEY_MAX_BYTES};
use super::response::CLIENT_ERROR_BAD_FORMAT;
use super::{Command, DecodeError, Request, Response, StoreMode};

/// memcached's `MFLAG_MAX_OPT_LENGTH`: more tokens than this (its `ntokens`, the command,
/// key and terminator included) are refused.
const MAX_TOKENS: usize = 20;

/// memcached's `MFLAG_MAX_OPAQUE_LENGTH`: an `O` token (the `O` included) may be this long.
pub const MAX_OPAQUE_BYTES: usize = 32;

/// Which meta command carries a [`MetaRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaCommand {
    /// `mg <key> <flags>*`.
    Get,
    /// `ms <key> <datalen> <flags>*` and its data block.
    Set,
    /// `md <key> <flags>*`.
    Delete,
    /// `ma <key> <flags>*`.
    Arith,
}

/// A meta request, its flags read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetaRequest {
    /// The key, decoded from base64 if `b` was given.
    pub key: Bytes,
    /// `b`: the key was sent in base64, and is returned so.
    pub base64: bool,
    /// The letter of each flag, in the order sent: the reply's flags follow this order.
    pub flags: Vec<u8>,
    /// `O<opaque>`: the whole token, `O` included, copied back in replies.
    pub opaque: Option<Bytes>,
    /// `q`: the nominal reply is not sent (a miss for `mg`, `HD` for the others).
    pub quiet: bool,
    /// `v`: the value is returned.
    pub value: bool,
    /// `u`: the read does not count as an access of the item.
    pub no_bump: bool,
    /// `I`: invalidate (mark stale rather than delete; store a stale value with an old CAS).
    pub invalidate: bool,
    /// `T<ttl>`.
    pub ttl: Option<i32>,
    /// `N<ttl>`: create the item on a miss.
    pub vivify: Option<i32>,
    /// `R<ttl>`: win the right to recache if the item expires sooner.
    pub recache: Option<i32>,
    /// `C<cas>`.
    pub compare: Option<u64>,
    /// `F<flags>`: the client flags `ms` stores (0 without it).
    pub client_flags: u32,
    /// `M<mode>`: `ms`'s storage mode, `ma`'s direction, checked.
    pub mode: Option<u8>,
    /// `D<delta>` of `ma` (1 without it).
    pub delta: u64,
    /// `J<initial>` of `ma` (0 without it).
    pub initial: u64,
    /// The data block of `ms`.
    pub data: Bytes,
    /// `Y[<token>]`, tailorkv's own flag, in the causal mode only: wait until the node shows
    /// the causal context of the token (if one is given), and return the node's context
    /// after the request as `Y<token>` at the end of the reply's line.
    pub causal: Option<Bytes>,
}

impl MetaRequest {
    /// Whether the flag `code` was given.
    pub fn has(&self, code: u8) -> bool {
        self.flags.contains(&code)
    }

    /// `ms`'s storage mode (`M`): `Set` without one.
    pub fn store_mode(&self) -> StoreMode {
        match self.mode {
            Some(b'E') => StoreMode::Add,
            Some(b'A') => StoreMode::Append,
            Some(b'P') => StoreMode::Prepend,
            Some(b'R') => StoreMode::Replace,
            _ => StoreMode::Set,
        }
    }

    /// `ma`'s direction (`M`): increment without one.
    pub fn increments(&self) -> bool {
        !matches!(self.mode, Some(b'D' | b'-'))
    }
}

/// Parses a line whose command is two bytes starting with `m`.
pub(crate) fn meta(t: &Tokens, item_size_max: usize) -> Result<Parsed, DecodeError> {
    match t.toks[0][1] {
        b'n' => answer(Response::Line("MN")),
        b'e' => debug(t),
        b'g' => command(t, MetaCommand::Get),
        b'd' => command(t, MetaCommand::Delete),
        b'a' => command(t, MetaCommand::Arith),
        b's' => set(t, item_size_max),
        _ => answer(Response::Error),
    }
}

fn done(command: Command) -> Result<Parsed, DecodeError> {
    Ok(Parsed::Done(Request {
        command,
        noreply: false,
    }))
}

fn answer(response: Response) -> Result<Parsed, DecodeError> {
    done(Command::Reply(response))
}

fn client_error(message: &'static str) -> Result<Parsed, DecodeError> {
    answer(Response::ClientError(message))
}

/// `me <key> [b]`: the item's metadata.
fn debug(t: &Tokens) -> Result<Parsed, DecodeError> {
    if t.ntokens() < 3 || t.toks[1].len() > KEY_MAX_BYTES {
        return client_error(CLIENT_ERROR_BAD_FORMAT);
    }
    let base64 = t.ntokens() >= 4 && t.toks[2] == b"b";
    let key = if base64 {
        match base64::decode(t.toks[1]) {
            Some(key) => Bytes::from(key),
            None => return client_error(CLIENT_ERROR_BAD_FORMAT),
        }
    } else {
        Bytes::copy_from_slice(t.toks[1])
    };
    done(Command::MetaDebug { key })
}

/// `mg`, `md` and `ma`.
fn command(t: &Tokens, which: MetaCommand) -> Result<Parsed, DecodeError> {
    if t.ntokens() < 3 {
        return answer(Response::Error);
    }
    if t.toks[1].len() > KEY_MAX_BYTES {
        return client_error(CLIENT_ERROR_BAD_FORMAT);
    }
    if t.ntokens() > MAX_TOKENS {
        return client_error(match which {
            MetaCommand::Get => "options flags are too long",
            _ => "options flags too long",
        });
    }
    let request = match flags(t, 2) {
        Ok(request) => request,
        Err(message) if which == MetaCommand::Get => return client_error(message),
        Err(_) => return client_error("invalid or duplicate flag"),
    };
    if which == MetaCommand::Arith
        && !matches!(request.mode, None | Some(b'I' | b'+' | b'D' | b'-'))
    {
        return client_error("invalid mode for ma M token");
    }
    // memcached finds an overlong opaque while it writes the reply; here it is refused before
    // anything is changed.
    if request
        .opaque
        .as_ref()
        .is_some_and(|o| o.len() > MAX_OPAQUE_BYTES)
    {
        return client_error("opaque token too long");
    }
    done(Command::Meta(which, Box::new(request)))
}

/// `ms <key> <datalen> <flags>*`: its data block follows, and is discarded after an error
/// found once the length is known.
fn set(t: &Tokens, item_size_max: usize) -> Result<Parsed, DecodeError> {
    let nt = t.ntokens();
    if nt < 3 {
        return answer(Response::Error);
    }
    if t.toks[1].len() > KEY_MAX_BYTES || nt == 3 {
        return client_error(CLIENT_ERROR_BAD_FORMAT);
    }
    if nt > MAX_TOKENS {
        return client_error("options flags too long");
    }
    let len = match strtol_i32(t.toks[2]) {
        Some(len) if (0..=i32::MAX - 2).contains(&len) => len as usize,
        _ => return client_error(CLIENT_ERROR_BAD_FORMAT),
    };
    let swallow = |message: &'static str| {
        let request = Request {
            command: Command::Reply(Response::ClientError(message)),
            noreply: false,
        };
        Ok(Parsed::Swallow(request, len + 2))
    };
    let request = match flags(t, 3) {
        Ok(request) => request,
        Err(message) => return swallow(message),
    };
    if request
        .opaque
        .as_ref()
        .is_some_and(|o| o.len() > MAX_OPAQUE_BYTES)
    {
        return swallow("opaque token too long");
    }
    if !matches!(request.mode, None | Some(b'E' | b'A' | b'P' | b'R' | b'S')) {
        return swallow("invalid mode for ms M token");
    }
    if !item_fits(request.key.len(), request.client_flags, len, item_size_max) {
        // As for `set`, memcached drops the key's old value, whatever the mode.
        let command = Command::SetTooLarge {
            key: request.key,
            causal_flag: request.causal.is_some(),
        };
        let request = Request {
            command,
            noreply: false,
        };
        return Ok(Parsed::Swallow(request, len + 2));
    }
    Ok(Parsed::NeedData(PendingStore {
        mode: StoreMode::Set,
        key: request.key.clone(),
        flags: request.client_flags,
        exptime: 0,
        len,
        noreply: false,
        meta: Some(Box::new(request)),
    }))
}

/// memcached's `_meta_flag_preparse` over the tokens from `first`: the request, or the error
/// line's message. A repeated or unknown flag stops at once; a bad argument is noted and the
/// rest still read, so the last such error is the one reported, as in memcached.
fn flags(t: &Tokens, first: usize) -> Result<MetaRequest, &'static str> {
    let mut request = MetaRequest {
        key: Bytes::copy_from_slice(t.toks[1]),
        delta: 1,
        ..MetaRequest::default()
    };
    let mut error = None;
    let mut seen = [false; 128];
    for &token in &t.toks[first..t.n] {
        let code = token[0];
        if code >= 127 || seen[usize::from(code)] {
            return Err("duplicate flag");
        }
        seen[usize::from(code)] = true;
        let arg = &token[1..];
        let bad_token = "bad token in command line format";
        match code {
            b'b' => {
                match base64::decode(t.toks[1]) {
                    Some(key) => request.key = Bytes::from(key),
                    None => {
                        request.key = Bytes::new();
                        error = Some("error decoding key");
                    }
                }
                request.base64 = true;
            }
            b'N' | b'T' | b'R' => match strtol_i32(arg) {
                Some(ttl) => {
                    let slot = match code {
                        b'N' => &mut request.vivify,
                        b'T' => &mut request.ttl,
                        _ => &mut request.recache,
                    };
                    *slot = Some(ttl);
                }
                None => error = Some(bad_token),
            },
            b'O' => request.opaque = Some(Bytes::copy_from_slice(token)),
            b'P' | b'L' | b'l' | b'k' | b's' | b't' | b'c' | b'f' | b'h' => {}
            b'v' => request.value = true,
            b'u' => request.no_bump = true,
            b'q' => request.quiet = true,
            b'F' => match strtoul_u32(arg) {
                Some(flags) => request.client_flags = flags,
                // memcached flags the error without a message of its own.
                None => error = error.or(Some(CLIENT_ERROR_BAD_FORMAT)),
            },
            b'C' => match strtoull(arg) {
                Some(cas) => request.compare = Some(cas),
                None => error = Some(bad_token),
            },
            b'M' if token.len() != 2 => error = Some("incorrect length for M token"),
            b'M' => request.mode = Some(token[1]),
            b'J' => match strtoull(arg) {
                Some(initial) => request.initial = initial,
                None => error = Some("invalid numeric initial value"),
            },
            b'D' => match strtoull(arg) {
                Some(delta) => request.delta = delta,
                None => error = Some("invalid numeric delta value"),
            },
            b'I' => request.invalidate = true,
            b'Y' => request.causal = Some(Bytes::copy_from_slice(arg)),
            _ => return Err("invalid flag"),
        }
        request.flags.push(code);
    }
    match error {
        Some(message) => Err(message),
        None => Ok(request),
    }
}
