//! What peers send: an update is applied on this replica only if it is newer than both the
//! item and the tombstone the key holds, with `cas` (or `add`) so that a concurrent write is
//! never overwritten blindly; anti-entropy messages go on to the repairer.

use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::codec::StoreMode;
use tailorkv_common::{Expiry, NodeId, UnixSecs, Version};
use tailorkv_datalet::{Datalet, DataletError, MetaSet, Mutation, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Eventual, Message, Update};
use crate::peer::Incoming;
use crate::shard::mux::GroupInbox;

impl<D: Datalet> Eventual<D> {
    /// Takes what peers send until shutdown: applies their updates, and hands anti-entropy
    /// messages to the repairer's queue, with `None` for a gap (updates from that peer were
    /// lost: compare with it now). A message the full queue cannot take is dropped.
    pub(super) async fn take_inbox(
        self: Arc<Self>,
        mut inbox: GroupInbox<Message>,
        repairs: mpsc::Sender<(NodeId, Option<Message>)>,
        shutdown: CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                b = inbox.recv() => b,
                () = shutdown.cancelled() => return,
            };
            let Some((from, event)) = batch else { return };
            if let Some(causal) = self.causal.clone() {
                let message = match event {
                    Incoming::Message(m) => Some(m),
                    Incoming::Gap => None,
                };
                self.take_causal(&causal, from, message).await;
                continue;
            }
            let message = match event {
                Incoming::Message(
                    m @ (Message::QuorumWrite { .. }
                    | Message::QuorumAck { .. }
                    | Message::QuorumRead { .. }
                    | Message::QuorumEntry { .. }),
                ) => {
                    self.take_quorum(from, m).await;
                    continue;
                }
                Incoming::Message(Message::Updates(updates)) => {
                    self.receive_all(updates).await;
                    self.evict_to_limit().await;
                    continue;
                }
                Incoming::Message(Message::Offer) => {
                    let _ = self.link.try_send(from, Message::Ready);
                    continue;
                }
                Incoming::Message(Message::Ready) => {
                    self.ready.lock().unwrap().insert(from);
                    continue;
                }
                Incoming::Message(Message::Filled) => {
                    if self
                        .filling
                        .swap(false, std::sync::atomic::Ordering::AcqRel)
                    {
                        tracing::info!(from = from.0, "sent a whole copy of a group: serving it");
                    }
                    continue;
                }
                Incoming::Message(other) => Some(other),
                Incoming::Gap => None,
            };
            if repairs.try_send((from, message)).is_err() {
                tracing::debug!(peer = ?from, "anti-entropy busy; dropping a message");
            }
        }
    }

    pub(super) async fn receive_all(&self, updates: Vec<Update>) {
        for update in updates {
            if let Err(e) = self.receive(update).await {
                tracing::warn!(error = %e, "could not apply a peer's update");
            }
        }
    }

    /// Applies a peer's update if it is newer than what this replica holds.
    pub(super) async fn receive(&self, update: Update) -> Result<(), DataletError> {
        self.observe(update.version().ts);
        match update {
            Update::Flush { at, now, version } => {
                {
                    let mut flushed = self.flushed.lock().unwrap();
                    if flushed.as_ref().is_some_and(|f| f.version() >= version) {
                        return Ok(()); // seen already, or superseded
                    }
                    *flushed = Some(Update::Flush { at, now, version });
                }
                let _all = self.locks.lock_all().await;
                self.flush_locked(at, now, version).await
            }
            Update::Item {
                key,
                value,
                flags,
                expiry,
                version,
                marks,
            } => {
                let mutation = |mode| {
                    let (mode, compare) = match mode {
                        StoreMode::Cas(unique) => (StoreMode::Set, Some(unique)),
                        mode => (mode, None),
                    };
                    Mutation::MetaSet(MetaSet {
                        mode,
                        compare,
                        invalidate: false,
                        flags,
                        expiry,
                        value: value.clone(),
                        marks,
                    })
                };
                let _key = self.locks.lock(&key).await;
                self.replace_if_newer(&key, version, mutation).await
            }
            Update::Deleted {
                key,
                version,
                deleted_at,
            } => {
                let _key = self.locks.lock(&key).await;
                self.remember_tombstone(&key, version, deleted_at, self.clock_source.now());
                self.remove_older(&key, version).await
            }
        }
    }

    /// Removes the item under `key` if its version is not above `version`; with the key
    /// locked.
    pub(super) async fn remove_older(
        &self,
        key: &Bytes,
        version: Version,
    ) -> Result<(), DataletError> {
        loop {
            let now = self.clock_source.now();
            let Some(item) = self.datalet.get(key, now).await? else {
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
            if self.datalet.apply(key, cas, version, now).await? == Outcome::Stored {
                return Ok(());
            }
        }
    }

    /// Whether an item at `version` was flushed by a flush in effect at `now`.
    pub(super) fn flushed_out(&self, version: Version, now: UnixSecs) -> bool {
        match &*self.flushed.lock().unwrap() {
            Some(Update::Flush { at, version: f, .. }) => *at <= now && version < *f,
            _ => false,
        }
    }

    /// Whether this replica holds a tombstone for `key` at or above `version`.
    fn deleted_since(&self, key: &[u8], version: Version) -> bool {
        let tombstones = self.tombstones.lock().unwrap();
        tombstones.get(key).is_some_and(|t| t.version >= version)
    }

    /// Stores `mutation(mode)` at `version` unless the key holds a newer item or tombstone;
    /// with the key locked. Every try reads the tombstone again with the item.
    async fn replace_if_newer(
        &self,
        key: &Bytes,
        version: Version,
        mutation: impl Fn(StoreMode) -> Mutation,
    ) -> Result<(), DataletError> {
        loop {
            // An expired item is as good as absent.
            let now = self.clock_source.now();
            if self.flushed_out(version, now) || self.deleted_since(key, version) {
                return Ok(());
            }
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
                Outcome::StoredAt(_) => return Ok(()),
                // Changed meanwhile (an item expired, or the store was written behind this
                // node's back): look again.
                _ => continue,
            }
        }
    }
}
