//! The connection pool: a fixed number of tasks, each owning one connection and a queue of
//! jobs.
//!
//! # Pipelining
//!
//! A job that is exactly one request and one reply (a `get`, a plain `set`) is
//! *pipelined*: the task takes it together with the pipelined jobs queued behind it, up to
//! [`MAX_IN_FLIGHT`] of them (and about [`MAX_BATCH_BYTES`] of values), writes all their
//! requests in one write, and hands each reply to its job as it arrives, in order: memcached
//! answers the requests of one connection in the order they came. Every other job (a
//! read-modify-write, the clock, a flush, a reset, `cache_memlimit`, `stats`) runs alone: the
//! task first waits for every reply in flight, then carries the job out to its end, then takes
//! the next one. So the connection's own order is the queue's order, and no later job gets in
//! between a read-modify-write's read and its conditional write.
//!
//! # Ordering
//!
//! A key always goes to the same task ([`worker_for`]), and a task's requests reach the remote
//! server in the order their jobs were queued, and a read-modify-write finishes before any
//! later job's request is sent. So two operations on one key are never reordered or
//! interleaved, whichever callers issued them; operations on different keys run in parallel
//! on different connections.
//!
//! # Failure and reconnection
//!
//! A task connects when its first job comes. When the connection fails (refused, reset, a
//! timeout, a reply that makes no sense) it is dropped and the job fails with
//! [`DataletError::Unavailable`], and so does every job whose request is in flight with it:
//! whether such a request took effect is unknown. Jobs that come in the next moment fail at
//! once without trying, and then the next job tries to connect again; each failure in a row
//! doubles that moment, from [`FIRST_BACKOFF`] up to [`super::RemoteOptions::max_backoff`].
//! Connecting and every exchange (one request, or one pipelined batch) are under timeouts,
//! so a job never waits on a dead server for long. After each reconnect the clock
//! reservation is put back first: a remote server that restarted has lost it.

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::client;
use super::clock;
use super::conn::{Conn, ConnError};
use super::ops::{self, OpError};
use super::state::Shared;
use crate::{DataletError, Item, Mutation, Outcome};

/// The wait before reconnecting after a first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The most requests a connection has in flight at once.
pub const MAX_IN_FLIGHT: usize = 128;

/// A batch takes no more jobs once its values add up to this many bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

type Reply<T> = oneshot::Sender<Result<T, DataletError>>;

