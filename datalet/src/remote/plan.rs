//! Which queued jobs a connection task sends together, and as which requests. Pure: the
//! task ([`super::pool`]) carries the plan out.
//!
//! A round trip to the remote server costs far more than a request in it, and memcached
//! answers one `gets` of many keys with one write instead of one per key. So a task takes
//! the job at the head of its queue together with the gets and mutations queued behind it
//! ([`Batch`]), and writes their requests at once ([`requests`]):
//!
//! - gets that follow each other share one `gets k1 k2 ...` (each key once, the line within
//!   [`client::MAX_GETS_LINE_BYTES`]);
//! - a plain `set` is one request;
//! - a read-modify-write (every other mutation) sends its `gets` with the batch; once the
//!   batch's replies are in, the conditional writes of all of them go out together, so many
//!   read-modify-writes share two round trips instead of taking two each.
//!
//! Every other job (the clock, a flush, a reset, `cache_memlimit`, `stats`) ends the batch
//! and runs alone after it.
//!
//! # Ordering
//!
//! A key always goes to the same task, and a task's requests reach the remote server in the
//! order their jobs were queued. A batch holds at most one read-modify-write of a key and
//! nothing on that key after it: a later job on the key waits for the next batch, which
//! starts only once the write is done. So two operations on one key are never reordered, and
//! nothing lands between a read-modify-write's read and its conditional write but other
//! clients' writes, which make the write fail and the read-modify-write start again.

use bytes::Bytes;
use tailorkv_common::client;

/// The most requests a connection has in flight at once.
pub const MAX_IN_FLIGHT: usize = 128;

/// A batch takes no more jobs once its values add up to this many bytes.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// A job that goes in a batch, as planning sees it: a get or a mutation of `key`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step<'a> {
    /// The key it reads or changes.
    pub key: &'a Bytes,
    /// What it does with the key.
    pub kind: StepKind,
    /// The bytes of value it sends.
    pub bytes: usize,
}

/// What a [`Step`] does with its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A read.
    Get,
    /// A mutation sent as one request whose outcome does not depend on what the key holds
    /// (a plain `set`).
    Write,
    /// A read-modify-write: its `gets` goes out with the batch, its conditional write once
    /// the batch's replies are in.
    Rmw,
}

impl<'a> Step<'a> {
    /// A get of `key`.
    pub fn get(key: &'a Bytes) -> Self {
        Step {
            key,
            kind: StepKind::Get,
            bytes: 0,
        }
    }
}

/// A batch being gathered: how many jobs and bytes it holds, and which keys its later jobs
/// must keep off.
#[derive(Debug)]
pub struct Batch {
    jobs: usize,
    bytes: usize,
    /// The keys of the batch's read-modify-writes: a later job on one of them must wait for
    /// the next batch, since their writes go out after the whole batch.
    rmw_keys: Vec<Bytes>,
}

impl Batch {
    /// A batch of `first`, the job at the head of the queue.
    pub fn new(first: Step<'_>) -> Self {
        let mut batch = Batch {
            jobs: 0,
            bytes: 0,
            rmw_keys: Vec::new(),
        };
        batch.take(first);
        batch
    }

    /// Whether the batch may take one more job: it has fewer than [`MAX_IN_FLIGHT`] and
    /// their values add up to less than [`MAX_BATCH_BYTES`].
    pub fn has_room(&self) -> bool {
        self.jobs < MAX_IN_FLIGHT && self.bytes < MAX_BATCH_BYTES
    }

    /// Takes `next` into the batch unless it is on the key of a read-modify-write already in
    /// it; a job it does not take ends the batch and runs after it.
    pub fn admit(&mut self, next: Step<'_>) -> bool {
        if self.rmw_keys.contains(next.key) {
            return false;
        }
        self.take(next);
        true
    }

    fn take(&mut self, step: Step<'_>) {
        if step.kind == StepKind::Rmw {
            self.rmw_keys.push(step.key.clone());
        }
        self.jobs += 1;
        self.bytes += step.bytes;
    }
}

/// One request of a batch, as [`requests`] plans it.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// One `gets` for a run of gets that follow each other.
    Gets(GetsRun),
    /// The mutation at this place in the batch, on its own: a `set`, or the `gets` of a
    /// read-modify-write (or no request at all, when it is decided without asking).
    Mutation(usize),
}

