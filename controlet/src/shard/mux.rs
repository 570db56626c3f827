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
}

impl<M: Weigh> Weigh for Wire<M> {
    fn weight(&self) -> usize {
        match self {
            Wire::Group { message, .. } => message.weight() + 4,
            Wire::Forward(forwarded) => forwarded.weight(),
            Wire::Join(join) => join.weight(),
            Wire::Meta(message) => message.weight() + 4,
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
}

type GroupMap<M> = BTreeMap<GroupId, (Vec<NodeId>, mpsc::UnboundedSender<Queued<M>>)>;

impl<M> Default for Groups<M> {
    fn default() -> Self {
        Groups {
            groups: std::sync::Arc::default(),
        }
    }
}

impl<M> Clone for Groups<M> {
    fn clone(&self) -> Self {
        Groups {
            groups: std::sync::Arc::clone(&self.groups),
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
}

/// Takes the node's inbox until shutdown: each group's messages to its inbox (a group this
/// node does not hold drops them), forwarding traffic to `forwarded`, requests to join and
/// their answers to `joins`.
pub async fn run<M: Send + 'static>(
    mut inbox: Inbox<Wire<M>>,
    groups: Groups<M>,
    meta: Groups<PeerMsg>,
    forwarded: mpsc::UnboundedSender<(NodeId, Forwarded)>,
    joins: mpsc::UnboundedSender<(NodeId, crate::membership::JoinMsg)>,
    shutdown: CancellationToken,
) {
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
