//! memcached's binary protocol, server side: requests read and checked as memcached 1.6.18's
//! `try_read_command_binary` and `dispatch_bin_command` read and check them, and responses
//! written as its `add_bin_header` writes them.
//!
//! A packet is a 24-byte header (all integers big-endian), then its extras, key and value:
//!
//! ```text
//! magic u8 (0x80 request, 0x81 response) | opcode u8 | key length u16 | extras length u8
//! | data type u8 | vbucket u16 (status in a response) | body length u32 | opaque u32 | cas u64
//! ```
//!
//! [`BinaryDecoder::decode`] waits for the header, extras and key, checks them, and for a
//! command that carries a value waits for that too. What memcached refuses is refused the
//! same way: a wrong magic closes the connection without a reply; a key length past the body,
//! or (once the connection is known to be authenticated, see [`BinaryDecoder::sasl`]) a key
//! over 250 bytes or extras of the wrong size for the opcode, is answered and then closes it;
//! an unknown opcode is answered `Unknown command` and its body discarded; a value too large
//! is answered `Too large.` and discarded as it arrives.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::parse::{item_fits, KEY_MAX_BYTES};
use super::DecodeError;

/// The first byte of every request.
pub const REQUEST_MAGIC: u8 = 0x80;
const RESPONSE_MAGIC: u8 = 0x81;
const HEADER_BYTES: usize = 24;
/// memcached's `MAX_SASL_MECH_LEN`: a longer mechanism name is refused.
const MAX_SASL_MECHANISM_BYTES: usize = 32;
/// The most data a SASL request may carry (a `PLAIN` message is a user and a password); the
/// same bound as the text protocol's authentication (`controlet::auth::MAX_TOKEN_BYTES`).
pub const MAX_SASL_DATA_BYTES: usize = 4096;

/// Opcodes, as `protocol_binary.h` numbers them.
pub mod op {
    pub const GET: u8 = 0x00;
    pub const SET: u8 = 0x01;
    pub const ADD: u8 = 0x02;
    pub const REPLACE: u8 = 0x03;
    pub const DELETE: u8 = 0x04;
    pub const INCREMENT: u8 = 0x05;
    pub const DECREMENT: u8 = 0x06;
    pub const QUIT: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const GETQ: u8 = 0x09;
    pub const NOOP: u8 = 0x0a;
    pub const VERSION: u8 = 0x0b;
    pub const GETK: u8 = 0x0c;
    pub const GETKQ: u8 = 0x0d;
    pub const APPEND: u8 = 0x0e;
    pub const PREPEND: u8 = 0x0f;
    pub const STAT: u8 = 0x10;
    pub const SETQ: u8 = 0x11;
    pub const ADDQ: u8 = 0x12;
    pub const REPLACEQ: u8 = 0x13;
    pub const DELETEQ: u8 = 0x14;
    pub const INCREMENTQ: u8 = 0x15;
    pub const DECREMENTQ: u8 = 0x16;
    pub const QUITQ: u8 = 0x17;
    pub const FLUSHQ: u8 = 0x18;
    pub const APPENDQ: u8 = 0x19;
    pub const PREPENDQ: u8 = 0x1a;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
}

/// Response statuses, as `protocol_binary.h` numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Status {
    Ok = 0x00,
    KeyNotFound = 0x01,
    KeyExists = 0x02,
    TooLarge = 0x03,
    Invalid = 0x04,
    NotStored = 0x05,
    DeltaBadValue = 0x06,
    AuthError = 0x20,
    AuthContinue = 0x21,
    UnknownCommand = 0x81,
    OutOfMemory = 0x82,
    /// Not in memcached: the binary protocol's "temporary failure", for what the text
    /// protocol answers `SERVER_ERROR <why>` (a cluster that cannot be correct right now).
    TemporaryFailure = 0x86,
}

