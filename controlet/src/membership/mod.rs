//! Membership: which nodes form the cluster, agreed through the cluster's own order.
//!
//! The member list, the nodes' peer addresses and the [`Placement`] (which nodes form each
//! replica group) are one value, [`Members`], kept under one key in the *metadata group*: a
//! group of every node, with its own total order ([`META`], run by the same driver as the
//! data groups, on its own small datalet: `DIR/meta` on disk). A change (a node joins, leaves
//! or is removed) is a compare-and-swap of that key through the order ([`Membership::change`]),
//! so changes are made one at a time, each a new placement epoch, and every node applies each
//! one in the same order. Every node watches its own replica of the key and acts on a newer
//! epoch ([`Membership::subscribe`]): it connects to new nodes, starts the groups it now
//! belongs to and gives each group its new target members; the group's order then moves the
//! data (see [`crate::tob::Tob::set_target`]).
//!
//! A new node joins from any member's peer address (`--join`): it sends a
//! [`JoinMsg::Request`] on a connection of its own; the member adds it through the metadata
//! group and answers with the new [`Members`], from which the new node starts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, NodeId};
use tailorkv_datalet::{Datalet, Mutation, Outcome};
use tokio::sync::watch;

pub mod node;

use std::future::Future;
use std::pin::Pin;

use crate::engine::Local;
use crate::placement::{GroupId, Placement};
use crate::weigh::Weigh;

/// The metadata group's id: every node is a member.
pub const META: GroupId = GroupId(u16::MAX);

/// The key the metadata group keeps the members under.
const KEY: &[u8] = b"members";

/// How often a node reads its replica of the metadata for a newer epoch.
pub const WATCH_EVERY: Duration = Duration::from_millis(100);

/// The cluster's members: what the metadata group agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub placement: Placement,
    /// Every node's peer address.
    pub addrs: BTreeMap<NodeId, SocketAddr>,
}

impl Members {
    /// A cluster's first members: the nodes `--peers` names.
    pub fn initial(placement: Placement, addrs: BTreeMap<NodeId, SocketAddr>) -> Self {
        Members { placement, addrs }
    }

    /// Changes so far (1 for the first members).
    pub fn epoch(&self) -> u64 {
        self.placement.epoch()
    }

    /// The members with `node` (at peer address `addr`) added. A node already a member at
    /// that address is left as it is (a joiner that asks again, after a restart or a lost
    /// answer); at another address it is an error.
    pub fn with_node(&self, node: NodeId, addr: SocketAddr) -> Result<Members, String> {
        match self.addrs.get(&node) {
            Some(&known) if known == addr => return Ok(self.clone()),
            Some(known) => {
                return Err(format!(
                    "node {} is already a member, at {known}: give the new node another --id",
                    node.0
                ))
            }
            None => {}
        }
        if let Some((other, _)) = self.addrs.iter().find(|(_, &a)| a == addr) {
            return Err(format!("{addr} is node {}'s peer address already", other.0));
        }
        let placement = self.placement.add_node(node)?;
        let mut addrs = self.addrs.clone();
        addrs.insert(node, addr);
        Ok(Members { placement, addrs })
    }

    /// The members without `node`.
    pub fn without_node(&self, node: NodeId) -> Result<Members, String> {
        let placement = self.placement.remove_node(node)?;
        let mut addrs = self.addrs.clone();
        addrs.remove(&node);
        Ok(Members { placement, addrs })
    }

    pub fn encode(&self) -> Bytes {
        Bytes::from(postcard::to_stdvec(self).expect("members serialize"))
    }

    pub fn decode(bytes: &[u8]) -> Result<Members, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("unreadable members: {e}"))
    }
}

/// Asking to join, and the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinMsg {
    /// Node `id`, listening for peers at `addr`, asks to be a member.
    Request { id: NodeId, addr: SocketAddr },
    /// The members with the node in them (encoded [`Members`]), or why not; also the answer
    /// to an [`JoinMsg::Ask`] (the members as the answering node knows them).
    Reply(Result<Vec<u8>, String>),
    /// Node `id`, at peer address `addr`, left out of the metadata group's view for a while,
    /// asks for the latest members: it may have been removed while it could not hear, and
    /// then learns it from them (see [`node::answer_joins`]). Changes nothing.
    Ask { id: NodeId, addr: SocketAddr },
}

impl Weigh for JoinMsg {
    fn weight(&self) -> usize {
        match self {
            JoinMsg::Request { .. } | JoinMsg::Ask { .. } => 32,
            JoinMsg::Reply(Ok(bytes)) => bytes.len() + 8,
            JoinMsg::Reply(Err(why)) => why.len() + 8,
        }
    }
}

/// A node's view of the membership: its replica of the metadata group, and the latest
/// members it knows.
pub struct Membership<D> {
    me: NodeId,
    meta: Arc<Local<D>>,
    current: watch::Sender<Arc<Members>>,
}

impl<D: Datalet> Membership<D> {
    /// Node `me`'s membership, over the metadata group's `meta`, starting from `members`.
    pub fn new(me: NodeId, meta: Arc<Local<D>>, members: Members) -> Arc<Self> {
        let (current, _) = watch::channel(Arc::new(members));
        Arc::new(Membership { me, meta, current })
    }

