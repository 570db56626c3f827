//! Blocking clients of the memcached text protocol, for tests.
//!
//! - [`RawClient`] sends raw bytes and reads raw bytes: for tests that assert the exact reply
//!   (`b"STORED\r\n"`), and for requests no typed client would send. Its panicking methods
//!   fail the test with what was received so far; its `try_` methods return errors instead,
//!   for a server that may be gone.
//! - [`McConn`] speaks typed requests (`set`, `add`, `delete`, `get`, `gets`), each with a
//!   deadline, and returns a [`Failure`] instead of panicking: for workloads that run through
//!   faults and record what happened.
//! - [`probe_version`] asks whatever listens on an address for its `version`: how the harness
//!   knows a server it started is up, and which server it is.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::checker::OpResult;

/// How long a [`RawClient`] waits for a reply.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// A blocking client that speaks raw bytes.
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Connects to `addr`, or panics; replies are then awaited for up to 10 s.
    pub fn connect(addr: SocketAddr) -> Self {
        Self::try_connect(addr, RAW_TIMEOUT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects to `addr` within `within`; replies are then awaited for up to 10 s.
    pub fn try_connect(addr: SocketAddr, within: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, within)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(RAW_TIMEOUT))?;
        Ok(RawClient { stream })
    }

    /// Sends `bytes`, or panics.
    pub fn send(&mut self, bytes: &[u8]) {
        self.try_send(bytes).expect("send");
    }

    /// Sends `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Closes the sending side: the server reads EOF after what was sent.
    pub fn close_write(&mut self) -> std::io::Result<()> {
        self.stream.shutdown(std::net::Shutdown::Write)
    }

    /// The same connection, to send from one thread while another reads.
    pub fn try_clone(&self) -> std::io::Result<RawClient> {
        Ok(RawClient {
            stream: self.stream.try_clone()?,
        })
    }

    /// Reads until the bytes received end with `terminator`; panics after 10 s, or if the
    /// server closes the connection first.
    pub fn read_until(&mut self, terminator: &[u8]) -> Vec<u8> {
        self.try_read_until(terminator).unwrap_or_else(|e| {
            panic!("waiting for {:?}: {e}", String::from_utf8_lossy(terminator))
        })
    }

    /// [`read_until`](Self::read_until), with an error (naming what was received) where that
    /// panics.
    pub fn try_read_until(&mut self, terminator: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        while !got.ends_with(terminator) {
            let n = match self.stream.read(&mut buf) {
                Ok(0) => Err(ErrorKind::UnexpectedEof.into()),
                other => other,
            }
            .map_err(|e| {
                let got = String::from_utf8_lossy(&got);
                std::io::Error::new(e.kind(), format!("{e}; got {got:?}"))
            })?;
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    }

    /// Sends `request` and reads the reply through `terminator`, or panics.
    pub fn call(&mut self, request: &[u8], terminator: &[u8]) -> Vec<u8> {
        self.send(request);
        self.read_until(terminator)
    }

    /// [`call`](Self::call), with an error where that panics.
    pub fn try_call(&mut self, request: &[u8], terminator: &[u8]) -> std::io::Result<Vec<u8>> {
        self.try_send(request)?;
        self.try_read_until(terminator)
    }

    /// Sends `request`, closes the sending side, and reads everything until the server closes
    /// the connection: every reply to `request`, whatever their shape.
    pub fn send_all_and_close(mut self, request: &[u8]) -> Vec<u8> {
        self.send(request);
        self.close_write().expect("close the sending side");
        self.read_to_close()
    }

    /// Everything the server sends until it closes the connection (a reset counts as a
    /// close); panics if it does not within 10 s of the last bytes.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!(
                    "the server did not close the connection ({e}); got {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
    }

    /// Whether the server has closed the connection (reads EOF within `wait`).
    pub fn is_closed_within(&mut self, wait: Duration) -> bool {
        self.read_for(wait).1
    }

    /// Everything the server sends within `wait`, and whether it closed the connection (a
    /// reset counts as a close) by then.
    pub fn read_for(&mut self, wait: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let closed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break true,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    break false
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => panic!("reading for {wait:?}: {e}"),
            }
        };
        self.stream.set_read_timeout(Some(RAW_TIMEOUT)).unwrap();
        (got, closed)
    }
}

