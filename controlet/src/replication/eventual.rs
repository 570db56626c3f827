//! Eventual consistency: writes applied locally, propagated in the background, and resolved
//! by version on every replica.
//!
//! # How it works
//!
//! A write is applied to the local datalet at a fresh Lamport version `(ts, this node)` and
//! acknowledged at once. The item it left (or, for a delete, a tombstone) is then queued as an
//! [`Update`] and sent to every peer in batches by a background task. A replica receiving an
//! update moves its clock past the update's timestamp and keeps whichever of the two is newer:
//! it stores the update only if its version is higher than both the item it holds and any
//! tombstone it remembers for the key, using `cas` (or `add` when the key is absent) so that a
//! concurrent local write is never overwritten blindly. Every replica thus ends with each
//! key's highest-version write, whatever order updates arrive in, once writes stop.
//!
//! Deletes leave tombstones (key, version) in memory, so an older write arriving late cannot
//! bring a deleted key back. `touch` makes a new version of the item so the new expiry
//! travels too. `flush_all` is applied on every replica when it arrives.
//!
//! Caveats: tombstones are not yet collected, and updates sent while a peer is unreachable
//! are not repaired later (hinted handoff and anti-entropy are what will do that).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Clock, Expiry, NodeId, Ts, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, Item, Mutation, Outcome};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::peer::Transport;

/// One replicated change: the item a write left, or `None` for a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Update {
    Item {
        key: Bytes,
        value: Bytes,
        flags: u32,
        expiry: Expiry,
        version: Version,
    },
    Deleted {
        key: Bytes,
        version: Version,
    },
    Flush {
        at: UnixSecs,
        now: UnixSecs,
        ts: Ts,
    },
}

impl Update {
    fn ts(&self) -> Ts {
        match self {
            Update::Item { version, .. } | Update::Deleted { version, .. } => version.ts,
            Update::Flush { ts, .. } => *ts,
        }
    }
}

/// Updates queued for the peers, at most, before writers wait.
const OUTGOING_QUEUE: usize = 64 * 1024;
/// Updates sent in one peer message, at most.
const BATCH: usize = 512;

/// The eventual-consistency side of a node: applies local writes, propagates them, and
/// applies its peers' updates.
pub struct Eventual<D> {
    datalet: Arc<D>,
    clock_source: Arc<dyn Clock>,
    me: NodeId,
    /// The Lamport clock: the last timestamp issued or seen.
    clock: std::sync::atomic::AtomicU64,
    tombstones: Mutex<HashMap<Bytes, Version>>,
    outgoing: mpsc::Sender<Update>,
}

