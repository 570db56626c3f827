//! The durable disk datalet: a write-ahead log in front of a [redb](https://docs.rs/redb)
//! B-tree.
//!
//! # How it works
//!
//! Items live in one redb table, keyed by the item key; each value is a [`slot::Slot`]: the
//! version, flags, expiry and write time in a fixed header, then the data. A second table
//! holds the store's metadata: bytes used, the last flush point, the clock reservation,
//! whether a reset's state transfer is still unconfirmed, and the last log record the table
//! holds.
//!
//! - **Writes** go to one writer thread ([`writer`]), which decides them in batches, appends
//!   what each batch changed to the log ([`wal`]) as one record with one sync (group commit),
//!   and acknowledges each write only after its record is synced. The changes then wait in
//!   memory (the *overlay*) until a *checkpoint* writes them into the B-tree in one
//!   transaction, about once a second, and empties the log. A B-tree commit costs far more
//!   than a log append (copy-on-write pages, two syncs), so it is paid once per thousands of
//!   writes instead of once per batch, and on a thread of its own, while the writer goes on
//!   logging into a second log. After `kill -9` and a restart every acknowledged write is
//!   there, with its flags, expiry and version: opening replays the logs over the B-tree.
//! - **Reads** look in the overlay, then open a redb read transaction: both hold only what is
//!   durable, so a client never reads a value that a crash could take back. Reads run on the
//!   caller's thread and share one read transaction between checkpoints.
//! - **Scans and snapshots** read one moment: a copy of the overlay and a read transaction
//!   taken while no checkpoint ran (checked by a count the writer raises around each commit).
//!   **Resets** and `flush_all` go through the writer like any write, so they are ordered with
//!   the writes; the writer checkpoints first and carries them out in a durable B-tree
//!   transaction. A reset keeps the clock reservation.
//! - **The clock is a position.** Each batch raises the clock to the version of every
//!   mutation and flush it applied, in the same log record or transaction, so after any crash
//!   the clock is at or past the state on disk (in the strong modes, where versions are
//!   positions in the order, it says how far the state goes). A reset marks the store
//!   incomplete until the next `save_clock`; meanwhile `load_clock` is 0, so a node that
//!   crashed while receiving a snapshot never restarts as if it held the state it was given
//!   only in part.
//! - **Restart** is short: the logs hold at most about two seconds of writes, and every B-tree
//!   commit saves redb's allocator state (quick-repair), so reopening after a crash does not
//!   walk the whole file.
//! - **Disk use** stays bounded under overwrites and deletes: redb is copy-on-write and reuses
//!   the pages freed by earlier transactions, so the file tracks the live data, not the write
//!   history; the log is emptied at each checkpoint. Expired and flushed items are removed
//!   when next written to, and in bulk when the store's limit is reached.
//!
//! Why redb: it is a well-kept, pure-Rust embedded store with ACID transactions, a single
//! writer (which is the writer we want anyway), readers isolated from uncommitted writes, and
//! quick crash recovery. The log in front of it is the part an LSM store would add, kept to
//! what this store needs: records of whole new slots, replayed idempotently.

mod slot;
mod wal;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::oneshot;

use crate::mutate::dead;
use crate::{Datalet, DataletError, DataletStats, Item, Limits, Mutation, Outcome};
use slot::Slot;
use writer::{Op, Shared, Writer};

const ITEMS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("items");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_USED_BYTES: &str = "used_bytes";
const META_FLUSH_AT: &str = "flush_at";
const META_CLOCK: &str = "clock";
/// 1 while the store was reset for a state transfer and no `save_clock` confirmed it since.
const META_INCOMPLETE: &str = "incomplete";
/// The number of the last log record the B-tree holds.
const META_LOG_SEQ: &str = "log_seq";

/// The file inside the datalet's directory.
pub const FILE_NAME: &str = "tailorkv.redb";

/// Writes batched into one commit at most, by default.
pub const DEFAULT_MAX_BATCH: usize = 1024;

fn unavailable(e: impl std::fmt::Display) -> DataletError {
    DataletError::Unavailable(format!("disk: {e}"))
}

