//! Many replica groups over one peer link: a node's transport carries [`Wire`] messages, each
//! group's tagged with its [`GroupId`]; the mux task hands each to its group's inbox, and
//! forwarded requests and their answers to the forwarding layer.
//!
//! A group's driver (or eventual node) sends through a [`GroupLink`] and receives from a
//! [`GroupInbox`], which offer what the node's [`Transport`] and [`Inbox`] do, for one group.
//! A message passed to a group's inbox still holds its room in the node's inbox until the
//! group takes it ([`Held`]), so what a slow group has not taken counts against every group:
//! memory stays bounded by the node's inbox, as with one group.
//!
//! A gap on a link (messages from a peer were lost) cannot say whose messages were lost, so
//! it is reported to every group the peer shares with this node.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::forward::Forwarded;
use crate::peer::{Held, Inbox, Incoming, Transport, Weigh};
use crate::placement::GroupId;
use crate::replication::PeerMsg;

/// What travels on a node's peer links.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Wire<M> {
    /// A message of one replica group's protocol.
    Group { group: GroupId, message: M },
    /// A client request forwarded to an owner of its key, or the owner's answer.
    Forward(Forwarded),
    /// A node asking to join the cluster, or a member's answer.
    Join(crate::membership::JoinMsg),
    /// A message of the metadata group's order, whatever the data groups' protocol.
    Meta(crate::replication::PeerMsg),
    /// Sloppy quorum: a write of `group` for its member `owner`, which did not answer,
    /// given to a node outside the group to hold. The receiver answers `ack` to the sender
    /// (as `group`'s message) at once, and hands `message` to `owner` once it can reach it.
    Hold {
        group: GroupId,
        owner: NodeId,
        message: M,
        ack: M,
    },
}

impl<M: Weigh> Weigh for Wire<M> {
    fn weight(&self) -> usize {
        match self {
            Wire::Group { message, .. } => message.weight() + 4,
            Wire::Forward(forwarded) => forwarded.weight(),
            Wire::Join(join) => join.weight(),
            Wire::Meta(message) => message.weight() + 4,
            Wire::Hold { message, ack, .. } => message.weight() + ack.weight() + 8,
        }
    }
}

/// One group's side of the node's transport.
pub struct GroupLink<M> {
    transport: Transport<Wire<M>>,
    group: GroupId,
}

impl<M> Clone for GroupLink<M> {
    fn clone(&self) -> Self {
        GroupLink {
            transport: self.transport.clone(),
            group: self.group,
        }
    }
}

impl<M> GroupLink<M>
where
    M: Serialize + serde::de::DeserializeOwned + Weigh + Send + 'static,
{
    pub fn new(transport: Transport<Wire<M>>, group: GroupId) -> Self {
        GroupLink { transport, group }
    }

    /// The group this side of the transport carries.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// [`Transport::try_send`] for this group.
    pub fn try_send(&self, to: NodeId, message: M) -> Result<(), M> {
        let wire = Wire::Group {
            group: self.group,
            message,
        };
        self.transport
            .try_send(to, wire)
            .map_err(|wire| match wire {
                Wire::Group { message, .. } => message,
                _ => unreachable!("given back as it was given"),
            })
    }

    /// [`Transport::room`].
    pub fn room(&self, to: NodeId) -> usize {
        self.transport.room(to)
    }

    /// [`Transport::queue_bytes`].
    pub fn queue_bytes(&self) -> usize {
        self.transport.queue_bytes()
    }

    /// Gives `to`, a node outside the group, `message` to hold for `owner` (sloppy quorum);
    /// `to` answers `ack` at once. A message the queue cannot take is given back.
    pub fn hold(&self, to: NodeId, owner: NodeId, message: M, ack: M) -> Result<(), M> {
        let wire = Wire::Hold {
            group: self.group,
            owner,
            message,
            ack,
        };
        self.transport
            .try_send(to, wire)
            .map_err(|wire| match wire {
                Wire::Hold { message, .. } => message,
                _ => unreachable!("given back as it was given"),
            })
    }

    /// Every node of the cluster this node has a link to.
    pub fn nodes(&self) -> Vec<NodeId> {
        self.transport.peers()
    }

    /// Whether this node holds a connection to `to` now.
    pub fn is_up(&self, to: NodeId) -> bool {
        self.transport.is_up(to)
    }

    /// [`Transport::dropped`]: `to` sees a gap, which it reports to every group it shares
    /// with this node.
    pub fn dropped(&self, to: NodeId) {
        self.transport.dropped(to);
    }
}

