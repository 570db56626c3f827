//! A cluster node whose groups follow the membership: it starts from `--peers`, from what its
//! disk saved, or by joining through a member (`--join`); it then runs the metadata group and
//! the data groups the placement gives it, and follows every change: new peers, groups to
//! start, new targets for the groups it holds, groups it has left. What a data group is
//! depends on the mode ([`GroupKind`]): an order of its own (the strong modes, [`Groundwork`])
//! or eventual replication ([`EventualGround`]).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tailorkv_common::{Clock, NodeId};
use tailorkv_datalet::Datalet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{JoinMsg, Members, Membership, META};
use crate::engine::{Local, Locals, Shape, ShapeCell};
use crate::peer::Transport;
use crate::placement::GroupId;
use crate::replication::{GroupDriver, PeerMsg, Replicator};
use crate::shard::mux::{GroupLink, Groups, Wire};
use crate::tob::Timing;

/// What a node's data groups send each other: [`PeerMsg`] in the strong modes, the eventual
/// mode's own messages otherwise.
pub trait WireMessage:
    serde::Serialize + serde::de::DeserializeOwned + crate::weigh::Weigh + Send + Sync + 'static
{
}

impl<T> WireMessage for T where
    T: serde::Serialize + serde::de::DeserializeOwned + crate::weigh::Weigh + Send + Sync + 'static
{
}

/// Starts the metadata group on `transport` (its messages travel as [`Wire::Meta`]), with
/// the cluster's `nodes` as its first members, on `datalet`.
pub async fn start_meta<W: WireMessage, X: Datalet>(
    order: &Order,
    transport: Transport<Wire<W>>,
    meta_groups: &Groups<PeerMsg>,
    (nodes, joining): (Vec<NodeId>, bool),
    datalet: Arc<X>,
) -> std::io::Result<Arc<Local<X>>> {
    let inbox = meta_groups.add(META, nodes.clone());
    let link = crate::shard::mux::MetaLink { transport };
    let (local, _) = order
        .start(META, nodes, usize::MAX, datalet, (link, inbox), joining)
        .await?;
    Ok(local)
}

/// Opens the datalet of a group (the metadata group too), and throws one away.
pub trait Stores<D>: Send + Sync + 'static {
    fn open(&self, group: GroupId) -> std::io::Result<Arc<D>>;
    /// The group's data is no longer this node's to keep.
    fn discard(&self, group: GroupId);
}

/// What running a group on this node takes.
pub struct Groundwork<D> {
    pub me: NodeId,
    pub session: u64,
    pub transport: Transport<Wire<PeerMsg>>,
    pub groups: Groups<PeerMsg>,
    pub stores: Arc<dyn Stores<D>>,
    pub clock: Arc<dyn Clock>,
    pub timing: Timing,
    pub local_reads: bool,
    /// The node's memory limit in bytes, shared by the groups it holds.
    pub memory_limit: usize,
    /// A full replica evicts, through the order, to make room for a write (`--evict`).
    pub evict: bool,
    pub rebalance_rate: Option<Arc<crate::rate::RateLimit>>,
    pub shutdown: CancellationToken,
}

/// A group running here.
struct Running<D> {
    local: Arc<Local<D>>,
    stop: CancellationToken,
}

impl<D: Datalet> Groundwork<D> {
    /// Starts data group `group` here, with `members` as its first target.
    pub async fn start_group(
        &self,
        group: GroupId,
        members: Vec<NodeId>,
        memory_share: usize,
        joining: bool,
    ) -> std::io::Result<(Arc<Local<D>>, CancellationToken)> {
        let datalet = self.stores.open(group)?;
        let inbox = self.groups.add(group, members.clone());
        let link = GroupLink::new(self.transport.clone(), group);
        let order = Order {
            me: self.me,
            session: self.session,
            clock: Arc::clone(&self.clock),
            timing: self.timing,
            rebalance_rate: self.rebalance_rate.clone(),
            local_reads: self.local_reads,
            evict: self.evict,
            shutdown: self.shutdown.clone(),
        };
        order
            .start(
                group,
                members,
                memory_share,
                datalet,
                (link, inbox),
                joining,
            )
            .await
    }
}

