//! A datalet whose items live in any server that speaks memcached's text protocol: a real
//! memcached, or another tailorkv node.
//!
//! # Layout
//!
//! - [`header`]: the 31 bytes in front of every stored value that carry the item's version,
//!   expiry and write time; the item's flags use memcached's own flags field.
//! - [`exptime`]: the exptime the remote server is given, so it reclaims expired items.
//! - [`conn`]: one connection: a request out and its reply in, or a pipelined batch of
//!   requests out and their replies in, in order, under timeouts. Requests and replies go
//!   through the protocol's client side, [`tailorkv_common::client`].
//! - [`ops`]: each datalet operation as requests: `set` directly, every other mutation as a
//!   `gets`, [`crate::mutate::decide`], and a conditional write back.
//! - [`clock`]: the clock reservation, in a reserved key.
//! - [`plan`]: which queued jobs go out together, and as which requests (pure).
//! - [`pool`]: the connection tasks: pipelining, reconnection with backoff.
//! - [`scan`]: listing the remote server's keys with `lru_crawler metadump`, for
//!   [`Datalet::scan`].
//! - [`state`]: what the tasks share: limits, flush point, saved clock, counters.
//!
//! # How it works
//!
//! [`RemoteDatalet::new`] starts [`RemoteOptions::connections`] tasks, which connect when
//! their first job comes. Each operation is sent to the task its key hashes to and waits for
//! its reply. A task sends what is queued for it in batches, each in one write: gets that
//! follow each other as one `gets k1 k2 ...`, each `set` as one request, and the `gets` of
//! each read-modify-write, whose conditional writes then go out together once the batch's
//! replies are in (a write that lost a race to another client runs again alone). See [`plan`]
//! for why that keeps per-key order, [`pool`] for how failures are handled, and [`ops`] for
//! why concurrent writers to one remote server never lose each other's updates.
//!
//! Visibility is decided here, by the header and the caller's clock, exactly as the memory
//! datalet decides it ([`crate::mutate::dead`]); the remote server's own expiry and flushes
//! are there to free its memory, and to be seen by its other clients.
//!
//! # What differs from a local store
//!
//! In full in `docs/architecture.md`; in short: a value without a valid header (another
//! client's) reads as absent; keys starting with [`RESERVED_PREFIX`] are the datalet's own
//! (the clock reservation lives there); the header counts against the item size; memory is
//! the remote server's to enforce; the flush point is kept in this process only; a replica's
//! store refuses everything once the remote server lost items, until it is reset; a scan is
//! not a snapshot; `reset` empties the whole remote server, other clients' items too.

pub mod clock;
pub mod conn;
pub mod exptime;
pub mod header;
pub mod ops;
pub mod plan;
pub mod pool;
pub mod scan;
pub mod state;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::codec::{sendable_key, StoreMode};
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use crate::{Datalet, DataletError, DataletStats, Item, Limits, Mutation, Outcome};
use pool::{worker_for, Job};
use state::Shared;

pub use header::HEADER_LEN;

/// Keys with this prefix are the datalet's own.
pub const RESERVED_PREFIX: &[u8] = b"__tailorkv_";

/// How the pool connects and how long it waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Connections, each with its own task. Keys are spread over them by hash.
    pub connections: usize,
    /// The longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// The longest one request may wait for its reply.
    pub request_timeout: Duration,
    /// The longest wait between connection attempts while the remote server is down.
    pub max_backoff: Duration,
    /// How often the remote server's counters are fetched for `stats`.
    pub stats_refresh: Duration,
    /// The store is a replica's: once the remote server is found to have lost items (it
    /// restarted empty, or evicted), reads and writes fail until a reset, rather than serve
    /// a copy with holes. A lone node keeps serving, as a cache would.
    pub replica: bool,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        RemoteOptions {
            connections: 8,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            max_backoff: Duration::from_secs(1),
            stats_refresh: Duration::from_secs(1),
            replica: false,
        }
    }
}

/// A datalet on a remote memcached-protocol server.
pub struct RemoteDatalet {
    shared: Arc<Shared>,
    workers: Vec<UnboundedSender<Job>>,
}

impl RemoteDatalet {
    /// A datalet on the server at `addr` (`host:port`). Starts the connection tasks, which
    /// connect on their first operation, so it must be called within a tokio runtime but need
    /// not be awaited, and succeeds whether or not the server is up.
    pub fn new(addr: impl Into<String>, limits: Limits, options: RemoteOptions) -> Self {
        assert!(options.connections > 0, "a pool needs a connection");
        let n = options.connections;
        let shared = Arc::new(Shared::new(addr.into(), limits, options));
        let workers = (0..n)
            .map(|i| pool::spawn(i, Arc::clone(&shared)))
            .collect();
        RemoteDatalet { shared, workers }
    }