/// What a group's order sends through: the node's transport, for one group. (A message the
/// queue cannot take is given back whole, as [`Transport::try_send`] does.)
#[allow(clippy::result_large_err)]
pub trait OrderLink: Send + Sync + 'static {
    /// [`Transport::try_send`] of the group's message.
    fn try_send(&self, to: NodeId, message: PeerMsg) -> Result<(), PeerMsg>;
    /// [`Transport::room`].
    fn room(&self, to: NodeId) -> usize;
    /// [`Transport::queue_bytes`].
    fn queue_bytes(&self) -> usize;
    /// [`Transport::dropped`].
    fn dropped(&self, to: NodeId);
}

impl OrderLink for GroupLink<PeerMsg> {
    fn try_send(&self, to: NodeId, message: PeerMsg) -> Result<(), PeerMsg> {
        GroupLink::try_send(self, to, message)
    }
    fn room(&self, to: NodeId) -> usize {
        GroupLink::room(self, to)
    }
    fn queue_bytes(&self) -> usize {
        GroupLink::queue_bytes(self)
    }
    fn dropped(&self, to: NodeId) {
        GroupLink::dropped(self, to)
    }
}

/// The metadata group's side of a node's transport, whatever its data groups speak.
pub struct MetaLink<M> {
    pub transport: Transport<Wire<M>>,
}

impl<M> OrderLink for MetaLink<M>
where
    M: Serialize + serde::de::DeserializeOwned + Weigh + Send + Sync + 'static,
{
    fn try_send(&self, to: NodeId, message: PeerMsg) -> Result<(), PeerMsg> {
        self.transport
            .try_send(to, Wire::Meta(message))
            .map_err(|wire| match wire {
                Wire::Meta(message) => message,
                _ => unreachable!("given back as it was given"),
            })
    }
    fn room(&self, to: NodeId) -> usize {
        self.transport.room(to)
    }
    fn queue_bytes(&self) -> usize {
        self.transport.queue_bytes()
    }
    fn dropped(&self, to: NodeId) {
        self.transport.dropped(to)
    }
}

/// What a group's inbox holds: a message, its sender, and its room in the node's inbox.
type Queued<M> = (NodeId, Incoming<M>, Option<Held>);

/// One group's messages, as the mux task hands them on.
pub struct GroupInbox<M> {
    queue: mpsc::UnboundedReceiver<Queued<M>>,
}

impl<M> GroupInbox<M> {
    /// The next message, waiting for one; `None` once the mux stopped.
    pub async fn recv(&mut self) -> Option<(NodeId, Incoming<M>)> {
        let (from, message, _held) = self.queue.recv().await?;
        Some((from, message))
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<(NodeId, Incoming<M>)> {
        let (from, message, _held) = self.queue.try_recv().ok()?;
        Some((from, message))
    }
}

/// Where the mux task hands each group's messages: shared, so groups can be added and
/// removed while the node serves (a membership change).
pub struct Groups<M> {
    groups: std::sync::Arc<std::sync::Mutex<GroupMap<M>>>,
    /// Writes this node holds for members of groups it may not hold (sloppy quorum).
    held: std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<StandIn<M>>>>>,
}

type GroupMap<M> = BTreeMap<GroupId, (Vec<NodeId>, mpsc::UnboundedSender<Queued<M>>)>;

impl<M> Default for Groups<M> {
    fn default() -> Self {
        Groups {
            groups: std::sync::Arc::default(),
            held: std::sync::Arc::default(),
        }
    }
}

impl<M> Clone for Groups<M> {
    fn clone(&self) -> Self {
        Groups {
            groups: std::sync::Arc::clone(&self.groups),
            held: std::sync::Arc::clone(&self.held),
        }
    }
}

impl<M> Groups<M> {
    /// Adds `group`, of `members`: the inbox its driver takes from.
    pub fn add(&self, group: GroupId, members: Vec<NodeId>) -> GroupInbox<M> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.groups.lock().unwrap().insert(group, (members, tx));
        GroupInbox { queue: rx }
    }

