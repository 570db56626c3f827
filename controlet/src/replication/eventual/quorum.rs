//! Read and write quorums in the eventual mode (Dynamo's N, R and W): with
//! `--write-quorum W`, a client's write is acknowledged once W replicas of its group (this
//! one included) hold it; with `--read-quorum R`, a read asks R replicas, takes the newest
//! entry any of them holds, and repairs those that answered older (read repair). N is the
//! group's size (`--replicas`). With R + W > N, every read quorum meets every write quorum,
//! so a read never misses a write acknowledged before it began, whichever N - W replicas
//! are down.
//!
//! Writes sent for a quorum carry the key's *version vector* (per node, how many of the
//! key's writes it coordinated that the writer had seen). A replica keeps the vector of
//! each key's entry and compares: an update whose vector neither descends from nor precedes
//! the one held is a conflict: concurrent writes. The winner is the one with the higher
//! version, as always (so every replica picks the same), the conflict is counted
//! (`eventual_conflicts`), and the vectors are joined, so a later write through any replica
//! that saw the winner supersedes both.
//!
//! A replica a quorum write cannot reach gets the update later, from the hints and
//! anti-entropy every eventual write has. A quorum that does not answer within
//! [`QUORUM_TIMEOUT`] is refused: `SERVER_ERROR`, the write stored where it reached (it may
//! still spread; the client cannot know), the read not served.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tailorkv_common::NodeId;
use tailorkv_datalet::Datalet;
use tokio::sync::mpsc;

use super::{Eventual, Message, Update};
use crate::error::Error;

/// How long a quorum may take to answer before the request is refused.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a quorum write waits for a member that is up before a node outside the group
/// stands in for it (a member that is down is stood in for at once).
pub const SLOPPY_AFTER: Duration = Duration::from_millis(150);
/// The refusal of a write whose quorum did not answer in time.
pub const WRITE_QUORUM_FAILED: &str =
    "write quorum not reached: stored on fewer replicas than --write-quorum asks (it may still spread)";
/// The refusal of a read whose quorum did not answer in time.
pub const READ_QUORUM_FAILED: &str =
    "read quorum not reached: fewer replicas answered than --read-quorum asks";

/// Per node, how many of a key's writes it coordinated that this entry has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// Whether this has seen everything `other` has.
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .0
            .iter()
            .all(|(n, &c)| self.0.get(n).copied().unwrap_or(0) >= c)
    }

    pub fn join(&mut self, other: &VersionVector) {
        for (&n, &c) in &other.0 {
            let at = self.0.entry(n).or_insert(0);
            *at = (*at).max(c);
        }
    }

    fn bump(&mut self, node: NodeId) {
        *self.0.entry(node).or_insert(0) += 1;
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An answer to a quorum request: the peer, and for a read, the entry it holds.
type Answer = (NodeId, Option<Update>);

/// A request waiting for answers; dropping it (done, timed out, or its client gone) stops
/// taking them.
struct Open<'a> {
    quorums: &'a Quorums,
    id: u64,
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.quorums.close(self.id);
    }
}

/// How updates received with a vector compare with the entry held.
#[derive(Debug, PartialEq, Eq)]
pub enum Compared {
    /// It descends from what is held (or nothing is held).
    Newer,
    /// What is held descends from it.
    Older,
    /// Neither: concurrent writes.
    Conflict,
}

/// The quorum side of an eventual node: its settings, requests waiting for answers, and
/// the version vectors of the keys written through quorums.
#[derive(Debug)]
pub struct Quorums {
    pub read: usize,
    pub write: usize,
    next_id: AtomicU64,
    /// Requests waiting for answers, by id: each answer is a peer and, for a read, what it
    /// holds.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Answer>>>,
    clocks: Mutex<HashMap<Bytes, VersionVector>>,
    conflicts: AtomicU64,
    read_repairs: AtomicU64,
    refused: AtomicU64,
    stood_in: AtomicU64,
}

