//! Differential tests of memcached's binary protocol: the same packets, good and bad, go to a
//! real memcached 1.6.18 and to the controlet, and the replies must be equal packet for
//! packet.
//!
//! A case is a list of steps sent on one fresh connection, after both servers are flushed
//! (with a text `flush_all` on another connection). Most cases are one step: it is sent, the
//! sending side is closed, and everything up to the server's close is the reply. A case of
//! several steps ends each step but the last with a NOOP whose opaque marks it, and waits for
//! that NOOP's reply: so a later step can carry a CAS unique an earlier reply returned
//! ([`Cas::Seen`]).
//!
//! Replies are split into response packets (magic 0x81); bytes that are not one (text
//! replies, a cut-off packet) are kept as they are. CAS uniques differ between servers by
//! design, so each packet's CAS field is renamed `c1`, `c2`, ... in order of first appearance
//! (0 stays 0); a VERSION reply's `1.6.18` and our `1.6.18-tailorkv-<x>` are both compared as
//! `1.6.*` (and checked exactly in `version_is_1_6_18_with_our_suffix`). Statistics whose
//! values are timings or pids are compared by name only (`stat_*` tests). With
//! `TAILORKV_SHOW_REPLIES` set, the table tests print memcached's reply to every case.
//!
//! memcached's quirks that the cases rely on, from its `proto_bin.c`:
//! - quiet commands (SETQ, GETQ, ...) leave out successes (and GETQ/GETKQ/GATQ/GATKQ misses)
//!   but still answer every error;
//! - a malformed packet (wrong extras length for its opcode, a key where none belongs or none
//!   where one must be, a key over 250 bytes) gets EINVAL and the connection is closed; a key
//!   or extras length beyond the body length gets UNKNOWN_COMMAND and the connection closed;
//! - an unknown opcode gets UNKNOWN_COMMAND and its body is skipped, counting the body length
//!   again after the key and extras already read (`unknown_opcode_with_a_key_or_extras_*`);
//! - any CAS in a SET, ADD or REPLACE makes it a compare-and-swap (so an ADD with the item's
//!   CAS replaces the item);
//! - a value over the item size limit gets E2BIG, its bytes are skipped, the connection lives
//!   on, and a SET (not ADD or REPLACE) removes the key's old value.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tailorkv_tests::{Controlet, ServerProcess};

/// The longest a server may take to answer and close.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause between the pieces of a request sent in several packets.
const PAUSE: Duration = Duration::from_millis(20);

/// Our version, as VERSION reports it.
const OUR_VERSION: &str = concat!("1.6.18-tailorkv-", env!("CARGO_PKG_VERSION"));

/// The opaque of the NOOP that ends each step of a case but the last.
const STEP_MARK: u32 = 0x5eed_5eed;

// ---------------------------------------------------------------------------------------------
// The protocol's numbers (memcached's protocol_binary.h)
// ---------------------------------------------------------------------------------------------

const REQUEST: u8 = 0x80;
const RESPONSE: u8 = 0x81;

#[allow(dead_code)]
mod op {
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
    /// In the protocol's spec, not in memcached 1.6.18: an unknown command there.
    pub const VERBOSITY: u8 = 0x1b;
    pub const TOUCH: u8 = 0x1c;
    pub const GAT: u8 = 0x1d;
    pub const GATQ: u8 = 0x1e;
    pub const SASL_LIST_MECHS: u8 = 0x20;
    pub const SASL_AUTH: u8 = 0x21;
    pub const SASL_STEP: u8 = 0x22;
    pub const GATK: u8 = 0x23;
    pub const GATKQ: u8 = 0x24;
    /// A range operation: named in the header, not implemented by memcached.
    pub const RGET: u8 = 0x30;
}

fn op_name(opcode: u8) -> &'static str {
    const NAMES: &[(u8, &str)] = &[
        (op::GET, "GET"),
        (op::SET, "SET"),
        (op::ADD, "ADD"),
        (op::REPLACE, "REPLACE"),
        (op::DELETE, "DELETE"),
        (op::INCREMENT, "INCREMENT"),
        (op::DECREMENT, "DECREMENT"),
        (op::QUIT, "QUIT"),
        (op::FLUSH, "FLUSH"),
        (op::GETQ, "GETQ"),
        (op::NOOP, "NOOP"),
        (op::VERSION, "VERSION"),
        (op::GETK, "GETK"),
        (op::GETKQ, "GETKQ"),
        (op::APPEND, "APPEND"),
        (op::PREPEND, "PREPEND"),
        (op::STAT, "STAT"),
        (op::SETQ, "SETQ"),
        (op::ADDQ, "ADDQ"),
        (op::REPLACEQ, "REPLACEQ"),
        (op::DELETEQ, "DELETEQ"),
        (op::INCREMENTQ, "INCREMENTQ"),
        (op::DECREMENTQ, "DECREMENTQ"),
        (op::QUITQ, "QUITQ"),
        (op::FLUSHQ, "FLUSHQ"),
        (op::APPENDQ, "APPENDQ"),
        (op::PREPENDQ, "PREPENDQ"),
        (op::VERBOSITY, "VERBOSITY"),
        (op::TOUCH, "TOUCH"),
        (op::GAT, "GAT"),
        (op::GATQ, "GATQ"),
        (op::SASL_LIST_MECHS, "SASL_LIST_MECHS"),
        (op::SASL_AUTH, "SASL_AUTH"),
        (op::SASL_STEP, "SASL_STEP"),
        (op::GATK, "GATK"),
        (op::GATKQ, "GATKQ"),
        (op::RGET, "RGET"),
    ];
    NAMES
        .iter()
        .find(|(code, _)| *code == opcode)
        .map_or("?", |(_, name)| name)
}

#[allow(dead_code)]
mod status {
    pub const OK: u16 = 0x00;
    pub const KEY_ENOENT: u16 = 0x01;
    pub const KEY_EEXISTS: u16 = 0x02;
    pub const E2BIG: u16 = 0x03;
    pub const EINVAL: u16 = 0x04;
    pub const NOT_STORED: u16 = 0x05;
    pub const DELTA_BADVAL: u16 = 0x06;
    pub const AUTH_ERROR: u16 = 0x20;
    pub const UNKNOWN_COMMAND: u16 = 0x81;
}

// ---------------------------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------------------------

/// The CAS field of a request.
#[derive(Clone, Copy, Debug)]
enum Cas {
    /// This value.
    Lit(u64),
    /// The n-th distinct unique (1-based: `c<n>` in the canonical replies) that the replies on
    /// this connection carried before this step.
    Seen(usize),
}

/// A request packet; the length fields follow the key, extras and value unless set by hand
/// (for malformed packets).
#[derive(Clone, Debug)]
struct Packet {
    magic: u8,
    opcode: u8,
    key: Vec<u8>,
    extras: Vec<u8>,
    value: Vec<u8>,
    datatype: u8,
    vbucket: u16,
    opaque: u32,
    cas: Cas,
    keylen: Option<u16>,
    bodylen: Option<u32>,
}

impl Packet {
    fn new(opcode: u8) -> Packet {
        Packet {
            magic: REQUEST,
            opcode,
            key: Vec::new(),
            extras: Vec::new(),
            value: Vec::new(),
            datatype: 0,
            vbucket: 0,
            opaque: 0,
            cas: Cas::Lit(0),
            keylen: None,
            bodylen: None,
        }
    }

    fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.key = key.as_ref().to_vec();
        self
    }

    fn extras(mut self, extras: impl AsRef<[u8]>) -> Self {
        self.extras = extras.as_ref().to_vec();
        self
    }

    fn value(mut self, value: impl AsRef<[u8]>) -> Self {
        self.value = value.as_ref().to_vec();
        self
    }

    fn opaque(mut self, opaque: u32) -> Self {
        self.opaque = opaque;
        self
    }

    fn cas(mut self, cas: u64) -> Self {
        self.cas = Cas::Lit(cas);
        self
    }

    /// The CAS field is the n-th unique seen on this connection (`c<n>`).
    fn cas_of(mut self, n: usize) -> Self {
        self.cas = Cas::Seen(n);
        self
    }

    fn datatype(mut self, datatype: u8) -> Self {
        self.datatype = datatype;
        self
    }

    fn vbucket(mut self, vbucket: u16) -> Self {
        self.vbucket = vbucket;
        self
    }

    fn magic(mut self, magic: u8) -> Self {
        self.magic = magic;
        self
    }

    fn keylen(mut self, keylen: u16) -> Self {
        self.keylen = Some(keylen);
        self
    }

    fn bodylen(mut self, bodylen: u32) -> Self {
        self.bodylen = Some(bodylen);
        self
    }

    /// The packet's bytes; `seen` are the uniques seen so far, for [`Cas::Seen`].
    fn encode(&self, seen: &[u64]) -> Vec<u8> {
        let cas = match self.cas {
            Cas::Lit(cas) => cas,
            // A server that returned too few uniques gets one that matches nothing: the
            // replies then differ, which the comparison shows.
            Cas::Seen(n) => seen
                .get(n - 1)
                .copied()
                .unwrap_or(0x7fff_0000_0000_0000 + n as u64),
        };
        let keylen = self.keylen.unwrap_or(self.key.len() as u16);
        let extlen = self.extras.len() as u8;
        let bodylen = self
            .bodylen
            .unwrap_or((self.key.len() + self.extras.len() + self.value.len()) as u32);
        let mut out = Vec::with_capacity(24 + bodylen as usize);
        out.push(self.magic);
        out.push(self.opcode);
        out.extend_from_slice(&keylen.to_be_bytes());
        out.push(extlen);
        out.push(self.datatype);
        out.extend_from_slice(&self.vbucket.to_be_bytes());
        out.extend_from_slice(&bodylen.to_be_bytes());
        out.extend_from_slice(&self.opaque.to_be_bytes());
        out.extend_from_slice(&cas.to_be_bytes());
        out.extend_from_slice(&self.extras);
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.value);
        out
    }

    fn bytes(&self) -> Vec<u8> {
        self.encode(&[])
    }
}

/// A packet with neither key, extras nor value (NOOP, VERSION, QUIT, FLUSH, ...).
fn bare(opcode: u8) -> Packet {
    Packet::new(opcode)
}

/// GET, GETQ, GETK, GETKQ, DELETE, DELETEQ: a key alone.
fn keyed(opcode: u8, key: impl AsRef<[u8]>) -> Packet {
    Packet::new(opcode).key(key)
}