    /// The nodes whose lost messages `group` is told of, from now on.
    pub fn set_members(&self, group: GroupId, members: Vec<NodeId>) {
        if let Some(entry) = self.groups.lock().unwrap().get_mut(&group) {
            entry.0 = members;
        }
    }

    /// Stops handing `group` its messages.
    pub fn remove(&self, group: GroupId) {
        self.groups.lock().unwrap().remove(&group);
    }

    /// This node holds writes for other nodes (sloppy quorum) with `held`.
    pub fn stand_in_with(&self, held: std::sync::Arc<StandIn<M>>) {
        *self.held.lock().unwrap() = Some(held);
    }

    /// What holds writes for other nodes here, if anything does.
    pub fn stand_in(&self) -> Option<std::sync::Arc<StandIn<M>>> {
        self.held.lock().unwrap().clone()
    }
}

/// Bytes of writes held for other nodes, at most; past it, more are refused (not answered,
/// so they do not count for a quorum).
pub const HELD_BYTES: usize = 64 << 20;
/// How often held writes are offered to their owners.
const HAND_BACK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Writes this node holds for members of groups that did not answer (hinted handoff): each
/// goes to its owner, as the group's message, as soon as this node has a connection to it.
pub struct StandIn<M> {
    transport: Transport<Wire<M>>,
    writes: std::sync::Mutex<HeldWrites<M>>,
    counts: std::sync::Arc<StandInCounts>,
}

/// What a node's [`StandIn`] has done, for `stats`.
#[derive(Debug, Default)]
pub struct StandInCounts {
    /// Writes taken to hold for other nodes, since the start.
    pub taken: std::sync::atomic::AtomicU64,
    /// Writes handed back to their owners, since the start.
    pub handed_back: std::sync::atomic::AtomicU64,
    /// Writes held now.
    pub held: std::sync::atomic::AtomicU64,
}

struct HeldWrites<M> {
    by_owner: BTreeMap<NodeId, Vec<(GroupId, M)>>,
    bytes: usize,
}