impl Quorums {
    pub fn new(read: usize, write: usize) -> Self {
        Quorums {
            read: read.max(1),
            write: write.max(1),
            // Ids of this run only: an answer to a request of an earlier run of this node,
            // arriving late, matches nothing.
            next_id: AtomicU64::new(crate::peer::new_session()),
            waiting: Mutex::default(),
            clocks: Mutex::default(),
            conflicts: AtomicU64::new(0),
            read_repairs: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            stood_in: AtomicU64::new(0),
        }
    }

    /// A new request: its id and where its answers arrive (until the [`Open`] is dropped).
    fn open(&self) -> (Open<'_>, mpsc::UnboundedReceiver<Answer>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        self.waiting.lock().unwrap().insert(id, tx);
        (Open { quorums: self, id }, rx)
    }

    fn close(&self, id: u64) {
        self.waiting.lock().unwrap().remove(&id);
    }

    /// An answer to request `id` from `from`.
    pub fn answer(&self, id: u64, from: NodeId, entry: Option<Update>) {
        if let Some(tx) = self.waiting.lock().unwrap().get(&id) {
            let _ = tx.send((from, entry));
        }
    }

    /// The vector of a new write of `key` coordinated by `me`.
    pub fn next_clock(&self, key: &Bytes, me: NodeId) -> VersionVector {
        let mut clocks = self.clocks.lock().unwrap();
        let clock = clocks.entry(key.clone()).or_default();
        clock.bump(me);
        clock.clone()
    }

    /// Compares `incoming` with the vector held for `key` and keeps their join.
    pub fn compare(&self, key: &Bytes, incoming: &VersionVector) -> Compared {
        let mut clocks = self.clocks.lock().unwrap();
        let held = clocks.entry(key.clone()).or_default();
        let compared = if incoming.descends(held) {
            Compared::Newer
        } else if held.descends(incoming) {
            Compared::Older
        } else {
            self.conflicts.fetch_add(1, Ordering::Relaxed);
            Compared::Conflict
        };
        held.join(incoming);
        compared
    }

    /// Concurrent writes found (each counted on the replica that found it).
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Replicas sent a newer entry after answering a read with an older one.
    pub fn read_repairs(&self) -> u64 {
        self.read_repairs.load(Ordering::Relaxed)
    }

    /// Reads and writes refused for want of a quorum.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Writes given to a stand-in to hold for a member that did not answer (one per member).
    pub fn stood_in(&self) -> u64 {
        self.stood_in.load(Ordering::Relaxed)
    }
}

impl<D: Datalet> Eventual<D> {
    /// The quorum settings, when R or W is above 1.
    pub fn quorums(&self) -> Option<&Quorums> {
        self.quorums.as_ref()
    }

