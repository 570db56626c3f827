//! Forwarding: a request for a key this node does not hold goes to one of its owners, over
//! the peer link the two nodes already share (one connection per pair, every request and
//! answer a frame on it, many in flight at once), and the owner's answer comes back the
//! same way. What travels is the engine's operation (a read, a mutation, a flush, a count),
//! not the client's command: the forwarding node still parses the command and writes the
//! reply, so a client sees exactly the replies of a single memcached.
//!
//! An owner is picked from the key's group by the key's partition, so the load of a group
//! spreads over its members, skipping members whose link is down and those that timed out
//! lately. A request is sent to another owner only when that is safe: always for reads and
//! counts, and for a write only when the first owner refused it before ordering it (it is
//! outside its group's view). A write that timed out may have taken effect; its client is
//! told so, as a client of the owner itself would be.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::{NodeId, UnixSecs};
use tailorkv_datalet::{DataletError, DataletStats, Item, Mutation, Outcome};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::mux::Wire;
use crate::error::Error;
use crate::peer::{Transport, Weigh};
use crate::placement::GroupId;

/// How long a forwarded request waits for its owner's answer: longer than the owner waits
/// for its group ([`crate::replication::REQUEST_TIMEOUT`]), so an owner that answers at all
/// is heard.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// How often a request waiting for its owner checks that the link to it is still up.
const LINK_CHECK: Duration = Duration::from_millis(50);
/// Checks in a row that find the link down before a request stops waiting.
const LINK_DOWN_CHECKS: u32 = 4;
/// How long an owner that did not answer in time is passed over.
const SUSPECT_FOR: Duration = Duration::from_secs(5);

/// A forwarded write timed out: its owner may have carried it out.
pub(crate) const FORWARD_TIMED_OUT: &str =
    "no quorum: timed out waiting for the key's owners; the outcome is unknown";
/// No owner of the key could be asked.
pub(crate) const NO_OWNER: &str = "no quorum: no owner of the key answered";

/// A client request forwarded to an owner, or the owner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Forwarded {
    Request {
        id: u64,
        group: GroupId,
        op: RemoteOp,
    },
    /// With the owner's position in its group's order after carrying the request out (see
    /// [`Forwarder`]).
    Answer {
        id: u64,
        answer: RemoteAnswer,
        position: u64,
    },
}

impl Weigh for Forwarded {
    fn weight(&self) -> usize {
        let data = match self {
            Forwarded::Request { op, .. } => match op {
                RemoteOp::Get { keys, .. } => keys.iter().map(|k| k.len() + 8).sum(),
                RemoteOp::Apply { key, mutation } => {
                    key.len()
                        + match mutation {
                            Mutation::Store { value, .. } => value.len(),
                            _ => 0,
                        }
                }
                RemoteOp::Flush { .. } | RemoteOp::Stats | RemoteOp::Status => 0,
            },
            Forwarded::Answer { answer, .. } => match answer {
                RemoteAnswer::Items(items) => items
                    .iter()
                    .map(|i| match i {
                        Ok(Some(item)) => item.value.len() + 48,
                        _ => 16,
                    })
                    .sum(),
                _ => 0,
            },
        };
        data + 48
    }
}

/// What an owner is asked to do in one of its groups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteOp {
    /// Read these keys, each as a `get` would; in the sequential mode once the owner has
    /// applied its group's order up to `after`.
    Get {
        keys: Vec<Bytes>,
        after: u64,
    },
    Apply {
        key: Bytes,
        mutation: Mutation,
    },
    /// `flush_all` with this flush point.
    Flush {
        at: UnixSecs,
    },
    /// The group's counters, for a cluster's `stats`.
    Stats,
    /// The node's status, for the status page (any group; the node answers for itself).
    Status,
}

/// An owner's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteAnswer {
    Items(Vec<Result<Option<Item>, RemoteError>>),
    Applied(Result<Outcome, RemoteError>),
    Flushed(Result<(), RemoteError>),
    Stats(DataletStats),
    Status(Box<crate::status::NodeStatus>),
    /// The node asked does not hold the group.
    NotHeld,
}

/// An [`Error`] on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteError {
    Datalet(DataletError),
    Refused(String),
}