/// What starting one group's order takes.
pub struct Order {
    pub me: NodeId,
    pub session: u64,
    pub clock: Arc<dyn Clock>,
    pub timing: Timing,
    pub rebalance_rate: Option<Arc<crate::rate::RateLimit>>,
    pub local_reads: bool,
    pub evict: bool,
    pub shutdown: CancellationToken,
}

impl Order {
    /// Starts `group`'s order here on `datalet`, with `members` as its first target, sending
    /// through `link` and taking from `inbox`.
    pub async fn start<X: Datalet>(
        &self,
        group: GroupId,
        members: Vec<NodeId>,
        memory_share: usize,
        datalet: Arc<X>,
        (link, inbox): (
            impl crate::shard::mux::OrderLink,
            crate::shard::mux::GroupInbox<PeerMsg>,
        ),
        joining: bool,
    ) -> std::io::Result<(Arc<Local<X>>, CancellationToken)> {
        let delivered = datalet.load_clock().await.map_err(std::io::Error::other)?;
        let stop = self.shutdown.child_token();
        let driver = GroupDriver {
            me: self.me,
            incarnation: self.session,
            group,
            members,
            rebalance_rate: self.rebalance_rate.clone(),
            joining,
        };
        let replicator = driver.spawn(
            link,
            inbox,
            Arc::clone(&datalet),
            self.timing,
            delivered,
            stop.clone(),
        );
        let local = Local::start(datalet, Arc::clone(&self.clock))
            .await
            .map_err(std::io::Error::other)?;
        let local = Arc::new(local.replicated(
            replicator,
            self.local_reads && group != META,
            (memory_share, self.evict && group != META),
        ));
        local.keep_within_limit(stop.clone());
        Ok((local, stop))
    }
}

/// Asks every other node the membership lists for the latest members ([`JoinMsg::Ask`]).
async fn ask_for_members<M: Datalet, W: WireMessage>(
    membership: &Membership<M>,
    transport: &Transport<Wire<W>>,
) {
    let me = membership.me();
    let members = membership.current();
    let Some(&addr) = members.addrs.get(&me) else {
        return;
    };
    tracing::info!(
        "not serving in the metadata group's view: asking the members for the membership"
    );
    for &other in members.addrs.keys().filter(|&&n| n != me) {
        transport
            .send(other, Wire::Join(JoinMsg::Ask { id: me, addr }))
            .await;
    }
}

/// Asks the member at `seed` to let this node in, until it answers: the members with this
/// node in them.
pub async fn ask_to_join<W: WireMessage>(
    transport: &Transport<Wire<W>>,
    joins: &mut mpsc::UnboundedReceiver<(NodeId, JoinMsg)>,
    seed: SocketAddr,
    me: NodeId,
    addr: SocketAddr,
    shutdown: &CancellationToken,
) -> std::io::Result<Members> {
    let request = Wire::Join(JoinMsg::Request { id: me, addr });
    let session = transport.session().saturating_sub(1);
    for attempt in 1u64.. {
        if shutdown.is_cancelled() {
            return Err(std::io::Error::other("shut down while joining"));
        }
        tracing::info!(%seed, attempt, "asking to join the cluster");
        if let Err(e) = transport.send_once(seed, session, attempt, &request).await {
            tracing::warn!(%seed, error = %e, "cannot reach the member to join through");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while let Ok(Some((from, message))) = tokio::time::timeout_at(deadline, joins.recv()).await
        {
            match message {
                JoinMsg::Reply(Ok(bytes)) => {
                    let members = Members::decode(&bytes).map_err(std::io::Error::other)?;
                    tracing::info!(
                        through = from.0,
                        epoch = members.epoch(),
                        "joined the cluster"
                    );
                    return Ok(members);
                }
                JoinMsg::Reply(Err(why)) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the cluster refused to let this node join: {why}"),
                    ))
                }
                JoinMsg::Request { .. } | JoinMsg::Ask { .. } => {}
            }
        }
    }
    unreachable!("the loop only ends by returning")
}

/// How long a node goes without serving in the metadata group's view before it asks the
/// members for the membership, and how often it asks again.
const ASK_AFTER: Duration = Duration::from_secs(2);

