//! The connection pool: a fixed number of tasks, each owning one connection and a queue of
//! jobs.
//!
//! # Ordering
//!
//! A key always goes to the same task ([`worker_for`]), and a task carries out its jobs one
//! at a time in the order they were queued: a read-modify-write finishes before the next job
//! starts. So two operations on one key are never reordered or interleaved, whichever callers
//! issued them; operations on different keys run in parallel on different connections.
//!
//! # Failure and reconnection
//!
//! A task connects when its first job comes. When the connection fails (refused, reset, a
//! timeout, a reply that makes no sense) it is dropped and the job fails with
//! [`DataletError::Unavailable`]. Jobs that come in the next moment fail at once without
//! trying, and then the next job tries to connect again; each failure in a row doubles that
//! moment, from [`FIRST_BACKOFF`] up to [`super::RemoteOptions::max_backoff`]. Connecting and
//! every request are under timeouts, so a job never waits on a dead server for long. After
//! each reconnect the clock reservation is put back first: a remote server that restarted has
//! lost it.

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::clock;
use super::conn::Conn;
use super::ops::{self, OpError};
use super::state::Shared;
use crate::{DataletError, Item, Mutation, Outcome};

/// The wait before reconnecting after a first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

type Reply<T> = oneshot::Sender<Result<T, DataletError>>;

/// Work for a connection task.
pub enum Job {
    Get {
        key: Bytes,
        now: UnixSecs,
        reply: Reply<Option<Item>>,
    },
    Apply {
        key: Bytes,
        mutation: Mutation,
        version: Version,
        now: UnixSecs,
        reply: Reply<Outcome>,
    },
    FlushAll {
        at: UnixSecs,
        now: UnixSecs,
        reply: Reply<()>,
    },
    LoadClock {
        reply: Reply<Ts>,
    },
    /// `reply` is `None` when no one waits: putting the clock back after a delayed flush.
    SaveClock {
        ts: Ts,
        reply: Option<Reply<()>>,
    },
    CacheMemlimit {
        megabytes: u64,
    },
    RefreshStats,
}

/// The task a key's operations go to, out of `n`.
pub fn worker_for(key: &[u8], n: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    hasher.write(key);
    (hasher.finish() % n as u64) as usize
}

/// Starts the connection task number `index` and returns its queue.
pub fn spawn(index: usize, shared: Arc<Shared>) -> UnboundedSender<Job> {
    let (tx, jobs) = unbounded_channel();
    let worker = Worker {
        index,
        shared,
        link: Link::default(),
        jobs,
        queue: tx.downgrade(),
    };
    tokio::spawn(worker.run());
    tx
}

struct Worker {
    index: usize,
    shared: Arc<Shared>,
    link: Link,
    jobs: UnboundedReceiver<Job>,
    /// This task's own queue, for jobs it schedules for later; weak, so that the task ends
    /// when the datalet is dropped.
    queue: tokio::sync::mpsc::WeakUnboundedSender<Job>,
}

/// Runs `$op` (an expression using the connection `$conn`) on the worker's connection,
/// connecting first if need be, and settles the connection's state by the result.
macro_rules! on_conn {
    ($w:ident, $conn:ident => $op:expr) => {{
        let result = match $w.link.ready(&$w.shared).await {
            Ok($conn) => $op.await,
            Err(e) => Err(e),
        };
        $w.link.settle(result, &$w.shared)
    }};
}

impl Worker {
    async fn run(mut self) {
        // The first task also refreshes the remote server's counters now and then.
        let period = self.shared.options.stats_refresh;
        let mut ticker = interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let refreshes = self.index == 0;
        loop {
            let job = tokio::select! {
                job = self.jobs.recv() => job,
                _ = ticker.tick(), if refreshes => Some(Job::RefreshStats),
            };
            match job {
                Some(job) => self.handle(job).await,
                None => return,
            }
        }
    }

