//! Peer transport: messages between controlets over TCP.
//!
//! # How it works
//!
//! Each member sends on one outbound TCP connection per peer and receives on the connections
//! its peers open to its `--peer-listen` address, so every link is one TCP stream in one
//! direction: FIFO, as the total-order broadcast requires. A connection opens with a
//! [`Frame::Hello`] naming the sender; then every [`Frame::Message`] is a length-delimited
//! frame (`tokio_util`'s `LengthDelimitedCodec`) holding the message encoded with `postcard`
//! (serde).
//!
//! - Sending goes through a queue per peer, drained by that peer's writer task, which
//!   writes every queued message and then flushes once: under load, one syscall carries many
//!   messages. A full queue makes the sender wait (backpressure) rather than drop a message.
//! - Received messages from all peers go into one inbox, tagged with their sender.
//! - Both are bounded in bytes ([`LinkConfig::queue_bytes`] per peer, [`LinkConfig::inbox_bytes`]
//!   in all), each message counted at
//!   its [`Weigh`]t (the inbox at its frame's length) plus its size in the queue: a burst of
//!   large values waits for room as a burst of small ones does. A message larger than the
//!   whole budget still passes, alone.
//! - A writer that cannot connect, or whose connection breaks, reconnects with exponential
//!   backoff (10 ms doubling to 1 s) and resends the message it was writing.
//! - Outbound connections are bound to the IP of this member's own peer address, so that
//!   every link between two members is identified by its two IPs (the fault tests give each
//!   member its own loopback address and cut links with firewall rules).
//!
//! # Frames are bounded, and only the cluster's own nodes are heard
//!
//! Both sides set the largest frame explicitly ([`LinkConfig::max_frame_bytes`], the same on
//! every member, derived from the configuration). The protocols above keep every message
//! under it; a message that is not (a bug) is reported and skipped, its number consumed, so
//! the receiver sees a gap: never a link that resends one frame forever.
//!
//! A hello names the sender's cluster ([`LinkConfig::cluster`], a digest of the settings
//! every member must share). A connection whose hello names another cluster, or an older run
//! of a peer than one already heard from, is logged and closed before anything it sends
//! reaches the protocol, so a stranger on the peer port (a node of another cluster, a stale
//! connection of a process that restarted) cannot disturb the numbering of a real peer's
//! messages and force a view change. A node of the cluster that is not a peer yet is heard as
//! itself (a node asking to join, see [`crate::membership`]); the protocols above ignore
//! senders that are not members. This guards against mistakes, not attackers: peer
//! authentication is a separate matter.
//!
//! # Lost messages are detected, never hidden
//!
//! Messages the kernel had accepted on a connection that then breaks are lost. Every message a
//! writer sends carries its number on that link (from 1, for the life of the sending
//! process, whose `session` the hello names), and the receiving side remembers per sender
//! the next number it expects, across connections. A resent duplicate is dropped; a number
//! past the expected one means messages were lost, and the inbox gets [`Incoming::Gap`] before
//! the message that follows the gap, so the protocol can stop trusting that link (the total
//! order treats it as a failure and the member catches up by state transfer).

pub mod secret;
#[cfg(test)]
mod tests;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

pub use crate::weigh::Weigh;

/// Bytes of messages queued for one peer before senders wait.
pub const PEER_QUEUE_BYTES: usize = 32 << 20;
/// Bytes of received messages, from all peers, not yet taken by the protocol before the
/// readers wait (and so, through TCP, the senders).
pub const INBOX_BYTES: usize = 64 << 20;
/// The smallest frame limit a link has.
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What every link of one cluster agrees on.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Names the cluster: a digest of what its members must share (see [`cluster_digest`]).
    pub cluster: u64,
    /// The largest frame sent or accepted.
    pub max_frame_bytes: usize,
    /// Bytes queued for one peer before senders wait ([`PEER_QUEUE_BYTES`] by default).
    pub queue_bytes: usize,
    /// Bytes received and not yet taken before readers wait ([`INBOX_BYTES`] by default).
    pub inbox_bytes: usize,
    /// Mutual TLS, if the links use it (see [`tls`]): then only members are heard, each as
    /// the node its certificate names.
    pub tls: Option<Arc<tls::PeerTls>>,
    /// A shared secret every connection must prove it holds, both ways (see [`secret`]).
    pub secret: Option<Arc<secret::PeerSecret>>,
    /// Injected latency: every message received is held this long before it reaches the
    /// inbox (`--fault-peer-delay`, for watching the modes behave under a slow network).
    /// Zero: none.
    pub delay: Duration,
}