/// Answers requests to join: adds the node through the metadata group and sends it the
/// members (or why not). Answers a node that asks for the members ([`JoinMsg::Ask`]) with
/// them, and, while this node has not served in the metadata group's view for [`ASK_AFTER`]
/// (outside it, or stuck changing it), asks the members it knows: a node removed while it was cut off, or down,
/// cannot hear its removal through the order (the view that removed it does not hold it),
/// and would ask to be let back in for good. It takes members only from a node it knows,
/// and only newer ones ([`Membership::learn`]).
pub async fn answer_joins<M: Datalet, W: WireMessage>(
    membership: Arc<Membership<M>>,
    transport: Transport<Wire<W>>,
    mut joins: mpsc::UnboundedReceiver<(NodeId, JoinMsg)>,
    shutdown: CancellationToken,
) {
    let meta_health = membership.meta().replicator().map(|r| r.health_handle());
    let mut every = tokio::time::interval(ASK_AFTER / 4);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut unserved_since: Option<Instant> = None;
    let mut asked: Option<Instant> = None;
    loop {
        let got = tokio::select! {
            got = joins.recv() => got,
            _ = every.tick() => {
                let serving = meta_health
                    .as_ref()
                    .is_none_or(|h| h.state() == crate::tob::NodeState::Serving);
                if serving {
                    unserved_since = None;
                } else {
                    let since = *unserved_since.get_or_insert_with(Instant::now);
                    let recently = asked.is_some_and(|at| at.elapsed() < ASK_AFTER);
                    if since.elapsed() >= ASK_AFTER && !recently {
                        asked = Some(Instant::now());
                        ask_for_members(&membership, &transport).await;
                    }
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        };
        let Some((from, message)) = got else { return };
        let (id, addr) = match message {
            JoinMsg::Request { id, addr } => (id, addr),
            JoinMsg::Ask { id, addr } if id == from => {
                transport.add_peer(id, addr);
                let members = membership.current().encode().to_vec();
                transport
                    .send(id, Wire::Join(JoinMsg::Reply(Ok(members))))
                    .await;
                continue;
            }
            JoinMsg::Reply(Ok(bytes)) if membership.current().addrs.contains_key(&from) => {
                if let Ok(members) = Members::decode(&bytes) {
                    membership.learn(members);
                }
                continue;
            }
            JoinMsg::Ask { .. } | JoinMsg::Reply(_) => continue,
        };
        if id != from {
            tracing::warn!(?from, ?id, "a join request naming another node; ignored");
            continue;
        }
        let membership = Arc::clone(&membership);
        let transport = transport.clone();
        tokio::spawn(async move {
            tracing::info!(node = id.0, %addr, "a node asks to join");
            let answer = membership.change(|m| m.with_node(id, addr)).await;
            if let Err(why) = &answer {
                tracing::warn!(node = id.0, %why, "not letting a node join");
            }
            transport.add_peer(id, addr);
            let reply = JoinMsg::Reply(answer.map(|m| m.encode().to_vec()));
            transport.send(id, Wire::Join(reply)).await;
        });
    }
}

/// A group starting: its engine, and what stops it.
pub type StartFuture<'a, D> =
    Pin<Box<dyn Future<Output = std::io::Result<(Arc<Local<D>>, CancellationToken)>> + Send + 'a>>;

/// What a data group is in the node's mode: how it starts, takes a new target, and tells
/// that this node has left it.
pub trait GroupKind<D: Datalet>: Send + Sync + 'static {
    /// Starts `group` here (this node has just been named a member), with `target` as its
    /// members and `share` bytes of the node's memory.
    fn start(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D>;
    /// Starts `group`, held by this node when it starts (not new to it).
    fn start_held(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D>;
    /// The group's members from now on.
    fn retarget(&self, group: GroupId, local: &Local<D>, target: &[NodeId]);
    /// This node has left the group: its copy is no longer needed.
    fn has_left(&self, local: &Local<D>) -> bool;
    /// This node serves the group now (a strong-mode group: in a view, up to date, not
    /// changing it).
    fn serving(&self, local: &Local<D>) -> bool;
    /// Stops handing the group's messages on.
    fn forget(&self, group: GroupId);
    /// The store of the group, to throw away.
    fn stores(&self) -> &Arc<dyn Stores<D>>;
}

impl<D: Datalet> GroupKind<D> for Groundwork<D> {
    fn start(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D> {
        Box::pin(async move {
            let (local, stop) = self.start_group(group, target.clone(), share, true).await?;
            if let Some(r) = local.replicator() {
                r.set_target(target);
            }
            Ok((local, stop))
        })
    }

    fn start_held(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D> {
        Box::pin(self.start_group(group, target, share, false))
    }

    fn retarget(&self, group: GroupId, local: &Local<D>, target: &[NodeId]) {
        if let Some(replicator) = local.replicator() {
            replicator.set_target(target.to_vec());
            let mut heard: BTreeSet<NodeId> = target.iter().copied().collect();
            heard.extend(replicator.health().view_ids());
            self.groups.set_members(group, heard.into_iter().collect());
        }
    }

    fn has_left(&self, local: &Local<D>) -> bool {
        local.cluster_health().is_some_and(|h| h.left())
    }

    fn serving(&self, local: &Local<D>) -> bool {
        local
            .cluster_health()
            .is_some_and(|h| h.state() == crate::tob::NodeState::Serving)
    }

    fn forget(&self, group: GroupId) {
        self.groups.remove(group);
    }

    fn stores(&self) -> &Arc<dyn Stores<D>> {
        &self.stores
    }
}

/// What running an eventual-mode group on this node takes.
pub struct EventualGround<D> {
    pub me: NodeId,
    pub transport: Transport<Wire<crate::replication::eventual::Message>>,
    pub groups: Groups<crate::replication::eventual::Message>,
    pub stores: Arc<dyn Stores<D>>,
    pub clock: Arc<dyn Clock>,
    /// The node's Lamport clock, shared by its groups.
    pub lamport: Arc<std::sync::atomic::AtomicU64>,
    pub options: crate::replication::eventual::EventualOptions,
    /// The node's budget for handing copies over (`--rebalance-rate`).
    pub rebalance_rate: Option<Arc<crate::rate::RateLimit>>,
    pub shutdown: CancellationToken,
}

impl<D: Datalet> EventualGround<D> {
    /// Starts eventual replication of `group` here with `target` as its members; `joining`
    /// when this node is new to the group and must be sent a copy before it serves.
    pub async fn start_group(
        &self,
        group: GroupId,
        target: Vec<NodeId>,
        share: usize,
        joining: bool,
    ) -> std::io::Result<(Arc<Local<D>>, CancellationToken)> {
        let datalet = self.stores.open(group)?;
        let inbox = self.groups.add(group, target.clone());
        let stop = self.shutdown.child_token();
        let link = GroupLink::new(self.transport.clone(), group);
        let peers: Vec<NodeId> = target.iter().copied().filter(|&n| n != self.me).collect();
        let node = crate::replication::Eventual::start_in(
            self.me,
            Arc::clone(&datalet),
            (Arc::clone(&self.clock), Arc::clone(&self.lamport)),
            (link, inbox),
            &peers,
            stop.clone(),
            self.options.clone(),
        );
        if joining {
            node.begin_filling();
        }
        node.set_rebalance_rate(self.rebalance_rate.clone());
        let local = Local::start(datalet, Arc::clone(&self.clock))
            .await
            .map_err(std::io::Error::other)?;
        let local = local.eventual(node);
        local.set_memory_limit(share);
        Ok((Arc::new(local), stop))
    }
}

impl<D: Datalet> GroupKind<D> for EventualGround<D> {
    fn start(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D> {
        Box::pin(self.start_group(group, target, share, true))
    }

    fn start_held(&self, group: GroupId, target: Vec<NodeId>, share: usize) -> StartFuture<'_, D> {
        Box::pin(self.start_group(group, target, share, false))
    }

    fn retarget(&self, group: GroupId, local: &Local<D>, target: &[NodeId]) {
        if let Some(node) = local.eventual_handle() {
            node.retarget(target);
            let mut heard: BTreeSet<NodeId> = target.iter().copied().collect();
            heard.insert(self.me);
            self.groups.set_members(group, heard.into_iter().collect());
        }
    }

    fn has_left(&self, local: &Local<D>) -> bool {
        local.eventual_node().is_some_and(|n| n.has_left())
    }

    fn serving(&self, _local: &Local<D>) -> bool {
        true // an eventual node serves whoever it hears
    }

    fn forget(&self, group: GroupId) {
        self.groups.remove(group);
    }

    fn stores(&self) -> &Arc<dyn Stores<D>> {
        &self.stores
    }
}

/// Follows the membership: keeps the node's peers, groups and shape as the latest members
/// say, until shutdown; ends the node (cancels `shutdown`) once it has left the cluster.
pub struct Follower<D, M, K> {
    pub me: NodeId,
    pub kind: K,
    /// Adds a peer to the node's transport.
    pub add_peer: Box<dyn Fn(NodeId, SocketAddr) + Send + Sync>,
    pub meta_groups: Groups<PeerMsg>,
    /// The node's memory limit in bytes, shared by the groups it holds.
    pub memory_limit: usize,
    pub shutdown: CancellationToken,
    pub membership: Arc<Membership<M>>,
    pub meta: Replicator,
    pub shape: ShapeCell<D>,
    running: BTreeMap<GroupId, Running<D>>,
    /// The placement epoch the shape was last made for.
    shaped: u64,
    /// The group whose copy this node was last given to take in, and since when.
    moving_in: Option<(GroupId, Instant)>,
    /// Since when each group (and the metadata group, as [`META`]) has not been served here.
    unserved: BTreeMap<GroupId, Instant>,
}

/// How long a node the membership has removed waits for a group it does not serve (left out
/// of its view unawares, or stuck changing it with members that no longer hear it) before
/// it takes the group as left: a node removed while it was cut off or paused hears no view
/// that leaves it out.
const REMOVED_AND_UNSERVED: Duration = Duration::from_secs(5);

/// How long a group being moved in holds back the next one, at most (one whose transfer
/// stalls, say on a dead source, does not stop the others for good).
const MOVE_IN_ALONE: Duration = Duration::from_secs(60);

impl<D: Datalet, M: Datalet, K: GroupKind<D>> Follower<D, M, K> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        kind: K,
        add_peer: Box<dyn Fn(NodeId, SocketAddr) + Send + Sync>,
        meta_groups: Groups<PeerMsg>,
        memory_limit: usize,
        shutdown: CancellationToken,
        (membership, meta): (Arc<Membership<M>>, Replicator),
        shape: ShapeCell<D>,
        started: BTreeMap<GroupId, (Arc<Local<D>>, CancellationToken)>,
    ) -> Self {
        let shaped = membership.current().epoch();
        let running = started
            .into_iter()
            .map(|(g, (local, stop))| (g, Running { local, stop }))
            .collect();
        Follower {
            me,
            kind,
            add_peer,
            meta_groups,
            memory_limit,
            shutdown,
            membership,
            meta,
            shape,
            running,
            shaped,
            moving_in: None,
            unserved: BTreeMap::new(),
        }
    }

    pub async fn run(mut self) {
        let mut changes = self.membership.subscribe();
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = shutdown.cancelled() => return,
            }
            let members = self.membership.current();
            if self.follow(&members).await {
                tracing::info!("this node has left the cluster; stopping");
                shutdown.cancel();
                return;
            }
        }
    }

    /// Brings the node in line with `members`; whether it has left the cluster.
    async fn follow(&mut self, members: &Members) -> bool {
        let me = self.me;
        let placement = &members.placement;
        for (&id, &addr) in &members.addrs {
            (self.add_peer)(id, addr);
        }
        let nodes = placement.nodes().to_vec();
        self.meta.set_target(nodes.clone());
        let mut heard: BTreeSet<NodeId> = nodes.iter().copied().collect();
        heard.extend(self.meta.health().view_ids());
        self.meta_groups
            .set_members(META, heard.into_iter().collect());
        let mut changed = members.epoch() != self.shaped;
        let held = placement.groups_of(me).len().max(1);
        let share = self.memory_limit / held;
        for group in placement.groups() {
            let target = placement.members(group).to_vec();
            match self.running.get(&group) {
                Some(running) => self.kind.retarget(group, &running.local, &target),
                None if target.contains(&me) => {
                    // One group's copy moves in at a time: a member catching up costs its
                    // group's order a member more to wait for, and the node its share of the
                    // transfer, so the foreground load pays for one group at a time.
                    let busy = self.moving_in.is_some_and(|(g, since)| {
                        since.elapsed() < MOVE_IN_ALONE
                            && self.running.get(&g).is_some_and(|r| r.local.standing_by())
                    });
                    if busy {
                        continue;
                    }
                    match self.kind.start(group, target.clone(), share).await {
                        Ok((local, stop)) => {
                            tracing::info!(group = group.0, members = ?target, "joining a group");
                            self.running.insert(group, Running { local, stop });
                            self.moving_in = Some((group, Instant::now()));
                            changed = true;
                        }
                        Err(e) => {
                            tracing::error!(group = group.0, error = %e, "cannot start a group")
                        }
                    }
                }
                None => {}
            }
        }
        // Groups this node has left: not in their target, and its copy no longer needed; or,
        // once the membership has removed this node, not served here for a while.
        let removed = !nodes.contains(&me);
        let now = Instant::now();
        for (g, r) in &self.running {
            if self.kind.serving(&r.local) {
                self.unserved.remove(g);
            } else {
                self.unserved.entry(*g).or_insert(now);
            }
        }
        let stalled = |g: &GroupId, unserved: &BTreeMap<GroupId, Instant>| {
            removed
                && unserved
                    .get(g)
                    .is_some_and(|since| since.elapsed() >= REMOVED_AND_UNSERVED)
        };
        let gone: Vec<GroupId> = self
            .running
            .iter()
            .filter(|(g, r)| {
                !placement.members(**g).contains(&me)
                    && (self.kind.has_left(&r.local) || stalled(g, &self.unserved))
            })
            .map(|(g, _)| *g)
            .collect();
        let mut retired = self.shape.read().unwrap().retired;
        for group in gone {
            let running = self.running.remove(&group).expect("listed");
            if let Some(counters) = running.local.replication_counters() {
                retired.add(counters);
            }
            running.stop.cancel();
            self.unserved.remove(&group);
            self.kind.forget(group);
            let datalet = Arc::clone(running.local.datalet());
            if let Err(e) = datalet.reset().await {
                tracing::warn!(group = group.0, error = %e, "could not empty a group's store");
            }
            self.kind.stores().discard(group);
            tracing::info!(group = group.0, "left a group; its copy is discarded");
            changed = true;
        }
        if changed {
            let locals: Locals<D> = self
                .running
                .iter()
                .map(|(g, r)| (*g, Arc::clone(&r.local)))
                .collect();
            for local in locals.values() {
                local.set_memory_limit(share);
            }
            let mut shape = Shape::new(locals, Some(Arc::new(placement.clone())), me);
            shape.retired = retired;
            *self.shape.write().unwrap() = Arc::new(shape);
            self.shaped = members.epoch();
        }
        let meta = self.meta.health();
        if meta.state() == crate::tob::NodeState::Serving {
            self.unserved.remove(&META);
        } else {
            self.unserved.entry(META).or_insert(now);
        }
        removed && self.running.is_empty() && (meta.left() || stalled(&META, &self.unserved))
    }
}

/// Removes nodes the metadata group's view has been without for `dead_after`: run by the
/// lowest-numbered member of that view, so one node decides.
pub async fn remove_the_dead<M: Datalet>(
    membership: Arc<Membership<M>>,
    meta: Replicator,
    dead_after: Duration,
    shutdown: CancellationToken,
) {
    let mut missing: BTreeMap<NodeId, Instant> = BTreeMap::new();
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = shutdown.cancelled() => return,
        }
        let health = meta.health();
        let view = health.view_ids();
        if health.state() != crate::tob::NodeState::Serving
            || view.iter().min() != Some(&membership.me())
        {
            missing.clear();
            continue;
        }
        let members = membership.current();
        let nodes = members.placement.nodes();
        missing.retain(|n, _| nodes.contains(n) && !view.contains(n));
        for &node in nodes {
            if !view.contains(&node) {
                missing.entry(node).or_insert_with(Instant::now);
            }
        }
        let dead: Vec<NodeId> = missing
            .iter()
            .filter(|(_, since)| since.elapsed() >= dead_after)
            .map(|(n, _)| *n)
            .collect();
        for node in dead {
            tracing::warn!(
                node = node.0,
                secs = dead_after.as_secs(),
                "a node has been unreachable past --dead-after; removing it"
            );
            match membership.change(|m| m.without_node(node)).await {
                Ok(_) => {
                    missing.remove(&node);
                }
                Err(why) => tracing::warn!(node = node.0, %why, "could not remove a dead node"),
            }
        }
    }
}
