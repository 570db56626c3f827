//! A seeded simulation of a cluster on the total order: N nodes, each a real [`Tob`] with an
//! application on top, over simulated FIFO links with random delays, while the seed injects
//! faults. A run is a function of its seed.
//!
//! The simulation plays the network and the driver's part: it routes messages, tells a
//! receiver of lost messages ([`Tob::link_gap`]) before the next one on that link, carries out
//! the core's events (a `SendState` sends the source's [`Replica::snapshot`] over the same link
//! as its messages, an `AwaitState` resets the replica and waits for it), and checks what every
//! application may rely on: one operation per sequence number everywhere, no operation twice,
//! one view and one starting sequence number per epoch ([`Agreement`]), nothing delivered out
//! of turn or while waiting for a snapshot ([`Sim::apply`]). What runs on each node, and what its clients do, is an
//! [`App`]: the bare order with unique numbers as operations (`tob`'s own tests), or a
//! key-value store whose clients' histories the consistency checkers judge (the `tests`
//! crate).
//!
//! The faults ([`Fault`]): crashes and restarts (a restarted node is a new `Tob` with a larger
//! incarnation and an empty replica; a crash never takes a majority of the nodes, or of a view
//! installed or proposed, since that stops the cluster by design), partitions (the messages
//! across the cut held until it heals, as TCP does, or lost), single TCP connections that
//! break (what they carried is lost), pauses and delay spikes. After the fault phase
//! [`Sim::heal_all`] ends them all and [`Sim::run_until`] waits for the cluster to settle.
//!
//! # Layout
//!
//! - `net`: links, parcels and partitions.
//! - `faults`: the fault schedule, crashes and restarts.
//! - `driver`: what the driver does with the core's messages and events.
//! - `check`: the checks every application shares, and the counters.
//! - `seeds`: picking seeds, and replaying them.

mod check;
mod driver;
mod faults;
mod net;
mod seeds;

use std::fmt;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use tailorkv_common::NodeId;

use crate::tob::{Delivery, Incarnation, NodeState, Timing, Tob};
use crate::weigh::Weigh;

pub use check::{Agreement, Stats};
pub use faults::{Fault, FAULTS};
pub use net::{Cut, Partition};
pub use seeds::{replay, seeds};

use net::Link;

/// Timing scaled down (about 10x from the default) so that runs are short.
pub const SIM_TIMING: Timing = Timing {
    heartbeat: 4,
    suspect_after: 32,
    suspect_increment: 15,
    collect: 5,
    view_change: 25,
    join_interval: 10,
    state_timeout: 300,
};

/// Ticks of the fault phase.
pub const FAULT_TICKS: u64 = 500;
/// Ticks after healing without any node changing: stuck for good (every timer of
/// [`SIM_TIMING`] is far shorter).
pub const STALL_TICKS: u64 = 3_000;
/// Ticks the cluster stays settled before the application's last steps: what was delayed
/// before the healing has arrived by then.
pub const SETTLED_QUIET: u64 = 150;

/// A node's state on top of the order: what the deliveries built, and whatever its driver
/// keeps. Its default is the state of a node that starts empty.
pub trait Replica: Default {
    /// What a snapshot of it carries.
    type State: Clone;
    /// The sequence number it has applied up to.
    fn applied(&self) -> u64;
    /// A snapshot of it, taken when the core says `SendState`.
    fn snapshot(&self) -> Self::State;
    /// Takes a snapshot's state, of the order up to `seq`.
    fn install(&mut self, seq: u64, state: Self::State);
    /// Work in flight besides what it applied (requests waiting): a change counts as progress.
    fn pending(&self) -> usize {
        0
    }
}

/// What runs on each node and its clients: the operations, the replica, and the checks of
/// their own. Each hook is given the simulation; the ones with a default need nothing.
pub trait App: Sized {
    /// What the order carries.
    type Op: Clone + Weigh + fmt::Debug;
    /// A node's state on top of the order.
    type Replica: Replica;
    /// What failures call an operation's [`App::uid`].
    const NOUN: &'static str;
    /// Ticks after healing within which the run must be over.
    const SETTLE_CAP: u64;

