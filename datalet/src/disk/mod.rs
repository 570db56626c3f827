//! The durable disk datalet, on [redb](https://docs.rs/redb).
//!
//! # How it works
//!
//! Items live in one redb table, keyed by the item key; each value is a [`slot::Slot`]: the
//! version, flags, expiry and write time in a fixed header, then the data. A second table
//! holds the store's metadata: bytes used, the last flush point, the clock reservation, and
//! whether a reset's state transfer is still unconfirmed.
//!
//! - **Writes** go to one writer thread ([`writer`]), which applies them in batches, one
//!   transaction and one fsync per batch (group commit), and acknowledges each write only after
//!   its batch is committed. After `kill -9` and a restart every acknowledged write is there,
//!   with its flags, expiry and version.
//! - **Reads** open a redb read transaction, which sees only committed, and so durable, data:
//!   a client never reads a value that a crash could take back. Reads run on the caller's
//!   thread; they are served from redb's page cache when the data is hot.
//! - **Scans** read every item in one read transaction, a consistent snapshot of what is
//!   committed; **resets** go through the writer like any write, so they are ordered with
//!   the writes and durable when acknowledged, and keep the clock reservation.
//! - **The clock is a position.** Each commit raises the clock to the version of every
//!   mutation and flush it applied, in the same transaction, so after any crash the clock is
//!   at or past the state on disk (in the strong modes, where versions are positions in the
//!   order, it says how far the state goes). A reset marks the store incomplete until the
//!   next `save_clock`; meanwhile `load_clock` is 0, so a node that crashed while receiving a
//!   snapshot never restarts as if it held the state it was given only in part.
//! - **Restart** is short: every commit saves redb's allocator state (quick-repair), so
//!   reopening after a crash does not walk the whole file.
//! - **Disk use** stays bounded under overwrites and deletes: redb is copy-on-write and reuses
//!   the pages freed by earlier transactions, so the file tracks the live data, not the write
//!   history. Expired and flushed items are removed when next written to, and in bulk when the
//!   store's limit is reached.
//!
//! Why redb: it is a well-kept, pure-Rust embedded store with ACID transactions, a single
//! writer (which is the group-commit writer we want anyway), readers isolated from uncommitted
//! writes, and quick crash recovery. An LSM store would also fit, but would expose or require
//! care around unflushed memtable data on reads.

mod slot;
mod writer;

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
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            max_batch: DEFAULT_MAX_BATCH,
            cache_bytes: 256 << 20,
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
    /// The items table of the last read transaction, with the count of commits it was
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
        let (used_bytes, flush_at, clock, incomplete) = init_tables(&db)?;
        let shared = Arc::new(Shared::default());
        shared
            .used_bytes
            .store(used_bytes as usize, Ordering::Release);
        shared.flush_at.store(flush_at, Ordering::Release);
        shared
            .memory_limit
            .store(limits.memory_limit_bytes, Ordering::Release);
        let writer = Writer {
            db: Arc::clone(&db),
            shared: Arc::clone(&shared),
            item_size_max: limits.item_size_max,
            max_batch: options.max_batch.max(1),
            used_bytes: used_bytes as usize,
            flush_at,
            clock,
            incomplete: incomplete != 0,
            last_reclaim: 0,
        };
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

    /// How many commits (fsyncs) have been made: writes divided by this is the batch size.
    pub fn commits(&self) -> u64 {
        self.shared.batches.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op) -> Result<(), DataletError> {
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        match ops.as_ref() {
            Some(tx) => tx.send(op).map_err(|_| unavailable("writer stopped")),
            None => Err(unavailable("closed")),
        }
    }

    /// Reads `key` from a read transaction opened after every commit made so far: the one
    /// the last read opened, while the writer has not committed since, else a new one. A
    /// write is answered only after its commit is counted, so a read that starts after the
    /// answer sees it; between commits, reads share one transaction instead of opening one
    /// each.
    fn read_slot(&self, key: &[u8]) -> Result<Option<Slot>, DataletError> {
        let commits = self.shared.batches.load(Ordering::Acquire);
        let cached = self
            .reading
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(seen, _)| *seen == commits)
            .map(|(_, table)| Arc::clone(table));
        let table = match cached {
            Some(table) => table,
            None => {
                let txn = self.db.begin_read().map_err(unavailable)?;
                let table = Arc::new(txn.open_table(ITEMS).map_err(unavailable)?);
                let mut reading = self.reading.write().unwrap_or_else(|e| e.into_inner());
                if reading.as_ref().is_none_or(|(seen, _)| *seen < commits) {
                    *reading = Some((commits, Arc::clone(&table)));
                }
                table
            }
        };
        let slot = table.get(key).map_err(unavailable)?;
        Ok(slot.and_then(|bytes| Slot::decode(bytes.value())))
    }
}