impl PartialEq for LinkConfig {
    fn eq(&self, other: &Self) -> bool {
        fn same<T>(a: &Option<Arc<T>>, b: &Option<Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
        }
        same(&self.tls, &other.tls)
            && same(&self.secret, &other.secret)
            && self.cluster == other.cluster
            && self.max_frame_bytes == other.max_frame_bytes
            && self.queue_bytes == other.queue_bytes
            && self.inbox_bytes == other.inbox_bytes
            && self.delay == other.delay
    }
}

impl Eq for LinkConfig {}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            cluster: 0,
            max_frame_bytes: MAX_FRAME_BYTES,
            queue_bytes: PEER_QUEUE_BYTES,
            inbox_bytes: INBOX_BYTES,
            tls: None,
            secret: None,
            delay: Duration::ZERO,
        }
    }
}

/// A digest of `parts` (FNV-1a over each part and its length), stable across builds and
/// machines: members configured alike compute the same one.
pub fn cluster_digest<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    };
    for part in parts {
        for b in (part.len() as u64).to_le_bytes() {
            eat(b);
        }
        for &b in part {
            eat(b);
        }
    }
    hash
}
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long an accepted connection may take to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What travels on a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<M> {
    /// First frame of a connection: who is sending, which run of that process, and which
    /// cluster it belongs to; with a shared secret, the answer to the receiver's challenge.
    Hello {
        from: NodeId,
        session: u64,
        cluster: u64,
        proof: Option<secret::Proof>,
    },
    /// One protocol message, with its number on this link.
    Message { n: u64, message: M },
}

/// What the inbox yields from a peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming<M> {
    Message(M),
    /// Messages from this peer were lost (a connection broke with messages in flight).
    Gap,
}

/// A number that names one run of this process: the wall clock in nanoseconds, so a restart
/// picks a larger one (the total order treats a node's messages from a smaller one as
/// coming from a run that has since restarted).
pub fn new_session() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos.max(1)
}

/// The sending side of the transport: one queue per peer. Peers are added as they become
/// known ([`Transport::add_peer`]: a node that joins the cluster, learned from its metadata).
pub struct Transport<M> {
    queues: Arc<std::sync::RwLock<BTreeMap<NodeId, Outbound<M>>>>,
    /// What a new peer's writer needs.
    dialer: Arc<Dialer>,
    /// Bytes each peer's queue holds at most.
    budget: usize,
    /// Connections to this node's peer port refused (see [`Transport::refused`]).
    refused: Arc<std::sync::atomic::AtomicU64>,
}

/// What starting a writer for a new peer takes.
struct Dialer {
    id: NodeId,
    session: u64,
    source: Option<IpAddr>,
    config: LinkConfig,
    shutdown: CancellationToken,
}

/// One peer's queue, its room in bytes, and the messages dropped instead of queued.
struct Outbound<M> {
    queue: mpsc::UnboundedSender<Weighed<M>>,
    room: Arc<Semaphore>,
    drops: Arc<Drops>,
    /// Whether the writer holds a connection to the peer now.
    up: Arc<std::sync::atomic::AtomicBool>,
}

impl<M> Clone for Outbound<M> {
    fn clone(&self) -> Self {
        Outbound {
            queue: self.queue.clone(),
            room: Arc::clone(&self.room),
            drops: Arc::clone(&self.drops),
            up: Arc::clone(&self.up),
        }
    }
}

/// A queued message with the room it holds, given back when it leaves the queue.
struct Weighed<M> {
    message: M,
    permits: u32,
}

/// The room a message of `weight` bytes takes in a queue of `budget` bytes: its weight and
/// its size in the queue, and at most the whole budget, so that any message can pass.
fn permits<M>(weight: usize, budget: usize) -> u32 {
    let cost = weight.saturating_add(std::mem::size_of::<M>());
    cost.min(budget) as u32
}

/// Messages dropped for a peer ([`Transport::dropped`]), placed among the queued ones: the
/// writer numbers past them, so the peer sees a gap exactly where they were.
#[derive(Default)]
struct Drops {
    inner: Mutex<DropsInner>,
}

#[derive(Default)]
struct DropsInner {
    /// Messages queued so far.
    queued: u64,
    /// Runs of dropped messages: (messages queued before them, how many).
    runs: std::collections::VecDeque<(u64, u64)>,
}

impl Drops {
    /// Queues a message with `enqueue` (which says whether it did), counting it.
    fn queue(&self, enqueue: impl FnOnce() -> bool) -> bool {
        let mut inner = self.inner.lock().unwrap();
        let queued = enqueue();
        inner.queued += u64::from(queued);
        queued
    }

    fn drop_one(&self) {
        let mut inner = self.inner.lock().unwrap();
        let at = inner.queued;
        match inner.runs.back_mut() {
            Some((after, count)) if *after == at => *count += 1,
            _ => inner.runs.push_back((at, 1)),
        }
    }

