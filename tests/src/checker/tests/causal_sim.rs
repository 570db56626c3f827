//! A simulated causal store, and a mutant of it that applies writes before their causes.
//!
//! Each client talks to one replica. A replica applies its clients' writes at once, and
//! sends each to every other replica with the writes it depends on: for each origin replica,
//! how many of that origin's writes it had applied. A replica applies a write from another
//! once it has applied all of those, after a random delay (the simulation interleaves client
//! ops and deliveries at random). Reads answer from the replica's own copy.
//!
//! The mutant replica now and then applies the newest write it has received, ready or not.
//! Whether that shows depends on what clients read next, so not every mutant history is
//! wrong. The simulation also tracks what truly happened before each write (its client's
//! earlier writes, and the writes whose values the client read, with their causes), to
//! count the writes a replica applied before one of those.
//!
//! The store has its own tiny model of memcached, not the checker's, so a misreading of the
//! model cannot hide itself. Times are turn numbers: the causal check ignores them.

use std::collections::{HashMap, VecDeque};

use rand::rngs::SmallRng;
use rand::RngExt;

use crate::checker::{History, OpKind, OpResult, Outcome, Time, Value};

/// The shape of a simulated run.
#[derive(Clone, Debug)]
pub(super) struct SimShape {
    pub replicas: usize,
    pub clients: u32,
    pub ops_per_client: usize,
    pub keys: usize,
    /// Chance that an op gets no reply (it then takes effect or not, evenly).
    pub indeterminate: f64,
    /// Chance that a step of the simulation is a delivery rather than a client's op.
    pub deliver: f64,
    /// Chance that a delivery ignores dependencies (0 for a correct store).
    pub skip_deps: f64,
}

impl SimShape {
    /// A small random shape of a correct store.
    pub(super) fn random(rng: &mut SmallRng) -> Self {
        SimShape {
            replicas: rng.random_range(1..=4),
            clients: rng.random_range(1..=7),
            ops_per_client: rng.random_range(1..=40),
            keys: rng.random_range(1..=4),
            indeterminate: [0.0, 0.05, 0.15, 0.3][rng.random_range(0..4)],
            deliver: [0.2, 0.5, 0.8][rng.random_range(0..3)],
            skip_deps: 0.0,
        }
    }
}

/// A simulated run: its history, and how many times a replica applied a write before one
/// of its causes (a write that happened before it: through its client's earlier ops, and
/// the writes whose values they read).
pub(super) struct Run {
    pub history: History,
    pub early: usize,
}

/// One replicated write.
struct Update {
    origin: usize,
    key: String,
    /// `None`: a delete.
    value: Option<Value>,
    /// For each origin, how many of its writes must be applied first (its own earlier ones
    /// included): all the origin had applied when it took the write.
    deps: Vec<usize>,
    /// The client that wrote it, and how many writes that client made before.
    client: usize,
    nth: usize,
    /// Its causes: for each client, how many of its writes happened before this one.
    causes: Vec<usize>,
}

struct Replica {
    /// Each key's value, and the write that stored it.
    store: HashMap<String, (Value, usize)>,
    /// Which writes (by id) are applied.
    has: Vec<bool>,
    /// For each origin, which of its writes (by number) are applied.
    applied: Vec<Vec<bool>>,
    /// For each origin, how many of its first writes are all applied.
    prefix: Vec<usize>,
    /// For each origin, its writes received and not applied yet, oldest first.
    inbox: Vec<VecDeque<usize>>,
}

impl Replica {
    fn new(replicas: usize) -> Self {
        Replica {
            store: HashMap::new(),
            has: Vec::new(),
            applied: vec![Vec::new(); replicas],
            prefix: vec![0; replicas],
            inbox: vec![VecDeque::new(); replicas],
        }
    }

    fn ready(&self, update: &Update) -> bool {
        update.deps.iter().zip(&self.prefix).all(|(d, p)| d <= p)
    }

    fn apply(&mut self, id: usize, update: &Update, seq: usize) {
        match &update.value {
            Some(v) => self.store.insert(update.key.clone(), (v.clone(), id)),
            None => self.store.remove(&update.key),
        };
        if self.has.len() <= id {
            self.has.resize(id + 1, false);
        }
        self.has[id] = true;
        let applied = &mut self.applied[update.origin];
        if applied.len() <= seq {
            applied.resize(seq + 1, false);
        }
        applied[seq] = true;
        let prefix = &mut self.prefix[update.origin];
        while applied.get(*prefix) == Some(&true) {
            *prefix += 1;
        }
    }
}

/// The store under simulation.
struct Store {
    replicas: Vec<Replica>,
    updates: Vec<Update>,
    /// Each update's number among its origin's writes.
    seq: Vec<usize>,
    /// How many writes each origin made.
    made: Vec<usize>,
    /// Each client's writes (ids), in order.
    writes_of: Vec<Vec<usize>>,
    /// For each client, for each client, how many of the latter's writes happened before
    /// the former's next op.
    context: Vec<Vec<usize>>,
}

impl Store {
    fn new(replicas: usize, clients: usize) -> Self {
        Store {
            replicas: (0..replicas).map(|_| Replica::new(replicas)).collect(),
            updates: Vec::new(),
            seq: Vec::new(),
            made: vec![0; replicas],
            writes_of: vec![Vec::new(); clients],
            context: vec![vec![0; clients]; clients],
        }
    }

    /// The replica `client` talks to.
    fn replica_of(&self, client: usize) -> usize {
        client % self.replicas.len()
    }

