//! The engine: where a command's effect on data is carried out.
//!
//! On a single node it stamps each mutation with the next version from a local counter and
//! applies it to the datalet at once. In a cluster in a strong mode, every mutation (and
//! `flush_all`) is ordered through the total-order broadcast by a [`Replicator`] and applied
//! in that order on every member; reads go through the order too in the linearizable mode
//! and are served from the local replica in the sequential mode. In the eventual mode,
//! writes are applied locally and propagated by [`Eventual`], and reads are served from the
//! local replica. Commands talk only to this interface.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::{Clock, Expiry, NodeId, Ts, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, DataletStats, Item, Mutation, Outcome};
use tokio::sync::Mutex;

use crate::error::Error;
use crate::placement::{GroupId, Placement};
use crate::replication::{Bump, Eventual, Replicator};
use crate::shard::forward::{Forwarded, Forwarder, RemoteAnswer, RemoteOp};

/// Timestamps are reserved in the datalet this many at a time: one `save_clock` per million
/// writes, and a restart resumes past every timestamp that may have been issued.
const CLOCK_RESERVATION: Ts = 1 << 20;

/// Rounds of evictions a write that does not fit may order before it is refused: other
/// writes may take the room freed for it meanwhile.
const EVICTION_ROUNDS: usize = 8;

/// How often a strong-mode replica checks that the others' writes did not take it past its
/// own limit ([`Local::keep_within_limit`]).
const LIMIT_CHECK: std::time::Duration = std::time::Duration::from_millis(200);

/// The consistency a cluster offers, chosen at launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// Every operation, reads included, goes through the total order; a reply is sent when
    /// the operation is delivered at the node the client asked.
    Linearizable,
    /// Writes go through the total order and are acknowledged once applied locally; reads
    /// are served from the local replica.
    Sequential,
    /// Writes are applied locally and propagated in the background; replicas converge.
    Eventual,
    /// Causal+ consistency: writes are applied locally and acknowledged at once, as in the
    /// eventual mode, and a replica makes a peer's write visible only after everything the
    /// write depends on; replicas converge.
    Causal,
}

/// How long a request with a causal token waits for this replica to show what the token
/// covers.
const CAUSAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// The refusal of a causal token that does not parse.
pub const BAD_TOKEN: &str = "bad causal token";
/// The refusal of a request whose causal token this replica has not reached in time.
pub const CONTEXT_NOT_REACHED: &str =
    "causal context not reached: this node has not yet received everything the token covers";

/// How operations are ordered in a cluster.
struct Ordered {
    replicator: Replicator,
    /// Serve reads from the local replica instead of through the order.
    local_reads: bool,
    /// The memory limit, in bytes. A replica must never fail to apply what the order
    /// delivered, or it would diverge from the others; so the limit is enforced here, before
    /// an operation is proposed, against this replica's memory, and the datalet itself has
    /// none. A write refused here was never ordered: nothing anywhere stored it. Replicas may
    /// pass the limit by what is in flight at once.
    memory_limit: AtomicUsize,
    /// A write that does not fit first evicts, through the order, the items this replica
    /// names as least recently used; else it is refused.
    evict: bool,
}

/// Where a node's reads and writes go: which mode it runs in, and what that mode needs.
enum Mode<D> {
    /// A single node: each mutation gets the next version of a local clock.
    Single(LocalClock),
    /// A cluster in a strong mode: operations are ordered through the total order.
    Ordered(Ordered),
    /// A cluster in the eventual mode: writes are applied locally and propagated.
    Eventual(Arc<Eventual<D>>),
}

/// A single node's versions: a counter whose timestamps are reserved in the datalet ahead of
/// use, so that a restart never issues one twice.
struct LocalClock {
    node: NodeId,
    /// The last timestamp issued.
    last_ts: AtomicU64,
    /// Timestamps up to this one are reserved in the datalet.
    reserved: AtomicU64,
    /// Held while a new reservation is saved.
    reserving: Mutex<()>,
}

impl LocalClock {
    /// A clock resuming past `resume`, the reservation a previous run saved.
    fn resume(resume: Ts) -> Self {
        LocalClock {
            node: NodeId(0),
            last_ts: AtomicU64::new(resume),
            reserved: AtomicU64::new(resume),
            reserving: Mutex::new(()),
        }
    }

    /// The next version, reserving more timestamps in `datalet` first when they run out.
    async fn next_version<D: Datalet>(&self, datalet: &D) -> Result<Version, DataletError> {
        let ts = self.last_ts.fetch_add(1, Ordering::Relaxed) + 1;
        if ts > self.reserved.load(Ordering::Acquire) {
            let _guard = self.reserving.lock().await;
            if ts > self.reserved.load(Ordering::Acquire) {
                let upto = ts + CLOCK_RESERVATION;
                datalet.save_clock(upto).await?;
                self.reserved.store(upto, Ordering::Release);
            }
        }
        Ok(Version::new(ts, self.node))
    }
}

/// Carries out commands' effects on the data of one replica group this node holds (on a
/// single node, of everything), in the node's mode.
pub struct Local<D> {
    datalet: Arc<D>,
    mode: Mode<D>,
    clock: Arc<dyn Clock>,
}

impl<D: Datalet> Local<D> {
    /// An engine over `datalet` on a single node, resuming its clock past every timestamp a
    /// previous run may have issued.
    pub async fn start(datalet: Arc<D>, clock: Arc<dyn Clock>) -> Result<Self, DataletError> {
        let resume = datalet.load_clock().await?;
        Ok(Local {
            datalet,
            mode: Mode::Single(LocalClock::resume(resume)),
            clock,
        })
    }

    /// Orders operations through `replicator`; `local_reads` serves reads from the local
    /// replica (the sequential mode). `memory_limit` (bytes) is checked before a write is
    /// proposed, and with `evict` a write that does not fit first evicts through the order;
    /// the datalet must have been opened without a limit of its own (`server::limits` sees to
    /// that), so it never refuses what the order delivers.
    pub fn replicated(
        mut self,
        replicator: Replicator,
        local_reads: bool,
        (memory_limit, evict): (usize, bool),
    ) -> Self {
        self.mode = Mode::Ordered(Ordered {
            replicator,
            local_reads,
            memory_limit: AtomicUsize::new(memory_limit),
            evict,
        });
        self
    }