    /// How many messages were dropped before the `taken`-th queued message (from 1).
    fn before(&self, taken: u64) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        let mut skipped = 0;
        while let Some(&(after, count)) = inner.runs.front() {
            if after >= taken {
                break;
            }
            skipped += count;
            inner.runs.pop_front();
        }
        skipped
    }
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            queues: Arc::clone(&self.queues),
            dialer: Arc::clone(&self.dialer),
            budget: self.budget,
            refused: Arc::clone(&self.refused),
        }
    }
}

/// Received messages, tagged with their sender: what [`Transport::start`] returns. Taking a
/// message gives its room back to the readers.
pub struct Inbox<M> {
    queue: mpsc::UnboundedReceiver<(NodeId, Weighed<Incoming<M>>)>,
    room: Arc<Semaphore>,
}

impl<M> Inbox<M> {
    /// The next message, waiting for one; `None` once every reader has stopped.
    pub async fn recv(&mut self) -> Option<(NodeId, Incoming<M>)> {
        let got = self.queue.recv().await?;
        Some(self.release(got))
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<(NodeId, Incoming<M>)> {
        let got = self.queue.try_recv().ok()?;
        Some(self.release(got))
    }

    fn release(&self, (from, weighed): (NodeId, Weighed<Incoming<M>>)) -> (NodeId, Incoming<M>) {
        self.room.add_permits(weighed.permits as usize);
        (from, weighed.message)
    }

    /// The next message, waiting for one, with the room it holds in the inbox: given back
    /// only when the [`Held`] is dropped, so a message passed on to another queue still
    /// counts against the inbox until it is taken from there.
    pub async fn recv_held(&mut self) -> Option<(NodeId, Incoming<M>, Held)> {
        let (from, weighed) = self.queue.recv().await?;
        let held = Held {
            room: Arc::clone(&self.room),
            permits: weighed.permits,
        };
        Some((from, weighed.message, held))
    }
}

/// A received message's room in the inbox ([`Inbox::recv_held`]), given back on drop.
pub struct Held {
    room: Arc<Semaphore>,
    permits: u32,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.room.add_permits(self.permits as usize);
    }
}

/// The sending half of the inbox, shared by the readers: straight into the inbox, or through
/// the delay line of an injected latency ([`LinkConfig::delay`]).
struct InboxSender<M> {
    queue: mpsc::UnboundedSender<(NodeId, Weighed<Incoming<M>>)>,
    room: Arc<Semaphore>,
    budget: usize,
    delay: Duration,
    delayed: Option<mpsc::UnboundedSender<Delayed<M>>>,
}

/// A message on the delay line: when it may go on, and what it is.
type Delayed<M> = (tokio::time::Instant, NodeId, Incoming<M>, usize);

impl<M> Clone for InboxSender<M> {
    fn clone(&self) -> Self {
        InboxSender {
            queue: self.queue.clone(),
            room: Arc::clone(&self.room),
            budget: self.budget,
            delay: self.delay,
            delayed: self.delayed.clone(),
        }
    }
}

impl<M: Send + 'static> InboxSender<M> {
    /// With `delay`, a delay line in front of the inbox: one task holds each message until
    /// `delay` after it was received, in the order received, so the readers never wait for
    /// it and every message is late by the same time.
    fn delayed(mut self, delay: Duration) -> Self {
        if delay.is_zero() {
            return self;
        }
        let (line, mut waiting) = mpsc::unbounded_channel::<Delayed<M>>();
        let inbox = self.clone();
        tokio::spawn(async move {
            while let Some((due, from, message, bytes)) = waiting.recv().await {
                tokio::time::sleep_until(due).await;
                if !inbox.send_now(from, message, bytes).await {
                    return;
                }
            }
        });
        (self.delay, self.delayed) = (delay, Some(line));
        self
    }

    /// Puts a message of `bytes` (its frame's length) in the inbox once it has room (after
    /// the injected delay, if any); whether the inbox is still open.
    async fn send(&self, from: NodeId, message: Incoming<M>, bytes: usize) -> bool {
        match &self.delayed {
            Some(line) => {
                let due = tokio::time::Instant::now() + self.delay;
                line.send((due, from, message, bytes)).is_ok()
            }
            None => self.send_now(from, message, bytes).await,
        }
    }
}

impl<M> InboxSender<M> {
    /// Puts a message of `bytes` (its frame's length) in the inbox once it has room; whether
    /// the inbox is still open.
    async fn send_now(&self, from: NodeId, message: Incoming<M>, bytes: usize) -> bool {
        let permits = permits::<(NodeId, Incoming<M>)>(bytes, self.budget);
        match self.room.acquire_many(permits).await {
            Ok(permit) => permit.forget(),
            Err(_) => return false,
        }
        let weighed = Weighed { message, permits };
        self.queue.send((from, weighed)).is_ok()
    }
}

