//! The connection pool: a fixed number of tasks, each owning one connection and a queue of
//! jobs. A task takes the jobs queued for it in batches, as [`plan`] decides, writes each
//! batch's requests in one write, and hands each reply to its job as it arrives, in order:
//! memcached answers the requests of one connection in the order they came. A key always
//! goes to the same task ([`worker_for`]), so its operations keep their order.
//!
//! # Failure and reconnection
//!
//! A task connects when its first job comes. When the connection fails (refused, reset, a
//! timeout, a reply that makes no sense) it is dropped and the job fails with
//! [`DataletError::Unavailable`], and so does every job whose request is in flight with it:
//! whether such a request took effect is unknown. Jobs that come in the next moment fail at
//! once without trying, and then the next job tries to connect again; each failure in a row
//! doubles that moment, from [`FIRST_BACKOFF`] up to [`super::RemoteOptions::max_backoff`].
//! Connecting and every exchange (one request, or one batch) are under timeouts,
//! so a job never waits on a dead server for long. After each reconnect the clock
//! reservation is put back first: a remote server that restarted has lost it.

use std::hash::{DefaultHasher, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tailorkv_common::client;
use tailorkv_common::{Ts, UnixSecs, Version};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::clock;
use super::conn::{Conn, ConnError};
use super::ops::{self, OpError};
use super::plan::{self, Batch, Request, Step, StepKind};
use super::state::{self, Shared};
use crate::{DataletError, Item, Mutation, Outcome};

/// The wait before reconnecting after a first failure.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(50);

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
    /// The job as a step of a batch, if it goes in one: a get, or any mutation.
    fn step(&self) -> Option<Step<'_>> {
        match self {
            Job::Get { key, .. } => Some(Step::get(key)),
            Job::Apply { key, mutation, .. } => Some(Step {
                key,
                kind: if ops::single_request(mutation) {
                    StepKind::Write
                } else {
                    StepKind::Rmw
                },
                bytes: match mutation {
                    Mutation::Store { value, .. } => value.len(),
                    _ => 0,
                },
            }),
            _ => None,
        }
    }
}

/// A read-modify-write in a batch: its `gets` goes out with the batch, its write once the
/// batch's replies are in.
struct Rmw {
    key: Bytes,
    mutation: Mutation,
    version: Version,
    now: UnixSecs,
    reply: Reply<Outcome>,
}

/// A pipelined request in flight: one `gets` for a run of gets, a `set`, or the `gets` of a
/// read-modify-write.
enum InFlight {
    Gets(GetsInFlight),
    Set {
        pending: ops::PendingSet,
        reply: Reply<Outcome>,
    },
    Read(Rmw),
}

/// A get in a `gets`.
struct Waiting {
    /// Its key's place among the run's keys.
    slot: usize,
    now: UnixSecs,
    counted: bool,
    reply: Reply<Option<Item>>,
}

impl InFlight {
    /// Hands the jobs the outcome of their reply. A reply that condemns the connection fails
    /// the jobs, and comes back as the error.
    fn finish(self, s: &Shared, reply: client::Reply) -> Result<(), ConnError> {
        match self {
            InFlight::Gets(run) => finish_gets(s, run, reply),
            InFlight::Set { pending, reply: tx } => answer(ops::set_done(s, pending, reply), tx),
            InFlight::Read(_) => unreachable!("a read's reply goes to the write it plans"),
        }
    }

    fn fail(self, e: DataletError) {
        match self {
            InFlight::Gets(run) => {
                for w in run.waiting {
                    let _ = w.reply.send(Err(e.clone()));
                }
            }
            InFlight::Set { reply, .. } | InFlight::Read(Rmw { reply, .. }) => {
                drop(reply.send(Err(e)))
            }
        }
    }
}

impl Waiting {
    /// The get `job`, whose key is at `slot` in its `gets`.
    fn of(job: Option<Job>, slot: usize) -> Waiting {
        match job {
            Some(Job::Get {
                now,
                counted,
                reply,
                ..
            }) => Waiting {
                slot,
                now,
                counted,
                reply,
            },
            _ => unreachable!("a run of gets holds gets, each once"),
        }
    }
}