    /// Applies writes locally and propagates them through `eventual` (the eventual mode).
    pub fn eventual(mut self, eventual: Arc<Eventual<D>>) -> Self {
        self.mode = Mode::Eventual(eventual);
        self
    }

    /// The time now, by the engine's clock.
    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }

    /// The live item under `key`: through the order in the linearizable mode, else from the
    /// local datalet (in the sequential mode once that is sound, see
    /// [`Replicator::read_locally`]).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Item>, Error> {
        self.read(key, Bump::Yes).await
    }

    /// [`Local::get`], counted as an access of the item or not (`mg ... u`) as `bump` says.
    pub async fn read(&self, key: &[u8], bump: Bump) -> Result<Option<Item>, Error> {
        let local = || async {
            match bump {
                Bump::Yes => self.datalet.get(key, self.now()).await,
                Bump::No => self.datalet.peek(key, self.now()).await,
            }
        };
        match &self.mode {
            Mode::Ordered(o) if !o.local_reads => {
                let at = |now| async move {
                    match bump {
                        Bump::Yes => self.datalet.get(key, now).await,
                        Bump::No => self.datalet.peek(key, now).await,
                    }
                };
                o.replicator.read(self.now(), at).await
            }
            Mode::Ordered(o) => o.replicator.read_locally(local).await,
            Mode::Eventual(e) => match e.causal() {
                // Never half a refill's merge.
                Some(causal) => {
                    let _shared = causal.read_gate().await;
                    Ok(local().await?)
                }
                None => {
                    // With a read quorum, the newest entry of R replicas is stored here first.
                    e.read_quorum(key).await?;
                    Ok(local().await?)
                }
            },
            Mode::Single(_) => Ok(local().await?),
        }
    }

    /// Whether this is a causal-mode node.
    pub fn is_causal(&self) -> bool {
        matches!(&self.mode, Mode::Eventual(e) if e.causal().is_some())
    }

    /// The causal mode's context of this replica, as a token for a client moving to another
    /// node (`None` in the other modes).
    pub fn causal_token(&self) -> Option<String> {
        match &self.mode {
            Mode::Eventual(e) => e.causal().map(|c| c.context().to_token()),
            _ => None,
        }
    }

    /// Waits, in the causal mode, until this replica shows everything `token` covers (up to
    /// 2 s; then refused). A token that does not parse, or names a node outside this group,
    /// is refused at once; the other modes have no tokens to wait for.
    pub async fn reach_token(&self, token: &[u8]) -> Result<(), Error> {
        let Mode::Eventual(e) = &self.mode else {
            return Ok(());
        };
        let Some(causal) = e.causal() else {
            return Ok(());
        };
        let Some(context) = crate::replication::eventual::causal::Context::from_token(token)
            .filter(|c| causal.names_only_members(c))
        else {
            return Err(Error::Refused(BAD_TOKEN));
        };
        if causal.reach(&context, CAUSAL_WAIT).await {
            Ok(())
        } else {
            Err(Error::Refused(CONTEXT_NOT_REACHED))
        }
    }

    /// [`Local::get`], in the sequential mode once the local replica has applied the order
    /// up to `after` (a position an earlier answer to the asking node reported).
    pub async fn get_after(&self, key: &[u8], after: u64) -> Result<Option<Item>, Error> {
        match &self.mode {
            Mode::Ordered(o) if o.local_reads => {
                let read = || self.datalet.get(key, self.now());
                o.replicator.read_locally_after(after, read).await
            }
            _ => self.get(key).await,
        }
    }

    /// How far this replica has applied its group's order (0 outside the strong modes).
    pub fn position(&self) -> u64 {
        match &self.mode {
            Mode::Ordered(o) => o.replicator.health().applied(),
            Mode::Single(_) | Mode::Eventual(_) => 0,
        }
    }

    /// Carries out a client's `mutation` of `key` as the node's mode says.
    pub async fn apply(&self, key: &Bytes, mutation: Mutation) -> Result<Outcome, Error> {
        match &self.mode {
            Mode::Ordered(o) => {
                self.admit(o, key, &mutation).await?;
                o.replicator.mutate(key, mutation, self.now()).await
            }
            Mode::Eventual(e) => Ok(e.apply(key, mutation, self.now()).await?),
            Mode::Single(local) => {
                let version = local.next_version(&*self.datalet).await?;
                Ok(self
                    .datalet
                    .apply(key, mutation, version, self.now())
                    .await?)
            }
        }
    }

    /// Makes room for a write that could take this replica past its memory limit: frees
    /// what items dead at the order's clock hold, then, if the node evicts, orders the
    /// eviction of the items this replica names as least recently used, so every replica
    /// evicts the same; a write that still does not fit is refused. Deletes, touches and
    /// evictions never grow an item; `incr` may by up to 20 digits.
    async fn admit(&self, o: &Ordered, key: &Bytes, mutation: &Mutation) -> Result<(), Error> {
        let grows = mutation.growth(key);
        if grows == 0 {
            return Ok(());
        }
        self.make_room(o, grows).await
    }

    /// [`Local::admit`] for `grows` more bytes.
    async fn make_room(&self, o: &Ordered, grows: usize) -> Result<(), Error> {
        let limit = o.memory_limit.load(Ordering::Relaxed);
        let fits = || (self.datalet.used_bytes() as usize).saturating_add(grows) <= limit;
        if fits() {
            return Ok(());
        }
        // What is dead may be reclaimed only at the order's clock; bring it up to now first
        // (in the sequential mode reads do not move it, and refused writes are not ordered).
        let health = o.replicator.health();
        if health.order_now() < self.now() {
            let _ = o.replicator.advance_clock(self.now()).await;
        }
        self.datalet.reclaim(health.order_now()).await;
        if fits() {
            return Ok(());
        }
        if !o.evict {
            return Err(Error::Datalet(DataletError::OutOfMemory));
        }
        for _ in 0..EVICTION_ROUNDS {
            let used = self.datalet.used_bytes() as usize;
            let need = used.saturating_add(grows).saturating_sub(limit);
            let victims = self.datalet.victims(need, health.order_now());
            if victims.is_empty() {
                break;
            }
            let evictions = victims.into_iter().map(|(key, version)| async move {
                let evict = Mutation::Evict { version };
                o.replicator.mutate(&key, evict, self.now()).await
            });
            for evicted in futures_util::future::join_all(evictions).await {
                evicted?;
            }
            if fits() {
                return Ok(());
            }
        }
        Err(Error::Datalet(DataletError::OutOfMemory))
    }

    /// In a strong mode with eviction on: every [`LIMIT_CHECK`], if the other members' writes
    /// took this replica past this node's limit, orders evictions down to it, so a node
    /// with less memory than the others does not hold more than its limit for long. Until
    /// `stop`.
    pub fn keep_within_limit(self: &Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        if !self.ordered().is_some_and(|o| o.evict) {
            return;
        }
        let local = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(LIMIT_CHECK) => {}
                }
                let Some(o) = local.ordered() else { return };
                let limit = o.memory_limit.load(Ordering::Relaxed);
                if local.datalet.used_bytes() as usize <= limit || local.standing_by() {
                    continue;
                }
                if let Err(e) = local.make_room(o, 0).await {
                    tracing::debug!(error = %e, "could not evict down to the memory limit");
                }
            }
        });
    }

    /// `flush_all` with the flush point `at` (see [`Engine::flush_all`]).
    pub async fn flush_at(&self, at: UnixSecs) -> Result<(), Error> {
        let now = self.now();
        match &self.mode {
            Mode::Ordered(o) => o.replicator.flush(at, now).await,
            Mode::Eventual(e) => Ok(e.flush(at, now).await?),
            Mode::Single(local) => {
                let version = local.next_version(&*self.datalet).await?;
                Ok(self.datalet.flush_all(at, now, version).await?)
            }
        }
    }

    /// The datalet this engine stores into.
    pub fn datalet(&self) -> &Arc<D> {
        &self.datalet
    }

    /// The total order's counters, in a strong-mode cluster.
    pub fn replication_counters(&self) -> Option<&crate::replication::Counters> {
        self.ordered().map(|o| o.replicator.counters())
    }

    /// [`Local::eventual_node`], shared.
    pub fn eventual_handle(&self) -> Option<&Arc<Eventual<D>>> {
        match &self.mode {
            Mode::Eventual(e) => Some(e),
            Mode::Single(_) | Mode::Ordered(_) => None,
        }
    }

    /// The eventual-consistency side of this node, in the eventual mode.
    pub fn eventual_node(&self) -> Option<&Eventual<D>> {
        match &self.mode {
            Mode::Eventual(e) => Some(e),
            Mode::Single(_) | Mode::Ordered(_) => None,
        }
    }

    /// Where this node stands in its cluster, in a strong mode.
    pub fn cluster_health(&self) -> Option<&crate::replication::Health> {
        self.ordered().map(|o| o.replicator.health())
    }

    /// [`Local::cluster_health`], shared.
    pub fn health_handle(&self) -> Option<Arc<crate::replication::Health>> {
        self.ordered().map(|o| o.replicator.health_handle())
    }

    /// The replicator of this group, in a strong mode.
    pub fn replicator(&self) -> Option<&Replicator> {
        self.ordered().map(|o| &o.replicator)
    }

    /// In a strong mode, this member is not part of its group's serving replicas for now:
    /// waiting for a snapshot, or outside the view (a node joining or leaving the group).
    pub fn standing_by(&self) -> bool {
        use crate::tob::NodeState;
        self.cluster_health()
            .is_some_and(|h| matches!(h.state(), NodeState::CatchingUp | NodeState::Outside))
    }

    /// `cache_memlimit`. In a strong-mode cluster it changes this node's limit on what it
    /// proposes, never what the replicas apply, so nodes with different limits stay identical.
    pub fn set_memory_limit(&self, bytes: usize) {
        match &self.mode {
            Mode::Ordered(o) => o.memory_limit.store(bytes, Ordering::Relaxed),
            Mode::Eventual(e) => e.set_memory_limit(bytes),
            Mode::Single(_) => self.datalet.set_memory_limit(bytes),
        }
    }

    /// The datalet's counters for `stats`, with this node's memory limit in a strong mode.
    pub fn datalet_stats(&self) -> DataletStats {
        let mut stats = self.datalet.stats();
        match &self.mode {
            Mode::Ordered(o) => {
                stats.limit_maxbytes = o.memory_limit.load(Ordering::Relaxed) as u64
            }
            Mode::Eventual(e) => stats.limit_maxbytes = e.memory_limit() as u64,
            Mode::Single(_) => {}
        }
        stats
    }

    /// How operations are ordered, in a strong-mode cluster.
    fn ordered(&self) -> Option<&Ordered> {
        match &self.mode {
            Mode::Ordered(o) => Some(o),
            Mode::Single(_) | Mode::Eventual(_) => None,
        }
    }

    /// Every live item of the local datalet, for `lru_crawler metadump`. In a cluster this is
    /// the local replica as it stands, not read through the order.
    pub async fn scan(&self) -> Result<Vec<Scanned>, Error> {
        let items = self.datalet.scan(self.now()).await?;
        Ok(items
            .into_iter()
            .map(|(key, item)| {
                let access = self.datalet.access(&key);
                (key, item, access)
            })
            .collect())
    }
}

