//! The disk datalet's writer: one thread that applies every mutation, in batches.
//!
//! Mutations arrive on a channel. The writer takes the first one that is waiting and every
//! other one already queued behind it (up to `max_batch`), applies them in arrival order in
//! one write transaction, commits it with one fsync, and only then answers them all. So a write
//! is acknowledged only once it is on disk, and concurrent writes share an fsync (group
//! commit): the busier the store, the more writes each fsync carries. With `max_batch = 1`
//! every write pays its own fsync. Being the only writer, it also makes each mutation's
//! read-modify-write atomic and keeps per-key order.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, Table};
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::oneshot;

use super::slot::Slot;
use super::{
    unavailable, ITEMS, META, META_CLOCK, META_FLUSH_AT, META_INCOMPLETE, META_USED_BYTES,
};
use crate::mutate::{dead, decide, item_bytes, Change};
use crate::{DataletError, Mutation, Outcome};

/// One request to the writer.
pub(super) enum Op {
    Apply {
        key: Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
        reply: oneshot::Sender<Result<Outcome, DataletError>>,
    },
    Flush {
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
        reply: oneshot::Sender<Result<(), DataletError>>,
    },
    SaveClock {
        ts: Ts,
        reply: oneshot::Sender<Result<(), DataletError>>,
    },
    /// Removes the items dead at `now` (at most once a second), counted in `reclaimed`.
    Reclaim {
        now: UnixSecs,
        reply: oneshot::Sender<Result<(), DataletError>>,
    },
    /// Removes every item and the flush point; keeps the clock, and marks the store
    /// incomplete until the next `SaveClock`.
    Reset {
        reply: oneshot::Sender<Result<(), DataletError>>,
    },
}

/// What readers need to see of the writer's state, published after each commit.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub used_bytes: AtomicUsize,
    pub memory_limit: AtomicUsize,
    pub flush_at: AtomicU64,
    pub total_items: AtomicU64,
    pub reclaimed: AtomicU64,
    pub batches: AtomicU64,
}

pub(super) struct Writer {
    pub db: Arc<Database>,
    pub shared: Arc<Shared>,
    pub item_size_max: usize,
    pub max_batch: usize,
    /// Durable state, as of the last commit plus the batch being applied.
    pub used_bytes: usize,
    pub flush_at: UnixSecs,
    /// The clock reservation, raised also by the version of every mutation and flush
    /// applied, in the same transaction: never behind the state the store holds.
    pub clock: Ts,
    /// Emptied for a state transfer that has not been confirmed by a `SaveClock` since.
    pub incomplete: bool,
    pub last_reclaim: UnixSecs,
}

/// The answer to one op, sent once its batch is committed: an apply's outcome (or its own
/// error, such as running out of memory); `None` for ops that only succeed or fail.
type Answer = Result<Option<Outcome>, DataletError>;