/// The `VERSION ...` line (with its `\r\n`) that whatever listens on `addr` answers to
/// `version`, connecting and answering within `within` each; `None` if nothing answers so.
pub fn probe_version(addr: SocketAddr, within: Duration) -> Option<Vec<u8>> {
    probe_version_as(addr, within, None)
}

/// [`probe_version`], authenticating first as `login` (`user password`) if given: a server
/// started with `-Y` answers nothing else.
pub fn probe_version_as(
    addr: SocketAddr,
    within: Duration,
    login: Option<&str>,
) -> Option<Vec<u8>> {
    let mut client = RawClient::try_connect(addr, within).ok()?;
    client.stream.set_read_timeout(Some(within)).ok()?;
    if let Some(login) = login {
        let auth = format!("set auth 0 0 {}\r\n{login}\r\n", login.len());
        let stored = client.try_call(auth.as_bytes(), b"\r\n").ok()?;
        if stored != b"STORED\r\n" {
            return None;
        }
    }
    let reply = client.try_call(b"version\r\n", b"\r\n").ok()?;
    reply.starts_with(b"VERSION ").then_some(reply)
}

/// Why a request got no usable reply.
#[derive(Debug)]
pub enum Failure {
    /// No (complete) reply within the timeout.
    Timeout,
    /// `SERVER_ERROR <message>`.
    ServerError(String),
    /// The connection broke.
    Io(std::io::Error),
    /// A reply that makes no sense for the request: a bug, and the connection is unusable.
    Unexpected(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "timeout"),
            Failure::ServerError(m) => write!(f, "SERVER_ERROR {m}"),
            Failure::Io(e) => write!(f, "connection error: {e}"),
            Failure::Unexpected(m) => write!(f, "unexpected reply: {m}"),
        }
    }
}

/// An item as `gets` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct McItem {
    /// The data block, without its `\r\n`.
    pub value: Vec<u8>,
    /// The client flags stored with it.
    pub flags: u32,
    /// The CAS unique.
    pub cas: u64,
}

/// The causal token a meta reply's words end with (`Y<token>`).
fn causal_token(words: &[&str]) -> Option<String> {
    words
        .last()
        .and_then(|w| w.strip_prefix('Y'))
        .map(str::to_string)
}

/// A blocking memcached text-protocol client with a deadline on every request. After any
/// [`Failure`] the connection's state is unknown: drop it and connect again.
pub struct McConn {
    stream: TcpStream,
    buf: Vec<u8>,
    timeout: Duration,
}

