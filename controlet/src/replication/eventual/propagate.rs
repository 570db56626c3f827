//! Propagation: local updates go to every peer in batches, without ever waiting on one.
//! What a peer's queue cannot take is kept for it as hints (per key, the highest version;
//! the latest flush first), retried every [`HINT_RETRY`] and bounded in bytes; past the
//! bound they are dropped, counted, and reported to the transport as a gap, so that the peer
//! repairs by anti-entropy at once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tailorkv_common::NodeId;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{bump, Counters, Message, Update, BATCH, HINT_RETRY, MESSAGE_BYTES};
use crate::shard::mux::GroupLink;

/// Updates one peer's queue could not take, waiting for it.
#[derive(Debug, Default)]
pub(super) struct Hints {
    /// The newest flush, sent before the updates (which it must not hide if they are newer).
    flush: Option<Update>,
    /// Per key, the highest-version update.
    updates: HashMap<Bytes, Update>,
    /// What the flush and the updates weigh ([`Update::size`]).
    bytes: usize,
    /// The peer's queue was full at the last try: until the next retry, updates go straight
    /// to the hints (trying to send them would cost a full batch of hints each time).
    blocked: bool,
    /// Hints overflowed and were dropped: until the peer's queue takes a message again, its
    /// updates are dropped too (anti-entropy carries them).
    overflowed: bool,
}

impl Hints {
    fn len(&self) -> usize {
        self.updates.len() + usize::from(self.flush.is_some())
    }

    fn is_empty(&self) -> bool {
        self.flush.is_none() && self.updates.is_empty()
    }

    /// Keeps `update` unless a newer one for the same key (or a newer flush) is kept already.
    fn keep(&mut self, update: Update) {
        match &update {
            Update::Flush { version, .. } => {
                if self.flush.as_ref().is_none_or(|f| f.version() < *version) {
                    self.bytes += update.size();
                    let old = self.flush.replace(update);
                    self.bytes -= old.map_or(0, |u| u.size());
                }
            }
            Update::Item { key, version, .. } | Update::Deleted { key, version, .. } => {
                match self.updates.get(key) {
                    Some(held) if held.version() >= *version => {}
                    _ => {
                        self.bytes += update.size();
                        let old = self.updates.insert(key.clone(), update);
                        self.bytes -= old.map_or(0, |u| u.size());
                    }
                }
            }
        }
    }

    /// Takes the next message's worth of hints: the flush first.
    fn take(&mut self) -> Vec<Update> {
        let mut batch: Vec<Update> = self.flush.take().into_iter().collect();
        let mut bytes = 0;
        let keys: Vec<Bytes> = self
            .updates
            .iter()
            .take_while(|(_, u)| {
                bytes += u.size();
                batch.len() < BATCH && bytes <= MESSAGE_BYTES
            })
            .map(|(k, _)| k.clone())
            .collect();
        // At least one, however large.
        let keys = if keys.is_empty() {
            self.updates.keys().take(1).cloned().collect()
        } else {
            keys
        };
        batch.extend(keys.iter().filter_map(|k| self.updates.remove(k)));
        self.bytes -= batch.iter().map(Update::size).sum::<usize>();
        batch
    }
}

/// Sends local updates to every peer without ever waiting for one, keeping hints.
pub(super) struct Propagator {
    pub(super) transport: GroupLink<Message>,
    /// Each peer, with the hints kept for it.
    pub(super) peers: Vec<(NodeId, Hints)>,
    /// Bytes of hints kept per peer, at most.
    pub(super) limit: usize,
    pub(super) counters: Arc<Counters>,
    /// The group's other members, as the membership changes them.
    pub(super) members: tokio::sync::watch::Receiver<Vec<NodeId>>,
}

impl Propagator {
    pub(super) async fn run(
        mut self,
        mut queue: mpsc::Receiver<Update>,
        shutdown: CancellationToken,
    ) {
        loop {
            if self.members.has_changed().unwrap_or(false) {
                let members = self.members.borrow_and_update().clone();
                let mut kept: Vec<(NodeId, Hints)> = std::mem::take(&mut self.peers)
                    .into_iter()
                    .filter(|(p, _)| members.contains(p))
                    .collect();
                for &m in &members {
                    if !kept.iter().any(|(p, _)| *p == m) {
                        kept.push((m, Hints::default()));
                    }
                }
                self.peers = kept;
            }
            let hinting = self.peers.iter().any(|(_, h)| h.blocked || !h.is_empty());
            let first = tokio::select! {
                u = queue.recv() => match u {
                    Some(u) => Some(u),
                    None => return,
                },
                () = tokio::time::sleep(HINT_RETRY), if hinting => None,
                _ = self.members.changed() => continue,
                () = shutdown.cancelled() => return,
            };
            let Some(first) = first else {
                for i in 0..self.peers.len() {
                    self.peers[i].1.blocked = false;
                    self.drain(i);
                }
                self.gauge();
                continue;
            };
            let mut bytes = first.size();
            let mut batch = vec![first];
            while batch.len() < BATCH && bytes < MESSAGE_BYTES {
                match queue.try_recv() {
                    Ok(u) => {
                        bytes += u.size();
                        batch.push(u);
                    }
                    Err(_) => break,
                }
            }
            for i in 0..self.peers.len() {
                self.deliver(i, batch.clone());
            }
            self.gauge();
        }
    }

    fn gauge(&self) {
        let pending: usize = self.peers.iter().map(|(_, h)| h.len()).sum();
        self.counters
            .hints_pending
            .store(pending as u64, Ordering::Relaxed);
    }

    /// Sends hints to peer `i` while its queue takes them; whether they are all gone.
    fn drain(&mut self, i: usize) -> bool {
        let (peer, hints) = &mut self.peers[i];
        if hints.blocked {
            return hints.is_empty();
        }
        while !hints.is_empty() {
            let batch = hints.take();
            if let Err(Message::Updates(batch)) =
                self.transport.try_send(*peer, Message::Updates(batch))
            {
                for update in batch {
                    hints.keep(update);
                }
                hints.blocked = true;
                return false;
            }
        }
        true
    }

    /// Sends `batch` to peer `i`, after its hints; keeps it as hints if its queue is full.
    fn deliver(&mut self, i: usize, batch: Vec<Update>) {
        if self.peers[i].1.blocked || !self.drain(i) {
            self.hint(i, batch);
            return;
        }
        let (peer, hints) = &mut self.peers[i];
        match self.transport.try_send(*peer, Message::Updates(batch)) {
            Ok(()) => hints.overflowed = false,
            Err(Message::Updates(batch)) => {
                hints.blocked = true;
                self.hint(i, batch);
            }
            Err(_) => unreachable!("try_send gives back the message it was given"),
        }
    }

    fn hint(&mut self, i: usize, batch: Vec<Update>) {
        let (peer, hints) = &mut self.peers[i];
        if hints.overflowed {
            bump(&self.counters.hints_dropped, batch.len());
            // The peer sees a gap here, and repairs by anti-entropy at once.
            self.transport.dropped(*peer);
            return;
        }
        bump(&self.counters.hints_queued, batch.len());
        for update in batch {
            hints.keep(update);
        }
        if hints.bytes > self.limit {
            tracing::debug!(peer = ?peer, hints = hints.len(), bytes = hints.bytes, "too many hints; dropping them");
            bump(&self.counters.hints_dropped, hints.len());
            self.transport.dropped(*peer);
            *hints = Hints {
                blocked: true,
                overflowed: true,
                ..Hints::default()
            };
        }
    }
}