impl<M> StandIn<M>
where
    M: Serialize + serde::de::DeserializeOwned + Weigh + Send + 'static,
{
    /// Holds writes with `transport`, handing them back until `shutdown`.
    pub fn start(
        transport: Transport<Wire<M>>,
        shutdown: CancellationToken,
    ) -> std::sync::Arc<Self> {
        let held = std::sync::Arc::new(StandIn {
            transport,
            writes: std::sync::Mutex::new(HeldWrites {
                by_owner: BTreeMap::new(),
                bytes: 0,
            }),
            counts: Default::default(),
        });
        let task = std::sync::Arc::clone(&held);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(HAND_BACK_EVERY) => task.hand_back(),
                    () = shutdown.cancelled() => return,
                }
            }
        });
        held
    }

    /// Takes `message` for `owner` from `from` and answers `ack`; unless over [`HELD_BYTES`].
    fn take(&self, from: NodeId, group: GroupId, owner: NodeId, message: M, ack: M) {
        {
            let mut writes = self.writes.lock().unwrap();
            let weight = message.weight();
            if writes.bytes + weight > HELD_BYTES {
                tracing::warn!(
                    owner = owner.0,
                    "too much held for other nodes; refusing more"
                );
                return;
            }
            writes.bytes += weight;
            let first = !writes.by_owner.contains_key(&owner);
            writes
                .by_owner
                .entry(owner)
                .or_default()
                .push((group, message));
            if first {
                tracing::info!(
                    owner = owner.0,
                    from = from.0,
                    "holding writes for a node that did not answer (sloppy quorum)"
                );
            }
        }
        self.counts
            .taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counts
            .held
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = self.transport.try_send(
            from,
            Wire::Group {
                group,
                message: ack,
            },
        );
    }

    /// Sends every owner it can reach what is held for it, in the order taken.
    fn hand_back(&self) {
        let mut writes = self.writes.lock().unwrap();
        let owners: Vec<NodeId> = writes.by_owner.keys().copied().collect();
        for owner in owners {
            if !self.transport.is_up(owner) {
                continue;
            }
            let queue = writes.by_owner.remove(&owner).unwrap_or_default();
            let total = queue.len();
            let mut rest = Vec::new();
            let mut sent = 0;
            for (group, message) in queue {
                if !rest.is_empty() {
                    rest.push((group, message));
                    continue;
                }
                let weight = message.weight();
                match self
                    .transport
                    .try_send(owner, Wire::Group { group, message })
                {
                    Ok(()) => {
                        writes.bytes -= weight;
                        sent += 1;
                    }
                    Err(Wire::Group { group, message }) => rest.push((group, message)),
                    Err(_) => unreachable!("given back as it was given"),
                }
            }
            self.counts
                .handed_back
                .fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            self.counts
                .held
                .fetch_sub(sent, std::sync::atomic::Ordering::Relaxed);
            if !rest.is_empty() {
                writes.by_owner.insert(owner, rest);
            }
            if sent > 0 {
                tracing::info!(
                    owner = owner.0,
                    writes = sent,
                    of = total,
                    "held writes handed back"
                );
            }
        }
    }

    /// Its counters, shared.
    pub fn counts(&self) -> std::sync::Arc<StandInCounts> {
        std::sync::Arc::clone(&self.counts)
    }

    /// Writes held now.
    pub fn len(&self) -> usize {
        self.writes
            .lock()
            .unwrap()
            .by_owner
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes the node's inbox until shutdown: each group's messages to its inbox (a group this
/// node does not hold drops them), forwarding traffic to `forwarded`, requests to join and
/// their answers to `joins`.
pub async fn run<M>(
    mut inbox: Inbox<Wire<M>>,
    groups: Groups<M>,
    meta: Groups<PeerMsg>,
    forwarded: mpsc::UnboundedSender<(NodeId, Forwarded)>,
    joins: mpsc::UnboundedSender<(NodeId, crate::membership::JoinMsg)>,
    shutdown: CancellationToken,
) where
    M: Serialize + serde::de::DeserializeOwned + Weigh + Send + 'static,
{
    loop {
        let got = tokio::select! {
            got = inbox.recv_held() => got,
            () = shutdown.cancelled() => return,
        };
        let Some((from, incoming, held)) = got else {
            return;
        };
        match incoming {
            Incoming::Message(Wire::Group { group, message }) => {
                let groups = groups.groups.lock().unwrap();
                match groups.get(&group) {
                    Some((_, tx)) => {
                        let _ = tx.send((from, Incoming::Message(message), Some(held)));
                    }
                    None => tracing::debug!(?from, ?group, "a message for a group not held here"),
                }
            }
            Incoming::Message(Wire::Forward(forward)) => {
                drop(held);
                let _ = forwarded.send((from, forward));
            }
            Incoming::Message(Wire::Join(join)) => {
                drop(held);
                let _ = joins.send((from, join));
            }
            Incoming::Message(Wire::Hold {
                group,
                owner,
                message,
                ack,
            }) => {
                drop(held);
                match groups.stand_in() {
                    Some(holder) => holder.take(from, group, owner, message, ack),
                    None => tracing::debug!(?from, "a write to hold, and nothing to hold it"),
                }
            }
            Incoming::Message(Wire::Meta(message)) => {
                let meta = meta.groups.lock().unwrap();
                if let Some((_, tx)) = meta.values().next() {
                    let _ = tx.send((from, Incoming::Message(message), Some(held)));
                }
            }
            Incoming::Gap => {
                for (members, tx) in groups.groups.lock().unwrap().values() {
                    if members.contains(&from) {
                        let _ = tx.send((from, Incoming::Gap, None));
                    }
                }
                for (members, tx) in meta.groups.lock().unwrap().values() {
                    if members.contains(&from) {
                        let _ = tx.send((from, Incoming::Gap, None));
                    }
                }
            }
        }
    }
}