/// Options of the disk datalet besides [`Limits`].
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// Most writes carried by one commit (one fsync). 1 means one fsync per write.
    pub max_batch: usize,
    /// Memory redb may use to cache pages.
    pub cache_bytes: usize,
    /// Checkpoint once this many keys were written since the last one.
    pub checkpoint_keys: usize,
    /// Checkpoint at least this often while writes come, and when the store falls idle.
    pub checkpoint_every: std::time::Duration,
    /// Checkpoints run on a thread of their own while writes go on; if false, the writer
    /// makes them itself and writes wait.
    pub checkpoint_in_background: bool,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            max_batch: DEFAULT_MAX_BATCH,
            cache_bytes: 256 << 20,
            checkpoint_keys: writer::CHECKPOINT_KEYS,
            checkpoint_every: writer::CHECKPOINT_EVERY,
            checkpoint_in_background: true,
        }
    }
}

/// A store in a directory on disk, durable across restarts.
pub struct DiskDatalet {
    db: Arc<Database>,
    shared: Arc<Shared>,
    ops: Mutex<Option<Sender<Op>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    get_expired: std::sync::atomic::AtomicU64,
    get_flushed: std::sync::atomic::AtomicU64,
    path: PathBuf,
    /// The items table of the last read transaction, with the count of B-tree commits it was
    /// opened after: reads share it until the writer commits again (see `read_slot`).
    reading: std::sync::RwLock<Option<(u64, Arc<ItemsTable>)>>,
}

type ItemsTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl std::fmt::Debug for DiskDatalet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskDatalet")
            .field("path", &self.path)
            .finish()
    }
}

impl DiskDatalet {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path, limits: Limits, options: DiskOptions) -> Result<Self, DataletError> {
        std::fs::create_dir_all(dir).map_err(unavailable)?;
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(&path)
            .map_err(|e| unavailable(format_args!("cannot open {}: {e}", path.display())))?;
        let db = Arc::new(db);
        let saved = init_tables(&db)?;
        let (first, mut records) =
            wal::Wal::open(&dir.join(wal::FILE_NAMES[0])).map_err(unavailable)?;
        let (second, more) = wal::Wal::open(&dir.join(wal::FILE_NAMES[1])).map_err(unavailable)?;
        records.extend(more);
        // What the logs hold past the B-tree goes back into the overlay, and straight into
        // the B-tree at the checkpoint below.
        let replay = wal::to_replay(records, saved.log_seq);
        let mut meta = saved.meta;
        let mut seq = saved.log_seq;
        let shared = Arc::new(Shared::default());
        {
            let mut overlay = shared.overlay.write().unwrap_or_else(|e| e.into_inner());
            for record in replay {
                overlay.active.extend(record.changes);
                (meta, seq) = (record.meta, record.seq);
            }
        }
        shared
            .memory_limit
            .store(limits.memory_limit_bytes, Ordering::Release);
        let mut writer = Writer {
            db: Arc::clone(&db),
            shared: Arc::clone(&shared),
            wals: [first, second],
            log: 0,
            background: options.checkpoint_in_background,
            failed_append: false,
            item_size_max: limits.item_size_max,
            max_batch: options.max_batch.max(1),
            checkpoint_keys: options.checkpoint_keys.max(1),
            checkpoint_every: options.checkpoint_every,
            used_bytes: meta.used_bytes as usize,
            flush_at: meta.flush_at,
            clock: meta.clock,
            incomplete: meta.incomplete,
            items: 0,
            last_reclaim: 0,
            seq,
            last_checkpoint: std::time::Instant::now(),
            tree: Some(writer::open_items(&db)?),
            running: None,
        };
        writer.checkpoint()?;
        writer.items = writer
            .tree
            .as_ref()
            .expect("opened above")
            .len()
            .map_err(unavailable)?;
        writer.publish(0);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(unavailable)?;
        Ok(DiskDatalet {
            db,
            shared,
            ops: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(thread)),
            get_expired: Default::default(),
            get_flushed: Default::default(),
            path,
            reading: std::sync::RwLock::new(None),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many batches have been made durable, each with one fsync (of the log, or of the
    /// B-tree for a batch that touches every item): writes divided by this is the batch size.
    /// Checkpoints, which write to the B-tree what the log already holds, are not counted.
    pub fn commits(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> Result<(), DataletError> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match ops.as_ref() {
            Some(tx) => tx.send(op).map_err(|_| unavailable("writer stopped")),
            None => Err(unavailable("closed")),
        }
    }

    /// Reads `key`: from the overlay if it was written since the last checkpoint that holds,
    /// else from a read transaction opened after every B-tree commit made so far: the one the
    /// last read opened, while the count of commits has not moved since, else a new one. A
    /// checkpoint drops what it wrote from the overlay only after its commit, and counts
    /// around the drop, so a read that misses the overlay and then finds the count unchanged
    /// reads a transaction holding what the overlay held; between commits, reads share one
    /// transaction instead of opening one each.
    fn read_slot(&self, key: &[u8]) -> Result<Option<Slot>, DataletError> {
        if let Some(logged) = self
            .shared
            .overlay
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            return Ok(logged.clone());
        }
        let commits = self.shared.commits.load(Ordering::Acquire);
        // Odd: a commit is under way, and a transaction opened now may be from before it.
        let settled = commits.is_multiple_of(2);
        let cached = self
            .reading
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(seen, _)| settled && *seen == commits)
            .map(|(_, table)| Arc::clone(table));
        let table = match cached {
            Some(table) => table,
            None => {
                let table = Arc::new(writer::open_items(&self.db)?);
                let mut reading = self.reading.write().unwrap_or_else(|e| e.into_inner());
                if settled && reading.as_ref().is_none_or(|(seen, _)| *seen < commits) {
                    *reading = Some((commits, Arc::clone(&table)));
                }
                table
            }
        };
        let slot = table.get(key).map_err(unavailable)?;
        Ok(slot.and_then(|bytes| Slot::decode(bytes.value())))
    }
}