/// Per sender: its session and the next message number expected from it.
type Expected = Arc<Mutex<HashMap<NodeId, (u64, u64)>>>;

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Weigh + Send + 'static,
{
    /// Starts receiving on `listener` and sending to `peers` (other members, not `id`).
    /// `session` names this run of the process (see [`new_session`]).
    pub fn start(
        id: NodeId,
        session: u64,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        config: LinkConfig,
        shutdown: CancellationToken,
    ) -> (Transport<M>, Inbox<M>) {
        let (inbox_tx, inbox_rx) = mpsc::unbounded_channel();
        let inbox_room = Arc::new(Semaphore::new(config.inbox_bytes));
        let inbox = Inbox {
            queue: inbox_rx,
            room: Arc::clone(&inbox_room),
        };
        let inbox_tx = InboxSender {
            queue: inbox_tx,
            room: inbox_room,
            budget: config.inbox_bytes,
            delay: Duration::ZERO,
            delayed: None,
        }
        .delayed(config.delay);
        let source = listener
            .local_addr()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified());
        let expected = Expected::default();
        let known = Arc::new(Known {
            config: config.clone(),
            refusals: Refusals::default(),
            unheard: Mutex::default(),
        });
        let refused = Arc::clone(&known.refusals.count);
        tokio::spawn(accept_loop(
            listener,
            inbox_tx,
            expected,
            known,
            shutdown.clone(),
        ));
        let transport = Transport {
            queues: Arc::default(),
            dialer: Arc::new(Dialer {
                id,
                session,
                source,
                config: config.clone(),
                shutdown,
            }),
            budget: config.queue_bytes,
            refused,
        };
        for &(peer, addr) in peers {
            transport.add_peer(peer, addr);
        }
        (transport, inbox)
    }

    /// Starts sending to `peer` at `addr`, if it is not a peer already (an address once
    /// known is kept: a node that rejoins uses its old one).
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.dialer.id {
            return;
        }
        let mut queues = self.queues.write().unwrap();
        if queues.contains_key(&peer) {
            return;
        }
        let dialer = &self.dialer;
        let (tx, rx) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(dialer.config.queue_bytes));
        let drops = Arc::new(Drops::default());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let link = Link {
            up: Arc::clone(&up),
            id: dialer.id,
            session: dialer.session,
            peer,
            addr,
            source: dialer.source,
            config: dialer.config.clone(),
        };
        let queue = Numbered {
            queue: rx,
            room: Arc::clone(&room),
            drops: Arc::clone(&drops),
            taken: 0,
            sent: 0,
        };
        tokio::spawn(writer(link, queue, dialer.shutdown.clone()));
        let out = Outbound {
            queue: tx,
            room,
            drops,
            up,
        };
        queues.insert(peer, out);
    }

    /// The peers this transport sends to.
    pub fn peers(&self) -> Vec<NodeId> {
        self.queues.read().unwrap().keys().copied().collect()
    }

    /// `to`'s queue, if it is a peer.
    fn outbound(&self, to: NodeId) -> Option<Outbound<M>> {
        self.queues.read().unwrap().get(&to).cloned()
    }

    /// Sends `message` once to whatever node listens at `addr`, on a connection of its own,
    /// as run `session` of this node (one below the transport's own, so the transport's
    /// later messages read as a new run's) numbered `n`: how a node that is not a member yet
    /// asks a member it knows only by address to let it in. Errors if the connection fails.
    pub async fn send_once(
        &self,
        addr: SocketAddr,
        session: u64,
        n: u64,
        message: &M,
    ) -> io::Result<()> {
        let link = Link {
            up: Arc::default(),
            id: self.dialer.id,
            session,
            peer: NodeId(0),
            addr,
            source: self.dialer.source,
            config: self.dialer.config.clone(),
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect(&link))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        let stream = match &link.config.tls {
            // Whoever listens there must prove it is a member, whichever.
            Some(tls) => Either::Right(tls.connect(stream, None).await?),
            None => Either::Left(stream),
        };
        let (reader, writer) = tokio::io::split(stream);
        let mut framed = FramedWrite::new(writer, codec(&link.config));
        let _reader = say_hello::<M, _, _>(&link, reader, &mut framed).await?;
        framed.send(encode(&Frame::Message { n, message })).await?;
        SinkExt::<Bytes>::flush(&mut framed).await?;
        Ok(())
    }

    /// Connections to this node's peer port refused before anything they carried was heard:
    /// a failed TLS handshake, no hello in time, another cluster's or an older run's hello,
    /// a certificate for another node than the hello names.
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This run's session (see [`new_session`]).
    pub fn session(&self) -> u64 {
        self.dialer.session
    }

    /// Queues `message` for `to` if its queue has room; gives it back if not. A peer not in
    /// the group swallows the message.
    pub fn try_send(&self, to: NodeId, message: M) -> Result<(), M> {
        let Some(out) = self.outbound(to) else {
            return Ok(());
        };
        let permits = permits::<M>(message.weight(), self.budget);
        match out.room.try_acquire_many(permits) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(message),
            // The writer stopped, at shutdown.
            Err(tokio::sync::TryAcquireError::Closed) => return Ok(()),
        }
        out.drops
            .queue(|| out.queue.send(Weighed { message, permits }).is_ok());
        Ok(())
    }

    /// Bytes `to`'s queue has free now (its whole budget for a node not in the group).
    pub fn room(&self, to: NodeId) -> usize {
        self.outbound(to)
            .map_or(self.budget, |out| out.room.available_permits())
    }

    /// Whether this node holds a connection to `to` now: false while it cannot connect (the
    /// peer is down, or cut off long enough for the connection to time out).
    pub fn is_up(&self, to: NodeId) -> bool {
        self.outbound(to)
            .is_some_and(|out| out.up.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Bytes each peer's queue holds at most ([`LinkConfig::queue_bytes`]).
    pub fn queue_bytes(&self) -> usize {
        self.budget
    }

    /// Records that a message for `to` was dropped here, after the messages queued so far
    /// (typically one [`Transport::try_send`] gave back): `to` sees a gap in its place, never
    /// the messages after it as if nothing were missing.
    pub fn dropped(&self, to: NodeId) {
        if let Some(out) = self.outbound(to) {
            out.drops.drop_one();
        }
    }

    /// Queues `message` for `to`, waiting while that peer's queue is full.
    pub async fn send(&self, to: NodeId, message: M) {
        if let Some(out) = self.outbound(to) {
            let permits = permits::<M>(message.weight(), self.budget);
            // Fails only once the writer has stopped, at shutdown.
            if let Ok(permit) = out.room.acquire_many(permits).await {
                permit.forget();
                out.drops
                    .queue(|| out.queue.send(Weighed { message, permits }).is_ok());
            }
        }
    }
}

fn encode<T: Serialize>(frame: &T) -> Bytes {
    Bytes::from(postcard::to_stdvec(frame).expect("peer frames always encode"))
}

/// How long sent data may stay unacknowledged before the kernel drops the connection
/// (`TCP_USER_TIMEOUT`). Without it, a connection across a cut link lingers after the link
/// heals while TCP's retransmission backoff grows to seconds; with it, the writer reconnects
/// at once, and the receiver is told of the messages lost with the old connection.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(target_os = "linux")]
fn set_user_timeout(stream: &TcpStream, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let ms = timeout.as_millis() as libc::c_uint;
    // SAFETY: setsockopt on a socket this stream owns, with a pointer to a live c_uint and its
    // size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "TCP_USER_TIMEOUT not set");
    }
}