impl From<Error> for RemoteError {
    fn from(e: Error) -> Self {
        match e {
            Error::Datalet(e) => RemoteError::Datalet(e),
            Error::Refused(why) => RemoteError::Refused(why.to_string()),
        }
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Datalet(e) => Error::Datalet(e),
            RemoteError::Refused(why) => Error::Refused(crate::replication::refusal(&why)),
        }
    }
}

/// Whether an owner refused a request without ordering it: asking another is safe.
fn refused_before_ordering(answer: &RemoteAnswer) -> bool {
    let refused = |e: &RemoteError| matches!(e, RemoteError::Refused(why) if crate::replication::nothing_happened(why));
    match answer {
        RemoteAnswer::NotHeld => true,
        RemoteAnswer::Applied(Err(e)) | RemoteAnswer::Flushed(Err(e)) => refused(e),
        RemoteAnswer::Items(items) => items.iter().any(|i| matches!(i, Err(e) if refused(e))),
        _ => false,
    }
}

/// How forwarded messages reach a peer: the node's transport, whatever its groups carry.
pub trait ForwardLink: Send + Sync {
    fn send(&self, to: NodeId, message: Forwarded)
        -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Whether the link to `to` is connected.
    fn is_up(&self, to: NodeId) -> bool;
    /// Bytes of messages queued for `to` and not yet written.
    fn queued(&self, to: NodeId) -> usize;
    /// Connections to the peer port refused ([`Transport::refused`]).
    fn refused(&self) -> u64;
}

impl<M> ForwardLink for Transport<Wire<M>>
where
    M: Serialize + serde::de::DeserializeOwned + Weigh + Send + Sync + 'static,
{
    fn send(
        &self,
        to: NodeId,
        message: Forwarded,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(Transport::send(self, to, Wire::Forward(message)))
    }

    fn is_up(&self, to: NodeId) -> bool {
        Transport::is_up(self, to)
    }

    fn queued(&self, to: NodeId) -> usize {
        self.queue_bytes().saturating_sub(self.room(to))
    }

    fn refused(&self) -> u64 {
        Transport::refused(self)
    }
}

/// The asking side: sends requests to owners and matches their answers.
pub struct Forwarder {
    me: NodeId,
    link: Arc<dyn ForwardLink>,
    next_id: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<(RemoteAnswer, u64)>>>,
    /// Per group, the furthest position in its order an owner reported after carrying out a
    /// request from here: a forwarded read asks its owner to have applied that much, so a
    /// client reads its own writes (and flushes) whichever owner applied them.
    positions: Mutex<HashMap<GroupId, u64>>,
    /// Per group, the owner that answered the last request.
    last_owner: Mutex<HashMap<GroupId, NodeId>>,
    /// Owners that did not answer in time, until when they are passed over.
    suspects: Mutex<HashMap<NodeId, Instant>>,
    /// Requests forwarded, for `stats`.
    pub sent: AtomicU64,
    /// Requests sent again to another owner.
    pub retried: AtomicU64,
}

impl Forwarder {
    pub fn new(me: NodeId, link: Arc<dyn ForwardLink>) -> Self {
        Forwarder {
            me,
            link,
            next_id: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            last_owner: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
            sent: AtomicU64::new(0),
            retried: AtomicU64::new(0),
        }
    }

