//! The disk datalet's writer: one thread that applies every mutation, in batches.
//!
//! Mutations arrive on a channel. The writer takes the first one that is waiting and every
//! other one already queued behind it (up to `max_batch`), decides them in arrival order,
//! appends what the batch changed to the write-ahead log ([`super::wal`]) as one record, syncs
//! it (one fsync), and only then publishes the changes to readers and answers the batch. So a
//! write is acknowledged only once it is on disk, and concurrent writes share an fsync (group
//! commit): the busier the store, the more writes each fsync carries. With `max_batch = 1`
//! every write pays its own fsync. Being the only writer, it also makes each mutation's
//! read-modify-write atomic and keeps per-key order.
//!
//! Logged changes live in memory (the *overlay*, which readers consult first) until a
//! *checkpoint* writes them all into the B-tree in one transaction and empties the log: once
//! the overlay holds [`CHECKPOINT_KEYS`] keys, the log [`CHECKPOINT_LOG_BYTES`], a second after
//! the last checkpoint, or when the store falls idle. So the B-tree's copy-on-write commit,
//! which costs far more than a log append, is paid once per thousands of writes rather than
//! once per batch.
//!
//! A checkpoint runs on a thread of its own, so writes do not wait for it (a commit of a
//! second's writes takes tens of milliseconds, in which every client that sent a write would
//! stall). It *freezes* the overlay: the changes so far become the frozen overlay, which
//! readers still consult, behind the new changes; the writer goes on logging into the other
//! of its two logs (see [`super::wal`]). Once the commit holds, the writer drops the frozen
//! overlay and empties the log that held its records. One checkpoint runs at a time; if one
//! fails, its changes go back into the overlay and the next checkpoint is made by the writer
//! itself, which then empties both logs.
//!
//! Operations that touch every item (`flush_all`, a reset, removing what is dead) are rare;
//! the writer waits for a running checkpoint, checkpoints itself, and then carries their batch
//! out in one B-tree transaction, committed durably before it answers, as every batch once
//! was.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, Table};
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::oneshot;

use super::slot::Slot;
use super::wal::{self, Wal};
use super::{
    unavailable, ItemsTable, ITEMS, META, META_CLOCK, META_FLUSH_AT, META_INCOMPLETE, META_LOG_SEQ,
    META_USED_BYTES,
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

/// What readers need to see of the writer's state, published after each batch.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub used_bytes: AtomicUsize,
    pub memory_limit: AtomicUsize,
    pub flush_at: AtomicU64,
    pub total_items: AtomicU64,
    pub curr_items: AtomicU64,
    pub reclaimed: AtomicU64,
    pub clock: AtomicU64,
    pub incomplete: AtomicBool,
    /// Batches made durable (log appends and B-tree commits): one fsync each.
    pub syncs: AtomicU64,
    /// Odd while the B-tree and the overlay change together (a commit by the writer, or
    /// the frozen overlay dropped after a checkpoint's commit), even otherwise; raised twice
    /// each time, and by two when a checkpoint freezes the overlay (its commit may land any
    /// time after). A reader that saw the same even value before and after opening a read
    /// transaction knows the transaction and the overlay it read agree (see
    /// `DiskDatalet::read_slot` and `DiskDatalet::consistent`).
    pub commits: AtomicU64,
    /// Changes logged that the B-tree does not hold yet.
    pub overlay: RwLock<Overlay>,
    /// Set by a test to stop the writer as a crash would, without a last checkpoint.
    #[cfg(test)]
    pub crashed: AtomicBool,
    /// Set by a test to widen the gap between a snapshot's copy of the overlay and its
    /// read transaction, where a checkpoint could slip in.
    #[cfg(test)]
    pub slow_snapshots: AtomicBool,
    /// Set by a test to hold checkpoints back from their commit (until a crash, which then
    /// comes before it).
    #[cfg(test)]
    pub hold_checkpoints: AtomicBool,
    /// Set by a test: the next log append writes its record and then fails.
    #[cfg(test)]
    pub fail_next_append: AtomicBool,
}

/// Per key its new slot, or `None` if removed.
pub(super) type Changes = HashMap<Bytes, Option<Slot>>;