#[cfg(not(target_os = "linux"))]
fn set_user_timeout(_: &TcpStream, _: Duration) {}

/// One outbound link.
struct Link {
    /// Set while a connection is up.
    up: Arc<std::sync::atomic::AtomicBool>,
    id: NodeId,
    session: u64,
    peer: NodeId,
    addr: SocketAddr,
    /// The IP outbound connections are bound to, if any.
    source: Option<IpAddr>,
    config: LinkConfig,
}

/// What a receiving side checks a hello against, and how it reports what it refuses.
struct Known {
    config: LinkConfig,
    refusals: Refusals,
    /// Connections accepted and not yet identified (no hello heard), per remote IP.
    unheard: Mutex<HashMap<IpAddr, usize>>,
}

/// Connections not yet identified that one remote IP may hold open at once, and all IPs
/// together: a stranger opening connections and saying nothing holds at most this many
/// tasks (each for [`HELLO_TIMEOUT`] at most), and members, each from its own address, are
/// still heard.
const UNHEARD_PER_IP: usize = 16;
const UNHEARD_MAX: usize = 1024;

/// A connection counted among the unidentified of its IP until dropped.
struct Unheard {
    known: Arc<Known>,
    ip: IpAddr,
}

impl Unheard {
    /// Counts a new connection from `ip`, unless that IP, or all, are at their limit.
    fn admit(known: &Arc<Known>, ip: IpAddr) -> Option<Unheard> {
        let mut unheard = known.unheard.lock().unwrap();
        let total: usize = unheard.values().sum();
        let mine = unheard.entry(ip).or_default();
        if *mine >= UNHEARD_PER_IP || total >= UNHEARD_MAX {
            return None;
        }
        *mine += 1;
        Some(Unheard {
            known: Arc::clone(known),
            ip,
        })
    }
}

impl Drop for Unheard {
    fn drop(&mut self) {
        let mut unheard = self.known.unheard.lock().unwrap();
        if let Some(n) = unheard.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                unheard.remove(&self.ip);
            }
        }
    }
}