    /// The order in which `owners` of `group` are tried: the owner that answered this node's
    /// last request for the group, while its link is up and it has not failed to answer
    /// (every request of a client goes to one owner, so in eventual mode it reads its own
    /// writes); else from the one this node prefers for the group (the nodes of the cluster
    /// spread over the owners), those whose link is up and that answered lately first.
    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }

    fn candidates(&self, group: GroupId, owners: &[NodeId]) -> Vec<NodeId> {
        let now = Instant::now();
        let suspects = self.suspects.lock().unwrap();
        let first = usize::from(group.0) + usize::from(self.me.0);
        let mut order: Vec<NodeId> = (0..owners.len())
            .map(|i| owners[(first + i) % owners.len()])
            .collect();
        let last = self.last_owner.lock().unwrap().get(&group).copied();
        // Stable: the preferred order among equals.
        order.sort_by_key(|o| {
            let suspect = suspects.get(o).is_some_and(|&until| until > now);
            (suspect, !self.link.is_up(*o), Some(*o) != last)
        });
        order
    }

    /// Asks an owner of `group` (its members `owners`) to carry out `op`. `retry` says
    /// whether another owner may be asked after one did not answer (reads and counts).
    pub async fn call(
        &self,
        group: GroupId,
        owners: &[NodeId],
        mut op: RemoteOp,
        retry: bool,
    ) -> Result<RemoteAnswer, Error> {
        if let RemoteOp::Get { after, .. } = &mut op {
            *after = self
                .positions
                .lock()
                .unwrap()
                .get(&group)
                .copied()
                .unwrap_or(0);
        }
        let candidates = self.candidates(group, owners);
        let mut last = None;
        for (attempt, owner) in candidates.into_iter().enumerate() {
            if attempt > 0 {
                self.retried.fetch_add(1, Ordering::Relaxed);
            }
            let Some((answer, position)) = self.ask(owner, group, op.clone()).await else {
                if retry {
                    continue;
                }
                return Err(Error::Refused(FORWARD_TIMED_OUT));
            };
            let refused = refused_before_ordering(&answer);
            {
                let mut positions = self.positions.lock().unwrap();
                let known = positions.entry(group).or_default();
                if refused && matches!(&op, RemoteOp::Get { after, .. } if *after > position) {
                    // The owner never got as far as this node saw its group go: the group
                    // started over (every member restarted empty). Start over with it.
                    *known = position;
                } else {
                    *known = (*known).max(position);
                }
            }
            if !refused {
                self.last_owner.lock().unwrap().insert(group, owner);
                return Ok(answer);
            }
            last = Some(answer);
        }
        match last {
            Some(RemoteAnswer::NotHeld) | None => Err(Error::Refused(NO_OWNER)),
            Some(answer) => Ok(answer),
        }
    }

    /// `node`'s status, if it answers within `within`.
    pub async fn status_of(
        &self,
        node: NodeId,
        within: Duration,
    ) -> Option<crate::status::NodeStatus> {
        let ask = self.ask(node, GroupId(0), RemoteOp::Status);
        match tokio::time::timeout(within, ask).await {
            Ok(Some((RemoteAnswer::Status(status), _))) => Some(*status),
            _ => None,
        }
    }

    /// One owner's answer, or `None` when it did not come in time or the link to the owner
    /// went down meanwhile (the owner is then passed over for a while).
    async fn ask(
        &self,
        owner: NodeId,
        group: GroupId,
        op: RemoteOp,
    ) -> Option<(RemoteAnswer, u64)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap().insert(id, tx);
        self.sent.fetch_add(1, Ordering::Relaxed);
        let request = Forwarded::Request { id, group, op };
        let answered = tokio::time::timeout(FORWARD_TIMEOUT, async {
            self.link.send(owner, request).await;
            let mut rx = std::pin::pin!(rx);
            let mut down = 0;
            loop {
                tokio::select! {
                    answer = &mut rx => return answer.ok(),
                    () = tokio::time::sleep(LINK_CHECK) => {
                        // Down for a while (not just reconnecting): the owner is gone or cut
                        // off, and no answer is coming.
                        down = if self.link.is_up(owner) { 0 } else { down + 1 };
                        if down >= LINK_DOWN_CHECKS {
                            return None;
                        }
                    }
                }
            }
        })
        .await;
        match answered {
            Ok(Some(answer)) => Some(answer),
            _ => {
                self.waiting.lock().unwrap().remove(&id);
                let until = Instant::now() + SUSPECT_FOR;
                self.suspects.lock().unwrap().insert(owner, until);
                tracing::warn!(
                    ?owner,
                    ?group,
                    "a forwarded request was not answered in time"
                );
                None
            }
        }
    }

    /// An owner's answer to request `id` arrived, with its position in its group's order.
    pub fn answered(&self, id: u64, answer: RemoteAnswer, position: u64) {
        if let Some(waiter) = self.waiting.lock().unwrap().remove(&id) {
            let _ = waiter.send((answer, position));
        }
    }

    /// Sends `answer` to request `id` back to `to`.
    pub async fn answer(&self, to: NodeId, id: u64, answer: RemoteAnswer, position: u64) {
        let answer = Forwarded::Answer {
            id,
            answer,
            position,
        };
        self.link.send(to, answer).await;
    }
}