/// Gets that follow each other in a batch, gathered into one `gets` request. Gets of the same
/// key share it: a key is asked once and its answer goes to each of them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GetsRun {
    /// The distinct keys, in the order first asked.
    pub keys: Vec<Bytes>,
    /// Per get, its place in the batch and its key's place in `keys`.
    pub gets: Vec<(usize, usize)>,
    /// The length of the request line so far.
    line: usize,
}

impl GetsRun {
    /// Whether a get of `key` can join the run: the line may be no longer than
    /// [`client::MAX_GETS_LINE_BYTES`].
    pub fn fits(&self, key: &[u8]) -> bool {
        self.keys.iter().any(|k| k == key) || self.longer_by(key) <= client::MAX_GETS_LINE_BYTES
    }

    /// The line's length with `key` added.
    fn longer_by(&self, key: &[u8]) -> usize {
        self.line.max(b"gets\r\n".len()) + 1 + key.len()
    }

    /// Adds the get at place `job` in the batch, of `key`.
    pub fn push(&mut self, job: usize, key: &Bytes) {
        let slot = match self.keys.iter().position(|k| k == key) {
            Some(slot) => slot,
            None => {
                self.line = self.longer_by(key);
                self.keys.push(key.clone());
                self.keys.len() - 1
            }
        };
        self.gets.push((job, slot));
    }
}

