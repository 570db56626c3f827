//! Where this node stands in the cluster, published by the driver and read lock-free by
//! commands (local reads, memory checks, `stats`) and by the signal handler.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};

use tailorkv_common::UnixSecs;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::tob::NodeState;

/// A [`NodeState`] read and written lock-free: an atomic holding its [`u8`] code.
#[derive(Debug)]
pub struct AtomicNodeState(AtomicU8);

impl AtomicNodeState {
    /// Holding `state`.
    pub fn new(state: NodeState) -> Self {
        AtomicNodeState(AtomicU8::new(state.into()))
    }

    /// The state held now.
    pub fn load(&self, order: Ordering) -> NodeState {
        decode(self.0.load(order))
    }

    /// Holds `state` from now on.
    pub fn store(&self, state: NodeState, order: Ordering) {
        self.0.store(state.into(), order);
    }

    /// Holds `state` from now on; the state it held before.
    pub fn swap(&self, state: NodeState, order: Ordering) -> NodeState {
        decode(self.0.swap(state.into(), order))
    }
}

impl Default for AtomicNodeState {
    /// [`NodeState::Booting`]: no view formed yet.
    fn default() -> Self {
        AtomicNodeState::new(NodeState::Booting)
    }
}

impl From<NodeState> for u8 {
    fn from(state: NodeState) -> u8 {
        match state {
            NodeState::Booting => 0,
            NodeState::Serving => 1,
            NodeState::Changing => 2,
            NodeState::CatchingUp => 3,
            NodeState::Outside => 4,
        }
    }
}

impl TryFrom<u8> for NodeState {
    /// The code, which no state has.
    type Error = u8;

    fn try_from(code: u8) -> Result<NodeState, u8> {
        Ok(match code {
            0 => NodeState::Booting,
            1 => NodeState::Serving,
            2 => NodeState::Changing,
            3 => NodeState::CatchingUp,
            4 => NodeState::Outside,
            other => return Err(other),
        })
    }
}

/// The state an [`AtomicNodeState`] holds: only ever a state's code.
fn decode(code: u8) -> NodeState {
    NodeState::try_from(code).unwrap_or_else(|code| unreachable!("no state has code {code}"))
}

/// Where this node stands in the cluster, as the driver last saw it.
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicNodeState,
    epoch: AtomicU64,
    members: AtomicU64,
    /// Woken when this node starts serving.
    serving: Notify,
    /// Counts the times the datalet was emptied for a state transfer, so a local read can
    /// tell whether one began while it read (see [`super::Replicator::read_locally`]).
    resets: AtomicU64,
    /// The order's clock as the driver last applied it (see `driver::Driver::order_now`).
    order_now: AtomicU64,
    /// The sequence number of the last operation applied here (or of the installed state).
    applied: AtomicU64,
    /// While a snapshot is being installed: items stored so far, and about how many it holds.
    catch_up: std::sync::Mutex<Option<(u64, u64)>>,
    /// The operator asked to form the next view from any majority (SIGUSR1).
    force_requested: AtomicBool,
    /// The latest events of this node's part in the order (views, catch-ups, failures), for
    /// the status page: at most [`EVENTS_KEPT`], oldest first.
    events: std::sync::Mutex<std::collections::VecDeque<Noted>>,
    /// A new target for the group's members, for the driver to take
    /// ([`crate::tob::Tob::set_target`]).
    target: std::sync::Mutex<Option<Vec<tailorkv_common::NodeId>>>,
    /// The view's members, by id.
    view_ids: std::sync::Mutex<Vec<tailorkv_common::NodeId>>,
    /// The view is the group's target: no member joining or leaving.
    settled: AtomicBool,
    /// This node is outside the view and not in the target: it has left the group.
    left: AtomicBool,
    /// Views this node started serving in.
    view_changes: AtomicU64,
    /// Times a member came to be suspected by this node's failure detector.
    suspicions: AtomicU64,
    /// Order messages dropped as malformed.
    rejected: AtomicU64,
    /// Batches broadcast and not yet delivered here.
    undelivered_batches: AtomicU64,
    /// Bytes of operations proposed here and not yet delivered.
    undelivered_own_bytes: AtomicU64,
}

