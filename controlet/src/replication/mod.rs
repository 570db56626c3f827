//! Replication: for the strong modes, the driver that owns a [`Tob`](crate::tob::Tob) and
//! applies what it delivers, and the handle commands use to reach it; the eventual mode
//! ([`eventual`]), which needs no order; and the node's [`Health`] in its cluster.
//!
//! # How it works
//!
//! A command that must be ordered (every write; in the linearizable mode every read too) is
//! sent to the driver task as a [`Request`] with a oneshot for its reply. The driver proposes
//! it to the `Tob` (all requests waiting at that moment go out in one broadcast), sends the
//! TOB's messages through the [`peer`](crate::peer) transport, feeds it the messages peers
//! send, and ticks it every millisecond. Every delivered operation is applied to the datalet
//! in delivery order, on every member, at version `(sequence number, node 0)`: the same
//! version, and so the same CAS unique, on every replica. An operation also carries the
//! proposer's clock reading, so expiry is decided identically everywhere. The member that
//! proposed an operation answers its client when the operation is delivered and applied
//! there, never earlier, and a read is answered from the state at its place in the order.
//!
//! The driver never waits on a peer: messages a full peer queue cannot take wait in the
//! driver, and while any wait for a member of the view it takes no new client requests, so
//! clients feel the backpressure, not the protocol.
//!
//! # Faults
//!
//! The [`Tob`](crate::tob::Tob) detects failures and changes views (see its documentation).
//! The driver carries out what that needs: when this node joins a view as a member that must
//! be given its state, it empties its datalet and installs the snapshot the view's source
//! sends ([`driver::StateChunk`]); when it is the source, it scans its datalet right after
//! applying the old view's tail and sends that. A request is refused with `SERVER_ERROR`
//! at once when this node is outside the view, and after [`driver::REQUEST_TIMEOUT`] when
//! the cluster does not order it in time. Every refusal of a request that was already
//! proposed says `the outcome is unknown` (it may have been ordered and applied by the
//! others), so no client takes a refused `incr` or `append` for one that did not happen. In
//! the sequential mode, local reads are served only while this node is an up-to-date member
//! of a view.

pub mod antientropy;
mod driver;
pub mod eventual;
mod health;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::UnixSecs;
use tailorkv_datalet::{DataletError, Mutation, Outcome};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::tob::NodeState;

pub use driver::{
    max_frame_bytes, spawn_driver, GroupDriver, Members, PeerMsg, StateChunk, StateItem,
    IN_FLIGHT_BYTES, REQUEST_TIMEOUT, STATE_CHUNK_BYTES,
};
pub use eventual::Eventual;
pub use health::Health;

/// An operation in the total order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Mutate {
        key: Bytes,
        mutation: Mutation,
    },
    /// A linearizable read, as a client request: never ordered; the driver answers
    /// [`Reply::ReadReady`] once the order confirms the replica may serve it (`Driver::read`,
    /// [`crate::tob::Tob::read`]), and the asker reads the replica itself.
    Read,
    /// `flush_all`, with its flush point.
    Flush {
        at: UnixSecs,
    },
    /// Changes no data: brings the order's clock up to the proposer's reading, so that what
    /// expired since the last ordered operation counts as dead everywhere (a node about to
    /// refuse a write for memory orders one before it reclaims).
    Clock,
}

/// Whether a read counts as an access of the item (memcached's LRU bump): every read but
/// `mg ... u`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bump {
    Yes,
    No,
}

/// What travels in a broadcast: the operation, who is waiting for it, and the proposer's clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// The proposer's id for the waiting client request.
    pub request: u64,
    pub now: UnixSecs,
    pub op: Op,
}

/// The answer to an ordered operation.
#[derive(Debug)]
pub enum Reply {
    Mutated(Result<Outcome, DataletError>),
    /// A linearizable read may be served from the local replica now.
    ReadReady,
    Flushed(Result<(), DataletError>),
    /// Not ordered: refused, or timed out (outcome unknown); the reason a client is given.
    Refused(&'static str),
}

/// A client operation on its way to the driver.
pub struct Request {
    pub op: Op,
    pub now: UnixSecs,
    pub reply: oneshot::Sender<Reply>,
}

/// What commands hold to order operations.
#[derive(Clone)]
pub struct Replicator {
    requests: mpsc::Sender<Request>,
    counters: std::sync::Arc<Counters>,
    health: std::sync::Arc<Health>,
}

/// How much the total order costs: peer messages sent per operation proposed here.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages this member sent to its peers (broadcasts, acks, heartbeats).
    pub peer_messages_sent: std::sync::atomic::AtomicU64,
    /// Operations this member proposed.
    pub ops_proposed: std::sync::atomic::AtomicU64,
    /// Operations delivered and applied here (from every member).
    pub ops_applied: std::sync::atomic::AtomicU64,
    /// Ordered operations this member's datalet failed to apply (each sent it to catch up
    /// by state transfer).
    pub apply_failures: std::sync::atomic::AtomicU64,
    /// Bytes of keys and values sent in snapshots to members joining a view (a moved copy, a
    /// restarted member's catch-up).
    pub state_bytes_sent: std::sync::atomic::AtomicU64,
}

/// Every reason a request may be refused for, so one that crossed a peer link (from an owner
/// a request was forwarded to) is given to the client as the same text.
const REFUSALS: &[&str] = &[
    driver::CUT_OFF,
    driver::READ_CATCHING_UP,
    driver::READ_TIMED_OUT,
    driver::EXCLUDED,
    driver::TIMED_OUT,
    driver::CATCHING_UP,
    driver::NOT_APPLIED,
    crate::shard::forward::FORWARD_TIMED_OUT,
    crate::shard::forward::NO_OWNER,
];