/// Changes logged since the last checkpoint that holds: those of a checkpoint under way
/// (frozen), and newer ones over them.
#[derive(Debug, Default)]
pub(super) struct Overlay {
    pub active: Changes,
    pub frozen: Arc<Changes>,
}

impl Overlay {
    /// The newest logged change of `key`, if the overlay holds one.
    pub fn get(&self, key: &[u8]) -> Option<&Option<Slot>> {
        self.active.get(key).or_else(|| self.frozen.get(key))
    }

    /// Every key's newest change, in one map.
    pub fn merged(&self) -> Changes {
        let mut all = (*self.frozen).clone();
        all.extend(self.active.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

    /// Puts the frozen changes back under the newer ones, after their checkpoint failed;
    /// returns the frozen map, to be dropped once the lock is let go.
    fn thaw(&mut self) -> Arc<Changes> {
        let frozen = std::mem::take(&mut self.frozen);
        for (key, slot) in frozen.iter() {
            self.active
                .entry(key.clone())
                .or_insert_with(|| slot.clone());
        }
        frozen
    }
}

/// A checkpoint committing the frozen overlay on its own thread.
pub(super) struct Running {
    thread: JoinHandle<Result<(), DataletError>>,
    /// The log holding the frozen changes' records, emptied once the B-tree holds them.
    log: usize,
}

/// While a checkpoint runs, the writer looks this often whether it is done.
const CHECKPOINT_POLL: Duration = Duration::from_millis(5);

/// Checkpoint once the overlay holds this many keys.
pub(super) const CHECKPOINT_KEYS: usize = 100_000;
/// Checkpoint once the log holds this many bytes.
pub(super) const CHECKPOINT_LOG_BYTES: u64 = 64 << 20;
/// Checkpoint at least this often while writes come, and when the store falls idle.
pub(super) const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub db: Arc<Database>,
    pub shared: Arc<Shared>,
    /// The two logs: records are appended to `wals[log]`; the other one is empty, or holds
    /// the records of the checkpoint under way (or of one that failed).
    pub wals: [Wal; 2],
    pub log: usize,
    /// Checkpoints run on their own thread (else the writer makes them, and writes wait).
    pub background: bool,
    /// The last append failed, its record perhaps on disk all the same: no switching logs
    /// until an append or a checkpoint of the writer's own (which empties both) succeeds.
    pub failed_append: bool,
    pub item_size_max: usize,
    pub max_batch: usize,
    pub checkpoint_keys: usize,
    pub checkpoint_every: Duration,
    /// Durable state, as of the last batch plus the batch being applied.
    pub used_bytes: usize,
    pub flush_at: UnixSecs,
    /// The clock reservation, raised also by the version of every mutation and flush
    /// applied, in the same batch: never behind the state the store holds.
    pub clock: Ts,
    /// Emptied for a state transfer that has not been confirmed by a `SaveClock` since.
    pub incomplete: bool,
    /// Items held (live or dead, in the B-tree and the overlay together).
    pub items: u64,
    pub last_reclaim: UnixSecs,
    /// The last log record's number; the B-tree records the last one it holds.
    pub seq: u64,
    pub last_checkpoint: Instant,
    /// The items table as of the last B-tree commit, for the writer's own reads.
    pub tree: Option<ItemsTable>,
    /// The checkpoint under way on its own thread.
    pub running: Option<Running>,
}

/// The answer to one op, sent once its batch is durable: an apply's outcome (or its own
/// error, such as running out of memory); `None` for ops that only succeed or fail.
type Answer = Result<Option<Outcome>, DataletError>;

/// What one mutation does to its key.
struct Planned {
    /// `Some(Some(slot))` to store, `Some(None)` to remove, `None` to leave the key alone.
    write: Option<Option<Slot>>,
    outcome: Outcome,
    existed: bool,
    old_bytes: usize,
    new_bytes: usize,
}

impl Planned {
    /// Bytes the store grows by, if it stores a larger item.
    fn grows(&self) -> usize {
        match self.write {
            Some(Some(_)) => self.new_bytes.saturating_sub(self.old_bytes),
            _ => 0,
        }
    }
}

impl Writer {
    pub fn run(mut self, ops: Receiver<Op>) {
        loop {
            let polling = self.running.is_some();
            let wait = match polling {
                true => CHECKPOINT_POLL,
                false => self.checkpoint_every,
            };
            let next = ops.recv_timeout(wait);
            self.finish_checkpoint(false);
            let first = match next {
                Ok(op) => op,
                // Idle for a whole interval: fold what is logged into the B-tree.
                Err(RecvTimeoutError::Timeout) => {
                    if !polling {
                        self.start_checkpoint();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = vec![first];
            while batch.len() < self.max_batch {
                match ops.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            let (full, late) = {
                let overlay = self
                    .shared
                    .overlay
                    .read()
                    .unwrap_or_else(|e| e.into_inner());
                let logged = &overlay.active;
                (
                    logged.len() >= self.checkpoint_keys
                        || self.wals[self.log].len() >= CHECKPOINT_LOG_BYTES,
                    !logged.is_empty() && self.last_checkpoint.elapsed() >= self.checkpoint_every,
                )
            };
            // Writes come faster than checkpoints go: they wait for the one under way, so
            // the overlay and the logs stay within twice their bounds.
            if full {
                self.finish_checkpoint(true);
            }
            if (full || late) && self.running.is_none() {
                self.start_checkpoint();
            }
        }
        // Closing: leave nothing to replay.
        self.checkpoint_or_log();
        // After a crash (in tests) the checkpoint under way may still be running.
        self.finish_checkpoint(true);
    }

    fn checkpoint_or_log(&mut self) {
        #[cfg(test)]
        if self.shared.crashed.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "disk datalet checkpoint failed");
        }
    }

    /// Starts a checkpoint of what is logged on a thread of its own: freezes the overlay and
    /// goes on logging into the other log. Made by the writer itself instead if checkpoints
    /// do not run in the background, or the other log still holds records (its checkpoint
    /// failed, or emptying it did).
    fn start_checkpoint(&mut self) {
        let other = 1 - self.log;
        if !self.background || self.wals[other].len() > 0 || self.failed_append {
            return self.checkpoint_or_log();
        }
        #[cfg(test)]
        if self.shared.crashed.load(Ordering::Acquire) {
            return;
        }
        self.last_checkpoint = Instant::now();
        let frozen = {
            let mut overlay = self
                .shared
                .overlay
                .write()
                .unwrap_or_else(|e| e.into_inner());
            if overlay.active.is_empty() && self.wals[self.log].len() == 0 {
                return;
            }
            let frozen = Arc::new(std::mem::take(&mut overlay.active));
            overlay.frozen = Arc::clone(&frozen);
            // A snapshot that copied the overlay before this must not pair it with a
            // transaction that holds the commit to come.
            self.shared.commits.fetch_add(2, Ordering::AcqRel);
            frozen
        };
        let (db, meta, seq) = (Arc::clone(&self.db), self.meta(), self.seq);
        #[cfg(test)]
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("disk-checkpoint".into())
            .spawn(move || {
                // A crash (in tests) may come before the commit.
                #[cfg(test)]
                {
                    while shared.hold_checkpoints.load(Ordering::Acquire)
                        && !shared.crashed.load(Ordering::Acquire)
                    {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if shared.crashed.load(Ordering::Acquire) {
                        return Err(unavailable("crashed"));
                    }
                }
                commit_changes(&db, &frozen, meta, seq)
            });
        match spawned {
            Ok(thread) => {
                self.running = Some(Running {
                    thread,
                    log: self.log,
                });
                self.log = other;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a checkpoint thread; checkpointing here");
                self.thaw();
                self.checkpoint_or_log();
            }
        }
    }

    /// Puts the frozen changes back under the newer ones: their checkpoint did not happen.
    fn thaw(&self) {
        let frozen = self
            .shared
            .overlay
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .thaw();
        drop(frozen);
    }

    /// Completes the checkpoint under way once its commit is done (waiting for it if
    /// `wait`): drops the frozen overlay, which the B-tree now holds, and empties its log; if
    /// the commit failed, puts the frozen changes back into the overlay.
    fn finish_checkpoint(&mut self, wait: bool) {
        let Some(running) = self
            .running
            .take_if(|running| wait || running.thread.is_finished())
        else {
            return;
        };
        let committed = running
            .thread
            .join()
            .unwrap_or_else(|_| Err(unavailable("the checkpoint thread panicked")))
            .and_then(|()| open_items(&self.db));
        #[cfg(test)]
        if self.shared.crashed.load(Ordering::Acquire) {
            return;
        }
        let tree = match committed {
            Ok(tree) => tree,
            Err(e) => {
                tracing::error!(error = %e, "disk datalet checkpoint failed");
                self.thaw();
                return;
            }
        };
        // Readers that miss the overlay from here on must read a transaction from after the
        // commit: the count tells them (see `Shared::commits`).
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
        // Taken out under the lock, freed after it: freeing up to a checkpoint's worth of
        // entries would hold every reader back.
        let frozen = std::mem::take(
            &mut self
                .shared
                .overlay
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .frozen,
        );
        self.tree = Some(tree);
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
        drop(frozen);
        if let Err(e) = self.wals[running.log].clear() {
            // Left as it is, the log makes the next checkpoint the writer's own, which
            // empties both logs.
            tracing::error!(error = %e, "disk datalet cannot empty a checkpointed log");
        }
    }

    fn state(&self) -> (usize, UnixSecs, Ts, bool, u64) {
        (
            self.used_bytes,
            self.flush_at,
            self.clock,
            self.incomplete,
            self.items,
        )
    }

    fn restore(&mut self, before: (usize, UnixSecs, Ts, bool, u64)) {
        (
            self.used_bytes,
            self.flush_at,
            self.clock,
            self.incomplete,
            self.items,
        ) = before;
    }

    fn commit(&mut self, batch: Vec<Op>) {
        let before = self.state();
        let mut new_items = 0;
        let logged = batch
            .iter()
            .all(|op| matches!(op, Op::Apply { .. } | Op::SaveClock { .. }));
        if logged {
            match self.log_batch(&batch, &mut new_items) {
                Ok(Some(answers)) => return self.answer(batch, answers, new_items),
                // A write needs what is dead removed first: carried out below.
                Ok(None) => {}
                Err(e) => return self.fail(batch, e, before),
            }
            self.restore(before);
            new_items = 0;
        }
        if let Err(e) = self.checkpoint() {
            return self.fail(batch, e, before);
        }
        match self.tree_batch(&batch, &mut new_items) {
            Ok(answers) => self.answer(batch, answers, new_items),
            Err(e) => self.fail(batch, e, before),
        }
    }

    /// Publishes the writer's state and answers the batch.
    fn answer(&mut self, batch: Vec<Op>, answers: Vec<Answer>, new_items: u64) {
        self.publish(new_items);
        self.shared.syncs.fetch_add(1, Ordering::Release);
        for (op, answer) in batch.into_iter().zip(answers) {
            reply(op, answer);
        }
    }

    fn fail(&mut self, batch: Vec<Op>, e: DataletError, before: (usize, UnixSecs, Ts, bool, u64)) {
        tracing::error!(error = %e, ops = batch.len(), "disk datalet commit failed");
        self.restore(before);
        for op in batch {
            reply(op, Err(e.clone()));
        }
    }

    pub fn publish(&self, new_items: u64) {
        let s = &self.shared;
        s.used_bytes.store(self.used_bytes, Ordering::Release);
        s.flush_at.store(self.flush_at, Ordering::Release);
        s.clock.store(self.clock, Ordering::Release);
        s.incomplete.store(self.incomplete, Ordering::Release);
        s.curr_items.store(self.items, Ordering::Relaxed);
        s.total_items.fetch_add(new_items, Ordering::Relaxed);
    }

    /// The item `key` holds now: in this batch's changes, else the overlay, else the B-tree.
    fn current(
        &self,
        staged: &HashMap<Bytes, Option<Slot>>,
        key: &Bytes,
    ) -> Result<Option<Slot>, DataletError> {
        if let Some(slot) = staged.get(key) {
            return Ok(slot.clone());
        }
        let logged = {
            let overlay = self
                .shared
                .overlay
                .read()
                .unwrap_or_else(|e| e.into_inner());
            overlay.get(key).cloned()
        };
        if let Some(slot) = logged {
            return Ok(slot);
        }
        let tree = self
            .tree
            .as_ref()
            .expect("the writer holds a read transaction");
        Ok(tree
            .get(key.as_ref())
            .map_err(unavailable)?
            .and_then(|bytes| Slot::decode(bytes.value())))
    }

    /// Decides a batch of writes and logs what it changed, synced; then the changes join the
    /// overlay. `None` if a write would need what is dead removed first, which only the
    /// B-tree path does: nothing has been logged or changed then (but the state fields, which
    /// the caller restores).
    fn log_batch(
        &mut self,
        batch: &[Op],
        new_items: &mut u64,
    ) -> Result<Option<Vec<Answer>>, DataletError> {
        let mut staged: HashMap<Bytes, Option<Slot>> = HashMap::new();
        let mut answers = Vec::with_capacity(batch.len());
        for op in batch {
            let answer = match op {
                Op::Apply {
                    key,
                    mutation,
                    version,
                    now,
                    ..
                } => {
                    let current = self.current(&staged, key)?;
                    let planned = self.plan(key, current, mutation, *version, *now);
                    let limit = self.shared.memory_limit.load(Ordering::Relaxed);
                    let grows = planned.grows();
                    self.clock = self.clock.max(version.ts);
                    if grows > 0 && self.used_bytes + grows > limit {
                        if self.last_reclaim != *now {
                            return Ok(None);
                        }
                        Err(DataletError::OutOfMemory)
                    } else {
                        self.account(&planned, new_items);
                        if let Some(write) = planned.write {
                            staged.insert(key.clone(), write);
                        }
                        Ok(Some(planned.outcome))
                    }
                }
                Op::SaveClock { ts, .. } => {
                    self.clock = self.clock.max(*ts);
                    self.incomplete = false;
                    Ok(None)
                }
                _ => unreachable!("only writes and clock saves are logged"),
            };
            answers.push(answer);
        }
        let seq = self.seq + 1;
        let record = wal::encode(seq, self.meta(), staged.iter());
        #[cfg(test)]
        if self.shared.fail_next_append.swap(false, Ordering::AcqRel) {
            self.wals[self.log].fail_after_write = true;
        }
        if let Err(e) = self.wals[self.log].append(&record) {
            // The record may be on disk whole all the same (a sync that failed after the
            // write): the next one, numbered the same, must overwrite it, never go to the
            // other log, where a replay would find two records of that number.
            self.failed_append = true;
            return Err(unavailable(e));
        }
        self.failed_append = false;
        self.seq = seq;
        self.shared
            .overlay
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .active
            .extend(staged);
        Ok(Some(answers))
    }

    fn meta(&self) -> wal::Meta {
        wal::Meta {
            used_bytes: self.used_bytes as u64,
            flush_at: self.flush_at,
            clock: self.clock,
            incomplete: self.incomplete,
        }
    }

    /// Counts a planned write in the state's totals.
    fn account(&mut self, planned: &Planned, new_items: &mut u64) {
        let Some(write) = &planned.write else {
            return;
        };
        self.used_bytes = self.used_bytes + planned.new_bytes - planned.old_bytes;
        match (planned.existed, write.is_some()) {
            (false, true) => self.items += 1,
            (true, false) => self.items -= 1,
            _ => {}
        }
        if matches!(planned.outcome, Outcome::Stored | Outcome::Number(_)) {
            *new_items += 1;
        }
    }

    /// What `mutation` does to `key`, holding `current`.
    fn plan(
        &self,
        key: &Bytes,
        current: Option<Slot>,
        mutation: &Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Planned {
        let existed = current.is_some();
        let old_bytes = current.as_ref().map_or(0, |s| item_bytes(key, &s.item));
        let live = current
            .as_ref()
            .filter(|s| dead(&s.item, s.stored_at, self.flush_at, now).is_none())
            .map(|s| &s.item);
        let dead_slot = existed && live.is_none();
        let (change, outcome) = decide(key, live, mutation.clone(), version, self.item_size_max);
        let (write, new_bytes) = match change {
            Change::Put(item) => {
                let new_bytes = item_bytes(key, &item);
                let slot = Slot {
                    item,
                    stored_at: now,
                };
                (Some(Some(slot)), new_bytes)
            }
            // A dead item is removed whatever the mutation decided.
            Change::Remove | Change::Keep if dead_slot || outcome == Outcome::Deleted => {
                (Some(None), 0)
            }
            Change::Remove | Change::Keep => (None, old_bytes),
        };
        Planned {
            write,
            outcome,
            existed,
            old_bytes,
            new_bytes,
        }
    }

    /// Writes the overlay into the B-tree in one durable transaction, on this thread (after
    /// the checkpoint under way, if any), publishes it, and empties the overlay and both logs.
    /// Nothing to do if they are empty.
    pub fn checkpoint(&mut self) -> Result<(), DataletError> {
        self.finish_checkpoint(true);
        let empty = {
            let overlay = self
                .shared
                .overlay
                .read()
                .unwrap_or_else(|e| e.into_inner());
            overlay.active.is_empty()
        };
        if empty && self.wals.iter().all(|wal| wal.len() == 0) {
            self.last_checkpoint = Instant::now();
            return Ok(());
        }
        self.tree_commit(|this, items| {
            let overlay = this
                .shared
                .overlay
                .read()
                .unwrap_or_else(|e| e.into_inner());
            // After `finish_checkpoint`, nothing is frozen: it was committed or thawed.
            debug_assert!(overlay.frozen.is_empty());
            write_changes(items, &overlay.active)
        })?;
        for wal in &mut self.wals {
            wal.clear().map_err(unavailable)?;
        }
        self.failed_append = false;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// One durable B-tree transaction: `body` changes the items, then the metadata is saved
    /// with the log position. Readers see the commit as described at [`Shared::commits`]; the
    /// overlay, all of which a commit holds (every path checkpoints before changing the tree
    /// otherwise), is emptied with it.
    fn tree_commit(
        &mut self,
        body: impl FnOnce(&mut Self, &mut Table<&[u8], &[u8]>) -> Result<(), DataletError>,
    ) -> Result<(), DataletError> {
        let commits = &self.shared.commits;
        commits.fetch_add(1, Ordering::AcqRel);
        let result = (|| {
            let mut txn = self.db.begin_write().map_err(unavailable)?;
            txn.set_durability(Durability::Immediate)
                .map_err(unavailable)?;
            txn.set_quick_repair(true);
            {
                let mut items = txn.open_table(ITEMS).map_err(unavailable)?;
                body(self, &mut items)?;
            }
            save_meta(&txn, self.meta(), self.seq)?;
            txn.commit().map_err(unavailable)
        })();
        let emptied = result.is_ok().then(|| {
            std::mem::take(
                &mut *self
                    .shared
                    .overlay
                    .write()
                    .unwrap_or_else(|e| e.into_inner()),
            )
        });
        // Reopened whether or not the commit held: a failed one may have left the old
        // transaction's view behind. The count is made even again in any case.
        let reopened = open_items(&self.db);
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
        // Freed outside the lock.
        drop(emptied);
        self.tree = Some(reopened?);
        result
    }

    /// Carries out a batch in one B-tree transaction (the overlay is empty: checkpointed).
    fn tree_batch(
        &mut self,
        batch: &[Op],
        new_items: &mut u64,
    ) -> Result<Vec<Answer>, DataletError> {
        let mut answers = Vec::with_capacity(batch.len());
        self.tree_commit(|this, items| {
            for op in batch {
                let answer = match op {
                    Op::Apply {
                        key,
                        mutation,
                        version,
                        now,
                        ..
                    } => {
                        let outcome =
                            this.apply(items, key, mutation, *version, *now, new_items)?;
                        this.clock = this.clock.max(version.ts);
                        outcome.map(Some)
                    }
                    Op::Flush {
                        at, now, version, ..
                    } => {
                        this.clock = this.clock.max(version.ts);
                        this.retire_flush_point(items, *now)?;
                        this.flush_at = *at;
                        if at <= now {
                            items.retain(|_, _| false).map_err(unavailable)?;
                            (this.used_bytes, this.items) = (0, 0);
                        }
                        Ok(None)
                    }
                    Op::SaveClock { ts, .. } => {
                        this.clock = this.clock.max(*ts);
                        this.incomplete = false;
                        Ok(None)
                    }
                    Op::Reclaim { now, .. } => this.sweep(items, *now).map(|_| None),
                    Op::Reset { .. } => {
                        items.retain(|_, _| false).map_err(unavailable)?;
                        (this.used_bytes, this.items) = (0, 0);
                        this.flush_at = 0;
                        this.incomplete = true;
                        Ok(None)
                    }
                };
                answers.push(answer);
            }
            Ok(())
        })?;
        Ok(answers)
    }

    /// Applies one mutation inside a B-tree transaction. The outer `Result` is a storage
    /// failure (the whole batch fails); the inner one is this mutation's answer.
    fn apply(
        &mut self,
        items: &mut Table<&[u8], &[u8]>,
        key: &Bytes,
        mutation: &Mutation,
        version: Version,
        now: UnixSecs,
        new_items: &mut u64,
    ) -> Result<Result<Outcome, DataletError>, DataletError> {
        let current = match items.get(key.as_ref()).map_err(unavailable)? {
            Some(bytes) => Slot::decode(bytes.value()),
            None => None,
        };
        let planned = self.plan(key, current, mutation, version, now);
        let grows = planned.grows();
        if grows > 0 && !self.fits(items, grows, now)? {
            return Ok(Err(DataletError::OutOfMemory));
        }
        match &planned.write {
            Some(Some(slot)) => {
                items
                    .insert(key.as_ref(), slot.encode().as_slice())
                    .map_err(unavailable)?;
            }
            Some(None) => {
                items.remove(key.as_ref()).map_err(unavailable)?;
            }
            None => {}
        }
        self.account(&planned, new_items);
        Ok(Ok(planned.outcome))
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
        self.items -= removed;
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
        let (mut freed, mut removed) = (0, 0);
        items
            .retain(|key, bytes| match Slot::decode(bytes) {
                Some(s) if s.stored_at <= due => {
                    freed += item_bytes(key, &s.item);
                    removed += 1;
                    false
                }
                _ => true,
            })
            .map_err(unavailable)?;
        self.used_bytes -= freed;
        self.items -= removed;
        Ok(())
    }
}

/// Writes `changes` into the items table.
fn write_changes(items: &mut Table<&[u8], &[u8]>, changes: &Changes) -> Result<(), DataletError> {
    for (key, slot) in changes {
        match slot {
            Some(slot) => {
                items
                    .insert(key.as_ref(), slot.encode().as_slice())
                    .map_err(unavailable)?;
            }
            None => {
                items.remove(key.as_ref()).map_err(unavailable)?;
            }
        }
    }
    Ok(())
}

/// Saves the metadata, with the number of the last log record the B-tree holds.
fn save_meta(txn: &redb::WriteTransaction, meta: wal::Meta, seq: u64) -> Result<(), DataletError> {
    let mut table = txn.open_table(META).map_err(unavailable)?;
    let mut put = |name, value: u64| table.insert(name, value).map(|_| ()).map_err(unavailable);
    put(META_USED_BYTES, meta.used_bytes)?;
    put(META_FLUSH_AT, meta.flush_at)?;
    put(META_CLOCK, meta.clock)?;
    put(META_INCOMPLETE, u64::from(meta.incomplete))?;
    put(META_LOG_SEQ, seq)
}

/// A checkpoint's commit, on its own thread: `changes` (a frozen overlay) written into the
/// B-tree with the metadata as of the last record they hold, in one durable transaction.
fn commit_changes(
    db: &Database,
    changes: &Changes,
    meta: wal::Meta,
    seq: u64,
) -> Result<(), DataletError> {
    let mut txn = db.begin_write().map_err(unavailable)?;
    txn.set_durability(Durability::Immediate)
        .map_err(unavailable)?;
    txn.set_quick_repair(true);
    {
        let mut items = txn.open_table(ITEMS).map_err(unavailable)?;
        write_changes(&mut items, changes)?;
    }
    save_meta(&txn, meta, seq)?;
    txn.commit().map_err(unavailable)
}

/// The items table in a new read transaction.
pub(super) fn open_items(db: &Database) -> Result<ItemsTable, DataletError> {
    let txn = db.begin_read().map_err(unavailable)?;
    txn.open_table(ITEMS).map_err(unavailable)
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