/// How the order is doing, for metrics: see [`Health::order_figures`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderFigures {
    pub view_changes: u64,
    pub suspicions: u64,
    pub rejected: u64,
    pub undelivered_batches: u64,
    pub undelivered_own_bytes: u64,
}

/// Events a node keeps per group for its status page.
pub const EVENTS_KEPT: usize = 16;

/// An event: when (Unix milliseconds) and what.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Noted {
    pub at_ms: u64,
    pub what: String,
}

impl Health {
    /// Publishes the node's state and its view; wakes the waiters of [`Health::serving`]
    /// when the node starts serving.
    pub fn set(&self, state: NodeState, epoch: u64, members: usize) {
        let before = self.state.swap(state, Ordering::SeqCst);
        if before != state && state == NodeState::Serving {
            self.serving.notify_waiters();
        }
        self.epoch.store(epoch, Ordering::Relaxed);
        self.members.store(members as u64, Ordering::Relaxed);
    }

    /// Publishes how the order is doing (the driver, after each step; its `view_changes` is
    /// ignored, as [`Health::count_view_change`] counts them).
    pub fn set_order_figures(&self, figures: OrderFigures) {
        let OrderFigures {
            view_changes: _,
            suspicions,
            rejected,
            undelivered_batches,
            undelivered_own_bytes: own_bytes,
        } = figures;
        self.suspicions.store(suspicions, Ordering::Relaxed);
        self.rejected.store(rejected, Ordering::Relaxed);
        self.undelivered_batches
            .store(undelivered_batches, Ordering::Relaxed);
        self.undelivered_own_bytes
            .store(own_bytes, Ordering::Relaxed);
    }

    /// Counts a view this node started serving in.
    pub fn count_view_change(&self) {
        self.view_changes.fetch_add(1, Ordering::Relaxed);
    }

    /// Views served in, suspicions, and how far delivery lags.
    pub fn order_figures(&self) -> OrderFigures {
        OrderFigures {
            view_changes: self.view_changes.load(Ordering::Relaxed),
            suspicions: self.suspicions.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            undelivered_batches: self.undelivered_batches.load(Ordering::Relaxed),
            undelivered_own_bytes: self.undelivered_own_bytes.load(Ordering::Relaxed),
        }
    }

    /// Asks the driver to take `target` as the group's members.
    pub fn set_target(&self, target: Vec<tailorkv_common::NodeId>) {
        *self.target.lock().unwrap() = Some(target);
    }

    /// The target the driver has not taken yet.
    pub fn take_target(&self) -> Option<Vec<tailorkv_common::NodeId>> {
        self.target.lock().unwrap().take()
    }

    /// Publishes the view's members, whether the view is the target, and whether this node
    /// has left the group.
    pub fn set_membership(&self, view: Vec<tailorkv_common::NodeId>, settled: bool, left: bool) {
        *self.view_ids.lock().unwrap() = view;
        self.settled.store(settled, Ordering::Relaxed);
        self.left.store(left, Ordering::Relaxed);
    }

    /// The view's members.
    pub fn view_ids(&self) -> Vec<tailorkv_common::NodeId> {
        self.view_ids.lock().unwrap().clone()
    }