    /// Queues `job` on the task for `key` and waits for its reply.
    async fn call<T>(
        &self,
        key: &[u8],
        job: impl FnOnce(oneshot::Sender<Result<T, DataletError>>) -> Job,
    ) -> Result<T, DataletError> {
        let (tx, rx) = oneshot::channel();
        let worker = &self.workers[worker_for(key, self.workers.len())];
        if worker.send(job(tx)).is_err() {
            return Err(gone());
        }
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

fn gone() -> DataletError {
    DataletError::Unavailable("the remote datalet's connection task has stopped".into())
}

/// Whether this datalet stores `key`: not reserved, and sendable in a request line. The
/// request line is what this refusal protects: a key with a space, NUL or `\n` would be read
/// by the remote server as another key or another command.
fn storable(key: &[u8]) -> bool {
    sendable_key(key) && !key.starts_with(RESERVED_PREFIX)
}

impl Datalet for RemoteDatalet {
    async fn get(&self, key: &[u8], now: UnixSecs) -> Result<Option<Item>, DataletError> {
        if !storable(key) {
            return Ok(None);
        }
        let key = Bytes::copy_from_slice(key);
        let job = |reply| Job::Get {
            key: key.clone(),
            now,
            counted: true,
            reply,
        };
        self.call(&key, job).await
    }

    /// The keys come from [`scan::dump_keys`]; those this datalet could have stored are then
    /// read with `gets` through the pool, [`scan::READ_BATCH`] at a time, pipelined on each
    /// connection and in order with the other operations on their key. What reads as a live
    /// item of ours is kept; a key gone since the dump, a foreign value and a dead item are
    /// not (nor counted as expired or flushed reads). Not a snapshot: a write made during the
    /// scan may or may not be seen, and each item is as it was when read.
    async fn scan(&self, now: UnixSecs) -> Result<Vec<(Bytes, Item)>, DataletError> {
        let keys = scan::dump_keys(&self.shared).await?;
        let keys: Vec<Bytes> = keys.into_iter().filter(|k| storable(k)).collect();
        let mut live = Vec::new();
        for batch in keys.chunks(scan::READ_BATCH) {
            let mut reads = Vec::with_capacity(batch.len());
            for key in batch {
                let (reply, read) = oneshot::channel();
                let worker = &self.workers[worker_for(key, self.workers.len())];
                let job = Job::Get {
                    key: key.clone(),
                    now,
                    counted: false,
                    reply,
                };
                if worker.send(job).is_err() {
                    return Err(gone());
                }
                reads.push(read);
            }
            for (key, read) in batch.iter().zip(reads) {
                if let Some(item) = read.await.unwrap_or_else(|_| Err(gone()))? {
                    live.push((key.clone(), item));
                }
            }
        }
        Ok(live)
    }

    async fn apply(
        &self,
        key: &Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
    ) -> Result<Outcome, DataletError> {
        if !storable(key) {
            return Ok(match mutation {
                Mutation::Store { mode, .. } if !matches!(mode, StoreMode::Cas(_)) => {
                    Outcome::NotStored
                }
                _ => Outcome::NotFound,
            });
        }
        let job = |reply| Job::Apply {
            key: key.clone(),
            mutation,
            version,
            now,
            reply,
        };
        self.call(key, job).await
    }

    async fn flush_all(
        &self,
        at: UnixSecs,
        now: UnixSecs,
        _version: Version,
    ) -> Result<(), DataletError> {
        self.call(b"", |reply| Job::FlushAll { at, now, reply })
            .await
    }

    fn lost_items(&self) -> bool {
        self.shared.has_lost_items()
    }

    /// See [`ops::reset`]. Runs on one connection, ordered with the operations queued on it
    /// before; operations still in flight on the others may land before or after it.
    async fn reset(&self) -> Result<(), DataletError> {
        self.call(b"", |reply| Job::Reset { reply }).await
    }

    async fn load_clock(&self) -> Result<Ts, DataletError> {
        self.call(clock::CLOCK_KEY, |reply| Job::LoadClock { reply })
            .await
    }

    async fn save_clock(&self, ts: Ts) -> Result<(), DataletError> {
        let job = |reply| Job::SaveClock {
            ts,
            reply: Some(reply),
        };
        self.call(clock::CLOCK_KEY, job).await
    }

    fn set_memory_limit(&self, bytes: usize) {
        self.shared.set_memory_limit(bytes);
        let megabytes = (bytes as u64).div_ceil(1 << 20);
        for worker in &self.workers {
            let _ = worker.send(Job::CacheMemlimit { megabytes });
        }
    }

    /// The remote server's `bytes` from its last `stats`, without asking for a fresh one.
    fn used_bytes(&self) -> u64 {
        self.shared.stats().bytes
    }

    fn stats(&self) -> DataletStats {
        if !self.shared.refreshing.swap(true, Ordering::AcqRel)
            && self.workers[0].send(Job::RefreshStats).is_err()
        {
            self.shared.refreshing.store(false, Ordering::Release);
        }
        self.shared.stats()
    }
}