/// Creates the tables if they are missing and reads the metadata.
fn init_tables(db: &Database) -> Result<(u64, UnixSecs, Ts, u64), DataletError> {
    let txn = db.begin_write().map_err(unavailable)?;
    let meta = {
        txn.open_table(ITEMS).map_err(unavailable)?;
        let table = txn.open_table(META).map_err(unavailable)?;
        let read = |name| -> Result<u64, DataletError> {
            Ok(table
                .get(name)
                .map_err(unavailable)?
                .map_or(0, |v| v.value()))
        };
        (
            read(META_USED_BYTES)?,
            read(META_FLUSH_AT)?,
            read(META_CLOCK)?,
            read(META_INCOMPLETE)?,
        )
    };
    txn.commit().map_err(unavailable)?;
    Ok(meta)
}

/// The live items at `now` in one read transaction.
fn scan_snapshot(db: &Database, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
    use crate::Snapshot as _;
    DiskSnapshot::open(db, now)?.next_part(usize::MAX)
}

/// A snapshot read from one read transaction, a part at a time.
struct DiskSnapshot {
    items: redb::Range<'static, &'static [u8], &'static [u8]>,
    flush_at: UnixSecs,
    now: UnixSecs,
    held: Option<(Bytes, Item)>,
}

impl DiskSnapshot {
    fn open(db: &Database, now: UnixSecs) -> Result<DiskSnapshot, DataletError> {
        let txn = db.begin_read().map_err(unavailable)?;
        let meta = txn.open_table(META).map_err(unavailable)?;
        let flush_at = meta
            .get(META_FLUSH_AT)
            .map_err(unavailable)?
            .map_or(0, |v| v.value());
        let items = txn.open_table(ITEMS).map_err(unavailable)?;
        let items = items.range::<&[u8]>(..).map_err(unavailable)?;
        Ok(DiskSnapshot {
            items,
            flush_at,
            now,
            held: None,
        })
    }
}

impl crate::Snapshot for DiskSnapshot {
    fn next_part(&mut self, max_bytes: usize) -> Result<Vec<(Bytes, Item)>, DataletError> {
        let (flush_at, now) = (self.flush_at, self.now);
        let live = self.items.by_ref().filter_map(|entry| {
            let (key, bytes) = match entry {
                Ok(entry) => entry,
                Err(e) => return Some(Err(unavailable(e))),
            };
            let slot = Slot::decode(bytes.value())?;
            dead(&slot.item, slot.stored_at, flush_at, now)
                .is_none()
                .then(|| Ok((Bytes::copy_from_slice(key.value()), slot.item)))
        });
        crate::fill_part(live, &mut self.held, max_bytes)
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
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || scan_snapshot(&db, now))
            .await
            .map_err(unavailable)?
    }

    /// A read transaction (redb's snapshot isolation), its items read as they are asked for.
    async fn snapshot(&self, now: UnixSecs) -> Result<Box<dyn crate::Snapshot>, DataletError> {
        let db = Arc::clone(&self.db);
        let snapshot = tokio::task::spawn_blocking(move || DiskSnapshot::open(&db, now))
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

    async fn load_clock(&self) -> Result<Ts, DataletError> {
        let txn = self.db.begin_read().map_err(unavailable)?;
        let table = txn.open_table(META).map_err(unavailable)?;
        let read = |name| -> Result<u64, DataletError> {
            Ok(table
                .get(name)
                .map_err(unavailable)?
                .map_or(0, |v| v.value()))
        };
        if read(META_INCOMPLETE)? != 0 {
            return Ok(0);
        }
        read(META_CLOCK)
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
        let curr_items = self
            .db
            .begin_read()
            .ok()
            .and_then(|txn| txn.open_table(ITEMS).ok()?.len().ok())
            .unwrap_or(0);
        let s = &self.shared;
        DataletStats {
            curr_items,
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