/// The overlay and a read transaction that agree, taken while no B-tree commit ran: the
/// transaction holds everything up to the last checkpoint, the overlay everything since.
fn consistent(
    db: &Database,
    shared: &Shared,
) -> Result<(writer::Changes, redb::ReadTransaction), DataletError> {
    for _attempt in 0.. {
        let before = shared.commits.load(Ordering::Acquire);
        if before.is_multiple_of(2) {
            let overlay = shared
                .overlay
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .merged();
            #[cfg(test)]
            if _attempt == 0 && shared.slow_snapshots.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let txn = db.begin_read().map_err(unavailable)?;
            if shared.commits.load(Ordering::Acquire) == before {
                return Ok((overlay, txn));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    unreachable!("the loop above ends only by returning")
}

/// The metadata the B-tree holds, as of its last commit.
struct Saved {
    meta: wal::Meta,
    log_seq: u64,
}

/// Creates the tables if they are missing and reads the metadata.
fn init_tables(db: &Database) -> Result<Saved, DataletError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let saved = {
        txn.open_table(ITEMS).map_err(unavailable)?;
        let table = txn.open_table(META).map_err(unavailable)?;
        let read = |name| -> Result<u64, DataletError> {
            Ok(table
                .get(name)
                .map_err(unavailable)?
                .map_or(0, |v| v.value()))
        };
        Saved {
            meta: wal::Meta {
                used_bytes: read(META_USED_BYTES)?,
                flush_at: read(META_FLUSH_AT)?,
                clock: read(META_CLOCK)?,
                incomplete: read(META_INCOMPLETE)? != 0,
            },
            log_seq: read(META_LOG_SEQ)?,
        }
    };
    txn.commit().map_err(unavailable)?;
    Ok(saved)
}

/// The live items at `now`, as of one moment.
fn scan_snapshot(
    db: &Database,
    shared: &Shared,
    now: UnixSecs,
) -> Result<Vec<(Bytes, Item)>, DataletError> {
    use crate::Snapshot as _;
    DiskSnapshot::open(db, shared, now)?.next_part(usize::MAX)
}

/// A snapshot read from one read transaction and the overlay of that moment, a part at a
/// time: the B-tree's items the overlay does not hide, then the overlay's.
struct DiskSnapshot {
    items: redb::Range<'static, &'static [u8], &'static [u8]>,
    /// Keys changed since the checkpoint the transaction holds, with their new items.
    overlay: HashMap<Bytes, Option<Slot>>,
    logged: std::vec::IntoIter<(Bytes, Slot)>,
    flush_at: UnixSecs,
    now: UnixSecs,
    held: Option<(Bytes, Item)>,
}

impl DiskSnapshot {
    fn open(db: &Database, shared: &Shared, now: UnixSecs) -> Result<DiskSnapshot, DataletError> {
        let (overlay, txn) = consistent(db, shared)?;
        // Only a B-tree batch moves the flush point, so the transaction's is current.
        let meta = txn.open_table(META).map_err(unavailable)?;
        let flush_at = meta
            .get(META_FLUSH_AT)
            .map_err(unavailable)?
            .map_or(0, |v| v.value());
        let items = txn.open_table(ITEMS).map_err(unavailable)?;
        let items = items.range::<&[u8]>(..).map_err(unavailable)?;
        let logged: Vec<(Bytes, Slot)> = overlay
            .iter()
            .filter_map(|(key, slot)| Some((key.clone(), slot.clone()?)))
            .collect();
        Ok(DiskSnapshot {
            items,
            overlay,
            logged: logged.into_iter(),
            flush_at,
            now,
            held: None,
        })
    }
}

impl crate::Snapshot for DiskSnapshot {
    fn next_part(&mut self, max_bytes: usize) -> Result<Vec<(Bytes, Item)>, DataletError> {
        let (flush_at, now) = (self.flush_at, self.now);
        let overlay = &self.overlay;
        let live_at = move |key: Bytes, slot: Slot| {
            dead(&slot.item, slot.stored_at, flush_at, now)
                .is_none()
                .then_some((key, slot.item))
        };
        let tree = self.items.by_ref().filter_map(|entry| {
            let (key, bytes) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(unavailable(e))),
            };
            if overlay.contains_key(key.value()) {
                return None;
            }
            let slot = Slot::decode(bytes.value())?;
            live_at(Bytes::copy_from_slice(key.value()), slot).map(Ok)
        });
        let logged = self
            .logged
            .by_ref()
            .filter_map(|(key, slot)| live_at(key, slot).map(Ok));
        crate::fill_part(tree.chain(logged), &mut self.held, max_bytes)
    }
}