/// Connections refused: counted, and logged at most once a second with the number left
/// unlogged since, so a stranger retrying in a loop cannot flood the log.
#[derive(Default)]
struct Refusals {
    count: Arc<std::sync::atomic::AtomicU64>,
    logged: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Refusals {
    fn refuse(
        &self,
        remote: Option<SocketAddr>,
        sender: Option<NodeId>,
        why: &dyn std::fmt::Display,
    ) {
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut logged = self.logged.lock().unwrap();
        let (last, quiet) = &mut *logged;
        if last.is_some_and(|at| at.elapsed() < REFUSALS_LOGGED_EVERY) {
            *quiet += 1;
            return;
        }
        *last = Some(std::time::Instant::now());
        let also = std::mem::take(quiet);
        tracing::warn!(
            ?remote,
            ?sender,
            refused_unlogged = also,
            "refused a peer connection: {why}"
        );
    }
}

/// How often refused peer connections are logged, at most.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(1);

fn codec(config: &LinkConfig) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(config.max_frame_bytes)
        .new_codec()
}

async fn connect(link: &Link) -> io::Result<TcpStream> {
    let socket = if link.addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(ip) = link.source.filter(|ip| ip.is_ipv4() == link.addr.is_ipv4()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(link.addr).await
}

/// Sends everything queued for one peer, reconnecting as needed.
async fn writer<M: Serialize>(link: Link, mut queue: Numbered<M>, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_START;
    let mut unsent: Option<(u64, M)> = None;
    loop {
        let stream = tokio::select! {
            s = tokio::time::timeout(CONNECT_TIMEOUT, connect(&link)) => s,
            () = shutdown.cancelled() => return,
        };
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            _ => {
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        set_user_timeout(&stream, LINK_TIMEOUT);
        let (reader, writer) = match &link.config.tls {
            Some(tls) => match tls.connect(stream, Some(link.peer)).await {
                Ok(stream) => {
                    let (reader, writer) = tokio::io::split(stream);
                    (Either::Right(reader), Either::Right(writer))
                }
                Err(e) => {
                    tracing::warn!(peer = ?link.peer, addr = %link.addr, error = %e,
                        "TLS handshake with a peer failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
            None => {
                let (reader, writer) = stream.into_split();
                (Either::Left(reader), Either::Left(writer))
            }
        };
        let mut framed = FramedWrite::new(writer, codec(&link.config));
        let mut reader = match say_hello::<M, _, _>(&link, reader, &mut framed).await {
            Ok(reader) => reader,
            Err(e) => {
                if e.kind() == io::ErrorKind::PermissionDenied {
                    tracing::warn!(peer = ?link.peer, addr = %link.addr, error = %e,
                        "peer handshake failed; retrying");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_START;
        tracing::debug!(peer = ?link.peer, addr = %link.addr, "peer link up");
        link.up.store(true, std::sync::atomic::Ordering::Relaxed);
        let limit = link.config.max_frame_bytes;
        let pumped = pump(
            &mut framed,
            &mut reader,
            (&mut queue, &mut unsent),
            limit,
            &shutdown,
        )
        .await;
        link.up.store(false, std::sync::atomic::Ordering::Relaxed);
        match pumped {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(peer = ?link.peer, error = %e, "peer link broke; reconnecting")
            }
        }
    }
}

/// Sends the hello that opens a connection as `link` describes it. With a shared secret it
/// first waits for the receiver's challenge, and after the hello for the receiver's welcome,
/// which must prove the receiver holds the secret too (else `PermissionDenied`). Returns the
/// reading half, for the caller to watch for the connection's end.
async fn say_hello<M: Serialize, R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    link: &Link,
    reader: R,
    framed: &mut FramedWrite<W, LengthDelimitedCodec>,
) -> io::Result<R> {
    let fields = (link.id, link.session, link.config.cluster);
    let hello = |proof| Frame::<M>::Hello {
        from: link.id,
        session: link.session,
        cluster: link.config.cluster,
        proof,
    };
    let Some(secret) = &link.config.secret else {
        framed.send(encode(&hello(None))).await?;
        return Ok(reader);
    };
    let denied = |why: &str| io::Error::new(io::ErrorKind::PermissionDenied, why.to_string());
    let mut answers = FramedRead::new(reader, codec(&link.config));
    let Some(secret::Answer::Challenge(challenge)) = answer(&mut answers).await? else {
        return Err(denied(
            "the peer sent no challenge first (is --peer-secret-file set on every member?)",
        ));
    };
    let proof = secret.prove_hello(&challenge, secret::PeerSecret::random(), fields);
    let nonce = proof.nonce;
    framed.send(encode(&hello(Some(proof)))).await?;
    match answer(&mut answers).await {
        Ok(Some(secret::Answer::Welcome(welcome)))
            if secret.checks_welcome(&challenge, &nonce, link.id, &welcome) =>
        {
            Ok(answers.into_inner())
        }
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(denied(
            "the peer closed the connection on our hello (does it hold another secret, \
             or belong to another cluster?)",
        )),
        Err(e) => Err(e),
        Ok(_) => Err(denied("the peer did not prove it holds the cluster secret")),
    }
}

/// The next answer a receiving member sends during a handshake (`None` if unreadable).
async fn answer<R: AsyncRead + Unpin>(
    answers: &mut FramedRead<R, LengthDelimitedCodec>,
) -> io::Result<Option<secret::Answer>> {
    match tokio::time::timeout(HELLO_TIMEOUT, answers.next()).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the peer said nothing during the handshake",
        )),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed the connection during the handshake",
        )),
        Ok(Some(Err(e))) => Err(e),
        Ok(Some(Ok(bytes))) => Ok(postcard::from_bytes(&bytes).ok()),
    }
}

/// A peer's queue, numbering what it yields: each message gets the next number on the link,
/// after the numbers of the messages dropped before it ([`Transport::dropped`]).
struct Numbered<M> {
    queue: mpsc::UnboundedReceiver<Weighed<M>>,
    /// The queue's room, given back as messages leave it.
    room: Arc<Semaphore>,
    drops: Arc<Drops>,
    /// Messages taken from the queue.
    taken: u64,
    /// The last number used.
    sent: u64,
}

impl<M> Numbered<M> {
    fn number(&mut self, weighed: Weighed<M>) -> (u64, M) {
        self.room.add_permits(weighed.permits as usize);
        let message = weighed.message;
        self.taken += 1;
        self.sent += self.drops.before(self.taken) + 1;
        (self.sent, message)
    }

    async fn recv(&mut self) -> Option<(u64, M)> {
        let message = self.queue.recv().await?;
        Some(self.number(message))
    }

    fn try_recv(&mut self) -> Option<(u64, M)> {
        let message = self.queue.try_recv().ok()?;
        Some(self.number(message))
    }
}

/// Writes queued messages until the queue closes (`Ok`) or the connection fails (`Err`, with
/// the message being written kept in `unsent`). A message whose frame would pass `limit` is
/// reported and skipped, its number used up, so the receiver sees a gap where it was.
async fn pump<M: Serialize, W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(
    framed: &mut FramedWrite<W, LengthDelimitedCodec>,
    reader: &mut R,
    (queue, unsent): (&mut Numbered<M>, &mut Option<(u64, M)>),
    limit: usize,
    shutdown: &CancellationToken,
) -> io::Result<()> {
    loop {
        let first = match unsent.take() {
            Some(m) => m,
            None => tokio::select! {
                m = queue.recv() => match m {
                    Some(m) => m,
                    None => return Ok(()),
                },
                // Noticed while idle, not at the next write: `Transport::is_up` turns false
                // as soon as the peer is gone.
                () = closed(reader) => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "closed by the peer"));
                }
                () = shutdown.cancelled() => return Ok(()),
            },
        };
        let mut next = Some(first);
        while let Some((n, message)) = next.take() {
            let frame = encode(&Frame::Message {
                n,
                message: &message,
            });
            if frame.len() > limit {
                tracing::error!(
                    n,
                    bytes = frame.len(),
                    limit,
                    "a peer message is larger than a frame may be; not sent (the peer sees a gap)"
                );
            } else if let Err(e) = framed.feed(frame).await {
                *unsent = Some((n, message));
                return Err(e);
            }
            next = queue.try_recv();
        }
        SinkExt::<Bytes>::flush(framed).await?;
    }
}

