//! Replication through the total-order broadcast: the driver that owns a [`Tob`] and applies
//! what it delivers, and the handle commands use to reach it.
//!
//! # How it works
//!
//! A command that must be ordered (every write; in the linearizable mode every read too) is
//! sent to the driver task as a [`Request`] with a oneshot for its reply. The driver proposes
//! it to the [`Tob`] (all requests waiting at that moment go out in one broadcast), sends the
//! TOB's messages through the [`peer`](crate::peer) transport, feeds it the messages peers
//! send, and ticks it every millisecond. Every delivered operation is applied to the datalet
//! in delivery order, on every member, at version `(sequence number, node 0)`: the same
//! version, and so the same CAS unique, on every replica. An operation also carries the
//! proposer's clock reading, so expiry is decided identically everywhere. The member that
//! proposed an operation answers its client when the operation is delivered and applied
//! there, never earlier, and a read is answered from the state at its place in the order.
//!
//! The driver never waits on a peer: messages a full peer queue cannot take wait in the
//! driver, and while any wait it takes no new client requests, so clients feel the
//! backpressure, not the protocol.

mod driver;
pub mod eventual;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::UnixSecs;
use tailorkv_datalet::{DataletError, Item, Mutation, Outcome};
use tokio::sync::{mpsc, oneshot};

pub use driver::{spawn_driver, Members};
pub use eventual::Eventual;

/// An operation in the total order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Mutate {
        key: Bytes,
        mutation: Mutation,
    },
    /// A linearizable read: answered at its place in the order, by its proposer only.
    Get {
        key: Bytes,
    },
    /// `flush_all`, with its flush point.
    Flush {
        at: UnixSecs,
    },
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
    Read(Result<Option<Item>, DataletError>),
    Flushed(Result<(), DataletError>),
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
}

/// Client requests waiting for the driver, at most.
pub const REQUEST_QUEUE: usize = 16 * 1024;

fn stopped() -> DataletError {
    DataletError::Unavailable("replication stopped".into())
}

impl Replicator {
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    async fn order(&self, op: Op, now: UnixSecs) -> Result<Reply, DataletError> {
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
    ) -> Result<Outcome, DataletError> {
        let op = Op::Mutate {
            key: key.clone(),
            mutation,
        };
        match self.order(op, now).await? {
            Reply::Mutated(result) => result,
            other => unreachable!("a mutation answered with {other:?}"),
        }
    }

    pub async fn read(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        let op = Op::Get {
            key: Bytes::copy_from_slice(key),
        };
        match self.order(op, now).await? {
            Reply::Read(result) => result,
            other => unreachable!("a read answered with {other:?}"),
        }
    }

    pub async fn flush(&self, at: UnixSecs, now: UnixSecs) -> Result<(), DataletError> {
        match self.order(Op::Flush { at }, now).await? {
            Reply::Flushed(result) => result,
            other => unreachable!("a flush answered with {other:?}"),
        }
    }
}