impl Status {
    /// The body memcached's `write_bin_error` sends with the status when it names no text.
    pub fn text(self) -> &'static str {
        match self {
            Status::Ok | Status::AuthContinue => "",
            Status::KeyNotFound => "Not found",
            Status::KeyExists => "Data exists for key.",
            Status::TooLarge => "Too large.",
            Status::Invalid => "Invalid arguments",
            Status::NotStored => "Not stored.",
            Status::DeltaBadValue => "Non-numeric server-side value for incr or decr",
            Status::AuthError => "Auth failure.",
            Status::UnknownCommand => "Unknown command",
            Status::OutOfMemory => "Out of memory",
            Status::TemporaryFailure => "Temporary failure",
        }
    }
}

/// How a storage command treats an existing item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinStore {
    Set,
    Add,
    Replace,
    Append,
    Prepend,
}

/// A binary request, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BinCommand {
    /// `GET`, `GETQ`, `GETK`, `GETKQ`.
    Get {
        key: Bytes,
        with_key: bool,
    },
    /// `TOUCH`: the new expiry; the reply carries the flags only.
    Touch {
        key: Bytes,
        exptime: u32,
    },
    /// `GAT`, `GATQ`, `GATK`, `GATKQ`.
    Gat {
        key: Bytes,
        exptime: u32,
        with_key: bool,
    },
    /// `SET`, `ADD`, `REPLACE`, `APPEND`, `PREPEND` and their quiet forms. A CAS of 0 checks
    /// nothing.
    Store {
        mode: BinStore,
        key: Bytes,
        flags: u32,
        exptime: u32,
        cas: u64,
        value: Bytes,
    },
    /// A `SET`/`ADD`/`REPLACE` whose value is too large: `Too large.`, and a `SET` deletes the
    /// key's old value, as memcached does.
    TooLarge {
        key: Bytes,
        set: bool,
    },
    Delete {
        key: Bytes,
        cas: u64,
    },
    /// `INCREMENT`/`DECREMENT`: `exptime` 0xffffffff means a miss is not created.
    Arith {
        incr: bool,
        key: Bytes,
        delta: u64,
        initial: u64,
        exptime: u32,
        cas: u64,
    },
    /// `FLUSH` with its optional delay.
    Flush {
        delay: u32,
    },
    Noop,
    Version,
    Quit,
    /// `STAT` with its group (the key).
    Stat {
        group: Bytes,
    },
    SaslListMechs,
    /// `SASL_AUTH` (`step` false) or `SASL_STEP`: the mechanism and its data.
    SaslAuth {
        mechanism: Bytes,
        data: Bytes,
        step: bool,
    },
    /// Answered with this status and its text; then the connection closes if `close`.
    Error {
        status: Status,
        close: bool,
    },
}

/// One request: its command, whether it is a quiet form, and what its response echoes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinRequest {
    pub command: BinCommand,
    /// The opcode as sent (responses carry it).
    pub opcode: u8,
    pub opaque: u32,
    /// A quiet form (`GETQ`, `SETQ`, ...): nominal responses are not sent.
    pub quiet: bool,
}

/// The header fields a request's checks need.
#[derive(Clone, Copy, Debug)]
struct Header {
    opcode: u8,
    key_len: usize,
    extras_len: usize,
    body_len: usize,
    opaque: u32,
    cas: u64,
}

impl Header {
    fn read(mut b: &[u8]) -> Header {
        let _magic = b.get_u8();
        let opcode = b.get_u8();
        let key_len = usize::from(b.get_u16());
        let extras_len = usize::from(b.get_u8());
        let _data_type = b.get_u8();
        let _vbucket = b.get_u16();
        let body_len = b.get_u32() as usize;
        let opaque = b.get_u32();
        let cas = b.get_u64();
        Header {
            opcode,
            key_len,
            extras_len,
            body_len,
            opaque,
            cas,
        }
    }
}

/// A request whose value is still arriving.
#[derive(Debug)]
struct Pending {
    header: Header,
    extras: Bytes,
    key: Bytes,
    value_len: usize,
}