/// Encodes the request of the mutation `job` into `out`: a `set`, or the `gets` of a
/// read-modify-write; `None` when the job was answered without one.
fn send_mutation(
    s: &Shared,
    out: &mut bytes::BytesMut,
    job: Option<Job>,
) -> Option<(client::Expect, InFlight)> {
    let Some(Job::Apply {
        key,
        mutation,
        version,
        now,
        reply,
    }) = job
    else {
        unreachable!("a mutation's place in the batch holds it, once");
    };
    if let Some(outcome) = ops::refused_early(s, &key, &mutation) {
        let _ = reply.send(Ok(outcome));
        return None;
    }
    if !ops::single_request(&mutation) {
        let expect = ops::plan_read(out, &key);
        let rmw = Rmw {
            key,
            mutation,
            version,
            now,
            reply,
        };
        return Some((expect, InFlight::Read(rmw)));
    }
    match ops::plan_set(s, out, &key, mutation, version, now) {
        ops::SetPlan::Done(outcome) => {
            let _ = reply.send(Ok(outcome));
            None
        }
        ops::SetPlan::Sent { expect, pending } => Some((expect, InFlight::Set { pending, reply })),
    }
}

/// Answers the gets of one `gets` by its reply. The hits come in the order their keys were
/// asked, each key at most once (the keys are distinct), and a key with no hit was not found;
/// a hit out of that order leaves the connection untrustworthy. Any other reply (an error)
/// answers every get alike.
fn finish_gets(s: &Shared, run: GetsInFlight, reply: client::Reply) -> Result<(), ConnError> {
    let hits = match reply {
        client::Reply::Values(hits) => hits,
        other => {
            let mut condemned = Ok(());
            for w in run.waiting {
                let answered = answer(ops::got(s, other.clone(), w.now, w.counted), w.reply);
                condemned = condemned.and(answered);
            }
            return condemned;
        }
    };
    let mut found: Vec<Option<client::Hit>> = vec![None; run.keys.len()];
    let mut next = 0;
    for hit in hits {
        match run.keys[next..].iter().position(|k| *k == hit.key) {
            Some(at) => {
                found[next + at] = Some(hit);
                next += at + 1;
            }
            None => {
                let key = String::from_utf8_lossy(&hit.key).into_owned();
                let e = ConnError::Protocol(client::ProtocolError::ValueNotAsked(key));
                InFlight::Gets(run).fail(DataletError::Unavailable(e.to_string()));
                return Err(e);
            }
        }
    }
    let mut condemned = Ok(());
    for w in run.waiting {
        let hit = client::Reply::Value(found[w.slot].clone());
        condemned = condemned.and(answer(ops::got(s, hit, w.now, w.counted), w.reply));
    }
    condemned
}