impl Writer {
    pub fn run(mut self, ops: Receiver<Op>) {
        while let Ok(first) = ops.recv() {
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Op>) {
        let before = (self.used_bytes, self.flush_at, self.clock, self.incomplete);
        let mut new_items = 0;
        let result = self.apply_batch(&batch, &mut new_items);
        match result {
            Ok(answers) => {
                let s = &self.shared;
                s.used_bytes.store(self.used_bytes, Ordering::Release);
                s.flush_at.store(self.flush_at, Ordering::Release);
                s.total_items.fetch_add(new_items, Ordering::Relaxed);
                // Counted before any answer: a read that starts after one opens a read
                // transaction after this commit (see `DiskDatalet::read_slot`).
                s.batches.fetch_add(1, Ordering::Release);
                for (op, answer) in batch.into_iter().zip(answers) {
                    reply(op, answer);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, ops = batch.len(), "disk datalet commit failed");
                (self.used_bytes, self.flush_at, self.clock, self.incomplete) = before;
                for op in batch {
                    reply(op, Err(e.clone()));
                }
            }
        }
    }

    fn apply_batch(
        &mut self,
        batch: &[Op],
        new_items: &mut u64,
    ) -> Result<Vec<Answer>, DataletError> {
        let mut txn = self.db.begin_write().map_err(unavailable)?;
        txn.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        txn.set_quick_repair(true);
        let mut answers = Vec::with_capacity(batch.len());
        {
            let mut items = txn.open_table(ITEMS).map_err(unavailable)?;
            for op in batch {
                let answer = match op {
                    Op::Apply {
                        key,
                        mutation,
                        version,
                        now,
                        ..
                    } => {
                        let outcome = self.apply(&mut items, key, mutation, *version, *now)?;
                        self.clock = self.clock.max(version.ts);
                        if matches!(outcome, Ok(Outcome::Stored | Outcome::Number(_))) {
                            *new_items += 1;
                        }
                        outcome.map(Some)
                    }
                    Op::Flush {
                        at, now, version, ..
                    } => {
                        self.clock = self.clock.max(version.ts);
                        self.retire_flush_point(&mut items, *now)?;
                        self.flush_at = *at;
                        if at <= now {
                            items.retain(|_, _| false).map_err(unavailable)?;
                            self.used_bytes = 0;
                        }
                        Ok(None)
                    }
                    Op::SaveClock { ts, .. } => {
                        self.clock = self.clock.max(*ts);
                        self.incomplete = false;
                        Ok(None)
                    }
                    Op::Reclaim { now, .. } => self.sweep(&mut items, *now).map(|_| None),
                    Op::Reset { .. } => {
                        items.retain(|_, _| false).map_err(unavailable)?;
                        self.used_bytes = 0;
                        self.flush_at = 0;
                        self.incomplete = true;
                        Ok(None)
                    }
                };
                answers.push(answer);
            }
            let mut meta = txn.open_table(META).map_err(unavailable)?;
            meta.insert(META_USED_BYTES, self.used_bytes as u64)
                .map_err(unavailable)?;
            meta.insert(META_FLUSH_AT, self.flush_at)
                .map_err(unavailable)?;
            meta.insert(META_CLOCK, self.clock).map_err(unavailable)?;
            meta.insert(META_INCOMPLETE, u64::from(self.incomplete))
                .map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(answers)
    }

    /// Applies one mutation inside the batch's transaction. The outer `Result` is a storage
    /// failure (the whole batch fails); the inner one is this mutation's answer.
    fn apply(
        &mut self,
        items: &mut Table<&[u8], &[u8]>,
        key: &Bytes,
        mutation: &Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Result<Outcome, DataletError>, DataletError> {
        let current = match items.get(key.as_ref()).map_err(unavailable)? {
            Some(bytes) => Slot::decode(bytes.value()),
            None => None,
        };
        let old_bytes = current.as_ref().map_or(0, |s| item_bytes(key, &s.item));
        let live = current
            .as_ref()
            .filter(|s| dead(&s.item, s.stored_at, self.flush_at, now).is_none())
            .map(|s| &s.item);
        let dead_slot = current.is_some() && live.is_none();
        let (change, outcome) = decide(key, live, mutation.clone(), version, self.item_size_max);
        match change {
            Change::Put(item) => {
                let new_bytes = item_bytes(key, &item);
                if new_bytes > old_bytes && !self.fits(items, new_bytes - old_bytes, now)? {
                    return Ok(Err(DataletError::OutOfMemory));
                }
                let slot = Slot {
                    item,
                    stored_at: now,
                };
                items
                    .insert(key.as_ref(), slot.encode().as_slice())
                    .map_err(unavailable)?;
                self.used_bytes = self.used_bytes + new_bytes - old_bytes;
            }
            // A dead item is removed whatever the mutation decided.
            Change::Remove | Change::Keep if dead_slot || outcome == Outcome::Deleted => {
                items.remove(key.as_ref()).map_err(unavailable)?;
                self.used_bytes -= old_bytes;
            }
            Change::Remove | Change::Keep => {}
        }
        Ok(Ok(outcome))
    }

    /// Whether `more` bytes fit under the memory limit, after removing expired and flushed
    /// items if they do not (at most once a second).
    fn fits(
        &mut self,
        items: &mut Table<&[u8], &[u8]>,
        more: usize,
        now: UnixSecs,
    ) -> Result<bool, DataletError> {
        let limit = self.shared.memory_limit.load(Ordering::Relaxed);
        if self.used_bytes + more <= limit {
            return Ok(true);
        }
        self.sweep(items, now)?;
        Ok(self.used_bytes + more <= limit)
    }

    /// Removes every item dead at `now`, at most once a second; returns how many.
    fn sweep(
        &mut self,
        items: &mut Table<&[u8], &[u8]>,
        now: UnixSecs,
    ) -> Result<u64, DataletError> {
        if self.last_reclaim == now {
            return Ok(0);
        }
        self.last_reclaim = now;
        let (flush_at, mut freed, mut removed) = (self.flush_at, 0, 0);
        items
            .retain(|key, bytes| match Slot::decode(bytes) {
                Some(s) if dead(&s.item, s.stored_at, flush_at, now).is_some() => {
                    freed += item_bytes(key, &s.item);
                    removed += 1;
                    false
                }
                _ => true,
            })
            .map_err(unavailable)?;
        self.used_bytes -= freed;
        self.shared.reclaimed.fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }

    /// Before a flush point replaces a due one, removes what the due one flushed: a later
    /// flush point must not bring those items back (on one replica and not another).
    fn retire_flush_point(
        &mut self,
        items: &mut Table<&[u8], &[u8]>,
        now: UnixSecs,
    ) -> Result<(), DataletError> {
        let due = self.flush_at;
        if due == 0 || due > now {
            return Ok(());
        }
        let mut freed = 0;
        items
            .retain(|key, bytes| match Slot::decode(bytes) {
                Some(s) if s.stored_at <= due => {
                    freed += item_bytes(key, &s.item);
                    false
                }
                _ => true,
            })
            .map_err(unavailable)?;
        self.used_bytes -= freed;
        Ok(())
    }
}

fn reply(op: Op, answer: Answer) {
    match op {
        Op::Apply { reply, .. } => {
            let outcome = answer.map(|o| o.expect("an apply always answers with an outcome"));
            let _ = reply.send(outcome);
        }
        Op::Flush { reply, .. }
        | Op::SaveClock { reply, .. }
        | Op::Reclaim { reply, .. }
        | Op::Reset { reply } => {
            let _ = reply.send(answer.map(|_| ()));
        }
    }
}