/// Returns once the peer closed the connection `reader` reads (or it failed). The peer sends
/// nothing on a link's connection after its handshake, so reading only finds its end.
async fn closed<R: AsyncRead + Unpin>(reader: &mut R) {
    let mut buf = [0u8; 64];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

async fn accept_loop<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    inbox: InboxSender<M>,
    expected: Expected,
    known: Arc<Known>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Some(unheard) = Unheard::admit(&known, remote.ip()) else {
                    let why = "too many connections from its address not yet identified";
                    known.refusals.refuse(Some(remote), None, &why);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let reader = reader(
                    stream,
                    unheard,
                    inbox.clone(),
                    expected.clone(),
                    Arc::clone(&known),
                    shutdown.clone(),
                );
                tokio::spawn(reader);
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(BACKOFF_START).await;
            }
        }
    }
}

/// Whether a connection from run `session` of `from` may be heard: not if a later run of
/// that node has been heard from already (a stale connection of a process since restarted).
fn current_run(expected: &Expected, from: NodeId, session: u64) -> bool {
    let expected = expected.lock().unwrap();
    expected
        .get(&from)
        .is_none_or(|&(heard, _)| session >= heard)
}

/// Why a hello is refused, if it is.
fn check_hello(
    known: &Known,
    expected: &Expected,
    from: NodeId,
    session: u64,
    cluster: u64,
) -> Result<(), &'static str> {
    if cluster != known.config.cluster {
        return Err("it belongs to another cluster (member list or shared settings differ)");
    }
    if !current_run(expected, from, session) {
        return Err("it comes from an older run of that peer");
    }
    Ok(())
}