    /// The members this node knows of now.
    pub fn current(&self) -> Arc<Members> {
        Arc::clone(&self.current.borrow())
    }

    /// Told of every newer members.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Members>> {
        self.current.subscribe()
    }

    /// The metadata group's replica here.
    pub fn meta(&self) -> &Arc<Local<D>> {
        &self.meta
    }

    /// Takes `members` if it is newer than what this node knows.
    pub fn learn(&self, members: Members) {
        self.current.send_if_modified(|known| {
            if members.epoch() > known.epoch() {
                tracing::info!(
                    epoch = members.epoch(),
                    nodes = ?members.placement.nodes(),
                    "membership changed"
                );
                *known = Arc::new(members);
                true
            } else {
                false
            }
        });
    }

    /// Reads the metadata group's key through the order (a linearizable read).
    async fn read(&self) -> Result<Option<(Members, u64)>, String> {
        let item = self.meta.get(KEY).await.map_err(|e| e.to_string())?;
        match item {
            None => Ok(None),
            Some(item) => Ok(Some((Members::decode(&item.value)?, item.version.cas()))),
        }
    }

    /// Stores `members` as the first members, unless the metadata already holds some.
    pub async fn seed(&self, members: &Members) -> Result<(), String> {
        loop {
            if let Some((stored, _)) = self.read().await? {
                self.learn(stored);
                return Ok(());
            }
            let outcome = self.store(StoreMode::Add, members).await?;
            if outcome == Outcome::Stored {
                self.learn(members.clone());
                return Ok(());
            }
        }
    }

    async fn store(&self, mode: StoreMode, members: &Members) -> Result<Outcome, String> {
        let mutation = Mutation::Store {
            mode,
            flags: 0,
            expiry: Expiry::Never,
            value: members.encode(),
        };
        let key = Bytes::from_static(KEY);
        self.meta
            .apply(&key, mutation)
            .await
            .map_err(|e| e.to_string())
    }

    /// Makes one membership change: reads the members through the order, computes the next
    /// with `change`, and stores it if nobody changed them meanwhile (compare-and-swap), else
    /// starts over. Returns the members it stored (or the unchanged ones, when `change`
    /// returns them as they were).
    pub async fn change(
        &self,
        change: impl Fn(&Members) -> Result<Members, String>,
    ) -> Result<Members, String> {
        for _ in 0..100 {
            let Some((members, unique)) = self.read().await? else {
                return Err("the cluster's metadata is not written yet".into());
            };
            let next = change(&members)?;
            if next == members {
                self.learn(members);
                return Ok(next);
            }
            match self.store(StoreMode::Cas(unique), &next).await? {
                Outcome::Stored => {
                    self.learn(next.clone());
                    return Ok(next);
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        Err("the membership kept changing under this change; try again".into())
    }

    /// Reads this node's replica of the metadata every [`WATCH_EVERY`] and takes a newer
    /// epoch, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut every = tokio::time::interval(WATCH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let now = self.meta.now();
            if let Ok(Some(item)) = self.meta.datalet().get(KEY, now).await {
                if let Ok(members) = Members::decode(&item.value) {
                    self.learn(members);
                }
            }
        }
    }

    /// This node.
    pub fn me(&self) -> NodeId {
        self.me
    }
}

/// What an operator asks of the membership (`tailorkv-admin`, over HTTP), whatever store
/// the metadata group keeps it in.
pub trait Admin: Send + Sync {
    /// The members this node knows of now.
    fn members(&self) -> Arc<Members>;
    /// Removes `node` from the cluster: its groups get other members (see [`Membership::change`]).
    fn remove(
        &self,
        node: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<Members, String>> + Send + '_>>;
}

impl<D: Datalet> Admin for Membership<D> {
    fn members(&self) -> Arc<Members> {
        self.current()
    }

    fn remove(
        &self,
        node: NodeId,
    ) -> Pin<Box<dyn Future<Output = Result<Members, String>> + Send + '_>> {
        Box::pin(self.change(move |m| m.without_node(node)))
    }
}

/// The members a disk node saved in an earlier run, if any: read from its metadata store
/// before anything starts.
pub async fn saved<D: Datalet>(meta: &D, now: tailorkv_common::UnixSecs) -> Option<Members> {
    let item = meta.get(KEY, now).await.ok()??;
    Members::decode(&item.value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn joining_twice_at_one_address_changes_nothing_and_ids_and_addresses_are_unique() {
        let placement = Placement::with_groups(&[NodeId(1)], 3, 4);
        let first = Members::initial(placement, BTreeMap::from([(NodeId(1), addr(1))]));
        let two = first.with_node(NodeId(2), addr(2)).unwrap();
        assert_eq!(two.epoch(), 2);
        assert_eq!(two.with_node(NodeId(2), addr(2)).unwrap(), two);
        assert!(two.with_node(NodeId(2), addr(3)).is_err());
        assert!(two.with_node(NodeId(3), addr(2)).is_err());
        let back = two.without_node(NodeId(2)).unwrap();
        assert_eq!(back.epoch(), 3);
        assert_eq!(back.addrs.len(), 1);
        assert_eq!(Members::decode(&back.encode()).unwrap(), back);
    }
}