/// Turns a binary connection's bytes into requests; one per connection.
#[derive(Debug)]
pub struct BinaryDecoder {
    item_size_max: usize,
    /// `Some(authenticated)` when the server requires SASL.
    sasl: Option<bool>,
    /// Bytes of a refused body still to be discarded.
    swallow: usize,
    pending: Option<Pending>,
}

impl BinaryDecoder {
    pub fn new(item_size_max: usize) -> Self {
        BinaryDecoder {
            item_size_max,
            sasl: None,
            swallow: 0,
            pending: None,
        }
    }

    /// Requires SASL authentication: until [`BinaryDecoder::authenticated`], every request
    /// but the SASL ones and `VERSION` is answered `Auth failure.` and closes the connection.
    pub fn with_sasl(mut self) -> Self {
        self.sasl = Some(false);
        self
    }

    /// The connection has authenticated.
    pub fn authenticated(&mut self) {
        if self.sasl.is_some() {
            self.sasl = Some(true);
        }
    }

    /// Whether a request has begun and not ended: bytes of a refused body are still to be
    /// discarded, or a value is still arriving.
    pub fn is_mid_request(&self) -> bool {
        self.swallow > 0 || self.pending.is_some()
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BinRequest>, DecodeError> {
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            buf.advance(n);
            self.swallow -= n;
            if self.swallow > 0 {
                return Ok(None);
            }
        }
        if let Some(p) = &self.pending {
            if buf.len() < p.value_len {
                buf.reserve(p.value_len - buf.len());
                return Ok(None);
            }
            let p = self.pending.take().expect("pending");
            let value = buf.split_to(p.value_len).freeze();
            return Ok(Some(with_value(p, value)));
        }
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        if buf[0] != REQUEST_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let h = Header::read(&buf[..HEADER_BYTES]);
        let head = HEADER_BYTES + h.extras_len + h.key_len;
        if buf.len() < head {
            return Ok(None);
        }
        buf.advance(HEADER_BYTES);
        let extras = buf.split_to(h.extras_len).freeze();
        let key = buf.split_to(h.key_len).freeze();
        let (command, value_len) = self.check(&h, &extras, key);
        let quiet = is_quiet(h.opcode);
        let request = |command| BinRequest {
            command,
            opcode: h.opcode,
            opaque: h.opaque,
            quiet,
        };
        match command {
            Checked::Done(command) => Ok(Some(request(command))),
            Checked::Swallow(command, n) => {
                self.swallow = n;
                let now = n.min(buf.len());
                buf.advance(now);
                self.swallow -= now;
                Ok(Some(request(command)))
            }
            Checked::NeedValue(key) => {
                self.pending = Some(Pending {
                    header: h,
                    extras,
                    key,
                    value_len,
                });
                self.decode(buf)
            }
        }
    }