    /// The operation's name, unique among everything proposed in a run.
    fn uid(op: &Self::Op) -> u64;
    /// Whether this operation was proposed (delivering anything else is a failure).
    fn proposed(&self, op: &Self::Op) -> bool;
    /// Node `i`'s turn begins: its clients send what they have and it proposes; carries out
    /// what that made the core say.
    fn requests(&mut self, sim: &mut Sim<Self>, i: usize);
    /// Node `i` ticked.
    fn ticked(&mut self, _sim: &mut Sim<Self>, _i: usize) {}
    /// Node `i`'s core delivered this: apply it with [`Sim::apply`].
    fn deliver(&mut self, sim: &mut Sim<Self>, i: usize, delivery: Delivery<Self::Op>) {
        sim.apply(self, i, delivery.seq, delivery.origin, delivery.op);
    }
    /// Node `i` applies `op` at `seq`, which [`Sim::apply`] found in order.
    fn apply(&mut self, sim: &mut Sim<Self>, i: usize, seq: u64, origin: NodeId, op: Self::Op);
    /// Whether node `i` may install this snapshot.
    fn check_snapshot(&mut self, sim: &mut Sim<Self>, i: usize, s: &Snapshot<Self>) -> Checked;
    /// Node `i` is told to wait for a snapshot: this must empty its replica.
    fn await_state(&mut self, sim: &mut Sim<Self>, i: usize);
    /// Node `i` is told it is outside the view.
    fn excluded(&mut self, _sim: &mut Sim<Self>, _i: usize) {}
    /// Node `i` may answer its linearizable read `id` from its replica now.
    fn read_ready(&mut self, _sim: &mut Sim<Self>, _i: usize, _id: u64) {}
    /// Node `i` crashes, and its replica is about to be dropped.
    fn crashed(&mut self, _sim: &mut Sim<Self>, _i: usize) {}
    /// Node `i` has nothing more to send or carry out for now.
    fn carried_out(&mut self, _sim: &mut Sim<Self>, _i: usize) {}
    /// What [`Sim::describe`] adds about node `i`.
    fn describe(&self, _sim: &Sim<Self>, _i: usize) -> String {
        String::new()
    }
}

/// What a snapshot of an application carries.
pub type State<A> = <<A as App>::Replica as Replica>::State;

/// What a check finds wrong, if anything.
pub type Checked = Result<(), String>;

/// A snapshot of a replica, as it travels to a node that waits for it.
pub struct Snapshot<A: App> {
    /// The view it starts.
    pub epoch: u64,
    /// The sequence number it holds everything up to.
    pub seq: u64,
    /// The replica's state.
    pub state: State<A>,
}

/// A failed run.
#[derive(Debug)]
pub struct Failure {
    /// The seed that replays it.
    pub seed: u64,
    /// When it failed.
    pub tick: u64,
    /// What kind of failure.
    pub kind: Kind,
    /// What went wrong.
    pub what: String,
}

/// What went wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A checker rejected the clients' history.
    History,
    /// The replicas disagree, a snapshot is wrong, an acknowledged operation was lost.
    Safety,
    /// The cluster did not recover.
    Liveness,
}

/// Names a node's incarnation in messages.
pub struct Who(pub usize, pub Incarnation);

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} (incarnation {})", self.0 + 1, self.1)
    }
}

/// One node: its core (none while crashed), its replica, and what the driver keeps for it.
pub struct Node<A: App> {
    /// `None` while crashed.
    pub tob: Option<Tob<A::Op>>,
    /// The run of the node's process.
    pub incarnation: Incarnation,
    /// The state the order built here.
    pub replica: A::Replica,
    /// The snapshot this node waits for: (epoch, seq).
    pub awaiting: Option<(u64, u64)>,
    /// Snapshots that arrived before the view asking for them.
    early: Vec<Snapshot<A>>,
    /// The node takes no turns before this tick.
    pub paused_until: u64,
    restart_at: Option<u64>,
    /// Up to date in a view at least once in this incarnation.
    synced_once: bool,
    /// The epoch of the view last seen.
    epoch: u64,
}

impl<A: App> Node<A> {
    fn new(tob: Tob<A::Op>, incarnation: Incarnation) -> Self {
        Node {
            tob: Some(tob),
            incarnation,
            replica: A::Replica::default(),
            awaiting: None,
            early: Vec::new(),
            paused_until: 0,
            restart_at: None,
            synced_once: false,
            epoch: 0,
        }
    }