/// Work for a connection task.
pub enum Job {
    /// A read; `counted` when a dead item counts as an expired or flushed read (a client's
    /// read, not a scan's).
    Get {
        key: Bytes,
        now: UnixSecs,
        counted: bool,
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
    Reset {
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

impl Job {
    /// Whether the job is one request and one reply, so it can be pipelined; and then the
    /// bytes of value it sends.
    fn pipelined(&self) -> Option<usize> {
        match self {
            Job::Get { .. } => Some(0),
            Job::Apply { mutation, .. } if ops::single_request(mutation) => match mutation {
                Mutation::Store { value, .. } => Some(value.len()),
                _ => Some(0),
            },
            _ => None,
        }
    }
}

/// A pipelined job whose request is in flight.
enum InFlight {
    Get {
        now: UnixSecs,
        counted: bool,
        reply: Reply<Option<Item>>,
    },
    Set {
        pending: ops::PendingSet,
        reply: Reply<Outcome>,
    },
}

impl InFlight {
    /// Hands the job the outcome of its reply. A reply that condemns the connection fails the
    /// job, and comes back as the error.
    fn finish(self, s: &Shared, reply: client::Reply) -> Result<(), ConnError> {
        match self {
            InFlight::Get {
                now,
                counted,
                reply: tx,
            } => answer(ops::got(s, reply, now, counted), tx),
            InFlight::Set { pending, reply: tx } => answer(ops::set_done(s, pending, reply), tx),
        }
    }

    fn fail(self, e: DataletError) {
        match self {
            InFlight::Get { reply, .. } => drop(reply.send(Err(e))),
            InFlight::Set { reply, .. } => drop(reply.send(Err(e))),
        }
    }
}

/// Answers a job; a connection error also comes back, to fail the connection.
fn answer<T>(result: Result<T, OpError>, tx: Reply<T>) -> Result<(), ConnError> {
    let (answer, condemned) = match result {
        Ok(value) => (Ok(value), None),
        Err(OpError::Refused(e)) => (Err(e), None),
        Err(OpError::Down(why)) => (Err(DataletError::Unavailable(why)), None),
        Err(OpError::Conn(e)) => (Err(DataletError::Unavailable(e.to_string())), Some(e)),
    };
    let _ = tx.send(answer);
    condemned.map_or(Ok(()), Err)
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
        held: None,
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
    /// A job taken off the queue while gathering a batch, that must run after it.
    held: Option<Job>,
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
            let job = match self.held.take() {
                Some(job) => job,
                None => tokio::select! {
                    job = self.jobs.recv() => match job {
                        Some(job) => job,
                        None => return,
                    },
                    _ = ticker.tick(), if refreshes => Job::RefreshStats,
                },
            };
            match job.pipelined() {
                Some(bytes) => {
                    let batch = self.gather(job, bytes);
                    self.pipeline(batch).await;
                }
                None => self.handle(job).await,
            }
        }
    }

    /// `first` and the pipelined jobs queued right behind it. A job that cannot be pipelined
    /// ends the batch and is held for after it.
    fn gather(&mut self, first: Job, mut bytes: usize) -> Vec<Job> {
        let mut batch = vec![first];
        while batch.len() < MAX_IN_FLIGHT && bytes < MAX_BATCH_BYTES {
            let Ok(job) = self.jobs.try_recv() else {
                break;
            };
            match job.pipelined() {
                Some(more) => {
                    bytes += more;
                    batch.push(job);
                }
                None => {
                    self.held = Some(job);
                    break;
                }
            }
        }
        batch
    }

    /// Sends the batch's requests in one write and answers each job by its reply, in order.
    async fn pipeline(&mut self, batch: Vec<Job>) {
        let s = Arc::clone(&self.shared);
        let conn = match self.link.ready(&s).await {
            Ok(conn) => conn,
            Err(e) => {
                let e = self.link.settle::<()>(Err(e), &s).unwrap_err();
                for job in batch {
                    fail(job, e.clone());
                }
                return;
            }
        };
        let out = conn.batch();
        let mut expects = Vec::with_capacity(batch.len());
        let mut flying = Vec::with_capacity(batch.len());
        for job in batch {
            match job {
                Job::Get {
                    key,
                    now,
                    counted,
                    reply,
                } => {
                    expects.push(ops::plan_get(out, &key));
                    flying.push(Some(InFlight::Get {
                        now,
                        counted,
                        reply,
                    }));
                }
                Job::Apply {
                    key,
                    mutation,
                    version,
                    now,
                    reply,
                } => match ops::plan_set(&s, out, &key, mutation, version, now) {
                    ops::SetPlan::Done(outcome) => drop(reply.send(Ok(outcome))),
                    ops::SetPlan::Sent { expect, pending } => {
                        expects.push(expect);
                        flying.push(Some(InFlight::Set { pending, reply }));
                    }
                },
                _ => unreachable!("not a pipelined job"),
            }
        }
        if expects.is_empty() {
            return;
        }
        let result = conn
            .pipeline(&expects, |i, reply| {
                let job = flying[i].take().expect("one reply for each request");
                job.finish(&s, reply)
            })
            .await;
        if let Err(e) = self.link.settle(result.map_err(OpError::Conn), &s) {
            for job in flying.into_iter().flatten() {
                job.fail(e.clone());
            }
        }
    }

    async fn handle(&mut self, job: Job) {
        let s = Arc::clone(&self.shared);
        match job {
            Job::Get {
                key,
                now,
                counted,
                reply,
            } => {
                let _ = reply.send(on_conn!(self, c => ops::get(&s, c, &key, now, counted)));
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
            Job::Reset { reply } => {
                let _ = reply.send(on_conn!(self, c => ops::reset(&s, c)));
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

/// Fails a job that never reached the remote server.
fn fail(job: Job, e: DataletError) {
    match job {
        Job::Get { reply, .. } => drop(reply.send(Err(e))),
        Job::Apply { reply, .. } => drop(reply.send(Err(e))),
        Job::FlushAll { reply, .. } => drop(reply.send(Err(e))),
        Job::Reset { reply } => drop(reply.send(Err(e))),
        Job::LoadClock { reply } => drop(reply.send(Err(e))),
        Job::SaveClock { reply, .. } => {
            if let Some(reply) = reply {
                drop(reply.send(Err(e)));
            }
        }
        Job::CacheMemlimit { .. } | Job::RefreshStats => {}
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
