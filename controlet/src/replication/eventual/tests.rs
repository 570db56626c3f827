//! The eventual mode: a delete racing a peer's older update, interleaved by hand.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Clock, Expiry, NodeId, SystemClock, Ts, Version};
use tailorkv_datalet::{
    Datalet, DataletError, DataletStats, Item, Limits, MemoryDatalet, Mutation, Outcome,
};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::*;

/// Where a [`Gated`] datalet stops an `apply`: before it acts, or after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    Before,
    After,
}

/// Where to stop, and which mutation to stop.
type Trap = (At, fn(&Mutation) -> bool);

/// A memory datalet that stops the first `apply` matching a trap until the test releases it,
/// so that a test can run another operation at that exact point.
struct Gated {
    inner: MemoryDatalet,
    trap: Mutex<Option<Trap>>,
    /// Notified when an `apply` stops at the trap.
    reached: Notify,
    /// Lets it go on.
    release: Notify,
}

impl Gated {
    fn new() -> Self {
        Gated {
            inner: MemoryDatalet::new(Limits::default()),
            trap: Mutex::new(None),
            reached: Notify::new(),
            release: Notify::new(),
        }
    }

    /// Stops the next `apply` of a mutation that `hits` at `at`.
    fn arm(&self, at: At, hits: fn(&Mutation) -> bool) {
        *self.trap.lock().unwrap() = Some((at, hits));
    }

    /// Where this `apply` must stop, if it is the one the trap waits for.
    fn trapped(&self, mutation: &Mutation) -> Option<At> {
        let mut trap = self.trap.lock().unwrap();
        match *trap {
            Some((at, hits)) if hits(mutation) => {
                *trap = None;
                Some(at)
            }
            _ => None,
        }
    }

    async fn stop(&self) {
        self.reached.notify_one();
        self.release.notified().await;
    }
}

impl Datalet for Gated {
    async fn get(&self, key: &[u8], now: u64) -> Result<Option<Item>, DataletError> {
        self.inner.get(key, now).await
    }

    async fn scan(&self, now: u64) -> Result<Vec<(Bytes, Item)>, DataletError> {
        self.inner.scan(now).await
    }

    async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: u64,
    ) -> Result<Outcome, DataletError> {
        let at = self.trapped(&mutation);
        if at == Some(At::Before) {
            self.stop().await;
        }
        let outcome = self.inner.apply(key, mutation, version, now).await;
        if at == Some(At::After) {
            self.stop().await;
        }
        outcome
    }

    async fn flush_all(&self, at: u64, now: u64, version: Version) -> Result<(), DataletError> {
        self.inner.flush_all(at, now, version).await
    }

    async fn reset(&self) -> Result<(), DataletError> {
        self.inner.reset().await
    }

    async fn load_clock(&self) -> Result<Ts, DataletError> {
        self.inner.load_clock().await
    }

    async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
        self.inner.save_clock(ts).await
    }

    fn set_memory_limit(&self, bytes: usize) {
        self.inner.set_memory_limit(bytes)
    }

    fn stats(&self) -> DataletStats {
        self.inner.stats()
    }
}

/// An eventual node 1 on `datalet`, alone: the test hands it its peers' updates itself.
async fn alone(datalet: Arc<Gated>) -> (Arc<Eventual<Gated>>, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = CancellationToken::new();
    let node = Eventual::start_with(
        NodeId(1),
        datalet,
        Arc::new(SystemClock),
        listener,
        &[],
        shutdown.clone(),
        EventualOptions::default(),
    );
    (node, shutdown)
}

fn wall() -> u64 {
    SystemClock.now()
}

fn set(value: &'static str) -> Mutation {
    Mutation::Store {
        mode: StoreMode::Set,
        flags: 0,
        expiry: Expiry::Never,
        value: Bytes::from_static(value.as_bytes()),
    }
}

/// A peer's write of `key` at `version`.
fn peer_item(key: &Bytes, version: Version) -> Update {
    Update::Item {
        key: key.clone(),
        value: Bytes::from_static(b"peer"),
        flags: 0,
        expiry: Expiry::Never,
        version,
        marks: tailorkv_datalet::Marks::default(),
    }
}

fn is_delete(m: &Mutation) -> bool {
    *m == Mutation::Delete
}

