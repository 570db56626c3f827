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
//! - Sending goes through a bounded queue per peer, drained by that peer's writer task, which
//!   writes every queued message and then flushes once: under load, one syscall carries many
//!   messages. A full queue makes the sender wait (backpressure) rather than drop a message.
//! - A writer that cannot connect, or whose connection breaks, reconnects with exponential
//!   backoff (10 ms doubling to 1 s) and resends the message it was writing.
//! - Received messages from all peers go into one bounded inbox, tagged with their sender.
//!
//! Caveat: messages the kernel had accepted on a connection that then breaks are not resent;
//! links are reliable as long as connections are. Failure detection and rejoin are what make
//! the protocol survive broken links and crashed peers.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

/// Messages queued per peer before senders wait.
pub const PEER_QUEUE: usize = 4096;
/// Largest frame accepted from a peer.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What travels on a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame<M> {
    /// First frame of a connection: who is sending.
    Hello { from: NodeId },
    /// One protocol message.
    Message(M),
}

/// The sending side of the transport: one queue per peer.
pub struct Transport<M> {
    queues: BTreeMap<NodeId, mpsc::Sender<M>>,
}

impl<M> Clone for Transport<M> {
    fn clone(&self) -> Self {
        Transport {
            queues: self.queues.clone(),
        }
    }
}

/// Received messages, tagged with their sender.
pub type Inbox<M> = mpsc::Receiver<(NodeId, M)>;

impl<M> Transport<M>
where
    M: Serialize + DeserializeOwned + Send + 'static,
{
    /// Starts receiving on `listener` and sending to `peers` (other members, not `id`).
    pub fn start(
        id: NodeId,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        shutdown: CancellationToken,
    ) -> (Transport<M>, Inbox<M>) {
        let (inbox_tx, inbox) = mpsc::channel(PEER_QUEUE * peers.len().max(1));
        tokio::spawn(accept_loop(listener, inbox_tx, shutdown.clone()));
        let mut queues = BTreeMap::new();
        for &(peer, addr) in peers {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(writer(id, peer, addr, rx, shutdown.clone()));
            queues.insert(peer, tx);
        }
        (Transport { queues }, inbox)
    }

    /// Queues `message` for `to` if its queue has room; gives it back if not. A peer not in
    /// the group swallows the message.
    pub fn try_send(&self, to: NodeId, message: M) -> Result<(), M> {
        match self.queues.get(&to).map(|q| q.try_send(message)) {
            Some(Err(mpsc::error::TrySendError::Full(message))) => Err(message),
            _ => Ok(()),
        }
    }

    /// Queues `message` for `to`, waiting while that peer's queue is full.
    pub async fn send(&self, to: NodeId, message: M) {
        if let Some(queue) = self.queues.get(&to) {
            // Fails only once the writer has stopped, at shutdown.
            let _ = queue.send(message).await;
        }
    }
}

fn encode<M: Serialize>(frame: &Frame<M>) -> Bytes {
    Bytes::from(postcard::to_stdvec(frame).expect("peer messages always encode"))
}

/// Sends everything queued for one peer, reconnecting as needed.
async fn writer<M: Serialize>(
    id: NodeId,
    peer: NodeId,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<M>,
    shutdown: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    let mut unsent: Option<M> = None;
    loop {
        let stream = tokio::select! {
            s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)) => s,
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
        backoff = BACKOFF_START;
        let mut framed = FramedWrite::new(stream, LengthDelimitedCodec::new());
        if framed
            .send(encode::<M>(&Frame::Hello { from: id }))
            .await
            .is_err()
        {
            continue;
        }
        tracing::debug!(?peer, %addr, "peer link up");
        match pump(&mut framed, &mut queue, &mut unsent, &shutdown).await {
            Ok(()) => return,
            Err(e) => tracing::debug!(?peer, error = %e, "peer link broke; reconnecting"),
        }
    }
}

/// Writes queued messages until the queue closes (`Ok`) or the connection fails (`Err`, with
/// the message being written kept in `unsent`).
async fn pump<M: Serialize>(
    framed: &mut FramedWrite<TcpStream, LengthDelimitedCodec>,
    queue: &mut mpsc::Receiver<M>,
    unsent: &mut Option<M>,
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
                () = shutdown.cancelled() => return Ok(()),
            },
        };
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let frame = encode(&Frame::Message(&message));
            if let Err(e) = framed.feed(frame).await {
                *unsent = Some(message);
                return Err(e);
            }
            next = queue.try_recv().ok();
        }
        SinkExt::<Bytes>::flush(framed).await?;
    }
}

async fn accept_loop<M: DeserializeOwned + Send + 'static>(
    listener: TcpListener,
    inbox: mpsc::Sender<(NodeId, M)>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(reader(stream, inbox.clone(), shutdown.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "peer accept failed");
                tokio::time::sleep(BACKOFF_START).await;
            }
        }
    }
}

/// Reads one peer connection into the inbox.
async fn reader<M: DeserializeOwned>(
    stream: TcpStream,
    inbox: mpsc::Sender<(NodeId, M)>,
    shutdown: CancellationToken,
) {
    let codec = LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec();
    let mut framed = FramedRead::new(stream, codec);
    let mut from = None;
    loop {
        let frame = tokio::select! {
            f = framed.next() => f,
            () = shutdown.cancelled() => return,
        };
        let Some(Ok(bytes)) = frame else { return };
        match (postcard::from_bytes::<Frame<M>>(&bytes), from) {
            (Ok(Frame::Hello { from: sender }), None) => from = Some(sender),
            (Ok(Frame::Message(m)), Some(sender)) => {
                if inbox.send((sender, m)).await.is_err() {
                    return;
                }
            }
            (frame, _) => {
                tracing::warn!(
                    ok = frame.is_ok(),
                    "bad frame from a peer; dropping the link"
                );
                return;
            }
        }
    }
}