    /// `dispatch_bin_command`'s checks, in its order.
    fn check(&self, h: &Header, extras: &[u8], key: Bytes) -> (Checked, usize) {
        let (ext, klen, body) = (h.extras_len, h.key_len, h.body_len);
        let error = |status, close| Checked::Done(BinCommand::Error { status, close });
        if klen > body || klen + ext > body {
            return (error(Status::UnknownCommand, true), 0);
        }
        let opcode = unquiet(h.opcode);
        if self.sasl == Some(false)
            && !matches!(
                opcode,
                op::SASL_LIST_MECHS | op::SASL_AUTH | op::SASL_STEP | op::VERSION
            )
        {
            return (error(Status::AuthError, true), 0);
        }
        let invalid = (error(Status::Invalid, true), 0);
        if klen > KEY_MAX_BYTES {
            return invalid;
        }
        let u32_at = |i: usize| u32::from_be_bytes(extras[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(extras[i..i + 8].try_into().expect("8 bytes"));
        let done = |command| (Checked::Done(command), 0);
        let empty = ext == 0 && klen == 0 && body == 0;
        match opcode {
            op::VERSION if empty => done(BinCommand::Version),
            op::NOOP if empty => done(BinCommand::Noop),
            op::QUIT if empty => done(BinCommand::Quit),
            op::FLUSH if klen == 0 && body == ext && (ext == 0 || ext == 4) => {
                let delay = if ext == 4 { u32_at(0) } else { 0 };
                done(BinCommand::Flush { delay })
            }
            op::SET | op::ADD | op::REPLACE if ext == 8 && klen != 0 && body >= klen + 8 => {
                let value_len = body - klen - ext;
                let flags = u32_at(0);
                if !item_fits(klen, flags, value_len, self.item_size_max) {
                    let command = BinCommand::TooLarge {
                        key,
                        set: opcode == op::SET,
                    };
                    return (Checked::Swallow(command, value_len), 0);
                }
                (Checked::NeedValue(key), value_len)
            }
            op::APPEND | op::PREPEND if klen > 0 && ext == 0 => {
                let value_len = body - klen;
                if !item_fits(klen, 0, value_len, self.item_size_max) {
                    let command = BinCommand::TooLarge { key, set: false };
                    return (Checked::Swallow(command, value_len), 0);
                }
                (Checked::NeedValue(key), value_len)
            }
            op::GET | op::GETK if ext == 0 && body == klen && klen > 0 => done(BinCommand::Get {
                key,
                with_key: opcode == op::GETK,
            }),
            op::DELETE if klen > 0 && ext == 0 && body == klen => {
                done(BinCommand::Delete { key, cas: h.cas })
            }
            op::INCREMENT | op::DECREMENT if klen > 0 && ext == 20 && body == klen + ext => {
                done(BinCommand::Arith {
                    incr: opcode == op::INCREMENT,
                    key,
                    delta: u64_at(0),
                    initial: u64_at(8),
                    exptime: u32_at(16),
                    cas: h.cas,
                })
            }
            op::STAT if ext == 0 => done(BinCommand::Stat { group: key }),
            op::SASL_LIST_MECHS if empty => done(BinCommand::SaslListMechs),
            op::SASL_AUTH | op::SASL_STEP if ext == 0 && klen != 0 => {
                let value_len = body - klen;
                let refuse = |status| BinCommand::Error {
                    status,
                    close: false,
                };
                if self.sasl.is_none() {
                    return (
                        Checked::Swallow(refuse(Status::UnknownCommand), value_len),
                        0,
                    );
                }
                if klen > MAX_SASL_MECHANISM_BYTES {
                    return (Checked::Swallow(refuse(Status::Invalid), value_len), 0);
                }
                // A stranger must not make the server hold a large buffer before proving
                // anything: a longer exchange is refused and the connection closed.
                if value_len > MAX_SASL_DATA_BYTES {
                    return (error(Status::AuthError, true), 0);
                }
                (Checked::NeedValue(key), value_len)
            }
            op::TOUCH if ext == 4 && klen != 0 => done(BinCommand::Touch {
                key,
                exptime: u32_at(0),
            }),
            op::GAT | op::GATK if ext == 4 && klen != 0 => done(BinCommand::Gat {
                key,
                exptime: u32_at(0),
                with_key: opcode == op::GATK,
            }),
            op::VERSION
            | op::NOOP
            | op::QUIT
            | op::FLUSH
            | op::SET
            | op::ADD
            | op::REPLACE
            | op::APPEND
            | op::PREPEND
            | op::GET
            | op::GETK
            | op::DELETE
            | op::INCREMENT
            | op::DECREMENT
            | op::STAT
            | op::SASL_LIST_MECHS
            | op::SASL_AUTH
            | op::SASL_STEP
            | op::TOUCH
            | op::GAT
            | op::GATK => invalid,
            // memcached discards the whole body length after the extras and key it has read.
            _ => {
                let unknown = BinCommand::Error {
                    status: Status::UnknownCommand,
                    close: false,
                };
                (Checked::Swallow(unknown, body), 0)
            }
        }
    }
}

/// What the checks decided.
enum Checked {
    Done(BinCommand),
    /// Answer, then discard this many bytes.
    Swallow(BinCommand, usize),
    /// A value of the returned length follows.
    NeedValue(Bytes),
}

/// A storage or SASL request, completed by its value.
fn with_value(p: Pending, value: Bytes) -> BinRequest {
    let h = p.header;
    let opcode = unquiet(h.opcode);
    let u32_at = |i: usize| u32::from_be_bytes(p.extras[i..i + 4].try_into().expect("4 bytes"));
    let command = match opcode {
        op::SASL_AUTH | op::SASL_STEP => BinCommand::SaslAuth {
            mechanism: p.key,
            data: value,
            step: opcode == op::SASL_STEP,
        },
        op::APPEND | op::PREPEND => BinCommand::Store {
            mode: if opcode == op::APPEND {
                BinStore::Append
            } else {
                BinStore::Prepend
            },
            key: p.key,
            flags: 0,
            exptime: 0,
            cas: h.cas,
            value,
        },
        _ => BinCommand::Store {
            mode: match opcode {
                op::ADD => BinStore::Add,
                op::REPLACE => BinStore::Replace,
                _ => BinStore::Set,
            },
            key: p.key,
            flags: u32_at(0),
            exptime: u32_at(4),
            cas: h.cas,
            value,
        },
    };
    BinRequest {
        command,
        opcode: h.opcode,
        opaque: h.opaque,
        quiet: is_quiet(h.opcode),
    }
}

fn is_quiet(opcode: u8) -> bool {
    unquiet(opcode) != opcode
}

/// The opcode a quiet form stands for (itself for the others).
fn unquiet(opcode: u8) -> u8 {
    match opcode {
        op::SETQ => op::SET,
        op::ADDQ => op::ADD,
        op::REPLACEQ => op::REPLACE,
        op::DELETEQ => op::DELETE,
        op::INCREMENTQ => op::INCREMENT,
        op::DECREMENTQ => op::DECREMENT,
        op::QUITQ => op::QUIT,
        op::FLUSHQ => op::FLUSH,
        op::APPENDQ => op::APPEND,
        op::PREPENDQ => op::PREPEND,
        op::GETQ => op::GET,
        op::GETKQ => op::GETK,
        op::GATQ => op::GAT,
        op::GATKQ => op::GATK,
        other => other,
    }
}

/// One response packet.
#[derive(Clone, Copy, Debug)]
pub struct BinResponse<'a> {
    pub opcode: u8,
    pub status: Status,
    pub opaque: u32,
    pub cas: u64,
    pub extras: &'a [u8],
    pub key: &'a [u8],
    pub value: &'a [u8],
}

impl BinResponse<'_> {
    /// A response with nothing but a status and the request's opcode and opaque.
    pub fn status(opcode: u8, opaque: u32, status: Status) -> BinResponse<'static> {
        BinResponse {
            opcode,
            status,
            opaque,
            cas: 0,
            extras: &[],
            key: &[],
            value: &[],
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        let body = self.extras.len() + self.key.len() + self.value.len();
        out.reserve(HEADER_BYTES + body);
        out.put_u8(RESPONSE_MAGIC);
        out.put_u8(self.opcode);
        out.put_u16(self.key.len() as u16);
        out.put_u8(self.extras.len() as u8);
        out.put_u8(0);
        out.put_u16(self.status as u16);
        out.put_u32(body as u32);
        out.put_u32(self.opaque);
        out.put_u64(self.cas);
        out.put_slice(self.extras);
        out.put_slice(self.key);
        out.put_slice(self.value);
    }
}