/// The refusal whose text is `why` (an unknown one says the outcome is unknown).
pub fn refusal(why: &str) -> &'static str {
    REFUSALS
        .iter()
        .find(|r| **r == why)
        .copied()
        .unwrap_or("no quorum: the key's owner refused the request; the outcome is unknown")
}

/// Whether a request refused for `why` was never ordered, so that asking another member is
/// safe: this node was outside the view, or a local read found no settled view.
pub fn nothing_happened(why: &str) -> bool {
    [
        driver::CUT_OFF,
        driver::READ_CATCHING_UP,
        driver::READ_TIMED_OUT,
    ]
    .contains(&why)
}

/// Client requests waiting for the driver, at most.
pub const REQUEST_QUEUE: usize = 16 * 1024;

fn stopped() -> Error {
    Error::Datalet(DataletError::Unavailable("replication stopped".into()))
}

impl Replicator {
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Names the group's members from now on (a membership change): see
    /// [`crate::tob::Tob::set_target`].
    pub fn set_target(&self, target: Vec<tailorkv_common::NodeId>) {
        self.health.set_target(target);
    }

    /// [`Replicator::health`], shared.
    pub fn health_handle(&self) -> std::sync::Arc<Health> {
        std::sync::Arc::clone(&self.health)
    }

    /// Reads `key` from the local replica once that is sound: while this node is an
    /// up-to-date member of a view that is not changing. Waits for that for at most
    /// [`REQUEST_TIMEOUT`], refuses at once when the node is cut off, and reads again if a
    /// state transfer began emptying the datalet while it read (checked with a counter of
    /// resets taken before and after, as in a seqlock).
    pub async fn read_locally<F, Fut, T>(&self, read: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, DataletError>>,
    {
        self.read_locally_after(0, read).await
    }

    /// [`Replicator::read_locally`], once the local replica has also applied operation
    /// `after` of the order: a client's read forwarded here after its write was applied by
    /// another member of the group then sees that write.
    pub async fn read_locally_after<F, Fut, T>(&self, after: u64, read: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, DataletError>>,
    {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let serving = self.health.serving();
            let resets = self.health.resets();
            match self.health.state() {
                NodeState::Serving if self.health.applied() < after => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::Refused(driver::READ_TIMED_OUT));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
                NodeState::Serving => {
                    let value = read().await?;
                    if self.health.resets() == resets {
                        return Ok(value);
                    }
                    continue; // the store was emptied under the read: wait and read again
                }
                NodeState::Outside => return Err(Error::Refused(driver::CUT_OFF)),
                // While the view changes this node may be on the losing side of a split:
                // wait for the outcome rather than serve what may be left behind.
                NodeState::Changing | NodeState::CatchingUp | NodeState::Booting => {}
            }
            if tokio::time::timeout_at(deadline, serving).await.is_err() {
                return Err(Error::Refused(match self.health.state() {
                    NodeState::CatchingUp => driver::READ_CATCHING_UP,
                    _ => driver::READ_TIMED_OUT,
                }));
            }
        }
    }

    async fn order(&self, op: Op, now: UnixSecs) -> Result<Reply, Error> {
        let (reply, answer) = oneshot::channel();
        let request = Request { op, now, reply };
        self.requests.send(request).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    pub async fn mutate(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<Outcome, Error> {
        let op = Op::Mutate {
            key: key.clone(),
            mutation,
        };
        match self.order(op, now).await? {
            Reply::Mutated(result) => Ok(result?),
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => unreachable!("a mutation answered with {other:?}"),
        }
    }

    /// A linearizable read: once the order says the local replica may serve it (see
    /// [`crate::tob::Tob::read`]), `read` reads the replica at the order's clock, on the
    /// caller's task (many reads at once, none of them in the driver's loop). A snapshot that
    /// began emptying the replica after that answer fails the read (checked with the count
    /// of resets, as in [`Replicator::read_locally`]); the replica only moves on otherwise,
    /// and any state from the answer on lies within the read's lifetime.
    pub async fn read<F, Fut, T>(&self, now: UnixSecs, read: F) -> Result<T, Error>
    where
        F: FnOnce(UnixSecs) -> Fut,
        Fut: std::future::Future<Output = Result<T, DataletError>>,
    {
        let resets = self.health.resets();
        match self.order(Op::Read, now).await? {
            Reply::ReadReady => {
                let value = read(self.health.order_now()).await?;
                if self.health.resets() != resets {
                    return Err(Error::Refused(driver::READ_CATCHING_UP));
                }
                Ok(value)
            }
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => unreachable!("a read answered with {other:?}"),
        }
    }

    /// Orders an [`Op::Clock`] at `now`; returns once it is applied here.
    pub async fn advance_clock(&self, now: UnixSecs) -> Result<(), Error> {
        match self.order(Op::Clock, now).await? {
            Reply::Flushed(result) => Ok(result?),
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => unreachable!("a clock answered with {other:?}"),
        }
    }

    pub async fn flush(&self, at: UnixSecs, now: UnixSecs) -> Result<(), Error> {
        match self.order(Op::Flush { at }, now).await? {
            Reply::Flushed(result) => Ok(result?),
            Reply::Refused(why) => Err(Error::Refused(why)),
            other => unreachable!("a flush answered with {other:?}"),
        }
    }
}