/// The requests of a batch of `steps`, in the order they are written: gets that follow each
/// other share one `gets` (a new one starts when the line would grow too long), and each
/// mutation is a request of its own, after the gets queued before it.
pub fn requests(steps: &[Step<'_>]) -> Vec<Request> {
    let mut out = Vec::new();
    let mut run = GetsRun::default();
    for (i, step) in steps.iter().enumerate() {
        if step.kind != StepKind::Get || !run.fits(step.key) {
            end_run(&mut run, &mut out);
        }
        match step.kind {
            StepKind::Get => run.push(i, step.key),
            StepKind::Write | StepKind::Rmw => out.push(Request::Mutation(i)),
        }
    }
    end_run(&mut run, &mut out);
    out
}

/// Adds the run's `gets` to `out`, if it has any get, and starts a new run.
fn end_run(run: &mut GetsRun, out: &mut Vec<Request>) {
    if !run.gets.is_empty() {
        out.push(Request::Gets(std::mem::take(run)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    fn step(key: &Bytes, kind: StepKind, bytes: usize) -> Step<'_> {
        Step { key, kind, bytes }
    }

    /// A run asking `keys`, for gets at `gets` (place in the batch, place of the key).
    fn run(keys: &[&str], gets: &[(usize, usize)]) -> Request {
        let keys: Vec<Bytes> = keys.iter().map(|k| key(k)).collect();
        let mut run = GetsRun::default();
        for &(job, slot) in gets {
            run.push(job, &keys[slot]);
        }
        assert_eq!(run.keys, keys, "keys in the order first asked");
        Request::Gets(run)
    }

    #[test]
    fn gets_that_follow_each_other_share_one_request_and_a_mutation_ends_their_run() {
        let (a, b, c, d) = (key("a"), key("b"), key("c"), key("d"));
        let steps = [
            Step::get(&a),
            Step::get(&b),
            Step::get(&a),
            step(&c, StepKind::Write, 1),
            Step::get(&d),
            step(&a, StepKind::Rmw, 0),
            step(&b, StepKind::Rmw, 3),
            Step::get(&a),
        ];
        assert_eq!(
            requests(&steps),
            [
                run(&["a", "b"], &[(0, 0), (1, 1), (2, 0)]),
                Request::Mutation(3),
                run(&["d"], &[(4, 0)]),
                Request::Mutation(5),
                Request::Mutation(6),
                run(&["a"], &[(7, 0)]),
            ]
        );
        assert_eq!(requests(&[]), []);
        assert_eq!(
            requests(&[step(&a, StepKind::Write, 1)]),
            [Request::Mutation(0)],
            "no empty gets before a mutation"
        );
    }

    #[test]
    fn a_run_of_gets_asks_each_key_once_and_keeps_its_line_short() {
        let (a, b) = (key("a"), key("b"));
        let mut run = GetsRun::default();
        for (job, k) in [&a, &b, &a].into_iter().enumerate() {
            run.push(job, k);
        }
        assert_eq!(run.keys, ["a", "b"]);
        assert_eq!(run.gets, [(0, 0), (1, 1), (2, 0)]);
        // Distinct keys of 250 bytes until the line is full; a key already asked still fits.
        let long = |i: usize| Bytes::from(format!("{i:0>250}"));
        let mut i = 0;
        while run.fits(&long(i)) {
            run.push(3 + i, &long(i));
            i += 1;
        }
        assert_eq!(i, 8, "250-byte keys after `a b` in a 2048-byte line");
        assert!(run.fits(b"a") && run.fits(&long(0)) && run.fits(&[b'c'; 29]));
        assert!(!run.fits(&[b'c'; 30]), "a line of 2049 bytes");
        let mut out = bytes::BytesMut::new();
        super::super::ops::plan_gets(&mut out, &run.keys);
        assert!(out.starts_with(b"gets a b 000"));
        assert!(out.len() <= client::MAX_GETS_LINE_BYTES, "{}", out.len());
        assert!(
            out.len() > client::MAX_GETS_LINE_BYTES - 251,
            "{}",
            out.len()
        );
    }

    #[test]
    fn a_run_too_long_for_one_line_goes_on_in_the_next_gets() {
        let (a, b) = (key("a"), key("b"));
        let longs: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("{i:0>250}"))).collect();
        let mut steps = vec![Step::get(&a), Step::get(&b)];
        steps.extend(longs.iter().map(Step::get));
        steps.push(Step::get(&a));
        let planned = requests(&steps);
        let runs: Vec<&GetsRun> = planned
            .iter()
            .map(|r| match r {
                Request::Gets(run) => run,
                other => panic!("only gets were queued: {other:?}"),
            })
            .collect();
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].keys[..2], [a.clone(), b]);
        assert_eq!(runs[0].keys[2..], longs[..8]);
        assert_eq!(runs[1].keys, [longs[8].clone(), longs[9].clone(), a]);
        let placed: Vec<usize> = runs.iter().flat_map(|r| &r.gets).map(|g| g.0).collect();
        assert_eq!(
            placed,
            (0..13).collect::<Vec<_>>(),
            "every get once, in order"
        );
    }

    #[test]
    fn a_batch_keeps_every_job_off_the_key_of_a_read_modify_write_in_it() {
        let (a, b, c) = (key("a"), key("b"), key("c"));
        let mut batch = Batch::new(Step::get(&a));
        assert!(batch.admit(step(&a, StepKind::Write, 1)));
        assert!(
            batch.admit(step(&a, StepKind::Rmw, 1)),
            "the first on its key"
        );
        for kind in [StepKind::Get, StepKind::Write, StepKind::Rmw] {
            assert!(!batch.admit(step(&a, kind, 0)), "{kind:?} after a's rmw");
        }
        assert!(batch.admit(step(&b, StepKind::Rmw, 0)), "another key");
        assert!(!batch.admit(Step::get(&b)));
        assert!(batch.admit(Step::get(&c)));

        let mut batch = Batch::new(step(&c, StepKind::Rmw, 0));
        assert!(!batch.admit(Step::get(&c)), "the first job's key too");
        assert!(batch.admit(Step::get(&a)));
    }

    #[test]
    fn a_batch_has_room_for_so_many_requests_and_about_so_many_bytes() {
        let a = key("a");
        let mut batch = Batch::new(Step::get(&a));
        for _ in 1..MAX_IN_FLIGHT {
            assert!(batch.has_room());
            assert!(batch.admit(Step::get(&a)));
        }
        assert!(!batch.has_room(), "{MAX_IN_FLIGHT} requests");

        let mut batch = Batch::new(step(&a, StepKind::Write, MAX_BATCH_BYTES - 1));
        assert!(batch.has_room(), "a byte short");
        assert!(batch.admit(step(&a, StepKind::Write, MAX_BATCH_BYTES)));
        assert!(
            !batch.has_room(),
            "the job that passed the bound is in, no more"
        );
        assert!(!Batch::new(step(&a, StepKind::Write, MAX_BATCH_BYTES)).has_room());
    }
}
