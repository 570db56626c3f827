//! One connection's driver: keeps `--pipeline` requests in flight and matches replies to them
//! in order.
//!
//! # How it works
//!
//! [`Conn::drive`] runs two halves of one task side by side (`join!`, no extra task), so a
//! large pipeline never deadlocks on full socket buffers:
//!
//! - the **sender** takes a permit from the `window` semaphore (`--pipeline` permits) for each
//!   request, then takes as many more as are free, encodes that batch (in --protocol) into one
//!   buffer, stamps it with one send time, queues a descriptor per request ([`InFlight`]) to the
//!   receiver, and writes the batch with one `write_all`;
//! - the **receiver** takes descriptors in order, reads until [`reply::take`] yields the reply
//!   to each, accounts it into [`Stats`], and gives the permit back.
//!
//! A request's latency runs from its batch's send time to the parse of its reply.
//!
//! When the source runs dry the sender drops its queue, and the receiver finishes once the last
//! outstanding reply is in. When the connection fails (bytes that are no reply, no reply within
//! --request-timeout, EOF, an I/O error) the receiver closes the window, which stops the sender,
//! counts every outstanding request as an error of that kind, and the connection is dead for
//! the rest of the run. Writes are bounded by the same timeout, so a stuck server cannot hold
//! the run past it.

use std::time::Instant;

use bytes::BytesMut;
use tailorkv_common::client::{self, ProtocolError, Request as Wire, StoreCommand};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{timeout, timeout_at};
use tokio_util::either::Either;

use crate::reply::{self, Answer, Op, Protocol};
use crate::run::Run;
use crate::source::{Phase, Request, Source};
use crate::stats::Stats;
use crate::value;
use crate::verify::{Verdict, WrongValue};

/// Why a connection was given up.
#[derive(Debug, Error)]
pub enum ConnError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("no reply within {0:?}")]
    Timeout(std::time::Duration),
    #[error("connection closed by the server")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ConnError {
    /// Counts `n` requests lost to this error.
    fn count(&self, stats: &mut Stats, n: u64) {
        let errors = &mut stats.errors;
        *match self {
            ConnError::Protocol(_) => &mut errors.protocol,
            ConnError::Timeout(_) => &mut errors.timeout,
            ConnError::Closed | ConnError::Io(_) => &mut errors.io,
        } += n;
    }
}

/// A request sent and not yet answered.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    request: Request,
    sent_at: Instant,
    /// For a get: whether the key had been written (and acknowledged) by this run when sent.
    written_before: bool,
}

/// A connection's stream: plain TCP, or TLS (`--tls-ca`).
pub type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// One connection to one target.
pub struct Conn {
    /// Also the writer id in the values this connection sets.
    pub id: u32,
    /// Index of the target this connection goes to.
    pub target: usize,
    stream: Stream,
    sender: Sender,
    receiver: Receiver,
    dead: bool,
}

impl Conn {
    pub fn new(id: u32, target: usize, stream: Stream) -> Self {
        Conn {
            id,
            target,
            stream,
            sender: Sender {
                writer: id,
                seq: 0,
                buf: Vec::new(),
                batch: Vec::new(),
            },
            receiver: Receiver {
                buf: BytesMut::with_capacity(READ_CHUNK),
            },
            dead: false,
        }
    }

    /// Sends what `source` yields, pipelined, accounting the replies into `stats`. Does
    /// nothing once the connection has failed.
    pub async fn drive(&mut self, source: &mut impl Source, run: &Run, stats: &mut Stats) {
        if self.dead {
            return;
        }
        let window = Semaphore::new(run.args.pipeline as usize);
        let (queue, replies) = mpsc::unbounded_channel();
        let (sent, received) = match &mut self.stream {
            Either::Left(tcp) => {
                let (rd, wr) = tcp.split();
                let send = self.sender.run(wr, source, run, &window, queue);
                let receive = self.receiver.run(rd, run, &window, replies, stats);
                tokio::join!(send, receive)
            }
            Either::Right(tls) => {
                let (rd, wr) = tokio::io::split(tls);
                let send = self.sender.run(wr, source, run, &window, queue);
                let receive = self.receiver.run(rd, run, &window, replies, stats);
                tokio::join!(send, receive)
            }
        };
        if let Err(error) = received {
            self.dead = true;
            stats.sample(|| format!("connection {}: {error}", self.id));
        } else if let Err(error) = sent {
            // Every request queued was answered, yet a write failed: the connection is unusable.
            self.dead = true;
            error.count(stats, 1);
            stats.sample(|| format!("connection {} (sending): {error}", self.id));
        }
    }
}