    async fn handle(&mut self, job: Job) {
        let s = Arc::clone(&self.shared);
        match job {
            Job::Get { key, now, reply } => {
                let _ = reply.send(on_conn!(self, c => ops::get(&s, c, &key, now)));
            }
            Job::Apply {
                key,
                mutation,
                version,
                now,
                reply,
            } => {
                let result = on_conn!(self, c => ops::apply(&s, c, &key, mutation, version, now));
                let _ = reply.send(result);
            }
            Job::FlushAll { at, now, reply } => {
                let result = on_conn!(self, c => ops::flush_all(&s, c, at, now));
                if result.is_ok() && at > now {
                    self.resave_clock_after(at - now);
                }
                let _ = reply.send(result);
            }
            Job::LoadClock { reply } => {
                let _ = reply.send(on_conn!(self, c => clock::load_clock(&s, c)));
            }
            Job::SaveClock { ts, reply } => {
                let result = on_conn!(self, c => clock::save_clock(&s, c, ts));
                match reply {
                    Some(reply) => drop(reply.send(result)),
                    None => log_failure("put the clock back", result),
                }
            }
            Job::CacheMemlimit { megabytes } => {
                let result = on_conn!(self, c => ops::cache_memlimit(c, megabytes));
                log_failure("change the memory limit", result);
            }
            Job::RefreshStats => {
                let result = on_conn!(self, c => ops::refresh_stats(&s, c));
                s.refreshing.store(false, Ordering::Release);
                if let Err(e) = result {
                    tracing::debug!(error = %e, "cannot refresh the remote server's stats");
                }
            }
        }
    }

    /// A delayed flush will erase the clock key when it comes: put it back just after.
    fn resave_clock_after(&self, secs: u64) {
        if self.shared.clock_saved() == 0 {
            return;
        }
        let queue = self.queue.clone();
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            let wait = secs + 1 + super::exptime::SLACK_SECS;
            tokio::time::sleep(Duration::from_secs(wait)).await;
            if let Some(queue) = queue.upgrade() {
                let ts = shared.clock_saved();
                let _ = queue.send(Job::SaveClock { ts, reply: None });
            }
        });
    }
}

fn log_failure(what: &str, result: Result<(), DataletError>) {
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot {what}");
    }
}

/// A task's connection, and when to try again after failures.
#[derive(Default)]
struct Link {
    conn: Option<Conn>,
    /// Failures in a row.
    failures: u32,
    /// No new connection is tried before this.
    retry_at: Option<Instant>,
}

impl Link {
    /// The connection, connecting first if there is none and the backoff allows it.
    async fn ready(&mut self, s: &Shared) -> Result<&mut Conn, OpError> {
        if self.conn.is_none() {
            if let Some(at) = self.retry_at.filter(|&at| Instant::now() < at) {
                let wait = at - Instant::now();
                return Err(OpError::Down(format!(
                    "remote server {} unreachable; next attempt in {wait:?}",
                    s.addr
                )));
            }
            let o = &s.options;
            let mut conn = Conn::connect(&s.addr, o.connect_timeout, o.request_timeout).await?;
            let saved = s.clock_saved();
            if saved > 0 {
                clock::resave_clock(s, &mut conn, saved).await?;
            }
            if self.failures > 0 {
                tracing::info!(remote = %s.addr, "remote server connection restored");
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// The result for the caller; a failed connection is dropped and the backoff grows.
    fn settle<T>(&mut self, result: Result<T, OpError>, s: &Shared) -> Result<T, DataletError> {
        match result {
            Ok(value) => {
                self.failures = 0;
                Ok(value)
            }
            Err(OpError::Refused(e)) => {
                self.failures = 0;
                Err(e)
            }
            Err(OpError::Down(why)) => Err(DataletError::Unavailable(why)),
            Err(OpError::Conn(e)) => {
                self.conn = None;
                self.failures = self.failures.saturating_add(1);
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << (self.failures - 1).min(16))
                    .min(s.options.max_backoff);
                self.retry_at = Some(Instant::now() + backoff);
                // Once per outage; the attempts after it fail the same way.
                if self.failures == 1 {
                    tracing::warn!(error = %e, remote = %s.addr, "remote server connection lost");
                } else {
                    tracing::debug!(error = %e, remote = %s.addr, ?backoff, "still no connection");
                }
                Err(DataletError::Unavailable(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_goes_to_the_same_task_and_keys_spread() {
        let mut used = [0usize; 8];
        for i in 0..1000 {
            let key = format!("key{i}");
            let w = worker_for(key.as_bytes(), 8);
            assert_eq!(w, worker_for(key.as_bytes(), 8));
            used[w] += 1;
        }
        assert!(used.iter().all(|&n| n > 60), "uneven spread: {used:?}");
        assert_eq!(worker_for(b"anything", 1), 0);
    }
}