impl<D: Datalet> Eventual<D> {
    /// Starts propagating to `peers` and receiving on `listener`.
    pub fn start(
        me: NodeId,
        datalet: Arc<D>,
        clock_source: Arc<dyn Clock>,
        listener: TcpListener,
        peers: &[(NodeId, SocketAddr)],
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let (transport, mut inbox) =
            Transport::<Vec<Update>>::start(me, listener, peers, shutdown.clone());
        let (outgoing, queue) = mpsc::channel(OUTGOING_QUEUE);
        let node = Arc::new(Eventual {
            datalet,
            clock_source,
            me,
            clock: Default::default(),
            tombstones: Mutex::new(HashMap::new()),
            outgoing,
        });
        let targets: Vec<NodeId> = peers.iter().map(|&(id, _)| id).collect();
        tokio::spawn(propagate(queue, transport, targets, shutdown.clone()));
        let receiver = Arc::clone(&node);
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    b = inbox.recv() => b,
                    () = shutdown.cancelled() => return,
                };
                let Some((_, updates)) = batch else { return };
                for update in updates {
                    if let Err(e) = receiver.receive(update).await {
                        tracing::warn!(error = %e, "could not apply a peer's update");
                    }
                }
            }
        });
        node
    }

    fn next_version(&self) -> Version {
        use std::sync::atomic::Ordering;
        let ts = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        Version::new(ts, self.me)
    }

    fn observe(&self, ts: Ts) {
        self.clock
            .fetch_max(ts, std::sync::atomic::Ordering::AcqRel);
    }

    /// Applies a client's mutation locally, then queues what it left for the peers.
    pub async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        let mutation = match mutation {
            Mutation::Touch { expiry } => return self.touch(key, expiry, now).await,
            other => other,
        };
        let is_delete = mutation == Mutation::Delete;
        let version = self.next_version();
        let outcome = self.datalet.apply(key, mutation, version, now).await?;
        if is_delete {
            if outcome == Outcome::Deleted {
                self.tombstones.lock().unwrap().insert(key.clone(), version);
                self.send(Update::Deleted {
                    key: key.clone(),
                    version,
                })
                .await;
            }
        } else if let Some(item) = self.datalet.get(key, now).await? {
            self.send(item_update(key, item)).await;
        }
        Ok(outcome)
    }

    /// `touch` as a new version of the item, so that the new expiry propagates.
    async fn touch(
        &self,
        key: &Bytes,
        expiry: Expiry,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        loop {
            let Some(item) = self.datalet.get(key, now).await? else {
                return Ok(Outcome::NotFound);
            };
            let mutation = Mutation::Store {
                mode: StoreMode::Cas(item.version.cas()),
                flags: item.flags,
                expiry,
                value: item.value.clone(),
            };
            let version = self.next_version();
            if self.datalet.apply(key, mutation, version, now).await? == Outcome::Stored {
                let touched = Item {
                    expiry,
                    version,
                    ..item
                };
                self.send(item_update(key, touched.clone())).await;
                return Ok(Outcome::Touched(touched));
            }
        }
    }

    pub async fn flush(&self, at: UnixSecs, now: UnixSecs) -> Result<(), DataletError> {
        self.datalet.flush_all(at, now).await?;
        let ts = self.next_version().ts;
        self.send(Update::Flush { at, now, ts }).await;
        Ok(())
    }

    async fn send(&self, update: Update) {
        // Fails only at shutdown.
        let _ = self.outgoing.send(update).await;
    }

    /// Applies a peer's update if it is newer than what this replica holds.
    async fn receive(&self, update: Update) -> Result<(), DataletError> {
        self.observe(update.ts());
        match update {
            Update::Flush { at, now, .. } => self.datalet.flush_all(at, now).await,
            Update::Item {
                key,
                value,
                flags,
                expiry,
                version,
            } => {
                let mutation = |mode| Mutation::Store {
                    mode,
                    flags,
                    expiry,
                    value: value.clone(),
                };
                self.replace_if_newer(&key, version, mutation).await
            }
            Update::Deleted { key, version } => {
                self.tombstones
                    .lock()
                    .unwrap()
                    .entry(key.clone())
                    .and_modify(|v| *v = (*v).max(version))
                    .or_insert(version);
                loop {
                    let now = self.clock_source.now();
                    let Some(item) = self.datalet.get(&key, now).await? else {
                        return Ok(());
                    };
                    if item.version > version {
                        return Ok(());
                    }
                    let cas = Mutation::Store {
                        mode: StoreMode::Cas(item.version.cas()),
                        flags: 0,
                        expiry: Expiry::At(0),
                        value: Bytes::new(),
                    };
                    // Storing an already-expired item removes it, version-checked by cas.
                    if self.datalet.apply(&key, cas, version, now).await? == Outcome::Stored {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Stores `mutation(mode)` at `version` unless the key holds a newer item or tombstone.
    async fn replace_if_newer(
        &self,
        key: &Bytes,
        version: Version,
        mutation: impl Fn(StoreMode) -> Mutation,
    ) -> Result<(), DataletError> {
        let tombstone = self.tombstones.lock().unwrap().get(key).copied();
        if tombstone.is_some_and(|t| t >= version) {
            return Ok(());
        }
        loop {
            // An expired item is as good as absent.
            let now = self.clock_source.now();
            let mode = match self.datalet.get(key, now).await? {
                Some(item) if item.version >= version => return Ok(()),
                Some(item) => StoreMode::Cas(item.version.cas()),
                None => StoreMode::Add,
            };
            match self
                .datalet
                .apply(key, mutation(mode), version, now)
                .await?
            {
                Outcome::Stored => return Ok(()),
                _ => continue, // a concurrent write got there first: look again
            }
        }
    }
}

fn item_update(key: &Bytes, item: Item) -> Update {
    Update::Item {
        key: key.clone(),
        value: item.value,
        flags: item.flags,
        expiry: item.expiry,
        version: item.version,
    }
}

/// Sends queued updates to every peer, in batches.
async fn propagate(
    mut queue: mpsc::Receiver<Update>,
    transport: Transport<Vec<Update>>,
    peers: Vec<NodeId>,
    shutdown: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            u = queue.recv() => u,
            () = shutdown.cancelled() => return,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        for &peer in &peers {
            transport.send(peer, batch.clone()).await;
        }
    }
}