#[cfg(test)]
impl DiskDatalet {
    /// Stops the writer as a crash would: what it logged since the last checkpoint stays in
    /// the log only.
    fn crash(self) {
        self.shared
            .crashed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Bytes of whole records in the logs.
    fn log_bytes(&self) -> usize {
        wal::FILE_NAMES
            .iter()
            .map(|name| {
                let bytes = std::fs::read(self.path.with_file_name(name)).unwrap_or_default();
                wal::decode_all(&bytes).1
            })
            .sum()
    }
}

impl Drop for DiskDatalet {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish the queued ops and stop.
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

impl Datalet for DiskDatalet {
    async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        let Some(slot) = self.read_slot(key)? else {
            return Ok(None);
        };
        let flush_at = self.shared.flush_at.load(Ordering::Acquire);
        match dead(&slot.item, slot.stored_at, flush_at, now) {
            None => Ok(Some(slot.item)),
            Some(crate::mutate::Dead::Expired) => {
                self.get_expired.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
            Some(crate::mutate::Dead::Flushed) => {
                self.get_flushed.fetch_add(1, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// One read transaction, on a blocking thread: a consistent snapshot of what is committed,
    /// read with the flush point committed with it. Unlike `get`, it counts no expired or
    /// flushed reads.
    async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
        let (db, shared) = (Arc::clone(&self.db), Arc::clone(&self.shared));
        tokio::task::spawn_blocking(move || scan_snapshot(&db, &shared, now))
            .await
            .map_err(unavailable)?
    }

    /// A read transaction (redb's snapshot isolation), its items read as they are asked for.
    async fn snapshot(&self, now: UnixSecs) -> Result<Box<dyn crate::Snapshot>, DataletError> {
        let (db, shared) = (Arc::clone(&self.db), Arc::clone(&self.shared));
        let snapshot = tokio::task::spawn_blocking(move || DiskSnapshot::open(&db, &shared, now))
            .await
            .map_err(unavailable)??;
        Ok(Box::new(snapshot))
    }

    async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Apply {
            key: key.clone(),
            mutation,
            version,
            now,
            reply,
        })?;
        answer.await.map_err(|_| unavailable("writer stopped"))?
    }

    /// Queues every operation for the writer before waiting for any: the writer takes them
    /// all (up to its batch size) into one transaction, with one fsync, in their order.
    async fn apply_batch(&self, ops: Vec<crate::BatchOp>) -> Vec<Result<Outcome, DataletError>> {
        let mut answers = Vec::with_capacity(ops.len());
        for op in ops {
            let (reply, answer) = oneshot::channel();
            let queued = self.send(Op::Apply {
                key: op.key,
                mutation: op.mutation,
                version: op.version,
                now: op.now,
                reply,
            });
            answers.push(queued.map(|()| answer));
        }
        let mut outcomes = Vec::with_capacity(answers.len());
        for answer in answers {
            outcomes.push(match answer {
                Ok(answer) => answer
                    .await
                    .unwrap_or_else(|_| Err(unavailable("writer stopped"))),
                Err(e) => Err(e),
            });
        }
        outcomes
    }

    async fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        version: Version,
    ) -> Result<(), DataletError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Flush {
            at,
            now,
            version,
            reply,
        })?;
        answer.await.map_err(|_| unavailable("writer stopped"))?
    }