    /// A write of `client`'s: applied at its replica at once, sent to the others.
    fn write(&mut self, client: usize, key: &str, value: Option<Value>) {
        let origin = self.replica_of(client);
        let id = self.updates.len();
        let seq = self.made[origin];
        self.made[origin] += 1;
        let update = Update {
            origin,
            key: key.to_string(),
            value,
            deps: self.replicas[origin].prefix.clone(),
            client,
            nth: self.writes_of[client].len(),
            causes: self.context[client].clone(),
        };
        self.writes_of[client].push(id);
        self.context[client][client] += 1;
        self.replicas[origin].apply(id, &update, seq);
        for (r, replica) in self.replicas.iter_mut().enumerate() {
            if r != origin {
                replica.inbox[origin].push_back(id);
            }
        }
        self.updates.push(update);
        self.seq.push(seq);
    }

    /// Applies one received write at replica `r`, if one is ready (or, with `skip_deps`,
    /// any). Says whether it applied a write before its causes.
    fn deliver(&mut self, rng: &mut SmallRng, r: usize, skip_deps: bool) -> bool {
        let replica = &mut self.replicas[r];
        let (origin, at) = if skip_deps {
            // The newest write received: the likeliest to have causes not applied yet.
            let newest = (0..replica.inbox.len())
                .filter_map(|o| Some((*replica.inbox[o].back()?, o)))
                .max();
            let Some((_, origin)) = newest else {
                return false;
            };
            (origin, replica.inbox[origin].len() - 1)
        } else {
            let ready: Vec<usize> = (0..replica.inbox.len())
                .filter(|&o| {
                    let head = replica.inbox[o].front();
                    head.is_some_and(|&id| replica.ready(&self.updates[id]))
                })
                .collect();
            let Some(&origin) = ready.get(rng.random_range(0..ready.len().max(1))) else {
                return false;
            };
            (origin, 0)
        };
        let id = replica.inbox[origin].remove(at).expect("a received write");
        let update = &self.updates[id];
        let early = update.causes.iter().enumerate().any(|(client, &n)| {
            let causes = &self.writes_of[client][..n];
            causes
                .iter()
                .any(|&c| !replica.has.get(c).is_some_and(|&has| has))
        });
        replica.apply(id, update, self.seq[id]);
        early
    }

    /// `client` read the value `id` wrote: its causes, and it, happened before what the
    /// client does next.
    fn read_from(&mut self, client: usize, id: usize) {
        let update = &self.updates[id];
        let context = &mut self.context[client];
        for (mine, &theirs) in context.iter_mut().zip(&update.causes) {
            *mine = (*mine).max(theirs);
        }
        context[update.client] = context[update.client].max(update.nth + 1);
    }

    /// What `client`'s `kind` on `key` does; `effect: false` leaves the store alone.
    fn op(&mut self, client: usize, key: &str, kind: &OpKind, effect: bool) -> OpResult {
        let held = self.replicas[self.replica_of(client)]
            .store
            .get(key)
            .cloned();
        if let (OpKind::Get, Some((_, id))) = (kind, &held) {
            self.read_from(client, *id);
        }
        let (result, write) = match (kind, held.map(|(v, _)| v)) {
            (OpKind::Get, Some(v)) => (OpResult::Hit(v), None),
            (OpKind::Get, None) => (OpResult::Miss, None),
            (OpKind::Set(v), _) => (OpResult::Stored, Some(Some(v.clone()))),
            (OpKind::Add(v), None) => (OpResult::Stored, Some(Some(v.clone()))),
            (OpKind::Add(_), Some(_)) => (OpResult::NotStored, None),
            (OpKind::Delete, Some(_)) => (OpResult::Deleted, Some(None)),
            (OpKind::Delete, None) => (OpResult::NotFound, None),
            (OpKind::Incr(_), _) => unimplemented!("incr: not simulated"),
        };
        if let (Some(value), true) = (write, effect) {
            self.write(client, key, value);
        }
        result
    }
}

fn random_kind(rng: &mut SmallRng, counter: &mut u64) -> OpKind {
    *counter += 1;
    let fresh = Value::from(format!("v{counter}"));
    match rng.random_range(0..100) {
        0..30 => OpKind::Set(fresh),
        30..75 => OpKind::Get,
        75..87 => OpKind::Delete,
        _ => OpKind::Add(fresh),
    }
}

/// A run of the store (a mutant one when `shape.skip_deps > 0`).
pub(super) fn run(rng: &mut SmallRng, shape: &SimShape) -> Run {
    let mut store = Store::new(shape.replicas, shape.clients as usize);
    let mut left = vec![shape.ops_per_client; shape.clients as usize];
    let mut history = History::new();
    let (mut counter, mut turn, mut early): (u64, Time, usize) = (0, 0, 0);
    loop {
        let r = rng.random_range(0..shape.replicas);
        if rng.random_bool(shape.deliver) {
            let skip = shape.skip_deps > 0.0 && rng.random_bool(shape.skip_deps);
            early += usize::from(store.deliver(rng, r, skip));
            continue;
        }
        let ready: Vec<usize> = (0..left.len()).filter(|&c| left[c] > 0).collect();
        let Some(&client) = ready.get(rng.random_range(0..ready.len().max(1))) else {
            break;
        };
        left[client] -= 1;
        turn += 10;
        let key = format!("k{}", rng.random_range(0..shape.keys));
        let kind = random_kind(rng, &mut counter);
        let lost = rng.random_bool(shape.indeterminate);
        let effect = !lost || rng.random_bool(0.5);
        let result = store.op(client, &key, &kind, effect);
        let outcome = match lost {
            true => Outcome::Indeterminate,
            false => Outcome::Completed {
                at: turn + 5,
                result,
            },
        };
        history.push(client as u32, key, kind, turn, outcome);
    }
    Run { history, early }
}