/// A live item of a scan, with how it was used if the store keeps that.
pub type Scanned = (Bytes, Item, Option<tailorkv_datalet::Access>);

/// The replica groups this node holds, by id, each with its engine.
pub type Locals<D> = BTreeMap<GroupId, Arc<Local<D>>>;

/// What a node holds and where everything else lives, as of the latest placement it knows:
/// replaced as a whole when membership changes ([`Engine::reshape`]); each request works on
/// the one it started with.
pub struct Shape<D> {
    pub locals: Locals<D>,
    /// Where every key lives (in a cluster).
    pub placement: Option<Arc<Placement>>,
    /// This node holds every key (a single node, or one group of every node).
    pub holds_all: bool,
    /// The counters of the groups this node has left, so the node's never go back.
    pub retired: ReplicationCounts,
}

impl<D: Datalet> Shape<D> {
    /// The shape of node `me` holding `locals` in `placement`.
    pub fn new(
        locals: Locals<D>,
        placement: Option<Arc<Placement>>,
        me: tailorkv_common::NodeId,
    ) -> Self {
        // Every group here, and this node in every group's target (a node on its way out of a
        // group sends the group's requests to the members staying).
        let holds_all = placement.as_ref().is_none_or(|p| {
            p.groups()
                .all(|g| locals.contains_key(&g) && p.members(g).contains(&me))
        });
        Shape {
            locals,
            placement,
            holds_all,
            retired: ReplicationCounts::default(),
        }
    }
}