/// A `gets` in flight for a run of gets ([`plan::GetsRun`]).
struct GetsInFlight {
    /// The distinct keys asked, in order.
    keys: Vec<Bytes>,
    /// The gets waiting for its reply.
    waiting: Vec<Waiting>,
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
            if job.step().is_some() {
                let batch = self.gather(job);
                self.pipeline(batch).await;
            } else {
                self.handle(job).await;
            }
        }
    }

    /// `first` and the gets and mutations queued right behind it, as far as [`Batch`] takes
    /// them. Any other job, or one the batch does not take, ends the batch and is held for
    /// after it.
    fn gather(&mut self, first: Job) -> Vec<Job> {
        let mut plan = Batch::new(first.step().expect("a job that goes in a batch"));
        let mut batch = vec![first];
        while plan.has_room() {
            let Ok(job) = self.jobs.try_recv() else {
                break;
            };
            if !job.step().is_some_and(|step| plan.admit(step)) {
                self.held = Some(job);
                break;
            }
            batch.push(job);
        }
        batch
    }

    /// Sends the batch's requests in one write and answers each job by its reply, in order;
    /// then writes back the batch's read-modify-writes (see [`Worker::write_back`]).
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
        if s.refuses() {
            for job in batch {
                fail(job, DataletError::Unavailable(state::LOST.into()));
            }
            return;
        }
        let steps: Vec<Step<'_>> = batch
            .iter()
            .map(|job| job.step().expect("a batch holds gets and mutations"))
            .collect();
        let requests = plan::requests(&steps);
        let mut jobs: Vec<Option<Job>> = batch.into_iter().map(Some).collect();
        let out = conn.batch();
        let mut expects = Vec::with_capacity(jobs.len());
        let mut flying = Vec::with_capacity(jobs.len());
        for request in requests {
            match request {
                Request::Gets(run) => {
                    let waiting = run
                        .gets
                        .iter()
                        .map(|&(job, slot)| Waiting::of(jobs[job].take(), slot))
                        .collect();
                    expects.push(ops::plan_gets(out, &run.keys));
                    let keys = run.keys;
                    flying.push(Some(InFlight::Gets(GetsInFlight { keys, waiting })));
                }
                Request::Mutation(job) => {
                    let sent = send_mutation(&s, out, jobs[job].take());
                    if let Some((expect, in_flight)) = sent {
                        expects.push(expect);
                        flying.push(Some(in_flight));
                    }
                }
            }
        }
        if expects.is_empty() {
            return;
        }
        // The read-modify-writes whose read came back, with what it found.
        let mut read: Vec<(Rmw, Option<client::Hit>)> = Vec::new();
        let result = conn
            .pipeline(&expects, |i, reply| {
                match flying[i].take().expect("one reply for each request") {
                    InFlight::Read(rmw) => match ops::read(reply) {
                        Ok(found) => {
                            read.push((rmw, found));
                            Ok(())
                        }
                        Err(e) => answer(Err(e), rmw.reply),
                    },
                    job => job.finish(&s, reply),
                }
            })
            .await;
        if let Err(e) = self.link.settle(result.map_err(OpError::Conn), &s) {
            for job in flying.into_iter().flatten() {
                job.fail(e.clone());
            }
            for (rmw, _) in read {
                let _ = rmw.reply.send(Err(e.clone()));
            }
            return;
        }
        if !read.is_empty() {
            self.write_back(read).await;
        }
    }

    /// The second half of a batch's read-modify-writes: each is decided on what its read
    /// found and its conditional write goes out, all in one write. Their keys are distinct
    /// and no later job on them has been sent ([`Worker::gather`]), so a key's order holds.
    /// One that lost a race to another writer then runs again alone, reading afresh.
    async fn write_back(&mut self, read: Vec<(Rmw, Option<client::Hit>)>) {
        let s = Arc::clone(&self.shared);
        let mut raced = Vec::new();
        let conn = match self.link.ready(&s).await {
            Ok(conn) => conn,
            Err(e) => {
                let e = self.link.settle::<()>(Err(e), &s).unwrap_err();
                for (rmw, _) in read {
                    let _ = rmw.reply.send(Err(e.clone()));
                }
                return;
            }
        };
        let out = conn.batch();
        let mut expects = Vec::with_capacity(read.len());
        let mut writing = Vec::with_capacity(read.len());
        for (rmw, found) in read {
            let mutation = rmw.mutation.clone();
            match ops::plan_write(
                &s,
                out,
                &rmw.key,
                found.as_ref(),
                mutation,
                rmw.version,
                rmw.now,
            ) {
                ops::WritePlan::Done(outcome) => drop(rmw.reply.send(Ok(outcome))),
                ops::WritePlan::Sent { expect, pending } => {
                    expects.push(expect);
                    writing.push(Some((rmw, pending)));
                }
            }
        }
        if !expects.is_empty() {
            let result = conn
                .pipeline(&expects, |i, reply| {
                    let (rmw, pending) = writing[i].take().expect("one reply for each request");
                    match ops::write_done(&s, pending, reply) {
                        Ok(Some(outcome)) => answer(Ok(outcome), rmw.reply),
                        Ok(None) => {
                            raced.push(rmw);
                            Ok(())
                        }
                        Err(e) => answer(Err(e), rmw.reply),
                    }
                })
                .await;
            if let Err(e) = self.link.settle(result.map_err(OpError::Conn), &s) {
                let unanswered = writing.into_iter().flatten().map(|(rmw, _)| rmw);
                for rmw in unanswered.chain(raced) {
                    let _ = rmw.reply.send(Err(e.clone()));
                }
                return;
            }
        }
        for rmw in raced {
            let (key, mutation, version, now) = (&rmw.key, rmw.mutation, rmw.version, rmw.now);
            let result = on_conn!(self, c => ops::apply(&s, c, key, mutation, version, now));
            let _ = rmw.reply.send(result);
        }
    }

    async fn handle(&mut self, job: Job) {
        let s = Arc::clone(&self.shared);
        match job {
            Job::Get { .. } | Job::Apply { .. } => unreachable!("gets and mutations go in batches"),
            Job::FlushAll { reply, .. } if s.refuses() => {
                let _ = reply.send(Err(DataletError::Unavailable(state::LOST.into())));
            }
            Job::FlushAll { at, now, reply } => {
                let result = on_conn!(self, c => ops::flush_all(&s, c, at, now));
                if result.is_ok() && at > now {
                    self.resave_clock_after(at - now);
                }
                let _ = reply.send(result);
            }
            Job::Reset { reply } => {
                let result = on_conn!(self, c => ops::reset(&s, c));
                if result.is_ok() {
                    s.reset_done();
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
                // The reservation is only ever raised: a server without it lost its items.
                if clock::held_clock(&mut conn)
                    .await?
                    .is_none_or(|held| held < saved)
                {
                    s.lost_items("the remote server no longer holds the clock reservation: it restarted empty, was flushed by another client, or evicted");
                }
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

    use crate::remote::header::Header;
    use crate::{Limits, RemoteOptions};
    use tailorkv_common::{Expiry, NodeId};

    fn shared() -> Shared {
        Shared::new("unused".into(), Limits::default(), RemoteOptions::default())
    }

    type Answer = oneshot::Receiver<Result<Option<Item>, DataletError>>;

    /// The `gets` of a run of gets of `keys` (a key may come more than once), as planned,
    /// and what each get is answered.
    fn run_of(keys: &[&str]) -> (GetsInFlight, Vec<Answer>) {
        let keys: Vec<Bytes> = keys
            .iter()
            .map(|k| Bytes::copy_from_slice(k.as_bytes()))
            .collect();
        let steps: Vec<Step<'_>> = keys.iter().map(Step::get).collect();
        let [Request::Gets(run)] = &plan::requests(&steps)[..] else {
            panic!("one run of gets");
        };
        let (waiting, answers) = run
            .gets
            .iter()
            .map(|&(_, slot)| {
                let (reply, answer) = oneshot::channel();
                let waiting = Waiting {
                    slot,
                    now: 100,
                    counted: true,
                    reply,
                };
                (waiting, answer)
            })
            .unzip();
        let keys = run.keys.clone();
        (GetsInFlight { keys, waiting }, answers)
    }

    /// A hit on `key` holding `data` under a valid header.
    fn hit(key: &str, data: &str) -> client::Hit {
        let header = Header {
            version: Version::new(5, NodeId(1)),
            expiry: Expiry::Never,
            stored_at: 50,
            marks: crate::Marks::default(),
        };
        client::Hit {
            key: Bytes::copy_from_slice(key.as_bytes()),
            flags: 3,
            cas: 9,
            data: header.join(data.as_bytes()),
        }
    }

    fn answered(answers: Vec<Answer>) -> Vec<String> {
        answers
            .into_iter()
            .map(|mut a| match a.try_recv().expect("answered") {
                Ok(Some(item)) => String::from_utf8(item.value.to_vec()).unwrap(),
                Ok(None) => "miss".into(),
                Err(e) => format!("error: {e}"),
            })
            .collect()
    }

    #[test]
    fn the_hits_of_one_gets_go_to_their_keys_and_the_rest_are_misses() {
        let (w, answers) = run_of(&["a", "b", "c", "b", "d"]);
        let reply = client::Reply::Values(vec![hit("b", "B"), hit("d", "D")]);
        assert!(finish_gets(&shared(), w, reply).is_ok());
        assert_eq!(answered(answers), ["miss", "B", "miss", "B", "D"]);

        let (w, answers) = run_of(&["a", "b"]);
        assert!(finish_gets(&shared(), w, client::Reply::Values(vec![])).is_ok());
        assert_eq!(answered(answers), ["miss", "miss"]);
    }

    #[test]
    fn a_hit_out_of_order_or_not_asked_for_fails_every_get_and_the_connection() {
        for hits in [
            vec![hit("b", "B"), hit("a", "A")],
            vec![hit("a", "A"), hit("x", "X")],
            vec![hit("a", "A"), hit("a", "A")],
        ] {
            let (w, answers) = run_of(&["a", "b"]);
            let e = finish_gets(&shared(), w, client::Reply::Values(hits)).unwrap_err();
            assert!(matches!(e, ConnError::Protocol(_)), "{e}");
            for answer in answered(answers) {
                assert!(answer.starts_with("error: "), "{answer}");
            }
        }
    }

    #[test]
    fn an_error_reply_answers_every_get_of_the_gets() {
        let (w, answers) = run_of(&["a", "b"]);
        let busy = client::Reply::ServerError("busy".into());
        assert!(finish_gets(&shared(), w, busy).is_ok());
        for answer in answered(answers) {
            assert!(answer.contains("remote server error: busy"), "{answer}");
        }
        let (w, answers) = run_of(&["a", "b"]);
        assert!(finish_gets(&shared(), w, client::Reply::Error).is_err());
        assert_eq!(answered(answers).len(), 2);
    }

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