/// SET, ADD, REPLACE and their quiet forms: extras are flags and expiration.
fn store(
    opcode: u8,
    key: impl AsRef<[u8]>,
    flags: u32,
    exptime: u32,
    value: impl AsRef<[u8]>,
) -> Packet {
    let mut extras = flags.to_be_bytes().to_vec();
    extras.extend_from_slice(&exptime.to_be_bytes());
    Packet::new(opcode).key(key).extras(extras).value(value)
}

/// SET with flags 0 and no expiration.
fn set(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Packet {
    store(op::SET, key, 0, 0, value)
}

/// APPEND, PREPEND and their quiet forms: no extras.
fn concat(opcode: u8, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Packet {
    Packet::new(opcode).key(key).value(value)
}

/// INCREMENT, DECREMENT and their quiet forms: extras are delta, initial value, expiration
/// (0xffffffff: do not create a missing key).
fn arith(opcode: u8, key: impl AsRef<[u8]>, delta: u64, initial: u64, exptime: u32) -> Packet {
    let mut extras = delta.to_be_bytes().to_vec();
    extras.extend_from_slice(&initial.to_be_bytes());
    extras.extend_from_slice(&exptime.to_be_bytes());
    Packet::new(opcode).key(key).extras(extras)
}

/// TOUCH, GAT, GATQ, GATK, GATKQ: extras are the new expiration.
fn touch(opcode: u8, key: impl AsRef<[u8]>, exptime: u32) -> Packet {
    Packet::new(opcode).key(key).extras(exptime.to_be_bytes())
}

/// FLUSH or FLUSHQ with the 4-byte extras (a delay in seconds, or an absolute time).
fn flush_in(opcode: u8, exptime: u32) -> Packet {
    Packet::new(opcode).extras(exptime.to_be_bytes())
}

/// STAT with a group name as its key.
fn stat(group: impl AsRef<[u8]>) -> Packet {
    Packet::new(op::STAT).key(group)
}

fn noop() -> Packet {
    bare(op::NOOP)
}

/// A piece of a step: a packet, or raw bytes (text, filler).
#[derive(Clone, Debug)]
enum Piece {
    Packet(Packet),
    Raw(Vec<u8>),
}

impl From<Packet> for Piece {
    fn from(p: Packet) -> Piece {
        Piece::Packet(p)
    }
}

fn raw(bytes: impl AsRef<[u8]>) -> Piece {
    Piece::Raw(bytes.as_ref().to_vec())
}

/// The pieces of a step.
macro_rules! p {
    ($($piece:expr),* $(,)?) => { vec![$(Piece::from($piece)),*] };
}

fn encode_step(step: &[Piece], seen: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in step {
        match piece {
            Piece::Packet(p) => out.extend_from_slice(&p.encode(seen)),
            Piece::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
    out
}

/// A named conversation on one connection.
struct Case {
    name: String,
    steps: Vec<Vec<Piece>>,
}

/// A case of one step.
fn case(name: impl Into<String>, step: Vec<Piece>) -> Case {
    Case {
        name: name.into(),
        steps: vec![step],
    }
}

/// A case of several steps, each answered before the next is built and sent.
fn flow(name: impl Into<String>, steps: Vec<Vec<Piece>>) -> Case {
    Case {
        name: name.into(),
        steps,
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// A response packet as it came.
#[derive(Clone, Debug)]
struct Response {
    magic: u8,
    opcode: u8,
    datatype: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: Vec<u8>,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// What a reply holds, in order: response packets, and bytes that are not one (text, or a
/// packet cut off by the close).
#[derive(Clone, Debug)]
enum Unit {
    Packet(Response),
    Other(Vec<u8>),
}

/// Splits a reply into response packets; from the first byte that does not start a
/// complete one, the rest is one [`Unit::Other`].
fn split(reply: &[u8]) -> Vec<Unit> {
    let mut units = Vec::new();
    let mut i = 0;
    while i < reply.len() {
        let rest = &reply[i..];
        if rest.len() < 24 || rest[0] != RESPONSE {
            units.push(Unit::Other(rest.to_vec()));
            break;
        }
        let keylen = u16::from_be_bytes([rest[2], rest[3]]) as usize;
        let extlen = rest[4] as usize;
        let bodylen = u32::from_be_bytes(rest[8..12].try_into().unwrap()) as usize;
        if rest.len() < 24 + bodylen || keylen + extlen > bodylen {
            units.push(Unit::Other(rest.to_vec()));
            break;
        }
        let body = &rest[24..24 + bodylen];
        units.push(Unit::Packet(Response {
            magic: rest[0],
            opcode: rest[1],
            datatype: rest[5],
            status: u16::from_be_bytes([rest[6], rest[7]]),
            opaque: u32::from_be_bytes(rest[12..16].try_into().unwrap()),
            cas: u64::from_be_bytes(rest[16..24].try_into().unwrap()),
            extras: body[..extlen].to_vec(),
            key: body[extlen..extlen + keylen].to_vec(),
            value: body[extlen + keylen..].to_vec(),
        }));
        i += 24 + bodylen;
    }
    units
}

/// The packets of a reply (panics on anything else: for replies that must be all packets).
fn packets(reply: &[u8]) -> Vec<Response> {
    split(reply)
        .into_iter()
        .map(|u| match u {
            Unit::Packet(p) => p,
            Unit::Other(bytes) => panic!("not a response packet: {}", esc(&bytes)),
        })
        .collect()
}

/// The distinct non-zero CAS uniques of a reply's packets, in order of first appearance.
fn uniques(reply: &[u8]) -> Vec<u64> {
    let mut seen = Vec::new();
    for unit in split(reply) {
        if let Unit::Packet(p) = unit {
            if p.cas != 0 && !seen.contains(&p.cas) {
                seen.push(p.cas);
            }
        }
    }
    seen
}

/// A reply with CAS uniques renamed and version strings reduced, one line per unit: what the
/// two servers' replies are compared by.
fn canonical(reply: &[u8]) -> Vec<String> {
    let seen = uniques(reply);
    split(reply)
        .into_iter()
        .map(|unit| match unit {
            Unit::Packet(mut p) => {
                if p.opcode == op::VERSION && p.status == status::OK && p.value.starts_with(b"1.6.")
                {
                    p.value = b"1.6.*".to_vec();
                }
                let cas = match seen.iter().position(|&u| u == p.cas) {
                    _ if p.cas == 0 => "0".to_string(),
                    Some(n) => format!("c{}", n + 1),
                    None => unreachable!(),
                };
                render(&p, &cas)
            }
            Unit::Other(bytes) => format!("other bytes {}", esc(&reduce_text_versions(&bytes))),
        })
        .collect()
}

/// `VERSION 1.6.<anything>\r\n` (a text reply) as `VERSION 1.6.*\r\n`.
fn reduce_text_versions(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i..].starts_with(b"VERSION 1.6.") {
            let end = find(&bytes[i..], b"\r\n").map_or(bytes.len(), |e| i + e);
            out.extend_from_slice(b"VERSION 1.6.*");
            i = end;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// One response packet on one line.
fn render(p: &Response, cas: &str) -> String {
    let mut line = format!(
        "{}(0x{:02x}) status=0x{:04x} opaque=0x{:x} cas={cas}",
        op_name(p.opcode),
        p.opcode,
        p.status,
        p.opaque
    );
    if p.magic != RESPONSE || p.datatype != 0 {
        line += &format!(" magic=0x{:02x} datatype=0x{:02x}", p.magic, p.datatype);
    }
    if !p.extras.is_empty() {
        line += &format!(" extras={}", hex(&p.extras));
    }
    if !p.key.is_empty() {
        line += &format!(" key={}", esc(&p.key));
    }
    if !p.value.is_empty() {
        line += &format!(" value={}", esc(&p.value));
        if p.value.len() > 64 {
            line += &format!(" ({} bytes, fnv {:016x})", p.value.len(), fnv(&p.value));
        }
    }
    line
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash of a long value, so values cut for display still compare whole.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Bytes as a Rust-escaped string, long ones cut in the middle.
fn esc(bytes: &[u8]) -> String {
    const HEAD: usize = 48;
    const TAIL: usize = 16;
    if bytes.len() > HEAD + TAIL + 16 {
        format!(
            "\"{}\"...<{} bytes>...\"{}\"",
            bytes[..HEAD].escape_ascii(),
            bytes.len() - HEAD - TAIL,
            bytes[bytes.len() - TAIL..].escape_ascii()
        )
    } else {
        format!("\"{}\"", bytes.escape_ascii())
    }
}

/// The request bytes of a case, for failure messages: hex, long ones cut.
fn show_request(bytes: &[u8]) -> String {
    if bytes.len() > 160 {
        format!(
            "{}...<{} bytes>...{}",
            hex(&bytes[..96]),
            bytes.len() - 128,
            hex(&bytes[bytes.len() - 32..])
        )
    } else {
        hex(bytes)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// Conversations
// ---------------------------------------------------------------------------------------------

/// How a conversation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The server closed the connection (after the last step, or earlier).
    Closed,
    /// The server neither answered a step's closing NOOP nor closed within the time.
    TimedOut,
}

/// Everything a server sent during a case, every step's request bytes, and how it ended.
struct Transcript {
    reply: Vec<u8>,
    requests: Vec<u8>,
    ended: Ended,
}

/// The reply to a step's closing NOOP.
fn step_mark_reply() -> Vec<u8> {
    let mut r = vec![RESPONSE, op::NOOP, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    r.extend_from_slice(&STEP_MARK.to_be_bytes());
    r.extend_from_slice(&[0; 8]);
    r
}

/// Runs `case` on a fresh connection to `addr`; a one-step case's bytes are sent in pieces
/// cut at `cuts` (offsets), `pause` apart.
fn converse(addr: SocketAddr, case: &Case, cuts: &[usize], pause: Duration) -> Transcript {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_nodelay(true).unwrap();
    let mut reader = stream.try_clone().unwrap();
    let mut reply = Vec::new();
    let mut requests = Vec::new();
    let mark = step_mark_reply();
    for (i, step) in case.steps.iter().enumerate() {
        let last = i + 1 == case.steps.len();
        let mut bytes = encode_step(step, &uniques(&reply));
        if !last {
            bytes.extend_from_slice(&noop().opaque(STEP_MARK).bytes());
        }
        requests.extend_from_slice(&bytes);
        let mut pieces = Vec::new();
        let mut from = 0;
        for &cut in cuts {
            if cut > from && cut < bytes.len() {
                pieces.push(bytes[from..cut].to_vec());
                from = cut;
            }
        }
        pieces.push(bytes[from..].to_vec());
        // A writer thread sends while this one reads, so a large request never deadlocks
        // against a large reply.
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            for (n, piece) in pieces.iter().enumerate() {
                if n > 0 {
                    std::thread::sleep(pause);
                }
                // The server may close first: the rest is then unsendable.
                if writer.write_all(piece).is_err() {
                    return;
                }
            }
            if last {
                let _ = writer.shutdown(std::net::Shutdown::Write);
            }
        });
        let from = reply.len();
        let ended = read_reply(&mut reader, &mut reply, from, (!last).then_some(&mark[..]));
        sender.join().unwrap();
        match ended {
            None => continue,
            Some(ended) => {
                return Transcript {
                    reply,
                    requests,
                    ended,
                }
            }
        }
    }
    unreachable!("the last step reads until the server closes")
}

/// Reads into `reply` until the bytes since `from` end with `mark` (`None`), or the server
/// closes (`Some(Closed)`), or nothing comes for [`IO_TIMEOUT`] (`Some(TimedOut)`).
fn read_reply(
    stream: &mut TcpStream,
    reply: &mut Vec<u8>,
    from: usize,
    mark: Option<&[u8]>,
) -> Option<Ended> {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        if let Some(mark) = mark {
            if reply[from..].ends_with(mark) {
                return None;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => return Some(Ended::Closed),
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(Ended::Closed),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Some(Ended::TimedOut)
            }
            Err(e) => panic!("reading a reply: {e}"),
        }
    }
}

/// One real memcached and one controlet, both with default settings.
struct Pair {
    mc: ServerProcess,
    us: Controlet,
}

impl Pair {
    fn start() -> Self {
        Pair {
            mc: ServerProcess::memcached(&[]),
            us: Controlet::start(),
        }
    }

    /// Empties both servers (a text `flush_all`, which works whatever the binary side does).
    fn flush(&self) {
        for (name, addr) in [("memcached", self.mc.addr), ("controlet", self.us.addr)] {
            let reply = text_exchange(addr, b"flush_all\r\n");
            assert_eq!(esc(&reply), esc(b"OK\r\n"), "flush_all on {name} at {addr}");
        }
    }
}

/// Sends `request`, closes the sending side, and returns everything until the server closes.
fn text_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let case = case("", p![raw(request)]);
    let t = converse(addr, &case, &[], Duration::ZERO);
    assert_eq!(t.ended, Ended::Closed, "{addr} did not close");
    t.reply
}

/// The canonical transcript of `case` on `addr`: one line per reply unit, then how it ended.
fn run_one(
    addr: SocketAddr,
    case: &Case,
    cuts: &[usize],
    pause: Duration,
) -> (Vec<String>, Vec<u8>) {
    let t = converse(addr, case, cuts, pause);
    let mut lines = canonical(&t.reply);
    if t.ended == Ended::TimedOut {
        lines.push(format!(
            "(no close within {IO_TIMEOUT:?}: a step's closing NOOP unanswered, or the \
             connection left open)"
        ));
    }
    (lines, t.requests)
}

/// Runs every case on both servers (flushing both first) and fails listing every case whose
/// canonical replies differ. With `TAILORKV_SHOW_REPLIES` set, prints memcached's replies to
/// every case.
fn run_cases(cases: &[Case]) {
    run_cases_on(&Pair::start(), cases, &[], PAUSE);
}

/// `run_cases`, each one-step request sent in pieces cut at `cuts`, `pause` apart.
fn run_cases_on(pair: &Pair, cases: &[Case], cuts: &[usize], pause: Duration) {
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names repeat");
    let mut failures = Vec::new();
    for case in cases {
        pair.flush();
        let (theirs, requests) = run_one(pair.mc.addr, case, cuts, pause);
        pair.flush();
        let (ours, _) = run_one(pair.us.addr, case, cuts, pause);
        if std::env::var_os("TAILORKV_SHOW_REPLIES").is_some() {
            eprintln!(
                "case {:?}\n  request: {}\n  memcached:\n    {}",
                case.name,
                show_request(&requests),
                theirs.join("\n    ")
            );
        }
        if theirs != ours {
            failures.push(format!(
                "case {:?}\n  request ({} bytes): {}\n  memcached:\n    {}\n  controlet:\n    {}",
                case.name,
                requests.len(),
                show_request(&requests),
                theirs.join("\n    "),
                ours.join("\n    "),
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ from memcached:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The case tables
// ---------------------------------------------------------------------------------------------

/// A CAS no server hands out in a test.
const STALE: u64 = 99_999_999_999;

/// A key longer than memcached's 250 bytes.
fn long_key(n: usize) -> Vec<u8> {
    vec![b'k'; n]
}

fn storage_cases() -> Vec<Case> {
    vec![
        case(
            "SET then GET",
            p![store(op::SET, "a", 5, 0, "hello"), keyed(op::GET, "a")],
        ),
        case(
            "SET overwrites value, flags and CAS",
            p![
                store(op::SET, "a", 1, 0, "x"),
                store(op::SET, "a", 2, 0, "yy"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "SET with flags u32 max",
            p![store(op::SET, "a", u32::MAX, 0, "x"), keyed(op::GETK, "a")],
        ),
        case(
            "SET with an absolute expiration in the past is gone at once",
            p![
                store(op::SET, "a", 0, 1_000_000_000, "x"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "SET with 30 days in seconds and with 0xffffffff stays",
            p![
                store(op::SET, "a", 0, 2_592_000, "x"),
                store(op::SET, "b", 0, u32::MAX, "y"),
                keyed(op::GET, "a"),
                keyed(op::GET, "b")
            ],
        ),
        case(
            "SET of an empty value",
            p![
                store(op::SET, "e", 7, 0, ""),
                keyed(op::GET, "e"),
                keyed(op::GETK, "e")
            ],
        ),
        case(
            "SETQ is silent on success; NOOP ends the batch",
            p![
                store(op::SETQ, "a", 3, 0, "quiet"),
                noop().opaque(9),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "ADD on a missing key, then on the existing key",
            p![
                store(op::ADD, "a", 0, 0, "first"),
                store(op::ADD, "a", 0, 0, "second"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "ADDQ on an existing key still answers EEXISTS",
            p![
                set("a", "x"),
                store(op::ADDQ, "a", 0, 0, "y").opaque(1),
                store(op::ADDQ, "b", 0, 0, "z").opaque(2),
                noop().opaque(3),
                keyed(op::GET, "b")
            ],
        ),
        case(
            "REPLACE on a missing key, then on an existing key",
            p![
                store(op::REPLACE, "a", 0, 0, "x"),
                set("a", "old"),
                store(op::REPLACE, "a", 4, 0, "new"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "REPLACEQ: silent on success, answers a miss",
            p![
                store(op::REPLACEQ, "missing", 0, 0, "x").opaque(1),
                set("a", "old"),
                store(op::REPLACEQ, "a", 0, 0, "new").opaque(2),
                noop(),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "SET with a CAS on a missing key: ENOENT",
            p![
                store(op::SET, "a", 0, 0, "x").cas(12345),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "SET with a stale CAS: EEXISTS, the item stays",
            p![
                set("a", "x"),
                store(op::SET, "a", 0, 0, "y").cas(STALE),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "SETQ with a stale CAS still answers EEXISTS",
            p![
                set("a", "x"),
                store(op::SETQ, "a", 0, 0, "y").cas(STALE).opaque(4),
                noop()
            ],
        ),
        flow(
            "SET with the item's CAS replaces it",
            vec![
                p![set("a", "x")],
                p![
                    store(op::SET, "a", 1, 0, "y").cas_of(1),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        flow(
            "SET with the CAS of an overwritten version: EEXISTS",
            vec![
                p![set("a", "x"), set("a", "y")],
                p![
                    store(op::SET, "a", 0, 0, "z").cas_of(1),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        flow(
            "ADD with the item's CAS replaces the existing item",
            vec![
                p![set("a", "x")],
                p![
                    store(op::ADD, "a", 0, 0, "y").cas_of(1),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        flow(
            "REPLACE with the item's CAS, then with the same CAS again",
            vec![
                p![set("a", "x")],
                p![
                    store(op::REPLACE, "a", 0, 0, "y").cas_of(1),
                    store(op::REPLACE, "a", 0, 0, "z").cas_of(1),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        flow(
            "SETQ with the item's CAS is silent",
            vec![
                p![set("a", "x")],
                p![
                    store(op::SETQ, "a", 0, 0, "y").cas_of(1),
                    noop(),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        case(
            "datatype and vbucket of a request are ignored",
            p![
                set("a", "x").datatype(1).vbucket(0x1234),
                keyed(op::GET, "a").datatype(0x7f).vbucket(7)
            ],
        ),
        case(
            "GET ignores the CAS of the request",
            p![set("a", "x"), keyed(op::GET, "a").cas(STALE)],
        ),
        case(
            "every reply echoes its request's opaque",
            p![
                set("a", "1").opaque(0xdead_beef),
                keyed(op::GET, "a").opaque(1),
                keyed(op::GET, "zz").opaque(2),
                store(op::ADD, "a", 0, 0, "x").opaque(3),
                arith(op::INCREMENT, "a", 1, 0, 0).opaque(4),
                keyed(op::DELETE, "a").opaque(5),
                bare(op::VERSION).opaque(6),
                bare(op::FLUSH).opaque(u32::MAX),
                noop().opaque(0x8000_0000)
            ],
        ),
    ]
}

fn append_prepend_cases() -> Vec<Case> {
    vec![
        case(
            "APPEND and PREPEND keep the flags, change the CAS",
            p![
                store(op::SET, "a", 9, 0, "mid"),
                concat(op::APPEND, "a", "-end"),
                concat(op::PREPEND, "a", "start-"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "APPEND and PREPEND to a missing key: NOT_STORED",
            p![
                concat(op::APPEND, "a", "x"),
                concat(op::PREPEND, "a", "x"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "APPENDQ and PREPENDQ are silent on success",
            p![
                store(op::SET, "a", 3, 0, "x"),
                concat(op::APPENDQ, "a", "z"),
                concat(op::PREPENDQ, "a", "w"),
                noop(),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "APPENDQ and PREPENDQ to a missing key answer NOT_STORED",
            p![
                concat(op::APPENDQ, "a", "z").opaque(1),
                concat(op::PREPENDQ, "a", "w").opaque(2),
                noop()
            ],
        ),
        case(
            "APPEND with a stale CAS: EEXISTS",
            p![
                set("a", "x"),
                concat(op::APPEND, "a", "y").cas(STALE),
                concat(op::PREPEND, "a", "y").cas(STALE),
                keyed(op::GET, "a")
            ],
        ),
        flow(
            "APPEND with the item's CAS appends; PREPEND with it after that: EEXISTS",
            vec![
                p![set("a", "x")],
                p![
                    concat(op::APPEND, "a", "y").cas_of(1),
                    concat(op::PREPEND, "a", "w").cas_of(1),
                    keyed(op::GET, "a")
                ],
            ],
        ),
        case(
            "APPEND of an empty value",
            p![
                set("a", "x"),
                concat(op::APPEND, "a", ""),
                keyed(op::GET, "a")
            ],
        ),
    ]
}

fn retrieval_cases() -> Vec<Case> {
    vec![
        case(
            "GET hit and miss",
            p![set("a", "hello"), keyed(op::GET, "a"), keyed(op::GET, "zz")],
        ),
        case(
            "GETK hit and miss return the key",
            p![
                store(op::SET, "a", 2, 0, "hello"),
                keyed(op::GETK, "a"),
                keyed(op::GETK, "zz")
            ],
        ),
        case(
            "GETQ and GETKQ misses are silent, NOOP ends the batch",
            p![
                keyed(op::GETQ, "x").opaque(1),
                keyed(op::GETKQ, "y").opaque(2),
                noop().opaque(3)
            ],
        ),
        case(
            "GETQ and GETKQ hits are answered",
            p![
                store(op::SET, "a", 1, 0, "one"),
                keyed(op::GETQ, "a").opaque(1),
                keyed(op::GETKQ, "a").opaque(2),
                noop().opaque(3)
            ],
        ),
        case(
            "a multi-get as libmemcached sends it: GETKQ for each key, then NOOP",
            p![
                set("k1", "v1"),
                set("k3", "v3"),
                keyed(op::GETKQ, "k1"),
                keyed(op::GETKQ, "k2"),
                keyed(op::GETKQ, "k3"),
                keyed(op::GETKQ, "k4"),
                noop()
            ],
        ),
        case(
            "quiet misses at the end, no NOOP: nothing more before the close",
            p![set("a", "x"), keyed(op::GETQ, "zz"), keyed(op::GETKQ, "zz")],
        ),
    ]
}

fn delete_cases() -> Vec<Case> {
    vec![
        case(
            "DELETE a hit, then the miss",
            p![
                set("a", "x"),
                keyed(op::DELETE, "a"),
                keyed(op::DELETE, "a"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "DELETEQ is silent on a hit, answers a miss",
            p![
                set("a", "x"),
                keyed(op::DELETEQ, "a").opaque(1),
                keyed(op::DELETEQ, "a").opaque(2),
                noop(),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "DELETE with a stale CAS: EEXISTS, the item stays",
            p![
                set("a", "x"),
                keyed(op::DELETE, "a").cas(STALE),
                keyed(op::DELETEQ, "a").cas(STALE),
                keyed(op::GET, "a")
            ],
        ),
        flow(
            "DELETE with the item's CAS",
            vec![
                p![set("a", "x")],
                p![keyed(op::DELETE, "a").cas_of(1), keyed(op::GET, "a")],
            ],
        ),
        case(
            "DELETE with a CAS on a missing key: ENOENT",
            p![keyed(op::DELETE, "a").cas(5)],
        ),
    ]
}

fn arithmetic_cases() -> Vec<Case> {
    let no_create = u32::MAX;
    vec![
        case(
            "INCREMENT a missing key creates it with the initial value",
            p![
                arith(op::INCREMENT, "n", 1, 10, 0),
                keyed(op::GET, "n"),
                arith(op::INCREMENT, "n", 5, 10, 0)
            ],
        ),
        case(
            "DECREMENT a missing key creates it with the initial value",
            p![arith(op::DECREMENT, "n", 3, 7, 0), keyed(op::GETK, "n")],
        ),
        case(
            "INCREMENT then DECREMENT an existing number",
            p![
                set("n", "100"),
                arith(op::INCREMENT, "n", 23, 0, 0),
                arith(op::DECREMENT, "n", 3, 0, 0),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "INCREMENT and DECREMENT with expiration 0xffffffff do not create",
            p![
                arith(op::INCREMENT, "n", 1, 10, no_create),
                arith(op::DECREMENT, "n", 1, 10, no_create),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "INCREMENTQ with expiration 0xffffffff answers ENOENT",
            p![
                arith(op::INCREMENTQ, "n", 1, 10, no_create).opaque(1),
                arith(op::DECREMENTQ, "n", 1, 10, no_create).opaque(2),
                noop()
            ],
        ),
        case(
            "INCREMENT an existing key ignores the expiration 0xffffffff",
            p![set("n", "5"), arith(op::INCREMENT, "n", 2, 0, no_create)],
        ),
        case(
            "INCREMENTQ and DECREMENTQ are silent on success",
            p![
                set("n", "5"),
                arith(op::INCREMENTQ, "n", 2, 0, 0),
                arith(op::DECREMENTQ, "n", 1, 0, 0),
                arith(op::INCREMENTQ, "m", 1, 40, 0),
                noop(),
                keyed(op::GET, "n"),
                keyed(op::GET, "m")
            ],
        ),
        case(
            "INCREMENT wraps at 2^64",
            p![
                set("n", "18446744073709551615"),
                arith(op::INCREMENT, "n", 2, 0, 0),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "DECREMENT stops at 0 and pads the old length with spaces",
            p![
                set("n", "15"),
                arith(op::DECREMENT, "n", 100, 0, 0),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "INCREMENT of 007 keeps the length: '8  '",
            p![
                set("n", "007"),
                arith(op::INCREMENT, "n", 1, 0, 0),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "INCREMENT grows the value and keeps the flags",
            p![
                store(op::SET, "n", 7, 0, "99"),
                arith(op::INCREMENT, "n", 1, 0, 0),
                keyed(op::GET, "n")
            ],
        ),
        case(
            "INCREMENT with initial value u64 max, then past it",
            p![
                arith(op::INCREMENT, "m", 1, u64::MAX, 0),
                keyed(op::GET, "m"),
                arith(op::INCREMENT, "m", 1, 0, 0)
            ],
        ),
        case(
            "INCREMENT a non-numeric value: DELTA_BADVAL",
            p![
                set("n", "abc"),
                arith(op::INCREMENT, "n", 1, 0, 0),
                arith(op::DECREMENT, "n", 1, 0, 0)
            ],
        ),
        case(
            "INCREMENT of -5 and of 12abc: DELTA_BADVAL",
            p![
                set("n", "-5"),
                set("m", "12abc"),
                arith(op::INCREMENT, "n", 1, 0, 0),
                arith(op::INCREMENT, "m", 1, 0, 0)
            ],
        ),
        case(
            "DECREMENTQ of a non-numeric value answers DELTA_BADVAL",
            p![set("n", "x"), arith(op::DECREMENTQ, "n", 1, 0, 0), noop()],
        ),
        case(
            "INCREMENT with a stale CAS: EEXISTS",
            p![set("n", "5"), arith(op::INCREMENT, "n", 2, 0, 0).cas(STALE)],
        ),
        flow(
            "INCREMENT with the item's CAS",
            vec![
                p![set("n", "5")],
                p![
                    arith(op::INCREMENT, "n", 2, 0, 0).cas_of(1),
                    arith(op::INCREMENT, "n", 2, 0, 0).cas_of(1)
                ],
            ],
        ),
        case(
            "INCREMENT of an empty value: DELTA_BADVAL",
            p![set("n", ""), arith(op::INCREMENT, "n", 1, 0, 0)],
        ),
    ]
}

fn touch_cases() -> Vec<Case> {
    vec![
        case(
            "TOUCH a hit returns the flags, no value, the same CAS",
            p![
                store(op::SET, "a", 9, 0, "val"),
                touch(op::TOUCH, "a", 100).opaque(7),
                keyed(op::GET, "a")
            ],
        ),
        case("TOUCH a miss", p![touch(op::TOUCH, "zz", 100)]),
        case(
            "TOUCH with an absolute time in the past expires the item",
            p![
                set("a", "val"),
                touch(op::TOUCH, "a", 1_000_000_000),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "GAT and GATK hits",
            p![
                store(op::SET, "a", 9, 0, "val"),
                touch(op::GAT, "a", 100),
                touch(op::GATK, "a", 100)
            ],
        ),
        case(
            "GAT and GATK misses",
            p![touch(op::GAT, "zz", 100), touch(op::GATK, "zz", 100)],
        ),
        case(
            "GATQ and GATKQ: misses silent, hits answered",
            p![
                store(op::SET, "a", 9, 0, "val"),
                touch(op::GATQ, "zz", 100).opaque(1),
                touch(op::GATKQ, "zz", 100).opaque(2),
                touch(op::GATQ, "a", 100).opaque(3),
                touch(op::GATKQ, "a", 100).opaque(4),
                noop()
            ],
        ),
        case(
            "GAT with an absolute time in the past returns the value, then it is gone",
            p![
                set("a", "val"),
                touch(op::GAT, "a", 1_000_000_000),
                keyed(op::GET, "a")
            ],
        ),
    ]
}

fn flush_noop_version_quit_cases() -> Vec<Case> {
    vec![
        case(
            "FLUSH empties",
            p![set("a", "x"), bare(op::FLUSH), keyed(op::GET, "a")],
        ),
        case(
            "FLUSH with 4-byte extras 0 empties now",
            p![set("a", "x"), flush_in(op::FLUSH, 0), keyed(op::GET, "a")],
        ),
        case(
            "FLUSH with a delay keeps items for now",
            p![set("a", "x"), flush_in(op::FLUSH, 100), keyed(op::GET, "a")],
        ),
        case(
            "FLUSHQ is silent",
            p![set("a", "x"), bare(op::FLUSHQ), noop(), keyed(op::GET, "a")],
        ),
        case(
            "FLUSHQ with 4-byte extras is silent",
            p![
                set("a", "x"),
                flush_in(op::FLUSHQ, 0),
                noop(),
                keyed(op::GET, "a")
            ],
        ),
        case("NOOP", p![noop(), noop().opaque(42)]),
        case("VERSION", p![bare(op::VERSION).opaque(3)]),
        case(
            "QUIT answers, then closes: the next packet is not answered",
            p![bare(op::QUIT).opaque(3), noop()],
        ),
        case(
            "QUITQ closes silently",
            p![bare(op::QUITQ).opaque(3), noop()],
        ),
        case("STAT reset", p![stat("reset").opaque(5), noop()]),
        case(
            "STAT of an unknown group: ENOENT, the connection lives",
            p![stat("bogus").opaque(5), noop()],
        ),
        case(
            "STAT conns is not a group of binary STAT",
            p![stat("conns"), noop()],
        ),
        case(
            "STAT compares the group's first bytes: resetting is reset",
            p![stat("resetting"), noop()],
        ),
    ]
}

fn sasl_off_and_unknown_cases() -> Vec<Case> {
    vec![
        case(
            "SASL_LIST_MECHS with SASL off: unknown command",
            p![bare(op::SASL_LIST_MECHS).opaque(1), noop()],
        ),
        case(
            "SASL_AUTH with SASL off: unknown command, the data skipped",
            p![
                keyed(op::SASL_AUTH, "PLAIN").value(b"\0user\0password"),
                noop()
            ],
        ),
        case(
            "SASL_STEP with SASL off: unknown command",
            p![keyed(op::SASL_STEP, "PLAIN").value(b"\0u\0p"), noop()],
        ),
        case(
            "unknown opcode 0x1b (VERBOSITY, not in memcached 1.6.18)",
            p![bare(op::VERBOSITY).opaque(8), noop()],
        ),
        case(
            "unknown opcode 0x30 (RGET) with a value: the body is skipped",
            p![bare(op::RGET).value("hello").opaque(9), noop()],
        ),
        case("unknown opcode 0xfe without a body", p![bare(0xfe), noop()]),
        case(
            "unknown opcode 0xfe with a 1000-byte value",
            p![bare(0xfe).value(vec![b'\x80'; 1000]), noop()],
        ),
        case(
            "unknown opcodes one after another",
            p![bare(0x25), bare(0x40).value("x"), bare(0xff), noop()],
        ),
    ]
}

fn malformed_cases() -> Vec<Case> {
    let ext4 = [0u8; 4];
    let ext8 = [0u8; 8];
    vec![
        case(
            "GET with extras: EINVAL, then the connection closes",
            p![keyed(op::GET, "a").extras(ext4), noop()],
        ),
        case("GET without a key", p![bare(op::GET), noop()]),
        case(
            "GET with a value after the key",
            p![keyed(op::GET, "a").value("v"), noop()],
        ),
        case("GETKQ without a key", p![bare(op::GETKQ), noop()]),
        case(
            "SET with 4-byte extras",
            p![keyed(op::SET, "a").extras(ext4).value("v"), noop()],
        ),
        case(
            "SET without extras",
            p![keyed(op::SET, "a").value("v"), noop()],
        ),
        case(
            "SET without a key",
            p![store(op::SET, "", 0, 0, "v"), noop()],
        ),
        case(
            "ADDQ without a key answers EINVAL too",
            p![store(op::ADDQ, "", 0, 0, "v"), noop()],
        ),
        case(
            "APPEND with extras",
            p![keyed(op::APPEND, "a").extras(ext8).value("v"), noop()],
        ),
        case(
            "PREPEND without a key",
            p![bare(op::PREPEND).value("v"), noop()],
        ),
        case(
            "DELETE with 4-byte extras (an old expiration)",
            p![keyed(op::DELETE, "a").extras(ext4), noop()],
        ),
        case("DELETE without a key", p![bare(op::DELETE), noop()]),
        case(
            "INCREMENT with 8-byte extras",
            p![keyed(op::INCREMENT, "n").extras(ext8), noop()],
        ),
        case(
            "INCREMENT with a value after the key",
            p![arith(op::INCREMENT, "n", 1, 0, 0).value("1"), noop()],
        ),
        case(
            "DECREMENT without a key",
            p![bare(op::DECREMENT).extras([0u8; 20]), noop()],
        ),
        case("TOUCH without extras", p![keyed(op::TOUCH, "a"), noop()]),
        case("GAT without a key", p![bare(op::GAT).extras(ext4), noop()]),
        case(
            "FLUSH with 8-byte extras",
            p![bare(op::FLUSH).extras(ext8), noop()],
        ),
        case("FLUSH with a key", p![keyed(op::FLUSH, "a"), noop()]),
        case("NOOP with a value", p![bare(op::NOOP).value("v"), noop()]),
        case("VERSION with a key", p![keyed(op::VERSION, "k"), noop()]),
        case(
            "QUIT with a key: EINVAL, then closed",
            p![keyed(op::QUIT, "k"), noop()],
        ),
        case("STAT with extras", p![bare(op::STAT).extras(ext4), noop()]),
        case(
            "SASL_LIST_MECHS with a key",
            p![keyed(op::SASL_LIST_MECHS, "x"), noop()],
        ),
        case(
            "SASL_AUTH without a key",
            p![bare(op::SASL_AUTH).value("x"), noop()],
        ),
        case(
            "GET with a key of 251 bytes: EINVAL, then closed",
            p![keyed(op::GET, long_key(251)), noop()],
        ),
        case(
            "SET with a key of 251 bytes",
            p![set(long_key(251), "v"), noop()],
        ),
        case(
            "a key of 250 bytes works",
            p![
                keyed(op::GET, long_key(250)),
                set(long_key(250), "v"),
                keyed(op::GETK, long_key(250))
            ],
        ),
        case(
            "key length beyond the body length: UNKNOWN_COMMAND, then closed",
            p![keyed(op::GET, "abc").bodylen(2), noop()],
        ),
        case(
            "key and extras lengths beyond the body length",
            p![set("a", "").bodylen(5), noop()],
        ),
        case(
            "a packet with the response magic 0x81 closes the connection unanswered",
            p![
                noop().opaque(1),
                noop().magic(RESPONSE).opaque(2),
                noop().opaque(3)
            ],
        ),
        case(
            "any other magic after a binary packet closes the connection",
            p![noop().opaque(1), noop().magic(0x00)],
        ),
        case(
            "a header cut short by the close",
            p![noop().opaque(1), raw(&keyed(op::GET, "abc").bytes()[..10])],
        ),
        case(
            "a body cut short by the close",
            p![noop().opaque(1), raw(&set("abc", "value").bytes()[..36])],
        ),
        case(
            "a key length beyond the key sent, then the close",
            p![keyed(op::GET, "abc").keylen(200)],
        ),
    ]
}

/// The largest value memcached 1.6.18 stores under a 3-byte key with its default 1 MiB item
/// size limit (the same as the text protocol's `set big 0 0 1048514`).
const LARGEST: usize = 1_048_514;

fn large_value_cases() -> Vec<Case> {
    let big = |n: usize| vec![b'v'; n];
    vec![
        case(
            "the largest value stored (1048514 bytes under a 3-byte key)",
            p![set("big", big(LARGEST)), keyed(op::GET, "big"), noop()],
        ),
        case(
            "one byte more: E2BIG, the data skipped, the connection lives",
            p![set("big", big(LARGEST + 1)), keyed(op::GET, "big"), noop()],
        ),
        case(
            "a 900 KB value round trip with GETK",
            p![
                store(op::SET, "v", 3, 0, vec![b'x'; 900_000]),
                keyed(op::GETK, "v")
            ],
        ),
        case(
            "a 2 MB SET: E2BIG, and the key's old value is removed",
            p![
                set("big", "old"),
                set("big", big(2_000_000)),
                keyed(op::GET, "big"),
                noop()
            ],
        ),
        case(
            "a 2 MB ADD and REPLACE: E2BIG, the old value kept",
            p![
                set("big", "old"),
                store(op::ADD, "big", 0, 0, big(2_000_000)),
                store(op::REPLACE, "big", 0, 0, big(2_000_000)),
                keyed(op::GET, "big")
            ],
        ),
        case(
            "a 2 MB SETQ still answers E2BIG",
            p![
                store(op::SETQ, "big", 0, 0, big(2_000_000)).opaque(5),
                noop()
            ],
        ),
        case(
            "a 2 MB APPEND: E2BIG, the old value kept",
            p![
                set("big", "old"),
                concat(op::APPEND, "big", big(2_000_000)),
                keyed(op::GET, "big")
            ],
        ),
        case(
            "APPEND past the size limit: NOT_STORED",
            p![
                set("big", big(1_000_000)),
                concat(op::APPEND, "big", big(100_000)),
                keyed(op::GET, "big")
            ],
        ),
    ]
}

fn key_cases() -> Vec<Case> {
    vec![
        case(
            "a key with a space, CR LF, NUL and 0xff",
            p![
                store(op::SET, b"a b\r\n\0\xff", 5, 0, "v\r\n"),
                keyed(op::GETK, b"a b\r\n\0\xff"),
                keyed(op::GET, "a b"),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "a key of one NUL byte",
            p![
                set(b"\0", "nul"),
                keyed(op::GETK, b"\0"),
                keyed(op::DELETE, b"\0")
            ],
        ),
        case(
            "keys that differ only after a NUL are distinct",
            p![
                set(b"k\0one", "1"),
                set(b"k\0two", "2"),
                keyed(op::GETK, b"k\0one"),
                keyed(op::GETK, b"k\0two"),
                keyed(op::GET, "k")
            ],
        ),
        case(
            "a key of 250 bytes of 0xff with INCREMENT and TOUCH",
            p![
                arith(op::INCREMENT, vec![0xffu8; 250], 1, 5, 0),
                touch(op::GATK, vec![0xffu8; 250], 100)
            ],
        ),
        case(
            "a key made like a text command",
            p![
                set("get a\r\nset b 0 0 1", "x"),
                keyed(op::GETK, "get a\r\nset b 0 0 1"),
                keyed(op::GET, "b")
            ],
        ),
    ]
}

fn pipeline_cases() -> Vec<Case> {
    let mut many = p![];
    for i in 0..100u32 {
        many.push(store(op::SETQ, format!("key{i}"), i, 0, format!("value{i}")).into());
    }
    for i in (0..200u32).step_by(3) {
        many.push(keyed(op::GETKQ, format!("key{i}")).opaque(i).into());
    }
    many.push(noop().opaque(1000).into());

    let mut mixed = p![];
    for i in 0..30u32 {
        let key = format!("m{}", i % 7);
        let packet = match i % 6 {
            0 => store(op::SETQ, &key, 0, 0, "1"),
            1 => store(op::ADDQ, &key, 0, 0, "2"),
            2 => arith(op::INCREMENTQ, &key, 1, 0, 0),
            3 => concat(op::APPENDQ, &key, "x"),
            4 => keyed(op::DELETEQ, &key),
            _ => keyed(op::GETKQ, &key),
        };
        mixed.push(packet.opaque(i).into());
    }
    mixed.push(noop().opaque(99).into());

    vec![
        case("100 SETQ, 67 GETKQ, one NOOP", many),
        case(
            "quiet commands of every kind, errors answered in order",
            mixed,
        ),
        case(
            "a pipeline of loud commands",
            p![
                set("a", "1"),
                keyed(op::GET, "a"),
                arith(op::INCREMENT, "a", 41, 0, 0),
                keyed(op::GETK, "a"),
                concat(op::APPEND, "a", "!"),
                touch(op::GAT, "a", 0),
                keyed(op::DELETE, "a"),
                keyed(op::GET, "a"),
                bare(op::VERSION),
                noop()
            ],
        ),
        case(
            "quiet commands after a QUITQ are not run",
            p![set("a", "1"), bare(op::QUITQ), set("a", "2")],
        ),
    ]
}

fn mixed_text_cases() -> Vec<Case> {
    vec![
        case(
            "text first: a later binary VERSION packet is a text line",
            p![
                raw("version\r\n"),
                bare(op::VERSION),
                raw("\r\nversion\r\n")
            ],
        ),
        case(
            "text first: a binary NOOP header holds a newline (0x0a)",
            p![raw("version\r\n"), noop(), raw("\r\n")],
        ),
        case(
            "text first: a binary SET is a bad text line",
            p![raw("get a\r\n"), set("a", "x"), raw("\r\nget a\r\n")],
        ),
        case(
            "binary first: a later text line closes the connection",
            p![noop(), raw("get a\r\n"), noop()],
        ),
        case(
            "binary first: a text line after a set is not run",
            p![set("a", "x"), raw("delete a\r\n")],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// The differential tests
// ---------------------------------------------------------------------------------------------

#[test]
fn storage_commands_match_memcached() {
    let mut cases = storage_cases();
    cases.extend(append_prepend_cases());
    cases.extend(delete_cases());
    run_cases(&cases);
}

#[test]
fn retrieval_and_touch_match_memcached() {
    let mut cases = retrieval_cases();
    cases.extend(touch_cases());
    cases.extend(key_cases());
    run_cases(&cases);
}

#[test]
fn arithmetic_matches_memcached() {
    run_cases(&arithmetic_cases());
}

#[test]
fn flush_noop_version_quit_and_stat_groups_match_memcached() {
    run_cases(&flush_noop_version_quit_cases());
}

#[test]
fn unknown_and_malformed_packets_match_memcached() {
    let mut cases = sasl_off_and_unknown_cases();
    cases.extend(malformed_cases());
    run_cases(&cases);
}

#[test]
fn large_values_match_memcached() {
    run_cases(&large_value_cases());
}

#[test]
fn pipelines_and_mixed_text_match_memcached() {
    let mut cases = pipeline_cases();
    cases.extend(mixed_text_cases());
    run_cases(&cases);
}

/// Requests cut into pieces at awkward places (inside the header, at its end, inside the
/// extras, key and value), sent 20 ms apart, are answered as when sent whole; and one sent a
/// byte at a time.
#[test]
fn requests_split_across_packets_match_memcached() {
    let pair = Pair::start();
    let cases = vec![
        case(
            "SET, GETK, NOOP",
            p![
                store(op::SET, "key", 3, 0, "value"),
                keyed(op::GETK, "key"),
                noop()
            ],
        ),
        case(
            "quiet SETs, GETKQ, NOOP",
            p![
                store(op::SETQ, "a", 0, 0, "1"),
                store(op::SETQ, "b", 0, 0, "22"),
                keyed(op::GETKQ, "a"),
                keyed(op::GETKQ, "zz"),
                keyed(op::GETKQ, "b"),
                noop()
            ],
        ),
        case(
            "INCREMENT creating, then DECREMENT",
            p![
                arith(op::INCREMENT, "n", 1, 10, 0),
                arith(op::DECREMENT, "n", 4, 0, 0),
                noop()
            ],
        ),
        case(
            "an unknown opcode with a value, then NOOP",
            p![bare(0xfe).value("hello world"), noop()],
        ),
        case(
            "a 2 MB SET (E2BIG), then GET",
            p![set("big", vec![b'v'; 2_000_000]), keyed(op::GET, "big")],
        ),
        case(
            "a malformed GET, then NOOP",
            p![keyed(op::GET, "a").extras([0u8; 4]), noop()],
        ),
    ];
    for cuts in [
        &[1usize, 2, 12, 23][..],
        &[24, 25, 31, 33, 35],
        &[20, 28, 40, 50, 60, 70, 80],
    ] {
        run_cases_on(&pair, &cases, cuts, PAUSE);
    }
    let every_byte: Vec<usize> = (1..200).collect();
    let small = [case(
        "a byte at a time",
        p![
            set("k", "v"),
            keyed(op::GETK, "k"),
            keyed(op::GETQ, "zz"),
            noop()
        ],
    )];
    run_cases_on(&pair, &small, &every_byte, Duration::from_millis(2));
}

/// memcached skips an unknown command's body by its body length counted after the key and
/// extras it already read (`write_bin_error(c, UNKNOWN_COMMAND, NULL, bodylen)` in
/// `dispatch_bin_command`, proto_bin.c:1070), so it skips as many bytes of what follows as
/// the key and extras hold. Here the bytes it eats are filler, so the NOOP after them is
/// answered on both.
#[test]
fn unknown_opcode_with_a_key_or_extras_skips_that_much_more() {
    let filler_key = [0xaau8; 3];
    let filler_extras = [0xaau8; 4];
    run_cases(&[
        case(
            "unknown opcode 0xfe with a 3-byte key and a value, then 3 filler bytes",
            p![
                keyed(0xfe, "abc").value("hello"),
                raw(filler_key),
                noop().opaque(1)
            ],
        ),
        case(
            "unknown opcode 0x1b with 4-byte extras, then 4 filler bytes",
            p![
                bare(op::VERBOSITY).extras([0, 0, 0, 1]),
                raw(filler_extras),
                noop()
            ],
        ),
    ]);
}

/// VERSION answers `1.6.18` from memcached and our version, which starts with it.
#[test]
fn version_is_1_6_18_with_our_suffix() {
    let pair = Pair::start();
    for (addr, expected) in [(pair.mc.addr, "1.6.18"), (pair.us.addr, OUR_VERSION)] {
        let t = converse(
            addr,
            &case("VERSION", p![bare(op::VERSION).opaque(77)]),
            &[],
            PAUSE,
        );
        let replies = packets(&t.reply);
        assert_eq!(replies.len(), 1, "{addr}: {replies:?}");
        let r = &replies[0];
        assert_eq!(
            (r.opcode, r.status, r.opaque, r.cas),
            (op::VERSION, 0, 77, 0),
            "{addr}"
        );
        assert!(r.extras.is_empty() && r.key.is_empty(), "{addr}: {r:?}");
        assert_eq!(String::from_utf8_lossy(&r.value), expected, "{addr}");
    }
    assert!(OUR_VERSION.starts_with("1.6.18-tailorkv-"));
}

// ---------------------------------------------------------------------------------------------
// STAT
// ---------------------------------------------------------------------------------------------

/// A binary STAT of `group`: the (name, value) pairs, after checking the packets' shape: each
/// a STAT reply with status 0, no extras, CAS 0 and the request's opaque, the last one empty;
/// and the connection answers a NOOP after it.
fn binary_stats(addr: SocketAddr, group: &str) -> Vec<(String, String)> {
    let t = converse(
        addr,
        &case("stat", p![stat(group).opaque(0x57a7), noop().opaque(1)]),
        &[],
        PAUSE,
    );
    let mut replies = packets(&t.reply);
    let end = replies.pop().expect("a reply");
    assert_eq!(
        (end.opcode, end.opaque),
        (op::NOOP, 1),
        "{addr}: STAT {group:?}"
    );
    let last = replies.pop().expect("STAT's closing packet");
    assert!(
        last.opcode == op::STAT && last.status == 0 && last.key.is_empty() && last.value.is_empty(),
        "{addr}: STAT {group:?} does not end with an empty STAT packet: {last:?}"
    );
    replies
        .into_iter()
        .map(|r| {
            assert_eq!(
                (r.magic, r.opcode, r.status, r.opaque, r.cas, r.datatype),
                (RESPONSE, op::STAT, 0, 0x57a7, 0, 0),
                "{addr}: STAT {group:?}: {r:?}"
            );
            assert!(r.extras.is_empty(), "{addr}: {r:?}");
            (
                String::from_utf8(r.key).unwrap(),
                String::from_utf8(r.value).unwrap(),
            )
        })
        .collect()
}

/// A text `stats <group>`: the (name, value) pairs.
fn text_stats(addr: SocketAddr, group: &str) -> Vec<(String, String)> {
    let request = if group.is_empty() {
        "stats\r\n".to_string()
    } else {
        format!("stats {group}\r\n")
    };
    String::from_utf8(text_exchange(addr, request.as_bytes()))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (name, value) = l.strip_prefix("STAT ")?.split_once(' ')?;
            Some((name.to_string(), value.to_string()))
        })
        .collect()
}

fn names(stats: &[(String, String)]) -> BTreeSet<String> {
    stats.iter().map(|(n, _)| n.clone()).collect()
}

/// STAT with no key and with `settings`: the same names as the text `stats` of the same
/// server, in packets of the right shape; and for the general group, only names memcached
/// has (as the text differential's `controlet_reports_server_stats` holds them to be; our
/// `stats settings` adds settings of our own, `datalet`). Values are timings, pids, ports:
/// left out, but for the version.
#[test]
fn stat_general_and_settings_name_what_text_stats_name() {
    let pair = Pair::start();
    for group in ["", "settings"] {
        let theirs = binary_stats(pair.mc.addr, group);
        let ours = binary_stats(pair.us.addr, group);
        assert!(theirs.len() > 40, "memcached's STAT {group:?}: {theirs:?}");
        assert_eq!(
            names(&theirs),
            names(&text_stats(pair.mc.addr, group)),
            "memcached's binary and text stats {group:?} name the same"
        );
        assert_eq!(
            names(&ours),
            names(&text_stats(pair.us.addr, group)),
            "our binary and text stats {group:?} name the same"
        );
        let shared = names(&ours).intersection(&names(&theirs)).count();
        assert!(
            shared > if group.is_empty() { 40 } else { 20 },
            "STAT {group:?}: only {shared} names shared with memcached"
        );
        if group.is_empty() {
            let extra: Vec<String> = names(&ours).difference(&names(&theirs)).cloned().collect();
            assert!(extra.is_empty(), "we name, memcached does not: {extra:?}");
            let version = |stats: &[(String, String)]| {
                stats
                    .iter()
                    .find(|(n, _)| n == "version")
                    .map(|(_, v)| v.clone())
            };
            assert_eq!(version(&theirs).as_deref(), Some("1.6.18"));
            assert_eq!(version(&ours).as_deref(), Some(OUR_VERSION));
        }
    }
}

/// STAT `items` and `slabs` after the same binary requests: the same names in the same order
/// and the same values, but for what differs by design (as in the text differential's
/// `stats_items_and_slabs_match_memcached`: memcached's segmented LRU, and ages).
#[test]
fn stat_items_and_slabs_match_memcached() {
    let pair = Pair::start();
    let mut setup = p![];
    for (i, len) in [5usize, 100, 2_000, 2_000, 66_560].into_iter().enumerate() {
        setup.push(store(op::SETQ, format!("k{i}"), i as u32 % 2, 0, vec![b'x'; len]).into());
    }
    setup.extend(p![
        keyed(op::GETQ, "k0"),
        keyed(op::GETQ, "nothing"),
        keyed(op::DELETEQ, "k3"),
        touch(op::TOUCH, "k1", 100),
        noop()
    ]);
    let setup = case("setup", setup);
    let theirs = converse(pair.mc.addr, &setup, &[], PAUSE).reply;
    let ours = converse(pair.us.addr, &setup, &[], PAUSE).reply;
    assert_eq!(canonical(&ours), canonical(&theirs), "the setup requests");
    let differs = |name: &str| {
        [
            "number_hot",
            "number_cold",
            "hits_to_hot",
            "hits_to_cold",
            "age",
            "age_hot",
            "moves_to_cold",
            "moves_to_warm",
            "moves_within_lru",
            "lrutail_reflocked",
        ]
        .iter()
        .any(|d| name.ends_with(&format!(":{d}")))
    };
    for group in ["items", "slabs"] {
        let theirs = binary_stats(pair.mc.addr, group);
        let ours = binary_stats(pair.us.addr, group);
        let order = |s: &[(String, String)]| s.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert!(theirs.len() > 20, "memcached's STAT {group}: {theirs:?}");
        assert_eq!(order(&ours), order(&theirs), "STAT {group}: names");
        let wrong: Vec<String> = ours
            .iter()
            .zip(&theirs)
            .filter(|((name, o), (_, t))| !differs(name) && o != t)
            .map(|((name, o), (_, t))| format!("{name}: ours {o}, memcached {t}"))
            .collect();
        assert!(wrong.is_empty(), "STAT {group}:\n{}", wrong.join("\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// -B: the protocol a port speaks
// ---------------------------------------------------------------------------------------------

/// A memcached started with `-B binary`, which the harness's `ServerProcess` (ready when it
/// answers a text `version`) cannot start. Killed when dropped.
struct BinaryOnlyMemcached {
    addr: SocketAddr,
    child: std::process::Child,
}

impl BinaryOnlyMemcached {
    fn start() -> Self {
        for _ in 0..20 {
            let port = tailorkv_tests::free_port();
            let mut cmd = std::process::Command::new("memcached");
            cmd.args([
                "-p",
                &port.to_string(),
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-t",
                "2",
            ]);
            cmd.args(["-B", "binary"]);
            // SAFETY: getuid has no preconditions. memcached refuses root without -u.
            if unsafe { libc::getuid() } == 0 {
                cmd.args(["-u", "root"]);
            }
            let child = cmd
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start memcached ({e}): run `bash scripts/test`, which installs it"
                    )
                });
            let mut server = BinaryOnlyMemcached {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if server.child.try_wait().ok().flatten().is_some() {
                    break; // lost the port: try another
                }
                if TcpStream::connect(server.addr).is_ok() {
                    let t = converse(server.addr, &case("v", p![bare(op::VERSION)]), &[], PAUSE);
                    if packets(&t.reply)
                        .first()
                        .is_some_and(|r| r.value == b"1.6.18")
                    {
                        return server;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("memcached -B binary did not start");
    }
}

impl Drop for BinaryOnlyMemcached {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A controlet with `-B mode`, parsed as the command line would be (so this test does not
/// depend on how the setting is stored).
fn controlet_with_protocol(mode: &str) -> Controlet {
    use clap::Parser as _;
    let parsed = tailorkv_controlet::Config::try_parse_from(["controlet", "-B", mode])
        .unwrap_or_else(|e| panic!("the controlet refuses -B {mode}: {e}"));
    Controlet::start_with(move |c| c.protocol = parsed.protocol)
}

/// `-B binary`: a text request is not answered, the connection closed; binary is served.
/// `-B ascii`: a binary packet is a bad text line. `-B auto` is the default: both, chosen by
/// each connection's first byte.
#[test]
fn the_protocol_flag_binary_ascii_and_auto_as_memcached() {
    let text_then_binary = case(
        "a text request, then a binary VERSION",
        p![
            raw("version\r\n"),
            bare(op::VERSION),
            raw("\r\nversion\r\n")
        ],
    );
    let binary_then_text = case(
        "a binary VERSION, then a text request",
        p![bare(op::VERSION), raw("version\r\n")],
    );
    let binary_set_get = case(
        "binary SET and GET",
        p![set("a", "x"), keyed(op::GETK, "a"), noop()],
    );
    let compare = |mc: SocketAddr, us: SocketAddr, mode: &str, cases: &[&Case]| {
        for case in cases {
            let (theirs, requests) = run_one(mc, case, &[], PAUSE);
            let (ours, _) = run_one(us, case, &[], PAUSE);
            assert_eq!(
                ours,
                theirs,
                "-B {mode}: {}; request {}",
                case.name,
                show_request(&requests)
            );
        }
    };
    {
        let mc = BinaryOnlyMemcached::start();
        let us = controlet_with_protocol("binary");
        let text_only = case("text version", p![raw("version\r\n")]);
        compare(
            mc.addr,
            us.addr,
            "binary",
            &[
                &text_only,
                &text_then_binary,
                &binary_then_text,
                &binary_set_get,
            ],
        );
        let (theirs, _) = run_one(mc.addr, &text_only, &[], PAUSE);
        assert!(
            theirs.is_empty(),
            "memcached -B binary answered text: {theirs:?}"
        );
    }
    {
        let mc = ServerProcess::memcached(&["-B", "ascii"]);
        let us = controlet_with_protocol("ascii");
        compare(
            mc.addr,
            us.addr,
            "ascii",
            &[&text_then_binary, &binary_then_text, &binary_set_get],
        );
    }
    {
        let mc = ServerProcess::memcached(&["-B", "auto"]);
        let us = controlet_with_protocol("auto");
        compare(
            mc.addr,
            us.addr,
            "auto",
            &[&text_then_binary, &binary_then_text, &binary_set_get],
        );
    }
}

/// `-C`: every CAS unique reads 0, a storage command's unique is ignored (memcached cannot
/// note it on the new item), and a delete or increment with a unique fails, as against an item
/// whose unique is 0.
#[test]
fn dash_c_turns_cas_off_as_memcached_does() {
    let mc = ServerProcess::memcached(&["-C"]);
    let us = Controlet::start_with(|c| c.disable_cas = true);
    let cases = [
        case(
            "-C: a set with a unique stores, and every reply's unique is 0",
            p![
                set("a", "x"),
                set("a", "y").cas(12345),
                keyed(op::GETK, "a"),
                concat(op::APPEND, "a", "z").cas(777),
                keyed(op::GET, "a")
            ],
        ),
        case(
            "-C: a delete with a unique fails, one without deletes",
            p![
                set("d", "x"),
                keyed(op::DELETE, "d").cas(5),
                keyed(op::DELETE, "d"),
                keyed(op::GET, "d")
            ],
        ),
        case(
            "-C: an increment with a unique fails",
            p![
                set("n", "5"),
                arith(op::INCREMENT, "n", 1, 0, 0).cas(5),
                arith(op::INCREMENT, "n", 1, 0, 0),
                touch(op::GAT, "n", 100)
            ],
        ),
    ];
    for case in &cases {
        let (theirs, requests) = run_one(mc.addr, case, &[], PAUSE);
        let (ours, _) = run_one(us.addr, case, &[], PAUSE);
        assert_eq!(
            ours,
            theirs,
            "{}; request {}",
            case.name,
            show_request(&requests)
        );
        assert!(
            ours.iter().all(|line| line.contains(" cas=0")),
            "{}: {ours:?}",
            case.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SASL (the controlet alone)
// ---------------------------------------------------------------------------------------------

/// A blocking binary connection for step-by-step checks.
struct BinConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl BinConn {
    fn connect(addr: SocketAddr) -> BinConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        BinConn {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, packet: &Packet) {
        // The server may have closed: what follows shows it.
        let _ = self.stream.write_all(&packet.bytes());
    }

    /// The next response packet, or `None` if the server closed the connection (or sent
    /// nothing for 10 s) first.
    fn recv(&mut self) -> Option<Response> {
        loop {
            if let Some(Unit::Packet(p)) = split(&self.buf).into_iter().next() {
                let len = 24 + p.extras.len() + p.key.len() + p.value.len();
                self.buf.drain(..len);
                return Some(p);
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }
}

/// The checks of a conversation test, gathered so that one failure does not hide the next.
#[derive(Default)]
struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// Sends `packet` on `conn`; its reply must be `opcode` with `status` and `value`, and
    /// the request's opaque. Returns whether it was.
    fn expect(
        &mut self,
        conn: &mut BinConn,
        packet: Packet,
        (opcode, status, value): (u8, u16, &str),
        context: &str,
    ) -> bool {
        let request = packet.bytes();
        conn.send(&packet);
        let got = conn.recv();
        let ok = got.as_ref().is_some_and(|r| {
            (r.opcode, r.status, r.value.as_slice(), r.opaque)
                == (opcode, status, value.as_bytes(), packet.opaque)
                && r.key.is_empty()
                && r.extras.is_empty()
        });
        if !ok {
            self.failures.push(format!(
                "{context}:\n  request:  {}\n  expected: {}(0x{opcode:02x}) status=0x{status:04x} \
                 opaque=0x{:x} value={}\n  got:      {}",
                show_request(&request),
                op_name(opcode),
                packet.opaque,
                esc(value.as_bytes()),
                got.map_or("the connection closed, no reply".to_string(), |r| render(
                    &r,
                    &r.cas.to_string()
                )),
            ));
        }
        ok
    }

    /// The server must close `conn` without a reply to a NOOP sent now.
    fn expect_closed(&mut self, conn: &mut BinConn, context: &str) {
        conn.send(&noop());
        if let Some(r) = conn.recv() {
            self.failures.push(format!(
                "{context}: the connection stays open; a NOOP got {}",
                render(&r, &r.cas.to_string())
            ));
        }
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) {
        if !ok {
            self.failures.push(what.into());
        }
    }

    fn done(self) {
        assert!(
            self.failures.is_empty(),
            "{} checks failed:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

fn plain(user: &str, password: &str) -> Packet {
    keyed(op::SASL_AUTH, "PLAIN").value(format!("\0{user}\0{password}"))
}

/// A controlet whose `--auth-file` holds `users`.
fn controlet_with_users(users: &str) -> (Controlet, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("users");
    std::fs::write(&file, users).unwrap();
    (
        Controlet::start_with(move |c| c.auth_file = Some(file)),
        dir,
    )
}

const AUTHENTICATED: (u8, u16, &str) = (op::SASL_AUTH, status::OK, "Authenticated");
const AUTH_FAILURE: (u8, u16, &str) = (op::SASL_AUTH, status::AUTH_ERROR, "Auth failure.");

/// A controlet with `--auth-file` users: a binary connection authenticates with SASL PLAIN
/// as memcached's does with `-S` (memcached's own SASL needs a Cyrus SASL setup, so this runs
/// against the controlet alone; the replies are those of memcached's `t/binary-sasl.t` and
/// `proto_bin.c`): SASL_LIST_MECHS answers `PLAIN`; SASL_AUTH answers `Authenticated`, or
/// AUTH_ERROR (0x20, `Auth failure.`) on a bad user or password, leaving the connection open
/// to try again; a mechanism name over 32 bytes gets EINVAL; before authenticating, anything
/// but VERSION and the SASL commands gets AUTH_ERROR and the connection is closed.
#[test]
fn sasl_plain_authenticates_binary_connections() {
    let (us, _dir) = controlet_with_users("alice:secret\nbob:pa:ss\n");
    let addr = us.addr;
    let mut checks = Checks::default();

    // VERSION and SASL_LIST_MECHS need no authentication; then PLAIN.
    let mut c = BinConn::connect(addr);
    let version = (op::VERSION, status::OK, OUR_VERSION);
    checks.expect(
        &mut c,
        bare(op::VERSION).opaque(1),
        version,
        "VERSION first",
    );
    checks.expect(
        &mut c,
        bare(op::SASL_LIST_MECHS).opaque(2),
        (op::SASL_LIST_MECHS, status::OK, "PLAIN"),
        "SASL_LIST_MECHS",
    );
    checks.expect(
        &mut c,
        plain("alice", "secret").opaque(3),
        AUTHENTICATED,
        "alice",
    );
    checks.expect(
        &mut c,
        set("k", "v").opaque(4),
        (op::SET, 0, ""),
        "SET once authenticated",
    );
    c.send(&keyed(op::GET, "k"));
    let got = c.recv();
    checks.check(
        got.as_ref()
            .is_some_and(|r| r.status == 0 && r.value == b"v"),
        format!("GET once authenticated: {got:?}"),
    );
    checks.expect(&mut c, noop(), (op::NOOP, 0, ""), "NOOP once authenticated");

    // PLAIN without its message asks for it (0x21, as Cyrus SASL answers); a SASL_STEP brings
    // it. A step with no exchange begun fails.
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        keyed(op::SASL_STEP, "PLAIN").value("\0alice\0secret"),
        (op::SASL_STEP, status::AUTH_ERROR, "Auth failure."),
        "a step before any exchange",
    );
    checks.expect(
        &mut c,
        keyed(op::SASL_AUTH, "PLAIN"),
        (op::SASL_AUTH, 0x21, ""),
        "PLAIN without its message continues",
    );
    checks.expect(
        &mut c,
        keyed(op::SASL_STEP, "PLAIN").value("\0alice\0secret"),
        (op::SASL_STEP, status::OK, "Authenticated"),
        "the message in a step",
    );
    checks.expect(&mut c, noop(), (op::NOOP, 0, ""), "NOOP after a step");

    // A wrong password: AUTH_ERROR, the connection stays, and the right one then works.
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        plain("alice", "wrong").opaque(5),
        AUTH_FAILURE,
        "a wrong password",
    );
    checks.expect(
        &mut c,
        plain("alice", "secret"),
        AUTHENTICATED,
        "alice after a failure",
    );
    checks.expect(&mut c, noop(), (op::NOOP, 0, ""), "NOOP at the second try");

    // memcached's file format: the password is everything after the first colon.
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        plain("bob", "pa:ss"),
        AUTHENTICATED,
        "bob, a colon in his password",
    );

    // Bad credentials of other kinds: AUTH_ERROR, and the connection stays.
    for (what, packet) in [
        ("an unknown user", plain("carol", "secret")),
        ("an empty password", plain("alice", "")),
        ("a password with more after it", plain("alice", "secret\0x")),
        (
            "data without NULs",
            keyed(op::SASL_AUTH, "PLAIN").value("alice secret"),
        ),
        (
            "a mechanism not offered",
            keyed(op::SASL_AUTH, "CRAM-MD5").value("\0alice\0secret"),
        ),
        (
            "SASL_STEP before SASL_AUTH",
            plain("alice", "secret").with_opcode(op::SASL_STEP),
        ),
    ] {
        let mut c = BinConn::connect(addr);
        let opcode = packet.opcode;
        checks.expect(
            &mut c,
            packet,
            (opcode, status::AUTH_ERROR, "Auth failure."),
            what,
        );
        checks.expect(
            &mut c,
            bare(op::VERSION),
            version,
            &format!("VERSION after {what}"),
        );
    }

    // A mechanism name over 32 bytes (memcached's MAX_SASL_MECH_LEN): EINVAL, and the
    // connection stays (t/binary-sasl.t: "bad mech" is 0x04).
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        keyed(op::SASL_AUTH, "X".repeat(40)).value("\0alice\0secret"),
        (op::SASL_AUTH, status::EINVAL, "Invalid arguments"),
        "a 40-byte mechanism name",
    );
    checks.expect(
        &mut c,
        plain("alice", "secret"),
        AUTHENTICATED,
        "after a long mechanism",
    );

    // Before authenticating, anything else: AUTH_ERROR, then the connection is closed.
    for (what, packet) in [
        ("GET", keyed(op::GET, "k")),
        ("GETQ", keyed(op::GETQ, "k")),
        ("SET", set("k", "stolen")),
        ("SETQ", store(op::SETQ, "k", 0, 0, "stolen")),
        ("DELETE", keyed(op::DELETE, "k")),
        ("INCREMENT", arith(op::INCREMENT, "n", 1, 0, 0)),
        ("FLUSH", bare(op::FLUSH)),
        ("NOOP", noop()),
        ("STAT", stat("")),
        ("QUIT", bare(op::QUIT)),
        ("an unknown opcode", bare(0xfe)),
    ] {
        let mut c = BinConn::connect(addr);
        let opcode = packet.opcode;
        let context = format!("{what} before authenticating");
        let refused = (opcode, status::AUTH_ERROR, "Auth failure.");
        if checks.expect(&mut c, packet.opaque(0x77), refused, &context) {
            checks.expect_closed(&mut c, &context);
        }
    }
    // After a failed authentication too.
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        plain("alice", "wrong"),
        AUTH_FAILURE,
        "a wrong password",
    );
    let refused = (op::GET, status::AUTH_ERROR, "Auth failure.");
    if checks.expect(&mut c, keyed(op::GET, "k"), refused, "GET after a failure") {
        checks.expect_closed(&mut c, "GET after a failure");
    }

    // Nothing unauthenticated changed anything.
    let mut c = BinConn::connect(addr);
    checks.expect(
        &mut c,
        plain("alice", "secret"),
        AUTHENTICATED,
        "alice again",
    );
    c.send(&keyed(op::GET, "k"));
    let got = c.recv();
    checks.check(
        got.as_ref()
            .is_some_and(|r| r.status == 0 && r.value == b"v"),
        format!("the item after the refused requests: {got:?}"),
    );

    // Text connections still authenticate the text way (memcached's -Y).
    let reply = text_exchange(addr, b"get k\r\n");
    checks.check(
        reply == b"CLIENT_ERROR unauthenticated\r\n",
        format!("text get before authenticating: {}", esc(&reply)),
    );
    let reply = text_exchange(addr, b"set x 0 0 12\r\nalice secret\r\nget k\r\n");
    checks.check(
        reply == b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n",
        format!("text authentication: {}", esc(&reply)),
    );
    checks.done();
}

/// SASL authentications are counted in `auth_cmds` and `auth_errors`, as memcached counts
/// them (`process_bin_complete_sasl_auth`).
#[test]
fn sasl_authentications_are_counted() {
    let (us, _dir) = controlet_with_users("alice:secret\n");
    let mut c = BinConn::connect(us.addr);
    let mut checks = Checks::default();
    checks.expect(
        &mut c,
        plain("alice", "nope"),
        AUTH_FAILURE,
        "a wrong password",
    );
    checks.expect(&mut c, plain("alice", "secret"), AUTHENTICATED, "alice");
    checks.done();
    c.send(&stat(""));
    let mut stats = Vec::new();
    while let Some(r) = c.recv() {
        if r.key.is_empty() {
            break;
        }
        stats.push((
            String::from_utf8(r.key).unwrap(),
            String::from_utf8(r.value).unwrap(),
        ));
    }
    let get = |name: &str| {
        stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        (get("auth_cmds"), get("auth_errors")),
        (Some("2"), Some("1"))
    );
}

impl Packet {
    fn with_opcode(mut self, opcode: u8) -> Self {
        self.opcode = opcode;
        self
    }
}