    /// Where its core stands; `None` while crashed.
    pub fn state(&self) -> Option<NodeState> {
        self.tob.as_ref().map(|t| t.state())
    }
}

/// The simulated cluster.
pub struct Sim<A: App> {
    /// The seed the run is a function of.
    pub seed: u64,
    /// How many nodes.
    pub n: usize,
    /// The nodes' ids: node `i` is `NodeId(i + 1)`.
    pub universe: Vec<NodeId>,
    /// The faults the run injects.
    pub fault: Fault,
    /// Every random choice of the run.
    pub rng: StdRng,
    /// The current tick.
    pub now: u64,
    /// The nodes.
    pub nodes: Vec<Node<A>>,
    /// Indexed `from * n + to`.
    links: Vec<Link<A>>,
    max_delay: u64,
    /// The partition in progress.
    pub partition: Option<Partition>,
    /// What every node applied and installed, checked as it happens.
    pub check: Agreement,
    failure: Option<(Kind, String)>,
    /// 1 prints every fault, view change and delivery; 2 every message too.
    pub trace: u8,
    /// What the network and the faults did.
    pub stats: Stats,
    healed_at: u64,
    settled_since: Option<u64>,
}

impl<A: App> Sim<A> {
    /// A cluster of `n` nodes, all booting, for `seed`, with faults of `fault`. The
    /// application draws its own parameters from [`Sim::rng`] next.
    pub fn new(seed: u64, n: usize, fault: Fault, trace: u8) -> Self {
        let universe: Vec<NodeId> = (1..=n as u16).map(NodeId).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let max_delay = rng.random_range(1..=4);
        let nodes = universe
            .iter()
            .map(|&id| Node::new(Tob::new(id, 1, &universe, 0, SIM_TIMING), 1))
            .collect();
        let mut links = Vec::new();
        links.resize_with(n * n, Link::default);
        Sim {
            seed,
            n,
            universe,
            fault,
            rng,
            now: 0,
            nodes,
            links,
            max_delay,
            partition: None,
            check: Agreement::new(A::NOUN),
            failure: None,
            trace,
            stats: Stats::default(),
            healed_at: 0,
            settled_since: None,
        }
    }

    /// Prints `what` if tracing at `level`.
    pub fn log(&self, level: u8, what: impl FnOnce() -> String) {
        if self.trace >= level {
            println!("[{:>6}] {}", self.now, what());
        }
    }

    /// Records a failure (the first one counts) and logs it.
    pub fn fail(&mut self, kind: Kind, what: String) {
        self.log(1, || format!("FAILURE ({kind:?}): {what}"));
        if self.failure.is_none() {
            self.failure = Some((kind, what));
        }
    }

    /// The failed run, as of now, for what the run returned.
    pub fn failure(&self, (kind, what): (Kind, String)) -> Failure {
        self.log(1, || format!("FAILURE ({kind:?}): {what}"));
        Failure {
            seed: self.seed,
            tick: self.now,
            kind,
            what,
        }
    }

    /// Whether node `i` is up and not paused.
    pub fn active(&self, i: usize) -> bool {
        self.nodes[i].tob.is_some() && self.now >= self.nodes[i].paused_until
    }

    /// The fault phase: [`FAULT_TICKS`] ticks, each injecting faults at random.
    pub fn run_faults(&mut self, app: &mut A) -> Result<(), (Kind, String)> {
        for _ in 0..FAULT_TICKS {
            self.inject(app);
            self.tick(app);
            if let Some(f) = self.failure.take() {
                return Err(f);
            }
        }
        Ok(())
    }

    /// One tick: every active node, in random order, takes its clients' requests, receives
    /// what arrived, ticks, and carries out what its core said.
    pub fn tick(&mut self, app: &mut A) {
        self.now += 1;
        self.stats.ticks += 1;
        let mut order: Vec<usize> = (0..self.n).collect();
        order.shuffle(&mut self.rng);
        for i in order {
            if !self.active(i) {
                continue;
            }
            app.requests(self, i);
            self.receive(app, i);
            if let Some(tob) = self.nodes[i].tob.as_mut() {
                tob.tick();
            }
            app.ticked(self, i);
            self.carry_out(app, i);
            if self.failure.is_some() {
                return;
            }
        }
    }