/// A store conditional on the item's CAS unique: how a peer's newer item replaces an older
/// one (whole, marks included).
fn is_cas(m: &Mutation) -> bool {
    matches!(m, Mutation::MetaSet(set) if set.compare.is_some())
}

/// Lets every other task on this (single) thread run until it finishes or waits.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// A client deletes a key here while a peer's write of it, made before the delete (an older
/// version), arrives between the item's removal and the end of the delete. The delete wins on
/// every other replica, so it must win here too.
#[tokio::test(flavor = "current_thread")]
async fn an_older_update_arriving_during_a_delete_does_not_bring_the_key_back() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    let key = Bytes::from_static(b"k");
    node.apply(&key, set("v0"), wall()).await.unwrap();
    let v0 = datalet.get(&key, wall()).await.unwrap().unwrap().version;
    datalet.arm(At::After, is_delete);
    let deleting = tokio::spawn({
        let (node, key) = (node.clone(), key.clone());
        async move { node.apply(&key, Mutation::Delete, wall()).await }
    });
    // The item is gone; the delete has not returned. Now a write made on node 2 before the
    // delete arrives: above v0, below the delete's version.
    datalet.reached.notified().await;
    let older = peer_item(&key, Version::new(v0.ts, NodeId(2)));
    let receiving = tokio::spawn({
        let node = node.clone();
        async move { node.receive(older).await }
    });
    settle().await;
    datalet.release.notify_one();
    assert_eq!(deleting.await.unwrap(), Ok(Outcome::Deleted));
    receiving.await.unwrap().unwrap();
    assert_eq!(
        datalet.get(&key, wall()).await.unwrap(),
        None,
        "the older write came back after the delete"
    );
    assert_eq!(node.tombstones(), 1);
    shutdown.cancel();
}

/// A peer's update has read the item and is about to replace it (`cas`) when a client deletes
/// the key: the `cas` fails, and the update, retrying, must see the delete's tombstone.
#[tokio::test(flavor = "current_thread")]
async fn an_update_retrying_its_store_honours_a_local_delete_made_meanwhile() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    let key = Bytes::from_static(b"k");
    node.apply(&key, set("v0"), wall()).await.unwrap();
    let v0 = datalet.get(&key, wall()).await.unwrap().unwrap().version;
    datalet.arm(At::Before, is_cas);
    // Above v0, below any version node 1 issues from now on.
    let update = peer_item(&key, Version::new(v0.ts, NodeId(2)));
    let receiving = tokio::spawn({
        let node = node.clone();
        async move { node.receive(update).await }
    });
    // It read v0 and is about to cas it.
    datalet.reached.notified().await;
    let deleting = tokio::spawn({
        let (node, key) = (node.clone(), key.clone());
        async move { node.apply(&key, Mutation::Delete, wall()).await }
    });
    settle().await;
    datalet.release.notify_one();
    receiving.await.unwrap().unwrap();
    assert_eq!(deleting.await.unwrap(), Ok(Outcome::Deleted));
    assert_eq!(
        datalet.get(&key, wall()).await.unwrap(),
        None,
        "the update outlived a newer delete"
    );
    assert_eq!(node.tombstones(), 1);
    shutdown.cancel();
}

/// The same with the delete coming from a third peer (anti-entropy applies repairs while the
/// inbox applies updates, so two peers' updates of one key can interleave).
#[tokio::test(flavor = "current_thread")]
async fn an_update_retrying_its_store_honours_a_peer_delete_received_meanwhile() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    let key = Bytes::from_static(b"k");
    node.apply(&key, set("v0"), wall()).await.unwrap();
    let v0 = datalet.get(&key, wall()).await.unwrap().unwrap().version;
    datalet.arm(At::Before, is_cas);
    let update = peer_item(&key, Version::new(v0.ts, NodeId(2)));
    let receiving = tokio::spawn({
        let node = node.clone();
        async move { node.receive(update).await }
    });
    datalet.reached.notified().await;
    let delete = Update::Deleted {
        key: key.clone(),
        version: Version::new(v0.ts + 1, NodeId(3)),
        deleted_at: wall(),
    };
    let deleting = tokio::spawn({
        let node = node.clone();
        async move { node.receive(delete).await }
    });
    settle().await;
    datalet.release.notify_one();
    receiving.await.unwrap().unwrap();
    deleting.await.unwrap().unwrap();
    assert_eq!(
        datalet.get(&key, wall()).await.unwrap(),
        None,
        "the update outlived a newer delete"
    );
    shutdown.cancel();
}

