//! Where a node stands, for the status page, `/status` and `tailorkv-admin`: its groups and
//! their views, its links, its counters and its latest events. Any node gathers the whole
//! cluster's by asking every peer over the peer link ([`crate::shard::forward`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tailorkv_datalet::Datalet;

use crate::engine::ShapeCell;
use crate::shard::forward::ForwardLink;
use crate::stats::SharedCounts;

/// One node's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: u16,
    /// Whether it answered (the gathering node fills in the ones that did not).
    pub up: bool,
    pub consistency: String,
    pub uptime_s: u64,
    /// Items and bytes of the copies it holds, and its memory limit.
    pub items: u64,
    pub bytes: u64,
    pub limit_bytes: u64,
    pub connections: u64,
    /// Client commands served: gets (keys asked) and every other command.
    pub gets: u64,
    pub writes: u64,
    /// Requests it forwarded to owners.
    pub forwarded: u64,
    /// Commands timed, and their time in all (µs): the mean latency between two readings is
    /// the difference of the second over the difference of the first.
    pub timed: u64,
    pub time_us: u64,
    pub groups: Vec<GroupStatus>,
    /// Its peer links: which are connected.
    pub peers: Vec<(u16, bool)>,
    pub events: Vec<EventStatus>,
}

/// A replica group as one of its members sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub id: u16,
    /// The group's configured members.
    pub members: Vec<u16>,
    /// Partitions it holds.
    pub partitions: u64,
    /// This member's state in the group (`serving`, `changing-view`, ...), or `eventual`.
    pub state: String,
    pub epoch: u64,
    /// Members of the current view.
    pub view_members: u64,
    /// Operations applied (the order's sequence number).
    pub applied: u64,
    /// While this member installs a snapshot: items stored so far, and about how many.
    pub catch_up: Option<(u64, u64)>,
    /// The view's members, by id (the target is `members`).
    #[serde(default)]
    pub view: Vec<u16>,
    /// The view is the target: no member joining or leaving the group.
    #[serde(default)]
    pub settled: bool,
    /// Eventual mode: per peer, the buckets (of 1024) that differed at the last anti-entropy
    /// round with it (all 0 when the replicas agree).
    #[serde(default)]
    pub repair: Vec<(u16, u64)>,
}

/// The cluster's members, as `GET /members` and `tailorkv-admin members` show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersStatus {
    /// The placement's epoch: changes since the cluster started, plus one.
    pub epoch: u64,
    /// Copies of each partition asked for.
    pub replicas: usize,
    /// Every node, with its peer address.
    pub nodes: Vec<(u16, String)>,
    /// Every group: its id, its members, and how many partitions it holds.
    pub groups: Vec<(u16, Vec<u16>, usize)>,
}

impl MembersStatus {
    pub fn of(members: &crate::membership::Members) -> Self {
        let p = &members.placement;
        MembersStatus {
            epoch: p.epoch(),
            replicas: p.replicas_wanted(),
            nodes: members
                .addrs
                .iter()
                .map(|(id, addr)| (id.0, addr.to_string()))
                .collect(),
            groups: p
                .groups()
                .map(|g| {
                    let members = p.members(g).iter().map(|n| n.0).collect();
                    (g.0, members, p.partitions_of(g).count())
                })
                .collect(),
        }
    }
}

/// An event of one of the node's groups.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStatus {
    pub at_ms: u64,
    pub group: u16,
    pub what: String,
}

/// What a node's status is read from.
pub struct Sources<D> {
    pub me: NodeId,
    pub consistency: String,
    pub started: Instant,
    pub counts: Arc<SharedCounts>,
    pub latencies: Arc<crate::stats::SharedLatencies>,
    pub connections: Arc<AtomicU64>,
    /// What the node holds, and where keys live.
    pub shape: ShapeCell<D>,
    /// In a cluster: the peer links.
    pub link: Option<Arc<dyn ForwardLink>>,
    pub forwarder: Option<Arc<crate::shard::forward::Forwarder>>,
    /// In a strong-mode cluster: the membership, for the operator's commands.
    pub membership: Option<Arc<dyn crate::membership::Admin>>,
}

impl<D: Datalet> Sources<D> {
    /// This node's status now.
    pub fn read(&self) -> NodeStatus {
        let c = self.counts.snapshot();
        let l = self.latencies.snapshot();
        let mut status = NodeStatus {
            timed: l.buckets.iter().flatten().sum(),
            time_us: l.sum_us.iter().sum(),
            id: self.me.0,
            up: true,
            consistency: self.consistency.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            connections: self.connections.load(Relaxed),
            gets: c.cmd_get,
            writes: c.cmd_set
                + c.cmd_touch
                + c.cmd_flush
                + c.delete_hits
                + c.delete_misses
                + c.incr_hits
                + c.incr_misses
                + c.decr_hits
                + c.decr_misses,
            ..NodeStatus::default()
        };
        let shape = Arc::clone(&self.shape.read().unwrap());
        for (&group, local) in shape.locals.iter() {
            let stats = local.datalet_stats();
            status.items += stats.curr_items;
            status.bytes += stats.bytes;
            status.limit_bytes += stats.limit_maxbytes;
            let (members, partitions) = match &shape.placement {
                Some(p) => (
                    p.members(group).iter().map(|n| n.0).collect(),
                    p.partitions_of(group).count() as u64,
                ),
                None => (vec![self.me.0], crate::placement::PARTITIONS as u64),
            };
            let mut g = GroupStatus {
                id: group.0,
                members,
                partitions,
                state: "eventual".into(),
                ..GroupStatus::default()
            };
            if let Some(health) = local.cluster_health() {
                g.state = health.state().name().into();
                g.epoch = health.epoch();
                g.view_members = health.members();
                g.applied = health.applied();
                g.catch_up = health.catch_up();
                g.view = health.view_ids().into_iter().map(|n| n.0).collect();
                g.settled = health.settled();
                status
                    .events
                    .extend(health.events().into_iter().map(|e| EventStatus {
                        at_ms: e.at_ms,
                        group: group.0,
                        what: e.what,
                    }));
            } else if let Some(e) = local.eventual_node() {
                g.repair = e
                    .divergence()
                    .into_iter()
                    .map(|(p, b)| (p.0, b as u64))
                    .collect();
            } else {
                g.state = "single".into();
            }
            status.groups.push(g);
        }
        status.events.sort_by_key(|e| e.at_ms);
        if let Some(forwarder) = &self.forwarder {
            status.forwarded = forwarder.sent.load(Relaxed);
        }
        if let (Some(p), Some(link)) = (&shape.placement, &self.link) {
            status.peers = p
                .nodes()
                .iter()
                .filter(|&&n| n != self.me)
                .map(|&n| (n.0, link.is_up(n)))
                .collect();
        }
        status
    }
}

/// The whole cluster as one node sees it: every node's status, node 1 first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that gathered it.
    pub from: u16,
    pub replicas: usize,
    pub partitions: usize,
    pub nodes: Vec<NodeStatus>,
}