/// The sending half's state.
struct Sender {
    writer: u32,
    /// Sets sent so far: the seq of the last one.
    seq: u64,
    buf: Vec<u8>,
    batch: Vec<(Request, bool)>,
}

impl Sender {
    async fn run(
        &mut self,
        mut wr: impl AsyncWrite + Unpin,
        source: &mut impl Source,
        run: &Run,
        window: &Semaphore,
        queue: mpsc::UnboundedSender<InFlight>,
    ) -> Result<(), ConnError> {
        loop {
            // A closed window means the receiver gave up.
            let Ok(permit) = window.acquire().await else {
                return Ok(());
            };
            permit.forget();
            let more = self.fill_batch(source, run, window);
            if !self.batch.is_empty() {
                let sent_at = Instant::now();
                for &(request, written_before) in &self.batch {
                    let in_flight = InFlight {
                        request,
                        sent_at,
                        written_before,
                    };
                    if queue.send(in_flight).is_err() {
                        return Ok(());
                    }
                }
                let limit = run.args.request_timeout;
                // A TLS stream holds its records until flushed; TCP's flush does nothing.
                let write = async {
                    wr.write_all(&self.buf).await?;
                    wr.flush().await
                };
                timeout(limit, write)
                    .await
                    .map_err(|_| ConnError::Timeout(limit))??;
            }
            if !more {
                return Ok(());
            }
        }
    }

    /// Encodes into `buf` one request for the permit just taken and one for each further free
    /// permit. False if the source ran dry.
    fn fill_batch(&mut self, source: &mut impl Source, run: &Run, window: &Semaphore) -> bool {
        self.buf.clear();
        self.batch.clear();
        loop {
            let Some(request) = source.next() else {
                return false;
            };
            let written_before = self.encode(request, run);
            self.batch.push((request, written_before));
            match window.try_acquire() {
                Ok(permit) => permit.forget(),
                Err(_) => return true,
            }
        }
    }

    /// Appends `request` to `buf`; for a get, whether its key was written before it.
    fn encode(&mut self, request: Request, run: &Run) -> bool {
        let key = run.keys.key(request.key);
        let protocol = run.args.protocol;
        match request.op {
            Op::Get => {
                get_request(protocol, &key).encode(&mut self.buf);
                run.ledger.was_written(request.key)
            }
            Op::Set => {
                self.seq += 1;
                let tag = run.ledger.issue(self.writer, self.seq);
                let size = run.args.value_size;
                set_line(protocol, &key, size, &mut self.buf);
                value::encode(&key, tag, size, &mut self.buf);
                self.buf.extend_from_slice(b"\r\n");
                false
            }
        }
    }
}

/// A get of `key` in `protocol`. A meta get asks for the key back (`k`), which the check of a
/// hit needs, and the value (`v`).
fn get_request(protocol: Protocol, key: &[u8]) -> Wire<'_> {
    match protocol {
        Protocol::Text => Wire::Get { key },
        Protocol::Meta => Wire::MetaGet { key, flags: "k v" },
    }
}

/// Appends the line of a set of `size` bytes to `key` in `protocol`, for the value to follow:
/// flags 0 and no expiry either way (`T0` is a meta set's exptime 0).
fn set_line(protocol: Protocol, key: &[u8], size: usize, out: &mut Vec<u8>) {
    match protocol {
        Protocol::Text => client::encode_store_line(out, StoreCommand::Set, key, 0, 0, size),
        Protocol::Meta => client::encode_meta_set_line(out, key, size, "T0"),
    }
}