    /// Ticks until `done`; fails for liveness after [`App::SETTLE_CAP`] ticks from the
    /// healing, or after [`STALL_TICKS`] ticks in which no node changed.
    pub fn run_until(
        &mut self,
        app: &mut A,
        what: &str,
        done: impl Fn(&Sim<A>, &A) -> bool,
    ) -> Result<(), (Kind, String)> {
        let mut last_change = self.now;
        let mut last = self.fingerprint();
        self.observe();
        while !done(self, app) {
            if self.now >= self.healed_at + A::SETTLE_CAP || self.now >= last_change + STALL_TICKS {
                let what = format!(
                    "liveness: not {what} {} ticks after healing (no node changed for {} ticks): {}",
                    self.now - self.healed_at,
                    self.now - last_change,
                    self.describe(app)
                );
                return Err((Kind::Liveness, what));
            }
            self.tick(app);
            if let Some(f) = self.failure.take() {
                return Err(f);
            }
            self.observe();
            let now = self.fingerprint();
            if now != last {
                last = now;
                last_change = self.now;
            }
        }
        Ok(())
    }

    /// Settled for [`SETTLED_QUIET`] ticks: a condition for [`Sim::run_until`].
    pub fn settled_quietly(&self) -> bool {
        self.settled_since
            .is_some_and(|t| self.now >= t + SETTLED_QUIET)
    }

    /// Keeps track of how long the cluster has been settled.
    fn observe(&mut self) {
        if !self.settled() {
            self.settled_since = None;
        } else if self.settled_since.is_none() {
            self.settled_since = Some(self.now);
        }
    }

    /// What changes when a node makes progress.
    fn fingerprint(&self) -> Vec<(Incarnation, &'static str, u64, u64, u64, usize)> {
        self.nodes
            .iter()
            .map(|node| match &node.tob {
                None => (node.incarnation, "down", 0, 0, 0, 0),
                Some(t) => (
                    node.incarnation,
                    t.state().name(),
                    t.view().epoch,
                    t.delivered(),
                    node.replica.applied(),
                    node.replica.pending(),
                ),
            })
            .collect()
    }

    /// Every node serving in one view of all of them, at the same sequence number, with
    /// nothing proposed and not delivered.
    pub fn settled(&self) -> bool {
        let Some(first) = self.nodes[0].tob.as_ref() else {
            return false;
        };
        let epoch = first.view().epoch;
        let len = self.nodes[0].replica.applied();
        self.nodes.iter().all(|node| {
            node.tob.as_ref().is_some_and(|t| {
                t.state() == NodeState::Serving
                    && t.view().epoch == epoch
                    && self.holds_every_node(t)
                    && t.delivered() == len
                    && node.replica.applied() == len
                    && t.proposed_len() == 0
                    && node.awaiting.is_none()
            })
        })
    }

    /// The view of `tob` holds every node, each in the run that is up.
    fn holds_every_node(&self, tob: &Tob<A::Op>) -> bool {
        tob.view().members.len() == self.n
            && tob
                .view()
                .members
                .iter()
                .all(|&(id, inc)| self.nodes[id.0 as usize - 1].incarnation == inc)
    }

    /// Every node's state, for a failure's message.
    pub fn describe(&self, app: &A) -> String {
        let mut out = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let Some(t) = &node.tob else {
                out += &format!("\n      node {}: down", i + 1);
                continue;
            };
            let suspected: Vec<NodeId> = self
                .universe
                .iter()
                .copied()
                .filter(|&m| t.detector().is_suspected(m))
                .collect();
            out += &format!(
                "\n      node {} (inc {}): {} in epoch {} {:?}, delivered {}, applied {}, awaiting {:?}, suspects {:?}{}",
                i + 1,
                node.incarnation,
                t.state().name(),
                t.view().epoch,
                t.view().members,
                t.delivered(),
                node.replica.applied(),
                node.awaiting,
                suspected,
                app.describe(self, i)
            );
        }
        out
    }
}