    /// The view is the group's target.
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
    }

    /// This node has left the group: outside its view, and not in its target.
    pub fn left(&self) -> bool {
        self.left.load(Ordering::Relaxed)
    }

    /// Marks the node as catching up and counts a reset of its datalet; called before the
    /// datalet is emptied.
    pub fn begin_reset(&self) {
        self.state.store(NodeState::CatchingUp, Ordering::SeqCst);
        self.resets.fetch_add(1, Ordering::SeqCst);
    }

    /// The node's state, as last published.
    pub fn state(&self) -> NodeState {
        self.state.load(Ordering::SeqCst)
    }

    /// Resolves once the node starts serving after this call (a change to
    /// [`NodeState::Serving`] published with [`Health::set`]).
    pub fn serving(&self) -> Notified<'_> {
        self.serving.notified()
    }

    /// How many times the datalet was emptied for a state transfer so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    /// Asks the driver to let the next view form from any majority of the nodes
    /// ([`crate::tob::Tob::force_next_view`]).
    pub fn request_force(&self) {
        self.force_requested.store(true, Ordering::SeqCst);
    }

    pub(crate) fn take_force(&self) -> bool {
        self.force_requested.swap(false, Ordering::SeqCst)
    }

    /// Records an event for the status page, dropping the oldest past [`EVENTS_KEPT`].
    pub fn note(&self, what: String) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if events.len() == EVENTS_KEPT {
            events.pop_front();
        }
        events.push_back(Noted { at_ms, what });
    }

    /// The events recorded, oldest first.
    pub fn events(&self) -> Vec<Noted> {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        events.iter().cloned().collect()
    }

    /// Records how far the snapshot being installed is (`None` once it is not).
    pub fn set_catch_up(&self, progress: Option<(u64, u64)>) {
        *self.catch_up.lock().unwrap_or_else(|e| e.into_inner()) = progress;
    }

    /// Items stored so far of the snapshot being installed, and about how many it holds.
    pub fn catch_up(&self) -> Option<(u64, u64)> {
        *self.catch_up.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sequence number the local replica has applied up to.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// Records that the local replica has applied up to `seq`.
    pub fn set_applied(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
    }

    /// The order's clock: no operation still to be applied here reads an earlier one.
    pub fn order_now(&self) -> UnixSecs {
        self.order_now.load(Ordering::Acquire)
    }

    /// Raises the order's clock to `now` (it never goes back).
    pub fn set_order_now(&self, now: UnixSecs) {
        self.order_now.fetch_max(now, Ordering::AcqRel);
    }

    /// The current view's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Relaxed)
    }

    /// How many members the current view has.
    pub fn members(&self) -> u64 {
        self.members.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [NodeState; 5] = [
        NodeState::Booting,
        NodeState::Serving,
        NodeState::Changing,
        NodeState::CatchingUp,
        NodeState::Outside,
    ];

    #[test]
    fn every_state_has_its_own_code_and_comes_back_from_it() {
        let codes: Vec<u8> = STATES.iter().map(|&s| s.into()).collect();
        for (i, &state) in STATES.iter().enumerate() {
            assert_eq!(NodeState::try_from(codes[i]), Ok(state));
            assert!(!codes[..i].contains(&codes[i]), "{state:?} shares a code");
        }
        assert_eq!(NodeState::try_from(5), Err(5));
        let atomic = AtomicNodeState::default();
        assert_eq!(atomic.load(Ordering::SeqCst), NodeState::Booting);
        for state in STATES {
            let before = atomic.load(Ordering::SeqCst);
            assert_eq!(atomic.swap(state, Ordering::SeqCst), before);
            assert_eq!(atomic.load(Ordering::SeqCst), state);
        }
    }

    #[tokio::test]
    async fn a_reset_means_catching_up_and_serving_wakes_the_waiters() {
        let health = Health::default();
        assert_eq!(health.state(), NodeState::Booting);
        health.begin_reset();
        assert_eq!(
            (health.state(), health.resets()),
            (NodeState::CatchingUp, 1)
        );
        let serving = health.serving();
        health.set(NodeState::Serving, 3, 2);
        tokio::time::timeout(std::time::Duration::from_secs(5), serving)
            .await
            .expect("woken when the node starts serving");
        assert_eq!((health.epoch(), health.members()), (3, 2));
    }
}