    /// Sends `update` (a client's write, applied here) to every other replica and waits
    /// until `W - 1` of them hold it. A peer whose queue cannot take it gets it from the
    /// hints.
    pub(super) async fn write_quorum(&self, key: &Bytes, update: Update) -> Result<(), Error> {
        let Some(q) = &self.quorums else {
            self.send(update).await;
            return Ok(());
        };
        let clock = q.next_clock(key, self.me);
        let need = q.write - 1;
        let (open, mut answers) = q.open();
        let id = open.id;
        let peers = self.peers.borrow().clone();
        let write = || Message::QuorumWrite {
            id,
            update: update.clone(),
            clock: clock.clone(),
        };
        let mut missed = false;
        for &peer in &peers {
            missed |= self.link.try_send(peer, write()).is_err();
        }
        if missed {
            // The propagator keeps it for the peers whose queue was full.
            self.send(update.clone()).await;
        }
        // Sloppy quorum: a member that is down, or has not answered after SLOPPY_AFTER, is
        // stood in for by the next node outside the group that this node can reach (the
        // nodes in turn, one holding for several members when there are fewer of them; the
        // quorum counts each node once).
        let stand_ins = self.stand_ins();
        let mut turn = 0;
        let mut stood_in = std::collections::BTreeSet::new();
        let mut stand_in_for =
            |owner: NodeId, stood_in: &mut std::collections::BTreeSet<NodeId>| {
                if stood_in.contains(&owner) || stand_ins.is_empty() {
                    return;
                }
                let s = stand_ins[turn % stand_ins.len()];
                turn += 1;
                if self
                    .link
                    .hold(s, owner, write(), Message::QuorumAck { id })
                    .is_ok()
                {
                    stood_in.insert(owner);
                    q.stood_in.fetch_add(1, Ordering::Relaxed);
                }
            };
        // Members that are down are stood in for at once, if those that are up are too few.
        let up = peers.iter().filter(|&&p| self.link.is_up(p)).count();
        if up < need {
            for &peer in &peers {
                if !self.link.is_up(peer) {
                    stand_in_for(peer, &mut stood_in);
                }
            }
        }
        let started = tokio::time::Instant::now();
        let mut acked = std::collections::BTreeSet::new();
        let mut sloppy = false;
        let reached = loop {
            if acked.len() >= need {
                break true;
            }
            let wake = started + if sloppy { QUORUM_TIMEOUT } else { SLOPPY_AFTER };
            match tokio::time::timeout_at(wake, answers.recv()).await {
                Ok(Some((from, _))) => {
                    acked.insert(from);
                }
                Ok(None) => break false,
                Err(_) if !sloppy => {
                    sloppy = true;
                    for &peer in peers.iter().filter(|p| !acked.contains(*p)) {
                        stand_in_for(peer, &mut stood_in);
                    }
                }
                Err(_) => break false,
            }
        };
        drop(open);
        if reached {
            Ok(())
        } else {
            q.refused.fetch_add(1, Ordering::Relaxed);
            Err(Error::Refused(WRITE_QUORUM_FAILED))
        }
    }

    /// Nodes outside the group this node can reach, in the order they stand in for its
    /// members: on the ring of node ids, the nodes after the group's highest-numbered member.
    fn stand_ins(&self) -> Vec<NodeId> {
        let group: Vec<NodeId> = self.target.lock().unwrap().clone();
        let top = group.iter().map(|n| n.0).max().unwrap_or(0);
        let mut outside: Vec<NodeId> = self
            .link
            .nodes()
            .into_iter()
            .filter(|n| !group.contains(n) && self.link.is_up(*n))
            .collect();
        outside.sort_by_key(|n| n.0.wrapping_sub(top).wrapping_sub(1));
        outside
    }