/// What to do with message `n` from a sender, given what is expected of it.
fn admit(expected: &Expected, from: NodeId, session: u64, n: u64) -> Admit {
    let mut expected = expected.lock().unwrap();
    let entry = expected.entry(from).or_insert((session, 1));
    if session < entry.0 {
        return Admit::Stale;
    }
    if entry.0 != session {
        // A new run of the sender: its numbering starts over.
        *entry = (session, 1);
    }
    let next = entry.1;
    if n < next {
        return Admit::Duplicate;
    }
    entry.1 = n + 1;
    if n > next {
        Admit::AfterGap
    } else {
        Admit::Next
    }
}

enum Admit {
    Next,
    Duplicate,
    AfterGap,
    /// From a run older than one heard from since: the connection is dropped.
    Stale,
}

/// Reads one peer connection into the inbox.
async fn reader<M: DeserializeOwned + Send + 'static>(
    stream: TcpStream,
    unheard: Unheard,
    inbox: InboxSender<M>,
    expected: Expected,
    known: Arc<Known>,
    shutdown: CancellationToken,
) {
    let remote = stream.peer_addr().ok();
    let stream = match &known.config.tls {
        Some(tls) => match tls.accept(stream).await {
            Ok(stream) => Either::Right(stream),
            Err(e) => {
                let why = format!("TLS handshake failed: {e}");
                known.refusals.refuse(remote, None, &why);
                return;
            }
        },
        None => Either::Left(stream),
    };
    let mut framed = Framed::new(stream, codec(&known.config));
    let mut from = None;
    let mut unheard = Some(unheard);
    // A connection must say who it is from at once.
    let hello_by = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_by);
    let challenge = known
        .config
        .secret
        .as_ref()
        .map(|_| secret::PeerSecret::random());
    if let Some(challenge) = challenge {
        let sent = tokio::select! {
            sent = framed.send(encode(&secret::Answer::Challenge(challenge))) => sent.is_ok(),
            () = &mut hello_by => false,
            () = shutdown.cancelled() => return,
        };
        if !sent {
            known
                .refusals
                .refuse(remote, None, &"it did not take the challenge");
            return;
        }
    }
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            () = &mut hello_by, if from.is_none() => {
                known.refusals.refuse(remote, None, &"no hello in time");
                return;
            }
            () = shutdown.cancelled() => return,
        };
        let bytes = match frame {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => {
                tracing::warn!(?remote, error = %e, "unreadable frame from a peer; dropping the link");
                return;
            }
            None => return,
        };
        match (postcard::from_bytes::<Frame<M>>(&bytes), from) {
            (
                Ok(Frame::Hello {
                    from: sender,
                    session,
                    cluster,
                    proof,
                }),
                None,
            ) => {
                if let Err(why) = check_hello(&known, &expected, sender, session, cluster) {
                    known.refusals.refuse(remote, Some(sender), &why);
                    return;
                }
                if let (Some(secret), Some(challenge)) = (&known.config.secret, &challenge) {
                    let fields = (sender, session, cluster);
                    let Some(proof) = proof.filter(|p| secret.checks_hello(challenge, p, fields))
                    else {
                        let why = "it did not prove it holds the cluster secret";
                        known.refusals.refuse(remote, Some(sender), &why);
                        return;
                    };
                    let welcome = secret.welcome(challenge, &proof.nonce, sender);
                    if framed
                        .send(encode(&secret::Answer::Welcome(welcome)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if let Either::Right(tls) = framed.get_ref() {
                    if !tls::certifies(tls, sender) {
                        known.refusals.refuse(
                            remote,
                            Some(sender),
                            &"its certificate is not for the node its hello names",
                        );
                        return;
                    }
                }
                from = Some((sender, session));
                // Identified: no longer counted against its address.
                drop(unheard.take());
            }
            (Ok(Frame::Message { n, message }), Some((sender, session))) => {
                let event = match admit(&expected, sender, session, n) {
                    Admit::Duplicate => continue,
                    Admit::Stale => return,
                    Admit::Next => None,
                    Admit::AfterGap => Some(Incoming::Gap),
                };
                if let Some(gap) = event {
                    if !inbox.send(sender, gap, 0).await {
                        return;
                    }
                }
                if !inbox
                    .send(sender, Incoming::Message(message), bytes.len())
                    .await
                {
                    return;
                }
            }
            (frame, _) => {
                tracing::warn!(
                    ?remote,
                    ok = frame.is_ok(),
                    "bad frame from a peer; dropping the link"
                );
                return;
            }
        }
    }
}