impl McConn {
    /// Connects within 1 s; every request then has `timeout` to be answered.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<McConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        stream.set_nodelay(true)?;
        Ok(McConn {
            stream,
            buf: Vec::new(),
            timeout,
        })
    }

    /// `set`: [`OpResult::Stored`].
    pub fn set(&mut self, key: &str, value: &[u8]) -> Result<OpResult, Failure> {
        self.store("set", key, 0, 0, value)
    }

    /// `set` with `flags` and `exptime`: [`OpResult::Stored`].
    pub fn set_with(
        &mut self,
        key: &str,
        flags: u32,
        exptime: u32,
        value: &[u8],
    ) -> Result<OpResult, Failure> {
        self.store("set", key, flags, exptime, value)
    }

    /// `add`: [`OpResult::Stored`] or [`OpResult::NotStored`].
    pub fn add(&mut self, key: &str, value: &[u8]) -> Result<OpResult, Failure> {
        self.store("add", key, 0, 0, value)
    }

    fn store(
        &mut self,
        verb: &str,
        key: &str,
        flags: u32,
        exptime: u32,
        value: &[u8],
    ) -> Result<OpResult, Failure> {
        let mut req = format!("{verb} {key} {flags} {exptime} {}\r\n", value.len()).into_bytes();
        req.extend_from_slice(value);
        req.extend_from_slice(b"\r\n");
        let deadline = self.send(&req)?;
        match &self.read_line(deadline)?[..] {
            b"STORED" => Ok(OpResult::Stored),
            b"NOT_STORED" if verb == "add" => Ok(OpResult::NotStored),
            other => Err(other_reply(verb, key, other)),
        }
    }

    /// `delete`: [`OpResult::Deleted`] or [`OpResult::NotFound`].
    pub fn delete(&mut self, key: &str) -> Result<OpResult, Failure> {
        let deadline = self.send(format!("delete {key}\r\n").as_bytes())?;
        match &self.read_line(deadline)?[..] {
            b"DELETED" => Ok(OpResult::Deleted),
            b"NOT_FOUND" => Ok(OpResult::NotFound),
            other => Err(other_reply("delete", key, other)),
        }
    }

    /// `get`: [`OpResult::Hit`] or [`OpResult::Miss`].
    pub fn get(&mut self, key: &str) -> Result<OpResult, Failure> {
        Ok(match self.gets(key)? {
            Some((value, _)) => OpResult::Hit(crate::checker::Value(value)),
            None => OpResult::Miss,
        })
    }

    /// `gets`: the value and CAS unique, or `None`.
    pub fn gets(&mut self, key: &str) -> Result<Option<(Vec<u8>, u64)>, Failure> {
        Ok(self.gets_item(key)?.map(|item| (item.value, item.cas)))
    }

    /// `gets`: the whole item, flags included, or `None`.
    pub fn gets_item(&mut self, key: &str) -> Result<Option<McItem>, Failure> {
        Ok(self.retrieve("gets", &[key])?.remove(key))
    }

    /// `gets` of many keys in one request: the keys present, with value and CAS unique.
    pub fn gets_many(
        &mut self,
        keys: &[&str],
    ) -> Result<BTreeMap<String, (Vec<u8>, u64)>, Failure> {
        let items = self.retrieve("gets", keys)?;
        Ok(items
            .into_iter()
            .map(|(key, item)| (key, (item.value, item.cas)))
            .collect())
    }

    fn retrieve(&mut self, verb: &str, keys: &[&str]) -> Result<BTreeMap<String, McItem>, Failure> {
        let deadline = self.send(format!("{verb} {}\r\n", keys.join(" ")).as_bytes())?;
        let mut items = BTreeMap::new();
        loop {
            let line = self.read_line(deadline)?;
            if line == b"END" {
                return Ok(items);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let words: Vec<&str> = text.split(' ').collect();
            let bad = || Failure::Unexpected(format!("{verb} {}: {text:?}", keys.join(" ")));
            if words.first() == Some(&"SERVER_ERROR") {
                return Err(server_error(&line));
            }
            if words.len() < 4 || words[0] != "VALUE" {
                return Err(bad());
            }
            let flags: u32 = words[2].parse().map_err(|_| bad())?;
            let len: usize = words[3].parse().map_err(|_| bad())?;
            let cas: u64 = match words.get(4) {
                Some(c) => c.parse().map_err(|_| bad())?,
                None => 0,
            };
            let mut value = self.read_exact(len + 2, deadline)?;
            if !value.ends_with(b"\r\n") {
                return Err(bad());
            }
            value.truncate(len);
            items.insert(words[1].to_string(), McItem { value, flags, cas });
        }
    }

    /// `mg <key> v Y[<token>]` (the causal mode): [`OpResult::Hit`] or [`OpResult::Miss`], and
    /// the node's causal token after the read. With `token`, the node first waits until it
    /// shows what the token covers (or refuses, a [`Failure::ServerError`]).
    pub fn get_causal(
        &mut self,
        key: &str,
        token: Option<&str>,
    ) -> Result<(OpResult, String), Failure> {
        let request = format!("mg {key} v Y{}\r\n", token.unwrap_or(""));
        let deadline = self.send(request.as_bytes())?;
        let line = self.read_line(deadline)?;
        let text = String::from_utf8_lossy(&line).into_owned();
        let bad = || Failure::Unexpected(format!("mg {key}: {text:?}"));
        if text.starts_with("SERVER_ERROR") {
            return Err(server_error(&line));
        }
        let words: Vec<&str> = text.split(' ').collect();
        let token = causal_token(&words).ok_or_else(bad)?;
        match words[0] {
            "EN" => Ok((OpResult::Miss, token)),
            "VA" => {
                let len: usize = words.get(1).and_then(|n| n.parse().ok()).ok_or_else(bad)?;
                let mut value = self.read_exact(len + 2, deadline)?;
                value.truncate(len);
                Ok((OpResult::Hit(crate::checker::Value(value)), token))
            }
            _ => Err(bad()),
        }
    }

    /// `ms <key> <len> Y[<token>]` (the causal mode): [`OpResult::Stored`] and the node's
    /// causal token after the write, which covers it.
    pub fn set_causal(
        &mut self,
        key: &str,
        value: &[u8],
        token: Option<&str>,
    ) -> Result<(OpResult, String), Failure> {
        let mut request =
            format!("ms {key} {} Y{}\r\n", value.len(), token.unwrap_or("")).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        let deadline = self.send(&request)?;
        let line = self.read_line(deadline)?;
        let text = String::from_utf8_lossy(&line).into_owned();
        if text.starts_with("SERVER_ERROR") {
            return Err(server_error(&line));
        }
        let words: Vec<&str> = text.split(' ').collect();
        match (words[0], causal_token(&words)) {
            ("HD", Some(token)) => Ok((OpResult::Stored, token)),
            _ => Err(Failure::Unexpected(format!("ms {key}: {text:?}"))),
        }
    }

    /// `stats`, by name.
    pub fn stats(&mut self) -> Result<std::collections::BTreeMap<String, String>, Failure> {
        let deadline = self.send(b"stats\r\n")?;
        let mut out = std::collections::BTreeMap::new();
        loop {
            let line = self.read_line(deadline)?;
            if line == b"END" {
                return Ok(out);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut words = text.splitn(3, ' ');
            if let (Some("STAT"), Some(name), Some(value)) =
                (words.next(), words.next(), words.next())
            {
                out.insert(name.to_string(), value.to_string());
            }
        }
    }

    /// Sends raw bytes (with the request timeout as write timeout); returns the reply
    /// deadline.
    pub fn send(&mut self, bytes: &[u8]) -> Result<Instant, Failure> {
        let deadline = Instant::now() + self.timeout;
        self.stream
            .set_write_timeout(Some(self.timeout))
            .map_err(Failure::Io)?;
        self.stream.write_all(bytes).map_err(|e| match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::Timeout,
            _ => Failure::Io(e),
        })?;
        Ok(deadline)
    }

    /// The next reply line, without its `\r\n`.
    pub fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, Failure> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[..end].to_vec();
                self.buf.drain(..end + 2);
                return Ok(line);
            }
            self.fill(deadline)?;
        }
    }

    /// The next `n` bytes of the reply.
    pub fn read_exact(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, Failure> {
        while self.buf.len() < n {
            self.fill(deadline)?;
        }
        Ok(self.buf.drain(..n).collect())
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), Failure> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::Timeout);
        }
        self.stream
            .set_read_timeout(Some(left))
            .map_err(Failure::Io)?;
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(Failure::Io(ErrorKind::UnexpectedEof.into())),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(Failure::Timeout)
            }
            Err(e) => Err(Failure::Io(e)),
        }
    }
}

fn server_error(line: &[u8]) -> Failure {
    let text = String::from_utf8_lossy(line);
    Failure::ServerError(text.trim_start_matches("SERVER_ERROR").trim().to_string())
}

fn other_reply(verb: &str, key: &str, line: &[u8]) -> Failure {
    if line.starts_with(b"SERVER_ERROR") {
        server_error(line)
    } else {
        Failure::Unexpected(format!("{verb} {key}: {:?}", String::from_utf8_lossy(line)))
    }
}
