//! The client port and its open connections, for `stats conns`: each by its file descriptor,
//! with its addresses, what it is doing, and the seconds since it last sent a command, as
//! memcached 1.6 lists them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::BytesMut;
use tailorkv_common::codec::encode_stat;

/// What a connection is doing, in memcached's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Waiting for a request (`conn_read`).
    Read = 0,
    /// Carrying out a request (`conn_parse_cmd`): the one asking for `stats conns` is.
    ParseCmd = 1,
    /// In the middle of a request's data (`conn_nread`).
    NRead = 2,
}

impl State {
    fn name(code: u8) -> &'static str {
        match code {
            1 => "conn_parse_cmd",
            2 => "conn_nread",
            _ => "conn_read",
        }
    }
}

/// One open connection.
#[derive(Debug)]
pub struct Conn {
    addr: SocketAddr,
    /// Seconds after the registry's start at which it last sent a command (or opened).
    last_cmd: AtomicU64,
    state: AtomicU8,
}

impl Conn {
    /// Notes a command: it is carrying one out, now.
    pub fn command(&self, conns: &Conns) {
        self.last_cmd.store(conns.secs(), Ordering::Relaxed);
        self.set(State::ParseCmd);
    }

    pub fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// The client port and the connections open on it.
#[derive(Debug)]
pub struct Conns {
    started: Instant,
    listener: Mutex<Option<(i32, SocketAddr)>>,
    open: Mutex<BTreeMap<i32, Arc<Conn>>>,
}

impl Default for Conns {
    fn default() -> Self {
        Conns {
            started: Instant::now(),
            listener: Mutex::default(),
            open: Mutex::default(),
        }
    }
}

/// A connection's place in the registry, given up when dropped.
pub struct Registered {
    conns: Arc<Conns>,
    fd: i32,
    pub conn: Arc<Conn>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.open.lock().unwrap().remove(&self.fd);
    }
}

impl Conns {
    /// memcached's coarse clock: whole seconds since the start.
    fn secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Names the listening socket.
    pub fn listening(&self, fd: i32, addr: SocketAddr) {
        *self.listener.lock().unwrap() = Some((fd, addr));
    }

    /// Adds a connection from `addr` on descriptor `fd`, until the handle is dropped.
    pub fn register(self: &Arc<Self>, fd: i32, addr: SocketAddr) -> Registered {
        let conn = Arc::new(Conn {
            addr,
            last_cmd: AtomicU64::new(self.secs()),
            state: AtomicU8::new(State::Read as u8),
        });
        self.open.lock().unwrap().insert(fd, Arc::clone(&conn));
        Registered {
            conns: Arc::clone(self),
            fd,
            conn,
        }
    }

    /// The `stats conns` lines: the listening socket, then each connection by descriptor.
    pub fn encode(&self, out: &mut BytesMut) {
        let now = self.secs();
        let listener = *self.listener.lock().unwrap();
        if let Some((fd, addr)) = listener {
            encode_stat(out, &format!("{fd}:addr"), format_args!("tcp:{addr}"));
            encode_stat(out, &format!("{fd}:state"), "conn_listening");
            encode_stat(out, &format!("{fd}:secs_since_last_cmd"), now);
        }
        let open: Vec<(i32, Arc<Conn>)> = self
            .open
            .lock()
            .unwrap()
            .iter()
            .map(|(&fd, conn)| (fd, Arc::clone(conn)))
            .collect();
        for (fd, conn) in open {
            encode_stat(
                out,
                &format!("{fd}:addr"),
                format_args!("tcp:{}", conn.addr),
            );
            if let Some((_, listen)) = listener {
                encode_stat(
                    out,
                    &format!("{fd}:listen_addr"),
                    format_args!("tcp:{listen}"),
                );
            }
            let state = State::name(conn.state.load(Ordering::Relaxed));
            encode_stat(out, &format!("{fd}:state"), state);
            let since = now.saturating_sub(conn.last_cmd.load(Ordering::Relaxed));
            encode_stat(out, &format!("{fd}:secs_since_last_cmd"), since);
        }
    }
}