    /// Before a read of `key` with R above 1: asks every other replica what it holds for the
    /// key, waits for `R - 1` answers, stores the newest here if it is newer, and sends it to
    /// the replicas that answered older (read repair). The read is then served from this
    /// replica.
    pub async fn read_quorum(&self, key: &[u8]) -> Result<(), Error> {
        let Some(q) = &self.quorums else {
            return Ok(());
        };
        if q.read <= 1 {
            return Ok(());
        }
        let key = &Bytes::copy_from_slice(key);
        let need = q.read - 1;
        let (open, mut answers) = q.open();
        let id = open.id;
        let peers = self.peers.borrow().clone();
        for &peer in &peers {
            let _ = self.link.try_send(
                peer,
                Message::QuorumRead {
                    id,
                    key: key.clone(),
                },
            );
        }
        let got = tokio::time::timeout(QUORUM_TIMEOUT, async {
            let mut got = Vec::with_capacity(need);
            while got.len() < need {
                match answers.recv().await {
                    Some(answer) => got.push(answer),
                    None => break,
                }
            }
            got
        })
        .await
        .unwrap_or_default();
        drop(open);
        if got.len() < need {
            q.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Error::Refused(READ_QUORUM_FAILED));
        }
        let mine = self.current(key).await?;
        let newest = got
            .iter()
            .filter_map(|(_, entry)| entry.as_ref())
            .chain(mine.as_ref())
            .max_by_key(|u| u.version())
            .cloned();
        let Some(newest) = newest else {
            return Ok(());
        };
        if mine.as_ref().is_none_or(|m| m.version() < newest.version()) {
            self.receive(newest.clone()).await?;
        }
        for (peer, entry) in &got {
            if entry
                .as_ref()
                .is_none_or(|e| e.version() < newest.version())
            {
                q.read_repairs.fetch_add(1, Ordering::Relaxed);
                let _ = self
                    .link
                    .try_send(*peer, Message::Updates(vec![newest.clone()]));
            }
        }
        Ok(())
    }

    /// A quorum message from `from`.
    pub(super) async fn take_quorum(&self, from: NodeId, message: Message) {
        match message {
            Message::QuorumWrite { id, update, clock } => {
                if let (Some(q), Some(key)) = (&self.quorums, update.key()) {
                    q.compare(key, &clock);
                }
                match self.receive(update).await {
                    Ok(()) => {
                        let _ = self.link.try_send(from, Message::QuorumAck { id });
                    }
                    Err(e) => tracing::warn!(error = %e, "could not apply a quorum write"),
                }
            }
            Message::QuorumAck { id } => {
                if let Some(q) = &self.quorums {
                    q.answer(id, from, None);
                }
            }
            Message::QuorumRead { id, key } => match self.current(&key).await {
                Ok(entry) => {
                    let _ = self.link.try_send(from, Message::QuorumEntry { id, entry });
                }
                Err(e) => tracing::warn!(error = %e, "could not read an entry for a quorum"),
            },
            Message::QuorumEntry { id, entry } => {
                if let Some(q) = &self.quorums {
                    q.answer(id, from, entry);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(u16, u64)]) -> VersionVector {
        VersionVector(entries.iter().map(|&(n, c)| (NodeId(n), c)).collect())
    }

    #[test]
    fn vectors_tell_descendants_from_concurrent_writes() {
        let q = Quorums::new(2, 2);
        let key = Bytes::from_static(b"k");
        assert_eq!(q.compare(&key, &vv(&[(1, 1)])), Compared::Newer);
        assert_eq!(q.compare(&key, &vv(&[(1, 2)])), Compared::Newer);
        assert_eq!(q.compare(&key, &vv(&[(1, 1)])), Compared::Older);
        assert_eq!(q.conflicts(), 0);
        // Node 2 wrote without seeing node 1's writes: concurrent.
        assert_eq!(q.compare(&key, &vv(&[(2, 1)])), Compared::Conflict);
        assert_eq!(q.conflicts(), 1);
        // The join is held: a write that saw both supersedes them.
        assert_eq!(q.compare(&key, &vv(&[(1, 1), (2, 1)])), Compared::Older);
        assert_eq!(q.compare(&key, &vv(&[(1, 3), (2, 1)])), Compared::Newer);
        // A write coordinated here counts on what is held.
        assert_eq!(q.next_clock(&key, NodeId(2)), vv(&[(1, 3), (2, 2)]));
        assert_eq!(q.conflicts(), 1);
    }

    #[tokio::test]
    async fn answers_reach_their_request_only() {
        let q = Quorums::new(2, 2);
        let (a, mut ra) = q.open();
        let (b, mut rb) = q.open();
        let (ia, ib) = (a.id, b.id);
        q.answer(ia, NodeId(2), None);
        q.answer(ib, NodeId(3), None);
        q.answer(ib + 99, NodeId(3), None);
        assert_eq!(ra.recv().await.unwrap().0, NodeId(2));
        assert_eq!(rb.recv().await.unwrap().0, NodeId(3));
        drop(a);
        q.answer(ia, NodeId(3), None);
        assert!(ra.try_recv().is_err());
        assert_eq!(q.waiting.lock().unwrap().len(), 1);
        drop(b);
        assert!(q.waiting.lock().unwrap().is_empty());
    }
}