/// A node's current [`Shape`], shared by its engine and what reports on it.
pub type ShapeCell<D> = Arc<std::sync::RwLock<Arc<Shape<D>>>>;

/// What a node of a sharded cluster knows beyond its own groups: where every key lives, and
/// how to reach the owners of the keys it does not hold.
pub struct Cluster {
    pub forwarder: Arc<Forwarder>,
    /// Keys asked of an owner in one forwarded read, at most: its answer, of items up to
    /// `--item-size-max` each, must fit in a peer frame.
    pub keys_per_forward: usize,
    /// What this node holds for others (sloppy quorum), when it stands in.
    pub stand_in: Option<Arc<crate::shard::mux::StandInCounts>>,
}

/// Bytes of items one forwarded read may bring back, at most (a peer frame holds 64 MiB).
pub const FORWARD_READ_BYTES: usize = 16 << 20;

/// Where a key's requests are carried out.
enum Route<'a, D> {
    Here(&'a Local<D>),
    There {
        group: GroupId,
        owners: Vec<tailorkv_common::NodeId>,
    },
}

/// Carries out commands' effects on data: in the replica group that holds the key, on this
/// node when it is a member, else at an owner ([`crate::shard::forward`]). On a single node,
/// and in a cluster where every node holds every key, that is always here.
pub struct Engine<D> {
    shape: ShapeCell<D>,
    cluster: Option<Cluster>,
    clock: Arc<dyn Clock>,
}

/// The replication counters of every group this node holds, added up (with those of the
/// groups it has left, so counters never go back).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplicationCounts {
    pub peer_messages_sent: u64,
    pub ops_proposed: u64,
    pub ops_applied: u64,
    pub apply_failures: u64,
    pub state_bytes_sent: u64,
}

impl ReplicationCounts {
    /// Adds a group's counters.
    pub fn add(&mut self, c: &crate::replication::Counters) {
        self.peer_messages_sent += c.peer_messages_sent.load(Ordering::Relaxed);
        self.ops_proposed += c.ops_proposed.load(Ordering::Relaxed);
        self.ops_applied += c.ops_applied.load(Ordering::Relaxed);
        self.apply_failures += c.apply_failures.load(Ordering::Relaxed);
        self.state_bytes_sent += c.state_bytes_sent.load(Ordering::Relaxed);
    }
}

/// Eventual mode's repair counters of every group this node holds, added up.
#[derive(Clone, Copy, Debug, Default)]
pub struct RepairCounts {
    pub antientropy_rounds: u64,
    pub antientropy_entries_sent: u64,
    pub antientropy_entries_received: u64,
    /// Buckets found differing at the last round with each peer, over every group and peer.
    pub antientropy_buckets_differing: u64,
    pub hints_queued: u64,
    pub hints_dropped: u64,
    pub hints_pending: u64,
    pub tombstones: u64,
    /// Concurrent writes of a key found by version vectors (quorum writes).
    pub conflicts: u64,
    /// Replicas repaired after answering a quorum read with an older entry.
    pub read_repairs: u64,
    /// Reads and writes refused for want of a quorum.
    pub quorum_refused: u64,
    /// Writes of this node given to a stand-in to hold for a member that did not answer.
    pub quorum_stand_ins: u64,
    /// Causal mode: peers' writes waiting for what they depend on.
    pub causal_pending: u64,
    /// Causal mode: refills sent and merged.
    pub causal_refills_sent: u64,
    pub causal_refills_merged: u64,
}

impl<D: Datalet> Engine<D> {
    /// A single node's engine over `datalet` (see [`Local::start`]).
    pub async fn start(datalet: Arc<D>, clock: Arc<dyn Clock>) -> Result<Self, DataletError> {
        let local = Local::start(datalet, Arc::clone(&clock)).await?;
        Ok(Engine::new(
            BTreeMap::from([(GroupId(0), Arc::new(local))]),
            None,
            None,
            clock,
        ))
    }

    /// The engine of a node holding `locals` of `placement`; `cluster` when other nodes hold
    /// other keys.
    pub fn new(
        locals: Locals<D>,
        placement: Option<Arc<Placement>>,
        cluster: Option<Cluster>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let me = cluster
            .as_ref()
            .map_or(tailorkv_common::NodeId(0), |c| c.forwarder.me());
        let shape = Shape::new(locals, placement, me);
        Engine {
            shape: Arc::new(std::sync::RwLock::new(Arc::new(shape))),
            cluster,
            clock,
        }
    }

    /// What this node holds now.
    pub fn shape(&self) -> Arc<Shape<D>> {
        Arc::clone(&self.shape.read().unwrap())
    }

    /// Where every key lives, as this node knows it now (in a cluster).
    pub fn placement(&self) -> Option<Arc<Placement>> {
        self.shape().placement.clone()
    }

    /// The cell holding the node's shape, for what reports on it.
    pub fn shape_cell(&self) -> ShapeCell<D> {
        Arc::clone(&self.shape)
    }