    /// Through the writer, so it is ordered with the writes queued before it, and committed
    /// (durable) when it returns. The clock reservation stays; the store is incomplete
    /// (`load_clock` is 0) until the next `save_clock`.
    async fn reset(&self) -> Result<(), DataletError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::Reset { reply })?;
        answer.await.map_err(|_| unavailable("writer stopped"))?
    }

    /// Through the writer, like a write: removes what is dead at `now` (at most once a
    /// second), as a full store would before refusing a write.
    async fn reclaim(&self, now: UnixSecs) -> u64 {
        let before = self.shared.reclaimed.load(Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        if self.send(Op::Reclaim { now, reply }).is_err() {
            return 0;
        }
        if !matches!(answer.await, Ok(Ok(()))) {
            return 0;
        }
        self.shared.reclaimed.load(Ordering::Relaxed) - before
    }

    /// As of the last durable batch.
    async fn load_clock(&self) -> Result<Ts, DataletError> {
        let s = &self.shared;
        if s.incomplete.load(Ordering::Acquire) {
            return Ok(0);
        }
        Ok(s.clock.load(Ordering::Acquire))
    }

    async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
        let (reply, answer) = oneshot::channel();
        self.send(Op::SaveClock { ts, reply })?;
        answer.await.map_err(|_| unavailable("writer stopped"))?
    }

    fn set_memory_limit(&self, bytes: usize) {
        self.shared.memory_limit.store(bytes, Ordering::Relaxed);
    }

    fn stats(&self) -> DataletStats {
        let s = &self.shared;
        DataletStats {
            curr_items: s.curr_items.load(Ordering::Relaxed),
            total_items: s.total_items.load(Ordering::Relaxed),
            bytes: s.used_bytes.load(Ordering::Relaxed) as u64,
            limit_maxbytes: s.memory_limit.load(Ordering::Relaxed) as u64,
            get_expired: self.get_expired.load(Ordering::Relaxed),
            get_flushed: self.get_flushed.load(Ordering::Relaxed),
            reclaimed: s.reclaimed.load(Ordering::Relaxed),
            ..DataletStats::default()
        }
    }
}

#[cfg(test)]
mod tests;