/// An error response: the status and its text (memcached's `write_bin_error`).
pub fn encode_error(out: &mut BytesMut, opcode: u8, opaque: u32, status: Status, text: &str) {
    BinResponse {
        value: text.as_bytes(),
        ..BinResponse::status(opcode, opaque, status)
    }
    .encode(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request packet.
    fn packet(opcode: u8, extras: &[u8], key: &[u8], value: &[u8], cas: u64) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(REQUEST_MAGIC);
        b.put_u8(opcode);
        b.put_u16(key.len() as u16);
        b.put_u8(extras.len() as u8);
        b.put_u8(0);
        b.put_u16(0);
        b.put_u32((extras.len() + key.len() + value.len()) as u32);
        b.put_u32(0xdead_beef);
        b.put_u64(cas);
        b.put_slice(extras);
        b.put_slice(key);
        b.put_slice(value);
        b
    }

    fn set_extras(flags: u32, exptime: u32) -> Vec<u8> {
        let mut e = flags.to_be_bytes().to_vec();
        e.extend_from_slice(&exptime.to_be_bytes());
        e
    }

    fn decode_all(d: &mut BinaryDecoder, mut buf: BytesMut) -> Vec<BinRequest> {
        let mut out = Vec::new();
        while let Some(r) = d.decode(&mut buf).expect("decodes") {
            out.push(r);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn a_get_and_a_quiet_set_decode_with_their_fields() {
        let mut d = BinaryDecoder::new(1 << 20);
        let mut buf = packet(op::GETK, &[], b"key", &[], 0);
        buf.extend_from_slice(&packet(op::SETQ, &set_extras(7, 30), b"k", b"value", 42));
        let got = decode_all(&mut d, buf);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0].command,
            BinCommand::Get {
                key: Bytes::from_static(b"key"),
                with_key: true
            }
        );
        assert_eq!(
            (got[0].opcode, got[0].opaque, got[0].quiet),
            (op::GETK, 0xdead_beef, false)
        );
        assert!(got[1].quiet);
        assert_eq!(
            got[1].command,
            BinCommand::Store {
                mode: BinStore::Set,
                key: Bytes::from_static(b"k"),
                flags: 7,
                exptime: 30,
                cas: 42,
                value: Bytes::from_static(b"value"),
            }
        );
    }

    #[test]
    fn a_request_split_anywhere_waits_for_its_bytes() {
        let whole = packet(op::SET, &set_extras(0, 0), b"key", b"some value", 0);
        for cut in 1..whole.len() {
            let mut d = BinaryDecoder::new(1 << 20);
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(d.decode(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            let got = d.decode(&mut buf).unwrap().expect("whole");
            assert!(matches!(got.command, BinCommand::Store { .. }));
        }
    }

    #[test]
    fn refusals_are_memcacheds() {
        let error = |status, close| BinCommand::Error { status, close };
        let cases: Vec<(BytesMut, BinCommand)> = vec![
            // Extras of the wrong size, a key where none belongs: answered, then closed.
            (
                packet(op::GET, &[1, 2, 3, 4], b"k", &[], 0),
                error(Status::Invalid, true),
            ),
            (
                packet(op::NOOP, &[], b"k", &[], 0),
                error(Status::Invalid, true),
            ),
            (
                packet(op::GET, &[], &[b'k'; 251], &[], 0),
                error(Status::Invalid, true),
            ),
            // SASL off: an unknown command, its data discarded.
            (
                packet(op::SASL_AUTH, &[], b"PLAIN", b"\0u\0p", 0),
                error(Status::UnknownCommand, false),
            ),
            // An unknown opcode: its body discarded.
            (
                packet(0x30, &[], &[], b"junk", 0),
                error(Status::UnknownCommand, false),
            ),
        ];
        for (buf, expected) in cases {
            let mut d = BinaryDecoder::new(1 << 20);
            let got = decode_all(&mut d, buf.clone());
            assert_eq!(got[0].command, expected, "{buf:?}");
        }
        // A key length past the body: unknown, then closed.
        let mut bad = packet(op::GET, &[], b"key", &[], 0);
        bad[8..12].copy_from_slice(&1u32.to_be_bytes());
        let mut d = BinaryDecoder::new(1 << 20);
        let got = d.decode(&mut bad).unwrap().unwrap();
        assert_eq!(got.command, error(Status::UnknownCommand, true));
        // A wrong magic closes without a reply.
        let mut text = BytesMut::from(&b"get k\r\nget k again, 24 bytes or more\r\n"[..]);
        assert_eq!(d.decode(&mut text), Err(DecodeError::BadMagic));
    }

    #[test]
    fn a_value_too_large_is_refused_and_discarded_as_it_arrives() {
        let mut d = BinaryDecoder::new(1024);
        let whole = packet(op::SET, &set_extras(0, 0), b"k", &[b'x'; 2000], 0);
        let mut buf = BytesMut::from(&whole[..150]);
        let got = d.decode(&mut buf).unwrap().unwrap();
        assert_eq!(
            got.command,
            BinCommand::TooLarge {
                key: Bytes::from_static(b"k"),
                set: true
            }
        );
        assert!(buf.is_empty() && d.is_mid_request());
        let mut rest = BytesMut::from(&whole[150..]);
        rest.extend_from_slice(&packet(op::NOOP, &[], &[], &[], 0));
        assert_eq!(
            d.decode(&mut rest).unwrap().unwrap().command,
            BinCommand::Noop
        );
    }

    #[test]
    fn a_sasl_request_may_not_announce_more_than_a_few_kilobytes() {
        let mut d = BinaryDecoder::new(1 << 20).with_sasl();
        let mut big = packet(op::SASL_AUTH, &[], b"PLAIN", &[], 0);
        big[8..12].copy_from_slice(&(5 + 1_000_000_000u32).to_be_bytes());
        let got = d.decode(&mut big).unwrap().unwrap();
        assert_eq!(
            got.command,
            BinCommand::Error {
                status: Status::AuthError,
                close: true
            }
        );
        assert!(
            big.capacity() < 1 << 20,
            "nothing was reserved for the data"
        );
    }

    #[test]
    fn with_sasl_only_sasl_and_version_pass_until_authenticated() {
        let mut d = BinaryDecoder::new(1 << 20).with_sasl();
        let mut get = packet(op::GET, &[], b"k", &[], 0);
        let auth_error = BinCommand::Error {
            status: Status::AuthError,
            close: true,
        };
        assert_eq!(
            d.decode(&mut get.clone()).unwrap().unwrap().command,
            auth_error
        );
        let mut version = packet(op::VERSION, &[], &[], &[], 0);
        assert_eq!(
            d.decode(&mut version).unwrap().unwrap().command,
            BinCommand::Version
        );
        let mut auth = packet(op::SASL_AUTH, &[], b"PLAIN", b"\0u\0p", 0);
        assert_eq!(
            d.decode(&mut auth).unwrap().unwrap().command,
            BinCommand::SaslAuth {
                mechanism: Bytes::from_static(b"PLAIN"),
                data: Bytes::from_static(b"\0u\0p"),
                step: false
            }
        );
        d.authenticated();
        assert!(matches!(
            d.decode(&mut get).unwrap().unwrap().command,
            BinCommand::Get { .. }
        ));
    }

    #[test]
    fn responses_are_laid_out_as_memcached_lays_them_out() {
        let mut out = BytesMut::new();
        BinResponse {
            opcode: op::GETK,
            status: Status::Ok,
            opaque: 9,
            cas: 0x0102,
            extras: &[0, 0, 0, 5],
            key: b"k",
            value: b"v",
        }
        .encode(&mut out);
        assert_eq!(
            &out[..],
            &[
                0x81, 0x0c, 0, 1, 4, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0,
                0, 5, b'k', b'v'
            ]
        );
        let mut out = BytesMut::new();
        encode_error(
            &mut out,
            op::GET,
            1,
            Status::KeyNotFound,
            Status::KeyNotFound.text(),
        );
        assert_eq!(&out[6..8], &[0, 1]);
        assert_eq!(&out[24..], b"Not found");
    }
}