/// A replica holding a tombstone and, under the same key, an item it supersedes (as the races
/// above could leave, or a store changed behind the node's back) must not keep serving the
/// item while its anti-entropy digest says deleted: taking a snapshot removes it.
#[tokio::test(flavor = "current_thread")]
async fn a_snapshot_removes_an_item_its_tombstone_shadows() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    let deleted_at = Version::new(1000, NodeId(2));
    let cases = [
        ("older", Version::new(999, NodeId(3)), true),
        ("tie", deleted_at, true),
        ("newer", Version::new(1001, NodeId(3)), false),
    ];
    for (key, version, _) in cases {
        let key = Bytes::from_static(key.as_bytes());
        let delete = Update::Deleted {
            key: key.clone(),
            version: deleted_at,
            deleted_at: wall(),
        };
        node.receive(delete).await.unwrap();
        // Behind the node's back.
        let stored = datalet.apply(&key, set("item"), version, wall()).await;
        assert_eq!(stored, Ok(Outcome::Stored));
    }
    let snapshot = node.snapshot().await.unwrap();
    for (key, version, shadowed) in cases {
        let entry = snapshot.get(key.as_bytes()).unwrap();
        let item = datalet.get(key.as_bytes(), wall()).await.unwrap();
        if shadowed {
            assert_eq!(
                (entry.version, entry.tombstone),
                (deleted_at, true),
                "{key}"
            );
            assert_eq!(item, None, "{key}: a shadowed item stayed");
        } else {
            assert_eq!((entry.version, entry.tombstone), (version, false), "{key}");
            assert_eq!(item.map(|i| i.version), Some(version), "{key}");
        }
    }
    shutdown.cancel();
}

/// A peer's `flush_all` removes what this replica held before it (older versions), and only
/// that: a write made here after it in version order (the node's clock had passed the flush's
/// version) survives it, as it does on the node that made the flush.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_flush_removes_older_items_and_keeps_newer_ones() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    let old = Bytes::from_static(b"old");
    let new = Bytes::from_static(b"new");
    node.apply(&old, set("before"), wall()).await.unwrap();
    let before = datalet.get(&old, wall()).await.unwrap().unwrap().version;
    // Node 2 flushed just above `before`; this node then wrote `new` above that.
    let flush_version = Version::new(before.ts + 1, NodeId(2));
    node.observe(flush_version.ts);
    node.apply(&new, set("after"), wall()).await.unwrap();
    let after = datalet.get(&new, wall()).await.unwrap().unwrap().version;
    assert!(after > flush_version);
    let now = wall();
    let flush = Update::Flush {
        at: now - 1,
        now,
        version: flush_version,
    };
    node.receive(flush).await.unwrap();
    assert_eq!(
        datalet.get(&old, wall()).await.unwrap(),
        None,
        "the flush missed an older item"
    );
    let kept = datalet.get(&new, wall()).await.unwrap();
    assert_eq!(
        kept.map(|i| i.version),
        Some(after),
        "the flush took a newer write"
    );
    // An older item arriving after the flush stays out.
    let late = peer_item(
        &Bytes::from_static(b"late"),
        Version::new(before.ts, NodeId(3)),
    );
    node.receive(late).await.unwrap();
    assert_eq!(datalet.get(b"late", wall()).await.unwrap(), None);
    shutdown.cancel();
}

/// A client's `flush_all` here removes everything stored before it, and a write that took its
/// version after the flush's survives; the peers are told the flush's version.
#[tokio::test(flavor = "current_thread")]
async fn a_local_flush_removes_every_older_item() {
    let datalet = Arc::new(Gated::new());
    let (node, shutdown) = alone(datalet.clone()).await;
    for k in ["a", "b", "c"] {
        node.apply(&Bytes::from(k), set("v"), wall()).await.unwrap();
    }
    let now = wall();
    node.flush(now - 1, now).await.unwrap();
    for k in ["a", "b", "c"] {
        assert_eq!(
            datalet.get(k.as_bytes(), wall()).await.unwrap(),
            None,
            "{k}"
        );
    }
    node.apply(&Bytes::from_static(b"d"), set("v"), wall())
        .await
        .unwrap();
    assert!(datalet.get(b"d", wall()).await.unwrap().is_some());
    shutdown.cancel();
}