    /// Starts serving from `shape`: the groups held and the placement after a membership
    /// change. Requests already under way finish with the shape they started with.
    pub fn reshape(&self, shape: Shape<D>) {
        *self.shape.write().unwrap() = Arc::new(shape);
    }

    /// The groups this node holds.
    pub fn locals(&self) -> Locals<D> {
        self.shape().locals.clone()
    }

    /// Where keys live and how owners are reached, in a sharded cluster.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.as_ref()
    }

    /// The time now, by the engine's clock.
    pub fn now(&self) -> UnixSecs {
        self.clock.now()
    }

    /// The one group this node holds, if it holds one only.
    fn only_local(&self) -> Option<Arc<Local<D>>> {
        let shape = self.shape();
        match shape.locals.len() {
            1 => shape.locals.values().next().cloned(),
            _ => None,
        }
    }

    /// Whether this is a causal-mode node (which holds one group, every key).
    pub fn is_causal(&self) -> bool {
        self.only_local().is_some_and(|l| l.is_causal())
    }

    /// [`Local::causal_token`] of the node's group.
    pub fn causal_token(&self) -> Option<String> {
        self.only_local()?.causal_token()
    }

    /// [`Local::reach_token`] of the node's group.
    pub async fn reach_token(&self, token: &[u8]) -> Result<(), Error> {
        match self.only_local() {
            Some(local) => local.reach_token(token).await,
            None => Ok(()),
        }
    }

    /// Whether this node holds every key, so nothing is forwarded.
    pub fn holds_all(&self) -> bool {
        self.shape().holds_all
    }

    /// Where `key`'s requests go, by `shape`: a group held here that is serving, else its
    /// other owners (a group this node is joining, or leaving, is served by those that
    /// stand in its view).
    fn route<'a>(&self, shape: &'a Shape<D>, key: &[u8]) -> Route<'a, D> {
        let placement = match (&self.cluster, &shape.placement) {
            (Some(_), Some(p)) if !shape.holds_all || shape.locals.len() > 1 => p,
            _ => {
                let only = shape.locals.values().next().expect("one group");
                return Route::Here(only);
            }
        };
        let partition = crate::placement::partition_of(key);
        let group = placement.group_of_partition(partition);
        let me = self.cluster.as_ref().map(|c| c.forwarder.me());
        let members = placement.members(group);
        match shape.locals.get(&group) {
            // A group this node is leaving is served by the members it is handed to.
            Some(local) if !local.standing_by() && me.is_none_or(|me| members.contains(&me)) => {
                Route::Here(local)
            }
            _ => Route::There {
                group,
                owners: members.iter().copied().filter(|&o| Some(o) != me).collect(),
            },
        }
    }

    fn forwarder(&self) -> &Forwarder {
        &self
            .cluster
            .as_ref()
            .expect("forwarding is sharded")
            .forwarder
    }

    /// The live item under `key` (see [`Local::get`]).
    pub async fn get(&self, key: &Bytes) -> Result<Option<Item>, Error> {
        self.read(key, Bump::Yes).await
    }

    /// [`Engine::get`], counted as an access of the item or not as `bump` says. (A key
    /// another group owns is read by its owner as a `get`, which counts.)
    pub async fn read(&self, key: &Bytes, bump: Bump) -> Result<Option<Item>, Error> {
        let shape = self.shape();
        match self.route(&shape, key) {
            Route::Here(local) => local.read(key, bump).await,
            Route::There { .. } => {
                let mut items = self.get_many(std::slice::from_ref(key)).await;
                let item = items.pop().expect("one answer per key");
                if is_no_owner(&item) && self.await_new_placement(&shape).await {
                    // The owners it asked gave the group up meanwhile: ask the new ones.
                    let mut items = self.get_many(std::slice::from_ref(key)).await;
                    return items.pop().expect("one answer per key");
                }
                item
            }
        }
    }

    /// How the item under `key` has been used, by this node's replica of it, if this node
    /// holds one and its store keeps that.
    pub fn access(&self, key: &Bytes) -> Option<tailorkv_datalet::Access> {
        match self.route(&self.shape(), key) {
            Route::Here(local) => local.datalet.access(key),
            Route::There { .. } => None,
        }
    }

    /// After no owner of a group would serve a request (each answered that it does not
    /// hold the group: a membership change under way), waits a moment for this node to learn
    /// a newer placement than `shape`'s; whether it did.
    async fn await_new_placement(&self, shape: &Shape<D>) -> bool {
        let Some(epoch) = shape.placement.as_ref().map(|p| p.epoch()) else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + NEW_PLACEMENT_WAIT;
        while tokio::time::Instant::now() < deadline {
            if self.placement().is_some_and(|p| p.epoch() > epoch) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        false
    }

    /// The live items under `keys`, in their order: the keys of each group read together,
    /// every group at once.
    pub async fn get_many(&self, keys: &[Bytes]) -> Vec<Result<Option<Item>, Error>> {
        let shape = self.shape();
        if let [key] = keys {
            if let Route::Here(local) = self.route(&shape, key) {
                return vec![local.get(key).await];
            }
        }
        let mut here: Vec<(usize, &Local<D>)> = Vec::new();
        let mut there: BTreeMap<GroupId, (Vec<usize>, Vec<tailorkv_common::NodeId>)> =
            BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            match self.route(&shape, key) {
                Route::Here(local) => here.push((i, local)),
                Route::There { group, owners } => there
                    .entry(group)
                    .or_insert_with(|| (Vec::new(), owners))
                    .0
                    .push(i),
            }
        }
        let mut results: Vec<Option<Result<Option<Item>, Error>>> = vec![None; keys.len()];
        let local = futures_util::future::join_all(
            here.iter()
                .map(|&(i, local)| async move { (i, local.get(&keys[i]).await) }),
        );
        // At most `keys_per_forward` keys a request, so an answer of the largest items fits
        // in a peer frame.
        let per = self
            .cluster
            .as_ref()
            .map_or(1, |c| c.keys_per_forward.max(1));
        let requests = there.into_iter().flat_map(|(group, (indices, owners))| {
            let chunks: Vec<Vec<usize>> = indices.chunks(per).map(<[usize]>::to_vec).collect();
            chunks
                .into_iter()
                .map(move |chunk| (group, (chunk, owners.clone())))
        });
        let remote =
            futures_util::future::join_all(requests.map(|(group, (indices, owners))| async move {
                let op = RemoteOp::Get {
                    keys: indices.iter().map(|&i| keys[i].clone()).collect(),
                    after: 0,
                };
                let answer = self.forwarder().call(group, &owners, op, true).await;
                (indices, answer)
            }));
        let (local, remote) = tokio::join!(local, remote);
        for (i, result) in local {
            results[i] = Some(result);
        }
        for (indices, answer) in remote {
            match answer {
                Ok(RemoteAnswer::Items(items)) if items.len() == indices.len() => {
                    for (i, item) in indices.into_iter().zip(items) {
                        results[i] = Some(item.map_err(Error::from));
                    }
                }
                Ok(other) => {
                    for i in indices {
                        results[i] = Some(Err(unexpected(&other)));
                    }
                }
                Err(e) => {
                    for i in indices {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every key answered"))
            .collect()
    }

    /// Carries out a client's `mutation` of `key` in the key's group.
    pub async fn apply(&self, key: &Bytes, mutation: Mutation) -> Result<Outcome, Error> {
        let shape = self.shape();
        match self.route(&shape, key) {
            Route::Here(local) => local.apply(key, mutation).await,
            Route::There { group, owners } => {
                let op = RemoteOp::Apply {
                    key: key.clone(),
                    mutation: mutation.clone(),
                };
                let answer = self.forwarder().call(group, &owners, op, false).await;
                if is_no_owner(&answer) && self.await_new_placement(&shape).await {
                    // Every owner asked refused before ordering it: nothing happened, and the
                    // new placement names others.
                    return Box::pin(self.apply(key, mutation)).await;
                }
                match answer? {
                    RemoteAnswer::Applied(result) => Ok(result?),
                    other => Err(unexpected(&other)),
                }
            }
        }
    }

    /// `flush_all [delay]`, with memcached's timing: the flush point is one second before the
    /// delay's exptime (memcached sets `oldest_live = realtime(exptime) - 1`), so
    /// `flush_all 10` takes effect after 9 seconds, and `flush_all 1` flushes at once and also
    /// hides items stored during the rest of this second. Without a delay the flush point is
    /// the second before now: everything stored so far goes, later writes stay. In a sharded
    /// cluster every group flushes at the same point; the first failure is the reply.
    pub async fn flush_all(&self, delay: i32) -> Result<(), Error> {
        let now = self.now();
        let at = match Expiry::from_exptime(delay, now) {
            Expiry::At(at) if delay > 0 => at,
            _ => now,
        };
        let at = at.saturating_sub(1);
        let shape = self.shape();
        let (Some(_), Some(placement)) = (&self.cluster, &shape.placement) else {
            let local = shape.locals.values().next().expect("one group");
            return local.flush_at(at).await;
        };
        let shape = &shape;
        let flushes = placement.groups().map(|group| async move {
            if let Some(local) = shape.locals.get(&group).filter(|l| !l.standing_by()) {
                return local.flush_at(at).await;
            }
            let owners = placement.members(group);
            let op = RemoteOp::Flush { at };
            match self.forwarder().call(group, owners, op, false).await? {
                RemoteAnswer::Flushed(result) => Ok(result?),
                other => Err(unexpected(&other)),
            }
        });
        futures_util::future::join_all(flushes)
            .await
            .into_iter()
            .collect()
    }

    /// The counters of every group's datalet on this node, added up, with this node's memory
    /// limit.
    pub fn datalet_stats(&self) -> DataletStats {
        let mut sum = DataletStats::default();
        for local in self.shape().locals.values() {
            let stats = local.datalet_stats();
            add_stats(&mut sum, &stats);
            sum.limit_maxbytes += stats.limit_maxbytes;
        }
        sum
    }

    /// The slab classes of every group's datalet on this node, added up by class.
    pub fn item_classes(&self) -> Vec<tailorkv_datalet::ClassStats> {
        let mut sum: BTreeMap<usize, tailorkv_datalet::ClassStats> = BTreeMap::new();
        let now = self.now();
        for local in self.shape().locals.values() {
            for c in local.datalet().item_classes(now) {
                let s = sum.entry(c.class).or_insert(tailorkv_datalet::ClassStats {
                    class: c.class,
                    ..Default::default()
                });
                s.age = s.age.max(c.age);
                s.evicted_time = s.evicted_time.max(c.evicted_time);
                for (to, from) in [
                    (&mut s.number, c.number),
                    (&mut s.requested, c.requested),
                    (&mut s.evicted, c.evicted),
                    (&mut s.evicted_nonzero, c.evicted_nonzero),
                    (&mut s.evicted_unfetched, c.evicted_unfetched),
                    (&mut s.evicted_active, c.evicted_active),
                    (&mut s.expired_unfetched, c.expired_unfetched),
                    (&mut s.reclaimed, c.reclaimed),
                    (&mut s.outofmemory, c.outofmemory),
                    (&mut s.chunks, c.chunks),
                    (&mut s.get_hits, c.get_hits),
                    (&mut s.cmd_set, c.cmd_set),
                    (&mut s.delete_hits, c.delete_hits),
                    (&mut s.incr_hits, c.incr_hits),
                    (&mut s.decr_hits, c.decr_hits),
                    (&mut s.cas_hits, c.cas_hits),
                    (&mut s.cas_badval, c.cas_badval),
                    (&mut s.touch_hits, c.touch_hits),
                ] {
                    *to += from;
                }
            }
        }
        sum.into_values().collect()
    }

    /// `stats reset`: zeroes every group's datalet counters on this node.
    pub fn reset_stats(&self) {
        for local in self.shape().locals.values() {
            local.datalet().reset_stats();
        }
    }

    /// The items and bytes of the whole cluster, each group counted once (from this node
    /// where it holds the group, else from an owner), for `stats`; and how many groups could
    /// not be asked. On a node that holds every key, its own.
    pub async fn cluster_stats(&self) -> (DataletStats, usize) {
        let shape = self.shape();
        let (Some(_), Some(placement)) = (&self.cluster, &shape.placement) else {
            return (self.datalet_stats(), 0);
        };
        let shape = &shape;
        let counts = placement.groups().map(|group| async move {
            if let Some(local) = shape.locals.get(&group).filter(|l| !l.standing_by()) {
                return Some(local.datalet_stats());
            }
            let owners = placement.members(group);
            let answer = self
                .forwarder()
                .call(group, owners, RemoteOp::Stats, true)
                .await;
            match answer {
                Ok(RemoteAnswer::Stats(stats)) => Some(stats),
                _ => None,
            }
        });
        let mut sum = DataletStats::default();
        let mut missing = 0;
        for stats in futures_util::future::join_all(counts).await {
            match stats {
                Some(stats) => add_stats(&mut sum, &stats),
                None => missing += 1,
            }
        }
        (sum, missing)
    }

    /// The total order's counters of every group held here, in a strong-mode cluster.
    pub fn replication_counters(&self) -> Option<ReplicationCounts> {
        let shape = self.shape();
        let mut sum = None;
        for local in shape.locals.values() {
            if let Some(c) = local.replication_counters() {
                sum.get_or_insert(shape.retired).add(c);
            }
        }
        sum
    }

    /// The sloppy quorum's stand-in on this node, if it has one: writes taken to hold for
    /// other nodes, handed back, and held now.
    pub fn stand_in_counts(&self) -> Option<(u64, u64, u64)> {
        let c = self.cluster.as_ref()?.stand_in.as_ref()?;
        Some((
            c.taken.load(Ordering::Relaxed),
            c.handed_back.load(Ordering::Relaxed),
            c.held.load(Ordering::Relaxed),
        ))
    }

    /// Eventual mode's repair counters of every group held here.
    pub fn repair_counters(&self) -> Option<RepairCounts> {
        let mut sum = None;
        for local in self.shape().locals.values() {
            if let Some(e) = local.eventual_node() {
                let s: &mut RepairCounts = sum.get_or_insert_with(Default::default);
                s.antientropy_rounds += e.antientropy_rounds();
                s.antientropy_entries_sent += e.antientropy_entries_sent();
                s.antientropy_entries_received += e.antientropy_entries_received();
                s.antientropy_buckets_differing +=
                    e.divergence().iter().map(|&(_, b)| b as u64).sum::<u64>();
                s.hints_queued += e.hints_queued();
                s.hints_dropped += e.hints_dropped();
                s.hints_pending += e.hints_pending();
                s.tombstones += e.tombstones() as u64;
                if let Some(q) = e.quorums() {
                    s.conflicts += q.conflicts();
                    s.read_repairs += q.read_repairs();
                    s.quorum_refused += q.refused();
                    s.quorum_stand_ins += q.stood_in();
                }
                if let Some(c) = e.causal() {
                    let c = c.stats();
                    s.causal_pending += c.pending as u64;
                    s.causal_refills_sent += c.refills_sent;
                    s.causal_refills_merged += c.refills_merged;
                }
            }
        }
        sum
    }

    /// Eventual mode: per group held here and per peer of it, the buckets that differed at
    /// the last anti-entropy round with that peer.
    pub fn divergence(&self) -> Vec<(GroupId, NodeId, usize)> {
        let mut out = Vec::new();
        for (&group, local) in self.shape().locals.iter() {
            if let Some(e) = local.eventual_node() {
                out.extend(e.divergence().into_iter().map(|(p, b)| (group, p, b)));
            }
        }
        out
    }

    /// Groups held here whose members are changing: a copy moving in or out (a view that is
    /// not yet the group's target, or an eventual copy being sent or handed over).
    pub fn groups_moving(&self) -> usize {
        let shape = self.shape();
        shape
            .locals
            .values()
            .filter(|local| match local.eventual_node() {
                Some(node) => node.is_moving(),
                None => local.cluster_health().is_some_and(|h| !h.settled()),
            })
            .count()
    }

    /// Where this node stands in each group it holds, in a strong mode.
    pub fn cluster_health(&self) -> Vec<(GroupId, Arc<crate::replication::Health>)> {
        self.shape()
            .locals
            .iter()
            .filter_map(|(&g, local)| Some((g, local.health_handle()?)))
            .collect()
    }

    /// `cache_memlimit`: this node's memory, shared equally by the groups it holds.
    pub fn set_memory_limit(&self, bytes: usize) {
        let shape = self.shape();
        let share = bytes / shape.locals.len().max(1);
        for local in shape.locals.values() {
            local.set_memory_limit(share);
        }
    }

    /// Every live item this node holds, for `lru_crawler metadump`: its own replicas as they
    /// stand, not read through the order, and not the keys other nodes hold.
    pub async fn scan(&self) -> Result<Vec<Scanned>, Error> {
        let mut items = Vec::new();
        for local in self.shape().locals.values() {
            items.extend(local.scan().await?);
        }
        Ok(items)
    }
}

fn add_stats(sum: &mut DataletStats, s: &DataletStats) {
    sum.curr_items += s.curr_items;
    sum.total_items += s.total_items;
    sum.bytes += s.bytes;
    sum.get_expired += s.get_expired;
    sum.get_flushed += s.get_flushed;
    sum.reclaimed += s.reclaimed;
    sum.evictions += s.evictions;
    sum.evicted_unfetched += s.evicted_unfetched;
    sum.expired_unfetched += s.expired_unfetched;
}

/// How long a request that found no owner waits for a newer placement before it is refused.
const NEW_PLACEMENT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether `result` is the refusal of a request no owner would take.
fn is_no_owner<T>(result: &Result<T, Error>) -> bool {
    matches!(result, Err(Error::Refused(why)) if *why == crate::shard::forward::NO_OWNER)
}

fn unexpected(answer: &RemoteAnswer) -> Error {
    tracing::error!(
        ?answer,
        "an owner answered a forwarded request with something else"
    );
    Error::Refused(crate::shard::forward::NO_OWNER)
}

/// Carries out requests other nodes forward to the groups this one holds, and hands their
/// answers to requests this node forwarded to `forwarder`, until shutdown. Each request is
/// its own task: a slow group never holds up another's.
pub async fn serve_forwarded<D: Datalet>(
    status: Arc<crate::status::Sources<D>>,
    forwarder: Arc<Forwarder>,
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<(tailorkv_common::NodeId, Forwarded)>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let got = tokio::select! {
            got = incoming.recv() => got,
            () = shutdown.cancelled() => return,
        };
        let Some((from, forwarded)) = got else { return };
        match forwarded {
            Forwarded::Answer {
                id,
                answer,
                position,
            } => forwarder.answered(id, answer, position),
            Forwarded::Request {
                id,
                op: RemoteOp::Status,
                ..
            } => {
                let answer = RemoteAnswer::Status(Box::new(status.read()));
                let forwarder = Arc::clone(&forwarder);
                tokio::spawn(async move { forwarder.answer(from, id, answer, 0).await });
            }
            Forwarded::Request { id, group, op } => {
                let shape = Arc::clone(&status.shape.read().unwrap());
                let forwarder = Arc::clone(&forwarder);
                tokio::spawn(async move {
                    // A group this node is joining (or leaving) is not served here.
                    let (answer, position) = match shape.locals.get(&group) {
                        Some(local) if !local.standing_by() => {
                            (carry_out(local, op).await, local.position())
                        }
                        _ => (RemoteAnswer::NotHeld, 0),
                    };
                    forwarder.answer(from, id, answer, position).await;
                });
            }
        }
    }
}

/// Carries out a forwarded request in a group held here.
async fn carry_out<D: Datalet>(local: &Local<D>, op: RemoteOp) -> RemoteAnswer {
    match op {
        RemoteOp::Get { keys, after } => {
            let reads = keys.iter().map(|key| local.get_after(key, after));
            let items = futures_util::future::join_all(reads).await;
            RemoteAnswer::Items(items.into_iter().map(|r| r.map_err(Into::into)).collect())
        }
        RemoteOp::Apply { key, mutation } => {
            RemoteAnswer::Applied(local.apply(&key, mutation).await.map_err(Into::into))
        }
        RemoteOp::Flush { at } => {
            RemoteAnswer::Flushed(local.flush_at(at).await.map_err(Into::into))
        }
        RemoteOp::Stats => RemoteAnswer::Stats(local.datalet_stats()),
        RemoteOp::Status => unreachable!("answered by the node, not a group"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use tailorkv_common::codec::StoreMode;
    use tailorkv_common::{ManualClock, SystemClock};
    use tailorkv_datalet::{Limits, MemoryDatalet};

    use super::*;

    /// A memory datalet whose clock reservations are remembered, as a durable store would.
    struct Remembering {
        inner: MemoryDatalet,
        saved: StdMutex<Vec<Ts>>,
        resume: Ts,
    }

    impl Datalet for Remembering {
        async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
            self.inner.get(key, now).await
        }
        async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
            self.inner.scan(now).await
        }
        async fn apply(
            &self,
            key: &Bytes,
            m: Mutation,
            v: Version,
            now: UnixSecs,
        ) -> Result<Outcome, DataletError> {
            self.inner.apply(key, m, v, now).await
        }
        async fn flush_all(
            &self,
            at: UnixSecs,
            now: UnixSecs,
            version: Version,
        ) -> Result<(), DataletError> {
            self.inner.flush_all(at, now, version).await
        }
        async fn reset(&self) -> Result<(), DataletError> {
            self.inner.reset().await
        }
        async fn load_clock(&self) -> Result<Ts, DataletError> {
            Ok(self.resume)
        }
        async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
            self.saved.lock().unwrap().push(ts);
            Ok(())
        }
        fn set_memory_limit(&self, bytes: usize) {
            self.inner.set_memory_limit(bytes)
        }
        fn stats(&self) -> DataletStats {
            self.inner.stats()
        }
    }

    fn set(v: &str) -> Mutation {
        Mutation::Store {
            mode: StoreMode::Set,
            flags: 0,
            expiry: Expiry::Never,
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    #[tokio::test]
    async fn versions_resume_past_the_saved_reservation() {
        let datalet = Arc::new(Remembering {
            inner: MemoryDatalet::new(Limits::default()),
            saved: StdMutex::new(Vec::new()),
            resume: 5_000_000,
        });
        let engine = Engine::start(datalet.clone(), Arc::new(SystemClock))
            .await
            .unwrap();
        let key = Bytes::from_static(b"k");
        let mut last = 0;
        for i in 0..100 {
            engine.apply(&key, set(&i.to_string())).await.unwrap();
            let version = engine.get(&key).await.unwrap().unwrap().version;
            assert!(version.ts > 5_000_000, "a version below the resumed clock");
            assert!(version.ts > last, "versions must increase");
            last = version.ts;
        }
        let saved = datalet.saved.lock().unwrap().clone();
        assert_eq!(
            saved,
            vec![5_000_001 + CLOCK_RESERVATION],
            "one reservation, saved first"
        );
    }

    #[tokio::test]
    async fn a_delayed_flush_point_is_a_second_before_its_delay() {
        let clock = Arc::new(ManualClock::new(1_000));
        let datalet = Arc::new(MemoryDatalet::new(Limits::default()));
        let engine = Engine::start(datalet, clock.clone()).await.unwrap();
        let key = Bytes::from_static(b"k");
        engine.apply(&key, set("v")).await.unwrap();
        engine.flush_all(3).await.unwrap();
        clock.advance(1);
        assert!(engine.get(&key).await.unwrap().is_some());
        clock.advance(1);
        assert_eq!(engine.get(&key).await.unwrap(), None);
    }
}