/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 64 * 1024;

/// The receiving half's state: bytes read and not yet parsed.
struct Receiver {
    buf: BytesMut,
}

impl Receiver {
    async fn run(
        &mut self,
        mut rd: impl AsyncRead + Unpin,
        run: &Run,
        window: &Semaphore,
        mut replies: mpsc::UnboundedReceiver<InFlight>,
        stats: &mut Stats,
    ) -> Result<(), ConnError> {
        while let Some(in_flight) = replies.recv().await {
            match self.next_reply(&mut rd, &in_flight, run).await {
                Ok(answer) => {
                    account(run, &in_flight, answer, stats);
                    window.add_permits(1);
                }
                Err(error) => {
                    window.close();
                    replies.close();
                    let mut lost = 1;
                    while replies.recv().await.is_some() {
                        lost += 1;
                    }
                    error.count(stats, lost);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Reads until the reply to `in_flight` is buffered, and takes it.
    async fn next_reply(
        &mut self,
        rd: &mut (impl AsyncRead + Unpin),
        in_flight: &InFlight,
        run: &Run,
    ) -> Result<Answer, ConnError> {
        let limit = run.args.request_timeout;
        let deadline = (in_flight.sent_at + limit).into();
        loop {
            let (protocol, op) = (run.args.protocol, in_flight.request.op);
            if let Some(answer) = reply::take(&mut self.buf, protocol, op)? {
                return Ok(answer);
            }
            self.buf.reserve(READ_CHUNK);
            let read = timeout_at(deadline, rd.read_buf(&mut self.buf))
                .await
                .map_err(|_| ConnError::Timeout(limit))??;
            if read == 0 {
                return Err(ConnError::Closed);
            }
        }
    }
}

/// Counts one reply. Only a correct reply to a measured request counts as an operation.
fn account(run: &Run, in_flight: &InFlight, answer: Answer, stats: &mut Stats) {
    let request = in_flight.request;
    let key = || String::from_utf8_lossy(&run.keys.key(request.key)).into_owned();
    let measured = request.phase == Phase::Measured;
    stats.answered.count(request.op);
    match answer {
        Answer::Failed(line) => {
            stats.errors.server_error += 1;
            stats.sample(|| format!("{:?} {}: {line}", request.op, key()));
            return;
        }
        Answer::Stored => {
            run.ledger.mark_written(request.key);
            match request.phase {
                Phase::Preload => stats.preloaded += 1,
                Phase::Measured => stats.sets += 1,
                Phase::Warmup => {}
            }
        }
        Answer::Miss => stats.misses += u64::from(measured),
        Answer::Hit(hit) => match check_hit(run, in_flight, &hit.key, hit.flags, &hit.data) {
            Ok(verdict) => {
                if measured {
                    stats.hits += 1;
                    stats.foreign += u64::from(verdict == Verdict::Foreign);
                    stats.verified += u64::from(request.check_body);
                }
            }
            Err(wrong) => {
                stats.errors.wrong_value += 1;
                stats.sample(|| format!("get {}: wrong value: {wrong}", key()));
                return;
            }
        },
    }
    if measured {
        let now = Instant::now();
        stats.record(request.op, now - in_flight.sent_at, now);
    }
}

/// Judges a get's hit: the right key, loadgen's flags, and a value this run could have read.
fn check_hit(
    run: &Run,
    in_flight: &InFlight,
    got: &[u8],
    flags: u32,
    data: &[u8],
) -> Result<Verdict, WrongValue> {
    let asked = run.keys.key(in_flight.request.key);
    if got != asked {
        let got = String::from_utf8_lossy(got).into_owned();
        return Err(WrongValue::OtherKey { got });
    }
    if flags != 0 {
        return Err(WrongValue::Flags(flags));
    }
    let check_body = in_flight.request.check_body;
    run.ledger
        .judge(&asked, data, in_flight.written_before, check_body)
}
